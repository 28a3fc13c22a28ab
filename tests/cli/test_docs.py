"""Every command the CLI offers is documented in the README, as sqlite-utils checks its own docs."""

from typing import Any

import typer
import typer.main

from newsletter.cli import app

from ..support import ROOT


def _command_paths(group: Any, prefix: str = "newsletter") -> list[str]:
    # list_commands/get_command, not .commands: a group may load its commands only when asked.
    context = typer.Context(group, info_name=prefix)
    paths = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        path = f"{prefix} {name}"
        paths.extend(_command_paths(command, path) if hasattr(command, "list_commands") else [path])
    return paths


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = _command_paths(typer.main.get_command(app))
    assert len(paths) >= 20
    # Rows may drop the leading `newsletter` after the first command of a group.
    missing = [path for path in paths if path.removeprefix("newsletter ") not in readme]
    assert missing == []
