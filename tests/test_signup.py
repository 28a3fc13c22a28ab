"""Readers who sign up themselves, against the real `newsletter serve` and the project's fake
SendGrid: the form, double and single opt-in, the confirmation and welcome mails, the limits, the
confirmation links of every kind, and the preferences page."""

from __future__ import annotations

import gettext
import html
import io
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.content.render import page_language, render_macro, translations
from newsletter.membership import compare_and_set
from newsletter.readers import refusal
from newsletter.signup import client_key, inspect_link
from newsletter.subscribers import create_list
from newsletter.tokens import ConfirmLinks, UnsubscribeLinks
from newsletter.web import RedactingFilter
from testkit.fake_sendgrid import FakeSendGrid
from testkit.projects import API_KEY, add_subscribers, engine_of, write_config
from testkit.servers import free_port, serving

from .send_helpers import KEY_ENV
from .support import Chromium, require_chromium, run_newsletter
from .web import events_of, status_of

_CONFIRM = re.compile(r"https?://[^\s\"<>]+/confirm/[^\s\"<>]+")


@dataclass
class Site:
    url: str
    settings: Settings
    fake: FakeSendGrid
    double: int  # the double opt-in list's id
    single: int
    http: httpx.Client
    log: Path  # what the server wrote to its standard output and error

    def sign_up(self, email: str, *, list_name: str = "papers", client: str = "203.0.113.1", **fields: str) -> httpx.Response:
        # The server trusts X-Forwarded-For from 127.0.0.1, as it would from a reverse proxy there.
        form = {"email": email, "frequency": "daily", **fields}
        return self.http.post(f"{self.url}/subscribe/{list_name}", data=form, headers={"X-Forwarded-For": client})

    def settled(self, wait: float = 10.0) -> None:
        """Once the server has taken every queued sign-up (it takes them on its own clock)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with engine_of(self.settings).connect() as conn:
                if conn.execute(select(func.count()).select_from(db.signup_requests)).scalar_one() == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"sign-ups still queued after {wait} s")

    def mails_to(self, email: str, *, expect: int, wait: float = 10.0) -> list[dict]:
        """The mails `email` received, once `expect` have arrived (then a moment more, to catch an
        extra one), or whatever arrived within `wait` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and len(self._bodies(email)) < expect:
            time.sleep(0.05)
        time.sleep(0.3)
        return self._bodies(email)

    def subject(self, kind: str) -> str:
        """The subject of the sign-up mails of `kind`, in the readers' language."""
        return render_macro(self.settings.site, "mail/subjects.j2", kind, self.settings.from_name)

    def _bodies(self, email: str) -> list[dict]:
        return [r.body for r in list(self.fake.records) if r.delivered and email in r.emails and r.body]


def subject_of(mail: dict) -> str:
    return mail["subject"]


def text_of(mail: dict) -> str:
    return next(part["value"] for part in mail["content"] if part["type"] == "text/plain")


def confirm_link(mail: dict) -> str:
    [link] = set(_CONFIRM.findall(text_of(mail)))
    return link


def subscriber_id(settings: Settings, email: str) -> int:
    with engine_of(settings).connect() as conn:
        return conn.execute(select(db.subscribers.c.id).where(db.subscribers.c.email_key == email.casefold())).scalar_one()


def membership(settings: Settings, list_id: int, email: str):  # noqa: ANN201 - a Row
    m = db.memberships.c
    with engine_of(settings).connect() as conn:
        return conn.execute(
            select(m.status, m.frequency, m.consent_at, m.consent_source, m.consent_ip).where(
                m.list_id == list_id, m.subscriber_id == subscriber_id(settings, email)
            )
        ).one()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("signup")
    port = free_port()
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        config = write_config(
            folder,
            base_url=f"http://127.0.0.1:{port}",
            sendgrid_api_url=fake.url,
            sendgrid_api_key=API_KEY,
            send_rate_limit=1000.0,
        )
        settings = load_settings(config)
        with engine_of(settings).begin() as conn:
            double = create_list(conn, "papers", now=settings.clock(), description="Daily Papers").id
            single = create_list(conn, "open", now=settings.clock(), optin=db.SINGLE_OPTIN).id
            for name in ("alpha", "beta"):
                create_list(conn, name, now=settings.clock())
        log = folder / "server.log"
        with serving(config, port=port, log_to=log) as url, httpx.Client(timeout=30) as http:
            yield Site(url, settings, fake, double, single, http, log)


