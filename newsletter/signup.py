"""Readers who join by themselves: sign-up, confirmation (double opt-in), the mails they get (the
confirmation, the welcome, the "already subscribed" notice) and the frequency they choose.

The database side runs in the caller's transaction and says which mail is due (a Due, with the
idempotency key it goes out under), claimed for sending in that same transaction (one commit records
the sign-up and the mail it calls for); `compose` turns a Due into the message, which
send/transactional.py sends at most once. The keys carry the limits: at most CONFIRMATIONS_PER_DAY
confirmation mails and one "already subscribed" notice per address and day, whatever the lists, and
one welcome per list ever.

Nobody learns from the form who is on a list, from its bytes or its timing: the form only queues the
sign-up (`request_sign_up`, the same statements for every address), the answer is the same whatever
the address's state, and the server takes the queue (`sign_up`) on its own schedule, so that the
work an address's state calls for never follows a given request.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Literal

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.engine import Connection, Engine

from . import db
from .errors import SubscriberError, TokenError
from .membership import compare_and_set, said_no, set_frequency
from .providers import Message, Provider, Recipient
from .content.publish import PublishedIssue, published_issues
from .content.render import DARK, FONT_STACK, LIGHT, render_macro, render_template
from .send.parts import SendParts
from .send.transactional import Outcome, Outgoing, claim, send_messages
from .addresses import email_key, normalise_email
from .providers.headers import plain_name
from .store import memberships, messages, subscribers
from .subscribers import MailingList
from .tokens import CONFIRM_WINDOW, ConfirmLinks

CONFIRMATIONS_PER_DAY = 3
# Sign-ups per client are counted over this window, and forgotten after it.
SIGNUP_RATE_WINDOW = timedelta(hours=1)

CONFIRM, WELCOME, ALREADY = "confirm", "welcome", "already"
MailKind = Literal["confirm", "welcome", "already"]


@dataclass(frozen=True)
class SignUpForm:
    """What the sign-up form sent, checked (`read_form`)."""

    email: str
    name: str | None
    frequency: str


def read_form(email: str, name: str, frequency: str) -> SignUpForm:
    """The form's fields as a sign-up; SubscriberError with a message for the reader if the address
    is not one, the frequency not offered, or a field holds a NUL (no browser sends one)."""
    if "\x00" in email + name + frequency:
        raise SubscriberError("a field holds a character no address or name has")
    if frequency not in db.FREQUENCIES:
        raise SubscriberError(f"choose how often: {' or '.join(db.FREQUENCIES)}")
    return SignUpForm(normalise_email(email.strip()), plain_name(name), frequency)


@dataclass(frozen=True)
class Member:
    """A membership as the sign-up pages and mails show it."""

    mailing_list: MailingList
    subscriber_id: int
    email: str
    name: str | None
    status: str
    frequency: str
    status_since: datetime


@dataclass(frozen=True)
class Due:
    """A mail a sign-up or a confirmation calls for, under the key it goes out at most once by."""

    kind: MailKind
    key: str
    member: Member
    newsletter: str  # the sender's name, for the subject

    @property
    def subject(self) -> str:
        return _RECORDED_AS[self.kind].format(name=self.newsletter)


def claimed(conn: Connection, due: Due | None, now: datetime) -> Due | None:
    """`due`, claimed for sending in the caller's transaction; None if it went out (or may have)
    already, or is being sent."""
    if due is None:
        return None
    taken = claim(conn, key=due.key, email=due.member.email, subject=due.subject, now=now)
    return due if taken is None else None


def client_key(signing_key: str, address: str) -> str:
    """The client's address as the rate limit keeps it: a hash keyed with the current signing key,
    so that the database holds no reader's IP address unless record_consent_ip asks for it (and a
    retired key, perhaps retired because it leaked, opens none of them)."""
    return hmac.new(signing_key.encode(), f"signup-client:{address}".encode(), hashlib.sha256).hexdigest()


def request_sign_up(
    conn: Connection, mailing_list: MailingList, form: SignUpForm, *, client: str, now: datetime, rate_per_hour: int
) -> bool:
    """Queue a sign-up from the form; False (nothing queued) if the client is over its rate. The
    same statements run whatever the address's state, which only `sign_up` reads, later, off the
    request path. Runs in the caller's (write) transaction."""
    if conn.execute(_RECENT_ATTEMPTS, {"client": client, "since": now - SIGNUP_RATE_WINDOW}).scalar_one() >= rate_per_hour:
        return False
    conn.execute(_ATTEMPT, {"client": client, "at": now})
    request = {"list_id": mailing_list.id, "email": form.email, "name": form.name, "frequency": form.frequency}
    conn.execute(_QUEUE, {**request, "received_at": now})
    return True


