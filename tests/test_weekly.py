"""The weekly edition: an ISO week's daily digests make one issue of its most upvoted distinct papers,
each card naming its day; `render`, `check`, `publish`, `send`, `status` and `report` take --week;
it goes once to a list's weekly members while daily issues go to its daily members only. The sends
run through the real CLI against the fake SendGrid; the daily run's weekly step is in test_run.py."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import date, timedelta
from pathlib import Path

import httpx
import lxml.html
import pytest
from sqlalchemy import select

from newsletter import db, send
from newsletter.content.checks import SIZE_LIMIT_BYTES, run_checks
from newsletter.config import Settings
from newsletter.content.digest import load_week
from newsletter.content.edition import DAILY, WEEKLY, Edition
from newsletter.errors import DigestError
from newsletter.membership import set_frequency
from newsletter.content.render import render_issue, wording_for
from newsletter.tokens import UnsubscribeLinks
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, LIST, add_subscribers, configure, engine_of, seed
from testkit.servers import serving
from newsletter.wiring import send_parts

from .send_helpers import KEY_ENV, start_campaign
from .support import EXAMPLE_DIGEST, run_newsletter, write_thumbnails
from .content.test_spam import SPAM_RULES_REFUSED, spamassassin

WEEK = Edition.parse_week("2026-W04")  # Monday 2026-01-19 to Sunday 2026-01-25
EVOCUA = "https://huggingface.co/papers/2601.15876"  # the example digest's first paper


def hf(number: int) -> str:
    return f"https://huggingface.co/papers/2601.{number:05d}"


# Each day's papers as (link, upvotes), in the example digest's order; None: the example as it is
# (EvoCUA 62, then 55, 52, 50, 45). EvoCUA comes back on the 23rd with fewer upvotes, 19001 on the
# 21st with more, and 19001 ties with the example's second paper at 55.
DAYS: dict[str, list[tuple[str, int]] | None] = {
    "2026-01-19": [(hf(19001), 30), (hf(19002), 29), (hf(19003), 28), (hf(19004), 27), (hf(19005), 26)],
    "2026-01-20": [(EVOCUA, 70), (hf(20002), 25), (hf(20003), 24), (hf(20004), 23), (hf(20005), 22)],
    "2026-01-21": [(hf(19001), 55), (hf(21002), 21), (hf(21003), 20), (hf(21004), 19), (hf(21005), 18)],
    "2026-01-22": [(hf(22001), 17), (hf(22002), 16), (hf(22003), 15), (hf(22004), 14), (hf(22005), 13)],
    "2026-01-23": None,
}
# The ten most upvoted distinct papers, with the upvotes and the day their cards show.
TOP = [
    (EVOCUA, 70, "1월 20일 (화)"),
    (hf(19001), 55, "1월 19일 (월)"),
    ("https://huggingface.co/papers/2601.15165", 55, "1월 23일 (금)"),
    ("https://huggingface.co/papers/2601.14724", 52, "1월 23일 (금)"),
    ("https://huggingface.co/papers/2601.15197", 50, "1월 23일 (금)"),
    ("https://huggingface.co/papers/2601.16206", 45, "1월 23일 (금)"),
    (hf(19002), 29, "1월 19일 (월)"),
    (hf(19003), 28, "1월 19일 (월)"),
    (hf(19004), 27, "1월 19일 (월)"),
    (hf(19005), 26, "1월 19일 (월)"),
]


def write_week(project: Path) -> None:
    """DAYS as digests: the example digest, each paper's link (and, for a paper of its own, its
    title) and upvotes replaced."""
    folder = project / "digests"
    folder.mkdir(exist_ok=True)
    example = EXAMPLE_DIGEST.read_text(encoding="utf-8")
    for day, papers in DAYS.items():
        head, *sections = example.replace("# 2026-01-23", f"# {day}", 1).split("\n## ")
        for index, (url, upvotes) in enumerate(papers or []):
            rank, title, rest = re.match(r"(\d+)\. \[([^\]]+)\]\([^)]+\)(.*)", sections[index], re.DOTALL).groups()
            if url != EVOCUA:
                title = f"P{url.rsplit('.', 1)[1]}: {title}"
            rest = re.sub(r"\*\*Upvotes\*\*: \d+", f"**Upvotes**: {upvotes}", rest, count=1)
            sections[index] = f"{rank}. [{title}]({url}){rest}"
        (folder / f"{day}.md").write_text("\n## ".join([head, *sections]), encoding="utf-8")


def tiny_digest(folder: Path, day: str, papers: list[tuple[str, int | None]]) -> None:
    lines = [f"# {day} Daily Papers", ""]
    for rank, (url, upvotes) in enumerate(papers, start=1):
        lines += [f"## {rank}. [Paper {url.rsplit('/', 1)[1]}]({url})", *([f"**Upvotes**: {upvotes}"] if upvotes is not None else []), ""]
    (folder / f"{day}.md").write_text("\n".join(lines), encoding="utf-8")


def write_sunday(project: Path) -> None:
    """The week's Sunday, 2026-01-25 (weekly_day by default): the example digest again."""
    example = EXAMPLE_DIGEST.read_text(encoding="utf-8")
    (project / "digests" / "2026-01-25.md").write_text(example.replace("# 2026-01-23", "# 2026-01-25", 1), encoding="utf-8")


