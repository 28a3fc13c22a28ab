"""Render an issue's email: Jinja2 + MJML → HTML, CSS inlined by premailer, and a plain-text part made
from the same objects, wrapped at 76 columns. The issue is a day's digest, or a week's most upvoted
papers (the weekly edition), each of whose cards names the day it appeared on.

One render serves every recipient: the unsubscribe link is UNSUBSCRIBE_TAG, which the sender
replaces per recipient. The Jinja environment is built once per templates folder and per process;
Jinja re-reads a template only when its file changes (which is what the live preview relies on).
"""

from __future__ import annotations

import functools
import logging
import re
import traceback
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from .assets import Thumbnail, resolve_thumbnail
from ..config import Settings
from .digest import PREFERENCES_TAG, UNSUBSCRIBE_TAG, Digest, Paper, Week
from .edition import Edition
from ..errors import RenderError

# UNSUBSCRIBE_TAG and PREFERENCES_TAG (defined beside the parser that keeps them out of digests; the
# sender and the checks import them from here) are the placeholders that each recipient's personal
# unsubscribe and preferences URLs replace, in both parts. One render serves every recipient: the
# sender fills them per personalization, and only the footer holds them.

# Gmail hides everything after the first ~102 KB of a message's HTML behind "[Message clipped]",
# footer and unsubscribe link included.
GMAIL_CLIP_BYTES = 102 * 1024

# Korean first: the fonts that ship with iOS/macOS, Windows and Android, then the generic family.
# 맑은 고딕 is Malgun Gothic's Korean name, which older Outlook versions only know it by. Unquoted
# (valid CSS for names made of identifiers): quotes would reach the MJML attributes as &#39;, which
# the reference MJML compiler cannot read.
FONT_STACK = "Apple SD Gothic Neo, Malgun Gothic, 맑은 고딕, Noto Sans KR, sans-serif"

# The plain-text part's width in columns, a wide (East Asian) character counting two: what fits a
# classic terminal or mail reader, and RFC 2045's line length once encoded.
TEXT_WIDTH = 76

# What follows the preheader in its hidden block, so that inboxes show no more than the preheader:
# no-break spaces joined by U+034F (a combining grapheme joiner), which displays as nothing. Not
# zero-width joiners, which spam filters read as obfuscation.
PREHEADER_FILLER = "&#847;&nbsp;" * 80

AbstractShown = Literal["none", "first-paragraph", "full"]

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
    weekly_contents: str  # likewise, in the weekly edition
    weekly_title: str  # "{range}": the weekly edition's title (and its subject's {date})
    weekly_line: str  # under the weekly edition's title, before the number of papers
    key_points: str
    abstract: str
    read_abstract: str  # the link to a paper's abstract on the web version
    read_rest_of_abstract: str  # likewise, when the email shows its first paragraph
    read_paper: str  # the button, followed by the paper's short name
    upvotes: str  # "{n}"
    papers: str  # "{n}"
    and_more: str  # "{n}": the subject's {more} when there is more than one paper
    why: str  # "{name}"
    page_why: str  # "{name}": the web version's footer, which no one was sent
    archive_about: str  # "{name}": what the archive is
    subscribe: str  # the web version's and the archive's link to the sign-up form
    archive: str
    view_in_browser: str
    preferences: str  # the reader's page: daily or weekly, or leave
    unsubscribe: str
    daily_title: Callable[[date], str]  # a day's issue's heading, from its date
    year: Callable[[date], str]  # under that heading, before the number of papers
    short_date: Callable[[date], str]  # the subject's {date}
    day: Callable[[date], str]  # a weekly card's day, short, with the weekday
    date_range: Callable[[date, date], str]  # a week, its year and month said once when they are


_KO_WEEKDAYS = "월화수목금토일"
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")  # fmt: skip


def _ko_range(first: date, last: date) -> str:
    """"2026년 1월 19일–25일", "2026년 1월 26일–2월 1일", "2025년 12월 29일–2026년 1월 4일"."""
    end = f"{last.day}일"
    if (first.year, first.month) != (last.year, last.month):
        end = f"{last.month}월 {end}"
    if first.year != last.year:
        end = f"{last.year}년 {end}"
    return f"{first.year}년 {first.month}월 {first.day}일–{end}"