def forget_attempts(conn: Connection, now: datetime) -> int:
    """Delete the sign-up attempts older than the rate limit's window (they count for nothing more);
    how many."""
    return conn.execute(_FORGET_ATTEMPTS, {"before": now - SIGNUP_RATE_WINDOW}).rowcount


def forget_queued(conn: Connection, address: str, key: str) -> int:
    """Delete the queued sign-ups of the person whose address key is `key`, however the form had
    the address written (as stored, or typed in another case); how many."""
    ids = db.addressed_to(conn, db.signup_requests, address, key)
    return conn.execute(db.signup_requests.delete().where(_r.id.in_(ids))).rowcount


@dataclass(frozen=True)
class SignUpRequest:
    """A sign-up the form queued (`request_sign_up`), waiting for `sign_up`."""

    id: int
    mailing_list: MailingList
    form: SignUpForm


def queued(conn: Connection, limit: int) -> list[SignUpRequest]:
    """The oldest `limit` sign-ups waiting."""
    return [
        SignUpRequest(
            row.request_id,
            MailingList(row.id, row.name, row.description, row.created_at, row.optin),
            SignUpForm(row.email, row.subscriber_name, row.frequency),
        )
        for row in conn.execute(_QUEUED, {"limit": limit})
    ]


def sign_up(conn: Connection, request: SignUpRequest, *, now: datetime, today: date, newsletter: str) -> Due | None:
    """Take a queued sign-up and record it, saying which mail it calls for (None: none, or another
    process took it). A new address joins unconfirmed on a double opt-in list and subscribed on a
    single opt-in one, unless it said no on any list (then it confirms by mail: only its owner may
    undo their own "no"); an unconfirmed one, or one that left, is sent a confirmation; a subscribed
    one at most a daily notice. Runs in the caller's (write) transaction."""
    if conn.execute(_DEQUEUE, {"request": request.id}).rowcount != 1:
        return None
    mailing_list, form = request.mailing_list, request.form
    subscriber_id, email, name = _subscriber_for(conn, form, now)
    row = _membership_row(conn, mailing_list.id, subscriber_id, lock=True)
    status = row.status if row is not None else None  # type: ignore[attr-defined]
    if status is None:
        at_once = mailing_list.optin == db.SINGLE_OPTIN and not said_no(conn, subscriber_id)
        joined = db.SUBSCRIBED if at_once else db.UNCONFIRMED
        compare_and_set(
            conn,
            list_id=mailing_list.id,
            subscriber_id=subscriber_id,
            expected=None,
            status=joined,
            source="signup",
            now=now,
            detail=f"signed up on the form ({mailing_list.optin} opt-in)",
        )
        _choose_frequency(conn, mailing_list.id, subscriber_id, form.frequency, now)
        if joined == db.SUBSCRIBED:
            _record_consent(conn, mailing_list, subscriber_id, now=now, ip=None)
        member = Member(mailing_list, subscriber_id, email, name, joined, form.frequency, now)
        if joined == db.SUBSCRIBED:
            return claimed(conn, _welcome(member, newsletter), now)
    elif status == db.SUBSCRIBED:
        # Their frequency stays: only their own preferences link may change it. One notice a day
        # per address, whichever lists it was typed into.
        notice = Due(ALREADY, f"already:{subscriber_id}:{today.isoformat()}", _member_of(row), newsletter)
        return claimed(conn, notice, now)
    else:
        # Unconfirmed, or left: the choice is kept for when they confirm.
        _choose_frequency(conn, mailing_list.id, subscriber_id, form.frequency, now)
        member = replace(_member_of(row), frequency=form.frequency)
    return claimed(conn, confirmation_due(conn, member, today, newsletter), now)


def confirmation_due(conn: Connection, member: Member, today: date, newsletter: str) -> Due | None:
    """The next confirmation mail for `member` today, or None when the address's are used up,
    whichever lists they were for. A try that sent nothing (the provider unreachable) is tried again
    under its own key."""
    prefix = f"confirm:{member.subscriber_id}:{today.isoformat()}:"
    sent = messages.keyed(conn, prefix)
    unsent = sorted(key for key, state in sent if state == db.PENDING)
    if unsent:
        return Due(CONFIRM, unsent[0], member, newsletter)
    if len(sent) >= CONFIRMATIONS_PER_DAY:
        return None
    return Due(CONFIRM, f"{prefix}{len(sent) + 1}", member, newsletter)


ConfirmState = Literal["confirmable", "subscribed", "expired"]


@dataclass(frozen=True)
class Confirmation:
    state: ConfirmState  # what the link does now: confirm, nothing more (done), or nothing (too old)
    member: Member
    welcome: Due | None = None  # the welcome, after a POST that found the member subscribed


