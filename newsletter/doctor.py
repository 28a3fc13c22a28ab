"""`newsletter doctor`: what a production set-up needs, each part looked at without changing
anything (no migration, no key made, no mail sent), and what to do about each that is wrong.

The provider's credentials are tried through the registry's `check` capability (a harmless
authenticated call of the provider's own); everything else is the same for every provider.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import pwd
import stat
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import db
from .config import Settings
from .content.digest import digest_path
from .content.generate import Source
from .errors import ConfigError, GenerateError, MissingAPIKey, NewsletterError
from .providers import Refusal, answers, registry
from .providers.headers import plain_text


class Status(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "not checked"


@dataclass(frozen=True)
class Check:
    """One part of the set-up: what was found, and (when it failed) what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""


# What doctor reads of any answer: enough for a status, a list of models or an error.
MAX_ANSWER_BYTES = 1024 * 1024
# Each model id shown, at most.
_SHOWN_ID = 80


# A detail may quote what a server sent (a header, a model's id): one line of plain text, with no
# escape sequence left to act on the terminal it is printed to.
def _ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, plain_text(detail))


def _failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAILED, plain_text(detail), fix)


def _skipped(name: str, detail: str) -> Check:
    return Check(name, Status.SKIPPED, plain_text(detail))


def examine(settings: Settings) -> list[Check]:
    """Every check, in the order a set-up is built: the settings, the files, the services."""
    today = settings.clock.local_date(settings.clock())
    return [
        check_base_url(settings),
        check_secret_key(settings),
        check_database(settings),
        *asyncio.run(_services(settings, today)),
        check_digest(settings, today),
    ]


async def _services(settings: Settings, today: date) -> list[Check]:
    """The checks that ask a server, at once, none for longer than a connection and a read take
    (a server that drips its answer a byte at a time is cut off there)."""
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    deadline = settings.connect_timeout + settings.read_timeout
    # Redirects followed as generate follows them, for the source; never for the others (_get).
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        checks = {
            "provider": check_provider(settings),
            "webhook": check_webhook(settings, client),
            "proxy": check_proxy(settings, client),
            "source": check_source(settings, client, today),
            "model": check_model(settings, client),
        }
        return list(await asyncio.gather(*(_within(deadline, name, check) for name, check in checks.items())))


async def _within(deadline: float, name: str, check: Awaitable[Check]) -> Check:
    try:
        return await asyncio.wait_for(check, deadline)
    except TimeoutError:
        return _failed(name, f"no whole answer within {deadline:g} s", "check that the server it asks answers, and how fast")


async def _get(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
    """GET `url`, its answer and at most MAX_ANSWER_BYTES of its body; never followed elsewhere."""
    response = await client.send(client.build_request("GET", url, **kwargs), stream=True, follow_redirects=False)
    return response, await answers.read_capped(response, MAX_ANSWER_BYTES)


def check_base_url(settings: Settings) -> Check:
    if urlsplit(settings.base_url).scheme == "https":
        return _ok("base_url", settings.base_url)
    return _failed(
        "base_url",
        f"{settings.base_url} is not https: every link in an email is made from it, and mail clients "
        "send one-click unsubscribes only to https URLs",
        "set base_url to the public https address the reverse proxy serves (e.g. https://news.example.com)",
    )


def check_secret_key(settings: Settings) -> Check:
    """The key file's owner (the user running this, as the service does) and mode (600), then
    whether it holds a usable key."""
    name = "secret key"
    if settings.secret_key is not None:
        return _ok(name, "secret_key is set (NEWSLETTER_SECRET_KEY): the key file is not used")
    path = settings.path(settings.secret_key_file)
    try:
        found = path.stat()
    except FileNotFoundError:
        return _failed(
            name,
            f"{path} is missing",
            "restore it from a backup (every link already sent is signed with it); a new project's "
            "is made by newsletter init",
        )
    except OSError as error:
        return _failed(name, f"{path}: {error.strerror}", "make it readable by the user that runs newsletter")
    me = _user(os.geteuid())
    if found.st_uid != os.geteuid():
        return _failed(
            name,
            f"{path} is owned by {_user(found.st_uid)}, not by {me}, who runs newsletter here",
            f"chown {me} {path} (and run every newsletter command as that one user)",
        )
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o077:
        return _failed(
            name,
            f"{path} has mode {mode:o}: other users may read the key that signs every unsubscribe link",
            f"chmod 600 {path}",
        )
    try:
        settings.signing_keys()
    except ConfigError as error:
        return _failed(name, str(error), "put the key it held back in place (16 or more characters, one line)")
    return _ok(name, f"{path}: owned by {me}, mode {mode:o}")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a file from another machine)
        return f"uid {uid}"


