"""`status`: how the send of an issue stands, and the day's review."""

from __future__ import annotations

from datetime import date

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from .. import db
from .. import send as sending
from ..review import AWAITING, review_of
from ..send.campaigns import BatchInfo
from . import IssueDate, IssueWeek, ListName, console, edition_from, engine_from, settings_from

app = typer.Typer()


@app.command()
def status(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None, list_name: ListName = None) -> None:
    """Show how the send of an issue stands: counts by state, each failure, batches in flight or uncertain."""
    edition = edition_from(date, week)
    settings = settings_from(ctx)
    name = list_name or settings.default_list
    engine = engine_from(ctx)
    if edition is not None and not edition.weekly:
        _print_review(engine, edition.days[0])
    state = sending.campaign_status(engine, edition, name, now=settings.clock())
    if state is None:
        console.print(f"No send to list {name!r} has started{' for ' + edition.describe if edition else ''}.")
        return
    _print_status(state, name)


def _print_status(state: sending.CampaignStatus, name: str) -> None:
    campaign, sender = state.campaign, state.sender
    if campaign.finished_at:
        where = f"finished {campaign.finished_at:%Y-%m-%d %H:%M} UTC"
    elif sender is not None and sender.live:
        where = f"being sent by {sender.describe}"
    elif sender is not None:
        where = f"interrupted: its sender is {sender.describe}; `newsletter send` resumes it"
    else:
        where = "interrupted: `newsletter send` resumes it"
    console.print(
        f"Campaign #{campaign.id}: {campaign.issue.describe} to list {escape(name)!r}, "
        f"started {campaign.created_at:%Y-%m-%d %H:%M} UTC, {where}",
        highlight=False,
    )
    table = Table()
    table.add_column("state")
    table.add_column("recipients", justify="right")
    for key, number in state.counts.items():
        table.add_row(key.replace("_", " "), f"{number:,}")
    table.add_row("[bold]total[/]", f"[bold]{state.total:,}[/]")
    console.print(table)
    for reason, number in state.skipped.items():
        console.print(f"skipped: {number:,} {escape(reason or '')}", highlight=False)
    if state.failures:
        failures = Table(title="Failures")
        failures.add_column("address")
        failures.add_column("reason")
        for email, reason in state.failures:
            failures.add_row(escape(email), escape(reason))
        console.print(failures)
    if state.in_flight_batches:
        who = sender.who if sender else "?"
        console.print(_batch_table(f"In flight (being sent by {who})", state.in_flight_batches, "request out now"))
    if state.uncertain_batches:
        died = "left in flight by a sender that stopped: it may have been delivered"
        console.print(_batch_table("Uncertain batches (not resent without --resend-uncertain)", state.uncertain_batches, died))


def _print_review(engine: Engine, day: date) -> None:
    """The day's review, when there is one (review = "approve")."""
    with db.reading(engine) as conn:
        review = review_of(conn, day)
    if review is None:
        return
    if review.state == AWAITING:
        console.print(
            f"Awaiting approval: the editors were sent {day.isoformat()}'s issue on {review.tested_at:%Y-%m-%d %H:%M} UTC; "
            f"`newsletter approve --date {day.isoformat()}` sends it to every list",
            highlight=False,
        )
    else:
        console.print(f"Approved on {review.approved_at:%Y-%m-%d %H:%M} UTC", highlight=False)


def _batch_table(title: str, batches: list[BatchInfo], why: str) -> Table:
    """Batches, each with its recorded error or else `why`."""
    table = Table(title=escape(title))
    for column in ("batch", "recipients", "started", "why"):
        table.add_column(column)
    for batch in batches:
        started = f"{batch.started_at:%Y-%m-%d %H:%M:%S}" if batch.started_at else ""
        table.add_row(str(batch.id), f"{batch.size:,}", started, escape(batch.error or why))
    return table
