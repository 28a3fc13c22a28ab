"""Who gets what: an issue's Message, once, and each reader's own unsubscribe link, headers and tags,
handed to the provider in batches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..addresses import ascii_domain
from ..providers import Batch, Message, Provider, Recipient
from ..sections import Sender
from ..subscribers import MailingList
from ..tokens import UnsubscribeLinks


@dataclass(frozen=True)
class Content:
    """What every reader of an issue gets (providers.UNSUBSCRIBE_TAG marks the personal link)."""

    subject: str
    html: str
    text: str


class Reader(NamedTuple):
    """One reader of a mailing; a tuple, made for every reader of every batch."""

    id: int  # the delivery row (0 outside a campaign): batches are contiguous ranges of these
    subscriber_id: int  # 0 for a test address that is no subscriber
    email: str
    name: str | None


class Addressing:
    """Prepares a mailing's batches for the provider: the message every reader shares (with the
    list's List-Id), and per reader the unsubscribe URL, the RFC 8058 headers and the tags that let
    the provider's events be mapped back to `campaign_id`; without one, a test's copies."""

    def __init__(
        self,
        sender: Sender,
        content: Content,
        *,
        mailing_list: MailingList,
        campaign_id: int | None,
        links: UnsubscribeLinks,
        provider: Provider,
        validate_only: bool = False,
    ) -> None:
        self._list_id = mailing_list.id
        self._campaign_id = campaign_id
        self._campaign_tag, self._list_tag = str(campaign_id), str(mailing_list.id)
        self._links = links
        self._provider = provider
        self._validate_only = validate_only
        self.message = Message(
            subject=content.subject,
            html=content.html,
            text=content.text,
            sender_email=sender.from_email,
            sender_name=sender.from_name,
            reply_to=sender.reply_to,
            headers={"List-Id": list_id_header(mailing_list.name, sender.from_email)},
        )

    def prepare(self, readers: Sequence[Reader]) -> Any:
        """The provider's request for `readers`; SendError if one of them would break its limits."""
        batch = Batch(self.message, [self.recipient(reader) for reader in readers], self._validate_only)
        return self._provider.prepare(batch)

    def recipient(self, reader: Reader) -> Recipient:
        if self._campaign_id is None:
            # A test copy leaves nothing: its links open a page that says it is a test, whether or not
            # its reader is on the list, and no List-Unsubscribe offers a mail client a button that
            # could do nothing.
            url = self._links.test_copy_url(self._list_id, reader.subscriber_id, reader.email)
            return Recipient(reader.email, reader.name, url, {}, {}, url)
        url, preferences = self._links.urls(self._list_id, reader.subscriber_id, reader.email)
        tags = {"campaign_id": self._campaign_tag, "subscriber_id": str(reader.subscriber_id), "list_id": self._list_tag}
        return Recipient(reader.email, reader.name, url, self._links.headers(url), tags, preferences)


def list_id_header(list_name: str, from_email: str) -> str:
    """RFC 2919's List-Id, "<daily-papers.example.com>": the list's name under the sender's
    domain, which mail clients file and filter the issues by."""
    # A list name is letters, digits, '.', '_' and '-'; a label may not hold empty dot-atoms.
    label = re.sub(r"\.+", ".", list_name.lower()).strip(".")
    domain = ascii_domain(from_email.rpartition("@")[2])
    return f"<{label}.{domain}>"
