"""The claim that lets one process at a time send a campaign.

The holder writes campaigns.claimed_by (taken by a compare-and-set on what it read) and renews
claimed_at as a heartbeat; another process may take the claim over once it is STALE_AFTER old, or at
once when the holder is a process of this very machine and PID namespace that no longer exists (a
crash). Hostnames alone do not say that: containers with host networking share the host's name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from .. import db
from ..db import aware
from ..errors import SendInProgress

HEARTBEAT = timedelta(seconds=2)
# A sender that has not renewed for a few heartbeats is shown as possibly dead...
SILENT_AFTER = 3 * HEARTBEAT
# ...but only taken over much later: a live sender may be waiting for a locked database.
STALE_AFTER = timedelta(seconds=60)

# Built once: every batch checks the claim before it is marked.
_HOLDER = select(db.campaigns.c.claimed_by).where(db.campaigns.c.id == bindparam("campaign")).with_for_update()


def _process_space() -> str | None:
    """This boot of this kernel and this PID namespace, hashed short; None where /proc cannot say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


def holder_of(pid: int) -> str:
    """The claimed_by value of process `pid` of this process space: "pid@host#space#nonce"
    (the part before the first '#' is what a person is shown)."""
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


class Claim:
    """This process's exclusive right to send one campaign."""

    def __init__(self, clock: Callable[[], datetime], campaign_id: int, describe: str) -> None:
        self._clock = clock
        self.campaign_id = campaign_id
        self._describe = describe
        self.holder = holder_of(os.getpid())

    def acquire(self, conn: Connection) -> None:
        c = db.campaigns.c
        row = conn.execute(select(c.claimed_by, c.claimed_at).where(c.id == self.campaign_id)).one()
        now = self._clock()
        if row.claimed_by is not None and row.claimed_by != self.holder:
            age = now - aware(row.claimed_at)
            if age < STALE_AFTER and not holder_is_dead(row.claimed_by):
                raise SendInProgress(
                    f"{self._describe} is being sent by another process ({row.claimed_by.split('#')[0]}, "
                    f"last heartbeat {max(0, int(age.total_seconds()))} s ago). Let it finish, or if it "
                    f"has died, run the command again: a claim with no heartbeat for "
                    f"{int(STALE_AFTER.total_seconds())} s is taken over."
                )
        # Compare-and-set on both columns read: a holder that renewed its heartbeat since our read
        # is alive, and of two processes that judged the same claim stale, exactly one takes it.
        taken = conn.execute(
            db.campaigns.update()
            .where(
                c.id == self.campaign_id,
                c.claimed_by.is_(None) if row.claimed_by is None else c.claimed_by == row.claimed_by,
                c.claimed_at.is_(None) if row.claimed_at is None else c.claimed_at == row.claimed_at,
            )
            .values(claimed_by=self.holder, claimed_at=now)
        ).rowcount
        if taken != 1:
            raise SendInProgress(f"{self._describe} was claimed by another process just now")

    def check(self, conn: Connection) -> None:
        """SendInProgress unless this process still holds the claim. The row stays locked until the
        transaction ends (FOR UPDATE; SQLite's write lock does the same), so no takeover can slip in
        between this check and the writes that follow it."""
        holder = conn.execute(_HOLDER, {"campaign": self.campaign_id}).scalar_one()
        if holder != self.holder:
            raise self._taken_over()

    def touch(self, conn: Connection) -> None:
        """Renew the heartbeat; SendInProgress if another process has taken the claim over."""
        c = db.campaigns.c
        kept = conn.execute(
            db.campaigns.update()
            .where(c.id == self.campaign_id, c.claimed_by == self.holder)
            .values(claimed_at=self._clock())
        ).rowcount
        if kept != 1:
            raise self._taken_over()

    def release(self, conn: Connection) -> None:
        c = db.campaigns.c
        conn.execute(
            db.campaigns.update()
            .where(c.id == self.campaign_id, c.claimed_by == self.holder)
            .values(claimed_by=None, claimed_at=None)
        )

    def _taken_over(self) -> SendInProgress:
        return SendInProgress(
            f"{self._describe}: another process took over this send (this one was silent for "
            f"over {int(STALE_AFTER.total_seconds())} s); stopping"
        )
