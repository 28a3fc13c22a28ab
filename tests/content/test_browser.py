"""The example issue in a real browser (Debian's headless Chromium, Korean from fonts-nanum) at a
phone's and a desktop's width, in light and dark mode (with images and without): layout, height,
text size, contrast, tap targets, images. Also the preview page's width toggle. The screenshots
are left in <pytest's base temp>/screenshots/ to look at.

Chromium is driven over the DevTools protocol by tests/support.py's Chromium, so no client library
is needed. Without Chromium or the font these tests fail, never skip: `make test` installs both.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from newsletter.config import load_settings
from newsletter.content.digest import load_digest
from newsletter.content.publish import publish_issue
from newsletter.content.render import DARK, LANGUAGES, LIGHT, render_issue, render_template
from testkit.servers import free_port, running

from ..support import (
    EXAMPLE_DIGEST, NODE_BIN, ROOT, Chromium, contrast, require_chromium, require_node_tool, serving_newsletter, write_thumbnails,
)  # fmt: skip
from ..content.test_language import NEWSLETTER, PAGE_DATA, PAGES, archive_entries, assert_speaks, issue_data

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

PHONE, DESKTOP = 375, 640


# -- the example issue, served with its thumbnails -----------------------------------------------

# Every element holding visible text: its font size, its colour and the first opaque background
# behind it (walking up the ancestors). Every visible link's box, and the page's height.
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
  const links = (selector) => [...document.querySelectorAll(selector)].filter((a) => a.checkVisibility())
    .map((a) => ({text: a.textContent.trim().slice(0, 30), ...box(a)}));
  return {
    viewport: innerWidth,
    height: document.documentElement.scrollHeight,
    scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
    cards: [...document.querySelectorAll(".box")].map(box),
    images: [...document.images].map((img) => ({...box(img), natural: img.naturalWidth,
      background: getComputedStyle(img).backgroundColor, colour: getComputedStyle(img).color})),
    headings: [...document.querySelectorAll("h1, h2")].map((h) => h.tagName),
    links: links("a"),
    targets: links(".foot a, .button a"),
    texts,
  };
})()"""

# name: (dark, blocks images, script run after loading)
SCHEMES = {
    "light": (False, False, ""),
    "dark": (True, False, ""),
    # How many readers first see an issue: images blocked until they allow them.
    "dark-images-off": (True, True, ""),
    # Outlook.com in dark mode marks the document with data-ogsc/data-ogsb; our rules follow them.
    "outlook-dark": (False, False, "document.documentElement.setAttribute('data-ogsc', ''); document.documentElement.setAttribute('data-ogsb', '');"),
}
MAX_PHONE_HEIGHT = 5500  # px at 375 px wide: a digest to skim, the abstracts on the web version


def rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(float(part)) for part in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def hex_of(css: str) -> str:
    return "#%02x%02x%02x" % rgb(css)


def bright_panels(shot: Image.Image, size: int = 15) -> int:
    """How many pixels sit inside a bright square of `size` px: text strokes are thinner than
    that, so only a panel (a light box, an image) counts."""
    darkest_around = shot.convert("L").filter(ImageFilter.MinFilter(size))
    return sum(darkest_around.histogram()[160:])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"), require_chromium())
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go, to look at after a run: <pytest's base temp>/screenshots/."""
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


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
    issue = render_issue(load_digest(settings.site), settings.site)
    html, _ = issue.personalised(f"http://127.0.0.1:{port}/unsubscribe", f"http://127.0.0.1:{port}/preferences")
    (project / "public" / "issue.html").write_text(html, encoding="utf-8")
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(project / "public")]
    with running(server, port):
        yield f"http://127.0.0.1:{port}/issue.html"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_the_issue_in_chromium(browser: Chromium, issue_url: str, screenshots: Path, width: int, scheme: str) -> None:
    dark, images_off, script = SCHEMES[scheme]
    page = browser.page(width, dark=dark)
    if images_off:
        page.send("Network.enable")
        page.send("Network.setBlockedURLs", {"urls": ["*/assets/*"]})
    page.goto(issue_url)
    if script:
        page.evaluate(script)
    assert page.evaluate("document.compatMode") == "CSS1Compat"
    seen = page.evaluate(MEASURE)

    # Nothing scrolls sideways, and a phone scrolls through the issue in under 5,500 px.
    assert seen["viewport"] == width and seen["scrollWidth"] <= width
    if width == PHONE:
        assert seen["height"] <= MAX_PHONE_HEIGHT
    # The contents and one card per paper, stacked in one column, each inside the viewport.
    cards = seen["cards"]
    assert len(cards) == 1 + 5
    for above, below in zip(cards, cards[1:]):
        assert below["top"] >= above["bottom"] and below["left"] == above["left"]
    for card in cards:
        assert 0 <= card["left"] and card["right"] <= width
        if width == PHONE:
            assert card["width"] >= width - 2 * 12  # full width but for a narrow gutter
        else:
            assert card["width"] == 600 and card["left"] == (width - 600) / 2
    # Images loaded, never wider than the viewport or the card, and not distorted; blocked, their
    # box and alt text follow the colour scheme.
    assert len(seen["images"]) == 5
    for image in seen["images"]:
        assert image["natural"] == (0 if images_off else 1104)
        assert image["right"] <= width and image["width"] == (552 if width == DESKTOP else card["width"] - 2 * 16)
        assert abs(image["height"] / image["width"] - 290 / 552) < 0.01
        palette = LIGHT if scheme == "light" else DARK
        assert (hex_of(image["background"]), hex_of(image["colour"])) == (palette.accent_soft, palette.accent)
    assert seen["headings"] == ["H1", "H2"] + ["H2"] * 5  # the title, "오늘의 논문", each paper
    # Body text at least 14px, and every text at least 4.5:1 against what is behind it.
    assert len(seen["texts"]) > 50
    for text in seen["texts"]:
        assert text["size"] >= 14, text
        ratio = contrast(hex_of(text["colour"]), hex_of(text["background"]))
        assert ratio >= 4.5, f"{text['text']!r}: {ratio:.2f}:1 ({text['colour']} on {text['background']})"
    # Every link at least 24 px tall; the footer's links and the buttons 44 px, for a thumb.
    assert len(seen["links"]) >= 5 * 4 + 5 + 3
    assert [link for link in seen["links"] if link["height"] < 24] == []
    assert len(seen["targets"]) == 5 + 3
    assert [target for target in seen["targets"] if target["height"] < 44] == []

    # The pixels agree: the page behind the cards is light or dark as the scheme asks, and dark
    # mode has no bright panel (a thumbnail's box with images off, a light card left over).
    shot = Image.open(io.BytesIO(page.screenshot(screenshots / f"{width}-{scheme}.png"))).convert("RGB")
    corner = shot.getpixel((2, 2))
    assert (sum(corner) / 3 < 40) if scheme != "light" else (sum(corner) / 3 > 220), corner
    if scheme == "light":
        assert bright_panels(shot) > 100 * width  # the white cards: the measure does see panels
    else:
        assert bright_panels(shot) == 0


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


