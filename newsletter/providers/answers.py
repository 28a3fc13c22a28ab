"""What every provider's HTTP layer reads alike in an answer, whatever the request (a batch, a page
of a suppression list): whether its status is worth asking again, how long it asked us to wait, and
an error body that is not the provider's own error JSON (a proxy's or load balancer's HTML page, a
bare text) in one line fit for a terminal and a stored reason."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

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
    text = content.decode("utf-8", "replace")
    if text.lstrip().startswith("<"):
        text = _page_text(content) or text
    text = plain_text(text)
    if secret:
        text = text.replace(secret, "[redacted]")
    if not text:
        return "no error message"
    if len(text) <= MAX_SUMMARY:
        return text
    # clip() appends how much was left out: the cut leaves room for it.
    return clip(text, MAX_SUMMARY - len(clip(text, 0)))


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
