"""One language per page: every page and mail readers see, in Korean and in English, speaks one
language (`language`, else the digest's, else digest_language's), its words from the message
catalogs in newsletter/locale/; only the digest's own text (titles, summaries: data) may be in
another, and is then marked with its lang. Templates of one's own are an overlay over the bundled
ones. test_browser.py shows the web version, the archive and the sign-up page in each language in
Chromium."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import lxml.html
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from newsletter.config import Settings, load_settings
from newsletter.content.digest import load_digest, load_week
from newsletter.content.edition import Edition
from newsletter.content.publish import publish_issue
from newsletter.content.render import (
    DARK, FONT_STACK, LANGUAGES, LIGHT, LOCALE_DIR, SOURCE_LANGUAGE, page_language, render_issue, render_template,
    short_title,
)  # fmt: skip

from ..support import ROOT

HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
# A word of the English copy: Latin letters, three or more ("AI" may stand in Korean copy, and so
# may the name of a format).
ENGLISH_WORD = re.compile(r"[A-Za-z]{3,}")
KOREAN_COPY_MAY_NAME = {"Atom"}
# What the digest wrote (data), which keeps its own language whatever the page's.
DATA_CLASSES = ("preheader", "contents", "paper-title", "summary", "points", "abstract")
T1 = datetime(2026, 1, 23, 7, 0, tzinfo=timezone.utc)


def configured(project: Path, language: str | None, **overrides: object) -> Settings:
    return load_settings(config_dir=project, now=T1, base_url="https://papers.example.com", language=language, **overrides)


def words_left(html: str, data: list[str]) -> str:
    """The visible text of a page (its <title> too) without the digest's text, the configured
    names and addresses, and URLs: what the page's own copy says."""
    document = lxml.html.document_fromstring(html)
    for element in document.xpath("//style | //script | //*[@aria-hidden='true']"):
        element.drop_tree()
    for name in DATA_CLASSES:
        for element in document.find_class(name):
            element.drop_tree()
    for image in document.iter("img"):
        image.attrib.pop("alt", None)
    text = document.text_content()
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(value, " ")
    return re.sub(r"https?://\S+|\S+@\S+", " ", text)


def assert_speaks(language: str, html: str, data: list[str]) -> None:
    """`html` is in `language` alone, but for `data`."""
    left = words_left(html, data)
    if language == "en":
        assert not HANGUL.findall(left), left
    else:
        assert set(ENGLISH_WORD.findall(left)) <= KOREAN_COPY_MAY_NAME, left
        assert HANGUL.search(left)
    assert lxml.html.document_fromstring(html).get("lang") == language


# -- the catalogs ----------------------------------------------------------------------------------


