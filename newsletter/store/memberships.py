"""Memberships (`memberships`) and their append-only log (`events`): who is on which list with what
status, frequency and consent, and every change of it. This module owns both tables; what a change
may be is decided by membership.py (TRANSITIONS), whose compare-and-sets are the only callers of the
status writes here. Erasure, the purge of unconfirmed sign-ups and a list's deletion ask here too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, and_, bindparam, delete, exists, literal, select, update
from sqlalchemy.engine import Connection

from .. import db

_m, _e = db.memberships.c, db.events.c
# Built once: these run for every change (every one-click unsubscribe), and building a statement costs
# more than running it.
# FOR UPDATE: on PostgreSQL a concurrent change of this membership (a second one-click POST, a
# webhook) waits here until this transaction ends, and then sees its status. SQLite's BEGIN IMMEDIATE
# already serialises writers (and SQLAlchemy renders nothing there).
_THIS = (_m.list_id == bindparam("list"), _m.subscriber_id == bindparam("subscriber"))
_LOCKED_STATUS = select(_m.status).where(*_THIS).with_for_update()
_SET = (
    db.memberships.update()
    .where(*_THIS, _m.status == bindparam("expected"))
    .values(status=bindparam("new"), updated_at=bindparam("now"))
)
_JOIN = db.memberships.insert().values(
    list_id=bindparam("list"),
    subscriber_id=bindparam("subscriber"),
    status=bindparam("new"),
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)
_CONSENT = (
    db.memberships.update()
    .where(*_THIS)
    .values(consent_at=bindparam("b_at"), consent_source=bindparam("b_source"), consent_ip=bindparam("b_ip"))
)
_LOCKED_OTHER_FREQUENCY = select(_m.status).where(*_THIS, _m.frequency != bindparam("frequency")).with_for_update()
# updated_at stays: it says when the status last changed (purges and confirmations read it).
_FREQUENCY = db.memberships.update().where(*_THIS).values(frequency=bindparam("b_frequency"))
_LOG = db.events.insert()
_EVENT_COLUMNS = ["subscriber_id", "list_id", "status", "previous_status", "source", "detail", "created_at"]


def status_of(conn: Connection, list_id: int, subscriber_id: int) -> str | None:
    """A membership's status (None: not a member), locked until the transaction ends, so that a
    compare-and-set from it is not beaten to the change."""
    return conn.execute(_LOCKED_STATUS, {"list": list_id, "subscriber": subscriber_id}).scalar()


def statuses_of(conn: Connection, subscriber_id: int, list_id: int | None = None) -> list[tuple[int, str]]:
    """(list id, status) of the subscriber's memberships (of one list, with `list_id`), locked until
    the transaction ends."""
    query = select(_m.list_id, _m.status).where(_m.subscriber_id == subscriber_id)
    if list_id is not None:
        query = query.where(_m.list_id == list_id)
    return [(row.list_id, row.status) for row in conn.execute(query.with_for_update()).all()]


def join(conn: Connection, *, list_id: int, subscriber_id: int, status: str, now: datetime) -> None:
    """Make the subscriber a member. Two processes adding the same member at once: the second one's
    insert breaks the primary key and its transaction fails."""
    conn.execute(_JOIN, {"list": list_id, "subscriber": subscriber_id, "new": status, "now": now})


def move(conn: Connection, *, list_id: int, subscriber_id: int, expected: str, status: str, now: datetime) -> bool:
    """Set a membership's status if it still is `expected`; True if it was."""
    values = {"list": list_id, "subscriber": subscriber_id, "expected": expected, "new": status, "now": now}
    return conn.execute(_SET, values).rowcount == 1


def log(
    conn: Connection,
    *,
    subscriber_id: int | None,
    list_id: int | None,
    status: str,
    source: str,
    now: datetime,
    previous_status: str | None = None,
    detail: str = "",
) -> None:
    """Append to the event log, which is only ever appended to: a status change (through
    membership.py's compare-and-sets) or an erasure (subscribers.erase_subscriber)."""
    values = {"subscriber_id": subscriber_id, "list_id": list_id, "status": status, "previous_status": previous_status}
    conn.execute(_LOG, {**values, "source": source, "detail": detail, "created_at": now})


def move_many(
    conn: Connection,
    *,
    list_id: int,
    rows: Select[Any],
    statuses: list[str],
    status: str,
    source: str,
    now: datetime,
    unchanged_since: datetime | None,
) -> int:
    """Move each member of the list selected by `rows` (subscriber_id, detail) whose status is one of
    `statuses` (set no later than `unchanged_since`, if given) to `status`, and log it with its
    row's detail, in two statements; how many moved."""
    found = rows.subquery()
    which = and_(_m.status.in_(statuses), *([_m.updated_at <= unchanged_since] if unchanged_since else []))
    member = and_(_m.list_id == list_id, _m.subscriber_id == found.c.subscriber_id)
    logged = _moves(found, list_id, status, source, now, _m.status).select_from(found.join(db.memberships, member))
    conn.execute(db.events.insert().from_select(_EVENT_COLUMNS, logged.where(which)))
    return conn.execute(
        db.memberships.update()
        .where(_m.list_id == list_id, which, _m.subscriber_id.in_(select(found.c.subscriber_id)))
        .values(status=status, updated_at=now)
    ).rowcount


