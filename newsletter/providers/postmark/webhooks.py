"""Postmark's webhooks: bounce, spam complaint and subscription change (and delivery, open and
click, when they are turned on), one JSON object a request, read as our Events.

Postmark does not sign its webhooks; it sends the HTTP basic credentials its webhook URL carries.
A request is taken only with the configured ones (compared in constant time), and the webhook
answers 503 until both are set: unproven events could unsubscribe anyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ... import db
from ..base import Event, EventKind, Refusal, storable, tag_id

if TYPE_CHECKING:
    from .settings import Section

# A bounce carries at most the bounced message's first kilobytes; anything bigger is not Postmark.
MAX_WEBHOOK_BODY = 1024 * 1024

_BAD_CREDENTIALS = Refusal(401, "bad credentials")

# Bounce types that say the address cannot receive mail (the others are for now, or not bounces).
_DEAD_ADDRESS = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}

# A subscription change's reason, as the status it makes of a membership.
_SUPPRESSION_REASONS = {
    "HardBounce": db.BOUNCED,
    "SpamComplaint": db.COMPLAINED,
    "ManualSuppression": db.UNSUBSCRIBED,  # the reader's own unsubscribe, or the account's
}

# What campaign_events.url holds; a longer clicked URL is cut (it then matches no paper).
MAX_URL = 2000


def feedback(section: Section) -> Feedback | Refusal:
    if not section.postmark_webhook_user or section.postmark_webhook_password is None:
        return Refusal(
            503,
            "the Postmark webhook is not configured: set postmark_webhook_user and NEWSLETTER_POSTMARK_WEBHOOK_PASSWORD",
        )
    credentials = f"{section.postmark_webhook_user}:{section.postmark_webhook_password.get_secret_value()}"
    return Feedback(credentials)


class Feedback:
    max_body = MAX_WEBHOOK_BODY

    def __init__(self, credentials: str) -> None:
        self._expected = b"Basic " + base64.b64encode(credentials.encode("utf-8"))

    def check_headers(self, headers: Mapping[str, str], now: datetime) -> Refusal | None:
        given = headers.get("Authorization", "").encode("utf-8", "replace")
        return None if hmac.compare_digest(given, self._expected) else _BAD_CREDENTIALS

    def check_body(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        return None  # the credentials were the proof

    def events(self, body: bytes) -> list[Event | None]:
        try:
            item = json.loads(body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if not isinstance(item, dict) or not isinstance(item.get("RecordType"), str):
            raise ValueError("expected a JSON object with a RecordType")
        return [_event(storable(item))]


def _event(record: dict[str, Any]) -> Event:
    kind, suppression = _meaning(record)
    metadata = record.get("Metadata") if isinstance(record.get("Metadata"), dict) else {}
    email = record.get("Email") or record.get("Recipient")
    url = record.get("OriginalLink")
    return Event(
        id=_event_id(record),
        kind=kind,
        email=email if isinstance(email, str) else None,
        campaign_id=tag_id(metadata.get("campaign_id")),
        list_id=tag_id(metadata.get("list_id")),
        suppression=suppression,
        detail=_detail(record),
        at=_when(record),
        url=url[:MAX_URL] if kind is EventKind.CLICKED and isinstance(url, str) else None,
    )


def _meaning(record: dict[str, Any]) -> tuple[EventKind, tuple[str, bool] | None]:
    """Its kind, and (status, every list) when it suppresses the address. Postmark keeps its
    suppressions per message stream, whatever list a message was for: they apply to every list."""
    record_type = record["RecordType"]
    if record_type == "Bounce":
        dead = record.get("Type") in _DEAD_ADDRESS or record.get("Inactive") is True
        return EventKind.BOUNCED, (db.BOUNCED, True) if dead else None
    if record_type == "SpamComplaint":
        return EventKind.SPAM_REPORT, (db.COMPLAINED, True)
    if record_type == "SubscriptionChange":
        if record.get("SuppressSending") is not True:
            return EventKind.RESUBSCRIBED, None  # a reactivation: only a reader's own word re-subscribes
        status = _SUPPRESSION_REASONS.get(record.get("SuppressionReason"), db.UNSUBSCRIBED)
        # A bounce's or a complaint's own webhook counts it; the change only suppresses.
        kind = EventKind.UNSUBSCRIBED if status == db.UNSUBSCRIBED else EventKind.OTHER
        return kind, (status, True)
    simple = {"Delivery": EventKind.DELIVERED, "Open": EventKind.OPENED, "Click": EventKind.CLICKED}
    return simple.get(record_type, EventKind.OTHER), None


def _event_id(record: dict[str, Any]) -> str:
    """Bounces and complaints have Postmark's id; the others are named by what makes them one
    (the message, the address, the moment), hashed to fit webhook_events.event_id."""
    if record["RecordType"] in ("Bounce", "SpamComplaint") and tag_id(record.get("ID")) is not None:
        return f"postmark-{record['RecordType']}-{record['ID']}"
    parts = [str(record.get(key)) for key in ("RecordType", "MessageID", "Recipient", "ChangedAt", "ReceivedAt", "DeliveredAt", "OriginalLink")]
    return "postmark-" + hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:64]


def _when(record: dict[str, Any]) -> datetime | None:
    for key in ("BouncedAt", "ChangedAt", "ReceivedAt", "DeliveredAt"):
        value = record.get(key)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                continue
            return moment if moment.tzinfo else None
    return None


def _detail(record: dict[str, Any]) -> str:
    detail = f"Postmark {record['RecordType']}"
    reason = record.get("Type") or record.get("SuppressionReason")
    description = record.get("Description") or record.get("Details")
    for part in (reason, description):
        if isinstance(part, str) and part.strip():
            detail += f": {part.strip()[:300]}"
    return detail
