"""The `newsletter` command: each command parses its options, calls the library, prints.

This room owns the command line and nothing else: no behaviour lives here. It may import any module
of the package (and builds the settings, the database and the provider a command hands down);
nothing in the package but `__main__` imports it. Each command group is a module (issue, generate,
send, status, report, run, serve, lists, subscribers with subscriber_files) that imports the library
at its top; the root command below loads a module only when one of its commands runs, so that
`newsletter --help` lists every command (from COMMANDS) without importing the library. What every
group shares is here: the console, the settings and the database of an invocation, the option types,
JSON output and the error line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, MutableMapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
import typer.main
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import TyperInfo

from ..content.edition import Edition
from ..errors import NewsletterError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from typer._click import Command, HelpFormatter

    from ..config import Settings

# Every command of the root, in the order of `newsletter --help`: the module of this package that
# holds it, and its summary, the first paragraph of its help (which loading the command checks).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "init",
        "Start a project in this folder: a commented newsletter.toml from a few questions, the database, "
        "its signing key and the list (no demo data).",
    ),
    "doctor": (
        "doctor",
        "Check what production needs: https base_url, the key file, the database, the provider's "
        "credentials, the webhook, the proxy, the digest's source and model, the day's digest.",
    ),
    "serve": ("serve", "Serve the sign-up, confirmation, preferences and unsubscribe pages, each provider's webhook (/webhooks/<provider>) and the public archive folder."),
    "generate": (
        "generate",
        "Write the day's digest from Hugging Face's Daily Papers, each paper summarised by the configured "
        "summarizer (exit 3 if the source or the model fails, or the day has no papers).",
    ),
    "check": ("issue", "Run the pre-send checks on an issue: size, images, links, unsubscribe link, text part."),
    "publish": (
        "issue",
        "Write an issue's web version to the public folder and update the archive and the Atom feed.",
    ),
    "render": (
        "issue",
        "Render an issue's email: the HTML (--out) and the plain-text part (--text); else HTML to stdout.",
    ),
    "preview": (
        "issue",
        "Preview an issue in the browser at phone and desktop widths, live-reloaded as files change.",
    ),
    "send": (
        "send",
        "Send an issue to a list through the configured provider, once: batched, resumable, never twice.",
    ),
    "status": (
        "status",
        "Show how the send of an issue stands: counts by state, each failure, batches in flight or uncertain.",
    ),
    "report": (
        "report",
        "What readers did with each issue: delivered, unique opens and clicks (per paper), bounces, spam "
        "reports, unsubscribes.",
    ),
    "run": (
        "run",
        "For cron: publish and send the day's issue to every list (on weekly_day the week's edition too), "
        "then sync suppressions, once.",
    ),
    "approve": (
        "run",
        'With review = "approve": approve the day\'s issue, which the run sent the editors, and run the day: '
        "publish and send it to every list, once.",
    ),
    "lists": ("lists", "Mailing lists."),
    "subscribers": ("subscribers", "Subscribers: add, import, export, sync with the provider's suppression lists."),
}


class _Commands(MutableMapping[str, "Command"]):
    """The root's commands by name: those of COMMANDS, each built (its module imported) when it is
    first looked up, and any added to the root itself."""

    def __init__(self, added: MutableMapping[str, Command]) -> None:
        self._built = dict(added)

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def _build(self, name: str) -> Command:
        module, summary = COMMANDS[name]
        group = typer.main.get_group_from_info(
            TyperInfo(importlib.import_module(f"{__name__}.{module}").app),
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
            suggest_commands=app.suggest_commands,
        )
        command = group.commands[name]
        _name_arguments(command)
        first_paragraph = " ".join((command.help or "").split("\n\n")[0].split())
        assert first_paragraph == summary, f"COMMANDS[{name!r}] is not the first paragraph of its help"
        return command

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._built

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(COMMANDS), **self._built})

    def __len__(self) -> int:
        return len({**dict.fromkeys(COMMANDS), **self._built})

    def summary(self, name: str, limit: int) -> str:
        """What `--help` shows for a command, without building it."""
        if name in self._built:
            return self._built[name].get_short_help_str(limit)
        return TyperCommand(name=name, help=COMMANDS[name][1]).get_short_help_str(limit)


class _Argument(TyperArgument):
    """An argument shown by its metavar alone, as an option with one is: `ADDRESS`, not typer's
    `{ADDRESS}` in the usage line and `ADDRESS <str>` in the list."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None if self.metavar is not None else super().display_type_rich(ctx)

    def _usage_display_name(self) -> str:
        usage = super()._usage_display_name()
        return usage.replace(f"{{{self.metavar}}}", self.metavar) if self.metavar is not None else usage


def _name_arguments(command: Command) -> None:
    # Typer takes no argument class: its arguments (of the command and of a group's subcommands)
    # become _Arguments once built, which changes nothing but their help.
    for sub in getattr(command, "commands", {}).values():
        _name_arguments(sub)
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument


class _Root(TyperGroup):
    """The `newsletter` group: its commands are _Commands, listed in `--help` by their summaries."""

    def __init__(self, **attrs: object) -> None:
        super().__init__(**attrs)  # type: ignore[arg-type]
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: typer.Context, formatter: HelpFormatter) -> None:
        commands = self.commands
        assert isinstance(commands, _Commands)
        limit = formatter.width - 6 - max(len(name) for name in commands)
        with formatter.section("Commands"):
            formatter.write_dl([(name, commands.summary(name, limit)) for name in commands])


# Tracebacks with local variables could print a secret; a NewsletterError prints only its message.
# Help and usage errors in click's plain format: typer's rich panels would double the CPU time of
# `newsletter --help` (they import rich's Markdown, Syntax and Traceback renderers).
app = typer.Typer(
    cls=_Root,
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

    return ctx.with_resource(connected(settings_from(ctx)))


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
