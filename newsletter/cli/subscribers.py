"""`subscribers …`: people on the lists, one at a time (add, unsubscribe, remove, show), by the list
(list, count, purge-unconfirmed), and the provider's suppressions (sync). Import and export, the CSV
commands of the same group, are in subscriber_files.py."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import SubscriberError
from ..providers.headers import plain_text
from ..signup import forget_attempts
from ..subscribers import (
    UNCONFIRMED_KEPT_FOR,
    count_subscribers,
    erase_subscriber,
    get_list,
    iter_memberships,
    purge_unconfirmed,
    subscribe,
    subscriber_details,
    unsubscribe,
)
from ..suppressions import sync_suppressions
from . import JsonOutput, ListName, StatusFilter, Yes, console, engine_from, err_console, print_json, settings_from, when
from .subscriber_files import export_command, import_command

subscribers = typer.Typer(help="Subscribers: add, import, export, sync with the provider's suppression lists.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(subscribers, name="subscribers")

Email = Annotated[str, typer.Argument(metavar="ADDRESS", help="Email address.")]
OfList = Annotated[Optional[str], typer.Option("--list", metavar="LIST", help="Only members of this list.")]


@subscribers.command("sync")
def subscribers_sync(ctx: typer.Context) -> None:
    """Pull the provider's suppression lists (SendGrid's unsubscribes, bounces, spam reports, invalid emails; Postmark's stream's hard bounces, spam complaints, manual suppressions) and mark those subscribers."""
    for result in sync_suppressions(engine_from(ctx), settings_from(ctx).delivery):
        since = (
            "the whole list"
            if result.since is None
            else f"since {datetime.fromtimestamp(result.since, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        )
        console.print(
            f"{result.suppression_list.label}: {result.fetched} fetched ({since}), "
            f"{result.changed} membership(s) changed, {result.unknown} unknown address(es)",
            highlight=False,
            soft_wrap=True,
        )


@subscribers.command("add")
def subscribers_add(
    ctx: typer.Context,
    email: Email,
    list_name: ListName = None,
    name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="The subscriber's name.")] = None,
    attributes: Annotated[
        Optional[list[str]], typer.Option("--attr", metavar="KEY=VALUE", help="An attribute (repeatable).")
    ] = None,
    resubscribe: Annotated[
        bool,
        typer.Option("--resubscribe", help="Re-subscribe an address that unsubscribed, bounced or complained."),
    ] = False,
) -> None:
    """Subscribe an address to a list (its name and attributes, if given, are updated)."""
    pairs = _attributes(attributes or [])
    settings = settings_from(ctx)
    list_name = list_name or settings.default_list
    with engine_from(ctx).begin() as conn:
        done = subscribe(
            conn,
            list_id=get_list(conn, list_name).id,
            email=email,
            now=settings.clock(),
            name=plain_text(name or "") or None,
            attributes=pairs,
            resubscribe=resubscribe,
        )
    address, where = escape(done.subscriber.email), escape(list_name)
    messages = {
        "added": f"Subscribed {address} to {where}.",
        "resubscribed": f"Re-subscribed {address} to {where} (was {done.previous}).",
        "unchanged": f"{address} is already subscribed to {where}.",
        "skipped": f"{address} is {done.previous} on {where}: not re-subscribed "
        "(--resubscribe, if they asked to be).",
    }
    console.print(messages[done.outcome], highlight=False)


def _attributes(items: list[str]) -> dict[str, str]:
    """--attr KEY=VALUE options, as a dict."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SubscriberError(f"--attr {item!r}: expected KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


@subscribers.command("unsubscribe")
def subscribers_unsubscribe(ctx: typer.Context, email: Email, list_name: ListName = None) -> None:
    """Unsubscribe an address from a list (the record that they said no is kept)."""
    settings = settings_from(ctx)
    list_name = list_name or settings.default_list
    with engine_from(ctx).begin() as conn:
        changed = unsubscribe(conn, list_id=get_list(conn, list_name).id, email=email, now=settings.clock())
    verb = "Unsubscribed" if changed else "Already unsubscribed:"
    console.print(f"{verb} {escape(email.strip())} from {escape(list_name)}.", highlight=False)


