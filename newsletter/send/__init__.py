"""Sending an issue to a list, once: planning, the send loop, and where a send stands.

The pieces, in this package: bodies.py builds request bodies, pacing.py paces and retries them,
newsletter/delivery.py moves them, claim.py keeps a second process out, campaigns.py holds every SQL statement
(and the delivery state machine), unrecorded.py does the sends that record nothing (dry run, test
addresses, sandbox). This __init__ holds the public entry points: plan_send, send_campaign,
campaign_status.

A batch is marked in_flight (with its recipients, its body already built) in the database before
its request goes out, and settled after the answer, so a SIGKILL at any instant leaves either rows
still pending (never sent), or an in_flight batch that the next run reports as uncertain:
mail/send has no idempotency key, and resending an answer-less request could deliver the issue
twice. Requests that certainly never left (connection refused, connect timeout) are retried
automatically; a lost answer is retried only when the user chose duplicates over gaps
(--resend-uncertain), and otherwise stops the send at once: whatever makes answers go missing (a
proxy, a read timeout too short for the body) would otherwise turn the whole list uncertain.

The database is only touched from worker threads (asyncio.to_thread), so a database waiting for a
lock never stalls the requests in flight or the claim's heartbeat.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import func, select

from .. import db
from ..config import Settings
from ..delivery import (
    Answer,
    AnswerLost,
    Delivery,
    RequestImpossible,
    RequestNotSent,
    SendGridDelivery,
)
from ..errors import DatabaseError, SendError, SendGridAuthError, SendInProgress
from ..subscribers import MailingList, get_list
from .bodies import Bodies, Content, Recipient
from .campaigns import (
    BatchInfo,
    BatchStore,
    Campaign,
    Marked,
    Sender,
    batch_infos,
    count_subscribed,
    find_campaign,
    sender_of,
    start_campaign,
    state_counts,
)
from .claim import HEARTBEAT, Claim
from .pacing import Emptied, Exchange, RateLimiter, Requests, auth_refused

if TYPE_CHECKING:
    from ..checks import CheckReport

T = TypeVar("T")

_RESUME = "Nothing more was sent; run the same command again to resume."
_ANSWER_LOST = "no answer from SendGrid ({}): the request may have been delivered"

# -- planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPlan:
    """What `newsletter send` is about to do, for the summary the user confirms."""

    day: date
    mailing_list: MailingList
    content: Content  # the stored content when resuming, else the fresh render
    campaign: Campaign | None  # None: nothing has started for this issue and list
    checks: CheckReport | None  # of a fresh render; None when resuming (they ran at the start)
    counts: dict[str, int]  # the campaign's deliveries by state (empty for a new send)
    recipients: int  # how many this run sends to
    batch_size: int
    resend_uncertain: bool

    @property
    def html_bytes(self) -> int:
        return len(self.content.html.encode("utf-8"))

    @property
    def batches(self) -> int:
        return math.ceil(self.recipients / self.batch_size)

    @property
    def finished(self) -> bool:
        return self.campaign is not None and self.recipients == 0 and self.campaign.finished_at is not None

    @property
    def describe(self) -> str:
        return f"the {self.day.isoformat()} issue to list {self.mailing_list.name!r}"


def plan_send(settings: Settings, day: date, list_name: str, *, resend_uncertain: bool = False) -> SendPlan:
    """Look at the list and any earlier run; render and check the issue if the send is new."""
    with db.reading(db.engine_for(settings)) as conn:
        mailing_list = get_list(conn, list_name)
        campaign = find_campaign(conn, day, mailing_list.id)
        if campaign is not None:
            counts = state_counts(conn, campaign.id)
        else:
            subscribed = count_subscribed(conn, mailing_list.id)
    if campaign is not None:
        again = (db.UNCERTAIN, db.IN_FLIGHT) if resend_uncertain else ()
        return SendPlan(
            day=day,
            mailing_list=mailing_list,
            content=campaign.content,
            campaign=campaign,
            checks=None,
            counts=counts,
            recipients=counts[db.PENDING] + sum(counts[state] for state in again),
            batch_size=settings.batch_size,
            resend_uncertain=resend_uncertain,
        )
    content, report = render_and_check(settings, day)
    return SendPlan(
        day=day,
        mailing_list=mailing_list,
        content=content,
        campaign=None,
        checks=report,
        counts={},
        recipients=subscribed,
        batch_size=settings.batch_size,
        resend_uncertain=resend_uncertain,
    )


def issue_day(settings: Settings, day: date | None) -> date:
    """The issue to send: `day`, or by default the latest digest's."""
    if day is not None:
        return day
    from ..digest import load_digest

    return load_digest(settings).date


