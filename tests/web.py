"""Helpers for the tests (and the benchmark) of the web server: a project config, seeded
subscribers, and the real `newsletter serve` process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings
from newsletter.subscribers import email_key

from .support import ROOT, free_port, running


def write_config(folder: Path, **values: object) -> Path:
    """A newsletter.toml in `folder` with its own database, secret and public folder (plus `values`),
    so that the server subprocess and the test read exactly the same settings."""
    settings = {
        "database_url": f"sqlite:///{folder / 'newsletter.db'}",
        "secret_key": "test-signing-key",
        "public_dir": str(folder / "public"),
        **values,
    }
    config = folder / "newsletter.toml"
    # JSON strings, numbers and flat lists are valid TOML values.
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return config


@contextlib.contextmanager
def serving(config: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m newsletter serve` with this config (and `env` added to its environment); yields
    its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)]
    with running(command, port, env=env):
        yield f"http://127.0.0.1:{port}"


def version_2_database(path: Path, rows: str = "") -> str:
    """A SQLite database as version 2 of the schema made it (tests/schema_v2.sql, as SQLite stored
    it), holding `rows` (SQL inserts); returns its URL. Nothing here opens it through the current code."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript((ROOT / "tests" / "schema_v2.sql").read_text())
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        conn.executescript(rows)
    return f"sqlite:///{path}"


def add_list(settings: Settings, name: str, description: str = "") -> int:
    with db.engine_for(settings).begin() as conn:
        return conn.execute(
            db.lists.insert().values(
                name=name, description=description, created_at=datetime.now(timezone.utc)
            )
        ).inserted_primary_key[0]


def add_subscribers(
    settings: Settings, list_id: int, emails: list[str], status: str = db.SUBSCRIBED
) -> list[int]:
    """Members of the list (existing subscribers are reused); returns their ids in order."""
    now = datetime.now(timezone.utc)
    s = db.subscribers.c
    with db.engine_for(settings).begin() as conn:
        ids = []
        for email in emails:
            subscriber_id = conn.execute(select(s.id).where(s.email_key == email_key(email))).scalar()
            if subscriber_id is None:
                subscriber_id = conn.execute(
                    db.subscribers.insert().values(
                        email=email, email_key=email_key(email), attributes={}, created_at=now
                    )
                ).inserted_primary_key[0]
            ids.append(subscriber_id)
        conn.execute(
            db.memberships.insert(),
            [
                {
                    "list_id": list_id,
                    "subscriber_id": i,
                    "status": status,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in ids
            ],
        )
    return ids


def status_of(settings: Settings, list_id: int, subscriber_id: int) -> str | None:
    m = db.memberships.c
    with db.engine_for(settings).connect() as conn:
        return conn.execute(
            select(m.status).where(m.list_id == list_id, m.subscriber_id == subscriber_id)
        ).scalar()


def events_of(settings: Settings, subscriber_id: int) -> list[tuple[int | None, str, str | None, str]]:
    """(list id, status, previous status, source) of each logged change, oldest first."""
    e = db.events.c
    with db.engine_for(settings).connect() as conn:
        rows = conn.execute(
            select(e.list_id, e.status, e.previous_status, e.source)
            .where(e.subscriber_id == subscriber_id)
            .order_by(e.id)
        ).all()
    return [tuple(row) for row in rows]


def count_status(settings: Settings, list_id: int, status: str) -> int:
    m = db.memberships.c
    with db.engine_for(settings).connect() as conn:
        return conn.execute(select(func.count()).where(m.list_id == list_id, m.status == status)).scalar_one()


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
UNSTORABLE_COUNTS = {"unsubscribe": 1, "spamreport": 1, "bounce": 1, "open\\u0000": 1, "delivered": 1}
UNSTORABLE_BOUNCE_DETAIL = "SendGrid bounce event: 550 5.1.1 <\\u0000> unknown \\ud800 user"


def webhook_key() -> tuple[object, str]:
    """A P-256 signing key and its verification key as SendGrid shows it (base64 DER)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode("ascii")


def signed_headers(private: object, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers SendGrid signs an Event Webhook request with (ECDSA-SHA256 over timestamp + body)."""
    import base64
    import time

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from newsletter.providers.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER

    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: stamp,
    }
