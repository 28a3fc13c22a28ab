"""Unsubscribe links against the real `newsletter serve`: the confirmation page, the RFC 8058
one-click POST, re-subscribing, bad links of every kind, and unsubscribes during other writes."""

from __future__ import annotations

import hashlib
import string
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from itsdangerous import Signer
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.content.render import page_language, translations
from newsletter.providers import registry
from newsletter.send.addressing import Addressing, Content, Reader
from newsletter.subscribers import erase_subscriber, get_list
from newsletter.tokens import UnsubscribeLinks
from testkit.projects import (
    add_list,
    add_subscribers,
    count_status,
    engine_of,
    write_config,
)
from testkit.servers import serving

from .web import events_of, status_of, version_2_database

ONE_CLICK = {
    "content": b"List-Unsubscribe=One-Click",
    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
}


@dataclass
class Site:
    url: str
    settings: Settings
    links: UnsubscribeLinks
    list_id: int
    other_list_id: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("site")
    config = write_config(folder)
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers", "Daily Papers")
    other_list_id = add_list(settings, "weekly", "Weekly digest")
    with serving(config) as url:
        yield Site(url, settings, UnsubscribeLinks(settings.links), list_id, other_list_id)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        yield http


def _member(
    site: Site, email: str, *, also_other_list: bool = False, status: str = db.SUBSCRIBED
) -> tuple[int, str]:
    (subscriber_id,) = add_subscribers(site.settings, site.list_id, [email], status)
    if also_other_list:
        add_subscribers(site.settings, site.other_list_id, [email])
    return subscriber_id, f"{site.url}/unsubscribe/{site.links.token(site.list_id, subscriber_id, email)}"


@pytest.mark.slow
def test_get_shows_a_confirmation_page_and_changes_nothing(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "reader.get@example.com")
    for _ in range(3):  # a mail scanner, a link preview, the reader
        page = client.get(url)
        assert page.status_code == 200
    assert client.head(url).status_code == 200
    assert '<form method="post">' in page.text
    assert "r•••@example.com" in page.text and "reader.get@example.com" not in page.text
    assert '<meta name="robots" content="noindex, nofollow">' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["content-security-policy"].startswith(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    )
    assert "set-cookie" not in page.headers
    assert "http://" not in page.text.replace(site.settings.base_url, "")  # nothing loaded from elsewhere
    assert status_of(site.settings, site.list_id, subscriber_id) == db.SUBSCRIBED
    assert events_of(site.settings, subscriber_id) == []


def test_one_click_post_unsubscribes_that_list_only(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "one.click@example.com", also_other_list=True)
    # Exactly what a mail client sends for RFC 8058: no cookies, no redirects followed.
    answer = client.post(url, **ONE_CLICK)
    assert answer.status_code == 200
    assert "location" not in answer.headers and "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    assert status_of(site.settings, site.list_id, subscriber_id) == db.UNSUBSCRIBED
    assert status_of(site.settings, site.other_list_id, subscriber_id) == db.SUBSCRIBED
    assert events_of(site.settings, subscriber_id) == [
        (site.list_id, db.UNSUBSCRIBED, db.SUBSCRIBED, "one_click")
    ]


def test_one_click_post_as_multipart_form_data(site: Site, client: httpx.Client) -> None:
    # RFC 8058 allows either form encoding.
    subscriber_id, url = _member(site, "multipart@example.com")
    answer = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200
    assert events_of(site.settings, subscriber_id) == [
        (site.list_id, db.UNSUBSCRIBED, db.SUBSCRIBED, "one_click")
    ]


def test_repeating_the_post_is_harmless(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "repeat@example.com")
    answers = [client.post(url, **ONE_CLICK) for _ in range(3)] + [client.post(url, data={"confirm": "yes"})]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200]
    assert status_of(site.settings, site.list_id, subscriber_id) == db.UNSUBSCRIBED
    assert len(events_of(site.settings, subscriber_id)) == 1


def _resubscribe_form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    """The URL and fields of the "Subscribe again" form on a page."""
    form = page.text.split('<form method="post" action="')[1].split("</form>")[0]
    action = form.split('"')[0]
    ticket = form.split('name="ticket" value="')[1].split('"')[0]
    return urljoin(str(page.url), action), {"ticket": ticket}


