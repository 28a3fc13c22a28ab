"""Membership rules: how strongly each status keeps mail away, who may move a membership from what to
what, the one compare-and-set every status change goes through, and the one query of who gets a
list's issues.

The statuses are stored values and are defined with the schema (db.py); this module gives them their
meaning. Every change of a membership's status, whoever makes it (the CLI, a CSV import, the
unsubscribe pages, the provider's webhook and suppression lists), goes through `compare_and_set`, or
through `compare_and_set_many` for an import's rows, set-based. Either changes a status only if it
still is the one the caller saw and TRANSITIONS lets the caller's source make that move, and logs
each change in the append-only event log in the same transaction. A move that is refused, already
made or lost to a concurrent change changes nothing and logs nothing, so a repeated unsubscribe, a
webhook retry or a re-synced suppression is harmless.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.engine import Connection

from . import db
from .db import BOUNCED, COMPLAINED, SUBSCRIBED, UNCONFIRMED, UNSUBSCRIBED
from .store import memberships

# How strongly a status keeps mail away. The provider's suppressions only ever move a membership up
# this order: one address often sits on several suppression lists at once (an invalid address that
# also bounced, a complainer who also unsubscribed), and the outcome must not depend on the order in
# which the lists are read or the events arrive.
STRENGTH: dict[str, int] = {UNCONFIRMED: 0, SUBSCRIBED: 0, UNSUBSCRIBED: 1, BOUNCED: 2, COMPLAINED: 3}

# (from, to); from None: not a member of the list yet.
Move = tuple[str | None, str]

_TOWARDS_STRONGER = frozenset(
    (old, new) for old in STRENGTH for new in STRENGTH if STRENGTH[old] < STRENGTH[new]
)
# What an operator's explicit --resubscribe lifts: they vouch that the reader asked to come back.
_LIFTED = frozenset((old, SUBSCRIBED) for old in (UNSUBSCRIBED, BOUNCED, COMPLAINED))

# Who may move a membership from what to what, by the source its event records. Any other move is
# refused.
TRANSITIONS: dict[str, frozenset[Move]] = {
    # The reader on the unsubscribe page: leave, and undo their own leaving (the page shown right
    # after, with tokens.py's ticket). Never a bounce or a complaint: a bounced mailbox still cannot
    # receive, and a complaint is not undone by a click on a forwarded link.
    "unsubscribe_page": frozenset({(SUBSCRIBED, UNSUBSCRIBED), (UNSUBSCRIBED, SUBSCRIBED)}),
    # A mail client's RFC 8058 one-click POST only ever unsubscribes.
    "one_click": frozenset({(SUBSCRIBED, UNSUBSCRIBED)}),
    # The reader on their preferences page (which also changes their frequency, with set_frequency):
    # leave.
    "preferences_page": frozenset({(SUBSCRIBED, UNSUBSCRIBED)}),
    # The operator's commands: add an address (vouching for a sign-up still unconfirmed), unsubscribe
    # one on the reader's word, and, only when asked (subscribers add --resubscribe), re-subscribe
    # whoever said no.
    "command": frozenset(
        {
            (None, SUBSCRIBED),
            (UNCONFIRMED, SUBSCRIBED),
            *_LIFTED,
            *((old, UNSUBSCRIBED) for old in (SUBSCRIBED, UNCONFIRMED, BOUNCED, COMPLAINED)),
        }
    ),
    # A CSV import adds (vouching for unconfirmed sign-ups), and re-subscribes only with
    # --resubscribe; with --require-confirmation it adds its rows unconfirmed instead.
    "import": frozenset({(None, SUBSCRIBED), (UNCONFIRMED, SUBSCRIBED), (None, UNCONFIRMED), *_LIFTED}),
    # The provider's events and suppression lists.
    "webhook": _TOWARDS_STRONGER,
    "provider_sync": _TOWARDS_STRONGER,
    "provider_answer": _TOWARDS_STRONGER,
    # A reader who signs up (signup.py) on a double opt-in list waits unconfirmed, receiving no issue,
    # until they follow the confirmation link; on a single opt-in list a new address is subscribed at
    # once. Whoever left or bounced confirms by mail whatever the list's mode: anyone can type an
    # address into a form, and only its owner may undo their own "no".
    "signup": frozenset({(None, UNCONFIRMED), (None, SUBSCRIBED)}),
    "confirmation": frozenset({(UNCONFIRMED, SUBSCRIBED), *_LIFTED}),
}


def said_no(conn: Connection, subscriber_id: int) -> bool:
    """Whether the subscriber unsubscribed, bounced or complained on any list (their memberships
    locked until the transaction ends)."""
    return any(STRENGTH[status] > 0 for _, status in memberships.statuses_of(conn, subscriber_id))


def allowed(previous: str | None, status: str, source: str) -> bool:
    """Whether `source` may move a membership from `previous` (None: not a member) to `status`."""
    return (previous, status) in TRANSITIONS[source]


def _check(status: str, source: str) -> None:
    if status not in STRENGTH:
        raise ValueError(f"unknown status {status!r}")
    if source not in TRANSITIONS:
        raise ValueError(f"unknown source {source!r}")


def compare_and_set(
    conn: Connection,
    *,
    list_id: int,
    subscriber_id: int,
    expected: str | None,
    status: str,
    source: str,
    now: datetime,
    detail: str = "",
) -> bool:
    """Move a membership from `expected` (None: not a member, who becomes one) to `status` and log
    it, if its status still is `expected` and TRANSITIONS lets `source` make the move; True if it
    changed. Runs in the caller's transaction.

    A caller that read `expected` without a lock (the web server) may lose to a concurrent change:
    then nothing changes, and the caller re-reads if it cares what won.
    """
    _check(status, source)
    if expected == status or not allowed(expected, status, source):
        return False
    if expected is None:
        memberships.join(conn, list_id=list_id, subscriber_id=subscriber_id, status=status, now=now)
    elif not memberships.move(
        conn, list_id=list_id, subscriber_id=subscriber_id, expected=expected, status=status, now=now
    ):
        return False
    memberships.log(
        conn,
        subscriber_id=subscriber_id,
        list_id=list_id,
        status=status,
        previous_status=expected,
        source=source,
        now=now,
        detail=detail,
    )
    return True


def set_status(
    conn: Connection,
    *,
    list_id: int,
    subscriber_id: int,
    status: str,
    source: str,
    now: datetime,
    detail: str = "",
) -> bool:
    """compare_and_set from the membership's status now, read under lock; True if it changed."""
    return compare_and_set(
        conn,
        list_id=list_id,
        subscriber_id=subscriber_id,
        expected=memberships.status_of(conn, list_id, subscriber_id),
        status=status,
        source=source,
        now=now,
        detail=detail,
    )


