"""Signed, non-expiring, per-recipient unsubscribe links (and the RFC 8058 headers that carry them),
which also open the reader's preferences page; and the sign-up confirmation links, which expire.

A token is `<list id>.<subscriber id>.<HMAC-SHA256>`, the ids in base 36 and the signature in
unpadded base64url, about 50 characters: short enough for a List-Unsubscribe header. It names a
membership, not an address, so a leaked link reveals nothing but the ability to unsubscribe that one
membership. The signature also covers the address the link was made for so a link
verifies only against the membership of that address (case-folded): should an id ever name someone else, the link
stops working instead of acting on them. Links signed before that (ids and list only) still work for
the subscribers who existed then (db.legacy_links), so that no unsubscribe already in an inbox is lost.

Reading is strict: anything but exactly what was signed (another character, one appended, padding, a
non-canonical base64 ending, leading zeros) is not a token, whatever a lenient decoder would make of it.

Undoing an unsubscribe takes more than the link: a resubscribe ticket, a signed timestamp that only
the page shown right after an unsubscribe carries, valid for RESUBSCRIBE_WINDOW. Whoever holds a
forwarded link can unsubscribe its owner, but cannot re-subscribe someone who said no.

A confirmation link (ConfirmLinks) is `<list id>.<subscriber id>.<issued at>.<HMAC-SHA256>`, the
time in base 36 microseconds (links made before were in seconds, read as the start of that second),
so that it is compared with a reader's leaving to the microsecond; signed with its own salt over the ids, the time and the address: it confirms
that one sign-up for CONFIRM_WINDOW, read as strictly.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import secrets
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from itsdangerous import BadSignature, Signer, TimestampSigner

from .errors import TokenError
from .sections import Links

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

# Ids as _to_base36 writes them (no leading zero, at most 13 digits); 43 characters are the unpadded
# base64url of a SHA-256 digest.
_TOKEN = re.compile(r"([1-9a-z][0-9a-z]{0,12})\.([1-9a-z][0-9a-z]{0,12})\.([A-Za-z0-9_-]{43})")

# The largest id a database column holds (a bigger one makes SQLite's driver raise OverflowError).
MAX_ID = 2**63 - 1

RESUBSCRIBE_WINDOW = timedelta(days=1)
CONFIRM_WINDOW = timedelta(days=7)

_ID = r"([1-9a-z][0-9a-z]{0,12})"
_SIGNATURE = r"([A-Za-z0-9_-]{43})"
_CONFIRM_TOKEN = re.compile(rf"{_ID}\.{_ID}\.{_ID}\.{_SIGNATURE}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A confirmation link's time from this number on is in microseconds: as seconds it would be the year
# 5138, and as microseconds it is the second day of 1970, before any link was made.
_MICROSECOND_LINKS = 10**11


@functools.lru_cache(maxsize=64)
def _list_part(list_id: int) -> str:
    """A token's list id, the same for every reader of a send."""
    return _to_base36(list_id)


def _to_base36(number: int) -> str:
    digits = ""
    while True:
        number, remainder = divmod(number, 36)
        digits = _ALPHABET[remainder] + digits
        if number == 0:
            return digits


