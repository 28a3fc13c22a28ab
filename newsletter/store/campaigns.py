"""A send's records: the campaigns (`campaigns`, with `campaign_tracking`), their recipients
(`deliveries`) and the batches they went out in (`batches`). This module owns the four tables: the
send (send/campaigns.py, which holds the state machine and reads its pages) writes them through
here, and erasure (subscribers.py) asks here to take an address out of them.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.engine import Connection

from .. import db

_c, _d, _b = db.campaigns.c, db.deliveries.c, db.batches.c
# Built once with parameters: every batch runs them, and building a statement costs more than running
# it (a provider that takes one reader a request runs them for every reader).
_TO_BATCH = {"batch_id": bindparam("b_batch"), "state": db.IN_FLIGHT, "updated_at": bindparam("b_now")}
# The page just read, up to its last row: every pending, unbatched row up to it is in the page.
_MARK_PAGE = (
    db.deliveries.update()
    .where(
        _d.campaign_id == bindparam("campaign"),
        _d.state == db.PENDING,
        _d.batch_id.is_(None),
        _d.id <= bindparam("last"),
    )
    .values(**_TO_BATCH)
)
# One part of a split batch: its pending rows between the part's first and last.
PART = (_d.batch_id == bindparam("parent"), _d.state == db.PENDING, _d.id.between(bindparam("first"), bindparam("last")))
_MARK_PART = db.deliveries.update().where(*PART).values(**_TO_BATCH)
_NEW_BATCH = db.batches.insert()
_CLOSE_BATCH = (
    db.batches.update()
    .where(_b.id == bindparam("batch"), _b.state == db.IN_FLIGHT)
    .values(
        state=bindparam("b_state"),
        message_id=bindparam("b_message_id"),
        error=bindparam("b_error"),
        finished_at=bindparam("b_now"),
    )
)
_BATCH_IN_FLIGHT = db.deliveries.update().where(_d.batch_id == bindparam("batch"), _d.state == db.IN_FLIGHT)
# A final state keeps the provider's word on it; a returned batch lets its rows go back to the pool.
_SETTLE_FINAL = _BATCH_IN_FLIGHT.values(
    state=bindparam("b_state"), updated_at=bindparam("b_now"), message_id=bindparam("b_message_id"), error=bindparam("b_error")
)
_SETTLE_RETURNED = _BATCH_IN_FLIGHT.values(state=bindparam("b_state"), updated_at=bindparam("b_now"), batch_id=None)
_SETTLE_OTHER = _BATCH_IN_FLIGHT.values(state=bindparam("b_state"), updated_at=bindparam("b_now"))
# One recipient the provider refused in a batch it otherwise accepted.
_REFUSE_ONE = (
    db.deliveries.update()
    .where(_d.id == bindparam("delivery"), _d.state == db.IN_FLIGHT)
    .values(state=db.FAILED, updated_at=bindparam("b_now"), error=bindparam("b_error"))
)


# -- campaigns ------------------------------------------------------------------------------------


def add(
    conn: Connection,
    *,
    key: str,
    kind: str,
    list_id: int,
    subject: str,
    html: str,
    text: str,
    opens: bool,
    clicks: bool,
    now: datetime,
) -> int:
    """Record a campaign and whether its mail tracks opens and clicks; its id."""
    values = {"issue_date": key, "edition": kind, "list_id": list_id, "subject": subject, "html": html, "text": text}
    inserted = conn.execute(db.campaigns.insert().values(**values, created_at=now))
    campaign_id: int = inserted.inserted_primary_key[0]  # type: ignore[index]
    conn.execute(db.campaign_tracking.insert().values(campaign_id=campaign_id, opens=opens, clicks=clicks))
    return campaign_id


def add_recipients(conn: Connection, snapshot: Select[Any]) -> None:
    """A delivery for each row of `snapshot` (campaign_id, subscriber_id, email, state, updated_at),
    in one statement whatever their number."""
    columns = ["campaign_id", "subscriber_id", "email", "state", "updated_at"]
    conn.execute(db.deliveries.insert().from_select(columns, snapshot))


def finish(conn: Connection, campaign_id: int, now: datetime) -> None:
    conn.execute(db.campaigns.update().where(_c.id == campaign_id).values(finished_at=now))


def count_of_list(conn: Connection, list_id: int) -> int:
    """How many campaigns went to the list."""
    return conn.execute(select(func.count()).select_from(db.campaigns).where(_c.list_id == list_id)).scalar_one()


# -- a send's batches and deliveries --------------------------------------------------------------


def reopen(conn: Connection, campaign_id: int, *, now: datetime, died: str, resend_uncertain: bool) -> None:
    """Settle what an earlier run of the campaign's send left behind: what was in flight is
    uncertain (`died` says why), the untried parts of a split batch are pending like any other row;
    with `resend_uncertain`, the uncertain go out again."""
    mine_b, mine_d = _b.campaign_id == campaign_id, _d.campaign_id == campaign_id
    # Its process died between marking the batch and recording the answer.
    conn.execute(
        db.batches.update().where(mine_b, _b.state == db.IN_FLIGHT).values(state=db.UNCERTAIN, error=died, finished_at=now)
    )
    conn.execute(
        db.deliveries.update().where(mine_d, _d.state == db.IN_FLIGHT).values(state=db.UNCERTAIN, error=died, updated_at=now)
    )
    conn.execute(
        db.deliveries.update().where(mine_d, _d.state == db.PENDING, _d.batch_id.is_not(None)).values(batch_id=None)
    )
    if resend_uncertain:
        conn.execute(
            db.deliveries.update()
            .where(mine_d, _d.state == db.UNCERTAIN)
            .values(state=db.PENDING, batch_id=None, message_id=None, error=None, updated_at=now)
        )
        conn.execute(db.batches.update().where(mine_b, _b.state == db.UNCERTAIN).values(state=db.RESENT))


def new_batch(conn: Connection, campaign_id: int, *, size: int, now: datetime) -> int:
    """A batch in flight; its id."""
    batch = {"campaign_id": campaign_id, "state": db.IN_FLIGHT, "size": size, "started_at": now}
    return conn.execute(_NEW_BATCH, batch).inserted_primary_key[0]  # type: ignore[no-any-return]


def mark_page(conn: Connection, campaign_id: int, *, last: int, batch_id: int, now: datetime) -> int:
    """Put the campaign's pending, unbatched deliveries up to id `last` in flight in the batch; how many."""
    values = {"campaign": campaign_id, "last": last, "b_batch": batch_id, "b_now": now}
    return conn.execute(_MARK_PAGE, values).rowcount


