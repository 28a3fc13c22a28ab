"""What readers do by themselves: sign up, confirm, choose daily or weekly, leave and come back, and the
mails those call for; with the provider's events, which change the same memberships.

This room owns the use cases behind `newsletter serve`'s pages and decides what each page says (a
link's state, why a form was refused, in the reader's words), but knows nothing of HTTP: web.py
parses a request, makes one call here and renders the answer. It may import the library below it
(signup, membership, webhook, tokens, addresses, send.transactional, the providers' registry,
content.publish, db, the settings' sections, errors); only web.py imports it. Its parts are built
once, at the server's start-up, each given what it needs: `Readers` the engine, the link signers and
the `Rules`; `Mailer` the parts a send is built from (send.parts).

Nobody learns who is on a list: the form only queues a sign-up (`Readers.sign_up`, the same
statements whatever the address's state), and `SignUpQueue` takes the queue on its own clock, so
that the work an address's state calls for never follows a given request. GET never changes
anything (mail scanners follow links); links that are not ours, and ours for a membership that no
longer exists, find nothing (None), whatever made them bad. Re-subscribing also takes the
short-lived ticket (tokens.py) that only the page shown right after an unsubscribe carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import gettext
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Literal

from anyio.to_thread import run_sync
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from . import db, signup
from .addresses import normalise_email
from .content.publish import PublishedIssue, published_issues
from .errors import NewsletterError, SubscriberError, TokenError
from .membership import compare_and_set, set_frequency
from .providers import Event, Provider, registry
from .sections import Clock, Links
from .send.pacing import Requests
from .send.parts import SendParts
from .send.transactional import release, requests_for, send_message
from .signup import Member
from .subscribers import MailingList, get_list
from .tokens import ConfirmLinks, UnsubscribeLinks
from .webhook import apply_events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """What the use cases take from the settings."""

    newsletter: str  # the sender's name, in the mails' subjects
    signup_rate_per_hour: int
    record_consent_ip: bool
    clock: Clock  # and the newsletter's day a moment falls on
    client_key: Callable[[str], str]  # a client's address as the rate limit keeps it
    messages: gettext.NullTranslations  # the pages' language (render.page_language)


def unsubscribe_links(links: Links, engine: Engine) -> UnsubscribeLinks:
    """The signer of the server's unsubscribe links: those signed before links covered the address
    (db.legacy_links) still work for the subscribers who had them."""
    with db.reading(engine) as conn:
        legacy_up_to = conn.execute(select(db.legacy_links.c.max_subscriber_id)).scalar_one()
    return UnsubscribeLinks(links, legacy_up_to=legacy_up_to)


@dataclass(frozen=True)
class FormAnswer:
    """The sign-up page after a POST: what to fix, or the address the next step was mailed to (the
    same words whatever that address's state)."""

    error: str = ""
    sent_to: str = ""


@dataclass(frozen=True)
class Preferences:
    """The preferences page after a POST: the member as they are now, and what became of the choice
    ("refused": no frequency we offer; "unchanged": only a subscribed member's choice is kept)."""

    member: Member
    outcome: Literal["saved", "unchanged", "refused"]


@dataclass(frozen=True)
class ConfirmationPage:
    """What a confirmation link's page says: its state ("confirmable", "subscribed", "expired"; after
    asking for a new link "resent", or "limit" when today's mails are used up), and the mail to send
    once the page is answered."""

    state: str
    member: Member
    preferences_url: str  # only a link that just confirmed, or had, leads to the reader's preferences
    mail: signup.Due | None = None


class Readers:
    """The use cases, each in its own short transaction: find a link's member, change their status or
    frequency, queue and take sign-ups, confirm; and apply the provider's events."""

    # Every sign-up reads its list; lists change seldom, and a change (a new list, a deleted one)
    # reaches the form within this many seconds.
    LISTS_FOR = 10.0
    # Sign-ups read from the queue at once; each is then taken in its own short transaction.
    QUEUE_PAGE = 100

    def __init__(self, engine: Engine, links: UnsubscribeLinks, confirmations: ConfirmLinks, rules: Rules) -> None:
        self._engine = engine
        self._links = links
        self._confirmations = confirmations
        self._rules = rules
        self._lists: dict[str, tuple[float, MailingList | None]] = {}
        self._write_lock = db.one_writer_at_a_time(engine)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction, queued behind this process's other writers (the mailer's too)."""
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    # -- an unsubscribe link's token: the unsubscribe and preferences pages ----------------------------

    def find(self, token: str) -> Member | None:
        ids = self._ids(token)
        if ids is None:
            return None
        with db.reading(self._engine) as conn:
            return self._verified(conn, ids, token)

    # Which memberships the reader's POSTs change is membership.TRANSITIONS' to say: an unsubscribe
    # changes only a subscribed one, a re-subscribe only an unsubscribed one.
    def unsubscribe(self, token: str, *, one_click: bool) -> tuple[Member | None, str]:
        """The member after an unsubscribe POST, and the ticket that lets the page undo it: only the
        POST that unsubscribed gets one (a later one, from a forwarded link, does not)."""
        source = "one_click" if one_click else "unsubscribe_page"
        member, changed = self._change(token, db.UNSUBSCRIBED, source, "")
        return member, self._links.resubscribe_ticket(token) if changed else ""

    def resubscribe(self, token: str, ticket: str) -> tuple[Member | None, bool]:
        """The member after the "subscribe again" button, and whether `ticket` let it act: only on
        the unsubscribe it was issued with, within its window."""
        return self._change(
            token,
            db.SUBSCRIBED,
            "unsubscribe_page",
            "re-subscribed from the unsubscribe page",
            allowed=lambda member: self._links.resubscribe_allowed(token, ticket, left_at=member.status_since),
        )

    def set_frequency(self, token: str, frequency: str) -> Preferences | None:
        if frequency not in db.FREQUENCIES:
            member = self.find(token)
            return None if member is None else Preferences(member, "refused")
        ids = self._ids(token)
        if ids is None:
            return None
        with self.transaction() as conn:
            member = self._verified(conn, ids, token)
            if member is None:
                return None
            set_frequency(
                conn,
                list_id=member.mailing_list.id,
                subscriber_id=member.subscriber_id,
                frequency=frequency,
                source="preferences_page",
                now=self._rules.clock(),
            )
            member = signup.find_member(conn, *ids)
        return None if member is None else Preferences(member, "saved" if member.status == db.SUBSCRIBED else "unchanged")

    def _ids(self, token: str) -> tuple[int, int] | None:
        try:
            return self._links.ids(token)
        except TokenError:
            return None

    def _verified(self, conn: Connection, ids: tuple[int, int], token: str) -> Member | None:
        member = signup.find_member(conn, *ids)
        # The signature covers the address: a link made for someone else is not this member's.
        if member is None or not self._links.signed_for(token, member.email):
            return None
        return member

    def _change(
        self, token: str, status: str, source: str, detail: str, allowed: Callable[[Member], bool] = lambda member: True
    ) -> tuple[Member | None, bool]:
        """The member after asking to move them to `status` (if `allowed` of the member as they are
        in this transaction), and whether this call moved them."""
        ids = self._ids(token)
        if ids is None:
            return None, False
        now = self._rules.clock()
        with self.transaction() as conn:
            member = self._verified(conn, ids, token)
            if member is None or not allowed(member):
                return member, False
            if compare_and_set(
                conn,
                list_id=member.mailing_list.id,
                subscriber_id=member.subscriber_id,
                expected=member.status,
                status=status,
                source=source,
                now=now,
                detail=detail,
            ):
                return replace(member, status=status, status_since=now), True
            # Refused, or another writer got there first (PostgreSQL reads do not lock): as it is now.
            return signup.find_member(conn, *ids), False

    # -- the provider's events ---------------------------------------------------------------------

    def apply_webhook(self, events: list[Event | None]) -> None:
        with self.transaction() as conn:
            apply_events(conn, events, self._rules.clock())

    # -- sign-up ------------------------------------------------------------------------------------

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

    def sign_up(
        self, mailing_list: MailingList, email: str, name: str, frequency: str, *, honeypot: str, client: str
    ) -> FormAnswer:
        """Queue the form's sign-up, unless the form is refused (then why, in the reader's words).
        A bot (the honeypot filled) gets the answer a person would, and nothing is stored or sent."""
        try:
            form = signup.read_form(email, name, frequency or db.DAILY)
        except SubscriberError:
            return FormAnswer(error=refusal(email, self._rules.messages))
        if not honeypot:
            self._request_sign_up(mailing_list, form, client)
        return FormAnswer(sent_to=form.email)

    def _request_sign_up(self, mailing_list: MailingList, form: signup.SignUpForm, client: str) -> None:
        """Queue a sign-up, unless the client is over its hourly rate (then logged, by the keyed hash
        the rate limit counts it under: never an address)."""
        key = self._rules.client_key(client)
        rate = self._rules.signup_rate_per_hour
        with self.transaction() as conn:
            queued = signup.request_sign_up(
                conn, mailing_list, form, client=key, now=self._rules.clock(), rate_per_hour=rate
            )
        if not queued:
            log.warning("a sign-up was refused: client %s is over its rate of %d an hour", key[:12], rate)

    def queued_sign_ups(self) -> list[signup.SignUpRequest]:
        """The oldest sign-ups waiting."""
        with db.reading(self._engine) as conn:
            return signup.queued(conn, self.QUEUE_PAGE)

    def take_sign_up(self, request: signup.SignUpRequest) -> signup.Due | None:
        """Record a queued sign-up and say which mail it calls for, claimed in the same commit."""
        now = self._rules.clock()
        with self.transaction() as conn:
            return signup.sign_up(
                conn, request, now=now, today=self._rules.clock.local_date(now), newsletter=self._rules.newsletter
            )

    # -- a confirmation link ------------------------------------------------------------------------

    def inspect_confirmation(self, token: str) -> ConfirmationPage | None:
        with db.reading(self._engine) as conn:
            found = signup.inspect_link(conn, self._confirmations, token, self._rules.clock())
        return None if found is None else self._confirmation_page(found)

    def confirm(self, token: str, *, resend: bool, client: str) -> ConfirmationPage | None:
        """A POST on a confirmation link: confirm (and welcome), or with `resend` a new link for an
        expired one."""
        if resend:
            return self._fresh_confirmation(token)
        ip = client if self._rules.record_consent_ip else None
        with self.transaction() as conn:
            found = signup.confirm(
                conn, self._confirmations, token, now=self._rules.clock(), ip=ip, newsletter=self._rules.newsletter
            )
        return None if found is None else self._confirmation_page(found, mail=found.welcome)

    def _fresh_confirmation(self, token: str) -> ConfirmationPage | None:
        """For an expired link of a member still to confirm: the next confirmation mail, within the
        day's limit."""
        now = self._rules.clock()
        with self.transaction() as conn:
            found = signup.inspect_link(conn, self._confirmations, token, now)
            if found is None:
                return None
            if found.member.status == db.SUBSCRIBED:
                return self._confirmation_page(found)
            due = signup.confirmation_due(conn, found.member, self._rules.clock.local_date(now), self._rules.newsletter)
            if due is None:
                return self._confirmation_page(found, "limit")
            # Unclaimed: it is being sent already.
            return self._confirmation_page(found, "resent", signup.claimed(conn, due, now))

    def _confirmation_page(
        self, found: signup.Confirmation, state: str | None = None, mail: signup.Due | None = None
    ) -> ConfirmationPage:
        member, state = found.member, state or found.state
        preferences = (
            self._links.preferences_url(member.mailing_list.id, member.subscriber_id, member.email)
            if state == "subscribed"
            else ""
        )
        return ConfirmationPage(state, member, preferences, mail)


