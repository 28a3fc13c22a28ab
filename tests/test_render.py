"""Rendering an issue: the HTML's structure, links, images, escaping, size, dark mode, the
plain-text part, no network, template errors, and the `newsletter render` command."""

from __future__ import annotations

import re
import shutil
import socket
from datetime import date
from pathlib import Path

import pytest
from lxml import html as lxml_html

from newsletter.assets import assets_dir
from newsletter.config import Settings, load_settings
from newsletter.digest import load_digest
from newsletter.errors import RenderError
from newsletter.render import (
    CONTRAST_PAIRS,
    DARK,
    FONT_STACK,
    GMAIL_CLIP_BYTES,
    LIGHT,
    UNSUBSCRIBE_TAG,
    Palette,
    environment,
    render_issue,
)

from .support import ROOT, contrast, run_newsletter, write_thumbnails

DAY = date(2026, 1, 23)




@pytest.fixture
def example(settings: Settings):
    digest = load_digest(settings, DAY)
    return digest, render_issue(digest, settings)


def test_the_example_issue_has_a_card_per_paper(example) -> None:
    digest, issue = example
    page = lxml_html.document_fromstring(issue.html)

    assert issue.html.startswith("<!DOCTYPE html>")  # standards mode, not quirks
    assert page.get("lang") == "ko"
    assert [h.text_content().strip() for h in page.iter("h1")] == [digest.title]
    cards = page.find_class("card")
    assert len(cards) == len(digest.papers) == 5
    for card, paper in zip(cards, digest.papers):
        heading = card.find(".//h2")
        assert heading.text_content().strip() == paper.title
        assert heading.find("a").get("href") == paper.url
        assert f"#{paper.rank}" in card.text_content()
        assert f"추천 {paper.upvotes}" in card.text_content()
        assert paper.summary.text in card.text_content()
        assert [li.text_content().strip() for li in card.iter("li")] == [p.text for p in paper.key_points]
        assert [h.text_content() for h in card.iter("h3")] == ["핵심 포인트", "초록"]
        # The bulletproof button: a link styled as a block inside a table cell with its own colour.
        button = [a for a in card.iter("a") if "논문 읽기" in a.text_content()]
        assert len(button) == 1 and button[0].get("href") == paper.url
        assert button[0].getparent().tag == "td" and button[0].getparent().get("bgcolor") == LIGHT.button
    assert all(table.get("role") == "presentation" for table in page.iter("table"))
    assert issue.subject == "Daily Papers · 2026년 1월 23일 — EvoCUA 외 4편"
    assert issue.web_url == "http://127.0.0.1:8000/2026-01-23/"


def test_the_header_preheader_and_footer(example, settings: Settings) -> None:
    digest, issue = example
    page = lxml_html.document_fromstring(issue.html)
    assert "2026년 1월 23일 금요일" in page.find_class("date")[0].text_content()
    # The hidden preheader is the first paper's summary.
    hidden = page.xpath("//body/div[1]")[0]
    assert "display:none" in hidden.get("style").replace(" ", "")
    assert hidden.text_content().strip() == digest.papers[0].summary.text == issue.preheader

    footer = page.find_class("foot")[0]
    links = {a.text_content().strip(): a.get("href") for a in footer.iter("a")}
    assert links == {"웹에서 보기": issue.web_url, "구독 해지": UNSUBSCRIBE_TAG}
    assert settings.postal_address in footer.text_content()
    assert "구독하셔서 받으신 메일" in footer.text_content()


def test_images_have_absolute_https_urls_alt_and_size(settings: Settings) -> None:
    # Without thumbnail files beside the digest, the cards fall back to Hugging Face's images.
    issue = render_issue(load_digest(settings, DAY), settings)
    images = list(lxml_html.document_fromstring(issue.html).iter("img"))
    assert len(images) == 5
    for image, paper in zip(images, load_digest(settings, DAY).papers):
        assert image.get("src").startswith("https://")
        assert image.get("alt") == paper.title
        assert int(image.get("width")) == 552 and int(image.get("height")) > 0
        # Fluid on a phone, yet never wider than its width attribute.
        assert "width:100%" in image.get("style").replace(" ", "")
        assert "height:auto" in image.get("style").replace(" ", "")


