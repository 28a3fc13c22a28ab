"""SendGrid's signed Event Webhook: verifying a request's signature and age, and reading its events.

SendGrid posts a JSON array of events, signs timestamp+body with ECDSA P-256, and retries for a day
on any non-2xx answer. Every event that can be stored is: text the databases cannot hold (NUL, lone
surrogates; a bounce reason comes from the recipient's own mail server) is written out escaped.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook

from ... import db
from ...errors import ConfigError
from ..base import Event, EventKind, Refusal, storable, tag_id

if TYPE_CHECKING:
    from .settings import Section

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# A signed request replayed later than this is refused (either way, to allow for clock skew).
MAX_AGE = timedelta(minutes=10)

# SendGrid's batches are far smaller; anything bigger is not SendGrid.
MAX_WEBHOOK_BODY = 10 * 1024 * 1024

_BAD_SIGNATURE = Refusal(403, "bad or stale signature")

# SendGrid's event names in ours. Its unsubscribes from one group (our list) and from everything
# are one kind: which lists they leave is the event's suppression.
KINDS = {
    "processed": EventKind.PROCESSED,
    "delivered": EventKind.DELIVERED,
    "deferred": EventKind.DEFERRED,
    "dropped": EventKind.DROPPED,
    "bounce": EventKind.BOUNCED,
    "open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "spamreport": EventKind.SPAM_REPORT,
    "unsubscribe": EventKind.UNSUBSCRIBED,
    "group_unsubscribe": EventKind.UNSUBSCRIBED,
    "group_resubscribe": EventKind.RESUBSCRIBED,
}

# Why SendGrid dropped a message, for the reasons that say something about the address (the others,
# such as "Spam Content" or "Invalid SMTPAPI header", are about the message and change no status).
DROP_REASONS = {
    "Bounced Address": db.BOUNCED,
    "Invalid": db.BOUNCED,
    "Unsubscribed Address": db.UNSUBSCRIBED,
    "Spam Reporting Address": db.COMPLAINED,
}


def feedback(section: Section) -> Feedback | Refusal:
    """The signed Event Webhook; never unsigned events (anyone could unsubscribe anyone)."""
    if not section.sendgrid_webhook_public_key:
        return Refusal(503, "the signed Event Webhook is not configured")
    return Feedback(WebhookVerifier(section.sendgrid_webhook_public_key))


class Feedback:
    """The Event Webhook as the server takes it: the signature headers (fresh) before the body, the
    signature over the body, then the events."""

    max_body = MAX_WEBHOOK_BODY

    def __init__(self, verifier: WebhookVerifier) -> None:
        self._verifier = verifier

    def check_headers(self, headers: Mapping[str, str], now: datetime) -> Refusal | None:
        fresh = self._verifier.fresh(headers.get(SIGNATURE_HEADER, ""), headers.get(TIMESTAMP_HEADER, ""), now)
        return None if fresh else _BAD_SIGNATURE

    def check_body(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        signed = self._verifier.verify(body, headers.get(SIGNATURE_HEADER, ""), headers.get(TIMESTAMP_HEADER, ""))
        return None if signed else _BAD_SIGNATURE

    def events(self, body: bytes) -> list[Event | None]:
        return parse_events(body)


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


def parse_events(body: bytes) -> list[Event | None]:
    """The events of one webhook request (None for an item that is not an event); ValueError if
    the body is not a JSON array."""
    try:
        items = json.loads(body)
    except RecursionError:  # nested thousands deep: no SendGrid body, and answered 400, not 500
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(items, list):
        raise ValueError("expected a JSON array of events")
    return events_from(items)


def events_from(items: list[Any]) -> list[Event | None]:
    """SendGrid's event objects as Events (None for an item that is not one)."""
    return [_event(storable(item)) if isinstance(item, dict) and isinstance(item.get("event"), str) else None for item in items]


def _event(event: dict[str, Any]) -> Event:
    return Event(
        id=_event_id(event),
        kind=KINDS.get(event["event"], EventKind.OTHER),
        email=event["email"] if isinstance(event.get("email"), str) else None,
        campaign_id=_int_arg(event, "campaign_id"),
        list_id=_int_arg(event, "list_id"),
        suppression=_status_change(event),
        detail=_detail(event),
        at=_timestamp(event),
        url=_click_url(event),
        machine_open=event["event"] == "open" and event.get("sg_machine_open") is True,
    )


# What campaign_events.url holds; a longer clicked URL is cut (it then matches no paper).
MAX_URL = 2000


def _click_url(event: dict[str, Any]) -> str | None:
    value = event.get("url")
    return value[:MAX_URL] if event["event"] == "click" and isinstance(value, str) else None


def _timestamp(event: dict[str, Any]) -> datetime | None:
    """When it happened (SendGrid's Unix seconds), if given and plausible."""
    value = event.get("timestamp")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**37:
        return datetime.fromtimestamp(value, timezone.utc)
    return None


def _event_id(event: dict[str, Any]) -> str | None:
    value = event.get("sg_event_id")
    # webhook_events.event_id holds 100 characters (SendGrid's ids are about 22): a longer one is
    # not SendGrid's, and would fail the insert (and the batch) on PostgreSQL.
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None


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


def _int_arg(event: dict[str, Any], name: str) -> int | None:
    """One of our custom_args (SendGrid returns them as the strings we sent), if it is a valid id."""
    return tag_id(event.get(name))


def _detail(event: dict[str, Any]) -> str:
    detail = f"SendGrid {event['event']} event"
    reason = event.get("reason") or event.get("type")
    if isinstance(reason, str) and reason.strip():
        detail += f": {reason.strip()[:300]}"
    return detail
