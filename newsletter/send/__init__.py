"""Sending an issue to a list, once: planning, the send loop, and where a send stands. An issue is an
Edition: a day's daily issue, which goes to the list's daily members, or a week's weekly edition, which
goes to its weekly members.

The pieces, in this package: addressing.py gives each reader their own link and prepares the
provider's requests (newsletter/providers/ moves them), pacing.py paces and retries them (the one
retry loop, which the suppression sync uses too), the campaign's lease (store/lease.py) keeps a
second process out, campaigns.py holds every SQL statement of a send (and the delivery state
machine), unrecorded.py does the sends that record nothing (dry run, test addresses, sandbox), and
transactional.py one message to one address, at most once. This __init__ holds the public entry
points: plan_send, send_campaign, send_test, campaign_status.

This room owns the campaigns, their deliveries and batches. It is handed `SendParts` (parts.py: the
site, the delivery, the link signers), built once per command by the skin. It may import the content
(to render and check an issue), the providers' neutral types and registry, the store, membership,
subscribers, suppressions (a refusal that suppresses), tokens and the settings' sections; never a
provider's folder, the readers' pages or the skins (cli, web, daily).

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

SIGINT or SIGTERM (an Interruption, which the CLI holds around a send) stops a send gently: no batch
is marked or retried after it, and the requests out get read_timeout to be answered, so that their
readers end sent or refused rather than uncertain; the send then returns its report as for any other
stop. A second signal is not caught: it stops the process at once, as a crash would.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import signal
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy import Engine, func, select

from .. import db
from ..content.edition import Edition
from ..errors import (
    CheckFailed,
    DatabaseError,
    ProviderAuthError,
    SendError,
    SendInProgress,
)
from ..providers import (
    AnswerLost,
    Provider,
    RequestImpossible,
    RequestNotSent,
    Verdict,
    batch_limit,
    provider_for,
)
from ..providers.outbox import Outbox
from ..sections import Delivery, Site
from ..store.lease import HEARTBEAT, Holder, holder
from ..subscribers import MailingList, get_list
from .addressing import Addressing, Content, Reader
from .parts import SendParts
from .campaigns import (
    NOT_POSTED,
    BatchInfo,
    BatchStore,
    Campaign,
    Marked,
    batch_infos,
    claim,
    companion_of,
    count_audience,
    find_campaign,
    find_companion,
    lease_name,
    start_campaign,
    state_counts,
)
from .pacing import Emptied, Exchange, RateLimiter, Requests, Stopped
from .transactional import Outcome, Outgoing, send_messages
from .unrecorded import UnrecordedReport, send_unrecorded, test_readers

if TYPE_CHECKING:
    from ..content.checks import CheckReport

T = TypeVar("T")

_RESUME = "Nothing more was sent; run the same command again to resume."
_ANSWER_LOST = "no answer ({}): the request may have been delivered"

# -- planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPlan:
    """What `newsletter send` is about to do, for the summary the user confirms."""

    issue: Edition
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
        """The HTML's size as a reader receives it, as `newsletter check` reports it."""
        from ..content.checks import received_bytes

        return received_bytes(self.content.html)

    @property
    def batches(self) -> int:
        return math.ceil(self.recipients / self.batch_size)

    @property
    def finished(self) -> bool:
        return self.campaign is not None and self.recipients == 0 and self.campaign.finished_at is not None

    @property
    def describe(self) -> str:
        return f"{self.issue.describe} to list {self.mailing_list.name!r}"


