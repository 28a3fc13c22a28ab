"""Subscribers: addresses, add/unsubscribe/remove (GDPR erasure), listing and counting, the members
the sender selects; through the library and `newsletter subscribers …`. Real SQLite files."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.errors import SubscriberError
from newsletter.membership import members_query, set_status
from newsletter.subscribers import (
    Member,
    create_list,
    delete_list,
    email_key,
    erase_subscriber,
    find_subscriber,
    iter_members,
    iter_memberships,
    normalise_email,
    subscribe,
)
from testkit.projects import dispose_engine, engine_of

from .support import ROOT, run_newsletter
from .web import version_2_database


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = engine_of(settings)
    with engine.begin() as conn:
        create_list(conn, "daily", now=settings.clock())
        create_list(conn, "weekly", now=settings.clock())
    return engine


@pytest.fixture
def cli(settings: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a `newsletter` command against the test's database, `daily` its default list (keyword
    arguments go to run_newsletter)."""
    env = {"NEWSLETTER_DATABASE_URL": settings.resolved_database_url, "NEWSLETTER_DEFAULT_LIST": "daily"}
    return lambda *args, **options: run_newsletter(*args, env=env, **options)


def rows(engine: Engine, table, *columns) -> list[tuple]:
    with engine.begin() as conn:
        query = select(*(columns or [table])).select_from(table)
        return [tuple(row) for row in conn.execute(query.order_by(*table.primary_key.columns))]


# -- addresses --------------------------------------------------------------------------------------


def test_addresses_are_trimmed_with_the_domain_lower_cased() -> None:
    assert normalise_email("  Kim.MinJun@Example.COM \t") == "Kim.MinJun@example.com"
    assert normalise_email("jiho@EXAMPLE.org") == "jiho@example.org"
    # Same person whatever case they typed: the key folds the local part's ASCII letters too.
    assert email_key(normalise_email("Kim@Example.com")) == email_key(normalise_email("kim@example.COM"))


def test_addresses_that_only_unicode_case_folding_merges_are_different_subscribers(engine: Engine, settings: Settings) -> None:
    typed = [
        "straße@example.com", "strasse@example.com",  # folding makes ß "ss"
        "ſam@example.com", "sam@example.com", "Sam@example.com",  # and the long s an s
        "kim@bücher.de", "KIM@xn--bcher-kva.de",  # one domain, in Unicode and in IDNA
    ]  # fmt: skip
    with engine.begin() as conn:
        ids = [subscribe(conn, list_id=1, email=email, now=settings.clock()).subscriber.id for email in typed]
    assert len(set(ids[:2])) == 2 and len(set(ids[2:5])) == 2 and ids[3] == ids[4] and ids[5] == ids[6]
    assert rows(engine, db.subscribers, db.subscribers.c.email_key) == [
        ("straße@example.com",), ("strasse@example.com",), ("ſam@example.com",), ("sam@example.com",),
        ("kim@xn--bcher-kva.de",),
    ]  # fmt: skip


@pytest.mark.slow
def test_the_upgrade_keys_addresses_exactly_and_reports_those_folding_may_have_merged(settings: Settings) -> None:
    engine = engine_of(settings)
    with engine.begin() as conn:
        for email in ("Straße@example.com", "Kim@example.com", "ana@bücher.de"):
            values = {"email": email, "email_key": email.casefold(), "attributes": {}, "created_at": settings.clock()}
            conn.execute(db.subscribers.insert().values(values))
        # As the database was before: schema 7, keys case-folded, no sign-up queue.
        conn.execute(db.schema_version.update().values(version=7))
        db.signup_requests.drop(conn)
    dispose_engine(settings.resolved_database_url)
    result = run_newsletter("lists", "list", env={"NEWSLETTER_DATABASE_URL": settings.resolved_database_url})
    assert result.returncode == 0, result.stderr
    assert rows(engine_of(settings), db.subscribers, db.subscribers.c.email_key) == [
        ("straße@example.com",), ("kim@example.com",), ("ana@xn--bcher-kva.de",)
    ]  # fmt: skip
    [report] = [line for line in result.stderr.splitlines() if "subscriber" in line]
    assert report.startswith("subscriber 1: ") and "@" not in report


