"""Lists, subscribers and their memberships, with an append-only log of every status change (the
rules a status change follows, and the query of a list's audience, are in newsletter/membership.py).

Functions that take a Connection run inside the caller's transaction, so a command can combine
several of them atomically. The readers that take an Engine (read_pages, iter_members,
iter_memberships) read a page per transaction instead: a long read must not keep the web server
from recording an unsubscribe. The CSV import and export are in newsletter/subscriber_csv.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    func,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection, Engine

from . import db
from .addresses import email_key, normalise_email, wire_address
from .providers.headers import NAME_MAX
from .errors import SubscriberError
from .membership import compare_and_set, members_query
from .store import campaigns, lists, memberships, messages, subscribers

# Names are typed on command lines and appear in URLs and logs: keep them plain.
LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Columns of a subscriber that attributes may not shadow (an export writes them side by side).
RESERVED_ATTRIBUTES = ("email", "name")


@dataclass(frozen=True)
class MailingList:
    id: int
    name: str
    description: str
    created_at: datetime
    optin: str = db.DOUBLE_OPTIN  # how readers who sign up themselves join (db.OPT_IN)


@dataclass(frozen=True)
class ListSummary:
    list: MailingList
    counts: dict[str, int]  # members per status, every status present

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    attributes: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Member:
    """A list member as the sender needs them."""

    subscriber_id: int
    email: str
    name: str | None


@dataclass(frozen=True)
class MembershipRow:
    """One line of `subscribers list`: a membership, or a subscriber on no list (list_name None)."""

    subscriber_id: int
    email: str
    name: str | None
    list_name: str | None
    status: str | None
    since: datetime | None


@dataclass(frozen=True)
class Membership:
    list_name: str
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Event:
    created_at: datetime
    list_name: str | None
    status: str
    previous_status: str | None
    source: str
    detail: str


@dataclass(frozen=True)
class SubscriberDetails:
    subscriber: Subscriber
    memberships: list[Membership]
    events: list[Event]


@dataclass(frozen=True)
class Subscription:
    """What `subscribe` did: "added", "resubscribed", "unchanged" (already subscribed) or "skipped"
    (unsubscribed, bounced or complained, and not resubscribed: `previous` says which)."""

    subscriber: Subscriber
    outcome: str
    previous: str | None = None


@dataclass(frozen=True)
class Erasure:
    """What `erase_subscriber` removed."""

    email: str
    memberships: int
    events: int
    deliveries_anonymised: int
    lists: list[str] = field(default_factory=list)


# -- lists ----------------------------------------------------------------------------------------


def get_list(conn: Connection, name: str) -> MailingList:
    row = lists.named(conn, name)
    if row is None:
        raise SubscriberError(f"no list named {name!r} (create it with: newsletter lists create {name})")
    return _mailing_list(row)


def _mailing_list(row: Any) -> MailingList:
    return MailingList(row.id, row.name, row.description, row.created_at, row.optin)


def create_list(
    conn: Connection,
    name: str,
    *,
    now: datetime,
    description: str = "",
    optin: str = db.DOUBLE_OPTIN,
    exist_ok: bool = False,
) -> MailingList:
    """A new list; with exist_ok, an existing list of that name is returned unchanged."""
    if optin not in db.OPT_IN:
        raise SubscriberError(f"bad opt-in mode {optin!r}: one of {', '.join(db.OPT_IN)}")
    if not LIST_NAME.fullmatch(name):
        raise SubscriberError(
            f"bad list name {name!r}: use up to 200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    existing = lists.named(conn, name)
    if existing is not None:
        if exist_ok:
            return _mailing_list(existing)
        raise SubscriberError(f"a list named {name!r} already exists")
    lists.add(conn, name, description=description, optin=optin, now=now)
    return get_list(conn, name)


def list_summaries(conn: Connection, name: str | None = None) -> list[ListSummary]:
    """Every list (or the one named) with its members counted per status, by name."""
    lists = db.lists.c
    query = select(db.lists).order_by(lists.name)
    if name is not None:
        query = query.where(lists.name == name)
    found = [_mailing_list(row) for row in conn.execute(query)]
    if name is not None and not found:
        get_list(conn, name)  # raises the standard "no list named" error
    m = db.memberships.c
    counts: dict[int, dict[str, int]] = {item.id: dict.fromkeys(db.STATUSES, 0) for item in found}
    tally = select(m.list_id, m.status, func.count()).group_by(m.list_id, m.status)
    if name is not None:
        tally = tally.where(m.list_id == found[0].id)
    for list_id, status, count in conn.execute(tally):
        counts[list_id][status] = count
    return [ListSummary(item, counts[item.id]) for item in found]


def delete_list(conn: Connection, name: str) -> ListSummary:
    """Delete a list and its memberships (the subscribers stay: they may be on other lists).

    A list that issues were sent to stays: its campaigns and their delivery records refer to it.
    """
    summary = list_summaries(conn, name)[0]
    list_id = summary.list.id
    sent = campaigns.count_of_list(conn, list_id)
    if sent:
        raise SubscriberError(
            f"list {name!r} has {sent} campaign(s) on record and cannot be deleted: "
            "its send history refers to it"
        )
    memberships.forget_list(conn, list_id)
    lists.forget(conn, list_id)
    return summary


# -- subscribers ----------------------------------------------------------------------------------


def _subscriber(row: Any) -> Subscriber:
    return Subscriber(row.id, row.email, row.name, dict(row.attributes or {}), row.created_at)


def find_subscriber(conn: Connection, email: str) -> Subscriber:
    """The subscriber with this address (compared case-insensitively)."""
    row = subscribers.by_key(conn, email_key(normalise_email(email)))
    if row is None:
        raise SubscriberError(f"no subscriber with the address {email.strip()!r}")
    return _subscriber(row)


def check_details(name: str | None, attributes: dict[str, str]) -> None:
    """Raise SubscriberError if a name or attribute cannot be stored as given."""
    if name is not None and len(name) > NAME_MAX:
        raise SubscriberError(f"name longer than {NAME_MAX} characters")
    for key in attributes:
        if not key.strip():
            raise SubscriberError("an attribute needs a name")
        if key.strip().casefold() in RESERVED_ATTRIBUTES:
            raise SubscriberError(f"{key!r} is a subscriber field, not an attribute")


def subscribe(
    conn: Connection,
    *,
    list_id: int,
    email: str,
    now: datetime,
    name: str | None = None,
    attributes: dict[str, str] | None = None,
    source: str = "command",
    resubscribe: bool = False,
) -> Subscription:
    """Add an address to a list (creating the subscriber if new) and log it.

    Given explicitly, a name and attributes update a known subscriber's (attributes are merged).
    Someone who unsubscribed, bounced or complained is left alone unless `resubscribe`: their
    consent, or their mailbox, said no.
    """
    attributes = attributes or {}
    check_details(name, attributes)
    address = normalise_email(email)
    row = subscribers.by_key(conn, email_key(address))
    if row is None:
        subscriber_id = subscribers.add(
            conn, email=address, key=email_key(address), name=name, attributes=attributes, now=now
        )
    else:
        subscriber_id = row.id
        changes: dict[str, Any] = {}
        if name is not None and name != row.name:
            changes["name"] = name
        merged = {**(row.attributes or {}), **attributes}
        if merged != (row.attributes or {}):
            changes["attributes"] = merged
        if changes:
            subscribers.change(conn, subscriber_id, **changes)
    subscriber = _subscriber(subscribers.by_id(conn, subscriber_id))

    previous = memberships.status_of(conn, list_id, subscriber_id)
    if previous == db.SUBSCRIBED:
        return Subscription(subscriber, "unchanged", previous)
    if previous is not None and not resubscribe:
        return Subscription(subscriber, "skipped", previous)
    compare_and_set(
        conn,
        list_id=list_id,
        subscriber_id=subscriber_id,
        expected=previous,
        status=db.SUBSCRIBED,
        source=source,
        now=now,
    )
    return Subscription(subscriber, "added" if previous is None else "resubscribed", previous)


def unsubscribe(
    conn: Connection, *, list_id: int, email: str, now: datetime, source: str = "command"
) -> bool:
    """Mark an address unsubscribed from a list; False if it already was."""
    subscriber = find_subscriber(conn, email)
    previous = memberships.status_of(conn, list_id, subscriber.id)
    if previous is None:
        raise SubscriberError(f"{subscriber.email} is not on that list")
    return compare_and_set(
        conn,
        list_id=list_id,
        subscriber_id=subscriber.id,
        expected=previous,
        status=db.UNSUBSCRIBED,
        source=source,
        now=now,
    )


# The event that records an erasure: it keeps no trace of who was erased.
ERASED = "erased"


def erase_subscriber(conn: Connection, email: str, *, now: datetime) -> Erasure:
    """Delete everything we hold about a person (GDPR erasure), unlike unsubscribing, which keeps
    the record that they said no.

    Removes the subscriber, their memberships, their event log, the records of the mails sent to
    them alone (confirmations, welcomes, tests) and their sign-ups still queued; their delivery
    records stay with past sends (which count them) but with the address blanked, and the address
    is taken out of any provider answer recorded with a send. An address with no subscriber but
    such traces (a sign-up not taken yet, a test send) has them erased too. One anonymous "erased"
    event records that an erasure happened, and when.
    """
    address = normalise_email(email)
    key = email_key(address)
    row = subscribers.by_key(conn, key)
    left = events = deliveries = 0
    names: list[str] = []
    if row is not None:
        subscriber = _subscriber(row)
        address = subscriber.email
        names = [membership.list_name for membership in _memberships_of(conn, subscriber.id)]
        left, events = memberships.forget_subscribers(conn, [subscriber.id])
        deliveries = campaigns.anonymise(conn, subscriber.id)
        subscribers.forget(conn, [subscriber.id])
    if not _erase_traces(conn, address, key) and row is None:
        raise SubscriberError(f"no subscriber with the address {email.strip()!r}")
    memberships.log(conn, subscriber_id=None, list_id=None, status=ERASED, source="command", now=now)
    return Erasure(address, left, events, deliveries, names)


def _erase_traces(conn: Connection, address: str, key: str) -> int:
    """Delete the rows naming `address` that are no subscriber's (mail records, queued sign-ups) and
    take it out of recorded provider answers; how many rows held it."""
    # Imported here: the sign-ups build on the lists and subscribers of this module.
    from .signup import forget_queued

    found = messages.forget_address(conn, address, key) + forget_queued(conn, address, key)
    # A server's refusal quotes the address as it went on the wire (an IDNA domain in ASCII).
    on_the_wire = wire_address(address)
    return found + campaigns.forget_quoted(conn, {address, address.lower(), on_the_wire, on_the_wire.lower()})


# A sign-up that was never confirmed (issue 8's double opt-in) is no consent to keep an address:
# after this long it is deleted.
UNCONFIRMED_KEPT_FOR = timedelta(days=30)


@dataclass(frozen=True)
class Purge:
    memberships: int  # unconfirmed memberships deleted
    subscribers: int  # people deleted whole: they had nothing but those


def purge_unconfirmed(conn: Connection, *, now: datetime, kept_for: timedelta = UNCONFIRMED_KEPT_FOR) -> Purge:
    """Delete the memberships left unconfirmed for longer than `kept_for`, with their events, and
    the people who had nothing else (their record, log and mails: nothing of them is kept)."""
    before = now - kept_for
    ids = memberships.unconfirmed_before(conn, before)
    stale = people = 0
    # In chunks: a statement takes a bounded number of parameters.
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        stale += memberships.forget_unconfirmed(conn, chunk, before)
        orphans = subscribers.on_no_list(conn, chunk)
        memberships.forget_subscribers(conn, orphans)
        # Their confirmation mails' records name them too.
        messages.forget_sent_to(conn, subscribers.addresses_of(orphans))
        people += subscribers.forget(conn, orphans)
    return Purge(stale, people)


def subscriber_details(conn: Connection, email: str) -> SubscriberDetails:
    """A subscriber with their memberships and their whole event log (oldest first)."""
    subscriber = find_subscriber(conn, email)
    e, lists = db.events.c, db.lists.c
    events = [
        Event(row.created_at, row.name, row.status, row.previous_status, row.source, row.detail)
        for row in conn.execute(
            select(e.created_at, lists.name, e.status, e.previous_status, e.source, e.detail)
            .select_from(db.events.outerjoin(db.lists, lists.id == e.list_id))
            .where(e.subscriber_id == subscriber.id)
            .order_by(e.id)
        )
    ]
    return SubscriberDetails(subscriber, _memberships_of(conn, subscriber.id), events)


def _memberships_of(conn: Connection, subscriber_id: int) -> list[Membership]:
    """A subscriber's memberships, by list name."""
    m, lists = db.memberships.c, db.lists.c
    return [
        Membership(row.name, row.status, row.created_at, row.updated_at)
        for row in conn.execute(
            select(lists.name, m.status, m.created_at, m.updated_at)
            .join(db.lists, lists.id == m.list_id)
            .where(m.subscriber_id == subscriber_id)
            .order_by(lists.name)
        )
    ]


