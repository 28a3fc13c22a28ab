"""Any SMTP server, through aiosmtplib: one message per reader, several connections in flight.

Each reader gets their own MIME message (`mime.mime_message`: their unsubscribe link in both parts,
their own List-Unsubscribe headers), so a batch is one reader (`batch_limit = 1`) and every reader
gets the send loop's exact outcome: sent (250 after DATA), failed (their address refused at RCPT),
or uncertain (the answer to DATA was lost).

A pool of up to `send_concurrency` connections is kept open and reused for many messages; one the
server has closed meanwhile (an idle timeout, a limit of messages per connection) is replaced at once.

Where a failure happens decides whether repeating is safe. A server accepts a message only on the
final "." of the DATA payload, and accepting it is the only way it can deliver: so anything that
fails before that payload is handed to the socket (connecting, TLS, login, MAIL, RCPT, the DATA
command and its 354) raises RequestNotSent, and anything after it without a reply (a dropped
connection, a read timeout, a garbled reply) raises AnswerLost, since the "." may have arrived.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from datetime import datetime
from typing import TYPE_CHECKING

import aiosmtplib

from ...errors import ConfigError, SendError
from ..base import (
    MAX_REASON,
    Answer,
    AnswerLost,
    Batch,
    Message,
    Recipient,
    RequestImpossible,
    RequestNotSent,
    Verdict,
    clip,
)
from ..mime import mime_message, wire_address

if TYPE_CHECKING:
    from ...sections import Delivery

# A line of the payload that starts with "." gets a second one (RFC 5321 4.5.2), so that only the
# terminator ends the message.
_DOT_LINE = re.compile(rb"^\.", re.MULTILINE)
_TERMINATOR = b".\r\n"


class Envelope:
    """One reader's message as the SMTP provider sends it: the envelope, and the exact bytes, made
    when first needed. The send loop prepares a batch inside the database transaction that marks it,
    which every worker waits for in turn: building the MIME message there (most of a message's CPU)
    would make the sends take turns too."""

    def __init__(self, message: Message, recipient: Recipient, now: datetime) -> None:
        self.sender = message.sender_email  # MAIL FROM
        self.recipient = wire_address(recipient.email)  # RCPT TO
        self._parts = (message, recipient, now)
        self._made: tuple[bytes, str] | None = None

    def make(self) -> tuple[bytes, str]:
        """The message as the reader receives it (CRLF line ends, not dot-stuffed), and its
        Message-ID header, recorded as the delivery's message id."""
        if self._made is None:
            mail = mime_message(*self._parts)
            self._made = mail.data, mail.message_id
        return self._made

    @property
    def message(self) -> bytes:
        return self.make()[0]

    @property
    def message_id(self) -> str:
        return self.make()[1]


class _Refused(Exception):
    """Before the message: an answer that ends this attempt (auth refused, a 4xx)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


class _Stale(Exception):
    """A reused connection turned out closed (or closing) at its first command."""


class SMTP:
    """SMTP submission with aiosmtplib: STARTTLS, implicit TLS or plain, and AUTH when a username
    is set (the password only from NEWSLETTER_SMTP_PASSWORD, never in a message)."""

    batch_limit = 1

    def __init__(self, delivery: Delivery, *, connect: bool = True) -> None:
        """`connect=False`: only to prepare messages (a dry run), which needs no password."""
        section, pacing = delivery.section, delivery.pacing
        if not section.smtp_host:
            raise ConfigError("'smtp_host' (NEWSLETTER_SMTP_HOST) must be set when provider is 'smtp'")
        self._host = section.smtp_host
        self._port = section.smtp_port
        self.name = f"the SMTP server {self._host}:{self._port}"
        self._clock = delivery.clock
        self._connect = connect
        self._security = section.smtp_security
        self._username = section.smtp_username
        self._password = section.smtp_password
        if connect and self._username and self._password is None:
            raise ConfigError(
                f"NEWSLETTER_SMTP_PASSWORD is not set, but smtp_username is ({self._username!r}): set the "
                "password in the environment (never in the config file), remove smtp_username to send "
                "without logging in, or preview a send with --dry-run"
            )
        self._connect_timeout = pacing.connect_timeout
        self._read_timeout = pacing.read_timeout
        self._size = pacing.send_concurrency
        # ssl's default context: the system's CAs, or SSL_CERT_FILE's (a private CA, the tests').
        self._tls = ssl.create_default_context() if connect and self._security != "none" else None
        self._local_hostname: str | None = None
        self._idle: list[aiosmtplib.SMTP] = []  # open, between messages
        self._busy: set[aiosmtplib.SMTP] = set()
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self, batch: Batch) -> Envelope:
        if batch.validate_only:
            raise SendError(
                "an SMTP server has no sandbox mode (--sandbox is SendGrid's): use --dry-run to see "
                "what would be sent, or --to ADDR to send a test"
            )
        if len(batch.recipients) != 1:
            raise ValueError(f"the SMTP provider sends one reader per batch, got {len(batch.recipients)}")
        return Envelope(batch.message, batch.recipients[0], self._clock())

    def wire(self, prepared: Envelope) -> list[tuple[str, bytes]]:
        return [("eml", prepared.message)]

    # -- sending -----------------------------------------------------------------------------------

    async def send(self, prepared: Envelope) -> Answer:
        assert self._connect, "an SMTP provider made with connect=False sends nothing"
        # Made here, outside the database transaction that prepared it (see Envelope).
        try:
            prepared.make()
        except (ValueError, UnicodeError, TypeError) as error:  # nothing has left: the send stops, resumable
            raise RequestImpossible(f"the message to {prepared.recipient} could not be made: {error}") from None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        async with self._slots:
            try:
                connection, reused = await self._take()
                try:
                    return await self._transaction(connection, prepared, reused=reused)
                except _Stale:
                    # The server closed it while it sat idle: once more, on a fresh connection.
                    connection, _ = await self._take(fresh=True)
                    try:
                        return await self._transaction(connection, prepared, reused=False)
                    except _Stale as error:  # not expected of a fresh connection
                        raise RequestNotSent(f"{self.name} closed the connection: {error}") from None
            except _Refused as refused:
                return refused.answer

    async def _transaction(self, connection: aiosmtplib.SMTP, envelope: Envelope, *, reused: bool) -> Answer:
        """MAIL, RCPT, DATA and the payload on a connection this call owns; gives the connection
        back to the pool when it can carry the next message, else closes it."""
        self._busy.add(connection)
        keep = False
        try:
            answer = await self._exchange(connection, envelope, reused=reused)
            if not answer.accepted and connection.is_connected:
                try:  # end the half-made transaction before the next message
                    await connection.rset(timeout=self._read_timeout)
                except (aiosmtplib.SMTPException, OSError):
                    connection.close()  # the answer stands; the connection goes
            keep = connection.is_connected
            return answer
        finally:
            self._busy.discard(connection)
            if keep:
                self._idle.append(connection)
            else:
                connection.close()

    async def _exchange(self, connection: aiosmtplib.SMTP, envelope: Envelope, *, reused: bool) -> Answer:
        timeout = self._read_timeout
        utf8 = not (envelope.sender.isascii() and envelope.recipient.isascii())
        if utf8 and not connection.supports_extension("smtputf8"):
            return Answer(
                Verdict.RECIPIENTS_REFUSED,
                clip(f"{self.name} does not offer SMTPUTF8, which the address {envelope.recipient} needs", MAX_REASON),
                refused=frozenset({0}),
            )
        encoding, options = ("utf-8", ["SMTPUTF8"]) if utf8 else ("ascii", [])
        # Before the payload: nothing the server could deliver has left.
        try:
            try:
                await connection.mail(envelope.sender, options=options, encoding=encoding, timeout=timeout)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as error:
                if reused:  # closed by the server while idle, and we learn it only now
                    raise _Stale(str(error)) from None
                raise
            except aiosmtplib.SMTPSenderRefused as error:
                # 421: "closing" (an idle timeout, a limit of messages per connection); and the
                # 221 aiosmtplib makes up for a connection lost after a QUIT.
                if reused and (error.code == 421 or not 400 <= error.code < 600):
                    raise _Stale(error.message) from None
                return self._refusal("MAIL FROM", error)
            try:
                await connection.rcpt(envelope.recipient, encoding=encoding, timeout=timeout)
            except aiosmtplib.SMTPRecipientRefused as error:
                return self._refusal("RCPT TO", error, recipient=True)
            reply = await connection.execute_command(b"DATA", timeout=timeout)
            if reply.code != 354:
                return self._refusal("DATA", aiosmtplib.SMTPResponseException(reply.code, reply.message))
            protocol = connection.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            payload = _DOT_LINE.sub(b"..", envelope.message)
            if not payload.endswith(b"\r\n"):
                payload += b"\r\n"
            # Raises (having written nothing) if the connection is already closing.
            protocol.write(payload + _TERMINATOR)
        except (aiosmtplib.SMTPException, OSError) as error:
            connection.close()
            raise RequestNotSent(self._describe(error)) from None
        # The payload and its "." are on their way: from here on, only the server's reply says
        # whether it was accepted, and no reply means it may have been.
        try:
            reply = await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPException, OSError) as error:
            connection.close()  # a late reply would be read as the next command's
            raise AnswerLost(f"{self._describe(error)} after the message was sent") from None
        except BaseException:
            connection.close()
            raise
        if reply.code == 250:
            return Answer(Verdict.ACCEPTED, message_id=envelope.message_id)
        if reply.code < 400:  # a reply no server gives to a payload: what did it take?
            connection.close()
            raise AnswerLost(f"{self.name} answered the message with {reply.code} {reply.message}")
        return self._refusal("the message", aiosmtplib.SMTPResponseException(reply.code, reply.message))

    def _refusal(self, stage: str, error: aiosmtplib.SMTPResponseException, *, recipient: bool = False) -> Answer:
        reason = clip(f"{self.name} answered {stage} with {error.code} {error.message}", MAX_REASON)
        if 400 <= error.code < 500:
            return Answer(Verdict.RETRY_LATER, reason)
        if error.code < 500:  # not a reply SMTP allows here (or garbled): try again
            raise aiosmtplib.SMTPServerDisconnected(f"unexpected reply to {stage}: {error.code} {error.message}")
        if recipient:
            return Answer(Verdict.RECIPIENTS_REFUSED, reason, refused=frozenset({0}))
        return Answer(Verdict.MESSAGE_REFUSED, reason)

    # -- the pool ----------------------------------------------------------------------------------

    async def _take(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """An open connection and whether it carried messages before (it may have been closed by
        the server since). Raises RequestNotSent, RequestImpossible or _Refused."""
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection, True
        return await self._open(), False

    async def _open(self) -> aiosmtplib.SMTP:
        if self._local_hostname is None:
            # What EHLO says; getfqdn may ask DNS, so once, and off the event loop.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn) or "localhost"
        connection = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            local_hostname=self._local_hostname,
            timeout=self._read_timeout,
            use_tls=self._security == "tls",
            start_tls=self._security == "starttls",
            tls_context=self._tls,
            username=self._username,
            password=self._password.get_secret_value() if self._password is not None else None,
        )
        try:
            await connection.connect(timeout=self._connect_timeout)
        except BaseException as error:
            connection.close()
            if isinstance(error, Exception):
                raise self._connect_failure(error) from None
            raise
        return connection

    def _connect_failure(self, error: Exception) -> Exception:
        """What a failure to connect, secure or log in means: an exception to raise."""
        security = self._security
        tls_problem = error if isinstance(error, ssl.SSLError) else error.__cause__
        if isinstance(tls_problem, ssl.SSLCertVerificationError):
            return RequestImpossible(
                f"{self.name}'s TLS certificate is not trusted ({tls_problem.verify_message}): a server "
                "with a private CA needs SSL_CERT_FILE pointing at it"
            )
        if isinstance(tls_problem, ssl.SSLError):
            hint = (
                "it does not speak TLS on this port: smtp_security = 'starttls' for port 587, 'tls' for 465"
                if security == "tls"
                else "the TLS handshake failed"
            )
            return RequestImpossible(f"{self.name}: {hint} ({tls_problem.reason or tls_problem})")
        if isinstance(error, aiosmtplib.SMTPAuthenticationError):
            reason = clip(
                f"{self.name} refused the login of {self._username!r}: {error.code} {error.message}; "
                "check smtp_username and NEWSLETTER_SMTP_PASSWORD",
                MAX_REASON,
            )
            verdict = Verdict.RETRY_LATER if 400 <= error.code < 500 else Verdict.AUTH_REFUSED
            return _Refused(Answer(verdict, reason))
        if isinstance(error, aiosmtplib.SMTPResponseException):
            # The greeting, EHLO or STARTTLS refused.
            reason = clip(f"{self.name} refused the connection: {error.code} {error.message}", MAX_REASON)
            if 400 <= error.code < 500:
                return _Refused(Answer(Verdict.RETRY_LATER, reason))
            if not isinstance(error, (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)):
                return RequestImpossible(reason)  # STARTTLS refused: the settings need it
            return RequestNotSent(reason)
        if isinstance(error, aiosmtplib.SMTPConnectTimeoutError) and security == "none" and self._port == 465:
            return RequestNotSent(
                f"{self.name} sent no greeting within {self._connect_timeout:g} s: port 465 usually "
                "wants smtp_security = 'tls'"
            )
        unreachable = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPConnectError)
        if isinstance(error, (*unreachable, OSError)):
            return RequestNotSent(self._describe(error))
        if isinstance(error, aiosmtplib.SMTPException):
            # Said by aiosmtplib itself, not the server: a capability the settings need is missing.
            text = str(error)
            if "AUTH" in text or "authentication" in text:
                return RequestImpossible(
                    f"{self.name} offers no login (AUTH) on this connection, and smtp_username is set"
                    + (": servers offer it only over TLS (smtp_security)" if security == "none" else "")
                )
            if "STARTTLS" in text:
                return RequestImpossible(
                    f"{self.name} does not offer STARTTLS, and smtp_security = 'starttls' will not send "
                    "in clear: use 'tls' for an implicit-TLS port (465), or 'none' for a trusted relay"
                )
            return RequestImpossible(f"{self.name}: {text}")
        return error

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, aiosmtplib.SMTPConnectTimeoutError):
            return f"{self.name} did not answer within {self._connect_timeout:g} s"
        if isinstance(error, aiosmtplib.SMTPTimeoutError):
            return f"{self.name} did not answer within {self._read_timeout:g} s"
        if isinstance(error, aiosmtplib.SMTPConnectError):
            cause = error.__cause__
            detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause or error)
            return f"could not connect to {self.name}: {detail}"
        if isinstance(error, aiosmtplib.SMTPServerDisconnected):
            return f"{self.name} closed the connection"
        return f"{self.name}: {clip(str(error), MAX_REASON)}"

    async def try_login(self) -> Answer | None:
        """Connect, secure and log in exactly as a send does, then QUIT before any MAIL command:
        the server's refusal, or None. RequestNotSent or RequestImpossible as for a send."""
        try:
            connection = await self._open()
        except _Refused as refused:
            return refused.answer
        self._idle.append(connection)
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """QUIT every open connection (each waits at most `connect_timeout` for its reply)."""
        connections, self._idle = [*self._idle, *self._busy], []
        self._busy.clear()

        async def quit(connection: aiosmtplib.SMTP) -> None:
            try:
                if connection.is_connected:
                    await connection.quit(timeout=self._connect_timeout)
            except (aiosmtplib.SMTPException, OSError):
                pass
            finally:
                connection.close()

        await asyncio.gather(*(quit(connection) for connection in connections))