def plan_send(
    engine: Engine, parts: SendParts, issue: Edition | date, list_name: str, *, resend_uncertain: bool = False
) -> SendPlan:
    """Look at the list and any earlier run; render and check the issue if the send is new.
    `issue`: an Edition, or a day's daily issue."""
    edition = Edition.of(issue)
    with db.reading(engine) as conn:
        mailing_list = get_list(conn, list_name)
        campaign = find_campaign(conn, edition, mailing_list.id)
        if campaign is not None:
            counts = state_counts(conn, campaign.id)
        else:
            companion = find_companion(conn, parts.site.weekly_day, edition, mailing_list.id)
            audience = count_audience(conn, mailing_list.id, edition, companion)
    if campaign is not None:
        again = (db.UNCERTAIN, db.IN_FLIGHT) if resend_uncertain else ()
        return SendPlan(
            issue=edition,
            mailing_list=mailing_list,
            content=campaign.content,
            campaign=campaign,
            checks=None,
            counts=counts,
            recipients=counts[db.PENDING] + sum(counts[state] for state in again),
            batch_size=batch_limit(parts.delivery),
            resend_uncertain=resend_uncertain,
        )
    content, report = render_and_check(parts.site, edition)
    return SendPlan(
        issue=edition,
        mailing_list=mailing_list,
        content=content,
        campaign=None,
        checks=report,
        counts={},
        recipients=audience,
        batch_size=batch_limit(parts.delivery),
        resend_uncertain=resend_uncertain,
    )


def issue_to_send(site: Site, edition: Edition | None) -> Edition:
    """The issue to send: `edition`, or by default the latest digest's daily issue."""
    if edition is not None:
        return edition
    from ..content.digest import load_digest

    return Edition.daily(load_digest(site).date)


def render_and_check(site: Site, edition: Edition) -> tuple[Content, CheckReport]:
    """Render the issue once and run the pre-send checks on it."""
    # Imported here: rendering pulls in MJML and premailer, which status and resumes never need.
    from ..content.checks import run_checks
    from ..content.digest import load_issue
    from ..content.render import render_issue

    issue = render_issue(load_issue(site, edition), site)
    return Content(issue.subject, issue.html, issue.text), run_checks(issue)


def require_checks(plan: SendPlan, *, force: bool) -> list[str]:
    """CheckFailed if the fresh render failed its checks, unless `force`; the problems overridden."""
    if plan.checks is None or plan.checks.ok:
        return []
    if not force:
        raise CheckFailed(plan.checks.problems)
    return [str(problem) for problem in plan.checks.problems]


def open_provider(delivery: Delivery, *, dry_run: bool = False, outbox: Path | None = None) -> Provider:
    """What a send goes through: the configured provider, or for a dry run an outbox (by default
    <outbox_dir>/<date or week>/, see `default_outbox`) that keeps what that provider would be sent. Made
    before anything is asked or stored: missing credentials stop here."""
    if not dry_run:
        return provider_for(delivery)
    if outbox is None:
        raise ValueError("a dry run needs its outbox folder")
    return Outbox(provider_for(delivery, connect=False), outbox, delivery.clock)


def execute(
    engine: Engine,
    parts: SendParts,
    plan: SendPlan,
    provider: Provider,
    *,
    to: Sequence[str] = (),
    sandbox: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    interruption: Interruption | None = None,
) -> SendReport | UnrecordedReport | list[Outcome]:
    """Carry the plan out: the recorded send (or its resume), which `interruption`'s signal stops;
    a test to the `to` addresses (each a message of its own, recorded as such, never as the issue's
    delivery); or a send that records nothing: a dry run (`provider` is an Outbox), the provider's
    sandbox mode."""
    if to and not sandbox and not isinstance(provider, Outbox):
        return send_test(engine, parts, plan, provider, to)
    if not records_delivery(provider, to=to, sandbox=sandbox):
        return send_unrecorded(engine, parts, plan, provider, to=to, sandbox=sandbox)
    return send_campaign(
        engine, parts, plan, provider=provider, on_progress=on_progress, interruption=interruption
    )


def records_delivery(provider: Provider, *, to: Sequence[str] = (), sandbox: bool = False) -> bool:
    """Whether `execute` sends the issue for real and records it: not a test (`to`), not a
    sandbox send, not a dry run (`provider` is an Outbox)."""
    return not (to or sandbox or isinstance(provider, Outbox))


