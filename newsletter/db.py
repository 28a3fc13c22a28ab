"""The database: one schema for SQLite (the default) and PostgreSQL, written through SQLAlchemy Core.

The tool creates and upgrades its own schema: `schema_version` holds the number of migrations
applied, and `migrate` applies the missing ones in order, each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
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
from sqlalchemy.engine import Connection, make_url

from .config import Settings

metadata = MetaData()

TS = DateTime(timezone=True)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

lists = Table(
    "lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", TS, nullable=False),
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
)

# Membership statuses. Only "subscribed" receives mail.
SUBSCRIBED, UNSUBSCRIBED, BOUNCED, COMPLAINED = "subscribed", "unsubscribed", "bounced", "complained"
STATUSES = (SUBSCRIBED, UNSUBSCRIBED, BOUNCED, COMPLAINED)

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
    PrimaryKeyConstraint("list_id", "subscriber_id"),
    Index("ix_memberships_list_status", "list_id", "status"),
)

# Where a status change came from, for the event log.
SOURCES = ("command", "import", "unsubscribe_page", "one_click", "webhook", "sendgrid_sync")

# Append-only: rows are inserted, never updated. An erased subscriber's rows go with them.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE")),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="SET NULL")),
    Column("status", String(20), nullable=False),
    Column("previous_status", String(20)),
    Column("source", String(30), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("created_at", TS, nullable=False),
    Index("ix_events_subscriber", "subscriber_id"),
)

# SendGrid suppression sync: the newest `created` timestamp seen per suppression list.
sync_state = Table(
    "sync_state",
    metadata,
    Column("kind", String(40), primary_key=True),
    Column("last_created", Integer, nullable=False),
)

# Event Webhook idempotency: SendGrid retries and repeats events; each sg_event_id counts once.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("sg_event_id", String(100), primary_key=True),
    Column("received_at", TS, nullable=False),
    # Rows older than SendGrid's retry window are pruned (webhook.py) along this index.
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
    # The atomic claim that keeps two send processes from sending the same campaign.
    Column("claimed_by", String(100)),
    Column("claimed_at", TS),
    UniqueConstraint("issue_date", "list_id"),
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

# Delivery states (newsletter/campaigns.py has the state machine). A finished send leaves every recipient
# sent, failed (SendGrid refused the address), uncertain (the request may have left but its answer
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


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn)


# Append only. Never edit a migration that has shipped: add the next one.
def _index_deliveries_by_id(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_campaign_state")
    [index] = [i for i in deliveries.indexes if i.name == "ix_deliveries_campaign_state_id"]
    index.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_create_all, _index_deliveries_by_id]

# pg_advisory_xact_lock key serialising migrations across processes ("nl-mig").
_MIGRATION_LOCK = 0x6E6C2D6D6967
# Execution option of a read-only connection (see `reading`).
_READ_ONLY = "newsletter_read_only"

_engines: dict[str, Engine] = {}


def engine_for(settings: Settings) -> Engine:
    """The (cached) engine for the configured database, with its schema up to date."""
    url = settings.resolved_database_url
    if url not in _engines:
        engine = _create_engine(url)
        migrate(engine, on_create=settings.ensure_signing_key)
        _engines[url] = engine
    return _engines[url]


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below); pysqlite's own implicit BEGIN would be DEFERRED.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets the web server, a send and an import write the same file; the busy timeout
        # makes a writer wait for the lock instead of failing.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction that reads then writes cannot
        # fail half-way with "database is locked" (a DEFERRED one upgrading its lock can). It is the
        # default because modules read-then-write through engine.connect() and engine.begin()
        # alike; `reading` connections, which never write, begin DEFERRED and wait for no writer.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


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
        with engine.begin() as conn:
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
