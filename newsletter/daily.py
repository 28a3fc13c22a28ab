"""The daily run (`newsletter run`, for cron or a systemd timer): everything a day needs, in order.

    generate with source = "huggingface", D's digest    failing: exit 3, nothing else runs; no
             when it is missing (generate.py)           papers that day: nothing to do, exit 0
    digest   digests/D.md exists and parses            else exit 3, nothing else runs
    checks   the pre-send checks of each new send       failing: exit 4, nothing else runs
    review   with review = "approve", the issue to the  until `newsletter approve`, publish, send
             editors as a test (review.py)              and weekly wait: awaiting approval, exit 0
    publish  the web version, the archive, the feed     failing: nothing is sent
    send     D's issue to the daily members of every    a lost answer (uncertain): exit 6
             list (or `run_lists`)
    weekly   on `weekly_day`, the weekly edition of     failing checks: exit 4, it is neither
             D's ISO week to the weekly members         published nor sent
    sync     the provider's suppression lists           with its credentials only
    purge    sign-ups unconfirmed for over 30 days      deleted (issue 8 makes them)

Every step is idempotent (a send is recorded per issue and list, publishing rewrites the same files,
a sync reads only what is new), so a second run of a day does nothing and exits 0, and a run stopped
by SIGINT or SIGTERM (exit 7: the send records the answers to the requests it has out, and no step
starts after) is resumed by running the same day again. One run at a time, whatever the host:
the lease "daily-run" (store/lease.py), taken by compare-and-set and renewed by a heartbeat, as a
send's claim is. The lock is checked before every step, never held across hosts by a
process that stopped renewing it for STALE_AFTER.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Self
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from . import db
from .config import WEEKDAYS, Settings
from .content.edition import Edition
from .errors import (
    CheckFailed,
    ConfigError,
    DigestError,
    GenerateError,
    NewsletterError,
    RunDateError,
    RunLocked,
)
from .store.lease import HEARTBEAT, STALE_AFTER, Holder, Lease

if TYPE_CHECKING:
    from .content.digest import Digest
    from .send import Interruption, SendPlan
    from .send.parts import SendParts

STEPS = ("generate", "digest", "checks", "review", "publish", "send", "weekly", "sync", "purge")
# What a day without papers has nothing to do for, and what waits for an editor's approval.
_OF_THE_DAYS_ISSUE = ("digest", "checks", "review", "publish", "send")
_HELD_FOR_APPROVAL = ("publish", "send", "weekly")
# A failure of these stops the run: nothing after them could be right.
_STOPPING = ("generate", "digest", "checks", "review", "publish")

# A step's outcome.
OK, SKIPPED, FAILED, NOTHING, AWAITING = "ok", "skipped", "failed", "nothing to do", "awaiting approval"

# The run's exit statuses (README, "Errors and exit statuses"); USAGE: a usage error, a date in the
# future; STOPPED (`send` too): stopped by a signal, and the same command resumes.
DONE, FAILURE, USAGE, NO_DIGEST, CHECKS_FAILED, LOCKED, UNCERTAIN, STOPPED = 0, 1, 2, 3, 4, 5, 6, 7
# When several steps fail, the status the run exits with: the first of these that occurred. A stop
# comes last: whatever else failed is what needs someone.
_PRECEDENCE = (NO_DIGEST, CHECKS_FAILED, LOCKED, UNCERTAIN, FAILURE, STOPPED)

LOCK_NAME = "daily-run"
_SHOWN_PROBLEMS = 3


def exit_status(error: BaseException) -> int:
    """The run's exit status for an error that stopped it or one of its steps."""
    if isinstance(error, RunLocked):
        return LOCKED
    if isinstance(error, RunDateError):
        return USAGE
    if isinstance(error, (DigestError, GenerateError)):
        return NO_DIGEST
    if isinstance(error, CheckFailed):
        return CHECKS_FAILED
    return FAILURE


@dataclass
class StepResult:
    step: str
    outcome: str  # OK, SKIPPED, FAILED, NOTHING or AWAITING
    detail: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    status: int = DONE  # what this step makes the run exit with
    lists: list[dict[str, Any]] | None = None  # the send and weekly steps: one entry per list

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.step}: {self.outcome}{detail} ({self.seconds:.1f} s)"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step": self.step,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
            "counts": self.counts,
            "detail": self.detail,
        }
        if self.lists is not None:
            data["lists"] = self.lists
        return data