def join_many(conn: Connection, *, list_id: int, rows: Select[Any], status: str, source: str, now: datetime) -> int:
    """Make each subscriber selected by `rows` (subscriber_id, detail) who is not on the list a
    member with `status`, and log it with its row's detail, in two statements; how many joined."""
    found = rows.subquery()
    stamp = literal(now, db.TS)
    joining = ~exists().where(_m.list_id == list_id, _m.subscriber_id == found.c.subscriber_id)
    logged = _moves(found, list_id, status, source, now, literal(None, String)).where(joining)
    conn.execute(db.events.insert().from_select(_EVENT_COLUMNS, logged))
    # preserve_rowcount: SQLAlchemy guarantees rowcount for UPDATE and DELETE only; without it an
    # INSERT … SELECT on PostgreSQL (psycopg) reports -1.
    return conn.execute(
        db.memberships.insert().from_select(
            ["list_id", "subscriber_id", "status", "created_at", "updated_at"],
            select(literal(list_id), found.c.subscriber_id, literal(status), stamp, stamp).where(joining),
        ),
        execution_options={"preserve_rowcount": True},
    ).rowcount


def _moves(
    found: Any, list_id: int, status: str, source: str, now: datetime, previous: ColumnElement[Any]
) -> Select[Any]:
    """Each row's event (its move from `previous`), for the caller's FROM and WHERE."""
    return select(
        found.c.subscriber_id, literal(list_id), literal(status), previous, literal(source), found.c.detail, literal(now, db.TS)
    )


def status_unless_frequency(conn: Connection, *, list_id: int, subscriber_id: int, frequency: str) -> str | None:
    """The membership's status, locked until the transaction ends, if its frequency is not
    `frequency` (None: it is, or not a member)."""
    ids = {"list": list_id, "subscriber": subscriber_id, "frequency": frequency}
    return conn.execute(_LOCKED_OTHER_FREQUENCY, ids).scalar()


def set_frequency(conn: Connection, *, list_id: int, subscriber_id: int, frequency: str) -> None:
    conn.execute(_FREQUENCY, {"list": list_id, "subscriber": subscriber_id, "b_frequency": frequency})


def record_consent(
    conn: Connection, *, list_id: int, subscriber_id: int, source: str, now: datetime, ip: str | None
) -> None:
    conn.execute(_CONSENT, {"list": list_id, "subscriber": subscriber_id, "b_at": now, "b_source": source, "b_ip": ip})


def forget_list(conn: Connection, list_id: int) -> None:
    """Delete a list's memberships; its events stay, naming no list."""
    conn.execute(delete(db.memberships).where(_m.list_id == list_id))
    # The foreign key would do this too; doing it here does not depend on SQLite's foreign_keys pragma.
    conn.execute(update(db.events).where(_e.list_id == list_id).values(list_id=None))


def forget_subscribers(conn: Connection, subscriber_ids: list[int]) -> tuple[int, int]:
    """Delete these subscribers' memberships and events; (memberships, events) deleted."""
    # Explicit deletes rather than ON DELETE CASCADE: they do not depend on SQLite's foreign_keys pragma.
    events = conn.execute(delete(db.events).where(_e.subscriber_id.in_(subscriber_ids))).rowcount
    memberships = conn.execute(delete(db.memberships).where(_m.subscriber_id.in_(subscriber_ids))).rowcount
    return memberships, events


def _unconfirmed_before(moment: datetime) -> ColumnElement[bool]:
    return and_(_m.status == db.UNCONFIRMED, _m.updated_at < moment)


def unconfirmed_before(conn: Connection, moment: datetime) -> list[int]:
    """The subscribers with a membership unconfirmed since before `moment` (once per membership)."""
    return list(conn.execute(select(_m.subscriber_id).where(_unconfirmed_before(moment))).scalars())


def forget_unconfirmed(conn: Connection, subscriber_ids: list[int], before: datetime) -> int:
    """Delete these subscribers' memberships unconfirmed since before `before`, with their events;
    how many memberships."""
    stale = _unconfirmed_before(before)
    their_stale = select(_m.list_id).where(stale, _m.subscriber_id == _e.subscriber_id)
    conn.execute(delete(db.events).where(_e.subscriber_id.in_(subscriber_ids), _e.list_id.in_(their_stale)))
    return conn.execute(delete(db.memberships).where(stale, _m.subscriber_id.in_(subscriber_ids))).rowcount
