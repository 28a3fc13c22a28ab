"""`newsletter report`: issues sent through the fake SendGrid by the real `send` command, SendGrid's
signed Event Webhook posted to the real `newsletter serve`, then the report read through the CLI.
Also what every request says about tracking, and that unsubscribe links are never click-tracked."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import lxml.html
import pytest
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings
from newsletter.content.digest import load_digest
from newsletter.content.render import UNSUBSCRIBE_TAG
from newsletter.report import (
    NEVER_SENT,
    SILENT,
    Selection,
    Tracking,
    Webhook,
    issue_reports,
    papers_of,
    sparkline,
)
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import (
    API_KEY,
    configure,
    engine_of,
    seed,
    signed_headers,
    webhook_key,
)
from testkit.servers import serving

from .send_helpers import KEY_ENV
from .support import EXAMPLE_DIGEST, run_newsletter

DAY, NEXT_DAY = "2026-01-23", "2026-01-24"
TRACKING_ON = {
    "subscription_tracking": {"enable": False},
    "open_tracking": {"enable": True},
    "click_tracking": {"enable": True, "enable_text": False},
}


def _digests(project: Path) -> None:
    """The example digest, and the same papers again as the next day's issue."""
    (project / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, project / "digests" / f"{DAY}.md")
    text = EXAMPLE_DIGEST.read_text(encoding="utf-8")
    (project / "digests" / f"{NEXT_DAY}.md").write_text(text.replace(f"# {DAY}", f"# {NEXT_DAY}", 1), encoding="utf-8")


