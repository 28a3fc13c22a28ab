"""Moving mail/send request bodies: to SendGrid's v3 API, or into an outbox folder for a dry run.

The sender (newsletter/send.py) builds the bodies and decides what each answer means; a delivery
only moves one body and reports what came back. The one judgement made here is whether a request
that got no answer may have reached SendGrid: mail/send has no idempotency key, so that decides
whether repeating it is safe.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from .config import Settings
from .errors import MissingAPIKey

MAIL_SEND = "/v3/mail/send"

# SendGrid's error answers are a few hundred bytes. Of a bigger one (a proxy's page, a broken
# server) only this much is read, and an answer's text is stored and shown clipped to MAX_REASON:
# a 50 MB answer must not fill memory, the database (once per batch) or the terminal.
MAX_ANSWER_BYTES = 64 * 1024
MAX_REASON = 2000


class RequestNotSent(Exception):
    """The request never reached SendGrid (no connection): repeating it cannot deliver twice."""


class AnswerLost(Exception):
    """The request may have reached SendGrid, but no answer came back (read timeout, dropped
    connection): SendGrid may have accepted it, so repeating it may deliver twice."""


class RequestImpossible(Exception):
    """The request cannot be made at all (a malformed header, an unusable URL, a proxy refusing):
    it never reached SendGrid, and every later request would fail the same way."""


@dataclass(frozen=True)
class Answer:
    status: int
    message_id: str | None = None
    # SendGrid's error messages, "message (field)" each; empty on success.
    errors: tuple[str, ...] = ()
    # The fields the errors name (e.g. "personalizations.3.to.0.email"); None where none was named.
    fields: tuple[str | None, ...] = ()
    # How long SendGrid asked us to wait (Retry-After or X-RateLimit-Reset), in seconds.
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        # 202 for a real send; SendGrid answers 200 to a sandbox-mode request.
        return self.status in (200, 202)

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def reason(self) -> str:
        detail = "; ".join(self.errors) if self.errors else "no error message"
        return f"SendGrid answered {self.status}: {clip(detail, MAX_REASON)}"


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


class Delivery(Protocol):
    async def send(self, body: dict[str, Any]) -> Answer:
        """Send one mail/send body. Raises RequestNotSent or AnswerLost when no answer came."""
        ...

    async def aclose(self) -> None: ...


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes of a request body (the outbox writes the same bytes SendGrid would get)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SendGridDelivery:
    """POST /v3/mail/send with httpx: explicit timeouts, a connection pool as wide as the sender's
    concurrency, and the API key only in the Authorization header (never in a message)."""

    def __init__(self, settings: Settings) -> None:
        if settings.sendgrid_api_key is None:
            raise MissingAPIKey(
                "SENDGRID_API_KEY is not set, so nothing can be sent. Set it to an API key with the "
                "Mail Send permission, or preview the send with --dry-run (it writes the requests to "
                "an outbox folder and sends nothing)."
            )
        self._client = httpx.AsyncClient(
            base_url=settings.sendgrid_api_url,
            headers={
                "Authorization": f"Bearer {settings.sendgrid_api_key.get_secret_value()}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=None,  # waiting for a free connection is our own queue, not SendGrid's
            ),
            limits=httpx.Limits(
                max_connections=settings.send_concurrency,
                max_keepalive_connections=settings.send_concurrency,
            ),
        )

    async def send(self, body: dict[str, Any]) -> Answer:
        request = self._client.build_request("POST", MAIL_SEND, content=encode_body(body))
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.ProxyError, httpx.InvalidURL) as error:
            # Raised before a byte reaches SendGrid. The text is not used: a LocalProtocolError
            # quotes the offending header, which may be the Authorization header with the key.
            raise RequestImpossible(_IMPOSSIBLE[type(error)]) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise RequestNotSent(_describe(error)) from None
        except (httpx.WriteError, httpx.WriteTimeout) as error:
            # The body did not get out whole, and httpcore found no early answer (it reads one
            # after a failed write): SendGrid cannot act on part of a request.
            raise RequestNotSent(_describe(error)) from None
        except httpx.TransportError as error:
            # Read timeouts, resets and disconnects after the body left.
            raise AnswerLost(_describe(error)) from None
        try:
            content = await _read_capped(response)
        except httpx.TransportError:
            content = b""  # the status line and headers came: they are SendGrid's answer
        finally:
            await response.aclose()
        return read_answer(response, content)

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_capped(response: httpx.Response) -> bytes:
    """The start of the answer's body, at most MAX_ANSWER_BYTES: the rest is never read."""
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) >= MAX_ANSWER_BYTES:
            break
    return bytes(content[:MAX_ANSWER_BYTES])


