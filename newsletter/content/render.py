"""Render an issue's email: Jinja2 + MJML → HTML, CSS inlined by premailer, and a plain-text part made
from the same objects, wrapped at 76 columns. The issue is a day's digest, or a week's most upvoted
papers (the weekly edition), each of whose cards names the day it appeared on.

One render serves every recipient: the unsubscribe link is UNSUBSCRIBE_TAG, which the sender
replaces per recipient. The Jinja environment is built once per templates folder and per process;
Jinja re-reads a template only when its file changes (which is what the live preview relies on).
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
import re
import traceback
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from .assets import Thumbnail, resolve_thumbnail
from ..config import bundled_templates
from ..sections import Site
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


# The languages readers get pages and mail in. The templates' and this module's messages are
# written in English, which therefore needs no catalog; every other language has its catalog,
# locale/<language>/LC_MESSAGES/messages.po (see README, "Languages and templates").
LANGUAGES = ("ko", "en")
SOURCE_LANGUAGE = "en"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"


def reader_language(tag: str) -> str:
    """The language of LANGUAGES a BCP 47 tag asks for ("ko-KR": "ko"), English when none."""
    primary = tag.split("-")[0].lower()
    return primary if primary in LANGUAGES else SOURCE_LANGUAGE


def page_language(site: Site) -> str:
    """The language of what readers see that no digest decides (the sign-up, confirmation,
    preferences and unsubscribe pages, the sign-up mails): `language`, else the language digests
    are written in (`digest_language`)."""
    return site.language or reader_language(site.digest_language)


@functools.lru_cache(maxsize=None)
def translations(language: str) -> gettext.NullTranslations:
    """The message catalog of `language`, read from its .po file when first asked for: no compiled
    .mo file to keep in git or to build (Babel compiles it in memory, in milliseconds)."""
    po_file = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if language == SOURCE_LANGUAGE or not po_file.is_file():
        return gettext.NullTranslations()
    # Imported here: only a render in a translated language needs them.
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po_file.open("rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)  # fuzzy entries are left out, as msgfmt leaves them
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


class Wording:
    """What this module writes in one language, rather than the templates: the subject's words,
    the weekly edition's title, the days and weeks. The words come from the language's catalog, the
    dates from CLDR through Babel, by patterns the catalog gives."""

    def __init__(self, language: str) -> None:
        self.language = language
        self._messages = translations(language)

    @property
    def weekly_title(self) -> str:
        """"{range}": the weekly edition's title (and its subject's {date})."""
        return self._messages.gettext("Weekly papers, {range}")

    @property
    def weekly_line(self) -> str:
        """Under the weekly edition's title, before the number of papers."""
        return self._messages.gettext("The week's most upvoted papers")

    def and_more(self, others: int) -> str:
        """The subject's {more}: " 외 4편", " and 4 more"."""
        return self._messages.ngettext(" and {n} more", " and {n} more", others).format(n=others)

    def daily_title(self, day: date) -> str:
        """A day's issue's heading: "1월 23일 금요일의 논문", "Papers for Friday, January 23"."""
        pattern = self._messages.pgettext("date pattern: a day's issue", "EEEE, MMMM d")
        return self._messages.gettext("Papers for {date}").format(date=self._date(day, pattern))

    def year(self, day: date) -> str:
        """Under that heading, before the number of papers: "2026년", "2026"."""
        return self._date(day, self._messages.pgettext("date pattern: the year", "y"))

    def short_date(self, day: date) -> str:
        """The subject's {date}: "2026년 1월 23일", "January 23, 2026"."""
        return self._date(day, "long")

    def day(self, day: date) -> str:
        """A weekly card's day, short, with its weekday: "1월 23일 (금)", "Fri, Jan 23"."""
        from babel.dates import format_skeleton

        return format_skeleton("MMMEd", day, locale=self.language)

    def date_range(self, first: date, last: date) -> str:
        """A week, its year and month said once when they are: "January 19–25, 2026", "January
        26 – February 1, 2026", "December 29, 2025 – January 4, 2026". (CLDR's own intervals would
        write Korean weeks with "~".) The first day's pattern ends with what stands between the two."""
        messages = self._messages
        if first.year != last.year:
            start = messages.pgettext("date pattern: a week's first day, another year", "MMMM d, y' – '")
            end = messages.pgettext("date pattern: a week's last day, another year", "MMMM d, y")
        elif first.month != last.month:
            start = messages.pgettext("date pattern: a week's first day, another month", "MMMM d' – '")
            end = messages.pgettext("date pattern: a week's last day, another month", "MMMM d, y")
        else:
            start = messages.pgettext("date pattern: a week's first day, the same month", "MMMM d'–'")
            end = messages.pgettext("date pattern: a week's last day, the same month", "d, y")
        return self._date(first, start) + self._date(last, end)

    def _date(self, day: date, pattern: str) -> str:
        # Imported here: Babel's dates take a tenth of a cold start, which only a render needs.
        from babel.dates import format_date

        return format_date(day, pattern, locale=self.language)


