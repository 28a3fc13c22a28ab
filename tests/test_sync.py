"""`newsletter subscribers sync`: SendGrid's suppression lists, from Stoplight Prism serving the real
OpenAPI spec, and from the fake SendGrid and fake Postmark (testkit) for what Prism cannot show (its
answers are the spec's fixed examples): paging, start_time, retries through the send's retry loop,
what is never retried, error pages summarised in one line, refusals and an interrupted sync."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.errors import MissingAPIKey, ProviderAuthError, SendError
from newsletter.providers.answers import summary
from newsletter.suppressions import sync_suppressions
from testkit.fake_postmark import FakePostmark
from testkit.fake_sendgrid import FakeSendGrid
from testkit.loopback import error_page
from testkit.projects import add_list, add_subscribers, engine_of, write_config
from testkit.servers import free_port

from .support import prism, run_newsletter
from .web import events_of, status_of

API_KEY = "SG.test-key-that-must-never-be-printed"
TOKEN = "pm-server-token-never-printed"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, the pinned clock of these tests


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY, retry_after=0) as server:
        yield server


def _add(fake: FakeSendGrid, kind: str, email: str, created: int, **extra: object) -> None:
    fake.behaviour.suppressions.setdefault(kind, []).append({"email": email, "created": created, **extra})


def _reads(fake: FakeSendGrid, kind: str) -> list[dict[str, str]]:
    return [read.query for read in fake.reads.records if read.name == kind]


def _settings(folder: Path, api_url: str, **values: object) -> Settings:
    return load_settings(
        write_config(folder, sendgrid_api_url=api_url, **values),
        sendgrid_api_key=API_KEY,
        now=datetime.fromtimestamp(NOW, timezone.utc),
    )


def _sync_state(settings: Settings) -> dict[str, int]:
    with engine_of(settings).connect() as conn:
        return dict(conn.execute(select(db.sync_state.c.kind, db.sync_state.c.last_created)).all())


@pytest.mark.slow
def test_sync_against_the_spec_with_prism(tmp_path: Path) -> None:
    with prism("tsg_suppressions_v3.json") as url:
        config = write_config(tmp_path, sendgrid_api_url=url)
        settings = load_settings(config)
        daily, weekly = add_list(settings, "daily-papers"), add_list(settings, "weekly")
        user1, user2, example, bystander = add_subscribers(
            settings,
            daily,
            ["user1@example.com", "User2@Example.com", "example@example.com", "reader@example.com"],
        )
        add_subscribers(settings, weekly, ["user1@example.com"])

        command = ("--config", str(config), "subscribers", "sync")
        env = {"SENDGRID_API_KEY": API_KEY}
        first = run_newsletter(*command, env=env)
        assert first.returncode == 0, first.stderr
        assert "global unsubscribes: 2 fetched (the whole list)" in first.stdout
        assert "bounces: 2 fetched" in first.stdout and "invalid emails: 2 fetched" in first.stdout
        assert API_KEY not in first.stdout + first.stderr

        # Every list the address is on; the strongest suppression wins whatever the order.
        assert status_of(settings, daily, user1) == status_of(settings, weekly, user1) == db.COMPLAINED
        assert status_of(settings, daily, user2) == db.COMPLAINED
        assert status_of(settings, daily, example) == db.BOUNCED
        assert status_of(settings, daily, bystander) == db.SUBSCRIBED
        assert [source for *_, source in events_of(settings, user2)] == [
            "provider_sync"
        ] * 2  # unsubscribed, complained
        assert _sync_state(settings) == {
            "unsubscribes": 1443651154,
            "bounces": 1250337600,
            "spam_reports": 1443651154,
            "invalid_emails": 1449953655,
        }

        # Prism answers the same examples again: nothing changes the second time.
        second = run_newsletter(*command, env=env)
        assert second.returncode == 0, second.stderr
        assert "since 2015-09-30 22:12:34 UTC" in second.stdout
        lines = second.stdout.strip().splitlines()
        assert len(lines) == 4 and all("0 membership(s) changed" in line for line in lines)
        assert len(events_of(settings, user1)) == 4  # daily and weekly: unsubscribed, then complained


@pytest.mark.slow
def test_pages_of_500_then_only_what_is_new(tmp_path: Path, fake: FakeSendGrid) -> None:
    settings = _settings(tmp_path, fake.url)
    daily = add_list(settings, "daily-papers")
    emails = [f"reader{n}@example.com" for n in range(1203)]
    ids = add_subscribers(settings, daily, emails)
    for n, email in enumerate(emails):
        _add(fake, "unsubscribes", email, NOW - 5000 + n)

    [unsubscribes, *others] = sync_suppressions(engine_of(settings), settings.delivery)
    assert (unsubscribes.fetched, unsubscribes.changed, unsubscribes.unknown) == (1203, 1203, 0)
    pages = _reads(fake, "unsubscribes")
    assert [(p["offset"], p["limit"], p.get("start_time"), p["end_time"]) for p in pages] == [
        ("0", "500", None, str(NOW)),
        ("500", "500", None, str(NOW)),
        ("1000", "500", None, str(NOW)),
    ]
    assert all(read.credential == f"Bearer {API_KEY}" for read in fake.reads.records)
    assert all(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in ids)
    newest = NOW - 5000 + 1202
    assert _sync_state(settings) == {"unsubscribes": newest}  # the other lists had nothing yet

    # Three new entries, and one that arrived in the very same second as the last one seen.
    new_ids = add_subscribers(
        settings, daily, ["late1@example.com", "late2@example.com", "late3@example.com", "same@example.com"]
    )
    for n, email in enumerate(["late1@example.com", "late2@example.com", "late3@example.com"]):
        _add(fake, "unsubscribes", email, newest + 10 + n)
    _add(fake, "unsubscribes", "same@example.com", newest)
    fake.reads.records.clear()
    [again, *_] = sync_suppressions(engine_of(settings), settings.delivery)
    assert [p["start_time"] for p in _reads(fake, "unsubscribes")] == [str(newest)]
    assert (again.fetched, again.changed) == (5, 4)  # reader1202 comes again and changes nothing
    assert all(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in new_ids)
    assert _sync_state(settings)["unsubscribes"] == newest + 12


@pytest.mark.slow
def test_statuses_only_get_stronger_and_unknown_addresses_are_counted(
    tmp_path: Path, fake: FakeSendGrid
) -> None:
    settings = _settings(tmp_path, fake.url)
    daily, weekly = add_list(settings, "daily-papers"), add_list(settings, "weekly")
    (complainer,) = add_subscribers(settings, daily, ["complainer@example.com"], db.COMPLAINED)
    add_subscribers(settings, weekly, ["complainer@example.com"])
    (odd,) = add_subscribers(settings, daily, ["odd..dots@example.com"])
    _add(fake, "unsubscribes", "complainer@example.com", NOW - 10)
    _add(fake, "invalid_emails", "odd..dots@example.com", NOW - 10, reason="Invalid address")
    _add(fake, "spam_reports", "nobody@example.com", NOW - 10)

    results = {result.suppression_list.kind: result for result in sync_suppressions(engine_of(settings), settings.delivery)}
    assert status_of(settings, daily, complainer) == db.COMPLAINED  # not weakened to unsubscribed
    assert status_of(settings, weekly, complainer) == db.UNSUBSCRIBED
    assert status_of(settings, daily, odd) == db.BOUNCED
    assert results["spam_reports"].unknown == 1
    assert events_of(settings, odd) == [(daily, db.BOUNCED, db.SUBSCRIBED, "provider_sync")]


@pytest.mark.slow
def test_a_missing_api_key_is_one_clear_error_and_asks_nothing(tmp_path: Path, fake: FakeSendGrid) -> None:
    config = write_config(tmp_path, sendgrid_api_url=fake.url)
    settings = load_settings(config)
    with pytest.raises(MissingAPIKey, match="SENDGRID_API_KEY"):
        sync_suppressions(engine_of(settings), settings.delivery)
    result = run_newsletter("--config", str(config), "subscribers", "sync")
    assert result.returncode == 1
    assert result.stderr.count("SENDGRID_API_KEY is not set") == 1 and "Traceback" not in result.stderr
    assert fake.reads.records == []


@pytest.mark.slow
@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_sync_without_showing_the_key(tmp_path: Path, status: int) -> None:
    with FakeSendGrid(read_script=[str(status)]) as fake:
        settings = _settings(tmp_path, fake.url)
        with pytest.raises(ProviderAuthError) as raised:
            sync_suppressions(engine_of(settings), settings.delivery)
    assert str(raised.value) == (
        f"SendGrid refused the API key ({status}): check SENDGRID_API_KEY and that the key has read access "
        "to suppressions (GET /v3/suppression/unsubscribes)"
    )
    assert len(fake.reads.records) == 1  # no retry: every later request would be refused too


@pytest.mark.slow
def test_an_interrupted_sync_loses_nothing(tmp_path: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, read_script=["200", "500"]) as fake:
        settings = _settings(tmp_path, fake.url, max_retries=0)
        daily = add_list(settings, "daily-papers")
        ids = add_subscribers(settings, daily, [f"r{n}@example.com" for n in range(700)])
        for n in range(700):
            _add(fake, "unsubscribes", f"r{n}@example.com", NOW - 1000 + n)
        with pytest.raises(SendError) as raised:
            sync_suppressions(engine_of(settings), settings.delivery)
        assert str(raised.value) == "GET /v3/suppression/unsubscribes failed: SendGrid answered 500: internal server error"
        # The first page is in; the list's sync point has not moved, so the next sync reads it all again.
        changed = sum(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in ids)
        assert changed == 500
        assert _sync_state(settings) == {}

        [unsubscribes, *_] = sync_suppressions(engine_of(settings), settings.delivery)
    assert (unsubscribes.fetched, unsubscribes.changed) == (700, 200)
    assert all(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in ids)
    with engine_of(settings).connect() as conn:
        logged = conn.execute(select(func.count()).where(db.events.c.source == "provider_sync")).scalar_one()
    assert logged == 700


@pytest.mark.slow
def test_a_key_from_a_crlf_env_file_is_sent_without_its_line_break(
    tmp_path: Path, fake: FakeSendGrid
) -> None:
    config = write_config(tmp_path, sendgrid_api_url=fake.url)
    result = run_newsletter("--config", str(config), "subscribers", "sync", env={"SENDGRID_API_KEY": API_KEY + "\r\n"})
    assert result.returncode == 0, result.stderr
    assert {read.credential for read in fake.reads.records} == {f"Bearer {API_KEY}"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad_key", [API_KEY[:8] + "\r" + API_KEY[8:], API_KEY + "키"], ids=["CR inside", "non-ASCII"]
)
def test_a_key_that_cannot_be_a_header_stops_the_sync_before_any_request(
    tmp_path: Path, fake: FakeSendGrid, bad_key: str
) -> None:
    config = write_config(tmp_path, sendgrid_api_url=fake.url)
    result = run_newsletter("--config", str(config), "subscribers", "sync", env={"SENDGRID_API_KEY": bad_key})
    assert result.returncode == 1
    assert result.stderr.startswith("error: bad setting 'sendgrid_api_key' (SENDGRID_API_KEY")
    assert "Traceback" not in result.stderr and API_KEY[8:20] not in result.stderr + result.stdout
    assert fake.reads.records == []
    with engine_of(load_settings(config)).connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.events)).scalar_one() == 0


def test_an_unreachable_sendgrid_is_named_with_the_socket_error_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}", max_retries=0)
    # A connection error's text comes from the socket layer, before any header is written.
    expected = r"could not reach SendGrid at http://127\.0\.0\.1:\d+/v3/suppression/\w+ \(ConnectError: [^)]*\)$"
    with pytest.raises(SendError, match=expected):
        sync_suppressions(engine_of(settings), settings.delivery)


# -- what is asked again, and what an error says: both providers, through the CLI ----------------------

# Where each provider's first read goes.
FIRST_READ = {
    "sendgrid": "GET /v3/suppression/unsubscribes",
    "postmark": "GET /message-streams/broadcast/suppressions/dump",
}
SECRETS = {"sendgrid": API_KEY, "postmark": TOKEN}


@contextmanager
def _sync_with(
    provider: str, folder: Path, read_script: list[str]
) -> Iterator[tuple[FakeSendGrid | FakePostmark, Settings, subprocess.CompletedProcess[str]]]:
    """`subscribers sync` (max_retries = 2) against the provider's fake, its reads answered as
    `read_script` says; one reader on the list, on the first list read."""
    if provider == "sendgrid":
        entries = {"unsubscribes": [{"email": "reader@example.com", "created": NOW}]}
        fake: FakeSendGrid | FakePostmark = FakeSendGrid(
            api_key=API_KEY, retry_after=0, read_script=read_script, suppressions=entries
        )
        config = {"sendgrid_api_url": fake.url}
        env = {"SENDGRID_API_KEY": API_KEY}
    else:
        entry = {"EmailAddress": "reader@example.com", "SuppressionReason": "HardBounce", "Origin": "Recipient", "CreatedAt": "2026-01-01T00:00:00Z"}  # fmt: skip
        fake = FakePostmark(token=TOKEN, retry_after=0, read_script=read_script, suppressions={"broadcast": [entry]})
        config = {"provider": "postmark", "postmark_api_url": fake.url}
        env = {"POSTMARK_SERVER_TOKEN": TOKEN}
    with fake:
        path = write_config(folder, max_retries=2, **config)
        settings = load_settings(path)
        add_subscribers(settings, add_list(settings, "daily-papers"), ["reader@example.com"])
        yield fake, settings, run_newsletter("--config", str(path), "subscribers", "sync", env=env)


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["sendgrid", "postmark"])
def test_rate_limits_and_outages_are_asked_again_until_the_list_is_read(tmp_path: Path, provider: str) -> None:
    with _sync_with(provider, tmp_path, ["429", "503"]) as (fake, settings, sync):
        assert sync.returncode == 0, sync.stderr
    assert [read.status for read in fake.reads.records][:3] == [429, 503, 200]
    assert len({read.name for read in fake.reads.records[:3]}) == 1  # the same list, asked again
    assert status_of(settings, 1, 1) in (db.UNSUBSCRIBED, db.BOUNCED)
    assert "1 membership(s) changed" in sync.stdout.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "step", "answered"),
    [
        ("sendgrid", "501-page", "SendGrid answered 501: 501 Not Implemented"),
        ("sendgrid", "505-page", "SendGrid answered 505: 505 HTTP Version Not Supported"),
        ("sendgrid", "400", "SendGrid answered 400: Bad Request"),
        ("postmark", "501-page", "Postmark answered 501: 501 Not Implemented"),
        ("postmark", "422", "Postmark answered 422: Invalid JSON (ErrorCode 422)"),
    ],
)
def test_a_501_or_a_4xx_is_asked_once_and_told_in_one_line(
    tmp_path: Path, provider: str, step: str, answered: str
) -> None:
    with _sync_with(provider, tmp_path, [step]) as (fake, settings, sync):
        pass
    assert sync.returncode == 1
    assert sync.stderr == f"error: {FIRST_READ[provider]} failed: {answered}\n"
    assert len(fake.reads.records) == 1
    assert SECRETS[provider] not in sync.stdout + sync.stderr
    assert status_of(settings, 1, 1) == db.SUBSCRIBED


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "answered"),
    [
        ("sendgrid", "SendGrid answered 429: too many requests"),
        ("postmark", "Postmark answered 429: Rate limit exceeded (ErrorCode 429)"),
    ],
)
def test_retries_stop_after_max_retries(tmp_path: Path, provider: str, answered: str) -> None:
    with _sync_with(provider, tmp_path, ["429"] * 3) as (fake, _, sync):
        pass
    assert sync.returncode == 1
    assert sync.stderr == f"error: {FIRST_READ[provider]} failed: {answered}\n"
    assert len(fake.reads.records) == 3  # the first try and max_retries more


def test_an_error_body_becomes_one_line_of_at_most_200_characters_without_the_key() -> None:
    assert summary(error_page(502, f"Bearer {API_KEY}"), secret=API_KEY) == "502 Bad Gateway"
    untitled = (
        f"<html><head><style>p {{ margin: 0 }}</style></head><body><script>var key = '{API_KEY}';</script>"
        f"<h1>Bad Gateway</h1><p>The upstream\r\nanswered <code>{API_KEY}</code>.</p></body></html>"
    )
    assert summary(untitled.encode(), secret=API_KEY) == "Bad Gateway The upstream answered [redacted]."
    echoed = f"upstream error\r\nAuthorization: Bearer {API_KEY}\n\x1b[2J".encode()
    assert summary(echoed, secret=API_KEY) == "upstream error Authorization: Bearer [redacted] [2J"
    long = summary(b"word " * 100, secret=None)
    assert long == "word " * 35 + "wo… (322 more characters)" and len(long) == 200
    assert summary(b"", secret=None) == summary(b" \n ", secret=None) == "no error message"
    # However the body spells the key: UTF-16, percent-escaped, as an entity; sent as "Bearer …".
    for body in (f"echo {API_KEY}".encode("utf-16"), f"echo {quote(API_KEY, safe='')}".encode(), f"echo &#{ord(API_KEY[0])};{API_KEY[1:]}".encode()):
        assert summary(body, secret=f"Bearer {API_KEY}") == "echo [redacted]"