@pytest.mark.slow
def test_the_form_works_without_javascript_and_is_accessible(site: Site) -> None:
    page = site.http.get(f"{site.url}/subscribe/papers")
    assert page.status_code == 200
    html = page.text
    assert '<form method="post" novalidate>' in html and "<script" not in html
    assert '<label for="email">' in html and 'id="email" name="email" type="email" required autocomplete="email"' in html
    assert 'name="frequency" value="daily" checked' in html and 'name="frequency" value="weekly"' in html
    # The honeypot is out of sight and out of the tab order.
    assert '<div class="hp" aria-hidden="true">' in html and 'name="website" type="text" tabindex="-1"' in html
    assert page.headers["cache-control"] == "no-store"
    assert site.http.get(f"{site.url}/subscribe/no-such-list").status_code == 404


@pytest.mark.slow
def test_double_opt_in_confirm_then_one_welcome(site: Site) -> None:
    email = "new.reader@example.com"
    answer = site.sign_up(email, name="New Reader", frequency="weekly")
    assert answer.status_code == 200 and email in answer.text
    site.settled()
    assert membership(site.settings, site.double, email).status == db.UNCONFIRMED
    [mail] = site.mails_to(email, expect=1)
    assert subject_of(mail) == site.subject("confirm")
    link = confirm_link(mail)
    assert link.startswith(f"{site.settings.base_url}/confirm/")

    # A mail scanner's GET changes nothing.
    for _ in range(2):
        page = site.http.get(link)
        assert page.status_code == 200 and '<form method="post">' in page.text
    assert membership(site.settings, site.double, email).status == db.UNCONFIRMED

    done = site.http.post(link, data={"confirm": "yes"})
    assert done.status_code == 200 and "구독이 확인되었습니다" in done.text
    row = membership(site.settings, site.double, email)
    assert (row.status, row.frequency, row.consent_source, row.consent_ip) == (
        db.SUBSCRIBED, db.WEEKLY, "signup form, double opt-in", None
    )
    assert row.consent_at is not None
    # Replayed: nothing more changes, nothing more is sent.
    assert site.http.post(link, data={"confirm": "yes"}).status_code == 200
    mails = site.mails_to(email, expect=3, wait=1.5)
    assert [subject_of(m) for m in mails] == [site.subject("confirm"), site.subject("welcome")]
    welcome = text_of(mails[1])
    assert "/preferences/" in welcome and "/unsubscribe/" in welcome
    assert mails[1]["personalizations"][0]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    sid = subscriber_id(site.settings, email)
    assert [event[1:] for event in events_of(site.settings, sid)] == [
        (db.UNCONFIRMED, None, "signup"),
        (db.UNCONFIRMED, db.UNCONFIRMED, "signup"),  # the frequency chosen on the form: weekly
        (db.SUBSCRIBED, db.UNCONFIRMED, "confirmation"),
    ]


def test_single_opt_in_subscribes_and_welcomes_at_once(site: Site) -> None:
    email = "at.once@example.com"
    assert site.sign_up(email, list_name="open").status_code == 200
    site.settled()
    row = membership(site.settings, site.single, email)
    assert (row.status, row.consent_source) == (db.SUBSCRIBED, "signup form, single opt-in")
    [mail] = site.mails_to(email, expect=1)
    assert subject_of(mail) == site.subject("welcome")


@pytest.mark.slow
def test_every_address_state_gets_the_same_page(site: Site) -> None:
    states = {
        "state.new@example.com": None,
        "state.unconfirmed@example.com": db.UNCONFIRMED,
        "state.subscribed@example.com": db.SUBSCRIBED,
        "state.unsubscribed@example.com": db.UNSUBSCRIBED,
        "state.bounced@example.com": db.BOUNCED,
    }
    for email, status in states.items():
        if status:
            add_subscribers(site.settings, site.double, [email], status)
    pages = {email: site.sign_up(email, client=f"198.51.100.{n}") for n, email in enumerate(states)}
    assert {answer.status_code for answer in pages.values()} == {200}
    assert len({answer.text.replace(email, "ADDRESS") for email, answer in pages.items()}) == 1
    assert len({tuple(sorted(answer.headers.keys())) for answer in pages.values()}) == 1
    # What each one got: a confirmation, except the subscribed reader (a notice, and no change).
    site.settled()
    assert subject_of(site.mails_to("state.subscribed@example.com", expect=1)[0]) == site.subject("already")
    for email in ("state.new@example.com", "state.unconfirmed@example.com", "state.unsubscribed@example.com"):
        assert subject_of(site.mails_to(email, expect=1)[0]) == site.subject("confirm"), email
    assert membership(site.settings, site.double, "state.unsubscribed@example.com").status == db.UNSUBSCRIBED
    assert membership(site.settings, site.double, "state.subscribed@example.com").status == db.SUBSCRIBED
    # The notice goes at most once a day.
    site.sign_up("state.subscribed@example.com", client="198.51.100.9")
    assert len(site.mails_to("state.subscribed@example.com", expect=2, wait=2.5)) == 1


