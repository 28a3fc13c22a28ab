"""Pre-send checks: what would make an issue look broken, clipped or unsafe in a reader's inbox.

Run on the rendered issue (before personalisation) by `newsletter check` and before every send.
Each problem says where it is (which image, which link, which part) and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import lxml.html
from lxml import etree

from .errors import CheckFailed
from .render import GMAIL_CLIP_BYTES, UNSUBSCRIBE_TAG, RenderedIssue

# The size check counts every unsubscribe placeholder at this length, since each recipient's own
# link (base URL + /unsubscribe/ + a ~50 character token) is longer than the placeholder.
PERSONAL_URL_BYTES = 256
_SHOWN = 60  # characters of a URL or label quoted in a problem


@dataclass(frozen=True)
class Problem:
    where: str  # e.g. "image 3 (src=…)", "link 'Read the paper' (href=…)", "text part"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class CheckReport:
    html_bytes: int  # the HTML as a recipient receives it, for the size line
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def size_line(self) -> str:
        verdict = "ok" if self.html_bytes < GMAIL_CLIP_BYTES else "too big: Gmail clips it"
        return f"HTML size {self.html_bytes / 1024:.1f} KB of {GMAIL_CLIP_BYTES // 1024} KB ({verdict})"

    def raise_for_problems(self) -> None:
        """CheckFailed listing every problem, if there is any."""
        if self.problems:
            raise CheckFailed(self.problems)


def run_checks(issue: RenderedIssue) -> CheckReport:
    """Every rule, each problem reported once with where it is."""
    html_bytes = len(issue.html.encode("utf-8")) + issue.html.count(UNSUBSCRIBE_TAG) * (
        PERSONAL_URL_BYTES - len(UNSUBSCRIBE_TAG)
    )
    report = CheckReport(html_bytes=html_bytes)
    problems = report.problems
    if html_bytes >= GMAIL_CLIP_BYTES:
        problems.append(
            Problem(
                "HTML part",
                f"{html_bytes / 1024:.1f} KB is over Gmail's {GMAIL_CLIP_BYTES // 1024} KB: "
                "Gmail would clip the message, unsubscribe link included",
            )
        )
    parts = {"subject": issue.subject, "preheader": issue.preheader, "HTML part": issue.html, "text part": issue.text}
    for name, value in parts.items():
        if "\ufffd" in value:
            offset = value.index("\ufffd")
            problems.append(Problem(name, f"holds a broken character (U+FFFD) at offset {offset}"))
    if not issue.subject.strip():
        problems.append(Problem("subject", "is empty"))
    if not issue.text.strip():
        problems.append(Problem("text part", "is missing: mail without a text part is more often taken for spam"))
    elif UNSUBSCRIBE_TAG not in issue.text:
        problems.append(Problem("text part", f"has no unsubscribe link ({UNSUBSCRIBE_TAG})"))
    problems.extend(_check_html(issue.html))
    return report


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
    unsubscribe = False
    for link in document.iter("a"):
        href = (link.get("href") or "").strip()
        if href == UNSUBSCRIBE_TAG:
            unsubscribe = True
            continue
        problem = _link_problem(href)
        if problem:
            problems.append(Problem(_describe_link(link, href), problem))
    if not unsubscribe:
        problems.append(Problem("HTML part", f"has no unsubscribe link (<a href=\"{UNSUBSCRIBE_TAG}\">)"))
    return problems


def _check_image(number: int, image: lxml.html.HtmlElement) -> list[Problem]:
    src = (image.get("src") or "").strip()
    where = f"image {number} (src={_quote(src) if src else 'missing'}, line {image.sourceline})"
    found: list[str] = []
    parts = urlsplit(src)
    if parts.scheme.lower() != "https" or not parts.netloc:
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
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme == "mailto":
        return None if parts.path else "mailto: link without an address"
    if scheme in ("http", "https") and parts.netloc:
        return None
    return "is not an absolute http(s) or mailto link"


def _describe_link(link: lxml.html.HtmlElement, href: str) -> str:
    label = " ".join(link.text_content().split())
    if not label:
        label = " ".join(image.get("alt", "") for image in link.iter("img")).strip() or "(no text)"
    return f"link {_quote(label)} (href={_quote(href)}, line {link.sourceline})"


def _quote(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[: _SHOWN - 1] + "…")