def mark_part(conn: Connection, parent_id: int, *, first: int, last: int, batch_id: int, now: datetime) -> int:
    """Put the pending deliveries of split batch `parent_id` from id `first` to `last` in flight in
    the batch; how many."""
    values = {"parent": parent_id, "first": first, "last": last, "b_batch": batch_id, "b_now": now}
    return conn.execute(_MARK_PART, values).rowcount


def resize_batch(conn: Connection, batch_id: int, size: int) -> None:
    conn.execute(db.batches.update().where(_b.id == batch_id).values(size=size))


def skip(conn: Connection, delivery_ids: list[int], *, reason: str, now: datetime) -> None:
    """Skip these deliveries, if still pending or in flight."""
    conn.execute(
        db.deliveries.update()
        .where(_d.id.in_(delivery_ids), _d.state.in_([db.PENDING, db.IN_FLIGHT]))
        .values(state=db.SKIPPED, error=reason, updated_at=now)
    )


def refuse(conn: Connection, refusals: list[tuple[int, str | None]], now: datetime) -> None:
    """Fail each (delivery id, reason) still in flight."""
    conn.execute(_REFUSE_ONE, [{"delivery": delivery, "b_now": now, "b_error": reason} for delivery, reason in refusals])


def close_batch(
    conn: Connection, batch_id: int, state: str, *, recipients: str, message_id: str | None, error: str | None, now: datetime
) -> None:
    """Settle the batch, if still in flight, as `state`, and its deliveries still in flight as
    `recipients`: with the batch's answer when that is the batch's own state, out of the batch when it
    was returned."""
    words = {"batch": batch_id, "b_now": now, "b_message_id": message_id, "b_error": error}
    conn.execute(_CLOSE_BATCH, {**words, "b_state": state})
    if recipients == state:
        conn.execute(_SETTLE_FINAL, {**words, "b_state": recipients})
    else:
        settle = _SETTLE_RETURNED if state == db.RETURNED else _SETTLE_OTHER
        conn.execute(settle, {"batch": batch_id, "b_now": now, "b_state": recipients})


# -- erasure --------------------------------------------------------------------------------------


def anonymise(conn: Connection, subscriber_id: int) -> int:
    """Blank the address of the subscriber's deliveries, which stay with their sends; how many."""
    return conn.execute(update(db.deliveries).where(_d.subscriber_id == subscriber_id).values(email="")).rowcount


def forget_quoted(conn: Connection, spellings: Collection[str]) -> int:
    """Take each of `spellings` of an address out of the provider answers recorded with deliveries
    and batches; how many rows held one."""
    found = 0
    for spelling in spellings:
        for column in (_d.error, _b.error):
            found += conn.execute(
                update(column.table)
                .where(column.contains(spelling, autoescape=True))
                .values({column.name: func.replace(column, spelling, "[erased]")})
            ).rowcount
    return found