def check_database(settings: Settings) -> Check:
    """Reachable, and at this version's schema: read only, so a database behind is reported, not
    migrated (any other command migrates it)."""
    name = "database"
    url = settings.resolved_database_url
    shown = db.safe_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return _failed(name, "database_url is not a database URL", "set it to sqlite:///path/to/file.db or postgresql://user@host/database")
    # Opening a SQLite file that is not there would make an empty one.
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(parsed.database).exists():
        return _failed(name, f"{parsed.database} does not exist", "check database_url; a new project's is made by newsletter init")
    latest = len(db.MIGRATIONS)
    try:
        version = db.schema_version_of(url, settings.connect_timeout)  # not db.connect, which migrates
    except NewsletterError as error:
        return _failed(name, str(error), "check database_url, and that the database server runs and lets this user in")
    if version == latest:
        return _ok(name, f"{shown}: reachable, schema up to date (version {version})")
    if version == 0:
        return _failed(name, f"{shown} has no schema", "newsletter init makes it (any command does)")
    if version < latest:
        return _failed(
            name,
            f"{shown} is at schema version {version} of {latest}",
            "back it up, then run any command (newsletter lists list): it upgrades the schema",
        )
    return _failed(
        name,
        f"{shown} is at schema version {version}, newer than this newsletter knows ({latest})",
        "install the newsletter version that upgraded it",
    )


async def check_provider(settings: Settings) -> Check:
    name = "provider"
    probe = registry.check(settings.delivery)
    if probe is None:
        return _skipped(name, f"{settings.provider} has no harmless call to try")
    try:
        found, fix = await probe
    except MissingAPIKey as error:
        return _failed(
            name,
            f"{settings.provider}: {error.credential} is not set",
            f"set {error.credential} in the environment every command runs with (/etc/newsletter/env), never in newsletter.toml",
        )
    except NewsletterError as error:
        return _failed(name, f"{settings.provider}: {error}", "change what the message names")
    return _ok(name, f"{settings.provider}: {found}") if fix is None else _failed(name, f"{settings.provider}: {found}", fix)


async def check_webhook(settings: Settings, client: httpx.AsyncClient) -> Check:
    """The provider's webhook key set here, and the webhook at base_url answering an unsigned
    request as newsletter serve does: refused (401/403), which only a server with the key set does."""
    name = "webhook"
    try:
        hook = registry.feedback(settings.provider_section).get(settings.provider)
    except NewsletterError as error:
        return _failed(name, str(error), "correct the webhook setting it names")
    if hook is None:
        return _skipped(name, f"{settings.provider} has no webhook")
    if isinstance(hook, Refusal):
        return _failed(name, hook.reason, "set the webhook's key (README, Configuration) where the commands and newsletter serve read it")
    url = f"{settings.base_url}/webhooks/{settings.provider}"
    try:
        answer = await client.send(client.build_request("POST", url, content=b""), stream=True, follow_redirects=False)
        await answer.aclose()  # the status is the answer
    except httpx.HTTPError as error:
        return _failed(
            name,
            f"{url} could not be reached ({type(error).__name__})",
            "start newsletter serve, and make base_url the address that reaches it through the proxy",
        )
    if answer.status_code in (401, 403):
        return _ok(name, f"the key is set, and {url} refuses an unsigned request ({answer.status_code}) as it should")
    if answer.status_code == 503:
        return _failed(
            name,
            f"{url} answers 503: the server there has no webhook key",
            "give newsletter serve the same settings (its EnvironmentFile) and restart it",
        )
    return _failed(
        name,
        f"{url} answered {answer.status_code}, not newsletter serve's refusal of an unsigned request",
        "point base_url, and the proxy's /webhooks/ location, at newsletter serve (README, Deployment)",
    )