class UnsubscribeLinks:
    """Makes and reads unsubscribe tokens with the project's signing keys.

    Build one per process (or per send): the keys are read once, when a link is first made or
    read, so that a command that signs nothing needs no key. `legacy_up_to` is the highest
    subscriber id that may hold a link signed without the address (db.legacy_links; 0: none).
    """

    def __init__(self, links: Links, *, legacy_up_to: int = 0) -> None:
        self._links = links
        self._legacy_up_to = legacy_up_to
        self._base_url = links.base_url
        self._mailto = links.unsubscribe_mailto

    @functools.cached_property
    def _keys(self) -> list[str]:
        """Read once for the three signers (the key file, unless the key is in the environment)."""
        return _keys_of(self._links)

    # itsdangerous signs with the last key and accepts any of them, so old links keep working after a
    # rotation; verify_signature() compares in constant time. Separate salts keep a signature of one
    # form from ever passing for the other.
    @functools.cached_property
    def _signer(self) -> Signer:
        return _Signer(self._keys, "newsletter.unsubscribe.address")

    @functools.cached_property
    def _legacy_signer(self) -> Signer:
        return _Signer(self._keys, "newsletter.unsubscribe")

    @functools.cached_property
    def _tickets(self) -> TimestampSigner:
        return _ClockedTimestampSigner(self._keys, "newsletter.resubscribe", self._links.clock)

    def token(self, list_id: int, subscriber_id: int, email: str) -> str:
        payload = f"{_list_part(list_id)}.{_to_base36(subscriber_id)}"
        return f"{payload}.{self._signer.get_signature(_signed_text(payload, email)).decode('ascii')}"

    @staticmethod
    def ids(token: str) -> tuple[int, int]:
        """The (list id, subscriber id) a well-formed token names, before its signature is checked
        (that needs the address, from the database); TokenError if it is not exactly a token."""
        match = _TOKEN.fullmatch(token)
        if match is None or not _canonical_base64(match[3]):
            raise TokenError("this unsubscribe link is not valid")
        list_id, subscriber_id = int(match[1], 36), int(match[2], 36)
        if max(list_id, subscriber_id) > MAX_ID:
            raise TokenError("this unsubscribe link is not valid")
        return list_id, subscriber_id

    def signed_for(self, token: str, email: str) -> bool:
        """Whether `token` is exactly one we signed for this address."""
        try:
            _, subscriber_id = self.ids(token)
        except TokenError:
            return False
        payload, _, signature = token.rpartition(".")
        if self._signer.verify_signature(_signed_text(payload, email), signature):
            return True
        return subscriber_id <= self._legacy_up_to and self._legacy_signer.verify_signature(payload, signature)

    def resubscribe_ticket(self, token: str) -> str:
        """A ticket that lets the holder of `token` undo an unsubscribe for RESUBSCRIBE_WINDOW."""
        return self._tickets.sign(token).decode("ascii")

    def resubscribe_allowed(self, token: str, ticket: str, *, left_at: datetime) -> bool:
        """Whether `ticket` was issued for `token` within RESUBSCRIBE_WINDOW, for the unsubscribe
        made at `left_at`: a ticket kept from an earlier unsubscribe must not undo a later one."""
        try:
            signed, issued = self._tickets.unsign(
                ticket, max_age=int(RESUBSCRIBE_WINDOW.total_seconds()), return_timestamp=True
            )
        except (BadSignature, UnicodeError):  # expired (SignatureExpired), forged, or garbage
            return False
        # A ticket's time is in whole seconds, and it is issued right after the unsubscribe it undoes.
        return signed == token.encode("ascii", "replace") and issued >= left_at.replace(microsecond=0)

    def url(self, list_id: int, subscriber_id: int, email: str) -> str:
        return f"{self._base_url}/unsubscribe/{self.token(list_id, subscriber_id, email)}"

    def test_copy_url(self, list_id: int, subscriber_id: int, email: str) -> str:
        """Where a test copy's unsubscribe and preferences links lead: a page that says the mail is a
        test and changes nothing. A subscriber's copy holds links as long as a real copy's, but of
        random characters: a test copy gets forwarded, and the reader's own token would let anyone
        unsubscribe them. An address that is no subscriber's (`subscriber_id` 0) gets none."""
        if subscriber_id == 0:
            return f"{self._base_url}/test-copy"
        length = len(self.token(list_id, subscriber_id, email))
        return f"{self._base_url}/test-copy/{secrets.token_urlsafe(length)[:length]}"

    def preferences_url(self, list_id: int, subscriber_id: int, email: str) -> str:
        """The reader's preferences page (daily or weekly, or leave): the same token as their
        unsubscribe link, so the same rules hold for it."""
        return f"{self._base_url}/preferences/{self.token(list_id, subscriber_id, email)}"

    def urls(self, list_id: int, subscriber_id: int, email: str) -> tuple[str, str]:
        """The reader's unsubscribe and preferences URLs, from one signature: a send makes both for
        every reader."""
        token = self.token(list_id, subscriber_id, email)
        return f"{self._base_url}/unsubscribe/{token}", f"{self._base_url}/preferences/{token}"

    def headers(self, unsubscribe_url: str) -> dict[str, str]:
        """The RFC 2369 / RFC 8058 headers for one recipient."""
        return {
            "List-Unsubscribe": f"<{unsubscribe_url}>{self._mailto_target}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    @functools.cached_property
    def _mailto_target(self) -> str:
        """The mailto target every List-Unsubscribe adds after the URL ("" if none)."""
        # Percent-encoded: a valid address may hold '?', '&' or '%', which mean something in a URI.
        return f", <mailto:{quote(self._mailto, safe='@')}?subject=unsubscribe>" if self._mailto else ""


@dataclass(frozen=True)
class Confirmation:
    """What a well-formed confirmation token names, before its signature is checked."""

    list_id: int
    subscriber_id: int
    issued_at: datetime


class ConfirmLinks:
    """Makes and reads sign-up confirmation tokens with the project's signing keys."""

    def __init__(self, links: Links) -> None:
        self._links = links
        self._base_url = links.base_url

    @functools.cached_property
    def _signer(self) -> Signer:
        return _Signer(_keys_of(self._links), "newsletter.confirm")

    def token(self, list_id: int, subscriber_id: int, email: str, issued_at: datetime) -> str:
        issued = (issued_at - _EPOCH) // timedelta(microseconds=1)
        payload = ".".join(_to_base36(number) for number in (list_id, subscriber_id, issued))
        return f"{payload}.{self._signer.get_signature(_signed_text(payload, email)).decode('ascii')}"

    def url(self, list_id: int, subscriber_id: int, email: str, issued_at: datetime) -> str:
        return f"{self._base_url}/confirm/{self.token(list_id, subscriber_id, email, issued_at)}"

    @staticmethod
    def read(token: str) -> Confirmation:
        """The sign-up a well-formed token names; TokenError if it is not exactly a token."""
        match = _CONFIRM_TOKEN.fullmatch(token)
        numbers = [int(match[group], 36) for group in (1, 2, 3)] if match else []
        if match is None or not _canonical_base64(match[4]) or max(numbers) > MAX_ID:
            raise TokenError("this confirmation link is not valid")
        issued = numbers[2]
        try:
            issued_at = _EPOCH + (
                timedelta(microseconds=issued) if issued >= _MICROSECOND_LINKS else timedelta(seconds=issued)
            )
        except OverflowError:
            raise TokenError("this confirmation link is not valid") from None
        return Confirmation(numbers[0], numbers[1], issued_at)

    def signed_for(self, token: str, email: str) -> bool:
        """Whether `token` is exactly one we signed for this address."""
        payload, _, signature = token.rpartition(".")
        return self._signer.verify_signature(_signed_text(payload, email), signature)


class _Signer(Signer):
    """itsdangerous's Signer (HMAC-SHA256, "." between value and signature), each key derived once
    rather than at every signature (a third of its time): a send signs a link for each of its
    readers. The signatures are itsdangerous's own."""

    def __init__(self, keys: list[str], salt: str) -> None:
        super().__init__(keys, salt=salt, sep=".", digest_method=hashlib.sha256)
        self._derived: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


def _keys_of(links: Links) -> list[str]:
    """The signing keys as itsdangerous takes them: the one that signs last."""
    return list(reversed(links.signing_keys()))


def _signed_text(payload: str, email: str) -> str:
    # The address case-folded, not as typed: a re-import in other case keeps the reader's links
    # working. Not addresses.email_key, which is finer: the links in inboxes were signed over this,
    # and the ids in a token tell apart two addresses that fold alike.
    return f"{payload}.{email.casefold()}"


def _canonical_base64(text: str) -> bool:
    """Whether `text` is exactly how base64url writes its bytes: the last character of 32 bytes
    carries two unused bits, which lenient decoders ignore and a canonical encoder leaves zero."""
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except binascii.Error:
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == text


class _ClockedTimestampSigner(TimestampSigner):
    """itsdangerous' TimestampSigner on the project's clock (sections.Clock, pinned in tests)."""

    def __init__(self, keys: list[str], salt: str, clock: Callable[[], datetime]) -> None:
        super().__init__(keys, salt=salt, sep=".", digest_method=hashlib.sha256)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock().timestamp())
