"""mail/send request bodies: one text and one HTML body per issue, one personalization per recipient.

SendGrid's limits per request hold by construction: at most settings.batch_size (≤ 1000)
personalizations of one `to` each; substitutions and custom_args under 10,000 bytes per
personalization (checked here: an absurdly long base_url is the only way past it); and a body of one
issue (the checks keep its HTML under Gmail's 102 KB) plus ~1 KB per recipient, about 1.5 MB against
30 MB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from .. import db
from ..config import Settings
from ..errors import SendError
from ..render import UNSUBSCRIBE_TAG
from ..tokens import UnsubscribeLinks

# SendGrid refuses a personalization whose substitutions and custom_args total this many bytes.
PERSONAL_DATA_LIMIT = 10_000


@dataclass(frozen=True)
class Content:
    """What every recipient of an issue gets (UNSUBSCRIBE_TAG marks the personal link)."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Recipient:
    id: int  # the delivery row (0 outside a campaign): batches are contiguous ranges of these
    subscriber_id: int  # 0 for a test address that is no subscriber
    email: str
    name: str | None


class Bodies:
    """Builds mail/send bodies: one text and one HTML body per issue, the list's List-Id, and one
    personalization per recipient (its address, unsubscribe-URL substitution, RFC 8058 headers
    and, for a campaign, the custom_args that let the Event Webhook map events back)."""

    def __init__(
        self,
        settings: Settings,
        content: Content,
        *,
        list_id: int,
        campaign_id: str | None,
        sandbox: bool = False,
    ) -> None:
        self._links = UnsubscribeLinks(settings)
        self._list_id = list_id
        self._campaign_id = campaign_id
        sender = {"email": settings.from_email, "name": settings.from_name}
        self._common: dict[str, Any] = {
            "from": sender,
            "subject": content.subject,
            # RFC 2046: the richest alternative last; SendGrid also requires text/plain first.
            "content": [
                {"type": "text/plain", "value": content.text},
                {"type": "text/html", "value": content.html},
            ],
            # Our own link and headers do the unsubscribing; SendGrid's footer would add a second.
            "tracking_settings": {"subscription_tracking": {"enable": False}},
        }
        if settings.reply_to:
            self._common["reply_to"] = {"email": settings.reply_to}
        list_name = _list_name(settings, list_id)
        if list_name is not None:
            # The same for every recipient, so once per request rather than per personalization.
            self._common["headers"] = {"List-Id": list_id_header(list_name, settings.from_email)}
        if sandbox:
            self._common["mail_settings"] = {"sandbox_mode": {"enable": True}}

    def body(self, recipients: Sequence[Recipient]) -> dict[str, Any]:
        """The request for `recipients`; SendError if one of them would break SendGrid's limits."""
        return {**self._common, "personalizations": [self._personalization(r) for r in recipients]}

    def _personalization(self, recipient: Recipient) -> dict[str, Any]:
        url = self._links.url(self._list_id, recipient.subscriber_id, recipient.email)
        to: dict[str, str] = {"email": recipient.email}
        name = _display_name(recipient.name)
        if name:
            to["name"] = name
        personalization: dict[str, Any] = {
            "to": [to],
            "substitutions": {UNSUBSCRIBE_TAG: url},
            "headers": self._links.headers(url),
        }
        if self._campaign_id is not None:
            # Strings: SendGrid rejects other types, and echoes them as top-level event keys.
            personalization["custom_args"] = {
                "campaign_id": self._campaign_id,
                "subscriber_id": str(recipient.subscriber_id),
                "list_id": str(self._list_id),
            }
        personal = {**personalization["substitutions"], **personalization.get("custom_args", {})}
        size = len(json.dumps(personal, ensure_ascii=False).encode("utf-8"))
        if size >= PERSONAL_DATA_LIMIT:
            raise SendError(
                f"the unsubscribe link and ids of {recipient.email} take {size:,} bytes, and SendGrid "
                f"refuses {PERSONAL_DATA_LIMIT:,} or more per recipient: shorten base_url"
            )
        return personalization


def list_id_header(list_name: str, from_email: str) -> str:
    """RFC 2919's List-Id, "<daily-papers.example.com>": the list's name under the sender's
    domain, which mail clients file and filter the issues by."""
    # A list name is letters, digits, '.', '_' and '-'; a label may not hold empty dot-atoms.
    label = re.sub(r"\.+", ".", list_name.lower()).strip(".")
    domain = from_email.rpartition("@")[2].encode("idna").decode("ascii").lower()
    return f"<{label}.{domain}>"


def _list_name(settings: Settings, list_id: int) -> str | None:
    # The callers hold the list's id only; None for a list that is not (or no longer) in the database.
    with db.engine_for(settings).connect() as conn:
        return conn.execute(select(db.lists.c.name).where(db.lists.c.id == list_id)).scalar()


def _display_name(name: str | None) -> str | None:
    # SendGrid refuses ';' and ',' in a recipient's name; line breaks would forge headers.
    if not name:
        return None
    cleaned = " ".join(name.replace(";", " ").replace(",", " ").split())
    return cleaned or None