async def check_proxy(settings: Settings, client: httpx.AsyncClient) -> Check:
    """Whether base_url is answered through a reverse proxy, the only thing that should set the
    X-Forwarded-For newsletter serve trusts. The header itself cannot be seen from here; the
    answer shows a proxy when it came over https (newsletter serve speaks plain http only) or
    carries a Via or Server header (newsletter serve sends neither)."""
    name = "proxy"
    try:
        answer, _ = await _get(client, f"{settings.base_url}/")
    except httpx.HTTPError as error:
        return _skipped(name, f"{settings.base_url} could not be reached ({type(error).__name__})")
    for header in ("Via", "Server"):
        if header in answer.headers:
            return _ok(name, f"{settings.base_url} answers through a proxy ({header}: {answer.headers[header][:80]})")
    if urlsplit(settings.base_url).scheme == "https":
        return _ok(name, f"{settings.base_url} answers over https, which a proxy in front of newsletter serve terminates")
    return _failed(
        name,
        f"{settings.base_url} is answered by newsletter serve itself: no reverse proxy in front terminates "
        "https and sets X-Forwarded-For",
        "put the README's nginx server block (Deployment) in front of newsletter serve on 127.0.0.1:8000",
    )


async def check_source(settings: Settings, client: httpx.AsyncClient, today: date) -> Check:
    name = "source"
    if settings.source == "none":
        return _skipped(name, 'digests are written by hand (source = "none")')
    try:
        papers = await Source(client, settings.source_url).papers(today, settings.digest_top)
    except GenerateError as error:
        return _failed(name, str(error), "check source_url and this machine's way out (DNS, firewall, HTTPS_PROXY)")
    return _ok(name, f"{settings.source_url} answers ({len(papers)} papers for {today})")


async def check_model(settings: Settings, client: httpx.AsyncClient) -> Check:
    """The model's server lists llm_model (GET <llm_base_url>/models, which every OpenAI-compatible
    server answers and which costs no tokens)."""
    name = "model"
    if settings.summarizer == "none":
        return _skipped(name, 'summaries come from the source (summarizer = "none")')
    if not settings.llm_model:
        return _failed(name, "llm_model is not set", "set llm_model to the model to ask (e.g. 'gpt-4o-mini')")
    if settings.llm_api_key is None:
        return _failed(
            name,
            "NEWSLETTER_LLM_API_KEY is not set",
            "set it in the environment (any value for a local server without keys)",
        )
    url = f"{settings.llm_base_url.rstrip('/')}/models"
    try:
        answer, body = await _get(client, url, headers={"Authorization": f"Bearer {settings.llm_api_key.get_secret_value()}"})
    except httpx.HTTPError as error:
        return _failed(name, f"{url} could not be reached ({type(error).__name__})", "check llm_base_url, and that the model's server runs")
    if answer.status_code in (401, 403):
        return _failed(name, f"{url} refused NEWSLETTER_LLM_API_KEY ({answer.status_code})", "set NEWSLETTER_LLM_API_KEY to a key the server takes")
    try:
        offered = sorted({str(model["id"]) for model in json.loads(body)["data"]}) if answer.status_code == 200 else None
    except (ValueError, KeyError, TypeError, RecursionError):
        offered = None
    if offered is None:
        return _failed(name, f"{url} answered {answer.status_code}, not a list of models", "check llm_base_url (most servers' end in /v1)")
    if settings.llm_model not in offered:
        return _failed(
            name,
            f"{url} does not offer {settings.llm_model!r} (it offers "
            f"{', '.join(model[:_SHOWN_ID] for model in offered[:10]) or 'none'})",
            "set llm_model to one it offers, or load the model on the server",
        )
    return _ok(name, f"{url} offers {settings.llm_model!r}")


def check_digest(settings: Settings, today: date) -> Check:
    name = "digest"
    path = digest_path(settings.site, today)
    if path.is_file():
        return _ok(name, f"{path} is there")
    if settings.source != "none":
        return _skipped(name, f"{path} is not there yet, and newsletter run generates it")
    return _failed(
        name,
        f"{path} is missing: today's newsletter run would stop with exit status 3",
        'write it before the run, or set source = "huggingface" to have the run generate it',
    )
