"""The web server (`newsletter serve`): unsubscribe pages and RFC 8058 one-click unsubscribe, the
SendGrid Event Webhook, and the public folder (archive pages, thumbnails), so that one process hosts
everything an email links to.

GET on an unsubscribe link changes nothing (mail scanners and link previews follow links); only a
POST does, and it answers once the change is committed. Links that are not ours, and ours for a
membership that no longer exists, get the same page byte for byte, so a probe learns nothing.
No cookies anywhere: the signed token is the reader's only credential, and re-subscribing also takes
the short-lived ticket (tokens.py) that only the page shown right after an unsubscribe carries.

Every request body has a size limit, enforced before it is held (`_BodyLimit`), and a POST to a link
is answered 404 before its body is read at all unless the link is good.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import uvicorn
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db
from .config import Settings
from .errors import TokenError
from .membership import compare_and_set
from .render import DARK, FONT_STACK, LIGHT, environment
from .tokens import RESUBSCRIBE_WINDOW, UnsubscribeLinks
from .providers.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookVerifier, parse_events
from .providers import Event
from .webhook import apply_events

# SendGrid's batches are far smaller; anything bigger is not SendGrid.
MAX_WEBHOOK_BODY = 10 * 1024 * 1024
# The page's button and a mail client's one-click POST send a field or two.
MAX_FORM_BODY = 16 * 1024

# The unsubscribe pages load nothing from anywhere and post only to themselves.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Robots-Tag": "noindex, nofollow",
}


def _public_csp(settings: Settings) -> str:
    """The Content-Security-Policy of the public folder's files (archive, web versions, feed).

    They are static pages with inline styles, system fonts and no script; thumbnails come from the
    configured asset URL or any https address (a digest may link a hosted image).
    """
    asset_origin = "{0.scheme}://{0.netloc}".format(urlsplit(settings.assets_url))
    return (
        f"default-src 'none'; img-src 'self' {asset_origin} https: data:; style-src 'unsafe-inline'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )


@dataclass(frozen=True)
class Membership:
    """What an unsubscribe page shows about the link's owner."""

    list_id: int
    subscriber_id: int
    email: str
    list_name: str
    list_description: str
    status: str


def mask_email(email: str) -> str:
    """Enough of the address for its owner to recognise it, not enough to harvest from a forwarded link."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}•••@{domain}"


class _UnsubscribeService:
    """The database side of the pages: find a token's membership, change its status."""

    def __init__(self, settings: Settings, engine: Engine, links: UnsubscribeLinks) -> None:
        self._settings = settings
        self._engine = engine
        self._links = links
        # SQLite has one writer at a time. Queueing this process's writers on a lock is much
        # faster than letting threads meet in SQLite's busy handler, which sleeps and retries;
        # other processes (a send, an import) still wait through the busy timeout.
        sqlite = engine.dialect.name == "sqlite"
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    def _ids(self, token: str) -> tuple[int, int] | None:
        try:
            return self._links.ids(token)
        except TokenError:
            return None

    def _verified(self, conn: Connection, ids: tuple[int, int], token: str) -> Membership | None:
        membership = _membership(conn, *ids)
        # The signature covers the address: a link made for someone else is not this member's.
        if membership is None or not self._links.signed_for(token, membership.email):
            return None
        return membership

    def find(self, token: str) -> Membership | None:
        ids = self._ids(token)
        if ids is None:
            return None
        with db.reading(self._engine) as conn:
            return self._verified(conn, ids, token)

    # Which memberships the reader's POSTs change is membership.TRANSITIONS' to say: an unsubscribe
    # changes only a subscribed one, a re-subscribe only an unsubscribed one.
    def unsubscribe(self, token: str, source: str) -> tuple[Membership | None, bool]:
        """The membership after the POST, and whether this POST unsubscribed it."""
        return self._change(token, db.UNSUBSCRIBED, source, "")

    def resubscribe(self, token: str) -> tuple[Membership | None, bool]:
        return self._change(
            token, db.SUBSCRIBED, "unsubscribe_page", "re-subscribed from the unsubscribe page"
        )

    def _change(self, token: str, status: str, source: str, detail: str) -> tuple[Membership | None, bool]:
        ids = self._ids(token)
        if ids is None:
            return None, False
        with self._transaction() as conn:
            membership = self._verified(conn, ids, token)
            if membership is None:
                return None, False
            if compare_and_set(
                conn,
                list_id=membership.list_id,
                subscriber_id=membership.subscriber_id,
                expected=membership.status,
                status=status,
                source=source,
                now=self._settings.clock(),
                detail=detail,
            ):
                return replace(membership, status=status), True
            # Refused, or another writer got there first (PostgreSQL reads do not lock): as it is now.
            return _membership(conn, *ids), False

    def apply_webhook(self, events: list[Event | None]) -> None:
        with self._transaction() as conn:
            apply_events(conn, events, self._settings.clock())


