"""What the fake servers share: an HTTP server on 127.0.0.1, run in a thread for the length of a
`with` block."""

from __future__ import annotations

import json
import threading
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
