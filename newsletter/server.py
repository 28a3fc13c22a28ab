"""The web server (`newsletter serve`): sign-up, confirmation and preferences pages, unsubscribe pages
and RFC 8058 one-click unsubscribe, each provider's webhook (/webhooks/<provider>), and the public folder (archive pages,
thumbnails), so that one process hosts everything an email links to.

The sign-up form answers every address alike (signup.py decides, unseen, which mail is due), and the
mail goes out after the answer (a background task), so that neither the page nor its timing tells
whether an address is on the list.

GET on an unsubscribe link changes nothing (mail scanners and link previews follow links); only a
POST does, and it answers once the change is committed. Links that are not ours, and ours for a
membership that no longer exists, get the same page byte for byte, so a probe learns nothing.
No cookies anywhere: the signed token is the reader's only credential, and re-subscribing also takes
the short-lived ticket (tokens.py) that only the page shown right after an unsubscribe carries.

Every request body has a size limit, enforced before it is held (`_BodyLimit`), and a POST to a link
is answered 404 before its body is read at all unless the link is good.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import uvicorn
import uvicorn.config
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db, signup
from .config import Settings
from .errors import NewsletterError, SubscriberError, TokenError
from .membership import compare_and_set, set_frequency
from .providers import Event, Provider, Refusal, registry
from .content.publish import PublishedIssue, published_issues
from .content.render import DARK, FONT_STACK, LIGHT, environment
from .send.pacing import Requests
from .send.transactional import release, requests_for, send_message
from .subscribers import MailingList, get_list
from .tokens import CONFIRM_WINDOW, RESUBSCRIBE_WINDOW, ConfirmLinks, UnsubscribeLinks
from .webhook import apply_events

log = logging.getLogger(__name__)

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
    frequency: str


def mask_email(email: str) -> str:
    """Enough of the address for its owner to recognise it, not enough to harvest from a forwarded link."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}•••@{domain}"


