"""Checks of setting values, shared by config's own settings and the providers' sections
(providers/*/settings.py): the messages never quote a secret."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import SecretStr

# What an HTTP header value can carry: printable ASCII. A key with a line break (a CRLF .env file, a
# multi-line TOML string) or a non-ASCII character makes httpx fail with the header, key included,
# in its message.
_API_KEY = re.compile(r"[\x21-\x7e]+")


def absolute_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


def api_key(value: SecretStr | None) -> SecretStr | None:
    """A key or token as a header carries it; None when empty (a variable set to nothing is not set)."""
    if value is None:
        return None
    key = value.get_secret_value().strip()
    if not key:
        return None
    if not _API_KEY.fullmatch(key):
        raise ValueError(
            "the API key contains whitespace, a control character or a non-ASCII character "
            "(a line break from a CRLF .env file or a multi-line TOML string?); set it to the key alone"
        )
    return SecretStr(key)
