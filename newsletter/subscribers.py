"""Lists, subscribers and their memberships, with an append-only log of every status change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import db
from .errors import SubscriberError


@dataclass(frozen=True)
class MailingList:
    id: int
    name: str
    description: str
    created_at: datetime


def normalise_email(raw: str) -> str:
    """The address trimmed, syntax-checked (no DNS) and with its domain lower-cased.

    Raises SubscriberError with email-validator's reason.
    """
    candidate = raw.strip()
    try:
        return validate_email(candidate, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise SubscriberError(f"invalid email address {candidate!r}: {error}") from None


def email_key(email: str) -> str:
    """What makes two addresses the same subscriber: the whole address, case-folded."""
    return email.casefold()


def get_list(conn: Connection, name: str) -> MailingList:
    row = conn.execute(select(db.lists).where(db.lists.c.name == name)).first()
    if row is None:
        raise SubscriberError(f"no list named {name!r} (create it with: newsletter lists create {name})")
    return MailingList(row.id, row.name, row.description, row.created_at)


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
    """Set a membership's status and log the change; True if it changed.

    Setting the status it already has changes nothing and logs nothing, so repeated unsubscribes,
    webhook retries and re-synced suppressions are harmless. A subscriber who is not a member of the
    list becomes one with this status (SendGrid may report an address we only know from another list).
    """
    if status not in db.STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if source not in db.SOURCES:
        raise ValueError(f"unknown source {source!r}")
    m = db.memberships.c
    previous = conn.execute(
        select(m.status).where(m.list_id == list_id, m.subscriber_id == subscriber_id)
    ).scalar()
    if previous == status:
        return False
    if previous is None:
        conn.execute(
            db.memberships.insert().values(
                list_id=list_id, subscriber_id=subscriber_id, status=status, created_at=now, updated_at=now
            )
        )
    else:
        conn.execute(
            db.memberships.update()
            .where(m.list_id == list_id, m.subscriber_id == subscriber_id)
            .values(status=status, updated_at=now)
        )
    log_event(
        conn,
        subscriber_id=subscriber_id,
        list_id=list_id,
        status=status,
        previous_status=previous,
        source=source,
        now=now,
        detail=detail,
    )
    return True


def log_event(conn: Connection, **values: Any) -> None:
    now = values.pop("now")
    conn.execute(db.events.insert().values(created_at=now, **values))