class _Service:
    """The database side of the pages: find a token's membership, change its status or frequency;
    record sign-ups and confirmations."""

    def __init__(self, settings: Settings, engine: Engine, links: UnsubscribeLinks, confirmations: ConfirmLinks) -> None:
        self._settings = settings
        self._engine = engine
        self._links = links
        self._confirmations = confirmations
        self._lists: dict[str, tuple[float, MailingList | None]] = {}
        self._write_lock = db.one_writer_at_a_time(engine)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction, queued behind this process's other writers."""
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
        with self.transaction() as conn:
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

    def set_frequency(self, token: str, frequency: str) -> Membership | None:
        """The membership after switching it to `frequency` (if it is subscribed)."""
        ids = self._ids(token)
        if ids is None:
            return None
        with self.transaction() as conn:
            membership = self._verified(conn, ids, token)
            if membership is None:
                return None
            set_frequency(
                conn,
                list_id=membership.list_id,
                subscriber_id=membership.subscriber_id,
                frequency=frequency,
                source="preferences_page",
                now=self._settings.clock(),
            )
            return _membership(conn, *ids)

    def apply_webhook(self, events: list[Event | None]) -> None:
        with self.transaction() as conn:
            apply_events(conn, events, self._settings.clock())

    # -- sign-up ------------------------------------------------------------------------------------

    # Every sign-up reads its list; lists change seldom, and a change (a new list, a deleted one)
    # reaches the form within this many seconds.
    LISTS_FOR = 10.0

    def find_list(self, name: str) -> MailingList | None:
        read_at, found = self._lists.get(name, (-self.LISTS_FOR, None))
        if time.monotonic() - read_at < self.LISTS_FOR:
            return found
        with db.reading(self._engine) as conn:
            try:
                found = get_list(conn, name)
            except SubscriberError:
                found = None
        if len(self._lists) > 1000:  # names that are no list are remembered too: a bounded number
            self._lists.clear()
        self._lists[name] = (time.monotonic(), found)
        return found

    def request_sign_up(self, mailing_list: MailingList, form: signup.SignUpForm, client: str) -> bool:
        """Queue a sign-up; False if the client is over its hourly rate (then logged, by the keyed
        hash the rate limit counts it under: never an address)."""
        key = signup.client_key(self._settings, client)
        rate = self._settings.signup_rate_per_hour
        with self.transaction() as conn:
            queued = signup.request_sign_up(conn, mailing_list, form, client=key, now=self._settings.clock(), rate_per_hour=rate)
        if not queued:
            log.warning("a sign-up was refused: client %s is over its rate of %d an hour", key[:12], rate)
        return queued

    # Sign-ups read from the queue at once; each is then taken in its own short transaction.
    QUEUE_PAGE = 100

    def queued_sign_ups(self) -> list[signup.SignUpRequest]:
        """The oldest sign-ups waiting."""
        with db.reading(self._engine) as conn:
            return signup.queued(conn, self.QUEUE_PAGE)

    def take_sign_up(self, request: signup.SignUpRequest) -> signup.Due | None:
        """Record a queued sign-up and say which mail it calls for, claimed in the same commit."""
        now = self._settings.clock()
        with self.transaction() as conn:
            return signup.sign_up(
                conn, request, now=now, today=self._settings.local_date(now), newsletter=self._settings.from_name
            )

    def inspect_confirmation(self, token: str) -> signup.Confirmation | None:
        with db.reading(self._engine) as conn:
            return signup.inspect_link(conn, self._confirmations, token, self._settings.clock())

    def confirm(self, token: str, client: str) -> signup.Confirmation | None:
        ip = client if self._settings.record_consent_ip else None
        with self.transaction() as conn:
            return signup.confirm(
                conn, self._confirmations, token, now=self._settings.clock(), ip=ip, newsletter=self._settings.from_name
            )

    def fresh_confirmation(self, token: str) -> tuple[signup.Confirmation | None, str | None, signup.Due | None]:
        """For an expired link of a member still to confirm: the next confirmation mail, within the
        day's limit, and the page's state ("resent", or "limit" when today's mails are used up)."""
        now = self._settings.clock()
        with self.transaction() as conn:
            found = signup.inspect_link(conn, self._confirmations, token, now)
            if found is None or found.member.status == db.SUBSCRIBED:
                return found, None, None
            due = signup.confirmation_due(conn, found.member, self._settings.local_date(now), self._settings.from_name)
            if due is None:
                return found, "limit", None
            # Unclaimed: it is being sent already.
            return found, "resent", signup.claimed(conn, due, now)


