"""The database: one schema for SQLite (the default) and PostgreSQL, written through SQLAlchemy Core.

The tool creates and upgrades its own schema: `schema_version` holds the number of migrations
applied, and `migrate` applies the missing ones in order, each in its own transaction.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import time
from datetime import datetime, timezone
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Insert,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import (
    ArgumentError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)

from .addresses import email_key, folds_like_its_key
from .errors import ConfigError, DatabaseCorrupt, DatabaseError
from .sections import Database

_log = logging.getLogger(__name__)

metadata = MetaData()

TS = DateTime(timezone=True)

# The tables whose ids leave the database (lists, subscribers, campaigns: in unsubscribe links and
# the provider's tags) take AUTOINCREMENT on SQLite: without it a deleted row's id goes to the next
# new row, and an old link or a late webhook event would act on whoever got it. PostgreSQL's SERIAL
# sequences never hand out an id twice already.

# A list's opt-in mode: "double" (the default) makes a sign-up confirm by mail before anything is
# sent; "single" subscribes at once.
DOUBLE_OPTIN, SINGLE_OPTIN = "double", "single"
OPT_IN = (DOUBLE_OPTIN, SINGLE_OPTIN)

# How often a member gets the list's issues: every daily issue, or the weekly edition instead.
DAILY, WEEKLY = "daily", "weekly"
FREQUENCIES = (DAILY, WEEKLY)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

lists = Table(
    "lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", TS, nullable=False),
    # How readers who sign up themselves join (OPT_IN): after confirming by mail, or at once.
    Column("optin", String(10), nullable=False, server_default=DOUBLE_OPTIN),
    sqlite_autoincrement=True,
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False),
    # The address as compared: unique case-insensitively, whatever case the reader typed.
    Column("email_key", String(320), nullable=False, unique=True),
    Column("name", String(500)),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("created_at", TS, nullable=False),
    sqlite_autoincrement=True,
)

# Unsubscribe links made before links were bound to the reader's address (schema version 3) must keep
# working, but only for the subscribers who could have been sent one: ids up to this (one row).
legacy_links = Table(
    "legacy_unsubscribe_links", metadata, Column("max_subscriber_id", Integer, nullable=False)
)

# Membership statuses, as stored; what they mean and who may change them is in membership.py. Only
# "subscribed" receives mail; "unconfirmed" is a sign-up waiting for its confirmation.
SUBSCRIBED, UNSUBSCRIBED, BOUNCED, COMPLAINED = "subscribed", "unsubscribed", "bounced", "complained"
UNCONFIRMED = "unconfirmed"
STATUSES = (SUBSCRIBED, UNCONFIRMED, UNSUBSCRIBED, BOUNCED, COMPLAINED)

memberships = Table(
    "memberships",
    metadata,
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    Column(
        "subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False
    ),
    Column("status", String(20), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("frequency", String(10), nullable=False, server_default=DAILY),
    # The reader's consent, when they gave it themselves (a confirmed or single opt-in sign-up): when,
    # how, and from which address only if record_consent_ip is set.
    Column("consent_at", TS),
    Column("consent_source", String(40)),
    Column("consent_ip", String(45)),
    PrimaryKeyConstraint("list_id", "subscriber_id"),
    Index("ix_memberships_list_status", "list_id", "status"),
)

# Append-only: rows are inserted, never updated. An erased subscriber's rows go with them.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE")),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="SET NULL")),
    Column("status", String(20), nullable=False),
    Column("previous_status", String(20)),
    # Who made the change: one of membership.TRANSITIONS' sources ("command" for an erasure).
    Column("source", String(30), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("created_at", TS, nullable=False),
    Index("ix_events_subscriber", "subscriber_id"),
    # The report's unsubscribes: a list's leavers in the days after each issue.
    Index("ix_events_list_status_created", "list_id", "status", "created_at"),
)

# The provider's suppression lists (subscribers sync): the newest `created` timestamp seen per list.
sync_state = Table(
    "sync_state",
    metadata,
    Column("kind", String(40), primary_key=True),
    Column("last_created", Integer, nullable=False),
)

# Event idempotency: the provider retries and repeats events; each event id counts once.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("received_at", TS, nullable=False),
    # Rows older than the provider's retry window are pruned (webhook.py) along this index.
    Index("ix_webhook_events_received", "received_at"),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("issue_date", String(10), nullable=False),
    Column("list_id", Integer, ForeignKey("lists.id"), nullable=False),
    Column("subject", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("finished_at", TS),
    # "daily": issue_date is the digest's date (2026-01-23); "weekly": the ISO week (2026-W04).
    Column("edition", String(10), nullable=False, server_default=DAILY),
    UniqueConstraint("issue_date", "list_id"),
    sqlite_autoincrement=True,
)

# Delivered, open and click events from the webhook, counted per campaign.
campaign_stats = Table(
    "campaign_stats",
    metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(30), nullable=False),
    Column("count", Integer, nullable=False, default=0),
    PrimaryKeyConstraint("campaign_id", "event"),
)

# What each reader of a campaign did, for the report (report.py): unique opens, clicks (and on which
# paper's link), bounces, spam reports and unsubscribes are distinct readers, so each event's reader
# is kept, as the subscriber id its address had when the event came (an id is no address: like
# deliveries, the rows outlive an erasure, and the id is never handed out again). Written from each
# event id once, as campaign_stats is (webhook.py).
campaign_events = Table(
    "campaign_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("subscriber_id", Integer, nullable=False),
    Column("kind", String(30), nullable=False),
    # An open the provider took for a machine's (Apple Mail Privacy Protection fetches every image).
    Column("machine_open", Boolean, nullable=False),
    Column("url", Text, nullable=False),  # the link a click followed; "" for other kinds
    Column("at", TS, nullable=False),  # when it first happened, as the provider says
    # One row per fact, however often it is reported (a reader who opens five times is one open
    # row), so that the report counts readers as index entries, from this index alone; the link
    # before the reader, so that a paper's clicks are found by its links.
    UniqueConstraint("campaign_id", "kind", "machine_open", "url", "subscriber_id", name="uq_campaign_events_fact"),
)

# Whether a campaign's mail carried open and click tracking, recorded when it is created: without
# tracking the provider reports no opens or clicks, which the report must not show as zeros.
campaign_tracking = Table(
    "campaign_tracking",
    metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("opens", Boolean, nullable=False),
    Column("clicks", Boolean, nullable=False),
)

# Delivery states (newsletter/campaigns.py has the state machine). A finished send leaves every recipient
# sent, failed (the provider refused the address), uncertain (the request may have left but its answer
# was never recorded) or skipped (no longer subscribed when its batch was built).
PENDING, IN_FLIGHT, SENT, FAILED, UNCERTAIN, SKIPPED = (
    "pending", "in_flight", "sent", "failed", "uncertain", "skipped"
)
# Batch states besides those: SPLIT (answered 400/413: its recipients went out again in parts),
# RETURNED (answered without accepting anything, e.g. 401 or an outage: its recipients are pending
# again), RESENT (was uncertain; its recipients were queued again by --resend-uncertain),
# SKIPPED (every recipient left the list before its retry went out).
SPLIT, RETURNED, RESENT = "split", "returned", "resent"

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(20), nullable=False),
    Column("size", Integer, nullable=False),
    Column("message_id", String(200)),
    Column("error", Text),
    Column("started_at", TS),
    Column("finished_at", TS),
    Index("ix_batches_campaign_state", "campaign_id", "state"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    # Not a foreign key: an erased subscriber's delivery record stays (anonymised) with the send.
    Column("subscriber_id", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("batch_id", Integer, ForeignKey("batches.id")),
    Column("state", String(20), nullable=False),
    Column("message_id", String(200)),
    Column("error", Text),
    Column("updated_at", TS, nullable=False),
    UniqueConstraint("campaign_id", "subscriber_id"),
    # With id last, the sender's "next pending rows by id" walks the index instead of sorting every
    # pending row of the campaign for every batch (PostgreSQL did).
    Index("ix_deliveries_campaign_state_id", "campaign_id", "state", "id"),
    Index("ix_deliveries_batch", "batch_id"),
)


# One-off messages to one address (a test send, a sign-up's confirmation, a welcome), each under an
# idempotency key that says what it is for, so that it goes out at most once whoever asks again.
# States as a delivery's: in_flight before the request leaves, then sent, failed or uncertain; pending
# when a try certainly sent nothing (another try may send it). Owned by store/messages.py.
messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("email", String(320), nullable=False),
    Column("subject", Text, nullable=False),
    Column("state", String(20), nullable=False),
    Column("message_id", String(200)),
    Column("error", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    sqlite_autoincrement=True,
)


# One holder at a time for a named piece of work, across hosts sharing a PostgreSQL database: the
# daily run ("daily-run") and the send of each campaign ("campaign:<id>"). Owned by store/lease.py.
leases = Table(
    "leases",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),  # "pid@host#space#nonce"
    Column("acquired_at", TS, nullable=False),
    Column("heartbeat_at", TS, nullable=False),
)


# Sign-ups per client, for signup_rate_per_hour: the address is kept as a keyed hash, never as typed,
# and rows older than an hour are pruned as new ones come.
signup_attempts = Table(
    "signup_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client", String(64), nullable=False),
    Column("at", TS, nullable=False),
    Index("ix_signup_attempts_client_at", "client", "at"),
)


# Sign-ups from the form wait here until the server's queue takes them (signup.py): the form's
# answer records one row whatever the address's state, and what it calls for is decided later.
signup_requests = Table(
    "signup_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("name", String(500)),
    Column("frequency", String(10), nullable=False),
    Column("received_at", TS, nullable=False),
)


# What a language model made of a paper (generate.py), once per paper, model, language and prompt
# version: generating a day again calls no model for what it has already summarised.
summaries = Table(
    "summaries",
    metadata,
    Column("paper_id", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("language", String(35), nullable=False),
    Column("prompt_version", String(64), nullable=False),
    Column("sections", JSON, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    PrimaryKeyConstraint("paper_id", "model", "language", "prompt_version"),
)


# A day's issue held for an editor's approval (review.py): sent to the editors as a test, then approved.
reviews = Table(
    "reviews",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("digest_sha256", String(64), nullable=False),
    Column("tested_at", TS, nullable=False),
    Column("approved_at", TS),
)


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn)


def _create_messages(conn: Connection) -> None:
    messages.create(conn, checkfirst=True)  # a database made since has it already


# Append only. Never edit a migration that has shipped: add the next one.
def _index_deliveries_by_id(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_campaign_state")
    [index] = [i for i in deliveries.indexes if i.name == "ix_deliveries_campaign_state_id"]
    index.create(conn, checkfirst=True)


def _never_reuse_issued_ids(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        _autoincrement(conn, lists)
        # Deliveries keep an erased reader's id (and the provider's events carry it): never hand it out again.
        _autoincrement(conn, subscribers, deliveries.c.subscriber_id)
        _autoincrement(conn, campaigns)
    legacy_links.create(conn, checkfirst=True)
    if conn.execute(select(legacy_links)).first() is None:
        issued = conn.execute(select(func.max(subscribers.c.id))).scalar() or 0
        conn.execute(legacy_links.insert().values(max_subscriber_id=issued))


def _create_campaign_events(conn: Connection) -> None:
    # A database made since has them already.
    campaign_events.create(conn, checkfirst=True)
    campaign_tracking.create(conn, checkfirst=True)
    [index] = [i for i in events.indexes if i.name == "ix_events_list_status_created"]
    index.create(conn, checkfirst=True)


# The daily run's lock as migration 5 made it; migration 11 makes it one of the leases.
_run_locks = Table(
    "run_locks",
    MetaData(),
    Column("name", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", TS, nullable=False),
    Column("heartbeat_at", TS, nullable=False),
)


def _create_run_locks(conn: Connection) -> None:
    if not inspect(conn).has_table(leases.name):  # a database made since has the leases instead
        _run_locks.create(conn, checkfirst=True)


def _add_signup(conn: Connection) -> None:
    # Columns with defaults, so that every existing list is double opt-in, every member daily and
    # every campaign a daily issue; a database made since has them already.
    for table, names in ((lists, ["optin"]), (campaigns, ["edition"]), (memberships, ["frequency", "consent_at", "consent_source", "consent_ip"])):
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        for name in names:
            if name not in present:
                column = table.c[name]
                kind = column.type.compile(conn.dialect)
                default = f" DEFAULT '{column.server_default.arg}'" if column.server_default is not None else ""
                null = "" if column.nullable else " NOT NULL"
                conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {kind}{null}{default}')
    signup_attempts.create(conn, checkfirst=True)


def _queue_signups_and_key_addresses_exactly(conn: Connection) -> None:
    signup_requests.create(conn, checkfirst=True)  # a database made since has it already
    # Keys were the address case-folded, which made "straße@" and "strasse@" one subscriber. Each
    # row's key becomes addresses.email_key of its address; a row cannot show whether it stood for
    # two people (the second one's address was never stored), so those that may have are reported.
    rows = conn.execute(select(subscribers.c.id, subscribers.c.email, subscribers.c.email_key)).all()
    new_keys = {row.id: email_key(row.email) for row in rows}
    kept = {row.email_key for row in rows if new_keys[row.id] == row.email_key}
    for row in rows:
        new_key = new_keys[row.id]
        if new_key != row.email_key and new_key not in kept:
            conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(email_key=new_key))
            kept.add(new_key)
        elif new_key != row.email_key:
            _log.warning("subscriber %d keeps its old address key: another subscriber has the new one", row.id)
        if not folds_like_its_key(row.email):
            _log.warning(
                "subscriber %d: until now an address differing from theirs beyond ASCII letters' case "
                "was taken as theirs; check their sign-ups (newsletter subscribers show)",
                row.id,
            )


def _generate_and_review(conn: Connection) -> None:
    # A database made since has them already.
    summaries.create(conn, checkfirst=True)
    reviews.create(conn, checkfirst=True)


# The first provider's own words, as stored before the provider seam: its event names (campaign_stats,
# campaign_events), and the source of its suppression lists' changes (events). Written out here, not
# taken from the providers: a shipped migration never changes.
_FIRST_PROVIDER_KINDS = {
    "bounce": "bounced",
    "open": "opened",
    "click": "clicked",
    "spamreport": "spam_report",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "group_resubscribe": "resubscribed",
}
_NEUTRAL_KINDS = frozenset(
    {"processed", "delivered", "deferred", "dropped", *_FIRST_PROVIDER_KINDS.values(), "other"}
)


def _neutral_provider_names(conn: Connection) -> None:
    if "sg_event_id" in {column["name"] for column in inspect(conn).get_columns(webhook_events.name)}:
        conn.exec_driver_sql("ALTER TABLE webhook_events RENAME COLUMN sg_event_id TO event_id")
    conn.execute(events.update().where(events.c.source == "sendgrid_sync").values(source="provider_sync"))
    # campaign_stats is a few rows per campaign: rewritten whole, the counts of kinds that become
    # one added up (a kind no provider's map knows is counted as "other").
    stats = campaign_stats.c
    counts: dict[tuple[int, str], int] = {}
    for campaign_id, event, count in conn.execute(select(stats.campaign_id, stats.event, stats.count)).all():
        kind = _FIRST_PROVIDER_KINDS.get(event, event if event in _NEUTRAL_KINDS else "other")
        counts[(campaign_id, kind)] = counts.get((campaign_id, kind), 0) + count
    conn.execute(campaign_stats.delete())
    if counts:
        conn.execute(
            campaign_stats.insert(),
            [{"campaign_id": c, "event": kind, "count": n} for (c, kind), n in counts.items()],
        )
    # campaign_events holds a row per reader's fact: renamed in place, a fact the new name already
    # has (a reader who left by both of the old kinds) kept once.
    facts = campaign_events.c
    same = campaign_events.alias("same")
    for old, new in _FIRST_PROVIDER_KINDS.items():
        duplicate = (
            select(same.c.id)
            .where(
                same.c.kind == new,
                same.c.campaign_id == facts.campaign_id,
                same.c.machine_open == facts.machine_open,
                same.c.url == facts.url,
                same.c.subscriber_id == facts.subscriber_id,
            )
            .exists()
        )
        conn.execute(campaign_events.delete().where(facts.kind == old, duplicate))
        conn.execute(campaign_events.update().where(facts.kind == old).values(kind=new))


def _one_lease(conn: Connection) -> None:
    # The run lock's rows and the campaigns' send claims (claimed_by, claimed_at) become leases; a
    # database made since has only the leases.
    leases.create(conn, checkfirst=True)
    if inspect(conn).has_table(_run_locks.name):
        conn.execute(leases.insert().from_select(list(_run_locks.c.keys()), select(_run_locks)))
        _run_locks.drop(conn)
    if "claimed_by" in {column["name"] for column in inspect(conn).get_columns(campaigns.name)}:
        claimed = Table(campaigns.name, MetaData(), Column("id", Integer), Column("claimed_by", String(100)), Column("claimed_at", TS))
        claims = conn.execute(
            select(claimed).where(claimed.c.claimed_by.is_not(None), claimed.c.claimed_at.is_not(None))
        ).all()
        if claims:
            conn.execute(
                leases.insert(),
                [{"name": f"campaign:{id_}", "holder": by, "acquired_at": at, "heartbeat_at": at} for id_, by, at in claims],
            )
        conn.exec_driver_sql("ALTER TABLE campaigns DROP COLUMN claimed_by")
        conn.exec_driver_sql("ALTER TABLE campaigns DROP COLUMN claimed_at")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_all,
    _index_deliveries_by_id,
    _never_reuse_issued_ids,
    _create_messages,
    _create_campaign_events,
    _create_run_locks,
    _add_signup,
    _queue_signups_and_key_addresses_exactly,
    _generate_and_review,
    _neutral_provider_names,
    _one_lease,
]


def _autoincrement(conn: Connection, table: Table, *also_issued: Column[int]) -> None:
    """Give a SQLite table AUTOINCREMENT, its counter past every id it or `also_issued` has used.

    SQLite cannot add it to a table: the table is rebuilt as https://www.sqlite.org/lang_altertable.html
    ("Making Other Kinds Of Table Schema Changes") describes, in the transaction `_migrating` opens
    with foreign keys off. A database made by this version already has it (made by `_create_all`).
    """
    made_as = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": table.name}
    ).scalar_one()
    if "AUTOINCREMENT" not in made_as.upper():
        # Built from a copy of the whole schema, so that its foreign keys resolve.
        scratch = MetaData()
        for each in metadata.sorted_tables:
            each.to_metadata(scratch)
        rebuilt = table.to_metadata(scratch, name=f"{table.name}_rebuilt")
        rebuilt.create(conn)
        # Only the columns it has: a later migration adds the others (the rebuilt table's defaults fill them).
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        kept = [column for column in table.c if column.name in present]
        conn.execute(rebuilt.insert().from_select([c.name for c in kept], select(*kept)))
        table.drop(conn)
        conn.exec_driver_sql(f'ALTER TABLE "{rebuilt.name}" RENAME TO "{table.name}"')
        for index in table.indexes:
            index.create(conn)
    used = [conn.execute(select(func.max(column))).scalar() or 0 for column in (table.c.id, *also_issued)]
    counter = conn.execute(
        text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table.name}
    ).scalar()
    conn.execute(text("DELETE FROM sqlite_sequence WHERE name = :name"), {"name": table.name})
    conn.execute(
        text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"),
        {"name": table.name, "seq": max(*used, counter or 0)},
    )

# pg_advisory_xact_lock key serialising migrations across processes ("nl-mig").
_MIGRATION_LOCK = 0x6E6C2D6D6967
# Execution option of a read-only connection (see `reading`).
_READ_ONLY = "newsletter_read_only"


def connect(database: Database) -> Engine:
    """A new engine for the configured database, its schema brought up to date. The caller owns it:
    a command, the web server or the daily run makes one and hands it to every part that needs the
    database, then disposes of it (`connected` does both)."""
    engine = _create_engine(database.url, database.timeout)
    try:
        migrate(engine, on_create=database.on_create)
    except BaseException:  # the caller gets no engine to dispose of: its pool is closed here
        engine.dispose()
        raise
    return engine


@contextmanager
def connected(database: Database) -> Iterator[Engine]:
    """`connect`, disposed of when the block ends."""
    engine = connect(database)
    try:
        yield engine
    finally:
        engine.dispose()


def safe_url(url: str) -> str:
    """The database URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(the configured database_url)"


