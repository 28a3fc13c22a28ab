"""What the commands say, word for word: option names in help, bad dates and weeks, a send's and a
test send's summary, sizes that agree between `render`, `check` and `send`, tables that fit 80
columns, and the sign-up pages `serve` names at its start."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from newsletter.content.checks import kilobytes, received_bytes
from newsletter.content.digest import load_issue
from newsletter.content.render import render_issue
from testkit.projects import add_list, configure, seed
from testkit.servers import free_port, wait_for_port

from ..support import run_newsletter, start_newsletter

NARROW = {"COLUMNS": "80"}


@pytest.mark.parametrize(
    ("command", "lines"),
    [
        (("send",), ["  --date DATE ", "  --week WEEK ", "  --list LIST ", "  --to ADDRESS ", "  --outbox FOLDER "]),
        (("report",), ["  --date DATE ", "  --week WEEK ", "  --last N ", "  --list LIST "]),
        (("subscribers", "add"), ["  --list LIST ", "  --attr KEY=VALUE ", "  --name NAME "]),
        (("run",), ["  --date DATE "]),
    ],
)
def test_help_names_what_each_option_takes_in_words(command: tuple[str, ...], lines: list[str]) -> None:
    done = run_newsletter(*command, "--help")
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("Options:")[1]
    for line in lines:
        assert line in options, (line, done.stdout)
    # No type notation of the parser's, nor settings' attribute paths.
    assert not re.search(r"<(%|str|int|path|list)", options) and "settings." not in done.stdout


def test_every_command_names_its_arguments_in_words_alone() -> None:
    for command in (("subscribers", "add"), ("subscribers", "import"), ("subscribers", "remove"), ("lists", "create")):
        done = run_newsletter(*command, "--help")
        assert done.returncode == 0, done.stderr
        usage, rest = done.stdout.split("\n", 1)
        assert "{" not in usage and not re.search(r"<(str|int|path|list)", rest), done.stdout
    assert run_newsletter("subscribers", "add", "--help").stdout.split("\n", 1)[0].endswith(" subscribers add [OPTIONS] ADDRESS")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check", "--date", "2026-13-01"), "error: --date: '2026-13-01' is not a date; use YYYY-MM-DD, e.g. 2026-01-23"),
        (("report", "--date", "23/01/2026"), "error: --date: '23/01/2026' is not a date; use YYYY-MM-DD, e.g. 2026-01-23"),
        (("generate", "--date", "2026-02-30"), "error: --date: '2026-02-30' is not a date; use YYYY-MM-DD, e.g. 2026-01-23"),
        (("send", "--week", "2026W4"), "error: --week: '2026W4' is not a week; use YYYY-Www, e.g. 2026-W04"),
        (("status", "--week", "2026-W54"), "error: --week: '2026-W54' is not a week; use YYYY-Www, e.g. 2026-W04"),
        (("render", "--date", "2026-01-23", "--week", "2026-W04"), "error: give --date or --week, not both"),
        (("report", "--date", "2026-01-23", "--last", "3"), "error: give one of --date, --week and --last"),
    ],
)
def test_a_bad_date_or_week_is_one_line_in_our_words_and_a_usage_error(args: tuple[str, ...], message: str) -> None:
    done = run_newsletter(*args)
    assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", "")


def test_run_json_carries_the_same_words_for_a_bad_date() -> None:
    done = run_newsletter("run", "--date", "2026-13-01", "--json")
    assert done.returncode == 2
    assert '"error": "--date: \'2026-13-01\' is not a date; use YYYY-MM-DD, e.g. 2026-01-23"' in done.stdout.splitlines()[-1]


# -- sizes -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_render_check_and_send_report_one_size_and_say_which(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    issue = render_issue(load_issue(settings.site, None), settings.site)
    received = kilobytes(received_bytes(issue.html))
    assert received != kilobytes(issue.html_bytes)  # each reader's links are longer than their placeholders

    rendered = run_newsletter("render", "--out", "issue.html", cwd=project)
    checked = run_newsletter("check", cwd=project)
    summary = run_newsletter("send", "--dry-run", cwd=project, input="n\n")

    assert f"HTML     {received} as a reader receives it (Gmail clips at 102 KB)\n" in rendered.stdout
    assert (
        f"wrote    issue.html ({kilobytes(issue.html_bytes)}: placeholders for each reader's links)\n" in rendered.stdout
    )
    assert checked.stdout.startswith(f"HTML size {received} as a reader receives it, of 90 KB (ok); cards #1 ")
    assert re.search(rf"HTML size +{re.escape(received)} as a reader receives it *\n", summary.stdout), summary.stdout


@pytest.mark.slow
def test_check_wraps_its_figures_whole_at_80_columns(project: Path) -> None:
    configure(project)
    done = run_newsletter("check", cwd=project, env=NARROW)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    size = lines[:-1]  # the last line is the verdict
    assert len(size) > 1 and all(len(line) <= 80 for line in lines), done.stdout
    for line in size:
        assert line.endswith("KB,") or line.endswith("KB"), line  # each line ends with a whole figure
    for line in size[1:]:
        assert re.match(r"  #\d \d+\.\d KB", line), line  # and the next starts with one


# -- a send's summary -------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_smtp_send_counts_one_message_per_reader(project: Path) -> None:
    settings = configure(project, provider="smtp", smtp_host="127.0.0.1", smtp_security="none")
    seed(settings, 3)
    done = run_newsletter("send", "--dry-run", cwd=project, input="n\n")
    assert re.search(r"\n *Recipients +3 daily member\(s\) *\n *Messages +3, one per reader *\n", done.stdout), done.stdout
    assert "Requests" not in done.stdout


@pytest.mark.slow
def test_a_sendgrid_send_counts_requests_of_up_to_its_batch(project: Path) -> None:
    settings = configure(project, batch_size=2)
    seed(settings, 3)
    done = run_newsletter("send", "--dry-run", cwd=project, input="n\n")
    assert re.search(r"\n *Requests +2, each of up to 2 recipients *\n", done.stdout), done.stdout


@pytest.mark.slow
def test_a_test_send_says_one_thing_of_what_it_records(project: Path) -> None:
    seed(configure(project), 1)
    done = run_newsletter("send", "--dry-run", "--yes", "--to", "editor@example.com", cwd=project)
    assert done.returncode == 0, done.stderr
    recorded = "recorded as test messages, never as the issue's delivery"
    assert re.search(rf"\n *Test to +editor@example\.com \({recorded}\) *\n", done.stdout), done.stdout
    assert f"A real test send would mail 1 address(es): {recorded}.\n" in done.stdout
    assert "not recorded" not in done.stdout and "record nothing" not in done.stdout


# -- tables and start-up lines -----------------------------------------------------------------------


@pytest.mark.slow
def test_lists_list_fits_80_columns(project: Path) -> None:
    settings = configure(project)
    seed(settings, 2)
    add_list(settings, "weekly-robotics", "Robotics papers of the week, from the daily digests, every Sunday")
    done = run_newsletter("lists", "list", cwd=project, env=NARROW)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), done.stdout
    assert lines[0].split() == ["list", "opt-in", "subscribed", "unconfirmed", "unsubscribed", "bounced", "complained"]
    assert lines[1].split() == ["daily-papers", "double", "2", "0", "0", "0", "0"]
    assert lines[2].split()[1:] == ["double", "0", "0", "0", "0", "0"] and "Robotics papers" in done.stdout


@pytest.mark.slow
def test_serve_prints_each_lists_sign_up_page_at_start(project: Path) -> None:
    settings = configure(project, base_url="https://news.example.com")
    seed(settings, 1)
    add_list(settings, "weekly")
    port = free_port()
    server = start_newsletter("serve", "--port", str(port), cwd=project)
    try:
        wait_for_port(port, 60, server)
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert out.startswith(
        "Sign-up pages:\n"
        "  daily-papers  https://news.example.com/subscribe/daily-papers\n"
        "  weekly        https://news.example.com/subscribe/weekly\n"
    ), out + err
    assert "/subscribe/<list>" in run_newsletter("serve", "--help").stdout
