"""SendGrid's v3 HTTP API: the one client every SendGrid call goes through (its auth, timeouts and
the reading of its answers), for mail/send and the suppression lists alike."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from ...errors import MissingAPIKey
from .. import answers
from ..base import MAX_REASON, RequestImpossible, clip
from .settings import Section

if TYPE_CHECKING:
    from ...sections import Pacing

# SendGrid's error answers are a few hundred bytes. Of a bigger one (a proxy's page, a broken
# server) only this much is read: a 50 MB answer must not fill memory.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class HTTPAnswer:
    """What SendGrid answered, read: its status, its error messages ("message (field)" each) and
    the fields they name, the message id, and how long it asked us to wait."""

    status: int
    errors: tuple[str, ...] = ()
    fields: tuple[str | None, ...] = ()
    message_id: str | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return answers.retryable(self.status)

    @property
    def reason(self) -> str:
        detail = "; ".join(self.errors) if self.errors else "no error message"
        return f"SendGrid answered {self.status}: {clip(detail, MAX_REASON)}"


def auth_refused(status: int, needs: str = "the Mail Send permission") -> str:
    """What a 401/403 means, whoever met it."""
    return f"SendGrid refused the API key ({status}): check SENDGRID_API_KEY and that the key has {needs}"


def client(section: Section, pacing: Pacing, *, connections: int, accept: str = "application/json") -> httpx.AsyncClient:
    """An HTTP client for SendGrid: the API key only in the Authorization header (never in a
    message), explicit timeouts, a pool of `connections`."""
    if section.sendgrid_api_key is None:
        raise MissingAPIKey(
            "SENDGRID_API_KEY is not set, so SendGrid cannot be used. Set it to an API key with the "
            "Mail Send permission (and read access to suppressions for `subscribers sync`), or preview "
            "a send with --dry-run (it writes what would be sent to an outbox folder and sends nothing).",
            credential="SENDGRID_API_KEY",
        )
    return httpx.AsyncClient(
        base_url=section.sendgrid_api_url,
        headers={
            "Authorization": f"Bearer {section.sendgrid_api_key.get_secret_value()}",
            "Accept": accept,
        },
        timeout=httpx.Timeout(
            connect=pacing.connect_timeout,
            read=pacing.read_timeout,
            write=pacing.read_timeout,
            pool=None,  # waiting for a free connection is our own queue, not SendGrid's
        ),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# Raised before a byte reaches SendGrid. Their text is not used: a LocalProtocolError quotes the
# offending header, which may be the Authorization header with the key.
IMPOSSIBLE: dict[type[Exception], str] = {
    httpx.LocalProtocolError: (
        "the request could not be written: a header value is malformed (check SENDGRID_API_KEY for a "
        "stray line break, space or non-ASCII character)"
    ),
    httpx.UnsupportedProtocol: "sendgrid_api_url is not an http:// or https:// URL",
    httpx.InvalidURL: "sendgrid_api_url is not a valid URL",
    httpx.ProxyError: "the HTTP proxy refused to connect to SendGrid (check HTTPS_PROXY/HTTP_PROXY)",
}


def impossible(error: Exception) -> RequestImpossible:
    return RequestImpossible(IMPOSSIBLE[type(error)])


# Connection failures happen in the socket layer before any request byte is written, so their text
# (an OS or TLS error) cannot hold a header; every other error is named by its kind only.
_TEXT_IS_SAFE = (httpx.ConnectError, httpx.ConnectTimeout)


def describe(error: httpx.TransportError) -> str:
    kind = type(error).__name__
    return f"{kind}: {error}" if isinstance(error, _TEXT_IS_SAFE) and str(error) else kind


def read_answer(response: httpx.Response, content: bytes) -> HTTPAnswer:
    """SendGrid's answer (its status and headers, and `content`, the start of its body)."""
    errors: list[str] = []
    fields: list[str | None] = []
    if response.status_code >= 400:
        try:
            items = json.loads(content).get("errors") or []
        except (ValueError, AttributeError, RecursionError):  # not JSON, cut short, or not SendGrid's
            items = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            field = item.get("field")
            field = field[:200] if isinstance(field, str) and field not in ("", "null") else None
            message = clip(str(item.get("message") or "error"), MAX_REASON)
            errors.append(f"{message} ({field})" if field else message)
            fields.append(field)
        # Stoplight Prism puts the schema violation in a header (its body is a fixed example).
        violations = response.headers.get("sl-violations")
        if violations:
            errors.append(violations[:1000])
            fields.append(None)
        if not errors and content:
            # Not SendGrid's JSON: a proxy's page, most likely.
            key = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
            errors.append(answers.summary(content, secret=key))
            fields.append(None)
    return HTTPAnswer(
        status=response.status_code,
        errors=tuple(errors),
        fields=tuple(fields),
        message_id=response.headers.get("X-Message-Id"),
        retry_after=_retry_after(response.headers) if response.status_code >= 400 else None,
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    wait = answers.retry_after(headers.get("Retry-After"))
    if wait is not None:
        return wait
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            # SendGrid sends the Unix time at which the limit resets.
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None
