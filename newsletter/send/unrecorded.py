"""Sends that record nothing: a dry run (into an outbox), a validate-only (sandbox) send, test addresses.

A dry run or a sandbox send reaches exactly who the real send would: a new campaign's subscribed
members of its edition's frequency in snapshot order, or a resumed campaign's recipients through the real run's own selector
(campaigns.read_page), batch for batch, with the campaign id the real send uses.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from .. import db
from ..content.edition import Edition
from ..errors import ProviderAuthError, SendError
from ..membership import members_query
from ..providers import AnswerLost, Provider, RequestImpossible, RequestNotSent, Verdict
from ..addresses import email_key, normalise_email
from ..sections import Pacing
from ..subscribers import read_pages
from .addressing import Addressing, Reader
from .campaigns import Campaign, next_campaign_id, read_page, sort_page
from .pacing import Exchange, RateLimiter, Requests
from .parts import SendParts

if TYPE_CHECKING:
    from . import SendPlan


@dataclass
class UnrecordedReport:
    """What a send that records nothing did."""

    requests: int = 0
    recipients: int = 0
    accepted: int = 0  # recipients in requests the provider accepted
    problems: list[str] = field(default_factory=list)  # "request N (first@address): reason"


def default_outbox(outbox_dir: Path, edition: Edition) -> Path:
    """<outbox_dir>/2026-01-23/, or <outbox_dir>/2026-W04/ for a weekly edition."""
    return outbox_dir / edition.key


def send_unrecorded(
    engine: Engine,
    parts: SendParts,
    plan: SendPlan,
    provider: Provider,
    *,
    to: Sequence[str] = (),
    sandbox: bool = False,
) -> UnrecordedReport:
    """Send the issue without recording any delivery: to the `to` addresses only (a test), or to
    who the real send would reach, through an outbox (a dry run) or the provider's sandbox mode."""
    size = provider.batch_limit
    campaign_id: int | None
    if to:
        batches: Iterator[list[Reader]] = _test_recipients(engine, to, size)
        campaign_id = None  # a test is no delivery of the issue: the webhook must not count it
    elif plan.campaign is not None:
        batches = _campaign_recipients(engine, plan.campaign, size, plan.resend_uncertain)
        campaign_id = plan.campaign.id
    else:
        batches = _members(engine, plan.mailing_list.id, plan.issue, size)
        with db.reading(engine) as conn:
            campaign_id = next_campaign_id(conn)
    addressing = Addressing(
        parts.sender,
        plan.content,
        mailing_list=plan.mailing_list,
        campaign_id=campaign_id,
        links=parts.links,
        provider=provider,
        validate_only=sandbox,
    )
    return asyncio.run(_push(parts.pacing, batches, addressing, provider))


async def _push(
    pacing: Pacing, batches: Iterator[list[Reader]], addressing: Addressing, provider: Provider
) -> UnrecordedReport:
    limiter = RateLimiter(pacing.send_rate_limit)
    requests = Requests(provider, limiter, pacing.max_retries, retry_lost=False)
    report = UnrecordedReport()

    async def worker() -> None:
        for recipients in batches:  # the generator is shared: each batch goes to one worker
            await limiter.wait()
            report.requests += 1
            number = report.requests
            report.recipients += len(recipients)
            where = f"request {number} ({recipients[0].email}…)"
            try:
                answer = await requests.post(Exchange(0, recipients, addressing.prepare(recipients)))
            except (AnswerLost, RequestNotSent) as error:
                report.problems.append(f"{where}: no answer from {provider.name} ({error})")
                continue
            except RequestImpossible as error:
                raise SendError(str(error)) from None
            if answer.verdict is Verdict.AUTH_REFUSED:
                raise ProviderAuthError(answer.reason)
            if answer.accepted:
                report.accepted += len(recipients)
            else:
                report.problems.append(f"{where}: {answer.reason}")

    try:
        await asyncio.gather(*(worker() for _ in range(pacing.send_concurrency)))
    finally:
        await provider.aclose()
    return report


def _members(engine: Engine, list_id: int, edition: Edition, size: int) -> Iterator[list[Reader]]:
    """A new campaign's recipients: who its snapshot would take, in its order, `size` at a time
    (never all of them in memory)."""
    members = read_pages(engine, members_query(list_id, frequency=edition.kind), db.subscribers.c.id)
    while page := list(itertools.islice(members, size)):
        yield [Reader(0, member.subscriber_id, member.email, member.name) for member in page]


def _campaign_recipients(
    engine: Engine, campaign: Campaign, size: int, with_uncertain: bool
) -> Iterator[list[Reader]]:
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
        recipients, _ = sort_page(rows, campaign.issue)
        if recipients:
            yield recipients


def test_readers(engine: Engine, addresses: Sequence[str]) -> list[Reader]:
    """Test addresses, once each, with the subscriber id of those that are a subscriber's (0 for
    the others): the test-copy page's links are as long as that subscriber's own would be."""
    s = db.subscribers.c
    emails = list(dict.fromkeys(normalise_email(address) for address in addresses))
    with db.reading(engine) as conn:
        known = dict(
            conn.execute(
                select(s.email_key, s.id).where(s.email_key.in_([email_key(e) for e in emails]))
            ).all()
        )
    return [Reader(0, known.get(email_key(email), 0), email, None) for email in emails]


def _test_recipients(engine: Engine, addresses: Sequence[str], size: int) -> Iterator[list[Reader]]:
    readers = test_readers(engine, addresses)
    for start in range(0, len(readers), size):
        yield readers[start : start + size]
