"""Sending an issue to a list, once: the campaign, its recipient snapshot, batches and their states.

A delivery is one recipient of one campaign. Its states, each committed before the next step:

    pending ──► in_flight ──► sent        SendGrid answered 202 (its X-Message-Id is kept)
       │            │    ├──► failed      a 400 isolated to this one address (SendGrid's message kept)
       │            │    ├──► uncertain   the request may have left but no answer was recorded
       │            │    └──► pending     nothing accepted: a 400 whose halves go out again, or a
       │            │                     401/403/outage that stops the send (the next run resumes)
       │            └──► uncertain        found by the next run: the process died mid-request
       └──► skipped                       no longer subscribed when its batch was built
    uncertain ──► pending                 only with --resend-uncertain

A batch is marked in_flight (with its recipients) in the database before its request goes out, and
settled after the answer, so a SIGKILL at any instant leaves either rows still pending (never sent),
or an in_flight batch that the next run reports as uncertain: mail/send has no idempotency key, and
resending an answer-less request could deliver the issue twice. Requests that certainly never left
(connection refused, connect timeout) are retried automatically; a lost answer is retried only when
the user chose duplicates over gaps (--resend-uncertain).

The campaign's subject, HTML and text are stored when it starts: a resume sends exactly what the
first run sent, even if the digest or templates changed since. The recipients are a snapshot of the
list's subscribed members at that moment; each batch re-reads their membership so an unsubscribe
that arrives during the send is honoured by every batch not yet sent (those end 'skipped').

One process at a time sends a campaign: it holds campaigns.claimed_by (taken by a conditional
UPDATE), renews claimed_at as a heartbeat, and checks it still holds it before every batch.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from . import db
from .config import Settings
from .delivery import Answer, AnswerLost, Delivery, RequestNotSent, SendGridDelivery
from .errors import SendError, SendGridAuthError, SendInProgress
from .render import UNSUBSCRIBE_TAG
from .subscribers import MailingList, email_key, get_list, normalise_email
from .tokens import UnsubscribeLinks

if TYPE_CHECKING:
    from .checks import CheckReport

# SendGrid's limits per mail/send request hold by construction: at most settings.batch_size (≤ 1000)
# personalizations of one `to` each; substitutions and custom_args of about 200 bytes (an
# unsubscribe URL and three ids) against 10,000; and a body of one issue (the checks keep its HTML
# under Gmail's 102 KB) plus ~1 KB per recipient, about 1.5 MB against 30 MB.

# The claim: renewed every HEARTBEAT; another process may take it over once it is STALE_AFTER old,
# or at once when its holder is a process on this machine that no longer exists (a crash).
HEARTBEAT = timedelta(seconds=10)
STALE_AFTER = timedelta(seconds=60)

# Retries: capped exponential backoff with jitter; a wait SendGrid asks for is honoured up to a cap.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
MAX_SERVER_WAIT = 300.0

STATES = (db.SENT, db.FAILED, db.UNCERTAIN, db.SKIPPED, db.PENDING, db.IN_FLIGHT)

_SKIP_REASONS = {
    db.UNSUBSCRIBED: "unsubscribed before sending",
    db.BOUNCED: "bounced before sending",
    db.COMPLAINED: "complained (spam report) before sending",
    None: "removed from the list before sending",
}
_ANSWER_LOST = "no answer from SendGrid ({}): the request may have been delivered"
_PROCESS_DIED = "the sending process stopped before SendGrid's answer was recorded: it may have been delivered"


@dataclass(frozen=True)
class Content:
    """What every recipient of an issue gets (UNSUBSCRIBE_TAG marks the personal link)."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Campaign:
    id: int
    issue_date: str
    list_id: int
    content: Content
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Recipient:
    id: int  # the delivery row (0 outside a campaign): batches are contiguous ranges of these
    subscriber_id: int  # 0 for a test address that is no subscriber
    email: str
    name: str | None


# -- request bodies ---------------------------------------------------------------------------------


