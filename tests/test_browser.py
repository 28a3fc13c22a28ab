"""The example issue in a real browser (Debian's headless Chromium, Korean from fonts-nanum) at a
phone's and a desktop's width, in light and dark mode: layout, text size, contrast, images. Also the
preview page's width toggle.

Chromium is driven over the DevTools protocol through --remote-debugging-pipe (JSON messages ending
in NUL on file descriptors 3 and 4), so no client library is needed.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.render import render_issue

from .support import EXAMPLE_DIGEST, free_port, running
from .test_render import contrast, write_thumbnails

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE, DESKTOP = 375, 640


class Chromium:
    """A headless Chromium and its DevTools-protocol pipe."""

    def __init__(self, profile: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def onto_3_and_4() -> None:  # runs in the child, before exec
            # Moved out of the way first: either pipe end may itself be descriptor 3 or 4.
            commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write))
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
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

    def page(self, width: int, *, dark: bool = False) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session, width, dark)

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


class Page:
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


# -- the example issue, served with its thumbnails -----------------------------------------------

# Every element holding visible text: its font size, its colour and the first opaque background
# behind it (walking up the ancestors).
MEASURE = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top + scrollY, bottom: r.bottom + scrollY, width: r.width, height: r.height}; };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const colour = getComputedStyle(el).backgroundColor;
      if (colour !== "rgba(0, 0, 0, 0)" && colour !== "transparent") return colour;
    }
    return "rgb(255, 255, 255)";
  };
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || !el.checkVisibility()) continue;
    const style = getComputedStyle(el);
    texts.push({text: walker.currentNode.textContent.trim().slice(0, 30), size: parseFloat(style.fontSize),
                colour: style.color, background: background(el)});
  }
  return {
    viewport: innerWidth,
    scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
    cards: [...document.querySelectorAll(".card")].map(box),
    images: [...document.images].map((img) => ({...box(img), natural: img.naturalWidth})),
    headings: [...document.querySelectorAll("h1, h2")].map((h) => h.tagName),
    texts,
  };
})()"""

SCHEMES = {
    "light": (False, ""),
    "dark": (True, ""),
    # Outlook.com in dark mode marks the document with data-ogsc/data-ogsb; our rules follow them.
    "outlook-dark": (False, "document.documentElement.setAttribute('data-ogsc', ''); document.documentElement.setAttribute('data-ogsb', '');"),
}


def rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(float(part)) for part in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def hex_of(css: str) -> str:
    return "#%02x%02x%02x" % rgb(css)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make test-setup` (Debian's chromium and fonts-nanum)")
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def issue_url(tmp_path_factory: pytest.TempPathFactory):
    """The example issue as a reader's client loads it: HTML and thumbnails over HTTP."""
    project = tmp_path_factory.mktemp("issue")
    (project / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, project / "digests")
    write_thumbnails(project / "digests" / EXAMPLE_DIGEST.name)
    port = free_port()
    settings = load_settings(
        config_dir=project,
        digests_dir=project / "digests",
        public_dir=project / "public",
        asset_base_url=f"http://127.0.0.1:{port}/assets",
    )
    issue = render_issue(load_digest(settings), settings)
    html, _ = issue.personalised(f"http://127.0.0.1:{port}/unsubscribe")
    (project / "public" / "issue.html").write_text(html, encoding="utf-8")
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(project / "public")]
    with running(server, port):
        yield f"http://127.0.0.1:{port}/issue.html"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_the_issue_in_chromium(browser: Chromium, issue_url: str, width: int, scheme: str, tmp_path: Path) -> None:
    dark, script = SCHEMES[scheme]
    page = browser.page(width, dark=dark)
    page.goto(issue_url)
    if script:
        page.evaluate(script)
    assert page.evaluate("document.compatMode") == "CSS1Compat"
    seen = page.evaluate(MEASURE)

    # Nothing scrolls sideways.
    assert seen["viewport"] == width and seen["scrollWidth"] <= width
    # One card per paper, stacked in one column, each inside the viewport.
    cards = seen["cards"]
    assert len(cards) == 5
    for above, below in zip(cards, cards[1:]):
        assert below["top"] >= above["bottom"] and below["left"] == above["left"]
    for card in cards:
        assert 0 <= card["left"] and card["right"] <= width
        if width == PHONE:
            assert card["width"] >= width - 2 * 12  # full width but for a narrow gutter
        else:
            assert card["width"] == 600 and card["left"] == (width - 600) / 2
    # Images loaded, never wider than the viewport or the card, and not distorted.
    assert len(seen["images"]) == 5
    for image in seen["images"]:
        assert image["natural"] > 0
        assert image["right"] <= width and image["width"] == (552 if width == DESKTOP else card["width"] - 2 * 18)
        assert abs(image["height"] / image["width"] - 290 / 552) < 0.01
    assert seen["headings"] == ["H1", "H2"] + ["H2"] * 5  # the title, "오늘의 논문", each paper
    # Body text at least 14px, and every text at least 4.5:1 against what is behind it.
    assert len(seen["texts"]) > 50
    for text in seen["texts"]:
        assert text["size"] >= 14, text
        ratio = contrast(hex_of(text["colour"]), hex_of(text["background"]))
        assert ratio >= 4.5, f"{text['text']!r}: {ratio:.2f}:1 ({text['colour']} on {text['background']})"

    # The pixels agree: the page behind the cards is light or dark as the scheme asks.
    shot = Image.open(io.BytesIO(page.screenshot(tmp_path / f"{width}-{scheme}.png")))
    corner = shot.convert("RGB").getpixel((2, 2))
    assert (sum(corner) / 3 < 40) if scheme != "light" else (sum(corner) / 3 > 220), corner


def test_korean_renders_in_a_korean_font(browser: Chromium, issue_url: str) -> None:
    page = browser.page(PHONE)
    page.goto(issue_url)
    page.send("DOM.enable")
    page.send("CSS.enable")
    root = page.send("DOM.getDocument")["root"]["nodeId"]
    summary = page.send("DOM.querySelector", {"nodeId": root, "selector": ".summary"})["nodeId"]
    fonts = {font["familyName"] for font in page.send("CSS.getPlatformFontsForNode", {"nodeId": summary})["fonts"]}
    korean = set(subprocess.run(["fc-list", ":lang=ko", "family"], capture_output=True, text=True).stdout.replace("\n", ",").split(","))
    assert fonts and fonts <= korean | {"Liberation Sans", "DejaVu Sans"}
    assert fonts & korean, fonts


# -- the preview page --------------------------------------------------------------------------


def test_the_preview_toggles_widths_and_reloads_itself(browser: Chromium, project: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")
    port = free_port()
    env = {"NEWSLETTER_DIGESTS_DIR": str(project / "digests"), "NEWSLETTER_PUBLIC_DIR": str(project / "public")}
    command = [sys.executable, "-m", "newsletter", "preview", "--no-open", "--port", str(port)]
    with running(command, port, env=env):
        page = browser.page(1400)
        page.goto(f"http://127.0.0.1:{port}/")
        frames = """[...document.querySelectorAll('figure')].filter((f) => f.checkVisibility()).map((f) => {
            const frame = f.querySelector('iframe'), inner = frame.contentDocument.documentElement;
            return {width: frame.clientWidth, scrollWidth: inner.scrollWidth, cards: inner.querySelectorAll('.card').length};
        })"""
        wait = "new Promise((done) => setTimeout(done, 300))"
        page.evaluate(wait)
        assert page.evaluate(frames) == [
            {"width": PHONE, "scrollWidth": PHONE, "cards": 5},
            {"width": DESKTOP, "scrollWidth": DESKTOP, "cards": 5},
        ]
        page.evaluate("document.querySelector('button[data-show=phone]').click()")
        assert page.evaluate(frames) == [{"width": PHONE, "scrollWidth": PHONE, "cards": 5}]
        page.evaluate("document.querySelector('button[data-show=desktop]').click()")
        assert page.evaluate(frames) == [{"width": DESKTOP, "scrollWidth": DESKTOP, "cards": 5}]
        assert page.evaluate("document.querySelector('button[data-show=desktop]').getAttribute('aria-pressed')") == "true"

        # Editing the digest reloads the page by itself, keeping the chosen width.
        digest = project / "digests" / "2026-01-23.md"
        digest.write_text(digest.read_text(encoding="utf-8").replace("EvoCUA:", "EvoCUA Reloaded:", 1), encoding="utf-8")
        page.browser.wait_for("Page.loadEventFired", page.session, timeout=15)
        page.evaluate(wait)
        assert page.evaluate("location.hash") == "#desktop"
        assert "EvoCUA Reloaded:" in page.evaluate("document.querySelector('.desktop iframe').contentDocument.body.textContent")
