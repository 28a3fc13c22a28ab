"""Killing the sender: `python -m newsletter send ... --yes` is SIGKILLed (at a chosen instant, then
at many random ones) and run again. No recipient may get the issue twice, every recipient must end
recorded, and the uncertain batches must be exactly those whose answers were lost. The fake SendGrid
logs every request durably (JSONL) so the test counts what each address really received."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import db
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, configure, engine_of, seed

from ..send_helpers import KEY_ENV, SEND, delivery_states, kill_at_random
from ..support import run_newsletter, start_newsletter

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out


def delivered_from_log(log: Path) -> Counter[str]:
    received: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["delivered"]:
            received.update(record["emails"])
    return received


def batches_in(settings, *states: str) -> set[int]:
    b = db.batches.c
    with engine_of(settings).connect() as conn:
        return set(conn.execute(select(b.id).where(b.state.in_(states))).scalars())


def emails_of_batches(settings, batch_ids: set[int]) -> set[str]:
    d = db.deliveries.c
    with engine_of(settings).connect() as conn:
        return set(conn.execute(select(d.email).where(d.batch_id.in_(batch_ids))).scalars())


def test_a_sender_killed_while_its_request_is_out_resumes_without_resending_it(project: Path) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}

    def kill_during_second_request(record) -> None:
        if record.seq == 2:
            sender["process"].kill()  # SIGKILL before SendGrid's answer leaves
            sender["process"].wait()

    log = project / "requests.jsonl"
    with FakeSendGrid(api_key=API_KEY, log=log, on_request=kill_during_second_request) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, batch_size=10, send_concurrency=1)
        addresses = seed(settings, 45)
        sender["process"] = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        sender["process"].wait(120)
        assert sender["process"].returncode == -9
        lost = batches_in(settings, "in_flight")
        assert len(lost) == 1

        resumed = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 batch(es) are uncertain" in resumed.stderr
        assert batches_in(settings, "uncertain") == lost
        states = delivery_states(settings)
        uncertain = {a for a, (state, _, _) in states.items() if state == "uncertain"}
        assert uncertain == emails_of_batches(settings, lost) == set(addresses[10:20])
        assert delivered_from_log(log) == Counter(addresses)  # the lost batch did arrive, once

        resent = run_newsletter(*SEND, "--resend-uncertain", cwd=project, env=KEY_ENV)
        assert resent.returncode == 0, resent.stderr
    assert {state for state, _, _ in delivery_states(settings).values()} == {"sent"}
    assert delivered_from_log(log) == Counter(addresses) + Counter(addresses[10:20])


def test_many_random_kills_never_deliver_twice_and_leave_every_recipient_recorded(project: Path) -> None:
    seed_value = int(os.environ.get("CRASH_SEED", time.time_ns()))  # CRASH_SEED=… replays a run
    rng = random.Random(seed_value)
    log = project / "requests.jsonl"
    with FakeSendGrid(api_key=API_KEY, log=log, latency=0.03, reject={"u77@example.com"}) as fake:
        settings = configure(
            # Slow enough that no sender finishes within a pause, whatever its second's burst.
            project, sendgrid_api_url=fake.url, batch_size=10, send_concurrency=4, send_rate_limit=10.0
        )
        addresses = seed(settings, 4000)
        lost: set[int] = set()
        kills = kill_at_random(project, rng, (0.2, 2.0), lambda: lost.update(batches_in(settings, "in_flight")))
        print(f"CRASH_SEED={seed_value}: {kills} kills, {len(lost)} answer(s) lost")
        assert kills >= 15, f"only {kills} kills before the send finished"

        final = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert final.returncode == 0, final.stderr

        states = delivery_states(settings)
        received = delivered_from_log(log)
        assert max(received.values()) == 1, "an address received the issue twice"
        assert {state for state, _, _ in states.values()} <= {"sent", "failed", "uncertain"}
        assert set(states) == set(addresses)
        assert batches_in(settings, "uncertain") == lost
        uncertain = {a for a, (state, _, _) in states.items() if state == "uncertain"}
        assert uncertain == emails_of_batches(settings, lost)
        sent = {a for a, (state, _, _) in states.items() if state == "sent"}
        assert sent <= set(received)
        assert set(received) - sent <= uncertain  # delivered but unrecorded: only the lost answers
        assert states["u77@example.com"][0] in ("failed", "uncertain")
        message_ids = {}
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record["delivered"]:
                message_ids.update(dict.fromkeys(record["emails"], record["message_id"]))
        assert all(states[a][1] == message_ids[a] for a in sent)

        resent = run_newsletter(*SEND, "--resend-uncertain", cwd=project, env=KEY_ENV)
        assert resent.returncode == 0, resent.stderr
    after = delivery_states(settings)
    assert {a for a, (state, _, _) in after.items() if state != "sent"} <= {"u77@example.com"}
    twice = {a for a, n in delivered_from_log(log).items() if n > 1}
    assert twice <= uncertain & set(received)


def test_a_second_sender_of_the_same_campaign_stops_with_a_clear_message(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=["hang"], hang=4) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, send_concurrency=1)
        seed(settings, 3)
        first = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        deadline = time.monotonic() + 60
        while not fake.records and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        first.wait(60)
    assert second.returncode == 1
    assert "is being sent by another process" in second.stderr
    assert first.returncode == 0
    assert Counter(fake.delivered()) == Counter(f"u{n}@example.com" for n in (1, 2, 3))
