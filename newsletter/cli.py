"""The `newsletter` command: parses options, calls the library, prints. No behaviour lives here."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import NewsletterError

if TYPE_CHECKING:
    from datetime import date

    from rich.table import Table
    from sqlalchemy import Engine

    from .config import Settings
    from .daily import RunReport, StepResult
    from .edition import Edition
    from .providers import Provider
    from .report import IssueReport
    from .send import Interruption, SendPlan, SendReport
    from .send.campaigns import BatchInfo
    from .send.transactional import Outcome
    from .send.unrecorded import UnrecordedReport
    from .subscriber_csv import ImportReport

# Tracebacks with local variables could print a secret; a NewsletterError prints only its message.
# Help and usage errors in click's plain format: typer's rich panels would double the CPU time of
# `newsletter --help` (they import rich's Markdown, Syntax and Traceback renderers).
app = typer.Typer(
    help="Turn a day's research digest into an email and deliver it through SendGrid or SMTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
lists_app = typer.Typer(help="Mailing lists.", no_args_is_help=True)
subscribers_app = typer.Typer(help="Subscribers: add, import, export, sync with SendGrid.", no_args_is_help=True)
app.add_typer(lists_app, name="lists")
app.add_typer(subscribers_app, name="subscribers")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="TOML config file (default: ./newsletter.toml).")
    ] = None,
) -> None:
    ctx.obj = config


def settings_from(ctx: typer.Context) -> Settings:
    """The settings for this invocation, loaded on first use (so --help never needs a valid config)."""
    # Imported here: pydantic-settings is a tenth of a second that `--help` does not need.
    from .config import Settings, environment_warnings, load_settings

    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings(root.obj)
        for warning in environment_warnings(os.environ):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return root.obj


def engine_from(ctx: typer.Context) -> Engine:
    """The database for this command, its schema up to date: made once per command (call this once)
    and handed to every library function that needs it; disposed of when the command ends."""
    from .db import connected

    return ctx.with_resource(connected(settings_from(ctx)))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the unsubscribe pages, the SendGrid Event Webhook and the public archive folder."""
    from .server import serve as run_server

    run_server(settings_from(ctx), host=host, port=port)


@subscribers_app.command("sync")
def subscribers_sync(ctx: typer.Context) -> None:
    """Pull SendGrid's suppression lists (unsubscribes, bounces, spam reports, invalid emails) and mark those subscribers."""
    from datetime import datetime, timezone

    from .suppressions import sync_suppressions

    for result in sync_suppressions(engine_from(ctx), settings_from(ctx)):
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


# The day of the digest an issue is made from; without it, the latest digest in digests_dir.
IssueDate = Annotated[
    Optional[datetime],
    typer.Option("--date", formats=["%Y-%m-%d"], help="Digest date, YYYY-MM-DD (default: the latest digest)."),
]
# Instead of a day's issue, the weekly edition made from an ISO week's digests.
IssueWeek = Annotated[
    Optional[str],
    typer.Option("--week", metavar="YYYY-Www", help="The weekly edition of this ISO week, e.g. 2026-W04 (instead of --date)."),
]


def _edition(date: datetime | None, week: str | None) -> Edition | None:
    """The issue --date or --week names (None: neither was given); a usage error for both, or for a
    week that is not one."""
    from .edition import Edition

    if date is not None and week is not None:
        raise typer.BadParameter("give --date or --week, not both", param_hint="'--date' / '--week'")
    if week is not None:
        try:
            return Edition.parse_week(week)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="'--week'") from None
    return Edition.daily(date.date()) if date is not None else None


