"""The delivery seam in neutral terms: what the sender hands a mail provider, what comes back, and
what a provider reports afterwards (its events, its suppression lists).

The send loop deals only in the types below: a Message (what every reader of an issue gets), a Batch
of Recipients (each with their own unsubscribe link, headers and tags) and the provider's Answer.
Whether a request may have reached the provider without an answer is the one judgement a provider
makes besides reading its answers: it decides whether repeating is safe. Feedback (a webhook) and
SuppressionSource (pulled lists) are capabilities a provider may have; both speak in Events and
Suppressions whose kinds and statuses are ours, never a provider's words.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# Where each reader's own unsubscribe and preferences URLs go in a message's HTML and text (defined
# beside the digest parser, which keeps digests from containing them).
from ..content.digest import PERSONAL_TAGS, PREFERENCES_TAG, UNSUBSCRIBE_TAG

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
    "Event",
    "EventKind",
    "Feedback",
    "Fetch",
    "Fetched",
    "Refusal",
    "Suppression",
    "SuppressionList",
    "SuppressionSource",
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
    # Each recipient answered on its own: those `Answer.refused` names refused for good, the others
    # accepted. Each is settled as is; nothing is sent again.
    EACH_ANSWERED = "each answered"


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    reason: str = ""  # the provider's own words, clipped (empty when accepted)
    message_id: str | None = None
    refused: frozenset[int] = frozenset()  # with RECIPIENTS_REFUSED, EACH_ANSWERED: positions in the batch
    retry_after: float | None = None  # seconds the provider asked us to wait
    reasons: Mapping[int, str] = field(default_factory=dict)  # a refused position's own reason
    # Refused positions whose address the provider will not send to again (an inactive recipient):
    # their memberships are suppressed, as its suppression list would.
    suppressed: frozenset[int] = frozenset()

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED

    @property
    def delivered_some(self) -> bool:
        """Whether recipients may have been accepted: the batch must never go back to pending."""
        return self.verdict in (Verdict.ACCEPTED, Verdict.EACH_ANSWERED)


@dataclass(frozen=True)
class Fetched(Answer):
    """The answer to a read (a page of a suppression list): ACCEPTED with its JSON `body`, or why
    not in the verdicts of a batch's answer, so that one retry loop serves both."""

    body: Any = None


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

    @property
    def name(self) -> str:
        """For messages: "SendGrid", "the SMTP server smtp.example.com:587"."""
        ...

    @property
    def batch_limit(self) -> int:
        """Recipients per request."""
        ...

    def prepare(self, batch: Batch) -> Any: ...

    async def send(self, prepared: Any) -> Answer: ...

    def wire(self, prepared: Any) -> list[tuple[str, bytes]]:
        """What `send` would transmit, as (file name, bytes) pairs, for the dry run's outbox."""
        ...

    async def aclose(self) -> None: ...


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how much was left out (a provider's answer
    can be megabytes: it is stored once per batch and shown on a terminal)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


MAX_REASON = 2000


class EventKind(enum.StrEnum):
    """What happened to a message after the provider accepted it, in our words (stored in
    campaign_stats and campaign_events: each provider maps its own names onto these)."""

    PROCESSED = "processed"  # taken in by the provider, not yet tried
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # the receiving server said "later"; the provider keeps trying
    DROPPED = "dropped"  # the provider did not try (a suppressed or invalid address)
    BOUNCED = "bounced"
    OPENED = "opened"
    CLICKED = "clicked"
    SPAM_REPORT = "spam_report"
    UNSUBSCRIBED = "unsubscribed"  # through the provider's own link or list, not ours
    RESUBSCRIBED = "resubscribed"
    OTHER = "other"  # a kind we do not know (a provider's new event): counted, never acted on


@dataclass(frozen=True)
class Event:
    """What a provider reported about one message after it was accepted, read from its own format."""

    id: str | None  # the provider's id for the event, unique among its events: each is applied once
    kind: EventKind  # counted per campaign
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


# What neither database stores in text: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(event: dict[str, Any]) -> dict[str, Any]:
    """A provider's event object with NUL and lone surrogates in its values written out as their
    JSON escapes (`\\u0000`, `\\ud800`): visible in a stored reason instead of failing the write.
    Only top-level values are ever stored or looked up."""
    return {key: _UNSTORABLE.sub(_escape, value) if isinstance(value, str) else value for key, value in event.items()}


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


# Ids are positive 64-bit integers: a bigger number makes the database driver fail (SQLite raises
# OverflowError), which would roll back the batch and have the provider retry it for a day.
MAX_ID = 2**63 - 1


def tag_id(value: object) -> int | None:
    """One of the ids a message was tagged with, as a provider echoes it (the string we sent, or a
    number), if it is a valid id."""
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 19:
        value = int(value)  # the length check first: int() refuses over 4300 digits (ValueError)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    return None


@dataclass(frozen=True)
class Refusal:
    """Why a webhook request is not taken: the HTTP status and a short text for the caller."""

    status: int
    reason: str


class Feedback(Protocol):
    """A provider's webhook: proves a request is the provider's and reads its events. The server
    checks the headers before it reads a body (an unauthenticated request costs nothing), then the
    body, and applies the events once the request is proven."""

    @property
    def max_body(self) -> int:
        """Bytes a request of this provider's can hold; a bigger one is refused unread."""
        ...

    def check_headers(self, headers: Mapping[str, str], now: datetime) -> Refusal | None: ...

    def check_body(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None: ...

    def events(self, body: bytes) -> list[Event | None]:
        """The request's events (None for an item that is no event); ValueError if the body is not
        in the provider's format at all."""
        ...


@dataclass(frozen=True)
class SuppressionList:
    """One of a provider's lists of addresses it will not send to."""

    kind: str  # its key in sync_state, unique across providers
    status: str  # what it makes of a membership
    label: str  # for the member's event log: "SendGrid bounces"


@dataclass(frozen=True)
class Suppression:
    email: str
    created: int  # Unix time
    reason: str | None


# The caller's retry loop around `send`: makes a request `pages` prepared, by as many tries as it
# takes, and hands back the body of its answer (SendError if it got none it can use, with the
# reason `send` gave).
Fetch = Callable[[Any], Awaitable[Any]]


class SuppressionSource(Protocol):
    """A provider's suppression lists, read page by page from a time on (`subscribers sync`)."""

    @property
    def lists(self) -> Sequence[SuppressionList]: ...

    @property
    def max_page_size(self) -> int: ...

    async def send(self, request: Any) -> Fetched:
        """One try at a request of `pages`': its answer, or AnswerLost when none came (a read is
        asked again either way), or RequestImpossible; their words name the request."""
        ...

    def pages(
        self, suppression_list: SuppressionList, since: int | None, until: int, page_size: int, fetch: Fetch
    ) -> AsyncIterator[list[Suppression]]:
        """The entries created from `since` (inclusive; None: from the start) to `until`, each
        request made through `fetch`."""
        ...

    async def aclose(self) -> None: ...
