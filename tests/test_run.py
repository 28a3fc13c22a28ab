"""`newsletter run`, the daily command for cron: every step through the real CLI against the fake
SendGrid (mail/send and the suppression lists), its exit statuses, its lock, its --json line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter import daily, db
from newsletter.config import Settings, load_settings
from newsletter.errors import RunLocked
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import (
    API_KEY,
    LIST,
    add_list,
    add_subscribers,
    configure,
    engine_of,
    seed,
    write_config,
)

from .send_helpers import KEY_ENV, delivery_states
from .support import run_newsletter, start_newsletter

# 20:00 UTC on the 22nd is 05:00 on the 23rd in Seoul: the run's day is the digest's, 2026-01-23.
NOW = "2026-01-22T20:00:00Z"
CREATED = int(datetime(2026, 1, 20, tzinfo=UTC).timestamp())  # a suppression, days before


@pytest.fixture
def fake():
    with FakeSendGrid(api_key=API_KEY, suppressions={"bounces": [{"email": "u3@example.com", "created": CREATED, "reason": "550 no such user"}]}) as server:
        yield server


def project_settings(project: Path, fake: FakeSendGrid, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"sendgrid_api_url": fake.url, "now": NOW, **overrides}
    return configure(project, **values)


def run(project: Path, *args: str, api_key: str | None = API_KEY) -> subprocess.CompletedProcess[str]:
    return run_newsletter("run", "--json", *args, cwd=project, env={"SENDGRID_API_KEY": api_key})


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json object: the last line of stdout."""
    return json.loads(done.stdout.strip().splitlines()[-1])


