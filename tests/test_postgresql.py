"""The same library and CLI on a real PostgreSQL server: schema, lists, CSV import/export, status
changes and their event log, erasure, a send to the fake SendGrid (an unsubscribe mid-way, a resume),
`status`, the webhook's idempotency and suppressions.

The module starts its own throw-away cluster (initdb in a temporary folder, on 127.0.0.1 and a free
port) and gives every test a fresh database in it. initdb and postgres refuse to run as root, so as
root they run as the `postgres` OS user. Missing server binaries or psycopg fail the tests: `make
test` installs them, and a skip would let "runs on PostgreSQL" go unchecked.
"""

from __future__ import annotations

import csv
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection, Engine

from newsletter import db, send
from newsletter.config import Settings, load_settings
from newsletter.errors import SendError
from newsletter.membership import compare_and_set, set_status
from newsletter.providers.sendgrid.events import events_from, parse_events
from newsletter.subscriber_csv import export_csv, import_csv
from newsletter.subscribers import (
    create_list,
    erase_subscriber,
    find_subscriber,
    get_list,
    subscribe,
    unsubscribe,
)
from newsletter.suppressions import suppress
from newsletter.webhook import apply_events
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, configure, dispose_engine, engine_of, write_config
from testkit.servers import free_port, serving, wait_for_port
from newsletter.wiring import send_parts

from .support import run_newsletter, start_newsletter
from .web import UNSTORABLE_BOUNCE_DETAIL, UNSTORABLE_COUNTS, UNSTORABLE_EVENT_IDS, batch_with_unstorable_text

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

LIST = "daily-papers"
DAY = date(2026, 1, 23)
SECRET = "test-signing-key"
INSTALL_HINT = "`make test` installs it (Debian's postgresql and the psycopg[binary] test extra)"


# -- the server -----------------------------------------------------------------------------------


