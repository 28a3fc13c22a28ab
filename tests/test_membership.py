"""Membership rules (newsletter/membership.py): which moves each source may make, the strength order,
the compare-and-set under a concurrent change, its set-based twin, and the audience query. Asserted on
the memberships and the event log of a real SQLite file."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import String, cast, literal, select
from sqlalchemy.engine import Engine

from newsletter import db
from newsletter.config import Settings
from newsletter.membership import (
    STRENGTH,
    TRANSITIONS,
    compare_and_set,
    compare_and_set_many,
    members_query,
    set_status,
)
from newsletter.subscribers import create_list, subscribe
from testkit.projects import engine_of

LIST = 1
A, B, C, D = "a@example.com", "b@example.com", "c@example.com", "d@example.com"


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = engine_of(settings)
    with engine.begin() as conn:
        create_list(conn, "daily", now=settings.clock())
    return engine


def add(engine: Engine, settings: Settings, email: str, status: str = db.SUBSCRIBED) -> int:
    """A member of the list with this status, put there as the rules allow: the operator adds them,
    then unsubscribes them or the provider suppresses them."""
    with engine.begin() as conn:
        subscriber_id = subscribe(conn, list_id=LIST, email=email, now=settings.clock()).subscriber.id
        source = "command" if status == db.UNSUBSCRIBED else "webhook"
        set_status(
            conn, list_id=LIST, subscriber_id=subscriber_id, status=status, source=source, now=settings.clock()
        )
    return subscriber_id


def status_of(engine: Engine, subscriber_id: int) -> str | None:
    m = db.memberships.c
    with engine.connect() as conn:
        return conn.execute(
            select(m.status).where(m.list_id == LIST, m.subscriber_id == subscriber_id)
        ).scalar()


def events_of(engine: Engine, subscriber_id: int) -> list[tuple[str | None, str, str, str]]:
    e = db.events.c
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                select(e.previous_status, e.status, e.source, e.detail)
                .where(e.subscriber_id == subscriber_id)
                .order_by(e.id)
            )
        ]


@pytest.mark.parametrize(
    ("source", "before", "after", "allowed"),
    [
        # The reader leaves, and may undo only their own leaving.
        ("one_click", db.SUBSCRIBED, db.UNSUBSCRIBED, True),
        ("one_click", db.UNSUBSCRIBED, db.SUBSCRIBED, False),
        ("one_click", db.BOUNCED, db.UNSUBSCRIBED, False),
        ("unsubscribe_page", db.SUBSCRIBED, db.UNSUBSCRIBED, True),
        ("unsubscribe_page", db.UNSUBSCRIBED, db.SUBSCRIBED, True),
        ("unsubscribe_page", db.BOUNCED, db.SUBSCRIBED, False),
        ("unsubscribe_page", db.COMPLAINED, db.SUBSCRIBED, False),
        # The provider only ever strengthens a suppression.
        ("webhook", db.SUBSCRIBED, db.BOUNCED, True),
        ("webhook", db.UNSUBSCRIBED, db.COMPLAINED, True),
        ("webhook", db.COMPLAINED, db.BOUNCED, False),
        ("provider_sync", db.BOUNCED, db.UNSUBSCRIBED, False),
        ("provider_sync", db.UNSUBSCRIBED, db.SUBSCRIBED, False),
        # The operator re-subscribes whoever said no (only when asked: subscribe's --resubscribe).
        ("command", db.COMPLAINED, db.SUBSCRIBED, True),
        ("command", db.SUBSCRIBED, db.UNSUBSCRIBED, True),
        ("import", db.BOUNCED, db.SUBSCRIBED, True),
        ("import", db.SUBSCRIBED, db.UNSUBSCRIBED, False),
    ],
)
def test_a_move_is_made_and_logged_only_if_its_source_may_make_it(
    engine: Engine, settings: Settings, source: str, before: str, after: str, allowed: bool
) -> None:
    reader = add(engine, settings, A, before)
    logged = events_of(engine, reader)
    with engine.begin() as conn:
        changed = compare_and_set(
            conn, list_id=LIST, subscriber_id=reader, expected=before, status=after, source=source,
            now=settings.clock(), detail="why",
        )  # fmt: skip

    assert changed is allowed
    assert status_of(engine, reader) == (after if allowed else before)
    assert events_of(engine, reader) == logged + ([(before, after, source, "why")] if allowed else [])


def test_strength_orders_the_statuses_and_providers_only_strengthen() -> None:
    assert STRENGTH[db.SUBSCRIBED] < STRENGTH[db.UNSUBSCRIBED] < STRENGTH[db.BOUNCED] < STRENGTH[db.COMPLAINED]
    assert STRENGTH[db.UNCONFIRMED] == STRENGTH[db.SUBSCRIBED]
    for provider in ("webhook", "provider_sync"):
        assert TRANSITIONS[provider] == {
            (old, new) for old in STRENGTH for new in STRENGTH if STRENGTH[old] < STRENGTH[new]
        }
    # Nobody but an operator or the reader moves a membership back to subscribed.
    back = {source for source, moves in TRANSITIONS.items() if any(old and new == db.SUBSCRIBED for old, new in moves)}
    assert back == {"unsubscribe_page", "command", "import", "confirmation"}
    # A sign-up subscribes at once only an address new to the list (a single opt-in list's).
    assert {move for move in TRANSITIONS["signup"] if move[1] == db.SUBSCRIBED} == {(None, db.SUBSCRIBED)}


def test_a_sign_up_waits_unconfirmed_receiving_nothing_until_confirmed(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        reader = subscribe(conn, list_id=LIST, email=A, now=settings.clock()).subscriber.id
        conn.execute(db.memberships.delete())  # a known address, not on the list yet
        joined = compare_and_set(
            conn, list_id=LIST, subscriber_id=reader, expected=None, status=db.UNCONFIRMED, source="signup",
            now=settings.clock(),
        )  # fmt: skip
        unsent = conn.execute(members_query(LIST)).all()
        early = compare_and_set(
            conn, list_id=LIST, subscriber_id=reader, expected=db.UNCONFIRMED, status=db.SUBSCRIBED,
            source="unsubscribe_page", now=settings.clock(),
        )  # fmt: skip
        confirmed = compare_and_set(
            conn, list_id=LIST, subscriber_id=reader, expected=db.UNCONFIRMED, status=db.SUBSCRIBED,
            source="confirmation", now=settings.clock(),
        )  # fmt: skip
        sent = conn.execute(members_query(LIST)).all()

    assert (joined, early, confirmed) == (True, False, True)
    assert unsent == [] and [tuple(row) for row in sent] == [(reader, A, None)]
    assert events_of(engine, reader)[-2:] == [
        (None, db.UNCONFIRMED, "signup", ""),
        (db.UNCONFIRMED, db.SUBSCRIBED, "confirmation", ""),
    ]


def test_a_change_made_since_the_status_was_read_wins(engine: Engine, settings: Settings) -> None:
    # The web server reads a membership without a lock, then changes it: a bounce committed in
    # between must not be overwritten by the reader's unsubscribe.
    reader = add(engine, settings, A)
    with db.reading(engine) as conn:
        seen = conn.execute(
            select(db.memberships.c.status).where(db.memberships.c.subscriber_id == reader)
        ).scalar_one()
    with engine.begin() as conn:
        set_status(
            conn, list_id=LIST, subscriber_id=reader, status=db.BOUNCED, source="webhook", now=settings.clock()
        )
    with engine.begin() as conn:
        late = compare_and_set(
            conn, list_id=LIST, subscriber_id=reader, expected=seen, status=db.UNSUBSCRIBED, source="one_click",
            now=settings.clock(),
        )  # fmt: skip

    assert (seen, late) == (db.SUBSCRIBED, False)
    assert status_of(engine, reader) == db.BOUNCED
    assert [event[:3] for event in events_of(engine, reader)] == [
        (None, db.SUBSCRIBED, "command"),
        (db.SUBSCRIBED, db.BOUNCED, "webhook"),
    ]


def test_the_set_based_twin_follows_the_same_rules(engine: Engine, settings: Settings) -> None:
    lapsed = add(engine, settings, A, db.UNSUBSCRIBED)
    complained = add(engine, settings, B, db.COMPLAINED)
    bystander = add(engine, settings, C)
    with engine.begin() as conn:
        newcomer = subscribe(conn, list_id=LIST, email=D, now=settings.clock()).subscriber.id
        conn.execute(db.memberships.delete().where(db.memberships.c.subscriber_id == newcomer))
    since = settings.clock()
    with engine.begin() as conn:  # B's complaint came after `since`: the newer word stands
        conn.execute(
            db.memberships.update()
            .where(db.memberships.c.subscriber_id == complained)
            .values(updated_at=since + timedelta(minutes=1))
        )
    s = db.subscribers.c
    rows = select(s.id.label("subscriber_id"), (literal("file.csv line ") + cast(s.id, String)).label("detail"))
    now = settings.clock()

    with engine.begin() as conn:
        by_provider = compare_and_set_many(
            conn, list_id=LIST, rows=rows, expected=db.STATUSES, status=db.SUBSCRIBED, source="webhook", now=now
        )
        lifted = compare_and_set_many(
            conn, list_id=LIST, rows=rows, expected=db.STATUSES, status=db.SUBSCRIBED, source="import", now=now,
            unchanged_since=since,
        )  # fmt: skip
        joined = compare_and_set_many(
            conn, list_id=LIST, rows=rows, expected=[None], status=db.SUBSCRIBED, source="import", now=now
        )

    assert (by_provider, lifted, joined) == (0, 1, 1)
    assert [status_of(engine, i) for i in (lapsed, complained, bystander, newcomer)] == [
        db.SUBSCRIBED, db.COMPLAINED, db.SUBSCRIBED, db.SUBSCRIBED
    ]  # fmt: skip
    assert events_of(engine, lapsed)[-1] == (db.UNSUBSCRIBED, db.SUBSCRIBED, "import", f"file.csv line {lapsed}")
    assert events_of(engine, newcomer)[-1] == (None, db.SUBSCRIBED, "import", f"file.csv line {newcomer}")
    assert (len(events_of(engine, complained)), len(events_of(engine, bystander))) == (2, 1)


def test_an_unknown_status_or_source_is_a_mistake(engine: Engine, settings: Settings) -> None:
    reader = add(engine, settings, A)
    with engine.begin() as conn:
        for status, source in (("paused", "command"), (db.UNSUBSCRIBED, "somebody")):
            with pytest.raises(ValueError):
                set_status(
                    conn, list_id=LIST, subscriber_id=reader, status=status, source=source, now=settings.clock()
                )
