"""`send`: an issue to a list, once (status.py tells how a send stands)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.progress import Progress as ProgressBar
from rich.table import Table
from rich.text import Text

from .. import send as sending
from ..content.checks import kilobytes
from ..daily import STOPPED
from ..providers import Provider
from ..providers.outbox import Outbox
from ..send import SendPlan, SendReport
from ..send.transactional import Outcome
from ..send.unrecorded import UnrecordedReport, default_outbox
from ..wiring import send_parts
from . import (
    IssueDate,
    IssueWeek,
    ListName,
    Yes,
    console,
    edition_from,
    engine_from,
    invoked_as,
    err_console,
    print_error,
    settings_from,
)

app = typer.Typer()

# What a test send (--to) records, wherever it is told: its messages, so that none goes twice, and
# nothing of the issue's delivery.
TEST_RECORD = "recorded as test messages, never as the issue's delivery"

Force = Annotated[bool, typer.Option("--force", help="Send even if pre-send checks fail.")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Write the requests to an outbox folder; send nothing, record nothing.")
]
OutboxFolder = Annotated[
    Optional[Path], typer.Option(metavar="FOLDER", help="Dry-run folder (default: <outbox_dir>/<date or week>/).")
]
TestTo = Annotated[
    Optional[list[str]],
    typer.Option(
        "--to",
        metavar="ADDRESS",
        help="Send a test to this address only (repeatable): recorded as a test, never as the issue's delivery.",
    ),
]
Sandbox = Annotated[
    bool,
    typer.Option("--sandbox", help="SendGrid sandbox mode: validated by SendGrid, delivered to nobody, not recorded."),
]
ResendUncertain = Annotated[
    bool,
    typer.Option(
        "--resend-uncertain",
        help="Also resend batches whose answer was lost (and retry lost answers): risks duplicates.",
    ),
]


@app.command()
def send(
    ctx: typer.Context,
    date: IssueDate = None,
    week: IssueWeek = None,
    list_name: ListName = None,
    yes: Yes = False,
    force: Force = False,
    dry_run: DryRun = False,
    outbox: OutboxFolder = None,
    to: TestTo = None,
    sandbox: Sandbox = False,
    resend_uncertain: ResendUncertain = False,
) -> None:
    """Send an issue to a list through the configured provider, once: batched, resumable, never twice.

    A day's issue goes to the list's daily members; the weekly edition (--week) to its weekly members."""
    edition = edition_from(date, week)
    settings = settings_from(ctx)
    issue = sending.issue_to_send(settings.site, edition)
    engine = engine_from(ctx)
    parts = send_parts(settings)
    plan = sending.plan_send(engine, parts, issue, list_name or settings.default_list, resend_uncertain=resend_uncertain)
    if plan.finished and not to:
        console.print(
            f"Nothing to do: {plan.describe} was sent on {plan.campaign.finished_at:%Y-%m-%d %H:%M} UTC "
            f"({_counts_line(plan.counts)}). `newsletter status` shows the details.",
            highlight=False,
        )
        return
    console.print(_summary(plan, to, dry_run=dry_run, sandbox=sandbox))
    if overridden := sending.require_checks(plan, force=force):
        err_console.print(f"[yellow]warning:[/] sending despite {len(overridden)} failed check(s) (--force)")
    # Made before asking: missing credentials stop here, before anything is asked or stored.
    provider = sending.open_provider(parts.delivery, dry_run=dry_run, outbox=outbox or default_outbox(parts.site.outbox_dir, issue))
    if not yes:
        typer.confirm("Write the dry run?" if dry_run else "Send?", abort=True)
    done = sending.send_issue(engine, parts, plan, provider, to=to or (), sandbox=sandbox, watch=_progress_bar)
    _print_sent(done, provider, plan, to)


def _print_sent(
    done: SendReport | UnrecordedReport | list[Outcome], provider: Provider, plan: SendPlan, to: list[str] | None
) -> None:
    if isinstance(done, UnrecordedReport):
        _print_unrecorded(done, provider, plan, to)
    elif isinstance(done, SendReport):
        _print_report(done, provider.name)
    else:
        _print_tests(done, provider.name)


def _summary(plan: SendPlan, to: list[str] | None, *, dry_run: bool, sandbox: bool) -> Table:
    """What the user confirms."""
    summary = Table(show_header=False, box=None)
    summary.add_row("Issue", escape(plan.content.subject))
    summary.add_row("List", escape(plan.mailing_list.name))
    if to:
        summary.add_row("Test to", f"{escape(', '.join(to))} ({TEST_RECORD})")
    else:
        audience = f" {plan.issue.kind} member(s)" if plan.campaign is None else " still to send"
        summary.add_row("Recipients", f"{plan.recipients:,}{audience}")
        if plan.batch_size == 1:  # SMTP: a message of their own to each reader
            summary.add_row("Messages", f"{plan.batches:,}, one per reader")
        else:
            summary.add_row("Requests", f"{plan.batches:,}, each of up to {plan.batch_size:,} recipients")
    summary.add_row("HTML size", f"{kilobytes(plan.html_bytes)} as a reader receives it")
    if plan.campaign is not None:
        summary.add_row(
            "Resuming",
            f"started {plan.campaign.created_at:%Y-%m-%d %H:%M} UTC with the content stored then; "
            f"so far {_counts_line(plan.counts)}",
        )
        if plan.counts["uncertain"] and not plan.resend_uncertain:
            summary.add_row(
                "Uncertain",
                f"{plan.counts['uncertain']:,} recipients whose answer was lost are not resent "
                "(--resend-uncertain resends them)",
            )
        summary.add_row("Checks", "ran when this send started")
    elif plan.checks.ok:
        summary.add_row("Checks", "[green]all passed[/]")
    else:
        summary.add_row("Checks", f"[red]{len(plan.checks.problems)} failed[/]")
    mode = "dry run (nothing is sent)" if dry_run else "sandbox (SendGrid validates, delivers nothing)" if sandbox else None
    if mode:
        summary.add_row("Mode", mode)
    return summary


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{number:,} {state.replace('_', ' ')}" for state, number in counts.items() if number) or "no recipients"


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f}/s")


@contextmanager
def _progress_bar(plan: SendPlan) -> Iterator[Callable[[sending.Progress], None]]:
    """The bar a recorded send shows: recipients settled, and how many this run sent and failed."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("sent [green]{task.fields[sent]:,}[/] failed [red]{task.fields[failed]:,}[/]"),
        _Rate(),
        TimeRemainingColumn(),
    )
    with ProgressBar(*columns, console=console) as bar:
        task = bar.add_task("Sending", total=plan.recipients, sent=0, failed=0)
        first: dict[str, int] = {}

        def show(progress: sending.Progress) -> None:
            first.setdefault("sent", progress.counts["sent"])
            first.setdefault("failed", progress.counts["failed"])
            bar.update(
                task,
                total=progress.to_send,
                completed=progress.done,
                sent=progress.counts["sent"] - first["sent"],
                failed=progress.counts["failed"] - first["failed"],
            )

        yield show