def test_the_page_button_unsubscribes_and_offers_to_resubscribe(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "button@example.com")
    done = client.post(url, data={"confirm": "yes"})
    assert done.status_code == 200
    resubscribe_url, fields = _resubscribe_form(done)
    assert resubscribe_url == url.replace("/unsubscribe/", "/resubscribe/")

    again = client.post(resubscribe_url, data=fields)
    assert again.status_code == 200
    assert "set-cookie" not in again.headers and again.headers["cache-control"] == "no-store"
    assert status_of(site.settings, site.list_id, subscriber_id) == db.SUBSCRIBED
    # The resubscribed page offers the way back out.
    assert f'action="../unsubscribe/{url.rsplit("/", 1)[1]}"' in again.text
    assert events_of(site.settings, subscriber_id) == [
        (site.list_id, db.UNSUBSCRIBED, db.SUBSCRIBED, "unsubscribe_page"),
        (site.list_id, db.SUBSCRIBED, db.UNSUBSCRIBED, "unsubscribe_page"),
    ]
    # Re-subscribing twice changes nothing more.
    assert client.post(resubscribe_url, data=fields).status_code == 200
    assert len(events_of(site.settings, subscriber_id)) == 2
    # Unsubscribing again from the resubscribed page offers the way back again.
    out_again = client.post(url, data={"confirm": "yes"})
    assert _resubscribe_form(out_again)[0] == resubscribe_url
    assert status_of(site.settings, site.list_id, subscriber_id) == db.UNSUBSCRIBED


def test_an_unsubscribed_reader_sees_the_done_page_on_get(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "already@example.com", status=db.UNSUBSCRIBED)
    page = client.get(url)
    assert page.status_code == 200
    assert "구독이 해지되었습니다" in page.text
    # Whoever opens the link now may not be the reader who left: no way to re-subscribe them.
    assert "resubscribe" not in page.text and "ticket" not in page.text
    assert events_of(site.settings, subscriber_id) == []


def test_a_forwarded_link_cannot_resubscribe_someone_who_left(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "left@example.com")
    _, reader_fields = _resubscribe_form(client.post(url, **ONE_CLICK))  # the reader's own page
    resubscribe_url = url.replace("/unsubscribe/", "/resubscribe/")
    other_id, other_url = _member(site, "other.reader@example.com")
    _, other_fields = _resubscribe_form(client.post(other_url, **ONE_CLICK))
    # A day and more later, from the clock of a process with the same key.
    late = load_settings(
        site.settings.config_dir / "newsletter.toml", now=datetime.now(timezone.utc) - timedelta(hours=25)
    )
    stale = UnsubscribeLinks(late.links).resubscribe_ticket(url.rsplit("/", 1)[1])

    # Someone else holding the link: what they see offers no way back…
    assert "resubscribe" not in client.get(url).text
    assert "resubscribe" not in client.post(url, **ONE_CLICK).text
    # …and posting without the reader's fresh ticket is refused.
    refused = [
        client.post(resubscribe_url),
        client.post(resubscribe_url, data={"ticket": "garbage"}),
        client.post(resubscribe_url, data=other_fields),  # a ticket for another link
        client.post(resubscribe_url, data={"ticket": stale}),  # expired
    ]
    for answer in refused:
        assert answer.status_code == 403
        assert "이 버튼은 만료되었습니다" in answer.text and "l•••@example.com" in answer.text
        assert answer.headers["cache-control"] == "no-store"
    assert status_of(site.settings, site.list_id, subscriber_id) == db.UNSUBSCRIBED
    assert events_of(site.settings, subscriber_id) == [
        (site.list_id, db.UNSUBSCRIBED, db.SUBSCRIBED, "one_click")
    ]
    # The reader's own ticket, within the day, still works.
    assert client.post(resubscribe_url, data=reader_fields).status_code == 200
    assert status_of(site.settings, site.list_id, subscriber_id) == db.SUBSCRIBED
    assert status_of(site.settings, site.list_id, other_id) == db.UNSUBSCRIBED


def test_resubscribe_tickets_last_a_day() -> None:
    issued = datetime(2026, 1, 23, 9, 0, tzinfo=timezone.utc)

    def links(hours: float) -> UnsubscribeLinks:
        settings = load_settings(secret_key="test-signing-key", now=issued + timedelta(hours=hours))
        return UnsubscribeLinks(settings.links)

    token = links(0).token(1, 2, "reader@example.com")
    ticket = links(0).resubscribe_ticket(token)
    assert links(23.9).resubscribe_allowed(token, ticket, left_at=issued)
    assert not links(24.1).resubscribe_allowed(token, ticket, left_at=issued)
    assert not links(1).resubscribe_allowed(links(0).token(1, 3, "reader@example.com"), ticket, left_at=issued)
    assert not links(1).resubscribe_allowed(token, ticket[:-1], left_at=issued)
    # Kept from this unsubscribe, it does not undo a later one.
    assert not links(2).resubscribe_allowed(token, ticket, left_at=issued + timedelta(hours=1))