def steps_of(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = report_of(done)
    assert [step["step"] for step in report["steps"]] == list(daily.STEPS)
    return {step["step"]: step for step in report["steps"]}


def errors_in(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def campaigns(settings: Settings) -> list[Any]:
    with engine_of(settings).connect() as conn:
        return conn.execute(select(db.campaigns)).all()


def membership_status(settings: Settings, email: str) -> str:
    s, m = db.subscribers.c, db.memberships.c
    with engine_of(settings).connect() as conn:
        return conn.execute(select(m.status).join(db.subscribers, s.id == m.subscriber_id).where(s.email == email)).scalar_one()


def make_weekly(settings: Settings, emails: list[str]) -> None:
    """These addresses as members of the list who chose the weekly edition."""
    ids = add_subscribers(settings, 1, emails)
    m = db.memberships.c
    with engine_of(settings).begin() as conn:
        conn.execute(db.memberships.update().where(m.subscriber_id.in_(ids)).values(frequency=db.WEEKLY))


@pytest.mark.slow
def test_a_full_run_publishes_sends_and_syncs_and_a_second_run_does_nothing(project: Path, fake: FakeSendGrid) -> None:
    # 2026-01-23 is a Friday, made the weekly day: the run also sends week 2026-W04's edition (of
    # the one digest of the week so far) to the weekly member.
    settings = project_settings(project, fake, weekly_day="Friday")
    subscribed = seed(settings, 3)
    make_weekly(settings, ["weekly@example.com"])
    # Two sign-ups never confirmed: one for 40 days (deleted, person and all), one for 5 (kept).
    stale, recent = add_subscribers(settings, 1, ["stale@example.com", "recent@example.com"], status=db.UNCONFIRMED)
    with engine_of(settings).begin() as conn:
        for subscriber_id, days in ((stale, 40), (recent, 5)):
            when = settings.clock() - timedelta(days=days)
            m = db.memberships.c
            conn.execute(db.memberships.update().where(m.subscriber_id == subscriber_id).values(updated_at=when))

    first = run(project)  # no --date: today in Asia/Seoul

    assert first.returncode == 0, first.stderr
    assert sorted(fake.delivered()) == [*subscribed, "weekly@example.com"]
    assert [record.emails for record in fake.records][1] == ["weekly@example.com"]
    assert (project / "public" / "2026-01-23" / "index.html").is_file()
    assert (project / "public" / "2026-W04" / "index.html").is_file()
    assert "2026-01-23" in (project / "public" / "feed.xml").read_text(encoding="utf-8")
    assert membership_status(settings, "u3@example.com") == db.BOUNCED  # the sync ran after the send
    steps = steps_of(first)
    assert report_of(first)["status"] == 0 and report_of(first)["date"] == "2026-01-23"
    assert {name: step["outcome"] for name, step in steps.items()} == {
        "generate": "skipped", "digest": "ok", "checks": "ok", "review": "skipped", "publish": "ok", "send": "ok",
        "weekly": "ok", "sync": "ok", "purge": "ok",
    }  # fmt: skip
    assert steps["digest"]["counts"] == {"papers": 5}
    assert steps["send"]["counts"]["sent"] == 3 and steps["send"]["counts"]["requests"] == 1
    assert steps["send"]["lists"][0]["list"] == LIST
    assert steps["sync"]["counts"] == {"fetched": 1, "changed": 1, "unknown": 0}
    assert steps["weekly"]["counts"]["sent"] == 1 and steps["weekly"]["lists"][0]["list"] == LIST
    assert steps["weekly"]["detail"].startswith("the 2026-W04 weekly edition: list 'daily-papers': 1 sent")
    assert steps["purge"]["counts"] == {"memberships": 1, "subscribers": 1}
    with engine_of(settings).connect() as conn:
        left = set(conn.execute(select(db.subscribers.c.email)).scalars())
    assert "stale@example.com" not in left and "recent@example.com" in left
    assert all(isinstance(step["seconds"], float) for step in steps.values())
    # Logs: one line per step on stderr, no key, no reader's link.
    lines = first.stderr.strip().splitlines()
    assert [line.split()[2] for line in lines] == [f"{name}:" for name in daily.STEPS]
    assert API_KEY not in first.stderr + first.stdout and "/unsubscribe/" not in first.stderr + first.stdout

    again = run(project)

    assert again.returncode == 0, again.stderr
    assert len(fake.records) == 2  # nothing sent again
    assert {name: step["outcome"] for name, step in steps_of(again).items()} == {
        "generate": "skipped", "digest": "ok", "checks": "nothing to do", "review": "skipped",
        "publish": "nothing to do", "send": "nothing to do", "weekly": "nothing to do", "sync": "nothing to do",
        "purge": "nothing to do",
    }  # fmt: skip
    assert [(row.edition, row.issue_date) for row in campaigns(settings)] == [("daily", "2026-01-23"), ("weekly", "2026-W04")]


@pytest.mark.slow
def test_the_weekly_step_waits_for_weekly_day_and_leaves_a_list_without_weekly_members_alone(
    project: Path, fake: FakeSendGrid
) -> None:
    seed(project_settings(project, fake), 2)  # weekly_day: sun

    friday = run(project)

    assert friday.returncode == 0, friday.stderr
    weekly = steps_of(friday)["weekly"]
    assert weekly["outcome"] == "skipped"
    assert weekly["detail"] == "2026-01-23 is a Friday; the weekly edition goes out on weekly_day (sun)"

    settings = project_settings(project, fake, weekly_day="fri")
    again = run(project)

    assert again.returncode == 0, again.stderr
    weekly = steps_of(again)["weekly"]
    assert weekly["outcome"] == "nothing to do"
    assert weekly["lists"] == [{"list": LIST, "requests": 0, "counts": {}, "outcome": "nothing to do", "detail": "no weekly members"}]
    assert [row.edition for row in campaigns(settings)] == ["daily"]  # nothing recorded for the week
    assert len(fake.records) == 1 and not (project / "public" / "2026-W04").exists()


@pytest.mark.slow
def test_a_weekly_edition_that_fails_its_checks_exits_4_after_the_days_issue_went_out(
    project: Path, fake: FakeSendGrid
) -> None:
    # Thursday's digest has the week's most upvoted paper, with a summary that would get the
    # weekly email clipped by Gmail; Friday's issue is fine.
    example = (project / "digests" / "2026-01-23.md").read_text(encoding="utf-8")
    summary = "정적인 데이터 모방의 한계를 극복하고"
    thursday = example.replace("# 2026-01-23", "# 2026-01-22", 1).replace("**Upvotes**: 62", "**Upvotes**: 99", 1)
    (project / "digests" / "2026-01-22.md").write_text(thursday.replace(summary, summary * 1500, 1), encoding="utf-8")
    settings = project_settings(project, fake, weekly_day="fri")
    subscribed = seed(settings, 2)
    make_weekly(settings, ["weekly@example.com"])

    done = run(project)

    assert done.returncode == 4, done.stderr
    steps = steps_of(done)
    assert steps["send"]["outcome"] == "ok" and steps["weekly"]["outcome"] == "failed"
    assert "pre-send check(s) failed" in steps["weekly"]["detail"] and "90 KB" in steps["weekly"]["detail"]
    assert "skipped" not in (steps["sync"]["outcome"], steps["purge"]["outcome"])  # the steps after it ran
    assert sorted(fake.delivered()) == subscribed
    assert [row.edition for row in campaigns(settings)] == ["daily"]
    assert not (project / "public" / "2026-W04").exists()


@pytest.mark.slow
def test_a_missing_digest_exits_3_with_one_line_naming_the_file(project: Path, fake: FakeSendGrid) -> None:
    settings = project_settings(project, fake, now="2026-01-24T01:00:00Z")
    seed(settings, 2)

    done = run(project)

    assert done.returncode == 3
    [error] = errors_in(done)
    assert str(project / "digests" / "2026-01-24.md") in error
    assert fake.records == [] and not (project / "public").exists()
    steps = steps_of(done)
    assert steps["digest"]["outcome"] == "failed" and report_of(done)["status"] == 3
    assert all(steps[name]["outcome"] == "skipped" for name in daily.STEPS[daily.STEPS.index("digest") + 1 :])


@pytest.mark.slow
def test_a_digest_for_another_date_exits_3_naming_the_file(project: Path, fake: FakeSendGrid) -> None:
    digest = project / "digests" / "2026-01-23.md"
    digest.write_text(digest.read_text(encoding="utf-8").replace("# 2026-01-23", "# 2026-01-22", 1), encoding="utf-8")
    seed(project_settings(project, fake), 2)

    done = run(project)

    assert done.returncode == 3
    [error] = errors_in(done)
    assert f"{digest}:1:" in error and "does not match" in error
    assert fake.records == []


@pytest.mark.slow
def test_failing_checks_exit_4_and_nothing_is_sent_or_published(project: Path, fake: FakeSendGrid) -> None:
    # A summary so long that the email would be clipped by Gmail: the size check fails.
    digest = project / "digests" / "2026-01-23.md"
    text = digest.read_text(encoding="utf-8")
    summary = "정적인 데이터 모방의 한계를 극복하고"
    digest.write_text(text.replace(summary, summary * 1500, 1), encoding="utf-8")
    settings = project_settings(project, fake)
    seed(settings, 2)

    done = run(project)

    assert done.returncode == 4, done.stderr
    [error] = errors_in(done)
    assert "pre-send check(s) failed" in error and "90 KB" in error
    assert fake.records == [] and campaigns(settings) == []
    assert not (project / "public" / "2026-01-23").exists()
    steps = steps_of(done)
    assert steps["checks"]["outcome"] == "failed" and steps["send"]["outcome"] == "skipped"


@pytest.mark.slow
def test_two_runs_at_once_one_works_and_the_other_exits_5_at_once(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, latency=1.5) as fake:
        settings = project_settings(project, fake, batch_size=1, send_concurrency=1)
        subscribed = seed(settings, 3)
        first = start_newsletter("run", cwd=project, env=KEY_ENV)
        try:
            deadline = time.monotonic() + 60
            while not fake.records:  # the first run holds the lock and is sending
                assert time.monotonic() < deadline and first.poll() is None, first.communicate()
                time.sleep(0.05)

            started = time.monotonic()
            second = run(project)
            took = time.monotonic() - started

            assert first.poll() is None  # still at work: the second run met its lock
            assert second.returncode == 5
            assert took < 10
            [error] = errors_in(second)
            assert "another run holds the run lock" in error and f"{first.pid}@" in error and "since 2026-01-22" in error
            assert report_of(second)["status"] == 5
        finally:
            _out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert sorted(fake.delivered()) == subscribed  # once each
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.leases)).all() == []  # released