def _bin_dir() -> Path:
    # Whatever major version Debian ships: the newest one installed.
    found = [p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.access(Path(p) / "initdb", os.X_OK)]
    found.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    if not found:
        pytest.fail(f"no PostgreSQL server under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
    return Path(found[-1])


def _as_server_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; any other user runs them as itself.
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1; yields the URL of its `postgres` superuser
    (no database). Stopped and deleted afterwards."""
    try:
        import psycopg  # noqa: F401  (the driver the URLs name)
    except ImportError:
        pytest.fail(f"psycopg 3 is not installed: {INSTALL_HINT}")
    bin_dir = _bin_dir()
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(f"there is no `postgres` OS user to run the server as: {INSTALL_HINT}")
    # Not pytest's tmp_path: its parents are private to root, and the server user must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        for path in (root, data):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    log = root / "server.log"
    initdb = subprocess.run(
        _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
    # TCP on 127.0.0.1 only; the socket goes in the data folder, not /var/run/postgresql; fsync off
    # because the cluster is thrown away (it only makes the tests slower).
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off"
    started = subprocess.run(
        _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        if started.returncode != 0:
            pytest.fail(f"postgres did not start:\n{started.stderr}\n{log.read_text(errors='replace')[-3000:]}")
        wait_for_port(port)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False, capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _admin(server: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]  (our own literal SQL)


@pytest.fixture
def database_url(server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(server, f"CREATE DATABASE {name}")
    url = f"{server}/{name}"
    yield url
    dispose_engine(url)
    _admin(server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def pg_settings(project: Path, database_url: str) -> Settings:
    return load_settings(database_url=database_url, secret_key=SECRET, config_dir=project)


@pytest.fixture
def engine(pg_settings: Settings) -> Engine:
    engine = engine_of(pg_settings)
    with engine.begin() as conn:
        create_list(conn, LIST, now=pg_settings.clock())
    return engine


def cli(project: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m newsletter ARGS` on this test's PostgreSQL database."""
    return run_newsletter(*args, cwd=project, env={"NEWSLETTER_DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": SECRET})


# -- helpers ---------------------------------------------------------------------------------------


def rows(engine: Engine, table: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def members(engine: Engine, list_name: str = LIST) -> dict[str, str]:
    """email → status for every member of the list."""
    s, m = db.subscribers.c, db.memberships.c
    with engine.connect() as conn:
        list_id = get_list(conn, list_name).id
        found = conn.execute(
            select(s.email, m.status).join(db.memberships, m.subscriber_id == s.id).where(m.list_id == list_id)
        ).all()
    return {row.email: row.status for row in found}


def events_of(engine: Engine, subscriber_id: int) -> list[tuple[str | None, str, str]]:
    e = db.events.c
    with engine.connect() as conn:
        return [
            tuple(r)  # type: ignore[misc]
            for r in conn.execute(
                select(e.previous_status, e.status, e.source).where(e.subscriber_id == subscriber_id).order_by(e.id)
            )
        ]


def write_csv(path: Path, valid: int) -> Path:
    """`valid` good rows (r1@… with a name and an attribute), then 5 invalid rows and 4 duplicates
    (one differing only in case)."""
    lines = ["email,name,team"]
    lines += [f"r{n}@example.com,Reader {n},team-{n % 3}" for n in range(1, valid + 1)]
    lines += ["not-an-address,Bad", ",No address", "two@@example.com,Bad", "x@,Bad", "@example.com,Bad"]
    lines += ["r1@example.com,Again", "R2@EXAMPLE.COM,Shouting", "r3@example.com,Again", "r3@example.com,Thrice"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- the tests -------------------------------------------------------------------------------------


def test_the_schema_is_created_once_and_migrating_again_changes_nothing(pg_settings: Settings) -> None:
    engine = db._create_engine(pg_settings.resolved_database_url, pg_settings.database_timeout)
    try:
        assert db.migrate(engine) == len(db.MIGRATIONS)
        assert db.migrate(engine) == len(db.MIGRATIONS)
        with engine.connect() as conn:
            assert conn.execute(select(db.schema_version.c.version)).scalars().all() == [len(db.MIGRATIONS)]
            inspector = inspect(conn)
            assert set(db.metadata.tables) <= set(inspector.get_table_names())
            indexes = {i["name"] for i in inspector.get_indexes("deliveries")}
            assert "ix_deliveries_campaign_state_id" in indexes and "ix_deliveries_campaign_state" not in indexes
    finally:
        engine.dispose()


def test_processes_migrating_a_new_database_at_once_create_it_once(project: Path, database_url: str) -> None:
    # Every command migrates on start: two first commands at the same moment must not both create it.
    env = {"NEWSLETTER_DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": SECRET}
    processes = [start_newsletter("lists", "create", name, cwd=project, env=env) for name in ("first", "second")]
    outcomes = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    shown = cli(project, database_url, "lists", "list")
    assert shown.returncode == 0, shown.stderr
    assert "first" in shown.stdout and "second" in shown.stdout
    again = cli(project, database_url, "lists", "create", "first", "--if-missing")
    assert again.returncode == 0, again.stderr
    duplicate = cli(project, database_url, "lists", "create", "first")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr


def test_import_twice_then_export_round_trips(engine: Engine, pg_settings: Settings, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "people.csv", 300)
    first = import_csv(engine, source, list_name=LIST, clock=pg_settings.clock, rejects=tmp_path / "rejects.csv")

    assert (first.rows, first.added, first.new_subscribers) == (309, 300, 300)
    assert (first.invalid, first.duplicates) == (5, 4)
    assert len(members(engine)) == 300 and set(members(engine).values()) == {db.SUBSCRIBED}
    with engine.connect() as conn:
        r7 = find_subscriber(conn, "R7@example.com")
    assert (r7.name, r7.attributes) == ("Reader 7", {"team": "team-1"})
    assert events_of(engine, r7.id) == [(None, db.SUBSCRIBED, "import")]
    assert (tmp_path / "rejects.csv").read_text(encoding="utf-8").count("\n") == 1 + 5 + 4

    tables = (db.subscribers, db.memberships, db.events)
    before = [rows(engine, t) for t in tables]
    second = import_csv(engine, source, list_name=LIST, clock=pg_settings.clock)
    assert [rows(engine, t) for t in tables] == before
    assert (second.added, second.unchanged, second.new_subscribers) == (0, 300, 0)
    assert (second.invalid, second.duplicates) == (5, 4)

    exported = tmp_path / "export.csv"
    assert export_csv(engine, list_name=LIST, path=exported) == 300
    with exported.open(encoding="utf-8", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["email"] for r in read] == [f"r{n}@example.com" for n in range(1, 301)]
    assert read[6] == {"email": "r7@example.com", "name": "Reader 7", "team": "team-1"}
    # The export imports back without changing anything.
    third = import_csv(engine, exported, list_name=LIST, clock=pg_settings.clock)
    assert (third.unchanged, third.invalid, third.duplicates) == (300, 0, 0)
    assert [rows(engine, t) for t in tables] == before


def test_the_import_and_export_commands(project: Path, database_url: str, tmp_path: Path) -> None:
    assert cli(project, database_url, "lists", "create", LIST).returncode == 0
    source = write_csv(tmp_path / "people.csv", 250)

    imported = cli(project, database_url, "subscribers", "import", str(source))
    assert imported.returncode == 2, imported.stderr  # invalid rows: the valid ones land, status 2
    assert re.search(r"added +250 +250 new subscriber", imported.stdout), imported.stdout
    again = cli(project, database_url, "subscribers", "import", str(source))
    assert again.returncode == 2, again.stderr
    assert re.search(r"added +0\b", again.stdout) and re.search(r"already subscribed +250\b", again.stdout), again.stdout
    counted = cli(project, database_url, "subscribers", "count", "--list", LIST)
    assert counted.returncode == 0 and counted.stdout.strip().endswith("250"), counted.stdout

    exported = cli(project, database_url, "subscribers", "export")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert lines[0] == "email,name,team" and len(lines) == 251
    assert lines[1] == "r1@example.com,Reader 1,team-1"


def test_subscribe_unsubscribe_and_erase_log_every_change(
    engine: Engine, pg_settings: Settings, project: Path, database_url: str
) -> None:
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        other = create_list(conn, "other", now=now).id
        added = subscribe(conn, list_id=list_id, email="Ann@Example.com", name="Ann", attributes={"k": "v"}, now=now)
        subscribe(conn, list_id=other, email="ann@example.com", now=now)
        assert subscribe(conn, list_id=list_id, email="ANN@example.com", now=now).outcome == "unchanged"
        assert unsubscribe(conn, list_id=list_id, email="ann@example.com", now=now)
        assert not unsubscribe(conn, list_id=list_id, email="ann@example.com", now=now)
        assert subscribe(conn, list_id=list_id, email="ann@example.com", now=now).outcome == "skipped"
        again = subscribe(conn, list_id=list_id, email="ann@example.com", now=now, resubscribe=True)
        subscribe(conn, list_id=list_id, email="bo@example.com", now=now)
    assert added.outcome == "added" and again.outcome == "resubscribed"
    ann = added.subscriber.id
    assert (added.subscriber.email, added.subscriber.attributes) == ("Ann@example.com", {"k": "v"})
    assert events_of(engine, ann) == [
        (None, db.SUBSCRIBED, "command"),
        (None, db.SUBSCRIBED, "command"),
        (db.SUBSCRIBED, db.UNSUBSCRIBED, "command"),
        (db.UNSUBSCRIBED, db.SUBSCRIBED, "command"),
    ]

    with engine.begin() as conn:
        erased = erase_subscriber(conn, "ann@example.com", now=now)
    assert (erased.memberships, erased.events, erased.lists) == (2, 4, [LIST, "other"])
    assert events_of(engine, ann) == []
    with engine.connect() as conn:
        m, e = db.memberships.c, db.events.c
        assert conn.execute(select(func.count()).where(m.subscriber_id == ann)).scalar_one() == 0
        assert conn.execute(select(e.subscriber_id, e.status).where(e.status == "erased")).all() == [(None, "erased")]
        assert conn.execute(select(db.subscribers.c.email)).scalars().all() == ["bo@example.com"]

    # The same through the CLI, in another process.
    url = database_url
    added_cli = cli(project, url, "subscribers", "add", "cy@example.com", "--name", "Cy")
    assert added_cli.returncode == 0, added_cli.stderr
    left = cli(project, url, "subscribers", "unsubscribe", "cy@example.com")
    assert left.returncode == 0, left.stderr
    shown = cli(project, url, "subscribers", "show", "cy@example.com")
    assert shown.returncode == 0 and "unsubscribed" in shown.stdout, shown.stdout + shown.stderr
    assert members(engine) == {"bo@example.com": db.SUBSCRIBED, "cy@example.com": db.UNSUBSCRIBED}
    removed = cli(project, url, "subscribers", "remove", "cy@example.com", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert members(engine) == {"bo@example.com": db.SUBSCRIBED}


def test_a_send_honours_an_unsubscribe_stops_on_an_outage_and_resumes(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    box: dict[str, Any] = {}

    def unsubscribe_250(record: Any) -> None:
        # While the first request is answered: r250 (in the third batch) leaves by one-click.
        if record.seq == 1:
            settings = box["settings"]
            with engine_of(settings).begin() as conn:
                unsubscribe(conn, list_id=box["list_id"], email="r250@example.com", now=settings.clock(), source="one_click")

    # The second request meets an outage and no retry is allowed: the send stops, resumable.
    with FakeSendGrid(api_key=API_KEY, script=["202", "503"], on_request=unsubscribe_250, keep_bodies=True) as fake:
        settings = configure(
            project, database_url=database_url, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY,
            batch_size=100, send_concurrency=1, max_retries=0, secret_key=SECRET,
        )  # fmt: skip
        box["settings"] = settings
        engine = engine_of(settings)
        with engine.begin() as conn:
            box["list_id"] = create_list(conn, LIST, now=settings.clock()).id
        import_csv(engine, write_csv(tmp_path / "people.csv", 300), list_name=LIST, clock=settings.clock)
        unsubscribe_at_start = "r5@example.com"
        with engine.begin() as conn:
            unsubscribe(conn, list_id=box["list_id"], email=unsubscribe_at_start, now=settings.clock())

        plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
        assert (plan.recipients, plan.batches) == (299, 3)
        first = send.send_campaign(engine_of(settings), send_parts(settings), plan)
        assert isinstance(first.error, SendError) and "503" in str(first.error)
        assert (first.finished, first.counts[db.SENT], first.counts[db.PENDING]) == (False, 100, 199)

        plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
        assert plan.campaign is not None and plan.recipients == 199
        second = send.send_campaign(engine_of(settings), send_parts(settings), plan)

        assert second.finished and second.error is None
        assert (second.counts[db.SENT], second.counts[db.SKIPPED]) == (298, 1)
        expected = [f"r{n}@example.com" for n in range(1, 301) if n not in (5, 250)]
        assert Counter(fake.delivered()) == Counter(expected)  # everyone once, the leavers never

        d = db.deliveries.c
        with engine.connect() as conn:
            states = {r.email: (r.state, r.message_id, r.error) for r in conn.execute(select(d.email, d.state, d.message_id, d.error))}
            campaign = conn.execute(select(db.campaigns)).one()
            leases = conn.execute(select(db.leases)).all()
            batches = sorted(tuple(r) for r in conn.execute(select(db.batches.c.state, db.batches.c.size)))
        assert unsubscribe_at_start not in states
        assert states["r250@example.com"] == (db.SKIPPED, None, "unsubscribed before sending")
        message_ids = {email: r.message_id for r in fake.records for email in r.emails if r.delivered}
        assert all(states[e] == (db.SENT, message_ids[e], None) for e in expected)
        assert campaign.finished_at is not None and leases == []
        assert db.RETURNED in [state for state, _ in batches]

        # A finished send is not repeated, through the CLI too.
        again = run_newsletter("send", "--date", DAY.isoformat(), "--yes", cwd=project, env={"SENDGRID_API_KEY": API_KEY})
        assert again.returncode == 0, again.stderr
        assert "Nothing to do" in again.stdout
        requests = len(fake.records)

    assert requests == 4  # sent, 503, then the two batches of the resume

    status = send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock())
    assert status is not None and status.counts[db.SENT] == 298 and status.skipped == {"unsubscribed before sending": 1}
    shown = cli(project, database_url, "status", "--date", DAY.isoformat())
    assert shown.returncode == 0, shown.stderr
    assert "finished" in shown.stdout and "298" in shown.stdout and "unsubscribed before sending" in shown.stdout

    # An erased reader's delivery record stays with the send, without the address.
    with engine.begin() as conn:
        erased = erase_subscriber(conn, "r10@example.com", now=settings.clock())
    assert erased.deliveries_anonymised == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(db.deliveries.c.email == "")).scalar_one() == 1


def test_webhook_events_apply_once_and_suppress(engine: Engine, pg_settings: Settings) -> None:
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        other = create_list(conn, "other", now=now).id
        ann = subscribe(conn, list_id=list_id, email="ann@example.com", now=now).subscriber.id
        subscribe(conn, list_id=other, email="ann@example.com", now=now)
        bo = subscribe(conn, list_id=list_id, email="bo@example.com", now=now).subscriber.id
        subscribe(conn, list_id=other, email="bo@example.com", now=now)
        campaign_id = conn.execute(
            db.campaigns.insert().values(
                issue_date=DAY.isoformat(), list_id=list_id, subject="s", html="h", text="t", created_at=now
            )
        ).inserted_primary_key[0]

    def event(kind: str, subscriber_id: int, email: str, event_id: str, **extra: Any) -> dict[str, Any]:
        return {"email": email, "event": kind, "sg_event_id": event_id, "timestamp": 1769140800,
                "campaign_id": str(campaign_id), "subscriber_id": str(subscriber_id), "list_id": str(list_id), **extra}  # fmt: skip

    batch = [
        event("delivered", ann, "ann@example.com", "d-1"),
        event("open", ann, "ann@example.com", "o-1"),
        event("open", ann, "ann@example.com", "o-1"),  # SendGrid repeats events
        event("bounce", ann, "ann@example.com", "b-1", type="bounce", reason="550 no such user"),
        event("group_unsubscribe", bo, "bo@example.com", "g-1"),
    ]
    with engine.begin() as conn:
        result = apply_events(conn, events_from(batch), now)
    assert (result.applied, result.duplicates, result.changed) == (4, 1, 3)
    with engine.begin() as conn:  # the whole batch again, as a retry: nothing changes
        retried = apply_events(conn, events_from(batch), now + timedelta(minutes=5))
    assert (retried.applied, retried.duplicates, retried.changed) == (0, 5, 0)

    assert members(engine) == {"ann@example.com": db.BOUNCED, "bo@example.com": db.UNSUBSCRIBED}
    assert members(engine, "other") == {"ann@example.com": db.BOUNCED, "bo@example.com": db.SUBSCRIBED}
    assert events_of(engine, ann)[-2:] == [(db.SUBSCRIBED, db.BOUNCED, "webhook")] * 2
    c = db.campaign_stats.c
    with engine.connect() as conn:
        stats = dict(conn.execute(select(c.event, c.count).where(c.campaign_id == campaign_id)).all())
        seen = conn.execute(select(func.count()).select_from(db.webhook_events)).scalar_one()
    assert stats == {"delivered": 1, "opened": 1, "bounced": 1, "unsubscribed": 1} and seen == 4

    # Suppressions: a stronger status replaces a weaker one on every list, never the reverse.
    with engine.begin() as conn:
        assert suppress(conn, subscriber_id=bo, status=db.COMPLAINED, source="provider_sync", now=now) == 2
        assert suppress(conn, subscriber_id=bo, status=db.COMPLAINED, source="provider_sync", now=now) == 0
        assert suppress(conn, subscriber_id=ann, status=db.UNSUBSCRIBED, source="provider_sync", now=now) == 0
    assert members(engine)["bo@example.com"] == db.COMPLAINED
    assert members(engine, "other")["bo@example.com"] == db.COMPLAINED
    assert sorted(events_of(engine, bo)[-2:]) == [
        (db.SUBSCRIBED, db.COMPLAINED, "provider_sync"),
        (db.UNSUBSCRIBED, db.COMPLAINED, "provider_sync"),
    ]


def test_a_webhook_batch_with_nul_and_lone_surrogates_stores_every_event(
    engine: Engine, pg_settings: Settings
) -> None:
    """PostgreSQL refuses NUL in text: one such character used to lose the whole batch."""
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        leaver = subscribe(conn, list_id=list_id, email="leaver@example.com", now=now).subscriber.id
        bouncer = subscribe(conn, list_id=list_id, email="bouncer@example.com", now=now).subscriber.id
        subscribe(conn, list_id=list_id, email="reader@example.com", now=now)
        campaign_id = conn.execute(
            db.campaigns.insert().values(
                issue_date=DAY.isoformat(), list_id=list_id, subject="s", html="h", text="t", created_at=now
            )
        ).inserted_primary_key[0]
    body = batch_with_unstorable_text(
        campaign_id, list_id, leaver="leaver@example.com", bouncer="bouncer@example.com", reader="reader@example.com"
    )
    with engine.begin() as conn:
        first = apply_events(conn, parse_events(body), now)
    with engine.begin() as conn:  # SendGrid's retry
        retried = apply_events(conn, parse_events(body), now)
    assert (first.applied, first.duplicates, first.failed) == (5, 0, 2)  # the two items that are no events
    assert (retried.applied, retried.duplicates, retried.changed) == (0, 5, 0)
    assert members(engine) == {
        "leaver@example.com": db.UNSUBSCRIBED, "bouncer@example.com": db.BOUNCED, "reader@example.com": db.SUBSCRIBED
    }  # fmt: skip
    c, e = db.campaign_stats.c, db.events.c
    with engine.connect() as conn:
        stored = set(conn.execute(select(db.webhook_events.c.event_id)).scalars())
        stats = dict(conn.execute(select(c.event, c.count).where(c.campaign_id == campaign_id)).all())
        detail = conn.execute(select(e.detail).where(e.subscriber_id == bouncer, e.source == "webhook")).scalar_one()
    assert stored == UNSTORABLE_EVENT_IDS and stats == UNSTORABLE_COUNTS and detail == UNSTORABLE_BOUNCE_DETAIL
    assert events_of(engine, leaver)[-1] == (db.SUBSCRIBED, db.UNSUBSCRIBED, "webhook")


def test_an_event_the_database_refuses_costs_only_itself(engine: Engine, pg_settings: Settings) -> None:
    # An error aborts a PostgreSQL transaction: each event must be redone in its own savepoint.
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        subscribe(conn, list_id=list_id, email="leaver@example.com", now=now)
        conn.execute(text(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_id = 'refused-2' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF; "
            "RETURN NEW; END $$"
        ))  # fmt: skip
        conn.execute(text(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_events FOR EACH ROW EXECUTE FUNCTION refuse_one()"
        ))  # fmt: skip
    batch = [
        {"email": "leaver@example.com", "event": "delivered", "sg_event_id": "refused-1"},
        {"email": "leaver@example.com", "event": "delivered", "sg_event_id": "refused-2"},
        {"email": "leaver@example.com", "event": "unsubscribe", "sg_event_id": "refused-3"},
    ]
    with engine.begin() as conn:
        result = apply_events(conn, events_from(batch), now)
    assert (result.applied, result.failed, result.changed) == (2, 1, 1)
    assert members(engine) == {"leaver@example.com": db.UNSUBSCRIBED}
    assert {row[0] for row in rows(engine, db.webhook_events)} == {"refused-1", "refused-3"}


def test_erasing_then_adding_reuses_no_id(engine: Engine, pg_settings: Settings) -> None:
    # SERIAL sequences never hand a number out twice; the upgrade from schema 2 only records which
    # subscribers may hold a link signed the old way (tokens.py).
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        kept = subscribe(conn, list_id=list_id, email="kept@example.com", now=now).subscriber.id
        db.legacy_links.drop(conn)  # as a database of schema version 2
        conn.execute(db.schema_version.update().values(version=2))
    assert db.migrate(engine) == len(db.MIGRATIONS)
    with engine.begin() as conn:
        assert conn.execute(select(db.legacy_links.c.max_subscriber_id)).scalars().all() == [kept]
        erased = subscribe(conn, list_id=list_id, email="erased@example.com", now=now).subscriber.id
        erase_subscriber(conn, "erased@example.com", now=now)
        added = subscribe(conn, list_id=list_id, email="next@example.com", now=now).subscriber.id
        gone = create_list(conn, "short-lived", now=now).id
        conn.execute(db.lists.delete().where(db.lists.c.id == gone))
        created = create_list(conn, "next-list", now=now).id
    assert added > erased > kept and created > gone


def test_two_unsubscribes_at_once_change_and_log_it_once(engine: Engine, pg_settings: Settings) -> None:
    # PostgreSQL lets two transactions read the same status at once (SQLite's BEGIN IMMEDIATE does
    # not): a second one-click POST arriving while the first is uncommitted must wait, then see it.
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        ann = subscribe(conn, list_id=list_id, email="ann@example.com", now=now).subscriber.id
    outcomes: list[bool] = []

    def second() -> None:
        with engine.begin() as conn:
            outcomes.append(set_status(conn, list_id=list_id, subscriber_id=ann, status=db.UNSUBSCRIBED,
                                       source="one_click", now=now))  # fmt: skip

    with engine.begin() as conn:
        outcomes.append(set_status(conn, list_id=list_id, subscriber_id=ann, status=db.UNSUBSCRIBED,
                                   source="one_click", now=now))  # fmt: skip
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(1.0)  # it is blocked on this uncommitted change, whichever statement it is at
        assert racer.is_alive()
    racer.join(30)

    assert outcomes == [True, False]
    assert events_of(engine, ann) == [(None, db.SUBSCRIBED, "command"), (db.SUBSCRIBED, db.UNSUBSCRIBED, "one_click")]


def test_a_compare_and_set_from_a_status_changed_meanwhile_changes_nothing(
    engine: Engine, pg_settings: Settings
) -> None:
    # Both saw "subscribed" without a lock (as the web server reads): the bounce waits for the
    # unsubscribe's row lock, then finds the status no longer the one it expected.
    now = pg_settings.clock()
    with engine.begin() as conn:
        list_id = get_list(conn, LIST).id
        ann = subscribe(conn, list_id=list_id, email="ann@example.com", now=now).subscriber.id
    outcomes: list[bool] = []

    def change(conn: Connection, status: str, source: str) -> None:
        outcomes.append(compare_and_set(conn, list_id=list_id, subscriber_id=ann, expected=db.SUBSCRIBED,
                                        status=status, source=source, now=now))  # fmt: skip

    def bounce() -> None:
        with engine.begin() as conn:
            change(conn, db.BOUNCED, "webhook")

    with engine.begin() as conn:
        change(conn, db.UNSUBSCRIBED, "one_click")
        racer = threading.Thread(target=bounce)
        racer.start()
        racer.join(1.0)
        assert racer.is_alive()  # waiting for this transaction's row lock
    racer.join(30)

    assert outcomes == [True, False]
    assert members(engine) == {"ann@example.com": db.UNSUBSCRIBED}
    assert events_of(engine, ann) == [(None, db.SUBSCRIBED, "command"), (db.SUBSCRIBED, db.UNSUBSCRIBED, "one_click")]


def _restart(server: str) -> None:
    """Restart the cluster (a fast shutdown ends every session mid-transaction), as an operator or
    a failover would; pg_ctl reuses the options it was started with."""
    import psycopg

    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql") + "/postgres") as conn:
        data = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
    subprocess.run(
        _as_server_user([str(_bin_dir() / "pg_ctl"), "-D", data, "-l", str(Path(data).parent / "server.log"),
                         "-m", "fast", "-w", "restart"]),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def test_a_restart_mid_send_sends_nobody_twice(project: Path, server: str, database_url: str, tmp_path: Path) -> None:
    from .send_helpers import CONTENT, delivery_states, plan_for, start_campaign

    restarts: list[threading.Thread] = []
    restarted_at: list[float] = []

    def restart() -> None:
        _restart(server)
        restarted_at.append(time.monotonic())

    def restart_during_the_third_request(record: Any) -> None:
        if record.seq == 3:  # in its own thread: the fake goes on answering meanwhile
            restarts.append(threading.Thread(target=restart))
            restarts[0].start()

    with FakeSendGrid(api_key=API_KEY, latency=0.05, on_request=restart_during_the_third_request) as fake:
        settings = configure(
            project, database_url=database_url, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY,
            batch_size=25, send_concurrency=2, database_timeout=30, secret_key=SECRET,
        )  # fmt: skip
        engine = engine_of(settings)
        with engine.begin() as conn:
            create_list(conn, LIST, now=settings.clock())
        import_csv(engine, write_csv(tmp_path / "people.csv", 1000), list_name=LIST, clock=settings.clock)
        start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
        sent_at = time.monotonic()
        restarts[0].join(120)

    assert restarted_at and restarted_at[0] < sent_at  # the send lived through the restart

    received = Counter(fake.delivered())
    assert max(received.values()) == 1
    states = delivery_states(settings)
    assert {states[address][0] for address in received} <= {db.SENT, db.UNCERTAIN}
    if report.finished:
        assert report.error is None and set(received) == set(states)
    else:  # the restart outlasted the retries: whatever SendGrid accepted is recorded, nothing lost
        assert {state for state, _, _ in states.values()} <= {db.SENT, db.UNCERTAIN, db.PENDING}
        resumed = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
        assert resumed.finished and max(Counter(fake.delivered()).values()) == 1


def test_the_daily_runs_lock_holds_across_connections_and_is_released(pg_settings: Settings) -> None:
    from newsletter.daily import RunLock
    from newsletter.errors import RunLocked

    engine = engine_of(pg_settings)
    with RunLock(engine, pg_settings.clock, "the first run") as first:
        # Another host's run: its own engine, so nothing is shared but the database.
        elsewhere = db.connect(pg_settings.database)
        try:
            with pytest.raises(RunLocked, match=r"another run holds the run lock: \d+@"):
                RunLock(elsewhere, pg_settings.clock, "the second run").acquire()
        finally:
            elsewhere.dispose()
        with engine.connect() as conn:
            assert conn.execute(select(db.leases.c.holder)).scalar_one() == first.holder
    second = RunLock(engine, pg_settings.clock, "a later run")
    second.acquire()
    second.release()
    with engine.connect() as conn:
        assert conn.execute(select(db.leases)).all() == []


def test_simultaneous_sign_ups_of_one_address_and_nul_are_never_a_500(project: Path, database_url: str) -> None:
    port = free_port()
    with FakeSendGrid(api_key=API_KEY) as fake:
        config = write_config(
            project, database_url=database_url, secret_key=SECRET, base_url=f"http://127.0.0.1:{port}",
            sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, send_rate_limit=1000.0,
        )  # fmt: skip
        settings = load_settings(config)
        with engine_of(settings).begin() as conn:
            create_list(conn, LIST, now=settings.clock())
        log = project / "server.log"
        with serving(config, port=port, log_to=log) as url:
            for round in range(5):
                email = f"at.once{round}@example.com"
                start = threading.Barrier(6)
                answers: list[int] = []

                def sign_up(client: int, email: str = email) -> None:
                    with httpx.Client(timeout=30) as http:
                        start.wait()
                        form = {"email": email, "name": "At Once"}
                        answers.append(
                            http.post(f"{url}/subscribe/{LIST}", data=form, headers={"X-Forwarded-For": f"192.0.2.{client}"}).status_code
                        )

                threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(6)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert answers == [200] * 6
            with httpx.Client(timeout=30) as http:
                for fields in ({"email": "nul\x00@example.com"}, {"email": "nul@example.com", "name": "a\x00b"}):
                    assert http.post(f"{url}/subscribe/{LIST}", data=fields).status_code == 400
                for path in (f"/subscribe/{LIST}%00", "/confirm/%00", "/unsubscribe/%00", "/%00"):
                    assert http.get(f"{url}{path}").status_code == 400
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(fake.delivered()) < 5 * 3:
                time.sleep(0.1)
            time.sleep(0.5)
    # Each address: one subscriber, one membership, and its day's three confirmations at most.
    assert sorted(Counter(fake.delivered()).values()) == [3] * 5
    assert sorted(members(engine_of(settings))) == [f"at.once{n}@example.com" for n in range(5)]
    assert "Traceback" not in log.read_text() and "@example.com" not in log.read_text()
