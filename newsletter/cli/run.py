"""`run` and `approve`: the day, for cron, and the editors' approval of its issue."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from .. import daily
from ..daily import FAILED, RunReport, StepResult
from ..errors import NewsletterError
from ..send import Interruption
from . import engine_from, err_console, parse_day, print_error, settings_from

app = typer.Typer()


class _RunCommand(TyperCommand):
    """`run`: a usage error that the command line finds (a bad --date, an unknown option) still prints
    --json's line, since a monitor parses it whatever happened."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args  # read first: the parser consumes `args`
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as error:  # click's usage errors, as typer bundles them
            if wants_json:
                report = RunReport.refused(None, error, error.exit_code)
                report.error = error.format_message()  # with the option it names, as click shows it
                sys.stdout.write(report.json_line())
            raise


RunDate = Annotated[
    Optional[date],
    typer.Option(
        "--date", metavar="DATE", parser=parse_day, help="The day to run, YYYY-MM-DD (default: today in the timezone setting)."
    ),
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
    _run_the_day(ctx, date, as_json, daily.run_day)


@app.command("approve", cls=_RunCommand)
def approve_day(ctx: typer.Context, date: RunDate = None, as_json: RunJson = False) -> None:
    """With review = "approve": approve the day's issue, which the run sent the editors, and run the day: publish and send it to every list, once.

    Exit statuses as `run`'s; 1 if nothing awaits approval for the day."""
    _run_the_day(ctx, date, as_json, daily.approve_day)


def _run_the_day(ctx: typer.Context, day: date | None, as_json: bool, runner: Callable[..., RunReport]) -> None:
    try:
        settings = settings_from(ctx)
        day = daily.run_date(settings, day)
        # SIGINT and SIGTERM stop the run gently: the send records its answers, no step starts after.
        with Interruption() as interruption:
            report = runner(
                engine_from(ctx), settings, day, on_step=lambda step: _print_step(day, step), interruption=interruption
            )
    except NewsletterError as error:
        report = RunReport.refused(day, error)
    if report.error is not None:
        print_error(report.error)
    if as_json:
        sys.stdout.write(report.json_line())
    raise typer.Exit(report.status)


def _print_step(day: date, step: StepResult) -> None:
    failed = step.outcome == FAILED
    head = f"[bold red]error:[/] run {day} " if failed else f"run {day} "
    err_console.print(head + escape(str(step)), highlight=False, soft_wrap=True)
