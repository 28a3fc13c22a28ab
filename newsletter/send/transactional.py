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
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .. import db
from ..config import Settings
from ..providers import AnswerLost, Batch, Message, Provider, Recipient, RequestImpossible, RequestNotSent, Verdict
from .pacing import Exchange, RateLimiter, Requests

# The states of a message, as a delivery's.
PENDING, IN_FLIGHT, SENT, FAILED, UNCERTAIN = db.PENDING, db.IN_FLIGHT, db.SENT, db.FAILED, db.UNCERTAIN


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


def send_messages(settings: Settings, provider: Provider, outgoing: Sequence[Outgoing]) -> list[Outcome]:
    """Send each message unless the one recorded under its key went out (or may have) already, then
    close `provider`. Blocking; safe to call from several threads or processes with the same keys
    at once."""
    engine = db.engine_for(settings)

    async def each() -> list[Outcome]:
        requests = Requests(provider, RateLimiter(settings.send_rate_limit), settings, retry_lost=False)
        try:
            return [await _one(settings, engine, provider, requests, item) for item in outgoing]
        finally:
            await provider.aclose()

    return asyncio.run(each())


async def _one(settings: Settings, engine: Engine, provider: Provider, requests: Requests, item: Outgoing) -> Outcome:
    # Prepared first: a message the provider could never take is refused before anything is recorded.
    request = provider.prepare(Batch(item.message, [item.recipient]))
    timeout = settings.database_timeout
    claim = functools.partial(_claim, engine, settings, item.key, item.recipient.email, item.message.subject)
    claimed = await asyncio.to_thread(db.retrying, claim, timeout)
    if claimed is not None:
        return claimed
    state, message_id, error = await _send(provider, requests, request)
    settle = functools.partial(_settle, engine, settings, item.key, state, message_id, error)
    await asyncio.to_thread(db.retrying, settle, timeout)
    return Outcome(item.key, item.recipient.email, state, state == SENT, message_id, error)


def _claim(engine: Engine, settings: Settings, key: str, email: str, subject: str) -> Outcome | None:
    """Mark the message in flight and return None, or return how it stands if it is not ours to send."""
    m = db.messages.c
    now = settings.clock()
    try:
        with engine.begin() as conn:
            row = conn.execute(select(m.state, m.message_id, m.error).where(m.key == key).with_for_update()).first()
            if row is None:
                conn.execute(
                    db.messages.insert().values(
                        key=key, email=email, subject=subject, state=IN_FLIGHT, created_at=now, updated_at=now
                    )
                )
                return None
            if row.state == PENDING:
                conn.execute(db.messages.update().where(m.key == key).values(state=IN_FLIGHT, updated_at=now))
                return None
    except IntegrityError:  # another caller inserted the same key between our read and our insert
        with db.reading(engine) as conn:
            row = conn.execute(select(m.state, m.message_id, m.error).where(m.key == key)).one()
    # In flight: another caller is sending it now, or died with its answer unrecorded. Either way
    # it may arrive: not ours to send again.
    state = UNCERTAIN if row.state == IN_FLIGHT else row.state
    return Outcome(key, email, state, False, row.message_id, row.error)


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


def _settle(engine: Engine, settings: Settings, key: str, state: str, message_id: str | None, error: str | None) -> None:
    m = db.messages.c
    with engine.begin() as conn:
        conn.execute(
            db.messages.update()
            .where(m.key == key, m.state == IN_FLIGHT)
            .values(state=state, message_id=message_id, error=error, updated_at=settings.clock())
        )
