"""`newsletter serve` as a whole: the public folder (archive pages, thumbnails), the headers every
answer carries, and the unsubscribe page as a real browser draws it."""

from __future__ import annotations

import io
import select
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from newsletter import db
from newsletter.config import load_settings
from newsletter.content.render import DARK, LIGHT
from newsletter.tokens import UnsubscribeLinks
from testkit.projects import add_list, add_subscribers, engine_of, write_config
from testkit.servers import serving

from .support import CHROMIUM, require_chromium
from .web import status_of

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


def test_the_public_folder_is_served_with_index_pages(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    public = tmp_path / "public"
    assert not public.exists()
    with serving(config) as url, httpx.Client(timeout=30, follow_redirects=False) as http:
        # The folder is made at start, and what is published later is served without a restart.
        assert public.is_dir()
        (public / "2026-01-23" / "thumbs").mkdir(parents=True)
        (public / "2026-01-23" / "index.html").write_text("<h1>2026년 1월 23일</h1>", encoding="utf-8")
        (public / "2026-01-23" / "thumbs" / "1.png").write_bytes(_png("#4338ca"))
        (public / "index.html").write_text("<h1>Archive</h1>", encoding="utf-8")
        (tmp_path / "secret.txt").write_text("outside the public folder")

        issue = http.get(f"{url}/2026-01-23/")
        assert issue.status_code == 200 and issue.text == "<h1>2026년 1월 23일</h1>"
        assert issue.headers["content-type"].startswith("text/html")
        assert http.get(f"{url}/").text == "<h1>Archive</h1>"
        bare = http.get(f"{url}/2026-01-23")
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/2026-01-23/")
        thumb = http.get(f"{url}/2026-01-23/thumbs/1.png")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(thumb.content)).getpixel((4, 4)) == (0x43, 0x38, 0xCA)

        assert http.get(f"{url}/2026-01-24/").status_code == 404
        assert http.get(f"{url}/%2e%2e/secret.txt").status_code == 404
        assert http.post(f"{url}/2026-01-23/").status_code == 405
        missing = http.get(f"{url}/2026-01-24/")
        for answer in (issue, thumb, bare, missing):
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "set-cookie" not in answer.headers and "server" not in answer.headers
            # Static pages: no script from anywhere, images from here or https, never framed.
            policy = answer.headers["content-security-policy"]
            assert policy.startswith("default-src 'none'; img-src 'self' http://127.0.0.1:8000 https: data:;")
            assert "script-src" not in policy and "frame-ancestors 'none'" in policy


def _screenshot(url: str, out: Path, width: int, height: int, profile: Path, *extra: str) -> Image.Image:
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            *extra,
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Image.open(out).convert("RGB")


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _widest_run(image: Image.Image, colour: str) -> int:
    """The longest horizontal run of pixels of exactly this colour."""
    target, best = _rgb(colour), 0
    pixels = image.load()
    for y in range(image.height):
        run = 0
        for x in range(image.width):
            run = run + 1 if pixels[x, y] == target else 0
            best = max(best, run)
    return best


def test_the_confirmation_page_in_a_real_browser(tmp_path: Path) -> None:
    require_chromium()
    config = write_config(tmp_path)
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers", "Daily Papers")
    (subscriber_id,) = add_subscribers(settings, list_id, ["독자@example.com"])
    with serving(config) as url:
        page = f"{url}/unsubscribe/{UnsubscribeLinks(settings.links).token(list_id, subscriber_id, '독자@example.com')}"
        phone = _screenshot(page, tmp_path / "phone.png", 390, 844, tmp_path / "profile")
        desktop = _screenshot(page, tmp_path / "desktop.png", 1280, 800, tmp_path / "profile")
        dark = _screenshot(page, tmp_path / "dark.png", 390, 844, tmp_path / "profile", "--force-dark-mode")
    # The newsletter's page colour around the card, and its button colour on the button.
    assert phone.getpixel((2, 840)) == _rgb(LIGHT.page)
    assert dark.getpixel((2, 840)) == _rgb(DARK.page)
    # On a phone the button spans the card (thumb-sized); on a desktop it is its own size (its label
    # in one language: "구독 해지").
    assert _widest_run(phone, LIGHT.button) > 0.75 * 390
    assert 80 < _widest_run(desktop, LIGHT.button) < 400
    assert _widest_run(dark, DARK.button) > 0.75 * 390
    # GET in a browser changed nothing.
    with engine_of(settings).connect() as conn:
        assert conn.execute(db.memberships.select()).one().status == db.SUBSCRIBED


# -- request bodies ---------------------------------------------------------------------------------

FIFTY_MB = 50 * 1024 * 1024