@dataclass
class RunReport:
    day: date | None
    steps: list[StepResult]
    status: int
    error: str | None = None  # why the run did not start (a bad option, setting or date, the lock) or stopped early

    @classmethod
    def refused(cls, day: date | None, error: Exception, status: int | None = None) -> RunReport:
        """The report of a run that never started: every step not run; `status` by default the
        error's (a usage error the command line found has no NewsletterError)."""
        why = f"not run: {type(error).__name__}"
        status = exit_status(error) if status is None else status
        return cls(day, [StepResult(step, SKIPPED, why) for step in STEPS], status, str(error))

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat() if self.day else None,
            "status": self.status,
            "error": self.error,
            "steps": [step.to_json() for step in self.steps],
        }

    def json_line(self) -> str:
        """`run --json`'s output: the report as one line of JSON."""
        return json.dumps(self.to_json(), ensure_ascii=False) + "\n"


def run_date(settings: Settings, day: date | None) -> date:
    """The day to run: `day`, or today in the `timezone` setting; RunDateError for a future day."""
    today = settings.clock().astimezone(ZoneInfo(settings.timezone)).date()
    if day is None:
        return today
    if day > today:
        raise RunDateError(
            f"--date {day.isoformat()} is in the future: today is {today.isoformat()} in "
            f"{settings.timezone} (the 'timezone' setting); nothing was run"
        )
    return day


def run_lists(engine: Engine, settings: Settings) -> list[str]:
    """The lists the run sends to: `run_lists`, each checked to exist, or every list by name."""
    with db.reading(engine) as conn:
        known = list(conn.execute(select(db.lists.c.name).order_by(db.lists.c.id)).scalars())
    if settings.run_lists is None:
        return known
    unknown = [name for name in settings.run_lists if name not in known]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        have = ", ".join(known) or "none yet"
        raise ConfigError(
            f"bad setting 'run_lists' (NEWSLETTER_RUN_LISTS): no list named {names} "
            f"(the lists are: {have}); nothing was run"
        )
    return list(dict.fromkeys(settings.run_lists))


def run_day(
    engine: Engine,
    settings: Settings,
    day: date,
    *,
    on_step: Callable[[StepResult], None] = lambda step: None,
    interruption: Interruption | None = None,
) -> RunReport:
    """Run every step for `day` under the run lock, each through `engine`; `on_step` hears of each
    as it ends. Once `interruption`'s signal comes, the send under way stops gently and no step
    starts after it.

    Raises ConfigError (an unknown list in run_lists) or RunLocked (another run holds the lock)
    before anything is done; every later failure is in the report.
    """
    lists = run_lists(engine, settings)
    with RunLock(engine, settings.clock, f"the run of {day.isoformat()}") as lock:
        return _Run(engine, settings, day, lists, lock, on_step, interruption).run()


def approve_day(
    engine: Engine,
    settings: Settings,
    day: date,
    *,
    on_step: Callable[[StepResult], None] = lambda step: None,
    interruption: Interruption | None = None,
) -> RunReport:
    """Approve `day`'s issue, which the run sent the editors (NothingToApprove if it did not), and
    run the day, which now publishes and sends it, once: a second approval changes nothing."""
    from .review import approve

    with engine.begin() as conn:
        approve(conn, day, settings.clock())
    return run_day(engine, settings, day, on_step=on_step, interruption=interruption)