@subscribers.command("remove")
def subscribers_remove(ctx: typer.Context, email: Email, yes: Yes = False) -> None:
    """Erase a person (GDPR): record, memberships, event log; past deliveries keep no address.

    Unlike `unsubscribe`, which stops mail but keeps the record that they said no.
    """
    settings = settings_from(ctx)
    if not yes:
        typer.confirm(f"Erase everything about {email.strip()} (this cannot be undone)?", abort=True)
    with engine_from(ctx).begin() as conn:
        erased = erase_subscriber(conn, email, now=settings.clock())
    console.print(
        f"Erased {escape(erased.email)}: {erased.memberships} membership(s), {erased.events} event(s); "
        f"address blanked in {erased.deliveries_anonymised} delivery record(s).",
        highlight=False,
    )


@subscribers.command("purge-unconfirmed")
def subscribers_purge_unconfirmed(ctx: typer.Context) -> None:
    """Delete sign-ups left unconfirmed for over 30 days (and the people who had nothing else)."""
    settings = settings_from(ctx)
    with engine_from(ctx).begin() as conn:
        purge = purge_unconfirmed(conn, now=settings.clock())
        forget_attempts(conn, settings.clock())
    console.print(
        f"Deleted {purge.memberships:,} sign-up(s) unconfirmed for over {UNCONFIRMED_KEPT_FOR.days} days; "
        f"{purge.subscribers:,} person(s) had nothing else and were deleted whole.",
        highlight=False,
    )


@subscribers.command("list")
def subscribers_list(
    ctx: typer.Context,
    list_name: OfList = None,
    status: StatusFilter = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many rows (0: all).", min=0)] = 100,
    as_json: JsonOutput = False,
) -> None:
    """List subscribers with their memberships, by subscriber."""
    engine = engine_from(ctx)
    with engine.begin() as conn:
        list_id = get_list(conn, list_name).id if list_name else None
        total = count_subscribers(conn, list_id=list_id, status=status)
    rows = iter_memberships(engine, list_id=list_id, status=status, limit=limit or None)
    if as_json:
        print_json(list(rows))
        return
    shown = list(rows)
    table = Table()
    # Addresses are what people grep for: never cut them.
    table.add_column("email", no_wrap=True, min_width=max((len(row.email) for row in shown), default=5))
    for column in ("name", "list", "status", "since"):
        table.add_column(column)
    for row in shown:
        table.add_row(escape(row.email), escape(row.name or ""), escape(row.list_name or "-"), row.status or "", when(row.since))
    console.print(table)
    if limit and len(shown) == limit and total > limit:
        err_console.print(
            f"Showing the first {limit:,} of {total:,} subscribers (--limit 0 shows all).", highlight=False
        )


@subscribers.command("show")
def subscribers_show(ctx: typer.Context, email: Email, as_json: JsonOutput = False) -> None:
    """Show a subscriber: details, memberships and the log of every status change."""
    with engine_from(ctx).begin() as conn:
        details = subscriber_details(conn, email)
    if as_json:
        print_json(details)
        return
    who = details.subscriber
    console.print(f"[bold]{escape(who.email)}[/]  {escape(who.name or '')}", highlight=False)
    console.print(f"subscriber #{who.id} since {when(who.created_at)} UTC", highlight=False)
    for key, value in who.attributes.items():
        console.print(f"  {escape(key)}: {escape(str(value))}", highlight=False)
    memberships = Table(title="Lists")
    for column in ("list", "status", "since", "joined"):
        memberships.add_column(column)
    for m in details.memberships:
        memberships.add_row(escape(m.list_name), m.status, when(m.updated_at), when(m.created_at))
    console.print(memberships)
    events = Table(title="Events")
    for column in ("when", "list", "change", "source", "detail"):
        events.add_column(column)
    for e in details.events:
        change = f"{e.previous_status} → {e.status}" if e.previous_status else e.status
        events.add_row(when(e.created_at), escape(e.list_name or "-"), change, e.source, escape(e.detail))
    console.print(events)


@subscribers.command("count")
def subscribers_count(ctx: typer.Context, list_name: OfList = None, status: StatusFilter = None) -> None:
    """Print how many subscribers match (everyone, without filters)."""
    with engine_from(ctx).begin() as conn:
        list_id = get_list(conn, list_name).id if list_name else None
        console.print(count_subscribers(conn, list_id=list_id, status=status), highlight=False)


subscribers.command("import")(import_command)
subscribers.command("export")(export_command)
