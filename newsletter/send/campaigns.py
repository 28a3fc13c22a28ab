"""A campaign's records: the campaign row, its recipient snapshot (deliveries) and its batches.
A send's state machine and the pages it reads are here, its writes in store/campaigns.py, the
tables' owner; newsletter/send/__init__.py drives them and holds no SQL.

A delivery is one recipient of one campaign. Its states, each committed before the next step:

    pending ──► in_flight ──► sent        the provider accepted it (its message id is kept)
       │            │    ├──► failed      refused for this one address (the provider's reason kept)
       │            │    ├──► uncertain   the request may have left but no answer was recorded
       │            │    ├──► skipped     left the list before a retry or a split half went out
       │            │    └──► pending     nothing accepted: a 400 whose parts go out again, or a
       │            │                     401/403/outage/interruption that stops the send
       │            └──► uncertain        found by the next run: the process died mid-request
       └──► skipped                       no longer subscribed when its batch was built (or
                                          switched between the daily issues and the weekly edition)
    uncertain ──► pending                 only with --resend-uncertain

A campaign is one Edition (a day's issue or a week's edition) to one list; its snapshot takes the
list's subscribed members of the edition's frequency (memberships.frequency), so a daily issue never
reaches a weekly member, nor the weekly edition a daily one. On weekly_day a list gets two issues, the
day's and the week's (Edition.companion), and each member exactly one of them: whichever of the two
starts second also takes the members the first one's snapshot left out because they had the second
one's frequency then, and who switched since; and a member who switches during a send is skipped only
when the companion reaches them (it started after the switch, or has them in its snapshot).

Membership is read in the same transaction that marks a batch (FOR SHARE on PostgreSQL, under
SQLite's write lock otherwise), so an unsubscribe commits either before (the reader is skipped) or
after the batch was built; retries and the parts of a split batch read it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, bindparam, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .. import db
from ..config import WEEKDAYS
from ..content.edition import DAILY, WEEKLY, Edition
from ..errors import SendError, SendInProgress
from ..membership import members_query, receives_issues
from ..providers import Answer
from ..sections import Clock, Sender
from ..store import campaigns
from ..store.lease import STALE_AFTER, Holder, Lease
from ..subscribers import MailingList
from ..suppressions import suppress
from .addressing import Content, Reader
from .pacing import Exchange

STATES = (db.SENT, db.FAILED, db.UNCERTAIN, db.SKIPPED, db.PENDING, db.IN_FLIGHT)

_SKIP_REASONS = {
    db.UNSUBSCRIBED: "unsubscribed before sending",
    db.BOUNCED: "bounced before sending",
    db.COMPLAINED: "complained (spam report) before sending",
    None: "removed from the list before sending",
}
# A member who switched frequency after the snapshot was taken gets the other edition instead.
_SWITCHED = {DAILY: "switched to the weekly edition before sending", WEEKLY: "switched to the daily issues before sending"}
PROCESS_DIED = "the sending process stopped before the provider's answer was recorded: it may have been delivered"
INTERRUPTED = "the send was interrupted before the provider's answer was recorded: it may have been delivered"
NOT_POSTED = "the send stopped before this batch's request left"
EVERYONE_LEFT = "every recipient left the list before the request went out"

# What a batch's closing state makes of the recipients still in flight in it.
_DELIVERY_STATE = {
    db.SENT: db.SENT,
    db.FAILED: db.FAILED,
    db.UNCERTAIN: db.UNCERTAIN,
    db.SPLIT: db.PENDING,  # keeps batch_id: its parts are marked from it
    db.RETURNED: db.PENDING,
    db.SKIPPED: db.SKIPPED,
}


@dataclass(frozen=True)
class Campaign:
    id: int
    issue: Edition
    list_id: int
    content: Content
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class BatchInfo:
    id: int
    size: int
    started_at: datetime | None
    error: str | None


def find_campaign(conn: Connection, issue: Edition | date, list_id: int) -> Campaign | None:
    """The campaign of `issue` (an Edition, or a day's daily issue) to the list, if it started."""
    edition = Edition.of(issue)
    c = db.campaigns.c
    row = conn.execute(
        select(db.campaigns).where(c.issue_date == edition.key, c.edition == edition.kind, c.list_id == list_id)
    ).first()
    if row is None:
        return None
    return Campaign(
        id=row.id,
        issue=edition,
        list_id=row.list_id,
        content=Content(row.subject, row.html, row.text),
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def companion_of(weekly_day: str, edition: Edition) -> Edition | None:
    """The other issue the list gets the day `edition` goes out, on weekly_day; None on other days."""
    return edition.companion(WEEKDAYS.index(weekly_day))


def find_companion(conn: Connection, weekly_day: str, edition: Edition, list_id: int) -> Campaign | None:
    """The campaign of `edition`'s companion to the list, if it has started."""
    companion = companion_of(weekly_day, edition)
    return find_campaign(conn, companion, list_id) if companion is not None else None


def next_campaign_id(conn: Connection) -> int:
    """The id the next campaign will get (SQLite gives max + 1; a PostgreSQL sequence may skip)."""
    return conn.execute(select(func.coalesce(func.max(db.campaigns.c.id), 0) + 1)).scalar_one()


def start_campaign(
    engine: Engine,
    issue: Edition | date,
    mailing_list: MailingList,
    content: Content,
    *,
    clock: Clock,
    sender: Sender,
    weekly_day: str,
) -> Campaign:
    """The campaign for (issue, list), created with its content and the snapshot of its audience
    (`audience`) in one transaction if it does not exist yet (an existing one is returned
    unchanged). `issue`: an Edition, or a day's daily issue."""
    edition = Edition.of(issue)
    try:
        with engine.begin() as conn:
            existing = find_campaign(conn, edition, mailing_list.id)
            if existing is not None:
                return existing
            now = clock()
            # What its mail tracks, as the report must know it whatever the settings say later.
            campaign_id = campaigns.add(
                conn, key=edition.key, kind=edition.kind, list_id=mailing_list.id, subject=content.subject,
                html=content.html, text=content.text, opens=sender.track_opens, clicks=sender.track_clicks, now=now,
            )  # fmt: skip
            s = db.subscribers.c
            companion = find_companion(conn, weekly_day, edition, mailing_list.id)
            columns = (literal(campaign_id), s.id, s.email, literal(db.PENDING), literal(now, db.TS))
            for snapshot in audience(mailing_list.id, edition, companion, *columns):
                campaigns.add_recipients(conn, snapshot)
    except IntegrityError as error:
        # The one expected cause: another process created the same campaign between our look and
        # our insert (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises the two).
        with db.reading(engine) as conn:
            raced = find_campaign(conn, edition, mailing_list.id)
        if raced is None:
            raise SendError(
                f"could not record the campaign of {edition.describe} for list {mailing_list.name!r}: the "
                f"database refused it ({type(error.orig).__name__}); nothing was sent"
            ) from None
        return raced
    return Campaign(campaign_id, edition, mailing_list.id, content, now, None)


def state_counts(conn: Connection, campaign_id: int) -> dict[str, int]:
    d = db.deliveries.c
    counts = dict.fromkeys(STATES, 0)
    rows = conn.execute(
        select(d.state, func.count()).where(d.campaign_id == campaign_id).group_by(d.state)
    )
    counts.update({state: number for state, number in rows})
    return counts


def audience(
    list_id: int, edition: Edition, companion: Campaign | None, *columns: ColumnElement[Any]
) -> list[Select[Any]]:
    """Who a new campaign of `edition` to the list goes to, as selects of `columns`: its members of
    that frequency; and when its `companion` started first, the members of the companion's frequency
    whom that snapshot left out (or skipped) though they were subscribed then (their status has not
    changed since): they had this edition's frequency when it was taken, and switched since."""
    selects = [members_query(list_id, *columns, frequency=edition.kind)]
    if companion is not None:
        d, m = db.deliveries.c, db.memberships.c
        reached = select(d.id).where(
            d.campaign_id == companion.id, d.subscriber_id == m.subscriber_id, d.state != db.SKIPPED
        )
        switched = members_query(list_id, *columns, frequency=companion.issue.kind)
        selects.append(switched.where(m.updated_at <= companion.created_at, ~reached.exists()))
    return selects


def count_audience(conn: Connection, list_id: int, edition: Edition, companion: Campaign | None) -> int:
    """How many a new campaign of `edition` to the list would go to (`audience`)."""
    return sum(
        conn.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
        for query in audience(list_id, edition, companion, db.memberships.c.subscriber_id)
    )


# -- the recipient selector -------------------------------------------------------------------------

# A delivery row (id, subscriber_id, email, name) and its subscriber's membership now: its status
# and frequency (both None once removed).
Found = tuple[Any, str | None, str | None]


# The statements every batch runs, built once with parameters: building a statement costs more than
# running it, and a provider that takes one reader a request runs them for every reader.
_d, _m, _s = db.deliveries.c, db.memberships.c, db.subscribers.c
_ROWS = (
    select(_d.id, _d.subscriber_id, _d.email, _s.name)
    .select_from(db.deliveries.outerjoin(db.subscribers, _s.id == _d.subscriber_id))
    .order_by(_d.id)
)
_PAGE = (
    _d.campaign_id == bindparam("campaign"),
    _d.state.in_(bindparam("states", expanding=True)),
    _d.id > bindparam("after"),
)
# Unbatched: not a part of a batch being split right now.
_PAGES = {
    unbatched: _ROWS.where(*_PAGE, *([_d.batch_id.is_(None)] if unbatched else [])).limit(bindparam("limit"))
    for unbatched in (False, True)
}
_STATUSES = select(_m.subscriber_id, _m.status, _m.frequency).where(
    _m.list_id == bindparam("list"), _m.subscriber_id.in_(bindparam("subscribers", expanding=True))
)
_LOCKED_STATUSES = _STATUSES.with_for_update(read=True)
_CAMPAIGN_ID = select(db.campaigns.c.id).where(
    db.campaigns.c.issue_date == bindparam("key"),
    db.campaigns.c.edition == bindparam("kind"),
    db.campaigns.c.list_id == bindparam("list"),
)
# Of some subscribers, those a campaign reaches: in its snapshot and not skipped.
_REACHED = select(_d.subscriber_id).where(
    _d.campaign_id == bindparam("campaign"),
    _d.subscriber_id.in_(bindparam("subscribers", expanding=True)),
    _d.state != db.SKIPPED,
)
_PART_ROWS = _ROWS.where(*campaigns.PART)
# What a membership's event log says suppressed it: the provider's answer to a send.
ANSWER_SOURCE = "provider_answer"


def _statuses(conn: Connection, list_id: int, rows: Sequence[Any], *, lock: bool) -> list[Found]:
    """Each delivery row with its subscriber's membership status and frequency now (None once
    removed). With `lock`, the memberships stay locked until the transaction ends (PostgreSQL's FOR
    SHARE; SQLite's write lock already covers them), so no unsubscribe or switch of frequency commits
    in between. A query of its own: FOR SHARE cannot lock the nullable side of an outer join."""
    if not rows:
        return []
    # By position (a delivery row is (id, subscriber_id, email, name)): a Row's attributes, read by
    # name, would be most of this function's time.
    subscribers = [row[1] for row in rows]
    found = conn.execute(_LOCKED_STATUSES if lock else _STATUSES, {"list": list_id, "subscribers": subscribers}).all()
    current = {subscriber_id: (status, frequency) for subscriber_id, status, frequency in found}
    return [(row, *current.get(subscriber_id, (None, None))) for row, subscriber_id in zip(rows, subscribers)]


def _with_status(conn: Connection, list_id: int, where: ColumnElement[bool], *, lock: bool) -> list[Found]:
    """Deliveries matching `where`, by id, each with its subscriber's membership now (`_statuses`)."""
    return _statuses(conn, list_id, conn.execute(_ROWS.where(where)).all(), lock=lock)


def read_page(
    conn: Connection, campaign: Campaign, *, states: Sequence[str], after: int, limit: int, unbatched: bool, lock: bool
) -> list[Found]:
    """The next `limit` deliveries after id `after` in `states`. The one recipient selector: a real
    run builds each batch from a page of it, and a dry run pages through it the same way, so the
    dry run's requests are exactly the real run's."""
    page = {"campaign": campaign.id, "states": list(states), "after": after, "limit": limit}
    return _statuses(conn, campaign.list_id, conn.execute(_PAGES[unbatched], page).all(), lock=lock)


def sort_page(
    rows: Iterable[Found], edition: Edition, unreached: Collection[int] = ()
) -> tuple[list[Reader], dict[str, list[int]]]:
    """Who of a page gets `edition`'s issue, and who left the list or switched to the other edition
    since the snapshot (skip reason → delivery ids); a switcher whose subscriber id is in `unreached`
    (the companion will not reach them) keeps this issue."""
    recipients: list[Reader] = []
    leavers: dict[str, list[int]] = {}
    kind = edition.kind
    for row, status, frequency in rows:
        # Unpacked: a Row's attributes, read by name, cost more than the rest of the loop.
        delivery_id, subscriber_id, email, name = row
        if not receives_issues(status):
            leavers.setdefault(_SKIP_REASONS.get(status, _SKIP_REASONS[None]), []).append(delivery_id)
        elif frequency != kind and subscriber_id not in unreached:
            leavers.setdefault(_SWITCHED[kind], []).append(delivery_id)
        else:
            recipients.append(Reader(delivery_id, subscriber_id, email, name))
    return recipients, leavers


# -- the batch store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marked:
    """What marking a batch did: `read` rows left their state, `skipped` of them as leavers, the
    rest are `recipients` of batch `batch_id` (None: nobody left to send to) with its `request`."""

    batch_id: int | None
    recipients: list[Reader]
    request: Any  # the provider's prepared request (None when batch_id is)
    read: int
    skipped: int


# Prepares the provider's request for a batch's readers.
Build = Callable[[list[Reader]], Any]


class BatchStore:
    """The SQL of one campaign's send, each method one transaction (blocking: the sender calls
    them from a worker thread). Every batch transaction first checks the claim."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        campaign: Campaign,
        claim: Lease,
        companion: Edition | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._campaign = campaign
        self._claim = claim
        self._companion = companion
        self._companion_id: int | None = None  # once it has started (it never goes away)

    def open(self, resend_uncertain: bool) -> dict[str, int]:
        """Take the claim, settle what an earlier run left behind; the counts by state."""
        with self._engine.begin() as conn:
            self._claim.acquire(conn)
            campaigns.reopen(
                conn, self._campaign.id, now=self._clock(), died=PROCESS_DIED, resend_uncertain=resend_uncertain
            )
            return state_counts(conn, self._campaign.id)

    def touch(self) -> None:
        with self._engine.begin() as conn:
            self._claim.touch(conn)

    def mark_next(self, limit: int, build: Build) -> Marked:
        """Mark the next batch in flight, skipping who left the list. The request is built before the
        commit: if building fails, nothing is marked."""
        read = skipped = 0
        while True:
            with self._engine.begin() as conn:
                self._claim.check(conn)
                rows = read_page(
                    conn, self._campaign, states=[db.PENDING], after=0, limit=limit, unbatched=True, lock=True
                )
                if not rows:
                    return Marked(None, [], None, read, skipped)
                mark = functools.partial(campaigns.mark_page, conn, self._campaign.id, last=rows[-1][0].id)
                marked = self._mark(conn, rows, mark, build)
            read += marked.read
            skipped += marked.skipped
            if marked.batch_id is not None:
                return Marked(marked.batch_id, marked.recipients, marked.request, read, skipped)

    def mark_part(self, parent_id: int, part: Sequence[Reader], build: Build) -> Marked:
        """Mark one part of a split batch in flight as a batch of its own, re-reading membership."""
        first, last = part[0].id, part[-1].id
        with self._engine.begin() as conn:
            self._claim.check(conn)
            bounds = {"parent": parent_id, "first": first, "last": last}
            rows = _statuses(conn, self._campaign.list_id, conn.execute(_PART_ROWS, bounds).all(), lock=True)
            mark = functools.partial(campaigns.mark_part, conn, parent_id, first=first, last=last)
            return self._mark(conn, rows, mark, build)

    def recheck(self, exchange: Exchange, build: Build) -> Marked:
        """Before a retry: who of the batch has left the list since is skipped; the rest stay."""
        d = db.deliveries.c
        where = and_(d.batch_id == exchange.batch_id, d.state == db.IN_FLIGHT)
        with self._engine.begin() as conn:
            self._claim.check(conn)
            rows = _with_status(conn, self._campaign.list_id, where, lock=True)
            recipients, leavers = self._sort(conn, rows)
            skipped = self._skip(conn, leavers)
            if not recipients:
                self._close(conn, exchange.batch_id, db.SKIPPED, error=EVERYONE_LEFT)
                return Marked(None, [], None, len(rows), skipped)
            request = build(recipients) if skipped else exchange.request
            campaigns.resize_batch(conn, exchange.batch_id, len(recipients))
            return Marked(exchange.batch_id, recipients, request, len(rows), skipped)

    def _mark(self, conn: Connection, rows: list[Found], mark: Callable[..., int], build: Build) -> Marked:
        """Mark `rows` (those `mark(batch_id=…, now=…)` puts in the batch) a batch in flight, but who left."""
        recipients, leavers = self._sort(conn, rows)
        skipped = self._skip(conn, leavers)
        if not recipients:
            return Marked(None, [], None, len(rows), skipped)
        request = build(recipients)
        now = self._clock()
        batch_id = campaigns.new_batch(conn, self._campaign.id, size=len(recipients), now=now)
        marked = mark(batch_id=batch_id, now=now)
        if marked != len(recipients):
            raise SendError(
                f"batch {batch_id}: expected {len(recipients)} pending recipients, found {marked}; "
                f"another process is writing this campaign"
            )
        return Marked(batch_id, recipients, request, len(rows), skipped)

    def _sort(self, conn: Connection, rows: list[Found]) -> tuple[list[Reader], dict[str, list[int]]]:
        return sort_page(rows, self._campaign.issue, self._unreached(conn, rows))

    def _unreached(self, conn: Connection, rows: list[Found]) -> set[int]:
        """Of the rows' readers who switched to the companion's frequency, those it will not reach:
        it started before their switch, without them (or skipped them). A companion that has not
        started takes them in its snapshot."""
        if self._companion is None:
            return set()
        kind = self._campaign.issue.kind
        switched = [row.subscriber_id for row, status, frequency in rows if receives_issues(status) and frequency != kind]
        if not switched:
            return set()
        if self._companion_id is None:
            key = {"key": self._companion.key, "kind": self._companion.kind, "list": self._campaign.list_id}
            self._companion_id = conn.execute(_CAMPAIGN_ID, key).scalar()
            if self._companion_id is None:
                return set()
        reached = conn.execute(_REACHED, {"campaign": self._companion_id, "subscribers": switched}).scalars()
        return set(switched).difference(reached)

    def _skip(self, conn: Connection, leavers: dict[str, list[int]]) -> int:
        for reason, ids in leavers.items():
            campaigns.skip(conn, ids, reason=reason, now=self._clock())
        return sum(len(ids) for ids in leavers.values())

    def close(self, batch_id: int, state: str, *, message_id: str | None = None, error: str | None = None) -> None:
        with self._engine.begin() as conn:
            self._close(conn, batch_id, state, message_id=message_id, error=error)

    def _close(
        self, conn: Connection, batch_id: int, state: str, *, message_id: str | None = None, error: str | None = None
    ) -> None:
        """Settle an in-flight batch and its recipients still in flight. Conditional on in_flight:
        if another process took the claim over meanwhile, it has already called this batch
        uncertain, and that stays the record."""
        campaigns.close_batch(
            conn, batch_id, state, recipients=_DELIVERY_STATE[state], message_id=message_id, error=error, now=self._clock()
        )

    def settle_each(self, exchange: Exchange, answer: Answer) -> tuple[int, int]:
        """Settle a batch the provider answered recipient by recipient: the refused failed (their
        addresses suppressed where the provider will not send to them again), the others sent.
        Returns (sent, failed)."""
        with self._engine.begin() as conn:
            return self._settle_each(conn, exchange, answer)

    def _settle_each(self, conn: Connection, exchange: Exchange, answer: Answer) -> tuple[int, int]:
        now = self._clock()
        refused = [(position, exchange.recipients[position]) for position in sorted(answer.refused)]
        if refused:
            campaigns.refuse(
                conn, [(reader.id, answer.reasons.get(position, answer.reason)) for position, reader in refused], now
            )
        for position in sorted(answer.suppressed & answer.refused):
            reader = exchange.recipients[position]
            suppress(
                conn, subscriber_id=reader.subscriber_id, status=db.BOUNCED, source=ANSWER_SOURCE, now=now,
                detail=answer.reasons.get(position, answer.reason),
            )  # fmt: skip
        sent = len(exchange.recipients) - len(refused)
        state = db.SENT if sent else db.FAILED
        self._close(conn, exchange.batch_id, state, message_id=answer.message_id, error=answer.reason or None)
        return sent, len(refused)

    def finish(self, left: Iterable[Exchange]) -> tuple[dict[str, int], bool, list[BatchInfo]]:
        """End the run: batches `left` in flight are settled by the answer they got (when recording
        it failed), else become uncertain if a request of them may have reached the provider, else go
        back; the campaign is finished if nobody is left, the claim released. Returns the counts,
        whether it finished, and the uncertain batches."""
        with self._engine.begin() as conn:
            for exchange in left:
                if exchange.answer is not None and exchange.answer.accepted and not exchange.out:
                    self._close(conn, exchange.batch_id, db.SENT, message_id=exchange.answer.message_id)
                elif exchange.answer is not None and exchange.answer.delivered_some and not exchange.out:
                    self._settle_each(conn, exchange, exchange.answer)
                elif exchange.maybe_delivered:
                    self._close(conn, exchange.batch_id, db.UNCERTAIN, error=INTERRUPTED)
                else:
                    self._close(conn, exchange.batch_id, db.RETURNED, error=NOT_POSTED)
            counts = state_counts(conn, self._campaign.id)
            finished = counts[db.PENDING] == 0 and counts[db.IN_FLIGHT] == 0
            if finished:
                campaigns.finish(conn, self._campaign.id, self._clock())
            self._claim.release(conn)
            return counts, finished, batch_infos(conn, self._campaign.id, [db.UNCERTAIN])


def batch_infos(conn: Connection, campaign_id: int, states: Sequence[str]) -> list[BatchInfo]:
    b = db.batches.c
    rows = conn.execute(
        select(b.id, b.size, b.started_at, b.error)
        .where(b.campaign_id == campaign_id, b.state.in_(states))
        .order_by(b.id)
    )
    return [BatchInfo(row.id, row.size, row.started_at, row.error) for row in rows]


def lease_name(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def claim(clock: Callable[[], datetime], campaign_id: int, describe: str) -> Lease:
    """This process's exclusive right to send one campaign: the campaign's lease."""
    stale = int(STALE_AFTER.total_seconds())

    def refused(holder: Holder | None) -> SendInProgress:
        if holder is None:
            return SendInProgress(f"{describe} was claimed by another process just now")
        return SendInProgress(
            f"{describe} is being sent by another process ({holder.who}, last heartbeat "
            f"{holder.seconds_silent} s ago). Let it finish, or if it has died, run the command again: "
            f"a claim with no heartbeat for {stale} s is taken over."
        )

    def lost() -> SendInProgress:
        return SendInProgress(
            f"{describe}: another process took over this send (this one was silent for over {stale} s); stopping"
        )

    return Lease(lease_name(campaign_id), clock, refused=refused, lost=lost)
