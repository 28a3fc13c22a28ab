"""How fast an issue renders and how quickly the command starts, and how big the email is.

- render_issue in process, the example digest, templates already compiled (target: median under 50 ms);
- CPU time (user + system) of fresh processes: `newsletter --help` (target: median at most 0.15 s)
  and a cold `newsletter render` (target: median at most 0.4 s);
- the HTML's size: the example (target: at most 40 KB) and a Top-10 issue made of the example's
  papers twice over (target: at most 80 KB), against Gmail's 102 KB clip.

CPU time rather than wall time: it does not count the time a busy machine keeps the process
waiting. The package is byte-compiled first, as a wheel install leaves it, so that a checkout run
under PYTHONDONTWRITEBYTECODE does not compile every module on every start.

Prints medians, min and max; asserts nothing. Run: python bench/bench_render.py [in-process runs] [cold runs]
"""

from __future__ import annotations

import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import load_settings  # noqa: E402
from newsletter.content.digest import load_digest  # noqa: E402
from newsletter.content.render import GMAIL_CLIP_BYTES, render_issue  # noqa: E402

EXAMPLE = ROOT / "digests" / "2026-01-23.md"
TOP_10 = "2026-01-24"


def timings_ms(action: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


def child_cpu_seconds(command: list[str], cwd: Path, env: dict[str, str], runs: int) -> list[float]:
    """User + system CPU time of each of `runs` runs of `command`."""
    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times


def report(label: str, times: list[float], unit: str) -> None:
    precision = 1 if unit == "ms" else 3
    print(
        f"{label}: median {statistics.median(times):.{precision}f} {unit}, min {min(times):.{precision}f}, "
        f"max {max(times):.{precision}f} ({len(times)} runs)"
    )


def top_10_digest(project: Path) -> None:
    """A Top-10 digest: the example's five papers, then the same five again as ranks 6 to 10."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("2026-01-23", TOP_10).replace("(Top 5)", "(Top 10)")
    head, _, papers = text.partition("\n## 1. ")
    again = "\n## 1. " + papers
    for rank in range(5, 0, -1):
        again = again.replace(f"\n## {rank}. ", f"\n## {rank + 5}. ", 1)
    (project / "digests" / f"{TOP_10}.md").write_text(head + "\n## 1. " + papers + "\n---\n" + again, encoding="utf-8")


def main() -> None:
    in_process_runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cold_runs = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    compileall.compile_dir(ROOT / "newsletter", quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "digests").mkdir()
        shutil.copy(EXAMPLE, project / "digests")
        settings = load_settings(config_dir=project)
        digest = load_digest(settings.site, load_digest(settings.site).date)

        start = time.perf_counter()
        issue = render_issue(digest, settings.site)
        print(f"first render (compiles the templates): {(time.perf_counter() - start) * 1000:.1f} ms")
        report("render_issue, example digest (in process)", timings_ms(lambda: render_issue(digest, settings.site), in_process_runs), "ms")

        top_10_digest(project)
        top_10 = render_issue(load_digest(settings.site, digest.date.replace(day=24)), settings.site)
        clip = GMAIL_CLIP_BYTES // 1024
        print(
            f"HTML size: example {issue.html_bytes / 1024:.1f} KB, Top 10 {top_10.html_bytes / 1024:.1f} KB "
            f"(Gmail clips at {clip} KB); text part {len(issue.text.encode()) / 1024:.1f} KB"
        )

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        newsletter = [sys.executable, "-m", "newsletter"]
        report("newsletter --help, CPU", child_cpu_seconds([*newsletter, "--help"], project, env, cold_runs), "s")
        render = [*newsletter, "render", "--date", str(digest.date), "--out", "issue.html", "--text", "issue.txt"]
        report("newsletter render (cold process), CPU", child_cpu_seconds(render, project, env, cold_runs), "s")


if __name__ == "__main__":
    main()