def _create_engine(url: str, timeout: float) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        # SQLAlchemy's message quotes the URL, password and all.
        raise ConfigError(
            "bad setting 'database_url' (NEWSLETTER_DATABASE_URL): not a database URL; expected "
            "sqlite:///path/to/file.db or postgresql://user@host/database"
        ) from None
    try:
        if parsed.get_backend_name() != "sqlite":
            postgresql = parsed.get_backend_name() == "postgresql"
            connect_args = {"connect_timeout": max(1, round(timeout))} if postgresql else {}
            engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        else:
            if parsed.database and parsed.database != ":memory:":
                folder = Path(parsed.database).parent
                # Never made here: a mistyped path would quietly start an empty database elsewhere.
                if not folder.is_dir():
                    raise ConfigError(
                        f"bad setting 'database_url' (NEWSLETTER_DATABASE_URL): the folder {folder} does "
                        "not exist; check the path, or create the folder"
                    )
            engine = create_engine(url, connect_args={"timeout": timeout})
            _sqlite_session(engine, timeout)
    except NoSuchModuleError:
        raise ConfigError(
            f"bad setting 'database_url' (NEWSLETTER_DATABASE_URL): {safe_url(url)} is not a kind of "
            "database this tool knows; use sqlite:///path/to/file.db or postgresql://user@host/database"
        ) from None
    except ImportError as error:
        raise ConfigError(
            f"bad setting 'database_url' (NEWSLETTER_DATABASE_URL): {safe_url(url)} needs a database "
            f"driver that is not installed ({error}); for PostgreSQL: pip install 'psycopg[binary]'"
        ) from None
    _report_failures(engine, safe_url(url), timeout)
    return engine