@functools.lru_cache(maxsize=None)
def wording_for(language: str) -> Wording:
    """The wording for a BCP 47 tag ("ko-KR" uses "ko"); English when the language has none."""
    return Wording(reader_language(language))


@dataclass(frozen=True)
class RenderedIssue:
    date: date  # the digest's; a weekly edition's is its week's Sunday (Edition.last_day)
    subject: str
    preheader: str
    html: str  # holds UNSUBSCRIBE_TAG and PREFERENCES_TAG where the recipient's own URLs go
    text: str  # likewise
    language: str  # its pages' and mail's: `language`, else its digest's
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
    source: Digest | Week, site: Site, *, abstract: AbstractShown | None = None, page: bool = False
) -> RenderedIssue:
    """The issue's email, from a day's digest or a week's (the weekly edition): compiled,
    CSS-inlined HTML and the plain-text part. `abstract` overrides site.email_abstract (the web
    version shows every abstract in full). With `page`, the web version: its footer invites to sign
    up instead of saying why a reader got it, and holds no reader's link. Never touches the network."""
    issue = _issue(source, site)
    context = {**_context(issue, site, abstract or site.email_abstract), "page": page}
    mjml_source = render_template(site, MJML_TEMPLATE, context, issue.language)
    html = _inline_css(*_compile_mjml(mjml_source))
    text = render_template(site, TEXT_TEMPLATE, context, issue.language)
    return RenderedIssue(
        date=issue.date,
        subject=context["subject"],
        preheader=context["preheader"],
        html=html,
        text=text,
        language=issue.language,
        web_url=context["web_url"],
    )


def render_mjml(source: Digest | Week, site: Site) -> str:
    """The Jinja-expanded MJML of an issue, before compilation (what the reference MJML compiler
    validates and compiles in the tests)."""
    issue = _issue(source, site)
    context = {**_context(issue, site, site.email_abstract), "page": False}
    return render_template(site, MJML_TEMPLATE, context, issue.language)


def signup_url(site: Site) -> str:
    """The sign-up form the public pages invite to: the default list's."""
    return f"{site.base_url}/subscribe/{site.default_list}"


def web_url(site: Site, edition: Edition) -> str:
    """The issue's "view in browser" page: <base_url>/2026-01-23/, or /2026-W04/ for a week's."""
    return f"{site.base_url}/{edition.key}/"


@dataclass(frozen=True)
class _Issue:
    """What the templates show of a day's digest or of a week's, in the words of the issue's
    language."""

    edition: Edition
    date: date  # RenderedIssue.date
    title: str  # the heading readers see
    source_title: str  # the subject's {title}: the digest's own, or the weekly edition's heading
    dated: str  # the header's line under the title, before the number of papers
    when: str  # the subject's {date}
    weekly: bool
    cards: list[Card]
    language: str  # of its words: `language`, else its digest's
    data_language: str  # of its digest's text (titles, summaries), which is data, whatever `language` says


def _issue(source: Digest | Week, site: Site) -> _Issue:
    language = site.language or reader_language(source.language)
    words = wording_for(language)
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
            weekly=True,
            cards=[
                Card(found.paper, resolve_thumbnail(found.paper, found.digest, site), found.day)
                for found in source.papers
            ],
            language=language,
            data_language=source.language,
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
        weekly=False,
        cards=[Card(paper, resolve_thumbnail(paper, source, site)) for paper in source.papers],
        language=language,
        data_language=source.language,
    )