@pytest.mark.slow
def test_at_most_three_confirmations_a_day(site: Site) -> None:
    email = "eager@example.com"
    for n in range(5):
        assert site.sign_up(email, client=f"192.0.2.{n}").status_code == 200
    assert len(site.mails_to(email, expect=4, wait=3)) == 3



def test_whoever_said_no_on_another_list_confirms_a_single_opt_in_by_mail(site: Site) -> None:
    # A stranger typing the address of a reader who left (or bounced, or complained) on one list into
    # another list's single opt-in form must not bring mail back to them.
    email = "left.elsewhere@example.com"
    [sid] = add_subscribers(site.settings, site.double, [email])
    with engine_of(site.settings).begin() as conn:
        assert compare_and_set(
            conn, list_id=site.double, subscriber_id=sid, expected=db.SUBSCRIBED, status=db.UNSUBSCRIBED,
            source="command", now=site.settings.clock(),
        )  # fmt: skip
    assert site.sign_up(email, list_name="open").status_code == 200
    site.settled()
    assert membership(site.settings, site.single, email).status == db.UNCONFIRMED
    [mail] = site.mails_to(email, expect=1)
    assert subject_of(mail) == site.subject("confirm")

@pytest.mark.slow
def test_the_daily_limits_are_per_address_whatever_the_lists(site: Site) -> None:
    email = "many.lists@example.com"
    for n, name in enumerate(["papers", "alpha", "beta"] * 2):
        assert site.sign_up(email, list_name=name, client=f"192.0.2.{100 + n}").status_code == 200
    site.settled()
    assert len(site.mails_to(email, expect=4, wait=3)) == 3
    # A reader on two lists who signs up to both again gets one notice that day.
    reader = "on.two@example.com"
    for list_id in (site.double, site.single):
        add_subscribers(site.settings, list_id, [reader])
    for n, name in enumerate(["papers", "open", "papers"]):
        site.sign_up(reader, list_name=name, client=f"192.0.2.{110 + n}")
    site.settled()
    assert [subject_of(mail) for mail in site.mails_to(reader, expect=2, wait=3)] == [site.subject("already")]


@pytest.mark.slow
def test_a_client_over_its_hourly_rate_gets_the_same_page_and_no_mail(site: Site) -> None:
    client = "192.0.2.200"
    limit = site.settings.signup_rate_per_hour
    answers = [site.sign_up(f"rate{n}@example.com", client=client) for n in range(limit + 2)]
    assert {answer.status_code for answer in answers} == {200}
    site.mails_to(f"rate{limit - 1}@example.com", expect=1)
    site.settled()
    with engine_of(site.settings).connect() as conn:
        stored = conn.execute(
            select(func.count()).where(db.subscribers.c.email.like("rate%@example.com"))
        ).scalar_one()
    assert stored == limit
    assert site.mails_to(f"rate{limit}@example.com", expect=1, wait=2) == []
    # Another client is not held back.
    assert site.sign_up("other.client@example.com", client="192.0.2.201").status_code == 200
    assert len(site.mails_to("other.client@example.com", expect=1)) == 1


