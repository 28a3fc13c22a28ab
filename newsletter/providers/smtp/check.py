"""`newsletter doctor`'s look at the SMTP server: connect, secure (STARTTLS or implicit TLS) and log
in exactly as a send does, then QUIT before any MAIL command: nothing is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import RequestImpossible, RequestNotSent, Verdict
from .client import SMTP

if TYPE_CHECKING:
    from ...sections import Delivery

_SECURED = {"starttls": "STARTTLS", "tls": "implicit TLS", "none": "no TLS: a trusted relay only"}


async def check(delivery: Delivery) -> tuple[str, str | None]:
    """What the server let us do, and the fix (None when a send would get as far as MAIL)."""
    smtp = SMTP(delivery)
    section = delivery.section
    try:
        refused = await smtp.try_login()
    except RequestNotSent as error:
        return str(error), "check smtp_host and smtp_port, and that the server takes connections from this machine"
    except RequestImpossible as error:
        return str(error), "change the settings it names (smtp_security, smtp_port; SSL_CERT_FILE for a private CA)"
    if refused is not None and refused.verdict is Verdict.AUTH_REFUSED:
        return refused.reason, "set smtp_username and NEWSLETTER_SMTP_PASSWORD to a login the server takes"
    if refused is not None:
        return refused.reason, "the server asked to try later: run newsletter doctor again"
    login = f", logged in as {section.smtp_username!r}" if section.smtp_username else ", no login"
    return f"{smtp.name}: connected ({_SECURED[section.smtp_security]}){login}", None
