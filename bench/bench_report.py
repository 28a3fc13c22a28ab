"""`newsletter report --last 30` over 30 issues of 100,000 recipients each: the target is under 2 s.

Builds a SQLite database through the package (so its schema and indexes are the real ones), then
fills it in bulk with sqlite3: one list of 100,000 subscribers; 30 daily campaigns carrying the
example issue's HTML, each with a delivery per subscriber; and per campaign the events SendGrid
would report, kept as the webhook keeps them (campaign_events: one row per reader and fact, so a
second open by the same reader is not kept again): a delivery for 98% of
the readers, a bounce for the rest, opens by 45% (a third of them more than once) and machine
opens by 30%, clicks by 8% (spread over the five papers and the web version, some readers on two),
spam reports and unsubscribes. Then runs the real command (a fresh process, as a user would) and
prints each run's wall-clock time and the median.

Run: python bench/bench_report.py [--quick] [--issues 30] [--recipients 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content.digest import load_digest  # noqa: E402
from newsletter.content.render import render_issue  # noqa: E402
from newsletter.report import papers_of  # noqa: E402
from testkit.projects import write_config  # noqa: E402

FIRST_DAY = date(2026, 1, 1)


def _stamp(moment: datetime) -> str:
    # As SQLAlchemy stores a DateTime on SQLite.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(folder: Path, issues: int, recipients: int) -> Path:
    (folder / "digests").mkdir()
    example = ROOT / "digests" / "2026-01-23.md"
    (folder / "digests" / example.name).write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    config = write_config(folder, digests_dir=str(folder / "digests"))
    settings = load_settings(config)
    db.connect(settings.database).dispose()  # the schema, made by the package
    html = render_issue(load_digest(settings.site, date(2026, 1, 23)), settings.site).html
    _, links = papers_of(html)
    urls = sorted(links) + [f"{settings.base_url}/2026-01-23/"]
    rng = random.Random(9)
    path = folder / "newsletter.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        created = datetime(2026, 1, 1, 6, tzinfo=timezone.utc)
        conn.execute("INSERT INTO lists (id, name, description, created_at) VALUES (1, 'daily-papers', '', ?)", (_stamp(created),))
        conn.executemany(
            "INSERT INTO subscribers (id, email, email_key, name, attributes, created_at) VALUES (?, ?, ?, NULL, '{}', ?)",
            ((n, f"u{n}@example.com", f"u{n}@example.com", _stamp(created)) for n in range(1, recipients + 1)),
        )
        conn.executemany(
            "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at) VALUES (1, ?, 'subscribed', ?, ?)",
            ((n, _stamp(created), _stamp(created)) for n in range(1, recipients + 1)),
        )
        for number in range(1, issues + 1):
            day = FIRST_DAY + timedelta(days=number - 1)
            at = datetime(day.year, day.month, day.day, 6, tzinfo=timezone.utc)
            conn.execute(
                "INSERT INTO campaigns (id, issue_date, list_id, subject, html, text, created_at, finished_at) "
                "VALUES (?, ?, 1, 's', ?, 't', ?, ?)",
                (number, day.isoformat(), html, _stamp(at), _stamp(at)),
            )
            conn.executemany(
                "INSERT INTO deliveries (campaign_id, subscriber_id, email, state, updated_at) VALUES (?, ?, ?, 'sent', ?)",
                ((number, n, f"u{n}@example.com", _stamp(at)) for n in range(1, recipients + 1)),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO campaign_events (campaign_id, subscriber_id, kind, machine_open, url, at) VALUES (?, ?, ?, ?, ?, ?)",
                _events(rng, number, recipients, urls, _stamp(at)),
            )
            leavers = rng.sample(range(1, recipients + 1), recipients // 1000)
            conn.executemany(
                "INSERT INTO events (subscriber_id, list_id, status, previous_status, source, detail, created_at) "
                "VALUES (?, 1, 'unsubscribed', 'subscribed', 'one_click', '', ?)",
                ((n, _stamp(at + timedelta(hours=2))) for n in leavers),
            )
        conn.execute("ANALYZE")
    return config


def _events(rng: random.Random, campaign: int, recipients: int, urls: list[str], at: str):
    for n in range(1, recipients + 1):
        roll = rng.random()
        if roll < 0.02:
            yield (campaign, n, "bounce", 0, "", at)
            continue
        yield (campaign, n, "delivered", 0, "", at)
        if rng.random() < 0.30:
            yield (campaign, n, "open", 1, "", at)
        if roll < 0.47:
            for _ in range(1 + (rng.random() < 0.33)):
                yield (campaign, n, "open", 0, "", at)
            if roll < 0.10:
                for _ in range(1 + (rng.random() < 0.25)):
                    yield (campaign, n, "click", 0, rng.choice(urls), at)
        if rng.random() < 0.0005:
            yield (campaign, n, "spamreport", 0, "", at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 issues of 10,000 recipients, 3 runs")
    parser.add_argument("--issues", type=int, default=30)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.issues, args.recipients, args.runs = 3, 10_000, 3

    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:
        start = time.perf_counter()
        config = build(Path(folder), args.issues, args.recipients)
        with contextlib.closing(sqlite3.connect(Path(folder) / "newsletter.db")) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM campaign_events").fetchone()[0]
        print(
            f"built {args.issues} issues x {args.recipients:,} recipients ({rows:,} events kept per reader) "
            f"in {time.perf_counter() - start:.0f}s"
        )
        command = [sys.executable, "-m", "newsletter", "--config", str(config), "report", "--last", str(args.issues)]
        env = {"PYTHONPATH": str(ROOT), "COLUMNS": "160", "PATH": "/usr/bin:/bin"}
        times = []
        for run in range(1, args.runs + 1):
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            times.append(time.perf_counter() - start)
            lines = sum(line.startswith("│ 2026-") for line in result.stdout.splitlines())
            print(f"run {run}: report --last {args.issues} in {times[-1]:.2f}s, exit {result.returncode}, {lines} issue lines")
            if result.returncode != 0 or lines != args.issues:
                print(result.stdout[-3000:], result.stderr[-3000:])
                raise SystemExit(1)
        print(result.stdout)
        median = statistics.median(times)
        print(
            f"median of {args.runs} runs: {median:.2f}s for report --last {args.issues} "
            f"({args.recipients:,} recipients each); target under 2 s: {'met' if median < 2 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
