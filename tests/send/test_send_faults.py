"""How a send meets SendGrid's failures: 400s isolated by halving, 401 stopping at once, 429/5xx
retried with backoff (honouring the reset headers), lost answers left uncertain, unreachable servers,
and the claim that keeps two senders apart. All against the fake SendGrid on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import db, send
from newsletter.errors import ProviderAuthError, SendError, SendInProgress
from newsletter.providers.sendgrid import SendGrid
from newsletter.send import addressing, campaigns, unrecorded
from newsletter.store import lease
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, LIST, configure, engine_of, seed
from testkit.servers import free_port
from newsletter.wiring import send_parts

from ..send_helpers import CONTENT, DAY, KEY_ENV, campaign_holder, delivery_states, hold_campaign, plan_for, settings_for, start_campaign
from ..support import run_newsletter


@pytest.mark.slow
def test_a_400_is_split_until_the_bad_addresses_are_alone(project: Path) -> None:
    bad = {"u17@example.com", "u500@example.com", "u999@example.com"}
    with FakeSendGrid(api_key=API_KEY, reject=bad) as fake:
        settings = settings_for(project, fake.url)
        addresses = seed(settings, 1000)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))

    assert report.finished and report.error is None
    assert Counter(fake.delivered()) == Counter(a for a in addresses if a not in bad)
    states = delivery_states(settings)
    for address in bad:
        state, _, error = states[address]
        assert state == "failed"
        assert error == "SendGrid answered 400: Does not contain a valid address. (personalizations.0.to.0.email)"
    assert report.counts["sent"] == 997 and report.counts["failed"] == 3
    # The 400 names the three personalizations: cut around them, 7 parts (3 of them alone), not 1000.
    assert len(fake.records) == 1 + 7
    with engine_of(settings).connect() as conn:
        states_of_batches = Counter(conn.execute(select(db.batches.c.state)).scalars())
    assert states_of_batches == {"failed": 3, "split": 1, "sent": 4}


def test_a_400_about_the_message_itself_stops_the_send_without_splitting(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url, send_concurrency=1)
        seed(settings, 30)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings, addressing.Content("", CONTENT.html, CONTENT.text)))

    assert isinstance(report.error, SendError)
    assert "refused the message itself" in str(report.error) and "(subject)" in str(report.error)
    assert len(fake.records) == 1
    assert report.counts["pending"] == 30 and not report.finished


@pytest.mark.slow
def test_401_stops_the_whole_send_at_once_and_a_good_key_resumes_it(project: Path) -> None:
    with FakeSendGrid(api_key="the-right-key") as fake:
        settings = settings_for(project, fake.url, batch_size=10, send_concurrency=2)
        addresses = seed(settings, 95)
        run = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        assert run.returncode == 1
        assert "SendGrid refused the API key (401)" in run.stderr and API_KEY not in run.stderr + run.stdout
        assert len(fake.records) <= 2  # at most one request per worker, then nothing
        assert set(s for s, _, _ in delivery_states(settings).values()) == {"pending"}

        right_key = {"SENDGRID_API_KEY": "the-right-key"}
        resumed = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=right_key)
        assert resumed.returncode == 0, resumed.stderr
    assert Counter(fake.delivered()) == Counter(addresses)


@pytest.mark.slow
@pytest.mark.parametrize("wait_header", ["retry_after", "reset_in"])
def test_429_waits_as_long_as_sendgrid_asks(project: Path, wait_header: str) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["429"], **{wait_header: 2}) as fake:
        settings = settings_for(project, fake.url, send_concurrency=1)
        seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished and report.counts["sent"] == 3
    first, second = fake.records
    assert (first.status, second.status) == (429, 202)
    # A lower bound only: the retry came no sooner than SendGrid allowed.
    assert second.time - first.time >= 1.0


@pytest.mark.slow
def test_5xx_is_retried_and_then_sent(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["500", "503"]) as fake:
        settings = settings_for(project, fake.url, send_concurrency=1)
        seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert [r.status for r in fake.records] == [500, 503, 202]
    assert report.finished and report.counts["sent"] == 3 and report.requests == 3


@pytest.mark.slow
def test_an_outage_longer_than_the_retries_stops_and_leaves_the_batch_pending(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["503"] * 3) as fake:
        settings = settings_for(project, fake.url, send_concurrency=1, max_retries=2)
        addresses = seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
        assert isinstance(report.error, SendError) and "still after 2 retries" in str(report.error)
        assert report.counts["pending"] == 3 and report.counts["uncertain"] == 0
        assert fake.delivered() == []
        resumed = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert resumed.finished and Counter(fake.delivered()) == Counter(addresses)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_a_lost_answer_leaves_the_batch_uncertain_and_stops_the_send(project: Path, fault: str) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["202", fault], hang=5) as fake:
        settings = settings_for(project, fake.url, batch_size=2, send_concurrency=1, read_timeout=0.5)
        seed(settings, 5)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))

        # Not retried: SendGrid may have accepted it, and mail/send has no idempotency key. And the
        # send stops: whatever lost this answer would lose the next ones too.
        assert len(fake.records) == 2
        assert isinstance(report.error, SendError) and "answer to a request was lost" in str(report.error)
        assert not report.finished
        assert (report.counts["sent"], report.counts["uncertain"], report.counts["pending"]) == (2, 2, 1)
        [batch] = report.uncertain_batches
        assert batch.size == 2 and "may have been delivered" in batch.error
        state = send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock())
        assert [b.id for b in state.uncertain_batches] == [batch.id] and state.in_flight_batches == []
        shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV)
        assert "Uncertain batches" in shown.stdout and "may have been delivered" in shown.stdout.replace("\n", " ")
        resumed = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 batch(es) are uncertain" in resumed.stderr and len(fake.records) == 3
        again = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        assert "Nothing to do" in again.stdout and len(fake.records) == 3

        resent = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings, resend_uncertain=True))
    assert resent.finished and resent.counts["sent"] == 5 and resent.counts["uncertain"] == 0
    delivered = Counter(fake.delivered())
    assert delivered == Counter({"u1@example.com": 1, "u2@example.com": 1, "u3@example.com": 2,
                                 "u4@example.com": 2, "u5@example.com": 1})
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.batches.c.state).where(db.batches.c.id == batch.id)).scalar() == "resent"


@pytest.mark.slow
def test_an_unreachable_server_is_retried_then_stops_with_nothing_uncertain(project: Path) -> None:
    settings = settings_for(project, f"http://127.0.0.1:{free_port()}", max_retries=2, send_concurrency=1)
    seed(settings, 3)
    report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert isinstance(report.error, SendError) and "could not reach SendGrid" in str(report.error)
    assert report.requests == 3
    assert report.counts["pending"] == 3 and report.counts["uncertain"] == 0


def test_a_fresh_claim_keeps_a_second_sender_out(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    plan = plan_for(settings)
    campaign = start_campaign(settings, DAY, plan.mailing_list, CONTENT)
    engine = engine_of(settings)
    first = campaigns.claim(settings.clock, campaign.id, "the issue")
    with engine.begin() as conn:
        first.acquire(conn)
    with pytest.raises(SendInProgress, match="being sent by another process"):
        with engine.begin() as conn:
            campaigns.claim(settings.clock, campaign.id, "the issue").acquire(conn)


def test_a_claim_is_taken_over_when_its_holder_died_or_went_silent(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    campaign = start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
    engine = engine_of(settings)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder, age in ((lease.holder_of(dead.pid), timedelta(0)),
                        ("1@another-host#silent", lease.STALE_AFTER + timedelta(seconds=1))):
        hold_campaign(settings, campaign.id, holder, settings.clock() - age)
        taker = campaigns.claim(settings.clock, campaign.id, "the issue")
        with engine.begin() as conn:
            taker.acquire(conn)
        assert campaign_holder(settings, campaign.id) == taker.holder


def test_a_dead_pid_on_the_same_hostname_but_another_pid_namespace_keeps_its_fresh_claim(project: Path) -> None:
    """Containers with host networking share the hostname: their PIDs mean nothing here."""
    settings = configure(project)
    seed(settings, 2)
    campaign = start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
    engine = engine_of(settings)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder in (f"{dead.pid}@{socket.gethostname()}#elsewhere", f"{dead.pid}@{socket.gethostname()}#0123456789ab#x"):
        hold_campaign(settings, campaign.id, holder, settings.clock())
        with pytest.raises(SendInProgress, match="being sent by another process"):
            with engine.begin() as conn:
                campaigns.claim(settings.clock, campaign.id, "the issue").acquire(conn)


def test_a_sender_that_loses_its_claim_stops(project: Path) -> None:
    settings_box = {}

    def steal(record) -> None:
        if record.seq == 1:
            with engine_of(settings_box["s"]).begin() as conn:
                conn.execute(db.leases.update().values(holder="1@elsewhere#x"))

    with FakeSendGrid(api_key=API_KEY, on_request=steal) as fake:
        settings = settings_for(project, fake.url, batch_size=2, send_concurrency=1)
        settings_box["s"] = settings
        seed(settings, 6)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert isinstance(report.error, SendInProgress)
    assert len(fake.records) == 1
    assert report.counts["sent"] == 2 and report.counts["pending"] == 4


def test_sendgrid_auth_error_is_reported_by_a_test_send_too(project: Path) -> None:
    with FakeSendGrid(api_key="another") as fake:
        settings = settings_for(project, fake.url)
        seed(settings, 1)
        with pytest.raises(ProviderAuthError):
            unrecorded.send_unrecorded(engine_of(settings), send_parts(settings), plan_for(settings), SendGrid(settings.delivery), to=["a@example.org"])