@pytest.mark.slow
def test_an_uncertain_batch_lets_the_other_steps_finish_and_exits_6(project: Path) -> None:
    suppressions = {"bounces": [{"email": "u3@example.com", "created": CREATED, "reason": "550"}]}
    with FakeSendGrid(api_key=API_KEY, script=["drop"], suppressions=suppressions) as fake:
        settings = project_settings(project, fake, batch_size=1, send_concurrency=1)
        seed(settings, 3)

        done = run(project)

        assert done.returncode == 6, done.stderr
        steps = steps_of(done)
        assert steps["send"]["outcome"] == "failed" and steps["send"]["counts"]["uncertain"] == 1
        assert steps["publish"]["outcome"] == "ok" and steps["sync"]["outcome"] == "ok"
        assert membership_status(settings, "u3@example.com") == db.BOUNCED
        [error] = errors_in(done)
        assert "--resend-uncertain" in error and "still pending" in error

        # Run again: the rest is sent (u3 bounced meanwhile), the uncertain reader is not resent,
        # and the run still says so.
        again = run(project)

        assert again.returncode == 6, again.stderr
        states = {email: state for email, (state, _, _) in delivery_states(settings).items()}
        assert states == {"u1@example.com": "uncertain", "u2@example.com": "sent", "u3@example.com": "skipped"}
        assert fake.delivered().count("u1@example.com") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("timezone", "Mars/Olympus_Mons", "'timezone'"),
        ("weekly_day", "someday", "'weekly_day'"),
        ("run_lists", ["daily-papers", "no-such-list"], "'run_lists'"),
    ],
)
def test_a_bad_setting_exits_1_with_one_line_naming_it_and_sends_nothing(
    project: Path, fake: FakeSendGrid, setting: str, value: object, named: str
) -> None:
    seed(project_settings(project, fake), 2)
    write_config(project, sendgrid_api_url=fake.url, now=NOW, **{setting: value})

    done = run(project)

    assert done.returncode == 1
    [error] = errors_in(done)
    assert named in error and len(done.stderr.strip().splitlines()) == 1
    assert fake.records == [] and not (project / "public").exists()
    assert report_of(done)["status"] == 1