class Bodies:
    """Builds mail/send bodies: one text and one HTML body per issue, one personalization per
    recipient (its address, unsubscribe-URL substitution, RFC 8058 headers and, for a campaign,
    the custom_args that let the Event Webhook map events back)."""

    def __init__(
        self,
        settings: Settings,
        content: Content,
        *,
        list_id: int,
        campaign_id: str | None,
        sandbox: bool = False,
    ) -> None:
        self._links = UnsubscribeLinks(settings)
        self._list_id = list_id
        self._campaign_id = campaign_id
        sender = {"email": settings.from_email, "name": settings.from_name}
        self._common: dict[str, Any] = {
            "from": sender,
            "subject": content.subject,
            # RFC 2046: the richest alternative last; SendGrid also requires text/plain first.
            "content": [
                {"type": "text/plain", "value": content.text},
                {"type": "text/html", "value": content.html},
            ],
            # Our own link and headers do the unsubscribing; SendGrid's footer would add a second.
            "tracking_settings": {"subscription_tracking": {"enable": False}},
        }
        if settings.reply_to:
            self._common["reply_to"] = {"email": settings.reply_to}
        if sandbox:
            self._common["mail_settings"] = {"sandbox_mode": {"enable": True}}

    def body(self, recipients: Sequence[Recipient]) -> dict[str, Any]:
        return {**self._common, "personalizations": [self._personalization(r) for r in recipients]}

    def _personalization(self, recipient: Recipient) -> dict[str, Any]:
        url = self._links.url(self._list_id, recipient.subscriber_id)
        to: dict[str, str] = {"email": recipient.email}
        name = _display_name(recipient.name)
        if name:
            to["name"] = name
        personalization: dict[str, Any] = {
            "to": [to],
            "substitutions": {UNSUBSCRIBE_TAG: url},
            "headers": self._links.headers(url),
        }
        if self._campaign_id is not None:
            # Strings: SendGrid rejects other types, and echoes them as top-level event keys.
            personalization["custom_args"] = {
                "campaign_id": self._campaign_id,
                "subscriber_id": str(recipient.subscriber_id),
                "list_id": str(self._list_id),
            }
        return personalization


def _display_name(name: str | None) -> str | None:
    # SendGrid refuses ';' and ',' in a recipient's name; line breaks would forge headers.
    if not name:
        return None
    cleaned = " ".join(name.replace(";", " ").replace(",", " ").split())
    return cleaned or None


# -- pacing and retries -----------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts 1/rate apart across every worker; a 429 holds everyone back."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def hold(self, seconds: float) -> None:
        self._next = max(self._next, asyncio.get_running_loop().time() + seconds)


class _Requests:
    """One body to SendGrid, retrying 429, 5xx and requests that never left (and lost answers only
    when `retry_lost`). Returns the last answer; raises RequestNotSent or AnswerLost."""

    def __init__(self, delivery: Delivery, limiter: RateLimiter, settings: Settings, retry_lost: bool) -> None:
        self._delivery = delivery
        self._limiter = limiter
        self._max_retries = settings.max_retries
        self._retry_lost = retry_lost
        self._random = random.Random()
        self.count = 0

    async def post(self, body: dict[str, Any]) -> Answer:
        attempt = 0
        while True:
            if attempt:
                await self._limiter.wait()
            self.count += 1
            asked: float | None = None
            try:
                answer = await self._delivery.send(body)
            except RequestNotSent:
                if attempt >= self._max_retries:
                    raise
            except AnswerLost:
                if not self._retry_lost or attempt >= self._max_retries:
                    raise
            else:
                if not answer.retryable or attempt >= self._max_retries:
                    return answer
                asked = answer.retry_after
            attempt += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            delay = self._random.uniform(delay / 2, delay)
            if asked is not None:
                # Everyone waits for the reset; the jitter keeps the workers from returning at once.
                delay = min(asked, MAX_SERVER_WAIT) + self._random.uniform(0, 0.25)
                self._limiter.hold(delay)
            await asyncio.sleep(delay)


# -- campaigns --------------------------------------------------------------------------------------


