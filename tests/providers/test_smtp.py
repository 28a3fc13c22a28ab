"""SMTP as a provider, against real aiosmtpd servers on 127.0.0.1 (testkit/fake_smtp.py): what each
reader receives, the connection pool, TLS and login, and what every kind of reply or failure means
(especially which failures may have delivered the message: AnswerLost, never RequestNotSent)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import random
import ssl
import subprocess
import time
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from newsletter import db, send
from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError
from newsletter.providers import (
    UNSUBSCRIBE_TAG,
    Answer,
    AnswerLost,
    Batch,
    Message,
    Recipient,
    RequestImpossible,
    RequestNotSent,
    Verdict,
    provider_for,
)
from newsletter.providers.smtp import SMTP
from testkit.fake_smtp import DROP, HANG, FakeSMTP, delivered_from_log
from testkit.projects import LIST, add_list, add_subscribers, configure, engine_of, seed
from testkit.servers import free_port
from newsletter.wiring import send_parts

from ..send_helpers import KEY_ENV, SEND, delivery_states, kill_at_random, plan_for
from ..support import run_newsletter, start_newsletter

# The fake server logs in over plain connections on purpose (smtp_security = "none" with a login).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

PASSWORD = "s3cret-never-printed"
MESSAGE = Message(
    subject="Today's papers",
    html=f"<p>hi</p><a href='{UNSUBSCRIBE_TAG}'>unsubscribe</a>",
    text=f"hi\n.a line that starts with a dot\n{UNSUBSCRIBE_TAG}\n",
    sender_email="papers@example.com",
    sender_name="Daily Papers",
    headers={"List-Id": "<daily-papers.example.com>"},
)


def reader(n: int) -> Recipient:
    url = f"https://news.example.com/unsubscribe/token-{n}"
    return Recipient(
        email=f"u{n}@example.com",
        name=f"Reader {n}",
        unsubscribe_url=url,
        headers={"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )


def smtp_settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "provider": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
        "connect_timeout": 2.0, "read_timeout": 5.0, **overrides,
    }
    return load_settings(**values)


def send_all(provider: SMTP, numbers: list[int]) -> list[Answer | BaseException]:
    """Send reader n's message for every n, all at once (the pool decides how many are out)."""

    async def run() -> list[Answer | BaseException]:
        try:
            return await asyncio.gather(
                *(provider.send(provider.prepare(Batch(MESSAGE, [reader(n)]))) for n in numbers),
                return_exceptions=True,
            )
        finally:
            await provider.aclose()

    return asyncio.run(run())


def send_one(provider: SMTP, n: int = 1) -> Answer:
    (outcome,) = send_all(provider, [n])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# -- what readers receive ----------------------------------------------------------------------


def test_each_reader_gets_one_multipart_message_with_their_own_link_and_headers() -> None:
    with FakeSMTP() as fake:
        provider = provider_for(smtp_settings(fake.port).delivery)
        assert isinstance(provider, SMTP) and provider.batch_limit == 1
        assert provider.name == f"the SMTP server 127.0.0.1:{fake.port}"
        answers = send_all(provider, [1, 2, 3])
    assert all(isinstance(a, Answer) and a.accepted for a in answers)
    by_reader = {r.recipients[0]: r for r in fake.received}
    assert sorted(by_reader) == ["u1@example.com", "u2@example.com", "u3@example.com"]
    for n in (1, 2, 3):
        received = by_reader[f"u{n}@example.com"]
        assert received.sender == "papers@example.com"
        mail = received.message()
        url = f"https://news.example.com/unsubscribe/token-{n}"
        assert mail.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in mail.iter_parts()] == ["text/plain", "text/html"]
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        assert url in text and url in html
        assert UNSUBSCRIBE_TAG not in text + html
        assert "\n.a line that starts with a dot\r\n" in text  # dot-stuffed on the wire, intact on arrival
        assert mail["List-Unsubscribe"] == f"<{url}>"
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert mail["List-Id"] == "<daily-papers.example.com>"
        assert mail["To"] == f"Reader {n} <u{n}@example.com>"
        assert answers[n - 1].message_id == mail["Message-ID"]
    assert len({a.message_id for a in answers}) == 3


