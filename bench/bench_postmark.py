"""Sending through Postmark, against the project's fake Postmark (testkit/fake_postmark.py, its own
process) on 127.0.0.1 with 5 ms of latency on every answer.

`python -m newsletter send --yes` with provider = "postmark" to 100,000 synthetic subscribers (the
example digest's issue, made a template once and sent in /email/batchWithTemplates requests of 500
readers' links), with the default settings: recipients/s and the sender's peak RSS, medians of
--repeat runs. Target: ≥ 20,000 recipients/s. Then the same issue with "{{" in its text, which
Mustachio would read otherwise: each reader's whole copy in /email/batch requests of 500.

    python bench/bench_postmark.py              # 100,000 recipients
    python bench/bench_postmark.py --quick      # 10,000, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_send import BENCH_SETTINGS, DIGEST, subscribe, timed_send  # noqa: E402

from testkit.projects import configure  # noqa: E402
from testkit.servers import free_port, running  # noqa: E402

TOKEN = "pm-bench-token"
LATENCY = 0.005


def end_to_end(count: int, *, whole: bool = False) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `newsletter send` to `count` subscribers through Postmark;
    `whole`: of an issue that cannot be a template."""
    with tempfile.TemporaryDirectory(prefix="bench-postmark-") as tmp:
        folder, port = Path(tmp), free_port()
        (folder / "digests").mkdir(parents=True)
        digest = DIGEST.read_text(encoding="utf-8")
        if whole:
            digest = digest.replace("### 📌 요약\n", "### 📌 요약\nA template language's {{ braces }}.\n", 1)
        (folder / "digests" / DIGEST.name).write_text(digest, encoding="utf-8")
        settings = configure(
            folder, provider="postmark", postmark_api_url=f"http://127.0.0.1:{port}", **{**BENCH_SETTINGS, "batch_size": 500}
        )
        subscribe(settings, count)
        fake = [sys.executable, "-m", "testkit.fake_postmark", "--port", str(port), "--token", TOKEN, "--latency", str(LATENCY)]
        with running(fake, port):
            return timed_send(folder, settings, count, env={"POSTMARK_SERVER_TOKEN": TOKEN})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 recipients, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="runs (the median is printed)")
    args = parser.parse_args()
    count = 10_000 if args.quick else 100_000
    for label, whole in (("the issue as a template, /email/batchWithTemplates", False), ("whole copies, /email/batch", True)):
        runs = [end_to_end(count, whole=whole) for _ in range(args.repeat)]
        seconds = statistics.median(run[0] for run in runs)
        rss = statistics.median(run[1] for run in runs)
        each = ", ".join(f"{count / run[0]:,.0f}" for run in runs)
        print(
            f"Postmark send to {count:,} recipients ({label}), {LATENCY * 1000:g} ms latency, settings "
            f"{BENCH_SETTINGS} (batch_size 500): {seconds:.1f} s ({count / seconds:,.0f} recipients/s; runs {each}), "
            f"peak RSS {rss:.1f} MB   (median of {args.repeat})",
            flush=True,
        )


if __name__ == "__main__":
    main()