def find_campaign(conn: Connection, day: date, list_id: int) -> Campaign | None:
    c = db.campaigns.c
    row = conn.execute(
        select(db.campaigns).where(c.issue_date == day.isoformat(), c.list_id == list_id)
    ).first()
    if row is None:
        return None
    return Campaign(
        id=row.id,
        issue_date=row.issue_date,
        list_id=row.list_id,
        content=Content(row.subject, row.html, row.text),
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def start_campaign(settings: Settings, day: date, mailing_list: MailingList, content: Content) -> Campaign:
    """The campaign for (day, list), created with its content and recipient snapshot in one
    transaction if it does not exist yet (an existing one is returned unchanged)."""
    engine = db.engine_for(settings)
    try:
        with engine.begin() as conn:
            existing = find_campaign(conn, day, mailing_list.id)
            if existing is not None:
                return existing
            now = settings.clock()
            campaign_id = conn.execute(
                db.campaigns.insert().values(
                    issue_date=day.isoformat(),
                    list_id=mailing_list.id,
                    subject=content.subject,
                    html=content.html,
                    text=content.text,
                    created_at=now,
                )
            ).inserted_primary_key[0]
            m, s = db.memberships.c, db.subscribers.c
            snapshot = (
                select(
                    literal(campaign_id),
                    s.id,
                    s.email,
                    literal(db.PENDING),
                    literal(now, db.TS),
                )
                .select_from(db.memberships.join(db.subscribers, s.id == m.subscriber_id))
                .where(m.list_id == mailing_list.id, m.status == db.SUBSCRIBED)
                .order_by(s.id)
            )
            conn.execute(
                db.deliveries.insert().from_select(
                    ["campaign_id", "subscriber_id", "email", "state", "updated_at"], snapshot
                )
            )
    except IntegrityError:
        # Another process created it between our look and our insert (PostgreSQL; SQLite's
        # BEGIN IMMEDIATE serialises the two).
        pass
    with engine.connect() as conn:
        campaign = find_campaign(conn, day, mailing_list.id)
    assert campaign is not None
    return campaign


def state_counts(conn: Connection, campaign_id: int) -> dict[str, int]:
    d = db.deliveries.c
    counts = dict.fromkeys(STATES, 0)
    rows = conn.execute(
        select(d.state, func.count()).where(d.campaign_id == campaign_id).group_by(d.state)
    )
    counts.update({state: number for state, number in rows})
    return counts


def _count_subscribed(conn: Connection, list_id: int) -> int:
    m = db.memberships.c
    return conn.execute(
        select(func.count()).where(m.list_id == list_id, m.status == db.SUBSCRIBED)
    ).scalar_one()


# -- the claim --------------------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored one is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _holder_is_dead(holder: str) -> bool:
    """True when `holder` names a process on this machine that no longer exists."""
    pid_text, _, rest = holder.partition("@")
    host = rest.rpartition("#")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Claim:
    """This process's exclusive right to send one campaign."""

    def __init__(self, settings: Settings, campaign_id: int, describe: str) -> None:
        self._settings = settings
        self.campaign_id = campaign_id
        self._describe = describe
        self.holder = f"{os.getpid()}@{socket.gethostname()}#{secrets.token_hex(4)}"

    def acquire(self, conn: Connection) -> None:
        c = db.campaigns.c
        row = conn.execute(
            select(c.claimed_by, c.claimed_at).where(c.id == self.campaign_id)
        ).one()
        now = self._settings.clock()
        if row.claimed_by is not None and row.claimed_by != self.holder:
            age = now - _aware(row.claimed_at)
            if age < STALE_AFTER and not _holder_is_dead(row.claimed_by):
                raise SendInProgress(
                    f"{self._describe} is being sent by another process ({row.claimed_by.split('#')[0]}, "
                    f"last heartbeat {max(0, int(age.total_seconds()))} s ago). Let it finish, or if it "
                    f"has died, run the command again: a claim with no heartbeat for "
                    f"{int(STALE_AFTER.total_seconds())} s is taken over."
                )
        # Compare-and-set on what we read: of two processes that judged the same claim stale,
        # exactly one takes it.
        taken = conn.execute(
            db.campaigns.update()
            .where(
                c.id == self.campaign_id,
                c.claimed_by.is_(None) if row.claimed_by is None else c.claimed_by == row.claimed_by,
            )
            .values(claimed_by=self.holder, claimed_at=now)
        ).rowcount
        if taken != 1:
            raise SendInProgress(f"{self._describe} was claimed by another process just now")

    def touch(self, conn: Connection) -> None:
        """Renew the heartbeat; SendInProgress if another process has taken the claim over."""
        c = db.campaigns.c
        kept = conn.execute(
            db.campaigns.update()
            .where(c.id == self.campaign_id, c.claimed_by == self.holder)
            .values(claimed_at=self._settings.clock())
        ).rowcount
        if kept != 1:
            raise SendInProgress(
                f"{self._describe}: another process took over this send (this one was silent for "
                f"over {int(STALE_AFTER.total_seconds())} s); stopping"
            )

    def release(self, conn: Connection) -> None:
        c = db.campaigns.c
        conn.execute(
            db.campaigns.update()
            .where(c.id == self.campaign_id, c.claimed_by == self.holder)
            .values(claimed_by=None, claimed_at=None)
        )


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
    engine = db.engine_for(settings)
    with engine.connect() as conn:
        mailing_list = get_list(conn, list_name)
        campaign = find_campaign(conn, day, mailing_list.id)
        if campaign is not None:
            counts = state_counts(conn, campaign.id)
        else:
            subscribed = _count_subscribed(conn, mailing_list.id)
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
    from .digest import load_digest

    return load_digest(settings).date


def render_and_check(settings: Settings, day: date) -> tuple[Content, CheckReport]:
    """Render the day's issue once and run the pre-send checks on it."""
    # Imported here: rendering pulls in MJML and premailer, which status and resumes never need.
    from .checks import run_checks
    from .digest import load_digest
    from .render import render_issue

    issue = render_issue(load_digest(settings, day), settings)
    return Content(issue.subject, issue.html, issue.text), run_checks(issue)


# -- the recorded send ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Deliveries of the campaign by state, kept current during a send."""

    counts: dict[str, int]
    to_send: int  # recipients this run started with
    requests: int = 0

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
    SendGrid unavailable, a message SendGrid refuses) come back in `report.error` with the counts.
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
        self._engine: Engine = db.engine_for(settings)
        self._campaign = campaign
        self._delivery = delivery
        self._resend_uncertain = plan.resend_uncertain
        self._on_progress = on_progress
        self._claim = Claim(settings, campaign.id, plan.describe)
        self._bodies = Bodies(settings, campaign.content, list_id=campaign.list_id, campaign_id=str(campaign.id))
        self._limiter = RateLimiter(settings.send_rate_limit)
        self._requests = _Requests(delivery, self._limiter, settings, retry_lost=plan.resend_uncertain)
        self._stop: SendError | None = None
        self._progress: Progress

    async def run(self) -> SendReport:
        try:
            return await self._run()
        finally:
            await self._delivery.aclose()

    async def _run(self) -> SendReport:
        with self._engine.begin() as conn:
            self._claim.acquire(conn)
            self._recover(conn)
            counts = state_counts(conn, self._campaign.id)
        self._progress = Progress(counts, to_send=counts[db.PENDING])
        self._report()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            workers = [self._worker() for _ in range(self._settings.send_concurrency)]
            # Every worker ends its request before the run ends, whatever stopped the others.
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            heartbeat.cancel()
            with self._engine.begin() as conn:
                counts = state_counts(conn, self._campaign.id)
                finished = counts[db.PENDING] == 0 and counts[db.IN_FLIGHT] == 0
                if finished:
                    conn.execute(
                        db.campaigns.update()
                        .where(db.campaigns.c.id == self._campaign.id)
                        .values(finished_at=self._settings.clock())
                    )
                self._claim.release(conn)
                uncertain = _uncertain_batches(conn, self._campaign.id)
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

    def _recover(self, conn: Connection) -> None:
        """Settle what an earlier run left behind, before sending anything."""
        b, d = db.batches.c, db.deliveries.c
        now = self._settings.clock()
        mine_b, mine_d = b.campaign_id == self._campaign.id, d.campaign_id == self._campaign.id
        # Its process died between marking the batch and recording the answer.
        conn.execute(
            db.batches.update()
            .where(mine_b, b.state == db.IN_FLIGHT)
            .values(state=db.UNCERTAIN, error=_PROCESS_DIED, finished_at=now)
        )
        conn.execute(
            db.deliveries.update()
            .where(mine_d, d.state == db.IN_FLIGHT)
            .values(state=db.UNCERTAIN, error=_PROCESS_DIED, updated_at=now)
        )
        # The untried half of a batch split after a 400: rebatched like any pending row.
        conn.execute(
            db.deliveries.update()
            .where(mine_d, d.state == db.PENDING, d.batch_id.is_not(None))
            .values(batch_id=None)
        )
        if self._resend_uncertain:
            conn.execute(
                db.deliveries.update()
                .where(mine_d, d.state == db.UNCERTAIN)
                .values(state=db.PENDING, batch_id=None, message_id=None, error=None, updated_at=now)
            )
            conn.execute(
                db.batches.update().where(mine_b, b.state == db.UNCERTAIN).values(state=db.RESENT)
            )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT.total_seconds())
            try:
                with self._engine.begin() as conn:
                    self._claim.touch(conn)
            except SendInProgress as lost:
                self._halt(lost)
                return

    def _halt(self, error: SendError) -> None:
        # The first reason wins; workers finish the request they have out and take no more.
        if self._stop is None:
            self._stop = error

    def _report(self) -> None:
        self._progress.requests = self._requests.count
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
                batch = self._next_batch()
                if batch is None:
                    return
                await self._send(*batch)
        except SendError as error:  # the claim was lost: stop everyone, cleanly
            self._halt(error)
        except Exception:
            self._halt(SendError("the send stopped on an unexpected error"))
            raise

    def _next_batch(self) -> tuple[int, list[Recipient]] | None:
        """Mark the next batch in flight (and skip who left the list); None when none is left."""
        d, m, s = db.deliveries.c, db.memberships.c, db.subscribers.c
        while True:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(d.id, d.subscriber_id, d.email, s.name, m.status)
                    .select_from(
                        db.deliveries.outerjoin(
                            db.memberships,
                            (m.subscriber_id == d.subscriber_id) & (m.list_id == self._campaign.list_id),
                        ).outerjoin(db.subscribers, s.id == d.subscriber_id)
                    )
                    .where(d.campaign_id == self._campaign.id, d.state == db.PENDING, d.batch_id.is_(None))
                    .order_by(d.id)
                    .limit(self._settings.batch_size)
                ).all()
            if not rows:
                return None
            recipients = [
                Recipient(row.id, row.subscriber_id, row.email, row.name)
                for row in rows
                if row.status == db.SUBSCRIBED
            ]
            skipped: dict[str, list[int]] = {}
            for row in rows:
                if row.status != db.SUBSCRIBED:
                    skipped.setdefault(_SKIP_REASONS.get(row.status, _SKIP_REASONS[None]), []).append(row.id)
            now = self._settings.clock()
            batch_id = None
            with self._engine.begin() as conn:
                self._claim.touch(conn)
                for reason, ids in skipped.items():
                    conn.execute(
                        db.deliveries.update()
                        .where(d.id.in_(ids), d.state == db.PENDING)
                        .values(state=db.SKIPPED, error=reason, updated_at=now)
                    )
                if recipients:
                    batch_id = conn.execute(
                        db.batches.insert().values(
                            campaign_id=self._campaign.id,
                            state=db.IN_FLIGHT,
                            size=len(recipients),
                            started_at=now,
                        )
                    ).inserted_primary_key[0]
                    # Every pending, unbatched row up to the last one read is in this batch.
                    marked = conn.execute(
                        db.deliveries.update()
                        .where(
                            d.campaign_id == self._campaign.id,
                            d.state == db.PENDING,
                            d.batch_id.is_(None),
                            d.id <= rows[-1].id,
                        )
                        .values(batch_id=batch_id, state=db.IN_FLIGHT, updated_at=now)
                    ).rowcount
                    if marked != len(recipients):
                        raise SendError(
                            f"batch {batch_id}: expected {len(recipients)} pending recipients, found "
                            f"{marked}; another process is writing this campaign"
                        )
            skipped_count = sum(len(ids) for ids in skipped.values())
            self._move({db.SKIPPED: skipped_count, db.PENDING: -len(rows), db.IN_FLIGHT: len(recipients)})
            if batch_id is not None:
                return batch_id, recipients

    async def _send(self, batch_id: int, recipients: list[Recipient]) -> None:
        body = self._bodies.body(recipients)
        try:
            answer = await self._requests.post(body)
        except AnswerLost as lost:
            self._settle(batch_id, len(recipients), db.UNCERTAIN, error=_ANSWER_LOST.format(lost))
            return
        except RequestNotSent as error:
            self._give_back(batch_id, len(recipients), f"could not reach SendGrid: {error}")
            self._halt(
                SendError(
                    f"could not reach SendGrid at {self._settings.sendgrid_api_url} "
                    f"({self._settings.max_retries} retries; last: {error}). Nothing more was sent; "
                    f"run the same command again to resume."
                )
            )
            return
        if answer.accepted:
            self._settle(batch_id, len(recipients), db.SENT, message_id=answer.message_id)
        elif answer.status in (401, 403):
            self._give_back(batch_id, len(recipients), answer.reason)
            self._halt(
                SendGridAuthError(
                    f"SendGrid refused the API key ({answer.status}): check SENDGRID_API_KEY and that "
                    f"the key has the Mail Send permission. Nothing more was sent; run the same "
                    f"command again to resume."
                )
            )
        elif answer.retryable:
            self._give_back(batch_id, len(recipients), answer.reason)
            self._halt(
                SendError(
                    f"{answer.reason}, still after {self._settings.max_retries} retries. Nothing more "
                    f"was sent; run the same command again later to resume."
                )
            )
        elif _names_recipients(answer) and len(recipients) > 1:
            await self._split(batch_id, recipients, answer.reason)
        elif _names_recipients(answer) and answer.status == 400:
            self._settle(batch_id, 1, db.FAILED, error=answer.reason)
        else:
            self._give_back(batch_id, len(recipients), answer.reason)
            self._halt(
                SendError(
                    f"SendGrid refused the message itself: {answer.reason}. Nothing more was sent; "
                    f"fix the cause and run the same command again to resume."
                )
            )

    async def _split(self, batch_id: int, recipients: list[Recipient], reason: str) -> None:
        """A 400 names one bad recipient at most per request: halve until each is alone."""
        d, b = db.deliveries.c, db.batches.c
        now = self._settings.clock()
        with self._engine.begin() as conn:
            conn.execute(
                db.batches.update()
                .where(b.id == batch_id, b.state == db.IN_FLIGHT)
                .values(state=db.SPLIT, error=reason, finished_at=now)
            )
            conn.execute(
                db.deliveries.update()
                .where(d.batch_id == batch_id, d.state == db.IN_FLIGHT)
                .values(state=db.PENDING, updated_at=now)
            )
        self._move({db.IN_FLIGHT: -len(recipients), db.PENDING: len(recipients)})
        middle = len(recipients) // 2
        for half in (recipients[:middle], recipients[middle:]):
            if self._stop is not None:
                return  # the rest stays pending; the next run rebatches it
            await self._limiter.wait()
            now = self._settings.clock()
            with self._engine.begin() as conn:
                self._claim.touch(conn)
                child = conn.execute(
                    db.batches.insert().values(
                        campaign_id=self._campaign.id, state=db.IN_FLIGHT, size=len(half), started_at=now
                    )
                ).inserted_primary_key[0]
                conn.execute(
                    db.deliveries.update()
                    .where(
                        d.batch_id == batch_id,
                        d.state == db.PENDING,
                        d.id.between(half[0].id, half[-1].id),
                    )
                    .values(batch_id=child, state=db.IN_FLIGHT, updated_at=now)
                )
            self._move({db.PENDING: -len(half), db.IN_FLIGHT: len(half)})
            await self._send(child, half)

    def _settle(
        self, batch_id: int, size: int, state: str, *, message_id: str | None = None, error: str | None = None
    ) -> None:
        d, b = db.deliveries.c, db.batches.c
        now = self._settings.clock()
        with self._engine.begin() as conn:
            # Conditional, like every settling: if another process took the claim over meanwhile,
            # it has already called this batch uncertain, and that stays the record.
            conn.execute(
                db.batches.update()
                .where(b.id == batch_id, b.state == db.IN_FLIGHT)
                .values(state=state, message_id=message_id, error=error, finished_at=now)
            )
            conn.execute(
                db.deliveries.update()
                .where(d.batch_id == batch_id, d.state == db.IN_FLIGHT)
                .values(state=state, message_id=message_id, error=error, updated_at=now)
            )
        self._move({db.IN_FLIGHT: -size, state: size})

    def _give_back(self, batch_id: int, size: int, reason: str) -> None:
        """SendGrid answered without accepting anything: the recipients are pending again."""
        d, b = db.deliveries.c, db.batches.c
        now = self._settings.clock()
        with self._engine.begin() as conn:
            conn.execute(
                db.batches.update()
                .where(b.id == batch_id, b.state == db.IN_FLIGHT)
                .values(state=db.RETURNED, error=reason, finished_at=now)
            )
            conn.execute(
                db.deliveries.update()
                .where(d.batch_id == batch_id, d.state == db.IN_FLIGHT)
                .values(state=db.PENDING, batch_id=None, updated_at=now)
            )
        self._move({db.IN_FLIGHT: -size, db.PENDING: size})


