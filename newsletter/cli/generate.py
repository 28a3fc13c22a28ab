"""`generate`: the day's digest, written from Hugging Face's Daily Papers."""

from __future__ import annotations

from datetime import date as Date
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..errors import GenerateError
from ..content.generate import Generated, generate_day
from . import (
    JsonOutput,
    console,
    engine_from,
    err_console,
    parse_day,
    print_error,
    print_json,
    print_warning,
    settings_from,
)

app = typer.Typer()


@app.command()
def generate(
    ctx: typer.Context,
    date: Annotated[
        Optional[Date],
        typer.Option("--date", metavar="DATE", parser=parse_day, help="The day, YYYY-MM-DD (default: today in the timezone setting)."),
    ] = None,
    top: Annotated[
        Optional[int], typer.Option("--top", metavar="N", min=1, max=50, help="How many papers (default: the digest_top setting).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Write the digest anew even if there is one.")] = False,
    as_json: JsonOutput = False,
) -> None:
    """Write the day's digest from Hugging Face's Daily Papers, each paper summarised by the
    configured summarizer (exit 3 if the source or the model fails, or the day has no papers)."""
    settings = settings_from(ctx)
    day = date or settings.clock.local_date(settings.clock())
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
                settings.generation, engine, day, top=top, force=force, on_paper=lambda paper: progress.advance(task)
            )
    except GenerateError as error:
        if as_json:
            print_json({"date": day.isoformat(), "written": None, "error": str(error), "status": error.exit_code})
        else:
            print_error(str(error))
        raise typer.Exit(error.exit_code) from None
    _print_generated(day, generated, as_json)


def _print_generated(day: Date, generated: Generated, as_json: bool) -> None:
    rows = [
        {"id": item.paper.id, "title": item.paper.title, "upvotes": item.paper.upvotes,
         "cached": item.summary.cached, "tokens": item.summary.tokens, "thumbnail": item.thumbnail}
        for item in generated.papers
    ]  # fmt: skip
    if as_json:
        print_json({"date": day.isoformat(), "written": str(generated.path), "papers": rows,
                    "tokens": generated.tokens, "warnings": generated.warnings})  # fmt: skip
        return
    table = Table(title=f"{generated.path}", title_justify="left")
    for column, justify in (("#", "right"), ("paper", "left"), ("upvotes", "right"), ("summary", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rank, row in enumerate(rows, start=1):
        cost = "cached" if row["cached"] else (f"{row['tokens']:,} tokens" if row["tokens"] else "from the source")
        table.add_row(str(rank), escape(f"{row['id']} {row['title']}"), str(row["upvotes"]), cost)
    console.print(table)
    for warning in generated.warnings:
        print_warning(warning)
    console.print(f"Tokens used: {generated.tokens:,}", highlight=False)
