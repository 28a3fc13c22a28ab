"""`newsletter subscribers sync`: SendGrid's suppression lists, from Stoplight Prism serving the real
OpenAPI spec, and from a small fake of our own for what Prism cannot show (its answers are the
spec's fixed examples): paging, start_time, retries, refusals and an interrupted sync."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.errors import MissingAPIKey, ProviderAuthError, SendError
from newsletter.suppressions import sync_suppressions
from testkit.projects import add_list, add_subscribers, engine_of, write_config
from testkit.servers import free_port

from .support import prism, run_newsletter
from .web import events_of, status_of

API_KEY = "SG.test-key-that-must-never-be-printed"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, the pinned clock of these tests


class FakeSendGrid:
    """SendGrid's suppression-list endpoints on 127.0.0.1: filters by start_time/end_time (inclusive),
    pages newest first with limit/offset, and records every request."""

    def __init__(self) -> None:
        self.entries: dict[str, list[dict]] = {
            "unsubscribes": [],
            "bounces": [],
            "spam_reports": [],
            "invalid_emails": [],
        }
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        # Given (kind, query), an HTTP status to answer instead of the page, or None.
        self.fail: Callable[[str, dict[str, str]], int | None] = lambda kind, query: None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                parts = urlsplit(self.path)
                kind = parts.path.removeprefix("/v3/suppression/")
                query = dict(parse_qsl(parts.query))
                fake.requests.append((kind, query, self.headers.get("Authorization")))
                status = fake.fail(kind, query)
                if status is not None:
                    self._answer(status, {"errors": [{"message": f"scripted {status}", "field": None}]})
                    return
                low, high = int(query.get("start_time", 0)), int(query.get("end_time", 2**62))
                matching = [e for e in fake.entries[kind] if low <= e["created"] <= high]
                matching.sort(key=lambda e: e["created"], reverse=True)
                offset, limit = int(query["offset"]), int(query["limit"])
                assert 1 <= limit <= 500, "SendGrid refuses a page over 500"
                self._answer(200, matching[offset : offset + limit])

            def _answer(self, status: int, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status in (429, 500, 503):
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, kind: str, email: str, created: int, **extra: object) -> None:
        self.entries[kind].append({"email": email, "created": created, **extra})

    def pages(self, kind: str) -> list[dict[str, str]]:
        return [query for name, query, _ in self.requests if name == kind]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid()
    yield server
    server.close()


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
        fake.add("unsubscribes", email, NOW - 5000 + n)

    [unsubscribes, *others] = sync_suppressions(engine_of(settings), settings)
    assert (unsubscribes.fetched, unsubscribes.changed, unsubscribes.unknown) == (1203, 1203, 0)
    pages = fake.pages("unsubscribes")
    assert [(p["offset"], p["limit"], p.get("start_time"), p["end_time"]) for p in pages] == [
        ("0", "500", None, str(NOW)),
        ("500", "500", None, str(NOW)),
        ("1000", "500", None, str(NOW)),
    ]
    assert all(auth == f"Bearer {API_KEY}" for _, _, auth in fake.requests)
    assert all(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in ids)
    newest = NOW - 5000 + 1202
    assert _sync_state(settings) == {"unsubscribes": newest}  # the other lists had nothing yet

    # Three new entries, and one that arrived in the very same second as the last one seen.
    new_ids = add_subscribers(
        settings, daily, ["late1@example.com", "late2@example.com", "late3@example.com", "same@example.com"]
    )
    for n, email in enumerate(["late1@example.com", "late2@example.com", "late3@example.com"]):
        fake.add("unsubscribes", email, newest + 10 + n)
    fake.add("unsubscribes", "same@example.com", newest)
    fake.requests.clear()
    [again, *_] = sync_suppressions(engine_of(settings), settings)
    assert [p["start_time"] for p in fake.pages("unsubscribes")] == [str(newest)]
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
    fake.add("unsubscribes", "complainer@example.com", NOW - 10)
    fake.add("invalid_emails", "odd..dots@example.com", NOW - 10, reason="Invalid address")
    fake.add("spam_reports", "nobody@example.com", NOW - 10)

    results = {result.suppression_list.kind: result for result in sync_suppressions(engine_of(settings), settings)}
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
        sync_suppressions(engine_of(settings), settings)
    result = run_newsletter("--config", str(config), "subscribers", "sync")
    assert result.returncode == 1
    assert result.stderr.count("SENDGRID_API_KEY is not set") == 1 and "Traceback" not in result.stderr
    assert fake.requests == []


@pytest.mark.slow
@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_sync_without_showing_the_key(
    tmp_path: Path, fake: FakeSendGrid, status: int
) -> None:
    settings = _settings(tmp_path, fake.url)
    fake.fail = lambda kind, query: status
    with pytest.raises(ProviderAuthError) as raised:
        sync_suppressions(engine_of(settings), settings)
    assert f"HTTP {status}" in str(raised.value) and API_KEY not in str(raised.value)
    assert len(fake.requests) == 1  # no retry: every later request would be refused too


@pytest.mark.slow
def test_rate_limits_and_server_errors_are_retried(tmp_path: Path, fake: FakeSendGrid) -> None:
    settings = _settings(tmp_path, fake.url, max_retries=2)
    daily = add_list(settings, "daily-papers")
    (reader,) = add_subscribers(settings, daily, ["reader@example.com"])
    fake.add("bounces", "reader@example.com", NOW - 1)
    scripted = [429, 503]
    fake.fail = lambda kind, query: scripted.pop(0) if kind == "bounces" and scripted else None
    sync_suppressions(engine_of(settings), settings)
    assert len(fake.pages("bounces")) == 3
    assert status_of(settings, daily, reader) == db.BOUNCED


@pytest.mark.slow
def test_an_interrupted_sync_loses_nothing(tmp_path: Path, fake: FakeSendGrid) -> None:
    settings = _settings(tmp_path, fake.url, max_retries=0)
    daily = add_list(settings, "daily-papers")
    ids = add_subscribers(settings, daily, [f"r{n}@example.com" for n in range(700)])
    for n in range(700):
        fake.add("unsubscribes", f"r{n}@example.com", NOW - 1000 + n)
    fake.fail = lambda kind, query: 500 if query.get("offset") == "500" else None
    with pytest.raises(SendError, match="SendGrid answered 500: scripted 500"):
        sync_suppressions(engine_of(settings), settings)
    # The first page is in; the list's sync point has not moved, so the next sync reads it all again.
    changed = sum(status_of(settings, daily, i) == db.UNSUBSCRIBED for i in ids)
    assert changed == 500
    assert _sync_state(settings) == {}

    fake.fail = lambda kind, query: None
    [unsubscribes, *_] = sync_suppressions(engine_of(settings), settings)
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
    assert {authorization for _, _, authorization in fake.requests} == {f"Bearer {API_KEY}"}


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
    assert fake.requests == []
    with engine_of(load_settings(config)).connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.events)).scalar_one() == 0


def test_an_unreachable_sendgrid_is_named_with_the_socket_error_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}", max_retries=0)
    # A connection error's text comes from the socket layer, before any header is written.
    expected = r"could not reach SendGrid at http://127\.0\.0\.1:\d+/v3/suppression/\w+ \(ConnectError: [^)]*\)$"
    with pytest.raises(SendError, match=expected):
        sync_suppressions(engine_of(settings), settings)
