"""Publishing: the web version, the archive (newest first) and the Atom feed in the public folder."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ElementTree
from datetime import date, datetime, timezone
from pathlib import Path

import lxml.html
import pytest

from newsletter.config import Settings, load_settings
from newsletter.content.digest import load_digest
from newsletter.errors import NewsletterError, RenderError
from newsletter.content.publish import PublishedIssue, page_folder, publish_issue, published_issues
from newsletter.content.render import PREFERENCES_TAG, UNSUBSCRIBE_TAG, RenderedIssue, render_issue

from ..support import EXAMPLE_DIGEST, ROOT, run_newsletter

ATOM = "{http://www.w3.org/2005/Atom}"
T1 = datetime(2026, 1, 23, 7, 0, tzinfo=timezone.utc)
T2 = datetime(2026, 1, 24, 7, 0, tzinfo=timezone.utc)


def at(project: Path, moment: datetime, **overrides: object) -> Settings:
    return load_settings(config_dir=project, now=moment, base_url="https://papers.example.com", **overrides)


def add_digest(project: Path, day: str, *, first_title: str | None = None) -> None:
    text = EXAMPLE_DIGEST.read_text().replace("2026-01-23", day)
    if first_title:
        text = text.replace("EvoCUA: Evolving Computer Use Agents", first_title, 1)
    (project / "digests" / f"{day}.md").write_text(text)


def issue_of(settings: Settings, day: str) -> RenderedIssue:
    return render_issue(load_digest(settings.site, date.fromisoformat(day)), settings.site)


def publish(settings: Settings, day: str) -> None:
    publish_issue(load_digest(settings.site, date.fromisoformat(day)), settings.site)


def feed_of(project: Path) -> ElementTree.Element:
    return ElementTree.parse(project / "public" / "feed.xml").getroot()


def archive_links(project: Path) -> list[tuple[str, str]]:
    document = lxml.html.parse(str(project / "public" / "index.html")).getroot()
    return [(link.get("href"), link.text_content()) for link in document.xpath("//li//a")]


def leftovers(project: Path) -> list[Path]:
    return [path for path in (project / "public").rglob("*") if path.name.endswith(".tmp")]


def test_publish_writes_the_web_version_archive_and_feed(project: Path) -> None:
    settings = at(project, T1)
    digest = load_digest(settings.site, date(2026, 1, 23))
    issue = issue_of(settings, "2026-01-23")

    publication = publish_issue(digest, settings.site)

    page = project / "public" / "2026-01-23" / "index.html"
    assert publication.page == page
    assert issue.web_url == "https://papers.example.com/2026-01-23/"
    html = page.read_text()
    assert html == render_issue(digest, settings.site, abstract="full", page=True).html
    # A page no one was sent: no reader's link, no "you subscribed", an invitation to sign up instead.
    assert UNSUBSCRIBE_TAG not in html and PREFERENCES_TAG not in html and "/unsubscribe" not in html
    assert "구독하셔서 받으신" not in html and "지난 호입니다" in html
    assert 'href="https://papers.example.com/subscribe/daily-papers"' in html
    assert 'href="https://papers.example.com/"' in html
    # Every abstract in full, on the card the email's "read the abstract" link lands on.
    document = lxml.html.document_fromstring(html)
    for paper in digest.papers:
        card = document.get_element_by_id(f"paper-{paper.rank}")
        assert [" ".join(p.text_content().split()) for p in card.find_class("abstract")[0].iter("p")] == [
            " ".join(paragraph.text.split()) for paragraph in paper.abstract
        ]
        assert f"{issue.web_url}#paper-{paper.rank}" in issue.html
    assert "초록 읽기" not in html
    assert archive_links(project) == [("2026-01-23/", issue.subject)]
    assert published_issues(settings.site) == publication.issues
    (record,) = publication.issues
    assert publication.issue == record
    assert (record.date, record.url, record.path, record.language) == (
        date(2026, 1, 23),
        issue.web_url,
        "2026-01-23/",
        "ko",
    )
    assert record.published == record.updated == T1
    assert leftovers(project) == []


def test_archive_and_feed_list_every_issue_newest_first(project: Path) -> None:
    add_digest(project, "2026-01-21")
    add_digest(project, "2026-01-22", first_title="Second <b>Day</b> & More: Evolving")
    settings = at(project, T1)
    publish(settings, "2026-01-22")
    publish(settings, "2026-01-23")
    publish(at(project, T2), "2026-01-21")  # an older date published later still sorts by date

    assert [href for href, _ in archive_links(project)] == ["2026-01-23/", "2026-01-22/", "2026-01-21/"]
    assert "Second <b>Day</b> & More" in archive_links(project)[1][1]  # escaped, shown as text

    feed = feed_of(project)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}id") == "https://papers.example.com/"
    assert feed.findtext(f"{ATOM}title") == "Daily Papers"
    assert feed.findtext(f"{ATOM}updated") == "2026-01-24T07:00:00Z"
    assert feed.find(f"{ATOM}author/{ATOM}name") is not None
    links = {link.get("rel"): link.get("href") for link in feed.findall(f"{ATOM}link")}
    assert links == {"self": "https://papers.example.com/feed.xml", "alternate": "https://papers.example.com/"}
    entries = feed.findall(f"{ATOM}entry")
    assert [entry.findtext(f"{ATOM}id") for entry in entries] == [
        "https://papers.example.com/2026-01-23/",
        "https://papers.example.com/2026-01-22/",
        "https://papers.example.com/2026-01-21/",
    ]
    second = entries[1]
    assert second.findtext(f"{ATOM}title") == issue_of(settings, "2026-01-22").subject
    assert second.find(f"{ATOM}link").get("href") == "https://papers.example.com/2026-01-22/"
    assert second.findtext(f"{ATOM}summary").startswith("정적인 데이터 모방의 한계를 극복하고")
    assert second.findtext(f"{ATOM}updated") == "2026-01-23T07:00:00Z"
    # Dated by the issue's day (midnight in Seoul), though the 21st was published last.
    assert [entry.findtext(f"{ATOM}published") for entry in entries] == [
        "2026-01-22T15:00:00Z", "2026-01-21T15:00:00Z", "2026-01-20T15:00:00Z"
    ]  # fmt: skip
    archive = (project / "public" / "index.html").read_text()
    assert 'class="subscribe" href="https://papers.example.com/subscribe/daily-papers"' in archive


def test_republishing_keeps_dates_and_rewrites_only_what_changed(project: Path) -> None:
    publish(at(project, T1), "2026-01-23")
    page = project / "public" / "2026-01-23" / "index.html"
    before = page.stat()
    feed_before = (project / "public" / "feed.xml").read_bytes()

    publish(at(project, T2), "2026-01-23")  # same digest a day later: nothing changed

    assert (page.stat().st_ino, page.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (project / "public" / "feed.xml").read_bytes() == feed_before

    add_digest(project, "2026-01-23", first_title="Corrected Title: Evolving")
    publish(at(project, T2), "2026-01-23")

    (record,) = published_issues(at(project, T2))
    assert (record.published, record.updated) == (T1, T2)
    assert "Corrected Title" in page.read_text()
    assert leftovers(project) == []


def test_a_broken_record_stops_the_publish_before_anything_is_written(project: Path) -> None:
    add_digest(project, "2026-01-22")
    settings = at(project, T1)
    publish(settings, "2026-01-22")
    record = project / "public" / "2026-01-22" / "issue.json"
    record.write_text("{not json")
    archive_before = (project / "public" / "index.html").read_bytes()

    with pytest.raises(NewsletterError, match=r"2026-01-22/issue\.json: not a readable issue record"):
        publish(settings, "2026-01-23")

    assert not (project / "public" / "2026-01-23").exists()
    assert (project / "public" / "index.html").read_bytes() == archive_before


def test_web_url_outside_base_url_is_refused(project: Path) -> None:
    settings = at(project, T1)

    assert page_folder("https://papers.example.com/2026-01-23/", settings.site) == project / "public" / "2026-01-23"
    for elsewhere in ("https://other.example.com/2026-01-23/", "https://papers.example.com/../x/"):
        with pytest.raises(RenderError, match="is not a folder under base_url"):
            page_folder(elsewhere, settings.site)


def test_record_round_trips(project: Path) -> None:
    publish(at(project, T1), "2026-01-23")
    path = project / "public" / "2026-01-23" / "issue.json"

    assert PublishedIssue.from_file(path).to_json() == path.read_text()


# -- the command -------------------------------------------------------------------------------


def test_publish_command(project: Path) -> None:
    result = run_newsletter("publish", "--date", "2026-01-23")

    assert result.returncode == 0, result.stderr
    assert "Published the 2026-01-23 issue: http://127.0.0.1:8000/2026-01-23/" in result.stdout
    assert "(1 issue(s))" in result.stdout
    assert (project / "public" / "2026-01-23" / "index.html").is_file()
    assert feed_of(project).find(f"{ATOM}entry") is not None


def test_publish_command_without_a_digest_fails_and_writes_nothing(project: Path) -> None:
    result = run_newsletter("publish", "--date", "2026-02-01")

    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {project / 'digests' / '2026-02-01.md'}: no digest for 2026-02-01"
    assert not (project / "public").exists()


def test_publish_command_with_a_broken_digest_names_the_line(project: Path) -> None:
    (project / "digests" / "2026-01-24.md").write_text("# 2026-01-24 Daily Papers (Top 1)\n\n## 1. No link here\n")

    result = run_newsletter("publish", "--date", "2026-01-24")

    assert result.returncode == 1
    where = project / "digests" / "2026-01-24.md"
    assert f"{where}:3: paper heading '1. No link here' has no linked title" in result.stderr
    assert not (project / "public").exists()


# -- template errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "line", "broken", "expected"),
    [
        ("archive.html.j2", 9, "{{ no_such_value }}", "'no_such_value' is undefined"),
        ("feed.xml.j2", 10, "{{ issue.no_such_field }}", "no_such_field"),  # inside the loop over entries
        ("feed.xml.j2", 10, "{% if %}", "Expected an expression"),
    ],
)
def test_a_broken_template_names_its_line_and_writes_nothing(
    project: Path, template: str, line: int, broken: str, expected: str
) -> None:
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    lines = (templates / template).read_text(encoding="utf-8").splitlines()
    lines.insert(line - 1, broken)
    (templates / template).write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = at(project, T1, templates_dir=templates)

    with pytest.raises(RenderError, match=rf"{re.escape(template)}:{line}: .*{re.escape(expected)}"):
        publish(settings, "2026-01-23")

    # Rendered before writing: neither the page nor its record went out without the archive and feed.
    assert not (project / "public" / "2026-01-23").exists()
    assert not (project / "public" / "index.html").exists() and not (project / "public" / "feed.xml").exists()
    assert leftovers(project) == []


def test_the_publish_command_reports_a_template_error_without_a_traceback(project: Path) -> None:
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    archive = templates / "archive.html.j2"
    archive.write_text(archive.read_text(encoding="utf-8").replace("{{ title }}", "{{ titel }}", 1), encoding="utf-8")

    result = run_newsletter("publish", "--date", "2026-01-23", env={"NEWSLETTER_TEMPLATES_DIR": str(templates)})

    assert result.returncode == 1
    assert re.search(r"^error: .*archive\.html\.j2:\d+: 'titel' is undefined$", result.stderr.strip()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "public" / "2026-01-23").exists()