def compare_and_set_many(
    conn: Connection,
    *,
    list_id: int,
    rows: Select[Any],
    expected: Collection[str | None],
    status: str,
    source: str,
    now: datetime,
    unchanged_since: datetime | None = None,
) -> int:
    """compare_and_set for many members of one list in a few set-based statements, whatever their
    number (a CSV import's million rows). Returns how many changed.

    `rows` selects (subscriber_id, detail), each subscriber once. A subscriber's membership moves if
    its status is one of `expected` (None: not on the list, who joins it) that TRANSITIONS lets
    `source` move to `status`; with `unchanged_since`, only if its status was set no later than that.
    Each change is logged with its row's detail. The statements read the statuses one after the
    other: the caller keeps other writers out until it commits (SQLite's write lock; a lock on the
    memberships table on PostgreSQL).
    """
    _check(status, source)
    moving = [old for old in expected if old != status and allowed(old, status, source)]
    changed = 0
    statuses = [old for old in moving if old is not None]
    if statuses:
        changed += memberships.move_many(
            conn, list_id=list_id, rows=rows, statuses=statuses, status=status, source=source, now=now,
            unchanged_since=unchanged_since,
        )  # fmt: skip
    if None in moving:
        changed += memberships.join_many(conn, list_id=list_id, rows=rows, status=status, source=source, now=now)
    return changed


def set_frequency(
    conn: Connection,
    *,
    list_id: int,
    subscriber_id: int,
    frequency: str,
    source: str,
    now: datetime,
    subscribed_only: bool = True,
) -> bool:
    """Switch a member between the daily issues and the weekly edition, logged like a status change
    (the status stays); True if it changed. Only a subscribed member's, unless `subscribed_only` is
    off: a sign-up keeps the choice of someone unconfirmed, or who left, for when they confirm."""
    if frequency not in db.FREQUENCIES:
        raise ValueError(f"unknown frequency {frequency!r}")
    status = memberships.status_unless_frequency(conn, list_id=list_id, subscriber_id=subscriber_id, frequency=frequency)
    if status is None or (subscribed_only and status != SUBSCRIBED):
        return False
    memberships.set_frequency(conn, list_id=list_id, subscriber_id=subscriber_id, frequency=frequency)
    memberships.log(
        conn,
        subscriber_id=subscriber_id,
        list_id=list_id,
        status=status,
        previous_status=status,
        source=source,
        now=now,
        detail=f"frequency: {frequency}",
    )
    return True


def receives_issues(status: str | None) -> bool:
    """Whether a membership with this status (None: no longer a member) gets the list's issues: the
    same rule as members_query's default, for a status read row by row (a send re-reads each batch's)."""
    return status == SUBSCRIBED


def members_query(
    list_id: int, *columns: ColumnElement[Any], status: str = SUBSCRIBED, frequency: str | None = None
) -> Select[Any]:
    """The list's members with this status, by subscriber id; by default the ones who get its issues
    (subscribed: nobody unconfirmed, unsubscribed, bounced or complained); with `frequency`, only
    those who chose it (a daily issue goes to the daily members, the weekly edition to the weekly
    ones). Selects `columns` of memberships and subscribers, (subscriber_id, email, name) if none are
    given.

    The one selection of a list's audience: a send's snapshot (as the SELECT of its INSERT … SELECT),
    the dry run and the export use it. It walks ix_memberships_list_status.
    """
    m, s = db.memberships.c, db.subscribers.c
    return (
        select(*(columns or (s.id.label("subscriber_id"), s.email, s.name)))
        .select_from(db.memberships.join(db.subscribers, s.id == m.subscriber_id))
        .where(m.list_id == list_id, m.status == status, *([m.frequency == frequency] if frequency else []))
        # The membership's subscriber_id, not the subscriber's id (the same number): SQLite then
        # reads the rows in that order from the membership's key instead of sorting them.
        .order_by(m.subscriber_id)
    )