@pytest.mark.parametrize(
    "raw", ["", "kim", "kim@", "@example.com", "kim@@example.com", "kim@example..com", "kim@localhost"]
)
def test_invalid_addresses_name_the_address_and_the_reason(raw: str) -> None:
    with pytest.raises(SubscriberError, match=f"invalid email address '{raw}': "):
        normalise_email(raw)


# -- subscribing, unsubscribing ---------------------------------------------------------------------


def test_subscribe_adds_once_whatever_the_case(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        first = subscribe(
            conn,
            list_id=1,
            email="Kim@Example.com",
            name="Kim",
            attributes={"team": "ml"},
            now=settings.clock(),
        )
        second = subscribe(conn, list_id=1, email="kim@example.com", now=settings.clock())
        other_list = subscribe(conn, list_id=2, email="KIM@example.com", now=settings.clock())

    assert (first.outcome, second.outcome, other_list.outcome) == ("added", "unchanged", "added")
    assert first.subscriber.id == second.subscriber.id == other_list.subscriber.id
    assert rows(
        engine, db.subscribers, db.subscribers.c.email, db.subscribers.c.name, db.subscribers.c.attributes
    ) == [("Kim@example.com", "Kim", {"team": "ml"})]
    assert rows(engine, db.events, db.events.c.list_id, db.events.c.status, db.events.c.source) == [
        (1, "subscribed", "command"),
        (2, "subscribed", "command"),
    ]


def test_someone_who_said_no_is_not_resubscribed_without_asking(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        added = subscribe(conn, list_id=1, email="lee@example.com", now=settings.clock())
        set_status(
            conn,
            list_id=1,
            subscriber_id=added.subscriber.id,
            status="complained",
            source="webhook",
            now=settings.clock(),
        )
        skipped = subscribe(conn, list_id=1, email="lee@example.com", now=settings.clock())
        assert (skipped.outcome, skipped.previous) == ("skipped", "complained")
        back = subscribe(conn, list_id=1, email="lee@example.com", resubscribe=True, now=settings.clock())

    assert (back.outcome, back.previous) == ("resubscribed", "complained")
    assert rows(engine, db.events, db.events.c.previous_status, db.events.c.status) == [
        (None, "subscribed"),
        ("subscribed", "complained"),
        ("complained", "subscribed"),
    ]


def test_set_status_is_idempotent(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        sub = subscribe(conn, list_id=1, email="a@example.com", now=settings.clock()).subscriber
        changes = [
            set_status(
                conn,
                list_id=1,
                subscriber_id=sub.id,
                status="unsubscribed",
                source="one_click",
                now=settings.clock(),
            )
            for _ in range(3)
        ]
    assert changes == [True, False, False]
    assert len(rows(engine, db.events)) == 2


@pytest.mark.slow
def test_the_add_and_unsubscribe_commands(engine: Engine, cli) -> None:
    added = cli("subscribers", "add", " Park@Example.org ", "--name", "박지호", "--attr", "team=speech")
    again = cli("subscribers", "unsubscribe", "park@example.org")
    twice = cli("subscribers", "unsubscribe", "park@example.org")
    readd = cli("subscribers", "add", "park@example.org")
    bad_attr = cli("subscribers", "add", "x@example.com", "--attr", "no-equals-sign")

    assert added.returncode == again.returncode == twice.returncode == readd.returncode == 0
    assert "Subscribed Park@example.org to daily" in added.stdout
    assert "Already unsubscribed" in twice.stdout
    assert "is unsubscribed on daily: not re-subscribed" in " ".join(readd.stdout.split())
    assert bad_attr.returncode == 1 and bad_attr.stderr.startswith("error: ") and "KEY=VALUE" in bad_attr.stderr
    with engine.begin() as conn:
        subscriber = find_subscriber(conn, "PARK@example.org")
    assert (subscriber.name, subscriber.attributes) == ("박지호", {"team": "speech"})
    assert rows(engine, db.memberships, db.memberships.c.status) == [("unsubscribed",)]


# -- erasure ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_remove_erases_the_person_and_anonymises_their_deliveries(
    engine: Engine, settings: Settings, cli
) -> None:
    now = datetime(2026, 1, 23, tzinfo=timezone.utc)
    with engine.begin() as conn:
        gone = subscribe(conn, list_id=1, email="gone@example.com", name="Gone", now=now).subscriber
        subscribe(conn, list_id=2, email="gone@example.com", now=now)
        set_status(conn, list_id=2, subscriber_id=gone.id, status="unsubscribed", source="one_click", now=now)
        kept = subscribe(conn, list_id=1, email="kept@example.com", now=now).subscriber
        campaign = conn.execute(
            db.campaigns.insert().values(
                issue_date="2026-01-23", list_id=1, subject="s", html="h", text="t", created_at=now
            )
        ).inserted_primary_key[0]
        for who in (gone, kept):
            conn.execute(
                db.deliveries.insert().values(
                    campaign_id=campaign, subscriber_id=who.id, email=who.email, state="sent", updated_at=now
                )
            )

    result = cli("subscribers", "remove", "GONE@example.com", "--yes")

    assert result.returncode == 0, result.stderr
    assert "2 membership(s), 3 event(s)" in result.stdout
    assert rows(engine, db.subscribers, db.subscribers.c.email) == [("kept@example.com",)]
    assert rows(engine, db.memberships, db.memberships.c.subscriber_id) == [(kept.id,)]
    # Only the kept subscriber's event and one anonymous record that an erasure happened remain.
    assert rows(engine, db.events, db.events.c.subscriber_id, db.events.c.status, db.events.c.detail) == [
        (kept.id, "subscribed", ""),
        (None, "erased", ""),
    ]
    # The send still counts the delivery, but no longer knows whose it was.
    assert rows(engine, db.deliveries, db.deliveries.c.subscriber_id, db.deliveries.c.email) == [
        (gone.id, ""),
        (kept.id, "kept@example.com"),
    ]
    with engine.begin() as conn, pytest.raises(SubscriberError, match="no subscriber with the address"):
        erase_subscriber(conn, "gone@example.com", now=now)


@pytest.mark.slow
def test_an_erased_address_is_nowhere_in_the_database(engine: Engine, settings: Settings, cli) -> None:
    now = datetime(2026, 1, 23, tzinfo=timezone.utc)
    with engine.begin() as conn:
        gone = subscribe(conn, list_id=1, email="Gone.Reader@example.com", name="Gone", now=now).subscriber
        campaign = conn.execute(
            db.campaigns.insert().values(issue_date="2026-01-23", list_id=1, subject="s", html="h", text="t", created_at=now)
        ).inserted_primary_key[0]
        batch = conn.execute(
            db.batches.insert().values(
                campaign_id=campaign, state="failed", size=1, error="550 5.1.1 <Gone.Reader@example.com>: no such user"
            )
        ).inserted_primary_key[0]
        conn.execute(
            db.deliveries.insert().values(
                campaign_id=campaign, subscriber_id=gone.id, email=gone.email, batch_id=batch, state="failed",
                error="refused: gone.reader@example.com", updated_at=now,
            )
        )  # fmt: skip
        # Sign-up mails under their keys, one with the address as typed in another case; a sign-up
        # still queued.
        for key, email in ((f"confirm:{gone.id}:2026-01-23:1", "gone.reader@example.com"), (f"welcome:1:{gone.id}", gone.email)):
            conn.execute(
                db.messages.insert().values(key=key, email=email, subject="s", state="sent", created_at=now, updated_at=now)
            )
        conn.execute(
            db.signup_requests.insert().values(list_id=1, email="GONE.READER@example.com", name="Gone", frequency="daily", received_at=now)
        )
        subscribe(conn, list_id=1, email="kept@example.com", now=now)

    assert cli("subscribers", "remove", "gone.reader@example.com", "--yes").returncode == 0

    with engine.connect() as conn:
        dump = "\n".join(
            repr(conn.execute(text(f'SELECT * FROM "{table}"')).all()) for table in inspect(conn).get_table_names()
        ).casefold()
    assert "gone.reader" not in dump and "kept@example.com" in dump


def test_an_address_with_only_traces_and_a_refusal_on_the_wire_are_erased_too(engine: Engine, settings: Settings) -> None:
    now = datetime(2026, 1, 23, tzinfo=timezone.utc)
    with engine.begin() as conn:
        # A sign-up the server has not taken yet: no subscriber, only the queued row.
        conn.execute(
            db.signup_requests.insert().values(list_id=1, email="Queued@example.com", name="Q", frequency="daily", received_at=now)
        )
        ann = subscribe(conn, list_id=1, email="Ann@bücher.de", now=now).subscriber
        campaign = conn.execute(
            db.campaigns.insert().values(issue_date="2026-01-23", list_id=1, subject="s", html="h", text="t", created_at=now)
        ).inserted_primary_key[0]
        # An SMTP server's refusal quotes the address as it went out: the domain in ASCII.
        conn.execute(db.batches.insert().values(campaign_id=campaign, state="failed", size=1, error="550 <Ann@xn--bcher-kva.de>: no"))
    with engine.begin() as conn:
        assert erase_subscriber(conn, "queued@example.com", now=now).memberships == 0
        assert erase_subscriber(conn, ann.email, now=now).memberships == 1
    with engine.connect() as conn:
        dump = "\n".join(
            repr(conn.execute(text(f'SELECT * FROM "{table}"')).all()) for table in inspect(conn).get_table_names()
        ).casefold()
    assert "queued@" not in dump and "ann@" not in dump and "bcher" not in dump


@pytest.mark.slow
def test_remove_asks_first(engine: Engine, settings: Settings, cli) -> None:
    with engine.begin() as conn:
        subscribe(conn, list_id=1, email="stay@example.com", now=settings.clock())

    result = cli("subscribers", "remove", "stay@example.com", input="n\n")

    assert result.returncode == 1 and "cannot be undone" in result.stdout
    assert rows(engine, db.subscribers, db.subscribers.c.email) == [("stay@example.com",)]


# -- listing, counting, showing ---------------------------------------------------------------------


@pytest.fixture
def population(engine: Engine, settings: Settings) -> Engine:
    """daily: a, b (unsubscribed), c; weekly: a (bounced), d; e on no list."""
    with engine.begin() as conn:
        ids = {}
        for name, list_id in (("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 2)):
            ids[name] = subscribe(
                conn, list_id=list_id, email=f"{name}@example.com", name=name.upper(), now=settings.clock()
            ).subscriber.id
        set_status(
            conn,
            list_id=1,
            subscriber_id=ids["b"],
            status="unsubscribed",
            source="one_click",
            now=settings.clock(),
        )
        set_status(
            conn, list_id=2, subscriber_id=ids["a"], status="bounced", source="webhook", now=settings.clock()
        )
        conn.execute(
            db.subscribers.insert().values(
                email="e@example.com", email_key="e@example.com", attributes={}, created_at=settings.clock()
            )
        )
    return engine


@pytest.mark.slow
def test_list_and_count_filter_by_list_and_status(population: Engine, cli) -> None:
    def listed(*args: str) -> list[tuple]:
        result = cli("subscribers", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [(row["email"][0], row["list_name"], row["status"]) for row in json.loads(result.stdout)]

    def counted(*args: str) -> int:
        result = cli("subscribers", "count", *args)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert listed() == [
        ("a", "daily", "subscribed"),
        ("a", "weekly", "bounced"),
        ("b", "daily", "unsubscribed"),
        ("c", "daily", "subscribed"),
        ("d", "weekly", "subscribed"),
        ("e", None, None),
    ]
    assert listed("--list", "daily", "--status", "subscribed") == [
        ("a", "daily", "subscribed"),
        ("c", "daily", "subscribed"),
    ]
    assert listed("--status", "bounced") == [("a", "weekly", "bounced")]
    assert listed("--limit", "2") == [("a", "daily", "subscribed"), ("a", "weekly", "bounced")]
    assert (counted(), counted("--list", "daily"), counted("--list", "daily", "--status", "subscribed")) == (
        5,
        3,
        2,
    )
    assert (counted("--status", "subscribed"), counted("--status", "complained")) == (3, 0)
    bad = cli("subscribers", "count", "--status", "gone")
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown status 'gone'")


@pytest.mark.slow
def test_the_table_listing_says_when_it_is_cut(population: Engine, cli) -> None:
    result = cli("subscribers", "list", "--limit", "3")

    assert result.returncode == 0
    assert "a@example.com" in result.stdout and "d@example.com" not in result.stdout
    assert "Showing the first 3 of 5 subscribers" in result.stderr


def test_listing_pages_through_more_rows_than_a_page(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        conn.execute(
            db.subscribers.insert(),
            [
                dict(
                    email=f"r{i}@example.com",
                    email_key=f"r{i}@example.com",
                    attributes={},
                    created_at=settings.clock(),
                )
                for i in range(12_000)
            ],
        )
        conn.execute(
            db.memberships.insert(),
            [
                dict(
                    list_id=list_id,
                    subscriber_id=i,
                    status="subscribed",
                    created_at=settings.clock(),
                    updated_at=settings.clock(),
                )
                for i in range(1, 12_001)
                for list_id in (1, 2)
                if list_id == 1 or i % 2
            ],
        )

    everything = list(iter_memberships(engine))
    members = list(iter_members(engine, 1))

    assert len(everything) == 18_000
    assert len({(row.subscriber_id, row.list_name) for row in everything}) == 18_000
    assert [row.subscriber_id for row in everything] == sorted(row.subscriber_id for row in everything)
    assert len(members) == 12_000 and members[0] == Member(1, "r0@example.com", None)


def test_members_are_the_subscribed_ones_in_id_order(population: Engine) -> None:
    with population.begin() as conn:
        selected = conn.execute(members_query(1)).all()
    assert [tuple(row) for row in selected] == [(1, "a@example.com", "A"), (3, "c@example.com", "C")]
    assert list(iter_members(population, 2, "bounced")) == [Member(1, "a@example.com", "A")]


@pytest.mark.slow
def test_show_tells_the_whole_story(population: Engine, cli) -> None:
    as_json = cli("subscribers", "show", "A@example.com", "--json")
    as_table = cli("subscribers", "show", "a@example.com")
    missing = cli("subscribers", "show", "nobody@example.com")

    assert as_json.returncode == as_table.returncode == 0
    details = json.loads(as_json.stdout)
    assert details["subscriber"]["email"] == "a@example.com"
    assert [(m["list_name"], m["status"]) for m in details["memberships"]] == [
        ("daily", "subscribed"),
        ("weekly", "bounced"),
    ]
    assert [(e["list_name"], e["previous_status"], e["status"], e["source"]) for e in details["events"]] == [
        ("daily", None, "subscribed", "command"),
        ("weekly", None, "subscribed", "command"),
        ("weekly", "subscribed", "bounced", "webhook"),
    ]
    assert "bounced" in as_table.stdout and "webhook" in as_table.stdout
    assert missing.returncode == 1 and missing.stderr.startswith("error: no subscriber with the address 'nobody@example.com'")


# -- ids that leave the database are never handed out again -----------------------------------------


def test_erasing_then_adding_reuses_no_id(engine: Engine, settings: Settings) -> None:
    """An erased reader's id, still in their old links and in SendGrid's late events, must never
    name the next person (SQLite without AUTOINCREMENT reused the highest id)."""
    now = settings.clock()
    with engine.begin() as conn:
        daily = conn.execute(select(db.lists.c.id).where(db.lists.c.name == "daily")).scalar_one()
        subscribe(conn, list_id=daily, email="first@example.com", now=now)
        erased = subscribe(conn, list_id=daily, email="erased@example.com", now=now).subscriber.id
        erase_subscriber(conn, "erased@example.com", now=now)
        added = subscribe(conn, list_id=daily, email="next@example.com", now=now).subscriber.id
        gone = create_list(conn, "short-lived", now=now).id
        delete_list(conn, "short-lived")
        created = create_list(conn, "next-list", now=now).id
    assert added > erased and created > gone


_VERSION_2_ROWS = """
    INSERT INTO lists VALUES (1, 'daily', '', '2026-01-01 00:00:00'), (2, 'weekly', 'w', '2026-01-01 00:00:00');
    INSERT INTO subscribers VALUES
        (1, 'a@example.com', 'a@example.com', 'A', '{}', '2026-01-02 00:00:00'),
        (2, 'B@example.com', 'b@example.com', NULL, '{"team": "x"}', '2026-01-02 00:00:00'),
        (3, 'c@example.com', 'c@example.com', NULL, '{}', '2026-01-02 00:00:00');
    INSERT INTO memberships VALUES
        (1, 1, 'subscribed', '2026-01-02 00:00:00', '2026-01-02 00:00:00'),
        (1, 2, 'unsubscribed', '2026-01-02 00:00:00', '2026-01-03 00:00:00'),
        (2, 3, 'bounced', '2026-01-02 00:00:00', '2026-01-03 00:00:00');
    INSERT INTO events VALUES
        (1, 1, 1, 'subscribed', NULL, 'command', '', '2026-01-02 00:00:00'),
        (2, 2, 1, 'unsubscribed', 'subscribed', 'one_click', '', '2026-01-03 00:00:00'),
        (3, NULL, NULL, 'erased', NULL, 'command', '', '2026-01-03 00:00:00');
    INSERT INTO campaigns VALUES (1, '2026-01-23', 1, 's', 'h', 't', '2026-01-23 00:00:00', NULL, NULL, NULL);
    INSERT INTO campaign_stats VALUES (1, 'delivered', 2);
    INSERT INTO batches VALUES (1, 1, 'sent', 3, 'msg-1', NULL, NULL, NULL);
    INSERT INTO deliveries VALUES
        (1, 1, 1, 'a@example.com', 1, 'sent', 'msg-1', NULL, '2026-01-23 00:00:00'),
        (2, 1, 2, 'B@example.com', 1, 'sent', 'msg-1', NULL, '2026-01-23 00:00:00'),
        (3, 1, 9, '', 1, 'sent', 'msg-1', NULL, '2026-01-23 00:00:00');  -- subscriber 9 was erased since
"""


# The tables version 2 had (every later one is new to such a database).
_VERSION_2_TABLES = re.findall(r"CREATE TABLE (\w+)", (ROOT / "tests" / "schema_v2.sql").read_text())


# The columns version 2 had (later migrations add some, with their defaults).
_VERSION_2_COLUMNS = {
    table: re.findall(r"^\s+([a-z_]+) ", body, re.MULTILINE)
    for table, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", (ROOT / "tests" / "schema_v2.sql").read_text(), re.DOTALL)
}


# Columns a later migration renamed (the provider-neutral names), as (table, old) -> new.
_RENAMED = {("webhook_events", "sg_event_id"): "event_id"}
# Columns a later migration moved to another table: a campaign's send claim is its lease now
# (tests/store/test_lease.py follows a claim there).
_MOVED = {("campaigns", "claimed_by"), ("campaigns", "claimed_at")}


def _dump(path: Path, *, migrated: bool = False) -> dict[str, list[tuple]]:
    """Every row of the tables version 2 had, in the columns it had (by their names now, once
    `migrated`), read with sqlite3 alone."""

    def column(table: str, name: str) -> str:
        return _RENAMED.get((table, name), name) if migrated else name

    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            name: conn.execute(
                f"SELECT {', '.join(column(name, c) for c in _VERSION_2_COLUMNS[name] if (name, c) not in _MOVED)} "
                f"FROM {name} ORDER BY 1, 2"
            ).fetchall()
            for name in _VERSION_2_TABLES
            if name != "schema_version"
        }


def test_a_version_2_database_is_migrated_keeping_every_row_and_reference(tmp_path: Path) -> None:
    url = version_2_database(tmp_path / "old.db", _VERSION_2_ROWS)
    before = _dump(tmp_path / "old.db")
    settings = load_settings(database_url=url, secret_key="test-signing-key", config_dir=tmp_path)
    engine = engine_of(settings)

    with engine.connect() as conn:
        assert conn.execute(select(db.schema_version.c.version)).scalars().all() == [len(db.MIGRATIONS)]
        made_as = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        references = {
            table: sorted((row[2], row[6]) for row in conn.exec_driver_sql(f"PRAGMA foreign_key_list({table})"))
            for table in ("memberships", "events", "campaigns", "deliveries")
        }
        legacy = conn.execute(select(db.legacy_links.c.max_subscriber_id)).scalars().all()
    # Every row is there (a DROP TABLE with foreign keys on would have emptied memberships and events).
    assert _dump(tmp_path / "old.db", migrated=True) == before
    assert all("AUTOINCREMENT" in made_as[name] for name in ("lists", "subscribers", "campaigns"))
    assert references == {
        "memberships": [("lists", "CASCADE"), ("subscribers", "CASCADE")],
        "events": [("lists", "SET NULL"), ("subscribers", "CASCADE")],
        "campaigns": [("lists", "NO ACTION")],
        "deliveries": [("batches", "NO ACTION"), ("campaigns", "CASCADE")],
    }
    # Links signed the old way are accepted for subscribers 1-3 only (tokens.py).
    assert legacy == [3]

    now = settings.clock()
    with engine.begin() as conn:
        # The new ids go past every id ever issued: the erased reader 9 is still in deliveries.
        assert subscribe(conn, list_id=1, email="new@example.com", now=now).subscriber.id == 10
        assert create_list(conn, "new-list", now=now).id == 3
        erase_subscriber(conn, "c@example.com", now=now)
        assert subscribe(conn, list_id=1, email="newer@example.com", now=now).subscriber.id == 11
    assert db.migrate(engine) == len(db.MIGRATIONS)  # and migrating again changes nothing


def test_purging_unconfirmed_sign_ups_keeps_the_recent_ones_and_anyone_with_another_list(settings: Settings) -> None:
    from datetime import timedelta

    from newsletter.subscribers import purge_unconfirmed

    engine = engine_of(settings)
    now = settings.clock()
    m = db.memberships.c
    with engine.begin() as conn:
        daily = create_list(conn, "daily", now=now).id
        weekly = create_list(conn, "weekly", now=now).id
        kept = subscribe(conn, list_id=weekly, email="kept@example.com", now=now).subscriber.id
        both, alone, recent = (
            conn.execute(db.subscribers.insert().values(email=address, email_key=address, attributes={}, created_at=now))
            .inserted_primary_key[0]
            for address in ("both@example.com", "alone@example.com", "recent@example.com")
        )  # fmt: skip
        for subscriber_id, days in ((kept, 40), (both, 40), (alone, 40), (recent, 5)):
            conn.execute(db.memberships.insert().values(
                list_id=daily, subscriber_id=subscriber_id, status=db.UNCONFIRMED,
                created_at=now - timedelta(days=days), updated_at=now - timedelta(days=days)))  # fmt: skip
        conn.execute(db.memberships.insert().values(
            list_id=weekly, subscriber_id=both, status=db.UNSUBSCRIBED, created_at=now, updated_at=now))  # fmt: skip

    with engine.begin() as conn:
        purged = purge_unconfirmed(conn, now=now)
    with engine.begin() as conn:
        again = purge_unconfirmed(conn, now=now)

    assert (purged.memberships, purged.subscribers, again.memberships) == (3, 1, 0)
    with engine.connect() as conn:
        people = set(conn.execute(select(db.subscribers.c.email)).scalars())
        daily_members = set(conn.execute(select(m.subscriber_id).where(m.list_id == daily)).scalars())
    # Whoever is on another list keeps their record (even one who left it: that "no" is kept).
    assert people == {"kept@example.com", "both@example.com", "recent@example.com"}
    assert daily_members == {recent}
