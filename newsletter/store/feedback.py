"""What the provider tells us after a send: the event ids already applied (`webhook_events`), the
events counted per campaign (`campaign_stats`), the readers behind them (`campaign_events`) and how
far its suppression lists were read (`sync_state`). This module owns the four tables: the webhook
(webhook.py) and the suppression sync (suppressions.py) write them through here; the report reads
them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, select
from sqlalchemy.engine import Connection

from .. import db

_w, _stats, _state = db.webhook_events.c, db.campaign_stats.c, db.sync_state.c


@functools.cache
def _new_facts(dialect: str) -> Insert:
    """A fact already kept (a second open by the same reader) is not kept again."""
    return db.insert_ignoring(dialect, db.campaign_events)


def forget_applied(conn: Connection, before: datetime) -> None:
    """Delete the ids of the events received before `before`."""
    conn.execute(db.webhook_events.delete().where(_w.received_at < before))


def mark_applied(conn: Connection, event_ids: list[str], now: datetime) -> None:
    # In one statement: a request carries a thousand events, and a statement each is most of the
    # time a request takes.
    conn.execute(db.webhook_events.insert(), [{"event_id": i, "received_at": now} for i in event_ids])


def add_counts(conn: Connection, counts: Mapping[tuple[int, str], int]) -> None:
    """Add to each (campaign id, event kind)'s count."""
    for (campaign_id, event), number in counts.items():
        updated = conn.execute(
            db.campaign_stats.update()
            .where(_stats.campaign_id == campaign_id, _stats.event == event)
            .values(count=_stats.count + number)
        )
        if updated.rowcount == 0:
            conn.execute(db.campaign_stats.insert().values(campaign_id=campaign_id, event=event, count=number))


def record_facts(conn: Connection, facts: list[dict[str, Any]]) -> None:
    """Keep each fact (campaign_id, subscriber_id, kind, machine_open, url, at) not kept yet, in one
    statement."""
    conn.execute(_new_facts(conn.dialect.name), facts)


def synced_until(conn: Connection, kind: str) -> int | None:
    """The newest `created` timestamp read from the provider's suppression list `kind`, if any."""
    return conn.execute(select(_state.last_created).where(_state.kind == kind)).scalar()


def save_synced_until(conn: Connection, kind: str, last_created: int) -> None:
    updated = conn.execute(db.sync_state.update().where(_state.kind == kind).values(last_created=last_created))
    if updated.rowcount == 0:
        conn.execute(db.sync_state.insert().values(kind=kind, last_created=last_created))
