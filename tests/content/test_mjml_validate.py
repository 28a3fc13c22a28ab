"""The templates, expanded by Jinja, are valid MJML for the reference compiler (npm `mjml`), and
it compiles them to what render.py makes of them with mjml-python.

mjml-python (MRML) compiles leniently and never validates; the reference compiler's validator
rejects unknown tags and attributes and misplaced components. `mjml --validate` fails on any
validation error (strict validation). The reference compiler also inlines <mj-style inline>
itself, which render.py does with premailer after mjml-python: both must come to the same
elements, classes and inline styles.
"""

from __future__ import annotations

import re
import subprocess
from datetime import date
from pathlib import Path

import lxml.html
import pytest

from newsletter.config import Settings
from newsletter.content.digest import load_digest
from newsletter.content.render import render_issue, render_mjml

from ..support import require_node_tool, write_thumbnails

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out


def validate(source: str, folder: Path) -> subprocess.CompletedProcess:
    mjml = require_node_tool("mjml")  # the reference compiler: fails, never skips, when missing
    path = folder / "issue.mjml"
    path.write_text(source, encoding="utf-8")
    return subprocess.run([str(mjml), "--validate", str(path)], capture_output=True, text=True, timeout=120)


def test_the_example_issue_is_valid_mjml(project: Path, settings: Settings, tmp_path: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")  # the <img> branch of the card
    source = render_mjml(load_digest(settings.site, date(2026, 1, 23)), settings.site)
    result = validate(source, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert source.count('css-class="gutter card"') == 5


def test_a_sparse_paper_is_valid_mjml(project: Path, settings: Settings, tmp_path: Path) -> None:
    # No thumbnail, no upvotes, no summary, no key points, no abstract: every optional block left out.
    (project / "digests" / "2026-01-26.md").write_text(
        "# 2026-01-26 Daily Papers\n\n## 1. [A paper](https://example.com/paper)\n", encoding="utf-8"
    )
    result = validate(render_mjml(load_digest(settings.site, date(2026, 1, 26)), settings.site), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_invalid_mjml(settings: Settings, tmp_path: Path) -> None:
    # The check above means something only if the validator does reject.
    source = render_mjml(load_digest(settings.site, date(2026, 1, 23)), settings.site)
    result = validate(source.replace("<mj-button ", '<mj-button made-up="1" ', 1), tmp_path)
    assert result.returncode != 0
    assert "Attribute made-up is illegal" in result.stdout + result.stderr


def compile_with_reference(source: str, folder: Path) -> str:
    mjml = require_node_tool("mjml")
    path = folder / "issue.mjml"
    path.write_text(source, encoding="utf-8")
    result = subprocess.run([str(mjml), str(path), "-s"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def css_value(value: str) -> str:
    """`value` spelt one way: premailer writes the style attributes it adds to through cssutils,
    which shortens #ffffff to #fff and 0px to 0."""
    value = re.sub(
        r"#([0-9a-f]{3}){1,2}\b",
        lambda colour: (colour[0] if len(colour[0]) == 7 else "#" + "".join(2 * c for c in colour[0][1:])).lower(),
        value.strip(),
        flags=re.IGNORECASE,
    )
    return re.sub(r"(?<![\w.])0(?:px|em|pt)\b", "0", value)


def structure(html: str) -> list[tuple[str, tuple[str, ...], dict[str, str], str | None]]:
    """Every element inside the email's wrapper (the preheader's parent: the compilers put the
    body's class on different elements): its tag, classes, inline style declarations and link."""
    wrapper = lxml.html.document_fromstring(html).find_class("preheader")[0].getparent()
    elements = []
    for element in wrapper.iterdescendants():
        if not isinstance(element.tag, str):
            continue  # comments: MSO conditionals
        style = dict(
            (name.strip(), css_value(value))
            for name, _, value in (part.partition(":") for part in (element.get("style") or "").split(";"))
            if name.strip()
        )
        classes = tuple(sorted((element.get("class") or "").split()))
        elements.append((element.tag, classes, style, element.get("href") or element.get("src")))
    return elements


@pytest.mark.parametrize("day", ["2026-01-23", "2026-01-26"])
def test_the_reference_compiler_makes_the_same_email(project: Path, settings: Settings, tmp_path: Path, day: str) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")
    (project / "digests" / "2026-01-26.md").write_text(  # every optional block left out
        "# 2026-01-26 Daily Papers\n\n## 1. [A paper](https://example.com/paper)\n", encoding="utf-8"
    )
    digest = load_digest(settings.site, date.fromisoformat(day))
    ours = render_issue(digest, settings.site).html
    reference = compile_with_reference(render_mjml(digest, settings.site), tmp_path)

    mine, theirs = structure(ours), structure(reference)
    assert len(mine) > 40
    assert [element[:2] for element in mine] == [element[:2] for element in theirs]  # tags and classes
    assert mine == theirs  # inline styles and links too
    document = lxml.html.document_fromstring(reference)
    assert document.get("lang") == digest.language
    # The same text (the reference compiler indents its output, so whitespace is left out).
    assert "".join(document.find("body").text_content().split()) == "".join(
        lxml.html.document_fromstring(ours).find("body").text_content().split()
    )