def _en_range(first: date, last: date) -> str:
    """"January 19–25, 2026", "January 26 – February 1, 2026", "December 29, 2025 – January 4, 2026"."""
    start, end = f"{_EN_MONTHS[first.month - 1]} {first.day}", f"{_EN_MONTHS[last.month - 1]} {last.day}"
    if first.year != last.year:
        return f"{start}, {first.year} – {end}, {last.year}"
    if first.month != last.month:
        return f"{start} – {end}, {last.year}"
    return f"{start}–{last.day}, {last.year}"


WORDING: dict[str, Wording] = {
    "ko": Wording(
        contents="오늘의 논문",
        weekly_contents="이번 주의 논문",
        weekly_title="주간 논문 {range}",
        weekly_line="한 주 동안 추천을 가장 많이 받은 논문",
        key_points="핵심 포인트",
        abstract="초록",
        read_abstract="초록 읽기",
        read_rest_of_abstract="초록 전체 읽기",
        read_paper="논문 읽기",
        upvotes="추천 {n}",
        papers="논문 {n}편",
        and_more=" 외 {n}편",
        why="{name} 뉴스레터를 구독하셔서 받으신 메일입니다.",
        page_why="{name} 뉴스레터의 지난 호입니다. 새 호를 메일로 받아 보세요.",
        archive_about="{name} 뉴스레터의 지난 호를 모두 모았습니다. 새 호를 메일로 받아 보세요.",
        subscribe="구독하기",
        archive="지난 호",
        view_in_browser="웹에서 보기",
        preferences="수신 설정",
        unsubscribe="구독 해지",
        daily_title=lambda d: f"{d.month}월 {d.day}일 {_KO_WEEKDAYS[d.weekday()]}요일의 논문",
        year=lambda d: f"{d.year}년",
        short_date=lambda d: f"{d.year}년 {d.month}월 {d.day}일",
        day=lambda d: f"{d.month}월 {d.day}일 ({_KO_WEEKDAYS[d.weekday()]})",
        date_range=_ko_range,
    ),
    "en": Wording(
        contents="In this issue",
        weekly_contents="This week's papers",
        weekly_title="Weekly papers, {range}",
        weekly_line="The week's most upvoted papers",
        key_points="Key points",
        abstract="Abstract",
        read_abstract="Read the abstract",
        read_rest_of_abstract="Read the whole abstract",
        read_paper="Read the paper",
        upvotes="{n} upvotes",
        papers="{n} papers",
        and_more=" and {n} more",
        why="You are receiving this because you subscribed to {name}.",
        page_why="An issue of {name}. Get the next ones by email.",
        archive_about="Every issue of {name} so far. Get the next ones by email.",
        subscribe="Subscribe",
        archive="Archive",
        view_in_browser="View in browser",
        preferences="Preferences",
        unsubscribe="Unsubscribe",
        daily_title=lambda d: f"Papers for {_EN_WEEKDAYS[d.weekday()]}, {_EN_MONTHS[d.month - 1]} {d.day}",
        year=lambda d: str(d.year),
        short_date=lambda d: f"{_EN_MONTHS[d.month - 1]} {d.day}, {d.year}",
        day=lambda d: f"{_EN_WEEKDAYS[d.weekday()][:3]}, {_EN_MONTHS[d.month - 1][:3]} {d.day}",
        date_range=_en_range,
    ),
}


def wording_for(language: str) -> Wording:
    """The wording for a BCP 47 tag ("ko-KR" uses "ko"); English when the language has none."""
    return WORDING.get(language.split("-")[0].lower(), WORDING["en"])


@dataclass(frozen=True)
class RenderedIssue:
    date: date  # the digest's; a weekly edition's is its week's Sunday (Edition.last_day)
    subject: str
    preheader: str
    html: str  # holds UNSUBSCRIBE_TAG and PREFERENCES_TAG where the recipient's own URLs go
    text: str  # likewise
    language: str
    web_url: str  # the "view in browser" page of this issue

    @property
    def html_bytes(self) -> int:
        """The HTML's size as sent (UTF-8): Gmail clips past GMAIL_CLIP_BYTES."""
        return len(self.html.encode("utf-8"))

    def personalised(self, unsubscribe_url: str, preferences_url: str) -> tuple[str, str]:
        """(html, text) as one recipient receives them."""
        def fill(part: str) -> str:
            return part.replace(UNSUBSCRIBE_TAG, unsubscribe_url).replace(PREFERENCES_TAG, preferences_url)

        return fill(self.html), fill(self.text)


