"""Sign-ups and confirmations per second against the real `newsletter serve` process on loopback,
with the project's fake SendGrid receiving the mails.

Each run posts the sign-up form for 1,000 new addresses (each from its own client address, as a
reverse proxy would pass it on) from several concurrent httpx clients, waits for the 1,000
confirmation mails, then posts a confirmation link for each and waits for the 1,000 welcome mails.
Prints sign-ups/s and confirmations/s (answers, the target is at least 200/s each), how long until
the last mail arrived, and checks from the fake's log that every address got exactly one
confirmation and then one welcome. The fake runs as a process of its own, as SendGrid would be; the
links are made with the project's key (the mails' own links are read by tests/test_signup.py).

Run: python bench/bench_signup.py [--readers 1000] [--runs 3] [--clients 8] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.subscribers import create_list  # noqa: E402
from newsletter.tokens import ConfirmLinks  # noqa: E402
from testkit.projects import API_KEY, engine_of, write_config  # noqa: E402
from testkit.servers import free_port, running  # noqa: E402


async def post_all(requests: list[tuple[str, dict[str, str], dict[str, str]]], clients: int, concurrency: int) -> list[int]:
    """POST each (url, form, headers), from `clients` clients with `concurrency` in flight each."""

    async def client_worker(share: list[tuple[str, dict[str, str], dict[str, str]]]) -> list[int]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            queue = iter(share)

            async def lane() -> None:
                for url, form, headers in queue:
                    statuses.append((await client.post(url, data=form, headers=headers)).status_code)

            await asyncio.gather(*(lane() for _ in range(concurrency)))
        return statuses

    results = await asyncio.gather(*(client_worker(requests[n::clients]) for n in range(clients)))
    return [status for statuses in results for status in statuses]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delivered(log: Path) -> Counter[str]:
    """Mails the fake delivered, per address, from its log (one JSON line per request)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(email for line in lines if (record := json.loads(line))["delivered"] for email in record["emails"])


def wait_for_mails(log: Path, count: int, timeout: float = 120) -> float:
    """Seconds until the fake has delivered `count` mails in all (from now)."""
    start = time.perf_counter()
    while sum(delivered(log).values()) < count and time.perf_counter() - start < timeout:
        time.sleep(0.05)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per client")
    args = parser.parse_args()

    signups, confirmations, cpu = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-signup-") as folder:
        port, fake_port, log = free_port(), free_port(), Path(folder) / "sendgrid.jsonl"
        config = write_config(
            Path(folder),
            base_url=f"http://127.0.0.1:{port}",
            sendgrid_api_url=f"http://127.0.0.1:{fake_port}",
            sendgrid_api_key=API_KEY,
            send_rate_limit=10_000.0,  # the provider's limit, far above what this posts
        )
        settings = load_settings(config)
        links = ConfirmLinks(settings.links)
        with engine_of(settings).begin() as conn:
            list_ids = [create_list(conn, f"run-{run}", now=settings.clock()).id for run in range(args.runs)]
        fake = [sys.executable, "-m", "testkit.fake_sendgrid", "--port", str(fake_port), "--api-key", API_KEY, "--log", str(log)]
        serve = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with running(fake, fake_port), running(serve, port) as server:
            for run, list_id in enumerate(list_ids):
                before = sum(delivered(log).values())
                emails = [f"run{run}.reader{n}@example.com" for n in range(args.readers)]
                forms = [
                    (f"{url}/subscribe/run-{run}", {"email": email, "frequency": "daily"},
                     {"X-Forwarded-For": f"10.{run}.{n // 250}.{n % 250}"})
                    for n, email in enumerate(emails)
                ]  # fmt: skip
                start, used = time.perf_counter(), cpu_seconds(server.pid)
                statuses = asyncio.run(post_all(forms, args.clients, args.concurrency))
                answered = time.perf_counter() - start
                mailed = answered + wait_for_mails(log, before + len(emails))
                signup_cpu = (cpu_seconds(server.pid) - used) / len(emails)
                once = delivered(log)
                with engine_of(settings).connect() as conn:
                    members = conn.execute(
                        select(db.subscribers.c.id, db.subscribers.c.email)
                        .join(db.memberships)
                        .where(db.memberships.c.list_id == list_id)
                    ).all()
                now = settings.clock()
                confirm = [(f"{url}/confirm/{links.token(list_id, sid, email, now)}", {"confirm": "yes"}, {}) for sid, email in members]
                start, used = time.perf_counter(), cpu_seconds(server.pid)
                confirmed = asyncio.run(post_all(confirm, args.clients, args.concurrency))
                confirming = time.perf_counter() - start
                welcomed = confirming + wait_for_mails(log, before + 2 * len(emails))
                confirm_cpu = (cpu_seconds(server.pid) - used) / len(confirm)
                cpu.append((signup_cpu, confirm_cpu))
                twice = delivered(log)
                signups.append(len(emails) / answered)
                confirmations.append(len(confirm) / confirming)
                exact = (
                    statuses.count(200) == confirmed.count(200) == len(members) == len(emails)
                    and [once[email] for email in emails] == [1] * len(emails)
                    and [twice[email] for email in emails] == [2] * len(emails)
                )
                print(
                    f"run {run + 1}: {len(emails)} sign-ups answered in {answered:.2f}s = {signups[-1]:.0f}/s "
                    f"(last confirmation mail at {mailed:.2f}s); {len(confirm)} confirmations answered in "
                    f"{confirming:.2f}s = {confirmations[-1]:.0f}/s (last welcome at {welcomed:.2f}s); "
                    f"one confirmation, then one welcome, per address: {'yes' if exact else 'NO  <-- LOST OR DUPLICATED'}; "
                    f"the server's CPU per sign-up {signup_cpu * 1000:.1f} ms, per confirmation {confirm_cpu * 1000:.1f} ms "
                    "(its mail included)"
                )
    print(
        f"median of {args.runs} runs: {statistics.median(signups):.0f} sign-ups/s, "
        f"{statistics.median(confirmations):.0f} confirmations/s "
        f"({args.clients} clients x {args.concurrency} in flight, {args.readers} readers each); the server's "
        f"CPU {statistics.median(c[0] for c in cpu) * 1000:.1f} ms per sign-up and "
        f"{statistics.median(c[1] for c in cpu) * 1000:.1f} ms per confirmation, mails included: the client, "
        "the fake provider and the server share this machine's cores"
    )


if __name__ == "__main__":
    main()
