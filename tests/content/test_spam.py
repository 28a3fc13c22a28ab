"""The message as a reader's server receives it: the dry run's `.eml` of the example issue is
RFC-correct (76-character body lines, headers folded without breaking a URL, MIME-Version once,
List-Id) and Debian's SpamAssassin, offline, finds nothing to hold against it.

SpamAssassin runs for real (`spamassassin -L -t`: local tests only, no network); without it the
test fails, never skips: `make test` installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from testkit.projects import write_config

from ..support import EXAMPLE_DIGEST, ROOT, run_newsletter

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

SPAM_RULES_REFUSED = ("HTML_FONT_LOW_CONTRAST", "LONGLN_", "BASE64_LENGTH_", "MIME_QP_LONG_LINE")


@pytest.fixture(scope="module")
def eml(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """`make demo`'s dry run in a folder of its own: the example list, its subscribers, the issue."""
    project = tmp_path_factory.mktemp("demo")
    (project / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, project / "digests")
    write_config(project, outbox_dir=str(project / "outbox"))
    for command in (
        ("lists", "create", "daily-papers", "--description", "Top Hugging Face papers of the day"),
        ("subscribers", "import", str(ROOT / "subscribers" / "example.csv"), "--list", "daily-papers"),
        ("send", "--date", "2026-01-23", "--list", "daily-papers", "--dry-run", "--yes"),
    ):
        result = run_newsletter(*command, cwd=project)
        assert result.returncode == 0, result.stdout + result.stderr
    return (project / "outbox" / "2026-01-23" / "first-recipient.eml").read_bytes()


def test_every_line_of_the_message_is_rfc_correct(eml: bytes) -> None:
    head, _, body = eml.partition(b"\r\n\r\n")
    assert b"\n" not in eml.replace(b"\r\n", b"")  # CRLF throughout
    # Body lines within RFC 2045's 76 characters, base64 or quoted-printable alike.
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    # Headers within RFC 5322's 998; only a URL list may pass 78, never broken inside a URL.
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 or line.startswith((b"List-Unsubscribe: <", b" <")), line
    assert eml.count(b"MIME-Version:") == 1

    message = message_from_bytes(eml, policy=policy.default)
    unsubscribe = message["List-Unsubscribe"]
    assert re.fullmatch(r"<http://127\.0\.0\.1:8000/unsubscribe/[\w.-]+>", unsubscribe), unsubscribe
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "<daily-papers.example.com>"
    assert message["Subject"] == "2026년 1월 23일 — EvoCUA 외 4편"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert "MIME-Version" not in text and "MIME-Version" not in html
    # The reader's own unsubscribe link in both parts, whole.
    assert unsubscribe.strip("<>") in text.get_content() and f'href="{unsubscribe.strip("<>")}"' in html.get_content()


def test_a_list_unsubscribe_with_a_mailto_folds_between_its_urls() -> None:
    from datetime import datetime, timezone

    from newsletter.providers import Message, Recipient
    from newsletter.providers.mime import mime_message

    long_url = "https://papers.example.com/unsubscribe/" + "x" * 90
    message = Message(
        "Subject", "<p>hi</p>", "hi", "papers@example.com", "Daily Papers",
        headers={"List-Id": "<daily-papers.example.com>"},
    )  # fmt: skip
    reader = Recipient(
        "ann@example.com", None, long_url,
        headers={"List-Unsubscribe": f"<{long_url}>, <mailto:leave@example.com?subject=unsubscribe>"},
    )  # fmt: skip
    raw = mime_message(message, reader, datetime(2026, 1, 23, tzinfo=timezone.utc)).data
    assert f"List-Unsubscribe: <{long_url}>,\r\n <mailto:leave@example.com?subject=unsubscribe>\r\n".encode() in raw
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["List-Unsubscribe"] == f"<{long_url}>, <mailto:leave@example.com?subject=unsubscribe>"


def require_spamassassin() -> str:
    binary = shutil.which("spamassassin")
    if binary is None:
        pytest.fail("SpamAssassin is not installed: `make test` installs Debian's spamassassin")
    return binary


def spamassassin(eml: bytes, home: Path) -> tuple[float, list[str], str]:
    """SpamAssassin's score of a message, the rules that hit, and its whole report."""
    # -L: local tests only (no DNS blocklists, no network); HOME: its per-user files stay there.
    result = subprocess.run(
        [require_spamassassin(), "-L", "-t"],
        input=eml,
        capture_output=True,
        timeout=180,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    report = result.stdout.decode("utf-8", "replace")
    score = float(re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report).group(1))
    rules = re.findall(r"^\s*-?[\d.]+ ([A-Z][A-Z0-9_]+)\s", report[report.index("---- ----") :], re.MULTILINE)
    return score, rules, report


def test_spamassassin_finds_nothing_to_hold_against_the_issue(eml: bytes, tmp_path: Path, capsys) -> None:
    score, rules, report = spamassassin(eml, tmp_path)
    with capsys.disabled():
        print(f"\n  SpamAssassin: {score} points ({', '.join(rules)})")
    assert rules, report  # the report was read
    assert score <= 1.0, report
    assert not [rule for rule in rules if rule.startswith(SPAM_RULES_REFUSED)], report