def test_a_kept_ticket_does_not_undo_a_later_unsubscribe(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "twice@example.com")
    resubscribe_url, fields = _resubscribe_form(client.post(url, **ONE_CLICK))
    assert client.post(resubscribe_url, data=fields).status_code == 200
    time.sleep(1.1)  # the ticket's time is in whole seconds
    assert client.post(url, **ONE_CLICK).status_code == 200
    replayed = client.post(resubscribe_url, data=fields)
    assert replayed.status_code == 403 and "이 버튼은 만료되었습니다" in replayed.text
    assert status_of(site.settings, site.list_id, subscriber_id) == db.UNSUBSCRIBED


def test_the_mailto_target_is_percent_encoded() -> None:
    settings = load_settings(secret_key="test-signing-key", unsubscribe_mailto="leave?now&x=1@example.com")
    headers = UnsubscribeLinks(settings.links).headers("https://papers.example.com/unsubscribe/t")
    assert headers["List-Unsubscribe"] == (
        "<https://papers.example.com/unsubscribe/t>, "
        "<mailto:leave%3Fnow%26x%3D1@example.com?subject=unsubscribe>"
    )


def test_a_test_copys_links_lead_to_a_page_that_says_so_and_change_nothing(site: Site, client: httpx.Client) -> None:
    member_id, _ = _member(site, "tester.member@example.com")
    (elsewhere_id,) = add_subscribers(site.settings, site.other_list_id, ["tester.elsewhere@example.com"])
    with engine_of(site.settings).connect() as conn:
        mailing_list = get_list(conn, "daily-papers")
    # Without a campaign, as send_test addresses an issue to the --to addresses.
    addressing = Addressing(
        site.settings.sender,
        Content("[TEST] Daily Papers", "<p>issue</p>", "issue"),
        mailing_list=mailing_list,
        campaign_id=None,
        links=site.links,
        provider=registry.provider_for(site.settings.delivery, connect=False),
    )
    copies = {
        "a member of the list": addressing.recipient(Reader(0, member_id, "tester.member@example.com", None)),
        "a subscriber of another list": addressing.recipient(Reader(0, elsewhere_id, "tester.elsewhere@example.com", None)),
        "no subscriber": addressing.recipient(Reader(0, 0, "editor@example.org", None)),
    }
    title = translations(page_language(site.settings.site)).gettext("This email is a test copy")
    for who, copy in copies.items():
        # No List-Unsubscribe: a mail client's button would do nothing.
        assert copy.headers == {} and copy.tags == {}, who
        assert copy.unsubscribe_url == copy.preferences_url and "/test-copy" in str(copy.unsubscribe_url), who
        # Forwarded, it must not unsubscribe its reader: no real token in it.
        token = str(copy.unsubscribe_url).rpartition("/")[2]
        assert client.get(f"{site.url}/unsubscribe/{token}").status_code == 404, who
        page = client.get(str(copy.unsubscribe_url).replace(site.settings.base_url, site.url))
        assert page.status_code == 200 and f"<h1>{title}</h1>" in page.text, who
        assert page.headers["cache-control"] == "no-store" and "set-cookie" not in page.headers
        assert "tester" not in page.text and "editor" not in page.text
    assert status_of(site.settings, site.list_id, member_id) == db.SUBSCRIBED
    assert events_of(site.settings, member_id) == [] and events_of(site.settings, elsewhere_id) == []


def test_a_bounced_address_stays_bounced_and_cannot_resubscribe(site: Site, client: httpx.Client) -> None:
    subscriber_id, url = _member(site, "bounced@example.com", status=db.BOUNCED)
    page = client.post(url, **ONE_CLICK)
    assert page.status_code == 200
    assert "resubscribe" not in page.text
    assert client.post(url.replace("/unsubscribe/", "/resubscribe/")).status_code == 403
    assert status_of(site.settings, site.list_id, subscriber_id) == db.BOUNCED
    assert events_of(site.settings, subscriber_id) == []


