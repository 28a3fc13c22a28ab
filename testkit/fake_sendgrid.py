"""The project's own fake SendGrid v3 mail/send server, on 127.0.0.1, for tests and benchmarks
(it also serves the suppression lists it is given, read-only, and the API key's scopes).

It answers like SendGrid (202 + X-Message-Id; errors as {"errors": [{"message", "field", "help"}]})
and can be told to misbehave: 400 for chosen addresses, 401 for a wrong key, a scripted sequence of
answers for the first requests (429 with reset headers, 500, a dropped connection, an answer too
slow for the client), and latency on every answer. Every request is recorded in memory and, with a
log file, appended to it as one JSON line as soon as it is read, so that a test can count what
each address received even across killed senders.

In a test:     with FakeSendGrid(api_key="k", reject={"bad@example.com"}) as fake: fake.url
As a process:  python -m testkit.fake_sendgrid --port 8025 --api-key k --log requests.jsonl
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testkit.loopback import Reads, remember, reply

# Script steps: an HTTP status ("202", "429", "500"…), "drop" (read the request, then close the
# connection without answering) or "hang" (read it, then answer only after `hang` seconds). Like
# SendGrid after a lost answer, "drop" and "hang" count the request as delivered.
DROP, HANG = "drop", "hang"
# 400s about the request as a whole though they name personalizations: one the batch does not
# have, or every one of it; and a 400 whose message is 50 MB (a broken server or proxy).
OUTSIDE, EVERY, HUGE = "400-outside", "400-every", "400-huge"
HUGE_SIZE = 50 * 1024 * 1024

_HELP = "https://docs.sendgrid.com/api-reference/mail-send/errors"


@dataclass
class Record:
    seq: int
    time: float
    status: int | str
    delivered: bool  # accepted for delivery (not sandbox, not refused)
    message_id: str | None
    emails: list[str]
    sandbox: bool
    authorization: str | None
    body: dict[str, Any] | None = None  # kept only with keep_bodies


@dataclass
class Behaviour:
    api_key: str | None = None  # answer 401 unless "Authorization: Bearer <api_key>"
    reject: frozenset[str] = frozenset()  # addresses answered 400, as SendGrid does an invalid one
    script: list[str] = field(default_factory=list)  # the answers to the first requests, in order
    latency: float = 0.0  # seconds before every answer
    hang: float = 60.0
    retry_after: float | None = None  # header on 429s
    retry_after_as_date: bool = False  # send Retry-After as an HTTP date instead of seconds
    reset_in: float | None = None  # X-RateLimit-Reset (Unix time) this far ahead on 429s
    log: Path | None = None
    keep_bodies: bool = False
    on_request: Callable[[Record], None] | None = None  # called once the request is recorded
    # The suppression lists (kind, e.g. "bounces" → entries {"email", "created", …}), answered to
    # GET /v3/suppression/<kind> as SendGrid does: start_time/end_time inclusive, newest first, paged.
    suppressions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    read_script: list[str] = field(default_factory=list)  # the answers to the first reads of them (Reads)
    scopes: tuple[str, ...] = ("mail.send",)  # answered to GET /v3/scopes


class FakeSendGrid:
    def __init__(self, port: int = 0, **behaviour: Any) -> None:
        self.behaviour = Behaviour(**behaviour)
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._script = list(self.behaviour.script)
        self.reads = Reads(self.behaviour.read_script, self.behaviour.retry_after, _read_error, self._page)
        self._log = open(self.behaviour.log, "a", encoding="utf-8") if self.behaviour.log else None
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeSendGrid:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._log:
            self._log.close()

    # -- what was received ------------------------------------------------------------------------

    def delivered(self) -> list[str]:
        """Every address delivered to, once per delivery (duplicates show as repeats)."""
        with self._lock:
            return [email for record in self.records if record.delivered for email in record.emails]

    # -- answering --------------------------------------------------------------------------------

    def answer(self, authorization: str | None, raw: bytes) -> tuple[int | str, dict[str, str], bytes, Record]:
        behaviour = self.behaviour
        body: dict[str, Any] | None = None
        try:
            body = json.loads(raw)
        except ValueError:
            pass
        with self._lock:
            step = self._script.pop(0) if self._script else None
            seq = len(self.records) + 1
        emails = _emails(body)
        sandbox = bool(body and body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable"))
        headers: dict[str, str] = {}
        message_id: str | None = None
        if behaviour.api_key is not None and authorization != f"Bearer {behaviour.api_key}":
            status: int | str = 401
            payload: Any = _errors(("The provided authorization grant is invalid, expired, or revoked", None))
        elif step in (DROP, HANG):
            status, payload = step, None
            message_id = _message_id()
        elif step in (OUTSIDE, EVERY, HUGE):
            status, payload = 400, _systemic(step, len((body or {}).get("personalizations") or []))
        elif step is not None and step != "202":
            status = int(step)
            payload = _errors((_REASONS.get(status, "error"), None))
            if status == 429:
                if behaviour.retry_after is not None:
                    headers["Retry-After"] = (
                        formatdate(time.time() + behaviour.retry_after, usegmt=True)
                        if behaviour.retry_after_as_date
                        else f"{behaviour.retry_after:g}"
                    )
                if behaviour.reset_in is not None:
                    headers["X-RateLimit-Reset"] = str(int(time.time() + behaviour.reset_in + 0.999))
                headers["X-RateLimit-Limit"] = "600"
                headers["X-RateLimit-Remaining"] = "0"
        else:
            problems = _validate(body, behaviour.reject)
            if problems:
                status, payload = 400, _errors(*problems)
            else:
                status, payload = (200 if sandbox else 202), None
                message_id = _message_id()
                headers["X-Message-Id"] = message_id
        delivered = status in (202, DROP, HANG) and not sandbox
        record = Record(
            seq=seq,
            time=time.time(),
            status=status,
            delivered=delivered,
            message_id=message_id,
            emails=emails,
            sandbox=sandbox,
            authorization=authorization,
            body=body if behaviour.keep_bodies else None,
        )
        remember(self._lock, self.records, self._log, record, ("body", "authorization"))
        if behaviour.on_request:
            behaviour.on_request(record)
        content = json.dumps(payload).encode() if payload is not None else b""
        if content:
            headers["Content-Type"] = "application/json"
        return status, headers, content, record

    def _page(self, kind: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """A page of a suppression list: start_time/end_time inclusive, newest first, limit/offset."""
        low, high = int(query.get("start_time", 0)), int(query.get("end_time", 2**62))
        entries = [e for e in self.behaviour.suppressions.get(kind, []) if low <= e["created"] <= high]
        entries.sort(key=lambda e: e["created"], reverse=True)
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 500))
        return entries[offset : offset + limit]


def _read_error(status: int) -> dict[str, Any]:
    return _errors((_REASONS.get(status, "error"), None))


_REASONS = {
    400: "Bad Request",
    413: "content too large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
}


def _systemic(step: str, size: int) -> dict[str, Any]:
    if step == OUTSIDE:
        return _errors(("Does not contain a valid address.", f"personalizations.{size + 5}.to.0.email"))
    if step == EVERY:
        return _errors(*(("Invalid type.", f"personalizations.{n}.custom_args") for n in range(size)))
    return _errors(("x" * HUGE_SIZE, None))


def _message_id() -> str:
    return secrets.token_urlsafe(16)


def _errors(*items: tuple[str, str | None]) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": _HELP} for message, field in items]}


def _emails(body: dict[str, Any] | None) -> list[str]:
    if not isinstance(body, dict):
        return []
    found = []
    for personalization in body.get("personalizations") or []:
        for kind in ("to", "cc", "bcc"):
            for address in personalization.get(kind) or []:
                if isinstance(address, dict) and "email" in address:
                    found.append(address["email"])
    return found


def _validate(body: dict[str, Any] | None, reject: Iterable[str]) -> list[tuple[str, str | None]]:
    """The checks SendGrid makes that the tests rely on, with SendGrid's messages and fields."""
    if not isinstance(body, dict):
        return [("Bad Request", None)]
    problems: list[tuple[str, str | None]] = []
    if not isinstance(body.get("from"), dict) or "email" not in body["from"]:
        problems.append(("The from object must be provided for every email send.", "from"))
    content = body.get("content") or []
    if not content or any(not part.get("value") for part in content):
        problems.append(("Unless a valid template_id is provided, the content parameter is required.", "content"))
    if not body.get("subject"):
        problems.append(("The subject is required.", "subject"))
    if isinstance(body.get("custom_args"), dict):
        problems.append(("Invalid type. Expected: string, given: object.", "custom_args"))
    personalizations = body.get("personalizations") or []
    if not 1 <= len(personalizations) <= 1000:
        problems.append(("The personalizations field must have between 1 and 1000 items.", "personalizations"))
    recipients = 0
    rejected = set(reject)
    for number, personalization in enumerate(personalizations):
        where = f"personalizations.{number}"
        to = personalization.get("to") or []
        if not to:
            problems.append(("The to array is required for all personalization objects, and must have at least one email object with a valid email address.", f"{where}.to"))
        for kind in ("to", "cc", "bcc"):
            for index, address in enumerate(personalization.get(kind) or []):
                recipients += 1
                if address.get("email") in rejected:
                    problems.append(("Does not contain a valid address.", f"{where}.{kind}.{index}.email"))
                if any(mark in address.get("name", "") for mark in ";,"):
                    problems.append(("The name cannot contain ';' or ','.", f"{where}.{kind}.{index}.name"))
        args = {**personalization.get("substitutions", {}), **personalization.get("custom_args", {})}
        if any(not isinstance(value, str) for value in args.values()):
            problems.append(("Substitutions and custom_args values must be strings.", where))
        if len(json.dumps(args).encode()) >= 10_000:
            problems.append(("Substitutions and custom_args must total less than 10000 bytes.", where))
    if recipients > 1000:
        problems.append(("The total number of recipients must be no more than 1000.", "personalizations"))
    return problems


