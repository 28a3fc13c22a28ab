"""The project's fake SMTP server (aiosmtpd) on 127.0.0.1, for tests and benchmarks.

It accepts mail like a submission server and can be told to misbehave: 550 at RCPT for chosen
addresses, 451 at RCPT for the first N messages, a scripted reply to the end of DATA for the first
messages ("250", "451", "554", "drop": read the message, then close the connection without a reply,
"hang": reply only after `hang` seconds), a login to require, STARTTLS or implicit TLS. Every message
whose payload arrived (answered 250, dropped or hung: the client cannot tell whether it was accepted,
so like a real server after a lost reply it counts as delivered) is recorded in memory and, with a log
file, appended to it as one JSON line before the reply, so a test can count what each address
received even across killed senders. Messages refused at the end of DATA are recorded as not delivered.

In a test:     with FakeSMTP(reject={"bad@example.com"}) as fake: fake.port
As a process:  python -m testkit.fake_smtp --port 8025 --log messages.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

DROP, HANG = "drop", "hang"


@dataclass
class Received:
    seq: int
    sender: str
    recipients: list[str]
    data: bytes
    peer: tuple[str, int]  # the client's end of the connection: one per connection
    reply: str  # "250", "drop", "hang", or the refusal's code

    @property
    def delivered(self) -> bool:
        return self.reply in ("250", DROP, HANG)

    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Behaviour:
    reject: frozenset[str] = frozenset()  # RCPT answered 550
    greylist: int = 0  # the first this many RCPTs answered 451
    script: list[str] = field(default_factory=list)  # replies to the end of DATA of the first messages
    hang: float = 60.0
    latency: float = 0.0  # seconds before every reply to DATA
    messages_per_connection: int | None = None  # then MAIL is answered 421 and the connection closed
    idle_timeout: float = 300.0  # the server closes a connection idle this long
    login: tuple[str, str] | None = None  # (user, password) a client must log in with
    log: Path | None = None
    keep_data: bool = True  # keep each message's bytes in memory (the benchmark does not)
    on_message: Callable[[Received], None] | None = None  # called once a message is recorded, before the reply


class _Handler:
    def __init__(self, fake: FakeSMTP) -> None:
        self.fake = fake

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        limit = self.fake.behaviour.messages_per_connection
        count = getattr(session, "messages", 0)
        if limit is not None and count >= limit:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply
            return "421 4.7.0 Too many messages on this connection, closing"
        session.messages = count + 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        fake = self.fake
        with fake.lock:
            greylisted = fake.rcpts < fake.behaviour.greylist
            fake.rcpts += 1
        if greylisted:
            return "451 4.7.1 Greylisted, please try again later"
        if address in fake.behaviour.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        fake = self.fake
        with fake.lock:
            step = fake.script.pop(0) if fake.script else "250"
            received = Received(
                seq=len(fake.received) + 1,
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                data=envelope.content if fake.behaviour.keep_data else b"",
                peer=tuple(session.peer[:2]),
                reply=step,
            )
            fake.received.append(received)
            if fake.log is not None:
                message_id = message_from_bytes(envelope.content, policy=policy.default)["Message-ID"]
                line = {
                    "seq": received.seq, "recipients": received.recipients, "reply": step,
                    "delivered": received.delivered, "message_id": message_id,
                }
                fake.log.write(json.dumps(line) + "\n")
                fake.log.flush()
        if fake.behaviour.on_message is not None:
            fake.behaviour.on_message(received)
        if fake.behaviour.latency:
            await asyncio.sleep(fake.behaviour.latency)
        if step == DROP:
            server.transport.abort()  # the message was read; its reply never leaves
            return "250 2.0.0 never sent"
        if step == HANG:
            await asyncio.sleep(fake.behaviour.hang)
            return "250 2.0.0 OK: queued late"
        if step == "250":
            return f"250 2.0.0 OK: queued as {received.seq}"
        return f"{step} {'4.3.0 Try again later' if step.startswith('4') else '5.7.1 Message refused'}"


class FakeSMTP:
    """An aiosmtpd server in a thread of its own; `security` is "none", "starttls" or "tls" (then
    `tls` is the server's SSLContext)."""

    def __init__(
        self, port: int = 0, *, security: str = "none", tls: ssl.SSLContext | None = None, **behaviour: Any
    ) -> None:
        from .servers import free_port

        self.behaviour = Behaviour(**behaviour)
        self.port = port or free_port()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.rcpts = 0
        self.script = list(self.behaviour.script)
        self.log = open(self.behaviour.log, "a", encoding="utf-8") if self.behaviour.log else None
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True, "timeout": self.behaviour.idle_timeout}
        if self.behaviour.login is not None:
            # aiosmtpd counts only STARTTLS as TLS for auth_require_tls, not an implicit-TLS port.
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=security == "starttls")
        if security == "starttls":
            kwargs.update(tls_context=tls, require_starttls=True)
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port,
            ssl_context=tls if security == "tls" else None, **kwargs,
        )

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        expected = self.behaviour.login
        good = (
            isinstance(auth_data, LoginPassword)
            and expected is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == expected
        )
        return AuthResult(success=good, handled=False)  # handled=False: aiosmtpd sends the 535

    def __enter__(self) -> FakeSMTP:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._controller.stop()
        if self.log is not None:
            self.log.close()

    # -- what was received ------------------------------------------------------------------------

    def delivered(self) -> list[str]:
        """Every address delivered to, once per delivery (duplicates show as repeats)."""
        with self.lock:
            return [address for r in self.received if r.delivered for address in r.recipients]

    def connections(self) -> Counter[tuple[str, int]]:
        """Messages delivered per connection."""
        with self.lock:
            return Counter(r.peer for r in self.received if r.delivered)


def delivered_from_log(log: Path) -> Counter[str]:
    received: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["delivered"]:
            received.update(record["recipients"])
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--reject", action="append", default=[])
    args = parser.parse_args()
    fake = FakeSMTP(args.port, reject=frozenset(args.reject), log=args.log, keep_data=False)
    with fake:
        threading.Event().wait()


if __name__ == "__main__":
    main()
