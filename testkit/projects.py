"""Throw-away projects for the tests and the benchmarks: a config file the CLI and the library
read alike, a list of members made fast, a signed Event Webhook request."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.addresses import email_key

API_KEY = "SG.test-key-never-printed"
LIST = "daily-papers"

# The tests' cache, not the product's (which makes an engine per command and disposes of it): a test
# reaches its database from many helpers, and migrating and opening a pool for each would be slow.
_engines: dict[str, Engine] = {}


def engine_of(settings: Settings) -> Engine:
    """The engine of the settings' database, made by db.connect on first use and kept for the rest
    of the test session, one per database URL."""
    url = settings.resolved_database_url
    if url not in _engines:
        _engines[url] = db.connect(settings.database)
    return _engines[url]


def dispose_engine(url: str) -> None:
    """Forget the engine of `url` and close its connections (before its database is dropped)."""
    engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


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


def configure(project: Path, **overrides: Any) -> Settings:
    """write_config for CLI subprocesses (unpaced: tests and benchmarks set their own pace), and the
    same settings for library calls."""
    return load_settings(write_config(project, **{"send_rate_limit": 1000.0, **overrides}))


def seed(settings: Settings, count: int, *, unsubscribed: tuple[int, ...] = (), list_name: str = LIST) -> list[str]:
    """A list with `count` members u1@example.com…; the numbers in `unsubscribed` have left it.
    Returns the subscribed addresses in subscriber order."""
    engine = engine_of(settings)
    now = settings.clock()
    with engine.begin() as conn:
        list_id = conn.execute(
            db.lists.insert().values(name=list_name, description="", created_at=now)
        ).inserted_primary_key[0]
        chunk = 50_000
        for start in range(1, count + 1, chunk):
            numbers = range(start, min(count, start + chunk - 1) + 1)
            conn.execute(
                db.subscribers.insert(),
                [
                    {"id": n, "email": f"u{n}@example.com", "email_key": f"u{n}@example.com",
                     "name": f"Reader {n}", "attributes": {}, "created_at": now}
                    for n in numbers
                ],
            )
            conn.execute(
                db.memberships.insert(),
                [
                    {"list_id": list_id, "subscriber_id": n,
                     "status": db.UNSUBSCRIBED if n in unsubscribed else db.SUBSCRIBED,
                     "created_at": now, "updated_at": now}
                    for n in numbers
                ],
            )
    return [f"u{n}@example.com" for n in range(1, count + 1) if n not in unsubscribed]


def add_list(settings: Settings, name: str, description: str = "") -> int:
    with engine_of(settings).begin() as conn:
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
    with engine_of(settings).begin() as conn:
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


def count_status(settings: Settings, list_id: int, status: str) -> int:
    m = db.memberships.c
    with engine_of(settings).connect() as conn:
        return conn.execute(select(func.count()).where(m.list_id == list_id, m.status == status)).scalar_one()


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