# -- why a form was refused ---------------------------------------------------------------------------

# RFC 5321's limits, as email-validator holds an address to them.
_ADDRESS_OCTETS, _LOCAL_CHARACTERS, _DOMAIN_OCTETS = 254, 64, 253


def refusal(email: str, messages: gettext.NullTranslations) -> str:
    """What the sign-up page says when signup.read_form refused the form, in `messages`' language:
    one line naming what is wrong with the typed address; or, when the address is good, asking to
    check the rest (no browser sends a NUL or a frequency the form does not offer)."""
    typed = email.strip()
    local, at, domain = typed.rpartition("@")
    if not typed:
        return messages.gettext("Please enter your email address")
    if not at:
        return messages.gettext("Please check the email address: it has no @")
    if "@" in local:
        return messages.gettext("Please check the email address: it has more than one @")
    if not local:
        return messages.gettext("Please check the email address: there is nothing before the @")
    if not domain:
        return messages.gettext("Please check the email address: there is no domain after the @")
    if len(typed.encode()) > _ADDRESS_OCTETS or len(local) > _LOCAL_CHARACTERS or len(domain.encode()) > _DOMAIN_OCTETS:
        return messages.gettext("Please check the email address: it is too long")
    # The domain after a local part that is surely good: which side of the @ is wrong.
    if not _is_address(f"reader@{domain}"):
        return messages.gettext("Please check the email address: the domain after the @ is not valid")
    if not _is_address(typed):
        return messages.gettext("Please check the email address: the part before the @ holds a character no address may have")
    return messages.gettext("Please check what you typed")


