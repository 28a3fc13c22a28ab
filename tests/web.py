"""Helpers for the tests (and the benchmark) of the web server: a project config, seeded
subscribers, and the real `newsletter serve` process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings
from newsletter.subscribers import email_key

from .support import free_port, running


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
def serving(config: Path) -> Iterator[str]:
    """`python -m newsletter serve` with this config; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)]
    with running(command, port):
        yield f"http://127.0.0.1:{port}"


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
