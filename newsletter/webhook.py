"""SendGrid's signed Event Webhook: verify the signature and age, then apply each event once.

SendGrid posts a JSON array of events, signs timestamp+body with ECDSA P-256, and retries for a day
on any non-2xx answer, so an event can arrive several times: each sg_event_id is applied once
(webhook_events). Status events suppress the subscriber through the same rule as every other
source; engagement and delivery events are counted per campaign.

Every event that can be stored is: text the databases cannot hold (NUL, lone surrogates; a bounce
reason comes from the recipient's own mail server) is stored escaped, and an event the database still
refuses costs only itself, never the batch it came in (a non-2xx answer has SendGrid retry the whole
batch for a day, then drop it, the unsubscribes in it included).
"""

from __future__ import annotations

import binascii
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from . import db
from .errors import ConfigError
from .suppressions import subscriber_id_for, suppress

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# A signed request replayed later than this is refused (either way, to allow for clock skew).
MAX_AGE = timedelta(minutes=10)

# SendGrid retries a batch for up to 24 hours; event ids are kept well past that, then pruned.
DEDUPE_WINDOW = timedelta(days=7)

# Why SendGrid dropped a message, for the reasons that say something about the address (the others,
# such as "Spam Content" or "Invalid SMTPAPI header", are about the message and change no status).
DROP_REASONS = {
    "Bounced Address": db.BOUNCED,
    "Invalid": db.BOUNCED,
    "Unsubscribed Address": db.UNSUBSCRIBED,
    "Spam Reporting Address": db.COMPLAINED,
}


class WebhookVerifier:
    """Checks the signature and timestamp headers of one Event Webhook request."""

    def __init__(self, public_key: str) -> None:
        try:
            helper = EventWebhook(public_key.strip())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            helper = None
        if helper is None or not isinstance(helper.public_key, ec.EllipticCurvePublicKey):
            raise ConfigError(
                "bad setting 'sendgrid_webhook_public_key' (NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY): "
                "expected the base64 ECDSA verification key SendGrid shows for the signed Event Webhook"
            )
        self._helper = helper

    @staticmethod
    def fresh(signature: str, timestamp: str, now: datetime) -> bool:
        """Whether the headers are there and the timestamp within MAX_AGE: checked before the
        body is read, so that a replay or an unsigned request costs nothing."""
        if not signature or not timestamp or not (timestamp.isascii() and timestamp.isdecimal()):
            return False
        # A length check first: int() of thousands of digits is slow, then refused.
        return len(timestamp) <= 12 and abs(now.timestamp() - int(timestamp)) <= MAX_AGE.total_seconds()

    def verify(self, body: bytes, signature: str, timestamp: str) -> bool:
        """Whether `signature` signs timestamp + body (call fresh() first)."""
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        try:
            return bool(self._helper.verify_signature(payload, signature, timestamp))
        except (binascii.Error, ValueError):  # a signature that is not base64 at all
            return False


def parse_events(body: bytes) -> list[Any]:
    """The items of one webhook request (apply_events checks each); ValueError if the body is not a
    JSON array."""
    try:
        items = json.loads(body)
    except RecursionError:  # nested thousands deep: no SendGrid body, and answered 400, not 500
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(items, list):
        raise ValueError("expected a JSON array of events")
    return items


@dataclass
class WebhookResult:
    applied: int = 0  # events seen for the first time
    duplicates: int = 0  # events already applied (SendGrid's retries)
    changed: int = 0  # memberships whose status changed
    failed: int = 0  # items that are not events, or that the database refused (logged)

    def add(self, other: WebhookResult) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.changed += other.changed
        self.failed += other.failed


def apply_events(conn: Connection, items: list[Any], now: datetime) -> WebhookResult:
    """Apply a batch of verified events in the caller's transaction, every one that can be stored.

    The batch goes in one savepoint; should the database refuse any of it, the batch is redone event
    by event, each in its own savepoint, and only the refused events are left out (counted and
    logged). An outage is no event's fault: it propagates, and SendGrid retries the batch.
    """
    conn.execute(db.webhook_events.delete().where(db.webhook_events.c.received_at < now - DEDUPE_WINDOW))
    result = WebhookResult()
    events = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict) and isinstance(item.get("event"), str):
            events.append(_storable(item))
        else:
            result.failed += 1
            log.warning("SendGrid webhook: item %d of %d is not an event object; skipped", number, len(items))
    try:
        with conn.begin_nested():
            result.add(_apply(conn, events, now))
        return result
    except (OperationalError, InterfaceError):
        raise
    except (SQLAlchemyError, ValueError, OverflowError):
        pass  # redone one by one below, to find the event(s) at fault
    for number, event in enumerate(events, start=1):
        try:
            with conn.begin_nested():
                result.add(_apply(conn, [event], now))
        except (OperationalError, InterfaceError):
            raise
        except (SQLAlchemyError, ValueError, OverflowError) as error:
            result.failed += 1
            log.warning(
                "SendGrid webhook: event %d of %d (%.30s, sg_event_id %.100r) not stored: %s",
                number, len(events), event["event"], event.get("sg_event_id"), _why(error),
            )  # fmt: skip
    return result


