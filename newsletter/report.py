"""What readers did with each issue: sent, delivered, unique opens and clicks (and which paper they
chose), bounces, spam reports and unsubscribes.

Everything is counted in distinct readers, from the deliveries of a campaign and the provider's
events kept per reader (campaign_events, written once per event id by webhook.py, and only for a
reader the campaign had a delivery for: an event's campaign id is a tag, not a proof):

- opens leave out the provider's machine opens (Apple Mail Privacy Protection fetches every image
  of every message, so they say nothing about a reader);
- clicks are matched to papers by the link followed, against the links of the campaign's stored
  HTML: it is exactly what readers clicked in (a digest file can be edited or removed after the
  send, and need not be on the machine that reports), and each paper's card holds all of its links
  (title, thumbnail, button, "read the abstract" on the web version), so a reader who followed
  several of one paper's links counts once for it;
- unsubscribes are the readers of an issue who left its list through its unsubscribe link (the page
  or one-click) after it was sent and before the list's next issue, plus the readers the provider
  reports unsubscribing from that campaign;
- opens and clicks that were not tracked are None, never 0: a campaign's tracking is read from
  campaign_tracking, else taken to be the current settings';
- an issue of which no event at all was stored says why (`webhook`) rather than let its zeros pass
  for readers: its provider has no webhook, the webhook is not configured, it has never sent an
  event, or it has sent nothing for this issue (events of others were stored).

An issue is a day's daily issue or a week's weekly edition (edition.Edition), keyed by its date or its
ISO week; the two go to different readers of a list (its daily and its weekly members), so an issue's
unsubscribes are bounded by the list's next issue of the same edition. A list's issues are ordered by
their last day, a week's edition after the daily issue of its Sunday.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.engine import Connection

from . import db
from .content.edition import DAILY, Edition
from .errors import NoIssueSent
from .subscribers import get_list
from .providers import EventKind

# The membership sources through which a reader leaves a list by their own hand (membership.py), from
# an issue's unsubscribe link or its preferences link, and that name no campaign; the provider's
# unsubscribe events name theirs (campaign_events).
_LEAVING_SOURCES = ("unsubscribe_page", "one_click", "preferences_page")


@dataclass(frozen=True)
class Tracking:
    opens: bool
    clicks: bool


# What the provider's webhook did for an issue (IssueReport.webhook): sent events for it, or why none
# were stored.
REPORTING = "reporting"
NO_WEBHOOK = "no webhook"  # the provider reports no events (a relay)
NOT_CONFIGURED = "not configured"  # the webhook refuses every request until it is set up
NEVER_SENT = "never sent"  # set up, but no event of any issue was ever stored
SILENT = "silent"  # events of other issues were stored, none of this one


@dataclass(frozen=True)
class Webhook:
    """The configured provider's webhook as the command finds it: where the provider must post its
    events, and, when it takes none, why (NO_WEBHOOK, or NOT_CONFIGURED and the provider's words)."""

    provider: str
    url: str
    refused: str | None = None
    reason: str = ""

    def state(self, has_events: bool, any_stored: bool) -> str:
        """An issue's IssueReport.webhook: REPORTING, or why it has no event."""
        if has_events:
            return REPORTING
        if self.refused is not None:
            return self.refused
        return SILENT if any_stored else NEVER_SENT

    def explain(self, state: str) -> str | None:
        """Why an issue in `state` has no event, for a person; None when it has some."""
        unknown = "deliveries, bounces, opens and clicks are not known"
        return {
            REPORTING: None,
            NO_WEBHOOK: f"no events: {self.provider} has no webhook; {unknown}",
            NOT_CONFIGURED: f"no events from {self.provider}: {self.reason}; {unknown}",
            NEVER_SENT: (
                f"no events from {self.provider}: its webhook is configured but has never sent one "
                f"(the provider must post them to {self.url})"
            ),
            SILENT: f"no events from {self.provider} yet for the issue, though its webhook has sent other issues'",
        }[state]


@dataclass(frozen=True)
class PaperClicks:
    rank: int
    title: str
    url: str
    unique_clicks: int | None  # None: clicks were not tracked


@dataclass(frozen=True)
class IssueReport:
    edition: str  # "daily" or "weekly"
    issue: str  # a daily issue's date (2026-01-23), a weekly edition's ISO week (2026-W04)
    list: str
    sent: int
    delivered: int
    unique_opens: int | None  # None: opens were not tracked
    unique_clicks: int | None  # None: clicks were not tracked
    bounces: int
    spam_reports: int
    unsubscribes: int
    papers: list[PaperClicks]
    webhook: str  # REPORTING, or why no event of the provider's was stored for the issue
    no_events: str | None  # that why, for a person (Webhook.explain); None when REPORTING

    def rate(self, count: int | None, *, of_sent: bool = False) -> float | None:
        """`count` as a share of the delivered (bounces: of the sent), or None."""
        whole = self.sent if of_sent else self.delivered
        return None if count is None or whole == 0 else count / whole

    def as_json(self) -> dict[str, Any]:
        key = "date" if self.edition == DAILY else "week"
        return {
            key: self.issue,
            "list": self.list,
            "edition": self.edition,
            "sent": self.sent,
            "delivered": self.delivered,
            "unique_opens": self.unique_opens,
            "unique_clicks": self.unique_clicks,
            "bounces": self.bounces,
            "spam_reports": self.spam_reports,
            "unsubscribes": self.unsubscribes,
            "webhook": self.webhook,
            "papers": [
                {"rank": p.rank, "title": p.title, "url": p.url, "unique_clicks": p.unique_clicks}
                for p in self.papers
            ],
        }


@dataclass(frozen=True)
class Selection:
    """Which issues: the one of `day`, those of `week` (a weekly Edition: its daily issues and the
    weekly edition itself), or the `last` N of each list; with none of these, the latest issue of
    each list. `list_name` None: every list."""

    day: date | None = None
    week: Edition | None = None
    last: int | None = None
    list_name: str | None = None

    def describe(self) -> str:
        where = f" to list {self.list_name!r}" if self.list_name else ""
        if self.day is not None:
            return f"no issue was sent on {self.day.isoformat()}{where}"
        if self.week is not None:
            return f"no issue was sent in week {self.week.key}{where}"
        return f"no issue has been sent{where} yet"


def issue_reports(conn: Connection, selection: Selection, tracking: Tracking, webhook: Webhook) -> list[IssueReport]:
    """The reports of the selected issues, oldest first (by list, then date); NoIssueSent if there
    are none. `tracking`: what is assumed for a campaign that did not record its own; `webhook`:
    the configured provider's, to say why an issue has no event."""
    if selection.list_name is not None:
        get_list(conn, selection.list_name)  # an unknown list is named as such
    campaigns = _campaigns(conn, selection)
    if not campaigns:
        raise NoIssueSent(selection.describe())
    ids = [c.id for c in campaigns]
    sent = _sent(conn, ids)
    readers = _readers(conn, ids)
    recorded = _tracking(conn, ids)
    leavers = _leavers(conn, campaigns)
    e = db.campaign_events.c
    any_stored = conn.execute(select(exists().select_from(db.campaign_events))).scalar_one()
    reports = []
    for campaign in campaigns:
        has_events = any_stored and conn.execute(select(exists().where(e.campaign_id == campaign.id))).scalar_one()
        state = webhook.state(has_events, any_stored)
        tracked = recorded.get(campaign.id, tracking)
        counts = readers[campaign.id]
        papers, links = papers_of(campaign.html)
        clickers, by_rank = _clicks(conn, campaign.id, links)
        reports.append(
            IssueReport(
                edition=campaign.issue.kind,
                issue=campaign.issue.key,
                list=campaign.list_name,
                sent=sent.get(campaign.id, 0),
                delivered=counts[EventKind.DELIVERED],
                unique_opens=counts[EventKind.OPENED] if tracked.opens else None,
                unique_clicks=clickers if tracked.clicks else None,
                bounces=counts[EventKind.BOUNCED],
                spam_reports=counts[EventKind.SPAM_REPORT],
                unsubscribes=len(leavers[campaign.id]),
                papers=[
                    PaperClicks(rank, title, url, by_rank.get(rank, 0) if tracked.clicks else None)
                    for rank, title, url in papers
                ],
                webhook=state,
                no_events=webhook.explain(state),
            )
        )
    return reports


# -- which issues -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Campaign:
    id: int
    issue: Edition
    list_id: int
    list_name: str
    html: str
    created_at: datetime
    until: datetime | None  # when the list's next campaign of the same edition was created


def _selected(issue: Edition, selection: Selection) -> bool:
    if selection.day is not None:
        return issue == Edition.daily(selection.day)
    assert selection.week is not None
    return issue == selection.week or (not issue.weekly and issue.days[0] in selection.week.days)


def _campaigns(conn: Connection, selection: Selection) -> list[_Campaign]:
    c, lists = db.campaigns.c, db.lists.c
    query = select(c.id, c.edition, c.issue_date, c.list_id, lists.name, c.created_at).join(
        db.lists, lists.id == c.list_id
    )
    if selection.list_name is not None:
        query = query.where(lists.name == selection.list_name)
    # Every campaign of the lists, each list's newest first: the next one of the same edition bounds
    # each one's unsubscribes.
    by_list: dict[int, list[tuple[Edition, Any]]] = defaultdict(list)
    for row in conn.execute(query.order_by(c.list_id)):
        by_list[row.list_id].append((Edition(row.edition, row.issue_date), row))
    chosen: list[tuple[Edition, Any, datetime | None]] = []
    for issues in by_list.values():
        issues.sort(key=lambda found: found[0].sort_key, reverse=True)
        later: dict[str, datetime] = {}
        bounded = []
        for issue, row in issues:
            bounded.append((issue, row, later.get(issue.kind)))
            later[issue.kind] = row.created_at
        if selection.day is not None or selection.week is not None:
            bounded = [found for found in bounded if _selected(found[0], selection)]
        else:
            bounded = bounded[: selection.last or 1]
        chosen.extend(reversed(bounded))
    html = dict(
        conn.execute(select(c.id, c.html).where(c.id.in_([row.id for _, row, _ in chosen]))).all()
    ) if chosen else {}
    return [
        _Campaign(row.id, issue, row.list_id, row.name, html[row.id], row.created_at, until)
        for issue, row, until in chosen
    ]


# -- the counts -------------------------------------------------------------------------------------


# Each count is one index range counted on its own: SQLite counts a range several times faster than
# it groups one, and a report of 30 issues of 100,000 readers reads some 6 million entries.


def _sent(conn: Connection, ids: list[int]) -> dict[int, int]:
    d = db.deliveries.c
    query = select(func.count()).where(d.campaign_id == bindparam("campaign"), d.state == db.SENT)
    return {campaign_id: conn.execute(query, {"campaign": campaign_id}).scalar_one() for campaign_id in ids}


# The kinds counted as readers straight from the index (clicks: _clicks; unsubscribes: _leavers).
_COUNTED = (EventKind.DELIVERED, EventKind.OPENED, EventKind.BOUNCED, EventKind.SPAM_REPORT)


def _readers(conn: Connection, ids: list[int]) -> dict[int, dict[EventKind, int]]:
    """campaign → kind → readers (opens: not the machine's). A row is one reader's fact, so these
    are index entries counted."""
    e = db.campaign_events.c
    query = select(func.count()).where(
        e.campaign_id == bindparam("campaign"), e.kind == bindparam("kind"), e.machine_open.is_(False)
    )
    return {
        campaign_id: {
            kind: conn.execute(query, {"campaign": campaign_id, "kind": kind.value}).scalar_one() for kind in _COUNTED
        }
        for campaign_id in ids
    }


def _clicks(conn: Connection, campaign_id: int, links: dict[str, int]) -> tuple[int, dict[int, int]]:
    """The readers who clicked anything in a campaign, and by rank those who clicked a link of
    that paper (one reader following several of one paper's links counts once): each paper's
    clicks found in the index by its links."""
    e = db.campaign_events.c
    clickers = select(func.count(e.subscriber_id.distinct())).where(
        e.campaign_id == campaign_id, e.kind == EventKind.CLICKED.value, e.machine_open.is_(False)
    )
    anyone = conn.execute(clickers).scalar_one()
    by_rank: dict[int, list[str]] = defaultdict(list)
    for url, rank in links.items():
        by_rank[rank].append(url)
    if not anyone:
        return 0, {}
    return anyone, {rank: conn.execute(clickers.where(e.url.in_(urls))).scalar_one() for rank, urls in by_rank.items()}


def _tracking(conn: Connection, ids: list[int]) -> dict[int, Tracking]:
    t = db.campaign_tracking.c
    rows = conn.execute(select(t.campaign_id, t.opens, t.clicks).where(t.campaign_id.in_(ids)))
    return {row.campaign_id: Tracking(bool(row.opens), bool(row.clicks)) for row in rows}


def _leavers(conn: Connection, campaigns: Sequence[_Campaign]) -> dict[int, set[int]]:
    """campaign → its readers who unsubscribed because of it (see the module's docstring)."""
    e, d, ce = db.events.c, db.deliveries.c, db.campaign_events.c
    leavers: dict[int, set[int]] = {}
    for campaign in campaigns:
        query = select(e.subscriber_id).where(
            e.list_id == campaign.list_id,
            e.status == db.UNSUBSCRIBED,
            e.created_at >= campaign.created_at,
            e.source.in_(_LEAVING_SOURCES),
            select(d.id)
            .where(d.campaign_id == campaign.id, d.subscriber_id == e.subscriber_id, d.state == db.SENT)
            .exists(),
        )
        if campaign.until is not None:
            query = query.where(e.created_at < campaign.until)
        found = set(conn.execute(query).scalars())
        found.update(
            conn.execute(
                select(ce.subscriber_id).where(ce.campaign_id == campaign.id, ce.kind == EventKind.UNSUBSCRIBED.value)
            ).scalars()
        )
        leavers[campaign.id] = found
    return leavers


# -- the papers of an issue -------------------------------------------------------------------------


def papers_of(html: str) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
    """The papers of an issue's HTML as (rank, title, url), and every link of each paper's card →
    its rank. A card is the element that holds a `rank` badge (“#3”) and a `paper-title` heading
    (templates/paper_card.mjml.j2); the papers' links elsewhere (the contents) are theirs too."""
    import lxml.html
    from lxml import etree

    if not html.strip():
        return [], {}
    try:
        tree = lxml.html.fromstring(html)
    except (etree.ParserError, ValueError):
        return [], {}
    papers: list[tuple[int, str, str]] = []
    links: dict[str, int] = {}
    for heading in tree.xpath('//*[contains(concat(" ", @class, " "), " paper-title ")]'):
        card = next((a for a in heading.iterancestors() if a.get("id")), None)
        anchor = heading.find(".//a")
        badge = card.xpath('.//*[contains(concat(" ", @class, " "), " rank ")]') if card is not None else []
        if card is None or anchor is None or not badge:
            continue
        digits = badge[0].text_content().strip().lstrip("#")
        if not digits.isdecimal():
            continue
        rank, url = int(digits), (anchor.get("href") or "").strip()
        papers.append((rank, " ".join(anchor.text_content().split()), url))
        for link in card.iter("a"):
            links.setdefault((link.get("href") or "").strip(), rank)
    for rank, _, url in papers:
        links.setdefault(url, rank)
    links.pop("", None)
    return sorted(papers), links


# -- for the terminal -------------------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None]) -> str:
    """One character per value, from ▁ (the lowest) to █ (the highest); a blank for None."""
    values = list(values)
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    top = len(SPARKS) - 1
    return "".join(
        " " if v is None else SPARKS[top // 2 if high == low else round((v - low) / (high - low) * top)]
        for v in values
    )
