"""Signed, non-expiring, per-recipient unsubscribe links (and the RFC 8058 headers that carry them).

A token is `<list id>.<subscriber id>.<HMAC-SHA256>` in base62-ish URL-safe form, about 50
characters: short enough for a List-Unsubscribe header. It names a membership, not an address, so a
leaked link reveals nothing but the ability to unsubscribe that one membership.
"""

from __future__ import annotations

import hashlib

from itsdangerous import BadSignature, Signer

from .config import Settings
from .errors import TokenError

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


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

    def url(self, list_id: int, subscriber_id: int) -> str:
        return f"{self._base_url}/unsubscribe/{self.token(list_id, subscriber_id)}"

    def headers(self, unsubscribe_url: str) -> dict[str, str]:
        """The RFC 2369 / RFC 8058 headers for one recipient."""
        targets = [f"<{unsubscribe_url}>"]
        if self._mailto:
            targets.append(f"<mailto:{self._mailto}?subject=unsubscribe>")
        return {
            "List-Unsubscribe": ", ".join(targets),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
