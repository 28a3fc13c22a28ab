"""Stopping a send with SIGINT or SIGTERM (systemd stops the daily run with SIGINT): the real CLI runs
as a process, the signal comes while a request is out at the fake provider, which answers slowly. The
send takes no new batch, waits for the answers and records them, and exits 7 (`run --json` prints its
line); the same command then sends the rest, nobody twice. A second signal stops it at once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter import daily, db
from newsletter.config import Settings
from testkit.fake_sendgrid import FakeSendGrid
from testkit.fake_smtp import FakeSMTP
from testkit.projects import API_KEY, configure, engine_of, seed

from .send_helpers import KEY_ENV, SEND, delivery_states
from .support import run_newsletter, start_newsletter

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

NOW = "2026-01-22T20:00:00Z"  # 05:00 on the 23rd in Seoul: the run's day is the example digest's
RUN = ["run", "--json"]
LATENCY = 2.5  # seconds the provider takes to answer: the signal comes while a request is out


def signal_at(request: int, sender: dict[str, subprocess.Popen[str]], number: signal.Signals, again_after: float | None = None):
    """The fake provider's hook: signal the sender once the `request`th request has arrived (before
    its answer leaves); with `again_after`, a second signal that many seconds later."""

    def hook(record: Any) -> None:
        if record.seq == request:
            sender["process"].send_signal(number)
            if again_after is not None:
                time.sleep(again_after)
                sender["process"].send_signal(number)

    return hook


def states(settings: Settings) -> Counter[str]:
    return Counter(state for state, _, _ in delivery_states(settings).values())


def batch_states(settings: Settings) -> Counter[str]:
    with engine_of(settings).connect() as conn:
        return Counter(conn.execute(select(db.batches.c.state)).scalars())


def json_line(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_daily_runs_send_records_the_answers_out_and_the_run_resumes(
    project: Path, number: signal.Signals
) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}
    with FakeSendGrid(api_key=API_KEY, latency=LATENCY, on_request=signal_at(2, sender, number)) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, now=NOW, batch_size=100, send_concurrency=2)
        readers = seed(settings, 450)
        sender["process"] = start_newsletter(*RUN, cwd=project, env=KEY_ENV)
        out, err = sender["process"].communicate(timeout=120)

        assert sender["process"].returncode == daily.STOPPED == 7, err
        # The two requests out were answered and recorded; no other left.
        assert len(fake.records) == 2
        assert states(settings) == {"sent": 200, "pending": 250}
        assert sorted(fake.delivered()) == sorted(email for email, (state, _, _) in delivery_states(settings).items() if state == "sent")
        assert batch_states(settings) == {"sent": 2}
        report = json_line(out)
        assert report["status"] == 7 and report["date"] == "2026-01-23"
        assert f"stopped by {number.name}" in report["error"] and "newsletter run --date 2026-01-23" in report["error"]
        steps = {step["step"]: step for step in report["steps"]}
        assert steps["send"]["outcome"] == "failed" and steps["send"]["counts"]["uncertain"] == 0
        assert steps["send"]["lists"][0]["detail"].startswith(f"stopped by {number.name}: 200 sent, 250 pending")
        assert [steps[name]["outcome"] for name in ("weekly", "sync", "purge")] == ["skipped"] * 3
        assert any("newsletter run --date 2026-01-23 resumes" in line for line in errors_in(err))

        again = run_newsletter(*RUN, cwd=project, env=KEY_ENV)

        assert again.returncode == 0, again.stderr
        assert json_line(again.stdout)["status"] == 0
    assert states(settings) == {"sent": 450}
    assert Counter(fake.delivered()) == Counter(readers)  # each once


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_send_over_smtp_records_the_messages_out_and_the_send_resumes(
    project: Path, number: signal.Signals
) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}
    with FakeSMTP(latency=LATENCY, on_message=signal_at(2, sender, number)) as fake:
        settings = configure(
            project, provider="smtp", smtp_host="127.0.0.1", smtp_port=fake.port, smtp_security="none", send_concurrency=2
        )
        readers = seed(settings, 6)
        sender["process"] = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        _out, err = sender["process"].communicate(timeout=120)

        assert sender["process"].returncode == 7, err
        assert len(fake.received) == 2 and states(settings) == {"sent": 2, "pending": 4}
        [error] = errors_in(err)
        assert f"stopped by {number.name}" in error and "run the same command again to resume" in error

        again = run_newsletter(*SEND, cwd=project, env=KEY_ENV)

        assert again.returncode == 0, again.stderr
    assert states(settings) == {"sent": 6}
    assert Counter(fake.delivered()) == Counter(readers)


def test_a_provider_silent_past_read_timeout_leaves_its_readers_uncertain_and_the_run_exits_6(project: Path) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}
    hook = signal_at(1, sender, signal.SIGTERM)
    with FakeSendGrid(api_key=API_KEY, script=["hang"], hang=20, on_request=hook) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, now=NOW, batch_size=2, send_concurrency=1, read_timeout=2)
        seed(settings, 5)
        sender["process"] = start_newsletter(*RUN, cwd=project, env=KEY_ENV)
        started = time.monotonic()
        out, err = sender["process"].communicate(timeout=120)

        assert time.monotonic() - started < 15  # read_timeout, not the provider's 20 s
        assert sender["process"].returncode == 6, err  # uncertain comes before stopped
        assert states(settings) == {"uncertain": 2, "pending": 3}
        report = json_line(out)
        assert report["status"] == 6 and "stopped by SIGTERM" in report["error"]

        again = run_newsletter(*RUN, cwd=project, env=KEY_ENV)

        assert again.returncode == 6, again.stderr  # the uncertain readers still are
    assert states(settings) == {"uncertain": 2, "sent": 3}
    assert max(Counter(fake.delivered()).values()) == 1


def test_a_second_signal_stops_at_once_leaving_the_requests_out_uncertain(project: Path) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}
    hook = signal_at(1, sender, signal.SIGINT, again_after=0.5)
    with FakeSendGrid(api_key=API_KEY, latency=10, on_request=hook) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, batch_size=2, send_concurrency=1)
        seed(settings, 5)
        sender["process"] = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        started = time.monotonic()
        sender["process"].communicate(timeout=120)

        assert time.monotonic() - started < 8  # it did not wait for the answer
        assert sender["process"].returncode in (-signal.SIGINT, 128 + signal.SIGINT)
        assert states(settings) == {"uncertain": 2, "pending": 3}

        again = run_newsletter(*SEND, cwd=project, env=KEY_ENV)

        assert again.returncode == 0 and "1 batch(es) are uncertain" in again.stderr
    assert states(settings) == {"uncertain": 2, "sent": 3}
    assert max(Counter(fake.delivered()).values()) == 1