def test_wire_is_the_message_the_reader_receives() -> None:
    with FakeSMTP() as fake:
        provider = SMTP(smtp_settings(fake.port).delivery)
        prepared = provider.prepare(Batch(MESSAGE, [reader(7)]))
        [(extension, data)] = provider.wire(prepared)
        assert extension == "eml"
        send_one_prepared = asyncio.run(_send_and_close(provider, prepared))
    assert send_one_prepared.accepted
    assert fake.received[0].data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


async def _send_and_close(provider: SMTP, prepared: Any) -> Answer:
    try:
        return await provider.send(prepared)
    finally:
        await provider.aclose()


def test_a_dry_run_provider_needs_no_password_and_sends_nothing() -> None:
    settings = smtp_settings(free_port(), smtp_username="sender")
    with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_PASSWORD is not set"):
        provider_for(settings.delivery)
    provider = provider_for(settings.delivery, connect=False)
    assert provider.wire(provider.prepare(Batch(MESSAGE, [reader(1)])))[0][0] == "eml"


# -- connections -------------------------------------------------------------------------------


def test_several_connections_each_carry_many_messages() -> None:
    with FakeSMTP() as fake:
        answers = send_all(SMTP(smtp_settings(fake.port, send_concurrency=4).delivery), list(range(1, 201)))
    assert all(isinstance(a, Answer) and a.accepted for a in answers)
    assert sorted(fake.delivered()) == sorted(f"u{n}@example.com" for n in range(1, 201))
    per_connection = fake.connections()
    assert 2 <= len(per_connection) <= 4
    assert min(per_connection.values()) >= 10


@pytest.mark.slow
def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    with FakeSMTP(idle_timeout=0.3) as fake:
        provider = SMTP(smtp_settings(fake.port, send_concurrency=1).delivery)

        async def run() -> list[Answer]:
            try:
                first = await provider.send(provider.prepare(Batch(MESSAGE, [reader(1)])))
                await asyncio.sleep(0.8)  # the server says 421 and hangs up
                second = await provider.send(provider.prepare(Batch(MESSAGE, [reader(2)])))
                return [first, second]
            finally:
                await provider.aclose()

        answers = asyncio.run(run())
    assert all(a.accepted for a in answers)
    assert fake.delivered() == ["u1@example.com", "u2@example.com"]
    assert len(fake.connections()) == 2


def test_a_connection_the_server_ends_at_mail_is_replaced_without_a_failure() -> None:
    # Servers cap the messages of one connection: the next MAIL gets 421 and the connection closes.
    with FakeSMTP(messages_per_connection=3) as fake:
        answers = send_all(SMTP(smtp_settings(fake.port, send_concurrency=1).delivery), list(range(1, 11)))
    assert all(isinstance(a, Answer) and a.accepted for a in answers)
    assert sorted(fake.connections().values()) == [1, 3, 3, 3]


def test_aclose_quits_every_connection() -> None:
    with FakeSMTP() as fake:
        provider = SMTP(smtp_settings(fake.port, send_concurrency=3).delivery)

        async def run() -> list[Any]:
            await asyncio.gather(*(provider.send(provider.prepare(Batch(MESSAGE, [reader(n)]))) for n in range(6)))
            opened = list(provider._idle)
            await provider.aclose()
            return opened

        opened = asyncio.run(run())
    assert opened and not any(connection.is_connected for connection in opened)


# -- replies -----------------------------------------------------------------------------------


def test_an_address_refused_at_rcpt_is_named_with_the_servers_reply() -> None:
    with FakeSMTP(reject={"u2@example.com"}) as fake:
        answers = send_all(SMTP(smtp_settings(fake.port, send_concurrency=1).delivery), [1, 2, 3])
    assert [a.verdict for a in answers] == [Verdict.ACCEPTED, Verdict.RECIPIENTS_REFUSED, Verdict.ACCEPTED]
    refused = answers[1]
    assert refused.refused == frozenset({0})
    assert "550 5.1.1 <u2@example.com>: Recipient address rejected: User unknown" in refused.reason
    assert "RCPT TO" in refused.reason
    assert fake.delivered() == ["u1@example.com", "u3@example.com"]
    assert len(fake.connections()) == 1  # RSET, and the connection carried on


