"""`report`: what readers did with each issue."""

from __future__ import annotations

import json
from datetime import date as Date
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..content.edition import Edition
from ..db import reading
from ..providers import Refusal, registry
from ..report import NO_WEBHOOK, NOT_CONFIGURED, REPORTING, IssueReport, Selection, Tracking, Webhook, issue_reports, sparkline
from . import OptionError, console, engine_from, parse_day, parse_week, settings_from

if TYPE_CHECKING:
    from ..config import Settings

app = typer.Typer()


@app.command()
def report(
    ctx: typer.Context,
    date: Annotated[
        Optional[Date], typer.Option("--date", metavar="DATE", parser=parse_day, help="The issue of this day, YYYY-MM-DD.")
    ] = None,
    week: Annotated[
        Optional[Edition],
        typer.Option(
            "--week",
            metavar="WEEK",
            parser=parse_week,
            help="The issues of this ISO week (its daily issues and its weekly edition), e.g. 2026-W04.",
        ),
    ] = None,
    last: Annotated[Optional[int], typer.Option("--last", metavar="N", min=1, help="The last N issues of each list.")] = None,
    list_name: Annotated[
        Optional[str], typer.Option("--list", metavar="LIST", help="Only this list (default: every list).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What readers did with each issue: delivered, unique opens and clicks (per paper), bounces, spam reports, unsubscribes."""
    if sum(option is not None for option in (date, week, last)) > 1:
        raise OptionError("give one of --date, --week and --last")
    settings = settings_from(ctx)
    selection = Selection(day=date, week=week, last=last, list_name=list_name)
    with reading(engine_from(ctx)) as conn:
        reports = issue_reports(conn, selection, Tracking(settings.track_opens, settings.track_clicks), _webhook(settings))
    if as_json:
        typer.echo(json.dumps({"issues": [r.as_json() for r in reports]}, ensure_ascii=False))
    elif len(reports) == 1:
        _print_issue_report(reports[0])
    else:
        _print_trend(reports)


def _webhook(settings: Settings) -> Webhook:
    """The configured provider's webhook: where it posts, and whether it takes events."""
    url = f"{settings.base_url}/webhooks/{settings.provider}"
    hook = registry.feedback(settings.provider_section).get(settings.provider)
    if hook is None:
        return Webhook(settings.provider, url, NO_WEBHOOK)
    if isinstance(hook, Refusal):
        return Webhook(settings.provider, url, NOT_CONFIGURED, hook.reason)
    return Webhook(settings.provider, url)


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


# What the report shows instead of a count that was not tracked, or that only the provider's events
# could make (deliveries, bounces, spam reports; opens and clicks) when none came.
NOT_TRACKED = "not tracked"
NO_EVENTS = "no events"


def _print_issue_report(report: IssueReport) -> None:
    console.print(f"The {report.issue} {report.edition} issue to list {escape(report.list)!r}", highlight=False)
    table = Table()
    for column, justify in (("", "left"), ("readers", "right"), ("rate", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    # Each row: its label, its count (None: not tracked), its share, what of, and whether it is
    # made of the provider's events alone.
    rows = [
        ("sent", report.sent, None, "", False),
        ("delivered", report.delivered, report.rate(report.delivered, of_sent=True), "of sent", True),
        ("unique opens", report.unique_opens, report.rate(report.unique_opens), "of delivered", True),
        ("unique clicks", report.unique_clicks, report.rate(report.unique_clicks), "of delivered", True),
        ("bounces", report.bounces, report.rate(report.bounces, of_sent=True), "of sent", True),
        ("spam reports", report.spam_reports, report.rate(report.spam_reports), "of delivered", True),
        ("unsubscribes", report.unsubscribes, report.rate(report.unsubscribes), "of delivered", False),
    ]
    for label, number, share, of, from_events in rows:
        if number is None:
            table.add_row(label, NOT_TRACKED, "")
        elif from_events and report.webhook != REPORTING:
            table.add_row(label, NO_EVENTS, "")
        else:
            table.add_row(label, f"{number:,}", f"{_percent(share)} {of}".strip() if share is not None else "")
    console.print(table)
    if report.no_events is not None:
        console.print(f"{report.no_events[0].upper()}{report.no_events[1:]}.", highlight=False)
    elif report.papers:
        papers = Table(title="Clicks per paper (unique readers)")
        for column in ("#", "paper", "clicks", "of delivered"):
            papers.add_column(column, justify="left" if column == "paper" else "right")  # type: ignore[arg-type]
        for paper in report.papers:
            clicks = NOT_TRACKED if paper.unique_clicks is None else f"{paper.unique_clicks:,}"
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
            heard = r.webhook == REPORTING
            table.add_row(
                r.issue,
                f"{r.sent:,}",
                _percent(r.rate(r.delivered, of_sent=True)) if heard else NO_EVENTS,
                NOT_TRACKED if r.unique_opens is None else _percent(_heard_rate(r, r.unique_opens)),
                NOT_TRACKED if r.unique_clicks is None else _percent(_heard_rate(r, r.unique_clicks)),
                f"{r.bounces:,}" if heard else "",
                f"{r.spam_reports:,}" if heard else "",
                f"{r.unsubscribes:,}",
                f"#{top.rank}" if top is not None and top.unique_clicks else "",
            )
        console.print(table)
        opens = sparkline(_heard_rate(r, r.unique_opens) for r in issues)
        clicks = sparkline(_heard_rate(r, r.unique_clicks) for r in issues)
        console.print(f"open rate  {opens}  (oldest → newest)\nclick rate {clicks}", highlight=False)
        # Why some issues have no events, once for all the issues it holds for.
        why: dict[str, list[str]] = {}
        for r in issues:
            if r.no_events is not None:
                why.setdefault(r.no_events, []).append(r.issue)
        for note, which in why.items():
            console.print(f"{', '.join(which)}: {note}.", highlight=False)


def _heard_rate(report: IssueReport, count: int | None) -> float | None:
    """An opens or clicks rate, or None (a blank) when no event came for the issue: not a zero."""
    return report.rate(count) if report.webhook == REPORTING else None
