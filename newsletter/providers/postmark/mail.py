"""Postmark's /email/batch and /email/batchWithTemplates: up to 500 messages a request, one per
reader, each with its own links, List-Unsubscribe headers and Metadata (the ids Postmark echoes
back in its webhooks).

A batch of TEMPLATED_FROM readers or more names the issue's template (`templates`) and carries
only each reader's links. A smaller one, or an issue that cannot be a template, carries each
reader's whole message with their own links filled in. The issue is JSON-encoded once per
mailing, in pieces around its personal tags and each reader's own values, and a batch is those
pieces in order with each reader's values encoded between them: 500 messages cost a copy of their
bytes, not 500 encodings. The copy is made chunk by chunk as the request is written (see
CHUNK_BYTES), in `send`, outside the database transaction in which the send loop prepares a batch.

Postmark answers a batch 200 with one result per message, in order; a message's ErrorCode says
whether it was accepted (0) or refused, and 406 (an inactive recipient: a hard bounce, a spam
complaint or a manual suppression) means it will refuse that address until it is reactivated.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

import httpx

from ...errors import SendError
from ..base import PERSONAL_TAGS, Answer, AnswerLost, Batch, Message, Recipient, RequestNotSent, Verdict
from ..headers import literal, plain_name, plain_text
from . import http
from .settings import batch_limit
from .templates import MODEL_KEYS, TAGS, TEMPLATE_NOT_FOUND, TEMPLATED_FROM, Template, Templates, gone, template_of

if TYPE_CHECKING:
    from ...sections import Delivery

BATCH, TEMPLATED_BATCH = "/email/batch", "/email/batchWithTemplates"

# Per-message ErrorCodes about the recipient, not the message: the others would fail every message alike.
INVALID_ADDRESS, INACTIVE_RECIPIENT = 300, 406
_ABOUT_THE_RECIPIENT = {INVALID_ADDRESS, INACTIVE_RECIPIENT}


# A request goes out in chunks of about this many bytes, each joined just before it is written:
# still in the CPU's cache when the kernel copies it. Joined whole (24 MB for 500 readers of the
# example issue), a request would be written out to memory and read back, and asyncio would copy
# again what the socket did not take at once; in smaller chunks, each write's own cost (httpcore,
# anyio) would add up.
CHUNK_BYTES = 1024 * 1024


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Body:
    """A message body as encoded JSON string pieces around its personal tags, filled per reader."""

    def __init__(self, text: str) -> None:
        self._pieces: list[bytes] = []
        self._tags: list[str] = []
        start = 0
        for match in TAGS.finditer(text):
            self._pieces.append(_json(text[start : match.start()])[1:-1])
            self._tags.append(match[0])
            start = match.end()
        self._pieces.append(_json(text[start:])[1:-1])

    def fill(self, values: Mapping[str, bytes], into: list[bytes]) -> None:
        """`values`: each personal tag's replacement, already encoded for inside a JSON string."""
        into += (b'"', self._pieces[0])
        for tag, piece in zip(self._tags, self._pieces[1:]):
            into += (values[tag], piece)
        into.append(b'"')


class _Mailing:
    """A mailing's message as encoded JSON pieces, made once: each reader's message is these pieces
    around their own encoded values."""

    def __init__(self, message: Message, fields: Mapping[str, Any], day: date) -> None:
        self.message = message
        # Links marked untracked for SendGrid (the unsubscribe link) are marked for Postmark too.
        self._marked_html = message.html.replace('clicktracking="off"', 'clicktracking="off" data-pm-no-track')
        self._html = _Body(self._marked_html)
        self._text = _Body(message.text)
        self._fields = fields
        self._end = b"," + _json(fields)[1:-1] + b"}"
        self._day = day

    # Made at the mailing's first batch large enough for it: a message to one reader (a sign-up's
    # mail) never needs its template, nor the digest of the whole issue that names it.
    @functools.cached_property
    def template(self) -> Template | None:
        return template_of(self._fields["Subject"], self._marked_html, self.message.text, self.message.headers, self._day)

    @functools.cached_property
    def _templated_end(self) -> bytes:
        assert self.template is not None
        shared = {name: value for name, value in self._fields.items() if name != "Subject"}
        # InlineCss false: the HTML is already inlined, and must reach readers as /email/batch would carry it.
        templated = {"TemplateAlias": self.template.alias, "InlineCss": False, **shared}
        return b"," + _json(templated)[1:-1] + b"}"

    def pieces(self, recipients: Sequence[Recipient], *, templated: bool) -> list[bytes]:
        """A request's body, as the pieces it is joined from: mostly the mailing's own, shared."""
        add = self._add_templated if templated else self._add
        pieces: list[bytes] = [b'{"Messages":[' if templated else b"["]
        for number, recipient in enumerate(recipients):
            if number:
                pieces.append(b",")
            add(recipient, pieces)
        pieces.append(b"]}" if templated else b"]")
        return pieces

    def _start(self, recipient: Recipient) -> str:
        # The reader's strings go through the json module's own C encoder (json.dumps's set-up
        # would be most of the cost, 100,000 times a send), and are encoded to UTF-8 once together.
        headers = {**self.message.headers, **recipient.headers}
        return '{"To":%s,"Headers":[%s],"Metadata":{%s},' % (
            encode_basestring(_address(recipient.name, recipient.email)),
            ",".join(['{"Name":%s,"Value":%s}' % (encode_basestring(k), encode_basestring(v)) for k, v in headers.items()]),
            ",".join(["%s:%s" % (encode_basestring(k), encode_basestring(v)) for k, v in recipient.tags.items()]),
        )

    def _add(self, recipient: Recipient, into: list[bytes]) -> None:
        into.append((self._start(recipient) + '"HtmlBody":').encode())
        substitutions = recipient.substitutions
        # Each URL encoded once, for the HTML and the text alike; a tag without one stays as it is.
        values = {tag: encode_basestring(substitutions.get(tag, tag))[1:-1].encode() for tag in PERSONAL_TAGS}
        self._html.fill(values, into)
        into.append(b',"TextBody":')
        self._text.fill(values, into)
        into.append(self._end)

    def _add_templated(self, recipient: Recipient, into: list[bytes]) -> None:
        substitutions = recipient.substitutions
        # A tag without a URL stays as it is, as in a whole copy.
        model = ",".join(
            ["%s:%s" % (encode_basestring(key), encode_basestring(substitutions.get(tag, tag))) for tag, key in MODEL_KEYS.items()]
        )
        into += ((self._start(recipient) + '"TemplateModel":{%s}' % model).encode(), self._templated_end)


