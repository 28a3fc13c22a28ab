"""`newsletter generate` against a fake Hugging Face API and a fake OpenAI-compatible model that takes
`--latency` seconds to answer each paper: the wall time of a day's digest at the default concurrency
(the target: 20 papers in at most 12 s with 2 s answers, where one at a time would take 40 s), and the
model calls of a second run with --force (the target: none, and the same bytes).

Each run is a fresh project and database; the CLI runs as a user runs it.

Run: python bench/bench_generate.py [--papers 20] [--latency 2] [--runs 3]
"""

from __future__ import annotations

import argparse
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

from testkit.fake_huggingface import FakeHuggingFace, make_papers  # noqa: E402
from testkit.fake_openai import API_KEY, FakeOpenAI  # noqa: E402
from testkit.projects import write_config  # noqa: E402

DAY = date(2026, 1, 23)


def generate(folder: Path, *args: str) -> float:
    env = {**os.environ, "NEWSLETTER_LLM_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(folder / "newsletter.toml"), "generate",
         "--date", DAY.isoformat(), *args],
        cwd=folder, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"generate failed ({done.returncode}):\n{done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--papers", type=int, default=20)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    firsts, seconds, again_calls = [], [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as temporary, FakeHuggingFace(
            {DAY: make_papers(args.papers, date=DAY, seed=run)}
        ) as hf, FakeOpenAI() as llm:
            folder = Path(temporary)
            (folder / "digests").mkdir()
            write_config(
                folder, source_url=hf.url, summarizer="openai", llm_base_url=f"{llm.url}/v1",
                llm_model="bench-model", digest_top=args.papers,
            )  # fmt: skip
            llm.slow(args.latency)
            first = generate(folder)
            written, calls = (folder / "digests" / f"{DAY}.md").read_bytes(), llm.calls
            second = generate(folder, "--force")
            same = (folder / "digests" / f"{DAY}.md").read_bytes() == written
            firsts.append(first)
            seconds.append(second)
            again_calls.append(llm.calls - calls)
            print(
                f"run {run}: {args.papers} papers at {args.latency:g} s each: {first:.1f} s "
                f"(at most {llm.max_in_flight} at once, {calls} calls); again with --force: {second:.1f} s, "
                f"{llm.calls - calls} call(s), same bytes: {'yes' if same else 'NO'}"
            )
    sequential = args.papers * args.latency
    print(
        f"median of {args.runs} runs: {statistics.median(firsts):.1f} s for {args.papers} papers "
        f"(one at a time: {sequential:.0f} s; target ≤ 12 s at 20 × 2 s), second run "
        f"{statistics.median(seconds):.1f} s with {max(again_calls)} model call(s)"
    )


if __name__ == "__main__":
    main()
