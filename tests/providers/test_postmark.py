"""Postmark, the third provider, through the real CLI against the fake Postmark (testkit/fake_postmark):
a send of each reader's own message, whole or through the issue's template (byte for byte the same
message), per-message refusals (406 also suppresses), retries of 429 and 5xx, a refused token
stopping with everyone pending, a sender killed mid-send resumed without sending twice, a template
refused, gone or stale, the dry run's outbox, the webhooks (only with the basic credentials) and the
sync of its suppression list. Asserted on what the fake received and on the database."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from newsletter import db
from newsletter.config import Settings
from newsletter.providers import PREFERENCES_TAG, UNSUBSCRIBE_TAG, AnswerLost, Batch, Message, Recipient, Verdict
from newsletter.providers.postmark import mail
from newsletter.providers.postmark.http import HTTPAnswer
from newsletter.providers.postmark.mail import Postmark, verdict
from newsletter.providers.postmark.templates import TEMPLATED_FROM, gone
from testkit.fake_postmark import FakePostmark, Record
from testkit.projects import add_list, add_subscribers, configure, engine_of, seed
from testkit.servers import serving

from ..send_helpers import SEND, delivery_states
from ..support import run_newsletter, start_newsletter
from ..web import events_of, status_of

TOKEN = "pm-server-token-never-printed"
ENV = {"POSTMARK_SERVER_TOKEN": TOKEN}
WEBHOOK_USER, WEBHOOK_PASSWORD = "postmark", "webhook-password-never-printed"


def postmark_project(project: Path, fake: FakePostmark, **overrides: object) -> Settings:
    return configure(project, provider="postmark", postmark_api_url=fake.url, max_retries=3, **overrides)


def delivered_from_log(log: Path) -> Counter[str]:
    received: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        received.update(json.loads(line)["delivered"])
    return received


def test_each_reader_gets_their_own_message_in_batches_of_the_limit(project: Path) -> None:
    with FakePostmark(token=TOKEN, keep_bodies=True) as fake:
        settings = postmark_project(project, fake, batch_size=3)
        addresses = seed(settings, 7)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    assert sorted(len(record.delivered) for record in fake.records) == [1, 3, 3]
    assert Counter(fake.delivered()) == Counter(addresses)
    states = delivery_states(settings)
    assert {state for state, _, _ in states.values()} == {"sent"}
    messages = [message for record in fake.records for message in record.messages or []]
    links = set()
    for message in messages:
        headers = {header["Name"]: header["Value"] for header in message["Headers"]}
        link = headers["List-Unsubscribe"].strip("<>").split(">")[0]
        assert link in message["HtmlBody"] and link in message["TextBody"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and "List-Id" in headers
        assert message["MessageStream"] == "broadcast" and message["Metadata"]["list_id"] == "1"
        links.add(link)
    assert len(links) == 7  # each reader's own
    assert '"Reader 1" <u1@example.com>' in {message["To"] for message in messages}
    assert TOKEN not in run.stdout + run.stderr


def _readers_and_message() -> tuple[str, str, Message, list[Recipient], dict[int, str]]:
    html = f'<p>"À" \\ 한국어 }}}}</p><a href="{UNSUBSCRIBE_TAG}" clicktracking="off">leave</a> <a href="{PREFERENCES_TAG}">x</a>'
    text = f"À \\ \"한국어\" {{ }}\n{UNSUBSCRIBE_TAG}\n{PREFERENCES_TAG}\n"
    message = Message("Today's papers", html, text, "papers@example.com", "Daily Papers", "editor@example.com",
                      {"List-Id": "<daily-papers.example.com>"})  # fmt: skip
    names = {1: "Reader 1", 2: 'Ann "Q" \\ Ö', 3: None}
    tos = {1: '"Reader 1" <u1@example.com>', 2: '"Ann \\"Q\\" \\\\ Ö" <u2@example.com>', 3: "u3@example.com"}
    readers = [
        Recipient(
            f"u{n}@example.com", names[n], f"https://news.example.com/unsubscribe/{n}?a=1&b=\"{n}\"",
            {"List-Unsubscribe": f"<https://news.example.com/unsubscribe/{n}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            {"campaign_id": "7", "subscriber_id": str(n)},
            f"https://news.example.com/preferences/{n}" if n != 3 else None,  # reader 3's tag stays as it is
        )  # fmt: skip
        for n in names
    ]
    return html, text, message, readers, tos


def _whole(html: str, text: str, message: Message, reader: Recipient, to: str) -> dict[str, object]:
    """`reader`'s message as /email/batch carries it."""
    filled = [html.replace('clicktracking="off"', 'clicktracking="off" data-pm-no-track'), text]
    for tag, url in ((UNSUBSCRIBE_TAG, reader.unsubscribe_url), (PREFERENCES_TAG, reader.preferences_url)):
        filled = [part.replace(tag, url or tag) for part in filled]
    return {
        "To": to,
        "Headers": [{"Name": name, "Value": value} for name, value in {**message.headers, **reader.headers}.items()],
        "Metadata": reader.tags, "HtmlBody": filled[0], "TextBody": filled[1],
        "From": '"Daily Papers" <papers@example.com>', "Subject": "Today's papers", "MessageStream": "broadcast",
        "TrackOpens": True, "TrackLinks": "HtmlOnly", "ReplyTo": "editor@example.com",
    }  # fmt: skip