@dataclass(frozen=True)
class Card:
    """A paper as its card shows it."""

    paper: Paper
    thumbnail: Thumbnail | None
    day: date | None = None  # the day a weekly edition's paper appeared on

    @property
    def anchor(self) -> str:
        """The card's id, in the email and on the web version: "read the abstract" links land on it."""
        return f"paper-{self.paper.rank}"


def render_issue(
    source: Digest | Week, settings: Settings, *, abstract: AbstractShown | None = None, page: bool = False
) -> RenderedIssue:
    """The issue's email, from a day's digest or a week's (the weekly edition): compiled,
    CSS-inlined HTML and the plain-text part. `abstract` overrides settings.email_abstract (the web
    version shows every abstract in full). With `page`, the web version: its footer invites to sign
    up instead of saying why a reader got it, and holds no reader's link. Never touches the network."""
    issue = _issue(source, settings)
    context = {**_context(issue, settings, abstract or settings.email_abstract), "page": page}
    mjml_source = render_template(settings, MJML_TEMPLATE, context)
    html = _inline_css(*_compile_mjml(mjml_source))
    text = render_template(settings, TEXT_TEMPLATE, context)
    return RenderedIssue(
        date=issue.date,
        subject=context["subject"],
        preheader=context["preheader"],
        html=html,
        text=text,
        language=issue.language,
        web_url=context["web_url"],
    )


def render_mjml(source: Digest | Week, settings: Settings) -> str:
    """The Jinja-expanded MJML of an issue, before compilation (what the reference MJML compiler
    validates and compiles in the tests)."""
    context = {**_context(_issue(source, settings), settings, settings.email_abstract), "page": False}
    return render_template(settings, MJML_TEMPLATE, context)


def signup_url(settings: Settings) -> str:
    """The sign-up form the public pages invite to: the default list's."""
    return f"{settings.base_url}/subscribe/{settings.default_list}"


def web_url(settings: Settings, edition: Edition) -> str:
    """The issue's "view in browser" page: <base_url>/2026-01-23/, or /2026-W04/ for a week's."""
    return f"{settings.base_url}/{edition.key}/"


@dataclass(frozen=True)
class _Issue:
    """What the templates show of a day's digest or of a week's, in the words of its language."""

    edition: Edition
    date: date  # RenderedIssue.date
    title: str  # the heading readers see
    source_title: str  # the subject's {title}: the digest's own, or the weekly edition's heading
    dated: str  # the header's line under the title, before the number of papers
    when: str  # the subject's {date}
    contents: str  # the heading of the list of its papers
    cards: list[Card]
    language: str


def _issue(source: Digest | Week, settings: Settings) -> _Issue:
    words = wording_for(source.language)
    if isinstance(source, Week):
        edition = source.edition
        title = words.weekly_title.format(range=words.date_range(edition.days[0], edition.last_day))
        return _Issue(
            edition=edition,
            date=edition.last_day,
            title=title,
            source_title=title,
            dated=words.weekly_line,
            # The subject names the week, which a reader tells apart from a daily issue's date.
            when=title,
            contents=words.weekly_contents,
            cards=[
                Card(found.paper, resolve_thumbnail(found.paper, found.digest, settings), found.day)
                for found in source.papers
            ],
            language=source.language,
        )
    return _Issue(
        edition=source.edition,
        date=source.date,
        # The digest's own title ("2026-01-23 Daily Papers (Top 5)") is its author's file name for
        # it; readers get the day in their language.
        title=words.daily_title(source.date),
        source_title=source.title,
        dated=words.year(source.date),
        when=words.short_date(source.date),
        contents=words.contents,
        cards=[Card(paper, resolve_thumbnail(paper, source, settings)) for paper in source.papers],
        language=source.language,
    )


