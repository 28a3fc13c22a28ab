"""The `newsletter` command: each command parses its options, calls the library, prints.

This room owns the command line and nothing else: no behaviour lives here. It may import any module
of the package (and builds the settings, the database and the provider a command hands down);
nothing in the package but `__main__` imports it. Each command group is a module (issue, generate,
send, status, report, run, serve, lists, subscribers with subscriber_files) that imports the library
at its top; the root command (root.py) loads a module only when one of its commands runs, so that
`newsletter --help` lists every command (from COMMANDS) without importing the library. What every
group shares is here: the console, the settings and the database of an invocation, the option types,
JSON output and the error line. The collaborators a command hands down are built from the settings
by `newsletter.wiring`, as the web server and the daily run build theirs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..content.edition import Edition
from ..errors import NewsletterError
from .root import Root

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..config import Settings

# Tracebacks with local variables could print a secret; a NewsletterError prints only its message.
# Help and usage errors in click's plain format: typer's rich panels would double the CPU time of
# `newsletter --help` (they import rich's Markdown, Syntax and Traceback renderers).
app = typer.Typer(
    cls=Root,
    help="Turn a day's research digest into an email and deliver it through SendGrid, Postmark or SMTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

console = Console()


def invoked_as() -> str:
    """How to run `newsletter` again as this process was run: by its name when that is what PATH
    finds (make demo's .venv/bin is not on PATH), else by its path."""
    program = Path(sys.argv[0]).resolve()
    on_path = shutil.which("newsletter")
    if on_path is not None and Path(on_path).resolve() == program:
        return "newsletter"
    if program.name == "newsletter":
        return os.path.relpath(program) if program.is_relative_to(Path.cwd()) else str(program)
    return f"{sys.executable} -m newsletter"
err_console = Console(stderr=True)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", metavar="FILE", help="TOML config file (default: ./newsletter.toml).")
    ] = None,
) -> None:
    ctx.obj = config


def settings_from(ctx: typer.Context) -> Settings:
    """The settings for this invocation, loaded on first use (so --help never needs a valid config)."""
    # Imported here, as engine_from's database: pydantic-settings and SQLAlchemy are a third of a
    # second that `--help` does not need.
    from ..config import Settings, environment_warnings, load_settings

    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings(root.obj)
        for warning in environment_warnings(os.environ):
            print_warning(warning)
    return root.obj


def engine_from(ctx: typer.Context) -> Engine:
    """The database for this command, its schema up to date: made once per command (call this once)
    and handed to every library function that needs it; disposed of when the command ends."""
    from ..db import connected

    return ctx.with_resource(connected(settings_from(ctx).database))


# -- the options several commands take --------------------------------------------------------------


class OptionError(typer.BadParameter):
    """Options that cannot be taken, told as one `error:` line (exit status 2, a usage error) naming
    the option whose value it is: `--date: '2026-13-01' is not a date; use YYYY-MM-DD, e.g.
    2026-01-23`. Click's own usage errors (an unknown option, a missing value) keep their usage
    line, which shows what the command takes."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message, param_hint=option)

    def format_message(self) -> str:
        return self.message if self.param_hint is None else f"{self.param_hint}: {self.message}"

    def show(self, file: object = None) -> None:
        print_error(self.format_message())


def parse_day(text: str) -> date:
    """--date's value."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise OptionError(f"{text!r} is not a date; use YYYY-MM-DD, e.g. 2026-01-23", "--date") from None


def parse_week(text: str) -> Edition:
    """--week's value: the weekly edition of that ISO week."""
    try:
        return Edition.parse_week(text)
    except ValueError:
        raise OptionError(f"{text!r} is not a week; use YYYY-Www, e.g. 2026-W04", "--week") from None


# The day of the digest an issue is made from; without it, the latest digest in digests_dir.
IssueDate = Annotated[
    Optional[date],
    typer.Option("--date", metavar="DATE", parser=parse_day, help="Digest date, YYYY-MM-DD (default: the latest digest)."),
]
# Instead of a day's issue, the weekly edition made from an ISO week's digests.
IssueWeek = Annotated[
    Optional[Edition],
    typer.Option(
        "--week", metavar="WEEK", parser=parse_week, help="The weekly edition of this ISO week, e.g. 2026-W04 (instead of --date)."
    ),
]
ListName = Annotated[
    Optional[str], typer.Option("--list", metavar="LIST", help="List name (default: the default_list setting).")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
StatusFilter = Annotated[
    Optional[str],
    typer.Option("--status", metavar="STATUS", help="Only this status: subscribed, unsubscribed, bounced or complained."),
]


def edition_from(day: date | None, week: Edition | None) -> Edition | None:
    """The issue --date or --week names (None: neither was given); a usage error for both."""
    if day is not None and week is not None:
        raise OptionError("give --date or --week, not both")
    return week if week is not None else Edition.daily(day) if day is not None else None


# -- printing ---------------------------------------------------------------------------------------


def print_json(data: object) -> None:
    def default(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot encode {type(value).__name__}")

    typer.echo(json.dumps(data, default=default, ensure_ascii=False, indent=2))


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else ""


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_figures(label: str, figures: Sequence[str]) -> None:
    """`label`, then `figures` separated by commas, on as many lines as the terminal needs, broken
    between figures and never inside one ("#3 4.7 KB"). Rich breaks a line at any space, a no-break
    space too; textwrap only at ASCII ones: so textwrap fills the lines, with each figure's own
    spaces no-break, and rich is handed lines that fit."""
    keep = "\N{NO-BREAK SPACE}"
    text = " ".join([label, ", ".join(figure.replace(" ", keep) for figure in figures)] if figures else [label])
    for line in textwrap.wrap(
        text, width=console.width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    ):
        console.print(escape(line.replace(keep, " ")), highlight=False, soft_wrap=True)


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
    print_error(message)
    sys.exit(1)
