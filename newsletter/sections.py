"""The settings cut into the parts the package's rooms take: a part below the skins (cli/, web, daily)
is handed the sections it needs, never the whole Settings, so what it reads is in its signature.

Settings builds each section once (config.Settings.site, .sender, …); the names of the fields are the
settings' own, so that a setting reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from pydantic import BaseModel, SecretStr


@dataclass(frozen=True)
class Clock:
    """The time, as a seam (tests pin it with the `now` setting), and the newsletter's day in its
    time zone."""

    pinned: datetime | None
    timezone: str

    def __call__(self) -> datetime:
        """The current time in UTC, or the pinned one."""
        if self.pinned is not None:
            return self.pinned if self.pinned.tzinfo else self.pinned.replace(tzinfo=timezone.utc)
        return datetime.now(timezone.utc)

    def local_date(self, moment: datetime) -> date:
        """The calendar day `moment` falls on in the configured time zone."""
        return moment.astimezone(self._zone).date()

    @cached_property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Database:
    """Where the database is (a SQLite path made absolute), how long to wait for it when it is
    locked or restarting, and what to do when the schema is first created (make the signing key)."""

    url: str = field(repr=False)  # may hold a password
    timeout: float
    on_create: Callable[[], None] = field(repr=False)


@dataclass(frozen=True)
class Pacing:
    """How hard a send presses on the provider and how long it waits: its batches, connections,
    rate, timeouts and retries, and how long it keeps retrying a locked or restarting database."""

    batch_size: int
    send_concurrency: int
    send_rate_limit: float
    connect_timeout: float
    read_timeout: float
    max_retries: int
    database_timeout: float


@dataclass(frozen=True)
class Sender:
    """Who a mail is from, what the law asks it to show, and what it tracks."""

    from_email: str
    from_name: str
    reply_to: str | None
    postal_address: str
    track_opens: bool
    track_clicks: bool


@dataclass(frozen=True)
class Site:
    """What readers see and where it is kept: the digests, the templates and their words, the
    published pages, and the addresses they are reached at."""

    base_url: str
    assets_url: str
    digests_dir: Path
    templates_dir: Path
    public_dir: Path
    outbox_dir: Path
    from_email: str
    from_name: str
    reply_to: str | None
    postal_address: str
    default_list: str
    subject_template: str
    email_abstract: str
    language: str | None
    digest_language: str
    weekly_top: int
    weekly_day: str
    clock: Clock


@dataclass(frozen=True)
class Links:
    """What signs and builds a reader's links: the keys (read when first asked for: most commands
    sign nothing), where the links point, and the clock their tickets are dated by."""

    base_url: str
    unsubscribe_mailto: str | None
    clock: Clock
    signing_keys: Callable[[], list[str]] = field(repr=False)


@dataclass(frozen=True)
class Generation:
    """Where the day's digest comes from and who writes its summaries (`newsletter generate`)."""

    source: str
    source_url: str
    digest_top: int
    digest_language: str
    summarizer: str
    llm_base_url: str
    llm_model: str | None
    llm_api_key: SecretStr | None
    llm_concurrency: int
    llm_timeout: float
    connect_timeout: float
    read_timeout: float
    max_retries: int
    digests_dir: Path
    templates_dir: Path


@dataclass(frozen=True)
class Delivery:
    """What the configured provider is built from: its own section (the fields its settings module
    declares), the pacing, the sender and the clock."""

    provider: str
    section: BaseModel
    pacing: Pacing
    sender: Sender
    clock: Clock
