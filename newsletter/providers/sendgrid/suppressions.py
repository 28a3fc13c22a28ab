"""SendGrid's account-wide suppression lists (global unsubscribes, bounces, spam reports, invalid
emails), read page by page for `newsletter subscribers sync`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ... import db
from ...config import Settings
from ...errors import ProviderAuthError, SendError
from ..base import Suppression, SuppressionList
from . import http

# SendGrid's limit for one page of a suppression list.
MAX_PAGE_SIZE = 500

# A page of 500 entries is some 50 KB; anything past this is not SendGrid's.
MAX_PAGE_BYTES = 16 * 1024 * 1024

# The longest wait between two tries, whatever a rate limit asks for.
MAX_RETRY_DELAY = 60.0


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
    """Reads the suppression lists through the one SendGrid client, retrying rate limits and
    server errors."""

    lists = SUPPRESSION_LISTS
    max_page_size = MAX_PAGE_SIZE

    def __init__(self, settings: Settings) -> None:
        self._max_retries = settings.max_retries
        self._client = http.client(settings, connections=1)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pages(
        self, suppression_list: SuppressionList, since: int | None, until: int, page_size: int
    ) -> AsyncIterator[list[Suppression]]:
        """The entries created from `since` (inclusive; None: from the start) to `until`."""
        path = _PATHS[suppression_list.kind]
        offset = 0
        while True:
            params = {"end_time": until, "limit": page_size, "offset": offset}
            if since is not None:
                params["start_time"] = since
            page = await self._get_json(path, params)
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

    async def _get_json(self, path: str, params: dict[str, int]) -> Any:
        attempt = 0
        while True:
            retries_left = attempt < self._max_retries
            try:
                response = await self._client.send(self._client.build_request("GET", path, params=params), stream=True)
            except tuple(http.IMPOSSIBLE) as error:
                raise SendError(str(http.impossible(error))) from None
            except httpx.TransportError as error:
                if not retries_left:
                    raise SendError(
                        f"could not reach SendGrid at {self._client.base_url}{path} ({http.describe(error)})"
                    ) from None
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            if response.status_code == 200:
                try:
                    return json.loads(await http.read_capped(response, MAX_PAGE_BYTES))
                except (ValueError, RecursionError):  # not JSON, or cut short at the cap
                    raise SendError(f"SendGrid answered GET {path} with a body that is not JSON") from None
            answer = http.read_answer(response, await http.read_capped(response))
            if answer.status in (401, 403):
                raise ProviderAuthError(
                    f"SendGrid refused the API key for GET {path} (HTTP {answer.status}): "
                    "check SENDGRID_API_KEY and that it may read suppressions"
                )
            if answer.retryable and retries_left:
                delay = answer.retry_after if answer.retry_after is not None else _backoff(attempt)
                await asyncio.sleep(min(delay, MAX_RETRY_DELAY))
                attempt += 1
                continue
            raise SendError(f"GET {path} failed: {answer.reason}")


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, MAX_RETRY_DELAY)


def _suppression(entry: dict[str, Any]) -> Suppression:
    reason = entry.get("reason")
    return Suppression(entry["email"], entry["created"], reason.strip()[:300] if isinstance(reason, str) else None)
