"""Suppressions: the rule every unsubscribe, bounce and complaint goes through, and the pull of
SendGrid's suppression lists (`newsletter subscribers sync`).

A status only ever moves towards the stronger suppression (subscribed < unsubscribed < bounced <
complained): the same address often sits on several SendGrid lists at once (an invalid address that
also bounced, a complainer who also unsubscribed), and the outcome must not depend on the order the
lists are read or the events arrive. Only an explicit re-subscribe by the reader moves back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import db
from .config import Settings
from .delivery import read_answer
from .errors import MissingAPIKey, SendError, SendGridAuthError, SubscriberError
from .subscribers import email_key, normalise_email, set_status

STRENGTH = {db.SUBSCRIBED: 0, db.UNSUBSCRIBED: 1, db.BOUNCED: 2, db.COMPLAINED: 3}

# SendGrid's limit for one page of a suppression list.
MAX_PAGE_SIZE = 500

# The longest wait between two tries, whatever a rate limit asks for.
MAX_RETRY_DELAY = 60.0


def suppress(
    conn: Connection,
    *,
    subscriber_id: int,
    status: str,
    source: str,
    now: datetime,
    list_id: int | None = None,
    detail: str = "",
) -> int:
    """Suppress one membership (or, with list_id None, every list the subscriber is on).

    A membership already at this status or a stronger one is left alone. Returns how many changed.
    """
    m = db.memberships.c
    query = select(m.list_id, m.status).where(m.subscriber_id == subscriber_id)
    if list_id is not None:
        query = query.where(m.list_id == list_id)
    # Locked (PostgreSQL) so that the strength compared is the one overwritten: a complaint
    # committed meanwhile is not downgraded to a bounce. SQLite's write lock already does this.
    query = query.with_for_update()
    changed = 0
    for row in conn.execute(query).all():
        if STRENGTH[row.status] < STRENGTH[status]:
            set_status(
                conn,
                list_id=row.list_id,
                subscriber_id=subscriber_id,
                status=status,
                source=source,
                now=now,
                detail=detail,
            )
            changed += 1
    return changed


def subscriber_id_for(conn: Connection, email: str) -> int | None:
    """The id of the subscriber with this address, if we have one."""
    try:
        key = email_key(normalise_email(email))
    except SubscriberError:
        # SendGrid's invalid-emails list holds addresses that fail validation; an exact match on the
        # case-folded text still finds the subscriber they were imported as.
        key = email_key(email.strip())
    return conn.execute(select(db.subscribers.c.id).where(db.subscribers.c.email_key == key)).scalar()


# -- SendGrid suppression sync ------------------------------------------------------------------


@dataclass(frozen=True)
class SuppressionList:
    kind: str  # the key in sync_state
    path: str
    status: str
    label: str


# Invalid emails are marked bounced: SendGrid drops every message to them, exactly as for a bounce,
# and nothing the reader does can make the address deliverable.
SUPPRESSION_LISTS = (
    SuppressionList("unsubscribes", "/v3/suppression/unsubscribes", db.UNSUBSCRIBED, "global unsubscribes"),
    SuppressionList("bounces", "/v3/suppression/bounces", db.BOUNCED, "bounces"),
    SuppressionList("spam_reports", "/v3/suppression/spam_reports", db.COMPLAINED, "spam reports"),
    SuppressionList("invalid_emails", "/v3/suppression/invalid_emails", db.BOUNCED, "invalid emails"),
)


@dataclass
class SyncResult:
    suppression_list: SuppressionList
    since: int | None  # the start_time asked for (None: the whole list)
    fetched: int = 0  # entries SendGrid returned
    changed: int = 0  # memberships whose status changed
    unknown: int = 0  # entries for addresses we have no subscriber for


class SendGridClient:
    """Reads SendGrid's suppression lists, retrying rate limits and server errors."""

    def __init__(self, settings: Settings) -> None:
        # Settings has stripped the key and refused one that cannot be an HTTP header value.
        if settings.sendgrid_api_key is None:
            raise MissingAPIKey(
                "SENDGRID_API_KEY is not set: `subscribers sync` needs a SendGrid API key "
                "with read access to suppressions"
            )
        self._max_retries = settings.max_retries
        self._http = httpx.Client(
            base_url=settings.sendgrid_api_url,
            headers={
                "Authorization": f"Bearer {settings.sendgrid_api_key.get_secret_value()}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        )

    def __enter__(self) -> SendGridClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def get_json(self, path: str, params: dict[str, int]) -> Any:
        attempt = 0
        while True:
            retries_left = attempt < self._max_retries
            try:
                response = self._http.get(path, params=params)
            except httpx.TransportError as error:
                if not retries_left:
                    # Named by its kind only: an httpx error's text may quote a request header,
                    # and the Authorization header holds the API key.
                    raise SendError(
                        f"could not reach SendGrid at {self._http.base_url}{path} ({type(error).__name__})"
                    ) from None
                time.sleep(_backoff(attempt))
                attempt += 1
                continue
            answer = read_answer(response, response.content)
            if answer.status in (401, 403):
                raise SendGridAuthError(
                    f"SendGrid refused the API key for GET {path} (HTTP {answer.status}): "
                    "check SENDGRID_API_KEY and that it may read suppressions"
                )
            if answer.retryable and retries_left:
                delay = answer.retry_after if answer.retry_after is not None else _backoff(attempt)
                time.sleep(min(delay, MAX_RETRY_DELAY))
                attempt += 1
                continue
            if answer.status != 200:
                raise SendError(f"GET {path} failed: {answer.reason}")
            try:
                return response.json()
            except ValueError:
                raise SendError(f"SendGrid answered GET {path} with a body that is not JSON") from None


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, MAX_RETRY_DELAY)


def _pages(
    client: SendGridClient, suppression_list: SuppressionList, since: int | None, until: int, page_size: int
) -> Iterator[list[dict[str, Any]]]:
    offset = 0
    while True:
        params = {"end_time": until, "limit": page_size, "offset": offset}
        if since is not None:
            params["start_time"] = since
        page = client.get_json(suppression_list.path, params)
        if not isinstance(page, list) or not all(
            isinstance(entry, dict)
            and isinstance(entry.get("email"), str)
            and isinstance(entry.get("created"), int)
            for entry in page
        ):
            raise SendError(
                f"SendGrid answered GET {suppression_list.path} with an unexpected body "
                "(expected a list of {email, created} entries)"
            )
        yield page
        if len(page) < page_size:
            return
        offset += page_size


def sync_suppressions(settings: Settings, *, page_size: int = MAX_PAGE_SIZE) -> list[SyncResult]:
    """Pull what is new on SendGrid's four suppression lists and mark those subscribers.

    Each list is read from the newest `created` time seen by the previous sync (inclusive, so an
    entry made in that same second is not missed; re-applying one changes nothing) up to now, which
    keeps the paging stable while SendGrid adds entries. Each page is applied in its own
    transaction, and the list's sync_state advances only once every page is in: an interrupted sync
    repeats some work and loses none. A global suppression applies to every list the address is on.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
    engine = db.engine_for(settings)
    results = []
    with SendGridClient(settings) as client:
        for suppression_list in SUPPRESSION_LISTS:
            with engine.connect() as conn:
                since = conn.execute(
                    select(db.sync_state.c.last_created).where(db.sync_state.c.kind == suppression_list.kind)
                ).scalar()
            until = int(settings.clock().timestamp())
            result = SyncResult(suppression_list, since)
            newest = since
            for page in _pages(client, suppression_list, since, until, page_size):
                with engine.begin() as conn:
                    for entry in page:
                        result.fetched += 1
                        newest = entry["created"] if newest is None else max(newest, entry["created"])
                        subscriber_id = subscriber_id_for(conn, entry["email"])
                        if subscriber_id is None:
                            result.unknown += 1
                            continue
                        result.changed += suppress(
                            conn,
                            subscriber_id=subscriber_id,
                            status=suppression_list.status,
                            source="sendgrid_sync",
                            now=settings.clock(),
                            detail=_detail(suppression_list, entry),
                        )
            if newest is not None and newest != since:
                with engine.begin() as conn:
                    _save_state(conn, suppression_list.kind, newest)
            results.append(result)
    return results


def _detail(suppression_list: SuppressionList, entry: dict[str, Any]) -> str:
    created = datetime.fromtimestamp(entry["created"], timezone.utc).isoformat()
    detail = f"SendGrid {suppression_list.label} list, since {created}"
    reason = entry.get("reason")
    if isinstance(reason, str) and reason.strip():
        detail += f": {reason.strip()[:300]}"
    return detail


def _save_state(conn: Connection, kind: str, last_created: int) -> None:
    state = db.sync_state.c
    updated = conn.execute(db.sync_state.update().where(state.kind == kind).values(last_created=last_created))
    if updated.rowcount == 0:
        conn.execute(db.sync_state.insert().values(kind=kind, last_created=last_created))
