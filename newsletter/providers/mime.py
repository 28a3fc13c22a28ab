"""One reader's message as it arrives: MIME, as the SMTP provider transmits it and as the dry run
shows it (`first-recipient.eml`) whatever the provider."""

from __future__ import annotations

import base64
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid

from ..addresses import wire_address
from .base import PERSONAL_TAGS, Message, Recipient
from .headers import address_header, header_text

# Headers whose value is a list of <URL>s (RFC 2369, RFC 2919): folded only between the entries,
# never inside one, since no client follows a URL broken over two lines or made an encoded word.
_URL_LIST_HEADERS = frozenset({"list-unsubscribe", "list-id", "list-archive", "list-help"})


class _WirePolicy(EmailPolicy):
    """SMTP's policy (CRLF) with body lines of at most 76 characters, as RFC 2045 asks of base64
    and quoted-printable, and the URL-list headers folded at their commas."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _URL_LIST_HEADERS:
            return f"{name}: " + f",{self.linesep} ".join(_url_list(value)) + self.linesep
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _URL_LIST_HEADERS:
            # ASCII by construction (URLs, the list's label); an encoded word would hide the URL.
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


def _url_list(value: str) -> list[str]:
    """"<a>, <b>" → ["<a>", "<b>"]; anything outside angle brackets stays with its entry."""
    return [entry.strip() for entry in re.split(r"(?<=>)\s*,\s*", str(value)) if entry.strip()]


WIRE = _WirePolicy(linesep="\r\n", max_line_length=76)
UTF8_WIRE = WIRE.clone(utf8=True)


@functools.lru_cache(maxsize=8)
def _shared_headers(
    sender_name: str, sender_email: str, reply_to: str | None, subject: str, headers: tuple[tuple[str, str], ...], utf8: bool
) -> bytes:
    """The headers every reader of a mailing gets alike, made once per mailing: the email package's
    header objects cost more than the rest of a message."""
    mail = EmailMessage(policy=UTF8_WIRE if utf8 else WIRE)
    for name, value in headers:
        mail[name] = value
    mail["MIME-Version"] = "1.0"
    own = [("From", address_header(sender_name, sender_email))]
    if reply_to:
        own.append(("Reply-To", address_header(None, reply_to)))
    own.append(("Subject", header_text(subject)))
    return b"".join(_line(name, value) for name, value in own) + _headers(mail)


def _line(name: str, value: str) -> bytes:
    """A header whose value `headers` made, folded: set through the email package, it would be
    parsed again, and that parser decodes the encoded words the value keeps literal. Only an
    address can be non-ASCII there, and then the message is RFC 6532's, with UTF-8 headers."""
    return f"{name}: {value}\r\n".encode("utf-8")


def _headers(mail: EmailMessage) -> bytes:
    """The headers as the email package's generator writes them: its policy folds and encodes each."""
    return b"".join(mail.policy.fold_binary(name, value) for name, value in mail.raw_items())


@dataclass(frozen=True)
class Mime:
    data: bytes  # the whole message, CRLF line ends, as it is transmitted and saved as .eml
    message_id: str  # its Message-ID header
    html: str  # its HTML part, as the reader sees it


def mime_message(message: Message, recipient: Recipient, now: datetime) -> Mime:
    """The complete MIME message `recipient` gets: their own links filled in, their own
    headers set, text and HTML as multipart/alternative. The reader's name and the subject are
    outside text, written by `headers`; a non-ASCII address makes the headers UTF-8 (RFC 6532).

    The email package writes the headers made of our own values (Date, Message-ID, List-*); the
    two parts are written here: its generator writes a base64 body a line at a time, in Python,
    which made the message most of an SMTP send's CPU."""
    urls = recipient.substitutions

    def fill(value: str) -> str:
        for tag in PERSONAL_TAGS:
            value = value.replace(tag, urls.get(tag, ""))
        return value

    to = wire_address(recipient.email)
    utf8 = not to.isascii()
    mail = EmailMessage(policy=UTF8_WIRE if utf8 else WIRE)
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = make_msgid(domain=message.sender_email.rpartition("@")[2])
    for name, value in recipient.headers.items():
        mail[name] = value
    # "=_" never occurs in base64, so no line of the parts can be taken for the boundary.
    boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    mail["Content-Type"] = f'multipart/alternative; boundary="{boundary.decode()}"'
    html = fill(message.html)
    body = b""
    for subtype, content in ((b"plain", fill(message.text)), (b"html", html)):
        # Text in canonical form before it is encoded (RFC 2045): CRLF line ends; base64 in lines of
        # 76 characters, as RFC 2045 asks, encoded in C.
        canonical = content.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        body += (
            b"--" + boundary + b"\r\n"
            b'Content-Type: text/' + subtype + b'; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(canonical).replace(b"\n", b"\r\n")
        )
    head = _shared_headers(
        message.sender_name, message.sender_email, message.reply_to, message.subject, tuple(message.headers.items()), utf8
    ) + _line("To", address_header(recipient.name, to)) + _headers(mail)
    return Mime(head + b"\r\n" + body + b"--" + boundary + b"--\r\n", str(mail["Message-ID"]), html)
