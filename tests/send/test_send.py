"""Sending an issue: request bodies, the recipient snapshot, batching, states, resume, status, and the
`send`/`status` commands (dry run, test addresses, sandbox, checks) against the fake SendGrid."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import db, send
from newsletter.errors import SendError
from newsletter.membership import set_status
from newsletter.providers.sendgrid import SendGrid
from newsletter.content.render import UNSUBSCRIBE_TAG
from newsletter.send import addressing, campaigns
from newsletter.subscribers import MailingList
from newsletter.tokens import UnsubscribeLinks
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, LIST, configure, engine_of, seed
from newsletter.wiring import send_parts

from ..send_helpers import KEY_ENV, campaign_holder, delivery_states, start_campaign
from ..support import ROOT, run_newsletter

DAY = date(2026, 1, 23)


@pytest.fixture
def fake():
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as server:
        yield server


def real_settings(project: Path, fake: FakeSendGrid, **overrides):
    return configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY, **overrides)


def test_each_recipient_is_one_personalization_with_its_own_link_headers_and_ids(project: Path) -> None:
    settings = configure(project, reply_to="editor@example.com")
    content = addressing.Content("Subject", f"<a href='{UNSUBSCRIBE_TAG}'>x</a>", f"bye: {UNSUBSCRIBE_TAG}")
    readers = [
        addressing.Reader(1, 7, "ann@example.com", "Lee, Ann; Dr."),
        addressing.Reader(2, 9, "bo@example.com", None),
    ]
    mailing_list = MailingList(id=3, name="daily-papers", description="", created_at=settings.clock())
    body = addressing.Addressing(
        settings.sender, content, mailing_list=mailing_list, campaign_id=12, links=UnsubscribeLinks(settings.links),
        provider=SendGrid(settings.delivery, connect=False), validate_only=True,
    ).prepare(readers)  # fmt: skip

    assert body["content"] == [
        {"type": "text/plain", "value": content.text},
        {"type": "text/html", "value": content.html},
    ]
    assert body["from"] == {"email": settings.from_email, "name": settings.from_name}
    assert body["reply_to"] == {"email": "editor@example.com"}
    assert body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert "custom_args" not in body  # the spec types it as a string at this level
    links = UnsubscribeLinks(settings.links)
    first, second = body["personalizations"]
    assert first["to"] == [{"email": "ann@example.com", "name": "Lee Ann Dr."}]
    assert second["to"] == [{"email": "bo@example.com"}]
    for personalization, subscriber, address in ((first, 7, "ann@example.com"), (second, 9, "bo@example.com")):
        url = personalization["substitutions"][UNSUBSCRIBE_TAG]
        token = url.rsplit("/", 1)[1]
        assert links.ids(token) == (3, subscriber) and links.signed_for(token, address)
        assert personalization["headers"] == links.headers(url)
        assert personalization["custom_args"] == {"campaign_id": "12", "subscriber_id": str(subscriber), "list_id": "3"}
        assert len(json.dumps(personalization["substitutions"]).encode()) < 10_000


@pytest.mark.slow
def test_a_send_snapshots_the_list_batches_it_and_records_every_answer(project: Path, fake: FakeSendGrid) -> None:
    settings = real_settings(project, fake)
    subscribed = seed(settings, 2503, unsubscribed=(5, 1500))
    plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
    assert (plan.recipients, plan.batches, plan.checks.ok) == (2501, 3, True)

    report = send.send_campaign(engine_of(settings), send_parts(settings), plan)

    assert report.finished and report.error is None
    assert report.counts[db.SENT] == 2501 and report.requests == 3
    assert sorted(len(r.emails) for r in fake.records) == [501, 1000, 1000]
    assert Counter(fake.delivered()) == Counter(subscribed)  # everyone once, the leavers never
    message_ids = {email: r.message_id for r in fake.records for email in r.emails}
    states = delivery_states(settings)
    assert {email: (state, mid) for email, (state, mid, _) in states.items()} == {
        email: ("sent", message_ids[email]) for email in subscribed
    }
    with engine_of(settings).connect() as conn:
        campaign = conn.execute(select(db.campaigns)).one()
        batches = conn.execute(select(db.batches.c.state, db.batches.c.size)).all()
    assert campaign.finished_at is not None and campaign_holder(settings, campaign.id) is None
    assert (campaign.subject, campaign.html, campaign.text) == (plan.content.subject, plan.content.html, plan.content.text)
    assert sorted(batches) == [("sent", 501), ("sent", 1000), ("sent", 1000)]
    # The custom_args carry the ids the webhook maps events back with.
    personalization = fake.records[0].body["personalizations"][0]
    assert personalization["custom_args"]["campaign_id"] == str(campaign.id)


def test_an_unsubscribe_during_the_send_is_honoured_by_later_batches(project: Path) -> None:
    settings_box = {}

    def unsubscribe_25(record) -> None:
        if record.seq == 1:
            settings = settings_box["settings"]
            with engine_of(settings).begin() as conn:
                set_status(conn, list_id=1, subscriber_id=25, status=db.UNSUBSCRIBED,
                           source="one_click", now=settings.clock())

    with FakeSendGrid(api_key=API_KEY, on_request=unsubscribe_25) as fake:
        settings = real_settings(project, fake, batch_size=10, send_concurrency=1)
        settings_box["settings"] = settings
        seed(settings, 30)
        report = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST))

    assert report.finished
    assert "u25@example.com" not in fake.delivered()
    assert len(fake.delivered()) == 29
    assert delivery_states(settings)["u25@example.com"] == ("skipped", None, "unsubscribed before sending")
    assert report.counts == {**dict.fromkeys(campaigns.STATES, 0), "sent": 29, "skipped": 1}


@pytest.mark.slow
def test_a_finished_send_is_not_repeated(project: Path, fake: FakeSendGrid) -> None:
    real_settings(project, fake)
    seed(real_settings(project, fake), 3)
    first = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
    assert first.returncode == 0, first.stderr
    again = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)

    assert again.returncode == 0, again.stderr
    assert "Nothing to do" in again.stdout and "3 sent" in again.stdout
    assert len(fake.records) == 1


@pytest.mark.slow
def test_a_resume_sends_what_was_left_with_the_content_stored_at_the_start(project: Path) -> None:
    # The second request meets an outage (no retries allowed): the send stops, resumable.
    with FakeSendGrid(api_key=API_KEY, script=["202", "503"], keep_bodies=True) as fake:
        settings = real_settings(project, fake, batch_size=10, send_concurrency=1, max_retries=0)
        addresses = seed(settings, 25)
        first = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST))
        assert isinstance(first.error, SendError) and "503" in str(first.error)
        assert (first.finished, first.counts["sent"], first.counts["pending"]) == (False, 10, 15)

        # The digest changes in between: the resume must still send what the first run sent.
        digest = project / "digests" / "2026-01-23.md"
        digest.write_text(digest.read_text(encoding="utf-8").replace("EvoCUA", "Changed"), encoding="utf-8")
        plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
        assert plan.campaign is not None and plan.recipients == 15 and plan.checks is None
        second = send.send_campaign(engine_of(settings), send_parts(settings), plan)

    assert second.finished and second.counts["sent"] == 25
    assert Counter(fake.delivered()) == Counter(addresses)
    contents = {json.dumps(r.body["content"]) for r in fake.records}
    subjects = {r.body["subject"] for r in fake.records}
    assert len(contents) == 1 and len(subjects) == 1 and "EvoCUA" in subjects.pop()


@pytest.mark.slow
def test_status_lists_counts_failures_and_reasons(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, reject={"u2@example.com"}) as fake:
        settings = real_settings(project, fake, batch_size=4)
        seed(settings, 6, unsubscribed=())
        plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
        start_campaign(settings, DAY, plan.mailing_list, plan.content)
        with engine_of(settings).begin() as conn:  # bounces after the snapshot, before its batch
            set_status(conn, list_id=1, subscriber_id=6, status=db.BOUNCED, source="webhook", now=settings.clock())
        report = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST))
    assert report.finished

    state = send.campaign_status(engine_of(settings), DAY, LIST, now=settings.clock())
    assert state is not None
    assert (state.counts["sent"], state.counts["failed"], state.counts["skipped"]) == (4, 1, 1)
    assert state.failures == [
        ("u2@example.com", "SendGrid answered 400: Does not contain a valid address. (personalizations.0.to.0.email)")
    ]
    assert state.skipped == {"bounced before sending": 1}
    shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV)
    assert shown.returncode == 0, shown.stderr
    for expected in ("finished", "u2@example.com", "Does not contain a valid address", "bounced before sending"):
        assert expected in shown.stdout
    assert "sent" in shown.stdout and " 4 " in shown.stdout


@pytest.mark.slow
def test_status_before_any_send_says_so(project: Path) -> None:
    settings = configure(project)
    seed(settings, 1)
    shown = run_newsletter("status", "--date", "2026-01-23", cwd=project, env=KEY_ENV)
    assert shown.returncode == 0 and "No send to list 'daily-papers' has started" in shown.stdout


@pytest.mark.slow
def test_a_dry_run_writes_the_exact_requests_and_the_first_message_and_records_nothing(
    project: Path, fake: FakeSendGrid
) -> None:
    settings = real_settings(project, fake, batch_size=2)
    seed(settings, 5)
    run = run_newsletter("send", "--date", "2026-01-23", "--dry-run", "--yes", cwd=project, env=KEY_ENV)
    assert run.returncode == 0, run.stderr

    outbox = project / "outbox" / "2026-01-23"
    assert str(outbox) in run.stdout.replace("\n", "") and "nothing was sent" in run.stdout
    assert fake.records == []
    files = sorted(outbox.glob("batch-*.json"))
    bodies = [json.loads(path.read_bytes()) for path in files]
    assert [len(b["personalizations"]) for b in bodies] == [2, 2, 1]
    assert [p["to"][0]["email"] for b in bodies for p in b["personalizations"]] == [
        f"u{n}@example.com" for n in range(1, 6)
    ]
    for path in outbox.iterdir():
        assert API_KEY not in path.read_text(encoding="utf-8")

    message = email.message_from_bytes((outbox / "first-recipient.eml").read_bytes(), policy=email.policy.default)
    first = bodies[0]["personalizations"][0]
    url = first["substitutions"][UNSUBSCRIBE_TAG]
    assert message.get_content_type() == "multipart/alternative"
    assert message["To"] == "Reader 1 <u1@example.com>"
    assert message["From"] == f"{settings.from_name} <{settings.from_email}>"
    assert message["Subject"] == bodies[0]["subject"]
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["MIME-Version"] == "1.0" and message["Date"] and message["Message-ID"]
    text, html = (part.get_content() for part in message.iter_parts())
    assert url in text and url in html and UNSUBSCRIBE_TAG not in text + html
    assert (outbox / "first-recipient.html").read_text(encoding="utf-8") == html.replace("\r\n", "\n")
    assert (outbox / "first-recipient.html").as_uri() in run.stdout.replace("\n", "")

    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.campaigns)).all() == []
        assert conn.execute(select(db.deliveries)).all() == []
    # The dry run made no later real send think anything had gone out.
    real = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
    assert real.returncode == 0, real.stderr
    assert sorted(fake.delivered()) == sorted(f"u{n}@example.com" for n in range(1, 6))


@pytest.mark.slow
def test_without_an_api_key_a_real_send_stops_and_points_to_dry_run(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    run = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project)
    assert run.returncode == 1
    assert "SENDGRID_API_KEY is not set" in run.stderr and "--dry-run" in run.stderr
    assert "Traceback" not in run.stderr
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.campaigns)).all() == []


@pytest.mark.slow
def test_a_test_send_goes_to_the_given_addresses_only_and_is_not_the_issues_delivery(project: Path, fake: FakeSendGrid) -> None:
    settings = real_settings(project, fake)
    seed(settings, 4)
    run = run_newsletter(
        "send", "--date", "2026-01-23", "--yes", "--to", "editor@example.org", "--to", "u3@example.com",
        cwd=project, env=KEY_ENV,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "✓ editor@example.org: sent by SendGrid" in run.stdout and "✓ u3@example.com: sent by SendGrid" in run.stdout

    assert [record.emails for record in fake.records] == [["editor@example.org"], ["u3@example.com"]]
    assert all("custom_args" not in p for r in fake.records for p in r.body["personalizations"])
    links = UnsubscribeLinks(settings.links)
    own = fake.records[1].body["personalizations"][0]["substitutions"][UNSUBSCRIBE_TAG]
    own_token = own.rsplit("/", 1)[1]
    # A subscriber's test copy leads to the test-copy page, with no token of theirs: forwarded, it
    # could unsubscribe them. Its link is as long as a real one, for the checks' sizes.
    assert own.startswith(f"{settings.base_url}/test-copy/") and not links.signed_for(own_token, "u3@example.com")
    assert len(own_token) == len(links.token(1, 3, "u3@example.com"))
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.campaigns)).all() == []


@pytest.mark.slow
def test_sandbox_mode_is_validated_by_sendgrid_and_not_recorded(project: Path, fake: FakeSendGrid) -> None:
    settings = real_settings(project, fake, batch_size=2)
    seed(settings, 3)
    run = run_newsletter("send", "--date", "2026-01-23", "--yes", "--sandbox", cwd=project, env=KEY_ENV)
    assert run.returncode == 0, run.stderr
    assert [r.status for r in fake.records] == [200, 200]
    assert all(r.body["mail_settings"] == {"sandbox_mode": {"enable": True}} for r in fake.records)
    assert fake.delivered() == []
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.deliveries)).all() == []


@pytest.mark.slow
def test_failing_checks_stop_the_send_unless_forced(project: Path, fake: FakeSendGrid) -> None:
    templates = project / "templates"
    shutil.copytree(ROOT / "templates", templates)
    text_template = templates / "issue.txt.j2"
    text_template.write_text(text_template.read_text(encoding="utf-8").replace("{{ unsubscribe_url }}", ""), encoding="utf-8")
    settings = real_settings(project, fake, templates_dir=str(templates))
    seed(settings, 2)

    stopped = run_newsletter("send", "--date", "2026-01-23", "--yes", cwd=project, env=KEY_ENV)
    assert stopped.returncode == 1
    assert "check(s) failed" in stopped.stderr and "text part" in stopped.stderr
    assert fake.records == []
    with engine_of(settings).connect() as conn:
        assert conn.execute(select(db.campaigns)).all() == []

    forced = run_newsletter("send", "--date", "2026-01-23", "--yes", "--force", cwd=project, env=KEY_ENV)
    assert forced.returncode == 0, forced.stderr
    assert sorted(fake.delivered()) == ["u1@example.com", "u2@example.com"]
