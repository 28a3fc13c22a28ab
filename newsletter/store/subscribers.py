"""The people (`subscribers`): an address, its case-folded key, a name and attributes. This module
owns the table: subscribers.py (adding, editing, erasure, the purge), the CSV import
(subscriber_csv.py, set-based) and the sign-up form (signup.py) write it through here.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Select, bindparam, delete, exists, select
from sqlalchemy.engine import Connection

from .. import db

_s, _m = db.subscribers.c, db.memberships.c
# Built once: the sign-up form adds its reader in a transaction of its own.
_FOUND = select(_s.id, _s.email, _s.name).where(_s.email_key == bindparam("key"))


def by_key(conn: Connection, key: str) -> Any | None:
    """The row of the subscriber whose address key is `key`, if there is one."""
    return conn.execute(select(db.subscribers).where(_s.email_key == key)).first()


def by_id(conn: Connection, subscriber_id: int) -> Any:
    return conn.execute(select(db.subscribers).where(_s.id == subscriber_id)).one()


def add(conn: Connection, *, email: str, key: str, name: str | None, attributes: dict[str, Any], now: datetime) -> int:
    """Add a subscriber; their id."""
    values = {"email": email, "email_key": key, "name": name, "attributes": attributes, "created_at": now}
    return conn.execute(db.subscribers.insert().values(values)).inserted_primary_key[0]  # type: ignore[index]


def add_if_new(conn: Connection, *, email: str, key: str, name: str | None, now: datetime) -> Any:
    """(id, email, name) of the subscriber whose address key is `key`, added as given if new; one
    known already keeps what they have."""
    values = {"email": email, "email_key": key, "name": name, "attributes": {}, "created_at": now}
    # An upsert: another process (an import, a second server) may add the same address meanwhile.
    conn.execute(_upsert(conn.dialect.name), values)
    return conn.execute(_FOUND, {"key": key}).one()


@functools.cache
def _upsert(dialect: str) -> Insert:
    return db.insert_ignoring(dialect, db.subscribers, index_elements=["email_key"])


def add_selected(conn: Connection, rows: Select[Any]) -> int:
    """Add a subscriber for each row of `rows` (email, email_key, name, attributes, created_at) in
    one statement, whatever their number (a CSV import's million); how many."""
    # preserve_rowcount: SQLAlchemy guarantees rowcount for UPDATE and DELETE only; without it an
    # INSERT … SELECT on PostgreSQL (psycopg) reports -1.
    return conn.execute(
        db.subscribers.insert().from_select(["email", "email_key", "name", "attributes", "created_at"], rows),
        execution_options={"preserve_rowcount": True},
    ).rowcount


def change(conn: Connection, subscriber_id: int, **changes: Any) -> None:
    """Set a subscriber's name or attributes."""
    conn.execute(db.subscribers.update().where(_s.id == subscriber_id).values(**changes))


def on_no_list(conn: Connection, subscriber_ids: list[int]) -> list[int]:
    """Of `subscriber_ids`, those who are a member of no list."""
    alone = select(_s.id).where(_s.id.in_(subscriber_ids), ~exists().where(_m.subscriber_id == _s.id))
    return list(conn.execute(alone).scalars())


def addresses_of(subscriber_ids: list[int]) -> Select[Any]:
    """The addresses of `subscriber_ids`, as a subquery for another owner's statement."""
    return select(_s.email).where(_s.id.in_(subscriber_ids))


def forget(conn: Connection, subscriber_ids: list[int]) -> int:
    """Delete these subscribers (their memberships and events must be gone first); how many."""
    return conn.execute(delete(db.subscribers).where(_s.id.in_(subscriber_ids))).rowcount