async def _chunks(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """`pieces` joined into chunks of about CHUNK_BYTES, each only when it is asked for."""
    start = size = 0
    for end, piece in enumerate(pieces, 1):
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(pieces[start:end])
            start, size = end, 0
    if start < len(pieces):
        yield b"".join(pieces[start:])


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
    """POST /email/batch or /email/batchWithTemplates with httpx, a connection pool as wide as the
    sender's concurrency."""

    name = "Postmark"

    def __init__(self, delivery: Delivery, *, connect: bool = True) -> None:
        """`connect=False`: only to prepare requests (a dry run), which needs no token."""
        self.batch_limit = batch_limit(delivery)
        self._stream = delivery.section.postmark_message_stream
        self._track_opens = delivery.sender.track_opens
        # Not in the text part: Postmark would rewrite every URL there, readers' signed links included.
        self._track_links = "HtmlOnly" if delivery.sender.track_clicks else "None"
        self._client = http.client(delivery.section, delivery.pacing, connections=delivery.pacing.send_concurrency) if connect else None
        self._templates = Templates(self._client) if self._client is not None else None
        self._clock = delivery.clock
        self._mailing: _Mailing | None = None

    def prepare(self, batch: Batch) -> Prepared:
        if batch.validate_only:
            raise SendError("Postmark has no sandbox mode (--sandbox): use --dry-run to see what would be sent")
        return Prepared(batch.message, tuple(batch.recipients))

    def wire(self, prepared: Prepared) -> list[tuple[str, bytes]]:
        """The batch's request; a templated one follows the template it names, as made at Postmark."""
        mailing = self._for(prepared.message)
        template = self._template(mailing, prepared)
        batch = ("json", b"".join(mailing.pieces(prepared.recipients, templated=template is not None)))
        return [batch] if template is None else [("template.json", template.body), batch]

    async def send(self, prepared: Prepared) -> Answer:
        assert self._client is not None and self._templates is not None, "a Postmark made with connect=False sends nothing"
        mailing = self._for(prepared.message)
        template = self._template(mailing, prepared)
        if template is not None:
            if (answer := await self._templates.make(template, self._clock().date())) is not None:
                return answer
            if not self._templates.ready(template):
                template = None  # Postmark would not take it: the issue goes whole
        pieces = mailing.pieces(prepared.recipients, templated=template is not None)
        # The length given, the body is sent as it is chunked (h11 checks that exactly this many
        # bytes follow), not in HTTP chunked encoding.
        length = str(sum(map(len, pieces)))
        request = self._client.build_request(
            "POST",
            BATCH if template is None else TEMPLATED_BATCH,
            content=_chunks(pieces),
            headers={"Content-Type": "application/json", "Content-Length": length},
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
        answer = await http.read(response)
        if template is not None and gone(answer):
            # Deleted at Postmark meanwhile (by hand): nothing was sent, and the retry makes it again.
            self._templates.forget(template)
            raise RequestNotSent(f"Postmark had lost the issue's template (ErrorCode {TEMPLATE_NOT_FOUND}); nothing was sent")
        return verdict(answer, len(prepared.recipients))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # -- the request ---------------------------------------------------------------------------

    @staticmethod
    def _template(mailing: _Mailing, prepared: Prepared) -> Template | None:
        """The template `prepared` is sent with, if any."""
        return mailing.template if len(prepared.recipients) >= TEMPLATED_FROM else None

    def _for(self, message: Message) -> _Mailing:
        """The mailing of `message`, encoded once."""
        if self._mailing is None or self._mailing.message is not message:
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
            self._mailing = _Mailing(message, fields, self._clock().date())
        return self._mailing


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