def test_4xx_replies_mean_retry_later() -> None:
    with FakeSMTP(greylist=1, script=["250", "451"]) as fake:
        answers = send_all(SMTP(smtp_settings(fake.port, send_concurrency=1).delivery), [1, 2, 3])
    assert [a.verdict for a in answers] == [Verdict.RETRY_LATER, Verdict.ACCEPTED, Verdict.RETRY_LATER]
    assert "451 4.7.1 Greylisted" in answers[0].reason
    assert "451" in answers[2].reason and "the message" in answers[2].reason
    assert fake.delivered() == ["u2@example.com"]


def test_5xx_to_the_message_refuses_the_message() -> None:
    with FakeSMTP(script=["554"]) as fake:
        answer = send_one(SMTP(smtp_settings(fake.port).delivery))
    assert answer.verdict is Verdict.MESSAGE_REFUSED
    assert "554 5.7.1 Message refused" in answer.reason


def test_a_reply_lost_after_the_message_was_sent_is_an_answer_lost() -> None:
    with FakeSMTP(script=[DROP]) as fake:
        with pytest.raises(AnswerLost, match="closed the connection after the message was sent"):
            send_one(SMTP(smtp_settings(fake.port).delivery))
    assert fake.delivered() == ["u1@example.com"]  # it did arrive: resending would duplicate it


def test_a_reply_too_slow_after_the_message_was_sent_is_an_answer_lost() -> None:
    with FakeSMTP(script=[HANG], hang=3) as fake:
        with pytest.raises(AnswerLost, match="did not answer within 0.5 s"):
            send_one(SMTP(smtp_settings(fake.port, read_timeout=0.5).delivery))


def test_a_server_that_is_down_is_request_not_sent() -> None:
    with pytest.raises(RequestNotSent, match="could not connect to the SMTP server 127.0.0.1"):
        send_one(SMTP(smtp_settings(free_port()).delivery))


def test_a_failure_before_the_message_is_request_not_sent() -> None:
    # A server that goes away between RCPT and DATA: the message never left.
    with FakeSMTP() as fake:
        provider = SMTP(smtp_settings(fake.port).delivery)
        original = provider._exchange

        async def closing_after_rcpt(connection: Any, envelope: Any, *, reused: bool) -> Answer:
            rcpt = connection.rcpt

            async def rcpt_then_drop(*args: Any, **kwargs: Any) -> Any:
                reply = await rcpt(*args, **kwargs)
                connection.transport.abort()
                return reply

            connection.rcpt = rcpt_then_drop
            return await original(connection, envelope, reused=reused)

        provider._exchange = closing_after_rcpt  # type: ignore[method-assign]
        with pytest.raises(RequestNotSent):
            send_one(provider)
    assert fake.received == []


# -- login and TLS -----------------------------------------------------------------------------


def test_login_on_a_plain_connection() -> None:
    with FakeSMTP(login=("sender", PASSWORD)) as fake:
        answer = send_one(SMTP(smtp_settings(fake.port, smtp_username="sender", smtp_password=PASSWORD).delivery))
    assert answer.accepted and fake.delivered() == ["u1@example.com"]


def test_a_refused_login_is_auth_refused_and_never_shows_the_password() -> None:
    with FakeSMTP(login=("sender", "another-password")) as fake:
        answer = send_one(SMTP(smtp_settings(fake.port, smtp_username="sender", smtp_password=PASSWORD).delivery))
    assert answer.verdict is Verdict.AUTH_REFUSED
    assert "535" in answer.reason and "'sender'" in answer.reason and "NEWSLETTER_SMTP_PASSWORD" in answer.reason
    assert PASSWORD not in answer.reason
    assert fake.received == []