# Built once: it runs for every click, and building a statement costs more than running it.
_FIND_MEMBERSHIP = (
    select(
        db.subscribers.c.email,
        db.lists.c.name,
        db.lists.c.description,
        db.memberships.c.status,
        db.memberships.c.frequency,
    )
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
    return Membership(list_id, subscriber_id, row.email, row.name, row.description, row.status, row.frequency)


class _Pages:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._env = environment(settings)

    def render(
        self, template: str, status_code: int = 200, membership: Membership | None = None, **context: object
    ) -> HTMLResponse:
        values = {
            "newsletter": self._settings.from_name,
            "postal_address": self._settings.postal_address,
            "archive_url": f"{self._settings.base_url}/",
            "light": LIGHT,
            "dark": DARK,
            "fonts": FONT_STACK,
            "membership": membership,
            "masked_email": mask_email(membership.email) if membership else "",
            **context,
        }
        html = self._env.get_template(template).render(values)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def invalid(self, status_code: int = 404) -> HTMLResponse:
        # The same bytes for every bad link, whatever made it bad.
        return self.render("unsubscribe_invalid.html.j2", status_code)

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


class _Mailer:
    """Sends the sign-up mails, claimed by the transaction that called for them, through the
    configured provider (send/transactional.py), from the server's own event loop. The provider is
    made at the first mail: a server that hosts only unsubscribe pages needs no credentials."""

    # How long the latest published issue (which the welcome links) is taken as known: reading the
    # public folder's records for every welcome would cost more than the rest of the mail.
    LATEST_FOR = 60.0

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        writing: Callable[[], AbstractContextManager[Connection]],
        unsubscribe: UnsubscribeLinks,
        confirmations: ConfirmLinks,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._writing = writing
        self._unsubscribe = unsubscribe
        self._confirmations = confirmations
        self._provider: Provider | None = None
        self._requests: Requests | None = None
        # As many mails out at once as the provider has connections: the HTTP client's own queue
        # costs CPU with every request waiting in it.
        self._out = asyncio.Semaphore(settings.send_concurrency)
        self._latest: tuple[float, PublishedIssue | None] = (-self.LATEST_FOR, None)

    def _latest_issue(self) -> PublishedIssue | None:
        read_at, latest = self._latest
        if time.monotonic() - read_at >= self.LATEST_FOR:
            latest = next(iter(published_issues(self._settings)), None)
            self._latest = (time.monotonic(), latest)
        return latest

    async def send(self, due: signup.Due) -> None:
        settings = self._settings
        try:
            if self._provider is None or self._requests is None:
                self._provider = registry.provider_for(settings)
                self._requests = requests_for(settings, self._provider)
            outgoing = signup.compose(
                settings,
                due,
                unsubscribe=self._unsubscribe,
                confirmations=self._confirmations,
                now=settings.clock(),
                latest=await run_in_threadpool(self._latest_issue),
            )
        except NewsletterError as error:  # nothing left: the claim goes back, for the reader's next try
            # Keys and ids only: an address or a token is not for the log.
            log.error("the %s mail %s was not sent: %s", due.kind, due.key, error)
            await run_in_threadpool(release, self._writing, settings, due.key, str(error))
            return
        try:
            async with self._out:
                outcome = await send_message(
                    self._engine, settings, self._provider, self._requests, outgoing, writing=self._writing, claimed=True
                )
        except NewsletterError as error:
            log.error("the %s mail %s was not sent: %s", due.kind, due.key, error)
            return
        if outcome.state not in (db.SENT, db.PENDING) or outcome.error:
            log.warning("the %s mail %s is %s: %s", due.kind, due.key, outcome.state, outcome.error or "")

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()


class _SignUpQueue:
    """Takes the form's queued sign-ups every INTERVAL seconds, on its own clock, and sends the mails
    they call for. What an address's state calls for (a mail or none, a new row or none) is done
    here, never right after that address's answer, so no answer's timing, nor the next request's,
    tells whether the address was on the list.

    Each sign-up's mail is handed to the mailer as soon as its sign-up commits (the commit claims
    it: a mail claimed and never sent would count as perhaps delivered). A sign-up that fails (the
    database away, another server adding the same member at that moment) stays queued for the next
    turn; stopping lets the sign-up under way finish and its mail go out."""

    INTERVAL = 0.5

    def __init__(self, service: _Service, mailer: _Mailer) -> None:
        self._service = service
        self._mailer = mailer
        self._sending: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._running = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._running is not None:
            await self._running
        await asyncio.gather(*self._sending)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.INTERVAL)
            while not self._stopping.is_set() and await self._take_page():
                pass

    async def _take_page(self) -> bool:
        """Take a page of queued sign-ups; whether a full page was read (more may wait)."""
        try:
            waiting = await run_in_threadpool(self._service.queued_sign_ups)
        except Exception:  # the database away: the queue waits for the next turn
            log.exception("the sign-up queue could not be read; trying again")
            return False
        for request in waiting:
            if self._stopping.is_set():
                return False
            try:
                due = await run_in_threadpool(self._service.take_sign_up, request)
            except Exception:
                log.exception("a queued sign-up was not taken; it waits for the next turn")
                continue
            if due is not None:
                task = asyncio.create_task(self._mailer.send(due))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return len(waiting) == self._service.QUEUE_PAGE


