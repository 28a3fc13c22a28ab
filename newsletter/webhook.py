"""The provider's events (its webhook): apply each once.

The provider retries a batch for a day on any non-2xx answer, so an event can arrive several times:
each event id is applied once (webhook_events). Status events suppress the subscriber through the
same rule as every other source; engagement and delivery events are counted per campaign. An event
the database refuses costs only itself, never the batch it came in (a non-2xx answer has the
provider retry the whole batch for a day, then drop it, the unsubscribes in it included).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from . import db
from .providers import Event, EventKind
from .addresses import email_key
from .store import feedback
from .suppressions import subscriber_id_for, suppress

log = logging.getLogger(__name__)

# A provider retries a batch for up to a day; event ids are kept well past that.
DEDUPE_WINDOW = timedelta(days=7)

# The kinds of event whose reader is kept (campaign_events) for the report's unique counts; the
# others (processed, deferred, dropped…) are only counted in campaign_stats.
PER_READER = frozenset(
    {
        EventKind.DELIVERED,
        EventKind.OPENED,
        EventKind.CLICKED,
        EventKind.BOUNCED,
        EventKind.SPAM_REPORT,
        EventKind.UNSUBSCRIBED,
    }
)


@dataclass
class WebhookResult:
    applied: int = 0  # events seen for the first time
    duplicates: int = 0  # events already applied (the provider's retries)
    changed: int = 0  # memberships whose status changed
    failed: int = 0  # items that are not events, or that the database refused (logged)

    def add(self, other: WebhookResult) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.changed += other.changed
        self.failed += other.failed


def apply_events(conn: Connection, items: list[Event | None], now: datetime) -> WebhookResult:
    """Apply a batch of verified events (None: an item that was no event) in the caller's
    transaction, every one that can be stored.

    The batch goes in one savepoint; should the database refuse any of it, the batch is redone event
    by event, each in its own savepoint, and only the refused events are left out (counted and
    logged). An outage is no event's fault: it propagates, and the provider retries the batch.
    """
    feedback.forget_applied(conn, now - DEDUPE_WINDOW)
    result = WebhookResult()
    events = []
    for number, item in enumerate(items, start=1):
        if item is not None:
            events.append(item)
        else:
            result.failed += 1
            log.warning("webhook: item %d of %d is not an event object; skipped", number, len(items))
    try:
        with conn.begin_nested():
            result.add(_apply(conn, events, now))
        return result
    except (OperationalError, InterfaceError):
        raise
    except (SQLAlchemyError, ValueError, OverflowError):
        pass  # redone one by one below, to find the event(s) at fault
    for number, event in enumerate(events, start=1):
        try:
            with conn.begin_nested():
                result.add(_apply(conn, [event], now))
        except (OperationalError, InterfaceError):
            raise
        except (SQLAlchemyError, ValueError, OverflowError) as error:
            result.failed += 1
            log.warning(
                "webhook: event %d of %d (%.30s, id %.100r) not stored: %s",
                number, len(events), event.kind, event.id, _why(error),
            )  # fmt: skip
    return result


def _why(error: Exception) -> str:
    # The driver's own message: SQLAlchemy's adds the statement and its parameters (addresses).
    cause = error.orig if isinstance(error, DBAPIError) else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}"


def _apply(conn: Connection, events: list[Event], now: datetime) -> WebhookResult:
    result = WebhookResult()
    seen = _already_applied(conn, [event.id for event in events if event.id is not None])
    counts: Counter[tuple[int, EventKind]] = Counter()
    facts: list[Event] = []
    new_ids: list[str] = []
    for event in events:
        if event.id is not None:
            if event.id in seen:
                result.duplicates += 1
                continue
            seen.add(event.id)
            new_ids.append(event.id)
        result.applied += 1
        if event.campaign_id is not None:
            counts[(event.campaign_id, event.kind)] += 1
            if event.kind in PER_READER and event.email is not None:
                facts.append(event)
        if event.suppression is None or event.email is None:
            continue
        # By the address the message went to, never by our subscriber id alone: that id names
        # whoever holds it now, which after an erasure need not be the recipient.
        subscriber_id = subscriber_id_for(conn, event.email)
        if subscriber_id is None:
            continue
        status, every_list = event.suppression
        result.changed += suppress(
            conn,
            subscriber_id=subscriber_id,
            status=status,
            source="webhook",
            now=now,
            list_id=None if every_list else event.list_id,
            detail=event.detail,
        )
    if new_ids:
        feedback.mark_applied(conn, new_ids, now)
    campaign_ids = {campaign_id for campaign_id, _ in counts}
    existing = set(
        conn.execute(select(db.campaigns.c.id).where(db.campaigns.c.id.in_(campaign_ids))).scalars()
    ) if campaign_ids else set()
    feedback.add_counts(
        conn,
        {(campaign_id, kind.value): number for (campaign_id, kind), number in counts.items() if campaign_id in existing},
    )
    _record(conn, [event for event in facts if event.campaign_id in existing], now)
    return result


def _already_applied(conn: Connection, event_ids: list[str]) -> set[str]:
    column = db.webhook_events.c.event_id
    return {event_id for (event_id,) in _in_chunks(conn, select(column), column, event_ids)}


def _in_chunks(conn: Connection, query: Select[Any], column: ColumnElement[Any], values: list[Any]) -> list[Row[Any]]:
    """The rows of `query` whose `column` is one of `values`, asked in chunks: a batch can hold
    thousands of events, more than a statement's bound parameters."""
    rows: list[Row[Any]] = []
    for start in range(0, len(values), 500):
        rows.extend(conn.execute(query.where(column.in_(values[start : start + 500]))))
    return rows