def _trickle(url: str, headers: dict[str, str], *, declared: int | None, body: bytes = b"x" * 4096) -> tuple[bytes, float, int]:
    """POSTs `body` over and over, one piece every 4 ms (about 1 MB/s), up to 50 MB, until the server
    answers: with `declared` as Content-Length, or chunked without it. Returns the answer, the seconds
    it took and the bytes sent."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append("Transfer-Encoding: chunked" if declared is None else f"Content-Length: {declared}")
    piece = body if declared is not None else b"%x\r\n%s\r\n" % (len(body), body)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        while sent < FIFTY_MB and not select.select([sock], [], [], 0.004)[0]:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(body)
        answer = sock.recv(65536)
        elapsed = time.monotonic() - start
        # The server closes the connection rather than read the rest (a reset, when bytes it did not
        # read were left in its buffer).
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    return answer, elapsed, sent


def test_oversized_bodies_are_refused_at_once_and_nothing_is_spooled(tmp_path: Path) -> None:
    """A 300 MB multipart POST to any /unsubscribe/ path used to be spooled to disk in full before
    the link was even checked."""
    config = write_config(tmp_path)
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers")
    (subscriber_id,) = add_subscribers(settings, list_id, ["slow.upload@example.com"])
    token = UnsubscribeLinks(settings.links).token(list_id, subscriber_id, "slow.upload@example.com")
    spool = tmp_path / "tmp"
    spool.mkdir()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # A file part's head, then its content (the same again and again: only its size matters here).
    multipart_head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n' + b"x" * 4096
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    with serving(config, env={"TMPDIR": str(spool)}) as url:
        link = f"{url}/unsubscribe/{token}"
        answers = {
            "declared 50 MB": _trickle(link, form, declared=FIFTY_MB),
            "chunked, 50 MB": _trickle(link, form, declared=None),
            "multipart file, declared 50 MB": _trickle(link, multipart, declared=FIFTY_MB, body=multipart_head),
            "multipart file, chunked": _trickle(link, multipart, declared=None, body=multipart_head),
            "resubscribe, chunked": _trickle(link.replace("/unsubscribe/", "/resubscribe/"), form, declared=None),
            "webhook, declared 50 MB": _trickle(f"{url}/webhooks/sendgrid", {}, declared=FIFTY_MB),
        }
        # A forged link is answered without its body: the server does not wait for it.
        forged = _trickle(f"{url}/unsubscribe/{token[:-1]}A", form, declared=8000, body=b"")
        # A file in the one-click form is refused, however small.
        with httpx.Client(timeout=30) as http:
            small_file = http.post(link, files={"List-Unsubscribe": ("a.txt", b"One-Click")})
    for name, (answer, elapsed, sent) in answers.items():
        assert answer.startswith(b"HTTP/1.1 413 "), (name, answer[:100])
        assert b"connection: close" in answer.lower(), name
        assert elapsed < 1 and sent < 1024 * 1024, (name, elapsed, sent)
    assert forged[0].startswith(b"HTTP/1.1 404 ") and forged[1] < 1
    assert small_file.status_code == 400
    # Only Jinja's compiled templates (render.py's bytecode cache): no request body was spooled.
    assert [path.name for path in spool.iterdir() if not path.name.startswith("_jinja2-cache")] == []
    assert status_of(settings, list_id, subscriber_id) == db.SUBSCRIBED


def test_a_database_locked_past_its_timeout_is_a_page_to_come_back_to(tmp_path: Path) -> None:
    config = write_config(tmp_path, database_timeout=1)
    settings = load_settings(config)
    list_id = add_list(settings, "daily-papers")
    (subscriber_id,) = add_subscribers(settings, list_id, ["locked.out@example.com"])
    token = UnsubscribeLinks(settings.links).token(list_id, subscriber_id, "locked.out@example.com")
    one_click = {"content": b"List-Unsubscribe=One-Click", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    log = tmp_path / "serve.log"
    with serving(config, log_to=log) as url, httpx.Client(timeout=30) as http:
        holder = sqlite3.connect(settings.database.url.removeprefix("sqlite:///"))
        holder.execute("BEGIN EXCLUSIVE")  # another process writing for longer than database_timeout
        busy = http.post(f"{url}/unsubscribe/{token}", **one_click)
        holder.rollback()
        assert status_of(settings, list_id, subscriber_id) == db.SUBSCRIBED
        again = http.post(f"{url}/unsubscribe/{token}", **one_click)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "60"
    assert "잠시 후 다시 시도해 주세요" in busy.text and busy.headers["cache-control"] == "no-store"
    assert again.status_code == 200
    assert status_of(settings, list_id, subscriber_id) == db.UNSUBSCRIBED
    logged = log.read_text()
    assert "answered 503" in logged and "Traceback" not in logged and "locked.out" not in logged
