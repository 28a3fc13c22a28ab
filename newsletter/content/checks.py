"""Pre-send checks: what would make an issue look broken, clipped or unsafe in a reader's inbox.

Run on the rendered issue (before personalisation) by `newsletter check` and before every send.
Each problem says where it is (which image, which link, which part) and what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import lxml.html
from lxml import etree

from .digest import absolute_url, safe_url
from ..errors import CheckFailed
from .render import GMAIL_CLIP_BYTES, PREFERENCES_TAG, UNSUBSCRIBE_TAG, RenderedIssue

# The size check counts every personal placeholder at this length, since each recipient's own link
# (base URL + /unsubscribe/ + a ~50 character token) is longer than the placeholder.
PERSONAL_URL_BYTES = 256
# The most HTML an issue may have: Gmail clips at 102 KB, and click tracking, if it is ever turned
# on, rewrites every link into a longer one.
SIZE_LIMIT_BYTES = 90 * 1024
_SHOWN = 60  # characters of a URL or label quoted in a problem
# The provider puts the recipient's personal unsubscribe URL wherever the tag stands: anywhere but the
# footer's unsubscribe link would hand it to whatever surrounds it. Counted in any case, as the
# digest parser refuses it.
_TAG = re.compile(re.escape(UNSUBSCRIBE_TAG), re.IGNORECASE)
# Likewise the preferences link's, which the footer may hold once in each part.
_PREFERENCES = re.compile(re.escape(PREFERENCES_TAG), re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    where: str  # e.g. "image 3 (src=…)", "link 'Read the paper' (href=…)", "text part"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def received_bytes(html: str) -> int:
    """The size of an issue's HTML as a reader receives it: UTF-8, each personal placeholder
    counted as the reader's own link that replaces it. What Gmail's clip applies to, and the size
    `check`, `render` and `send` report."""
    return (
        len(html.encode("utf-8"))
        + len(_TAG.findall(html)) * (PERSONAL_URL_BYTES - len(UNSUBSCRIBE_TAG))
        + len(_PREFERENCES.findall(html)) * (PERSONAL_URL_BYTES - len(PREFERENCES_TAG))
    )


def kilobytes(size: int) -> str:
    """A size as every command shows it: "38.9 KB", a KB being 1,024 bytes (as Gmail's 102 KB)."""
    return f"{size / 1024:.1f} KB"


@dataclass
class CheckReport:
    html_bytes: int  # the HTML as a reader receives it (received_bytes), for the size line
    problems: list[Problem] = field(default_factory=list)
    # What each paper's card adds, by rank ("#1"), in the order of the issue: what a longer issue costs.
    card_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def size_line(self) -> str:
        """"HTML size 38.9 KB as a reader receives it, of 90 KB (ok)"; card_bytes has each card's."""
        verdict = "ok" if self.html_bytes < SIZE_LIMIT_BYTES else f"too big: Gmail clips at {GMAIL_CLIP_BYTES // 1024} KB"
        return f"HTML size {kilobytes(self.html_bytes)} as a reader receives it, of {SIZE_LIMIT_BYTES // 1024} KB ({verdict})"

    def raise_for_problems(self) -> None:
        """CheckFailed listing every problem, if there is any."""
        if self.problems:
            raise CheckFailed(self.problems)


def run_checks(issue: RenderedIssue) -> CheckReport:
    """Every rule, each problem reported once with where it is."""
    html_bytes = received_bytes(issue.html)
    report = CheckReport(html_bytes=html_bytes, card_bytes=card_sizes(issue.html))
    problems = report.problems
    if html_bytes >= SIZE_LIMIT_BYTES:
        problems.append(
            Problem(
                "HTML part",
                f"{kilobytes(html_bytes)} is over the {SIZE_LIMIT_BYTES // 1024} KB limit: Gmail clips at "
                f"{GMAIL_CLIP_BYTES // 1024} KB, unsubscribe link included, and click tracking lengthens every link",
            )
        )
    parts = {"subject": issue.subject, "preheader": issue.preheader, "HTML part": issue.html, "text part": issue.text}
    for name, value in parts.items():
        if "\ufffd" in value:
            offset = value.index("\ufffd")
            problems.append(Problem(name, f"holds a broken character (U+FFFD) at offset {offset}"))
    if not issue.subject.strip():
        problems.append(Problem("subject", "is empty"))
    for name in ("subject", "preheader"):
        if found := len(_TAG.findall(parts[name])):
            problems.append(Problem(name, _misplaced_tag(found)))
        if found := len(_PREFERENCES.findall(parts[name])):
            problems.append(Problem(name, _misplaced_tag(found, tag=PREFERENCES_TAG)))
    if (found := len(_PREFERENCES.findall(issue.text))) > 1:
        problems.append(Problem("text part", _misplaced_tag(found - 1, " besides its one preferences link", PREFERENCES_TAG)))
    if not issue.text.strip():
        problems.append(Problem("text part", "is missing: mail without a text part is more often taken for spam"))
    elif not (found := len(_TAG.findall(issue.text))):
        problems.append(Problem("text part", f"has no unsubscribe link ({UNSUBSCRIBE_TAG})"))
    elif found > 1:
        problems.append(Problem("text part", _misplaced_tag(found - 1, " besides its one unsubscribe link")))
    problems.extend(_check_html(issue.html))
    return report


def card_sizes(html: str) -> dict[str, int]:
    """Each paper card's size as written, by rank ("#1"): its element with class "card", the rank
    from the id "paper-N" inside it."""
    try:
        document = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return {}  # _check_html reports it
    sizes = {}
    for number, card in enumerate(document.find_class("card"), start=1):
        anchors = [id_ for element in card.iter() if (id_ := element.get("id") or "").startswith("paper-")]
        rank = f"#{anchors[0].removeprefix('paper-')}" if anchors else f"card {number}"
        sizes[rank] = len(lxml.html.tostring(card, encoding="utf-8"))
    return sizes


def _misplaced_tag(count: int, qualifier: str = "", tag: str = UNSUBSCRIBE_TAG) -> str:
    times = "once" if count == 1 else f"{count} times"
    kind = "unsubscribe" if tag == UNSUBSCRIBE_TAG else "preferences"
    return (
        f"holds the {kind} placeholder {tag} {times}{qualifier}: "
        f"the provider would put each reader's personal {kind} link there"
    )


def _check_html(html: str) -> list[Problem]:
    if not html.strip():
        return [Problem("HTML part", "is empty")]
    try:
        document = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError) as error:
        return [Problem("HTML part", f"does not parse: {error}")]
    problems: list[Problem] = []
    for script in document.iter("script"):
        problems.append(Problem(f"<script> on line {script.sourceline}", "scripts are not allowed in email"))
    for number, image in enumerate(document.iter("img"), start=1):
        problems.extend(_check_image(number, image))
    unsubscribe_links = preferences_links = 0
    for link in document.iter("a"):
        href = (link.get("href") or "").strip()
        if href == UNSUBSCRIBE_TAG:
            unsubscribe_links += 1
            continue
        if href == PREFERENCES_TAG:
            preferences_links += 1
            continue
        problem = _link_problem(href)
        if problem:
            problems.append(Problem(_describe_link(link, href), problem))
    if not unsubscribe_links:
        problems.append(Problem("HTML part", f"has no unsubscribe link (<a href=\"{UNSUBSCRIBE_TAG}\">)"))
    # The provider replaces the tag as written in the source, so the occurrences there must be exactly
    # those links' hrefs: any other (in a URL, an attribute, the text) would receive the reader's
    # link too, and a link spelling it with character references would never get one.
    written = len(_TAG.findall(html))
    if written > unsubscribe_links:
        misplaced = _misplaced_tag(written - unsubscribe_links, " outside its unsubscribe links")
        problems.append(Problem("HTML part", misplaced))
    elif written < unsubscribe_links:
        problems.append(
            Problem(
                "HTML part",
                f"{unsubscribe_links - written} unsubscribe link(s) spell {UNSUBSCRIBE_TAG} with character "
                "references, which the provider does not replace",
            )
        )
    if (preferences := len(_PREFERENCES.findall(html))) > preferences_links:
        misplaced = _misplaced_tag(preferences - preferences_links, " outside its preferences links", PREFERENCES_TAG)
        problems.append(Problem("HTML part", misplaced))
    return problems