_IMPOSSIBLE: dict[type[Exception], str] = {
    httpx.LocalProtocolError: (
        "the request could not be written: a header value is malformed (check SENDGRID_API_KEY for a "
        "stray line break, space or non-ASCII character)"
    ),
    httpx.UnsupportedProtocol: "sendgrid_api_url is not an http:// or https:// URL",
    httpx.InvalidURL: "sendgrid_api_url is not a valid URL",
    httpx.ProxyError: "the HTTP proxy refused to connect to SendGrid (check HTTPS_PROXY/HTTP_PROXY)",
}

# Connection failures happen in the socket layer before any request byte is written, so their text
# (an OS or TLS error) cannot hold a header; every other error is named by its kind only.
_TEXT_IS_SAFE = (httpx.ConnectError, httpx.ConnectTimeout)


def _describe(error: httpx.TransportError) -> str:
    kind = type(error).__name__
    return f"{kind}: {error}" if isinstance(error, _TEXT_IS_SAFE) and str(error) else kind


def read_answer(response: httpx.Response, content: bytes) -> Answer:
    """SendGrid's answer (its status and headers, and `content`, the start of its body) as an
    Answer (also used for the suppression API's answers)."""
    errors: list[str] = []
    fields: list[str | None] = []
    if response.status_code >= 400:
        try:
            payload = json.loads(content)
            items = payload.get("errors") or []
        except (ValueError, AttributeError, RecursionError):  # not JSON, cut short, or not SendGrid's
            items = []
        if not isinstance(items, list):
            items = []
        for item in items:
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
            errors.append(clip(content.decode("utf-8", "replace"), 500))
            fields.append(None)
    return Answer(
        status=response.status_code,
        message_id=response.headers.get("X-Message-Id"),
        errors=tuple(errors),
        fields=tuple(fields),
        retry_after=_retry_after(response.headers) if response.status_code >= 400 else None,
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            # SendGrid sends the Unix time at which the limit resets.
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None


class OutboxDelivery:
    """The dry run's delivery: each body goes to `folder/batch-NNNN.json` (the exact bytes a real
    send would POST, without the Authorization header), and the first recipient's message to
    `folder/first-recipient.eml`, as that reader would receive it, with its HTML part beside it as
    `first-recipient.html` to open in a browser."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder
        self._settings = settings
        folder.mkdir(parents=True, exist_ok=True)
        # A previous dry run of the same issue may have written more batches than this one will.
        for stale in [*folder.glob("batch-*.json"), folder / EML_NAME, folder / HTML_NAME]:
            stale.unlink(missing_ok=True)
        self.files: list[Path] = []
        self.eml: Path | None = None
        self.html: Path | None = None

    async def send(self, body: dict[str, Any]) -> Answer:
        number = len(self.files) + 1
        path = self.folder / f"batch-{number:04d}.json"
        path.write_bytes(encode_body(body))
        self.files.append(path)
        if self.eml is None:
            message = message_as_received(body, 0, self._settings)
            self.eml = self.folder / EML_NAME
            self.eml.write_bytes(bytes(message))
            self.html = self.folder / HTML_NAME
            self.html.write_text(message.get_body(("html",)).get_content(), encoding="utf-8")
        return Answer(status=202, message_id=f"dry-run-{number}")

    async def aclose(self) -> None:
        return None


EML_NAME = "first-recipient.eml"
HTML_NAME = "first-recipient.html"

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


_WIRE = _WirePolicy(linesep="\r\n", max_line_length=76)


def message_as_received(body: dict[str, Any], index: int, settings: Settings) -> EmailMessage:
    """The complete MIME message that personalization `index` of `body` stands for: SendGrid's
    substitutions applied, its per-recipient headers set, text and HTML as multipart/alternative."""
    personalization = body["personalizations"][index]
    substitutions: dict[str, str] = personalization.get("substitutions", {})

    def fill(value: str) -> str:
        for tag, replacement in substitutions.items():
            value = value.replace(tag, replacement)
        return value

    message = EmailMessage(policy=_WIRE)
    sender = body["from"]
    message["From"] = Address(sender.get("name", ""), addr_spec=sender["email"])
    recipient = personalization["to"][0]
    message["To"] = Address(recipient.get("name", ""), addr_spec=recipient["email"])
    if "reply_to" in body:
        message["Reply-To"] = Address(addr_spec=body["reply_to"]["email"])
    message["Subject"] = fill(personalization.get("subject", body["subject"]))
    message["Date"] = format_datetime(settings.clock())
    message["Message-ID"] = make_msgid(domain=sender["email"].rpartition("@")[2])
    for name, value in {**body.get("headers", {}), **personalization.get("headers", {})}.items():
        message[name] = value
    message["MIME-Version"] = "1.0"
    # Parts made as MIMEParts: EmailMessage.add_alternative would give the HTML part a MIME-Version
    # header of its own, which belongs to the message alone.
    message.make_alternative()
    for part in body["content"]:
        alternative = MIMEPart(policy=_WIRE)
        alternative.set_content(fill(part["value"]), subtype=part["type"].partition("/")[2], charset="utf-8")
        message.attach(alternative)
    return message