def _names_recipients(answer: Answer) -> bool:
    """Whether a 400/413 may be about some recipients rather than the message every one shares.

    SendGrid names the offending field; an error about `from`, `content`, `subject`… would fail
    every half alike, so it stops the send instead of being split down to single recipients."""
    if answer.status not in (400, 413):
        return False
    named = [f for f in answer.fields if f]
    return all(f.startswith("personalizations") for f in named)


# -- unrecorded sends: dry runs, sandbox validation, test addresses ---------------------------------


@dataclass
class UnrecordedReport:
    """What a send that records nothing did: one entry per request."""

    requests: int = 0
    recipients: int = 0
    accepted: int = 0  # recipients in requests SendGrid accepted
    problems: list[str] = field(default_factory=list)  # "request N (first@address): reason"
    message_ids: list[str] = field(default_factory=list)


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
    campaign_id = str(plan.campaign.id) if plan.campaign else "preview"  # no campaign exists yet
    if to:
        batches: Iterator[list[Recipient]] = _test_recipients(engine, to, settings.batch_size)
        campaign_id = None  # a test is no delivery of the issue: the webhook must not count it
    elif plan.campaign is not None:
        batches = _unsent(engine, plan.campaign, settings.batch_size, plan.resend_uncertain)
    else:
        batches = _members(engine, plan.mailing_list.id, settings.batch_size)
    bodies = Bodies(settings, plan.content, list_id=plan.mailing_list.id, campaign_id=campaign_id, sandbox=sandbox)
    return asyncio.run(_push(settings, batches, bodies, delivery))