@app.command()
def generate(
    ctx: typer.Context,
    date: Annotated[
        Optional[datetime],
        typer.Option("--date", formats=["%Y-%m-%d"], help="The day, YYYY-MM-DD (default: today in `timezone`)."),
    ] = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, max=50, help="How many papers (default: digest_top).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write the digest anew even if there is one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Write the day's digest from Hugging Face's Daily Papers, each paper summarised by the
    configured summarizer (exit 3 if the source or the model fails, or the day has no papers)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .errors import GenerateError
    from .generate import generate_day

    settings = settings_from(ctx)
    day = date.date() if date else settings.local_date(settings.clock())
    engine = engine_from(ctx)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        disable=as_json or not err_console.is_terminal,
    )
    task = progress.add_task(f"Summarising {day.isoformat()}'s papers", total=None)
    try:
        with progress:
            generated = generate_day(
                settings, engine, day, top=top, force=force, on_paper=lambda paper: progress.advance(task)
            )
    except GenerateError as error:
        if as_json:
            _print_json({"date": day.isoformat(), "written": None, "error": str(error), "status": error.exit_code})
        else:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    rows = [
        {"id": item.paper.id, "title": item.paper.title, "upvotes": item.paper.upvotes,
         "cached": item.summary.cached, "tokens": item.summary.tokens, "thumbnail": item.thumbnail}
        for item in generated.papers
    ]  # fmt: skip
    if as_json:
        _print_json({"date": day.isoformat(), "written": str(generated.path), "papers": rows,
                     "tokens": generated.tokens, "warnings": generated.warnings})  # fmt: skip
        return
    from rich.table import Table

    table = Table(title=f"{generated.path}", title_justify="left")
    for column, justify in (("#", "right"), ("paper", "left"), ("upvotes", "right"), ("summary", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rank, row in enumerate(rows, start=1):
        cost = "cached" if row["cached"] else (f"{row['tokens']:,} tokens" if row["tokens"] else "from the source")
        table.add_row(str(rank), escape(f"{row['id']} {row['title']}"), str(row["upvotes"]), cost)
    console.print(table)
    for warning in generated.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"Tokens used: {generated.tokens:,}", highlight=False)


@app.command()
def check(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None) -> None:
    """Run the pre-send checks on an issue: size, images, links, unsubscribe link, text part."""
    from .checks import run_checks
    from .digest import load_issue
    from .render import render_issue

    edition = _edition(date, week)
    settings = settings_from(ctx)
    source = load_issue(settings, edition)
    report = run_checks(render_issue(source, settings))
    for problem in report.problems:
        err_console.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
    console.print(report.size_line(), highlight=False)
    if not report.ok:
        err_console.print(f"[bold red]{len(report.problems)} problem(s):[/] {source.edition.describe} is not ready to send")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {source.edition.describe} passes every check", highlight=False)


@app.command()
def publish(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None) -> None:
    """Write an issue's web version to the public folder and update the archive and the Atom feed."""
    from .digest import load_issue
    from .publish import publish_issue

    edition = _edition(date, week)
    settings = settings_from(ctx)
    source = load_issue(settings, edition)
    publication = publish_issue(source, settings)
    issue = publication.issue
    console.print(f"Published {source.edition.describe}: {issue.url}", highlight=False)
    console.print(f"  page     {publication.page}", highlight=False)
    console.print(f"  archive  {publication.archive} ({len(publication.issues)} issue(s))", highlight=False)
    console.print(f"  feed     {publication.feed}", highlight=False)


@app.command()
def render(
    ctx: typer.Context,
    date: IssueDate = None,
    week: IssueWeek = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the HTML part to this file.")] = None,
    text: Annotated[Optional[Path], typer.Option("--text", help="Write the plain-text part to this file.")] = None,
) -> None:
    """Render an issue's email: the HTML (--out) and the plain-text part (--text); else HTML to stdout."""
    from .digest import load_issue
    from .files import write_atomic
    from .render import GMAIL_CLIP_BYTES, render_issue

    edition = _edition(date, week)
    settings = settings_from(ctx)
    issue = render_issue(load_issue(settings, edition), settings)
    if out is None and text is None:
        sys.stdout.write(issue.html)
        return
    for path, content in ((out, issue.html), (text, issue.text)):
        if path is not None:
            write_atomic(path, content)
    clip = GMAIL_CLIP_BYTES // 1024
    size = f"[bold red]over Gmail's {clip} KB clip[/]" if issue.html_bytes > GMAIL_CLIP_BYTES else f"(Gmail clips at {clip} KB)"
    console.print(f"Subject  {escape(issue.subject)}", highlight=False)
    console.print(f"HTML     {issue.html_bytes / 1024:.1f} KB {size}", highlight=False)
    for path in (out, text):
        if path is not None:
            console.print(f"wrote    {escape(str(path))}", highlight=False)


@app.command()
def preview(
    ctx: typer.Context,
    date: IssueDate = None,
    port: Annotated[int, typer.Option(help="Port to serve the preview on (127.0.0.1).", min=1, max=65535)] = 8025,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the default browser; --no-open only prints the URL.")
    ] = True,
) -> None:
    """Preview an issue in the browser at phone and desktop widths, live-reloaded as files change."""
    from .preview import serve_preview

    def ready(url: str) -> None:
        console.print(f"Previewing at {url}  (Ctrl+C to stop)", highlight=False)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    serve_preview(settings_from(ctx), date.date() if date else None, port=port, ready=ready)


ListName = Annotated[Optional[str], typer.Option("--list", help="List name (default: settings.default_list).")]