def _send(project: Path, day: str) -> None:
    result = run_newsletter("send", "--date", day, "--yes", cwd=project, env=KEY_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def _report(project: Path, *args: str) -> dict:
    result = run_newsletter("report", *args, "--json", cwd=project, env=KEY_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@dataclass
class Sent:
    project: Path
    settings: Settings
    url: str
    key: object
    http: httpx.Client
    bodies: list[dict]  # what the fake SendGrid received, in order
    campaigns: dict[str, int]  # issue date → campaign id

    def post(self, events: list[dict]) -> httpx.Response:
        body = json.dumps(events).encode()
        response = self.http.post(f"{self.url}/webhooks/sendgrid", content=body, headers=signed_headers(self.key, body))
        assert response.status_code == 200, response.text
        return response


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sent]:
    """Six readers u1…u6: the 23rd's issue to all of them; u4 then leaves by one-click; the 24th's
    issue to the five still subscribed."""
    project = tmp_path_factory.mktemp("report")
    _digests(project)
    key, public_key = webhook_key()
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = configure(
            project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, sendgrid_webhook_public_key=public_key
        )
        seed(settings, 6)
        _send(project, DAY)
        with serving(project / "newsletter.toml") as url, httpx.Client(timeout=30) as http:
            # The one-click POST a mail client makes to u4's own List-Unsubscribe link.
            [link] = [
                p["substitutions"][UNSUBSCRIBE_TAG]
                for p in fake.records[0].body["personalizations"]
                if p["to"][0]["email"] == "u4@example.com"
            ]
            link = url + link.removeprefix(settings.base_url)
            assert http.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
            _send(project, NEXT_DAY)
            c = db.campaigns.c
            with engine_of(settings).connect() as conn:
                campaigns = dict(conn.execute(select(c.issue_date, c.id)).all())
            yield Sent(project, settings, url, key, http, [r.body for r in fake.records], campaigns)


def _event(sent: Sent, kind: str, reader: int, event_id: str, day: str = DAY, **extra: object) -> dict:
    return {
        "email": f"u{reader}@example.com",
        "event": kind,
        "sg_event_id": event_id,
        "timestamp": 1769140800,
        "campaign_id": str(sent.campaigns[day]),
        "subscriber_id": str(reader),
        "list_id": "1",
        **extra,
    }


# A configured webhook, for the reports made through the library.
WEBHOOK = Webhook("sendgrid", "https://news.example.com/webhooks/sendgrid")

PAPER_1 = "https://huggingface.co/papers/2601.15876"
PAPER_2 = "https://huggingface.co/papers/2601.15165"


def _first_day_events(sent: Sent) -> list[dict]:
    web = f"{sent.settings.base_url}/{DAY}/"
    return [
        *(_event(sent, "delivered", n, f"d{n}") for n in range(1, 6)),
        _event(sent, "delivered", 1, "d1"),  # the same event twice in one request
        _event(sent, "bounce", 6, "b6", type="bounce", reason="550 5.1.1 no such user"),
        _event(sent, "open", 1, "o1a", sg_machine_open=False),
        _event(sent, "open", 1, "o1b", sg_machine_open=False),  # opened again: one reader
        _event(sent, "open", 2, "o2m", sg_machine_open=True),  # Apple's proxy only: not a reader's open
        _event(sent, "open", 3, "o3m", sg_machine_open=True),
        _event(sent, "open", 3, "o3r", sg_machine_open=False),
        _event(sent, "click", 1, "c1a", url=PAPER_1),
        _event(sent, "click", 1, "c1b", url=f"{web}#paper-1"),  # paper 1's "read the abstract": still paper 1
        _event(sent, "click", 1, "c1c", url=PAPER_2),
        _event(sent, "click", 3, "c3", url=PAPER_2),
        _event(sent, "click", 4, "c4", url=web),  # the web version: a click, on no paper
        _event(sent, "spamreport", 5, "s5"),
        _event(sent, "group_unsubscribe", 2, "g2"),
    ]


def _never_had(sent: Sent) -> list[dict]:
    """Signed events that name the 24th's issue for u4, who left after the 23rd's and was never sent
    it (as a mis-tagged message, or another database's campaign of the same id, would)."""
    return [
        _event(sent, "delivered", 4, "stray-d4", NEXT_DAY),
        _event(sent, "open", 4, "stray-o4", NEXT_DAY, sg_machine_open=False),
        _event(sent, "click", 4, "stray-c4", NEXT_DAY, url=PAPER_1),
        _event(sent, "group_unsubscribe", 4, "stray-g4", NEXT_DAY),
    ]


@pytest.fixture(scope="module")
def reported(sent: Sent) -> Sent:
    events = _first_day_events(sent)
    sent.post(events)
    sent.post(events)  # SendGrid's retry of the whole request
    sent.post([events[7], events[12], _event(sent, "delivered", 1, "next-d1", NEXT_DAY)])  # two again, one new
    sent.post(_never_had(sent))
    return sent


@pytest.mark.slow
def test_the_report_counts_each_reader_once_without_machine_opens(reported: Sent) -> None:
    issues = _report(reported.project, "--date", DAY)["issues"]
    titles = {p.rank: p.title for p in load_digest(reported.settings.site, date(2026, 1, 23)).papers}
    papers = [p for p in load_digest(reported.settings.site, date(2026, 1, 23)).papers]
    assert issues == [
        {
            "date": DAY,
            "list": "daily-papers",
            "edition": "daily",
            "sent": 6,
            "delivered": 5,
            "unique_opens": 2,  # u1 and u3; u2's only open was the machine's
            "unique_clicks": 3,  # u1, u3, u4
            "bounces": 1,
            "spam_reports": 1,
            "unsubscribes": 2,  # u4 by one-click after this issue, u2 through SendGrid
            "webhook": "reporting",
            "papers": [
                {"rank": p.rank, "title": titles[p.rank], "url": p.url, "unique_clicks": {1: 1, 2: 2}.get(p.rank, 0)}
                for p in papers
            ],
        }
    ]


@pytest.mark.slow
def test_every_event_is_stored_once_whatever_the_retries(reported: Sent) -> None:
    e = db.campaign_events.c
    with engine_of(reported.settings).connect() as conn:
        rows = conn.execute(select(e.campaign_id, e.subscriber_id, e.kind, e.machine_open, e.url)).all()
        event_ids = conn.execute(select(func.count()).select_from(db.webhook_events)).scalar_one()
        stats = dict(
            conn.execute(
                select(db.campaign_stats.c.event, db.campaign_stats.c.count).where(
                    db.campaign_stats.c.campaign_id == reported.campaigns[DAY]
                )
            ).all()
        )
    # 18 distinct events for the 23rd (the duplicate and both replays left out), 1 + 4 for the 24th;
    # kept as 17 + 1 facts: u1's second open is no new fact, and the 24th's issue never had u4.
    assert event_ids == 23
    assert len(rows) == 18
    assert stats == {"delivered": 5, "bounced": 1, "opened": 5, "clicked": 5, "spam_report": 1, "unsubscribed": 1}
    assert sorted(r.subscriber_id for r in rows if r.kind == "opened" and r.machine_open) == [2, 3]
    assert (reported.campaigns[NEXT_DAY], 1, "delivered", False, "") in [tuple(r) for r in rows]
    assert sorted(r.url for r in rows if r.kind == "clicked") == sorted(
        [PAPER_1, f"{reported.settings.base_url}/{DAY}/#paper-1", PAPER_2, PAPER_2, f"{reported.settings.base_url}/{DAY}/"]
    )


@pytest.mark.slow
def test_the_next_issue_has_its_own_counts(reported: Sent) -> None:
    [issue] = _report(reported.project, "--date", NEXT_DAY)["issues"]
    assert {k: v for k, v in issue.items() if k != "papers"} == {
        "date": NEXT_DAY, "list": "daily-papers", "edition": "daily", "sent": 5, "delivered": 1,
        "unique_opens": 0, "unique_clicks": 0, "bounces": 0, "spam_reports": 0, "unsubscribes": 0,
        "webhook": "reporting",
    }  # fmt: skip
    # u4 left after the 23rd's issue and was not sent the 24th's; the week has both.
    week = _report(reported.project, "--week", "2026-W04")["issues"]
    assert [(i["date"], i["sent"]) for i in week] == [(DAY, 6), (NEXT_DAY, 5)]
    assert _report(reported.project)["issues"][0]["date"] == NEXT_DAY  # the latest by default


@pytest.mark.slow
def test_events_for_a_reader_the_campaign_never_had_count_for_nobody(reported: Sent) -> None:
    [issue] = _report(reported.project, "--date", NEXT_DAY)["issues"]
    counts = ("sent", "delivered", "unique_opens", "unique_clicks", "unsubscribes")
    assert {name: issue[name] for name in counts} == {
        "sent": 5, "delivered": 1, "unique_opens": 0, "unique_clicks": 0, "unsubscribes": 0,
    }  # fmt: skip
    assert {paper["unique_clicks"] for paper in issue["papers"]} == {0}
    e = db.campaign_events.c
    with engine_of(reported.settings).connect() as conn:
        kept = conn.execute(select(e.campaign_id).where(e.subscriber_id == 4)).scalars().all()
    assert set(kept) == {reported.campaigns[DAY]}  # what u4 did with the issue they were sent


@pytest.mark.slow
def test_last_prints_one_line_per_issue_with_a_trend(reported: Sent) -> None:
    result = run_newsletter("report", "--last", "14", cwd=reported.project, env=KEY_ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [first] = [n for n, line in enumerate(lines) if DAY in line]
    [second] = [n for n, line in enumerate(lines) if NEXT_DAY in line]
    assert first < second  # oldest first, one line each
    # Open rates 40% then 0%, click rates 60% then 0%: highest to lowest.
    assert "open rate  █▁" in result.stdout and "click rate █▁" in result.stdout
    detail = run_newsletter("report", "--date", DAY, cwd=reported.project, env=KEY_ENV)
    assert detail.returncode == 0 and "unique opens" in detail.stdout and "40.0% of delivered" in detail.stdout


@pytest.mark.slow
def test_a_day_without_an_issue_or_an_unknown_list_is_an_error(reported: Sent) -> None:
    missing = run_newsletter("report", "--date", "2026-01-25", cwd=reported.project, env=KEY_ENV)
    assert missing.returncode == 1
    assert "error: no issue was sent on 2026-01-25" in missing.stderr
    unknown = run_newsletter("report", "--list", "nope", cwd=reported.project, env=KEY_ENV)
    assert unknown.returncode == 1 and "no list named 'nope'" in unknown.stderr
    both = run_newsletter("report", "--date", DAY, "--last", "3", cwd=reported.project, env=KEY_ENV)
    assert both.returncode == 2
    bad_week = run_newsletter("report", "--week", "2026-W60", cwd=reported.project, env=KEY_ENV)
    assert bad_week.returncode == 2


@pytest.mark.slow
def test_every_request_sets_tracking_and_unsubscribe_links_are_never_click_tracked(reported: Sent) -> None:
    assert [body["tracking_settings"] for body in reported.bodies] == [TRACKING_ON, TRACKING_ON]
    with engine_of(reported.settings).connect() as conn:
        stored = conn.execute(select(db.campaigns.c.html)).scalars().all()
    for html in [*stored, *(body["content"][1]["value"] for body in reported.bodies)]:
        links = lxml.html.fromstring(html).iter("a")
        tracked = {a.get("href"): a.get("clicktracking") for a in links}
        assert tracked[UNSUBSCRIBE_TAG] == "off"
        assert tracked[PAPER_1] is None  # the papers' links are tracked
    # The text part keeps the reader's signed link: SendGrid does not track its links at all.
    assert all(UNSUBSCRIBE_TAG in body["content"][0]["value"] for body in reported.bodies)


@pytest.mark.slow
def test_with_tracking_off_the_report_says_so_instead_of_showing_zeros(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = configure(
            project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, track_opens=False, track_clicks=False
        )
        seed(settings, 2)
        _send(project, DAY)
    assert fake.records[0].body["tracking_settings"] == {
        "subscription_tracking": {"enable": False},
        "open_tracking": {"enable": False},
        "click_tracking": {"enable": False, "enable_text": False},
    }
    [issue] = _report(project)["issues"]
    assert (issue["sent"], issue["unique_opens"], issue["unique_clicks"]) == (2, None, None)
    assert {p["unique_clicks"] for p in issue["papers"]} == {None}
    text = run_newsletter("report", cwd=project, env=KEY_ENV).stdout
    assert "not tracked" in text and "Opens and clicks were not tracked for this issue" in text


@pytest.mark.slow
def test_without_events_the_report_says_the_webhook_is_not_configured(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        seed(configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY), 2)
        _send(project, DAY)
    [issue] = _report(project)["issues"]
    assert (issue["sent"], issue["delivered"], issue["webhook"]) == (2, 0, "not configured")
    text = run_newsletter("report", cwd=project, env=KEY_ENV).stdout
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 4}
    assert rows == {
        "sent": "2", "delivered": "no events", "unique opens": "no events", "unique clicks": "no events",
        "bounces": "no events", "spam reports": "no events", "unsubscribes": "0",
    }  # fmt: skip
    assert (
        "No events from sendgrid: the signed Event Webhook is not configured; deliveries, bounces, opens and clicks "
        "are not known.\n"
    ) in text
    assert "0.0%" not in text and "Clicks per paper" not in text


@pytest.mark.slow
def test_without_events_the_report_tells_a_silent_webhook_from_one_that_never_sent(tmp_path: Path) -> None:
    _digests(tmp_path)
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = configure(tmp_path, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY)
        seed(settings, 1)
        _send(tmp_path, DAY)
        _send(tmp_path, NEXT_DAY)
    latest = Selection(day=date(2026, 1, 24))
    with engine_of(settings).connect() as conn:
        [never] = issue_reports(conn, latest, Tracking(True, True), WEBHOOK)
    assert (never.webhook, never.no_events) == (
        NEVER_SENT,
        "no events from sendgrid: its webhook is configured but has never sent one "
        "(the provider must post them to https://news.example.com/webhooks/sendgrid)",
    )
    with engine_of(settings).begin() as conn:  # the first issue's delivery came: the webhook works
        first = conn.execute(select(db.campaigns.c.id).where(db.campaigns.c.issue_date == DAY)).scalar_one()
        conn.execute(
            db.campaign_events.insert().values(
                campaign_id=first, subscriber_id=1, kind="delivered", machine_open=False, url="", at=settings.clock()
            )
        )
        [silent] = issue_reports(conn, latest, Tracking(True, True), WEBHOOK)
    assert (silent.webhook, silent.no_events) == (
        SILENT,
        "no events from sendgrid yet for the issue, though its webhook has sent other issues'",
    )


@pytest.mark.slow
def test_a_campaign_keeps_the_tracking_it_was_sent_with(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, track_opens=False)
        seed(settings, 1)
        _send(project, DAY)
    with engine_of(settings).connect() as conn:  # tracking turned on again since
        [issue] = issue_reports(conn, Selection(), Tracking(True, True), WEBHOOK)
    assert (issue.unique_opens, issue.unique_clicks) == (None, 0)


@pytest.mark.slow
def test_papers_are_read_from_the_issue_as_sent(reported: Sent) -> None:
    with engine_of(reported.settings).connect() as conn:
        html = conn.execute(select(db.campaigns.c.html).where(db.campaigns.c.id == reported.campaigns[DAY])).scalar_one()
    papers, links = papers_of(html)
    digest = load_digest(reported.settings.site, date(2026, 1, 23))
    assert papers == [(p.rank, p.title, p.url) for p in digest.papers]
    assert links[f"{reported.settings.base_url}/{DAY}/#paper-3"] == 3
    assert f"{reported.settings.base_url}/{DAY}/" not in links and UNSUBSCRIBE_TAG not in links
    assert papers_of("") == ([], {}) and papers_of("<p>no cards</p>") == ([], {})


def test_sparkline() -> None:
    assert sparkline([0.1, 0.5, 0.3, None]) == "▁█▄ "
    assert sparkline([0.2, 0.2]) == "▄▄" and sparkline([None]) == " "