def inspect_link(conn: Connection, links: ConfirmLinks, token: str, now: datetime) -> Confirmation | None:
    """What a confirmation link would do, changing nothing (GET); None if it is not one of ours for
    a membership that exists."""
    try:
        ticket = links.read(token)
    except TokenError:
        return None
    row = _membership_row(conn, ticket.list_id, ticket.subscriber_id)
    if row is None or not links.signed_for(token, row.email):
        return None
    member = _member_of(row)
    # An old link ends whatever its owner did since: it is no lasting key to their preferences.
    if now - ticket.issued_at > CONFIRM_WINDOW:
        return Confirmation("expired", member)
    if member.status == db.SUBSCRIBED:
        return Confirmation("subscribed", member)
    # A link issued before its owner last left (an old mail) does not undo their leaving.
    if member.status != db.UNCONFIRMED and ticket.issued_at < member.status_since:
        return Confirmation("expired", member)
    return Confirmation("confirmable", member)


def confirm(
    conn: Connection, links: ConfirmLinks, token: str, *, now: datetime, ip: str | None, newsletter: str
) -> Confirmation | None:
    """Confirm the sign-up a link names (POST): the member becomes subscribed with their consent
    recorded, and the welcome is due, claimed, unless it went out before (its key is once ever).
    None for a bad link."""
    found = inspect_link(conn, links, token, now)
    if found is None or found.state == "expired":
        return found
    member = found.member
    if found.state == "confirmable":
        changed = compare_and_set(
            conn,
            list_id=member.mailing_list.id,
            subscriber_id=member.subscriber_id,
            expected=member.status,
            status=db.SUBSCRIBED,
            source="confirmation",
            now=now,
            detail="confirmed by the link in the confirmation mail",
        )
        if changed:
            _record_consent(conn, member.mailing_list, member.subscriber_id, now=now, ip=ip)
        member = _member(conn, member.mailing_list, member.subscriber_id)
        if member.status != db.SUBSCRIBED:  # lost to a concurrent change (a bounce): as it is now
            return Confirmation("expired", member)
    return Confirmation("subscribed", member, claimed(conn, _welcome(member, newsletter), now))


def _welcome(member: Member, newsletter: str) -> Due:
    return Due(WELCOME, f"welcome:{member.mailing_list.id}:{member.subscriber_id}", member, newsletter)


# Built once: they run for every sign-up, and building a statement costs more than running it.
_a, _m, _s = db.signup_attempts.c, db.memberships.c, db.subscribers.c
_RECENT_ATTEMPTS = select(func.count()).where(_a.client == bindparam("client"), _a.at > bindparam("since"))
_ATTEMPT = insert(db.signup_attempts)
_FORGET_ATTEMPTS = db.signup_attempts.delete().where(_a.at <= bindparam("before"))
_r = db.signup_requests.c
_QUEUE = insert(db.signup_requests)
_QUEUED = (
    select(_r.id.label("request_id"), _r.email, _r.name.label("subscriber_name"), _r.frequency, db.lists)
    .select_from(db.signup_requests.join(db.lists))
    .order_by(_r.id)
    .limit(bindparam("limit"))
)
_DEQUEUE = db.signup_requests.delete().where(_r.id == bindparam("request"))
_MEMBERSHIP = (
    select(db.lists, _s.email, _s.name.label("subscriber_name"), _m.subscriber_id, _m.status, _m.frequency, _m.updated_at)
    .select_from(db.memberships.join(db.subscribers).join(db.lists))
    .where(_m.list_id == bindparam("list"), _m.subscriber_id == bindparam("subscriber"))
)
_LOCKED_MEMBERSHIP = _MEMBERSHIP.with_for_update(of=db.memberships)


def _subscriber_for(conn: Connection, form: SignUpForm, now: datetime) -> tuple[int, str, str | None]:
    """(id, address, name) of the subscriber with the form's address, added if new. An existing
    subscriber's name is kept: anyone can type anyone's address into a form."""
    found = subscribers.add_if_new(conn, email=form.email, key=email_key(form.email), name=form.name, now=now)
    return found.id, found.email, found.name


def _choose_frequency(conn: Connection, list_id: int, subscriber_id: int, frequency: str, now: datetime) -> None:
    set_frequency(
        conn, list_id=list_id, subscriber_id=subscriber_id, frequency=frequency, source="signup", now=now, subscribed_only=False
    )


def _record_consent(conn: Connection, mailing_list: MailingList, subscriber_id: int, *, now: datetime, ip: str | None) -> None:
    source = f"signup form, {mailing_list.optin} opt-in"
    memberships.record_consent(conn, list_id=mailing_list.id, subscriber_id=subscriber_id, source=source, now=now, ip=ip)


