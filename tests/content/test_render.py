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

from newsletter.content.assets import assets_dir
from newsletter.config import Settings, load_settings
from newsletter.content.digest import load_digest
from newsletter.errors import ConfigError, RenderError
from newsletter.content.render import (
    CONTRAST_PAIRS,
    DARK,
    FONT_STACK,
    LIGHT,
    PREFERENCES_TAG,
    TEXT_WIDTH,
    UNSUBSCRIBE_TAG,
    Palette,
    display_width,
    environment,
    render_issue,
    lead_in,
    lead_in_text,
    short_title,
    wrap_text,
)

from ..support import EXAMPLE_DIGEST, ROOT, contrast, run_newsletter, write_thumbnails

DAY = date(2026, 1, 23)


def words(text: str) -> str:
    """`text` with every run of whitespace made one space: what wrapping leaves the same."""
    return " ".join(text.split())


def write_top_10(project: Path) -> date:
    """A Top-10 digest: the example's five papers, then the same five again as ranks 6 to 10."""
    text = EXAMPLE_DIGEST.read_text(encoding="utf-8").replace("2026-01-23", "2026-01-24").replace("(Top 5)", "(Top 10)")
    head, _, papers = text.partition("\n## 1. ")
    again = "\n## 1. " + papers
    for rank in range(5, 0, -1):
        again = again.replace(f"\n## {rank}. ", f"\n## {rank + 5}. ", 1)
    (project / "digests" / "2026-01-24.md").write_text(head + "\n## 1. " + papers + "\n---\n" + again, encoding="utf-8")
    return date(2026, 1, 24)


@pytest.fixture
def example(settings: Settings):
    digest = load_digest(settings.site, DAY)
    return digest, render_issue(digest, settings.site)


def test_the_example_issue_has_a_card_per_paper(example) -> None:
    digest, issue = example
    page = lxml_html.document_fromstring(issue.html)

    assert issue.html.startswith("<!DOCTYPE html>")  # standards mode, not quirks
    assert page.get("lang") == "ko"
    # The heading is the day in the reader's language, not the digest file's own title.
    assert [h.text_content().strip() for h in page.iter("h1")] == ["1월 23일 금요일의 논문"]
    cards = page.find_class("card")
    assert len(cards) == len(digest.papers) == 5
    for card, paper in zip(cards, digest.papers):
        heading = card.find(".//h2")
        assert heading.text_content().strip() == paper.title
        assert heading.find("a").get("href") == paper.url
        assert f"#{paper.rank}" in card.text_content()
        assert f"추천 {paper.upvotes}" in card.text_content()
        assert paper.summary.text in card.text_content()
        # A key point's bracketed label is its bold lead-in.
        assert [li.text_content().strip() for li in card.iter("li")] == [
            lxml_html.fragment_fromstring(lead_in(p.html), create_parent=True).text_content() for p in paper.key_points
        ]
        # The abstract is on the web version, where the card's link lands on the same card.
        assert [h.text_content() for h in card.iter("h3")] == ["핵심 포인트"]
        assert paper.abstract[0].text not in card.text_content()
        links = {a.text_content().strip(): a.get("href") for a in card.iter("a")}
        assert links["초록 읽기 →"] == f"{issue.web_url}#paper-{paper.rank}"
        assert card.get_element_by_id(f"paper-{paper.rank}") is not None
        # The bulletproof button, naming its paper: a link styled as a block inside a table cell
        # with its own colour.
        button = [a for a in card.iter("a") if "논문 읽기" in a.text_content()]
        assert len(button) == 1 and button[0].get("href") == paper.url
        assert button[0].text_content().strip() == f"논문 읽기: {short_title(paper.title)}"
        assert button[0].getparent().tag == "td" and button[0].getparent().get("bgcolor") == LIGHT.button
    # The contents link to the papers.
    contents = page.find_class("contents")[0]
    assert [(a.text_content(), a.get("href")) for a in contents.iter("a")] == [
        (short_title(paper.title), paper.url) for paper in digest.papers
    ]
    assert all(table.get("role") == "presentation" for table in page.iter("table"))
    assert issue.subject == "2026년 1월 23일 — EvoCUA 외 4편"
    assert issue.web_url == "http://127.0.0.1:8000/2026-01-23/"


