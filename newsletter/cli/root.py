"""The root command's machinery: which module holds each command (COMMANDS), each imported only when
its command is looked up, so that `newsletter --help` imports no library module; and arguments shown
by name in every command's help."""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import TyperInfo

if TYPE_CHECKING:
    from typer._click import Command, HelpFormatter

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
        imported = importlib.import_module(f"{__package__}.{module}")
        # The modules a command imports live as long as its process: frozen, the collector walks
        # them in none of its full collections, a long send's or the one at exit (0.2 s of a send's).
        gc.freeze()
        group = typer.main.get_group_from_info(
            TyperInfo(imported.app),
            # As the root's own (cli/__init__.app): short tracebacks, click's plain help.
            pretty_exceptions_short=True,
            rich_markup_mode=None,
            suggest_commands=True,
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


class Root(TyperGroup):
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
