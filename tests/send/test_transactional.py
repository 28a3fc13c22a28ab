"""One message to one address under an idempotency key (send/transactional.py): at most once across
repeats, simultaneous callers, lost answers and crashes; pending only when nothing was sent. And the
`send --to` test sends that use it. Against the fake SendGrid on 127.0.0.1."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import db
from newsletter.providers import Message, Recipient, provider_for
from newsletter.send.transactional import Outgoing, send_messages
from testkit.fake_sendgrid import DROP, FakeSendGrid
from testkit.projects import API_KEY, engine_of, seed
from testkit.servers import free_port

from ..send_helpers import KEY_ENV, settings_for
from ..support import run_newsletter

MESSAGE = Message("Please confirm", "<p>Confirm</p>", "Confirm", "papers@example.com", "Daily Papers")


def confirmation(key: str = "confirm:daily-papers:ann@example.com:2026-01-23") -> Outgoing:
    return Outgoing(key, MESSAGE, Recipient("ann@example.com", "Ann", None))


def rows(settings) -> list[tuple[str, str, str | None]]:
    m = db.messages.c
    with engine_of(settings).connect() as conn:
        return [tuple(row) for row in conn.execute(select(m.key, m.state, m.message_id).order_by(m.id))]


@pytest.mark.slow
def test_a_message_goes_out_once_however_often_it_is_asked_for(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url)
        [first] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
        [again] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert (first.state, first.sent_now) == ("sent", True) and first.message_id
    assert (again.state, again.sent_now, again.message_id) == ("sent", False, first.message_id)
    assert fake.delivered() == ["ann@example.com"]
    assert rows(settings) == [(confirmation().key, "sent", first.message_id)]


@pytest.mark.slow
def test_callers_at_the_same_moment_send_it_once(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, latency=0.2) as fake:
        settings = settings_for(project, fake.url)
        engine_of(settings)  # the schema, before the threads race for it
        outcomes = []

        def ask() -> None:
            outcomes.extend(send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock))

        callers = [threading.Thread(target=ask) for _ in range(6)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
    assert fake.delivered() == ["ann@example.com"]
    assert Counter(outcome.sent_now for outcome in outcomes) == {True: 1, False: 5}
    # The others saw it sent, or still in flight (uncertain to them): never theirs to send.
    assert {outcome.state for outcome in outcomes if not outcome.sent_now} <= {"sent", "uncertain"}


@pytest.mark.slow
def test_a_lost_answer_is_uncertain_and_never_sent_again(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=[DROP]) as fake:
        settings = settings_for(project, fake.url, max_retries=0)
        [lost] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
        [later] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert lost.state == "uncertain" and "may have been delivered" in (lost.error or "")
    assert (later.state, later.sent_now) == ("uncertain", False)
    assert len(fake.records) == 1


def test_a_crash_after_the_request_left_leaves_it_uncertain(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url)
        with engine_of(settings).begin() as conn:  # as a process killed while its request was out
            now = settings.clock()
            conn.execute(db.messages.insert().values(
                key=confirmation().key, email="ann@example.com", subject="Please confirm", state="in_flight",
                created_at=now, updated_at=now))  # fmt: skip
        [outcome] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert (outcome.state, outcome.sent_now) == ("uncertain", False) and fake.records == []


@pytest.mark.slow
def test_nothing_sent_leaves_it_pending_and_a_later_try_sends_it(project: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(project, down, max_retries=0)
    [unsent] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert unsent.state == "pending" and "could not reach SendGrid" in (unsent.error or "")
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = settings_for(project, fake.url)
        [sent] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert (sent.state, sent.sent_now) == ("sent", True) and fake.delivered() == ["ann@example.com"]


@pytest.mark.slow
def test_a_refused_address_is_failed_with_the_providers_reason(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, reject={"ann@example.com"}) as fake:
        settings = settings_for(project, fake.url)
        [outcome] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
        [again] = send_messages(engine_of(settings), provider_for(settings.delivery), [confirmation()], pacing=settings.pacing, clock=settings.clock)
    assert outcome.state == "failed" and "Does not contain a valid address" in (outcome.error or "")
    assert (again.state, again.sent_now) == ("failed", False) and len(fake.records) == 1


@pytest.mark.slow
def test_a_test_send_is_a_message_per_address_and_no_delivery_of_the_issue(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = settings_for(project, fake.url)
        seed(settings, 3)
        to = ("--to", "u2@example.com", "--to", "guest@example.org")
        first = run_newsletter("send", "--date", "2026-01-23", *to, "--yes", cwd=project, env=KEY_ENV)
        second = run_newsletter("send", "--date", "2026-01-23", *to[2:], "--yes", cwd=project, env=KEY_ENV)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "✓ u2@example.com: sent by SendGrid" in first.stdout and "✓ guest@example.org" in first.stdout
    # A repeated test is a new one; each address got its own message, the subscriber their own link.
    assert Counter(fake.delivered()) == {"u2@example.com": 1, "guest@example.org": 2}
    assert all("custom_args" not in p for record in fake.records for p in record.body["personalizations"])
    assert [state for _, state, _ in rows(settings)] == ["sent", "sent", "sent"]
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.campaigns)).all() == [] and conn.execute(select(db.deliveries)).all() == []