# -- selecting members ----------------------------------------------------------------------------


def read_pages(
    engine: Engine, query: Select[Any], key: ColumnElement[Any], *, page: int = 5000
) -> Iterator[Row[Any]]:
    """The rows of `query`, ordered by `key` (unique, and the query's first column), fetched a page
    per read-only transaction: memory stays flat for any list, and no read takes SQLite's write lock
    (the web server must be able to record an unsubscribe meanwhile)."""
    last = None
    while True:
        batch = query if last is None else query.where(key > last)
        with db.reading(engine) as conn:
            rows = conn.execute(batch.limit(page)).all()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1][0]


def iter_members(engine: Engine, list_id: int, status: str = db.SUBSCRIBED) -> Iterator[Member]:
    """A list's members with this status (by default, who gets its issues), by subscriber id, read a
    page at a time."""
    for row in read_pages(engine, members_query(list_id, status=status), db.subscribers.c.id):
        yield Member(row.subscriber_id, row.email, row.name)


def _membership_filter(list_id: int | None, status: str | None) -> list[Any]:
    m = db.memberships.c
    conditions = []
    if list_id is not None:
        conditions.append(m.list_id == list_id)
    if status is not None:
        if status not in db.STATUSES:
            raise SubscriberError(f"unknown status {status!r} (one of: {', '.join(db.STATUSES)})")
        conditions.append(m.status == status)
    return conditions


