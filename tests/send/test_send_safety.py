"""What the review of the sender found, each pinned: a bad API key neither leaks nor turns the list
uncertain, a 400 or 413 that blames nobody stops the send, an unsubscribe is honoured by retries
and split halves, a failing heartbeat stops the send, nothing is left in flight unposted, a dry run
of a resumed send is exact, status reads without the write lock and tells live batches apart."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import inspect, select

from newsletter import db, send
from newsletter.errors import SendError
from newsletter.membership import set_status
from newsletter.send import unrecorded
from newsletter.subscribers import MailingList
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, LIST, configure, engine_of, seed
from newsletter.wiring import send_parts

from ..send_helpers import CONTENT, DAY, KEY_ENV, campaign_holder, delivery_states, hold_campaign, plan_for, settings_for, start_campaign
from ..support import run_newsletter, start_newsletter


def unsubscribe(settings, subscriber_id: int) -> None:
    with engine_of(settings).begin() as conn:
        set_status(conn, list_id=1, subscriber_id=subscriber_id, status=db.UNSUBSCRIBED,
                   source="one_click", now=settings.clock())


def all_errors(settings) -> str:
    with engine_of(settings).connect() as conn:
        rows = conn.execute(select(db.batches.c.error)).scalars().all()
        rows += conn.execute(select(db.deliveries.c.error)).scalars().all()
    return " ".join(error or "" for error in rows)


@pytest.mark.slow
def test_an_api_key_with_a_line_break_stops_the_send_without_leaking_it_or_losing_anyone(project: Path) -> None:
    secret = "SG.real-secret\n"
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url, batch_size=2)
        # As a key from a file with a trailing newline would be, past the settings' own checks.
        settings = settings.model_copy(update={"sendgrid_api_key": SecretStr(secret)})
        seed(settings, 6)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))

    assert fake.records == []
    assert isinstance(report.error, SendError) and "header value is malformed" in str(report.error)
    assert not report.finished and report.counts["pending"] == 6 and report.counts["uncertain"] == 0
    assert "real-secret" not in str(report.error) + all_errors(settings)
    shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV)
    assert "real-secret" not in shown.stdout + shown.stderr and "interrupted" in shown.stdout


def test_a_400_that_names_no_field_stops_the_send_instead_of_failing_everyone(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["400"]) as fake:
        settings = settings_for(project, fake.url, batch_size=4, send_concurrency=1)
        seed(settings, 8)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert isinstance(report.error, SendError) and "refused the message itself" in str(report.error)
    assert len(fake.records) == 1
    assert report.counts["pending"] == 8 and report.counts["failed"] == 0 and not report.finished


def test_a_413_is_halved_and_one_for_a_single_recipient_stops_the_send(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["413", "202", "202", "413"]) as fake:
        settings = settings_for(project, fake.url, batch_size=4, send_concurrency=1)
        seed(settings, 5)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    # 4 refused as too large → halves of 2 and 2 sent; then u5 alone is too large: not its fault.
    assert [len(r.emails) for r in fake.records] == [4, 2, 2, 1]
    assert isinstance(report.error, SendError) and "413" in str(report.error)
    assert (report.counts["sent"], report.counts["pending"], report.counts["failed"]) == (4, 1, 0)


def test_an_unsubscribe_while_a_batch_is_split_is_honoured_by_its_parts(project: Path) -> None:
    box = {}

    def leave(record) -> None:
        if record.seq == 1:
            unsubscribe(box["settings"], 6)

    with FakeSendGrid(api_key=API_KEY, reject={"u3@example.com"}, on_request=leave) as fake:
        settings = box["settings"] = settings_for(project, fake.url, batch_size=8, send_concurrency=1)
        seed(settings, 8)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished
    assert "u6@example.com" not in fake.delivered()
    assert delivery_states(settings)["u6@example.com"] == ("skipped", None, "unsubscribed before sending")
    assert (report.counts["sent"], report.counts["failed"], report.counts["skipped"]) == (6, 1, 1)


def test_an_unsubscribe_during_a_retry_wait_is_honoured_by_the_retry(project: Path) -> None:
    box = {}

    def leave(record) -> None:
        if record.seq == 1:
            unsubscribe(box["settings"], 2)

    with FakeSendGrid(api_key=API_KEY, script=["429"], retry_after=0.2, on_request=leave) as fake:
        settings = box["settings"] = settings_for(project, fake.url, send_concurrency=1)
        seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished
    assert [r.emails for r in fake.records] == [
        ["u1@example.com", "u2@example.com", "u3@example.com"],
        ["u1@example.com", "u3@example.com"],
    ]
    assert delivery_states(settings)["u2@example.com"][0] == "skipped"
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.batches.c.state, db.batches.c.size)).all() == [("sent", 2)]


@pytest.mark.slow
def test_retry_after_as_an_http_date_is_honoured(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["429"], retry_after=2, retry_after_as_date=True) as fake:
        settings = settings_for(project, fake.url, send_concurrency=1)
        seed(settings, 2)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished
    first, second = fake.records
    # The date has whole seconds: at least one of the two seconds asked for was waited.
    assert second.time - first.time >= 0.9


@pytest.mark.slow
def test_a_failing_heartbeat_stops_the_send_cleanly(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send, "HEARTBEAT", timedelta(seconds=0.1))
    with FakeSendGrid(api_key=API_KEY, latency=0.5) as fake:
        settings = settings_for(project, fake.url, batch_size=2, send_concurrency=1)
        seed(settings, 6)
        with engine_of(settings).begin() as conn:
            # Only a renewal keeps the holder and changes the heartbeat: the database fails just that.
            conn.exec_driver_sql(
                "CREATE TRIGGER broken_heartbeat BEFORE UPDATE OF heartbeat_at ON leases "
                "WHEN NEW.holder = OLD.holder BEGIN SELECT RAISE(ABORT, 'disk failure'); END"
            )
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert isinstance(report.error, SendError) and "renewing this send's claim" in str(report.error)
    assert len(fake.records) == 1 and not report.finished
    assert (report.counts["sent"], report.counts["pending"], report.counts["in_flight"]) == (2, 4, 0)
    assert campaign_holder(settings, report.campaign.id) is None


def test_a_body_that_cannot_be_built_marks_nothing_in_flight(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url, base_url="https://example.com/" + "a" * 10_000)
        seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert fake.records == []
    assert isinstance(report.error, SendError) and "10,000" in str(report.error)
    assert report.counts["pending"] == 3 and report.counts["uncertain"] == 0
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.batches)).all() == []


@pytest.mark.slow
def test_ctrl_c_during_a_retry_wait_gives_the_batch_back(project: Path) -> None:
    log = project / "requests.jsonl"
    with FakeSendGrid(api_key=API_KEY, script=["429"], retry_after=60, log=log) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, send_concurrency=1)
        addresses = seed(settings, 3)
        sender = start_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        deadline = time.monotonic() + 60
        while not fake.records and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the 429 is read; the sender waits to retry, its batch in flight
        sender.send_signal(signal.SIGINT)
        _, stderr = sender.communicate(timeout=30)
        assert sender.returncode != 0 and "Traceback" not in stderr
        states = {state for state, _, _ in delivery_states(settings).values()}
        assert states == {"pending"}
        resumed = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        assert resumed.returncode == 0, resumed.stderr
    assert Counter(fake.delivered()) == Counter(addresses)
    with engine_of(settings).connect() as conn:
        assert sorted(conn.execute(select(db.batches.c.state)).scalars()) == ["returned", "sent"]


@pytest.mark.slow
def test_a_dry_run_of_a_resumed_send_writes_exactly_the_requests_the_resume_sends(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["202", "503"], keep_bodies=True) as fake:
        settings = settings_for(project, fake.url, batch_size=4, send_concurrency=1, max_retries=0)
        seed(settings, 10)
        first = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
        assert first.counts["sent"] == 4 and first.counts["pending"] == 6
        unsubscribe(settings, 6)  # in the next page: the real run skips it inside the page
        outbox = project / "outbox"
        unrecorded.send_unrecorded(engine_of(settings), send_parts(settings), plan_for(settings), send.open_provider(settings.delivery, dry_run=True, outbox=outbox))
        fake.records.clear()
        resumed = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert resumed.finished
    written = [json.loads(path.read_bytes()) for path in sorted(outbox.glob("batch-*.json"))]
    sent = [record.body for record in fake.records]
    assert [[p["to"][0]["email"] for p in body["personalizations"]] for body in written] == [
        ["u5@example.com", "u7@example.com", "u8@example.com"], ["u9@example.com", "u10@example.com"]
    ]
    assert written == sent


def test_a_dry_run_of_a_new_send_uses_the_campaign_id_the_send_will_get(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = settings_for(project, fake.url)
        seed(settings, 2)
        outbox = project / "outbox"
        unrecorded.send_unrecorded(engine_of(settings), send_parts(settings), plan_for(settings), send.open_provider(settings.delivery, dry_run=True, outbox=outbox))
        send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    [written] = [json.loads(path.read_bytes()) for path in outbox.glob("batch-*.json")]
    assert written == fake.records[0].body


@pytest.mark.slow
def test_status_reads_while_another_process_holds_the_write_lock(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
    writer = sqlite3.connect(project / "newsletter.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a long import, say
        started = time.monotonic()
        shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert time.monotonic() - started < 15 and "pending" in shown.stdout
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_status_shows_a_live_senders_batches_as_in_flight_not_uncertain(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    campaign = start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
    now = settings.clock()
    with engine_of(settings).begin() as conn:
        batch = conn.execute(db.batches.insert().values(
            campaign_id=campaign.id, state="in_flight", size=2, started_at=now)).inserted_primary_key[0]
        conn.execute(db.deliveries.update().values(state="in_flight", batch_id=batch))
    hold_campaign(settings, campaign.id, "42@sender#abc#def", now)
    live = send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock())
    assert [b.id for b in live.in_flight_batches] == [batch] and live.uncertain_batches == []
    shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV)
    assert "In flight (being sent by 42@sender)" in shown.stdout and "Uncertain" not in shown.stdout

    hold_campaign(settings, campaign.id, "42@sender#abc#def", now - timedelta(minutes=5))  # silent: it died
    dead = send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock())
    assert dead.in_flight_batches == [] and [b.id for b in dead.uncertain_batches] == [batch]


def test_a_campaign_the_database_refuses_is_an_error_not_an_assertion(project: Path) -> None:
    settings = configure(project)
    seed(settings, 1)
    missing = MailingList(id=99, name="gone", description="", created_at=settings.clock())
    with pytest.raises(SendError, match="database refused it"):
        start_campaign(settings, DAY, missing, CONTENT)


def test_pending_rows_are_indexed_by_id_and_old_databases_are_migrated(project: Path) -> None:
    settings = configure(project)
    engine = engine_of(settings)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("deliveries")}
    assert indexes["ix_deliveries_campaign_state_id"] == ["campaign_id", "state", "id"]
    with engine.begin() as conn:  # as a database made by version 1 of the schema
        conn.exec_driver_sql("DROP INDEX ix_deliveries_campaign_state_id")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_campaign_state ON deliveries (campaign_id, state)")
        conn.execute(db.schema_version.update().values(version=1))
    assert db.migrate(engine) == len(db.MIGRATIONS)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("deliveries")}
    assert indexes == {"ix_deliveries_campaign_state_id": ["campaign_id", "state", "id"],
                       "ix_deliveries_batch": ["batch_id"]}
