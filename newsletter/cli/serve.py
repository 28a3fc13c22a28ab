"""`serve`: the web server (unsubscribe pages, sign-ups, the provider's webhook, the archive)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..server import serve as run_server
from . import settings_from

app = typer.Typer()


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the sign-up, confirmation, preferences and unsubscribe pages, each provider's webhook (/webhooks/<provider>) and the public archive folder."""
    run_server(settings_from(ctx), host=host, port=port)