async def _push(
    settings: Settings, batches: Iterator[list[Recipient]], bodies: Bodies, delivery: Delivery
) -> UnrecordedReport:
    limiter = RateLimiter(settings.send_rate_limit)
    requests = _Requests(delivery, limiter, settings, retry_lost=False)
    report = UnrecordedReport()

    async def worker() -> None:
        for recipients in batches:  # the generator is shared: each batch goes to one worker
            await limiter.wait()
            report.requests += 1
            number = report.requests
            report.recipients += len(recipients)
            where = f"request {number} ({recipients[0].email}…)"
            try:
                answer = await requests.post(bodies.body(recipients))
            except (AnswerLost, RequestNotSent) as error:
                report.problems.append(f"{where}: no answer from SendGrid ({error})")
                continue
            if answer.status in (401, 403):
                raise SendGridAuthError(
                    f"SendGrid refused the API key ({answer.status}): check SENDGRID_API_KEY and that "
                    f"the key has the Mail Send permission"
                )
            if answer.accepted:
                report.accepted += len(recipients)
                if answer.message_id:
                    report.message_ids.append(answer.message_id)
            else:
                report.problems.append(f"{where}: {answer.reason}")

    try:
        await asyncio.gather(*(worker() for _ in range(settings.send_concurrency)))
    finally:
        await delivery.aclose()
    return report


