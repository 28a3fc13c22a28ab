"""The templates, expanded by Jinja, are valid MJML for the reference compiler (npm `mjml`).

mjml-python (MRML) compiles leniently and never validates; the reference compiler's validator
rejects unknown tags and attributes and misplaced components. `mjml --validate` fails on any
validation error (strict validation).
"""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

from newsletter.config import Settings
from newsletter.digest import load_digest
from newsletter.render import render_mjml

from .support import require_node_tool, write_thumbnails


def validate(source: str, folder: Path) -> subprocess.CompletedProcess:
    mjml = require_node_tool("mjml")  # the reference compiler: fails, never skips, when missing
    path = folder / "issue.mjml"
    path.write_text(source, encoding="utf-8")
    return subprocess.run([str(mjml), "--validate", str(path)], capture_output=True, text=True, timeout=120)


def test_the_example_issue_is_valid_mjml(project: Path, settings: Settings, tmp_path: Path) -> None:
    write_thumbnails(project / "digests" / "2026-01-23.md")  # the <img> branch of the card
    source = render_mjml(load_digest(settings, date(2026, 1, 23)), settings)
    result = validate(source, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<mj-wrapper" in source and source.count('css-class="card"') == 5


def test_a_sparse_paper_is_valid_mjml(project: Path, settings: Settings, tmp_path: Path) -> None:
    # No thumbnail, no upvotes, no summary, no key points, no abstract: every optional block left out.
    (project / "digests" / "2026-01-26.md").write_text(
        "# 2026-01-26 Daily Papers\n\n## 1. [A paper](https://example.com/paper)\n", encoding="utf-8"
    )
    result = validate(render_mjml(load_digest(settings, date(2026, 1, 26)), settings), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_invalid_mjml(settings: Settings, tmp_path: Path) -> None:
    # The check above means something only if the validator does reject.
    source = render_mjml(load_digest(settings, date(2026, 1, 23)), settings)
    result = validate(source.replace("<mj-button ", '<mj-button made-up="1" ', 1), tmp_path)
    assert result.returncode != 0
    assert "Attribute made-up is illegal" in result.stdout + result.stderr