@app.command()
def send(
    ctx: typer.Context,
    date: IssueDate = None,
    week: IssueWeek = None,
    list_name: ListName = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Send even if pre-send checks fail.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the requests to an outbox folder; send nothing, record nothing.")
    ] = False,
    outbox: Annotated[
        Optional[Path], typer.Option(help="Dry-run folder (default: <outbox_dir>/<date or week>/).")
    ] = None,
    to: Annotated[
        Optional[list[str]], typer.Option("--to", help="Send a test to this address only (repeatable); not recorded.")
    ] = None,
    sandbox: Annotated[
        bool,
        typer.Option("--sandbox", help="SendGrid sandbox mode: validated by SendGrid, delivered to nobody, not recorded."),
    ] = False,
    resend_uncertain: Annotated[
        bool,
        typer.Option(
            "--resend-uncertain",
            help="Also resend batches whose answer was lost (and retry lost answers): risks duplicates.",
        ),
    ] = False,
) -> None:
    """Send an issue to a list through the configured provider, once: batched, resumable, never twice.

    A day's issue goes to the list's daily members; the weekly edition (--week) to its weekly members."""
    from rich.table import Table

    from . import send as sending
    from .send.unrecorded import UnrecordedReport, default_outbox

    edition = _edition(date, week)
    settings = settings_from(ctx)
    issue = sending.issue_to_send(settings, edition)
    engine = engine_from(ctx)
    plan = sending.plan_send(
        engine, settings, issue, list_name or settings.default_list, resend_uncertain=resend_uncertain
    )
    if plan.finished and not to:
        console.print(
            f"Nothing to do: {plan.describe} was sent on {plan.campaign.finished_at:%Y-%m-%d %H:%M} UTC "
            f"({_counts_line(plan.counts)}). `newsletter status` shows the details.",
            highlight=False,
        )
        return
    summary = Table(show_header=False, box=None)
    summary.add_row("Issue", escape(plan.content.subject))
    summary.add_row("List", escape(plan.mailing_list.name))
    if to:
        summary.add_row("Test to", escape(", ".join(to)) + " (not recorded)")
    else:
        audience = f" {plan.issue.kind} member(s)" if plan.campaign is None else " still to send"
        summary.add_row("Recipients", f"{plan.recipients:,}{audience}")
        summary.add_row("Requests", f"{plan.batches:,} of up to {plan.batch_size}")
    summary.add_row("HTML size", f"{plan.html_bytes / 1024:.1f} KB")
    if plan.campaign is not None:
        summary.add_row(
            "Resuming",
            f"started {plan.campaign.created_at:%Y-%m-%d %H:%M} UTC with the content stored then; "
            f"so far {_counts_line(plan.counts)}",
        )
        if plan.counts["uncertain"] and not resend_uncertain:
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
    console.print(summary)
    overridden = sending.require_checks(plan, force=force)
    if overridden:
        err_console.print(f"[yellow]warning:[/] sending despite {len(overridden)} failed check(s) (--force)")
    # Made before asking: missing credentials stop here, before anything is asked or stored.
    provider = sending.open_provider(settings, dry_run=dry_run, outbox=outbox or default_outbox(settings, issue))
    if not yes:
        typer.confirm("Write the dry run?" if dry_run else "Send?", abort=True)
    if to or dry_run or sandbox:
        done = sending.execute(engine, settings, plan, provider, to=to or (), sandbox=sandbox)
        if isinstance(done, UnrecordedReport):
            _print_unrecorded(done, provider, plan, to)
        else:
            _print_tests(done, provider.name)
        return
    # SIGINT and SIGTERM stop the send gently from here on: the requests out are answered and recorded.
    with sending.Interruption() as interruption:
        report = _send_with_progress(engine, settings, plan, provider, interruption)
    _print_report(report, provider.name)
    if report.stopped_by is not None:
        from .daily import STOPPED

        err_console.print(f"[bold red]error:[/] {escape(str(report.error))}", highlight=False, soft_wrap=True)
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
    console.print("Test messages are recorded as such, never as the issue's delivery.")
    if any(outcome.state != "sent" for outcome in outcomes):
        raise typer.Exit(1)


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{number:,} {state.replace('_', ' ')}" for state, number in counts.items() if number) or "no recipients"


def _send_with_progress(
    engine: Engine, settings: Settings, plan: SendPlan, provider: Provider, interruption: Interruption
) -> SendReport:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from . import send as sending

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:,.0f}/s")

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("sent [green]{task.fields[sent]:,}[/] failed [red]{task.fields[failed]:,}[/]"),
        Rate(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
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

        return sending.send_campaign(
            engine, settings, plan, provider=provider, on_progress=show, interruption=interruption
        )


def _print_report(report: SendReport, provider: str) -> None:
    from rich.table import Table

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


def _print_unrecorded(
    copies: UnrecordedReport, provider: Provider, plan: SendPlan, to: list[str] | None
) -> None:
    from .providers.outbox import Outbox

    outbox = provider if isinstance(provider, Outbox) else None
    for problem in copies.problems:
        err_console.print(f"[red]✗[/] {escape(problem)}", highlight=False)
    if outbox is not None:
        if to:
            console.print(f"A real test send would mail {len(to)} address(es) and record nothing.", highlight=False)
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
                f"Preview: {outbox.html.as_uri()} (or `newsletter preview` for phone and desktop widths)",
                highlight=False,
                soft_wrap=True,
            )
        return
    console.print(
        f"{copies.accepted:,} of {copies.recipients:,} recipient(s) accepted by {provider.name} in {copies.requests:,} "
        f"request(s); nothing was recorded as the issue's delivery.",
        highlight=False,
    )
    if copies.problems:
        raise typer.Exit(1)


