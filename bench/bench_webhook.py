"""SendGrid's signed Event Webhook against the real `newsletter serve` on loopback: 1,000,000 events
in POSTs of 1,000 (the target is at least 5,000 events/s), every event stored once, and a replay of
all of them changing nothing.

One campaign to 100,000 subscribers (fewer with --quick); each reader gets about ten events of the
kinds SendGrid sends (processed, delivered, opens with machine opens among them, clicks with their
links, a few bounces, spam reports and unsubscribes), each with its own sg_event_id, shuffled into
requests of 1,000 and signed with a P-256 key exactly as SendGrid signs. Several requests are in
flight at once. After the first pass the database must hold every event id once, the per-campaign
counts must add up to the events sent, and campaign_events must hold one row per distinct fact the
report counts (reader, kind, machine open, link); after the replay all of it must be unchanged.

Run: python bench/bench_webhook.py [--quick] [--events 1000000] [--per-post 1000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import Integer, func, select  # noqa: E402

from newsletter import db  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.providers.sendgrid.events import KINDS  # noqa: E402
from newsletter.webhook import PER_READER  # noqa: E402
from testkit.projects import engine_of, seed, signed_headers, webhook_key, write_config  # noqa: E402
from testkit.servers import serving  # noqa: E402

PAPERS = [f"https://huggingface.co/papers/2601.{15000 + n}" for n in range(5)]


def plan(events: int, readers: int) -> list[tuple[int, str, int]]:
    """(reader, kind, variant) for every event, shuffled: about ten per reader."""
    rng = random.Random(5)
    per_reader = ["processed", "delivered", "open", "open", "open", "open", "click", "click", "deferred", "open"]
    out = []
    for n in range(events):
        reader = 1 + n % readers
        kind = per_reader[(n // readers) % len(per_reader)]
        roll = rng.random()
        if roll < 0.003:
            kind = "bounce"
        elif roll < 0.004:
            kind = "spamreport"
        elif roll < 0.005:
            kind = "group_unsubscribe"
        out.append((reader, kind, rng.randrange(1 << 30)))
    rng.shuffle(out)
    return out


def body_of(events: list[tuple[int, str, int]], start: int, campaign_id: int, list_id: int) -> bytes:
    items = []
    for offset, (reader, kind, variant) in enumerate(events):
        item = {
            "email": f"u{reader}@example.com",
            "event": kind,
            "sg_event_id": f"ev-{start + offset:09d}",
            "timestamp": 1769140800 + variant % 86400,
            "campaign_id": str(campaign_id),
            "subscriber_id": str(reader),
            "list_id": str(list_id),
            "sg_message_id": f"m{reader}.filter",
        }
        if kind == "open":
            item["sg_machine_open"] = variant % 3 == 0
            item["useragent"] = "Mozilla/5.0"
        elif kind == "click":
            item["url"] = PAPERS[variant % len(PAPERS)]
        elif kind == "bounce":
            item["type"], item["reason"] = "bounce", "550 5.1.1 user unknown"
        items.append(item)
    return json.dumps(items).encode()


def fact(reader: int, kind: str, variant: int) -> tuple:
    """What campaign_events keeps of an event (body_of's machine opens and links): one row each,
    under the neutral kind SendGrid's name maps to (both unsubscribes are one)."""
    return (
        reader,
        KINDS[kind],
        kind == "open" and variant % 3 == 0,
        PAPERS[variant % len(PAPERS)] if kind == "click" else "",
    )


async def post_all(url: str, key: object, events: list, per_post: int, concurrency: int, campaign_id: int, list_id: int) -> list[float]:
    """POSTs every event in requests of `per_post`; returns each request's seconds."""
    starts = iter(range(0, len(events), per_post))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def lane() -> None:
            for start in starts:
                body = body_of(events[start : start + per_post], start, campaign_id, list_id)
                began = time.perf_counter()
                response = await client.post(url, content=body, headers=signed_headers(key, body))
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise SystemExit(f"POST of events {start}… answered {response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies


def state(settings: Settings, campaign_id: int) -> tuple[int, int, int, tuple]:
    """(event ids kept, sum of per-campaign counts, campaign_events rows, a digest of those rows)."""
    e = db.campaign_events.c
    with engine_of(settings).connect() as conn:
        ids = conn.execute(select(func.count()).select_from(db.webhook_events)).scalar_one()
        counted = conn.execute(
            select(func.coalesce(func.sum(db.campaign_stats.c.count), 0)).where(db.campaign_stats.c.campaign_id == campaign_id)
        ).scalar_one()
        rows, readers, machine = conn.execute(
            select(func.count(), func.sum(e.subscriber_id), func.sum(e.machine_open.cast(Integer)))
        ).one()
    return ids, counted, rows, (readers, machine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events to 2,000 readers")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--per-post", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = parser.parse_args()
    if args.quick:
        args.events, args.readers = 20_000, 2_000

    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as folder:
        key, public_key = webhook_key()
        config = write_config(Path(folder), sendgrid_webhook_public_key=public_key)
        settings = load_settings(config)
        seed(settings, args.readers)
        with engine_of(settings).begin() as conn:
            list_id = conn.execute(select(db.lists.c.id)).scalar_one()
            campaign_id = conn.execute(
                db.campaigns.insert().values(
                    issue_date="2026-01-23", list_id=list_id, subject="s", html="", text="", created_at=settings.clock()
                )
            ).inserted_primary_key[0]
            # Every reader was sent the campaign: only a reader it had is counted for it.
            conn.execute(
                db.deliveries.insert(),
                [
                    {"campaign_id": campaign_id, "subscriber_id": n, "email": f"u{n}@example.com",
                     "state": db.SENT, "updated_at": settings.clock()}
                    for n in range(1, args.readers + 1)
                ],
            )
        events = plan(args.events, args.readers)
        kept = len({fact(*event) for event in events if KINDS[event[1]] in PER_READER})
        with serving(config) as url:
            hook = f"{url}/webhooks/sendgrid"
            rates = {}
            for label in ("first pass", "replay"):
                start = time.perf_counter()
                latencies = asyncio.run(post_all(hook, key, events, args.per_post, args.concurrency, campaign_id, list_id))
                elapsed = time.perf_counter() - start
                rates[label] = len(events) / elapsed
                now = state(settings, campaign_id)
                if label == "first pass":
                    first = now
                ok = now[:3] == (len(events), len(events), kept) and now == first
                print(
                    f"{label}: {len(events):,} events in {len(latencies):,} POSTs in {elapsed:.1f}s = "
                    f"{rates[label]:,.0f} events/s; POST median {statistics.median(latencies) * 1000:.0f} ms, "
                    f"p95 {sorted(latencies)[int(len(latencies) * 0.95)] * 1000:.0f} ms; stored: {now[0]:,} event ids, "
                    f"{now[1]:,} counted, {now[2]:,} per-reader rows (expected {kept:,})"
                    + ("" if ok else "  <-- WRONG")
                )
        print(
            f"{rates['first pass']:,.0f} events/s new, {rates['replay']:,.0f} events/s replayed "
            f"({args.per_post} per POST, {args.concurrency} in flight); target at least 5,000/s: "
            f"{'met' if rates['first pass'] >= 5000 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
