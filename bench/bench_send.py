"""Sending speed and memory, against the project's fake SendGrid on 127.0.0.1.

1. End to end: `python -m newsletter send --yes` to 100,000 and 1,000,000 synthetic subscribers
   (inserted with one SQL statement each): wall time and the sender's peak RSS. Targets: 1,000,000
   in under 90 s; peak RSS under 300 MB and about the same for both sizes.
2. The naive way: one request per recipient through the `sendgrid` package's SendGridAPIClient,
   against our batched sender, on 10,000 recipients with 5 ms of server latency. Target: ≥ 100×.
3. SMTP: `newsletter send --yes` with provider = "smtp" to 10,000 readers, one message each, through
   aiosmtpd on 127.0.0.1 (testkit/fake_smtp.py, its own process; plain, no login): messages/s and the
   sender's peak RSS. Target: ≥ 200 messages/s. Run with the default settings (send_rate_limit paces
   batches, so it caps SMTP at that many messages/s) and with send_rate_limit raised out of the way.

    python bench/bench_send.py                 # the full run
    python bench/bench_send.py --quick         # small sizes, for a smoke run
    python bench/bench_send.py --smtp-only     # only the SMTP case
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sendgrid import SendGridAPIClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from newsletter import db, send  # noqa: E402
from newsletter.config import Settings  # noqa: E402
from newsletter.providers.sendgrid import SendGrid  # noqa: E402
from newsletter.send import addressing  # noqa: E402
from newsletter.tokens import UnsubscribeLinks  # noqa: E402
from testkit.projects import API_KEY, LIST, configure, engine_of  # noqa: E402
from testkit.servers import free_port, running  # noqa: E402
from newsletter.wiring import send_parts

DAY = date(2026, 1, 23)
DIGEST = ROOT / "digests" / "2026-01-23.md"
# The defaults, read from Settings and written out (testkit.projects.configure would otherwise
# raise the rate limit for tests): the figures are what a user gets.
BENCH_SETTINGS = {
    name: Settings.model_fields[name].default for name in ("send_rate_limit", "send_concurrency", "batch_size")
}


def project(folder: Path, fake_url: str) -> Settings:
    (folder / "digests").mkdir(parents=True)
    (folder / "digests" / DIGEST.name).write_bytes(DIGEST.read_bytes())
    return configure(folder, sendgrid_api_url=fake_url, sendgrid_api_key=API_KEY, **BENCH_SETTINGS)


def subscribe(settings: Settings, count: int) -> None:
    """`count` subscribed members, generated inside SQLite: nothing held in Python."""
    now = settings.clock().strftime("%Y-%m-%d %H:%M:%S.%f")
    with engine_of(settings).begin() as conn:
        conn.execute(db.lists.insert().values(id=1, name=LIST, description="", created_at=settings.clock()))
        numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, email_key, name, attributes, created_at) "
                + numbers
                + "SELECT i, 'reader' || i || '@example.com', 'reader' || i || '@example.com', "
                "'Reader ' || i, '{}', :now FROM n"
            ),
            {"count": count, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at) "
                + numbers
                + "SELECT 1, i, 'subscribed', :now, :now FROM n"
            ),
            {"count": count, "now": now},
        )


def fake_server(port: int, *extra: str):
    return running([sys.executable, "-m", "testkit.fake_sendgrid", "--port", str(port), "--api-key", API_KEY, *extra], port)


def end_to_end(count: int) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `newsletter send` to `count` subscribers."""
    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        port = free_port()
        settings = project(Path(tmp), f"http://127.0.0.1:{port}")
        subscribe(settings, count)
        with fake_server(port):
            return timed_send(Path(tmp), settings, count)