def _subject(issue: _Issue, settings: Settings) -> str:
    """settings.subject_template filled in: by default "2026년 1월 23일 — EvoCUA 외 4편" (or "주간 논문
    2026년 1월 19일–25일 — EvoCUA 외 9편"), the date and the first paper by its short name (the part
    of its title before a colon), which is what a reader recognises and what fits a phone's inbox
    row. The From name is not repeated: the inbox shows it beside the subject."""
    words = wording_for(issue.language)
    papers = [card.paper for card in issue.cards]
    return settings.subject_template.format(
        date=issue.when,
        first=short_title(papers[0].title) if papers else issue.title,
        more=words.and_more.format(n=len(papers) - 1) if len(papers) > 1 else "",
        papers=len(papers),
        title=issue.source_title,
        from_name=settings.from_name,
    ).strip()


def short_title(title: str, limit: int = 60) -> str:
    """A paper's name as people say it: "EvoCUA" for "EvoCUA: Evolving Computer Use Agents …"."""
    name, colon, _ = title.partition(":")
    if colon and 0 < len(name.strip()) <= limit:
        return name.strip()
    if len(title) <= limit:
        return title
    return title[:limit].rsplit(" ", 1)[0].rstrip(" ,;:-") + "…"


def _preheader(issue: _Issue) -> str:
    for card in issue.cards:
        if card.paper.summary is not None:
            return card.paper.summary.text
    return issue.title


def _context(issue: _Issue, settings: Settings, abstract: AbstractShown) -> dict:
    language = issue.language.split("-")[0].lower()
    return {
        "title": issue.title,
        "cards": issue.cards,
        "abstract": abstract,
        "subject": _subject(issue, settings),
        "preheader": _preheader(issue),
        "preheader_filler": PREHEADER_FILLER,
        "readable_date": issue.dated,
        "contents": issue.contents,
        "words": wording_for(issue.language),
        "lang": issue.language,
        # Korean reads best broken between words, never inside one; Chinese and Japanese have no
        # spaces to break at, so only Korean gets it.
        "keep_words_whole": language == "ko",
        "web_url": web_url(settings, issue.edition),
        "archive_url": f"{settings.base_url}/",
        "signup_url": signup_url(settings),
        "unsubscribe_url": UNSUBSCRIBE_TAG,
        "preferences_url": PREFERENCES_TAG,
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
        # Compiling the templates is most of a cold `newsletter render`: the compiled code is kept
        # in a folder of the user's own in the temp dir (Jinja checks its owner and mode), keyed by
        # each template's source, so an edited template is compiled afresh.
        bytecode_cache=jinja2.FileSystemBytecodeCache(),
    )
    env.filters["rfc3339"] = rfc3339
    env.filters["wrap"] = wrap_text
    env.filters["lead_in"] = lead_in
    env.filters["lead_in_text"] = lead_in_text
    return env


# A key point that opens with a label in brackets, as summarisers write them:
# "['정보 붕괴(Information Collapse)' 방지] 대규모 …". The label becomes a bold lead-in.
_LABEL_HTML = re.compile(r"^\[(?P<label>[^\[\]<]{1,120})\]\s*(?P<rest>\S)")
_LABEL_TEXT = re.compile(r"^\[(?P<label>[^\[\]]{1,120})\]\s*(?P<rest>\S)")
_QUOTES = "'\"‘’“”`"
_QUOTE_ENTITIES = re.compile(r"^(?:&#x27;|&quot;|&#39;|['\"‘’“”`])+|(?:&#x27;|&quot;|&#39;|['\"‘’“”`])+(?=\s|$)")


def lead_in(html: str) -> Markup:
    """A key point's HTML with its bracketed label, if any, as a bold lead-in, quotes taken off."""
    found = _LABEL_HTML.match(html)
    if found is None:
        return Markup(html)
    label = _QUOTE_ENTITIES.sub("", found["label"]).strip()
    return Markup(f'<strong class="lead">{label}</strong> {html[found.start("rest"):]}')


def lead_in_text(text: str) -> str:
    """The same for the plain-text part: "label: the rest"."""
    found = _LABEL_TEXT.match(text)
    if found is None:
        return text
    label = " ".join(word.strip(_QUOTES) for word in found["label"].split()).strip()
    return f"{label}: {text[found.start('rest'):]}"


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