@pytest.fixture
def certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE (as a private CA
    would be); returns the server's context."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_login(security: str, certificate: ssl.SSLContext) -> None:
    with FakeSMTP(security=security, tls=certificate, login=("sender", PASSWORD)) as fake:
        provider = SMTP(
            smtp_settings(fake.port, smtp_security=security, smtp_username="sender", smtp_password=PASSWORD).delivery
        )
        answers = send_all(provider, [1, 2, 3])
    assert all(isinstance(a, Answer) and a.accepted for a in answers)
    assert sorted(fake.delivered()) == ["u1@example.com", "u2@example.com", "u3@example.com"]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_an_untrusted_certificate_is_impossible(
    security: str, certificate: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    with FakeSMTP(security=security, tls=certificate) as fake:
        with pytest.raises(RequestImpossible, match="certificate is not trusted"):
            send_one(SMTP(smtp_settings(fake.port, smtp_security=security).delivery))
    assert fake.received == []


def test_settings_that_cannot_work_are_impossible(certificate: ssl.SSLContext) -> None:
    with FakeSMTP() as plain:
        with pytest.raises(RequestImpossible, match="does not speak TLS on this port"):
            send_one(SMTP(smtp_settings(plain.port, smtp_security="tls").delivery))
        with pytest.raises(RequestImpossible, match="does not offer STARTTLS"):
            send_one(SMTP(smtp_settings(plain.port, smtp_security="starttls").delivery))
    # The server offers login only over TLS, and the settings say plain.
    with FakeSMTP(security="starttls", tls=certificate, login=("sender", PASSWORD)) as fake:
        with pytest.raises(RequestImpossible, match=r"offers no login \(AUTH\)") as caught:
            send_one(SMTP(smtp_settings(fake.port, smtp_username="sender", smtp_password=PASSWORD).delivery))
    assert PASSWORD not in str(caught.value)


# -- through the send loop ---------------------------------------------------------------------
# A campaign sent with provider = "smtp": every reader is a batch of one, with the loop's exactly-once
# bookkeeping (tests/send_helpers.py makes the project; the fake server counts what arrived).


def smtp_project(project: Path, port: int, **overrides: Any) -> Settings:
    values = {"provider": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none", **overrides}
    return configure(project, **values)


def states_by_address(settings: Settings) -> dict[str, str]:
    return {address: state for address, (state, _, _) in delivery_states(settings).items()}


def test_a_campaign_records_each_reader_and_a_refused_address_fails_with_the_servers_reply(project: Path) -> None:
    with FakeSMTP(reject={"u3@example.com"}) as fake:
        settings = smtp_project(project, fake.port)
        addresses = seed(settings, 40)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished and report.error is None
    assert report.counts["sent"] == 39 and report.counts["failed"] == 1
    states = delivery_states(settings)
    state, message_id, error = states["u3@example.com"]
    assert state == "failed" and message_id is None
    assert error == (
        f"the SMTP server 127.0.0.1:{fake.port} answered RCPT TO with 550 5.1.1 <u3@example.com>: "
        "Recipient address rejected: User unknown"
    )
    assert Counter(fake.delivered()) == Counter(a for a in addresses if a != "u3@example.com")
    message_ids = {r.recipients[0]: r.message()["Message-ID"] for r in fake.received}
    assert all(states[a][1] == message_ids[a] for a in message_ids)  # the Message-ID, per reader


def test_readers_with_unusual_names_and_addresses_get_their_message(project: Path) -> None:
    """A line break in a name (a CSV cell may hold one), a non-ASCII local part, an
    internationalised domain: each reader gets a well-formed message, and nobody blocks the send."""
    readers = {"josé@example.com": "José", "kim@예시.kr": "Kim\nBcc: evil@example.org", "u1@example.com": "Ann"}
    with FakeSMTP() as fake:
        settings = smtp_project(project, fake.port)
        list_id = add_list(settings, LIST)
        add_subscribers(settings, list_id, list(readers))
        with engine_of(settings).begin() as conn:
            for address, name in readers.items():
                conn.execute(db.subscribers.update().where(db.subscribers.c.email == address).values(name=name))
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    # The domain goes as IDNA, which every server takes; a non-ASCII local part needs SMTPUTF8, which
    # this server does not offer: that reader alone is recorded failed, saying why.
    assert report.finished and (report.counts["sent"], report.counts["failed"]) == (2, 1)
    received = {r.recipients[0]: r.message() for r in fake.received}
    assert set(received) == {"kim@xn--vv4b11d.kr", "u1@example.com"}
    assert str(received["kim@xn--vv4b11d.kr"]["To"]) == '"Kim Bcc: evil@example.org" <kim@xn--vv4b11d.kr>'
    assert all(message["Bcc"] is None for message in received.values())
    assert "does not offer SMTPUTF8" in (delivery_states(settings)["josé@example.com"][2] or "")


@pytest.mark.slow
def test_temporary_refusals_are_retried_then_sent(project: Path) -> None:
    with FakeSMTP(greylist=2, script=["250", "451"]) as fake:
        settings = smtp_project(project, fake.port, send_concurrency=1)
        addresses = seed(settings, 5)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert report.finished and report.error is None and report.counts["sent"] == 5
    assert report.requests == 5 + 3  # two greylisted RCPTs and one 451 after DATA, each retried
    assert Counter(fake.delivered()) == Counter(addresses)


def test_a_lost_reply_to_data_makes_that_reader_uncertain_and_stops_the_send(project: Path) -> None:
    with FakeSMTP(script=["250", DROP]) as fake:
        settings = smtp_project(project, fake.port, send_concurrency=1)
        addresses = seed(settings, 10)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
        assert not report.finished and "resent only with --resend-uncertain" in str(report.error)
        states = states_by_address(settings)
        assert states["u1@example.com"] == "sent" and states["u2@example.com"] == "uncertain"
        assert {states[a] for a in addresses[2:]} == {"pending"}

        resumed = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert resumed.finished
    states = states_by_address(settings)
    assert states["u2@example.com"] == "uncertain"  # never resent on its own
    assert {states[a] for a in addresses if a != "u2@example.com"} == {"sent"}
    assert Counter(fake.delivered()) == Counter(addresses)  # the lost one did arrive, once


@pytest.mark.slow
def test_an_unreachable_server_stops_the_send_with_everyone_pending_and_the_same_command_resumes(project: Path) -> None:
    port = free_port()
    settings = smtp_project(project, port, max_retries=1)
    addresses = seed(settings, 6)
    report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert not report.finished
    assert f"could not reach the SMTP server 127.0.0.1:{port}" in str(report.error)
    assert set(states_by_address(settings).values()) == {"pending"}

    with FakeSMTP(port) as fake:
        resumed = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert resumed.finished and set(states_by_address(settings).values()) == {"sent"}
    assert Counter(fake.delivered()) == Counter(addresses)


def test_a_refused_login_stops_the_send_with_everyone_pending(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", PASSWORD)
    with FakeSMTP(login=("sender", "another-password")) as fake:
        settings = smtp_project(project, fake.port, smtp_username="sender")
        seed(settings, 3)
        report = send.send_campaign(engine_of(settings), send_parts(settings), plan_for(settings))
    assert not report.finished and "refused the login of 'sender'" in str(report.error)
    assert PASSWORD not in str(report.error)
    assert set(states_by_address(settings).values()) == {"pending"}


@pytest.mark.slow
def test_an_smtp_login_without_its_password_stops_before_anything_is_sent(project: Path) -> None:
    with FakeSMTP() as fake:
        settings = smtp_project(project, fake.port, smtp_username="sender")
        seed(settings, 2)
        run = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
    assert run.returncode == 1
    assert "NEWSLETTER_SMTP_PASSWORD is not set" in run.stderr
    assert fake.received == [] and set(states_by_address(settings).values()) <= {"pending"}


@pytest.mark.slow
def test_a_dry_run_writes_each_readers_message(project: Path) -> None:
    settings = smtp_project(project, free_port())
    seed(settings, 3)
    run = run_newsletter(*SEND, "--dry-run", cwd=project, env=KEY_ENV)
    assert run.returncode == 0, run.stderr
    outbox = project / "outbox" / "2026-01-23"
    files = sorted(outbox.glob("batch-*.eml"))
    assert len(files) == 3
    messages = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in files]
    assert [m["To"] for m in messages] == [f"Reader {n} <u{n}@example.com>" for n in (1, 2, 3)]
    for mail in messages:
        url = mail["List-Unsubscribe"].strip("<>")
        assert mail.get_content_type() == "multipart/alternative"
        assert all(url in part.get_content() for part in mail.iter_parts())
    assert (outbox / "first-recipient.eml").is_file()
    assert not delivery_states(settings)


# -- killed senders ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sender_killed_before_the_reply_to_data_resumes_without_resending_that_reader(project: Path) -> None:
    sender: dict[str, subprocess.Popen[str]] = {}

    def kill_at_the_fifth_message(received: Any) -> None:
        if received.seq == 5:
            sender["process"].kill()  # SIGKILL: the message arrived, its reply never will
            sender["process"].wait()

    log = project / "messages.jsonl"
    with FakeSMTP(log=log, on_message=kill_at_the_fifth_message) as fake:
        settings = smtp_project(project, fake.port, send_concurrency=1)
        addresses = seed(settings, 12)
        sender["process"] = start_newsletter(*SEND, cwd=project, env=KEY_ENV)
        sender["process"].wait(120)
        assert sender["process"].returncode == -9

        resumed = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 batch(es) are uncertain" in resumed.stderr
        states = states_by_address(settings)
        assert [a for a, state in states.items() if state == "uncertain"] == ["u5@example.com"]
        assert delivered_from_log(log) == Counter(addresses)

        resent = run_newsletter(*SEND, "--resend-uncertain", cwd=project, env=KEY_ENV)
        assert resent.returncode == 0, resent.stderr
    assert set(states_by_address(settings).values()) == {"sent"}
    assert delivered_from_log(log) == Counter(addresses) + Counter(["u5@example.com"])


@pytest.mark.slow
def test_many_random_kills_never_deliver_twice_and_leave_every_reader_recorded(project: Path) -> None:
    seed_value = int(os.environ.get("CRASH_SEED", time.time_ns()))  # CRASH_SEED=… replays a run
    rng = random.Random(seed_value)
    log = project / "messages.jsonl"
    with FakeSMTP(log=log, reject={"u77@example.com"}, latency=0.005) as fake:
        settings = smtp_project(project, fake.port, send_concurrency=4, send_rate_limit=300.0)
        addresses = seed(settings, 2500)
        kills = kill_at_random(project, rng, (0.3, 1.5))
        print(f"CRASH_SEED={seed_value}: {kills} kills")
        assert kills >= 10, f"only {kills} kills before the send finished"

        final = run_newsletter(*SEND, cwd=project, env=KEY_ENV)
        assert final.returncode == 0, final.stderr

        states = states_by_address(settings)
        received = delivered_from_log(log)
        assert max(received.values()) == 1, "a reader received the issue twice"
        assert set(states) == set(addresses)
        assert set(states.values()) <= {"sent", "failed", "uncertain"}
        sent = {a for a, state in states.items() if state == "sent"}
        uncertain = {a for a, state in states.items() if state == "uncertain"}
        assert sent <= set(received)
        assert set(received) - sent <= uncertain  # arrived but unrecorded: only the lost replies
        assert states["u77@example.com"] in ("failed", "uncertain")
        assert "u77@example.com" not in received

        resent = run_newsletter(*SEND, "--resend-uncertain", cwd=project, env=KEY_ENV)
        assert resent.returncode == 0, resent.stderr
    after = states_by_address(settings)
    assert {a for a, state in after.items() if state != "sent"} <= {"u77@example.com"}
    twice = {a for a, n in delivered_from_log(log).items() if n > 1}
    assert twice <= uncertain & set(received)