@pytest.mark.slow
def test_a_date_in_the_future_exits_2_naming_the_timezone(project: Path, fake: FakeSendGrid) -> None:
    seed(project_settings(project, fake, timezone="UTC"), 2)  # 2026-01-22 in UTC

    done = run(project, "--date", "2026-01-23")

    assert done.returncode == 2
    [error] = errors_in(done)
    assert "2026-01-23 is in the future" in error and "UTC" in error and "'timezone'" in error
    assert fake.records == []


@pytest.mark.slow
def test_a_usage_error_still_prints_the_json_line_and_exits_2(project: Path, fake: FakeSendGrid) -> None:
    seed(project_settings(project, fake), 1)
    for args, named in [(["--date", "2026-13-01"], "--date: '2026-13-01' is not a date"), (["--date"], "'--date'"), (["--bogus"], "--bogus")]:
        done = run(project, *args)

        assert done.returncode == 2, args
        report = report_of(done)
        assert report["status"] == 2 and report["date"] is None and named in report["error"]
        assert {step["outcome"] for step in steps_of(done).values()} == {"skipped"}
        assert named in done.stderr  # the line printed without --json
    assert fake.records == []


@pytest.mark.slow
def test_run_lists_limits_the_send_to_those_lists(project: Path, fake: FakeSendGrid) -> None:
    settings = project_settings(project, fake, run_lists=[LIST])
    subscribed = seed(settings, 2)
    add_subscribers(settings, add_list(settings, "other"), ["elsewhere@example.com"])

    done = run(project)

    assert done.returncode == 0, done.stderr
    assert sorted(fake.delivered()) == subscribed
    assert [entry["list"] for entry in steps_of(done)["send"]["lists"]] == [LIST]


@pytest.mark.slow
def test_without_an_api_key_the_sync_is_skipped_and_said_so(project: Path, fake: FakeSendGrid) -> None:
    seed(project_settings(project, fake), 1)

    done = run(project, api_key=None)

    assert done.returncode == 1  # the send cannot go without a key
    steps = steps_of(done)
    assert steps["sync"]["outcome"] == "skipped" and "no SENDGRID_API_KEY" in steps["sync"]["detail"]
    assert "SENDGRID_API_KEY is not set" in steps["send"]["detail"]


def test_a_lock_left_by_a_dead_run_is_taken_over_at_once(project: Path, fake: FakeSendGrid) -> None:
    settings = project_settings(project, fake)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    from newsletter.store.lease import holder_of

    engine = engine_of(settings)
    with engine.begin() as conn:
        now = settings.clock()
        conn.execute(db.leases.insert().values(
            name=daily.LOCK_NAME, holder=holder_of(int(gone.stdout)), acquired_at=now, heartbeat_at=now))  # fmt: skip

    with daily.RunLock(engine, settings.clock, "this run") as lock:
        with pytest.raises(RunLocked, match="another run holds the run lock"):
            daily.RunLock(engine, settings.clock, "a second run").acquire()
        with engine.connect() as conn:
            assert conn.execute(select(db.leases.c.holder)).scalar_one() == lock.holder


def test_the_default_day_is_today_in_the_timezone_setting(project: Path) -> None:
    settings = load_settings(config_dir=project, now=datetime(2026, 1, 22, 20, tzinfo=UTC))
    assert daily.run_date(settings, None).isoformat() == "2026-01-23"  # Asia/Seoul
    utc = load_settings(config_dir=project, now=settings.now, timezone="UTC")
    assert daily.run_date(utc, None).isoformat() == "2026-01-22"


@pytest.mark.slow
def test_another_days_broken_digest_fails_the_weekly_step_alone_with_exit_1(project: Path, fake: FakeSendGrid) -> None:
    broken = project / "digests" / "2026-01-21.md"
    broken.write_text("# 2026-01-21 Daily Papers\n\n## 1. A title without its link\n", encoding="utf-8")
    settings = project_settings(project, fake, weekly_day="fri")
    subscribed = seed(settings, 2)
    make_weekly(settings, ["weekly@example.com"])

    done = run(project)

    assert done.returncode == 1, done.stderr
    steps = steps_of(done)
    assert steps["send"]["outcome"] == "ok" and steps["weekly"]["outcome"] == "failed"
    assert f"{broken}:3:" in steps["weekly"]["detail"] and "no linked title" in steps["weekly"]["detail"]
    assert sorted(fake.delivered()) == subscribed
