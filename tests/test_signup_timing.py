"""The sign-up form tells nobody, by its timing, who is on a list: the probe an adversarial run used
against the real `newsletter serve`, over 200 addresses, half of them on the list.

The probe signs an address up twice and then times the next request: before the sign-up queue, an
address not on the list got a second confirmation mail whose work ran right after the answer and
slowed that request (114 of 120 addresses classified). It also timed the first answer itself. Here
a threshold classifier, fitted on half the addresses and scored on the other half (and the other way
round, over several splits), on times taken relative to their neighbours', must do no better than
60% on either figure, while every mail the
sign-ups called for still goes out."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import httpx
import pytest

from newsletter import db
from newsletter.config import load_settings
from newsletter.subscribers import create_list
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, add_subscribers, engine_of, write_config
from testkit.servers import free_port, serving

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

ADDRESSES = 200
SPLITS = 20
NEIGHBOURS = 5

Sample = tuple[bool, float]  # (on the list, seconds)


def threshold_accuracy(train: list[Sample], test: list[Sample]) -> float:
    """The share of `test` classified right by the best threshold on `train` (either direction)."""

    def correct(samples: list[Sample], cut: float, slower_means_on: bool) -> int:
        return sum((value > cut) == (on if slower_means_on else not on) for on, value in samples)

    cut, direction = max(
        ((value, direction) for _, value in train for direction in (True, False)),
        key=lambda candidate: correct(train, *candidate),
    )
    return correct(test, cut, direction) / len(test)


def detrended(samples: list[Sample]) -> list[Sample]:
    """Each time over the median of its neighbours in probing order, as an attacker on a shared
    machine would take it: the machine's load drifts, and a slow stretch is not the address's doing."""
    times = [value for _, value in samples]
    return [
        (on, value / statistics.median(times[max(0, n - NEIGHBOURS) : n + NEIGHBOURS + 1]))
        for n, (on, value) in enumerate(samples)
    ]


def cross_validated(samples: list[Sample]) -> float:
    rng = random.Random(15)
    scores = []
    for _ in range(SPLITS):
        shuffled = rng.sample(samples, len(samples))
        half = len(shuffled) // 2
        first, second = shuffled[:half], shuffled[half:]
        scores += [threshold_accuracy(first, second), threshold_accuracy(second, first)]
    return statistics.fmean(scores)


def test_a_timing_probe_classifies_no_better_than_chance(tmp_path: Path) -> None:
    port = free_port()
    with FakeSendGrid(api_key=API_KEY) as fake:
        config = write_config(
            tmp_path,
            base_url=f"http://127.0.0.1:{port}",
            sendgrid_api_url=fake.url,
            sendgrid_api_key=API_KEY,
            send_rate_limit=1000.0,
            signup_rate_per_hour=100_000,
        )
        settings = load_settings(config)
        with engine_of(settings).begin() as conn:
            list_id = create_list(conn, "papers", now=settings.clock()).id
        present = [f"on.list{n}@example.com" for n in range(ADDRESSES // 2)]
        absent = [f"not.on{n}@example.com" for n in range(ADDRESSES // 2)]
        add_subscribers(settings, list_id, present)
        probes = random.Random(2026).sample(present + absent, ADDRESSES)
        first_answers: list[Sample] = []
        next_requests: list[Sample] = []
        with serving(config, port=port) as url, httpx.Client(timeout=30) as http:
            form_url = f"{url}/subscribe/papers"
            for _ in range(30):  # warm up: the first requests pay for imports and caches
                http.get(form_url)
            for email in probes:
                started = time.perf_counter()
                assert http.post(form_url, data={"email": email}).status_code == 200
                first_answers.append((email in present, time.perf_counter() - started))
                assert http.post(form_url, data={"email": email}).status_code == 200
                started = time.perf_counter()
                http.get(form_url)
                next_requests.append((email in present, time.perf_counter() - started))
            # Every mail the sign-ups called for: two confirmations to each new address, one notice
            # to each reader already on the list.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(fake.delivered()) < ADDRESSES // 2 * 3:
                time.sleep(0.1)
    assert len(fake.delivered()) == ADDRESSES // 2 * 3
    with engine_of(settings).connect() as conn:
        assert conn.execute(db.signup_requests.select()).first() is None
    for name, samples in (("the first answer", first_answers), ("the next request", next_requests)):
        accuracy = cross_validated(detrended(samples))
        assert accuracy <= 0.60, f"{name}'s time tells who is on the list: {accuracy:.0%} classified"
