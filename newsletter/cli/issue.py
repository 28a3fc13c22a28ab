"""`check`, `publish`, `render`, `preview`: an issue's email and web version, made from its digest."""

from __future__ import annotations

import sys
import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..content.checks import kilobytes, received_bytes, run_checks
from ..content.digest import load_issue
from ..files import write_atomic
from ..content.preview import serve_preview
from ..content.publish import publish_issue
from ..content.render import GMAIL_CLIP_BYTES, RenderedIssue, render_issue
from . import IssueDate, IssueWeek, console, edition_from, err_console, print_figures, settings_from

app = typer.Typer()


@app.command()
def check(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None) -> None:
    """Run the pre-send checks on an issue: size, images, links, unsubscribe link, text part."""
    edition = edition_from(date, week)
    settings = settings_from(ctx)
    source = load_issue(settings.site, edition)
    report = run_checks(render_issue(source, settings.site))
    for problem in report.problems:
        err_console.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
    cards = [f"{rank} {kilobytes(size)}" for rank, size in report.card_bytes.items()]
    print_figures(f"{report.size_line()}; cards" if cards else report.size_line(), cards)
    if not report.ok:
        err_console.print(f"[bold red]{len(report.problems)} problem(s):[/] {source.edition.describe} is not ready to send")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {source.edition.describe} passes every check", highlight=False)


@app.command()
def publish(ctx: typer.Context, date: IssueDate = None, week: IssueWeek = None) -> None:
    """Write an issue's web version to the public folder and update the archive and the Atom feed."""
    edition = edition_from(date, week)
    settings = settings_from(ctx)
    source = load_issue(settings.site, edition)
    publication = publish_issue(source, settings.site)
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
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the HTML part to this file.")] = None,
    text: Annotated[
        Optional[Path], typer.Option("--text", metavar="FILE", help="Write the plain-text part to this file.")
    ] = None,
) -> None:
    """Render an issue's email: the HTML (--out) and the plain-text part (--text); else HTML to stdout."""
    edition = edition_from(date, week)
    settings = settings_from(ctx)
    issue = render_issue(load_issue(settings.site, edition), settings.site)
    if out is None and text is None:
        sys.stdout.write(issue.html)
        return
    for path, content in ((out, issue.html), (text, issue.text)):
        if path is not None:
            write_atomic(path, content)
    _print_rendered(issue, out, text)


def _print_rendered(issue: RenderedIssue, html: Path | None, text: Path | None) -> None:
    """The subject, the HTML's size as `check` and `send` report it (as a reader receives it), and
    the files written: the HTML file's own size differs, each reader's links being placeholders."""
    clip = GMAIL_CLIP_BYTES // 1024
    received = received_bytes(issue.html)
    size = f"[bold red]over Gmail's {clip} KB clip[/]" if received > GMAIL_CLIP_BYTES else f"(Gmail clips at {clip} KB)"
    console.print(f"Subject  {escape(issue.subject)}", highlight=False)
    console.print(f"HTML     {kilobytes(received)} as a reader receives it {size}", highlight=False)
    if html is not None:
        console.print(
            f"wrote    {escape(str(html))} ({kilobytes(issue.html_bytes)}: placeholders for each reader's links)",
            highlight=False,
        )
    if text is not None:
        console.print(f"wrote    {escape(str(text))}", highlight=False)


@app.command()
def preview(
    ctx: typer.Context,
    date: IssueDate = None,
    port: Annotated[
        int, typer.Option(metavar="PORT", help="Port to serve the preview on (127.0.0.1).", min=1, max=65535)
    ] = 8025,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the default browser; --no-open only prints the URL.")
    ] = True,
) -> None:
    """Preview an issue in the browser at phone and desktop widths, live-reloaded as files change."""

    def ready(url: str) -> None:
        console.print(f"Previewing at {url}  (Ctrl+C to stop)", highlight=False)
        if open_browser:
            webbrowser.open(url)

    serve_preview(settings_from(ctx).site, date, port=port, ready=ready)
