"""What every provider's HTTP layer reads alike in an answer, whatever the request (a batch, a page
of a suppression list): whether its status is worth asking again, how long it asked us to wait, and
an error body that is not the provider's own error JSON (a proxy's or load balancer's HTML page, a
bare text) in one line fit for a terminal and a stored reason."""

from __future__ import annotations

import codecs
import html
import time
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

import httpx

from .base import clip
from .headers import plain_text

# 501 (Not Implemented) and 505 (HTTP Version Not Supported) say the server will never do this
# request; every other 5xx, and 429, is a state that passes (an outage, a deploy, a rate limit).
NEVER_RETRIED = frozenset({501, 505})

# Characters of an error body's summary, its "… (N more characters)" included.
MAX_SUMMARY = 200

# What a browser does not show as a page's text. The head goes too: its title was looked at first.
_HIDDEN = ("head", "script", "style", "noscript", "template")
# Elements a browser sets apart: their words must not run into the next block's ("Bad GatewayThe").
_BLOCKS = (
    *("address", "blockquote", "br", "center", "dd", "div", "dt", "footer", "h1", "h2", "h3", "h4"),
    *("h5", "h6", "header", "hr", "li", "main", "p", "pre", "section", "td", "th", "tr"),
)


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The start of a streamed answer's body, at most `limit` bytes: the rest is never read, so a
    server that sends without end costs no more than that. A connection that drops mid-body leaves
    what came: the status line and headers are the answer."""
    content = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            content += chunk
            if len(content) >= limit:
                break
    except httpx.TransportError:
        pass
    finally:
        await response.aclose()
    return bytes(content[:limit])


def retryable(status: int) -> bool:
    """Whether the same request may succeed later."""
    return status == 429 or (500 <= status <= 599 and status not in NEVER_RETRIED)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds (it is either seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def summary(content: bytes, *, secret: str | None) -> str:
    """An error body as one line of at most MAX_SUMMARY characters: an HTML page's title, or else
    its text without scripts and styles; any other body's text; "no error message" for none.
    `secret`, the credential the request carried, is blanked: a debugging proxy may echo it."""
    text = _decoded(content)
    if text.lstrip().startswith("<"):
        text = _page_text(content) or text
    # Entities and percent-escapes read as the characters they stand for: a credential spelt with
    # them is still found.
    text = plain_text(html.unescape(unquote(text)))
    for spelling in _spellings(secret):
        text = text.replace(spelling, "[redacted]")
    if not text:
        return "no error message"
    if len(text) <= MAX_SUMMARY:
        return text
    # clip() appends how much was left out: the cut leaves room for it.
    return clip(text, MAX_SUMMARY - len(clip(text, 0)))


def _decoded(content: bytes) -> str:
    # A body that says it is UTF-16 or UTF-32 (a BOM) read as such: read as UTF-8, its every other
    # character would be a NUL, and a credential in it would no longer be found to be blanked.
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if content.startswith(bom):
            return content.decode(codec, "replace")
    return content.decode("utf-8", "replace")


def _spellings(secret: str | None) -> list[str]:
    """The ways a body may quote the credential: as sent ("Bearer SG.…"), then the key alone."""
    if not secret:
        return []
    key = secret.partition(" ")[2] if secret.startswith(("Bearer ", "Basic ")) else ""
    return [spelling for spelling in (secret, key) if spelling]


def _page_text(content: bytes) -> str:
    # Imported here: only an error page needs the parser, and the CLI's start-up should not load it.
    import lxml.html
    from lxml import etree

    try:
        page = lxml.html.document_fromstring(content)
    except (etree.ParserError, ValueError):  # no element at all
        return ""
    title = page.xpath("string(/html/head/title)")
    if title.strip():
        return title
    etree.strip_elements(page, *_HIDDEN, with_tail=False)
    for block in page.iter(*_BLOCKS):
        block.tail = f" {block.tail or ''}"
    return page.text_content()