def _print_report(report: SendReport, provider: str) -> None:
    """The recorded send's counts; exit 7 if a signal stopped it, the error if anything else did."""
    console.print(f"Campaign #{report.campaign.id}: {escape(report.campaign.content.subject)}", highlight=False)
    table = Table()
    table.add_column("state")
    table.add_column("recipients", justify="right")
    for state, number in report.counts.items():
        if number:
            table.add_row(state.replace("_", " "), f"{number:,}")
    console.print(table)
    console.print(f"{report.requests:,} request(s) to {provider}.", highlight=False)
    if report.uncertain_batches:
        err_console.print(
            f"[yellow]{len(report.uncertain_batches)} batch(es) are uncertain[/]: their request may have been "
            f"delivered but no answer was recorded. They are not resent unless you run the send again "
            f"with --resend-uncertain (which may deliver them twice). `newsletter status` lists them."
        )
    if report.finished:
        console.print("[green]Done:[/] every recipient is settled.")
    if report.stopped_by is not None:
        print_error(str(report.error))
        raise typer.Exit(STOPPED)
    if report.error is not None:
        raise report.error


def _print_tests(outcomes: list[Outcome], provider: str) -> None:
    """One line per test message; exit 1 unless every one went out."""
    for outcome in outcomes:
        address = escape(outcome.email)
        if outcome.state == "sent":
            console.print(f"[green]✓[/] {address}: sent by {provider} ({outcome.message_id or 'no message id'})", highlight=False)
        else:
            err_console.print(f"[red]✗[/] {address}: {outcome.state}: {escape(outcome.error or '')}", highlight=False)
    console.print(f"{len(outcomes):,} test message(s): {TEST_RECORD}.", highlight=False)
    if any(outcome.state != "sent" for outcome in outcomes):
        raise typer.Exit(1)


def _print_unrecorded(copies: UnrecordedReport, provider: Provider, plan: SendPlan, to: list[str] | None) -> None:
    """A dry run's outbox, or what the sandbox or a test accepted; exit 1 if anything failed."""
    for problem in copies.problems:
        err_console.print(f"[red]✗[/] {escape(problem)}", highlight=False)
    if isinstance(provider, Outbox):
        _print_outbox(copies, provider, plan, to)
        return
    console.print(
        f"{copies.accepted:,} of {copies.recipients:,} recipient(s) accepted by {provider.name} in {copies.requests:,} "
        f"request(s); nothing was recorded as the issue's delivery.",
        highlight=False,
    )
    if copies.problems:
        raise typer.Exit(1)


def _print_outbox(copies: UnrecordedReport, outbox: Outbox, plan: SendPlan, to: list[str] | None) -> None:
    if to:
        console.print(f"A real test send would mail {len(to)} address(es): {TEST_RECORD}.", highlight=False)
    elif plan.campaign is None:
        console.print(
            f"A real send would record a campaign for {plan.describe}, snapshot its {plan.recipients:,} "
            f"subscribed {plan.issue.kind} member(s) and send them {copies.requests:,} request(s) to "
            f"{outbox.provider.name}.",
            highlight=False,
        )
    else:
        console.print(
            f"A real send would resume campaign #{plan.campaign.id} and send {copies.recipients:,} "
            f"recipient(s) in {copies.requests:,} request(s).",
            highlight=False,
        )
    console.print("Dry run: nothing was sent and nothing was recorded.")
    # Last, so that the paths are what the reader's eye lands on.
    requests = f"{len(outbox.files)} request{'' if len(outbox.files) == 1 else 's'}"
    console.print(
        f"Outbox:  {outbox.folder}/ holds {requests} (batch-NNNN.*, exactly what would be sent to "
        f"{outbox.provider.name}) and {outbox.eml.name if outbox.eml else 'no message'}, the message "
        "as the first recipient would receive it.",
        highlight=False,
        soft_wrap=True,
    )
    if outbox.html is not None:
        console.print(
            f"Preview: {outbox.html.absolute().as_uri()} (or `{invoked_as()} preview` for phone and desktop widths)",
            highlight=False,
            soft_wrap=True,
        )