def render_and_check(settings: Settings, day: date) -> tuple[Content, CheckReport]:
    """Render the day's issue once and run the pre-send checks on it."""
    # Imported here: rendering pulls in MJML and premailer, which status and resumes never need.
    from ..checks import run_checks
    from ..digest import load_digest
    from ..render import render_issue

    issue = render_issue(load_digest(settings, day), settings)
    return Content(issue.subject, issue.html, issue.text), run_checks(issue)


# -- the recorded send ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Deliveries of the campaign by state, kept current during a send."""

    counts: dict[str, int]
    to_send: int  # recipients this run started with

    @property
    def done(self) -> int:
        """Recipients of this run settled so far."""
        return self.to_send - self.counts[db.PENDING] - self.counts[db.IN_FLIGHT]


@dataclass
class SendReport:
    campaign: Campaign
    counts: dict[str, int]
    requests: int
    finished: bool
    error: SendError | None = None  # why the send stopped early (rows not sent stay pending)
    uncertain_batches: list[BatchInfo] = field(default_factory=list)


def send_campaign(
    settings: Settings,
    plan: SendPlan,
    *,
    delivery: Delivery | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> SendReport:
    """Send (or resume) the planned campaign and record every recipient's outcome.

    Raises SendInProgress when another process holds the campaign; other stops (bad API key,
    SendGrid unavailable, a message SendGrid refuses, a lost answer) come back in `report.error`
    with the counts.
    """
    delivery = delivery or SendGridDelivery(settings)  # first: a missing key creates nothing
    campaign = plan.campaign or start_campaign(settings, plan.day, plan.mailing_list, plan.content)
    run = _CampaignRun(settings, campaign, delivery, plan, on_progress)
    return asyncio.run(run.run())


class _CampaignRun:
    def __init__(
        self,
        settings: Settings,
        campaign: Campaign,
        delivery: Delivery,
        plan: SendPlan,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self._settings = settings
        self._campaign = campaign
        self._delivery = delivery
        self._resend_uncertain = plan.resend_uncertain
        self._on_progress = on_progress
        self._store = BatchStore(settings, campaign, Claim(settings, campaign.id, plan.describe))
        self._bodies = Bodies(settings, campaign.content, list_id=campaign.list_id, campaign_id=str(campaign.id))
        self._limiter = RateLimiter(settings.send_rate_limit)
        self._requests = Requests(delivery, self._limiter, settings, retry_lost=plan.resend_uncertain)
        self._stop: SendError | None = None
        self._progress: Progress
        # Batches marked in flight and not settled yet: whatever stops the run settles these.
        self._live: dict[int, Exchange] = {}

    async def run(self) -> SendReport:
        try:
            return await self._run()
        finally:
            await self._delivery.aclose()

    async def _run(self) -> SendReport:
        counts = await self._db(self._store.open, self._resend_uncertain)
        self._progress = Progress(counts, to_send=counts[db.PENDING])
        self._report()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            workers = [self._worker() for _ in range(self._settings.send_concurrency)]
            # Every worker ends its request before the run ends, whatever stopped the others.
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            heartbeat.cancel()
            await asyncio.wait([heartbeat])
            # Blocking on purpose: this also runs when the run is cancelled (Ctrl-C), and it must
            # complete, giving back the batches whose request never left.
            counts, finished, uncertain = self._finish()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return SendReport(
            campaign=self._campaign,
            counts=counts,
            requests=self._requests.count,
            finished=finished,
            error=self._stop,
            uncertain_batches=uncertain,
        )

    def _finish(self) -> tuple[dict[str, int], bool, list[BatchInfo]]:
        """Record what this run leaves behind: answers not recorded yet, batches still out."""
        left = list(self._live.values())
        try:
            return db.retrying(lambda: self._store.finish(left), self._settings.database_timeout)
        except DatabaseError as error:
            maybe = sum(len(exchange.recipients) for exchange in left if exchange.maybe_delivered)
            raise DatabaseError(
                f"{error}. The send stopped. {maybe:,} recipient(s) whose request may have reached "
                f"SendGrid stay marked in flight: the next run, once the database answers, records them "
                f"as uncertain, so nobody is sent the issue twice. {_RESUME}"
            ) from None

    async def _db(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a blocking database call (one transaction) in a thread, again while the database
        fails, for up to database_timeout. A thread cannot be interrupted: when the run is cancelled
        meanwhile, wait for the call to commit or roll back, then give up, so that what it did (a
        batch marked, registered in _live) is known to the clean-up."""
        work = functools.partial(call, *args, **kwargs)
        timeout = self._settings.database_timeout
        future = asyncio.ensure_future(asyncio.to_thread(db.retrying, work, timeout))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT.total_seconds())
            try:
                await self._db(self._store.touch)
            except SendInProgress as lost:
                self._halt(lost)
                return
            except Exception as error:  # noqa: BLE001 - any database failure: without a heartbeat,
                # another process would take the send over while this one is still sending.
                failure = error if isinstance(error, DatabaseError) else f"the database failed ({type(error).__name__})"
                self._halt(SendError(f"{failure} while renewing this send's claim. {_RESUME}"))
                return

    def _halt(self, error: SendError) -> None:
        # The first reason wins; workers finish the request they have out and take no more.
        if self._stop is None:
            self._stop = error

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self._progress)

    def _move(self, counts: dict[str, int]) -> None:
        for state, change in counts.items():
            self._progress.counts[state] += change
        self._report()

    async def _worker(self) -> None:
        try:
            while self._stop is None:
                # Paced before the batch is marked, so that a marked batch leaves at once.
                await self._limiter.wait()
                if self._stop is not None:
                    return
                batch = await self._db(self._mark, self._store.mark_next, self._settings.batch_size)
                self._marked(batch, db.PENDING)
                if batch.batch_id is None:
                    return
                await self._send(self._live[batch.batch_id])
        except SendError as error:  # the claim was lost, or a body broke SendGrid's limits
            self._halt(error)
        except DatabaseError as error:
            # A batch whose answer could not be recorded stays in _live with its answer: the clean-up
            # records it as sent or uncertain, never pending.
            self._halt(SendError(f"{error}. {_RESUME}"))
        except Exception:
            self._halt(SendError("the send stopped on an unexpected error"))
            raise

    def _mark(self, mark: Callable[..., Marked], *args: object) -> Marked:
        """In the worker thread: mark a batch and register it live at once, before any await."""
        batch = mark(*args, self._bodies.body)
        if batch.batch_id is not None and batch.body is not None:
            self._live[batch.batch_id] = Exchange(batch.batch_id, batch.recipients, batch.body)
        return batch

    def _marked(self, batch: Marked, source: str) -> None:
        self._move({source: -batch.read, db.SKIPPED: batch.skipped, db.IN_FLIGHT: len(batch.recipients)})

    async def _refresh(self, exchange: Exchange) -> bool:
        """Before a retry: drop who left the list meanwhile; False when nobody is left."""
        batch = await self._db(self._store.recheck, exchange, self._bodies.body)
        self._marked(batch, db.IN_FLIGHT)
        if batch.batch_id is None:
            self._live.pop(exchange.batch_id, None)
            return False
        exchange.recipients = batch.recipients
        exchange.body = batch.body or exchange.body
        return True

    async def _close(self, exchange: Exchange, state: str, *, message_id: str | None = None, error: str | None = None) -> None:
        await self._db(self._store.close, exchange.batch_id, state, message_id=message_id, error=error)
        self._live.pop(exchange.batch_id, None)
        size = len(exchange.recipients)
        target = db.PENDING if state in (db.SPLIT, db.RETURNED) else state
        self._move({db.IN_FLIGHT: -size, target: size})

    async def _send(self, exchange: Exchange) -> None:
        try:
            answer = await self._requests.post(exchange, self._refresh)
        except AnswerLost as lost:
            await self._close(exchange, db.UNCERTAIN, error=_ANSWER_LOST.format(lost))
            self._halt(
                SendError(
                    f"SendGrid's answer to a request was lost ({lost}): its {len(exchange.recipients):,} "
                    f"recipient(s) are uncertain and are resent only with --resend-uncertain. {_RESUME}"
                )
            )
            return
        except RequestNotSent as error:
            await self._give_back(exchange, f"could not reach SendGrid: {error}")
            self._halt(
                SendError(
                    f"could not reach SendGrid at {self._settings.sendgrid_api_url} "
                    f"({self._settings.max_retries} retries; last: {error}). {_RESUME}"
                )
            )
            return
        except RequestImpossible as error:
            await self._give_back(exchange, str(error))
            self._halt(SendError(f"{error}. {_RESUME}"))
            return
        except Emptied:
            return  # everyone in it left the list before a retry; the recheck closed it
        recipients = exchange.recipients
        named = _named_personalizations(answer, len(recipients))
        if answer.accepted:
            await self._close(exchange, db.SENT, message_id=answer.message_id)
        elif exchange.lost:
            await self._give_back(exchange, answer.reason)  # uncertain: an earlier answer was lost
        elif answer.status in (401, 403):
            await self._give_back(exchange, answer.reason)
            self._halt(SendGridAuthError(f"{auth_refused(answer.status)}. {_RESUME}"))
        elif answer.retryable:
            await self._give_back(exchange, answer.reason)
            self._halt(SendError(f"{answer.reason}, still after {self._settings.max_retries} retries. {_RESUME}"))
        elif named and len(recipients) == 1:
            await self._close(exchange, db.FAILED, error=answer.reason)
        elif named or (answer.status == 413 and len(recipients) > 1):
            await self._split(exchange, _parts(named, recipients))
        else:
            await self._give_back(exchange, answer.reason)
            self._halt(
                SendError(
                    f"SendGrid refused the message itself, not some of its recipients: "
                    f"{answer.reason}. Nothing more was sent and nobody was marked failed; fix the "
                    f"cause and run the same command again to resume."
                )
            )

    async def _give_back(self, exchange: Exchange, error: str) -> None:
        """Close a batch that nobody accepted: its recipients are pending again, unless an earlier
        attempt's answer was lost (--resend-uncertain), which may have delivered it."""
        if exchange.lost:
            await self._close(exchange, db.UNCERTAIN, error=f"{error}; {_ANSWER_LOST.format('an earlier attempt')}")
        else:
            await self._close(exchange, db.RETURNED, error=error)

    async def _split(self, exchange: Exchange, parts: list[list[Recipient]]) -> None:
        """Send the batch again in `parts`, each re-reading who is still subscribed."""
        await self._close(exchange, db.SPLIT, error=exchange.answer.reason if exchange.answer else None)
        for part in parts:
            if self._stop is not None:
                return  # the rest stays pending; the next run rebatches it
            await self._limiter.wait()
            batch = await self._db(self._mark, self._store.mark_part, exchange.batch_id, part)
            self._marked(batch, db.PENDING)
            if batch.batch_id is not None:
                await self._send(self._live[batch.batch_id])


def _named_personalizations(answer: Answer, size: int) -> set[int]:
    """The personalizations (by index) a 400 blames, when it is about some recipients of the batch
    rather than the request: every field it names is `personalizations.N…` with N in the batch, and
    not every personalization of a batch of several is named. Anything else (an error about `from`
    or `content`, one naming nothing, an index the batch does not have, or every recipient at once)
    would fail every part alike: empty, and the send stops with everyone still pending."""
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


def _parts(named: set[int], recipients: list[Recipient]) -> list[list[Recipient]]:
    """Where to cut a refused batch: around each personalization SendGrid named ("personalizations.
    3.to.0.email": the 4th alone), else in halves (a 413 names none)."""
    if not named:
        middle = len(recipients) // 2
        return [recipients[:middle], recipients[middle:]]
    parts: list[list[Recipient]] = []
    start = 0
    for index in sorted(named):
        parts += [recipients[start:index], recipients[index : index + 1]]
        start = index + 1
    parts.append(recipients[start:])
    return [part for part in parts if part]


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignStatus:
    campaign: Campaign
    mailing_list: MailingList
    counts: dict[str, int]
    failures: list[tuple[str, str]]  # (address, SendGrid's reason)
    skipped: dict[str, int]  # reason → recipients
    uncertain_batches: list[BatchInfo]  # answers lost, or left in flight by a sender that died
    in_flight_batches: list[BatchInfo]  # out right now, by the live sender
    sender: Sender | None  # the process holding the claim, live or not

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def campaign_status(settings: Settings, day: date | None, list_name: str) -> CampaignStatus | None:
    """Where the send of `day`'s issue (by default the list's latest send) to the list stands;
    None if it never started."""
    d, c = db.deliveries.c, db.campaigns.c
    with db.reading(db.engine_for(settings)) as conn:
        mailing_list = get_list(conn, list_name)
        if day is None:
            latest = conn.execute(
                select(func.max(c.issue_date)).where(c.list_id == mailing_list.id)
            ).scalar()
            day = date.fromisoformat(latest) if latest else None
        campaign = find_campaign(conn, day, mailing_list.id) if day else None
        if campaign is None:
            return None
        mine = d.campaign_id == campaign.id
        failures = [
            (row.email, row.error or "")
            for row in conn.execute(select(d.email, d.error).where(mine, d.state == db.FAILED).order_by(d.id))
        ]
        skipped = {
            reason: number
            for reason, number in conn.execute(
                select(d.error, func.count()).where(mine, d.state == db.SKIPPED).group_by(d.error)
            )
        }
        claim = conn.execute(select(c.claimed_by, c.claimed_at).where(c.id == campaign.id)).one()
        sender = sender_of(claim.claimed_by, claim.claimed_at, settings.clock())
        live = sender is not None and sender.live
        # In flight without a live sender: its process died; the next run calls them uncertain.
        uncertain = [db.UNCERTAIN] if live else [db.UNCERTAIN, db.IN_FLIGHT]
        return CampaignStatus(
            campaign=campaign,
            mailing_list=mailing_list,
            counts=state_counts(conn, campaign.id),
            failures=failures,
            skipped=skipped,
            uncertain_batches=batch_infos(conn, campaign.id, uncertain),
            in_flight_batches=batch_infos(conn, campaign.id, [db.IN_FLIGHT]) if live else [],
            sender=sender,
        )
