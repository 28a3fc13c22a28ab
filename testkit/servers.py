"""Real servers on 127.0.0.1 for the tests and the benchmarks: free ports, a process run for the
length of a block (its output shown if it fails to start), `newsletter serve` itself."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def running(
    command: list[str], port: int, *, env: dict[str, str] | None = None, timeout: float = 60.0, log_to: Path | None = None
):
    """Run a server process for the duration of the block; its output goes to a log shown on failure
    (and kept at `log_to`, if given)."""
    log = open(log_to, "w+") if log_to else tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    try:
        try:
            wait_for_port(port, timeout, process)
        except TimeoutError:
            log.seek(0)
            raise TimeoutError(f"{command[0]} did not start:\n{log.read()[-3000:]}") from None
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if log_to is None:
            os.unlink(log.name)


@contextlib.contextmanager
def serving(
    config: Path, env: dict[str, str] | None = None, port: int | None = None, log_to: Path | None = None
) -> Iterator[str]:
    """`python -m newsletter serve` with this config (and `env` added to its environment), on `port`
    (by default a free one: give it to set base_url to the server's own address); yields its URL.
    Its output is kept at `log_to`, if given."""
    port = port or free_port()
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)]
    with running(command, port, env=env, log_to=log_to):
        yield f"http://127.0.0.1:{port}"