@pytest.mark.parametrize(
    ("shown", "paragraphs", "link"),
    [("none", 0, "초록 읽기 →"), ("first-paragraph", 1, "초록 전체 읽기 →"), ("full", None, None)],
)
def test_email_abstract_says_how_much_of_each_abstract_the_email_carries(
    project: Path, shown: str, paragraphs: int | None, link: str | None
) -> None:
    settings = load_settings(config_dir=project, email_abstract=shown)
    digest = load_digest(settings.site, DAY)
    issue = render_issue(digest, settings.site)
    page = lxml_html.document_fromstring(issue.html)
    text = words(issue.text)
    for card, paper in zip(page.find_class("card"), digest.papers):
        expected = paper.abstract[:paragraphs]
        assert [words(p.text_content()) for p in card.xpath(".//*[@class='abstract']/p")] == [
            words(paragraph.text) for paragraph in expected
        ]
        assert all(paragraph.text in text for paragraph in expected)
        assert all(paragraph.text not in text for paragraph in paper.abstract[len(expected) :])
        # A link to the rest, where there is more.
        linked = link is not None and len(paper.abstract) > len(expected)
        more = [a.get("href") for a in card.iter("a") if a.text_content().strip() == link]
        assert more == ([f"{issue.web_url}#paper-{paper.rank}"] if linked else [])
        assert linked == (f"{(link or '').removesuffix(' →')}: {issue.web_url}#paper-{paper.rank}" in text)
    assert shown == "full" or any(len(paper.abstract) > (paragraphs or 0) for paper in digest.papers)


def test_the_header_preheader_and_footer(example, settings: Settings) -> None:
    digest, issue = example
    page = lxml_html.document_fromstring(issue.html)
    assert page.find_class("date")[0].text_content().strip() == "2026년 · 논문 5편"
    # The hidden preheader is the first paper's summary, hidden by display and size (never by a
    # colour), then invisible filler.
    (hidden,) = page.find_class("preheader")
    style = hidden.get("style").replace(" ", "")
    for rule in ("display:none", "max-height:0", "overflow:hidden", "mso-hide:all"):
        assert rule in style
    assert "color" not in style and "opacity" not in style
    assert hidden.text_content().startswith(digest.papers[0].summary.text)
    assert digest.papers[0].summary.text == issue.preheader
    assert hidden.text_content()[len(issue.preheader) :].strip("\u034f\xa0") == ""
    assert len(hidden.text_content()) - len(issue.preheader) >= 100
    # Nothing else is hidden or coloured like its background.
    assert [element for element in page.iter() if "display:none" in (element.get("style") or "").replace(" ", "")] == [hidden]

    footer = page.find_class("foot")[0]
    links = {a.text_content().strip(): a.get("href") for a in footer.iter("a")}
    assert links == {"웹에서 보기": issue.web_url, "수신 설정": PREFERENCES_TAG, "구독 해지": UNSUBSCRIBE_TAG}
    assert settings.postal_address in footer.text_content()
    assert "구독하셔서 받으신 메일" in footer.text_content()


def test_the_subject_follows_subject_template(project: Path) -> None:
    settings = load_settings(config_dir=project, subject_template="[{from_name}] {first}{more} · {papers}편 · {date}")
    assert render_issue(load_digest(settings.site, DAY), settings.site).subject == (
        "[Daily Papers] EvoCUA 외 4편 · 5편 · 2026년 1월 23일"
    )
    title_only = load_settings(config_dir=project, subject_template="{title}")
    assert render_issue(load_digest(title_only.site, DAY), title_only.site).subject == "2026-01-23 Daily Papers (Top 5)"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("subject_template", "{date} {paper}", r"unknown field \{paper\} in '\{date\} \{paper\}'; the fields are \{date\}, \{first\}"),
        ("subject_template", "{date", r"expected '\}' before end of string"),
        ("subject_template", "{papers:%Y}", r"Invalid format specifier"),
        ("subject_template", "Papers\nBcc: x@example.com", r"must be one line"),
        ("email_abstract", "some", r"Input should be 'none', 'first-paragraph' or 'full'"),
    ],
)
def test_a_bad_rendering_setting_is_one_message_naming_it(
    project: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"NEWSLETTER_{key.upper()}", value)
    with pytest.raises(ConfigError, match=rf"^bad setting '{key}' \(NEWSLETTER_{key.upper()}, from the environment\): {message}"):
        load_settings(config_dir=project)


