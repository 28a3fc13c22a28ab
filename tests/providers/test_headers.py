"""Header injection through outside text (a reader's name from the sign-up form or a CSV file, a
subject): whatever a name holds (control characters, line separators, RFC 2047 encoded words that
decode into CR/LF, bidi controls, quotes, megabytes), the message a reader receives has exactly our
headers and our parts, and shows the name as it was typed, cleaned. Through `mime_message` (SMTP
and every dry run's .eml), then end to end: the real CLI, the fake SMTP server, the outbox and the
fake SendGrid."""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import json
import re
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.providers import UNSUBSCRIBE_TAG, Batch, Message, Recipient
from newsletter.providers.headers import NAME_MAX, address_header, header_text, literal, plain_name, plain_text
from newsletter.providers.mime import mime_message
from newsletter.providers.sendgrid import SendGrid
from testkit.fake_sendgrid import FakeSendGrid
from testkit.fake_smtp import FakeSMTP
from testkit.projects import API_KEY, LIST, add_list, configure

from ..send_helpers import KEY_ENV, SEND
from ..support import run_newsletter


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# Each entry: what a reader typed into the name field (or a CSV cell held).
ATTACKS = {
    "q word": "=?utf-8?q?a=0D=0ABcc:_x=40evil.example?=",
    "q word, Bcc and Reply-To": (
        "=?utf-8?q?a=0D=0ABcc:_attacker=40evil.example.com=0D=0AReply-To:_x=40evil.example?="
    ),
    "b word, a forged body": "=?utf-8?b?" + _b64("a\r\n\r\nphishing") + "?=",
    "b word, upper case, Bcc and a body": "=?UTF-8?B?" + _b64("a\r\nBcc: x@evil.example\r\n\r\nphishing") + "?=",
    "latin-1 q word": "=?iso-8859-1?q?Jos=E9=0D=0ABcc:_x=40evil.example?=",
    "words inside quotes": '"=?utf-8?q?a=0D=0ABcc:_x=40evil.example?=" =?utf-8?b?Cg==?=',
    "folded line": "a\r\n Bcc: x@evil.example",
    "bare LF": "a\nReply-To: x@evil.example",
    "bare CR": "a\rReply-To: x@evil.example",
    "line separator": "a\u2028Bcc: x@evil.example",
    "paragraph separator": "a\u2029Bcc: x@evil.example",
    "NEL": "a\x85Bcc: x@evil.example",
    "NUL": "a\x00Bcc: x@evil.example",
    "every C0 control": "".join(map(chr, range(0x20))) + "a",
    "DEL and C1": "a\x7fb\x9bc\x9fd",
    "bidi controls": "\u202egnp.exe\u202c Ann \u2066x\u2069 \u202a\u202b\u202c\u202d\u2067\u2068",
    "quotes and backslashes": 'Ann "the \\"Admin\\"" O\'Neil \\',
    "5,000 characters": "x" * 5000,
    "5,000 Korean characters": "가" * 5000,
    "Korean": "김철수",
    "Korean with spaces, long": "가나다라마바사 아자차카타파하 " * 10,
    "mixed scripts and an encoded word": "José 김 =?utf-8?b?Cg==?= Ann",
    "empty after cleaning": "\r\n\t\x00\u2028",
}

# What no name or subject may hold once cleaned: controls, line separators, bidi embeddings and overrides.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
READER = "reader@example.com"
CONFIGURED_REPLY_TO = "editor@example.com"
TEXT = f"Today's papers.\n\nBcc: this line is body text\n.\nUnsubscribe: {UNSUBSCRIBE_TAG}\n"
HTML = f"<p>Today's papers.</p><a href='{UNSUBSCRIBE_TAG}'>unsubscribe</a>"
UNSUBSCRIBE_URL = "https://news.example.com/unsubscribe/token-1"
NOW = datetime(2026, 1, 23, 7, 0, tzinfo=timezone.utc)
EXPECTED_HEADERS = {
    "From", "Reply-To", "Subject", "List-Id", "MIME-Version", "To", "Date", "Message-ID",
    "List-Unsubscribe", "List-Unsubscribe-Post", "Content-Type",
}  # fmt: skip


def _message(subject: str = "Today's papers", sender_name: str = "Daily Papers") -> Message:
    return Message(
        subject=subject, html=HTML, text=TEXT, sender_email="papers@example.com", sender_name=sender_name,
        reply_to=CONFIGURED_REPLY_TO, headers={"List-Id": "<daily-papers.example.com>"},
    )  # fmt: skip