def _members(engine: Engine, list_id: int, size: int) -> Iterator[list[Recipient]]:
    """The list's subscribed members in pages: never all of them in memory."""
    m, s = db.memberships.c, db.subscribers.c
    after = 0
    while True:
        with engine.connect() as conn:
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


def _unsent(engine: Engine, campaign: Campaign, size: int, with_uncertain: bool) -> Iterator[list[Recipient]]:
    """The campaign's recipients a real run would send to now, in pages."""
    d, m, s = db.deliveries.c, db.memberships.c, db.subscribers.c
    states = [db.PENDING, db.UNCERTAIN, db.IN_FLIGHT] if with_uncertain else [db.PENDING]
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(d.id, d.subscriber_id, d.email, s.name)
                .select_from(
                    db.deliveries.join(
                        db.memberships,
                        (m.subscriber_id == d.subscriber_id) & (m.list_id == campaign.list_id),
                    ).join(db.subscribers, s.id == d.subscriber_id)
                )
                .where(
                    d.campaign_id == campaign.id,
                    d.state.in_(states),
                    m.status == db.SUBSCRIBED,
                    d.id > after,
                )
                .order_by(d.id)
                .limit(size)
            ).all()
        if not rows:
            return
        after = rows[-1].id
        yield [Recipient(row.id, row.subscriber_id, row.email, row.name) for row in rows]