def test_bad_links_get_the_same_page_and_change_nothing(
    site: Site, client: httpx.Client, tmp_path: Path
) -> None:
    subscriber_id, url = _member(site, "target@example.com")
    token = site.links.token(site.list_id, subscriber_id, "target@example.com")
    list_part, subscriber_part, signature = token.split(".")
    altered = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    forger = UnsubscribeLinks(load_settings(secret_key="not-our-signing-key", config_dir=tmp_path).links)
    erased_id, _ = _member(site, "erased@example.com")
    erased_token = site.links.token(site.list_id, erased_id, "erased@example.com")
    with engine_of(site.settings).begin() as conn:
        conn.execute(db.subscribers.delete().where(db.subscribers.c.id == erased_id))
    # The same bytes to a lenient base64 decoder, which ignores the two unused bits of the last character.
    base64url = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    non_canonical = signature[:-1] + base64url[base64url.index(signature[-1]) ^ 1]

    bad_tokens = {
        "forged with another key": forger.token(site.list_id, subscriber_id, "target@example.com"),
        "signature modified": f"{list_part}.{subscriber_part}.{altered}",
        "subscriber changed": f"{list_part}.{subscriber_part}0.{signature}",
        "list changed": f"{site.other_list_id}.{subscriber_part}.{signature}",
        "truncated": token[:-6],
        "signature missing": f"{list_part}.{subscriber_part}",
        "garbage": "not-a-token",
        # Correctly signed, but for a list this subscriber is not on.
        "other list": site.links.token(site.other_list_id, subscriber_id, "target@example.com"),
        # Correctly signed, for a subscriber who has since been erased.
        "erased subscriber": erased_token,
        # Correctly signed ids, but for another address than the one that holds them.
        "another address": site.links.token(site.list_id, subscriber_id, "someone.else@example.com"),
        # Not exactly what was issued, though a lenient decoder reads the same ids and signature.
        "character outside base64url in the signature": f"{list_part}.{subscriber_part}.{signature[:20]}!{signature[20:]}",
        "standard base64 '+' in the signature": f"{list_part}.{subscriber_part}.+{signature[1:]}",
        "padding appended": f"{token}=",
        "something after the padding": f"{token}=AAAA",
        "a character appended": f"{token}A",
        "a newline appended": f"{token}%0A",
        "a path appended": f"{token}/x",
        "non-canonical last character": f"{list_part}.{subscriber_part}.{non_canonical}",
        "leading zero in the list id": f"0{list_part}.{subscriber_part}.{signature}",
        "leading zero in the subscriber id": f"{list_part}.0{subscriber_part}.{signature}",
        "ids in upper case": f"{list_part}.{subscriber_part}.{signature}".upper(),
        "a list id too big for the database": f"{'z' * 13}.{subscriber_part}.{signature}",
        "empty": "",
    }
    answers = {}
    for name, bad in bad_tokens.items():
        bad_url = f"{site.url}/unsubscribe/{bad}"
        answers[name] = [
            client.get(bad_url),
            client.post(bad_url, **ONE_CLICK),
            client.post(bad_url, data={"confirm": "yes"}),
            client.post(f"{site.url}/resubscribe/{bad}"),
        ]
    reference = answers["garbage"][0]
    assert reference.status_code == 404
    for name, responses in answers.items():
        for response in responses:
            assert (response.status_code, response.content) == (404, reference.content), name
            assert "set-cookie" not in response.headers
    assert "target" not in reference.text and "erased" not in reference.text
    assert status_of(site.settings, site.list_id, subscriber_id) == db.SUBSCRIBED
    assert events_of(site.settings, subscriber_id) == []


def test_an_erased_readers_link_never_reaches_the_next_reader(site: Site, client: httpx.Client) -> None:
    erased_id, erased_url = _member(site, "leaving.for.good@example.com")
    with engine_of(site.settings).begin() as conn:
        erase_subscriber(conn, "leaving.for.good@example.com", now=datetime.now(timezone.utc))
    next_id, _ = _member(site, "next.reader@example.com")
    assert next_id > erased_id
    # Even a link naming the next reader's id is refused unless it was made for their address.
    borrowed = f"{site.url}/unsubscribe/{site.links.token(site.list_id, next_id, 'leaving.for.good@example.com')}"
    for url in (erased_url, borrowed):
        assert client.get(url).status_code == 404
        assert client.post(url, **ONE_CLICK).status_code == 404
    assert status_of(site.settings, site.list_id, next_id) == db.SUBSCRIBED


def _link_signed_before_addresses_were(list_id: int, subscriber_id: int) -> str:
    """An unsubscribe token as the version before schema 3 signed it: the ids only."""
    signer = Signer("test-signing-key", salt="newsletter.unsubscribe", sep=".", digest_method=hashlib.sha256)
    return signer.sign(f"{list_id:x}.{subscriber_id:x}").decode("ascii")  # below 10, base 16 is base 36


