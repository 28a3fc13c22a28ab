"""Postmark's suppression list of the message stream (hard bounces, spam complaints, manual
suppressions: an unsubscribe through Postmark's link, or the account's), read for
`newsletter subscribers sync` from its dump, one reason at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import httpx

from ... import db
from ...errors import SendError
from ..base import AnswerLost, Fetch, Fetched, Suppression, SuppressionList, Verdict
from . import http

if TYPE_CHECKING:
    from ...sections import Delivery

# The dump is not paged: it is applied this many entries a transaction.
PAGE_SIZE = 500


class Suppressions:
    max_page_size = PAGE_SIZE

    def __init__(self, delivery: Delivery) -> None:
        stream = delivery.section.postmark_message_stream
        self._path = f"/message-streams/{stream}/suppressions/dump"
        # Keyed by the stream too: another stream's list starts from its own beginning.
        self.lists = tuple(
            SuppressionList(f"postmark:{stream}:{reason}"[:40], status, f"Postmark {label} ({stream})")
            for reason, status, label in (
                ("HardBounce", db.BOUNCED, "hard bounces"),
                ("SpamComplaint", db.COMPLAINED, "spam complaints"),
                ("ManualSuppression", db.UNSUBSCRIBED, "manual suppressions"),
            )
        )
        self._reasons = {suppression_list.kind: suppression_list.kind.split(":")[2] for suppression_list in self.lists}
        self._client = http.client(delivery.section, delivery.pacing, connections=1)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pages(
        self, suppression_list: SuppressionList, since: int | None, until: int, page_size: int, fetch: Fetch
    ) -> AsyncIterator[list[Suppression]]:
        # Postmark filters by day (inclusive); the exact bounds are applied here.
        params = {"SuppressionReason": self._reasons[suppression_list.kind], "todate": _day(until)}
        if since is not None:
            params["fromdate"] = _day(since)
        dump = await fetch(self._client.build_request("GET", self._path, params=params))
        items = dump.get("Suppressions") if isinstance(dump, dict) else None
        if not isinstance(items, list):
            raise SendError(f"Postmark answered GET {self._path} with an unexpected body (expected its Suppressions)")
        entries = [
            entry
            for entry in map(_suppression, items)
            if entry is not None and (since is None or entry.created >= since) and entry.created <= until
        ]
        for start in range(0, len(entries), page_size):
            yield entries[start : start + page_size]

    async def send(self, request: httpx.Request) -> Fetched:
        where = f"GET {self._path}"
        try:
            response = await self._client.send(request, stream=True)
        except http.IMPOSSIBLE as error:
            raise http.impossible(error) from None
        except httpx.TransportError as error:
            raise AnswerLost(f"could not reach Postmark for {where} ({http.describe(error)})") from None
        answer = await http.read(response)
        if answer.status == 401:
            return Fetched(Verdict.AUTH_REFUSED, f"{http.auth_refused(answer.status)} ({where})")
        if answer.status != 200:
            verdict = Verdict.RETRY_LATER if answer.retryable else Verdict.MESSAGE_REFUSED
            return Fetched(verdict, f"{where} failed: {answer.reason}", retry_after=answer.retry_after)
        return Fetched(Verdict.ACCEPTED, body=answer.body)


def _day(moment: int) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d")


def _suppression(item: Any) -> Suppression | None:
    if not isinstance(item, dict) or not isinstance(item.get("EmailAddress"), str):
        return None
    try:
        created = datetime.fromisoformat(str(item.get("CreatedAt")))
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    origin = item.get("Origin")
    return Suppression(item["EmailAddress"], int(created.timestamp()), f"origin {origin}" if isinstance(origin, str) else None)
