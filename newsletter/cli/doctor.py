"""`doctor`: what a production set-up needs, each part checked (✓, ✗ with its fix, or – not checked)."""

from __future__ import annotations

import typer
from rich.markup import escape

from ..doctor import Status, examine
from . import JsonOutput, console, print_json, settings_from

app = typer.Typer()

MARKS = {Status.OK: "[green]✓[/]", Status.FAILED: "[bold red]✗[/]", Status.SKIPPED: "–"}


@app.command()
def doctor(ctx: typer.Context, as_json: JsonOutput = False) -> None:
    """Check what production needs: https base_url, the key file, the database, the provider's credentials, the webhook, the proxy, the digest's source and model, the day's digest.

    Prints each check with the fix for each that failed; exit status 1 if any failed. Changes
    nothing and sends nothing. --json prints {"ok", "checks": [{"name", "status", "detail", "fix"}]}."""
    checks = examine(settings_from(ctx))
    failed = any(check.status is Status.FAILED for check in checks)
    if as_json:
        print_json({"ok": not failed, "checks": checks})
    else:
        for check in checks:
            skipped = "not checked: " if check.status is Status.SKIPPED else ""
            console.print(f"{MARKS[check.status]} {check.name}: {skipped}{escape(check.detail)}", highlight=False, soft_wrap=True)
            if check.fix:
                console.print(f"  fix: {escape(check.fix)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if failed else 0)
