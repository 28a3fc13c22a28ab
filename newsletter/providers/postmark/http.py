"""Postmark's HTTP API: the one client every Postmark call goes through (its token, timeouts and the
reading of its answers), for /email/batch and the suppression dump alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from ...errors import MissingAPIKey
from .. import answers
from ..base import MAX_REASON, RequestImpossible, clip

if TYPE_CHECKING:
    from ...sections import Pacing
    from .settings import Section

TOKEN_HEADER = "X-Postmark-Server-Token"

# A batch's answer is ~200 bytes a message (100 KB for 500); past this it is not Postmark's.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HTTPAnswer:
    """What Postmark answered: its status, its JSON body (None if it was none), and for an error
    that is not Postmark's JSON, its body in one line."""

    status: int
    body: Any
    retry_after: float | None = None
    summary: str = "no error message"

    @property
    def retryable(self) -> bool:
        return answers.retryable(self.status)

    @property
    def reason(self) -> str:
        detail = self.summary
        if isinstance(self.body, dict) and self.body.get("Message"):
            detail = f"{self.body['Message']} (ErrorCode {self.body.get('ErrorCode')})"
        return f"Postmark answered {self.status}: {clip(str(detail), MAX_REASON)}"


def auth_refused(status: int) -> str:
    return f"Postmark refused the server token ({status}): check POSTMARK_SERVER_TOKEN"


def client(section: Section, pacing: Pacing, *, connections: int) -> httpx.AsyncClient:
    """An HTTP client for Postmark: the token only in its header (never in a message), explicit
    timeouts, a pool of `connections`."""
    if section.postmark_server_token is None:
        raise MissingAPIKey(
            "POSTMARK_SERVER_TOKEN is not set, so Postmark cannot be used. Set it to the server's API "
            "token, or preview a send with --dry-run (it writes what would be sent to an outbox "
            "folder and sends nothing).",
            credential="POSTMARK_SERVER_TOKEN",
        )
    return httpx.AsyncClient(
        base_url=section.postmark_api_url,
        headers={
            TOKEN_HEADER: section.postmark_server_token.get_secret_value(),
            "Accept": "application/json",
        },
        timeout=httpx.Timeout(
            connect=pacing.connect_timeout, read=pacing.read_timeout, write=pacing.read_timeout, pool=None
        ),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# Raised before a byte reaches Postmark. Their text is not used: a LocalProtocolError quotes the
# offending header, which may be the token's.
_IMPOSSIBLE: dict[type[Exception], str] = {
    httpx.LocalProtocolError: "the request could not be written: a header value is malformed (check POSTMARK_SERVER_TOKEN)",
    httpx.UnsupportedProtocol: "postmark_api_url is not an http:// or https:// URL",
    httpx.InvalidURL: "postmark_api_url is not a valid URL",
    httpx.ProxyError: "the HTTP proxy refused to connect to Postmark (check HTTPS_PROXY/HTTP_PROXY)",
}
IMPOSSIBLE = tuple(_IMPOSSIBLE)


def impossible(error: Exception) -> RequestImpossible:
    return RequestImpossible(_IMPOSSIBLE[type(error)])


def describe(error: httpx.TransportError) -> str:
    # Only a connection failure's text (the OS's or TLS's) can hold no header.
    safe = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)) and str(error)
    return f"{type(error).__name__}: {error}" if safe else type(error).__name__


async def read(response: httpx.Response) -> HTTPAnswer:
    """The answer, its body read up to MAX_ANSWER_BYTES (a body cut short reads as none)."""
    content = await answers.read_capped(response, MAX_ANSWER_BYTES + 1)
    try:
        body = json.loads(content) if len(content) <= MAX_ANSWER_BYTES else None
    except (ValueError, RecursionError):
        body = None
    if response.status_code < 400:
        return HTTPAnswer(response.status_code, body)
    return HTTPAnswer(
        response.status_code,
        body,
        answers.retry_after(response.headers.get("Retry-After")),
        answers.summary(content, secret=response.request.headers.get(TOKEN_HEADER)),
    )