async def _form(request: Request) -> FormData:
    """A page's or a mail client's form (RFC 8058 allows urlencoded and multipart), read whole within
    the body limit before it is parsed; a file is refused (400), so nothing is ever spooled to disk."""
    await request.body()  # parsed below from the bytes held
    return await request.form(max_files=0, max_fields=20)


def create_app(settings: Settings) -> ASGIApp:
    """The whole site as one ASGI app, with its own engine (disposed of when the app shuts down)."""
    engine = db.connect(settings)
    with db.reading(engine) as conn:
        legacy_up_to = conn.execute(select(db.legacy_links.c.max_subscriber_id)).scalar_one()
    links = UnsubscribeLinks(settings, legacy_up_to=legacy_up_to)
    confirmations = ConfirmLinks(settings)
    service = _Service(settings, engine, links, confirmations)
    mailer = _Mailer(settings, engine, service.transaction, links, confirmations)
    queue = _SignUpQueue(service, mailer)
    pages = _Pages(settings)
    feedback = registry.feedback(settings)
    public_dir = settings.path(settings.public_dir)
    public_dir.mkdir(parents=True, exist_ok=True)

    async def unsubscribe_page(request: Request) -> Response:
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

    def client_of(request: Request) -> str:
        # Behind a reverse proxy, uvicorn puts the client's address from X-Forwarded-For here
        # (for the proxies in --forwarded-allow-ips).
        return request.client.host if request.client else ""

    def signup_page(mailing_list: MailingList, status_code: int = 200, **fields: str) -> HTMLResponse:
        values = {"email": "", "name": "", "frequency": db.DAILY, "error": "", "sent_to": "", **fields}
        title = mailing_list.description or mailing_list.name
        return pages.render("subscribe.html.j2", status_code, list_title=title, optin=mailing_list.optin, **values)

    async def subscribe_form(request: Request) -> Response:
        mailing_list = await run_in_threadpool(service.find_list, request.path_params["list"])
        return pages.invalid() if mailing_list is None else signup_page(mailing_list)

    async def subscribe(request: Request) -> Response:
        mailing_list = await run_in_threadpool(service.find_list, request.path_params["list"])
        if mailing_list is None:
            return pages.invalid()
        form = await _form(request)
        email, name, frequency, honeypot = (str(form.get(field) or "") for field in ("email", "name", "frequency", "website"))
        try:
            reader = signup.read_form(email, name, frequency or db.DAILY)
        except SubscriberError as error:
            message = f"올바른 이메일 주소를 입력해 주세요 · Please enter a valid email address ({error})"
            shown = {key: value.replace("\x00", "") for key, value in (("email", email), ("name", name), ("frequency", frequency))}
            return signup_page(mailing_list, 400, **shown, error=message)
        # A bot (the honeypot filled) gets the page a person would, and nothing is stored or sent.
        if not honeypot:
            await run_in_threadpool(service.request_sign_up, mailing_list, reader, client_of(request))
        return signup_page(mailing_list, sent_to=reader.email)

    def confirmation_page(found: signup.Confirmation, token: str, state: str | None = None) -> HTMLResponse:
        member = found.member
        state = state or found.state
        # Only a link that just confirmed, or may still, leads to the reader's preferences or mails.
        preferences = links.preferences_url(member.mailing_list.id, member.subscriber_id, member.email)
        return pages.render(
            "confirm.html.j2",
            state=state,
            masked_email=mask_email(member.email),
            list_title=member.mailing_list.description or member.mailing_list.name,
            frequency=member.frequency,
            confirm_days=CONFIRM_WINDOW.days,
            preferences_url=preferences if state == "subscribed" else "",
            offer_new_link=member.status != db.SUBSCRIBED,
        )

    async def confirmation(request: Request) -> Response:
        token = request.path_params["token"]
        found = await run_in_threadpool(service.inspect_confirmation, token)
        return pages.invalid() if found is None else confirmation_page(found, token)

    async def confirm(request: Request) -> Response:
        token = request.path_params["token"]
        if await run_in_threadpool(service.inspect_confirmation, token) is None:
            return pages.invalid()  # body unread
        form = await _form(request)
        due: signup.Due | None
        if form.get("resend"):
            found, state, due = await run_in_threadpool(service.fresh_confirmation, token)
        else:
            found = await run_in_threadpool(service.confirm, token, client_of(request))
            due, state = (found.welcome if found else None), None
        if found is None:
            return pages.invalid()
        answer = confirmation_page(found, token, state)
        if due is not None:
            answer.background = BackgroundTask(mailer.send, due)
        return answer

    async def preferences_page(request: Request) -> Response:
        token = request.path_params["token"]
        membership = await run_in_threadpool(service.find, token)
        if membership is None:
            return pages.invalid()
        return pages.render("preferences.html.j2", membership=membership, token=token, saved=False)

    async def preferences(request: Request) -> Response:
        token = request.path_params["token"]
        if await run_in_threadpool(service.find, token) is None:
            return pages.invalid()  # body unread
        frequency = (await _form(request)).get("frequency")
        if frequency not in db.FREQUENCIES:
            membership = await run_in_threadpool(service.find, token)
            return pages.invalid() if membership is None else pages.render(
                "preferences.html.j2", 400, membership=membership, token=token, saved=False
            )
        membership = await run_in_threadpool(service.set_frequency, token, frequency)
        if membership is None:
            return pages.invalid()
        saved = membership.status == db.SUBSCRIBED
        return pages.render("preferences.html.j2", membership=membership, token=token, saved=saved)

    async def provider_events(request: Request) -> Response:
        hook = feedback.get(request.path_params["provider"])
        if hook is None:
            return PlainTextResponse("no such webhook", 404)
        if isinstance(hook, Refusal):  # not configured: never take unproven events
            return PlainTextResponse(hook.reason, hook.status)
        # Headers first: an unproven or replayed request is refused before its body is read.
        refusal = hook.check_headers(request.headers, settings.clock())
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
        await run_in_threadpool(service.apply_webhook, events)
        return PlainTextResponse("ok")

    # A link with anything appended (a slash, a newline) is a bad link, and gets the same page.
    routes = [
        Route("/subscribe/{list}", subscribe_form, methods=["GET"]),
        Route("/subscribe/{list}", subscribe, methods=["POST"]),
        Route("/confirm/{token:whole_rest}", confirmation, methods=["GET"]),
        Route("/confirm/{token:whole_rest}", confirm, methods=["POST"]),
        Route("/preferences/{token:whole_rest}", preferences_page, methods=["GET"]),
        Route("/preferences/{token:whole_rest}", preferences, methods=["POST"]),
        Route("/unsubscribe/{token:whole_rest}", unsubscribe_page, methods=["GET"]),
        Route("/unsubscribe/{token:whole_rest}", unsubscribe, methods=["POST"]),
        Route("/resubscribe/{token:whole_rest}", resubscribe, methods=["POST"]),
        Route("/webhooks/{provider}", provider_events, methods=["POST"]),
        Mount("/", StaticFiles(directory=public_dir, html=True)),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        queue.start()
        yield
        await queue.stop()
        await mailer.aclose()
        engine.dispose()

    webhook_limits = {
        f"/webhooks/{name}": hook.max_body for name, hook in feedback.items() if not isinstance(hook, Refusal)
    }
    site = _BodyLimit(Starlette(routes=routes, lifespan=lifespan), webhook_limits, MAX_FORM_BODY)
    return _SecurityHeaders(_NulRefused(site, pages.invalid(400)), _public_csp(settings))


# What the server's log never shows: a reader's address, a link that carries their token, a token.
_PRIVATE = re.compile(
    r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"'`]+"
    r"|/(?:unsubscribe|resubscribe|confirm|preferences)/[^\s\"'<>]*"
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
