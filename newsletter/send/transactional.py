"""One message to one address, at most once: a test send, a sign-up's confirmation, a welcome.

Each message is recorded under an idempotency key naming what it is for ("confirm:<list>:<address>:
<day>", "welcome:<list>:<subscriber>"). The row is marked in flight, committed, before the request
leaves, and settled by the answer, exactly like a batch of an issue: a crash, a lost answer, a second
caller at the same moment or a retry by whoever asked never sends it twice. Only a try that certainly
sent nothing (the provider unreachable, refusing the credentials, rate-limiting past the retries)
leaves it pending for a later try.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from .. import db
from ..errors import SendError
from ..providers import (
    AnswerLost,
    Batch,
    Message,
    Provider,
    Recipient,
    RequestImpossible,
    RequestNotSent,
    Verdict,
)
from ..sections import Clock, Pacing
from ..store import messages
from .pacing import Exchange, RateLimiter, Requests

# The states of a message, as a delivery's.
PENDING, SENT, FAILED, UNCERTAIN = db.PENDING, db.SENT, db.FAILED, db.UNCERTAIN


@dataclass(frozen=True)
class Outgoing:
    key: str  # what the message is for: it goes out at most once under this key
    message: Message
    recipient: Recipient


@dataclass(frozen=True)
class Outcome:
    key: str
    email: str
    state: str  # sent, failed, uncertain, pending (nothing was sent; a later try may send it)
    sent_now: bool  # this call delivered it (False: it was settled before, or is being sent)
    message_id: str | None = None
    error: str | None = None


def send_messages(
    engine: Engine, provider: Provider, outgoing: Sequence[Outgoing], *, pacing: Pacing, clock: Clock
) -> list[Outcome]:
    """Send each message unless the one recorded under its key went out (or may have) already, then
    close `provider`. Blocking; safe to call from several threads or processes with the same keys
    at once."""

    async def each() -> list[Outcome]:
        requests = requests_for(pacing, provider)
        try:
            return [
                await send_message(engine, provider, requests, item, clock=clock, database_timeout=pacing.database_timeout)
                for item in outgoing
            ]
        finally:
            await provider.aclose()

    return asyncio.run(each())


def requests_for(pacing: Pacing, provider: Provider) -> Requests:
    """The pacing and retries of one-off messages through `provider`: within its rate limit, and a
    lost answer never repeated (the message is uncertain instead)."""
    return Requests(provider, RateLimiter(pacing.send_rate_limit), pacing.max_retries, retry_lost=False)


async def send_message(
    engine: Engine,
    provider: Provider,
    requests: Requests,
    item: Outgoing,
    *,
    clock: Clock,
    database_timeout: float,
    writing: Callable[[], AbstractContextManager[Connection]] | None = None,
    claimed: bool = False,
) -> Outcome:
    """One message, unless the one recorded under its key went out (or may have) already: what
    send_messages does for each, for a caller with its own event loop (the web server). `writing`
    opens its write transactions (by default engine.begin): the web server queues them behind its
    other writers; `database_timeout` is how long its records are retried. `claimed`: the caller's own transaction claimed it already (`claim`), so that
    recording the reason for the mail and claiming it take one commit."""
    begin = writing or engine.begin
    try:
        request = provider.prepare(Batch(item.message, [item.recipient]))
    except SendError as error:  # the provider could never take it (too large for its limits)
        if claimed:  # recorded in flight: nothing left, and a later try may send it
            settle = functools.partial(_settle, begin, clock, item.key, PENDING, None, f"not sent: {error}")
            await asyncio.to_thread(db.retrying, settle, database_timeout)
        raise
    if not claimed:
        # After preparing: a message the provider could never take is refused before anything is recorded.
        own_claim = functools.partial(_claim, begin, clock, item.key, item.recipient.email, item.message.subject)
        already = await asyncio.to_thread(db.retrying, own_claim, database_timeout)
        if already is not None:
            return already
    state, message_id, error = await _send(provider, requests, request)
    settle = functools.partial(_settle, begin, clock, item.key, state, message_id, error)
    await asyncio.to_thread(db.retrying, settle, database_timeout)
    return Outcome(item.key, item.recipient.email, state, state == SENT, message_id, error)


def _claim(
    begin: Callable[[], AbstractContextManager[Connection]], clock: Clock, key: str, email: str, subject: str
) -> Outcome | None:
    with begin() as conn:
        return claim(conn, key=key, email=email, subject=subject, now=clock())


def claim(conn: Connection, *, key: str, email: str, subject: str, now: datetime) -> Outcome | None:
    """In the caller's transaction: mark the message in flight and return None (it is the caller's
    to send, once committed), or return how it stands if it is not the caller's to send."""
    recorded = messages.claim(conn, key=key, email=email, subject=subject, now=now)
    return None if recorded is None else Outcome(key, email, recorded.state, False, recorded.message_id, recorded.error)


async def _send(provider: Provider, requests: Requests, request: object) -> tuple[str, str | None, str | None]:
    try:
        answer = await requests.post(Exchange(0, [], request))
    except AnswerLost as lost:
        return UNCERTAIN, None, f"no answer from {provider.name} ({lost}): it may have been delivered"
    except (RequestNotSent, RequestImpossible) as error:
        return PENDING, None, f"not sent: could not reach {provider.name} ({error})"
    if answer.accepted:
        return SENT, answer.message_id, None
    if answer.verdict is Verdict.RECIPIENTS_REFUSED:
        return FAILED, None, answer.reason
    return PENDING, None, f"not sent: {answer.reason}"


def release(
    begin: Callable[[], AbstractContextManager[Connection]], clock: Clock, key: str, error: str
) -> None:
    """Give back a message claimed in flight that was certainly not sent (its provider could not
    even be made): pending again, so that a later try sends it."""
    _settle(begin, clock, key, PENDING, None, f"not sent: {error}")


def _settle(
    begin: Callable[[], AbstractContextManager[Connection]],
    clock: Clock,
    key: str,
    state: str,
    message_id: str | None,
    error: str | None,
) -> None:
    with begin() as conn:
        messages.settle(conn, key, state=state, message_id=message_id, error=error, now=clock())
