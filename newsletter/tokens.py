"""Signed, non-expiring, per-recipient unsubscribe links (and the RFC 8058 headers that carry them).

A token is `<list id>.<subscriber id>.<HMAC-SHA256>` in base62-ish URL-safe form, about 50
characters: short enough for a List-Unsubscribe header. It names a membership, not an address, so a
leaked link reveals nothing but the ability to unsubscribe that one membership.

Undoing an unsubscribe takes more than the link: a resubscribe ticket, a signed timestamp that only
the page shown right after an unsubscribe carries, valid for RESUBSCRIBE_WINDOW. Whoever holds a
forwarded link can unsubscribe its owner, but cannot re-subscribe someone who said no.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import quote

from itsdangerous import BadSignature, Signer, TimestampSigner

from .config import Settings
from .errors import TokenError

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

RESUBSCRIBE_WINDOW = timedelta(days=1)


def _to_base36(number: int) -> str:
    digits = ""
    while True:
        number, remainder = divmod(number, 36)
        digits = _ALPHABET[remainder] + digits
        if number == 0:
            return digits


class UnsubscribeLinks:
    """Makes and reads unsubscribe tokens with the project's signing keys.

    Build one per process (or per send): the keys are read once.
    """

    def __init__(self, settings: Settings) -> None:
        keys = settings.signing_keys()
        # itsdangerous signs with the last key and accepts any of them, so old links keep working
        # after a rotation. Its unsign() compares signatures in constant time.
        self._signer = Signer(
            list(reversed(keys)),
            salt="newsletter.unsubscribe",
            sep=".",
            digest_method=hashlib.sha256,
        )
        self._tickets = _ClockedTimestampSigner(
            list(reversed(keys)), "newsletter.resubscribe", settings.clock
        )
        self._base_url = settings.base_url
        self._mailto = settings.unsubscribe_mailto

    def token(self, list_id: int, subscriber_id: int) -> str:
        payload = f"{_to_base36(list_id)}.{_to_base36(subscriber_id)}"
        return self._signer.sign(payload).decode("ascii")

    def read(self, token: str) -> tuple[int, int]:
        """The (list id, subscriber id) a token names; TokenError if it is not one we signed."""
        try:
            payload = self._signer.unsign(token).decode("ascii")
            list_part, subscriber_part = payload.split(".")
            return int(list_part, 36), int(subscriber_part, 36)
        except (BadSignature, ValueError, UnicodeError):
            raise TokenError("this unsubscribe link is not valid") from None

    def resubscribe_ticket(self, token: str) -> str:
        """A ticket that lets the holder of `token` undo an unsubscribe for RESUBSCRIBE_WINDOW."""
        return self._tickets.sign(token).decode("ascii")

    def resubscribe_allowed(self, token: str, ticket: str) -> bool:
        """Whether `ticket` was issued for `token` within RESUBSCRIBE_WINDOW."""
        try:
            signed = self._tickets.unsign(ticket, max_age=int(RESUBSCRIBE_WINDOW.total_seconds()))
        except (BadSignature, UnicodeError):  # expired (SignatureExpired), forged, or garbage
            return False
        return signed == token.encode("ascii", "replace")

    def url(self, list_id: int, subscriber_id: int) -> str:
        return f"{self._base_url}/unsubscribe/{self.token(list_id, subscriber_id)}"

    def headers(self, unsubscribe_url: str) -> dict[str, str]:
        """The RFC 2369 / RFC 8058 headers for one recipient."""
        targets = [f"<{unsubscribe_url}>"]
        if self._mailto:
            # Percent-encoded: a valid address may hold '?', '&' or '%', which mean something in a URI.
            targets.append(f"<mailto:{quote(self._mailto, safe='@')}?subject=unsubscribe>")
        return {
            "List-Unsubscribe": ", ".join(targets),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


class _ClockedTimestampSigner(TimestampSigner):
    """itsdangerous' TimestampSigner on the project's clock (Settings.clock, pinned in tests)."""

    def __init__(self, keys: list[str], salt: str, clock: Callable[[], datetime]) -> None:
        super().__init__(keys, salt=salt, sep=".", digest_method=hashlib.sha256)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock().timestamp())
