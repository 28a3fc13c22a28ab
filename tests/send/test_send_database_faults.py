"""The exactly-once promise when the database or SendGrid's answers misbehave: a database locked past
its timeout at random moments, a 400 about the whole request that names personalizations, a 50 MB
error answer. Against the fake SendGrid on 127.0.0.1 and a real SQLite file held by another process
(the PostgreSQL restart is in tests/test_postgresql.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import db, send
from newsletter.errors import SendError
from testkit.fake_sendgrid import EVERY, HUGE, OUTSIDE, FakeSendGrid
from testkit.projects import API_KEY, LIST, engine_of, seed
from newsletter.wiring import send_parts

from ..send_helpers import CONTENT, DAY, KEY_ENV, delivery_states, plan_for, settings_for, start_campaign
from ..support import ROOT, run_newsletter

# Takes the database's write lock (BEGIN EXCLUSIVE) at random moments and holds it for longer than
# the sender's database_timeout, then lets go, until told to stop.
LOCKER = textwrap.dedent(
    """
    import random, sqlite3, sys, time
    path, seed, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    import os
    while not os.path.exists(stop):
        time.sleep(rng.uniform(0.05, 0.4))
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        time.sleep(rng.uniform(0.4, 1.0))
        conn.execute("COMMIT")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("seed_value", [1, 2])
def test_a_database_locked_past_its_timeout_at_random_moments_never_sends_twice(
    project: Path, seed_value: int
) -> None:
    log = project / "requests.jsonl"
    with FakeSendGrid(api_key=API_KEY, latency=0.02, log=log) as fake:
        settings = settings_for(
            project, fake.url, batch_size=20, send_concurrency=2, database_timeout=0.2
        )
        addresses = seed(settings, 400)
        stop = project / "stop-locking"
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(project / "newsletter.db"), str(seed_value), str(stop)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The campaign exists: each run below resumes it, as `newsletter send` does after a crash.
        start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
        stops: list[str] = []
        try:
            assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
            for _ in range(40):
                run = run_newsletter("send", "--date", DAY.isoformat(), "--yes", cwd=project, env=KEY_ENV)
                if run.returncode != 0:
                    stops.append(run.stderr.strip())
                if send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock()).campaign.finished_at is not None:
                    break
                if len(stops) >= 4:
                    stop.touch()  # enough faults met: let the rest of the send through
        finally:
            stop.touch()
            locker.wait(30)

    assert stops, "the locks never met the sender: the test proved nothing"
    assert all("database is locked" in message and "Traceback" not in message for message in stops), stops
    received = Counter(fake.delivered())
    assert max(received.values()) == 1, [a for a, n in received.items() if n > 1]
    states = delivery_states(settings)
    # Every batch SendGrid accepted is recorded sent or, where its answer could not be written,
    # uncertain; nobody is left pending or in flight.
    assert {states[address][0] for address in received} <= {"sent", "uncertain"}
    assert {state for state, _, _ in states.values()} <= {"sent", "uncertain"}
    assert set(states) == set(addresses)
    never_sent = [a for a in addresses if a not in received]
    assert all(states[a][0] == "uncertain" for a in never_sent)


@pytest.mark.slow
@pytest.mark.parametrize("step", [OUTSIDE, EVERY])
def test_a_400_about_the_whole_request_leaves_everyone_pending(project: Path, step: str) -> None:
    with FakeSendGrid(api_key=API_KEY, script=[step]) as fake:
        settings = settings_for(project, fake.url, batch_size=10, send_concurrency=1)
        addresses = seed(settings, 50)
        first = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))

        assert isinstance(first.error, SendError)
        assert "refused the message itself, not some of its recipients" in str(first.error)
        assert len(fake.records) == 1  # not split down to single recipients
        assert (first.counts["pending"], first.counts["failed"], first.finished) == (50, 0, False)

        second = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))  # the cause is gone: resume
    assert second.finished and second.counts["sent"] == 50
    assert Counter(fake.delivered()) == Counter(addresses)


@pytest.mark.slow
def test_a_50_mb_error_answer_is_read_stored_and_shown_clipped(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, script=[HUGE]) as fake:
        settings = settings_for(project, fake.url, batch_size=10, send_concurrency=1)
        seed(settings, 30)
        peak = project / "peak-rss-kb"
        # The real command, in a process of its own that reports its peak memory as it exits: VmHWM,
        # its own high-water mark (ru_maxrss would carry over the forking test process's size).
        reporter = project / "reporter"
        reporter.mkdir()
        (reporter / "sitecustomize.py").write_text(
            "import atexit, re\n"
            "@atexit.register\n"
            "def report() -> None:\n"
            f"    peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1]\n"
            f"    open({str(peak)!r}, 'w').write(peak)\n"
        )
        result = run_newsletter(
            "send", "--date", DAY.isoformat(), "--list", LIST, "--yes",
            cwd=project, env={**KEY_ENV, "PYTHONPATH": f"{reporter}{os.pathsep}{ROOT}"},
        )  # fmt: skip
    assert result.returncode == 1
    assert "refused the message itself" in result.stderr and "more characters" in result.stderr
    assert len(result.stderr) < 5_000 and "Traceback" not in result.stderr
    assert int(peak.read_text()) < 200 * 1024  # kB: far from the 50 MB answer read whole, let alone stored
    with engine_of(settings).connect() as conn:
        longest = conn.execute(select(func.max(func.length(db.batches.c.error)))).scalar_one()
        pending = conn.execute(select(func.count()).where(db.deliveries.c.state == "pending")).scalar_one()
    assert longest < 5_000 and pending == 30