def _is_address(text: str) -> bool:
    try:
        normalise_email(text)
    except SubscriberError:
        return False
    return True


# -- the mails ----------------------------------------------------------------------------------------


class Mailer:
    """Sends the sign-up mails, claimed by the transaction that called for them, through the
    configured provider (send/transactional.py), from the server's own event loop. The provider is
    made at the first mail: a server that hosts only unsubscribe pages needs no credentials."""

    # How long the latest published issue (which the welcome links) is taken as known: reading the
    # public folder's records for every welcome would cost more than the rest of the mail.
    LATEST_FOR = 60.0

    def __init__(
        self,
        parts: SendParts,
        engine: Engine,
        writing: Callable[[], AbstractContextManager[Connection]],
    ) -> None:
        self._parts = parts
        self._engine = engine
        self._writing = writing
        self._provider: Provider | None = None
        self._requests: Requests | None = None
        # As many mails out at once as the provider has connections: the HTTP client's own queue
        # costs CPU with every request waiting in it.
        self._out = asyncio.Semaphore(parts.pacing.send_concurrency)
        self._latest: tuple[float, PublishedIssue | None] = (-self.LATEST_FOR, None)

    def _latest_issue(self) -> PublishedIssue | None:
        read_at, latest = self._latest
        if time.monotonic() - read_at >= self.LATEST_FOR:
            latest = next(iter(published_issues(self._parts.site)), None)
            self._latest = (time.monotonic(), latest)
        return latest

    async def send(self, due: signup.Due) -> None:
        parts = self._parts
        try:
            if self._provider is None or self._requests is None:
                self._provider = registry.provider_for(parts.delivery)
                self._requests = requests_for(parts.pacing, self._provider)
            outgoing = signup.compose(
                parts,
                due,
                now=parts.clock(),
                latest=await run_sync(self._latest_issue),
            )
        except NewsletterError as error:  # nothing left: the claim goes back, for the reader's next try
            # Keys and ids only: an address or a token is not for the log.
            log.error("the %s mail %s was not sent: %s", due.kind, due.key, error)
            await run_sync(release, self._writing, parts.clock, due.key, str(error))
            return
        try:
            async with self._out:
                outcome = await send_message(
                    self._engine,
                    self._provider,
                    self._requests,
                    outgoing,
                    clock=parts.clock,
                    database_timeout=parts.pacing.database_timeout,
                    writing=self._writing,
                    claimed=True,
                )
        except NewsletterError as error:
            log.error("the %s mail %s was not sent: %s", due.kind, due.key, error)
            return
        if outcome.state not in (db.SENT, db.PENDING) or outcome.error:
            log.warning("the %s mail %s is %s: %s", due.kind, due.key, outcome.state, outcome.error or "")

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()