def _test_recipients(engine: Engine, addresses: Sequence[str], size: int) -> Iterator[list[Recipient]]:
    """Test addresses; one that belongs to a subscriber gets that subscriber's own links."""
    s = db.subscribers.c
    emails = list(dict.fromkeys(normalise_email(address) for address in addresses))
    with engine.connect() as conn:
        known = dict(
            conn.execute(
                select(s.email_key, s.id).where(s.email_key.in_([email_key(e) for e in emails]))
            ).all()
        )
    recipients = [Recipient(0, known.get(email_key(email), 0), email, None) for email in emails]
    for start in range(0, len(recipients), size):
        yield recipients[start : start + size]


def default_outbox(settings: Settings, day: date) -> Path:
    return settings.path(settings.outbox_dir) / day.isoformat()


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInfo:
    id: int
    size: int
    started_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class CampaignStatus:
    campaign: Campaign
    mailing_list: MailingList
    counts: dict[str, int]
    failures: list[tuple[str, str]]  # (address, SendGrid's reason)
    skipped: dict[str, int]  # reason → recipients
    uncertain_batches: list[BatchInfo]
    claimed_by: str | None  # the process sending it right now, if any

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def campaign_status(settings: Settings, day: date | None, list_name: str) -> CampaignStatus | None:
    """Where the send of `day`'s issue (by default the list's latest send) to the list stands;
    None if it never started."""
    d, c = db.deliveries.c, db.campaigns.c
    with db.engine_for(settings).connect() as conn:
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
        skipped = dict(
            conn.execute(
                select(d.error, func.count()).where(mine, d.state == db.SKIPPED).group_by(d.error)
            ).all()
        )
        holder = conn.execute(select(c.claimed_by).where(c.id == campaign.id)).scalar()
        return CampaignStatus(
            campaign=campaign,
            mailing_list=mailing_list,
            counts=state_counts(conn, campaign.id),
            failures=failures,
            skipped=skipped,
            uncertain_batches=_uncertain_batches(conn, campaign.id),
            claimed_by=holder.split("#")[0] if holder else None,
        )


def _uncertain_batches(conn: Connection, campaign_id: int) -> list[BatchInfo]:
    b = db.batches.c
    rows = conn.execute(
        select(b.id, b.size, b.started_at, b.error)
        .where(b.campaign_id == campaign_id, b.state.in_([db.UNCERTAIN, db.IN_FLIGHT]))
        .order_by(b.id)
    )
    return [BatchInfo(row.id, row.size, row.started_at, row.error) for row in rows]
