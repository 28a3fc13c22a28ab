"""The project's own fake Postmark (/email/batch, /email/batchWithTemplates and the /templates
they use, the suppression dump it is given, and GET /server), on 127.0.0.1, for tests and benchmarks.

It answers like Postmark (200 with one {ErrorCode, Message, MessageID, SubmittedAt, To} per message;
request errors as {ErrorCode, Message}) and misbehaves as the fake SendGrid does: per-message error
codes for chosen addresses (300 invalid, 406 inactive), 401 for a wrong token, a scripted sequence
of answers for the first requests (429, 500, 422, "drop": read the request and close the connection
unanswered, "hang": answer only after `hang` seconds; like Postmark after a lost answer, both count
the request's messages as delivered), and latency on every answer. Every request is recorded in
memory and, with a log file, appended to it as one JSON line as soon as it is read, so that a test
can count what each address received even across killed senders. A templated message is recorded
as the message its template makes (rendered only with keep_bodies): {{{name}}} is the model's
value as it is, {{name}} the value HTML-escaped, as Postmark's Mustachio does.

In a test:     with FakePostmark(token="t", errors={"bad@example.com": 300}) as fake: fake.url
As a process:  python -m testkit.fake_postmark --port 8026 --token t --log requests.jsonl
"""

from __future__ import annotations

import argparse
import html
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .loopback import LoopbackFake, Reads, remember, reply

DROP, HANG = "drop", "hang"
# Postmark does not document the code of an alias in use; clients read only the 422.
TEMPLATE_NOT_FOUND, ALIAS_TAKEN = 1101, 1122
TOKEN_HEADER = "X-Postmark-Server-Token"

_MESSAGES = {
    300: "Invalid email request",
    406: "You tried to send to recipient(s) that have been marked as inactive.",
    401: "Request does not contain a valid Server token.",
    422: "Invalid JSON",
    TEMPLATE_NOT_FOUND: "The Template's TemplateId or Alias does not exist on this server.",
    ALIAS_TAKEN: "The specified alias is already in use by another template or layout.",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}


@dataclass
class Record:
    seq: int
    time: float
    status: int | str
    delivered: list[str]  # the addresses accepted for delivery
    refused: list[str]
    message_ids: dict[str, str]  # address → MessageID, for those accepted
    token: str | None
    messages: list[dict[str, Any]] | None = None  # kept only with keep_bodies


@dataclass
class Behaviour:
    token: str | None = None  # answer 401 unless X-Postmark-Server-Token is this
    errors: dict[str, int] = field(default_factory=dict)  # address → the ErrorCode of its message
    script: list[str] = field(default_factory=list)  # the answers to the first requests, in order
    latency: float = 0.0  # seconds before every answer
    hang: float = 60.0
    retry_after: float | None = None  # header on 429s
    log: Path | None = None
    keep_bodies: bool = False
    on_request: Callable[[Record], None] | None = None  # called once the request is recorded
    # The suppression dump, per stream: {"EmailAddress", "SuppressionReason", "Origin", "CreatedAt"}.
    suppressions: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    read_script: list[str] = field(default_factory=list)  # the answers to the first reads of it (Reads)
    server_name: str = "Daily Papers"  # answered to GET /server
    template_script: list[str] = field(default_factory=list)  # the answers to the first POST /templates