@pytest.mark.slow
def test_a_filled_honeypot_stores_and_sends_nothing_and_answers_as_a_person_would(site: Site) -> None:
    email, bot, person = "bot@example.com", "192.0.2.221", "192.0.2.222"
    caught = site.sign_up(email, client=bot, website="https://spam.example")
    typed = site.sign_up(email, client=person)
    # The page a person typing the same gets: a bot cannot tell it was caught.
    assert (caught.status_code, caught.content) == (typed.status_code, typed.content) == (200, typed.content)
    for wrong in ("not-an-address", "nul\x00@example.com"):
        caught, typed = site.sign_up(wrong, client=bot, website="https://spam.example"), site.sign_up(wrong, client=person)
        assert (caught.status_code, caught.content) == (typed.status_code, typed.content)
        assert caught.status_code == 400
    site.settled()
    a = db.signup_attempts.c
    with engine_of(site.settings).connect() as conn:
        attempts = {
            client: conn.execute(select(func.count()).where(a.client == client_key(site.settings.signing_keys()[0], client))).scalar_one()
            for client in (bot, person)
        }
    assert attempts == {bot: 0, person: 1}
    assert len(site.mails_to(email, expect=2, wait=2)) == 1  # the person's confirmation, and only that


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("not-an-address", "Please check the email address: it has no @"),
        ("two@@example.com", "Please check the email address: it has more than one @"),
        ("reader@", "Please check the email address: there is no domain after the @"),
        ("", "Please enter your email address"),
    ],
)
def test_an_invalid_address_gets_the_form_again_with_one_line_in_our_words(site: Site, typed: str, said: str) -> None:
    answer = site.sign_up(typed, name="Kept Name")
    assert answer.status_code == 400
    assert 'role="alert"' in answer.text and "aria-invalid=\"true\"" in answer.text and 'value="Kept Name"' in answer.text
    # In the pages' language, and never the validator's own words.
    words = translations(page_language(site.settings.site)).gettext(said)
    assert f'role="alert">{html.escape(words)}</p>' in answer.text and "@-sign" not in answer.text


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("  ", "Please enter your email address"),
        ("reader.example.com", "Please check the email address: it has no @"),
        ("reader＠example.com", "Please check the email address: it has no @"),
        ("a@b@example.com", "Please check the email address: it has more than one @"),
        ("@example.com", "Please check the email address: there is nothing before the @"),
        ("reader@ ", "Please check the email address: there is no domain after the @"),
        ("r" * 65 + "@example.com", "Please check the email address: it is too long"),
        ("reader@" + "d" * 250 + ".com", "Please check the email address: it is too long"),
        ("reader@example", "Please check the email address: the domain after the @ is not valid"),
        ("reader@exa mple.com", "Please check the email address: the domain after the @ is not valid"),
        ("reader@localhost", "Please check the email address: the domain after the @ is not valid"),
        ("re ader@example.com", "Please check the email address: the part before the @ holds a character no address may have"),
        # The address is good: the NUL was elsewhere (no browser sends one).
        ("reader@example.com", "Please check what you typed"),
    ],
)
def test_a_refused_address_is_told_in_one_line_of_our_words(typed: str, said: str) -> None:
    assert refusal(typed, gettext.NullTranslations()) == said


def test_the_refusal_reads_in_korean_on_a_korean_page() -> None:
    assert refusal("reader@", translations("ko")) == "이메일 주소를 확인해 주세요: @ 뒤에 도메인이 없습니다"


def _unconfirmed(site: Site, email: str) -> tuple[int, str]:
    (sid,) = add_subscribers(site.settings, site.double, [email], db.UNCONFIRMED)
    return sid, email


def test_forged_altered_and_cross_list_links_get_the_unsubscribe_404(site: Site) -> None:
    invalid = site.http.get(f"{site.url}/unsubscribe/nonsense")
    assert invalid.status_code == 404
    sid, email = _unconfirmed(site, "forged@example.com")
    links = ConfirmLinks(site.settings.links)
    good = links.token(site.double, sid, email, datetime.now(timezone.utc))
    other_key = ConfirmLinks(site.settings.model_copy(update={"secret_key": SecretStr("another-signing-key!")}).links)
    unsubscribe_token = UnsubscribeLinks(site.settings.links).token(site.double, sid, email)
    bad = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # altered signature
        good + "%0A",
        good.replace(f"{site.double:x}.", f"{site.single:x}.", 1),  # another list
        links.token(site.single, sid, email, datetime.now(timezone.utc)),  # signed, but no such membership
        links.token(site.double, sid, "someone.else@example.com", datetime.now(timezone.utc)),
        other_key.token(site.double, sid, email, datetime.now(timezone.utc)),
        unsubscribe_token,  # an unsubscribe token is no confirmation
    ]
    for token in bad:
        for answer in (site.http.get(f"{site.url}/confirm/{token}"), site.http.post(f"{site.url}/confirm/{token}", data={"confirm": "yes"})):
            assert (answer.status_code, answer.content) == (404, invalid.content), token
    assert status_of(site.settings, site.double, sid) == db.UNCONFIRMED


