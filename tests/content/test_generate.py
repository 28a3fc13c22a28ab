"""`newsletter generate`: the day's digest written from a fake Hugging Face API and a fake
OpenAI-compatible model (real HTTP on 127.0.0.1, the `openai` package as the client), through the real
CLI; then parsed, checked and rendered as every digest is."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import load_settings
from newsletter.content.digest import load_digest
from testkit.fake_huggingface import FakeHuggingFace, make_papers
from testkit.fake_openai import API_KEY as LLM_KEY
from testkit.fake_openai import FakeOpenAI, mentions
from testkit.projects import dispose_engine, engine_of, write_config

from ..support import run_newsletter

DAY = date(2026, 1, 23)
HOSTILE_TITLE = "Attention [is] *all* | you \\ need `now` <b>bold</b> & more ~~x~~ _y_ &amp; 1. #2"


@dataclass
class Project:
    folder: Path
    config: Path
    hf: FakeHuggingFace
    llm: FakeOpenAI

    def generate(self, *args: str, key: str | None = LLM_KEY):
        env = {"NEWSLETTER_LLM_API_KEY": key} if key else {}
        return run_newsletter("--config", str(self.config), "generate", "--date", DAY.isoformat(), *args, env=env, cwd=self.folder)

    def cli(self, *args: str):
        return run_newsletter("--config", str(self.config), *args, cwd=self.folder)

    @property
    def digest(self) -> Path:
        return self.folder / "digests" / f"{DAY.isoformat()}.md"

    def configure(self, **values: object) -> None:
        dispose_engine(load_settings(self.config).resolved_database_url)
        write_config(self.folder, **{**self.values, **values})

    @property
    def values(self) -> dict[str, object]:
        return {
            "source_url": self.hf.url,
            "llm_base_url": f"{self.llm.url}/v1",
            "llm_model": "fake-model",
            "max_retries": 2,
            "digests_dir": str(self.folder / "digests"),
            "base_url": "https://news.example.com",
        }


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    papers = make_papers(8, date=DAY, seed=1)
    with FakeHuggingFace({DAY: papers}) as hf, FakeOpenAI() as llm:
        (tmp_path / "digests").mkdir()
        project = Project(tmp_path, tmp_path / "newsletter.toml", hf, llm)
        write_config(tmp_path, **project.values, summarizer="openai")
        yield project


def top_ids(hf: FakeHuggingFace, n: int = 5) -> list[str]:
    items = hf.items(DAY)
    ranked = sorted(items, key=lambda item: -item["paper"]["upvotes"])
    return [item["paper"]["id"] for item in ranked[:n]]


@pytest.mark.slow
def test_a_digest_from_the_model_parses_checks_and_keeps_each_paper_its_own_summary(project: Project) -> None:
    project.llm.slow(0.3)  # the four at once overlap: a mix-up would show
    done = project.generate()
    assert done.returncode == 0, done.stderr
    settings = load_settings(project.config)
    digest = load_digest(settings.site, DAY)
    assert [paper.paper_id for paper in digest.papers] == top_ids(project.hf)
    by_id = {item["paper"]["id"]: item["paper"] for item in project.hf.items(DAY)}
    for paper in digest.papers:
        assert paper.url == f"https://huggingface.co/papers/{paper.paper_id}"
        assert paper.upvotes == by_id[paper.paper_id]["upvotes"]
        assert paper.title == by_id[paper.paper_id]["title"]
        # The fake writes each paper's id into everything it answers about it.
        for inline in [paper.summary, *paper.key_points, *paper.abstract]:
            assert inline is not None and f"[{paper.paper_id}]" in inline.text
        assert len(paper.key_points) == 3
        assert paper.thumbnail == f"images/{paper.paper_id}.png"
        assert (project.digest.parent / paper.thumbnail).is_file()
    assert project.llm.max_in_flight == 4  # llm_concurrency
    assert "Tokens used:" in done.stdout
    checked = project.cli("check", "--date", DAY.isoformat())
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_generating_again_calls_no_model_and_writes_the_same_bytes(project: Project) -> None:
    assert project.generate().returncode == 0
    first, calls = project.digest.read_bytes(), project.llm.calls
    refused = project.generate()
    assert refused.returncode == 1 and str(project.digest) in refused.stderr and "--force" in refused.stderr
    again = project.generate("--force", "--json")
    assert again.returncode == 0, again.stderr
    assert project.llm.calls == calls and project.digest.read_bytes() == first
    report = json.loads(again.stdout)
    assert [paper["cached"] for paper in report["papers"]] == [True] * 5 and report["tokens"] == 0
    with engine_of(load_settings(project.config)).connect() as conn:
        rows = conn.execute(select(db.summaries.c.paper_id, db.summaries.c.prompt_tokens)).all()
    assert sorted(row.paper_id for row in rows) == sorted(top_ids(project.hf)) and all(row.prompt_tokens for row in rows)


@pytest.mark.slow
def test_the_model_is_retried_through_rate_limits_outages_and_bad_answers(project: Project) -> None:
    project.llm.rate_limit(retry_after=0.2, times=1)
    project.llm.fail(503, times=1)
    project.llm.fail(500, times=1)
    project.llm.prose(times=1)
    project.llm.violate("few_items", times=1)
    done = project.generate()
    assert done.returncode == 0, done.stderr
    assert len(load_digest(load_settings(project.config).site, DAY).papers) == 5


@pytest.mark.slow
def test_a_paper_the_model_cannot_summarise_leaves_no_digest_and_the_retry_costs_only_it(project: Project) -> None:
    failing = top_ids(project.hf)[2]
    project.llm.prose(when=mentions(failing))
    done = project.generate()
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and failing in line and "was not JSON" in line
    assert not project.digest.exists()
    project.llm.clear_faults()
    before = project.llm.calls
    assert project.generate().returncode == 0
    assert [call.subject.id for call in project.llm.completions()[before:]] == [failing]


@pytest.mark.slow
def test_an_obedient_prompt_injection_gets_no_markup_into_the_digest_or_the_email(project: Project) -> None:
    project.llm.inject()
    assert project.generate().returncode == 0
    rendered = project.cli("render", "--date", DAY.isoformat(), "--out", "issue.html", "--text", "issue.txt")
    assert rendered.returncode == 0, rendered.stderr
    email = (project.folder / "issue.html").read_text()
    digest = project.digest.read_text()
    for text in (digest, email):
        lowered = text.casefold()
        for markup in ("<script", "javascript:", "onerror", "onload", "<iframe", "evil.example", "<svg", "<img src=x", "data:text"):
            assert markup not in lowered, markup
    # The reader's own links stand only where the footer puts them, never where a model wrote them.
    assert "-unsubscribe_url-" not in digest.casefold() and "-preferences_url-" not in digest.casefold()
    # Every link in the email is ours or the paper's.
    for href in re.findall(r'href="([^"]+)"', email):
        assert href.startswith(("https://huggingface.co/papers/", "https://news.example.com", "-unsubscribe_url-", "-preferences_url-", "mailto:")), href


@pytest.mark.slow
def test_titles_round_trip_to_the_email_as_the_same_characters(project: Project) -> None:
    [paper] = make_papers(1, date=DAY, seed=7)
    paper.update(title=HOSTILE_TITLE, upvotes=10_000)
    project.hf.set_papers(DAY, [paper, *make_papers(2, date=DAY, seed=3)])
    project.configure(summarizer="none")
    assert project.generate(key=None).returncode == 0
    digest = load_digest(load_settings(project.config).site, DAY)
    assert digest.papers[0].title == HOSTILE_TITLE
    assert project.cli("render", "--date", DAY.isoformat(), "--out", "issue.html", "--text", "issue.txt").returncode == 0
    assert HOSTILE_TITLE in " ".join((project.folder / "issue.txt").read_text().split())  # wrapped at 72
    assert html.escape(HOSTILE_TITLE, quote=False) in (project.folder / "issue.html").read_text()


@pytest.mark.slow
def test_without_a_model_the_digest_is_english_from_the_source(project: Project) -> None:
    project.configure(summarizer="none")
    done = project.generate(key=None)
    assert done.returncode == 0, done.stderr
    assert project.llm.calls == 0
    text = project.digest.read_text()
    assert "### 📌 Summary" in text and "### 🔑 Key points" in text and "### 📝 Abstract" in text
    digest = load_digest(load_settings(project.config).site, DAY)
    first = next(item["paper"] for item in project.hf.items(DAY) if item["paper"]["id"] == digest.papers[0].paper_id)
    assert digest.papers[0].summary.text == " ".join(first["ai_summary"].split())
    assert digest.language == "en"


@pytest.mark.slow
def test_the_source_failing_or_empty_is_exit_3_with_one_line(project: Project) -> None:
    project.hf.fail(503)
    done = project.generate()
    assert done.returncode == 3 and done.stderr.startswith("error: the source answered 503")
    assert len(done.stderr.strip().splitlines()) == 1
    project.hf.clear_faults()
    project.hf.empty(DAY)
    done = project.generate()
    assert done.returncode == 3 and "no papers for 2026-01-23" in done.stderr
    assert not project.digest.exists()


@pytest.mark.slow
def test_a_thumbnail_that_cannot_be_had_leaves_the_card_without_one_and_says_so(project: Project) -> None:
    missing = top_ids(project.hf)[0]
    project.hf.missing_thumbnail(missing)
    done = project.generate()
    assert done.returncode == 0, done.stderr
    assert f"warning: paper {missing} has no thumbnail" in done.stderr
    digest = load_digest(load_settings(project.config).site, DAY)
    assert digest.papers[0].thumbnail is None and all(paper.thumbnail for paper in digest.papers[1:])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("values", "key", "expected"),
    [
        ({"llm_model": None}, LLM_KEY, "needs llm_model"),
        ({}, None, "needs NEWSLETTER_LLM_API_KEY"),
        ({"llm_api_key": "sk-in-the-file"}, LLM_KEY, "llm_api_key must not be in the config file"),
    ],
)
def test_missing_model_settings_are_exit_1_naming_them(project: Project, values: dict, key: str | None, expected: str) -> None:
    settings = {**project.values, "summarizer": "openai", **values}
    write_config(project.folder, **{name: value for name, value in settings.items() if value is not None})
    done = project.generate(key=key)
    assert done.returncode == 1 and expected in done.stderr
    assert "sk-in-the-file" not in done.stderr and project.llm.calls == 0


@pytest.mark.slow
def test_summaries_are_cached_per_model_language_and_prompt(project: Project) -> None:
    assert project.generate().returncode == 0
    project.configure(summarizer="openai", llm_model="another-model")
    calls = project.llm.calls
    assert project.generate("--force").returncode == 0
    assert project.llm.calls == calls + 5
    with engine_of(load_settings(project.config)).connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.summaries)).scalar_one() == 10


def test_markup_split_by_bidi_controls_or_doubled_tags_is_still_removed(project: Path) -> None:
    hostile = [
        "http\u202a://evil.example/x", "w\u202aww.evil.example", "java\u202escript:alert(1)",
        "<scr\u202aipt>alert(1)</scr\u202aipt>", "--unsubscribe_url--", "-preferences\u202a_url-",
    ]  # fmt: skip
    project.llm.answer = lambda body: {"summary": " ".join(hostile), "key_points": hostile[:3], "abstract": hostile[3:]}
    [paper, *others] = make_papers(3, date=DAY, seed=5)
    paper.update(title="--unsubscribe_url-- \u202e", upvotes=10_000)
    blank = {**make_papers(1, date=DAY, seed=6)[0], "title": " \u202e "}  # shows as nothing: no card
    project.hf.set_papers(DAY, [paper, blank, *others])
    done = project.generate()
    assert done.returncode == 0, done.stderr
    digest = load_digest(load_settings(project.config).site, DAY)  # the parser takes what was written
    assert len(digest.papers) == 3 and digest.papers[0].title == "unsubscribe_url"
    text = project.digest.read_text().casefold()
    for gone in ("evil.example", "javascript", "<scr", "-unsubscribe_url-", "-preferences_url-"):
        assert gone not in text.replace("\\", ""), gone


def test_a_thumbnail_that_decodes_to_too_many_pixels_is_no_thumbnail() -> None:
    import io

    from PIL import Image

    from newsletter.content.generate import THUMBNAIL_MAX_PIXELS, _image_extension

    side = int(THUMBNAIL_MAX_PIXELS**0.5) + 1
    bomb = io.BytesIO()
    Image.new("1", (side, side)).save(bomb, "PNG")  # a few kilobytes, gigabytes once decoded as RGBA
    assert len(bomb.getvalue()) < 100_000 and _image_extension(bomb.getvalue()) is None
    small = io.BytesIO()
    Image.new("RGB", (160, 84)).save(small, "PNG")
    assert _image_extension(small.getvalue()) == "png"