@app.command()
def status(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None, list_name: ListName = None) -> None:
    """Show how the send of an issue stands: counts by state, each failure, batches in flight or uncertain."""
    from rich.table import Table

    from . import send as sending

    edition = _edition(date, week)
    settings = settings_from(ctx)
    name = list_name or settings.default_list
    engine = engine_from(ctx)
    if edition is not None and not edition.weekly:
        _print_review(engine, edition.days[0])
    state = sending.campaign_status(engine, edition, name, now=settings.clock())
    if state is None:
        console.print(f"No send to list {name!r} has started{' for ' + edition.describe if edition else ''}.")
        return
    campaign = state.campaign
    sender = state.sender
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
    from . import db
    from .review import AWAITING, review_of

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
    from rich.table import Table

    table = Table(title=escape(title))
    for column in ("batch", "recipients", "started", "why"):
        table.add_column(column)
    for batch in batches:
        started = f"{batch.started_at:%Y-%m-%d %H:%M:%S}" if batch.started_at else ""
        table.add_row(str(batch.id), f"{batch.size:,}", started, escape(batch.error or why))
    return table


# -- report -----------------------------------------------------------------------------------------


@app.command()
def report(
    ctx: typer.Context,
    date: Annotated[
        Optional[datetime], typer.Option("--date", formats=["%Y-%m-%d"], help="The issue of this day, YYYY-MM-DD.")
    ] = None,
    week: Annotated[
        Optional[str],
        typer.Option(
            "--week", metavar="YYYY-Www", help="The issues of this ISO week (its daily issues and its weekly edition), e.g. 2026-W04."
        ),
    ] = None,
    last: Annotated[Optional[int], typer.Option("--last", min=1, help="The last N issues of each list.")] = None,
    list_name: Annotated[Optional[str], typer.Option("--list", help="Only this list (default: every list).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What readers did with each issue: delivered, unique opens and clicks (per paper), bounces, spam reports, unsubscribes."""
    from .db import reading
    from .report import Selection, Tracking, issue_reports

    if sum(option is not None for option in (date, week, last)) > 1:
        raise typer.BadParameter("give one of --date, --week and --last", param_hint="--date/--week/--last")
    edition = _edition(date, week)
    settings = settings_from(ctx)
    selection = Selection(
        day=date.date() if date else None,
        week=edition if edition is not None and edition.weekly else None,
        last=last,
        list_name=list_name,
    )
    with reading(engine_from(ctx)) as conn:
        reports = issue_reports(conn, selection, Tracking(settings.track_opens, settings.track_clicks))
    if as_json:
        import json

        typer.echo(json.dumps({"issues": [r.as_json() for r in reports]}, ensure_ascii=False))
    elif len(reports) == 1:
        _print_issue_report(reports[0])
    else:
        _print_trend(reports)


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def _print_issue_report(report: IssueReport) -> None:
    from rich.table import Table

    not_tracked = "not tracked"
    console.print(f"The {report.issue} {report.edition} issue to list {escape(report.list)!r}", highlight=False)
    table = Table()
    for column, justify in (("", "left"), ("readers", "right"), ("rate", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = [
        ("sent", report.sent, None, ""),
        ("delivered", report.delivered, report.rate(report.delivered, of_sent=True), "of sent"),
        ("unique opens", report.unique_opens, report.rate(report.unique_opens), "of delivered"),
        ("unique clicks", report.unique_clicks, report.rate(report.unique_clicks), "of delivered"),
        ("bounces", report.bounces, report.rate(report.bounces, of_sent=True), "of sent"),
        ("spam reports", report.spam_reports, report.rate(report.spam_reports), "of delivered"),
        ("unsubscribes", report.unsubscribes, report.rate(report.unsubscribes), "of delivered"),
    ]
    for label, number, share, of in rows:
        if number is None:
            table.add_row(label, not_tracked, "")
        else:
            table.add_row(label, f"{number:,}", f"{_percent(share)} {of}".strip() if share is not None else "")
    console.print(table)
    if report.papers:
        papers = Table(title="Clicks per paper (unique readers)")
        for column in ("#", "paper", "clicks", "of delivered"):
            papers.add_column(column, justify="left" if column == "paper" else "right")  # type: ignore[arg-type]
        for paper in report.papers:
            clicks = not_tracked if paper.unique_clicks is None else f"{paper.unique_clicks:,}"
            papers.add_row(str(paper.rank), escape(paper.title), clicks, _percent(report.rate(paper.unique_clicks)))
        console.print(papers)
    if report.unique_opens is None or report.unique_clicks is None:
        off = " and ".join(k for k, v in (("opens", report.unique_opens), ("clicks", report.unique_clicks)) if v is None)
        console.print(f"{off.capitalize()} were not tracked for this issue (track_opens, track_clicks).", highlight=False)


def _print_trend(reports: list[IssueReport]) -> None:
    from rich.table import Table

    from .report import sparkline

    by_list: dict[str, list[IssueReport]] = {}
    for report in reports:
        by_list.setdefault(report.list, []).append(report)
    for name, issues in by_list.items():
        table = Table(title=f"List {escape(name)!r}")
        for column in ("issue", "sent", "delivered", "opens", "clicks", "bounces", "spam", "unsubscribes", "top paper"):
            table.add_column(column, justify="left" if column in ("issue", "top paper") else "right")  # type: ignore[arg-type]
        for r in issues:
            top = max(r.papers, key=lambda p: (p.unique_clicks or 0, -p.rank), default=None)
            table.add_row(
                r.issue,
                f"{r.sent:,}",
                _percent(r.rate(r.delivered, of_sent=True)),
                "not tracked" if r.unique_opens is None else _percent(r.rate(r.unique_opens)),
                "not tracked" if r.unique_clicks is None else _percent(r.rate(r.unique_clicks)),
                f"{r.bounces:,}",
                f"{r.spam_reports:,}",
                f"{r.unsubscribes:,}",
                f"#{top.rank}" if top is not None and top.unique_clicks else "",
            )
        console.print(table)
        opens = sparkline(r.rate(r.unique_opens) for r in issues)
        clicks = sparkline(r.rate(r.unique_clicks) for r in issues)
        console.print(f"open rate  {opens}  (oldest → newest)\nclick rate {clicks}", highlight=False)


# -- lists and subscribers --------------------------------------------------------------------------

JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
StatusFilter = Annotated[
    Optional[str],
    typer.Option("--status", help="Only this status: subscribed, unsubscribed, bounced or complained."),
]


def _print_json(data: object) -> None:
    import dataclasses
    import json

    def default(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot encode {type(value).__name__}")

    typer.echo(json.dumps(data, default=default, ensure_ascii=False, indent=2))


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else ""


@lists_app.command("create")
def lists_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="List name: letters, digits, '.', '_' or '-'.")],
    description: Annotated[str, typer.Option(help="What readers of this list receive.")] = "",
    optin: Annotated[
        str,
        typer.Option(
            "--optin",
            help="How readers who sign up join: double (confirm by mail first) or single (at once).",
        ),
    ] = "double",
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Succeed if the list already exists.")
    ] = False,
) -> None:
    """Create a mailing list."""
    from .subscribers import create_list

    settings = settings_from(ctx)
    with engine_from(ctx).begin() as conn:
        created = create_list(
            conn, name, now=settings.clock(), description=description, optin=optin, exist_ok=if_missing
        )
    console.print(
        f"List {escape(created.name)!r} ({created.optin} opt-in, created {_when(created.created_at)} UTC)",
        highlight=False,
    )


@lists_app.command("list")
def lists_list(ctx: typer.Context, as_json: JsonOutput = False) -> None:
    """Show every list with its members counted by status."""
    from rich.table import Table

    from .db import STATUSES
    from .subscribers import list_summaries

    with engine_from(ctx).begin() as conn:
        summaries = list_summaries(conn)
    if as_json:
        _print_json([{**vars(s.list), "counts": s.counts} for s in summaries])
        return
    table = Table()
    # Names and counts never shrink; the description takes what width is left.
    table.add_column("list", no_wrap=True, min_width=max((len(s.list.name) for s in summaries), default=4))
    table.add_column("opt-in", no_wrap=True)
    for status in STATUSES:
        table.add_column(status, justify="right", no_wrap=True, min_width=len(status))
    table.add_column("description")
    for summary in summaries:
        table.add_row(
            escape(summary.list.name),
            summary.list.optin,
            *(f"{summary.counts[status]:,}" for status in STATUSES),
            escape(summary.list.description),
        )
    console.print(table if summaries else "No lists yet: newsletter lists create NAME")


@lists_app.command("show")
def lists_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="List name.")], as_json: JsonOutput = False
) -> None:
    """Show a list and its members counted by status."""
    from .subscribers import list_summaries

    with engine_from(ctx).begin() as conn:
        summary = list_summaries(conn, name)[0]
    if as_json:
        _print_json({**vars(summary.list), "counts": summary.counts, "total": summary.total})
        return
    console.print(
        f"[bold]{escape(summary.list.name)}[/]  {escape(summary.list.description)}", highlight=False
    )
    console.print(f"{summary.list.optin} opt-in, created {_when(summary.list.created_at)} UTC", highlight=False)
    for status, count in summary.counts.items():
        console.print(f"  {status:<13}{count:>10,}", highlight=False)
    console.print(f"  {'total':<13}{summary.total:>10,}", highlight=False)


