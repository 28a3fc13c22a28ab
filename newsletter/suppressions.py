"""Suppressions: the provider's word that an address gets no more mail (an unsubscribe, a bounce, a
complaint) applied to a subscriber's memberships, and the pull of the provider's suppression lists
(`newsletter subscribers sync`).

A suppression only ever moves a status towards the stronger one (membership.STRENGTH,
membership.TRANSITIONS): the outcome must not depend on the order the lists are read or the events
arrive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from . import db
from .errors import ProviderAuthError, SendError, SubscriberError
from .membership import compare_and_set
from .providers import AnswerLost, RequestImpossible, Suppression, SuppressionList, SuppressionSource, Verdict, registry
from .addresses import email_key, normalise_email
from .sections import Delivery
from .store import feedback, memberships


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

    A membership already at this status or a stronger one is left alone (`source` is the
    provider's: TRANSITIONS lets it move only towards the stronger). Returns how many changed.
    """
    # Locked (PostgreSQL) so that the strength compared is the one overwritten: a complaint
    # committed meanwhile is not downgraded to a bounce. SQLite's write lock already does this.
    return sum(
        compare_and_set(
            conn,
            list_id=member_of,
            subscriber_id=subscriber_id,
            expected=previous,
            status=status,
            source=source,
            now=now,
            detail=detail,
        )
        for member_of, previous in memberships.statuses_of(conn, subscriber_id, list_id)
    )


def subscriber_id_for(conn: Connection, email: str) -> int | None:
    """The id of the subscriber with this address, if we have one."""
    try:
        key = email_key(normalise_email(email))
    except SubscriberError:
        # A provider's invalid-emails list holds addresses that fail validation; an exact match on the
        # case-folded text still finds the subscriber they were imported as.
        key = email_key(email.strip())
    return conn.execute(select(db.subscribers.c.id).where(db.subscribers.c.email_key == key)).scalar()


# -- the provider's suppression lists ----------------------------------------------------------

# What a membership's event log says changed it.
SYNC_SOURCE = "provider_sync"


@dataclass
class SyncResult:
    suppression_list: SuppressionList
    since: int | None  # the start_time asked for (None: the whole list)
    fetched: int = 0  # entries the provider returned
    changed: int = 0  # memberships whose status changed
    unknown: int = 0  # entries for addresses we have no subscriber for


def sync_suppressions(
    engine: Engine, delivery: Delivery, *, source: SuppressionSource | None = None, page_size: int | None = None
) -> list[SyncResult]:
    """Pull what is new on the provider's suppression lists and mark those subscribers.

    Each list is read from the newest `created` time seen by the previous sync (inclusive, so an
    entry made in that same second is not missed; re-applying one changes nothing) up to now, which
    keeps the paging stable while entries are added. Each page is applied in its own transaction,
    and the list's sync_state advances only once every page is in: an interrupted sync repeats some
    work and loses none. A suppression applies to every list the address is on. Every request goes
    through the send's retry loop (rate limits, outages, lost answers; `max_retries`).
    """
    source = source or registry.suppressions(delivery)
    if source is None:
        raise SendError(f"provider = {delivery.provider!r} keeps no suppression lists: there is nothing to sync")
    return asyncio.run(_sync(engine, delivery, source, page_size or source.max_page_size))


async def _sync(engine: Engine, delivery: Delivery, source: SuppressionSource, page_size: int) -> list[SyncResult]:
    # Imported here: the send package imports this module (`suppress`).
    from .send.pacing import Exchange, RateLimiter, Requests

    if not 1 <= page_size <= source.max_page_size:
        await source.aclose()
        raise ValueError(f"page_size must be 1..{source.max_page_size}")
    # A read changes nothing at the provider: one whose answer was lost is asked again too.
    requests = Requests(source, RateLimiter(delivery.pacing.send_rate_limit), delivery.pacing.max_retries, retry_lost=True)

    async def fetch(request: Any) -> Any:
        try:
            answer = await requests.post(Exchange(0, [], request))
        except (RequestImpossible, AnswerLost) as error:
            raise SendError(str(error)) from None
        if answer.verdict is Verdict.AUTH_REFUSED:
            raise ProviderAuthError(answer.reason)
        if answer.verdict is not Verdict.ACCEPTED:
            raise SendError(answer.reason)
        return answer.body

    results = []
    try:
        for suppression_list in source.lists:
            with engine.connect() as conn:
                since = feedback.synced_until(conn, suppression_list.kind)
            until = int(delivery.clock().timestamp())
            result = SyncResult(suppression_list, since)
            newest = since
            async for page in source.pages(suppression_list, since, until, page_size, fetch):
                with engine.begin() as conn:
                    for entry in page:
                        result.fetched += 1
                        newest = entry.created if newest is None else max(newest, entry.created)
                        subscriber_id = subscriber_id_for(conn, entry.email)
                        if subscriber_id is None:
                            result.unknown += 1
                            continue
                        result.changed += suppress(
                            conn,
                            subscriber_id=subscriber_id,
                            status=suppression_list.status,
                            source=SYNC_SOURCE,
                            now=delivery.clock(),
                            detail=_detail(suppression_list, entry),
                        )
            if newest is not None and newest != since:
                with engine.begin() as conn:
                    feedback.save_synced_until(conn, suppression_list.kind, newest)
            results.append(result)
    finally:
        await source.aclose()
    return results


def _detail(suppression_list: SuppressionList, entry: Suppression) -> str:
    created = datetime.fromtimestamp(entry.created, timezone.utc).isoformat()
    detail = f"{suppression_list.label} list, since {created}"
    return f"{detail}: {entry.reason}" if entry.reason else detail