# -- one language per page --------------------------------------------------------------------------

LANGUAGE_SHOTS = Path("/tmp/i18n-shots")  # to look at after a run, by name: page, language, width, scheme


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory):
    """For each language, its public folder (the web version and the archive, published) and the
    sign-up page as `newsletter serve` renders it, served over HTTP: {language: base URL}."""
    project = tmp_path_factory.mktemp("sites")
    (project / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, project / "digests")
    write_thumbnails(project / "digests" / EXAMPLE_DIGEST.name)
    port = free_port()
    urls = {}
    for language in LANGUAGES:
        base = f"http://127.0.0.1:{port}/{language}"
        settings = load_settings(config_dir=project, base_url=base, public_dir=project / "public" / language,
                                 asset_base_url=f"{base}/assets", language=language)  # fmt: skip
        publish_issue(load_digest(settings.site), settings.site)
        signup = project / "public" / language / "subscribe" / "daily-papers" / "index.html"
        signup.parent.mkdir(parents=True)
        context = {**NEWSLETTER, **PAGES[0][1], "postal_address": settings.postal_address, "membership": None, "masked_email": ""}
        signup.write_text(render_template(settings.site, "subscribe.html.j2", context), encoding="utf-8")
        urls[language] = base
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(project / "public")]
    with running(server, port):
        yield urls


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
@pytest.mark.parametrize("language", LANGUAGES)
def test_each_language_in_chromium(browser: Chromium, sites: dict[str, str], language: str, width: int, scheme: str) -> None:
    """The web version, the archive and the sign-up page: in one language, fitting the width."""
    LANGUAGE_SHOTS.mkdir(exist_ok=True)
    data = [*issue_data(load_settings(config_dir=ROOT)), *PAGE_DATA]
    for name, path in [("web", "/2026-01-23/"), ("archive", "/"), ("signup", "/subscribe/daily-papers/")]:
        page = browser.page(width, dark=scheme == "dark")
        page.goto(sites[language] + path)
        seen = page.evaluate("""({lang: document.documentElement.lang, html: document.documentElement.outerHTML,
            scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)})""")
        assert seen["lang"] == language and seen["scrollWidth"] <= width, (name, seen["scrollWidth"])
        assert_speaks(language, seen["html"], [*data, *archive_entries(seen["html"])])
        page.screenshot(LANGUAGE_SHOTS / f"{name}-{language}-{width}-{scheme}.png")


# -- the preview page --------------------------------------------------------------------------


def test_the_preview_toggles_widths_and_reloads_itself(browser: Chromium, project: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")
    port = free_port()
    env = {"NEWSLETTER_DIGESTS_DIR": str(project / "digests"), "NEWSLETTER_PUBLIC_DIR": str(project / "public")}
    with serving_newsletter("preview", "--no-open", "--port", str(port), port=port, env=env):
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


def test_the_preview_fits_a_phone(browser: Chromium, project: Path, screenshots: Path) -> None:
    """On a 390 px phone the page does not scroll sideways: each frame narrows to the window."""
    port = free_port()
    env = {"NEWSLETTER_DIGESTS_DIR": str(project / "digests"), "NEWSLETTER_PUBLIC_DIR": str(project / "public")}
    with serving_newsletter("preview", "--no-open", "--port", str(port), port=port, env=env):
        page = browser.page(390)
        page.goto(f"http://127.0.0.1:{port}/")
        page.evaluate("new Promise((done) => setTimeout(done, 300))")
        width = "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        assert page.evaluate(width) == 390
        frames = "[...document.querySelectorAll('iframe')].map((frame) => frame.getBoundingClientRect().right)"
        assert max(page.evaluate(frames)) <= 390
        page.screenshot(screenshots / "preview-390.png")


# -- a missing tool fails the run ------------------------------------------------------------------


def test_a_missing_browser_or_font_fails_naming_make_test() -> None:
    missing = r"Chromium \(/nonexistent/chromium\) is not installed: `make test` installs"
    with pytest.raises(pytest.fail.Exception, match=missing):
        require_chromium("/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match=r"no NoSuchFamily Korean font is installed: `make test` installs"):
        require_chromium(require_chromium(), font="NoSuchFamily")


def test_a_missing_node_tool_fails_naming_make_test() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"no-such-tool is not installed: `make test` installs it"):
        require_node_tool("no-such-tool")
    assert require_node_tool("mjml") == NODE_BIN / "mjml"