@pytest.mark.slow
def test_links_already_in_inboxes_keep_working_after_the_upgrade(tmp_path: Path) -> None:
    """Never lose an unsubscribe: links sent before the signature covered the address still work,
    for the subscribers who existed then, and for no one added since."""
    url = version_2_database(
        tmp_path / "newsletter.db",
        """INSERT INTO lists VALUES (1, 'daily-papers', '', '2026-01-01 00:00:00');
           INSERT INTO subscribers VALUES (1, 'kept@example.com', 'kept@example.com', NULL, '{}', '2026-01-02 00:00:00');
           INSERT INTO memberships VALUES (1, 1, 'subscribed', '2026-01-02 00:00:00', '2026-01-02 00:00:00');""",
    )
    config = write_config(tmp_path, database_url=url)
    with serving(config) as site_url, httpx.Client(timeout=30) as http:
        settings = load_settings(config)
        (added_id,) = add_subscribers(settings, 1, ["added.later@example.com"])
        old_style_for_new = http.post(
            f"{site_url}/unsubscribe/{_link_signed_before_addresses_were(1, added_id)}", **ONE_CLICK
        )
        old_style = http.post(f"{site_url}/unsubscribe/{_link_signed_before_addresses_were(1, 1)}", **ONE_CLICK)
    assert old_style_for_new.status_code == 404
    assert status_of(settings, 1, added_id) == db.SUBSCRIBED
    assert old_style.status_code == 200
    assert status_of(settings, 1, 1) == db.UNSUBSCRIBED


def test_a_new_database_accepts_no_link_signed_the_old_way(site: Site, client: httpx.Client) -> None:
    subscriber_id, _ = _member(site, "fresh.database@example.com")
    url = f"{site.url}/unsubscribe/{_link_signed_before_addresses_were(site.list_id, subscriber_id)}"
    assert client.post(url, **ONE_CLICK).status_code == 404
    assert status_of(site.settings, site.list_id, subscriber_id) == db.SUBSCRIBED


@pytest.mark.slow
def test_links_signed_with_a_rotated_out_key_still_work(tmp_path: Path) -> None:
    old_settings = load_settings(write_config(tmp_path, secret_key="the-old-signing-key"))
    list_id = add_list(old_settings, "daily-papers")
    (subscriber_id,) = add_subscribers(old_settings, list_id, ["rotated@example.com"])
    old_token = UnsubscribeLinks(old_settings.links).token(list_id, subscriber_id, "rotated@example.com")
    config = write_config(tmp_path, secret_key="the-new-signing-key", old_secret_keys=["the-old-signing-key"])
    with serving(config) as url, httpx.Client(timeout=30) as http:
        assert http.post(f"{url}/unsubscribe/{old_token}", **ONE_CLICK).status_code == 200
    assert status_of(old_settings, list_id, subscriber_id) == db.UNSUBSCRIBED


@pytest.mark.slow
def test_unsubscribes_arriving_while_an_import_writes(site: Site) -> None:
    """Another process's write transactions delay the answers; none is lost or refused."""
    readers = [f"busy{n}@example.com" for n in range(40)]
    reader_ids = add_subscribers(site.settings, site.list_id, readers)
    urls = [
        f"{site.url}/unsubscribe/{site.links.token(site.list_id, i, email)}"
        for i, email in zip(reader_ids, readers, strict=True)
    ]
    import_list = add_list(site.settings, "imported")
    batches, batch_size = 20, 200
    started = threading.Event()

    def importer() -> None:
        engine = engine_of(site.settings)
        now = datetime.now(timezone.utc)
        for batch in range(batches):
            with engine.begin() as conn:  # holds SQLite's write lock for the whole batch
                started.set()
                for n in range(batch_size):
                    email = f"import{batch}-{n}@example.com"
                    new_id = conn.execute(
                        db.subscribers.insert().values(
                            email=email, email_key=email, attributes={}, created_at=now
                        )
                    ).inserted_primary_key[0]
                    conn.execute(
                        db.memberships.insert().values(
                            list_id=import_list,
                            subscriber_id=new_id,
                            status=db.SUBSCRIBED,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                time.sleep(0.05)
            time.sleep(0.01)  # reading the next rows of the file

    writer = threading.Thread(target=importer)
    writer.start()
    try:
        assert started.wait(30)
        with httpx.Client(timeout=60) as http, ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda url: http.post(url, **ONE_CLICK).status_code, urls))
    finally:
        writer.join()
    assert codes == [200] * len(urls)
    assert all(status_of(site.settings, site.list_id, i) == db.UNSUBSCRIBED for i in reader_ids)
    assert count_status(site.settings, import_list, db.SUBSCRIBED) == batches * batch_size
    with engine_of(site.settings).connect() as conn:
        logged = conn.execute(
            select(func.count()).where(
                db.events.c.subscriber_id.in_(reader_ids), db.events.c.source == "one_click"
            )
        ).scalar_one()
    assert logged == len(readers)