def test_an_expired_link_offers_a_fresh_one(site: Site) -> None:
    sid, email = _unconfirmed(site, "late@example.com")
    old = ConfirmLinks(site.settings.links).url(site.double, sid, email, datetime.now(timezone.utc) - timedelta(days=8))
    old = old.replace(site.settings.base_url, site.url)
    page = site.http.get(old)
    assert page.status_code == 200 and "만료" in page.text and 'name="resend"' in page.text
    assert site.http.post(old, data={"confirm": "yes"}).status_code == 200
    assert status_of(site.settings, site.double, sid) == db.UNCONFIRMED
    resent = site.http.post(old, data={"resend": "yes"})
    assert "새 확인 메일을 보냈습니다" in resent.text
    [mail] = site.mails_to(email, expect=1)
    assert site.http.post(confirm_link(mail), data={"confirm": "yes"}).status_code == 200
    assert status_of(site.settings, site.double, sid) == db.SUBSCRIBED


@pytest.mark.slow
def test_a_fresh_link_past_the_days_limit_says_so(site: Site) -> None:
    sid, email = _unconfirmed(site, "used.up@example.com")
    old = ConfirmLinks(site.settings.links).url(site.double, sid, email, datetime.now(timezone.utc) - timedelta(days=8))
    old = old.replace(site.settings.base_url, site.url)
    pages = [site.http.post(old, data={"resend": "yes"}).text for _ in range(4)]
    assert ["새 확인 메일을 보냈습니다" in page for page in pages] == [True, True, True, False]
    limit = translations(page_language(site.settings.site)).gettext("No more links today")
    assert limit in pages[3] and 'name="resend"' not in pages[3]
    assert len(site.mails_to(email, expect=4, wait=2)) == 3


@pytest.mark.slow
def test_a_confirmation_link_ends_after_its_days_whatever_the_readers_status(site: Site) -> None:
    (sid,) = add_subscribers(site.settings, site.double, ["long.subscribed@example.com"])
    links = ConfirmLinks(site.settings.links)
    old = links.url(site.double, sid, "long.subscribed@example.com", datetime.now(timezone.utc) - timedelta(days=8))
    old = old.replace(site.settings.base_url, site.url)
    for answer in (site.http.get(old), site.http.post(old, data={"confirm": "yes"}), site.http.post(old, data={"resend": "yes"})):
        assert answer.status_code == 200 and "만료" in answer.text
        assert "/preferences/" not in answer.text and 'name="resend"' not in answer.text
    assert site.mails_to("long.subscribed@example.com", expect=1, wait=1) == []


def test_a_link_from_before_the_reader_left_does_not_bring_them_back(site: Site) -> None:
    email = "left.later@example.com"
    site.sign_up(email, client="192.0.2.50")
    [mail] = site.mails_to(email, expect=1)
    link = confirm_link(mail)
    assert site.http.post(link, data={"confirm": "yes"}).status_code == 200
    sid = subscriber_id(site.settings, email)
    unsubscribe = UnsubscribeLinks(site.settings.links).token(site.double, sid, email)
    assert site.http.post(f"{site.url}/unsubscribe/{unsubscribe}", data={"confirm": "yes"}).status_code == 200
    assert "만료" in site.http.post(link, data={"confirm": "yes"}).text
    assert status_of(site.settings, site.double, sid) == db.UNSUBSCRIBED


def test_link_times_are_compared_to_the_microsecond(site: Site) -> None:
    # A link issued 0.4 s before its reader left, in the same second, is from before they left; one
    # issued 0.2 s after (they signed up again) is not.
    (sid,) = add_subscribers(site.settings, site.double, ["same.second@example.com"], db.UNCONFIRMED)
    left_at = datetime(2026, 1, 23, 9, 0, 0, 700_000, tzinfo=timezone.utc)
    engine, links = engine_of(site.settings), ConfirmLinks(site.settings.links)
    with engine.begin() as conn:
        assert compare_and_set(
            conn, list_id=site.double, subscriber_id=sid, expected=db.UNCONFIRMED, status=db.UNSUBSCRIBED,
            source="command", now=left_at,
        )  # fmt: skip
    for issued, state in ((left_at - timedelta(milliseconds=400), "expired"), (left_at + timedelta(milliseconds=200), "confirmable")):
        token = links.token(site.double, sid, "same.second@example.com", issued)
        assert links.read(token).issued_at == issued
        with engine.connect() as conn:
            found = inspect_link(conn, links, token, left_at + timedelta(seconds=1))
        assert found is not None and found.state == state


