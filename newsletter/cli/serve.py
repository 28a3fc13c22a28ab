"""`serve`: the web server (unsubscribe pages, sign-ups, the provider's webhook, the archive)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ..db import reading
from ..web import serve as run_server
from ..subscribers import list_summaries
from . import console, engine_from, settings_from

app = typer.Typer()


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the sign-up, confirmation, preferences and unsubscribe pages, each provider's webhook (/webhooks/<provider>) and the public archive folder.

    Each list's sign-up form is at <base_url>/subscribe/<list>; their addresses are printed at start."""
    settings = settings_from(ctx)
    with reading(engine_from(ctx)) as conn:
        names = [summary.list.name for summary in list_summaries(conn)]
    if names:
        console.print("Sign-up pages:", highlight=False)
        width = max(map(len, names))
        for name in names:
            url = f"{settings.base_url}/subscribe/{name}"
            console.print(f"  {escape(name.ljust(width))}  {escape(url)}", highlight=False, soft_wrap=True)
    else:
        console.print("No lists yet, so no sign-up pages: newsletter lists create NAME", highlight=False)
    run_server(settings, host=host, port=port)
