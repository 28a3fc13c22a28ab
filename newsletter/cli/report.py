"""`report`: what readers did with each issue."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..db import reading
from ..report import IssueReport, Selection, Tracking, issue_reports, sparkline
from . import console, edition_from, engine_from, settings_from

app = typer.Typer()


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
    if sum(option is not None for option in (date, week, last)) > 1:
        raise typer.BadParameter("give one of --date, --week and --last", param_hint="--date/--week/--last")
    edition = edition_from(date, week)
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
        typer.echo(json.dumps({"issues": [r.as_json() for r in reports]}, ensure_ascii=False))
    elif len(reports) == 1:
        _print_issue_report(reports[0])
    else:
        _print_trend(reports)


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def _print_issue_report(report: IssueReport) -> None:
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
