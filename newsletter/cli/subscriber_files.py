"""`subscribers import` and `subscribers export`: a list's members from and to CSV. subscribers.py
registers them in its group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..db import STATUSES
from ..errors import SubscriberError
from ..send.transactional import Outcome
from ..subscriber_csv import ImportReport, confirmation_provider, export_csv, import_subscribers
from ..wiring import send_parts
from . import ListName, console, engine_from, err_console, print_json, settings_from

# The spinner's line for each phase of an import.
_PHASES = {
    "reading": "Read {:,} lines",
    "merging": "Merging {:,} rows…",
    "confirming": "Sending {:,} confirmation mail(s)…",
}
_PROBLEMS_SHOWN = 20


CsvFile = Annotated[
    Path, typer.Argument(metavar="FILE", help="CSV file with a header row naming at least an 'email' column.")
]
Rejects = Annotated[
    Optional[Path],
    typer.Option(metavar="FILE", help="Write invalid, duplicate and skipped rows (with line and reason) to this CSV."),
]
Resubscribe = Annotated[
    bool, typer.Option("--resubscribe", help="Re-subscribe addresses that had unsubscribed, bounced or complained.")
]
RequireConfirmation = Annotated[
    bool,
    typer.Option(
        "--require-confirmation",
        help="Add new rows unconfirmed and send each a confirmation mail, instead of vouching for them.",
    ),
]
CheckOnly = Annotated[bool, typer.Option("--dry-run", help="Check and count everything; write nothing.")]
ReportJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def import_command(
    ctx: typer.Context,
    file: CsvFile,
    list_name: ListName = None,
    rejects: Rejects = None,
    resubscribe: Resubscribe = False,
    require_confirmation: RequireConfirmation = False,
    dry_run: CheckOnly = False,
    as_json: ReportJson = False,
) -> None:
    """Import subscribers from CSV (UTF-8, comma or semicolon separated) into a list.

    Exits with status 2 if any row was invalid: the valid rows are imported all the same."""
    settings = settings_from(ctx)
    list_name = list_name or settings.default_list
    provider = confirmation_provider(settings.delivery, require_confirmation=require_confirmation, dry_run=dry_run)
    engine = engine_from(ctx)
    with err_console.status(f"Reading {escape(str(file))}…") as spinner:
        imported = import_subscribers(
            engine, send_parts(settings), file, list_name=list_name, provider=provider, resubscribe=resubscribe,
            require_confirmation=require_confirmation, rejects=rejects, dry_run=dry_run,
            progress=lambda phase, count: spinner.update(_PHASES[phase].format(count)),
        )  # fmt: skip
    report = imported.report
    if imported.confirmations is not None:
        _print_confirmations(imported.confirmations, report)
    if as_json:
        print_json({**vars(report), "problem_count": report.problem_count})
    else:
        _print_import(report, file, resubscribe=resubscribe)
    _fail_on_invalid_rows(report)


def _print_confirmations(outcomes: list[Outcome], report: ImportReport) -> None:
    sent = sum(outcome.sent_now for outcome in outcomes)
    err_console.print(f"Confirmation mails sent: {sent:,} of {len(report.to_confirm):,} unconfirmed", highlight=False)
    for outcome in outcomes:
        if outcome.state != "sent":
            err_console.print(escape(f"  {outcome.email}: {outcome.state} {outcome.error or ''}"), highlight=False)


def _print_import(report: ImportReport, file: Path, *, resubscribe: bool) -> None:
    for problem in report.problems[:_PROBLEMS_SHOWN]:
        where = f"{file}:{problem.line}: {problem.email or '(no address)'}: {problem.reason}"
        err_console.print(escape(where), highlight=False, soft_wrap=True)
    if report.problem_count > _PROBLEMS_SHOWN:
        more = "all of them are in " + str(report.rejects) if report.rejects else "--rejects FILE lists them all"
        err_console.print(f"… and {report.problem_count - _PROBLEMS_SHOWN:,} more ({more})", highlight=False)
    head = "Dry run (nothing written)" if report.dry_run else "Imported"
    console.print(
        f"{head}: {escape(str(file))} into {escape(report.list_name)}, {report.rows:,} row(s)", highlight=False
    )
    lines = [
        ("added", report.added, f"{report.new_subscribers:,} new subscriber(s)"),
        ("resubscribed", report.resubscribed, ""),
        ("already subscribed", report.unchanged, ""),
        (
            "skipped",
            report.skipped,
            "" if resubscribe else "unsubscribed, bounced or complained; --resubscribe if they asked",
        ),
        ("invalid", report.invalid, ""),
        ("duplicates", report.duplicates, "first occurrence kept"),
    ]
    for label, count, note in lines:
        console.print(
            f"  {label:<19}{count:>10,}  {escape(note) if count and note else ''}".rstrip(), highlight=False
        )
    if report.rejects and report.problem_count:
        console.print(f"Rejected rows written to {escape(str(report.rejects))}", highlight=False)


def _fail_on_invalid_rows(report: ImportReport) -> None:
    """Bad input fails the command, even though the valid rows landed: a script (or `make`) must
    notice. Exit status 2, not 1, because the import itself did happen."""
    if report.invalid:
        landed = "a dry run: nothing was written" if report.dry_run else "the valid rows were"
        err_console.print(
            f"error: {report.invalid:,} invalid row(s) not imported ({landed}); exit status 2",
            highlight=False,
        )
        raise typer.Exit(2)


def export_command(
    ctx: typer.Context,
    list_name: ListName = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", metavar="FILE", help="Write to this file (default: standard output).")
    ] = None,
    status: Annotated[str, typer.Option("--status", metavar="STATUS", help="Members with this status.")] = "subscribed",
) -> None:
    """Export a list's members as CSV (email, name, attributes) that `subscribers import` reads back.

    A cell a spreadsheet would run as a formula (= + - @) gets a leading apostrophe; import removes it."""
    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    settings = settings_from(ctx)
    count = export_csv(engine_from(ctx), list_name=list_name or settings.default_list, path=out, status=status)
    if out is not None:
        console.print(f"Exported {count:,} subscriber(s) to {escape(str(out))}", highlight=False)