@lists_app.command("delete")
def lists_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="List name.")], yes: Yes = False
) -> None:
    """Delete a list and its memberships (subscribers stay; `subscribers remove` erases a person)."""
    from .subscribers import delete_list, list_summaries

    engine = engine_from(ctx)
    if not yes:
        with engine.begin() as conn:
            members = list_summaries(conn, name)[0].total
        typer.confirm(f"Delete list {name!r} and its {members:,} membership(s)?", abort=True)
    with engine.begin() as conn:
        summary = delete_list(conn, name)
    console.print(f"Deleted list {escape(name)!r} ({summary.total:,} membership(s)).", highlight=False)


@subscribers_app.command("add")
def subscribers_add(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="Email address.")],
    list_name: ListName = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The subscriber's name.")] = None,
    attributes: Annotated[
        Optional[list[str]], typer.Option("--attr", help="An attribute as KEY=VALUE (repeatable).")
    ] = None,
    resubscribe: Annotated[
        bool,
        typer.Option(
            "--resubscribe", help="Re-subscribe an address that unsubscribed, bounced or complained."
        ),
    ] = False,
) -> None:
    """Subscribe an address to a list (its name and attributes, if given, are updated)."""
    from .errors import SubscriberError
    from .providers.headers import plain_text
    from .subscribers import get_list, subscribe

    pairs = {}
    for item in attributes or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SubscriberError(f"--attr {item!r}: expected KEY=VALUE")
        pairs[key.strip()] = value.strip()
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


