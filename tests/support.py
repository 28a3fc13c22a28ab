"""Helpers for tests and benchmarks: paths, free ports, real local servers (Prism, uvicorn…), a
headless Chromium, and the one way the tests run the `newsletter` command."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from testkit.servers import free_port, running

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIGEST = ROOT / "digests" / "2026-01-23.md"
SENDGRID_SPECS = ROOT / "tests" / "sendgrid_specs"
NODE_BIN = ROOT / "node_modules" / ".bin"


@contextlib.contextmanager
def prism(spec: str):
    """Stoplight Prism serving one of SendGrid's OpenAPI specs (vendored in tests/sendgrid_specs/) as a
    validating mock on 127.0.0.1; yields its base URL (no /v3 suffix)."""
    binary = NODE_BIN / "prism"
    if not binary.exists():
        pytest.fail("Stoplight Prism is not installed: run `npm ci` at the project root")
    spec_file = SENDGRID_SPECS / spec
    port = free_port()
    command = [str(binary), "mock", "-h", "127.0.0.1", "-p", str(port), "--errors", str(spec_file)]
    with running(command, port, timeout=90):
        yield f"http://127.0.0.1:{port}"


# -- drawn thumbnails and colour contrast (render, browser, preview and MJML tests) -----------------


def write_thumbnails(digest_file: Path) -> list[Path]:
    """Draw the thumbnails the digest names beside it (the repository ships the text only)."""
    written = []
    names = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", digest_file.read_text(encoding="utf-8"))
    for index, name in enumerate(names):
        path = digest_file.parent / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (1200, 630), (40 + 30 * index, 50, 140))
        ImageDraw.Draw(image).rectangle((80, 80, 1120, 550), outline=(255, 255, 255), width=12)
        image.save(path, "JPEG", quality=85)
        written.append(path)
    return written


def contrast(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""

    def luminance(colour: str) -> float:
        channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# -- tools the browser and MJML tests need: missing, they fail the test, never skip it --------------
# `make test` (and so CI) installs them; a skip would let a broken setup pass unnoticed.

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_chromium(binary: str = CHROMIUM, font: str = "Nanum") -> str:
    """`binary`, once it and a Korean font of the `font` family (Debian's fonts-nanum) are installed."""
    if not Path(binary).exists():
        pytest.fail(f"Chromium ({binary}) is not installed: `make test` installs Debian's chromium and fonts-nanum")
    try:
        korean = subprocess.run(["fc-list", ":lang=ko", "family"], capture_output=True, text=True, timeout=60).stdout
    except OSError:  # no fontconfig at all
        korean = ""
    if font.casefold() not in korean.casefold():
        pytest.fail(f"no {font} Korean font is installed: `make test` installs Debian's chromium and fonts-nanum")
    return binary


def require_node_tool(name: str) -> Path:
    """node_modules/.bin/`name`, once installed from package-lock.json."""
    tool = NODE_BIN / name
    if not tool.exists():
        pytest.fail(f"{tool} is not installed: `make test` installs it (npm ci at the project root)")
    return tool


# -- a headless Chromium driven over the DevTools protocol ------------------------------------------


class Chromium:
    """A headless Chromium and its DevTools-protocol pipe (--remote-debugging-pipe: JSON messages
    ending in NUL on file descriptors 3 and 4), so no client library is needed."""

    def __init__(self, profile: Path, binary: str = CHROMIUM) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def onto_3_and_4() -> None:  # runs in the child, before exec
            # Moved out of the way first: either pipe end may itself be descriptor 3 or 4.
            commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write))
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "about:blank",
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=onto_3_and_4,
            pass_fds=(3, 4),
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def wait_for(self, event: str, session: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, message in enumerate(self._events):
                if message.get("method") == event and message.get("sessionId") == session:
                    return self._events.pop(index)
            self._events.append(self._read())
        raise TimeoutError(event)

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def page(self, width: int, *, dark: bool = False) -> ChromiumPage:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return ChromiumPage(self, session, width, dark)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


class ChromiumPage:
    """One tab at a given width, in light or dark mode."""

    def __init__(self, browser: Chromium, session: str, width: int, dark: bool) -> None:
        self.browser, self.session, self.width = browser, session, width
        self.send("Page.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 480},
        )
        self.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]},
        )

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.browser.wait_for("Page.loadEventFired", self.session)

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        height = self.evaluate("document.documentElement.scrollHeight")
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
            },
        )
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data


# -- the one way the tests run the CLI: the real `newsletter` command in a child process -------------


def _newsletter_process(args: tuple[str, ...], cwd: Path | None, env: dict[str, str | None] | None) -> dict:
    """What the helpers below hand to subprocess: the command, its folder and its environment."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return {
        "args": [sys.executable, "-m", "newsletter", *args],
        "cwd": Path.cwd() if cwd is None else cwd,
        "env": environment,
        "text": True,
    }


def run_newsletter(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`newsletter ARGS` in a child process, as a user runs it, in `cwd` (by default the test's own
    folder, where conftest puts every test); returns its exit status, stdout and stderr.

    The environment is the test's (conftest has removed the developer's NEWSLETTER_* variables and
    SendGrid key) with `env` added (a None value removes a variable); `input` is typed at its prompts.
    The checkout is put on the path (the command works without the package installed) and the
    terminal is made wide, so that rich never wraps a message the test compares."""
    return subprocess.run(
        **_newsletter_process(args, cwd, env), input=input, capture_output=True, timeout=timeout
    )


def start_newsletter(
    *args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None
) -> subprocess.Popen[str]:
    """The same command as `run_newsletter`, left running: for the tests that signal it, kill it or
    race it. Its stdout and stderr are pipes; `communicate()` collects them."""
    return subprocess.Popen(**_newsletter_process(args, cwd, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextlib.contextmanager
def serving_newsletter(*args: str, port: int, env: dict[str, str | None] | None = None) -> Iterator[subprocess.Popen]:
    """The same command as a server for the length of the block, once it listens on 127.0.0.1:`port`
    (testkit's `running`: its output is shown if it fails to start; it runs in the checkout)."""
    process = _newsletter_process(args, None, env)
    with running(process["args"], port, env=process["env"]) as server:
        yield server
