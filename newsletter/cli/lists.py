"""`lists create|list|show|delete`: mailing lists."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..db import STATUSES
from ..subscribers import create_list, delete_list, list_summaries
from . import JsonOutput, Yes, console, engine_from, print_json, settings_from, when

lists = typer.Typer(help="Mailing lists.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(lists, name="lists")


@lists.command("create")
def lists_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="List name: letters, digits, '.', '_' or '-'.")],
    description: Annotated[str, typer.Option(metavar="TEXT", help="What readers of this list receive.")] = "",
    optin: Annotated[
        str,
        typer.Option(
            "--optin",
            metavar="double|single",
            help="How readers who sign up join: double (confirm by mail first) or single (at once).",
        ),
    ] = "double",
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Succeed if the list already exists.")
    ] = False,
) -> None:
    """Create a mailing list."""
    settings = settings_from(ctx)
    with engine_from(ctx).begin() as conn:
        created = create_list(
            conn, name, now=settings.clock(), description=description, optin=optin, exist_ok=if_missing
        )
    console.print(
        f"List {escape(created.name)!r} ({created.optin} opt-in, created {when(created.created_at)} UTC)",
        highlight=False,
    )


@lists.command("list")
def lists_list(ctx: typer.Context, as_json: JsonOutput = False) -> None:
    """Show every list with its members counted by status."""
    with engine_from(ctx).begin() as conn:
        summaries = list_summaries(conn)
    if as_json:
        print_json([{**vars(s.list), "counts": s.counts} for s in summaries])
        return
    # Fits 80 columns: no rules, one space between columns, the counts whole (they never wrap), and
    # what width is left to the name (folded if it must be) with its description on the lines below.
    table = Table(box=None, collapse_padding=True, pad_edge=False, header_style="bold underline")
    table.add_column("list", overflow="fold")
    table.add_column("opt-in", no_wrap=True)
    for status in STATUSES:
        table.add_column(status, justify="right", no_wrap=True, min_width=len(status))
    for summary in summaries:
        description = f"\n[dim]{escape(summary.list.description)}[/]" if summary.list.description else ""
        table.add_row(
            f"{escape(summary.list.name)}{description}",
            summary.list.optin,
            *(f"{summary.counts[status]:,}" for status in STATUSES),
        )
    console.print(table if summaries else "No lists yet: newsletter lists create NAME")


@lists.command("show")
def lists_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="List name.")], as_json: JsonOutput = False
) -> None:
    """Show a list and its members counted by status."""
    with engine_from(ctx).begin() as conn:
        summary = list_summaries(conn, name)[0]
    if as_json:
        print_json({**vars(summary.list), "counts": summary.counts, "total": summary.total})
        return
    console.print(
        f"[bold]{escape(summary.list.name)}[/]  {escape(summary.list.description)}", highlight=False
    )
    console.print(f"{summary.list.optin} opt-in, created {when(summary.list.created_at)} UTC", highlight=False)
    for status, count in summary.counts.items():
        console.print(f"  {status:<13}{count:>10,}", highlight=False)
    console.print(f"  {'total':<13}{summary.total:>10,}", highlight=False)


@lists.command("delete")
def lists_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="List name.")], yes: Yes = False
) -> None:
    """Delete a list and its memberships (subscribers stay; `subscribers remove` erases a person)."""
    engine = engine_from(ctx)
    if not yes:
        with engine.begin() as conn:
            members = list_summaries(conn, name)[0].total
        typer.confirm(f"Delete list {name!r} and its {members:,} membership(s)?", abort=True)
    with engine.begin() as conn:
        summary = delete_list(conn, name)
    console.print(f"Deleted list {escape(name)!r} ({summary.total:,} membership(s)).", highlight=False)