def _handler(fake: FakeSendGrid) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as SendGrid

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/v3/mail/send":
                reply(self, 404, {}, json.dumps(_errors(("not found", None))).encode())
                return
            status, headers, content, _ = fake.answer(self.headers.get("Authorization"), raw)
            if status == DROP:
                self.close_connection = True
                return
            if status == HANG:
                time.sleep(fake.behaviour.hang)
                status = 202
            elif fake.behaviour.latency:
                time.sleep(fake.behaviour.latency)
            reply(self, int(status), headers, content)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            from urllib.parse import parse_qsl, urlsplit

            parts = urlsplit(self.path)
            kind = parts.path.removeprefix("/v3/suppression/")
            if parts.path != "/v3/scopes" and not parts.path.startswith("/v3/suppression/"):
                reply(self, 404, {}, json.dumps(_errors(("not found", None))).encode())
                return
            if fake.behaviour.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.behaviour.api_key}":
                reply(self, 401, {}, json.dumps(_errors(("authorization required", None))).encode())
                return
            if parts.path == "/v3/scopes":
                content = json.dumps({"scopes": list(fake.behaviour.scopes)}).encode()
                reply(self, 200, {"Content-Type": "application/json"}, content)
                return
            reply(self, *fake.reads.answer(kind, dict(parse_qsl(parts.query)), self.headers.get("Authorization")))


        def log_message(self, *_: Any) -> None:
            pass  # the JSONL log is the record

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--reject", action="append", default=[], help="answer 400 for this address")
    parser.add_argument("--script", default="", help="comma-separated answers to the first requests")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=60.0)
    parser.add_argument("--retry-after", type=float)
    parser.add_argument("--reset-in", type=float)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    fake = FakeSendGrid(
        args.port,
        api_key=args.api_key,
        reject=frozenset(args.reject),
        script=[step for step in args.script.split(",") if step],
        latency=args.latency,
        hang=args.hang,
        retry_after=args.retry_after,
        reset_in=args.reset_in,
        log=args.log,
    )
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
