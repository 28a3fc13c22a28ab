"""`newsletter run` with `source = "huggingface"`: a missing digest is generated first (from the fake
Hugging Face API), a day without papers is nothing to do; and with `review = "approve"` the editors
alone get the issue, as a test, until `newsletter approve` sends it to every reader, once."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from newsletter import daily
from newsletter.config import Settings
from testkit.fake_huggingface import FakeHuggingFace, make_papers
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, configure, seed

from .send_helpers import KEY_ENV
from .support import run_newsletter

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

DAY = date(2026, 1, 26)  # a Monday: no weekly edition
NOW = "2026-01-25T22:00:00Z"  # 07:00 on the 26th in Seoul
EDITOR = "editor@example.org"


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as server:
        yield server


@pytest.fixture
def hf() -> Iterator[FakeHuggingFace]:
    with FakeHuggingFace({DAY: make_papers(6, date=DAY, seed=26)}) as server:
        yield server


def settings_for(project: Path, fake: FakeSendGrid, hf: FakeHuggingFace, **overrides: Any) -> Settings:
    return configure(
        project, sendgrid_api_url=fake.url, now=NOW, source="huggingface", source_url=hf.url,
        base_url="https://news.example.com", **overrides,
    )  # fmt: skip


def run(project: Path, command: str = "run", *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = run_newsletter(command, "--json", *args, cwd=project, env=KEY_ENV)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [step["step"] for step in report["steps"]] == list(daily.STEPS)
    return done, {step["step"]: step["outcome"] for step in report["steps"]}


def test_a_run_without_a_digest_generates_it_then_sends(project: Path, fake: FakeSendGrid, hf: FakeHuggingFace) -> None:
    settings = settings_for(project, fake, hf)
    readers = seed(settings, 3)
    done, steps = run(project)
    assert done.returncode == 0, done.stderr
    assert steps["generate"] == "ok" and steps["send"] == "ok"
    assert (project / "digests" / f"{DAY}.md").is_file()
    assert sorted(fake.delivered()) == sorted(readers)
    again, steps = run(project)
    assert again.returncode == 0 and steps["generate"] == "nothing to do" and steps["send"] == "nothing to do"
    assert len(fake.delivered()) == 3


def test_a_day_without_papers_is_nothing_to_do(project: Path, fake: FakeSendGrid, hf: FakeHuggingFace) -> None:
    seed(settings_for(project, fake, hf), 2)
    hf.empty(DAY)
    done, steps = run(project)
    assert done.returncode == 0, done.stderr
    assert [steps[name] for name in ("generate", "digest", "checks", "review", "publish", "send")] == ["nothing to do"] * 6
    assert fake.delivered() == [] and not (project / "digests" / f"{DAY}.md").exists()


def test_a_source_failure_is_exit_3_and_nothing_else_runs(project: Path, fake: FakeSendGrid, hf: FakeHuggingFace) -> None:
    seed(settings_for(project, fake, hf), 2)
    hf.fail(503)
    done, steps = run(project)
    assert done.returncode == 3
    assert steps["generate"] == "failed" and steps["send"] == "skipped"
    assert "the source answered 503" in done.stderr and fake.delivered() == []


def test_with_review_the_editors_alone_get_it_until_it_is_approved_then_every_reader_once(
    project: Path, fake: FakeSendGrid, hf: FakeHuggingFace
) -> None:
    settings = settings_for(project, fake, hf, review="approve", editors=[EDITOR])
    readers = seed(settings, 3)

    done, steps = run(project)
    assert done.returncode == 0, done.stderr
    assert steps["review"] == "awaiting approval"
    assert [steps[name] for name in ("publish", "send", "weekly")] == ["skipped"] * 3
    assert fake.delivered() == [EDITOR] and not (project / "public" / str(DAY)).exists()
    [test] = [record.body for record in fake.records]
    assert test["subject"].startswith("[TEST] ")
    text = next(part["value"] for part in test["content"] if part["type"] == "text/plain")
    assert "/unsubscribe/" not in json.dumps(test)  # its links open the test-copy page
    assert {value for value in test["personalizations"][0]["substitutions"].values() if "/test-copy" in value}
    status = run_newsletter("status", "--date", str(DAY), cwd=project, env=KEY_ENV)
    assert "Awaiting approval" in status.stdout

    # Run again: the editors have it already. Edited: they get the edited issue.
    assert run(project)[0].returncode == 0 and fake.delivered() == [EDITOR]
    digest = project / "digests" / f"{DAY}.md"
    digest.write_text(digest.read_text().replace("### 📌 Summary\n", "### 📌 Summary\nEdited by the editor. "))
    assert run(project)[0].returncode == 0 and fake.delivered() == [EDITOR, EDITOR]
    assert "Edited by the editor." in json.dumps(fake.records[-1].body)

    approved, steps = run(project, "approve")
    assert approved.returncode == 0, approved.stderr
    assert steps["review"] == "ok" and steps["publish"] == "ok" and steps["send"] == "ok"
    assert sorted(fake.delivered()) == sorted([EDITOR, EDITOR, *readers])
    assert "Edited by the editor." in json.dumps(fake.records[-1].body)
    # Approved twice, or run again: nobody gets it twice.
    assert run(project, "approve")[0].returncode == 0 and run(project)[0].returncode == 0
    assert len(fake.delivered()) == 5
    nothing = run_newsletter("approve", "--date", "2026-01-25", cwd=project, env=KEY_ENV)
    assert nothing.returncode == 1 and "nothing awaits approval for 2026-01-25" in nothing.stderr
