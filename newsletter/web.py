"""The web server (`newsletter serve`): the routes, the pages, and the rules every request and answer
of the site follow; one process hosts everything an email links to: the sign-up form, the
confirmation, preferences and unsubscribe pages, RFC 8058 one-click unsubscribe, the page a test
copy's links open, each provider's webhook (/webhooks/<provider>) and the public folder (archive
pages, thumbnails).

This room owns HTTP and nothing else: a route parses its request, makes one call into readers.py
(which owns what a reader can do and decides what each page says) and renders the page; the
middlewares below hold every request to the site's limits and every answer to its headers; the
server's log holds no address and no token. It may import readers, config, db (the statuses and
frequencies a page shows), tokens (how long links last), content.render (the pages' templates,
palette and fonts) and providers (each provider's webhook); only cli/serve.py imports it.

A bad link gets the same page byte for byte, whatever made it bad, and a POST to a link is answered
before its body is read at all unless the link is good. No cookies anywhere: the signed token is the
reader's only credential. Every request body has a size limit, enforced before it is held
(`_BodyLimit`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import uvicorn
import uvicorn.config
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db
from .config import Settings
from .content.render import DARK, FONT_STACK, LIGHT, environment, page_language, translations
from .errors import DatabaseError
from .providers import Feedback, Refusal, registry
from .readers import ConfirmationPage, Mailer, Readers, Rules, SignUpQueue, unsubscribe_links
from .sections import Site
from .signup import Member, client_key
from .subscribers import MailingList
from .tokens import CONFIRM_WINDOW, RESUBSCRIBE_WINDOW
from .wiring import send_parts

log = logging.getLogger(__name__)

# The page's button and a mail client's one-click POST send a field or two.
MAX_FORM_BODY = 16 * 1024

# The site's own pages load nothing from anywhere and post only to themselves.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Robots-Tag": "noindex, nofollow",
}


def _public_csp(assets_url: str) -> str:
    """The Content-Security-Policy of the public folder's files (archive, web versions, feed).

    They are static pages with inline styles, system fonts and no script; thumbnails come from the
    configured asset URL or any https address (a digest may link a hosted image).
    """
    asset_origin = "{0.scheme}://{0.netloc}".format(urlsplit(assets_url))
    return (
        f"default-src 'none'; img-src 'self' {asset_origin} https: data:; style-src 'unsafe-inline'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )


def mask_email(email: str) -> str:
    """Enough of the address for its owner to recognise it, not enough to harvest from a forwarded link."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}•••@{domain}"


def _as_the_templates_name_it(member: Member) -> dict[str, str]:
    return {
        "list_name": member.mailing_list.name,
        "list_description": member.mailing_list.description,
        "status": member.status,
        "frequency": member.frequency,
    }


class _Pages:
    """The site's HTML pages, in the email's palette and fonts, each with PAGE_HEADERS."""

    def __init__(self, site: Site) -> None:
        self._env = environment(site)
        self._values = {
            "newsletter": site.from_name,
            "postal_address": site.postal_address,
            "archive_url": f"{site.base_url}/",
            "light": LIGHT,
            "dark": DARK,
            "fonts": FONT_STACK,
        }

    def render(self, template: str, status_code: int = 200, member: Member | None = None, **context: object) -> HTMLResponse:
        values = {
            **self._values,
            "membership": _as_the_templates_name_it(member) if member else None,
            "masked_email": mask_email(member.email) if member else "",
            **context,
        }
        html = self._env.get_template(template).render(values)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def invalid(self, status_code: int = 404) -> HTMLResponse:
        # The same bytes for every bad link, whatever made it bad.
        return self.render("unsubscribe_invalid.html.j2", status_code)

    def after_change(self, member: Member, token: str, ticket: str = "") -> HTMLResponse:
        """The unsubscribe link's page once the member is no longer subscribed (offering to undo it
        if given a resubscribe ticket), or subscribed again."""
        template = "unsubscribe_resubscribed.html.j2" if member.status == db.SUBSCRIBED else "unsubscribe_done.html.j2"
        return self.render(template, member=member, token=token, ticket=ticket)

    def sign_up(self, mailing_list: MailingList, status_code: int = 200, **fields: str) -> HTMLResponse:
        values = {"email": "", "name": "", "frequency": db.DAILY, "error": "", "sent_to": "", **fields}
        title = mailing_list.description or mailing_list.name
        return self.render("subscribe.html.j2", status_code, list_title=title, optin=mailing_list.optin, **values)

    def confirmation(self, page: ConfirmationPage) -> HTMLResponse:
        member = page.member
        return self.render(
            "confirm.html.j2",
            member=member,
            state=page.state,
            list_title=member.mailing_list.description or member.mailing_list.name,
            frequency=member.frequency,
            confirm_days=CONFIRM_WINDOW.days,
            preferences_url=page.preferences_url,
            offer_new_link=member.status != db.SUBSCRIBED,
        )


