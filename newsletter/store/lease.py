"""Leases: one holder at a time for a named piece of work (the daily run, the send of a campaign),
across the processes and hosts that share the database.

A lease is a row of `leases`: its holder ("pid@host#space#nonce") and a heartbeat the holder renews.
It is taken by compare-and-set on what was read, so of two processes that judged the same lease
stale exactly one takes it; another process may take it over once its holder has been silent for
STALE_AFTER, or at once when the holder is a process of this very machine and PID namespace that no
longer exists (a crash). Hostnames alone do not say that: containers with host networking share the
host's name. This module owns the `leases` table.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from .. import db
from ..db import aware
from ..errors import NewsletterError

HEARTBEAT = timedelta(seconds=2)
# A holder that has not renewed for a few heartbeats is shown as possibly dead...
SILENT_AFTER = 3 * HEARTBEAT
# ...but only taken over much later: a live holder may be waiting for a locked database.
STALE_AFTER = timedelta(seconds=60)

_l = db.leases.c
# Built once: every batch of a send checks its lease before it is marked.
_HOLDER = select(_l.holder).where(_l.name == bindparam("name")).with_for_update()


def _process_space() -> str | None:
    """This boot of this kernel and this PID namespace, hashed short; None where /proc cannot say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


def holder_of(pid: int) -> str:
    """The holder name of process `pid` of this process space: "pid@host#space#nonce" (the part
    before the first '#' is what a person is shown)."""
    return f"{pid}@{socket.gethostname()[:60]}#{_process_space() or '-'}#{secrets.token_hex(4)}"


def holder_is_dead(holder: str) -> bool:
    """True only when `holder` names a process of this process space that no longer exists."""
    who, _, rest = holder.partition("#")
    space = rest.partition("#")[0]
    pid_text, _, host = who.partition("@")
    here = _process_space()
    if here is None or space != here or host != socket.gethostname()[:60] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as a person is shown it."""

    who: str  # "pid@host"
    since: datetime
    silent_for: timedelta  # since the last heartbeat
    dead: bool  # a process of this machine that no longer exists

    @property
    def live(self) -> bool:
        """Whether it still works, as far as can be told: a process elsewhere is only known by its
        heartbeat, renewed every HEARTBEAT."""
        return not self.dead and self.silent_for < SILENT_AFTER

    @property
    def seconds_silent(self) -> int:
        return max(0, int(self.silent_for.total_seconds()))

    @property
    def describe(self) -> str:
        if self.dead:
            return f"{self.who}, which has stopped (no such process; last heartbeat {self.seconds_silent} s ago)"
        if self.live:
            return f"{self.who} (heartbeat {self.seconds_silent} s ago)"
        return (
            f"{self.who}, silent for {self.seconds_silent} s: it may have died (another process takes over "
            f"after {int(STALE_AFTER.total_seconds())} s)"
        )


def holder(conn: Connection, name: str, now: datetime) -> Holder | None:
    """Who holds the lease `name` at `now`; None when nobody does."""
    row = conn.execute(select(db.leases).where(_l.name == name)).first()
    return None if row is None else _holder(row, now)


def _holder(row: object, now: datetime) -> Holder:
    return Holder(
        who=row.holder.split("#")[0],  # type: ignore[attr-defined]
        since=aware(row.acquired_at),  # type: ignore[attr-defined]
        silent_for=now - aware(row.heartbeat_at),  # type: ignore[attr-defined]
        dead=holder_is_dead(row.holder),  # type: ignore[attr-defined]
    )


class Lease:
    """This process's hold on the lease `name`. Each method works in the caller's transaction;
    `refused` makes the error for a lease held by someone live (None: taken by another process just
    now), `lost` the error for a lease taken over while this process held it."""

    def __init__(
        self,
        name: str,
        clock: Callable[[], datetime],
        *,
        refused: Callable[[Holder | None], NewsletterError],
        lost: Callable[[], NewsletterError],
    ) -> None:
        self.name = name
        self.holder = holder_of(os.getpid())
        self._clock = clock
        self._refused = refused
        self._lost = lost

    def acquire(self, conn: Connection) -> None:
        now = self._clock()
        row = conn.execute(select(db.leases).where(_l.name == self.name).with_for_update()).first()
        if row is None:
            # Nobody holds it: of two processes inserting at once, the second inserts nothing (the
            # row it returns says which; a DO NOTHING's rowcount is not reported alike by every driver).
            insert = db.insert_ignoring(conn.dialect.name, db.leases, index_elements=["name"])
            inserted = insert.values(name=self.name, holder=self.holder, acquired_at=now, heartbeat_at=now)
            taken = len(conn.execute(inserted.returning(_l.name)).all())
        else:
            if row.holder != self.holder:
                found = _holder(row, now)
                if found.silent_for < STALE_AFTER and not found.dead:
                    raise self._refused(found)
            # Compare-and-set on what was read: a holder that renewed its heartbeat since is alive.
            taken = conn.execute(
                db.leases.update()
                .where(_l.name == self.name, _l.holder == row.holder, _l.heartbeat_at == row.heartbeat_at)
                .values(holder=self.holder, acquired_at=now, heartbeat_at=now)
            ).rowcount
        if taken != 1:
            raise self._refused(None)

    def check(self, conn: Connection) -> None:
        """The `lost` error unless this process still holds the lease. The row stays locked until
        the transaction ends (FOR UPDATE; SQLite's write lock does the same), so no takeover can
        slip in between this check and the writes that follow it."""
        if conn.execute(_HOLDER, {"name": self.name}).scalar() != self.holder:
            raise self._lost()

    def touch(self, conn: Connection) -> None:
        """Renew the heartbeat; the `lost` error if another process has taken the lease over."""
        kept = conn.execute(
            db.leases.update().where(_l.name == self.name, _l.holder == self.holder).values(heartbeat_at=self._clock())
        ).rowcount
        if kept != 1:
            raise self._lost()

    def release(self, conn: Connection) -> None:
        conn.execute(db.leases.delete().where(_l.name == self.name, _l.holder == self.holder))
