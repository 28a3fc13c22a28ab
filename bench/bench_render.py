"""How long rendering an issue takes: in-process (the example digest, templates already compiled;
target: median under 50 ms) and the cold `newsletter render` command as a fresh process (target:
median under 1 s). Also the size of the HTML against Gmail's clipping limit.

Prints medians, min and max; asserts nothing. Run: python bench/bench_render.py [in-process runs] [cold runs]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import load_settings  # noqa: E402
from newsletter.digest import load_digest  # noqa: E402
from newsletter.render import GMAIL_CLIP_BYTES, render_issue  # noqa: E402

EXAMPLE = ROOT / "digests" / "2026-01-23.md"


def timings_ms(action, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


def report(label: str, times: list[float], unit: str = "ms") -> None:
    print(
        f"{label}: median {statistics.median(times):.1f} {unit}, min {min(times):.1f}, max {max(times):.1f} "
        f"({len(times)} runs)"
    )


def main() -> None:
    in_process_runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cold_runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "digests").mkdir()
        shutil.copy(EXAMPLE, project / "digests")
        settings = load_settings(config_dir=project)
        digest = load_digest(settings)

        start = time.perf_counter()
        issue = render_issue(digest, settings)
        print(f"first render (compiles the templates): {(time.perf_counter() - start) * 1000:.1f} ms")
        report("render_issue, example digest (in process)", timings_ms(lambda: render_issue(digest, settings), in_process_runs))
        print(
            f"HTML size: {issue.html_bytes / 1024:.1f} KB of Gmail's {GMAIL_CLIP_BYTES // 1024} KB clip "
            f"({100 * issue.html_bytes / GMAIL_CLIP_BYTES:.0f}%); text part {len(issue.text.encode()) / 1024:.1f} KB"
        )

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "newsletter", "render", "--out", "issue.html", "--text", "issue.txt"]

        def cold() -> None:
            subprocess.run(command, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)

        report("newsletter render (cold process)", timings_ms(cold, cold_runs))


if __name__ == "__main__":
    main()
