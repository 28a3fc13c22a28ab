"""One-click unsubscribes per second against the real `newsletter serve` process on loopback.

Each run posts the exact RFC 8058 request for every member of a fresh list (5,000 by default) from
several concurrent httpx clients, then counts the unsubscribed memberships and the one_click log
entries in the database: every request must have landed. Prints requests/s per run and the median
of the runs (the target is over 500/s, with none lost).

Run: python bench/bench_unsubscribe.py [--subscribers 5000] [--runs 3] [--clients 8] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from newsletter import db  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.tokens import UnsubscribeLinks  # noqa: E402
from testkit.projects import (  # noqa: E402
    add_list,
    add_subscribers,
    count_status,
    engine_of,
    write_config,
)
from testkit.servers import serving  # noqa: E402

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def client_worker(urls: list[str], concurrency: int) -> list[int]:
    """One httpx client posting its share of the links, `concurrency` at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        queue = iter(urls)

        async def lane() -> None:
            for url in queue:
                statuses.append((await client.post(url, content=ONE_CLICK, headers=FORM)).status_code)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return statuses


async def post_all(urls: list[str], clients: int, concurrency: int) -> list[int]:
    shares = [urls[n::clients] for n in range(clients)]
    results = await asyncio.gather(*(client_worker(share, concurrency) for share in shares))
    return [status for statuses in results for status in statuses]


def logged_one_clicks(settings: Settings, list_id: int) -> int:
    e = db.events.c
    with engine_of(settings).connect() as conn:
        return conn.execute(
            select(func.count()).where(e.list_id == list_id, e.source == "one_click")
        ).scalar_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-unsubscribe-") as folder:
        config = write_config(Path(folder))
        settings = load_settings(config)
        links = UnsubscribeLinks(settings.links)
        emails = [f"reader{n}@example.com" for n in range(args.subscribers)]
        list_ids = [add_list(settings, f"run-{run}") for run in range(args.runs)]
        member_ids = [add_subscribers(settings, list_id, emails) for list_id in list_ids]

        rates = []
        with serving(config) as url:
            for run, (list_id, ids) in enumerate(zip(list_ids, member_ids, strict=True), start=1):
                urls = [
                    f"{url}/unsubscribe/{links.token(list_id, i, email)}"
                    for i, email in zip(ids, emails, strict=True)
                ]
                start = time.perf_counter()
                statuses = asyncio.run(post_all(urls, args.clients, args.concurrency))
                elapsed = time.perf_counter() - start
                unsubscribed = count_status(settings, list_id, db.UNSUBSCRIBED)
                logged = logged_one_clicks(settings, list_id)
                ok = statuses.count(200)
                rates.append(len(urls) / elapsed)
                print(
                    f"run {run}: {len(urls)} one-click POSTs in {elapsed:.2f}s = {rates[-1]:.0f} req/s; "
                    f"200 OK: {ok}; unsubscribed in the database: {unsubscribed}; one_click events: {logged}"
                    + ("" if ok == unsubscribed == logged == len(urls) else "  <-- LOST UNSUBSCRIBES")
                )
        print(
            f"median of {args.runs} runs: {statistics.median(rates):.0f} one-click unsubscribes/s "
            f"({args.clients} clients x {args.concurrency} in flight, {args.subscribers} distinct subscribers each)"
        )


if __name__ == "__main__":
    main()