def test_nul_in_a_field_or_the_path_is_a_400_never_a_500(site: Site) -> None:
    for fields in ({"email": "nul\x00@example.com"}, {"email": "ok.nul@example.com", "name": "a\x00b"}, {"email": "ok.nul@example.com", "frequency": "daily\x00"}):
        answer = site.http.post(f"{site.url}/subscribe/papers", data=fields)
        assert answer.status_code == 400 and '<form method="post" novalidate>' in answer.text and "\x00" not in answer.text
    for path in ("/subscribe/pa%00pers", "/confirm/%00", "/unsubscribe/a%00b", "/preferences/%00", "/%00", "/feed.xml%00"):
        for answer in (site.http.get(f"{site.url}{path}"), site.http.post(f"{site.url}{path}", data={"email": "x@example.com"})):
            assert answer.status_code == 400, path


@pytest.mark.slow
def test_two_confirms_at_the_same_moment_send_one_welcome(site: Site) -> None:
    email = "twice@example.com"
    site.sign_up(email, client="192.0.2.60")
    link = confirm_link(site.mails_to(email, expect=1)[0])
    start = threading.Barrier(4)
    answers: list[int] = []

    def confirm() -> None:
        with httpx.Client(timeout=30) as http:
            start.wait()
            answers.append(http.post(link, data={"confirm": "yes"}).status_code)

    threads = [threading.Thread(target=confirm) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 4
    mails = site.mails_to(email, expect=3, wait=2)
    assert [subject_of(mail) for mail in mails] == [site.subject("confirm"), site.subject("welcome")]
    sid = subscriber_id(site.settings, email)
    assert [event[3] for event in events_of(site.settings, sid)] == ["signup", "confirmation"]


def test_preferences_switch_to_weekly_and_leave(site: Site) -> None:
    (sid,) = add_subscribers(site.settings, site.double, ["prefs@example.com"])
    token = UnsubscribeLinks(site.settings.links).token(site.double, sid, "prefs@example.com")
    url = f"{site.url}/preferences/{token}"
    page = site.http.get(url)
    assert page.status_code == 200 and 'value="daily" checked' in page.text
    assert membership(site.settings, site.double, "prefs@example.com").frequency == db.DAILY

    saved = site.http.post(url, data={"frequency": "weekly"})
    assert saved.status_code == 200 and 'value="weekly" checked' in saved.text and 'role="status"' in saved.text
    assert membership(site.settings, site.double, "prefs@example.com").frequency == db.WEEKLY
    site.http.post(url, data={"frequency": "weekly"})  # again: no second event
    assert site.http.post(url, data={"frequency": "hourly"}).status_code == 400
    with engine_of(site.settings).connect() as conn:
        details = conn.execute(
            select(db.events.c.source, db.events.c.detail).where(db.events.c.subscriber_id == sid)
        ).all()
    assert details == [("preferences_page", "frequency: weekly")]

    # The unsubscribe page offers "weekly instead" to daily readers only; leaving works from here.
    assert 'action="../unsubscribe/' in page.text
    assert site.http.post(f"{site.url}/unsubscribe/{token}", data={"confirm": "yes"}).status_code == 200
    assert status_of(site.settings, site.double, sid) == db.UNSUBSCRIBED
    assert "구독하고 있지 않습니다" in site.http.get(url).text

    forged = site.http.get(f"{url[:-1]}{'A' if url[-1] != 'A' else 'B'}")
    assert forged.status_code == 404


def test_the_unsubscribe_page_offers_weekly_instead(site: Site) -> None:
    (sid,) = add_subscribers(site.settings, site.double, ["tired@example.com"])
    token = UnsubscribeLinks(site.settings.links).token(site.double, sid, "tired@example.com")
    page = site.http.get(f"{site.url}/unsubscribe/{token}")
    assert f'action="../preferences/{token}"' in page.text and 'name="frequency" value="weekly"' in page.text
    answer = site.http.post(f"{site.url}/preferences/{token}", data={"frequency": "weekly"})
    assert answer.status_code == 200
    assert (status_of(site.settings, site.double, sid), membership(site.settings, site.double, "tired@example.com").frequency) == (db.SUBSCRIBED, db.WEEKLY)
    assert 'action="../preferences/' not in site.http.get(f"{site.url}/unsubscribe/{token}").text


@pytest.mark.slow
def test_an_import_can_require_confirmation(site: Site) -> None:
    folder = site.settings.config_dir
    add_subscribers(site.settings, site.double, ["already.in@example.com"])
    (folder / "readers.csv").write_text(
        "email,name\nimported.one@example.com,One\nimported.two@example.com,Two\nalready.in@example.com,\n"
    )
    done = run_newsletter("--config", str(folder / "newsletter.toml"), "subscribers", "import", "readers.csv",
                          "--list", "papers", "--require-confirmation", cwd=folder, env=KEY_ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Confirmation mails sent: 2 of 2" in done.stderr
    for email in ("imported.one@example.com", "imported.two@example.com"):
        assert membership(site.settings, site.double, email).status == db.UNCONFIRMED
        [mail] = site.mails_to(email, expect=1)
        assert site.http.post(confirm_link(mail), data={"confirm": "yes"}).status_code == 200
        assert membership(site.settings, site.double, email).status == db.SUBSCRIBED
    assert site.mails_to("already.in@example.com", expect=1, wait=0.5) == []
    # Without the option the operator vouches: an unconfirmed sign-up in the file is subscribed.
    (sid,) = add_subscribers(site.settings, site.double, ["vouched@example.com"], db.UNCONFIRMED)
    (folder / "vouched.csv").write_text("email\nvouched@example.com\n")
    done = run_newsletter(
        "--config", str(folder / "newsletter.toml"), "subscribers", "import", "vouched.csv", "--list", "papers",
        cwd=folder, env=KEY_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert status_of(site.settings, site.double, sid) == db.SUBSCRIBED
    assert site.mails_to("vouched@example.com", expect=1, wait=1) == []


@pytest.mark.slow
def test_a_reader_signs_up_and_confirms_in_chromium(site: Site, tmp_path_factory: pytest.TempPathFactory) -> None:
    shots = tmp_path_factory.getbasetemp() / "screenshots"
    shots.mkdir(exist_ok=True)
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"), require_chromium())
    try:
        page = browser.page(375)
        page.goto(f"{site.url}/subscribe/papers")
        layout = page.evaluate("""(() => {
          const tall = (s) => document.querySelector(s).getBoundingClientRect().height;
          return {scroll: document.documentElement.scrollWidth, email: tall('#email'), button: tall('form button'),
                  trap: document.querySelector('#website').getBoundingClientRect().right,
                  radios: [...document.querySelectorAll('.choice')].map((l) => l.getBoundingClientRect().height)};
        })()""")
        assert layout["scroll"] <= 375 and layout["email"] >= 44 and layout["button"] >= 44
        assert layout["trap"] < 0  # the honeypot is off screen
        assert min(layout["radios"]) >= 44
        page.screenshot(shots / "subscribe-375.png")

        # A person types an address, picks weekly, and presses the button: a plain form post.
        page.evaluate("""(() => {
          document.querySelector('#email').value = 'browser.reader@example.com';
          document.querySelector('input[name=frequency][value=weekly]').click();
          setTimeout(() => document.querySelector('form button[type=submit]').click(), 0);
        })()""")
        browser.wait_for("Page.loadEventFired", page.session)
        assert "browser.reader@example.com" in page.evaluate("document.querySelector('.notice').textContent")
        page.screenshot(shots / "subscribed-375.png")

        [mail] = site.mails_to("browser.reader@example.com", expect=1)
        page.goto(confirm_link(mail))
        assert membership(site.settings, site.double, "browser.reader@example.com").status == db.UNCONFIRMED
        page.evaluate("setTimeout(() => document.querySelector('form button').click(), 0)")
        browser.wait_for("Page.loadEventFired", page.session)
        assert "구독이 확인되었습니다" in page.evaluate("document.querySelector('h1').textContent")
        page.screenshot(shots / "confirmed-375.png")
    finally:
        browser.close()
    row = membership(site.settings, site.double, "browser.reader@example.com")
    assert (row.status, row.frequency) == (db.SUBSCRIBED, db.WEEKLY)
    mails = site.mails_to("browser.reader@example.com", expect=3, wait=2)
    assert [subject_of(m) for m in mails] == [site.subject("confirm"), site.subject("welcome")]


@pytest.mark.slow
def test_a_mail_the_server_cannot_send_stays_pending_for_the_next_try(tmp_path: Path) -> None:
    # No API key: the sign-up is recorded, and its confirmation mail is not lost in flight.
    config = write_config(tmp_path)
    settings = load_settings(config)
    with engine_of(settings).begin() as conn:
        create_list(conn, "papers", now=settings.clock())
    with serving(config) as url, httpx.Client(timeout=30) as http:
        assert http.post(f"{url}/subscribe/papers", data={"email": "early@example.com"}).status_code == 200
        m = db.messages.c
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine_of(settings).connect() as conn:
                row = conn.execute(select(m.key, m.state, m.error)).first()
            if row is not None and row.state != db.IN_FLIGHT:
                break
            time.sleep(0.05)
    assert row.key.startswith("confirm:") and row.state == db.PENDING
    assert row.error.startswith("not sent: SENDGRID_API_KEY is not set")
    assert membership(settings, 1, "early@example.com").status == db.UNCONFIRMED


def test_a_client_that_hangs_up_mid_body_leaves_no_error_in_the_log(site: Site) -> None:
    port = int(site.url.rsplit(":", 1)[1])
    for path in ("/subscribe/papers", "/webhooks/sendgrid"):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: 100\r\n\r\nemail=a".encode()
            )
    assert site.http.get(f"{site.url}/subscribe/papers").status_code == 200  # still serving
    log = site.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


@pytest.mark.slow  # it reads the log the tests above leave, most of them slow: it runs with them
def test_the_servers_log_holds_no_address_and_no_token(site: Site) -> None:
    # Last in the module: by now the server has answered every kind of request above, refused a
    # client over its rate and failed to send nothing.
    site.settled()
    log = site.log.read_text()
    assert "over its rate" in log  # the log was written
    assert "@example.com" not in log and "192.0.2." not in log
    for kind in ("confirm", "unsubscribe", "preferences", "resubscribe"):
        assert f"/{kind}/" not in log
    assert not re.search(r"[A-Za-z0-9_-]{43}", log)


def test_the_log_filter_takes_addresses_and_tokens_out_of_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redacting")
    logger.addHandler(handler)
    token = "1.2." + "A" * 43
    try:
        raise ValueError(f"duplicate key: (email_key)=(reader@example.com); link /confirm/{token}")
    except ValueError:
        logger.exception("the sign-up of %s failed at %s", "Reader@Example.com", f"/unsubscribe/{token}")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "Traceback" in written and "duplicate key" in written
    assert "example.com" not in written.casefold() and token not in written and "A" * 43 not in written


@pytest.mark.slow
def test_a_server_stopped_mid_queue_sends_every_mail_it_claimed_and_the_next_one_the_rest(tmp_path: Path) -> None:
    port, readers = free_port(), 300
    with FakeSendGrid(api_key=API_KEY, latency=0.01) as fake:
        config = write_config(
            tmp_path, base_url=f"http://127.0.0.1:{port}", sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY,
            send_rate_limit=1000.0, signup_rate_per_hour=100_000,
        )  # fmt: skip
        settings = load_settings(config)
        with engine_of(settings).begin() as conn:
            create_list(conn, "papers", now=settings.clock())
        m = db.messages.c
        for attempt in range(2):
            with serving(config, port=port) as url, httpx.Client(timeout=30) as http:
                if attempt == 0:
                    for n in range(readers):
                        http.post(f"{url}/subscribe/papers", data={"email": f"queued{n}@example.com"})
                    while not fake.delivered():  # the queue is being taken: stop the server now
                        time.sleep(0.01)
                else:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and len(fake.delivered()) < readers:
                        time.sleep(0.05)
            # Stopped (SIGTERM): every mail claimed went out; the rest of the queue waits.
            with engine_of(settings).connect() as conn:
                states = dict(conn.execute(select(m.state, func.count()).group_by(m.state)).all())
                queued = conn.execute(select(func.count()).select_from(db.signup_requests)).scalar_one()
            assert set(states) <= {db.SENT} and states.get(db.SENT, 0) == len(fake.delivered())
            assert states.get(db.SENT, 0) + queued == readers
    assert sorted(fake.delivered()) == sorted(f"queued{n}@example.com" for n in range(readers))