def extracted() -> set[tuple[str | None, str]]:
    """(context, message) of every message the templates and render.py ask for, extracted as
    README says (babel.cfg)."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    return {
        (context, message if isinstance(message, str) else message[0])
        for _, _, message, _, context in extract_from_dir(str(ROOT), method_map, options_map)
    }


def catalog_messages(path: Path) -> dict[tuple[str | None, str], object]:
    with path.open("rb") as po:
        catalog = read_po(po)
    return {(message.context, message.id if isinstance(message.id, str) else message.id[0]): message for message in catalog if message.id}


def test_the_template_holds_every_message_and_each_language_translates_them_all() -> None:
    messages = extracted()
    assert catalog_messages(LOCALE_DIR / "messages.pot").keys() == messages, "run pybabel extract (README)"
    for language in set(LANGUAGES) - {SOURCE_LANGUAGE}:
        translated = catalog_messages(LOCALE_DIR / language / "LC_MESSAGES" / "messages.po")
        assert translated.keys() == messages, f"run pybabel update, then translate ({language})"
        for key, message in translated.items():
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            assert all(strings) and not message.fuzzy, key
            # Every value the message fills in, the translation fills in too.
            names = set(re.findall(r"%\((\w+)\)|\{(\w+)\}", key[1]))
            assert all(set(re.findall(r"%\((\w+)\)|\{(\w+)\}", string)) == names for string in strings), key


# -- the issue, its web version, the archive --------------------------------------------------------


def issue_data(settings: Settings) -> list[str]:
    titles = [paper.title for paper in load_digest(settings.site).papers]
    return [*titles, *map(short_title, titles), settings.from_name, settings.postal_address]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_issue_and_its_web_version_speak_one_language(project: Path, language: str) -> None:
    settings = configured(project, language)
    data = issue_data(settings)
    for page in (False, True):
        issue = render_issue(load_digest(settings.site), settings.site, abstract="full", page=page)
        assert issue.language == language
        assert_speaks(language, issue.html, data)
    # The digest (Korean) stays as written, marked as Korean inside an English page.
    marked = lxml.html.document_fromstring(issue.html).find_class("summary")
    assert {element.get("lang") for element in marked} == ({"ko"} if language == "en" else {None})


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_plain_text_part_speaks_one_language(project: Path, language: str) -> None:
    settings = configured(project, language)
    issue = render_issue(load_digest(settings.site), settings.site)
    # The digest's text goes out as written: the summaries and key points are Korean in both.
    own = "\n".join(line for line in issue.text.splitlines() if not HANGUL.search(line) or line.startswith(("[", "▲")))
    english = {
        "en": ["Papers for Friday, January 23", "2026 · 5 papers", "▲ 62 upvotes", "[Key points]", "Read the abstract: ",
               "Read the paper: https://", "View in browser: ", "Unsubscribe:\n"],
        "ko": ["1월 23일 금요일의 논문", "2026년 · 논문 5편", "▲ 추천 62", "[핵심 포인트]", "초록 읽기: ", "논문 읽기: https://",
               "웹에서 보기: ", "구독 해지:\n"],
    }  # fmt: skip
    for words in english[language]:
        assert words in issue.text
    other = english["ko" if language == "en" else "en"]
    assert not [words for words in other if words in own]


def test_an_issue_takes_its_digests_language_unless_one_is_set(project: Path) -> None:
    english_digest = project / "digests" / "2026-01-24.md"
    english_digest.write_text(
        "# 2026-01-24 Daily Papers\n\n## 1. [A paper](https://huggingface.co/papers/2601.00001)\n**Upvotes**: 1\n\n"
        "### Summary\nA short summary of the paper, in English.\n",
        encoding="utf-8",
    )
    unset = configured(project, None)
    assert render_issue(load_digest(unset.site, date(2026, 1, 24)), unset.site).subject == "January 24, 2026 — A paper"
    assert render_issue(load_digest(unset.site, date(2026, 1, 23)), unset.site).subject == "2026년 1월 23일 — EvoCUA 외 4편"
    korean = configured(project, "ko")
    issue = render_issue(load_digest(korean.site, date(2026, 1, 24)), korean.site)
    assert issue.subject == "2026년 1월 24일 — A paper" and "논문 1편" in issue.text
    # One paper is one, in English.
    assert "2026 · 1 paper\n" in render_issue(load_digest(unset.site, date(2026, 1, 24)), unset.site).text
    # The pages no digest decides follow digest_language when `language` is unset.
    assert [page_language(configured(project, None, digest_language=tag)) for tag in ("ko-KR", "en", "ja")] == ["ko", "en", "en"]
    assert page_language(configured(project, "en")) == "en"


def test_the_weekly_edition_speaks_english_too(project: Path) -> None:
    settings = configured(project, "en")
    issue = render_issue(load_week(settings.site, Edition.parse_week("2026-W04")), settings.site)
    assert issue.subject == "Weekly papers, January 19–25, 2026 — EvoCUA and 4 more"
    page = lxml.html.document_fromstring(issue.html)
    assert page.find_class("date")[0].text_content() == "The week's most upvoted papers · 5 papers"
    assert "This week's papers" in issue.html and "Fri, Jan 23" in issue.html
    assert_speaks("en", issue.html, issue_data(settings))


def archive_entries(html: str) -> list[str]:
    """The subject and summary of each entry of an archive page: each issue's (its summary is its
    digest's first), in that issue's language."""
    return [element.text_content() for element in lxml.html.document_fromstring(html).xpath("//li//a | //li//p")]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_archive_speaks_one_language(project: Path, language: str) -> None:
    settings = configured(project, language)
    publication = publish_issue(load_digest(settings.site), settings.site)
    archive = publication.archive.read_text(encoding="utf-8")
    assert_speaks(language, archive, [*issue_data(settings), *archive_entries(archive)])
    assert_speaks(language, publication.page.read_text(encoding="utf-8"), issue_data(settings))


# -- the pages no digest decides, and the sign-up mails ---------------------------------------------

NEWSLETTER = {"newsletter": "Daily Papers", "archive_url": "https://papers.example.com/", "light": LIGHT, "dark": DARK, "fonts": FONT_STACK}


def member(status: str = "subscribed", frequency: str = "daily") -> SimpleNamespace:
    return SimpleNamespace(email="reader@example.com", list_name="daily-papers", list_description="Daily Papers",
                           status=status, frequency=frequency)  # fmt: skip


# (template, context): every state of every page the server renders, as web.py fills it.
PAGES: list[tuple[str, dict]] = [
    ("subscribe.html.j2", {"list_title": "Daily Papers", "optin": "double", "email": "", "name": "", "frequency": "daily", "error": "", "sent_to": ""}),
    ("subscribe.html.j2", {"list_title": "Daily Papers", "optin": "double", "email": "", "name": "", "frequency": "weekly", "error": "", "sent_to": "reader@example.com"}),
    *[
        ("confirm.html.j2", {"state": state, "list_title": "Daily Papers", "frequency": frequency, "confirm_days": 7,
                             "preferences_url": "https://papers.example.com/preferences/t", "offer_new_link": offer})
        for state, frequency, offer in [("confirmable", "daily", True), ("subscribed", "weekly", False), ("resent", "daily", True),
                                        ("limit", "daily", True), ("expired", "daily", True), ("expired", "daily", False)]
    ],
    ("preferences.html.j2", {"membership": member(), "token": "t", "saved": False}),
    ("preferences.html.j2", {"membership": member(frequency="weekly"), "token": "t", "saved": True}),
    ("preferences.html.j2", {"membership": member(status="unsubscribed"), "token": "t", "saved": False}),
    ("unsubscribe_confirm.html.j2", {"membership": member(), "token": "t"}),
    ("unsubscribe_done.html.j2", {"membership": member("unsubscribed"), "token": "t", "ticket": "x"}),
    ("unsubscribe_resubscribed.html.j2", {"membership": member(), "token": "t"}),
    ("unsubscribe_expired.html.j2", {"membership": member("unsubscribed"), "hours": 24}),
    ("unsubscribe_invalid.html.j2", {}),
]  # fmt: skip
MAILS = [
    (f"mail/{kind}.{part}.j2", {"list_title": "Daily Papers", "frequency": frequency, "confirm_url": "https://papers.example.com/confirm/t",
                                "confirm_days": 7, "preferences_url": "https://papers.example.com/preferences/t",
                                "unsubscribe_url": "https://papers.example.com/unsubscribe/t", "latest_url": "https://papers.example.com/2026-01-23/",
                                "latest_subject": "2026년 1월 23일 — EvoCUA 외 4편"})
    for kind in ("confirm", "welcome", "already") for part in ("html", "txt") for frequency in ("daily", "weekly")
]  # fmt: skip
PAGE_DATA = ["Daily Papers", "r•••@example.com", "reader@example.com", "2026년 1월 23일 — EvoCUA 외 4편", "daily-papers"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_and_mail_without_a_digest_speaks_one_language(project: Path, language: str) -> None:
    settings = configured(project, language)
    address = {"postal_address": settings.postal_address, "masked_email": "r•••@example.com", "membership": None}
    data = [*PAGE_DATA, settings.postal_address]
    for template, context in [*PAGES, *[(name, context) for name, context in MAILS if name.endswith(".html.j2")]]:
        assert_speaks(language, render_template(settings.site, template, {**NEWSLETTER, **address, **context}), data)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_plain_text_mails_speak_one_language(project: Path, language: str) -> None:
    settings = configured(project, language)
    for template, context in [(name, context) for name, context in MAILS if name.endswith(".txt.j2")]:
        text = render_template(settings.site, template, {**NEWSLETTER, "postal_address": settings.postal_address, **context})
        for value in sorted([*PAGE_DATA, settings.postal_address], key=len, reverse=True):
            text = text.replace(value, " ")
        text = re.sub(r"https?://\S+", " ", text)
        if language == "en":
            assert not HANGUL.search(text), (template, text)
        else:
            assert not ENGLISH_WORD.findall(text), (template, text)


def test_the_pages_language_defaults_to_digest_language(project: Path) -> None:
    html = render_template(configured(project, None), "unsubscribe_invalid.html.j2", {**NEWSLETTER, "postal_address": ""})
    assert '<html lang="ko">' in html and "이 링크는 유효하지 않습니다" in html
    html = render_template(configured(project, None, digest_language="en"), "unsubscribe_invalid.html.j2", {**NEWSLETTER, "postal_address": ""})
    assert '<html lang="en">' in html and "This link is not valid" in html


# -- templates of one's own ---------------------------------------------------------------------------


def test_a_templates_dir_of_ones_own_overlays_the_bundled_templates(project: Path) -> None:
    own = project / "my-templates"
    own.mkdir()
    (own / "footer.mjml.j2").write_text(
        '    <mj-section><mj-column><mj-text><p class="own">{{ _("Unsubscribe") }}: '
        '<a href="{{ unsubscribe_url }}">{{ unsubscribe_url }}</a></p></mj-text></mj-column></mj-section>\n',
        encoding="utf-8",
    )
    settings = configured(project, "ko", templates_dir=own)
    issue = render_issue(load_digest(settings.site), settings.site)
    page = lxml.html.document_fromstring(issue.html)
    # The file of that name replaced the bundled footer; every other template is the bundled one.
    assert page.find_class("own")[0].text_content().startswith("구독 해지: ")
    assert page.find_class("foot") == [] and len(page.find_class("card")) == 5