# Built once: it runs for every click, and building a statement costs more than running it.
_FIND_MEMBERSHIP = (
    select(db.subscribers.c.email, db.lists.c.name, db.lists.c.description, db.memberships.c.status)
    .select_from(db.memberships.join(db.subscribers).join(db.lists))
    .where(
        db.memberships.c.list_id == bindparam("list"),
        db.memberships.c.subscriber_id == bindparam("subscriber"),
    )
)


def _membership(conn: Connection, list_id: int, subscriber_id: int) -> Membership | None:
    row = conn.execute(_FIND_MEMBERSHIP, {"list": list_id, "subscriber": subscriber_id}).first()
    if row is None:
        return None
    return Membership(list_id, subscriber_id, row.email, row.name, row.description, row.status)


class _Pages:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._env = environment(settings)

    def render(
        self, template: str, status_code: int = 200, membership: Membership | None = None, **context: object
    ) -> HTMLResponse:
        html = self._env.get_template(template).render(
            newsletter=self._settings.from_name,
            postal_address=self._settings.postal_address,
            archive_url=f"{self._settings.base_url}/",
            light=LIGHT,
            dark=DARK,
            fonts=FONT_STACK,
            membership=membership,
            masked_email=mask_email(membership.email) if membership else "",
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def invalid(self) -> HTMLResponse:
        # The same bytes for every bad link, whatever made it bad.
        return self.render("unsubscribe_invalid.html.j2", 404)

    def for_status(self, membership: Membership, token: str, ticket: str = "") -> HTMLResponse:
        """The page that follows a POST: done (offering to undo it if given a resubscribe ticket),
        or subscribed again."""
        template = (
            "unsubscribe_resubscribed.html.j2"
            if membership.status == db.SUBSCRIBED
            else "unsubscribe_done.html.j2"
        )
        return self.render(template, membership=membership, token=token, ticket=ticket)


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


class _WholeRest(Convertor[str]):
    """The rest of the path, whatever it holds. Starlette's `path` stops at a newline, and its
    pattern's `$` matches before a final one: `/unsubscribe/<token>%0A` would read as the bare token."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("whole_rest", _WholeRest())


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


async def _form(request: Request) -> FormData:
    """A page's or a mail client's form (RFC 8058 allows urlencoded and multipart), read whole within
    the body limit before it is parsed; a file is refused (400), so nothing is ever spooled to disk."""
    await request.body()  # parsed below from the bytes held
    return await request.form(max_files=0, max_fields=20)


def create_app(settings: Settings) -> ASGIApp:
    """The whole site as one ASGI app."""
    engine = db.engine_for(settings)
    with db.reading(engine) as conn:
        legacy_up_to = conn.execute(select(db.legacy_links.c.max_subscriber_id)).scalar_one()
    links = UnsubscribeLinks(settings, legacy_up_to=legacy_up_to)
    service = _UnsubscribeService(settings, engine, links)
    pages = _Pages(settings)
    verifier = (
        WebhookVerifier(settings.sendgrid_webhook_public_key)
        if settings.sendgrid_webhook_public_key
        else None
    )
    public_dir = settings.path(settings.public_dir)
    public_dir.mkdir(parents=True, exist_ok=True)

    async def confirm(request: Request) -> Response:
        token = request.path_params["token"]
        membership = await run_in_threadpool(service.find, token)
        if membership is None:
            return pages.invalid()
        if membership.status != db.SUBSCRIBED:
            # No offer to re-subscribe: whoever opens the link now may not be the reader who left.
            return pages.render("unsubscribe_done.html.j2", membership=membership, token=token, ticket="")
        return pages.render("unsubscribe_confirm.html.j2", membership=membership, token=token)

    async def unsubscribe(request: Request) -> Response:
        token = request.path_params["token"]
        # The link first: a bad one is answered without a byte of its body read.
        if await run_in_threadpool(service.find, token) is None:
            return pages.invalid()
        form = await _form(request)
        # RFC 8058: a mail client's one-click POST carries exactly this field; the page's button does not.
        source = "one_click" if form.get("List-Unsubscribe") == "One-Click" else "unsubscribe_page"
        membership, changed = await run_in_threadpool(service.unsubscribe, token, source)
        if membership is None:
            return pages.invalid()
        # Only the POST that unsubscribed gets the way back: a later one (a forwarded link) does not.
        return pages.for_status(membership, token, links.resubscribe_ticket(token) if changed else "")

    async def resubscribe(request: Request) -> Response:
        token = request.path_params["token"]
        membership = await run_in_threadpool(service.find, token)
        if membership is None:
            return pages.invalid()  # a bad link gets the same page here as everywhere, body unread
        ticket = (await _form(request)).get("ticket")
        if isinstance(ticket, str) and links.resubscribe_allowed(token, ticket):
            membership, _ = await run_in_threadpool(service.resubscribe, token)
            return pages.invalid() if membership is None else pages.for_status(membership, token)
        if membership.status == db.SUBSCRIBED:  # e.g. the button pressed twice
            return pages.for_status(membership, token)
        hours = int(RESUBSCRIBE_WINDOW.total_seconds() // 3600)
        return pages.render("unsubscribe_expired.html.j2", 403, membership=membership, hours=hours)

    async def sendgrid_events(request: Request) -> Response:
        if verifier is None:
            # Never accept unsigned events: anyone could unsubscribe anyone.
            return PlainTextResponse("the signed Event Webhook is not configured", 503)
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        # Headers first: an unsigned or replayed request is refused before its body (up to
        # MAX_WEBHOOK_BODY) is read, let alone verified.
        if not verifier.fresh(signature, timestamp, settings.clock()):
            return PlainTextResponse("bad or stale signature", 403)
        body = await request.body()
        if not verifier.verify(body, signature, timestamp):
            return PlainTextResponse("bad or stale signature", 403)
        try:
            events = parse_events(body)
        except ValueError:
            return PlainTextResponse("expected a JSON array of events", 400)
        # Committed before the 2xx: SendGrid retries anything else, and duplicates are skipped.
        await run_in_threadpool(service.apply_webhook, events)
        return PlainTextResponse("ok")

    # A link with anything appended (a slash, a newline) is a bad link, and gets the same page.
    routes = [
        Route("/unsubscribe/{token:whole_rest}", confirm, methods=["GET"]),
        Route("/unsubscribe/{token:whole_rest}", unsubscribe, methods=["POST"]),
        Route("/resubscribe/{token:whole_rest}", resubscribe, methods=["POST"]),
        Route("/webhooks/sendgrid", sendgrid_events, methods=["POST"]),
        Mount("/", StaticFiles(directory=public_dir, html=True)),
    ]
    site = _BodyLimit(Starlette(routes=routes), {"/webhooks/sendgrid": MAX_WEBHOOK_BODY}, MAX_FORM_BODY)
    return _SecurityHeaders(site, _public_csp(settings))


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the site until interrupted."""
    app = create_app(settings)
    # No access log: every unsubscribe URL carries a reader's token.
    uvicorn.run(app, host=host, port=port, access_log=False, server_header=False, log_level="info")