def _send_once(provider: Postmark, prepared: mail.Prepared) -> Verdict:
    async def send() -> Verdict:
        try:
            return (await provider.send(prepared)).verdict
        finally:
            await provider.aclose()

    return asyncio.run(send())


def test_a_batch_is_byte_for_byte_each_readers_message_encoded_whole(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body is spliced from pieces encoded once per mailing: it must be exactly what encoding
    each reader's own message whole gives, written out (the dry run) and streamed in chunks alike."""
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", TOKEN)
    monkeypatch.setattr(mail, "CHUNK_BYTES", 100)  # many chunks, cut anywhere in a message
    html, text, message, readers, tos = _readers_and_message()
    with FakePostmark(token=TOKEN, keep_bodies=True) as fake:
        provider = Postmark(postmark_project(project, fake).delivery)
        prepared = provider.prepare(Batch(message, readers))
        assert _send_once(provider, prepared) is Verdict.ACCEPTED
    expected = [_whole(html, text, message, reader, tos[n]) for n, reader in enumerate(readers, 1)]
    assert provider.wire(prepared) == [("json", json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode())]
    [record] = fake.records
    assert record.messages == expected  # what went over the wire, in its chunks
    assert len({message["Headers"][1]["Value"] for message in expected}) == 3  # each reader's own
    assert fake.templates == {}  # three readers: no template


def test_a_templated_batch_gives_each_reader_the_same_message_as_a_whole_one(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of TEMPLATED_FROM readers or more names the issue's template and carries each
    reader's links: what Postmark makes of it is byte for byte the message /email/batch carries."""
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", TOKEN)
    monkeypatch.setattr(mail, "TEMPLATED_FROM", 3)
    html, text, message, readers, tos = _readers_and_message()
    with FakePostmark(token=TOKEN, keep_bodies=True) as fake:
        provider = Postmark(postmark_project(project, fake, now="2026-01-23T08:00:00Z").delivery)
        prepared = provider.prepare(Batch(message, readers))
        assert _send_once(provider, prepared) is Verdict.ACCEPTED
    [(alias, template)] = fake.templates.items()
    assert alias.startswith("newsletter-20260123-") and "{{{unsubscribe_url}}}" in template["HtmlBody"]
    [record] = fake.records
    for n, (reader, received) in enumerate(zip(readers, record.messages or []), 1):
        whole = _whole(html, text, message, reader, tos[n])
        assert {key: received[key] for key in ("HtmlBody", "TextBody", "Subject")} == {
            key: whole[key] for key in ("HtmlBody", "TextBody", "Subject")
        }
        assert received["TemplateAlias"] == alias and received["InlineCss"] is False
        assert {key: received[key] for key in whole if key not in ("HtmlBody", "TextBody", "Subject")} == {
            key: value for key, value in whole.items() if key not in ("HtmlBody", "TextBody", "Subject")
        }
    # The dry run shows the template, then the batch that names it.
    [(kind, made), (batch_kind, batch)] = provider.wire(prepared)
    assert (kind, batch_kind) == ("template.json", "json") and json.loads(made)["Alias"] == alias
    assert [m["TemplateModel"]["unsubscribe_url"] for m in json.loads(batch)["Messages"]] == [r.unsubscribe_url for r in readers]


def test_tags_sharing_a_dash_are_filled_alike_in_a_template_and_a_whole_copy(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mail, "TEMPLATED_FROM", 1)
    _, _, message, readers, _ = _readers_and_message()
    text = f"{PREFERENCES_TAG[:-1]}{UNSUBSCRIBE_TAG}"  # "-preferences_url-unsubscribe_url-"
    odd = Message(message.subject, message.html, text, message.sender_email, message.sender_name)
    provider = Postmark(postmark_project(project, FakePostmark()).delivery, connect=False)
    [(_, template), _] = provider.wire(provider.prepare(Batch(odd, readers)))
    monkeypatch.setattr(mail, "TEMPLATED_FROM", 10)
    [(_, whole)] = provider.wire(provider.prepare(Batch(odd, readers)))
    reader = readers[0]
    filled = json.loads(template)["TextBody"].replace("{{{preferences_url}}}", reader.preferences_url or "")
    assert filled == json.loads(whole)[0]["TextBody"] == f"{reader.preferences_url}unsubscribe_url-"


def test_an_issue_mustachio_would_read_otherwise_goes_whole(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mail, "TEMPLATED_FROM", 1)
    _, _, message, readers, _ = _readers_and_message()
    provider = Postmark(postmark_project(project, FakePostmark()).delivery, connect=False)
    for html in ("<p>{{ name }}</p>", f'<a href="{{{UNSUBSCRIBE_TAG}}}">x</a>', "<p>{{{raw}}}</p>"):
        odd = Message(message.subject, html, message.text, message.sender_email, message.sender_name)
        [(kind, body)] = provider.wire(provider.prepare(Batch(odd, readers)))
        assert kind == "json" and "HtmlBody" in json.loads(body)[0]
    [(kind, _), _] = provider.wire(provider.prepare(Batch(message, readers)))
    assert kind == "template.json"


def test_refused_messages_fail_alone_and_an_inactive_recipient_is_suppressed(project: Path) -> None:
    with FakePostmark(token=TOKEN, errors={"u2@example.com": 300, "u3@example.com": 406}) as fake:
        settings = postmark_project(project, fake, batch_size=5)
        addresses = seed(settings, 5)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    assert len(fake.records) == 1  # nothing is sent twice: the others were accepted
    states = delivery_states(settings)
    assert {a: s for a, (s, _, _) in states.items()} == {
        **dict.fromkeys(addresses, "sent"), "u2@example.com": "failed", "u3@example.com": "failed"
    }
    assert "ErrorCode 406" in (states["u3@example.com"][2] or "")
    assert status_of(settings, 1, 3) == db.BOUNCED  # inactive at Postmark: suppressed here too
    assert status_of(settings, 1, 2) == db.SUBSCRIBED  # a bad address, not a suppression
    assert events_of(settings, 3)[-1][1:] == (db.BOUNCED, db.SUBSCRIBED, "provider_answer")


@pytest.mark.slow  # three backoffs
def test_rate_limits_and_server_errors_are_retried(project: Path) -> None:
    with FakePostmark(token=TOKEN, script=["429", "500", "503"], retry_after=0) as fake:
        settings = postmark_project(project, fake, batch_size=10, send_concurrency=1)
        addresses = seed(settings, 4)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    assert [record.status for record in fake.records] == [429, 500, 503, 200]
    assert Counter(fake.delivered()) == Counter(addresses)


def test_a_refused_token_stops_the_send_with_everyone_pending(project: Path) -> None:
    with FakePostmark(token="another-token") as fake:
        settings = postmark_project(project, fake, batch_size=2, send_concurrency=1)
        seed(settings, 5)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode != 0
    assert "POSTMARK_SERVER_TOKEN" in run.stderr and TOKEN not in run.stdout + run.stderr
    assert len(fake.records) == 1 and fake.delivered() == []
    assert {state for state, _, _ in delivery_states(settings).values()} == {"pending"}


def test_a_request_error_stops_the_send_with_everyone_pending(project: Path) -> None:
    with FakePostmark(token=TOKEN, script=["422"]) as fake:
        settings = postmark_project(project, fake, batch_size=2, send_concurrency=1)
        seed(settings, 5)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode != 0 and "422" in run.stderr
    assert {state for state, _, _ in delivery_states(settings).values()} == {"pending"}


@pytest.mark.parametrize("size", [10, pytest.param(TEMPLATED_FROM, marks=pytest.mark.slow)], ids=["whole", "templated"])
def test_a_sender_killed_while_its_request_is_out_resumes_without_resending_it(project: Path, size: int) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}

    def kill_during_second_request(record: Record) -> None:
        if record.seq == 2:
            sender["process"].kill()  # SIGKILL before Postmark's answer leaves
            sender["process"].wait()

    log = project / "requests.jsonl"
    with FakePostmark(token=TOKEN, log=log, on_request=kill_during_second_request) as fake:
        settings = postmark_project(project, fake, batch_size=size, send_concurrency=1)
        addresses = seed(settings, 4 * size + 5)
        sender["process"] = start_newsletter(*SEND, cwd=project, env=ENV)
        sender["process"].wait(120)
        assert sender["process"].returncode == -9

        resumed = run_newsletter(*SEND, cwd=project, env=ENV)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 batch(es) are uncertain" in resumed.stderr
        uncertain = {a for a, (state, _, _) in delivery_states(settings).items() if state == "uncertain"}
        assert uncertain == set(addresses[size : 2 * size])
        again = run_newsletter(*SEND, cwd=project, env=ENV)
        assert again.returncode == 0, again.stderr
    assert delivered_from_log(log) == Counter(addresses)  # the lost batch did arrive, once
    # The resumed send found the template the killed one made, and made no other.
    calls = [(method, status) for method, _, status in fake.template_calls]
    assert calls == ([("POST", 200), ("POST", 422), ("GET", 200)] if size == TEMPLATED_FROM else [])


def test_a_template_postmark_refuses_sends_the_issue_whole(project: Path) -> None:
    with FakePostmark(token=TOKEN, template_script=["503", "422"], keep_bodies=True) as refusing:
        settings = postmark_project(project, refusing, batch_size=TEMPLATED_FROM, send_concurrency=1)
        addresses = seed(settings, 2 * TEMPLATED_FROM)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "Postmark did not take the issue as a template" in run.stderr
    assert Counter(refusing.delivered()) == Counter(addresses) and refusing.templates == {}
    assert not any("TemplateAlias" in message for record in refusing.records for message in record.messages or [])
    # Made: 503, so again; 422, and its alias names no template of ours (422): refused.
    assert [(method, status) for method, _, status in refusing.template_calls] == [("POST", 503), ("POST", 422), ("GET", 422)]


@pytest.mark.slow  # two backoffs
def test_a_template_gone_mid_send_is_made_again_once_then_the_issue_goes_whole(project: Path) -> None:
    def delete_after_first_and_third(record: Record) -> None:
        if record.seq in (1, 3):
            fake.templates.clear()  # deleted by hand at Postmark

    bad = f"u{TEMPLATED_FROM + 5}@example.com"  # in the second batch
    with FakePostmark(token=TOKEN, errors={bad: 300}, keep_bodies=True, on_request=delete_after_first_and_third) as fake:
        settings = postmark_project(project, fake, batch_size=TEMPLATED_FROM, send_concurrency=1)
        addresses = seed(settings, 3 * TEMPLATED_FROM)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    # The second batch: refused whole (1101 but for the bad address's 300), so sent again once the
    # template is made again; the third: refused whole again, so sent again whole.
    size = TEMPLATED_FROM
    assert [len(record.delivered) for record in fake.records] == [size, 0, size - 1, 0, size]
    assert ["TemplateAlias" in (record.messages or [{}])[0] for record in fake.records] == [True, True, True, True, False]
    assert Counter(fake.delivered()) == Counter(a for a in addresses if a != bad)
    assert delivery_states(settings)[bad][0] == "failed" and "ErrorCode 300" in (delivery_states(settings)[bad][2] or "")
    assert [(method, status) for method, _, status in fake.template_calls] == [("POST", 200), ("POST", 200)]
    assert "went missing twice" in run.stderr


def test_a_template_is_gone_only_when_postmark_accepted_none_of_the_batch() -> None:
    ok, lost, bad = ({"ErrorCode": code, "Message": "m"} for code in (0, 1101, 300))
    assert gone(HTTPAnswer(200, [lost, lost])) and gone(HTTPAnswer(200, [bad, lost]))
    assert gone(HTTPAnswer(422, {"ErrorCode": 1101, "Message": "not found"}))
    assert not gone(HTTPAnswer(200, [ok, lost])) and not gone(HTTPAnswer(200, [bad, bad]))
    assert verdict(HTTPAnswer(200, [ok, lost]), 2).refused == frozenset({1})  # settled as Postmark answered


def test_making_a_template_deletes_the_ones_made_two_days_before(project: Path) -> None:
    old, older, kept = (f"newsletter-2026012{day}-{digit * 32}" for day, digit in ((1, "a"), (0, "b"), (2, "c")))
    others = ["welcome", "newsletter-20260101-welcome"]  # not ours, however old
    with FakePostmark(token=TOKEN) as fake:
        for alias in (old, older, kept, *others):
            fake.templates[alias] = {"TemplateId": len(fake.templates) + 1, "Name": alias, "Alias": alias, "Active": True}
        settings = postmark_project(project, fake, batch_size=TEMPLATED_FROM, now="2026-01-23T08:00:00Z")
        seed(settings, TEMPLATED_FROM)
        run = run_newsletter(*SEND, cwd=project, env=ENV)
    assert run.returncode == 0, run.stderr
    [made] = [alias for alias in fake.templates if alias.startswith("newsletter-20260123-")]
    assert sorted(fake.templates) == sorted([kept, *others, made])
    assert [(m, a) for m, a, _ in fake.template_calls if m == "DELETE"] == [("DELETE", old), ("DELETE", older)]


def test_the_dry_run_writes_the_batches_postmark_would_get(project: Path) -> None:
    with FakePostmark(token=TOKEN) as fake:
        settings = postmark_project(project, fake, batch_size=2)
        seed(settings, 3)
        run = run_newsletter(*SEND[:-1], "--dry-run", "--yes", cwd=project, env={})
    assert run.returncode == 0, run.stderr
    assert fake.records == []
    outbox = project / "outbox" / "2026-01-23"
    batches = [json.loads(path.read_bytes()) for path in sorted(outbox.glob("batch-*.json"))]
    assert [[message["To"] for message in batch] for batch in batches] == [
        ['"Reader 1" <u1@example.com>', '"Reader 2" <u2@example.com>'], ['"Reader 3" <u3@example.com>']
    ]
    assert (outbox / "first-recipient.eml").is_file()
    assert {state for state, _, _ in delivery_states(settings).values()} <= set()


def test_the_dry_run_shows_the_template_and_each_readers_links(project: Path) -> None:
    with FakePostmark(token=TOKEN) as fake:
        settings = postmark_project(project, fake, batch_size=TEMPLATED_FROM)
        seed(settings, TEMPLATED_FROM + 1)
        run = run_newsletter(*SEND[:-1], "--dry-run", "--yes", cwd=project, env={})
    assert run.returncode == 0, run.stderr
    assert fake.records == [] and fake.template_calls == []
    outbox = project / "outbox" / "2026-01-23"
    template = json.loads((outbox / "batch-0001-1.template.json").read_bytes())
    messages = json.loads((outbox / "batch-0001-2.json").read_bytes())["Messages"]
    assert "{{{unsubscribe_url}}}" in template["HtmlBody"] and "{{{preferences_url}}}" in template["TextBody"]
    assert {message["TemplateAlias"] for message in messages} == {template["Alias"]} and len(messages) == TEMPLATED_FROM
    assert all(message["TemplateModel"]["unsubscribe_url"].startswith("http") for message in messages)
    assert "HtmlBody" in json.loads((outbox / "batch-0002.json").read_bytes())[0]  # the one left over goes whole


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_webhooks_are_taken_only_with_the_credentials_and_applied_once(project: Path) -> None:
    config = project / "newsletter.toml"
    settings = configure(project, postmark_webhook_user=WEBHOOK_USER)
    list_id = add_list(settings, "daily-papers")
    bouncer, complainer, leaver = add_subscribers(
        settings, list_id, ["bouncer@example.com", "complainer@example.com", "leaver@example.com"]
    )
    bounce = {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "Email": "bouncer@example.com",
              "BouncedAt": "2026-01-23T10:00:00.1234567-04:00", "Inactive": True, "Metadata": {"list_id": str(list_id)}}  # fmt: skip
    complaint = {"RecordType": "SpamComplaint", "ID": 43, "Type": "SpamComplaint", "Email": "complainer@example.com"}
    change = {"RecordType": "SubscriptionChange", "Recipient": "leaver@example.com", "SuppressSending": True,
              "SuppressionReason": "ManualSuppression", "Origin": "Recipient", "ChangedAt": "2026-01-23T10:00:00Z"}  # fmt: skip
    with serving(config) as url, httpx.Client(timeout=30) as client:
        hook = f"{url}/webhooks/postmark"
        assert client.post(hook, json=bounce).status_code == 503  # no password set: nothing is taken
    env = {"NEWSLETTER_POSTMARK_WEBHOOK_PASSWORD": WEBHOOK_PASSWORD}
    with serving(config, env=env) as url, httpx.Client(timeout=30) as client:
        hook = f"{url}/webhooks/postmark"
        assert client.post(hook, json=bounce).status_code == 401
        assert client.post(hook, json=bounce, headers=_basic(WEBHOOK_USER, "wrong")).status_code == 401
        assert status_of(settings, list_id, bouncer) == db.SUBSCRIBED
        good = _basic(WEBHOOK_USER, WEBHOOK_PASSWORD)
        for event in (bounce, bounce, complaint, change):
            assert client.post(hook, json=event, headers=good).status_code == 200
        assert client.post(hook, content=b"[]", headers=good).status_code == 400
        # SendGrid's path is still served (unconfigured here: refused, as before).
        assert client.post(f"{url}/webhooks/sendgrid", content=b"[]").status_code == 503
    assert status_of(settings, list_id, bouncer) == db.BOUNCED
    assert status_of(settings, list_id, complainer) == db.COMPLAINED
    assert status_of(settings, list_id, leaver) == db.UNSUBSCRIBED
    assert [source for *_, source in events_of(settings, bouncer)][-1] == "webhook"
    with engine_of(settings).connect() as conn:
        ids = set(conn.execute(select(db.webhook_events.c.event_id)).scalars())
    assert {"postmark-Bounce-42", "postmark-SpamComplaint-43"} <= ids and len(ids) == 3


def test_sync_reads_the_streams_suppressions(project: Path) -> None:
    entries = [
        {"EmailAddress": "u1@example.com", "SuppressionReason": "HardBounce", "Origin": "Recipient", "CreatedAt": "2026-01-20T08:00:00Z"},
        {"EmailAddress": "u2@example.com", "SuppressionReason": "SpamComplaint", "Origin": "Recipient", "CreatedAt": "2026-01-21T08:00:00Z"},
        {"EmailAddress": "u3@example.com", "SuppressionReason": "ManualSuppression", "Origin": "Recipient", "CreatedAt": "2026-01-22T08:00:00Z"},
        {"EmailAddress": "stranger@example.com", "SuppressionReason": "HardBounce", "Origin": "Recipient", "CreatedAt": "2026-01-22T09:00:00Z"},
    ]  # fmt: skip
    with FakePostmark(token=TOKEN, suppressions={"broadcast": entries}) as fake:
        settings = postmark_project(project, fake)
        seed(settings, 4)
        first = run_newsletter("subscribers", "sync", cwd=project, env=ENV)
        again = run_newsletter("subscribers", "sync", cwd=project, env=ENV)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "Postmark hard bounces (broadcast): 2 fetched (the whole list)" in first.stdout
    assert "1 unknown address" in first.stdout and TOKEN not in first.stdout + first.stderr
    assert [status_of(settings, 1, n) for n in (1, 2, 3, 4)] == [db.BOUNCED, db.COMPLAINED, db.UNSUBSCRIBED, db.SUBSCRIBED]
    assert events_of(settings, 1)[-1][-1] == "provider_sync"
    assert "0 membership(s) changed" in again.stdout


def test_the_token_is_never_read_from_the_config_file(project: Path) -> None:
    (project / "newsletter.toml").write_text(f'provider = "postmark"\npostmark_server_token = "{TOKEN}"\n')
    run = run_newsletter("subscribers", "sync", cwd=project, env={})
    assert run.returncode != 0
    assert "set POSTMARK_SERVER_TOKEN in the environment" in run.stderr and TOKEN not in run.stderr


def test_a_200_without_one_result_per_message_is_a_lost_answer_and_sender_errors_refuse_the_message() -> None:
    ok = {"ErrorCode": 0, "Message": "OK", "MessageID": "m-1", "To": "a@example.com"}
    sender = {"ErrorCode": 400, "Message": "Sender signature not found"}
    with pytest.raises(AnswerLost):  # which message was accepted is unknown: none is settled
        verdict(HTTPAnswer(200, [ok]), 2)
    assert verdict(HTTPAnswer(200, [sender, sender]), 2).verdict is Verdict.MESSAGE_REFUSED
    mixed = verdict(HTTPAnswer(200, [ok, {"ErrorCode": 406, "Message": "inactive"}, {"ErrorCode": 300, "Message": "bad"}]), 3)
    assert (mixed.verdict, mixed.refused, mixed.suppressed, mixed.message_id) == (
        Verdict.EACH_ANSWERED, frozenset({1, 2}), frozenset({1}), "m-1"
    )
    assert verdict(HTTPAnswer(401, None), 2).verdict is Verdict.AUTH_REFUSED
    assert verdict(HTTPAnswer(422, {"ErrorCode": 402, "Message": "Invalid JSON"}), 2).verdict is Verdict.MESSAGE_REFUSED
    later = verdict(HTTPAnswer(503, None, retry_after=2.0), 2)
    assert (later.verdict, later.retry_after) == (Verdict.RETRY_LATER, 2.0)