@subscribers_app.command("unsubscribe")
def subscribers_unsubscribe(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="Email address.")],
    list_name: ListName = None,
) -> None:
    """Unsubscribe an address from a list (the record that they said no is kept)."""
    from .subscribers import get_list, unsubscribe

    settings = settings_from(ctx)
    list_name = list_name or settings.default_list
    with engine_from(ctx).begin() as conn:
        changed = unsubscribe(conn, list_id=get_list(conn, list_name).id, email=email, now=settings.clock())
    verb = "Unsubscribed" if changed else "Already unsubscribed:"
    console.print(f"{verb} {escape(email.strip())} from {escape(list_name)}.", highlight=False)


@subscribers_app.command("remove")
def subscribers_remove(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="Email address.")], yes: Yes = False
) -> None:
    """Erase a person (GDPR): record, memberships, event log; past deliveries keep no address.

    Unlike `unsubscribe`, which stops mail but keeps the record that they said no.
    """
    from .subscribers import erase_subscriber

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


@subscribers_app.command("purge-unconfirmed")
def subscribers_purge_unconfirmed(ctx: typer.Context) -> None:
    """Delete sign-ups left unconfirmed for over 30 days (and the people who had nothing else)."""
    from .subscribers import UNCONFIRMED_KEPT_FOR, purge_unconfirmed

    settings = settings_from(ctx)
    with engine_from(ctx).begin() as conn:
        purge = purge_unconfirmed(conn, now=settings.clock())
    console.print(
        f"Deleted {purge.memberships:,} sign-up(s) unconfirmed for over {UNCONFIRMED_KEPT_FOR.days} days; "
        f"{purge.subscribers:,} person(s) had nothing else and were deleted whole.",
        highlight=False,
    )


@subscribers_app.command("list")
def subscribers_list(
    ctx: typer.Context,
    list_name: Annotated[Optional[str], typer.Option("--list", help="Only members of this list.")] = None,
    status: StatusFilter = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (0: all).", min=0)] = 100,
    as_json: JsonOutput = False,
) -> None:
    """List subscribers with their memberships, by subscriber."""
    from rich.table import Table

    from .subscribers import count_subscribers, get_list, iter_memberships

    engine = engine_from(ctx)
    with engine.begin() as conn:
        list_id = get_list(conn, list_name).id if list_name else None
        total = count_subscribers(conn, list_id=list_id, status=status)
    rows = iter_memberships(engine, list_id=list_id, status=status, limit=limit or None)
    if as_json:
        _print_json(list(rows))
        return
    shown = list(rows)
    table = Table()
    # Addresses are what people grep for: never cut them.
    table.add_column("email", no_wrap=True, min_width=max((len(row.email) for row in shown), default=5))
    for column in ("name", "list", "status", "since"):
        table.add_column(column)
    for row in shown:
        table.add_row(
            escape(row.email),
            escape(row.name or ""),
            escape(row.list_name or "-"),
            row.status or "",
            _when(row.since),
        )
    console.print(table)
    if limit and len(shown) == limit and total > limit:
        err_console.print(
            f"Showing the first {limit:,} of {total:,} subscribers (--limit 0 shows all).", highlight=False
        )


