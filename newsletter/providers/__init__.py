"""The delivery seam: what the sender hands a mail provider and what comes back, in neutral terms.

One module (or package) per provider, like listmonk's messengers: `sendgrid` (the v3 HTTP API) and
`smtp` (any SMTP server), plus `outbox`, which writes what the configured provider would send (the
dry run). The send loop deals only in the types below: a Message (what every reader of an issue
gets), a Batch of Recipients (each with their own unsubscribe link, headers and tags) and the
provider's Answer. Whether a request may have reached the provider without an answer is the one
judgement a provider makes besides reading its answers: it decides whether repeating is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from ..config import Settings

# Where each reader's own unsubscribe and preferences URLs go in a message's HTML and text (defined
# beside the digest parser, which keeps digests from containing them).
from ..digest import PERSONAL_TAGS, PREFERENCES_TAG, UNSUBSCRIBE_TAG

__all__ = [
    "PERSONAL_TAGS",
    "PREFERENCES_TAG",
    "UNSUBSCRIBE_TAG",
    "Answer",
    "AnswerLost",
    "Batch",
    "Message",
    "Provider",
    "Recipient",
    "RequestImpossible",
    "RequestNotSent",
    "Verdict",
    "provider_for",
]


@dataclass(frozen=True)
class Message:
    """What every reader of one mailing gets; UNSUBSCRIBE_TAG in `html` and `text` stands for each
    reader's own unsubscribe URL."""

    subject: str
    html: str
    text: str
    sender_email: str
    sender_name: str
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # the same for every reader (List-Id)


@dataclass(frozen=True)
class Recipient:
    """One reader of a batch as a provider sees them."""

    email: str
    name: str | None
    unsubscribe_url: str | None  # fills UNSUBSCRIBE_TAG; None in mail that carries none
    headers: Mapping[str, str] = field(default_factory=dict)  # their own (List-Unsubscribe, -Post)
    # Ids the provider echoes back with its events (campaign, list, subscriber), as strings.
    tags: Mapping[str, str] = field(default_factory=dict)
    preferences_url: str | None = None  # fills PREFERENCES_TAG

    @property
    def substitutions(self) -> dict[str, str]:
        """What each personal tag in the message becomes for this reader."""
        urls = {UNSUBSCRIBE_TAG: self.unsubscribe_url, PREFERENCES_TAG: self.preferences_url}
        return {tag: url for tag, url in urls.items() if url is not None}


@dataclass(frozen=True)
class Batch:
    """A Message to several Recipients in one exchange with the provider. `validate_only`: the
    provider checks it and delivers it to nobody (SendGrid's sandbox mode)."""

    message: Message
    recipients: Sequence[Recipient]
    validate_only: bool = False


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # every recipient of the batch is the provider's to deliver
    RECIPIENTS_REFUSED = "recipients refused"  # `Answer.refused` names them; the others were not sent
    MESSAGE_REFUSED = "message refused"  # about the message or the request: every part would fail alike
    AUTH_REFUSED = "auth refused"  # the credentials: every later request would fail too
    RETRY_LATER = "retry later"  # rate-limited or unavailable: nothing was sent, try again
    TOO_LARGE = "too large"  # the request as a whole is too big: send it in parts


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    reason: str = ""  # the provider's own words, clipped (empty when accepted)
    message_id: str | None = None
    refused: frozenset[int] = frozenset()  # with RECIPIENTS_REFUSED: positions in the batch
    retry_after: float | None = None  # seconds the provider asked us to wait

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


class RequestNotSent(Exception):
    """The request never reached the provider (no connection): repeating it cannot deliver twice."""


class AnswerLost(Exception):
    """The request may have reached the provider, but no answer came back (read timeout, dropped
    connection): it may have been accepted, so repeating it may deliver twice."""


class RequestImpossible(Exception):
    """The request cannot be made at all (a malformed header, an unusable URL, a proxy refusing):
    it never reached the provider, and every later request would fail the same way."""


class Provider(Protocol):
    """A way to deliver mail. `prepare` turns a batch into the provider's own request (raising
    SendError when the batch cannot be sent as it is); `send` delivers a prepared request once."""

    name: str  # for messages: "SendGrid", "the SMTP server smtp.example.com:587"
    batch_limit: int  # recipients per request

    def prepare(self, batch: Batch) -> Any: ...

    async def send(self, prepared: Any) -> Answer: ...

    def wire(self, prepared: Any) -> list[tuple[str, bytes]]:
        """What `send` would transmit, as (file name, bytes) pairs, for the dry run's outbox."""
        ...

    async def aclose(self) -> None: ...


def provider_for(settings: Settings, *, connect: bool = True) -> Provider:
    """The configured provider, its credentials checked (nothing is connected yet). With
    `connect=False` it only prepares requests, for the dry run, and needs no credentials."""
    if settings.provider == "smtp":
        from .smtp import SMTP

        return SMTP(settings, connect=connect)
    from .sendgrid import SendGrid

    return SendGrid(settings, connect=connect)


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how much was left out (a provider's answer
    can be megabytes: it is stored once per batch and shown on a terminal)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


MAX_REASON = 2000


def batch_limit(settings: Settings) -> int:
    """Recipients per request with the configured provider: SMTP sends each reader's message on its
    own, so that each gets an exact outcome (sent, refused, or uncertain) of its own."""
    return 1 if settings.provider == "smtp" else settings.batch_size


@dataclass(frozen=True)
class Event:
    """What a provider reported about one message after it was accepted (delivered, opened, clicked,
    bounced, reported as spam, unsubscribed…), read from its own format."""

    id: str | None  # the provider's id for the event: each is applied once
    kind: str  # the provider's name for it, counted per campaign
    email: str | None  # the address the message went to
    campaign_id: int | None  # from the tags the message carried
    list_id: int | None
    # (membership status, whether it applies to every list) for the events that suppress an address
    suppression: tuple[str, bool] | None
    detail: str  # for the member's event log
    # For the report's per-reader facts: when it happened, the link a click followed, and whether
    # an open was the provider's guess at a machine (Apple Mail Privacy Protection), not a reader.
    at: datetime | None = None
    url: str | None = None
    machine_open: bool = False
