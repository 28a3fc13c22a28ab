"""SendGrid's account-wide suppression lists (global unsubscribes, bounces, spam reports, invalid
emails), read page by page for `newsletter subscribers sync`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from ... import db
from ...errors import SendError
from ..base import AnswerLost, Fetch, Fetched, Suppression, SuppressionList, Verdict
from .. import answers
from . import http

if TYPE_CHECKING:
    from ...sections import Delivery

# SendGrid's limit for one page of a suppression list.
MAX_PAGE_SIZE = 500

# A page of 500 entries is some 50 KB; anything past this is not SendGrid's.
MAX_PAGE_BYTES = 16 * 1024 * 1024


# Invalid emails are marked bounced: SendGrid drops every message to them, exactly as for a bounce,
# and nothing the reader does can make the address deliverable. (The sync_state keys predate a
# second provider; they stay, so that a sync goes on from where the last one stopped.)
SUPPRESSION_LISTS = (
    SuppressionList("unsubscribes", db.UNSUBSCRIBED, "SendGrid global unsubscribes"),
    SuppressionList("bounces", db.BOUNCED, "SendGrid bounces"),
    SuppressionList("spam_reports", db.COMPLAINED, "SendGrid spam reports"),
    SuppressionList("invalid_emails", db.BOUNCED, "SendGrid invalid emails"),
)
_PATHS = {suppression_list.kind: f"/v3/suppression/{suppression_list.kind}" for suppression_list in SUPPRESSION_LISTS}


class Suppressions:
    """Reads the suppression lists through the one SendGrid client, a try at a time: the caller's
    retry loop decides what is asked again."""

    lists = SUPPRESSION_LISTS
    max_page_size = MAX_PAGE_SIZE

    def __init__(self, delivery: Delivery) -> None:
        self._client = http.client(delivery.section, delivery.pacing, connections=1)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pages(
        self, suppression_list: SuppressionList, since: int | None, until: int, page_size: int, fetch: Fetch
    ) -> AsyncIterator[list[Suppression]]:
        """The entries created from `since` (inclusive; None: from the start) to `until`."""
        path = _PATHS[suppression_list.kind]
        offset = 0
        while True:
            params = {"end_time": until, "limit": page_size, "offset": offset}
            if since is not None:
                params["start_time"] = since
            page = await fetch(self._client.build_request("GET", path, params=params))
            if not isinstance(page, list) or not all(
                isinstance(entry, dict)
                and isinstance(entry.get("email"), str)
                and isinstance(entry.get("created"), int)
                for entry in page
            ):
                raise SendError(
                    f"SendGrid answered GET {path} with an unexpected body "
                    "(expected a list of {email, created} entries)"
                )
            yield [_suppression(entry) for entry in page]
            if len(page) < page_size:
                return
            offset += page_size

    async def send(self, request: httpx.Request) -> Fetched:
        where = f"GET {request.url.path}"
        try:
            response = await self._client.send(request, stream=True)
        except tuple(http.IMPOSSIBLE) as error:
            raise http.impossible(error) from None
        except httpx.TransportError as error:
            url = request.url.copy_with(query=None)
            raise AnswerLost(f"could not reach SendGrid at {url} ({http.describe(error)})") from None
        if response.status_code != 200:
            answer = http.read_answer(response, await answers.read_capped(response, http.MAX_ANSWER_BYTES))
            if answer.status in (401, 403):
                refused = http.auth_refused(answer.status, "read access to suppressions")
                return Fetched(Verdict.AUTH_REFUSED, f"{refused} ({where})")
            verdict = Verdict.RETRY_LATER if answer.retryable else Verdict.MESSAGE_REFUSED
            return Fetched(verdict, f"{where} failed: {answer.reason}", retry_after=answer.retry_after)
        try:
            return Fetched(Verdict.ACCEPTED, body=json.loads(await answers.read_capped(response, MAX_PAGE_BYTES)))
        except (ValueError, RecursionError):  # not JSON, or cut short at the cap: an unexpected body
            return Fetched(Verdict.ACCEPTED)


def _suppression(entry: dict[str, Any]) -> Suppression:
    reason = entry.get("reason")
    return Suppression(entry["email"], entry["created"], reason.strip()[:300] if isinstance(reason, str) else None)
