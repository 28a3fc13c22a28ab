"""The mailing lists (`lists`). This module owns the table: subscribers.py creates and deletes lists
through here; everyone else only reads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from .. import db

_l = db.lists.c


def named(conn: Connection, name: str) -> Any | None:
    """The row of the list called `name`, if there is one."""
    return conn.execute(select(db.lists).where(_l.name == name)).first()


def add(conn: Connection, name: str, *, description: str, optin: str, now: datetime) -> None:
    conn.execute(db.lists.insert().values(name=name, description=description, created_at=now, optin=optin))


def forget(conn: Connection, list_id: int) -> None:
    """Delete the list; its memberships must be gone first (store/memberships.forget_list)."""
    conn.execute(delete(db.lists).where(_l.id == list_id))
