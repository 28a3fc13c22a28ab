"""Helpers shared by the send tests (tests/test_send*.py, test_smtp.py, …): settings pointing at a
fake SendGrid, hand-made content and plans, senders killed at random."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from newsletter import db, send
from newsletter.config import Settings
from newsletter.content.edition import Edition
from newsletter.content.render import UNSUBSCRIBE_TAG
from newsletter.send import addressing, campaigns
from newsletter.subscribers import get_list
from testkit.projects import API_KEY, LIST, configure, engine_of

from .support import start_newsletter

DAY = date(2026, 1, 23)
CONTENT = addressing.Content("Today's papers", f"<p>hi</p><a href='{UNSUBSCRIBE_TAG}'>unsubscribe</a>", f"hi {UNSUBSCRIBE_TAG}")



def start_campaign(
    settings: Settings, issue: Edition | date, mailing_list: Any, content: addressing.Content
) -> campaigns.Campaign:
    """send.start_campaign as a send of this project makes it: its clock, sender and weekly day."""
    return send.start_campaign(
        engine_of(settings), issue, mailing_list, content,
        clock=settings.clock, sender=settings.sender, weekly_day=settings.weekly_day,
    )  # fmt: skip

# The fake SendGrid's key in the command's environment, where cron's environment would hold it.
KEY_ENV = {"SENDGRID_API_KEY": API_KEY}
SEND = ["send", "--date", "2026-01-23", "--yes"]


def kill_at_random(
    project: Path, rng: random.Random, pause: tuple[float, float], after_kill: Callable[[], None] = lambda: None,
    *, most: int = 20, seconds: float = 120,
) -> int:  # fmt: skip
    """Start senders and SIGKILL each after a random pause until `most` kills, the time is up, or
    one finishes first; `after_kill` runs after each kill. Returns how many were killed."""
    kills = 0
    deadline = time.monotonic() + seconds
    while kills < most and time.monotonic() < deadline:
        process = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        time.sleep(rng.uniform(*pause))
        if process.poll() is not None:
            break  # it finished before we struck
        process.kill()
        process.wait()
        kills += 1
        after_kill()
    return kills


def delivery_states(settings: Settings) -> dict[str, tuple[str, str | None, str | None]]:
    """address → (state, message id, error) for every delivery of every campaign."""
    d = db.deliveries.c
    with engine_of(settings).connect() as conn:
        rows = conn.execute(select(d.email, d.state, d.message_id, d.error)).all()
    return {row.email: (row.state, row.message_id, row.error) for row in rows}


def settings_for(project: Path, url: str, **overrides: Any) -> Settings:
    return configure(project, sendgrid_api_url=url, sendgrid_api_key=API_KEY, **overrides)


def plan_for(settings: Settings, content: addressing.Content = CONTENT, *, resend_uncertain: bool = False) -> send.SendPlan:
    """A plan with hand-made content (the rendering is tested elsewhere)."""
    with engine_of(settings).connect() as conn:
        mailing_list = get_list(conn, LIST)
        campaign = campaigns.find_campaign(conn, DAY, mailing_list.id)
        counts = campaigns.state_counts(conn, campaign.id) if campaign else {}
    again = counts.get("pending", 0) + (counts.get("uncertain", 0) if resend_uncertain else 0)
    return send.SendPlan(
        issue=Edition.daily(DAY), mailing_list=mailing_list, content=campaign.content if campaign else content,
        campaign=campaign, checks=None, counts=counts, recipients=again if campaign else 0,
        batch_size=settings.batch_size, resend_uncertain=resend_uncertain,
    )


def hold_campaign(settings: Settings, campaign_id: int, holder: str, heartbeat_at: datetime) -> None:
    """Make `holder` the holder of the campaign's lease, last heard of at `heartbeat_at`."""
    name = campaigns.lease_name(campaign_id)
    with engine_of(settings).begin() as conn:
        conn.execute(db.leases.delete().where(db.leases.c.name == name))
        conn.execute(db.leases.insert().values(name=name, holder=holder, acquired_at=heartbeat_at, heartbeat_at=heartbeat_at))


def campaign_holder(settings: Settings, campaign_id: int) -> str | None:
    with engine_of(settings).connect() as conn:
        return conn.execute(select(db.leases.c.holder).where(db.leases.c.name == campaigns.lease_name(campaign_id))).scalar()