def test_local_thumbnails_are_published_under_the_assets_url(project: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")
    settings = load_settings(config_dir=project, asset_base_url="https://cdn.example.com/papers")
    issue = render_issue(load_digest(settings, DAY), settings)
    sources = [image.get("src") for image in lxml_html.document_fromstring(issue.html).iter("img")]
    assert len(sources) == 5
    for source in sources:
        assert source.startswith("https://cdn.example.com/papers/")
        assert (assets_dir(settings) / source.rsplit("/", 1)[1]).is_file()


def test_the_html_stays_under_gmails_clipping_size(example, capsys: pytest.CaptureFixture) -> None:
    _, issue = example
    assert issue.html_bytes == len(issue.html.encode("utf-8"))
    assert issue.html_bytes < GMAIL_CLIP_BYTES
    with capsys.disabled():
        print(f"\n  example issue HTML: {issue.html_bytes / 1024:.1f} KB of Gmail's {GMAIL_CLIP_BYTES // 1024} KB")


def test_responsive_and_dark_mode_rules_survive_inlining(example) -> None:
    _, issue = example
    styles = "\n".join(lxml_html.document_fromstring(issue.html).xpath("//style/text()"))
    # MJML's own column rule, and ours for phones, keep their !important.
    assert re.search(r"@media only screen and \(min-width:480px\)[^}]*width:100% !important", styles)
    assert re.search(r"@media only screen and \(max-width: 479px\)", styles)
    dark = styles[styles.index("@media (prefers-color-scheme: dark)") :]
    assert f"background-color: {DARK.page} !important" in dark
    assert f"color: {DARK.heading} !important" in dark
    assert "[data-ogsc] .title" in styles and "[data-ogsb] .card" in styles
    assert ":root { color-scheme: light dark;" in styles
    assert '<meta name="color-scheme" content="light dark">' in issue.html
    # The CSS is inlined too, for the clients that drop <style>.
    summary = lxml_html.document_fromstring(issue.html).find_class("summary")[0]
    assert f"background-color:{LIGHT.accent_soft}" in summary.get("style").replace(" ", "")
    assert FONT_STACK.replace("'", "") in issue.html.replace("&#39;", "").replace("'", "").replace('"', "")


@pytest.mark.parametrize("palette", [LIGHT, DARK], ids=["light", "dark"])
def test_every_text_colour_pair_reaches_wcag_aa(palette: Palette) -> None:
    for text, background in CONTRAST_PAIRS:
        ratio = contrast(getattr(palette, text), getattr(palette, background))
        assert ratio >= 4.5, f"{text} on {background}: {ratio:.2f}:1"


def test_hostile_digest_text_is_escaped(project: Path, settings: Settings) -> None:
    hostile = """# 2026-01-24 <script>alert("title")</script> & Papers

## 1. [</mj-text><mj-raw><script>alert(1)</script></mj-raw> "Quoted" {{ 7*7 }}](https://huggingface.co/papers/2601.00001?a=1&b="2")
**Upvotes**: 3

### 📌 요약
요약 <img src=x onerror=alert(1)> 그리고 [나쁜 링크](javascript:alert(1)) 와 [좋은 링크](https://example.com/a?b=1&c=2).

### 📝 초록 (번역)
초록 <iframe src="https://evil.example"></iframe> {% raw %}끝{% endraw %}
"""
    (project / "digests" / "2026-01-24.md").write_text(hostile, encoding="utf-8")
    digest = load_digest(settings, date(2026, 1, 24))
    issue = render_issue(digest, settings)
    page = lxml_html.document_fromstring(issue.html)

    assert not page.xpath("//body//script | //body//iframe | //*[@onerror]")
    assert not [a for a in page.iter("a") if a.get("href", "").lower().startswith("javascript")]
    assert page.find(".//h1").text_content() == digest.title
    assert page.find(".//title").text == issue.subject
    assert issue.subject.startswith("Daily Papers · 2026년 1월 24일 — </mj-text><mj-raw><script>")
    assert page.find(".//h2").text_content().strip() == digest.papers[0].title
    assert "{{ 7*7 }}" in page.find(".//h2").text_content() and "49" not in issue.html
    assert [a.get("href") for a in page.find_class("summary")[0].iter("a")] == ["https://example.com/a?b=1&c=2"]
    assert "<img src=x onerror=alert(1)>" in page.find_class("summary")[0].text_content()
    assert "{% raw %}끝{% endraw %}" in page.find_class("abstract")[0].text_content()
    # The text part carries the same words, unescaped, and every kept link written out.
    assert digest.title in issue.text and "좋은 링크 (https://example.com/a?b=1&c=2)" in issue.text


def test_the_text_part_is_made_from_the_digest(example, settings: Settings) -> None:
    digest, issue = example
    text = issue.text
    assert text.startswith(digest.title + "\n2026년 1월 23일 금요일")
    for paper in digest.papers:
        assert f"#{paper.rank}  {paper.title}\n" in text
        assert f"논문 읽기: {paper.url}" in text
        assert paper.summary.text in text
        for point in paper.key_points:
            assert f"- {point.text}\n" in text
        for paragraph in paper.abstract:
            assert paragraph.text in text
    assert f"웹에서 보기: {issue.web_url}" in text
    assert f"구독 해지: {UNSUBSCRIBE_TAG}" in text
    assert settings.postal_address in text
    assert not re.search(r"</?[a-z][^>]*>", text)
    assert "\ufffd" not in text and "&amp;" not in text

    html, personal = issue.personalised("https://papers.example.com/u/abc")
    assert UNSUBSCRIBE_TAG not in html + personal
    assert "구독 해지: https://papers.example.com/u/abc" in personal
    assert 'href="https://papers.example.com/u/abc"' in html


def test_an_english_digest_gets_english_words(project: Path, settings: Settings) -> None:
    (project / "digests" / "2026-01-25.md").write_text(
        "# 2026-01-25 Daily Papers\n\n## 1. [Attention Is All You Need: Again](https://arxiv.org/abs/1706.03762)\n"
        "Upvotes: 7\n\n### Summary\nA short summary of the paper, in English.\n",
        encoding="utf-8",
    )
    issue = render_issue(load_digest(settings, date(2026, 1, 25)), settings)
    page = lxml_html.document_fromstring(issue.html)
    assert page.get("lang") == "en"
    assert issue.subject == "Daily Papers · January 25, 2026 — Attention Is All You Need"
    assert "Sunday, January 25, 2026" in issue.html and "Read the paper" in issue.html
    assert "7 upvotes" in issue.text
    # No thumbnail (not a Hugging Face paper, none in the digest), no key points, no abstract.
    assert not list(page.iter("img")) and not page.find_class("points") and not page.find_class("abstract")


def test_rendering_never_touches_the_network(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Templates that would fetch if anything let them: a remote stylesheet and a web font.
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    layout = templates / "issue.mjml.j2"
    layout.write_text(
        layout.read_text(encoding="utf-8")
        .replace('<mj-all font-family="{{ fonts }}" />', '<mj-all font-family="Open Sans, sans-serif" />')
        .replace("<mj-raw>", '<mj-raw>\n      <link rel="stylesheet" href="https://example.com/remote.css">', 1),
        encoding="utf-8",
    )
    settings = load_settings(config_dir=project, templates_dir=templates)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during render: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    issue = render_issue(load_digest(settings, DAY), settings)

    assert "fonts.googleapis.com" not in issue.html and "@import" not in issue.html
    assert 'href="https://example.com/remote.css"' in issue.html  # left alone, never fetched


def test_the_shipped_templates_link_no_stylesheet_or_font(example) -> None:
    _, issue = example
    page = lxml_html.document_fromstring(issue.html)
    assert not page.xpath("//link") and "@import" not in issue.html and "@font-face" not in issue.html


def test_templates_are_compiled_once_per_process(settings: Settings) -> None:
    digest = load_digest(settings, DAY)
    render_issue(digest, settings)
    env = environment(settings)
    first = env.get_template("issue.mjml.j2")
    render_issue(digest, settings)
    assert environment(load_settings(config_dir=settings.config_dir)) is env
    assert env.get_template("issue.mjml.j2") is first


def test_a_broken_template_names_its_file_and_line(project: Path) -> None:
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    card = templates / "paper_card.mjml.j2"
    lines = card.read_text(encoding="utf-8").splitlines()
    lines[9] = "{{ card.thumbnail | no_such_filter }}"
    card.write_text("\n".join(lines), encoding="utf-8")
    settings = load_settings(config_dir=project, templates_dir=templates)
    with pytest.raises(RenderError, match=r"paper_card\.mjml\.j2:10: .*no_such_filter"):
        render_issue(load_digest(settings, DAY), settings)


def test_the_render_command_writes_both_parts(project: Path, settings: Settings) -> None:
    result = run_newsletter("render", "--date", "2026-01-23", "--out", "out/issue.html", "--text", "out/issue.txt", cwd=project)
    assert result.returncode == 0, result.stderr
    issue = render_issue(load_digest(settings, DAY), settings)
    assert (project / "out" / "issue.html").read_text(encoding="utf-8") == issue.html
    assert (project / "out" / "issue.txt").read_text(encoding="utf-8") == issue.text
    assert issue.subject in result.stdout and f"{issue.html_bytes / 1024:.1f} KB" in result.stdout

    to_stdout = run_newsletter("render", cwd=project)  # the latest digest, HTML to standard output
    assert to_stdout.returncode == 0 and to_stdout.stdout == issue.html


def test_the_render_command_fails_cleanly_on_a_missing_digest(project: Path) -> None:
    result = run_newsletter("render", "--date", "2026-01-30", "--out", "issue.html", cwd=project)
    assert result.returncode == 1
    message = result.stderr.replace("\n", "")  # the terminal may wrap a long path
    assert "digests/2026-01-30.md: no digest for 2026-01-30" in message
    assert "Traceback" not in result.stderr
    assert not (project / "issue.html").exists()


def test_templates_that_expand_to_broken_mjml_fail_cleanly(project: Path) -> None:
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    layout = templates / "issue.mjml.j2"
    layout.write_text(layout.read_text(encoding="utf-8").replace("</mj-body>", ""), encoding="utf-8")
    settings = load_settings(config_dir=project, templates_dir=templates)
    with pytest.raises(RenderError, match=r"issue\.mjml\.j2: the expanded MJML does not compile: "):
        render_issue(load_digest(settings, DAY), settings)
