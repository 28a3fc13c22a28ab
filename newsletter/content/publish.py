"""Publishing: the issue's web version ("view in browser"), the archive page and the Atom feed.

The public folder is served at site.base_url, so an issue whose web_url is
`<base_url>/2026-01-23/` is written to `public/2026-01-23/index.html`, and a weekly edition's
(`<base_url>/2026-W04/`) to `public/2026-W04/index.html`; the archive and the feed list it dated by its
week's Sunday. The web version is the
email's template with every abstract in full (the email's cards link to their abstracts there) and a
page's footer: an invitation to the sign-up form instead of a reader's links. Beside each page an
`issue.json` records what the archive and the feed show of it; the archive and the feed are rebuilt
from every such record found, so publishing one date keeps all the others. Every file is written
atomically, and only after every output has been rendered, so a template error changes nothing;
one publish at a time holds the folder's lock, so two publishes of different dates cannot drop each
other from the archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo

from ..sections import Site
from .digest import Digest, Week
from ..errors import NewsletterError, RenderError
from ..files import write_atomic
from .render import page_language, reader_language, render_issue, render_template, signup_url

PAGE = "index.html"
RECORD = "issue.json"
FEED = "feed.xml"
ARCHIVE_TEMPLATE = "archive.html.j2"
FEED_TEMPLATE = "feed.xml.j2"
FEED_ENTRIES = 50  # feed readers want the recent issues; the archive page lists them all
_LOCK = ".publish.lock"
# Characters XML 1.0 forbids even as references. The digest's text is already free of them, but a
# subject also holds the configured sender's name, and one such character makes the feed unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class PublishedIssue:
    """What the archive and the feed show of one published issue (its issue.json)."""

    date: date
    subject: str
    summary: str
    url: str  # absolute: the web version
    path: str  # the web version's folder inside the public folder, e.g. "2026-01-23/"
    language: str
    published: datetime  # first published
    updated: datetime  # last published with a change

    def to_json(self) -> str:
        record = asdict(self)
        for key in ("date", "published", "updated"):
            record[key] = record[key].isoformat()
        return json.dumps(record, ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> PublishedIssue:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                date=date.fromisoformat(record["date"]),
                subject=str(record["subject"]),
                summary=str(record["summary"]),
                url=str(record["url"]),
                path=str(record["path"]),
                language=str(record["language"]),
                published=datetime.fromisoformat(record["published"]),
                updated=datetime.fromisoformat(record["updated"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NewsletterError(
                f"{path}: not a readable issue record ({error}); delete it and publish that date again"
            ) from None


@dataclass(frozen=True)
class Publication:
    issue: PublishedIssue  # the issue just published
    page: Path  # its web version
    archive: Path
    feed: Path
    issues: list[PublishedIssue]  # everything the archive now lists, newest first


def publish_issue(source: Digest | Week, site: Site) -> Publication:
    """Write the web version of a day's issue or a week's edition, then rebuild the archive and the
    feed from every issue."""
    issue = render_issue(source, site, abstract="full", page=True)
    public = site.public_dir
    folder = page_folder(issue.web_url, site)
    page, record_file = folder / PAGE, folder / RECORD
    html = issue.html
    archive, feed = public / PAGE, public / FEED
    public.mkdir(parents=True, exist_ok=True)
    with _locked(public):
        # Every other record is read before anything is written: a broken one stops the publish
        # with nothing changed.
        others = [found for found in published_issues(site) if found.path != _relative(folder, public)]
        previous = PublishedIssue.from_file(record_file) if record_file.is_file() else None
        changed = not page.is_file() or page.read_text(encoding="utf-8") != html
        now = site.clock().astimezone(timezone.utc).replace(microsecond=0)
        record = PublishedIssue(
            date=issue.date,
            subject=_xml_safe(issue.subject),
            summary=_xml_safe(issue.preheader),
            url=issue.web_url,
            path=_relative(folder, public),
            language=issue.language,
            published=previous.published if previous else now,
            updated=now if changed or previous is None else previous.updated,
        )
        issues = sorted([*others, record], key=lambda found: (found.date, found.path), reverse=True)
        # Everything is rendered before anything is written: a template error leaves the folder
        # as it was.
        outputs: list[tuple[Path, str]] = []
        if changed:
            outputs.append((page, html))
        if previous != record:
            outputs.append((record_file, record.to_json()))
        outputs += [(archive, render_archive(issues, site)), (feed, render_feed(issues, site))]
        for path, content in outputs:
            write_atomic(path, content)
    return Publication(issue=record, page=page, archive=archive, feed=feed, issues=issues)


def published_issues(site: Site) -> list[PublishedIssue]:
    """Every issue published in the public folder, newest first."""
    public = site.public_dir
    if not public.is_dir():
        return []
    issues = [PublishedIssue.from_file(record) for record in public.glob(f"**/{RECORD}")]
    return sorted(issues, key=lambda found: (found.date, found.path), reverse=True)


def page_folder(web_url: str, site: Site) -> Path:
    """The folder in the public folder that `web_url` maps to when it is served at base_url."""
    prefix = site.base_url + "/"
    rest = web_url[len(prefix) :] if web_url.startswith(prefix) else None
    parts = rest.split("/")[:-1] if rest and rest.endswith("/") else None
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise RenderError(
            f"the issue's web address {web_url!r} is not a folder under base_url ({site.base_url}/…/)"
        )
    return site.public_dir.joinpath(*parts)


def render_archive(issues: list[PublishedIssue], site: Site) -> str:
    return _render(ARCHIVE_TEMPLATE, issues, site)


def render_feed(issues: list[PublishedIssue], site: Site) -> str:
    return _render(FEED_TEMPLATE, issues[:FEED_ENTRIES], site)


def _render(template: str, issues: list[PublishedIssue], site: Site) -> str:
    """The archive or the feed, in `language`, else in the newest issue's (what its readers got
    last), else in the pages'."""
    language = site.language or (reader_language(issues[0].language) if issues else page_language(site))
    newest_change = max((found.updated for found in issues), default=site.clock())
    context = {
        "issues": issues,
        "signup_url": signup_url(site),
        # An entry is dated by its issue's day (midnight where the newsletter lives), not by when it
        # was published: a late publish of an old day sorts where that day belongs.
        "issued": lambda found: datetime.combine(found.date, time(), ZoneInfo(site.clock.timezone)),
        "title": site.from_name,
        "author": site.from_name,
        "archive_url": f"{site.base_url}/",
        "feed_url": f"{site.base_url}/{FEED}",
        "updated": newest_change,
    }
    return render_template(site, template, context, language)


def _relative(folder: Path, public: Path) -> str:
    return folder.relative_to(public).as_posix() + "/"


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("", text)


@contextlib.contextmanager
def _locked(public: Path) -> Iterator[None]:
    with open(public / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