def send_issue(
    engine: Engine, parts: SendParts, plan: SendPlan, provider: Provider, *, to: Sequence[str] = (),
    sandbox: bool = False, watch: Callable[[SendPlan], AbstractContextManager[Callable[[Progress], None]]] | None = None,
) -> SendReport | UnrecordedReport | list[Outcome]:  # fmt: skip
    """`newsletter send`, once the plan is confirmed: `execute`, where the recorded send (or its
    resume) is stopped gently by SIGINT or SIGTERM (see Interruption) and shows its progress through
    what `watch(plan)` opens, which is given each Progress."""
    if not records_delivery(provider, to=to, sandbox=sandbox):
        return execute(engine, parts, plan, provider, to=to, sandbox=sandbox)
    with Interruption() as interruption, (watch(plan) if watch else nullcontext(None)) as on_progress:
        return execute(engine, parts, plan, provider, on_progress=on_progress, interruption=interruption)


def send_test(
    engine: Engine, parts: SendParts, plan: SendPlan, provider: Provider, to: Sequence[str]
) -> list[Outcome]:
    """The planned issue to the `to` addresses only, one message each, as a test ("[TEST]" before the
    subject): every copy's unsubscribe and preferences links open the test-copy page; nothing is
    counted as the issue's delivery."""
    content = replace(plan.content, subject=f"[TEST] {plan.content.subject}")
    addressing = Addressing(
        parts.sender,
        content,
        mailing_list=plan.mailing_list,
        campaign_id=None,  # a test is no delivery of the issue: its events must not count
        links=parts.links,
        provider=provider,
    )
    run = f"test:{plan.issue.key}:{plan.mailing_list.id}:{secrets.token_hex(6)}"  # each test is new
    readers = test_readers(engine, to)
    outgoing = [
        Outgoing(f"{run}:{number}", addressing.message, addressing.recipient(reader))
        for number, reader in enumerate(readers, start=1)
    ]
    return send_messages(engine, provider, outgoing, pacing=parts.pacing, clock=parts.clock)


# -- stopping on a signal ---------------------------------------------------------------------------