class SignUpQueue:
    """Takes the form's queued sign-ups every INTERVAL seconds, on its own clock, and sends the mails
    they call for. What an address's state calls for (a mail or none, a new row or none) is done
    here, never right after that address's answer, so no answer's timing, nor the next request's,
    tells whether the address was on the list.

    Each sign-up's mail is handed to the mailer as soon as its sign-up commits (the commit claims
    it: a mail claimed and never sent would count as perhaps delivered). A sign-up that fails (the
    database away, another server adding the same member at that moment) stays queued for the next
    turn; stopping lets the sign-up under way finish and its mail go out."""

    INTERVAL = 0.5

    def __init__(self, readers: Readers, mailer: Mailer) -> None:
        self._readers = readers
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
            waiting = await run_sync(self._readers.queued_sign_ups)
        except Exception:  # the database away: the queue waits for the next turn
            log.exception("the sign-up queue could not be read; trying again")
            return False
        for request in waiting:
            if self._stopping.is_set():
                return False
            try:
                due = await run_sync(self._readers.take_sign_up, request)
            except Exception:
                log.exception("a queued sign-up was not taken; it waits for the next turn")
                continue
            if due is not None:
                task = asyncio.create_task(self._mailer.send(due))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return len(waiting) == self._readers.QUEUE_PAGE