def switcher(settings: Settings, at: dict[int, list[tuple[str, str]]]):
    """The fake SendGrid's hook: when its request number N arrives, the readers `at[N]` names switch
    frequency on their preferences page (as the send goes on)."""

    def switch(record) -> None:
        s = db.subscribers.c
        with engine_of(settings).begin() as conn:
            for address, frequency in at.get(record.seq, []):
                subscriber = conn.execute(select(s.id).where(s.email == address)).scalar_one()
                set_frequency(
                    conn, list_id=1, subscriber_id=subscriber, frequency=frequency, source="preferences_page", now=settings.clock()
                )

    return switch


def make_weekly(settings: Settings, emails: list[str], list_id: int = 1) -> list[int]:
    """These addresses as members of the list who chose the weekly edition."""
    ids = add_subscribers(settings, list_id, emails)
    m = db.memberships.c
    with engine_of(settings).begin() as conn:
        conn.execute(db.memberships.update().where(m.list_id == list_id, m.subscriber_id.in_(ids)).values(frequency=WEEKLY))
    return ids


# -- which week ---------------------------------------------------------------------------------------


def test_an_iso_week_is_parsed_strictly() -> None:
    assert (WEEK.kind, WEEK.key, WEEK.weekly) == (WEEKLY, "2026-W04", True)
    assert WEEK.days == [date(2026, 1, 19 + n) for n in range(7)] and WEEK.last_day == date(2026, 1, 25)
    assert Edition.parse_week("2026w04") == WEEK  # ISO 8601's basic form, either case
    assert Edition.week_of(date(2027, 1, 1)).key == "2026-W53"  # 2026 has 53 ISO weeks
    assert Edition.week_of(date(2026, 1, 1)).key == "2026-W01"
    for bad, message in [
        ("2026W4", "expected an ISO week written YYYY-Www"),
        ("2026-W4", "expected an ISO week written YYYY-Www"),
        ("26-W04", "expected an ISO week written YYYY-Www"),
        ("2026-W54", "2026 has ISO weeks 01 to 53"),
        ("2025-W53", "2025 has ISO weeks 01 to 52"),
        ("2026-W00", "2026 has ISO weeks 01 to 53"),
    ]:
        with pytest.raises(ValueError, match=message):
            Edition.parse_week(bad)
    day = Edition.daily(date(2026, 1, 23))
    assert (day.describe, day.option, day.days) == ("the 2026-01-23 issue", "--date 2026-01-23", [date(2026, 1, 23)])
    assert (WEEK.describe, WEEK.option) == ("the 2026-W04 weekly edition", "--week 2026-W04")
    assert (DAILY, WEEKLY) == (db.DAILY, db.WEEKLY) and db.FREQUENCIES == (DAILY, WEEKLY)


