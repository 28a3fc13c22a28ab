"""Helpers for tests and benchmarks: paths, free ports, and real local servers (Prism, uvicorn…)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIGEST = ROOT / "digests" / "2026-01-23.md"
SHARED = ROOT.parent / "shared"
NODE_BIN = ROOT / "node_modules" / ".bin"


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
def running(command: list[str], port: int, *, env: dict[str, str] | None = None, timeout: float = 60.0):
    """Run a server process for the duration of the block; its output goes to a log shown on failure."""
    log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
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
        os.unlink(log.name)


@contextlib.contextmanager
def prism(spec: str):
    """Stoplight Prism serving one of SendGrid's OpenAPI specs (in ../shared/sendgrid/) as a
    validating mock on 127.0.0.1; yields its base URL (no /v3 suffix)."""
    binary = NODE_BIN / "prism"
    if not binary.exists():
        pytest.fail("Stoplight Prism is not installed: run `npm ci` at the project root")
    spec_file = SHARED / "sendgrid" / spec
    if not spec_file.exists():
        pytest.fail(f"SendGrid's OpenAPI spec {spec_file} is missing: shared/ must sit beside the project")
    port = free_port()
    command = [str(binary), "mock", "-h", "127.0.0.1", "-p", str(port), "--errors", str(spec_file)]
    with running(command, port, timeout=90):
        yield f"http://127.0.0.1:{port}"