@dataclass(frozen=True)
class _Site:
    """What the routes share, built once by create_app and kept on the app's state."""

    readers: Readers
    mailer: Mailer
    queue: SignUpQueue
    pages: _Pages
    feedback: dict[str, Feedback | Refusal]  # each provider's webhook, by name
    clock: Callable[[], datetime]
    engine: Engine


def _site(request: Request) -> _Site:
    site: _Site = request.app.state.site
    return site


async def _form(request: Request) -> FormData:
    """A page's or a mail client's form (RFC 8058 allows urlencoded and multipart), read whole within
    the body limit before it is parsed; a file is refused (400), so nothing is ever spooled to disk."""
    await request.body()  # parsed below from the bytes held
    return await request.form(max_files=0, max_fields=20)


def _field(form: FormData, name: str) -> str:
    return str(form.get(name) or "")


def _client(request: Request) -> str:
    # Behind a reverse proxy, uvicorn puts the client's address from X-Forwarded-For here (for the
    # proxies in --forwarded-allow-ips).
    return request.client.host if request.client else ""


# -- the routes ---------------------------------------------------------------------------------------


async def unsubscribe_page(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    member = await run_in_threadpool(site.readers.find, token)
    if member is None:
        return site.pages.invalid()
    if member.status != db.SUBSCRIBED:
        # No offer to re-subscribe: whoever opens the link now may not be the reader who left.
        return site.pages.after_change(member, token)
    return site.pages.render("unsubscribe_confirm.html.j2", member=member, token=token)


async def unsubscribe(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    # The link first: a bad one is answered without a byte of its body read.
    if await run_in_threadpool(site.readers.find, token) is None:
        return site.pages.invalid()
    # RFC 8058: a mail client's one-click POST carries exactly this field; the page's button does not.
    one_click = (await _form(request)).get("List-Unsubscribe") == "One-Click"
    member, ticket = await run_in_threadpool(site.readers.unsubscribe, token, one_click=one_click)
    return site.pages.invalid() if member is None else site.pages.after_change(member, token, ticket)


async def resubscribe(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    if await run_in_threadpool(site.readers.find, token) is None:
        return site.pages.invalid()  # body unread
    ticket = _field(await _form(request), "ticket")
    member, allowed = await run_in_threadpool(site.readers.resubscribe, token, ticket)
    if member is None:
        return site.pages.invalid()
    if allowed or member.status == db.SUBSCRIBED:  # subscribed already: e.g. the button pressed twice
        return site.pages.after_change(member, token)
    hours = int(RESUBSCRIBE_WINDOW.total_seconds() // 3600)
    return site.pages.render("unsubscribe_expired.html.j2", 403, member=member, hours=hours)


async def subscribe_form(request: Request) -> Response:
    site = _site(request)
    mailing_list = await run_in_threadpool(site.readers.find_list, request.path_params["list"])
    return site.pages.invalid() if mailing_list is None else site.pages.sign_up(mailing_list)


async def subscribe(request: Request) -> Response:
    site = _site(request)
    mailing_list = await run_in_threadpool(site.readers.find_list, request.path_params["list"])
    if mailing_list is None:
        return site.pages.invalid()
    form = await _form(request)
    email, name, frequency = (_field(form, field) for field in ("email", "name", "frequency"))
    answer = await run_in_threadpool(
        site.readers.sign_up, mailing_list, email, name, frequency, honeypot=_field(form, "website"), client=_client(request)
    )
    if answer.error:
        # The form again as typed, but for a NUL (which the page could not show).
        shown = {"email": email, "name": name, "frequency": frequency}
        fields = {key: value.replace("\x00", "") for key, value in shown.items()}
        return site.pages.sign_up(mailing_list, 400, **fields, error=answer.error)
    return site.pages.sign_up(mailing_list, sent_to=answer.sent_to)


async def confirmation(request: Request) -> Response:
    site = _site(request)
    page = await run_in_threadpool(site.readers.inspect_confirmation, request.path_params["token"])
    return site.pages.invalid() if page is None else site.pages.confirmation(page)


async def confirm(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    if await run_in_threadpool(site.readers.inspect_confirmation, token) is None:
        return site.pages.invalid()  # body unread
    resend = bool((await _form(request)).get("resend"))
    page = await run_in_threadpool(site.readers.confirm, token, resend=resend, client=_client(request))
    if page is None:
        return site.pages.invalid()
    answer = site.pages.confirmation(page)
    if page.mail is not None:  # sent after the answer
        answer.background = BackgroundTask(site.mailer.send, page.mail)
    return answer


async def preferences_page(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    member = await run_in_threadpool(site.readers.find, token)
    if member is None:
        return site.pages.invalid()
    return site.pages.render("preferences.html.j2", member=member, token=token, saved=False)


async def preferences(request: Request) -> Response:
    site, token = _site(request), request.path_params["token"]
    if await run_in_threadpool(site.readers.find, token) is None:
        return site.pages.invalid()  # body unread
    frequency = _field(await _form(request), "frequency")
    chosen = await run_in_threadpool(site.readers.set_frequency, token, frequency)
    if chosen is None:
        return site.pages.invalid()
    status_code = 400 if chosen.outcome == "refused" else 200
    saved = chosen.outcome == "saved"
    return site.pages.render("preferences.html.j2", status_code, member=chosen.member, token=token, saved=saved)


async def notice_of_a_test_copy(request: Request) -> Response:
    """Where a test copy's unsubscribe and preferences links lead (send/addressing.py): nothing
    changes, whatever the link carries."""
    return _site(request).pages.render("test_copy.html.j2")


async def provider_events(request: Request) -> Response:
    site = _site(request)
    hook = site.feedback.get(request.path_params["provider"])
    if hook is None:
        return PlainTextResponse("no such webhook", 404)
    if isinstance(hook, Refusal):  # not configured: never take unproven events
        return PlainTextResponse(hook.reason, hook.status)
    # Headers first: an unproven or replayed request is refused before its body is read.
    refusal = hook.check_headers(request.headers, site.clock())
    if refusal is None:
        body = await request.body()
        refusal = hook.check_body(body, request.headers)
    if refusal is not None:
        return PlainTextResponse(refusal.reason, refusal.status)
    try:
        events = hook.events(body)
    except ValueError as error:
        return PlainTextResponse(str(error), 400)
    # Committed before the 2xx: a provider retries anything else, and duplicates are skipped.
    await run_in_threadpool(site.readers.apply_webhook, events)
    return PlainTextResponse("ok")


class _WholeRest(Convertor[str]):
    """The rest of the path, whatever it holds. Starlette's `path` stops at a newline, and its
    pattern's `$` matches before a final one: `/unsubscribe/<token>%0A` would read as the bare token."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("whole_rest", _WholeRest())

# A link with anything appended (a slash, a newline) is a bad link, and gets the same page.
_ROUTES = [
    Route("/subscribe/{list}", subscribe_form, methods=["GET"]),
    Route("/subscribe/{list}", subscribe, methods=["POST"]),
    Route("/confirm/{token:whole_rest}", confirmation, methods=["GET"]),
    Route("/confirm/{token:whole_rest}", confirm, methods=["POST"]),
    Route("/preferences/{token:whole_rest}", preferences_page, methods=["GET"]),
    Route("/preferences/{token:whole_rest}", preferences, methods=["POST"]),
    Route("/unsubscribe/{token:whole_rest}", unsubscribe_page, methods=["GET"]),
    Route("/unsubscribe/{token:whole_rest}", unsubscribe, methods=["POST"]),
    Route("/resubscribe/{token:whole_rest}", resubscribe, methods=["POST"]),
    Route("/test-copy", notice_of_a_test_copy, methods=["GET"]),
    Route("/test-copy/{token:whole_rest}", notice_of_a_test_copy, methods=["GET"]),
    Route("/webhooks/{provider}", provider_events, methods=["POST"]),
]


def create_app(settings: Settings) -> ASGIApp:
    """The whole site as one ASGI app, its collaborators built here, once, with its own engine
    (disposed of when the app shuts down)."""
    engine = db.connect(settings.database)
    site = settings.site
    parts = send_parts(settings, unsubscribe_links(settings.links, engine))
    readers = Readers(engine, parts.links, parts.confirmations, _rules(settings))
    mailer = Mailer(parts, engine, readers.transaction)
    pages = _Pages(site)
    feedback = registry.feedback(settings.provider_section)
    public_dir = site.public_dir
    public_dir.mkdir(parents=True, exist_ok=True)
    app = Starlette(
        routes=[*_ROUTES, Mount("/", StaticFiles(directory=public_dir, html=True))],
        lifespan=_lifespan,
        exception_handlers={ClientDisconnect: _client_gone, DatabaseError: _database_away},
    )
    app.state.site = _Site(readers, mailer, SignUpQueue(readers, mailer), pages, feedback, settings.clock, engine)
    webhook_limits = {
        f"/webhooks/{name}": hook.max_body for name, hook in feedback.items() if not isinstance(hook, Refusal)
    }
    limited = _BodyLimit(app, webhook_limits, MAX_FORM_BODY)
    return _SecurityHeaders(_NulRefused(limited, pages.invalid(400)), _public_csp(site.assets_url))


def _rules(settings: Settings) -> Rules:
    return Rules(
        newsletter=settings.from_name,
        signup_rate_per_hour=settings.signup_rate_per_hour,
        record_consent_ip=settings.record_consent_ip,
        clock=settings.clock,
        client_key=functools.partial(client_key, settings.signing_keys()[0]),
        messages=translations(page_language(settings.site)),
    )


async def _client_gone(_request: Request, _error: Exception) -> Response:
    # A client that hangs up mid-body (anyone can) is no server error: nothing to log, nobody to answer.
    return Response(status_code=400)


async def _database_away(request: Request, error: Exception) -> Response:
    # The database stayed locked or unreachable past database_timeout: nothing was changed, and a
    # reader (or a mail client's one-click POST) is asked to come back, not shown a server error.
    log.error("a request was answered 503: %s", error)
    page = _site(request).pages.render("unavailable.html.j2", 503)
    page.headers["Retry-After"] = "60"
    return page


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    site: _Site = app.state.site
    site.queue.start()
    yield
    await site.queue.stop()
    await site.mailer.aclose()
    site.engine.dispose()


# -- what every request and answer go through ---------------------------------------------------------


class _SecurityHeaders:
    """Headers every response carries, the public folder's files included; `csp` for those that
    set no Content-Security-Policy of their own (all but the unsubscribe pages)."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self._app = app
        self._csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Content-Type-Options"] = "nosniff"
                headers.setdefault("Content-Security-Policy", self._csp)
            await send(message)

        await self._app(scope, receive, send_with_headers if scope["type"] == "http" else send)


class _NulRefused:
    """A path with a NUL, once decoded, is no link of ours and names no file: `refusal` (400) before
    any route reads it. PostgreSQL refuses a NUL in a string, and the file system in a name, with
    an error that would otherwise be a 500."""

    def __init__(self, app: ASGIApp, refusal: Response) -> None:
        self._app = app
        self._refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope["path"]:
            await self._refusal(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _BodyLimit:
    """Refuses a request body over its path's limit with 413 before holding it: at once when its
    Content-Length says so, else as soon as the bytes read pass the limit (a chunked or trickled
    upload). An answer given before the body was read whole closes the connection, so that the rest
    of it is not read either."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self._app = app
        self._limits = limits
        self._default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limits.get(scope["path"], self._default)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        # The length compared first: int() of thousands of digits is slow (h11 checked they are digits).
        if declared is not None and (len(declared) > len(str(limit)) or int(declared) > limit):
            too_large = PlainTextResponse("request body too large", 413, headers={"Connection": "close"})
            await too_large(scope, receive, send)
            return
        received = 0
        unread = declared not in (None, "0") or "transfer-encoding" in headers

        async def limited_receive() -> Message:
            nonlocal received, unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, "request body too large")
                unread = message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        await self._app(scope, limited_receive, closing_send)


# -- the log ------------------------------------------------------------------------------------------

# What the server's log never shows: a reader's address, a link that carries their token, a token.
_PRIVATE = re.compile(
    r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"'`]+"
    r"|/(?:unsubscribe|resubscribe|confirm|preferences|test-copy)/[^\s\"'<>]*"
    r"|\b[0-9a-z]{1,13}(?:\.[0-9a-z]{1,13}){1,2}\.[A-Za-z0-9_-]{43}"
)


def redact(text: str) -> str:
    return _PRIVATE.sub("[private]", text)


class RedactingFilter(logging.Filter):
    """Takes every address and token out of a log record, its traceback included: an exception's
    message can quote a statement's parameters or a provider's answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, every handler filtered, and this package's warnings on the same stream."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"private": {"()": RedactingFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["private"]
    config["loggers"]["newsletter"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # Everything else (asyncio's unretrieved task errors, a library's warnings) through the filter too.
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the site until interrupted."""
    app = create_app(settings)
    # No access log: every unsubscribe URL carries a reader's token.
    uvicorn.run(
        app, host=host, port=port, access_log=False, server_header=False, log_level="info", log_config=_log_config()
    )