@pytest.mark.slow
def test_bad_week_options_are_one_usage_error_naming_the_option(project: Path) -> None:
    configure(project)
    for command in ("render", "check", "publish", "send", "status", "report"):
        for week in ("2026W4", "2026-W54"):
            done = run_newsletter(command, "--week", week, cwd=project, env=KEY_ENV)
            assert done.returncode == 2, (command, done.stderr)
            [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert error == f"error: --week: '{week}' is not a week; use YYYY-Www, e.g. 2026-W04"
    both = run_newsletter("send", "--date", "2026-01-23", "--week", "2026-W04", "--yes", cwd=project, env=KEY_ENV)
    assert both.returncode == 2 and "give --date or --week, not both" in both.stderr


# -- the week's papers --------------------------------------------------------------------------------


def test_a_paper_counts_once_with_its_most_upvotes_and_its_first_day(project: Path) -> None:
    folder = project / "digests"
    (folder / "2026-01-23.md").unlink()
    tiny_digest(folder, "2026-01-18", [(hf(1), 999)])  # the Sunday before: another week
    tiny_digest(folder, "2026-01-19", [(hf(2), 10), (hf(3), None), (hf(4), 40)])
    # hf(2) again, as Hugging Face's short host names it: the same paper, with more upvotes.
    tiny_digest(folder, "2026-01-21", [("https://hf.co/papers/2601.00002", 50), (hf(5), 40), (hf(6), None)])
    tiny_digest(folder, "2026-01-25", [(hf(7), 40), (hf(4), 5)])
    tiny_digest(folder, "2026-01-26", [(hf(8), 999)])  # the Monday after

    settings = configure(project, weekly_top=5)
    week = load_week(settings.site, WEEK)

    assert [d.date.day for d in week.digests] == [19, 21, 25]
    shown = [(p.paper.rank, p.paper.url, p.paper.upvotes, p.day.day) for p in week.papers]
    assert shown == [
        (1, hf(2), 50, 19),  # as the 19th gave it, with the 21st's upvotes
        (2, hf(4), 40, 19),  # 40 three times: the earlier day first, then the higher rank
        (3, hf(5), 40, 21),
        (4, hf(7), 40, 25),
        (5, hf(3), None, 19),  # without upvotes: last, by day
    ]
    assert len(load_week(configure(project, weekly_top=100), WEEK).papers) == 6  # every distinct paper


def test_a_week_without_digests_is_one_error_naming_the_folder_and_its_days(project: Path) -> None:
    configure(project)
    done = run_newsletter("render", "--week", "2026-W05", cwd=project, env=KEY_ENV)
    assert done.returncode == 1
    [error] = done.stderr.strip().splitlines()
    assert error.startswith("error: no digest for week 2026-W05 (2026-01-26 to 2026-02-01)")
    assert str(project / "digests") in error
    with pytest.raises(DigestError, match="2026-01-26.md … 2026-02-01.md"):
        load_week(configure(project), Edition.parse_week("2026-W05"))


def test_the_weekly_email_names_the_week_and_each_cards_day(project: Path) -> None:
    write_week(project)
    write_thumbnails(project / "digests" / "2026-01-23.md")
    settings = configure(project, base_url="https://papers.example.com")

    issue = render_issue(load_week(settings.site, WEEK), settings.site)

    assert issue.subject == "주간 논문 2026년 1월 19일–25일 — EvoCUA 외 9편"
    assert issue.web_url == "https://papers.example.com/2026-W04/" and issue.date == date(2026, 1, 25)
    page = lxml.html.fromstring(issue.html)
    assert page.find_class("title")[0].text_content() == "주간 논문 2026년 1월 19일–25일"
    assert page.find_class("date")[0].text_content() == "한 주 동안 추천을 가장 많이 받은 논문 · 논문 10편"
    cards = page.find_class("card")
    assert len(cards) == 10
    shown = [
        (card.xpath(".//h2/a")[0].get("href"), card.find_class("votes")[0].text_content(), card.find_class("day")[0].text_content())
        for card in cards
    ]
    assert shown == [(url, f"▲ 추천 {votes}", f"· {day}") for url, votes, day in TOP]
    # The abstracts are on the week's web version, each at its card.
    for rank in range(1, 11):
        assert f"https://papers.example.com/2026-W04/#paper-{rank}" in issue.html
    assert "▲ 추천 70 · 1월 20일 (화)" in issue.text and "#10  P19005" in issue.text
    report = run_checks(issue)
    assert report.ok, report.problems
    assert report.html_bytes < SIZE_LIMIT_BYTES and len(report.card_bytes) == 10

    top_three = render_issue(load_week(configure(project, weekly_top=3), WEEK), settings.site)
    assert len(lxml.html.fromstring(top_three.html).find_class("card")) == 3
    assert top_three.subject == "주간 논문 2026년 1월 19일–25일 — EvoCUA 외 2편"


def test_a_week_is_named_in_the_digests_language() -> None:
    ko, en = wording_for("ko"), wording_for("en")
    weeks = [(date(2026, 1, 19), date(2026, 1, 25)), (date(2026, 1, 26), date(2026, 2, 1)), (date(2025, 12, 29), date(2026, 1, 4))]
    assert [ko.date_range(*week) for week in weeks] == [
        "2026년 1월 19일–25일", "2026년 1월 26일–2월 1일", "2025년 12월 29일–2026년 1월 4일",
    ]  # fmt: skip
    assert [en.date_range(*week) for week in weeks] == [
        "January 19–25, 2026", "January 26 – February 1, 2026", "December 29, 2025 – January 4, 2026",
    ]  # fmt: skip
    assert en.weekly_title.format(range=en.date_range(*weeks[0])) == "Weekly papers, January 19–25, 2026"
    assert (ko.day(date(2026, 1, 23)), en.day(date(2026, 1, 23))) == ("1월 23일 (금)", "Fri, Jan 23")


# -- sending -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_daily_issues_reach_daily_members_and_the_weekly_edition_weekly_members_once(project: Path) -> None:
    write_week(project)
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, outbox_dir=str(project / "outbox"))
        daily = seed(settings, 2)  # u1, u2: daily, the default
        weekly = ["w1@example.com", "w2@example.com"]
        make_weekly(settings, weekly)

        day = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
        assert day.returncode == 0, day.stderr
        assert sorted(fake.delivered()) == daily

        dry = run_newsletter("send", "--week", "2026-W04", "--dry-run", "--yes", cwd=project, env=KEY_ENV)
        assert dry.returncode == 0, dry.stderr
        outbox = project / "outbox" / "2026-W04"
        assert str(outbox) in dry.stdout.replace("\n", "") and "2 subscribed weekly member(s)" in dry.stdout
        [body] = [json.loads(path.read_bytes()) for path in outbox.glob("batch-*.json")]
        assert [p["to"][0]["email"] for p in body["personalizations"]] == weekly
        message = email.message_from_bytes((outbox / "first-recipient.eml").read_bytes(), policy=email.policy.default)
        assert message["Subject"] == "주간 논문 2026년 1월 19일–25일 — EvoCUA 외 9편"
        assert len(fake.records) == 1  # the dry run sent nothing

        week = run_newsletter("send", "--week", "2026-W04", "--yes", cwd=project, env=KEY_ENV)
        assert week.returncode == 0, week.stderr
        assert sorted(fake.delivered()) == sorted(daily + weekly)  # each once
        assert fake.records[1].body["subject"] == message["Subject"]

        again = run_newsletter("send", "--week", "2026-W04", "--yes", cwd=project, env=KEY_ENV)
        assert again.returncode == 0 and "Nothing to do: the 2026-W04 weekly edition to list 'daily-papers' was sent" in again.stdout
        assert len(fake.records) == 2

    c, d = db.campaigns.c, db.deliveries.c
    with engine_of(settings).connect() as conn:
        campaigns = conn.execute(select(c.id, c.edition, c.issue_date).order_by(c.id)).all()
        readers = conn.execute(select(d.campaign_id, d.email, d.state).order_by(d.id)).all()
    assert [tuple(row)[1:] for row in campaigns] == [(DAILY, "2026-01-23"), (WEEKLY, "2026-W04")]
    weekly_id = campaigns[1].id
    assert [(r.email, r.state) for r in readers if r.campaign_id == weekly_id] == [(e, "sent") for e in weekly]

    status = run_newsletter("status", "--week", "2026-W04", cwd=project, env=KEY_ENV)
    assert status.returncode == 0, status.stderr
    assert f"Campaign #{weekly_id}: the 2026-W04 weekly edition to list 'daily-papers'" in status.stdout
    assert "finished" in status.stdout and re.search(r"sent\s+│\s+2 ", status.stdout)
    latest = run_newsletter("status", cwd=project, env=KEY_ENV)  # the latest issue: the week's edition, dated by its Sunday
    assert f"Campaign #{weekly_id}:" in latest.stdout

    # The email's "view in browser" and "read the abstract" links land on the published week.
    published = run_newsletter("publish", "--week", "2026-W04", cwd=project, env=KEY_ENV)
    assert published.returncode == 0, published.stderr
    assert "Published the 2026-W04 weekly edition: http://127.0.0.1:8000/2026-W04/" in published.stdout
    page = lxml.html.fromstring((project / "public" / "2026-W04" / "index.html").read_text(encoding="utf-8"))
    sent_html = fake.records[1].body["content"][1]["value"]
    anchors = set(re.findall(r"http://127\.0\.0\.1:8000/2026-W04/#(paper-\d+)", sent_html))
    assert len(anchors) == 10 and all(page.get_element_by_id(anchor) is not None for anchor in anchors)
    assert "2026-W04/" in (project / "public" / "index.html").read_text(encoding="utf-8")

    # The report keys the weekly edition by its week; --week also selects the week's daily issues.
    report = run_newsletter("report", "--week", "2026-W04", "--json", cwd=project, env=KEY_ENV)
    assert report.returncode == 0, report.stderr
    daily_issue, weekly_issue = json.loads(report.stdout)["issues"]
    assert (daily_issue["date"], daily_issue["edition"], daily_issue["sent"]) == ("2026-01-23", DAILY, 2)
    assert "date" not in weekly_issue
    assert (weekly_issue["week"], weekly_issue["edition"], weekly_issue["sent"]) == ("2026-W04", WEEKLY, 2)
    assert [(p["rank"], p["url"]) for p in weekly_issue["papers"]] == [(n, url) for n, (url, _, _) in enumerate(TOP, 1)]
    newest = json.loads(run_newsletter("report", "--json", cwd=project, env=KEY_ENV).stdout)["issues"]
    assert [i.get("week") for i in newest] == ["2026-W04"]