def _record(conn: Connection, facts: list[Event], now: datetime) -> None:
    """A campaign_events row per new fact, its reader named by the subscriber id their address has,
    if the campaign had that reader (a delivery to them). An address we do not know, or no longer
    know, names no reader to count. A campaign id is only a tag the provider echoes back (another
    database's campaign of the same id on the same account, a message tagged by hand), so it is
    checked against the deliveries here, once per event, rather than by the report, which would
    check millions of facts on every run."""
    if not facts:
        return
    readers = _subscriber_ids(conn, {event.email for event in facts if event.email is not None})
    had = _delivered_to(
        conn,
        {
            (event.campaign_id, readers[event.email])
            for event in facts
            if event.campaign_id is not None and event.email in readers
        },
    )
    rows = [
        {
            "campaign_id": event.campaign_id,
            "subscriber_id": readers[event.email],
            "kind": event.kind.value,
            "machine_open": event.machine_open,
            "url": event.url or "",
            "at": event.at or now,
        }
        for event in facts
        if (event.campaign_id, readers.get(event.email)) in had
    ]
    if rows:
        feedback.record_facts(conn, rows)


def _delivered_to(conn: Connection, pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The (campaign, subscriber) pairs among `pairs` that have a delivery: the readers each campaign
    had, whatever its state (an event can come before its batch's answer is recorded)."""
    d = db.deliveries.c
    wanted: dict[int, list[int]] = defaultdict(list)
    for campaign_id, subscriber_id in pairs:
        wanted[campaign_id].append(subscriber_id)
    had: set[tuple[int, int]] = set()
    for campaign_id, subscriber_ids in wanted.items():
        query = select(d.subscriber_id).where(d.campaign_id == campaign_id)
        found = _in_chunks(conn, query, d.subscriber_id, sorted(subscriber_ids))
        had.update((campaign_id, subscriber_id) for (subscriber_id,) in found)
    return had


def _subscriber_ids(conn: Connection, emails: set[str]) -> dict[str, int]:
    """address → subscriber id, for the addresses that are a subscriber's: looked up by their
    case-folded text in bulk, then (for the few that miss) as suppressions match an address."""
    keys = {email: email_key(email.strip()) for email in emails}
    column = db.subscribers.c.email_key
    found: dict[str, int] = dict(
        _in_chunks(conn, select(column, db.subscribers.c.id), column, sorted(set(keys.values())))
    )
    readers = {email: found[key] for email, key in keys.items() if key in found}
    for email in emails - readers.keys():
        subscriber_id = subscriber_id_for(conn, email)
        if subscriber_id is not None:
            readers[email] = subscriber_id
    return readers
