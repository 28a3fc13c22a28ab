"""Operational failures get one line naming what failed and exit 1, never a traceback or a secret:
an unreachable or malformed database URL, a database folder that does not exist, a database file that
is damaged or no database at all, a database locked past its timeout, a full disk, a key file that is
a pipe, a misspelt NEWSLETTER_* variable; and `status` tells a dead sender from a live one."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter import db
from newsletter.store.lease import holder_of
from testkit.projects import LIST, configure, dispose_engine, engine_of, seed
from testkit.servers import free_port

from ..send_helpers import CONTENT, DAY, KEY_ENV, hold_campaign, plan_for, start_campaign
from ..support import run_newsletter


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://bob:s3cret-pw@127.0.0.1:{port}/news", "postgresql+psycopg://bob:***@127.0.0.1"),
        ("no-scheme-s3cret-pw", "bad setting 'database_url' (NEWSLETTER_DATABASE_URL): not a database URL"),
        ("mysqlish://bob:s3cret-pw@host/news", "mysqlish://bob:***@host/news is not a kind of database"),
    ],
)
def test_a_bad_or_unreachable_database_url_is_one_line_without_the_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    line = _one_error_line(
        run_newsletter("lists", "list", cwd=tmp_path, env={"NEWSLETTER_DATABASE_URL": url.format(port=free_port())})
    )
    assert expected in line and "s3cret-pw" not in line


@pytest.mark.slow
def test_a_database_folder_that_does_not_exist_is_named_and_never_made(tmp_path: Path) -> None:
    """A mistyped path must not quietly start an empty database (and its folders) somewhere else."""
    mistyped = tmp_path / "subscirbers" / "data"
    line = _one_error_line(
        run_newsletter("lists", "list", cwd=tmp_path, env={"NEWSLETTER_DATABASE_URL": f"sqlite:///{mistyped}/news.db"})
    )
    assert line.startswith("error: bad setting 'database_url' (NEWSLETTER_DATABASE_URL)")
    assert f"the folder {mistyped} does not exist" in line
    # The default, subscribers/newsletter.db, in a folder that lacks subscribers/ (a fresh clone has it).
    line = _one_error_line(run_newsletter("send", "--date", "2026-01-23", "--dry-run", "--yes", cwd=tmp_path))
    assert "'database_url'" in line and f"the folder {tmp_path / 'subscribers'} does not exist" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def damaged(project: Path, request: pytest.FixtureRequest) -> Path:
    """A project whose database file is random bytes, or a real database cut short."""
    settings = configure(project)
    seed(settings, 3)
    dispose_engine(settings.resolved_database_url)  # its last connection folds the WAL into the file
    database = project / "newsletter.db"
    assert not database.with_name("newsletter.db-wal").exists()
    if request.param == "random bytes":
        database.write_bytes(random.Random(7).randbytes(64 * 1024))
    else:
        os.truncate(database, database.stat().st_size // 2)
    return database


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["random bytes", "truncated"], indirect=True)
@pytest.mark.parametrize(
    "command",
    [
        ("lists", "list"),
        ("send", "--date", "2026-01-23", "--dry-run", "--yes"),
        ("run", "--date", "2026-01-23"),
        ("serve", "--port", str(free_port())),  # it stops before it listens
        ("report",),
    ],
    ids=lambda command: command[0],
)
def test_a_damaged_database_is_one_line_naming_the_file(project: Path, damaged: Path, command: tuple[str, ...]) -> None:
    before = damaged.read_bytes()
    line = _one_error_line(run_newsletter(*command, cwd=project, env=KEY_ENV, timeout=60))
    assert line.startswith(f"error: {damaged}: cannot be read as a SQLite database (")
    assert "restore it from a backup, or set database_url to the right file" in line
    assert damaged.read_bytes() == before


@pytest.mark.slow
def test_a_database_locked_past_the_timeout_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "subscribers").mkdir()  # as a fresh clone has it
    assert run_newsletter("lists", "list", cwd=tmp_path).returncode == 0  # creates the database
    holder = sqlite3.connect(tmp_path / "subscribers" / "newsletter.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_newsletter("lists", "create", "news", cwd=tmp_path, env={"NEWSLETTER_DATABASE_TIMEOUT": "0.3"})
    finally:
        holder.execute("ROLLBACK")
    line = _one_error_line(result)
    assert "newsletter.db failed: database is locked" in line and "database_timeout (0.3 s)" in line


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KB tmpfs, already full."""
    mount = tmp_path / "full"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.decode().strip()}")
    try:
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file(project: Path, full_disk: Path) -> None:
    out = full_disk / "issue.txt"
    line = _one_error_line(run_newsletter("render", "--date", "2026-01-23", "--text", str(out), cwd=project))
    assert str(full_disk) in line and "No space left on device" in line
    database = _one_error_line(
        run_newsletter("lists", "list", cwd=project, env={"NEWSLETTER_DATABASE_URL": f"sqlite:///{full_disk}/news.db"})
    )
    assert f"{full_disk}/news.db" in database


@pytest.mark.slow
def test_a_key_file_that_is_a_pipe_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "subscribers").mkdir()
    assert run_newsletter("lists", "list", cwd=tmp_path).returncode == 0
    key_file = tmp_path / "subscribers" / "secret.key"
    key_file.unlink()
    os.mkfifo(key_file, 0o600)  # nobody ever writes to it: reading it would wait forever
    result = run_newsletter("serve", "--port", str(free_port()), cwd=tmp_path, timeout=30)
    line = _one_error_line(result)
    assert "secret.key: is not a regular file" in line


def test_a_misspelt_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / "subscribers").mkdir()
    result = run_newsletter(
        "lists", "list", cwd=tmp_path,
        env={"NEWSLETTER_DATABSE_URL": "sqlite:///elsewhere.db", "NEWSLETTER_SENDGRID_API_KEY": "SG.secret-value"},
    )  # fmt: skip
    assert result.returncode == 0
    assert "NEWSLETTER_DATABSE_URL is not a setting and is ignored; did you mean NEWSLETTER_DATABASE_URL?" in result.stderr
    assert "NEWSLETTER_SENDGRID_API_KEY is not a setting and is ignored; did you mean SENDGRID_API_KEY?" in result.stderr
    assert "secret-value" not in result.stderr and not (tmp_path / "elsewhere.db").exists()


@pytest.mark.slow
def test_status_tells_a_dead_sender_from_a_live_one_at_once(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    campaign = start_campaign(settings, DAY, plan_for(settings).mailing_list, CONTENT)
    with engine_of(settings).begin() as conn:
        batch = conn.execute(db.batches.insert().values(
            campaign_id=campaign.id, state="in_flight", size=2, started_at=settings.clock())).inserted_primary_key[0]
        conn.execute(db.deliveries.update().values(state="in_flight", batch_id=batch))

    def claimed_by(holder: str) -> subprocess.CompletedProcess[str]:
        hold_campaign(settings, campaign.id, holder, settings.clock())
        return run_newsletter("status", "--date", DAY.isoformat(), "--list", LIST, cwd=project, env=KEY_ENV)

    live = claimed_by(holder_of(os.getpid()))
    assert f"being sent by {os.getpid()}@" in live.stdout and "(heartbeat 0 s ago)" in live.stdout
    assert "In flight" in live.stdout and "Uncertain" not in live.stdout

    exited = subprocess.Popen(["true"])  # a process of this machine that has ended
    exited.wait()
    dead = claimed_by(holder_of(exited.pid))
    assert "which has stopped (no such process; last heartbeat 0 s ago)" in dead.stdout
    assert "Uncertain batches" in dead.stdout and "In flight" not in dead.stdout
