"""Postmark's /email/batch: up to 500 messages a request, one per reader, each with its own links,
List-Unsubscribe headers and Metadata (the ids Postmark echoes back in its webhooks).

Postmark has no substitutions in a batch, so each reader's message carries the whole issue with
their own links filled in. The issue is JSON-encoded once per message, in pieces around its
personal tags, and each reader's body is those pieces joined around their own escaped URLs: a
batch of 500 costs a copy of its bytes, not 500 encodings. That work is done in `send`, outside
the database transaction in which the send loop prepares a batch.

Postmark answers a batch 200 with one result per message, in order; a message's ErrorCode says
whether it was accepted (0) or refused, and 406 (an inactive recipient: a hard bounce, a spam
complaint or a manual suppression) means it will refuse that address until it is reactivated.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from ...errors import SendError
from ..base import PERSONAL_TAGS, Answer, AnswerLost, Batch, Message, Recipient, RequestNotSent, Verdict
from ..headers import literal, plain_name, plain_text
from . import http
from .settings import batch_limit

if TYPE_CHECKING:
    from ...config import Settings

BATCH = "/email/batch"

# Per-message ErrorCodes about the recipient, not the message: the others would fail every message alike.
INVALID_ADDRESS, INACTIVE_RECIPIENT = 300, 406
_ABOUT_THE_RECIPIENT = {INVALID_ADDRESS, INACTIVE_RECIPIENT}

_TAGS = re.compile("|".join(re.escape(tag) for tag in PERSONAL_TAGS))


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _string(text: str) -> bytes:
    """A JSON string literal, by the json module's own C encoder: the per-reader values go through
    this 100,000 times a send, where json.dumps's set-up would be most of the cost."""
    return encode_basestring(text).encode("utf-8")


class _Body:
    """A message body as encoded JSON string pieces around its personal tags, filled per reader."""

    def __init__(self, text: str) -> None:
        self._pieces: list[bytes] = []
        self._tags: list[str] = []
        start = 0
        for match in _TAGS.finditer(text):
            self._pieces.append(_json(text[start : match.start()])[1:-1])
            self._tags.append(match[0])
            start = match.end()
        self._pieces.append(_json(text[start:])[1:-1])

    def fill(self, substitutions: Mapping[str, str], into: list[bytes]) -> None:
        into += (b'"', self._pieces[0])
        for tag, piece in zip(self._tags, self._pieces[1:]):
            into += (_string(substitutions.get(tag, tag))[1:-1], piece)
        into.append(b'"')


@dataclass(frozen=True)
class Prepared:
    message: Message
    recipients: tuple[Recipient, ...]


def _address(name: str | None, email: str) -> str:
    """A From or To value as Postmark parses it: a quoted display name (so that a comma in it
    cannot start a second address), then the address."""
    display = plain_name(name)
    if display is None:
        return email
    quoted = literal(display).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{email}>'


