"""Render a digest into the issue's email: Jinja2 + MJML → HTML, CSS inlined by premailer, and a
plain-text part made from the same Digest objects.

One render serves every recipient: the unsubscribe link is UNSUBSCRIBE_TAG, which the sender
replaces per recipient. The Jinja environment is built once per templates folder and per process;
Jinja re-reads a template only when its file changes (which is what the live preview relies on).
"""

from __future__ import annotations

import functools
import logging
import traceback
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

import jinja2
from mjml import mjml2html
from premailer import Premailer

from .assets import Thumbnail, resolve_thumbnail
from .config import Settings
from .digest import UNSUBSCRIBE_TAG, Digest, Paper
from .errors import RenderError

# UNSUBSCRIBE_TAG (defined beside the parser that keeps it out of digests; the sender and the checks
# import it from here) is the SendGrid substitution tag that each recipient's personal unsubscribe
# URL replaces, in both parts. One render serves every recipient: the sender fills it per
# personalization, and only the footer holds it.

# Gmail hides everything after the first ~102 KB of a message's HTML behind "[Message clipped]",
# footer and unsubscribe link included.
GMAIL_CLIP_BYTES = 102 * 1024

# Korean first: the fonts that ship with iOS/macOS, Windows and Android, then the generic family.
# 맑은 고딕 is Malgun Gothic's Korean name, which older Outlook versions only know it by.
FONT_STACK = "'Apple SD Gothic Neo', 'Malgun Gothic', '맑은 고딕', 'Noto Sans KR', sans-serif"

MJML_TEMPLATE = "issue.mjml.j2"
TEXT_TEMPLATE = "issue.txt.j2"


@dataclass(frozen=True)
class Palette:
    """The colours of one colour scheme. Every text colour is paired with the backgrounds it sits on
    in CONTRAST_PAIRS, which the tests hold to WCAG AA (4.5:1)."""

    page: str  # behind the cards: the header and footer sit on it
    card: str
    heading: str  # titles
    text: str  # summary and key points
    muted: str  # abstract, dates, footer
    accent: str  # labels, links, the rank badge
    accent_soft: str  # the rank badge's and the summary's background
    rule: str  # hairlines and borders, not text (the web pages use it too)
    button: str
    button_text: str


LIGHT = Palette(
    page="#eef0f5",
    card="#ffffff",
    heading="#111827",
    text="#1f2937",
    muted="#4b5563",
    accent="#4338ca",
    accent_soft="#eef1ff",
    rule="#e4e7ee",
    button="#4338ca",
    button_text="#ffffff",
)
DARK = Palette(
    page="#0d1017",
    card="#181c26",
    heading="#f3f4f6",
    text="#e2e5eb",
    muted="#a9b0bd",
    accent="#a5b4fc",
    accent_soft="#252b45",
    rule="#2b3140",
    button="#4338ca",
    button_text="#ffffff",
)
CONTRAST_PAIRS: tuple[tuple[str, str], ...] = (
    ("heading", "page"),
    ("muted", "page"),
    ("accent", "page"),
    ("heading", "card"),
    ("text", "card"),
    ("muted", "card"),
    ("accent", "card"),
    ("accent", "accent_soft"),
    ("text", "accent_soft"),
    ("button_text", "button"),
)


@dataclass(frozen=True)
class Wording:
    """The email's own words (labels, footer), in the digest's language."""

    contents: str  # the heading of the list of the issue's papers
    key_points: str
    abstract: str
    read_paper: str
    upvotes: str  # "{n}"
    papers: str  # "{n}"
    and_more: str  # "{n}": the subject's tail when there is more than one paper
    why: str  # "{name}"
    view_in_browser: str
    unsubscribe: str
    readable_date: Callable[[date], str]  # with the weekday, for the header
    short_date: Callable[[date], str]  # for the subject line


_KO_WEEKDAYS = "월화수목금토일"
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")  # fmt: skip

