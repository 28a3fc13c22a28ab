"""Email addresses as the tool keeps them: checked and written one way (`normalise_email`), and
keyed (`email_key`) so that two spellings of one mailbox are one subscriber and two mailboxes are
never one.

A mailbox's local part belongs to its server, which may tell "straße" from "strasse" and "ſam" from
"sam" (Unicode case folding merges both pairs); only ASCII letters are taken as case-insensitive, as
every real server treats them. A domain is case-insensitive and has one ASCII spelling (IDNA), so
"bücher.de" and "xn--bcher-kva.de" are one domain.
"""

from __future__ import annotations

import functools
import importlib

import idna
from email_validator import EmailNotValidError, validate_email

from .errors import SubscriberError

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _memoise_domain_checks() -> None:
    """email-validator checks the domain of every address from scratch (IDNA tables, character by
    character): two thirds of its time. A list has few distinct domains and the check is a pure
    function of its arguments, so remember it: a million-row import validates three times faster.
    Should a later email-validator move the function, this does nothing and validation is only slower.
    """
    module = importlib.import_module("email_validator.validate_email")
    check = getattr(module, "validate_email_domain_name", None)
    if callable(check) and not hasattr(check, "cache_info"):
        module.validate_email_domain_name = functools.lru_cache(maxsize=4096)(check)  # type: ignore[attr-defined]


_memoise_domain_checks()


def normalise_email(raw: str) -> str:
    """The address trimmed, syntax-checked (no DNS) and with its domain lower-cased.

    Raises SubscriberError with email-validator's reason.
    """
    candidate = raw.strip()
    try:
        return validate_email(candidate, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise SubscriberError(f"invalid email address {candidate!r}: {error}") from None


def email_key(email: str) -> str:
    """What makes two addresses the same subscriber: the local part with its ASCII letters
    lower-cased and nothing else changed, and the domain in its lower-case ASCII (IDNA) form."""
    local, _, domain = email.rpartition("@")
    return f"{local.translate(_ASCII_LOWER)}@{ascii_domain(domain)}"


def wire_address(email: str) -> str:
    """The address as it goes on the wire: its domain in the ASCII (IDNA 2008) form every server
    takes, as email_key spells it ("straße.de" is "xn--strae-oqa.de", never "strasse.de"); only a
    non-ASCII local part then still needs SMTPUTF8."""
    local, _, domain = email.rpartition("@")
    return f"{local}@{ascii_domain(domain)}"


def folds_like_its_key(email: str) -> bool:
    """Whether Unicode case folding merges this address with no more addresses than email_key does
    (false for "Straße@…", which folding took for "strasse@…" too)."""
    local = email.rpartition("@")[0]
    return local.casefold() == local.translate(_ASCII_LOWER)


@functools.lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """The domain in lower-case ASCII (IDNA 2008, with UTS 46 mapping, as email-validator checks it)."""
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        # Not a name IDNA can spell (normalise_email refuses those): keyed as written, lower-cased.
        return domain.lower()