# -- the steps --------------------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        day: date,
        lists: list[str],
        lock: RunLock,
        on_step: Callable[[StepResult], None],
        interruption: Interruption | None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._day = day
        self._lists = lists
        self._lock = lock
        self._on_step = on_step
        self._interruption = interruption
        self._loaded: Digest | None = None
        self._plans: list[SendPlan] = []
        self._no_papers = False  # the source has none today: the day's issue has nothing to do
        self._awaiting = False  # the day's issue waits for an editor's approval

    @functools.cached_property
    def _parts(self) -> SendParts:
        """Built by the first step that sends: the send package is imported only then."""
        from .wiring import send_parts

        return send_parts(self._settings)

    def run(self) -> RunReport:
        steps: list[StepResult] = []
        stopped: str | None = None
        interrupted_before: str | None = None  # the first step a signal kept from starting
        for name in STEPS:
            if stopped is None and self._signal is not None:
                stopped, interrupted_before = f"stopped by {self._signal}", name
            if stopped is not None:
                steps.append(StepResult(name, SKIPPED, f"not run: {stopped}"))
                continue
            started = time.monotonic()
            try:
                self._lock.check()
                result = self._held(name) or getattr(self, f"_{name}")()
            except (NewsletterError, OSError) as error:
                result = StepResult(name, FAILED, _describe(error), status=exit_status(error))
            result.seconds = time.monotonic() - started
            if result.status != DONE:
                result.outcome = FAILED
            steps.append(result)
            self._on_step(result)
            if result.outcome == FAILED and name in _STOPPING:
                stopped = f"the {name} step failed"
        statuses = {step.status for step in steps}
        error = None
        if interrupted_before is not None:
            statuses.add(STOPPED)
            error = (
                f"stopped by {self._signal} before the {interrupted_before} step; "
                f"newsletter run --date {self._day.isoformat()} resumes the day"
            )
        status = next((code for code in _PRECEDENCE if code in statuses), DONE)
        return RunReport(self._day, steps, status, error)

    def _held(self, name: str) -> StepResult | None:
        """The result of a step that has nothing to do today, or waits for an editor, else None."""
        if self._no_papers and name in _OF_THE_DAYS_ISSUE:
            return StepResult(name, NOTHING, f"the source has no papers for {self._day.isoformat()}")
        if self._awaiting and name in _HELD_FOR_APPROVAL:
            return StepResult(name, SKIPPED, f"awaiting approval (newsletter approve --date {self._day.isoformat()})")
        return None

    @property
    def _signal(self) -> str | None:
        """The signal that asked the run to stop, once it came."""
        return self._interruption.caught if self._interruption is not None else None

    def _generate(self) -> StepResult:
        from .content.digest import digest_path
        from .content.generate import generate_day

        if self._settings.source == "none":
            return StepResult("generate", SKIPPED, "source = 'none': digests are written by hand")
        path = digest_path(self._settings.site, self._day)
        if path.exists():
            return StepResult("generate", NOTHING, f"{path} is there already")
        try:
            generated = generate_day(self._settings.generation, self._engine, self._day)
        except GenerateError as error:
            if not error.nothing_today:
                raise
            self._no_papers = True
            return StepResult("generate", NOTHING, str(error))
        counts = {"papers": len(generated.papers), "tokens": generated.tokens}
        warnings = "".join(f"; {warning}" for warning in generated.warnings)
        detail = f"{generated.path}, {len(generated.papers)} paper(s), {generated.tokens:,} token(s){warnings}"
        return StepResult("generate", OK, detail, counts)

    def _digest(self) -> StepResult:
        from .content.digest import digest_path, load_digest

        self._loaded = load_digest(self._settings.site, self._day)
        papers = len(self._loaded.papers)
        where = digest_path(self._settings.site, self._day)
        return StepResult("digest", OK, f"{where}, {papers} paper(s)", {"papers": papers})

    def _checks(self) -> StepResult:
        from .send import plan_send, require_checks

        self._plans = [plan_send(self._engine, self._parts, Edition.daily(self._day), name) for name in self._lists]
        fresh = [plan for plan in self._plans if plan.checks is not None]
        if not fresh:
            why = "no list to send to" if not self._plans else "every send had started: the checks ran then"
            return StepResult("checks", NOTHING, why, {"problems": 0})
        for plan in fresh:
            require_checks(plan, force=False)
        size = fresh[0].checks.html_bytes / 1024  # type: ignore[union-attr]
        return StepResult("checks", OK, f"every check passed (HTML {size:.1f} KB)", {"problems": 0})

    def _review(self) -> StepResult:
        """With review = "approve": the day's issue to the editors as a test (again only if the
        digest changed since), and everything that would send it held until it is approved."""
        from .content.digest import digest_path
        from .review import APPROVED, digest_fingerprint, record_test, review_of
        from .send import open_provider, send_test

        if self._settings.review == "auto":
            return StepResult("review", SKIPPED, "review = 'auto': the issue goes out without an editor's approval")
        if self._plans and all(plan.finished for plan in self._plans):
            return StepResult("review", NOTHING, "the issue went out already")
        with db.reading(self._engine) as conn:
            found = review_of(conn, self._day)
        if found is not None and found.state == APPROVED:
            return StepResult("review", OK, f"approved on {found.approved_at:%Y-%m-%d %H:%M} UTC")
        editors = self._settings.editors
        if not editors:
            raise ConfigError("review = 'approve' needs editors: the addresses that get each issue to approve")
        if not self._plans:
            raise ConfigError("there is no list to send to (newsletter lists create NAME)")
        fingerprint = digest_fingerprint(digest_path(self._settings.site, self._day))
        approve = f"newsletter approve --date {self._day.isoformat()} sends it to every list"
        if found is None or found.digest_sha256 != fingerprint:
            outcomes = send_test(self._engine, self._parts, self._plans[0], open_provider(self._parts.delivery), editors)
            failed = [f"{outcome.state} ({outcome.error or 'no reason given'})" for outcome in outcomes if outcome.state != db.SENT]
            if failed:
                why = f"the test to the editors was not sent: {'; '.join(failed)}"
                return StepResult("review", FAILED, why, status=FAILURE)
            with self._engine.begin() as conn:
                record_test(conn, self._day, fingerprint, self._settings.clock())
            detail = f"sent to {len(outcomes)} editor(s) as a test; {approve}"
        else:
            detail = f"the editors have had it since {found.tested_at:%Y-%m-%d %H:%M} UTC; {approve}"
        self._awaiting = True
        return StepResult("review", AWAITING, detail, {"editors": len(editors)})

    def _publish(self) -> StepResult:
        from .content.publish import publish_issue, published_issues

        assert self._loaded is not None
        before = {issue.path: issue for issue in published_issues(self._settings.site)}
        publication = publish_issue(self._loaded, self._settings.site)
        unchanged = before.get(publication.issue.path) == publication.issue
        counts = {"archived_issues": len(publication.issues)}
        if unchanged:
            return StepResult("publish", NOTHING, f"{publication.issue.url} was already up to date", counts)
        return StepResult("publish", OK, f"{publication.issue.url}, archive and feed updated", counts)

    def _send(self) -> StepResult:
        if not self._plans:
            return StepResult(
                "send", FAILED, "there is no list to send to (newsletter lists create NAME)", status=FAILURE
            )
        return _sent("send", [self._send_to(plan) for plan in self._plans])

    def _send_to(self, plan: SendPlan) -> dict[str, Any]:
        from .send import SendReport, execute, open_provider

        name = plan.mailing_list.name
        entry: dict[str, Any] = {"list": name, "requests": 0, "counts": dict(plan.counts)}
        if plan.finished:
            entry.update(outcome=NOTHING, detail=f"sent already ({_counts(plan.counts)})", status=DONE)
            return self._uncertain(plan, entry, plan.counts)
        if self._signal is not None:
            entry.update(outcome=SKIPPED, detail=f"not sent: stopped by {self._signal}", status=STOPPED)
            return entry
        try:
            self._lock.check()
            report = execute(self._engine, self._parts, plan, open_provider(self._parts.delivery), interruption=self._interruption)
        except NewsletterError as error:
            entry.update(outcome=FAILED, detail=_describe(error), status=exit_status(error))
            return entry
        assert isinstance(report, SendReport)
        entry.update(requests=report.requests, counts=dict(report.counts))
        if report.stopped_by is not None:
            entry.update(outcome=FAILED, detail=f"stopped by {report.stopped_by}: {_counts(report.counts)}", status=STOPPED)
            return self._uncertain(plan, entry, report.counts)
        if report.error is not None and not report.counts.get(db.UNCERTAIN):
            entry.update(outcome=FAILED, detail=_describe(report.error), status=FAILURE)
            return entry
        entry.update(outcome=OK, detail=f"{_counts(report.counts)} ({report.requests} request(s))", status=DONE)
        return self._uncertain(plan, entry, report.counts)

    def _uncertain(self, plan: SendPlan, entry: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
        """Exit 6 while any of the issue's recipients of this list are uncertain: cron must tell someone."""
        uncertain = counts.get(db.UNCERTAIN, 0) + counts.get(db.IN_FLIGHT, 0)
        if not uncertain:
            return entry
        issue, name = plan.issue.option, plan.mailing_list.name
        pending = counts.get(db.PENDING, 0)
        resume = f"; {pending:,} still pending: run again to send them" if pending else ""
        entry.update(
            outcome=FAILED,
            status=UNCERTAIN,
            detail=(
                f"{_counts(counts)}: the answer to a request for {uncertain:,} recipient(s) was lost, so they "
                f"may or may not have the issue (newsletter status {issue} --list {name} shows them; "
                f"newsletter send {issue} --list {name} --resend-uncertain resends them, which may "
                f"duplicate){resume}"
            ),
        )
        return entry

    def _weekly(self) -> StepResult:
        """On weekly_day, the weekly edition of the day's ISO week: checked, published and sent to
        each list's weekly members, once, and to the members the day's issue left out because they
        were weekly members when it started, and switched to the daily issues since (campaigns.py).
        A list without anyone to send it to (and no campaign of the edition yet) is left alone, so that
        a reader who switches to weekly later that day still gets it from the next run."""
        from .content.digest import load_week
        from .content.publish import publish_issue
        from .send import plan_send, require_checks

        if WEEKDAYS[self._day.weekday()] != self._settings.weekly_day:
            why = f"{self._day:%Y-%m-%d} is a {self._day:%A}; the weekly edition goes out on weekly_day ({self._settings.weekly_day})"
            return StepResult("weekly", SKIPPED, why)
        # The week holds the day, whose digest the digest step read: it has an edition to send.
        edition = Edition.week_of(self._day)
        if not self._lists:
            return StepResult("weekly", NOTHING, "there is no list to send to")
        try:
            plans = [plan_send(self._engine, self._parts, edition, name) for name in self._lists]
        except DigestError as error:
            # Another day's digest of the week: the day's own issue went out, so this is no exit 3.
            return StepResult("weekly", FAILED, _describe(error), status=FAILURE)
        sending = [plan for plan in plans if plan.campaign is not None or plan.recipients]
        for plan in sending:
            require_checks(plan, force=False)
        if any(not plan.finished for plan in sending):
            publish_issue(load_week(self._settings.site, edition), self._settings.site)
        entries = [
            self._send_to(plan) if plan.campaign is not None or plan.recipients else
            {"list": plan.mailing_list.name, "requests": 0, "counts": {}, "outcome": NOTHING,
             "detail": "no weekly members", "status": DONE}
            for plan in plans
        ]  # fmt: skip
        return _sent("weekly", entries, edition.describe)

    def _sync(self) -> StepResult:
        from .errors import MissingAPIKey
        from .providers import registry
        from .suppressions import sync_suppressions

        provider = self._settings.provider
        try:
            source = registry.suppressions(self._settings.delivery)
        except MissingAPIKey as error:
            return StepResult("sync", SKIPPED, f"no {error.credential}: {provider}'s suppression lists were not read")
        if source is None:
            return StepResult("sync", SKIPPED, f"the provider is {provider}, which keeps no suppression lists")
        results = sync_suppressions(self._engine, self._settings.delivery, source=source)
        counts = {
            "fetched": sum(result.fetched for result in results),
            "changed": sum(result.changed for result in results),
            "unknown": sum(result.unknown for result in results),
        }
        detail = f"{counts['fetched']:,} suppression(s) read, {counts['changed']:,} membership(s) changed"
        # A sync re-reads the last second it saw (so that nothing made in it is missed): what it
        # changed, not what it read, says whether it did anything.
        return StepResult("sync", OK if counts["changed"] else NOTHING, detail, counts)

    def _purge(self) -> StepResult:
        from .signup import forget_attempts
        from .subscribers import UNCONFIRMED_KEPT_FOR, purge_unconfirmed

        with self._engine.begin() as conn:
            purge = purge_unconfirmed(conn, now=self._settings.clock())
            forget_attempts(conn, self._settings.clock())
        counts = {"memberships": purge.memberships, "subscribers": purge.subscribers}
        detail = (
            f"{purge.memberships:,} sign-up(s) unconfirmed for over {UNCONFIRMED_KEPT_FOR.days} days deleted "
            f"({purge.subscribers:,} person(s) whole)"
        )
        return StepResult("purge", OK if purge.memberships else NOTHING, detail, counts)


def _sent(step: str, entries: list[dict[str, Any]], issue: str = "") -> StepResult:
    """The result of a step that sent an issue to lists, from each list's entry."""
    from .send.campaigns import STATES

    totals = dict.fromkeys(STATES, 0)
    for entry in entries:
        for state, number in entry["counts"].items():
            totals[state] = totals.get(state, 0) + number
    counts = {"lists": len(entries), "requests": sum(entry["requests"] for entry in entries), **totals}
    status = next((code for code in _PRECEDENCE if any(e["status"] == code for e in entries)), DONE)
    outcome = FAILED if status else OK if any(e["outcome"] == OK for e in entries) else NOTHING
    detail = "; ".join(f"list {entry['list']!r}: {entry['detail']}" for entry in entries)
    for entry in entries:
        entry.pop("status")
    return StepResult(step, outcome, f"{issue}: {detail}" if issue else detail, counts, status=status, lists=entries)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{number:,} {state.replace('_', ' ')}" for state, number in counts.items() if number) or "no recipients"


def _describe(error: BaseException) -> str:
    """One line: a CheckFailed's problems are listed on lines of their own, the first few kept."""
    if isinstance(error, CheckFailed):
        shown = "; ".join(str(problem) for problem in error.problems[:_SHOWN_PROBLEMS])
        more = len(error.problems) - _SHOWN_PROBLEMS
        rest = f"; and {more} more (newsletter check --date … or --week … lists them all)" if more > 0 else ""
        return f"{len(error.problems)} pre-send check(s) failed: {shown}{rest}; nothing was sent"
    if isinstance(error, OSError) and not isinstance(error, NewsletterError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return " ".join(str(error).split())


# -- the lock ---------------------------------------------------------------------------------------


class RunLock:
    """One run at a time: the lease LOCK_NAME, renewed every HEARTBEAT by a thread, taken over only
    when its holder has been silent for STALE_AFTER or is a process of this machine that no longer
    exists, and given back on release."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime], describe: str) -> None:
        self._engine = engine
        self._describe = describe
        self._lease = Lease(LOCK_NAME, clock, refused=self._refused, lost=self._taken_over)
        self.holder = self._lease.holder
        self._lost: RunLocked | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self.acquire()
        self._thread.start()
        return self

    def acquire(self) -> None:
        with self._engine.begin() as conn:
            self._lease.acquire(conn)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.release()

    def release(self) -> None:
        try:
            with self._engine.begin() as conn:
                self._lease.release(conn)
        except NewsletterError:
            pass  # the lock goes stale and is taken over; the run's own outcome is what matters

    def check(self) -> None:
        """RunLocked if another run has taken the lock over (this one was silent too long)."""
        if self._lost is not None:
            raise self._lost

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT.total_seconds()):
            try:
                with self._engine.begin() as conn:
                    self._lease.touch(conn)
            except RunLocked as lost:
                self._lost = lost
                return
            except Exception:  # noqa: BLE001, S112 - a database that fails now may answer at the next beat
                continue

    def _refused(self, holder: Holder | None) -> RunLocked:
        if holder is None:
            return RunLocked(f"another run took the run lock just now; {self._describe} did not start")
        return RunLocked(
            f"another run holds the run lock: {holder.who}, since {holder.since:%Y-%m-%d %H:%M:%S} UTC (last "
            f"heartbeat {holder.seconds_silent} s ago); {self._describe} did not start. A "
            f"lock with no heartbeat for {int(STALE_AFTER.total_seconds())} s is taken over."
        )

    def _taken_over(self) -> RunLocked:
        return RunLocked(
            f"another run took the run lock over (this one was silent for over "
            f"{int(STALE_AFTER.total_seconds())} s); {self._describe} stopped"
        )
