"""The records of one-off messages (`messages`): each under the idempotency key that says what it is
for, marked in flight before its request leaves and settled by the answer. This module owns the
table: the sending (send/transactional.py), the sign-ups' daily limits (signup.py) and erasure and
purges (subscribers.py) read and write it through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .. import db

_m = db.messages.c
# Built once: a sign-up claims its mail in its own transaction, and building a statement costs more
# than running it.
_MESSAGE = select(_m.state, _m.message_id, _m.error).where(_m.key == bindparam("key"))
_LOCKED_MESSAGE = _MESSAGE.with_for_update()
_ADD_MESSAGE = db.messages.insert()
_TAKE_MESSAGE = db.messages.update().where(_m.key == bindparam("message_key")).values(
    state=db.IN_FLIGHT, updated_at=bindparam("now")
)
# The prefix is made of ids, a date and colons: nothing LIKE reads as a wildcard.
_KEYED = select(_m.key, _m.state).where(_m.key.like(bindparam("pattern")))


@dataclass(frozen=True)
class Recorded:
    """How a message that is not the caller's to send stands."""

    state: str  # in flight reads as uncertain: it may have arrived
    message_id: str | None
    error: str | None


def claim(conn: Connection, *, key: str, email: str, subject: str, now: datetime) -> Recorded | None:
    """In the caller's transaction: mark the message in flight and return None (it is the caller's
    to send, once committed), or return how it stands if it is not the caller's to send."""
    row = conn.execute(_LOCKED_MESSAGE, {"key": key}).first()
    if row is None:
        values = {"key": key, "email": email, "subject": subject, "state": db.IN_FLIGHT, "created_at": now, "updated_at": now}
        if conn.dialect.name == "sqlite":  # writers are serialised: nobody inserts it after our read
            conn.execute(_ADD_MESSAGE, values)
            return None
        try:
            with conn.begin_nested():
                conn.execute(_ADD_MESSAGE, values)
            return None
        except IntegrityError:  # another caller inserted it after our read, and committed
            row = conn.execute(_MESSAGE, {"key": key}).one()
    elif row.state == db.PENDING:
        conn.execute(_TAKE_MESSAGE, {"message_key": key, "now": now})
        return None
    # In flight: another caller is sending it now, or died with its answer unrecorded. Either way
    # it may arrive: not ours to send again.
    return Recorded(db.UNCERTAIN if row.state == db.IN_FLIGHT else row.state, row.message_id, row.error)


def settle(conn: Connection, key: str, *, state: str, message_id: str | None, error: str | None, now: datetime) -> None:
    """Record the answer to the message in flight under `key`."""
    conn.execute(
        db.messages.update()
        .where(_m.key == key, _m.state == db.IN_FLIGHT)
        .values(state=state, message_id=message_id, error=error, updated_at=now)
    )


def keyed(conn: Connection, prefix: str) -> list[tuple[str, str]]:
    """(key, state) of the messages whose key starts with `prefix` (ids, a date and colons)."""
    return [(row.key, row.state) for row in conn.execute(_KEYED, {"pattern": f"{prefix}%"})]


def forget_sent_to(conn: Connection, addresses: Select[Any]) -> int:
    """Delete the records of the messages sent to any of `addresses` (a subquery); how many."""
    return conn.execute(delete(db.messages).where(_m.email.in_(addresses))).rowcount


def forget_address(conn: Connection, address: str, key: str) -> int:
    """Delete the records of the messages sent to the person whose address key is `key`, however
    the address was written then (as stored, or typed in another case); how many."""
    ids = db.addressed_to(conn, db.messages, address, key)
    return conn.execute(delete(db.messages).where(_m.id.in_(ids))).rowcount
