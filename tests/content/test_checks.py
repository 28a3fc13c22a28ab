"""Pre-send checks: each rule caught with where it is, and the real issue passing them all."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest

from newsletter.content.checks import SIZE_LIMIT_BYTES, CheckReport, Problem, run_checks
from newsletter.config import Settings
from newsletter.content.digest import load_digest
from newsletter.errors import CheckFailed
from newsletter.content.render import (
    GMAIL_CLIP_BYTES,
    UNSUBSCRIBE_TAG,
    RenderedIssue,
    render_issue,
)

from ..support import run_newsletter

IMAGE = '<img src="https://cdn.example.com/a.png" alt="A paper" width="552" height="290">'
FOOTER = (
    f'<p><a href="https://example.com/2026-01-23/">View in browser</a> <a href="{UNSUBSCRIBE_TAG}">Unsubscribe</a></p>'
)


def page(body: str) -> str:
    return f"<!doctype html><html><head><title>Issue</title></head><body>\n{body}\n{FOOTER}\n</body></html>"


GOOD = RenderedIssue(
    date=date(2026, 1, 23),
    subject="Daily Papers · 2026-01-23",
    preheader="Five papers",
    html=page(f'{IMAGE}\n<a href="https://huggingface.co/papers/2601.15876">Read the paper</a>\n'
              '<a href="mailto:papers@example.com">Write to us</a>'),
    text=f"Daily Papers\n\nUnsubscribe: {UNSUBSCRIBE_TAG}\n",
    language="en",
    web_url="https://example.com/2026-01-23/",
)


def problems_of(**changes: str) -> list[str]:
    return [str(problem) for problem in run_checks(dataclasses.replace(GOOD, **changes)).problems]


def test_a_good_issue_passes() -> None:
    report = run_checks(GOOD)

    assert report.ok and report.problems == []
    # Each placeholder is counted at the length of a real personal link.
    assert report.html_bytes == len(GOOD.html.encode()) - len(UNSUBSCRIBE_TAG) + 256
    assert report.size_line().startswith("HTML size 0.") and report.size_line().endswith("of 90 KB (ok)")
    report.raise_for_problems()


def test_html_over_90_kb_is_caught_with_its_size() -> None:
    # Under Gmail's 102 KB, but without room for click tracking's longer links.
    padding = "<p>" + "가" * (SIZE_LIMIT_BYTES // 3) + "</p>"  # three bytes each in UTF-8

    report = run_checks(dataclasses.replace(GOOD, html=page(padding)))

    assert not report.ok
    assert SIZE_LIMIT_BYTES < report.html_bytes < GMAIL_CLIP_BYTES
    (problem,) = report.problems
    assert problem.where == "HTML part" and "over the 90 KB limit: Gmail clips at 102 KB" in problem.what
    assert "too big" in report.size_line()


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        ('<img src="http://cdn.example.com/a.png" alt="A" width="552" height="290">',
         "src is not an absolute https URL"),
        ('<img src="images/a.png" alt="A" width="552" height="290">', "src is not an absolute https URL"),
        ('<img src="https://cdn.example.com/a.png" width="552" height="290">', "has no alt text"),
        ('<img src="https://cdn.example.com/a.png" alt=" " width="552" height="290">', "has no alt text"),
        ('<img src="https://cdn.example.com/a.png" alt="A" height="290">', "has no width in pixels (got None)"),
        ('<img src="https://cdn.example.com/a.png" alt="A" width="552" height="auto">',
         "has no height in pixels (got 'auto')"),
    ],
)
def test_each_image_rule(img: str, expected: str) -> None:
    found = problems_of(html=page(f"{IMAGE}\n{img}"))

    assert len(found) == 1
    assert found[0].startswith("image 2 (src=")
    assert found[0].endswith(expected)
    assert ", line 3)" in found[0]


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("javascript:alert(1)", "is not an absolute http(s) or mailto link"),
        ("/2026-01-23/", "is not an absolute http(s) or mailto link"),
        ("https:///nohost", "is not an absolute http(s) or mailto link"),
        ("mailto:", "mailto: link without an address"),
        ("", "has no href"),
    ],
)
def test_each_link_rule(href: str, expected: str) -> None:
    found = problems_of(html=page(f'<a href="{href}">Read the <b>paper</b></a>'))

    assert found == [f"link 'Read the paper' (href={href!r}, line 2): {expected}"]


def test_image_link_is_named_by_its_alt_text() -> None:
    logo = '<img src="https://c.example/a.png" alt="Logo" width="1" height="1">'
    found = problems_of(html=page(f'<a href="ftp://x/y">{logo}</a>'))

    assert found == ["link 'Logo' (href='ftp://x/y', line 2): is not an absolute http(s) or mailto link"]


def test_unsubscribe_link_is_required_in_both_parts() -> None:
    html = GOOD.html.replace(f'<a href="{UNSUBSCRIBE_TAG}">Unsubscribe</a>', "")

    assert problems_of(html=html) == [f'HTML part: has no unsubscribe link (<a href="{UNSUBSCRIBE_TAG}">)']
    assert problems_of(text="Daily Papers\n") == [f"text part: has no unsubscribe link ({UNSUBSCRIBE_TAG})"]


def test_text_part_is_required() -> None:
    assert problems_of(text=" \n") == [
        "text part: is missing: mail without a text part is more often taken for spam"
    ]


def test_replacement_characters_are_caught_in_every_part() -> None:
    html = page("<p>\ufffd</p>")

    found = problems_of(subject="Daily \ufffd Papers", html=html, text=GOOD.text + "bad \ufffd")

    assert found == [
        "subject: holds a broken character (U+FFFD) at offset 6",
        f"HTML part: holds a broken character (U+FFFD) at offset {html.index(chr(0xFFFD))}",
        f"text part: holds a broken character (U+FFFD) at offset {len(GOOD.text) + 4}",
    ]


def test_scripts_are_caught() -> None:
    assert problems_of(html=page("<script>alert(1)</script>")) == [
        "<script> on line 2: scripts are not allowed in email"
    ]


def test_failed_report_raises_every_problem() -> None:
    report = CheckReport(html_bytes=10, problems=[Problem("image 1 (src='x')", "has no alt text")])

    with pytest.raises(CheckFailed) as caught:
        report.raise_for_problems()
    assert str(caught.value) == "1 pre-send check(s) failed:\n  - image 1 (src='x'): has no alt text"


# -- the real issue ----------------------------------------------------------------------------


def test_the_rendered_example_passes_every_check(settings: Settings) -> None:
    issue = render_issue(load_digest(settings.site, date(2026, 1, 23)), settings.site)

    report = run_checks(issue)

    assert report.problems == []
    assert 10_000 < report.html_bytes < SIZE_LIMIT_BYTES
    # Each paper's card, by rank, and what it weighs.
    assert list(report.card_bytes) == ["#1", "#2", "#3", "#4", "#5"]
    assert all(2_000 < size < 8_000 for size in report.card_bytes.values())
    assert sum(report.card_bytes.values()) < report.html_bytes


def test_check_command_passes_on_the_example(project: Path) -> None:
    result = run_newsletter("check", "--date", "2026-01-23")

    assert result.returncode == 0, result.stderr
    assert "HTML size" in result.stdout and "of 90 KB (ok); cards #1 " in result.stdout
    assert ", #5 " in result.stdout and "passes every check" in result.stdout


def test_check_command_fails_with_every_problem(project: Path) -> None:
    # A local thumbnail published under the default http:// base URL cannot show in an email.
    from PIL import Image

    (project / "digests" / "images").mkdir()
    name = "EvoCUA_Evolving_Computer_Use_Agents_via_Learning_from_Scalable_Synthetic_Experience_img.jpg"
    Image.new("RGB", (1200, 630), (200, 30, 30)).save(project / "digests" / "images" / name)

    result = run_newsletter("check", "--date", "2026-01-23")

    assert result.returncode == 1
    assert "image 1 (src='http://127.0.0.1:8000/assets/" in result.stderr
    assert "src is not an absolute https URL" in result.stderr
    assert "1 problem(s):" in result.stderr and "not ready to send" in result.stderr
    assert "HTML size" in result.stdout


def test_check_command_names_a_missing_digest(project: Path) -> None:
    result = run_newsletter("check", "--date", "2026-02-01")

    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {project / 'digests' / '2026-02-01.md'}: no digest for 2026-02-01"
    assert result.stdout == ""


# -- the unsubscribe placeholder: exactly where it belongs ----------------------------------------


def test_the_placeholder_anywhere_but_the_unsubscribe_links_is_caught() -> None:
    leak = f'<a href="https://evil.example/?u={UNSUBSCRIBE_TAG}">win</a>'

    found = problems_of(
        subject=f"Papers {UNSUBSCRIBE_TAG}",
        preheader=UNSUBSCRIBE_TAG.upper(),
        html=page(f'{leak}\n<p title="{UNSUBSCRIBE_TAG}">{UNSUBSCRIBE_TAG}</p>'),
        text=GOOD.text + f"Also: {UNSUBSCRIBE_TAG}\n",
    )

    personal = "the provider would put each reader's personal unsubscribe link there"
    assert found == [
        f"subject: holds the unsubscribe placeholder {UNSUBSCRIBE_TAG} once: {personal}",
        f"preheader: holds the unsubscribe placeholder {UNSUBSCRIBE_TAG} once: {personal}",
        f"text part: holds the unsubscribe placeholder {UNSUBSCRIBE_TAG} once besides its one unsubscribe link: "
        + personal,
        f"HTML part: holds the unsubscribe placeholder {UNSUBSCRIBE_TAG} 3 times outside its unsubscribe links: "
        + personal,
    ]


def test_several_unsubscribe_links_in_the_html_are_fine() -> None:
    second = f'<a href="{UNSUBSCRIBE_TAG}">Leave this list</a>'

    assert problems_of(html=page(f"{IMAGE}\n{second}")) == []


def test_an_unsubscribe_link_sendgrid_cannot_see_is_caught() -> None:
    html = GOOD.html.replace(f'href="{UNSUBSCRIBE_TAG}"', 'href="&#45;unsubscribe_url-"')

    assert problems_of(html=html) == [
        f"HTML part: 1 unsubscribe link(s) spell {UNSUBSCRIBE_TAG} with character references, "
        "which the provider does not replace"
    ]