class Interruption:
    """SIGINT and SIGTERM, caught while the `with` block runs (in the main thread). The first asks the
    work under way to stop where it safely can: a send takes no new batch and records the answers to
    the requests it has out, the daily run starts no new step. The handlers are then given back, so
    that a second signal stops the process at once, as it would have without this."""

    def __init__(self) -> None:
        self.caught: str | None = None  # the first signal's name ("SIGTERM"), once it came
        self._previous: dict[int, Any] = {}
        self._listeners: list[Callable[[], None]] = []

    def __enter__(self) -> Self:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._catch)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._give_back()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` when the first signal comes (in the signal handler: it must only schedule
        work), or now if it came already; returns what ends the listening. A signal between the two
        may call it twice."""
        self._listeners.append(listener)
        if self.caught is not None:
            listener()
        return lambda: self._listeners.remove(listener)

    def _catch(self, number: int, frame: FrameType | None) -> None:
        self.caught = signal.Signals(number).name
        self._give_back()
        for listener in list(self._listeners):
            listener()

    def _give_back(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


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
    stopped_by: str | None = None  # the signal that stopped it ("SIGTERM"): `error` says so


def send_campaign(
    engine: Engine,
    parts: SendParts,
    plan: SendPlan,
    *,
    provider: Provider | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    interruption: Interruption | None = None,
) -> SendReport:
    """Send (or resume) the planned campaign through `provider` (by default the configured one)
    and record every recipient's outcome.

    Raises SendInProgress when another process holds the campaign; other stops (credentials
    refused, the provider unavailable, a message it refuses, a lost answer, `interruption`'s
    signal) come back in `report.error` with the counts.
    """
    provider = provider or provider_for(parts.delivery)  # first: missing credentials create nothing
    campaign = plan.campaign or start_campaign(
        engine, plan.issue, plan.mailing_list, plan.content, clock=parts.clock, sender=parts.sender,
        weekly_day=parts.site.weekly_day,
    )  # fmt: skip
    run = _CampaignRun(engine, parts, campaign, provider, plan, on_progress, interruption)
    return asyncio.run(run.run())


class _CampaignRun:
    def __init__(
        self,
        engine: Engine,
        parts: SendParts,
        campaign: Campaign,
        provider: Provider,
        plan: SendPlan,
        on_progress: Callable[[Progress], None] | None,
        interruption: Interruption | None,
    ) -> None:
        self._pacing = parts.pacing
        self._campaign = campaign
        self._provider = provider
        self._resend_uncertain = plan.resend_uncertain
        self._on_progress = on_progress
        self._interruption = interruption
        lease = claim(parts.clock, campaign.id, plan.describe)
        companion = companion_of(parts.site.weekly_day, campaign.issue)
        self._store = BatchStore(engine, parts.clock, campaign, lease, companion)
        # The workers' transactions, and the heartbeat's, queue here rather than in SQLite's busy
        # handler (see db.one_writer_at_a_time).
        self._writes = db.one_writer_at_a_time(engine)
        self._addressing = Addressing(
            parts.sender,
            campaign.content,
            mailing_list=plan.mailing_list,
            campaign_id=campaign.id,
            links=parts.links,
            provider=provider,
        )
        self._limiter = RateLimiter(parts.pacing.send_rate_limit)
        self._requests = Requests(provider, self._limiter, parts.pacing.max_retries, retry_lost=plan.resend_uncertain)
        self._stop: SendError | None = None
        self._stopped_by: str | None = None
        self._progress: Progress
        # Batches marked in flight and not settled yet: whatever stops the run settles these.
        self._live: dict[int, Exchange] = {}
        self._workers: list[asyncio.Task[None]] = []

    async def run(self) -> SendReport:
        try:
            return await self._run()
        finally:
            await self._provider.aclose()

    async def _run(self) -> SendReport:
        counts = await self._db(self._store.open, self._resend_uncertain)
        self._progress = Progress(counts, to_send=counts[db.PENDING])
        self._report()
        heartbeat = asyncio.create_task(self._heartbeat())
        unlisten = self._listen(self._interruption) if self._interruption is not None else None
        try:
            self._workers = [asyncio.create_task(self._worker()) for _ in range(self._pacing.send_concurrency)]
            # Every worker ends its request before the run ends, whatever stopped the others.
            outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            if unlisten is not None:
                unlisten()
            heartbeat.cancel()
            await asyncio.wait([heartbeat])
            # Blocking on purpose: this also runs when the run is cancelled (a second Ctrl-C), and it
            # must complete, giving back the batches whose request never left.
            counts, finished, uncertain = self._finish()
        for outcome in outcomes:
            # A worker cancelled by _give_up left its batch in _live: _finish has recorded it.
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        return SendReport(
            campaign=self._campaign,
            counts=counts,
            requests=self._requests.count,
            finished=finished,
            error=self._stop,
            uncertain_batches=uncertain,
            stopped_by=self._stopped_by,
        )

    def _finish(self) -> tuple[dict[str, int], bool, list[BatchInfo]]:
        """Record what this run leaves behind: answers not recorded yet, batches still out."""
        left = list(self._live.values())
        try:
            return db.retrying(lambda: self._store.finish(left), self._pacing.database_timeout)
        except DatabaseError as error:
            maybe = sum(len(exchange.recipients) for exchange in left if exchange.maybe_delivered)
            raise DatabaseError(
                f"{error}. The send stopped. {maybe:,} recipient(s) whose request may have reached "
                f"{self._provider.name} stay marked in flight: the next run, once the database answers, records them "
                f"as uncertain, so nobody is sent the issue twice. {_RESUME}"
            ) from None

    async def _db(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a blocking database call (one transaction) in a thread, again while the database
        fails, for up to database_timeout. A thread cannot be interrupted: when the run is cancelled
        meanwhile, wait for the call to commit or roll back, then give up, so that what it did (a
        batch marked, registered in _live) is known to the clean-up."""
        def work() -> T:
            with self._writes:
                return call(*args, **kwargs)

        timeout = self._pacing.database_timeout
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

    def _listen(self, interruption: Interruption) -> Callable[[], None]:
        # The listener runs in the signal handler, at any point of the loop's own work: it only
        # schedules _interrupt, as asyncio's own signal handling does.
        loop = asyncio.get_running_loop()
        return interruption.listen(lambda: loop.call_soon_threadsafe(self._interrupt, interruption.caught))

    def _interrupt(self, signal_name: str) -> None:
        """The signal came: no new batch and no retry (the limiter's waits end now); the requests
        out have until read_timeout to be answered, then _give_up."""
        if self._limiter.stopped:
            return
        if self._stop is None:
            self._stopped_by = signal_name
        self._halt(SendError(f"stopped by {signal_name}. {_RESUME}"))
        self._limiter.stop()
        asyncio.get_running_loop().call_later(self._pacing.read_timeout, self._give_up)

    def _give_up(self) -> None:
        """Past the wait for answers: cancel the workers still out; _finish records their batches as
        uncertain, as a crash would leave them."""
        for worker in self._workers:
            worker.cancel()

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self._progress)

    def _move(self, *changes: tuple[str, int]) -> None:
        # Pairs, not a dict: a batch rechecked before a retry leaves and re-enters in_flight.
        for state, change in changes:
            self._progress.counts[state] += change
        self._report()

    async def _worker(self) -> None:
        try:
            while self._stop is None:
                # Paced before the batch is marked, so that a marked batch leaves at once.
                await self._limiter.wait()
                if self._stop is not None:
                    return
                if not await self._take(self._store.mark_next, self._provider.batch_limit):
                    return
        except SendError as error:  # the claim was lost, or a request broke the provider's limits
            self._halt(error)
        except DatabaseError as error:
            # A batch whose answer could not be recorded stays in _live with its answer: the clean-up
            # records it as sent or uncertain, never pending.
            self._halt(SendError(f"{error}. {_RESUME}"))
        except Exception:
            self._halt(SendError("the send stopped on an unexpected error"))
            raise

    async def _take(self, mark: Callable[..., Marked], *args: object) -> bool:
        """Mark a batch with `mark` and send it; False when nobody was left to mark. A batch marked
        while the send was told to stop stays unsent in _live, and _finish gives it back."""
        batch = await self._db(self._mark, mark, *args)
        self._marked(batch, db.PENDING)
        if batch.batch_id is None:
            return False
        if self._stop is None:
            await self._send(self._live[batch.batch_id])
        return True

    def _mark(self, mark: Callable[..., Marked], *args: object) -> Marked:
        """In the worker thread: mark a batch and register it live at once, before any await."""
        batch = mark(*args, self._addressing.prepare)
        if batch.batch_id is not None and batch.request is not None:
            self._live[batch.batch_id] = Exchange(batch.batch_id, batch.recipients, batch.request)
        return batch

    def _marked(self, batch: Marked, source: str) -> None:
        self._move((source, -batch.read), (db.SKIPPED, batch.skipped), (db.IN_FLIGHT, len(batch.recipients)))

    async def _refresh(self, exchange: Exchange) -> bool:
        """Before a retry: drop who left the list meanwhile; False when nobody is left."""
        batch = await self._db(self._store.recheck, exchange, self._addressing.prepare)
        self._marked(batch, db.IN_FLIGHT)
        if batch.batch_id is None:
            self._live.pop(exchange.batch_id, None)
            return False
        exchange.recipients = batch.recipients
        exchange.request = batch.request or exchange.request
        return True

    async def _close(self, exchange: Exchange, state: str, *, message_id: str | None = None, error: str | None = None) -> None:
        await self._db(self._store.close, exchange.batch_id, state, message_id=message_id, error=error)
        self._live.pop(exchange.batch_id, None)
        size = len(exchange.recipients)
        target = db.PENDING if state in (db.SPLIT, db.RETURNED) else state
        self._move((db.IN_FLIGHT, -size), (target, size))

    async def _send(self, exchange: Exchange) -> None:
        provider = self._provider.name
        try:
            answer = await self._requests.post(exchange, self._refresh)
        except AnswerLost as lost:
            await self._close(exchange, db.UNCERTAIN, error=_ANSWER_LOST.format(lost))
            self._halt(
                SendError(
                    f"{provider}'s answer to a request was lost ({lost}): its {len(exchange.recipients):,} "
                    f"recipient(s) are uncertain and are resent only with --resend-uncertain. {_RESUME}"
                )
            )
            return
        except RequestNotSent as error:
            await self._give_back(exchange, f"could not reach {provider}: {error}")
            self._halt(
                SendError(
                    f"could not reach {provider} ({self._pacing.max_retries} retries; last: {error}). {_RESUME}"
                )
            )
            return
        except RequestImpossible as error:
            await self._give_back(exchange, str(error))
            self._halt(SendError(f"{error}. {_RESUME}"))
            return
        except Emptied:
            return  # everyone in it left the list before a retry; the recheck closed it
        except Stopped:
            await self._give_back(exchange, NOT_POSTED)
            return
        recipients = exchange.recipients
        verdict = answer.verdict
        if verdict is Verdict.ACCEPTED:
            await self._close(exchange, db.SENT, message_id=answer.message_id)
        elif exchange.lost:
            await self._give_back(exchange, answer.reason)  # uncertain: an earlier answer was lost
        elif verdict is Verdict.AUTH_REFUSED:
            await self._give_back(exchange, answer.reason)
            self._halt(ProviderAuthError(f"{answer.reason}. {_RESUME}"))
        elif verdict is Verdict.RETRY_LATER:
            await self._give_back(exchange, answer.reason)
            self._halt(SendError(f"{answer.reason}, still after {self._pacing.max_retries} retries. {_RESUME}"))
        elif verdict is Verdict.EACH_ANSWERED or (verdict is Verdict.RECIPIENTS_REFUSED and len(recipients) == 1):
            sent, failed = await self._db(self._store.settle_each, exchange, answer)
            self._live.pop(exchange.batch_id, None)
            self._move((db.IN_FLIGHT, -len(recipients)), (db.SENT, sent), (db.FAILED, failed))
        elif verdict is Verdict.RECIPIENTS_REFUSED or (verdict is Verdict.TOO_LARGE and len(recipients) > 1):
            await self._split(exchange, _parts(answer.refused, recipients))
        else:
            await self._give_back(exchange, answer.reason)
            self._halt(
                SendError(
                    f"{provider} refused the message itself, not some of its recipients: "
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

    async def _split(self, exchange: Exchange, parts: list[list[Reader]]) -> None:
        """Send the batch again in `parts`, each re-reading who is still subscribed."""
        await self._close(exchange, db.SPLIT, error=exchange.answer.reason if exchange.answer else None)
        for part in parts:
            if self._stop is not None:
                return  # the rest stays pending; the next run rebatches it
            await self._limiter.wait()
            await self._take(self._store.mark_part, exchange.batch_id, part)


def _parts(named: frozenset[int], recipients: list[Reader]) -> list[list[Reader]]:
    """Where to cut a refused batch: around each recipient the provider named (the 4th alone for
    a 400 naming "personalizations.3.to.0.email"), else in halves (a request too large names none)."""
    if not named:
        middle = len(recipients) // 2
        return [recipients[:middle], recipients[middle:]]
    parts: list[list[Reader]] = []
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
    failures: list[tuple[str, str]]  # (address, the provider's reason)
    skipped: dict[str, int]  # reason → recipients
    uncertain_batches: list[BatchInfo]  # answers lost, or left in flight by a sender that died
    in_flight_batches: list[BatchInfo]  # out right now, by the live sender
    sender: Holder | None  # the process holding the campaign's lease, live or not

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def campaign_status(
    engine: Engine, issue: Edition | date | None, list_name: str, *, now: datetime
) -> CampaignStatus | None:
    """Where the send of `issue` (an Edition, or a day's daily issue; by default the list's latest
    issue, a week's edition counting as of its Sunday) to the list stands at `now`; None if it never
    started."""
    d, c = db.deliveries.c, db.campaigns.c
    with db.reading(engine) as conn:
        mailing_list = get_list(conn, list_name)
        if issue is None:
            started = conn.execute(select(c.edition, c.issue_date).where(c.list_id == mailing_list.id))
            issue = max((Edition(*row) for row in started), key=lambda edition: edition.sort_key, default=None)
        campaign = find_campaign(conn, issue, mailing_list.id) if issue else None
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
        sender = holder(conn, lease_name(campaign.id), now)
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