def _recipient(name: str | None, address: str = READER) -> Recipient:
    return Recipient(
        address, name, UNSUBSCRIBE_URL,
        headers={"List-Unsubscribe": f"<{UNSUBSCRIBE_URL}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )  # fmt: skip


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def assert_only_our_headers(data: bytes, expected: set[str]) -> EmailMessage:
    """The header block is CRLF lines, each a header of ours or its continuation, with nothing a
    parser could take for a line end or a NUL; parsed, it has exactly the `expected` headers, once each."""
    head, separator, _ = data.partition(b"\r\n\r\n")
    assert separator
    for forbidden in (b"\0", b"\x85", "\u2028".encode(), "\u2029".encode()):
        assert forbidden not in head
    lines = head.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    names = [line.split(b":", 1)[0].decode() for line in lines if not line.startswith((b" ", b"\t"))]
    assert sorted(names) == sorted(expected)
    mail = parse(data)
    assert set(mail.keys()) == expected and len(mail.keys()) == len(expected)
    assert not mail.defects
    for name, value in mail.items():
        assert not UNSAFE.search(str(value)), (name, value)
    return mail


def shown_name(mail: EmailMessage, field: str) -> str:
    """The display name of the one address in `field` as a mail client shows it, decoding RFC 2047
    once. Encoded words are read with the email package's legacy decoder: its parser (Python 3.11)
    puts a space between two adjacent encoded words of a display name, where RFC 2047 6.2 ignores
    the whitespace (CPython gh-128110), so a long name would gain spaces it never had."""
    [address] = mail[field].addresses
    raw = next(value for name, value in mail.raw_items() if name == field)
    if not raw.startswith("=?"):
        return address.display_name
    name = str(make_header(decode_header(raw))).rpartition(" <")[0]
    assert address.display_name.replace(" ", "") == name.replace(" ", "")  # the parser read the same
    return name


def encoded_words(data: bytes) -> list[bytes]:
    return re.findall(rb"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=", data.partition(b"\r\n\r\n")[0])


# -- (a) the builder, with every kind of attack --------------------------------------------------


@pytest.mark.parametrize("typed", ATTACKS.values(), ids=ATTACKS.keys())
def test_a_name_is_shown_as_typed_and_forges_no_header_or_body(typed: str) -> None:
    mime = mime_message(_message(), _recipient(typed), NOW)
    mail = assert_only_our_headers(mime.data, EXPECTED_HEADERS)
    assert mail["Reply-To"] == CONFIGURED_REPLY_TO and mail["Bcc"] is None and mail["Cc"] is None
    assert mail["To"].addresses[0].addr_spec == READER
    assert shown_name(mail, "To") == (plain_name(typed) or "")
    assert mail["From"] == "Daily Papers <papers@example.com>"
    assert mail["Subject"] == "Today's papers"
    assert mail.get_content_type() == "multipart/alternative"
    text, html = mail.iter_parts()
    assert text.get_content() == TEXT.replace(UNSUBSCRIBE_TAG, UNSUBSCRIBE_URL).replace("\n", "\r\n")
    assert html.get_content() == HTML.replace(UNSUBSCRIBE_TAG, UNSUBSCRIBE_URL)
    assert mime.html == html.get_content()


@pytest.mark.parametrize("typed", ATTACKS.values(), ids=ATTACKS.keys())
def test_a_subject_and_a_sender_name_are_shown_as_given_and_forge_nothing(typed: str) -> None:
    mime = mime_message(_message(subject=typed, sender_name=typed), _recipient("Ann"), NOW)
    mail = assert_only_our_headers(mime.data, EXPECTED_HEADERS)
    assert mail["Reply-To"] == CONFIGURED_REPLY_TO
    assert mail["Subject"] == plain_text(typed)
    assert mail["From"].addresses[0].addr_spec == "papers@example.com"
    assert shown_name(mail, "From") == (plain_name(typed) or "")
    assert shown_name(mail, "To") == "Ann"
    text, _ = mail.iter_parts()
    assert text.get_content() == TEXT.replace(UNSUBSCRIBE_TAG, UNSUBSCRIBE_URL).replace("\n", "\r\n")


def test_a_non_ascii_address_and_name_make_rfc_6532_headers() -> None:
    data = mime_message(_message(subject="오늘의 논문"), _recipient("김철수", "josé@bücher.de"), NOW).data
    mail = assert_only_our_headers(data, EXPECTED_HEADERS)
    assert "\r\nTo: =?utf-8?b?6rmA7LKg7IiY?= <josé@xn--bcher-kva.de>\r\n".encode() in data
    assert shown_name(mail, "To") == "김철수"
    assert mail["Subject"] == "오늘의 논문"


def test_every_line_and_encoded_word_is_within_rfc_2047s_limits() -> None:
    for typed in ATTACKS.values():
        data = mime_message(_message(subject=typed, sender_name=typed), _recipient(typed), NOW).data
        head = data.partition(b"\r\n\r\n")[0]
        for line in head.split(b"\r\n"):
            assert len(line) <= 76 or line.startswith(b"List-Unsubscribe: <"), line
        for word in encoded_words(data):
            assert len(word) <= 75
            assert word.startswith(b"=?utf-8?b?")
            base64.b64decode(word[10:-2]).decode("utf-8")  # each word is whole characters


def test_plain_ascii_stays_readable() -> None:
    """Spam filters hold base64 that was not needed against a message."""
    assert address_header("Ann Lee", "ann@example.com") == '"Ann Lee" <ann@example.com>'
    assert address_header('A "b" \\c', "ann@example.com") == r'"A \"b\" \\c" <ann@example.com>'
    assert address_header(None, "ann@example.com") == "ann@example.com"
    assert address_header(" \r\n ", "ann@example.com") == "ann@example.com"
    subject = "Daily Papers: " + " ".join(["a long subject"] * 10)
    assert header_text(subject).replace("\r\n", "") == subject and "=?" not in header_text(subject)
    assert address_header("=?x", "ann@example.com").startswith("=?utf-8?b?")


def test_plain_name_cleans_a_name_as_data() -> None:
    assert plain_name("  Ann\r\n\tLee \x00 ") == "Ann Lee"
    assert plain_name("a\x00b\x85c\u2028d\u2029e\x7ff\x1bg") == "a b c d e f g"
    assert plain_name("\u202eAnn\u202c \u2066Lee\u2069") == "Ann Lee"
    assert plain_name("\u200fשרה\u200f") == "\u200fשרה\u200f"  # right-to-left marks reorder nothing
    assert plain_name("Jose\u0301") == "Jos\u00e9"  # NFC
    assert plain_name("Ann\u00a0\u3000Lee") == "Ann Lee"
    assert plain_name("=?utf-8?q?x?=") == "=?utf-8?q?x?="  # data, kept: the writers keep it literal
    assert plain_name("x" * 5000) == "x" * NAME_MAX
    assert plain_name("x" * (NAME_MAX - 1) + " y") == "x" * (NAME_MAX - 1)
    assert plain_name(None) is None and plain_name("") is None and plain_name("\r\n\x00\u202e") is None


def test_literal_leaves_no_encoded_word_and_shows_the_same() -> None:
    assert literal("a =?utf-8?q?x?= b") == "a =\u2060?utf-8?q?x?= b"
    assert literal("=?=?") == "=\u2060?=\u2060?"
    assert literal("a = b? c") == "a = b? c"


@pytest.mark.parametrize(
    "address", ["a\r\nBcc: x@evil.example", "a b@example.com", '"a"@example.com', "a@b@example.com", "a@ex\x00.com"]
)
def test_an_address_that_is_not_a_dot_atom_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        address_header("Ann", address)


@pytest.mark.parametrize("typed", ATTACKS.values(), ids=ATTACKS.keys())
def test_sendgrid_gets_names_and_subject_with_no_control_or_encoded_word(settings: Settings, typed: str) -> None:
    readers = [_recipient(typed), _recipient(None, "bo@example.com")]
    body = SendGrid(settings.delivery, connect=False).prepare(Batch(_message(subject=typed, sender_name=typed), readers))
    first, second = body["personalizations"]
    for value in (body["from"].get("name", ""), first["to"][0].get("name", ""), body["subject"]):
        assert "=?" not in value and not UNSAFE.search(value)
    assert body["subject"].replace("\u2060", "") == plain_text(typed)
    cleaned = plain_name(typed.replace(",", " ").replace(";", " "))
    assert first["to"][0].get("name", "").replace("\u2060", "") == (cleaned or "")
    assert ("name" in first["to"][0]) == (cleaned is not None)
    assert second["to"] == [{"email": "bo@example.com"}]


# -- (b, c) end to end: the CLI, the fake SMTP server, the outbox, the fake SendGrid ----------------

CSV_ATTACK = ATTACKS["q word, Bcc and Reply-To"]
ADD_ATTACK = ATTACKS["b word, a forged body"]
ATTACKERS = {"csv@example.com": CSV_ATTACK, "added@example.com": ADD_ATTACK}
CONTROL = "control@example.com"
TYPED = {**ATTACKERS, CONTROL: "Ann"}
# Without reply_to in the settings: a Reply-To could only be the attacker's.
SENT_HEADERS = EXPECTED_HEADERS - {"Reply-To"}


def subscribe_attackers(project: Path) -> None:
    """The attackers as they would arrive: one from a CSV import, one through `subscribers add --name`."""
    rows = project / "readers.csv"
    with rows.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["email", "name"], ["csv@example.com", CSV_ATTACK], [CONTROL, "Ann"]])
    for command in (
        ("subscribers", "import", str(rows), "--list", LIST),
        ("subscribers", "add", "added@example.com", "--list", LIST, "--name", ADD_ATTACK),
    ):
        run = run_newsletter(*command, cwd=project, env=KEY_ENV)
        assert run.returncode == 0, run.stdout + run.stderr