def _check_image(number: int, image: lxml.html.HtmlElement) -> list[Problem]:
    src = (image.get("src") or "").strip()
    where = f"image {number} (src={_quote(src) if src else 'missing'}, line {image.sourceline})"
    found: list[str] = []
    if not absolute_url(src, ("https",)):
        found.append("src is not an absolute https URL")
    if not (image.get("alt") or "").strip():
        found.append("has no alt text")
    for dimension in ("width", "height"):
        value = (image.get(dimension) or "").strip().removesuffix("px")
        if not value.isdigit() or int(value) == 0:
            found.append(f"has no {dimension} in pixels (got {image.get(dimension)!r})")
    return [Problem(where, what) for what in found]


def _link_problem(href: str) -> str | None:
    if not href:
        return "has no href"
    if safe_url(href):
        return None
    if href.lower().startswith("mailto:"):
        return "mailto: link without an address"
    return "is not an absolute http(s) or mailto link"


def _describe_link(link: lxml.html.HtmlElement, href: str) -> str:
    label = " ".join(link.text_content().split())
    if not label:
        label = " ".join(image.get("alt", "") for image in link.iter("img")).strip() or "(no text)"
    return f"link {_quote(label)} (href={_quote(href)}, line {link.sourceline})"


def _quote(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[: _SHOWN - 1] + "…")