@subscribers_app.command("show")
def subscribers_show(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="Email address.")],
    as_json: JsonOutput = False,
) -> None:
    """Show a subscriber: details, memberships and the log of every status change."""
    from rich.table import Table

    from .subscribers import subscriber_details

    with engine_from(ctx).begin() as conn:
        details = subscriber_details(conn, email)
    if as_json:
        _print_json(details)
        return
    who = details.subscriber
    console.print(f"[bold]{escape(who.email)}[/]  {escape(who.name or '')}", highlight=False)
    console.print(f"subscriber #{who.id} since {_when(who.created_at)} UTC", highlight=False)
    for key, value in who.attributes.items():
        console.print(f"  {escape(key)}: {escape(str(value))}", highlight=False)
    memberships = Table(title="Lists")
    for column in ("list", "status", "since", "joined"):
        memberships.add_column(column)
    for m in details.memberships:
        memberships.add_row(escape(m.list_name), m.status, _when(m.updated_at), _when(m.created_at))
    console.print(memberships)
    events = Table(title="Events")
    for column in ("when", "list", "change", "source", "detail"):
        events.add_column(column)
    for e in details.events:
        change = f"{e.previous_status} → {e.status}" if e.previous_status else e.status
        events.add_row(_when(e.created_at), escape(e.list_name or "-"), change, e.source, escape(e.detail))
    console.print(events)


@subscribers_app.command("count")
def subscribers_count(
    ctx: typer.Context,
    list_name: Annotated[Optional[str], typer.Option("--list", help="Only members of this list.")] = None,
    status: StatusFilter = None,
) -> None:
    """Print how many subscribers match (everyone, without filters)."""
    from .subscribers import count_subscribers, get_list

    with engine_from(ctx).begin() as conn:
        list_id = get_list(conn, list_name).id if list_name else None
        console.print(count_subscribers(conn, list_id=list_id, status=status), highlight=False)