def assert_received_as_sent(messages: dict[str, bytes]) -> None:
    """Each attacker's message has our headers only, their name as typed (cleaned), and the very
    parts the control reader got, but for their own link."""
    control = assert_only_our_headers(messages[CONTROL], SENT_HEADERS)
    control_text, control_html = (part.get_content() for part in control.iter_parts())
    control_token = control["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    assert "EvoCUA" in control_text
    for address, typed in ATTACKERS.items():
        data = messages[address]
        for forged in (b"Bcc", b"evil.example", b"phishing"):
            assert forged not in data.partition(b"\r\n\r\n")[2]
        mail = assert_only_our_headers(data, SENT_HEADERS)
        assert mail["Bcc"] is None and mail["Reply-To"] is None
        assert mail["To"].addresses[0].addr_spec == address
        assert shown_name(mail, "To") == plain_name(typed)
        token = mail["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
        text, html = (part.get_content().replace(token, control_token) for part in mail.iter_parts())
        assert (text, html) == (control_text, control_html)


def assert_sendgrid_names_are_text(body: dict) -> None:
    """SendGrid writes the To headers itself: each name it gets is the typed one, cleaned, with no
    control character and no encoded word in it (only WORD JOINERs that show as nothing)."""
    names = {p["to"][0]["email"]: p["to"][0]["name"] for p in body["personalizations"]}
    assert set(names) == set(TYPED)
    for address, name in names.items():
        assert "=?" not in name and not UNSAFE.search(name)
        assert name.replace("\u2060", "") == plain_name(TYPED[address])


@pytest.mark.slow
def test_an_attackers_name_sent_to_sendgrid_is_plain_text(project: Path) -> None:
    with FakeSendGrid(api_key=API_KEY, keep_bodies=True) as fake:
        settings = configure(project, sendgrid_api_url=fake.url, sendgrid_api_key=API_KEY)
        add_list(settings, LIST)
        subscribe_attackers(project)
        run = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert run.returncode == 0, run.stdout + run.stderr
    [record] = fake.records
    assert record.body is not None
    assert_sendgrid_names_are_text(record.body)


@pytest.mark.slow
def test_an_attackers_name_sent_over_smtp_forges_nothing(project: Path) -> None:
    with FakeSMTP() as fake:
        settings = configure(
            project, provider="smtp", smtp_host="127.0.0.1", smtp_port=fake.port, smtp_security="none"
        )
        add_list(settings, LIST)
        subscribe_attackers(project)
        run = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(fake.delivered()) == sorted(TYPED)
    assert_received_as_sent({received.recipients[0]: received.data for received in fake.received})


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["smtp", "sendgrid"])
def test_an_attackers_name_in_the_dry_runs_outbox_forges_nothing(project: Path, provider: str) -> None:
    settings = configure(project, provider=provider, smtp_host="127.0.0.1", smtp_security="none")
    add_list(settings, LIST)
    subscribe_attackers(project)
    run = run_newsletter(*SEND, "--dry-run", cwd=project, env=KEY_ENV)
    assert run.returncode == 0, run.stdout + run.stderr
    outbox = project / "outbox" / "2026-01-23"
    if provider == "smtp":
        messages = [path.read_bytes() for path in outbox.glob("batch-*.eml")]
        assert_received_as_sent({parse(data)["To"].addresses[0].addr_spec: data for data in messages})
    else:
        [batch] = outbox.glob("batch-*.json")
        assert_sendgrid_names_are_text(json.loads(batch.read_bytes()))
    first = (outbox / "first-recipient.eml").read_bytes()
    mail = assert_only_our_headers(first, SENT_HEADERS)
    assert shown_name(mail, "To") == plain_name(TYPED[mail["To"].addresses[0].addr_spec])
    assert b"Bcc" not in first and b"phishing" not in first