def iter_memberships(
    engine: Engine, *, list_id: int | None = None, status: str | None = None, limit: int | None = None
) -> Iterator[MembershipRow]:
    """Memberships by subscriber, then list; unfiltered, subscribers on no list appear too.

    Read a page per transaction, like iter_members.
    """
    m, s, lists = db.memberships.c, db.subscribers.c, db.lists.c
    conditions = _membership_filter(list_id, status)
    joined = db.subscribers.join(db.memberships, m.subscriber_id == s.id, isouter=not conditions).join(
        db.lists, lists.id == m.list_id, isouter=not conditions
    )
    list_name = func.coalesce(lists.name, "")
    query = (
        select(s.id, s.email, s.name, lists.name.label("list_name"), m.status, m.updated_at)
        .select_from(joined)
        .where(*conditions)
        .order_by(s.id, list_name)
    )
    page, seen, after = 5000, 0, None
    while limit is None or seen < limit:
        size = page if limit is None else min(page, limit - seen)
        batch = query if after is None else query.where(tuple_(s.id, list_name) > tuple_(*after))
        with engine.connect() as conn:
            rows = conn.execute(batch.limit(size)).all()
        for row in rows:
            yield MembershipRow(row.id, row.email, row.name, row.list_name, row.status, row.updated_at)
        seen += len(rows)
        if len(rows) < size:
            return
        after = (rows[-1].id, rows[-1].list_name or "")


def count_subscribers(conn: Connection, *, list_id: int | None = None, status: str | None = None) -> int:
    """How many subscribers are on the list (any list, unfiltered: everyone) with that status."""
    conditions = _membership_filter(list_id, status)
    if not conditions:
        return conn.execute(select(func.count()).select_from(db.subscribers)).scalar_one()
    m = db.memberships.c
    return conn.execute(
        select(func.count(func.distinct(m.subscriber_id))).where(and_(*conditions))
    ).scalar_one()
