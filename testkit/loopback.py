"""What the fake servers share: an HTTP server on 127.0.0.1, run in a thread for the length of a
`with` block; one way to write an answer and to keep a record; and a provider's suppression-list
reads, scripted and recorded, with a gateway's error page."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Self


def reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], content: bytes) -> None:
    """Answer a request with `content`, its length given."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(content)))
    handler.end_headers()
    try:
        handler.wfile.write(content)
    except (BrokenPipeError, ConnectionResetError):
        pass  # a client that gave up (its timeout, its cap on an answer) while we answered


def remember(lock: threading.Lock, records: list[Any], log: IO[str] | None, record: Any, private: tuple[str, ...]) -> None:
    """Keep a request's record, and write it as a JSON line to `log` without its `private` fields
    (bodies, credentials): a fake in a process of its own tells its test this way."""
    with lock:
        records.append(record)
        if log:
            log.write(json.dumps({k: v for k, v in record.__dict__.items() if k not in private}) + "\n")
            log.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of concurrent clients overflows it, the kernel
    # drops their SYNs and they retry a second later, which would read as server latency.
    request_queue_size = 128


class LoopbackFake:
    """Base of a fake: `handler` answers its requests; `url` is where it listens."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        # A short poll interval: shutdown() waits for the loop to notice, up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


# -- a provider's suppression-list reads (the fake SendGrid's and the fake Postmark's) ----------------


@dataclass
class Read:
    """A GET of a suppression list, as received: which list (SendGrid's kind, Postmark's stream)."""

    seq: int
    time: float
    name: str
    query: dict[str, str]
    status: int
    credential: str | None


class Reads:
    """A fake's suppression-list reads, answered as its read script says and recorded: a step is an
    HTTP status ("200": the list's own page; "429", "501"…: the provider's JSON `error` for it, a 429
    with Retry-After if the fake has one) or "NNN-page" (that status with a gateway's HTML page)."""

    def __init__(
        self,
        script: list[str],
        retry_after: float | None,
        error: Callable[[int], Any],
        page: Callable[[str, dict[str, str]], Any],
    ) -> None:
        self.records: list[Read] = []
        self._script = list(script)
        self._retry_after = retry_after
        self._error = error
        self._page = page
        self._lock = threading.Lock()

    def answer(self, name: str, query: dict[str, str], credential: str | None) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            step = self._script.pop(0) if self._script else "200"
            seq = len(self.records) + 1
        code, _, page = step.partition("-")
        status = int(code)
        headers = {"Content-Type": "application/json"}
        if page:
            headers, content = {"Content-Type": "text/html"}, error_page(status, credential)
        else:
            content = json.dumps(self._page(name, query) if status == 200 else self._error(status)).encode()
            if status == 429 and self._retry_after is not None:
                headers["Retry-After"] = f"{self._retry_after:g}"
        remember(self._lock, self.records, None, Read(seq, time.time(), name, query, status, credential), ())
        return status, headers, content


def error_page(status: int, credential: str | None) -> bytes:
    """A gateway's error page, in front of any API: a title, a style, and a script that echoes the
    request's credential (as a debugging proxy may), none of which is the page's text."""
    phrase = HTTPStatus(status).phrase
    return (
        f"<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title><style>h1 {{ color: red }}</style>"
        f"<script>var seen = {json.dumps(credential)};</script></head>\n"
        f"<body><h1>{phrase}</h1>\n<p>The gateway could not serve this request.</p></body></html>\n"
    ).encode()