@pytest.mark.slow
def test_a_member_who_switches_before_their_batch_gets_the_other_edition_instead(project: Path) -> None:
    write_week(project)
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY)
        seed(settings, 3)
        plan = send.plan_send(engine_of(settings), send_parts(settings), Edition.daily(date(2026, 1, 23)), LIST)
        start_campaign(settings, plan.issue, plan.mailing_list, plan.content)  # u1, u2, u3
        m = db.memberships.c
        with engine_of(settings).begin() as conn:  # u2 switches to the weekly edition
            conn.execute(db.memberships.update().where(m.subscriber_id == 2).values(frequency=WEEKLY))

        daily = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), date(2026, 1, 23), LIST))
        weekly = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), WEEK, LIST))

    assert daily.counts[db.SENT] == 2 and weekly.counts[db.SENT] == 1
    assert sorted(fake.delivered()) == ["u1@example.com", "u2@example.com", "u3@example.com"]
    state = send.campaign_status(engine_of(settings), date(2026, 1, 23), LIST, now=settings.clock())
    assert state.skipped == {"switched to the weekly edition before sending": 1}


@pytest.mark.slow
def test_spamassassin_finds_nothing_to_hold_against_the_weekly_edition(project: Path, tmp_path: Path) -> None:
    write_week(project)
    settings = configure(project, outbox_dir=str(project / "outbox"))
    seed(settings, 0)
    make_weekly(settings, ["reader@example.com"])
    done = run_newsletter("send", "--week", "2026-W04", "--dry-run", "--yes", cwd=project, env=KEY_ENV)
    assert done.returncode == 0, done.stderr

    score, rules, report = spamassassin((project / "outbox" / "2026-W04" / "first-recipient.eml").read_bytes(), tmp_path)
    assert rules and score <= 1.0, report
    assert not [rule for rule in rules if rule.startswith(SPAM_RULES_REFUSED)], report