WORDING: dict[str, Wording] = {
    "ko": Wording(
        contents="오늘의 논문",
        key_points="핵심 포인트",
        abstract="초록",
        read_paper="논문 읽기",
        upvotes="추천 {n}",
        papers="논문 {n}편",
        and_more=" 외 {n}편",
        why="{name} 뉴스레터를 구독하셔서 받으신 메일입니다.",
        view_in_browser="웹에서 보기",
        unsubscribe="구독 해지",
        readable_date=lambda d: f"{d.year}년 {d.month}월 {d.day}일 {_KO_WEEKDAYS[d.weekday()]}요일",
        short_date=lambda d: f"{d.year}년 {d.month}월 {d.day}일",
    ),
    "en": Wording(
        contents="In this issue",
        key_points="Key points",
        abstract="Abstract",
        read_paper="Read the paper",
        upvotes="{n} upvotes",
        papers="{n} papers",
        and_more=" and {n} more",
        why="You are receiving this because you subscribed to {name}.",
        view_in_browser="View in browser",
        unsubscribe="Unsubscribe",
        readable_date=lambda d: f"{_EN_WEEKDAYS[d.weekday()]}, {_EN_MONTHS[d.month - 1]} {d.day}, {d.year}",
        short_date=lambda d: f"{_EN_MONTHS[d.month - 1]} {d.day}, {d.year}",
    ),
}


def wording_for(language: str) -> Wording:
    """The wording for a BCP 47 tag ("ko-KR" uses "ko"); English when the language has none."""
    return WORDING.get(language.split("-")[0].lower(), WORDING["en"])


@dataclass(frozen=True)
class RenderedIssue:
    date: date
    subject: str
    preheader: str
    html: str  # holds UNSUBSCRIBE_TAG where the recipient's unsubscribe URL goes
    text: str  # likewise
    language: str
    web_url: str  # the "view in browser" page of this issue

    @property
    def html_bytes(self) -> int:
        """The HTML's size as sent (UTF-8): Gmail clips past GMAIL_CLIP_BYTES."""
        return len(self.html.encode("utf-8"))

    def personalised(self, unsubscribe_url: str) -> tuple[str, str]:
        """(html, text) as one recipient receives them."""
        return (
            self.html.replace(UNSUBSCRIBE_TAG, unsubscribe_url),
            self.text.replace(UNSUBSCRIBE_TAG, unsubscribe_url),
        )


@dataclass(frozen=True)
class Card:
    """A paper as its card shows it."""

    paper: Paper
    thumbnail: Thumbnail | None


def render_issue(digest: Digest, settings: Settings) -> RenderedIssue:
    """The issue's email: compiled, CSS-inlined HTML and the plain-text part. Never touches the
    network."""
    context = _context(digest, settings)
    mjml_source = render_template(settings, MJML_TEMPLATE, context)
    html = _inline_css(_compile_mjml(mjml_source))
    text = render_template(settings, TEXT_TEMPLATE, context)
    return RenderedIssue(
        date=digest.date,
        subject=context["subject"],
        preheader=context["preheader"],
        html=html,
        text=text,
        language=digest.language,
        web_url=context["web_url"],
    )


def render_mjml(digest: Digest, settings: Settings) -> str:
    """The Jinja-expanded MJML of an issue, before compilation (what the reference MJML compiler
    validates)."""
    return render_template(settings, MJML_TEMPLATE, _context(digest, settings))


def web_url(settings: Settings, day: date) -> str:
    """The issue's "view in browser" page."""
    return f"{settings.base_url}/{day.isoformat()}/"


def subject_line(digest: Digest, settings: Settings) -> str:
    """"Daily Papers · 2026년 1월 23일 — EvoCUA 외 4편": the sender's name, the date, then the first
    paper by its short name (the part of its title before a colon), which is what a reader
    recognises and what fits a phone's inbox row."""
    words = wording_for(digest.language)
    head = f"{settings.from_name} · {words.short_date(digest.date)}"
    if not digest.papers:
        return head
    first = short_title(digest.papers[0].title)
    more = words.and_more.format(n=len(digest.papers) - 1) if len(digest.papers) > 1 else ""
    return f"{head} — {first}{more}"


def short_title(title: str, limit: int = 60) -> str:
    """A paper's name as people say it: "EvoCUA" for "EvoCUA: Evolving Computer Use Agents …"."""
    name, colon, _ = title.partition(":")
    if colon and 0 < len(name.strip()) <= limit:
        return name.strip()
    if len(title) <= limit:
        return title
    return title[:limit].rsplit(" ", 1)[0].rstrip(" ,;:-") + "…"


