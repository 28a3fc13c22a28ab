"""Header values made from outside text (a reader's name from a public form or a CSV file, a subject
from a digest), for every provider: the one place that decides what such text may become in a mail.

Two dangers, both met here. A control character (CR, LF, NUL, NEL, U+2028…) could end a header and
start another (a Bcc, a Reply-To, a forged body). And an RFC 2047 encoded word typed as text
("=?utf-8?q?=0D=0ABcc:…?=") is decoded by mail software, the email package included, back into
those very characters. So text is first made plain (`plain_text`, `plain_name`), then written so
that its encoded-word syntax stays literal: in MIME, text that is not plain ASCII or holds "=?" goes
as base64 encoded words of its UTF-8, which a client decodes once into exactly the typed text
(`address_header`, `header_text`); for an API that builds the headers itself, "=?" is broken
(`literal`). The email package never parses these values: its parser is what decoded the attack.
"""

from __future__ import annotations

import base64
import re
import unicodedata

NAME_MAX = 200  # characters of a display name: a To line, not a letter

# Every control character (Unicode Cc, a fixed set: C0, DEL, C1 with NEL) and the line and paragraph
# separators (Zl, Zp) become spaces, so that "Ann\nBcc" stays two words; the bidi embeddings,
# overrides and isolates, which would make a name display as other text, go. The bidi marks
# (U+200E, U+200F) stay: they reorder nothing, and right-to-left names need them.
_UNSAFE = {
    **{code: " " for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)},
    **{code: None for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}

# A line holding an encoded word may be at most 76 characters (RFC 2047), and the first line of a
# value follows its field's name: "Subject: ", the longest of the fields these values fill.
_LINE = 76
_FIRST = len("Subject: ")
_WORD = "=?utf-8?b?{}?="
# The UTF-8 bytes one encoded word carries: its base64 (4 characters per 3 bytes) fits a first line.
_WORD_BYTES = (_LINE - _FIRST - len(_WORD.format(""))) // 4 * 3

# RFC 5322's atext, widened to UTF-8 (RFC 6532): what a dot-atom local part or domain may hold.
_ATOM = r"[^\s\x00-\x1f\x7f-\x9f\"(),.:;<>@\[\\\]]+"
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*")


def plain_text(raw: str) -> str:
    """`raw` as one line of plain text: NFC, no control character, line separator or bidi control
    left, whitespace runs made one space."""
    return " ".join(unicodedata.normalize("NFC", raw).translate(_UNSAFE).split())


def plain_name(raw: str | None) -> str | None:
    """A display name safe as data (`plain_text`, at most NAME_MAX characters); None if nothing is left."""
    return plain_text(raw or "")[:NAME_MAX].rstrip() or None


def literal(text: str) -> str:
    """Plain text for a provider that writes the header itself from JSON (SendGrid, Postmark).

    Its encoder passes an ASCII "=?utf-8?q?…?=" through as it is, for every client to decode, and
    handing it encoded words of our own would rely on it passing them untouched, which no provider
    promises. A WORD JOINER (U+2060) between "=" and "?" leaves no encoded word for any encoder or
    decoder to see whatever the provider does, and shows as nothing: the reader sees the typed text."""
    return text.replace("=?", "=\u2060?")


def address_header(name: str | None, email: str) -> str:
    """The value of a From, To or Reply-To header: `email`, after the display name made from `name`.

    An ASCII name goes as a quoted string (a client shows it as it is); one that is not, holds "=?"
    (which clients decode even inside quotes) or would not fit a line goes as encoded words.
    ValueError for an address that is not a dot-atom: it could not be written without quoting."""
    if not _ADDR_SPEC.fullmatch(email):
        raise ValueError(f"{email!r} cannot be written in a header as an address")
    display = plain_name(name)
    if display is None:
        return email
    quoted = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    words = [quoted] if _is_plain(display) and _FIRST + len(quoted) <= _LINE else _encoded_words(display)
    return _fold([*words, f"<{email}>"])


def header_text(value: str) -> str:
    """The value of an unstructured header (Subject) made from `value`: plain ASCII folded between
    its words, anything else as encoded words."""
    text = plain_text(value)
    words = text.split(" ")
    if _is_plain(text) and all(_FIRST + len(word) <= _LINE for word in words):
        return _fold(words)
    return _fold(_encoded_words(text))


def _is_plain(text: str) -> bool:
    """Whether `text` can stand in a header as it is: ASCII, and nothing a client would decode."""
    return text.isascii() and "=?" not in text


def _encoded_words(text: str) -> list[str]:
    """`text` as base64 encoded words of its UTF-8, each of at most _WORD_BYTES bytes and never
    splitting a character (RFC 2047 5: each word must decode alone)."""
    chunks = [b""]
    for char in text:
        data = char.encode("utf-8")
        if len(chunks[-1]) + len(data) > _WORD_BYTES:
            chunks.append(b"")
        chunks[-1] += data
    return [_WORD.format(base64.b64encode(chunk).decode("ascii")) for chunk in chunks]


def _fold(tokens: list[str]) -> str:
    """`tokens` separated by a space, or by CRLF and a space where the line would pass _LINE:
    unfolding gives the space back, and between two encoded words a decoder drops it (RFC 2047 6.2)."""
    folded, length = tokens[0], _FIRST + len(tokens[0])
    for token in tokens[1:]:
        wrap = length + 1 + len(token) > _LINE
        folded += ("\r\n " if wrap else " ") + token
        length = (0 if wrap else length) + 1 + len(token)
    return folded
