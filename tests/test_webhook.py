"""SendGrid's signed Event Webhook against the real `newsletter serve`, signed with a real P-256 key
exactly as SendGrid signs (ECDSA-SHA256 over timestamp + body)."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, text

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.providers.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER
from testkit.projects import add_list, add_subscribers, engine_of, write_config
from testkit.servers import free_port, serving

from .support import run_newsletter
from .web import (
    UNSTORABLE_BOUNCE_DETAIL,
    UNSTORABLE_COUNTS,
    UNSTORABLE_EVENT_IDS,
    batch_with_unstorable_text,
    events_of,
    status_of,
)


def _public_key(private: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _signed(private: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: stamp,
    }


@dataclass
class Hook:
    url: str
    settings: Settings
    key: ec.EllipticCurvePrivateKey
    list_id: int
    other_list_id: int
    campaign_id: int
    http: httpx.Client

    def post(
        self,
        events: list[dict],
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        timestamp: int | None = None,
    ) -> httpx.Response:
        body = json.dumps(events).encode()
        return self.http.post(self.url, content=body, headers=_signed(key or self.key, body, timestamp))


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hook]:
    folder = tmp_path_factory.mktemp("webhook")
    key = ec.generate_private_key(ec.SECP256R1())
    config = write_config(folder, sendgrid_webhook_public_key=_public_key(key))
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers")
    other_list_id = add_list(settings, "weekly")
    with engine_of(settings).begin() as conn:
        campaign_id = conn.execute(
            db.campaigns.insert().values(
                issue_date="2026-01-23",
                list_id=list_id,
                subject="s",
                html="h",
                text="t",
                created_at=datetime.now(timezone.utc),
            )
        ).inserted_primary_key[0]
    with serving(config) as url, httpx.Client(timeout=30) as http:
        yield Hook(f"{url}/webhooks/sendgrid", settings, key, list_id, other_list_id, campaign_id, http)


def _member_of_both(hook: Hook, email: str) -> int:
    (subscriber_id,) = add_subscribers(hook.settings, hook.list_id, [email])
    add_subscribers(hook.settings, hook.other_list_id, [email])
    return subscriber_id


def _event(hook: Hook, kind: str, subscriber_id: int, email: str, event_id: str, **extra: object) -> dict:
    # custom_args come back as top-level keys, as the strings the sender put in.
    return {
        "email": email,
        "event": kind,
        "sg_event_id": event_id,
        "timestamp": int(time.time()),
        "campaign_id": str(hook.campaign_id),
        "subscriber_id": str(subscriber_id),
        "list_id": str(hook.list_id),
        **extra,
    }


def _stats(hook: Hook) -> dict[str, int]:
    c = db.campaign_stats.c
    with engine_of(hook.settings).connect() as conn:
        rows = conn.execute(select(c.event, c.count).where(c.campaign_id == hook.campaign_id)).all()
    return dict(rows)


@pytest.mark.slow
def test_a_signed_bounce_marks_every_list_once(hook: Hook) -> None:
    subscriber_id = _member_of_both(hook, "gone@example.com")
    batch = [
        _event(
            hook,
            "bounce",
            subscriber_id,
            "gone@example.com",
            "bounce-1",
            type="bounce",
            reason="550 5.1.1 no such user",
        )
    ]
    assert hook.post(batch).status_code == 200
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.BOUNCED
    assert status_of(hook.settings, hook.other_list_id, subscriber_id) == db.BOUNCED
    # SendGrid retries the same batch: nothing changes, nothing is logged twice.
    assert hook.post(batch).status_code == 200
    log = events_of(hook.settings, subscriber_id)
    assert sorted(log) == sorted(
        [
            (hook.list_id, db.BOUNCED, db.SUBSCRIBED, "webhook"),
            (hook.other_list_id, db.BOUNCED, db.SUBSCRIBED, "webhook"),
        ]
    )


@pytest.mark.parametrize(
    ("case", "kind", "extra", "status", "every_list"),
    [
        (0, "spamreport", {}, db.COMPLAINED, True),
        (1, "unsubscribe", {}, db.UNSUBSCRIBED, True),
        (2, "group_unsubscribe", {"asm_group_id": 42}, db.UNSUBSCRIBED, False),
        (3, "dropped", {"reason": "Bounced Address"}, db.BOUNCED, True),
        (4, "dropped", {"reason": "Spam Reporting Address"}, db.COMPLAINED, True),
        (5, "dropped", {"reason": "Spam Content (if spam checker app enabled)"}, db.SUBSCRIBED, False),
        (6, "bounce", {"type": "blocked", "reason": "try again later"}, db.SUBSCRIBED, False),
        (7, "deferred", {"response": "400 try again later"}, db.SUBSCRIBED, False),
    ],
)
def test_each_kind_of_event(
    hook: Hook, case: int, kind: str, extra: dict, status: str, every_list: bool
) -> None:
    email = f"case{case}@example.com"
    subscriber_id = _member_of_both(hook, email)
    assert hook.post([_event(hook, kind, subscriber_id, email, f"case-{case}", **extra)]).status_code == 200
    assert status_of(hook.settings, hook.list_id, subscriber_id) == status
    assert status_of(hook.settings, hook.other_list_id, subscriber_id) == (
        status if every_list else db.SUBSCRIBED
    )


def test_events_without_our_custom_args_are_matched_by_address(hook: Hook) -> None:
    subscriber_id = _member_of_both(hook, "Mixed.Case@Example.com")
    event = {
        "email": "mixed.case@example.com",
        "event": "spamreport",
        "sg_event_id": "no-args-1",
        "timestamp": 1,
    }
    assert hook.post([event]).status_code == 200
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.COMPLAINED
    # An address we do not know changes nothing and is still acknowledged (else SendGrid retries for a day).
    assert (
        hook.post([{**event, "email": "stranger@example.com", "sg_event_id": "no-args-2"}]).status_code == 200
    )


def test_delivered_open_and_click_are_counted_per_campaign_once(hook: Hook) -> None:
    subscriber_id = _member_of_both(hook, "reader@example.com")
    before = _stats(hook)
    batch = [
        _event(hook, "delivered", subscriber_id, "reader@example.com", "d-1"),
        _event(hook, "open", subscriber_id, "reader@example.com", "o-1"),
        _event(hook, "open", subscriber_id, "reader@example.com", "o-2"),
        _event(
            hook, "click", subscriber_id, "reader@example.com", "c-1", url="https://arxiv.org/abs/2601.00001"
        ),
        _event(hook, "open", subscriber_id, "reader@example.com", "o-2"),  # repeated inside one batch
    ]
    assert hook.post(batch).status_code == 200
    assert hook.post(batch[:2]).status_code == 200  # a retry
    after = _stats(hook)
    assert {name: after[name] - before.get(name, 0) for name in ("delivered", "opened", "clicked")} == {
        "delivered": 1,
        "opened": 2,
        "clicked": 1,
    }
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.SUBSCRIBED
    with engine_of(hook.settings).connect() as conn:
        stored = conn.execute(
            select(func.count()).where(db.webhook_events.c.event_id.in_(["d-1", "o-1", "o-2", "c-1"]))
        ).scalar_one()
    assert stored == 4


def test_event_ids_are_forgotten_once_sendgrid_has_stopped_retrying(hook: Hook) -> None:
    now = datetime.now(timezone.utc)
    with engine_of(hook.settings).begin() as conn:
        conn.execute(
            db.webhook_events.insert(),
            [
                {"event_id": "eight-days-old", "received_at": now - timedelta(days=8)},
                {"event_id": "one-day-old", "received_at": now - timedelta(days=1)},
            ],
        )
    subscriber_id = _member_of_both(hook, "prune@example.com")
    assert (
        hook.post([_event(hook, "delivered", subscriber_id, "prune@example.com", "prune-1")]).status_code
        == 200
    )
    column = db.webhook_events.c.event_id
    with engine_of(hook.settings).connect() as conn:
        kept = set(
            conn.execute(
                select(column).where(column.in_(["eight-days-old", "one-day-old", "prune-1"]))
            ).scalars()
        )
    assert kept == {"one-day-old", "prune-1"}


def test_bad_signatures_are_refused_and_change_nothing(hook: Hook) -> None:
    subscriber_id = _member_of_both(hook, "victim@example.com")
    batch = [_event(hook, "unsubscribe", subscriber_id, "victim@example.com", "forged-1")]
    body = json.dumps(batch).encode()
    other_key = ec.generate_private_key(ec.SECP256R1())
    good = _signed(hook.key, body)
    now = int(time.time())
    refused = [
        hook.post(batch, key=other_key),  # signed by someone else
        hook.http.post(
            hook.url, content=body.replace(b"unsubscribe", b"spamreport"), headers=good
        ),  # tampered
        hook.http.post(hook.url, content=body, headers={**good, SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"}),
        hook.http.post(hook.url, content=body, headers={**good, SIGNATURE_HEADER: "%%% not base64 %%%"}),
        hook.http.post(
            hook.url, content=body, headers={**good, TIMESTAMP_HEADER: str(now + 1)}
        ),  # other time
        hook.http.post(hook.url, content=body, headers={"Content-Type": "application/json"}),  # unsigned
        hook.post(batch, timestamp=now - 11 * 60),  # stale: a replay
        hook.post(batch, timestamp=now + 11 * 60),  # from the future
    ]
    assert [response.status_code for response in refused] == [403] * len(refused)
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.SUBSCRIBED
    assert events_of(hook.settings, subscriber_id) == []
    # Still within ten minutes is fine.
    assert hook.post(batch, timestamp=now - 9 * 60).status_code == 200
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.UNSUBSCRIBED


def test_a_signed_body_that_is_not_an_event_array_is_refused(hook: Hook) -> None:
    for body in (b"not json", b'{"event": "bounce"}', b'"[]"'):
        assert hook.http.post(hook.url, content=body, headers=_signed(hook.key, body)).status_code == 400


def _stored_event_ids(hook: Hook, candidates: set[str]) -> set[str]:
    column = db.webhook_events.c.event_id
    with engine_of(hook.settings).connect() as conn:
        return set(conn.execute(select(column).where(column.in_(candidates))).scalars())


def _details(hook: Hook, subscriber_id: int) -> list[str]:
    e = db.events.c
    with engine_of(hook.settings).connect() as conn:
        return list(conn.execute(select(e.detail).where(e.subscriber_id == subscriber_id)).scalars())


def test_nul_and_lone_surrogates_are_stored_escaped_and_lose_no_event(hook: Hook) -> None:
    """One such character used to fail the whole batch (500), and SendGrid finally dropped the
    unsubscribe that came with it."""
    leaver = _member_of_both(hook, "mixed.leaver@example.com")
    bouncer = _member_of_both(hook, "mixed.bouncer@example.com")
    before = _stats(hook)
    body = batch_with_unstorable_text(
        hook.campaign_id, hook.list_id,
        leaver="mixed.leaver@example.com", bouncer="mixed.bouncer@example.com", reader="reader@example.com",
    )  # fmt: skip
    for _ in range(2):  # and SendGrid's retry of it changes nothing more
        assert hook.http.post(hook.url, content=body, headers=_signed(hook.key, body)).status_code == 200
        assert status_of(hook.settings, hook.other_list_id, leaver) == db.UNSUBSCRIBED
        assert status_of(hook.settings, hook.list_id, bouncer) == db.BOUNCED
        assert _details(hook, bouncer) == [UNSTORABLE_BOUNCE_DETAIL] * 2  # one per list
        assert _stored_event_ids(hook, UNSTORABLE_EVENT_IDS | {"mixed-nul-", "mixed-"}) == UNSTORABLE_EVENT_IDS
        after = _stats(hook)
        assert {name: after[name] - before.get(name, 0) for name in UNSTORABLE_COUNTS} == UNSTORABLE_COUNTS


def test_an_event_the_database_refuses_costs_only_itself(hook: Hook) -> None:
    leaver = _member_of_both(hook, "refused.batch@example.com")
    refusing = text(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_events WHEN NEW.event_id = 'refused-2' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
    )
    with engine_of(hook.settings).begin() as conn:
        conn.execute(refusing)
    try:
        batch = [
            _event(hook, "delivered", leaver, "refused.batch@example.com", "refused-1"),
            _event(hook, "delivered", leaver, "refused.batch@example.com", "refused-2"),
            _event(hook, "unsubscribe", leaver, "refused.batch@example.com", "refused-3"),
        ]
        assert hook.post(batch).status_code == 200
    finally:
        with engine_of(hook.settings).begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_one"))
    assert _stored_event_ids(hook, {"refused-1", "refused-2", "refused-3"}) == {"refused-1", "refused-3"}
    assert status_of(hook.settings, hook.list_id, leaver) == db.UNSUBSCRIBED
    # Not stored, so not deduplicated: SendGrid's retry of it is applied.
    assert hook.post(batch).status_code == 200
    assert _stored_event_ids(hook, {"refused-2"}) == {"refused-2"}


def test_events_act_on_the_address_they_were_sent_to_not_on_the_id(hook: Hook) -> None:
    """A late event carrying an id that now belongs to someone else must not suppress them."""
    holder = _member_of_both(hook, "id.holder@example.com")
    recipient = _member_of_both(hook, "real.recipient@example.com")
    batch = [
        _event(hook, "spamreport", holder, "real.recipient@example.com", "by-address-1"),
        _event(hook, "bounce", holder, "erased.reader@example.com", "by-address-2", type="bounce"),
    ]
    assert hook.post(batch).status_code == 200
    assert status_of(hook.settings, hook.list_id, holder) == db.SUBSCRIBED
    assert events_of(hook.settings, holder) == []
    assert status_of(hook.settings, hook.list_id, recipient) == db.COMPLAINED


@pytest.mark.slow
def test_without_a_public_key_the_webhook_refuses_everything(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers")
    (subscriber_id,) = add_subscribers(settings, list_id, ["x@example.com"])
    body = json.dumps([{"email": "x@example.com", "event": "unsubscribe", "sg_event_id": "u-1"}]).encode()
    with serving(config) as url:
        answer = httpx.post(
            f"{url}/webhooks/sendgrid", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 503
    assert status_of(settings, list_id, subscriber_id) == db.SUBSCRIBED


@pytest.mark.slow
def test_a_malformed_public_key_stops_the_server_with_one_message(tmp_path: Path) -> None:
    config = write_config(tmp_path, sendgrid_webhook_public_key="bm90IGEga2V5")
    result = run_newsletter("--config", str(config), "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert "sendgrid_webhook_public_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_ids_out_of_range_are_ignored_and_the_batch_still_lands(hook: Hook) -> None:
    """Ids SQLite cannot hold (or int() cannot read) used to fail the whole batch with a 500, and
    SendGrid retried it for a day."""
    subscriber_id = _member_of_both(hook, "huge.ids@example.com")
    before = _stats(hook)
    batch = [
        _event(hook, "delivered", subscriber_id, "huge.ids@example.com", "big-1", campaign_id="9" * 26),
        _event(hook, "open", subscriber_id, "huge.ids@example.com", "big-2", campaign_id="9" * 5000),
        _event(hook, "click", subscriber_id, "huge.ids@example.com", "big-3", campaign_id=2**70),
        _event(hook, "open", subscriber_id, "huge.ids@example.com", "big-4", campaign_id="0"),
        _event(hook, "open", subscriber_id, "huge.ids@example.com", "big-5", campaign_id="١٢"),
        # Matched by address instead, and on every list despite the list id it cannot use.
        {
            **_event(hook, "group_unsubscribe", subscriber_id, "huge.ids@example.com", "big-6"),
            "subscriber_id": "9" * 26,
            "list_id": "9" * 26,
        },
        _event(hook, "delivered", subscriber_id, "huge.ids@example.com", "x" * 101),
    ]
    assert hook.post(batch).status_code == 200
    after = _stats(hook)
    # Only the last two, with our real campaign id, were counted.
    assert {name: after[name] - before.get(name, 0) for name in after} == {
        **{name: 0 for name in before},
        "delivered": 1,
        "unsubscribed": 1,
    }
    assert status_of(hook.settings, hook.list_id, subscriber_id) == db.UNSUBSCRIBED
    assert status_of(hook.settings, hook.other_list_id, subscriber_id) == db.UNSUBSCRIBED


def test_deeply_nested_json_is_a_400_not_a_500(hook: Hook) -> None:
    body = b"[" * 100_000
    answer = hook.http.post(hook.url, content=body, headers=_signed(hook.key, body))
    assert answer.status_code == 400


def _raw_request(url: str, head: dict[str, str], body_start: bytes) -> bytes:
    """Sends the headers and the first bytes of a body, never the rest; returns what came back
    within five seconds (nothing if the server waits for the body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body_start)
        try:
            return sock.recv(200)
        except TimeoutError:
            return b""


def test_stale_or_oversized_requests_are_refused_before_the_body_is_read(hook: Hook) -> None:
    stale = {
        SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl",
        TIMESTAMP_HEADER: str(int(time.time()) - 3600),
        "Content-Type": "application/json",
        "Content-Length": str(5 * 1024 * 1024),
    }
    assert _raw_request(hook.url, stale, b"[").startswith(b"HTTP/1.1 403")
    unsigned = {key: value for key, value in stale.items() if key != SIGNATURE_HEADER}
    assert _raw_request(hook.url, unsigned, b"[").startswith(b"HTTP/1.1 403")
    huge = {**stale, TIMESTAMP_HEADER: str(int(time.time())), "Content-Length": str(11 * 1024 * 1024)}
    assert _raw_request(hook.url, huge, b"[").startswith(b"HTTP/1.1 413")
    # Every answer of the server says nosniff, the webhook's included.
    answer = hook.http.post(hook.url, content=b"[]", headers={"Content-Type": "application/json"})
    assert answer.status_code == 403 and answer.headers["x-content-type-options"] == "nosniff"