def _subject(issue: _Issue, site: Site) -> str:
    """site.subject_template filled in: by default "2026년 1월 23일 — EvoCUA 외 4편" (or "주간 논문
    2026년 1월 19일–25일 — EvoCUA 외 9편"), the date and the first paper by its short name (the part
    of its title before a colon), which is what a reader recognises and what fits a phone's inbox
    row. The From name is not repeated: the inbox shows it beside the subject."""
    papers = [card.paper for card in issue.cards]
    return site.subject_template.format(
        date=issue.when,
        first=short_title(papers[0].title) if papers else issue.title,
        more=wording_for(issue.language).and_more(len(papers) - 1) if len(papers) > 1 else "",
        papers=len(papers),
        title=issue.source_title,
        from_name=site.from_name,
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


def _context(issue: _Issue, site: Site, abstract: AbstractShown) -> dict:
    return {
        "title": issue.title,
        "cards": issue.cards,
        "abstract": abstract,
        "subject": _subject(issue, site),
        "preheader": _preheader(issue),
        "preheader_filler": PREHEADER_FILLER,
        "readable_date": issue.dated,
        "weekly": issue.weekly,
        "words": wording_for(issue.language),
        # The digest's text is marked with its own language where the issue's words are in another
        # (lang="ko" inside an English page), for screen readers, hyphenation and fonts.
        "data_lang": issue.data_language if issue.data_language != issue.language else None,
        # Korean reads best broken between words, never inside one; Chinese and Japanese have no
        # spaces to break at, so only Korean gets it.
        "keep_words_whole": "ko" in (issue.language, issue.data_language),
        "web_url": web_url(site, issue.edition),
        "archive_url": f"{site.base_url}/",
        "signup_url": signup_url(site),
        "unsubscribe_url": UNSUBSCRIBE_TAG,
        "preferences_url": PREFERENCES_TAG,
        "settings": site,
        "light": LIGHT,
        "dark": DARK,
        "fonts": FONT_STACK,
        "short_title": short_title,
    }


# The templates that ship with the package: templates_dir's default, and what a templates_dir of
# one's own falls back on for every template it does not hold.
BUNDLED_TEMPLATES = bundled_templates().resolve()


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: Path, language: str) -> jinja2.Environment:
    # A folder of one's own is an overlay: its file of a name replaces the bundled one.
    folders = [templates_dir] if templates_dir == BUNDLED_TEMPLATES else [templates_dir, BUNDLED_TEMPLATES]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        extensions=["jinja2.ext.i18n"],
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
    # {% trans %} blocks' messages with their line breaks and indentation folded, as babel.cfg
    # extracts them.
    env.policies["ext.i18n.trimmed"] = True
    # Newstyle: _("… %(name)s", name=value) escapes the value, and a message missing from the
    # catalog still fills in its values.
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.globals["language"] = language
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


def environment(site: Site, language: str | None = None) -> jinja2.Environment:
    """The process's Jinja environment for the configured templates folder in `language` (by
    default page_language's): every template (email, web pages, feed, sign-up mails) is loaded
    through it, and speaks that language (`_()`, `{% trans %}`, the global `language`)."""
    return _environment(site.templates_dir.resolve(), language or page_language(site))


def render_template(site: Site, name: str, context: dict[str, Any], language: str | None = None) -> str:
    """Template `name` rendered with `context` in `language` (by default page_language's); any
    Jinja error becomes a RenderError naming the template file and line."""
    with _template_errors(site, name):
        return environment(site, language).get_template(name).render(context)


def render_macro(site: Site, name: str, macro: str, *args: str) -> str:
    """Macro `macro` of template `name` called with `args`, in page_language's language: one line
    of copy (a mail's subject) kept in a template, so that it is translated and overridden as
    templates are."""
    with _template_errors(site, name):
        return str(getattr(environment(site).get_template(name).module, macro)(*args))


@contextmanager
def _template_errors(site: Site, name: str) -> Iterator[None]:
    try:
        yield
    except jinja2.TemplateSyntaxError as error:
        raise RenderError(f"{error.filename or error.name}:{error.lineno}: {error.message}") from None
    except jinja2.TemplateNotFound as error:
        folder = site.templates_dir
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
