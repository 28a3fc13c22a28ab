"""Import benchmark: `newsletter subscribers import` of a generated 1,000,000-row CSV, then again.

Targets: the first import under 60 s with a peak RSS under 300 MB; the second import of the same file
changes nothing (and is much faster). Each import runs as its own process, measured with wait4().

    python bench/bench_import.py [ROWS]        (default 1,000,000)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS, TARGET_RSS_MB = 60.0, 300.0
DOMAINS = (
    "example.com",
    "example.org",
    "gmail.example",
    "naver.example",
    "mail.example.ac.kr",
    "corp.example.net",
)


def write_csv(path: Path, rows: int) -> dict[str, int]:
    """A realistic file: names, two attribute columns, and a little dirt (1% invalid, 1% duplicates
    differing only in case)."""
    invalid = duplicates = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "company", "country"])
        for i in range(rows):
            if i % 100 == 37:
                writer.writerow([f"broken{i}.example.com", f"Broken {i}", "", ""])
                invalid += 1
            elif i % 100 == 71 and i > 100:
                writer.writerow([f"Reader{i - 50}@{DOMAINS[(i - 50) % len(DOMAINS)].upper()}", "", "", ""])
                duplicates += 1
            else:
                writer.writerow(
                    [f"reader{i}@{DOMAINS[i % len(DOMAINS)]}", f"Reader {i}", f"Company {i % 5000}", "KR"]
                )
    return {"invalid": invalid, "duplicates": duplicates}


def measured(command: list[str], env: dict[str, str], work: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of `command` run as a child process.

    wait4() gives this one child's own rusage (RUSAGE_CHILDREN would be the maximum over every child
    this script ever had)."""
    out, err = work / "stdout", work / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    # Status 2: the import worked but the file had invalid rows, which this benchmark plants.
    if process.returncode not in (0, 2):
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{err.read_text()[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, out.read_text()


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        work = Path(folder)
        env = {**os.environ, "NEWSLETTER_DATABASE_URL": f"sqlite:///{work / 'newsletter.db'}"}
        env.pop("NEWSLETTER_NOW", None)
        newsletter = [sys.executable, "-m", "newsletter"]
        source = work / "subscribers.csv"
        started = time.perf_counter()
        dirt = write_csv(source, rows)
        size = source.stat().st_size / 1e6
        print(f"generated {rows:,} rows ({size:.0f} MB) in {time.perf_counter() - started:.1f} s")
        subprocess.run(
            [*newsletter, "lists", "create", "bench"], env=env, cwd=ROOT, check=True, capture_output=True
        )

        command = [*newsletter, "subscribers", "import", str(source), "--list", "bench", "--json"]
        results = []
        for attempt in ("first", "second"):
            seconds, rss, out = measured(command, env, work)
            report = json.loads(out)
            results.append((seconds, rss, report))
            print(
                f"{attempt} import: {seconds:6.1f} s  {rows / seconds:9,.0f} rows/s  peak RSS {rss:5.0f} MB  "
                f"merge transaction {report['merge_seconds']:.1f} s  added {report['added']:,}  "
                f"unchanged {report['unchanged']:,}  invalid {report['invalid']:,}  "
                f"duplicates {report['duplicates']:,}"
            )
        (first_s, first_rss, first), (second_s, second_rss, second) = results
        db_mb = sum(p.stat().st_size for p in work.glob("newsletter.db*")) / 1e6
        print(f"database files: {db_mb:.0f} MB; second/first time ratio {second_s / first_s:.2f}")
        checks = {
            f"first import under {TARGET_SECONDS:.0f} s": first_s < TARGET_SECONDS,
            f"peak RSS under {TARGET_RSS_MB:.0f} MB": max(first_rss, second_rss) < TARGET_RSS_MB,
            "every valid row added": first["added"] == rows - dirt["invalid"] - dirt["duplicates"],
            "invalid and duplicate rows reported": (first["invalid"], first["duplicates"])
            == (dirt["invalid"], dirt["duplicates"]),
            "second import changed nothing": second["added"]
            == second["resubscribed"]
            == second["new_subscribers"]
            == 0
            and second["unchanged"] == first["added"],
        }
        for label, ok in checks.items():
            print(f"  {'ok  ' if ok else 'MISS'} {label}")
        if not all(checks.values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
