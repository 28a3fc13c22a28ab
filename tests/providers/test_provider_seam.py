"""The provider seam: outside newsletter/providers/ nothing names a provider, every provider is
reached through the registry, and a database from before the seam has its provider's words renamed
to ours (the migration), its counts and facts kept."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.providers import registry
from testkit.projects import engine_of

from ..support import ROOT

PACKAGE = ROOT / "newsletter"


def test_no_module_outside_the_providers_names_a_provider() -> None:
    # A name as a word of its own or a prefix (sendgrid_api_key), not a protocol's (SMTPUTF8).
    names = re.compile(rf"\b({'|'.join(registry.names())})(?![a-z0-9])", re.IGNORECASE)
    # config asks the registry; cli/ names providers in its help texts.
    allowed = {PACKAGE / "config.py", PACKAGE / "cli.py"}
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if PACKAGE / "providers" not in path.parents and PACKAGE / "cli" not in path.parents and path not in allowed
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        # Migrations may name the old stored values (db.py's, quoted).
        if names.search(line) and not (path.name == "db.py" and re.search(r"\"sendgrid_sync\"|sg_event_id", line))
    ]
    assert offenders == []


def test_every_provider_has_its_settings_and_its_batch_limit() -> None:
    for name in registry.names():
        section = registry.sections()[registry.names().index(name)]
        assert set(section.model_fields) <= set(Settings.model_fields)
    settings = load_settings(smtp_host="smtp.example.com")
    assert registry.batch_limit(settings.delivery) == settings.batch_size
    assert registry.batch_limit(load_settings(provider="smtp", smtp_host="smtp.example.com").delivery) == 1


def test_loading_the_settings_imports_no_provider_client() -> None:
    code = "import sys, newsletter.config; print(sorted(m for m in ('httpx', 'aiosmtplib', 'newsletter.content.digest') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def _as_before_the_seam(engine: Engine, settings: Settings) -> None:
    """The database as the version before the seam left it: SendGrid's column name and words."""
    now = settings.clock()
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE webhook_events RENAME COLUMN event_id TO sg_event_id")
        conn.execute(text("INSERT INTO webhook_events (sg_event_id, received_at) VALUES ('sg-1', :now)"), {"now": now})
        list_id = conn.execute(db.lists.insert().values(name="daily", created_at=now)).inserted_primary_key[0]
        conn.execute(db.subscribers.insert().values(id=7, email="a@example.com", email_key="a@example.com", created_at=now))
        conn.execute(
            db.events.insert().values(
                subscriber_id=7, list_id=list_id, status=db.BOUNCED, previous_status=db.SUBSCRIBED,
                source="sendgrid_sync", detail="SendGrid bounces list", created_at=now,
            )
        )  # fmt: skip
        campaign_id = conn.execute(
            db.campaigns.insert().values(issue_date="2026-01-23", list_id=list_id, subject="s", html="h", text="t", created_at=now)
        ).inserted_primary_key[0]
        conn.execute(
            db.campaign_stats.insert(),
            [
                {"campaign_id": campaign_id, "event": event, "count": count}
                for event, count in (("open", 5), ("unsubscribe", 1), ("group_unsubscribe", 2), ("delivered", 9), ("machine", 3))
            ],
        )
        fact = {"campaign_id": campaign_id, "subscriber_id": 7, "machine_open": False, "url": "", "at": now}
        conn.execute(
            db.campaign_events.insert(),
            [
                {**fact, "kind": "unsubscribe"},
                {**fact, "kind": "group_unsubscribe"},
                {**fact, "kind": "open", "at": now - timedelta(hours=1)},
            ],
        )
        conn.execute(db.schema_version.update().values(version=9))  # before the tenth: neutral names


def test_the_migration_renames_the_first_providers_words_and_keeps_every_count(settings: Settings) -> None:
    engine = engine_of(settings)
    _as_before_the_seam(engine, settings)
    assert db.migrate(engine) == len(db.MIGRATIONS)
    with engine.connect() as conn:
        assert conn.execute(select(db.webhook_events.c.event_id)).scalars().all() == ["sg-1"]
        assert conn.execute(select(db.events.c.source)).scalars().all() == ["provider_sync"]
        stats = dict(conn.execute(select(db.campaign_stats.c.event, db.campaign_stats.c.count)).all())
        facts = conn.execute(select(db.campaign_events.c.kind).order_by(db.campaign_events.c.kind)).scalars().all()
        version = conn.execute(select(func.max(db.schema_version.c.version))).scalar_one()
    assert stats == {"opened": 5, "unsubscribed": 3, "delivered": 9, "other": 3}
    assert facts == ["opened", "unsubscribed"]  # the reader who left both ways left once
    assert version == len(db.MIGRATIONS)


def test_a_database_made_since_needs_no_renaming(settings: Settings) -> None:
    engine = engine_of(settings)
    with engine.begin() as conn:
        conn.execute(db.schema_version.update().values(version=9))  # before the tenth: neutral names
    assert db.migrate(engine) == len(db.MIGRATIONS)
