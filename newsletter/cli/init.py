"""`init`: a new project in this folder (its config file, database, signing key and list)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..config import DEFAULT_CONFIG_FILE
from ..setup import Answers, default_answers, init_project
from . import Yes, console

app = typer.Typer()

# What a new project still needs, in order, once init has made its files.
NEXT_STEPS = (
    "Put the secrets in the environment every command runs with (/etc/newsletter/env, mode 640), "
    "never in newsletter.toml: SENDGRID_API_KEY (or POSTMARK_SERVER_TOKEN, or NEWSLETTER_SMTP_PASSWORD "
    "with provider = \"smtp\"), and the webhook's key.",
    "newsletter doctor: checks what production needs, and says how to fix what is missing.",
    "Run newsletter serve behind the reverse proxy, and newsletter run daily from the systemd timer or "
    "cron (README, Deployment).",
    "Write the day's digest as digests/YYYY-MM-DD.md (or set source = \"huggingface\"); readers sign up "
    "at {base_url}/subscribe/{list}, or come in with newsletter subscribers import FILE.csv.",
)


def _answer(given: str | None, question: str, default: str, yes: bool) -> str:
    if given is not None:
        return given
    return default if yes else typer.prompt(question, default=default)


@app.command()
def init(
    ctx: typer.Context,
    base_url: Annotated[Optional[str], typer.Option("--base-url", metavar="URL", help="The public https address of newsletter serve.")] = None,
    from_email: Annotated[Optional[str], typer.Option("--from", metavar="ADDRESS", help="The sender's address.")] = None,
    postal_address: Annotated[Optional[str], typer.Option("--postal-address", metavar="TEXT", help="The postal address every footer shows.")] = None,
    list_name: Annotated[Optional[str], typer.Option("--list", metavar="LIST", help="The list to create.")] = None,
    yes: Yes = False,
) -> None:
    """Start a project in this folder: a commented newsletter.toml from a few questions, the database, its signing key and the list (no demo data).

    Asks for what no option gives (--yes: the defaults); never overwrites a config file."""
    defaults = default_answers()
    answers = Answers(
        base_url=_answer(base_url, "Public https address (base_url)", defaults.base_url, yes),
        from_email=_answer(from_email, "Sender's address (from_email)", defaults.from_email, yes),
        postal_address=_answer(postal_address, "Postal address for the footer", defaults.postal_address, yes),
        list_name=_answer(list_name, "List name", defaults.list_name, yes),
    )
    project = init_project(Path(ctx.find_root().obj or DEFAULT_CONFIG_FILE), answers)
    key = f", its signing key {project.key_file} (mode 600)" if project.key_file else ""
    console.print(
        f"Wrote {escape(str(project.config_file))}; made the database {escape(project.database)}{key} "
        f"and the list {escape(project.mailing_list.name)!r} ({project.mailing_list.optin} opt-in).",
        highlight=False,
        soft_wrap=True,
    )
    console.print("Next steps:", highlight=False)
    for number, step in enumerate(NEXT_STEPS, start=1):
        text = step.format(base_url=answers.base_url, list=project.mailing_list.name)
        console.print(f"  {number}. {escape(text)}", highlight=False, soft_wrap=True)