@pytest.mark.slow
def test_a_reader_who_switches_on_their_preferences_page_gets_the_weekly_edition_only(project: Path) -> None:
    write_week(project)
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY)
        seed(settings, 2)
        token = UnsubscribeLinks(settings.links).token(1, 1, "u1@example.com")
        with serving(project / "newsletter.toml") as url, httpx.Client(timeout=30) as http:
            assert http.post(f"{url}/preferences/{token}", data={"frequency": "weekly"}).status_code == 200

        assert run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV).returncode == 0
        assert fake.delivered() == ["u2@example.com"]
        assert run_newsletter("send", "--week", "2026-W04", "--yes", cwd=project, env=KEY_ENV).returncode == 0
        assert fake.delivered() == ["u2@example.com", "u1@example.com"]


@pytest.mark.slow
def test_on_weekly_day_a_reader_who_switches_during_either_send_gets_one_of_the_two_issues_once(project: Path) -> None:
    # Sunday: the run sends the day's issue, then the week's edition. During the daily send w1
    # (weekly) switches to daily, after the daily snapshot left them out: they get the weekly
    # edition, which they were a member of. u2 switches the other way before their batch: skipped
    # from the day's issue, they get the week's. During the weekly send w2 switches to daily: the
    # day's issue had gone out without them, so they keep the weekly edition.
    write_week(project)
    write_sunday(project)
    switches = {1: [("w1@example.com", DAILY), ("u2@example.com", WEEKLY)], 2: [("w2@example.com", DAILY)]}
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        # 05:00 on Sunday the 25th in Seoul; one reader a request, so that the switches fall between.
        settings = configure(project, sendgrid_api_url=fake.url, now="2026-01-24T20:00:00Z", batch_size=1, send_concurrency=1)
        fake.behaviour.on_request = switcher(settings, switches)
        seed(settings, 2)  # u1, u2: daily
        make_weekly(settings, ["w1@example.com", "w2@example.com"])
        with engine_of(settings).begin() as conn:  # everyone joined days before
            conn.execute(db.memberships.update().values(updated_at=settings.clock() - timedelta(days=3)))

        done = run_newsletter("run", "--json", cwd=project, env=KEY_ENV)

        assert done.returncode == 0, done.stderr
        sent = [(record.emails, "주간" in record.body["subject"]) for record in fake.records]
        assert sent == [(["u1@example.com"], False), (["u2@example.com"], True), (["w2@example.com"], True), (["w1@example.com"], True)]

        again = run_newsletter("run", "--json", cwd=project, env=KEY_ENV)

        assert again.returncode == 0, again.stderr
        assert len(fake.records) == 4
    state = send.campaign_status(engine_of(settings), date(2026, 1, 25), LIST, now=settings.clock())
    assert state.skipped == {"switched to the weekly edition before sending": 1}
    weekly = send.campaign_status(engine_of(settings), WEEK, LIST, now=settings.clock())
    assert weekly.counts[db.SENT] == 3 and not weekly.skipped


@pytest.mark.slow
def test_a_weekly_edition_sent_first_leaves_the_days_issue_to_who_switched_to_weekly_after_it(project: Path) -> None:
    # The reverse order (the week's edition sent by hand before Sunday's issue): u1 switches to
    # weekly after the weekly snapshot left them out, and gets Sunday's daily issue; a reader who
    # joins the daily issues meanwhile gets only what any new reader gets.
    write_week(project)
    write_sunday(project)
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY)
        fake.behaviour.on_request = switcher(settings, {1: [("u1@example.com", WEEKLY)]})
        seed(settings, 2)  # u1, u2: daily
        make_weekly(settings, ["w1@example.com"])

        week = run_newsletter("send", "--week", "2026-W04", "--yes", cwd=project, env=KEY_ENV)
        assert week.returncode == 0, week.stderr
        add_subscribers(settings, 1, ["new@example.com"])
        make_weekly(settings, ["new-weekly@example.com"])
        day = run_newsletter("send", "--date", "2026-01-25", "--yes", cwd=project, env=KEY_ENV)
        assert day.returncode == 0, day.stderr

    assert fake.delivered() == ["w1@example.com", "u2@example.com", "new@example.com", "u1@example.com"]