def test_images_have_absolute_https_urls_alt_and_size(settings: Settings) -> None:
    # Without thumbnail files beside the digest, the cards fall back to Hugging Face's images.
    issue = render_issue(load_digest(settings.site, DAY), settings.site)
    images = list(lxml_html.document_fromstring(issue.html).iter("img"))
    assert len(images) == 5
    for image, paper in zip(images, load_digest(settings.site, DAY).papers):
        assert image.get("src").startswith("https://")
        assert image.get("alt") == short_title(paper.title)  # short: what a blocked image shows
        assert int(image.get("width")) == 552 and int(image.get("height")) > 0
        # Fluid on a phone, yet never wider than its width attribute; its alt text on the light
        # panel (dark mode has its own rule for it).
        style = image.get("style").replace(" ", "")
        assert "width:100%" in style and "height:auto" in style and "max-width:552px" in style
        assert f"background-color:{LIGHT.accent_soft}" in style and f"color:{LIGHT.accent}" in style


def test_local_thumbnails_are_published_under_the_assets_url(project: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")
    settings = load_settings(config_dir=project, asset_base_url="https://cdn.example.com/papers")
    issue = render_issue(load_digest(settings.site, DAY), settings.site)
    sources = [image.get("src") for image in lxml_html.document_fromstring(issue.html).iter("img")]
    assert len(sources) == 5
    for source in sources:
        assert source.startswith("https://cdn.example.com/papers/")
        assert (assets_dir(settings.site) / source.rsplit("/", 1)[1]).is_file()


def test_the_html_is_light(example, project: Path, settings: Settings, capsys: pytest.CaptureFixture) -> None:
    _, issue = example
    top_10 = render_issue(load_digest(settings.site, write_top_10(project)), settings.site)
    assert len(lxml_html.document_fromstring(top_10.html).find_class("card")) == 10
    assert issue.html_bytes == len(issue.html.encode("utf-8"))
    assert issue.html_bytes <= 40 * 1024
    assert top_10.html_bytes <= 80 * 1024
    with capsys.disabled():
        print(f"\n  HTML: example {issue.html_bytes / 1024:.1f} KB, Top 10 {top_10.html_bytes / 1024:.1f} KB")

    page = lxml_html.document_fromstring(issue.html)
    inline = " ".join(element.get("style") or "" for element in page.iter())
    # MJML's resets stay in the head once; no property that no client needs is copied around.
    for needless in ("mso-table-lspace", "text-wrap", "word-wrap", "-ms-interpolation-mode"):
        assert needless not in inline, needless
    # The rules written inline are not also kept in the head.
    styles = "\n".join(page.xpath("//style/text()"))
    assert "letter-spacing" not in styles and "text-transform" not in styles and LIGHT.accent_soft not in styles
    assert styles.count("border-collapse") == 1
    assert "data-premailer" not in issue.html  # what keeps premailer off MJML's <style> is gone


def test_responsive_and_dark_mode_rules_stay_in_the_head(example) -> None:
    _, issue = example
    styles = "\n".join(lxml_html.document_fromstring(issue.html).xpath("//style/text()"))
    # MJML's own column rule, and ours for phones, keep their !important.
    assert re.search(r"@media only screen and \(min-width:480px\)[^}]*width:100% !important", styles)
    assert re.search(r"@media only screen and \(max-width: 479px\)", styles)
    dark = styles[styles.index("@media (prefers-color-scheme: dark)") :]
    assert f"background-color: {DARK.page} !important" in dark
    assert f"color: {DARK.heading} !important" in dark
    # Images off, the thumbnail's box and alt text follow the dark palette.
    assert re.search(rf"\.thumb[^{{]*{{ background-color: {DARK.accent_soft} !important", dark)
    assert re.search(rf"\.thumb[^{{]*{{ color: {DARK.accent} !important", dark)
    assert "[data-ogsc] .title" in styles and "[data-ogsb] .box" in styles and "[data-ogsb] .thumb" in styles
    assert ":root { color-scheme: light dark;" in styles
    assert '<meta name="color-scheme" content="light dark">' in issue.html
    # The CSS is inlined too, for the clients that drop <style>.
    summary = lxml_html.document_fromstring(issue.html).find_class("summary")[0]
    assert f"background-color:{LIGHT.accent_soft}" in summary.get("style").replace(" ", "")
    assert f"font-family:{FONT_STACK}" in issue.html


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
    digest = load_digest(settings.site, date(2026, 1, 24))
    issue = render_issue(digest, settings.site, abstract="full")
    page = lxml_html.document_fromstring(issue.html)

    assert not page.xpath("//body//script | //body//iframe | //*[@onerror]")
    assert not [a for a in page.iter("a") if a.get("href", "").lower().startswith("javascript")]
    assert page.find(".//h1").text_content() == "1월 24일 토요일의 논문"
    assert page.find(".//title").text == issue.subject
    assert issue.subject.startswith("2026년 1월 24일 — </mj-text><mj-raw><script>")
    assert page.find(".//h2").text_content().strip() == digest.papers[0].title
    assert "{{ 7*7 }}" in page.find(".//h2").text_content() and "49" not in issue.html
    assert [a.get("href") for a in page.find_class("summary")[0].iter("a")] == ["https://example.com/a?b=1&c=2"]
    assert "<img src=x onerror=alert(1)>" in page.find_class("summary")[0].text_content()
    assert "{% raw %}끝{% endraw %}" in page.find_class("abstract")[0].text_content()
    # The text part carries the same words, unescaped, and every kept link written out.
    assert digest.papers[0].title in words(issue.text) and "좋은 링크 (https://example.com/a?b=1&c=2)" in words(issue.text)


def test_the_text_part_is_made_from_the_digest(example, settings: Settings) -> None:
    digest, issue = example
    text = issue.text
    flat = words(text)
    assert text.startswith("1월 23일 금요일의 논문\n2026년 · 논문 5편")
    for paper in digest.papers:
        assert f"#{paper.rank} {paper.title}" in flat
        assert f"논문 읽기: {paper.url}\n" in text
        assert paper.summary.text in flat
        for point in paper.key_points:
            assert f"- {lead_in_text(point.text)}" in flat
        assert f"초록 읽기: {issue.web_url}#paper-{paper.rank}\n" in text
    assert f"웹에서 보기: {issue.web_url}" in text
    # On a line of its own: each reader's link is much longer than the placeholder.
    assert f"\n구독 해지:\n{UNSUBSCRIBE_TAG}\n" in text
    assert settings.postal_address in text
    assert not re.search(r"</?[a-z][^>]*>", text)
    assert "\ufffd" not in text and "&amp;" not in text
    # 76 columns, a Korean character counting two; only a lone unbreakable word (a URL) is longer.
    for line in text.splitlines():
        assert display_width(line) <= TEXT_WIDTH or len(line.split()) == 1, line
    assert max(display_width(line) for line in text.splitlines()) > 60  # lines are filled, not chopped

    html, personal = issue.personalised("https://papers.example.com/u/abc", "https://papers.example.com/p/abc")
    assert UNSUBSCRIBE_TAG not in html + personal
    assert "구독 해지:\nhttps://papers.example.com/u/abc" in personal
    assert 'href="https://papers.example.com/u/abc"' in html


def test_wrapping_counts_wide_characters_twice_and_never_breaks_a_url() -> None:
    url = "https://example.com/" + "a" * 90
    wrapped = wrap_text(f"가나다 라마바 {url} 사아자 " + "차카타 " * 30, indent="- ")
    lines = wrapped.splitlines()
    assert lines[0] == "- 가나다 라마바" and lines[1] == f"  {url}"
    assert all(line.startswith("  ") for line in lines[1:])
    assert all(display_width(line) <= TEXT_WIDTH for line in lines if url not in line)
    assert max(display_width(line) for line in lines if url not in line) >= TEXT_WIDTH - 7  # filled
    assert words(wrapped) == words(f"- 가나다 라마바 {url} 사아자 " + "차카타 " * 30)
    assert display_width("가a\u0301") == 3  # wide counts two, a combining accent none
    assert wrap_text("first\nsecond") == "first\nsecond"


def test_an_english_digest_gets_english_words(project: Path, settings: Settings) -> None:
    (project / "digests" / "2026-01-25.md").write_text(
        "# 2026-01-25 Daily Papers\n\n## 1. [Attention Is All You Need: Again](https://arxiv.org/abs/1706.03762)\n"
        "Upvotes: 7\n\n### Summary\nA short summary of the paper, in English.\n",
        encoding="utf-8",
    )
    issue = render_issue(load_digest(settings.site, date(2026, 1, 25)), settings.site)
    page = lxml_html.document_fromstring(issue.html)
    assert page.get("lang") == "en"
    assert issue.subject == "January 25, 2026 — Attention Is All You Need"
    assert "Papers for Sunday, January 25" in issue.html and "Read the paper: Attention Is All You Need" in issue.html
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
    issue = render_issue(load_digest(settings.site, DAY), settings.site)

    assert "fonts.googleapis.com" not in issue.html and "@import" not in issue.html
    assert 'href="https://example.com/remote.css"' in issue.html  # left alone, never fetched


def test_the_shipped_templates_link_no_stylesheet_or_font(example) -> None:
    _, issue = example
    page = lxml_html.document_fromstring(issue.html)
    assert not page.xpath("//link") and "@import" not in issue.html and "@font-face" not in issue.html


def test_templates_are_compiled_once_per_process(settings: Settings) -> None:
    digest = load_digest(settings.site, DAY)
    render_issue(digest, settings.site)
    env = environment(settings.site)
    first = env.get_template("issue.mjml.j2")
    render_issue(digest, settings.site)
    assert environment(load_settings(config_dir=settings.config_dir).site) is env
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
        render_issue(load_digest(settings.site, DAY), settings.site)


@pytest.mark.slow
def test_the_render_command_writes_both_parts(project: Path, settings: Settings) -> None:
    result = run_newsletter("render", "--date", "2026-01-23", "--out", "out/issue.html", "--text", "out/issue.txt", cwd=project)
    assert result.returncode == 0, result.stderr
    issue = render_issue(load_digest(settings.site, DAY), settings.site)
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
        render_issue(load_digest(settings.site, DAY), settings.site)


def test_a_bracketed_label_leads_its_key_point_and_votes_never_stand_alone(example, settings: Settings) -> None:
    digest, issue = example
    page = lxml_html.document_fromstring(issue.html)
    # The example's fourth paper, as its summariser wrote it: "['정보 붕괴(Information Collapse)' 방지] …".
    leads = {lead.text_content(): lead for lead in page.find_class("lead")}
    lead = leads["정보 붕괴(Information Collapse) 방지"]
    assert lead.tag == "strong" and lead.getparent().text_content().startswith("정보 붕괴(Information Collapse) 방지 '정보 붕괴'를")
    assert "- 정보 붕괴(Information Collapse) 방지: '정보 붕괴'를" in issue.text
    assert "['" not in issue.text and "['" not in page.text_content()
    # In the contents, nothing lets a line break before a paper's votes or inside them.
    for item, paper in zip(page.find_class("contents")[0].iter("li"), digest.papers):
        assert item.text_content().endswith(f"{short_title(paper.title)}\u2060\xa0▲\xa0{paper.upvotes}")