class Postmark:
    """POST /email/batch with httpx, a connection pool as wide as the sender's concurrency."""

    name = "Postmark"

    def __init__(self, settings: Settings, *, connect: bool = True) -> None:
        """`connect=False`: only to prepare requests (a dry run), which needs no token."""
        self.batch_limit = batch_limit(settings)
        self._stream = settings.postmark_message_stream
        self._track_opens = settings.track_opens
        # Not in the text part: Postmark would rewrite every URL there, readers' signed links included.
        self._track_links = "HtmlOnly" if settings.track_clicks else "None"
        self._client = http.client(settings, connections=settings.send_concurrency) if connect else None
        self._encoded: tuple[Message, bytes, _Body, _Body] | None = None

    def prepare(self, batch: Batch) -> Prepared:
        if batch.validate_only:
            raise SendError("Postmark has no sandbox mode (--sandbox): use --dry-run to see what would be sent")
        return Prepared(batch.message, tuple(batch.recipients))

    def wire(self, prepared: Prepared) -> list[tuple[str, bytes]]:
        return [("json", self._body(prepared))]

    async def send(self, prepared: Prepared) -> Answer:
        assert self._client is not None, "a Postmark made with connect=False sends nothing"
        request = self._client.build_request(
            "POST", BATCH, content=self._body(prepared), headers={"Content-Type": "application/json"}
        )
        try:
            response = await self._client.send(request, stream=True)
        except http.IMPOSSIBLE as error:
            raise http.impossible(error) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout) as error:
            # No connection, or the body did not get out whole: Postmark cannot act on part of a request.
            raise RequestNotSent(http.describe(error)) from None
        except httpx.TransportError as error:
            raise AnswerLost(http.describe(error)) from None
        return verdict(await http.read(response), len(prepared.recipients))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # -- the request ---------------------------------------------------------------------------

    def _body(self, prepared: Prepared) -> bytes:
        common, html, text = self._common(prepared.message)
        # Bytes joined once: each reader's copy of the issue is a copy, never a re-encoding.
        out: list[bytes] = [b"["]
        for number, recipient in enumerate(prepared.recipients):
            headers = {**prepared.message.headers, **recipient.headers}
            out += (b',{"To":' if number else b'{"To":', _string(_address(recipient.name, recipient.email)), b',"Headers":[')
            out.append(b",".join(b'{"Name":%s,"Value":%s}' % (_string(name), _string(value)) for name, value in headers.items()))
            out.append(b'],"Metadata":{')
            out.append(b",".join(b"%s:%s" % (_string(key), _string(value)) for key, value in recipient.tags.items()))
            out.append(b'},"HtmlBody":')
            html.fill(recipient.substitutions, out)
            out.append(b',"TextBody":')
            text.fill(recipient.substitutions, out)
            out += (common, b"}")
        out.append(b"]")
        return b"".join(out)

    def _common(self, message: Message) -> tuple[bytes, _Body, _Body]:
        """The fields every reader's message shares, encoded once per mailing."""
        if self._encoded is None or self._encoded[0] is not message:
            fields: dict[str, Any] = {
                "From": _address(message.sender_name, message.sender_email),
                # Postmark writes the Subject header itself: text that stays text whatever it makes of it.
                "Subject": literal(plain_text(message.subject)),
                "MessageStream": self._stream,
                "TrackOpens": self._track_opens,
                "TrackLinks": self._track_links,
            }
            if message.reply_to:
                fields["ReplyTo"] = message.reply_to
            common = b"," + _json(fields)[1:-1]
            # Links marked untracked for SendGrid (the unsubscribe link) are marked for Postmark too.
            html = message.html.replace('clicktracking="off"', 'clicktracking="off" data-pm-no-track')
            self._encoded = (message, common, _Body(html), _Body(message.text))
        return self._encoded[1], self._encoded[2], self._encoded[3]


# -- the answer ------------------------------------------------------------------------------------


def verdict(answer: http.HTTPAnswer, size: int) -> Answer:
    """What Postmark's answer to a batch of `size` messages means for the sender."""
    if answer.status == 401:
        return Answer(Verdict.AUTH_REFUSED, http.auth_refused(answer.status))
    if answer.retryable:
        return Answer(Verdict.RETRY_LATER, answer.reason, retry_after=answer.retry_after)
    if answer.status == 413:
        return Answer(Verdict.TOO_LARGE, answer.reason)
    if answer.status != 200:
        # 422 and the like: about the request as a whole; every part would fail alike.
        return Answer(Verdict.MESSAGE_REFUSED, answer.reason)
    results = answer.body
    if not isinstance(results, list) or len(results) != size or not all(isinstance(r, dict) for r in results):
        # Accepted, but no telling which message was: as if the answer never came.
        raise AnswerLost(f"Postmark answered 200 without one result per message (expected {size})")
    return _each(results)


def _each(results: list[dict[str, Any]]) -> Answer:
    codes = [result.get("ErrorCode") for result in results]
    accepted = [result for result, code in zip(results, codes) if code == 0]
    message_id = next((str(result.get("MessageID")) for result in accepted), None)
    if len(accepted) == len(results):
        return Answer(Verdict.ACCEPTED, message_id=message_id)
    reasons = {
        position: f"Postmark refused it: {str(result.get('Message') or 'no message')[:500]} (ErrorCode {code})"
        for position, (result, code) in enumerate(zip(results, codes))
        if code != 0
    }
    if not accepted and not any(code in _ABOUT_THE_RECIPIENT for code in codes):
        return Answer(Verdict.MESSAGE_REFUSED, next(iter(reasons.values())))
    refused = frozenset(reasons)
    suppressed = frozenset(position for position in refused if codes[position] == INACTIVE_RECIPIENT)
    summary = f"Postmark refused {len(refused):,} of {len(results):,} message(s)"
    # A message on its own is a recipient refused, whatever the provider: transactional mail reads it so.
    kind = Verdict.RECIPIENTS_REFUSED if len(results) == 1 else Verdict.EACH_ANSWERED
    return Answer(kind, summary, message_id=message_id, refused=refused, reasons=reasons, suppressed=suppressed)