class FakePostmark(LoopbackFake):
    def __init__(self, port: int = 0, **behaviour: Any) -> None:
        super().__init__(_handler(self), port)
        self.behaviour = Behaviour(**behaviour)
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._script = list(self.behaviour.script)
        self._template_script = list(self.behaviour.template_script)
        self.templates: dict[str, dict[str, Any]] = {}  # by alias, as made
        self.template_calls: list[tuple[str, str | None, int]] = []  # (method, alias, status) of /templates requests
        self.reads = Reads(self.behaviour.read_script, self.behaviour.retry_after, _error, self._dump)
        self._log = open(self.behaviour.log, "a", encoding="utf-8") if self.behaviour.log else None

    def close(self) -> None:
        super().close()
        if self._log:
            self._log.close()

    def delivered(self) -> list[str]:
        """Every address delivered to, once per delivery (duplicates show as repeats)."""
        with self._lock:
            return [email for record in self.records for email in record.delivered]

    def answer(self, token: str | None, raw: bytes, *, templated: bool = False) -> tuple[int | str, dict[str, str], bytes]:
        behaviour = self.behaviour
        messages = _messages(raw, whole=behaviour.keep_bodies, templated=templated)
        with self._lock:
            step = self._script.pop(0) if self._script else None
            seq = len(self.records) + 1
            templates = dict(self.templates)
        headers: dict[str, str] = {}
        results: list[dict[str, Any]] = []
        stamp = _Stamp()
        if behaviour.token is not None and token != behaviour.token:
            status: int | str = 401
        elif step in (DROP, HANG):
            status = step
            results = [stamp.result(message, 0) for message in messages or []]
        elif step is not None and step != "200":
            status = int(step)
            if status == 429 and behaviour.retry_after is not None:
                headers["Retry-After"] = f"{behaviour.retry_after:g}"
        elif not isinstance(messages, list) or not 1 <= len(messages) <= 500:
            status = 422
        else:
            status = 200
            for message in messages:
                # An address's own error first: the template is looked up only for a message that gets that far.
                code = behaviour.errors.get(_address(message), 0)
                if templated and not code:
                    template = templates.get(message.get("TemplateAlias"))
                    if template is None:
                        code = TEMPLATE_NOT_FOUND
                    elif behaviour.keep_bodies:
                        message.update(_rendered(template, message.get("TemplateModel") or {}))
                results.append(stamp.result(message, code))
        accepted = {r["To"]: r["MessageID"] for r in results if r["ErrorCode"] == 0}
        record = Record(
            seq=seq,
            time=time.time(),
            status=status,
            delivered=list(accepted),
            refused=[r["To"] for r in results if r["ErrorCode"] != 0],
            message_ids=accepted,
            token=token,
            messages=messages if behaviour.keep_bodies else None,
        )
        remember(self._lock, self.records, self._log, record, ("messages", "token"))
        if behaviour.on_request:
            behaviour.on_request(record)
        payload: Any = results
        if isinstance(status, int) and status != 200:
            # Postmark's code for a missing or wrong token is 10; the others here mirror the status.
            payload = {"ErrorCode": 10 if status == 401 else status, "Message": _MESSAGES.get(status, "error")}
        return status, {**headers, "Content-Type": "application/json"}, json.dumps(payload).encode()

    def template(self, method: str, alias: str | None, token: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        """/templates: POST makes one, GET lists them, GET /templates/<alias> reads one, DELETE
        /templates/<alias> deletes it. Each request but the list is kept in template_calls."""
        if self.behaviour.token is not None and token != self.behaviour.token:
            return 401, {"ErrorCode": 10, "Message": _MESSAGES[401]}
        with self._lock:
            if method == "GET" and alias is None:
                listed = [{key: t.get(key) for key in ("TemplateId", "Name", "Alias", "Active")} for t in self.templates.values()]
                return 200, {"TotalCount": len(listed), "Templates": listed}
            step = self._template_script.pop(0) if method == "POST" and self._template_script else None
            status, body = self._template(method, alias, raw, step)
            self.template_calls.append((method, body.get("Alias", alias), status))
        return status, body

    def _template(self, method: str, alias: str | None, raw: bytes, step: str | None) -> tuple[int, dict[str, Any]]:
        if step is not None and step != "200":
            return int(step), _error(int(step))
        if method == "POST":
            try:
                fields = json.loads(raw)
                alias = fields["Alias"]
            except (ValueError, KeyError, TypeError):
                return 422, _error(422)
            if alias in self.templates:
                return 422, {**_error(ALIAS_TAKEN), "Alias": alias}
            self.templates[alias] = {**fields, "TemplateId": len(self.template_calls) + 1, "Active": True}
            return 200, self.templates[alias]
        if alias not in self.templates:
            return 422, _error(TEMPLATE_NOT_FOUND)
        if method == "DELETE":
            return 200, {"ErrorCode": 0, "Message": f"Template {self.templates.pop(alias)['TemplateId']} removed."}
        return 200, self.templates[alias]

    def _dump(self, stream: str, query: dict[str, str]) -> dict[str, Any]:
        """A stream's suppressions of the reason and days (inclusive) asked for."""
        entries = [
            entry
            for entry in self.behaviour.suppressions.get(stream, [])
            if entry["SuppressionReason"] == query.get("SuppressionReason", entry["SuppressionReason"])
            and query.get("fromdate", "") <= entry["CreatedAt"][:10] <= query.get("todate", "9999")
        ]
        return {"Suppressions": entries}


def _error(status: int) -> dict[str, Any]:
    """Postmark's JSON error for a read answered `status`."""
    return {"ErrorCode": status, "Message": _MESSAGES.get(status, "error")}


# A message's "To" and "TemplateAlias" keys: quotes inside a JSON string are escaped, so this
# matches keys only.
_TO = re.compile(rb'"To":("(?:[^"\\]|\\.)*")')
_ALIAS = re.compile(rb'"TemplateAlias":("(?:[^"\\]|\\.)*")')
# A Mustachio value: {{{name}}} as it is, {{name}} HTML-escaped.
_VALUE = re.compile(r"\{\{(\{)?\s*([\w.]+)\s*\}?\}\}")


def _messages(raw: bytes, *, whole: bool, templated: bool) -> list[Any] | None:
    """The request's messages (None if they are no JSON array): parsed whole when kept, else only
    their To fields (and TemplateAlias), which is all an answer needs (a benchmark sends gigabytes
    of bodies)."""
    try:
        if whole or not raw.lstrip().startswith(b'{"Messages":[' if templated else b"["):
            messages = json.loads(raw)
            return messages.get("Messages") if templated and isinstance(messages, dict) else messages
        # Decoded by one json.loads, not 500: each call's own set-up would add up to ~4 ms a batch.
        tos = json.loads(b"[" + b",".join(match[1] for match in _TO.finditer(raw)) + b"]")
        if not templated:
            return [{"To": to} for to in tos]
        aliases = json.loads(b"[" + b",".join(match[1] for match in _ALIAS.finditer(raw)) + b"]")
    except ValueError:
        return None
    return [{"To": to, "TemplateAlias": alias} for to, alias in zip(tos, aliases)] if len(aliases) == len(tos) else None


def _rendered(template: dict[str, Any], model: dict[str, Any]) -> dict[str, str]:
    def value(match: re.Match[str]) -> str:
        text = str(model.get(match[2], ""))
        return text if match[1] else html.escape(text)

    return {field: _VALUE.sub(value, template.get(field) or "") for field in ("Subject", "HtmlBody", "TextBody")}


def _address(message: Any) -> str:
    """The address of a message's To ("Name" <a@b> or a@b)."""
    to = message.get("To", "") if isinstance(message, dict) else ""
    return to[to.rindex("<") + 1 : -1] if to.endswith(">") else to


class _Stamp:
    """What a batch's accepted messages are stamped with: one submission time, and MessageIDs that
    are one random UUID but for their last 12 digits, each message's number (500 clock readings and
    uuid4() calls a batch would be a good part of the benchmark's fake)."""

    def __init__(self) -> None:
        self._now = datetime.now(timezone.utc).isoformat()
        self._prefix = str(uuid.uuid4())[:24]
        self._count = 0

    def result(self, message: Any, code: int) -> dict[str, Any]:
        if code:
            return {"ErrorCode": code, "Message": _MESSAGES.get(code, "error"), "To": _address(message)}
        self._count += 1
        message_id = f"{self._prefix}{self._count:012x}"
        return {"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "SubmittedAt": self._now, "To": _address(message)}


def _handler(fake: FakePostmark) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Postmark

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/templates":
                self._template("POST", None, raw)
                return
            if self.path not in ("/email/batch", "/email/batchWithTemplates"):
                reply(self, 404, {}, b"{}")
                return
            templated = self.path == "/email/batchWithTemplates"
            status, headers, content = fake.answer(self.headers.get(TOKEN_HEADER), raw, templated=templated)
            if status == DROP:
                self.close_connection = True
                return
            time.sleep(fake.behaviour.hang if status == HANG else fake.behaviour.latency)
            reply(self, 200 if status == HANG else int(status), headers, content)

        def do_DELETE(self) -> None:  # noqa: N802
            self._template("DELETE", self._alias(), b"")

        def _alias(self) -> str | None:
            prefix = "/templates/"
            return self.path[len(prefix) :] if self.path.startswith(prefix) else None

        def _template(self, method: str, alias: str | None, raw: bytes) -> None:
            if method == "DELETE" and alias is None:
                reply(self, 404, {}, b"{}")
                return
            status, body = fake.template(method, alias, self.headers.get(TOKEN_HEADER), raw)
            reply(self, status, {"Content-Type": "application/json"}, json.dumps(body).encode())

        def do_GET(self) -> None:  # noqa: N802
            if self._alias() is not None or urlsplit(self.path).path == "/templates":
                self._template("GET", self._alias(), b"")
                return
            parts = urlsplit(self.path)
            segments = parts.path.split("/")  # "", "message-streams", stream, "suppressions", "dump"
            dump = len(segments) == 5 and segments[1] == "message-streams" and segments[3:] == ["suppressions", "dump"]
            if not dump and parts.path != "/server":
                reply(self, 404, {}, b"{}")
                return
            if fake.behaviour.token is not None and self.headers.get(TOKEN_HEADER) != fake.behaviour.token:
                reply(self, 401, {}, json.dumps({"ErrorCode": 10, "Message": _MESSAGES[401]}).encode())
                return
            if not dump:
                server = {"ID": 1, "Name": fake.behaviour.server_name, "DeliveryType": "Live"}
                reply(self, 200, {"Content-Type": "application/json"}, json.dumps(server).encode())
                return
            reply(self, *fake.reads.answer(segments[2], dict(parse_qsl(parts.query)), self.headers.get(TOKEN_HEADER)))

        def log_message(self, *_: Any) -> None:
            pass  # the JSONL log is the record

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token")
    parser.add_argument("--error", action="append", default=[], metavar="ADDRESS=CODE", help="that message's ErrorCode")
    parser.add_argument("--script", default="", help="comma-separated answers to the first requests")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=60.0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    errors = {address: int(code) for address, _, code in (item.rpartition("=") for item in args.error)}
    with FakePostmark(
        args.port,
        token=args.token,
        errors=errors,
        script=[step for step in args.script.split(",") if step],
        latency=args.latency,
        hang=args.hang,
        log=args.log,
    ):
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
