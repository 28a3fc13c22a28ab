"""Helpers for the tests (and the benchmark) of the web server: a project config, seeded
subscribers, and the real `newsletter serve` process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from sqlalchemy import select

from newsletter import db
from newsletter.config import Settings
from testkit.projects import engine_of

from .support import ROOT


def version_2_database(path: Path, rows: str = "") -> str:
    """A SQLite database as version 2 of the schema made it (tests/schema_v2.sql, as SQLite stored
    it), holding `rows` (SQL inserts); returns its URL. Nothing here opens it through the current code."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript((ROOT / "tests" / "schema_v2.sql").read_text())
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        conn.executescript(rows)
    return f"sqlite:///{path}"


def status_of(settings: Settings, list_id: int, subscriber_id: int) -> str | None:
    m = db.memberships.c
    with engine_of(settings).connect() as conn:
        return conn.execute(
            select(m.status).where(m.list_id == list_id, m.subscriber_id == subscriber_id)
        ).scalar()


def events_of(settings: Settings, subscriber_id: int) -> list[tuple[int | None, str, str | None, str]]:
    """(list id, status, previous status, source) of each logged change, oldest first."""
    e = db.events.c
    with engine_of(settings).connect() as conn:
        rows = conn.execute(
            select(e.list_id, e.status, e.previous_status, e.source)
            .where(e.subscriber_id == subscriber_id)
            .order_by(e.id)
        ).all()
    return [tuple(row) for row in rows]


def batch_with_unstorable_text(
    campaign_id: int, list_id: int, *, leaver: str, bouncer: str, reader: str
) -> bytes:
    """A webhook body as a mail server's answer can make it: NUL and lone surrogates (JSON escapes
    `\\u0000`, `\\ud800`) in several fields, among good events (an unsubscribe, a bounce whose
    reason holds both, a delivery), plus two items that are not events at all."""
    ids = {"campaign_id": str(campaign_id), "list_id": str(list_id), "timestamp": 1769140800}
    events: list[object] = [
        {**ids, "email": leaver, "event": "unsubscribe", "sg_event_id": "mixed-unsubscribe"},
        {**ids, "email": "nobody\x00@example.com", "event": "spamreport", "sg_event_id": "mixed-nul-\x00"},
        {**ids, "email": bouncer, "event": "bounce", "type": "bounce", "sg_event_id": "mixed-bounce",
         "reason": "550 5.1.1 <\x00> unknown \ud800 user"},  # fmt: skip
        {**ids, "email": "x\ud800@example.com", "event": "open\x00", "sg_event_id": "mixed-\ud800",
         "useragent": "Mozilla\x00\udfff"},  # fmt: skip
        42,
        {"no": "event"},
        {**ids, "email": reader, "event": "delivered", "sg_event_id": "mixed-delivered", "response": "250 ok\x00"},
    ]
    body = json.dumps(events).encode()
    assert b"\\u0000" in body and b"\\ud800" in body
    return body


# What the batch above leaves in webhook_events and campaign_stats (text escaped, nothing dropped).
UNSTORABLE_EVENT_IDS = {"mixed-unsubscribe", "mixed-nul-\\u0000", "mixed-bounce", "mixed-\\ud800", "mixed-delivered"}
UNSTORABLE_COUNTS = {"unsubscribed": 1, "spam_report": 1, "bounced": 1, "other": 1, "delivered": 1}
UNSTORABLE_BOUNCE_DETAIL = "SendGrid bounce event: 550 5.1.1 <\\u0000> unknown \\ud800 user"


