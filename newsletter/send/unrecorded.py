"""Sends that record nothing: a dry run (into an outbox), SendGrid's sandbox mode, test addresses.

A dry run or a sandbox send reaches exactly who the real send would: a new campaign's subscribed
members in snapshot order, or a resumed campaign's recipients through the real run's own selector
(campaigns.read_page), batch for batch, with the campaign id the real send uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from .. import db
from ..config import Settings
from ..delivery import AnswerLost, Delivery, RequestImpossible, RequestNotSent
from ..errors import SendError, SendGridAuthError
from ..subscribers import email_key, normalise_email
from .bodies import Bodies, Recipient
from .campaigns import Campaign, next_campaign_id, read_page, sort_page
from .pacing import Exchange, RateLimiter, Requests, auth_refused

if TYPE_CHECKING:
    from . import SendPlan


@dataclass
class UnrecordedReport:
    """What a send that records nothing did."""

    requests: int = 0
    recipients: int = 0
    accepted: int = 0  # recipients in requests SendGrid accepted
    problems: list[str] = field(default_factory=list)  # "request N (first@address): reason"


def default_outbox(settings: Settings, day: date) -> Path:
    return settings.path(settings.outbox_dir) / day.isoformat()


def send_unrecorded(
    settings: Settings,
    plan: SendPlan,
    delivery: Delivery,
    *,
    to: Sequence[str] = (),
    sandbox: bool = False,
) -> UnrecordedReport:
    """Send the issue without recording any delivery: to the `to` addresses only (a test), or to
    who the real send would reach, through an outbox (a dry run) or SendGrid's sandbox mode."""
    engine = db.engine_for(settings)
    campaign_id: str | None
    if to:
        batches: Iterator[list[Recipient]] = _test_recipients(engine, to, settings.batch_size)
        campaign_id = None  # a test is no delivery of the issue: the webhook must not count it
    elif plan.campaign is not None:
        batches = _campaign_recipients(engine, plan.campaign, settings.batch_size, plan.resend_uncertain)
        campaign_id = str(plan.campaign.id)
    else:
        batches = _members(engine, plan.mailing_list.id, settings.batch_size)
        with db.reading(engine) as conn:
            campaign_id = str(next_campaign_id(conn))
    bodies = Bodies(settings, plan.content, list_id=plan.mailing_list.id, campaign_id=campaign_id, sandbox=sandbox)
    return asyncio.run(_push(settings, batches, bodies, delivery))


async def _push(
    settings: Settings, batches: Iterator[list[Recipient]], bodies: Bodies, delivery: Delivery
) -> UnrecordedReport:
    limiter = RateLimiter(settings.send_rate_limit)
    requests = Requests(delivery, limiter, settings, retry_lost=False)
    report = UnrecordedReport()

    async def worker() -> None:
        for recipients in batches:  # the generator is shared: each batch goes to one worker
            await limiter.wait()
            report.requests += 1
            number = report.requests
            report.recipients += len(recipients)
            where = f"request {number} ({recipients[0].email}…)"
            try:
                answer = await requests.post(Exchange(0, recipients, bodies.body(recipients)))
            except (AnswerLost, RequestNotSent) as error:
                report.problems.append(f"{where}: no answer from SendGrid ({error})")
                continue
            except RequestImpossible as error:
                raise SendError(str(error)) from None
            if answer.status in (401, 403):
                raise SendGridAuthError(auth_refused(answer.status))
            if answer.accepted:
                report.accepted += len(recipients)
            else:
                report.problems.append(f"{where}: {answer.reason}")

    try:
        await asyncio.gather(*(worker() for _ in range(settings.send_concurrency)))
    finally:
        await delivery.aclose()
    return report


def _members(engine: Engine, list_id: int, size: int) -> Iterator[list[Recipient]]:
    """A new campaign's recipients: the list's subscribed members in the snapshot's order, in
    pages (never all of them in memory)."""
    m, s = db.memberships.c, db.subscribers.c
    after = 0
    while True:
        with db.reading(engine) as conn:
            rows = conn.execute(
                select(s.id, s.email, s.name)
                .select_from(db.memberships.join(db.subscribers, s.id == m.subscriber_id))
                .where(m.list_id == list_id, m.status == db.SUBSCRIBED, s.id > after)
                .order_by(s.id)
                .limit(size)
            ).all()
        if not rows:
            return
        after = rows[-1].id
        yield [Recipient(0, row.id, row.email, row.name) for row in rows]


def _campaign_recipients(
    engine: Engine, campaign: Campaign, size: int, with_uncertain: bool
) -> Iterator[list[Recipient]]:
    """A resumed campaign's batches as the real run will build them: pages of `size` rows it would
    find pending (after recovery: uncertain and in-flight rows too with --resend-uncertain),
    without those who left the list."""
    states = [db.PENDING, db.UNCERTAIN, db.IN_FLIGHT] if with_uncertain else [db.PENDING]
    after = 0
    while True:
        with db.reading(engine) as conn:
            rows = read_page(conn, campaign, states=states, after=after, limit=size, unbatched=False, lock=False)
        if not rows:
            return
        after = rows[-1][0].id
        recipients, _ = sort_page(rows)
        if recipients:
            yield recipients


def _test_recipients(engine: Engine, addresses: Sequence[str], size: int) -> Iterator[list[Recipient]]:
    """Test addresses; one that belongs to a subscriber gets that subscriber's own links."""
    s = db.subscribers.c
    emails = list(dict.fromkeys(normalise_email(address) for address in addresses))
    with db.reading(engine) as conn:
        known = dict(
            conn.execute(
                select(s.email_key, s.id).where(s.email_key.in_([email_key(e) for e in emails]))
            ).all()
        )
    recipients = [Recipient(0, known.get(email_key(email), 0), email, None) for email in emails]
    for start in range(0, len(recipients), size):
        yield recipients[start : start + size]