def wrap_text(text: str, indent: str = "", hanging: str | None = None, width: int = TEXT_WIDTH) -> str:
    """`text` filled into lines of at most `width` columns, a wide (East Asian) character counting
    two, the first line after `indent` and the rest after `hanging` (as many spaces as `indent` is
    wide, by default). Lines break only at spaces, so a URL is never broken: a word wider than a
    line gets a line of its own. (textwrap counts characters, so its 76-character Korean lines
    would fill twice the width.)"""
    hanging = " " * display_width(indent) if hanging is None else hanging
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = hanging if lines else indent
        used, words = display_width(line), 0
        for word in paragraph.split():
            word_width = display_width(word)
            if words and used + 1 + word_width > width:
                lines.append(line)
                line, used, words = hanging, display_width(hanging), 0
            if words:
                line, used = line + " ", used + 1
            line, used, words = line + word, used + word_width, words + 1
        lines.append(line.rstrip())
    return "\n".join(lines)


def display_width(text: str) -> int:
    """Columns `text` takes in a fixed-width font: two for wide and full-width characters, none
    for combining marks."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


# The reference compiler inlines <mj-style inline="inline"> itself; mjml-python keeps it as an
# ordinary <style>. So render.py takes those blocks out of the source and inlines them after
# compiling. Digest text cannot forge the tag: every value the template writes is escaped.
_INLINE_STYLE = re.compile(r'<mj-style\s+inline="inline"\s*>(.*?)</mj-style>', re.DOTALL)


def _compile_mjml(source: str) -> tuple[str, str]:
    """(the compiled HTML, the CSS to inline into it)."""
    inline_css = "\n".join(_INLINE_STYLE.findall(source))
    try:
        # fonts={}: MJML otherwise links Google Fonts' stylesheets for its default font names.
        return mjml2html(_INLINE_STYLE.sub("", source), disable_comments=True, fonts={}), inline_css
    except ValueError as error:  # MRML's parse error, e.g. "unexpected token … at position 37:38"
        raise RenderError(f"{MJML_TEMPLATE}: the expanded MJML does not compile: {error}") from None


def _inline_css(html: str, css: str) -> str:
    """`css` written into the style attribute of every element it matches, for the clients that
    drop <style>. Every <style> of the document stays in the head as it is, and is not inlined:
    MJML's resets are for the few clients that need them, and the phone and dark-mode rules only
    work from there (their !important beats the inlined styles)."""
    # Imported here: premailer brings cssutils and requests, a third of a cold start's CPU time,
    # which only a render needs.
    import cssutils
    from lxml import etree
    from premailer import Premailer

    # cssutils checks each property against its profiles only to log what it does not know (every
    # mso-* property), compiling a regular expression per property: about 70 ms of a cold render.
    # premailer's disable_validation does not reach the style attributes it merges into; without
    # profiles, nothing is checked.
    cssutils.profile.removeProfile(all=True)

    # Parsed here rather than by premailer, which drops the doctype unless the source spells it
    # exactly as lxml writes it (MJML writes it in lower case); without one, clients render the
    # email in quirks mode. Serialising the whole tree keeps it.
    document = etree.fromstring(html, etree.HTMLParser()).getroottree()
    # premailer would inline every <style> it finds, not only `css`.
    for style in document.iter("style"):
        style.set(Premailer.attribute_name, "ignore")
    Premailer(
        css_text=css,
        # premailer would otherwise fetch every <link> stylesheet (it reads files only through them).
        allow_network=False,
        # MJML writes the HTML attributes Outlook needs; premailer's copies of the CSS would replace
        # the thumbnails' exact pixel sizes with width="100%" height="auto", and put bgcolor on
        # elements that have no such attribute.
        disable_basic_attributes=["align", "valign", "bgcolor", "width", "height"],
        # Without profiles, cssutils logs every property as unknown.
        cssutils_logging_level=logging.CRITICAL,
    ).transform(document.getroot())
    # premailer removes the marker only from the <style> it reads, not from those for other media.
    etree.strip_attributes(document, Premailer.attribute_name)
    return etree.tostring(document, method="html", encoding="unicode")
