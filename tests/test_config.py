"""Settings: defaults on a fresh clone, the config file, environment overrides, and bad values."""

from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError

from .support import ROOT


def test_defaults_work_without_a_config_file(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.base_url == "http://127.0.0.1:8000"
    assert settings.assets_url == "http://127.0.0.1:8000/assets"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'subscribers' / 'newsletter.db'}"
    assert settings.templates_dir == ROOT / "templates"


def test_environment_overrides_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "newsletter.toml").write_text('base_url = "https://papers.example.com"\nbatch_size = 500\n')
    monkeypatch.setenv("NEWSLETTER_BATCH_SIZE", "250")
    settings = load_settings()
    assert settings.base_url == "https://papers.example.com"
    assert settings.batch_size == 250


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('base_url = "ftp://example.com"', "base_url"),
        ("batch_size = 5000", "batch_size"),
        ('from_email = "not an address"', "from_email"),
        ("bacth_size = 10", "bacth_size"),
    ],
)
def test_a_bad_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    (tmp_path / "newsletter.toml").write_text(toml + "\n")
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_settings()


def test_a_config_file_that_does_not_parse_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("batch_size = [\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_settings(config)


def test_the_api_key_never_shows_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.very-secret")
    settings = load_settings()
    assert settings.sendgrid_api_key.get_secret_value() == "SG.very-secret"
    assert "very-secret" not in repr(settings)


def test_the_generated_signing_key_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    settings = load_settings()
    first = settings.signing_keys()
    key_file = tmp_path / "subscribers" / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert load_settings().signing_keys() == first
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings().signing_keys()
