"""The `newsletter` command: parses options, calls the library, prints. No behaviour lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .config import Settings, load_settings
from .errors import NewsletterError

# Tracebacks with local variables could print a secret; a NewsletterError prints only its message.
app = typer.Typer(
    help="Turn a day's research digest into an email and deliver it through SendGrid.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings(root.obj)
    return root.obj


def main() -> None:
    try:
        app()
    except NewsletterError as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(1)