@subscribers_app.command("import")
def subscribers_import(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="CSV file with a header row naming at least an 'email' column.")
    ],
    list_name: ListName = None,
    rejects: Annotated[
        Optional[Path],
        typer.Option(help="Write invalid, duplicate and skipped rows (with line and reason) to this CSV."),
    ] = None,
    resubscribe: Annotated[
        bool,
        typer.Option(
            "--resubscribe", help="Re-subscribe addresses that had unsubscribed, bounced or complained."
        ),
    ] = False,
    require_confirmation: Annotated[
        bool,
        typer.Option(
            "--require-confirmation",
            help="Add new rows unconfirmed and send each a confirmation mail, instead of vouching for them.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and count everything; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import subscribers from CSV (UTF-8, comma or semicolon separated) into a list.

    Exits with status 2 if any row was invalid: the valid rows are imported all the same."""
    from .providers import provider_for
    from .subscriber_csv import import_csv

    settings = settings_from(ctx)
    list_name = list_name or settings.default_list
    # Made first: missing credentials stop the import before anything is stored.
    provider = provider_for(settings) if require_confirmation and not dry_run else None
    engine = engine_from(ctx)
    with err_console.status(f"Reading {escape(str(file))}…") as spinner:

        def progress(phase: str, count: int) -> None:
            spinner.update(f"Read {count:,} lines" if phase == "reading" else f"Merging {count:,} rows…")

        report = import_csv(
            engine,
            file,
            list_name=list_name,
            clock=settings.clock,
            resubscribe=resubscribe,
            require_confirmation=require_confirmation,
            rejects=rejects,
            dry_run=dry_run,
            progress=progress,
        )
    if provider is not None:
        from .signup import send_confirmations
        from .subscribers import get_list

        with engine.connect() as conn:
            mailing_list = get_list(conn, list_name)
        with err_console.status(f"Sending {len(report.to_confirm):,} confirmation mail(s)…"):
            outcomes = send_confirmations(engine, settings, mailing_list, report.to_confirm, provider)
        sent = sum(outcome.sent_now for outcome in outcomes)
        err_console.print(f"Confirmation mails sent: {sent:,} of {len(report.to_confirm):,} unconfirmed", highlight=False)
        for outcome in outcomes:
            if outcome.state != "sent":
                err_console.print(escape(f"  {outcome.email}: {outcome.state} {outcome.error or ''}"), highlight=False)
    if as_json:
        _print_json({**vars(report), "problem_count": report.problem_count})
        _fail_on_invalid_rows(report)
        return
    shown = 20
    for problem in report.problems[:shown]:
        where = f"{file}:{problem.line}: {problem.email or '(no address)'}: {problem.reason}"
        err_console.print(escape(where), highlight=False, soft_wrap=True)
    if report.problem_count > shown:
        more = "all of them are in " + str(rejects) if rejects else "--rejects FILE lists them all"
        err_console.print(f"… and {report.problem_count - shown:,} more ({more})", highlight=False)
    head = "Dry run (nothing written)" if dry_run else "Imported"
    console.print(
        f"{head}: {escape(str(file))} into {escape(list_name)}, {report.rows:,} row(s)", highlight=False
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
    if rejects and report.problem_count:
        console.print(f"Rejected rows written to {escape(str(rejects))}", highlight=False)
    _fail_on_invalid_rows(report)


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


@subscribers_app.command("export")
def subscribers_export(
    ctx: typer.Context,
    list_name: ListName = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Write to this file (default: standard output).")
    ] = None,
    status: Annotated[str, typer.Option("--status", help="Members with this status.")] = "subscribed",
) -> None:
    """Export a list's members as CSV (email, name, attributes) that `subscribers import` reads back.

    A cell a spreadsheet would run as a formula (= + - @) gets a leading apostrophe; import removes it."""
    from .db import STATUSES
    from .errors import SubscriberError
    from .subscriber_csv import export_csv

    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    settings = settings_from(ctx)
    count = export_csv(
        engine_from(ctx), list_name=list_name or settings.default_list, path=out, status=status
    )
    if out is not None:
        console.print(f"Exported {count:,} subscriber(s) to {escape(str(out))}", highlight=False)

class _RunCommand(typer.core.TyperCommand):
    """`run`: a usage error that the command line finds (a bad --date, an unknown option) still prints
    --json's line, since a monitor parses it whatever happened."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args  # read first: the parser consumes `args`
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as error:  # click's usage errors, as typer bundles them
            if wants_json:
                from .daily import RunReport

                report = RunReport.refused(None, error, error.exit_code)
                report.error = error.format_message()  # with the option it names, as click shows it
                sys.stdout.write(report.json_line())
            raise


RunDate = Annotated[
    Optional[datetime],
    typer.Option("--date", formats=["%Y-%m-%d"], help="The day to run, YYYY-MM-DD (default: today in the timezone setting)."),
]
RunJson = Annotated[
    bool, typer.Option("--json", help="Also print every step's outcome, counts and duration as one JSON object, the last line.")
]


@app.command("run", cls=_RunCommand)
def run_day(ctx: typer.Context, date: RunDate = None, as_json: RunJson = False) -> None:
    """For cron: publish and send the day's issue to every list (on weekly_day the week's edition too), then sync suppressions, once.

    Exit status 0 when done, nothing was left to do or the issue awaits approval; 3 no digest for
    the day (or it could not be generated); 4 failed pre-send checks (nothing sent); 5 another run
    holds the lock; 6 a batch's answer was lost (uncertain); 7 stopped by SIGINT or SIGTERM (the
    same command resumes); 2 a usage error or a date in the future; 1 any other failure. Logs one
    line per step on stderr."""
    from . import daily

    _run_the_day(ctx, date, as_json, daily.run_day)


@app.command("approve", cls=_RunCommand)
def approve_day(ctx: typer.Context, date: RunDate = None, as_json: RunJson = False) -> None:
    """With review = "approve": approve the day's issue, which the run sent the editors, and run the day: publish and send it to every list, once.

    Exit statuses as `run`'s; 1 if nothing awaits approval for the day."""
    from . import daily

    _run_the_day(ctx, date, as_json, daily.approve_day)


def _run_the_day(ctx: typer.Context, date: datetime | None, as_json: bool, runner: Callable[..., RunReport]) -> None:
    from . import daily
    from .send import Interruption

    day = date.date() if date else None
    try:
        settings = settings_from(ctx)
        day = daily.run_date(settings, day)
        # SIGINT and SIGTERM stop the run gently: the send records its answers, no step starts after.
        with Interruption() as interruption:
            report = runner(
                engine_from(ctx), settings, day, on_step=lambda step: _print_step(day, step), interruption=interruption
            )
    except NewsletterError as error:
        report = daily.RunReport.refused(day, error)
    if report.error is not None:
        err_console.print(f"[bold red]error:[/] {escape(report.error)}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(report.json_line())
    raise typer.Exit(report.status)


def _print_step(day: date, step: StepResult) -> None:
    from .daily import FAILED

    failed = step.outcome == FAILED
    head = f"[bold red]error:[/] run {day} " if failed else f"run {day} "
    err_console.print(head + escape(str(step)), highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except NewsletterError as error:
        _fail(str(error))
    except OSError as error:
        # A full disk, a read-only folder, a file that vanished: one line naming the file.
        where = f"{error.filename}: " if error.filename else ""
        _fail(f"{where}{error.strerror or error}")


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)