# SQLite's primary result codes for a file that is not a database, or a damaged one: extended codes
# (SQLITE_CORRUPT_INDEX…) carry them in their low byte.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _report_failures(engine: Engine, shown_url: str, timeout: float) -> None:
    """Turn the database's operational failures (unreachable, locked past the timeout, disk full)
    into one DatabaseError naming the database, and a SQLite file that is no database or a damaged
    one into a DatabaseCorrupt naming the file, instead of a traceback carrying SQL and parameters.
    Integrity errors and the like stay as they are: the code that expects them handles them."""

    @event.listens_for(engine, "handle_error")
    def _one_line(context: ExceptionContext) -> None:
        original = context.original_exception
        if (getattr(original, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise DatabaseCorrupt(
                f"{engine.url.database}: cannot be read as a SQLite database ({original}): a damaged or "
                "truncated database, or another kind of file; restore it from a backup, or set "
                "database_url to the right file"
            ) from original
        if not isinstance(context.sqlalchemy_exception, (OperationalError, InterfaceError)):
            return
        reason = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
        if "database is locked" in reason:
            reason = f"{reason}: another process held it for longer than database_timeout ({timeout:g} s)"
        raise DatabaseError(f"the database {shown_url} failed: {reason}") from original


def schema_version_of(url: str, timeout: float) -> int:
    """The schema version of the database at `url` (0: none), read without migrating it; waits no
    longer than `timeout` for a connection. DatabaseError when it cannot be read."""
    engine = _create_engine(url, timeout)
    try:
        with reading(engine) as conn:
            if not inspect(conn).has_table(schema_version.name):
                return 0
            return conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
    finally:
        engine.dispose()


def addressed_to(conn: Connection, table: Table, address: str, key: str) -> list[int]:
    """The ids of `table`'s rows whose `email` is the person's whose address key is `key`, however
    it was written there (as stored, or typed in another case): what an erasure deletes."""
    spellings = select(table.c.id, table.c.email).where(func.lower(table.c.email) == func.lower(address))
    return [row.id for row in conn.execute(spellings) if email_key(row.email) == key]


@functools.cache
def _dialect_insert(dialect: str) -> Callable[[Table], Any]:
    # Imported at first use: PostgreSQL's dialect is a twentieth of a send's imports, and a project
    # on SQLite never needs it.
    return importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert


def insert_ignoring(dialect: str, table: Table, *, index_elements: list[str] | None = None) -> Insert:
    """INSERT into `table` that inserts nothing where a row with the same key exists (ON CONFLICT DO
    NOTHING, which SQLite and PostgreSQL both have, each in its own dialect): for rows that two
    processes may add at once."""
    return _dialect_insert(dialect)(table).on_conflict_do_nothing(index_elements=index_elements)


def aware(moment: datetime) -> datetime:
    """A stored time as an aware one: SQLite hands back naive datetimes, and every stored one is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


T = TypeVar("T")


def retrying(call: Callable[[], T], timeout: float) -> T:
    """`call` (one whole transaction), run again with capped backoff while the database fails, for
    up to `timeout` seconds after the first failure; then its DatabaseError."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return call()
        except DatabaseError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _sqlite_session(engine: Engine, timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below); pysqlite's own implicit BEGIN would be DEFERRED.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets the web server, a send and an import write the same file; the busy timeout
        # makes a writer wait for the lock instead of failing.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # The temporary tables of a query (its IN lists, its sorts) in memory, not in files that
        # each batch of a send would create and delete.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction that reads then writes cannot
        # fail half-way with "database is locked" (a DEFERRED one upgrading its lock can). It is the
        # default because modules read-then-write through engine.connect() and engine.begin()
        # alike; `reading` connections, which never write, begin DEFERRED and wait for no writer.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def one_writer_at_a_time(engine: Engine) -> AbstractContextManager[object]:
    """A lock for this process's writers to queue on. SQLite has one writer at a time, and threads
    that meet in its busy handler sleep and retry (for up to 100 ms a turn): queueing on a lock hands
    the database to the next writer the moment it is free. Other processes still wait through the
    busy timeout. PostgreSQL takes concurrent writers: no lock."""
    return threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only. On SQLite it takes no write lock, so a status or a plan never
    waits behind an import or a send (in WAL mode it sees the last committed state)."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        yield conn


def _lock_schema(conn: Connection) -> None:
    # SQLite's BEGIN IMMEDIATE already serialises migrating processes; PostgreSQL takes no such
    # lock, so two processes could both create the schema: one waits here for the other instead.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """The write transaction of one migration step.

    On SQLite, with foreign keys off: a step may rebuild a table, and dropping the old one with them on
    would delete every row that refers to it (ON DELETE CASCADE: memberships, events). The pragma does
    nothing inside a transaction, so it is set before BEGIN; references are checked before COMMIT.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                yield conn
            return
        # On the driver's connection: SQLAlchemy's would begin a transaction first.
        driver = conn.connection.driver_connection
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise DatabaseError(
                        "the schema upgrade would leave rows referring to missing rows; nothing was changed"
                    )
        finally:
            driver.execute("PRAGMA foreign_keys=ON")


def migrate(engine: Engine, on_create: Callable[[], None] | None = None) -> int:
    """Apply the migrations this database has not had yet; returns the schema version.

    `on_create` runs once, in the transaction that creates the schema of a new database.
    """
    # Every command opens the database: an up-to-date one is only read, so that a command never
    # waits for the write lock (held by a long import, say) just to learn there is nothing to do.
    with reading(engine) as conn:
        applied = inspect(conn).has_table(schema_version.name) and (
            conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
        )
    if applied and applied >= len(MIGRATIONS):
        return len(MIGRATIONS)
    with engine.begin() as conn:
        _lock_schema(conn)
        schema_version.create(conn, checkfirst=True)
        version = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with _migrating(engine) as conn:
            _lock_schema(conn)
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            if current >= number:
                continue
            if number == 1 and on_create is not None:
                on_create()
            step(conn)
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=number))
    return len(MIGRATIONS)
