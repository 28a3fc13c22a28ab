"""A day's digest: the Markdown file parsed into typed objects that every later stage reads; and a
week's digests, from which the weekly edition takes its most upvoted papers."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from .edition import Edition
from ..errors import DigestError

if TYPE_CHECKING:
    from ..sections import Site


@dataclass(frozen=True)
class Inline:
    """A run of the digest's inline Markdown, made safe once for both parts of the email."""

    html: str  # escaped; only http(s) and mailto links kept
    text: str  # plain text, every link written out


@dataclass(frozen=True)
class Paper:
    rank: int
    title: str
    url: str
    paper_id: str | None  # the Hugging Face paper id (e.g. "2601.15876"), when the link is one
    upvotes: int | None
    thumbnail: str | None  # as written in the digest: a path beside it or an absolute URL
    summary: Inline | None
    key_points: list[Inline] = field(default_factory=list)
    abstract: list[Inline] = field(default_factory=list)  # paragraphs
    line: int = 0  # where the paper's heading stands in the file


@dataclass(frozen=True)
class Digest:
    date: date
    title: str
    papers: list[Paper]
    language: str  # BCP 47 tag of the body text ("ko" for the example)
    path: Path

    @property
    def edition(self) -> Edition:
        """The daily issue it makes."""
        return Edition.daily(self.date)


# -- parsing -----------------------------------------------------------------------------------

DIGEST_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})\.md")
_ISO_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
_UPVOTES = re.compile(
    r"(?:upvotes?|votes|likes|추천\s*수?|좋아요)\s*[:：]?\s*(\d{1,3}(?:[,.'’\u00a0\u202f ]\d{3})+|\d+)",
    re.IGNORECASE,
)
_RANK = re.compile(r"\d+")
# A rank or an upvote count longer than this is a typo or an attack, not a number to show (and
# past 4300 digits Python refuses to convert it at all).
MAX_DIGITS = 9

# The placeholders for each reader's personal unsubscribe and preferences URLs. The sender replaces
# them wherever they stand (HTML, text), so digest text holding one would carry every reader's token
# into a link or a title of the digest author's choosing: the digest may not.
UNSUBSCRIBE_TAG = "-unsubscribe_url-"
PREFERENCES_TAG = "-preferences_url-"
PERSONAL_TAGS = (UNSUBSCRIBE_TAG, PREFERENCES_TAG)
_UNSUBSCRIBE_TAG = re.compile("|".join(re.escape(tag) for tag in PERSONAL_TAGS), re.IGNORECASE)


def without_personal_tags(text: str) -> str:
    """`text` as the parser reads it (clean_text), with every personal tag's dashes dropped
    ("unsubscribe_url"), until none is left ("--unsubscribe_url--" holds a second one): text from
    outside written into a digest stays text, and carries no reader's link."""
    text = clean_text(text)
    while (untagged := _UNSUBSCRIBE_TAG.sub(lambda found: found.group(0).strip("-"), text)) != text:
        text = untagged
    return text


_TAG_MESSAGE = (
    f"the digest may not contain {UNSUBSCRIBE_TAG!r} or {PREFERENCES_TAG!r} (in any case): the sender "
    "replaces them with each reader's personal links"
)

# A section heading names its section in Korean or English, after any emoji (or a broken one).
_SECTIONS = {
    "summary": ("요약", "summary", "tldr", "tl dr", "한줄 요약"),
    "key_points": (
        "핵심 포인트", "핵심포인트", "주요 포인트", "key points", "keypoints", "key takeaways", "highlights",
    ),
    "abstract": ("초록", "abstract"),
}

_markdown = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")
# Every destination becomes a link token so that _render_inline can keep the label of a link it
# refuses; markdown-it's own filter would leave the whole "[label](javascript:…)" as literal text.
_markdown.validateLink = lambda url: True


# Removed from digest text: the replacement character (a broken emoji or byte), the Unicode bidi
# controls (an override or isolate in a title would reorder the subject line a reader sees), and
# every other C0/C1 control character except tab, line feed and carriage return, which Markdown reads.
_UNWANTED = re.compile(
    "[\ufffd\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
)


