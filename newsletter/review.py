"""An editor's approval (`review = "approve"`): the daily run sends a day's issue to the editors as a
test and holds it, awaiting approval, until `newsletter approve` lets the run publish and send it.

A day's review is a row of `reviews`, this module's table: awaiting approval from the test on, and
approved once an editor says so. The test goes again only when the digest changed since (an editor's
edit), so a run repeated while the day waits sends the editors nothing new.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from . import db
from .errors import NothingToApprove

AWAITING, APPROVED = "awaiting approval", "approved"


@dataclass(frozen=True)
class Review:
    day: date
    state: str  # AWAITING or APPROVED
    digest_sha256: str  # of the digest the editors were sent
    tested_at: datetime
    approved_at: datetime | None


def digest_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def review_of(conn: Connection, day: date) -> Review | None:
    row = conn.execute(_REVIEW, {"day": day.isoformat()}).first()
    if row is None:
        return None
    approved_at = db.aware(row.approved_at) if row.approved_at else None
    return Review(day, row.state, row.digest_sha256, db.aware(row.tested_at), approved_at)


def record_test(conn: Connection, day: date, fingerprint: str, now: datetime) -> None:
    """The editors were sent `day`'s issue, made from the digest with this fingerprint: it awaits approval."""
    values = {"state": AWAITING, "digest_sha256": fingerprint, "tested_at": now, "approved_at": None}
    if conn.execute(db.reviews.update().where(db.reviews.c.day == day.isoformat()).values(values)).rowcount == 0:
        conn.execute(db.reviews.insert().values(day=day.isoformat(), **values))


def approve(conn: Connection, day: date, now: datetime) -> Review:
    """Approve `day`'s issue (again: no change); NothingToApprove if its editors were sent nothing."""
    found = review_of(conn, day)
    if found is None:
        raise NothingToApprove(
            f"nothing awaits approval for {day.isoformat()}: `newsletter run --date {day.isoformat()}` sends the "
            "editors the issue first (with review = 'approve')"
        )
    if found.state == APPROVED:
        return found
    conn.execute(
        db.reviews.update()
        .where(db.reviews.c.day == day.isoformat(), db.reviews.c.state == AWAITING)
        .values(state=APPROVED, approved_at=now)
    )
    return Review(day, APPROVED, found.digest_sha256, found.tested_at, now)


_REVIEW = select(db.reviews).where(db.reviews.c.day == bindparam("day"))