def smtp_end_to_end(count: int, **overrides: object) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `newsletter send` to `count` subscribers through SMTP."""
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        folder, port = Path(tmp), free_port()
        (folder / "digests").mkdir(parents=True)
        (folder / "digests" / DIGEST.name).write_bytes(DIGEST.read_bytes())
        values = {
            "provider": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
            **BENCH_SETTINGS, **overrides,
        }
        settings = configure(folder, **values)
        subscribe(settings, count)
        with running([sys.executable, "-m", "testkit.fake_smtp", "--port", str(port)], port):
            return timed_send(folder, settings, count)


def timed_send(folder: Path, settings: Settings, count: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run `newsletter send --yes` in `folder` (`env` added to its environment): its seconds and
    peak RSS (MB); all `count` sent. The package's bytecode is compiled first, as pip compiles an
    installed tool's: where PYTHONDONTWRITEBYTECODE is set (this machine), every run would otherwise
    compile the package from source."""
    compileall.compile_dir(ROOT / "newsletter", quiet=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.perf_counter()
    sender = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", "--date", DAY.isoformat(), "--yes"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # wait4 gives this one child's own peak RSS (KiB on Linux).
    _, status, usage = os.wait4(sender.pid, 0)
    seconds = time.perf_counter() - started
    sender.returncode = os.waitstatus_to_exitcode(status)
    if sender.returncode != 0:
        raise SystemExit(f"the send failed: {sender.stderr.read().decode()[-2000:]}")
    with engine_of(settings).connect() as conn:
        sent = conn.execute(text("SELECT count(*) FROM deliveries WHERE state = 'sent'")).scalar()
    assert sent == count, f"{sent} of {count} sent"
    return seconds, usage.ru_maxrss / 1024


def smtp_figures(count: int, repeat: int) -> None:
    print("SMTP: aiosmtpd on 127.0.0.1 in its own process, plain, no login; one message per reader")
    for label, overrides in (
        (f"default settings (send_rate_limit {BENCH_SETTINGS['send_rate_limit']:g}/s)", {}),
        ("send_rate_limit 10000/s", {"send_rate_limit": 10_000.0}),
    ):
        runs = [smtp_end_to_end(count, **overrides) for _ in range(repeat)]
        seconds = statistics.median(run[0] for run in runs)
        rss = statistics.median(run[1] for run in runs)
        each = ", ".join(f"{count / run[0]:,.0f}" for run in runs)
        print(
            f"SMTP send to {count:,} readers, {label}: {seconds:6.1f} s  ({count / seconds:6,.0f} messages/s; "
            f"runs {each}), peak RSS {rss:6.1f} MB   (median of {repeat})",
            flush=True,
        )


def naive_versus_batched(count: int, latency: float) -> tuple[float, float]:
    """Seconds for `count` recipients: one SendGridAPIClient request each, then our sender."""
    with tempfile.TemporaryDirectory(prefix="bench-naive-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = project(Path(tmp), url)
        subscribe(settings, count)
        plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)  # rendered once, outside both timings
        builder = addressing.Addressing(
            settings.sender, plan.content, mailing_list=plan.mailing_list, campaign_id=1,
            links=UnsubscribeLinks(settings.links), provider=SendGrid(settings.delivery, connect=False),
        )  # fmt: skip
        with fake_server(port, "--latency", str(latency)):
            client = SendGridAPIClient(api_key=API_KEY, host=url)
            started = time.perf_counter()
            for number in range(1, count + 1):
                reader = addressing.Reader(number, number, f"reader{number}@example.com", f"Reader {number}")
                client.client.mail.send.post(request_body=builder.prepare([reader]))
            naive = time.perf_counter() - started

            started = time.perf_counter()
            report = send.send_campaign(engine_of(settings), send_parts(settings), plan)
            batched = time.perf_counter() - started
        assert report.counts["sent"] == count and report.finished
        return naive, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (the median is printed)")
    parser.add_argument("--smtp-only", action="store_true", help="only the SMTP case")
    args = parser.parse_args()
    smtp_count = 1_000 if args.quick else 10_000
    if args.smtp_only:
        smtp_figures(smtp_count, args.repeat)
        return
    sizes = [2_000, 20_000] if args.quick else [100_000, 1_000_000]
    naive_count = 300 if args.quick else 10_000

    print(f"settings: {BENCH_SETTINGS}; fake SendGrid on 127.0.0.1, no latency")
    figures = {}
    for size in sizes:
        runs = [end_to_end(size) for _ in range(args.repeat)]
        seconds = statistics.median(run[0] for run in runs)
        rss = statistics.median(run[1] for run in runs)
        figures[size] = (seconds, rss)
        print(
            f"send to {size:>9,} recipients: {seconds:7.1f} s  ({size / seconds:9,.0f} recipients/s), "
            f"peak RSS {rss:6.1f} MB   (median of {args.repeat})",
            flush=True,
        )
    small, large = sizes
    print(f"peak RSS {large:,} / {small:,}: {figures[large][1] / figures[small][1]:.2f}×")

    naive, batched = naive_versus_batched(naive_count, latency=0.005)
    print(
        f"{naive_count:,} recipients with 5 ms server latency: one SendGridAPIClient request each "
        f"{naive:.1f} s, batched {batched:.2f} s → {naive / batched:,.0f}× faster"
    )
    smtp_figures(smtp_count, args.repeat)


if __name__ == "__main__":
    main()