# What neither database stores in text: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(event: dict[str, Any]) -> dict[str, Any]:
    """The event with NUL and lone surrogates in its values written out as their JSON escapes
    (`\\u0000`, `\\ud800`): visible in a stored reason instead of failing the write. Only top-level
    values are ever stored or looked up."""
    return {
        key: _UNSTORABLE.sub(_escape, value) if isinstance(value, str) else value
        for key, value in event.items()
    }


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def _why(error: Exception) -> str:
    # The driver's own message: SQLAlchemy's adds the statement and its parameters (addresses).
    cause = error.orig if isinstance(error, DBAPIError) else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}"


def _apply(conn: Connection, events: list[dict[str, Any]], now: datetime) -> WebhookResult:
    result = WebhookResult()
    seen = _already_applied(conn, [event["sg_event_id"] for event in events if _event_id(event)])
    counts: Counter[tuple[int, str]] = Counter()
    for event in events:
        event_id = _event_id(event)
        if event_id is not None:
            if event_id in seen:
                result.duplicates += 1
                continue
            seen.add(event_id)
            conn.execute(db.webhook_events.insert().values(sg_event_id=event_id, received_at=now))
        result.applied += 1
        campaign_id = _int_arg(event, "campaign_id")
        if campaign_id is not None:
            counts[(campaign_id, event["event"][:30])] += 1
        change = _status_change(event)
        if change is None:
            continue
        status, every_list = change
        subscriber_id = _subscriber(conn, event)
        if subscriber_id is None:
            continue
        result.changed += suppress(
            conn,
            subscriber_id=subscriber_id,
            status=status,
            source="webhook",
            now=now,
            list_id=None if every_list else _int_arg(event, "list_id"),
            detail=_detail(event),
        )
    _count(conn, counts)
    return result


def _event_id(event: dict[str, Any]) -> str | None:
    value = event.get("sg_event_id")
    # webhook_events.sg_event_id holds 100 characters (SendGrid's ids are about 22): a longer one is
    # not SendGrid's, and would fail the insert (and the batch) on PostgreSQL.
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None


def _already_applied(conn: Connection, event_ids: list[str]) -> set[str]:
    seen: set[str] = set()
    column = db.webhook_events.c.sg_event_id
    # Chunked: a batch can hold thousands of events, more than a statement's bound parameters.
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        seen.update(conn.execute(select(column).where(column.in_(chunk))).scalars())
    return seen


def _status_change(event: dict[str, Any]) -> tuple[str, bool] | None:
    """(status, whether it applies to every list) for the events that suppress an address.

    SendGrid keeps bounces, spam reports and global unsubscribes account-wide, dropping every later
    message to that address whatever list it is for, so those apply to every list; a
    group_unsubscribe concerns the one list the message was for (every list if it does not say).
    """
    kind = event["event"]
    if kind == "bounce":
        # A "blocked" bounce is the receiving server refusing the sender for now, not a dead address.
        return None if event.get("type") == "blocked" else (db.BOUNCED, True)
    if kind == "dropped":
        reason = event.get("reason")
        status = DROP_REASONS.get(reason) if isinstance(reason, str) else None
        return None if status is None else (status, True)
    if kind == "spamreport":
        return db.COMPLAINED, True
    if kind == "unsubscribe":
        return db.UNSUBSCRIBED, True
    if kind == "group_unsubscribe":
        return db.UNSUBSCRIBED, False
    return None


# Ids are positive 64-bit integers: a bigger number makes the database driver fail (SQLite raises
# OverflowError), which would roll back the batch and have SendGrid retry it for a day.
MAX_ID = 2**63 - 1


def _int_arg(event: dict[str, Any], name: str) -> int | None:
    """One of our custom_args (SendGrid returns them as the strings we sent), if it is a valid id."""
    value = event.get(name)
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 19:
        value = int(value)  # the length check first: int() refuses over 4300 digits (ValueError)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    return None


def _subscriber(conn: Connection, event: dict[str, Any]) -> int | None:
    # By the address the message went to, never by our subscriber_id alone: that id names whoever
    # holds it now, which after an erasure need not be the recipient (and the id can only agree).
    email = event.get("email")
    return subscriber_id_for(conn, email) if isinstance(email, str) else None


def _detail(event: dict[str, Any]) -> str:
    detail = f"SendGrid {event['event']} event"
    reason = event.get("reason") or event.get("type")
    if isinstance(reason, str) and reason.strip():
        detail += f": {reason.strip()[:300]}"
    return detail


def _count(conn: Connection, counts: Counter[tuple[int, str]]) -> None:
    if not counts:
        return
    stats = db.campaign_stats.c
    campaign_ids = {campaign_id for campaign_id, _ in counts}
    existing = set(
        conn.execute(select(db.campaigns.c.id).where(db.campaigns.c.id.in_(campaign_ids))).scalars()
    )
    for (campaign_id, event), number in counts.items():
        if campaign_id not in existing:
            continue
        updated = conn.execute(
            db.campaign_stats.update()
            .where(stats.campaign_id == campaign_id, stats.event == event)
            .values(count=stats.count + number)
        )
        if updated.rowcount == 0:
            conn.execute(
                db.campaign_stats.insert().values(campaign_id=campaign_id, event=event, count=number)
            )