def clean_text(text: str) -> str:
    """The text without replacement characters, bidi controls and control characters."""
    return _UNWANTED.sub("", text)


def absolute_url(url: str, schemes: tuple[str, ...] = ("http", "https")) -> bool:
    """Whether `url` is absolute, with one of `schemes` and a host ("https:foo" has none)."""
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in schemes and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def safe_url(url: str) -> bool:
    """Whether a link may appear in an email: absolute http(s) or mailto, nothing else."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    if parts.scheme.lower() == "mailto":
        return bool(parts.path)
    return absolute_url(url)


def hugging_face_paper_id(url: str) -> str | None:
    """The paper id of a Hugging Face paper page URL (https://huggingface.co/papers/<id>)."""
    parts = urlsplit(url)
    if parts.hostname not in ("huggingface.co", "www.huggingface.co", "hf.co"):
        return None
    segments = [segment for segment in parts.path.split("/") if segment]
    if len(segments) >= 2 and segments[0] == "papers":
        return segments[1]
    return None


def _render_inline(tokens: list[Token]) -> Inline:
    html_parts: list[str] = []
    text_parts: list[str] = []
    # One entry per open link: its href when kept, None when refused, and where its label starts.
    links: list[tuple[str | None, int]] = []
    tags = ("em", "strong", "s")  # strikethrough's tokens are s_open/s_close
    for token in tokens:
        kind = token.type
        if kind == "text":
            html_parts.append(html.escape(token.content, quote=False))
            text_parts.append(token.content)
        elif kind == "code_inline":
            html_parts.append(f"<code>{html.escape(token.content, quote=False)}</code>")
            text_parts.append(token.content)
        elif kind == "softbreak":
            html_parts.append("\n")
            text_parts.append(" ")
        elif kind == "hardbreak":
            html_parts.append("<br>\n")
            text_parts.append("\n")
        elif kind.endswith(("_open", "_close")) and kind.rsplit("_", 1)[0] in tags:
            name, edge = kind.rsplit("_", 1)
            html_parts.append(f"<{name}>" if edge == "open" else f"</{name}>")
        elif kind == "link_open":
            href = str(token.attrGet("href") or "")
            kept = href if safe_url(href) else None
            if kept is not None:
                html_parts.append(f'<a href="{html.escape(kept, quote=True)}">')
            links.append((kept, len(text_parts)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            if href is None:
                continue
            html_parts.append("</a>")
            label = "".join(text_parts[start:]).strip()
            shown = href.removeprefix("mailto:") if href.lower().startswith("mailto:") else href
            if label not in (href, shown):
                text_parts.append(f" ({shown})")
        elif kind == "image":
            # An image inside running text cannot meet the email's image rules; its alt text stays.
            alt = token.content
            html_parts.append(html.escape(alt, quote=False))
            text_parts.append(alt)
        elif token.content:
            html_parts.append(html.escape(token.content, quote=False))
            text_parts.append(token.content)
    return Inline(html="".join(html_parts).strip(), text="".join(text_parts).strip())


def _join(parts: list[Inline], separator: str = " ") -> Inline:
    return Inline(
        html=separator.join(part.html for part in parts), text=separator.join(part.text for part in parts)
    )


def _section_of(heading: str) -> str | None:
    # Emoji, broken emoji, punctuation and brackets are dropped: "📝 초록 (번역)" → "초록 번역".
    words = "".join(
        char if unicodedata.category(char)[0] in "LN" else " " for char in unicodedata.normalize("NFKC", heading)
    )
    name = " ".join(words.casefold().split())
    for section, names in _SECTIONS.items():
        if any(name == known or name.startswith(known + " ") for known in names):
            return section
    return None


def _is_heading(token: Token) -> bool:
    # Text followed by a "---" paper separator without a blank line between is, to CommonMark, a
    # setext heading; here it stays a paragraph of its section.
    return token.type == "heading_open" and token.markup != "-"


def _line(token: Token) -> int:
    return token.map[0] + 1 if token.map else 0


def _is_hangul(char: str) -> bool:
    # Syllables, then the conjoining and the compatibility jamo.
    return "\uac00" <= char <= "\ud7a3" or "\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f"


def _language(texts: list[str]) -> str:
    # Counted by words, since Korean prose is full of Latin terms ("KV 캐시를"): a word holding any
    # Hangul counts as Korean.
    hangul = latin = 0
    for word in " ".join(texts).split():
        if any(_is_hangul(char) for char in word):
            hangul += 1
        elif any(char.isalpha() for char in word):
            latin += 1
    return "ko" if hangul > latin else "en"


@dataclass
class _PaperDraft:
    rank: int
    title: str
    url: str
    line: int
    upvotes: int | None = None
    thumbnail: str | None = None
    summary: list[Inline] = field(default_factory=list)
    key_points: list[Inline] = field(default_factory=list)
    abstract: list[Inline] = field(default_factory=list)

    def paper(self) -> Paper:
        return Paper(
            rank=self.rank,
            title=self.title,
            url=self.url,
            paper_id=hugging_face_paper_id(self.url),
            upvotes=self.upvotes,
            thumbnail=self.thumbnail,
            summary=_join(summary) if (summary := [part for part in self.summary if part.text]) else None,
            key_points=[point for point in self.key_points if point.text],
            abstract=[paragraph for paragraph in self.abstract if paragraph.text],
            line=self.line,
        )


def _paper_heading(inline: Token, position: int, path: Path) -> _PaperDraft:
    children = inline.children or []
    line = _line(inline)
    opening = next((i for i, child in enumerate(children) if child.type == "link_open"), None)
    if opening is None:
        raise DigestError(
            f"paper heading {inline.content.strip()!r} has no linked title "
            "(expected '## <rank>. [<title>](<url>)')",
            path=path,
            line=line,
        )
    closing = next(i for i in range(opening, len(children)) if children[i].type == "link_close")
    url = str(children[opening].attrGet("href") or "")
    title = " ".join(_render_inline(children[opening + 1 : closing]).text.split())
    if not title:
        raise DigestError("the paper's linked title is empty", path=path, line=line)
    if not safe_url(url) or url.lower().startswith("mailto:"):
        raise DigestError(f"the paper's link must be an absolute http(s) URL, got {url!r}", path=path, line=line)
    rank = _RANK.search(_render_inline(children[:opening]).text)
    number = _number(rank.group(), "rank", path, line) if rank else position
    return _PaperDraft(rank=number, title=title, url=url, line=line)


def _upvotes(text: str, path: Path, line: int) -> int | None:
    found = _UPVOTES.search(text)
    if found is None:
        return None
    return _number(re.sub(r"\D", "", found.group(1)), "upvote count", path, line)


def _number(digits: str, name: str, path: Path, line: int) -> int:
    if len(digits) > MAX_DIGITS:
        shown = digits if len(digits) <= 20 else f"{digits[:12]}… ({len(digits)} digits)"
        raise DigestError(f"the {name} {shown} has more than {MAX_DIGITS} digits", path=path, line=line)
    return int(digits)


def _refuse_unsubscribe_tag(text: str, path: Path) -> None:
    """DigestError naming the first line that holds a personal tag as written."""
    # Lines as Markdown counts them (str.splitlines would also break at U+2028 and others).
    for number, line in enumerate(re.split(r"\r\n?|\n", text), start=1):
        if _UNSUBSCRIBE_TAG.search(line):
            raise DigestError(_TAG_MESSAGE, path=path, line=number)


def _refuse_unsubscribe_tag_in(token: Token, path: Path) -> None:
    """Likewise for an inline token that spells the tag with escapes or entities
    ("-unsubscribe\\_url-", "&#95;") or splits it with formatting: as the HTML, the text part or
    a link's or image's URL would hold it."""
    content = _render_inline(token.children or [])
    urls = [str(value) for child in token.children or [] for value in child.attrs.values()]
    if any(_UNSUBSCRIBE_TAG.search(value) for value in [content.html, content.text, *urls]):
        raise DigestError(_TAG_MESSAGE, path=path, line=_line(token))


def _digest_date(path: Path, title: str, title_line: int) -> date:
    from_name = DIGEST_NAME.fullmatch(path.name)
    in_title = _ISO_DATE.search(title)
    try:
        named = date.fromisoformat(from_name.group(1)) if from_name else None
    except ValueError:
        raise DigestError(f"the file name is not a real date: {path.name}", path=path) from None
    try:
        titled = date.fromisoformat(in_title.group(1)) if in_title else None
    except ValueError:
        message = f"the title's date {in_title.group(1)} is not a real date"
        raise DigestError(message, path=path, line=title_line) from None
    if named and titled and named != titled:
        raise DigestError(
            f"the title's date {titled} does not match the file name's date {named}", path=path, line=title_line
        )
    if named or titled:
        return named or titled  # type: ignore[return-value]
    raise DigestError(
        "cannot tell the digest's date: name the file YYYY-MM-DD.md or put the date in the title",
        path=path,
        line=title_line,
    )


def parse_digest(text: str, path: Path) -> Digest:
    """The digest in `text` (the contents of `path`), or one DigestError naming the file and line."""
    text = clean_text(text).lstrip("\ufeff")
    _refuse_unsubscribe_tag(text, path)
    tokens = _markdown.parse(text)
    title: str | None = None
    title_line = 1
    drafts: list[_PaperDraft] = []
    paper: _PaperDraft | None = None
    section: str | None = None
    item_depth = 0  # nesting of list items inside the key points, so a sub-list joins its item
    item_parts: list[Inline] = []  # the parts of the key point being read, until its item closes

    def end_item() -> None:
        # The point being read belongs to the paper and section it started in: it ends at its
        # item's close, or at any heading first (a heading inside a list item), never later.
        if item_parts and paper is not None and section == "key_points":
            paper.key_points.append(_join(item_parts))
        item_parts.clear()

    for index, token in enumerate(tokens):
        if token.type == "inline":
            _refuse_unsubscribe_tag_in(token, path)
        if _is_heading(token):
            end_item()
            inline = tokens[index + 1]
            if token.tag == "h1":
                if title is None:
                    title = " ".join(_render_inline(inline.children or []).text.split())
                    title_line = _line(token)
            elif token.tag == "h2":
                paper = _paper_heading(inline, len(drafts) + 1, path)
                drafts.append(paper)
                section = None
            elif paper is not None and token.tag == "h3":
                section = _section_of(inline.content)
        elif token.type == "list_item_open":
            item_depth += 1
        elif token.type == "list_item_close":
            item_depth -= 1
            if item_depth == 0:
                end_item()
        elif token.type == "inline" and paper is not None and not _is_heading(tokens[index - 1]):
            content = _render_inline(token.children or [])
            if section is None:
                image = next((child for child in token.children or [] if child.type == "image"), None)
                if image is not None and paper.thumbnail is None:
                    paper.thumbnail = str(image.attrGet("src") or "") or None
                if paper.upvotes is None:
                    paper.upvotes = _upvotes(content.text, path, _line(token))
            elif section == "key_points" and item_depth:
                item_parts.append(content)
            elif section == "key_points":
                paper.key_points.append(content)
            elif section == "summary":
                paper.summary.append(content)
            elif section == "abstract":
                paper.abstract.append(content)

    if not title:
        raise DigestError("no title: the digest must start with '# <date> Daily Papers (Top N)'", path=path, line=1)
    day = _digest_date(path, title, title_line)
    if not drafts:
        raise DigestError("no papers: expected '## <rank>. [<title>](<url>)' headings", path=path, line=title_line)
    papers = [draft.paper() for draft in drafts]
    body = [
        inline.text
        for paper in papers
        for inline in [*([paper.summary] if paper.summary else []), *paper.key_points, *paper.abstract]
    ]
    return Digest(
        date=day, title=title, papers=papers, language=_language(body or [p.title for p in papers]), path=path
    )


def digest_path(site: Site, day: date) -> Path:
    return site.digests_dir / f"{day.isoformat()}.md"


def digest_dates(site: Site) -> list[date]:
    """The dates of every digest in the digests folder, oldest first."""
    folder = site.digests_dir
    if not folder.is_dir():
        return []
    days = []
    for entry in folder.iterdir():
        named = DIGEST_NAME.fullmatch(entry.name)
        if named and entry.is_file():
            try:
                days.append(date.fromisoformat(named.group(1)))
            except ValueError:
                continue
    return sorted(days)


def load_digest(site: Site, day: date | None = None) -> Digest:
    """The digest of `day` (by default the latest one in the digests folder)."""
    if day is None:
        days = digest_dates(site)
        if not days:
            folder = site.digests_dir
            raise DigestError(f"no digest found (expected files named YYYY-MM-DD.md in {folder})")
        day = days[-1]
    path = digest_path(site, day)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DigestError(f"no digest for {day.isoformat()}", path=path) from None
    except OSError as error:
        raise DigestError(f"cannot read the digest: {error.strerror}", path=path) from None
    # Undecodable bytes become U+FFFD, which parse_digest strips like a broken emoji.
    return parse_digest(raw.decode("utf-8", errors="replace"), path)


def load_issue(site: Site, edition: Edition | None = None) -> Digest | Week:
    """What `edition`'s issue is made from: its day's digest, or its week's; by default the latest
    digest."""
    if edition is not None and edition.weekly:
        return load_week(site, edition)
    return load_digest(site, edition.days[0] if edition is not None else None)


# -- the week ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeeklyPaper:
    """A paper of a weekly edition, as the day it first appeared on gave it."""

    paper: Paper  # ranked within the week, with the most upvotes any day gave it
    day: date
    digest: Digest  # that day's: a thumbnail named in it is beside it


@dataclass(frozen=True)
class Week:
    """An ISO week's daily digests and the papers its weekly edition shows."""

    edition: Edition
    digests: list[Digest]  # the days of the week that have one, oldest first
    papers: list[WeeklyPaper]  # the most upvoted, most first

    @property
    def language(self) -> str:
        """The language most of its papers are written in."""
        return Counter(found.digest.language for found in self.papers).most_common(1)[0][0]


def week_days(site: Site, edition: Edition) -> list[date]:
    """The days of the edition's week that have a digest file."""
    return [day for day in edition.days if digest_path(site, day).is_file()]


def load_week(site: Site, edition: Edition) -> Week:
    """The week's digests and its `weekly_top` most upvoted papers; DigestError when no day of the
    week has a digest, or one of them cannot make an issue."""
    days = week_days(site, edition)
    if not days:
        first, last = edition.days[0].isoformat(), edition.last_day.isoformat()
        folder = site.digests_dir
        raise DigestError(
            f"no digest for week {edition.key} ({first} to {last}): expected at least one of "
            f"{first}.md … {last}.md in {folder}"
        )
    digests = [load_digest(site, day) for day in days]
    return Week(edition, digests, most_upvoted(digests, site.weekly_top))


def most_upvoted(digests: list[Digest], count: int) -> list[WeeklyPaper]:
    """The `count` most upvoted distinct papers of `digests` (oldest first), ranked 1, 2, …. A paper
    on several days counts once, as its first day gave it, with the most upvotes any day gave it.
    Ties go to the earlier day, then the higher rank on it; papers without upvotes come last."""
    first: dict[str, WeeklyPaper] = {}
    upvotes: dict[str, int | None] = {}
    for digest in digests:
        for paper in digest.papers:
            # The same paper under another of Hugging Face's hosts is still the same paper.
            key = paper.paper_id or paper.url
            first.setdefault(key, WeeklyPaper(paper, digest.date, digest))
            known = [votes for votes in (upvotes.get(key), paper.upvotes) if votes is not None]
            upvotes[key] = max(known) if known else None

    def order(key: str) -> tuple[bool, int, date, int]:
        return upvotes[key] is None, -(upvotes[key] or 0), first[key].day, first[key].paper.rank

    ranked = sorted(first, key=order)
    return [
        replace(first[key], paper=replace(first[key].paper, rank=rank, upvotes=upvotes[key]))
        for rank, key in enumerate(ranked[:count], start=1)
    ]
