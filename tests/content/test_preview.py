"""`newsletter preview`: a real server on 127.0.0.1 serving the page, the email with local
thumbnails and a harmless unsubscribe link, and a version that changes with the digest and the
templates."""

from __future__ import annotations

import io
import select
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from lxml import html as lxml_html
from PIL import Image

from newsletter.content.render import UNSUBSCRIBE_TAG
from testkit.servers import free_port

from ..support import ROOT, run_newsletter, serving_newsletter, start_newsletter, write_thumbnails


@pytest.fixture
def workspace(project: Path) -> dict[str, str]:
    """A project with thumbnails and its own copy of the templates; the environment pointing the
    preview at it."""
    write_thumbnails(project / "digests" / "2026-01-23.md")
    shutil.copytree(ROOT / "templates", project / "templates")
    return {
        "NEWSLETTER_DIGESTS_DIR": str(project / "digests"),
        "NEWSLETTER_TEMPLATES_DIR": str(project / "templates"),
        "NEWSLETTER_PUBLIC_DIR": str(project / "public"),
    }


def preview(port: int, *extra: str) -> tuple[str, ...]:
    """The arguments of `newsletter preview` on `port`, without opening a browser."""
    return ("preview", "--no-open", "--port", str(port), *extra)


def wait_for_version(client: httpx.Client, old: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = client.get("/version").json()["version"]
        if version != old:
            return version
        time.sleep(0.05)
    raise AssertionError("the preview's version did not change")


@pytest.mark.slow
def test_the_preview_serves_the_email_with_local_thumbnails(workspace: dict[str, str]) -> None:
    port = free_port()
    with serving_newsletter(*preview(port), port=port, env=workspace), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        page = client.get("/")
        assert page.status_code == 200
        frames = lxml_html.document_fromstring(page.text).xpath("//iframe")
        assert [frame.get("src") for frame in frames] == ["/email", "/email"]
        assert "2026년 1월 23일 — EvoCUA 외 4편" in page.text
        assert {b.get("data-show") for b in lxml_html.document_fromstring(page.text).xpath("//button")} == {
            "phone", "desktop", "both"
        }  # fmt: skip

        email = client.get("/email")
        assert email.status_code == 200 and UNSUBSCRIBE_TAG not in email.text
        document = lxml_html.document_fromstring(email.text)
        unsubscribe = [a.get("href") for a in document.iter("a") if a.text_content().strip() == "구독 해지"]
        assert unsubscribe == [f"http://127.0.0.1:{port}/unsubscribe-preview"]
        assert client.get(unsubscribe[0]).status_code == 200

        sources = [image.get("src") for image in document.iter("img")]
        assert len(sources) == 5
        for source in sources:
            assert source.startswith(f"http://127.0.0.1:{port}/assets/")
            thumbnail = client.get(source)
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(thumbnail.content)).size == (1104, 580)

        text = client.get("/email.txt")
        assert text.status_code == 200 and f"구독 해지:\nhttp://127.0.0.1:{port}/unsubscribe-preview\n" in text.text
        assert client.get("/assets/..%2Fdigests%2F2026-01-23.md").status_code == 404
        assert client.get("/assets/missing.jpg").status_code == 404


@pytest.mark.slow
def test_the_preview_follows_edits_to_the_digest_and_templates(project: Path, workspace: dict[str, str]) -> None:
    port = free_port()
    digest = project / "digests" / "2026-01-23.md"
    footer = project / "templates" / "footer.mjml.j2"
    with serving_newsletter(*preview(port), port=port, env=workspace), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        version = client.get("/version").json()["version"]

        digest.write_text(digest.read_text(encoding="utf-8").replace("EvoCUA:", "EvoCUA 2:", 1), encoding="utf-8")
        version = wait_for_version(client, version)
        assert "EvoCUA 2: Evolving" in client.get("/email").text

        footer.write_text(footer.read_text(encoding="utf-8").replace("<p>{{ settings.postal_address }}</p>", "<p>Edited footer</p>"))
        version = wait_for_version(client, version)
        assert "Edited footer" in client.get("/email").text

        # A digest broken mid-edit shows its error in the page (which keeps polling) …
        original = digest.read_text(encoding="utf-8")
        digest.write_text("# 2026-01-23 Daily Papers\n\nNo papers yet.\n", encoding="utf-8")
        version = wait_for_version(client, version)
        problem = lxml_html.document_fromstring(client.get("/").text).find_class("problem")[0].text_content()
        assert "2026-01-23.md:1: no papers" in problem
        assert client.get("/email").status_code == 500
        # … and the preview recovers as soon as the file is fixed.
        digest.write_text(original, encoding="utf-8")
        wait_for_version(client, version)
        assert client.get("/email").status_code == 200


@pytest.mark.slow
def test_no_open_prints_the_url_and_date_picks_the_digest(project: Path, workspace: dict[str, str]) -> None:
    later = project / "digests" / "2026-01-24.md"
    later.write_text("# 2026-01-24 Daily Papers\n\n## 1. [Later paper](https://example.com/later)\n", encoding="utf-8")
    port = free_port()

    process = start_newsletter(*preview(port), env=workspace)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the preview printed nothing"
        assert process.stdout.readline().startswith(f"Previewing at http://127.0.0.1:{port}/")
        # Without --date: the latest digest.
        assert "Later paper" in httpx.get(f"http://127.0.0.1:{port}/email").text
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()

    port = free_port()
    with serving_newsletter(*preview(port, "--date", "2026-01-23"), port=port, env=workspace):
        assert "EvoCUA" in httpx.get(f"http://127.0.0.1:{port}/email").text


def test_a_taken_port_is_one_clear_error(workspace: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_newsletter(*preview(port), env=workspace, timeout=60)
    assert result.returncode == 1
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_broken_preview_template_is_one_clear_error(project: Path, workspace: dict[str, str]) -> None:
    page = project / "templates" / "preview.html.j2"
    lines = page.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "{{ no_such_value }}")
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with serving_newsletter(*preview(port), port=port, env=workspace), httpx.Client(base_url=origin) as client:
        answer = client.get("/")
        email = client.get("/email")

    assert answer.status_code == 500
    assert answer.text == f"{page}:3: 'no_such_value' is undefined"
    # Only the page around the email is broken: the email itself still renders.
    assert email.status_code == 200 and "EvoCUA" in email.text
