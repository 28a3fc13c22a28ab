"""`newsletter lists create|list|show|delete`, on a real SQLite file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from newsletter import db
from newsletter.config import Settings
from newsletter.errors import SubscriberError
from newsletter.membership import set_status
from newsletter.subscribers import create_list, delete_list, get_list, list_summaries, subscribe
from testkit.projects import engine_of

from .support import run_newsletter


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return engine_of(settings)


@pytest.fixture
def cli(settings: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a `newsletter` command against the test's database (keyword arguments go to run_newsletter)."""
    return lambda *args, **options: run_newsletter(
        *args, env={"NEWSLETTER_DATABASE_URL": settings.resolved_database_url}, **options
    )


def count(engine: Engine, table) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.mark.slow
def test_create_show_and_list(engine: Engine, settings: Settings, cli) -> None:
    assert cli("lists", "create", "daily-papers", "--description", "Top papers of the day").returncode == 0
    assert cli("lists", "create", "weekly").returncode == 0
    with engine.begin() as conn:
        list_id = get_list(conn, "daily-papers").id
        for email in ("a@example.com", "b@example.com", "c@example.com"):
            subscribe(conn, list_id=list_id, email=email, now=settings.clock())
        set_status(
            conn, list_id=list_id, subscriber_id=3, status="bounced", source="webhook", now=settings.clock()
        )

    shown = cli("lists", "show", "daily-papers", "--json")
    listed = cli("lists", "list", "--json")
    table = cli("lists", "list")

    assert shown.returncode == listed.returncode == table.returncode == 0
    detail = json.loads(shown.stdout)
    assert (detail["name"], detail["description"], detail["total"]) == (
        "daily-papers",
        "Top papers of the day",
        3,
    )
    assert detail["counts"] == {"subscribed": 2, "unconfirmed": 0, "unsubscribed": 0, "bounced": 1, "complained": 0}
    assert [(item["name"], item["counts"]["subscribed"]) for item in json.loads(listed.stdout)] == [
        ("daily-papers", 2),
        ("weekly", 0),
    ]
    assert "daily-papers" in table.stdout and "weekly" in table.stdout


@pytest.mark.slow
def test_create_refuses_a_duplicate_unless_if_missing(engine: Engine, settings: Settings, cli) -> None:
    assert cli("lists", "create", "daily", "--description", "first").returncode == 0

    again = cli("lists", "create", "daily", "--description", "second")
    tolerant = cli("lists", "create", "daily", "--description", "second", "--if-missing")

    assert again.returncode == 1
    assert again.stderr.startswith("error: a list named 'daily' already exists")
    assert tolerant.returncode == 0
    with engine.begin() as conn:
        assert [s.list.description for s in list_summaries(conn)] == ["first"]


@pytest.mark.parametrize("name", ["", "daily papers", "-daily", "뉴스", "x" * 201])
def test_a_bad_list_name_is_refused(engine: Engine, settings: Settings, name: str) -> None:
    with engine.begin() as conn, pytest.raises(SubscriberError, match="bad list name"):
        create_list(conn, name, now=settings.clock())
    assert count(engine, db.lists) == 0


def test_delete_removes_memberships_but_keeps_subscribers_and_their_history(
    engine: Engine, settings: Settings, cli
) -> None:
    with engine.begin() as conn:
        daily = create_list(conn, "daily", now=settings.clock())
        weekly = create_list(conn, "weekly", now=settings.clock())
        subscribe(conn, list_id=daily.id, email="a@example.com", now=settings.clock())
        subscribe(conn, list_id=weekly.id, email="a@example.com", now=settings.clock())

    result = cli("lists", "delete", "daily", "--yes")

    assert result.returncode == 0 and "1 membership" in result.stdout
    with engine.begin() as conn:
        assert [s.list.name for s in list_summaries(conn)] == ["weekly"]
        assert conn.execute(select(db.memberships.c.list_id)).scalars().all() == [weekly.id]
        assert conn.execute(select(db.subscribers.c.email)).scalars().all() == ["a@example.com"]
        # The event log keeps the subscribe to the deleted list, no longer pointing at it.
        assert conn.execute(select(db.events.c.list_id).order_by(db.events.c.id)).scalars().all() == [
            None,
            weekly.id,
        ]


def test_delete_asks_first(engine: Engine, settings: Settings, cli) -> None:
    with engine.begin() as conn:
        create_list(conn, "daily", now=settings.clock())

    result = cli("lists", "delete", "daily", input="n\n")

    assert result.returncode == 1 and "Delete list 'daily'" in result.stdout
    assert count(engine, db.lists) == 1


def test_a_list_with_campaigns_cannot_be_deleted(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        daily = create_list(conn, "daily", now=settings.clock())
        conn.execute(
            db.campaigns.insert().values(
                issue_date="2026-01-23",
                list_id=daily.id,
                subject="s",
                html="h",
                text="t",
                created_at=datetime(2026, 1, 23, tzinfo=timezone.utc),
            )
        )

    with engine.begin() as conn, pytest.raises(SubscriberError, match="1 campaign"):
        delete_list(conn, "daily")
    assert count(engine, db.lists) == 1


@pytest.mark.slow
def test_showing_or_deleting_a_missing_list_names_it(cli) -> None:
    for command in (("lists", "show", "nope"), ("lists", "delete", "nope", "--yes")):
        result = cli(*command)
        assert result.returncode == 1
        assert result.stderr.startswith("error: no list named 'nope'")
