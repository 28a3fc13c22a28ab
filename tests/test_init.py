"""`newsletter init`: a production project in an empty folder (its commented config file, database,
signing key and list, and no demo data), from options, prompts or the defaults; never over an
existing config file, and nothing left behind by a bad answer."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from sqlalchemy import func, select

from newsletter import db
from newsletter.config import load_settings
from testkit.projects import engine_of

from .support import run_newsletter

ANSWERS = (
    "--base-url", "https://news.example.com",
    "--from", "news@example.com",
    "--postal-address", "Papers Inc., 2 Main Street, Busan 48058",
    "--list", "ai-papers",
)  # fmt: skip


def _rows(folder: Path) -> dict[str, int]:
    """How many rows the project's tables hold that demo data would fill."""
    engine = engine_of(load_settings(folder / "newsletter.toml"))
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (db.lists, db.subscribers, db.memberships, db.campaigns)
        }


def test_init_with_the_defaults_makes_a_project_and_nothing_else(tmp_path: Path) -> None:
    result = run_newsletter("init", "--yes")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"Wrote newsletter.toml; made the database sqlite:///{tmp_path}/subscribers/newsletter.db, its "
        f"signing key {tmp_path}/subscribers/secret.key (mode 600) and the list 'daily-papers' (double opt-in)."
    )
    assert lines[1] == "Next steps:"
    assert lines[3] == "  2. newsletter doctor: checks what production needs, and says how to fix what is missing."
    assert sorted(path.name for path in tmp_path.iterdir()) == ["newsletter.toml", "subscribers"]
    assert sorted(path.name for path in (tmp_path / "subscribers").iterdir()) == ["newsletter.db", "secret.key"]
    assert stat.S_IMODE((tmp_path / "subscribers" / "secret.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "subscribers").stat().st_mode) == 0o700
    config = tomllib.loads((tmp_path / "newsletter.toml").read_text())
    assert config["base_url"] == "http://127.0.0.1:8000"
    assert config["default_list"] == "daily-papers"
    assert config["database_url"] == "sqlite:///subscribers/newsletter.db"
    assert _rows(tmp_path) == {"lists": 1, "subscribers": 0, "memberships": 0, "campaigns": 0}


def test_init_takes_its_answers_from_options(tmp_path: Path) -> None:
    result = run_newsletter("init", *ANSWERS)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "newsletter.toml").read_text()
    # Commented for the reader who opens it next, and holding no secret.
    assert "# The public https address of `newsletter serve` behind its reverse proxy" in text
    assert "secret_key =" not in text and "api_key" not in text
    settings = load_settings(tmp_path / "newsletter.toml")
    assert (settings.base_url, settings.from_email, settings.postal_address, settings.default_list) == (
        "https://news.example.com",
        "news@example.com",
        "Papers Inc., 2 Main Street, Busan 48058",
        "ai-papers",
    )
    assert "readers sign up at https://news.example.com/subscribe/ai-papers" in result.stdout
    # The project works as it is: the list is there for every command.
    listed = run_newsletter("lists", "show", "ai-papers", "--json")
    assert listed.returncode == 0, listed.stderr


def test_init_asks_for_what_no_option_gives(tmp_path: Path) -> None:
    # An empty answer takes the default shown in the prompt.
    result = run_newsletter("init", "--list", "weekly-papers", input="https://papers.example.org\n\n\n")
    assert result.returncode == 0, result.stderr
    assert "Public https address (base_url) [http://127.0.0.1:8000]: " in result.stdout
    assert "Postal address for the footer [Daily Papers, 1 Example Street, Seoul 04524, Republic of Korea]: " in result.stdout
    assert "List name" not in result.stdout
    settings = load_settings(tmp_path / "newsletter.toml")
    assert (settings.base_url, settings.from_email, settings.default_list) == (
        "https://papers.example.org",
        "papers@example.com",
        "weekly-papers",
    )


def test_init_never_overwrites_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text('base_url = "https://kept.example.com"\n')
    result = run_newsletter("init", "--yes")
    assert result.returncode == 1
    assert result.stderr == (
        "error: newsletter.toml: already exists; nothing was changed (edit it, or run newsletter doctor)\n"
    )
    assert (tmp_path / "newsletter.toml").read_text() == 'base_url = "https://kept.example.com"\n'
    assert not (tmp_path / "subscribers").exists()


def test_a_bad_answer_leaves_no_config_file_and_init_can_run_again(tmp_path: Path) -> None:
    bad_address = run_newsletter("init", "--yes", "--from", "not an address")
    assert bad_address.returncode == 1
    assert bad_address.stderr.startswith("error: bad setting 'from_email' (NEWSLETTER_FROM_EMAIL, from newsletter.toml")
    assert not (tmp_path / "newsletter.toml").exists()

    bad_list = run_newsletter("init", "--yes", "--list", "no spaces")
    assert bad_list.returncode == 1
    assert bad_list.stderr.startswith("error: bad list name 'no spaces'")
    assert not (tmp_path / "newsletter.toml").exists()

    again = run_newsletter("init", "--yes", "--list", "ai-papers")
    assert again.returncode == 0, again.stderr
    assert _rows(tmp_path)["lists"] == 1


def test_init_writes_the_config_file_that_config_names(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = run_newsletter("--config", "etc/papers.toml", "init", "--yes")
    assert result.returncode == 0, result.stderr
    # Relative paths are the config file's folder's, as for every command.
    assert (tmp_path / "etc" / "subscribers" / "newsletter.db").is_file()
    assert run_newsletter("--config", "etc/papers.toml", "lists", "show", "daily-papers").returncode == 0
