"""SendGrid's v3 mail/send: one request per batch, one personalization per recipient.

SendGrid's limits per request hold by construction: at most `batch_size` (≤ 1000) personalizations
of one `to` each; substitutions and custom_args under 10,000 bytes per personalization (checked
here: an absurdly long base_url is the only way past it); and a body of one issue plus ~1 KB per
recipient, about 1.5 MB against 30 MB.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from ...errors import SendError
from ..base import Answer, AnswerLost, Batch, Recipient, RequestNotSent, Verdict
from ..headers import literal, plain_name, plain_text
from .. import answers
from . import http
from .settings import batch_limit

if TYPE_CHECKING:
    from ...sections import Delivery

MAIL_SEND = "/v3/mail/send"

# SendGrid refuses a personalization whose substitutions and custom_args total this many bytes.
PERSONAL_DATA_LIMIT = 10_000


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes of a request body (the outbox writes the same bytes SendGrid would get)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SendGrid:
    """POST /v3/mail/send with httpx, a connection pool as wide as the sender's concurrency."""

    name = "SendGrid"

    def __init__(self, delivery: Delivery, *, connect: bool = True) -> None:
        """`connect=False`: only to prepare requests (a dry run), which needs no API key."""
        self.batch_limit = batch_limit(delivery)
        self._tracking = _tracking(delivery.sender.track_opens, delivery.sender.track_clicks)
        self._client = http.client(delivery.section, delivery.pacing, connections=delivery.pacing.send_concurrency) if connect else None

    def prepare(self, batch: Batch) -> dict[str, Any]:
        """The request body; SendError if a recipient would break SendGrid's limits."""
        message = batch.message
        sender: dict[str, str] = {"email": message.sender_email}
        if name := _display_name(message.sender_name):
            sender["name"] = name
        body: dict[str, Any] = {
            "from": sender,
            # SendGrid writes the Subject header itself: text that stays text whatever it makes of it.
            "subject": literal(plain_text(message.subject)),
            # RFC 2046: the richest alternative last; SendGrid also requires text/plain first.
            "content": [
                {"type": "text/plain", "value": message.text},
                {"type": "text/html", "value": message.html},
            ],
            "tracking_settings": self._tracking,
        }
        if message.reply_to:
            body["reply_to"] = {"email": message.reply_to}
        if message.headers:
            # The same for every recipient (List-Id), so once per request.
            body["headers"] = dict(message.headers)
        if batch.validate_only:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        body["personalizations"] = [_personalization(r) for r in batch.recipients]
        return body

    def wire(self, prepared: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [("json", encode_body(prepared))]

    async def send(self, prepared: dict[str, Any]) -> Answer:
        assert self._client is not None, "a SendGrid made with connect=False sends nothing"
        request = self._client.build_request(
            "POST", MAIL_SEND, content=encode_body(prepared), headers={"Content-Type": "application/json"}
        )
        try:
            response = await self._client.send(request, stream=True)
        except tuple(http.IMPOSSIBLE) as error:
            raise http.impossible(error) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise RequestNotSent(http.describe(error)) from None
        except (httpx.WriteError, httpx.WriteTimeout) as error:
            # The body did not get out whole, and httpcore found no early answer (it reads one
            # after a failed write): SendGrid cannot act on part of a request.
            raise RequestNotSent(http.describe(error)) from None
        except httpx.TransportError as error:
            # Read timeouts, resets and disconnects after the body left.
            raise AnswerLost(http.describe(error)) from None
        answer = http.read_answer(response, await answers.read_capped(response, http.MAX_ANSWER_BYTES))
        return _verdict(answer, len(prepared["personalizations"]))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _tracking(opens: bool, clicks: bool) -> dict[str, Any]:
    """Every request says what it tracks, so that the report knows what it can count whatever the
    account's defaults are."""
    return {
        # Our own link and headers do the unsubscribing; SendGrid's footer would add a second.
        "subscription_tracking": {"enable": False},
        "open_tracking": {"enable": opens},
        # Not in the text part: SendGrid would rewrite every URL there, and plain text cannot mark
        # the unsubscribe link untracked as the HTML does (clicktracking="off"), so readers' signed
        # links would become SendGrid redirects.
        "click_tracking": {"enable": clicks, "enable_text": False},
    }


def _personalization(recipient: Recipient) -> dict[str, Any]:
    to: dict[str, str] = {"email": recipient.email}
    if name := _display_name(recipient.name):
        to["name"] = name
    personalization: dict[str, Any] = {"to": [to]}
    if substitutions := recipient.substitutions:
        personalization["substitutions"] = substitutions
    if recipient.headers:
        personalization["headers"] = dict(recipient.headers)
    if recipient.tags:
        # Strings: SendGrid rejects other types, and echoes them as top-level event keys.
        personalization["custom_args"] = dict(recipient.tags)
    personal = {**personalization.get("substitutions", {}), **personalization.get("custom_args", {})}
    size = len(json.dumps(personal, ensure_ascii=False).encode("utf-8"))
    if size >= PERSONAL_DATA_LIMIT:
        raise SendError(
            f"the unsubscribe link and ids of {recipient.email} take {size:,} bytes, and SendGrid "
            f"refuses {PERSONAL_DATA_LIMIT:,} or more per recipient: shorten base_url"
        )
    return personalization


def _display_name(name: str | None) -> str | None:
    """A name (the reader's or the sender's) as SendGrid takes it: plain, without the ';' and ','
    it takes for separators between addresses, and `literal`, since SendGrid writes the header."""
    plain = plain_name(name.replace(";", " ").replace(",", " ")) if name else None
    return literal(plain) if plain else None


def _verdict(answer: http.HTTPAnswer, size: int) -> Answer:
    """What SendGrid's answer to a batch of `size` means for the sender."""
    if answer.status in (200, 202):  # 200 answers a sandbox-mode request
        return Answer(Verdict.ACCEPTED, message_id=answer.message_id)
    if answer.status in (401, 403):
        return Answer(Verdict.AUTH_REFUSED, http.auth_refused(answer.status))
    if answer.retryable:
        return Answer(Verdict.RETRY_LATER, answer.reason, retry_after=answer.retry_after)
    if answer.status == 413:
        return Answer(Verdict.TOO_LARGE, answer.reason)
    refused = _named_personalizations(answer, size)
    if refused:
        return Answer(Verdict.RECIPIENTS_REFUSED, answer.reason, refused=frozenset(refused))
    return Answer(Verdict.MESSAGE_REFUSED, answer.reason)


def _named_personalizations(answer: http.HTTPAnswer, size: int) -> set[int]:
    """The personalizations (by position) a 400 blames, when it is about some recipients of the
    batch rather than the request: every field it names is `personalizations.N…` with N in the
    batch, and not every personalization of a batch of several is named. Anything else (an error
    about `from` or `content`, one naming nothing, an index the batch does not have, or every
    recipient at once) would fail every part alike: empty, and the send stops with everyone pending."""
    named = [f for f in answer.fields if f]
    if answer.status != 400 or not named:
        return set()
    indices: set[int] = set()
    for field_name in named:
        parts = field_name.split(".")
        if parts[0] != "personalizations" or len(parts) < 2 or not parts[1].isdecimal():
            return set()
        if int(parts[1]) >= size:
            return set()
        indices.add(int(parts[1]))
    return indices if size == 1 or len(indices) < size else set()