def _preheader(digest: Digest) -> str:
    for paper in digest.papers:
        if paper.summary is not None:
            return paper.summary.text
    return digest.title


def _context(digest: Digest, settings: Settings) -> dict:
    words = wording_for(digest.language)
    language = digest.language.split("-")[0].lower()
    return {
        "digest": digest,
        "cards": [Card(paper, resolve_thumbnail(paper, digest, settings)) for paper in digest.papers],
        "subject": subject_line(digest, settings),
        "preheader": _preheader(digest),
        "readable_date": words.readable_date(digest.date),
        "words": words,
        "lang": digest.language,
        # Korean reads best broken between words, never inside one; Chinese and Japanese have no
        # spaces to break at, so only Korean gets it.
        "keep_words_whole": language == "ko",
        "web_url": web_url(settings, digest.date),
        "unsubscribe_url": UNSUBSCRIBE_TAG,
        "settings": settings,
        "light": LIGHT,
        "dark": DARK,
        "fonts": FONT_STACK,
        "short_title": short_title,
    }


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        # The MJML, HTML and XML templates escape every value (each can carry untrusted digest
        # text); the text template writes plain text.
        autoescape=jinja2.select_autoescape(["mjml.j2", "html.j2", "xml.j2"], default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["rfc3339"] = rfc3339
    return env


def environment(settings: Settings) -> jinja2.Environment:
    """The process's one Jinja environment for the configured templates folder: every template
    (email, web pages, feed) is loaded through it."""
    return _environment(settings.path(settings.templates_dir).resolve())


def render_template(settings: Settings, name: str, context: dict[str, Any]) -> str:
    """Template `name` rendered with `context`; any Jinja error becomes a RenderError naming the
    template file and line."""
    try:
        return environment(settings).get_template(name).render(context)
    except jinja2.TemplateSyntaxError as error:
        raise RenderError(f"{error.filename or error.name}:{error.lineno}: {error.message}") from None
    except jinja2.TemplateNotFound as error:
        folder = settings.path(settings.templates_dir)
        raise RenderError(f"{folder}: template {error.name} not found") from None
    except jinja2.TemplateError as error:
        raise RenderError(f"{_template_line(error) or name}: {error.message}") from None


def rfc3339(moment: datetime) -> str:
    """"2026-01-23T07:00:00Z": the timestamp form Atom requires."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _template_line(error: Exception) -> str | None:
    """"file:line" of the template line that failed: Jinja maps its frames back onto the template
    files, so the innermost frame in a template file is the line to blame."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename.endswith(".j2")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _compile_mjml(source: str) -> str:
    try:
        # fonts={}: MJML otherwise links Google Fonts' stylesheets for its default font names.
        return mjml2html(source, disable_comments=True, fonts={})
    except ValueError as error:  # MRML's parse error, e.g. "unexpected token … at position 37:38"
        raise RenderError(f"{MJML_TEMPLATE}: the expanded MJML does not compile: {error}") from None


def _inline_css(html: str) -> str:
    # premailer keeps the doctype only if the HTML starts with it exactly as lxml writes it; MJML
    # writes it in lower case, and without a doctype clients render the email in quirks mode.
    if html[:15].lower() == "<!doctype html>":
        html = "<!DOCTYPE html>" + html[15:]
    return Premailer(
        html,
        # Keep every <style> as written: the media queries, the dark-mode and [data-ogsc] rules
        # and their !important only work from the head, and clients that drop the head still get
        # the inlined copy.
        keep_style_tags=True,
        strip_important=False,
        # No fetching: not <link> stylesheets, not files.
        allow_network=False,
        allow_loading_external_files=False,
        # The thumbnails' width/height attributes are exact pixels; CSS width:100% must not
        # replace them.
        disable_basic_attributes=["width", "height"],
        # cssutils reports every mso-* and -webkit-* property it does not know as an error.
        cssutils_logging_level=logging.CRITICAL,
    ).transform(pretty_print=False)
