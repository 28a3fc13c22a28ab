"""The one lease: the daily run's lock and each campaign's send claim are rows of `leases`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect, select

from newsletter import db
from newsletter.config import Settings
from newsletter.errors import RunLocked
from newsletter.store.lease import STALE_AFTER, Lease, holder

from testkit.projects import engine_of


def test_the_migration_makes_the_run_lock_and_the_send_claims_leases(settings: Settings) -> None:
    engine = engine_of(settings)
    now = settings.clock()
    with engine.begin() as conn:  # as version 10 left a database: a run lock row, a claimed campaign
        db.leases.drop(conn)
        db._run_locks.create(conn)
        conn.execute(db._run_locks.insert().values(name="daily-run", holder="1@host#a#b", acquired_at=now, heartbeat_at=now))
        conn.exec_driver_sql("ALTER TABLE campaigns ADD COLUMN claimed_by VARCHAR(100)")
        conn.exec_driver_sql("ALTER TABLE campaigns ADD COLUMN claimed_at DATETIME")
        list_id = conn.execute(db.lists.insert().values(name="daily", created_at=now)).inserted_primary_key[0]
        for day, claimed in (("2026-01-22", None), ("2026-01-23", "2@host#c#d")):
            conn.execute(
                db.campaigns.insert().values(issue_date=day, list_id=list_id, subject="s", html="h", text="t", created_at=now)
            )
            conn.exec_driver_sql(
                "UPDATE campaigns SET claimed_by = ?, claimed_at = ? WHERE issue_date = ?",
                (claimed, now.strftime("%Y-%m-%d %H:%M:%S.%f") if claimed else None, day),
            )
        conn.execute(db.schema_version.update().values(version=10))
    assert db.migrate(engine) == len(db.MIGRATIONS) == 11
    with engine.connect() as conn:
        leases = {row.name: (row.holder, row.heartbeat_at.replace(tzinfo=None)) for row in conn.execute(select(db.leases))}
        columns = {column["name"] for column in inspect(conn).get_columns("campaigns")}
        assert not inspect(conn).has_table("run_locks")
    assert leases == {"daily-run": ("1@host#a#b", now.replace(tzinfo=None)), "campaign:2": ("2@host#c#d", now.replace(tzinfo=None))}
    assert "claimed_by" not in columns and "claimed_at" not in columns


def test_a_lease_is_one_holders_until_it_goes_stale(settings: Settings) -> None:
    engine = engine_of(settings)
    moment = [settings.clock()]

    def lease() -> Lease:
        return Lease("work", lambda: moment[0], refused=lambda held: RunLocked(f"held by {held and held.who}"), lost=lambda: RunLocked("lost"))

    first, second = lease(), lease()
    with engine.begin() as conn:
        first.acquire(conn)
    with pytest.raises(RunLocked, match=r"held by \d+@"), engine.begin() as conn:
        second.acquire(conn)
    moment[0] += STALE_AFTER + timedelta(seconds=1)
    with engine.begin() as conn:
        second.acquire(conn)  # the first fell silent: taken over
        assert holder(conn, "work", moment[0]).live
    with pytest.raises(RunLocked, match="lost"), engine.begin() as conn:
        first.touch(conn)
    with engine.begin() as conn:
        first.release(conn)  # not its own any more: nothing happens
        assert holder(conn, "work", moment[0]) is not None
        second.release(conn)
        assert holder(conn, "work", moment[0]) is None
