"""One reader's message as it arrives: MIME, as the SMTP provider transmits it and as the dry run
shows it (`first-recipient.eml`) whatever the provider."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid

from . import PERSONAL_TAGS, Message, Recipient

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


def wire_address(email: str) -> str:
    """The address as it goes on the wire: an internationalised domain in its ASCII (IDNA) form,
    which every server takes; only a non-ASCII local part then still needs SMTPUTF8."""
    local, _, domain = email.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # not a name IDNA can spell: sent as it is, with SMTPUTF8
    return f"{local}@{domain}"


def mime_message(message: Message, recipient: Recipient, now: datetime) -> EmailMessage:
    """The complete MIME message `recipient` gets: their own links filled in, their own
    headers set, text and HTML as multipart/alternative. A reader's name is one line (a line break
    in it would forge a header); a non-ASCII address makes the headers UTF-8 (RFC 6532)."""
    urls = recipient.substitutions

    def fill(value: str) -> str:
        for tag in PERSONAL_TAGS:
            value = value.replace(tag, urls.get(tag, ""))
        return value

    local, _, domain = wire_address(recipient.email).rpartition("@")
    mail = EmailMessage(policy=WIRE if (local + domain).isascii() else UTF8_WIRE)
    mail["From"] = Address(message.sender_name, addr_spec=message.sender_email)
    mail["To"] = Address(" ".join((recipient.name or "").split()), username=local, domain=domain)
    if message.reply_to:
        mail["Reply-To"] = Address(addr_spec=message.reply_to)
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = make_msgid(domain=message.sender_email.rpartition("@")[2])
    for name, value in {**message.headers, **recipient.headers}.items():
        mail[name] = value
    mail["MIME-Version"] = "1.0"
    # Parts made as MIMEParts: EmailMessage.add_alternative would give the HTML part a MIME-Version
    # header of its own, which belongs to the message alone.
    mail.make_alternative()
    for subtype, content in (("plain", message.text), ("html", message.html)):
        alternative = MIMEPart(policy=WIRE)
        # Encoded here, in C (base64 lines of 76 characters, as RFC 2045 asks): the email package's
        # own encoder picks between quoted-printable and base64 by trying both, in Python, which made
        # the message most of an SMTP send's time.
        alternative["Content-Type"] = f'text/{subtype}; charset="utf-8"'
        alternative["Content-Transfer-Encoding"] = "base64"
        # Text in canonical form before it is encoded (RFC 2045): CRLF line ends.
        canonical = fill(content).replace("\r\n", "\n").replace("\n", "\r\n")
        alternative.set_payload(base64.encodebytes(canonical.encode("utf-8")).decode("ascii"))
        mail.attach(alternative)
    return mail