def _membership_row(conn: Connection, list_id: int, subscriber_id: int, *, lock: bool = False) -> object | None:
    """The membership with its list and subscriber; with `lock`, locked until the transaction ends
    (PostgreSQL: a concurrent sign-up of the same address waits; SQLite serialises writers)."""
    ids = {"list": list_id, "subscriber": subscriber_id}
    return conn.execute(_LOCKED_MEMBERSHIP if lock else _MEMBERSHIP, ids).first()


def _member_of(row: object) -> Member:
    mailing_list = MailingList(row.id, row.name, row.description, row.created_at, row.optin)  # type: ignore[attr-defined]
    return Member(
        mailing_list,
        row.subscriber_id,  # type: ignore[attr-defined]
        row.email,  # type: ignore[attr-defined]
        row.subscriber_name,  # type: ignore[attr-defined]
        row.status,  # type: ignore[attr-defined]
        row.frequency,  # type: ignore[attr-defined]
        db.aware(row.updated_at),  # type: ignore[attr-defined]
    )


def find_member(conn: Connection, list_id: int, subscriber_id: int) -> Member | None:
    """The member of the list with this subscriber id, with their list; None if there is none."""
    row = _membership_row(conn, list_id, subscriber_id)
    return None if row is None else _member_of(row)


def _member(conn: Connection, mailing_list: MailingList, subscriber_id: int) -> Member:
    member = find_member(conn, mailing_list.id, subscriber_id)
    assert member is not None, "the membership was just read or written in this transaction"
    return member


def send_confirmations(
    engine: Engine,
    parts: SendParts,
    mailing_list: MailingList,
    subscriber_ids: list[int],
    provider: Provider,
) -> list[Outcome]:
    """A confirmation mail to each of these unconfirmed members (an import's, with
    --require-confirmation), within today's limit per address, paced within the provider's rate
    limit; then `provider` is closed."""
    now = parts.clock()
    with db.reading(engine) as conn:
        dues = [
            due
            for subscriber_id in subscriber_ids
            if (
                due := confirmation_due(
                    conn, _member(conn, mailing_list, subscriber_id), parts.clock.local_date(now), parts.sender.from_name
                )
            )
        ]
    latest = next(iter(published_issues(parts.site)), None)
    outgoing = [compose(parts, due, now=now, latest=latest) for due in dues]
    return send_messages(engine, provider, outgoing, pacing=parts.pacing, clock=parts.clock)


# -- the mails ----------------------------------------------------------------------------------------

# What the mail records (messages.subject) say of each, for the operator; the mail's own subject is
# templates/mail/subjects.j2's, in the readers' language.
_RECORDED_AS: dict[MailKind, str] = {
    CONFIRM: "Confirm your subscription to {name}",
    WELCOME: "Welcome to {name}",
    ALREADY: "You are already subscribed to {name}",
}


def compose(
    parts: SendParts,
    due: Due,
    *,
    now: datetime,
    latest: PublishedIssue | None,
) -> Outgoing:
    """The message `due` calls for, from its templates (templates/mail/<kind>.html.j2 and .txt.j2):
    the confirmation carries its link; the welcome and the notice the reader's own preferences and
    unsubscribe links (and the welcome the RFC 8058 headers, as an issue does), and the welcome the
    `latest` issue's web version."""
    member = due.member
    list_id, subscriber_id, email = member.mailing_list.id, member.subscriber_id, member.email
    site, sender = parts.site, parts.sender
    unsubscribe_url, preferences_url = parts.links.urls(list_id, subscriber_id, email)
    context = {
        "newsletter": sender.from_name,
        "postal_address": sender.postal_address,
        "archive_url": f"{site.base_url}/",
        "list_title": member.mailing_list.description or member.mailing_list.name,
        "frequency": member.frequency,
        "confirm_url": parts.confirmations.url(list_id, subscriber_id, email, now) if due.kind == CONFIRM else "",
        "confirm_days": CONFIRM_WINDOW.days,
        "preferences_url": preferences_url,
        "unsubscribe_url": unsubscribe_url,
        "latest_url": latest.url if latest else "",
        "latest_subject": latest.subject if latest else "",
        "light": LIGHT,
        "dark": DARK,
        "fonts": FONT_STACK,
    }
    message = Message(
        subject=render_macro(site, "mail/subjects.j2", due.kind, sender.from_name),
        html=render_template(site, f"mail/{due.kind}.html.j2", context),
        text=render_template(site, f"mail/{due.kind}.txt.j2", context),
        sender_email=sender.from_email,
        sender_name=sender.from_name,
        reply_to=sender.reply_to,
    )
    # A confirmation goes to whoever typed the address, who is no member yet: nothing to leave.
    headers = parts.links.headers(unsubscribe_url) if due.kind == WELCOME else {}
    return Outgoing(due.key, message, Recipient(email, member.name, None, headers))
