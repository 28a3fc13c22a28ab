"""Settings: defaults on a fresh clone, the config file, environment overrides, bad values, and the
secrets (the SendGrid key, the signing key and its file)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from newsletter import db
from newsletter.config import load_settings
from newsletter.errors import ConfigError
from testkit.servers import free_port

from .support import ROOT, run_newsletter


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
        ('reply_to = "x\\" onmouseover=\\"alert(1)"', "reply_to"),
        ('unsubscribe_mailto = "x\\" onmouseover=\\"alert(1)"', "unsubscribe_mailto"),
        ('unsubscribe_mailto = "unsubscribe@example.com>, <https://evil.example"', "unsubscribe_mailto"),
        ("bacth_size = 10", "bacth_size"),
    ],
)
def test_a_bad_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    (tmp_path / "newsletter.toml").write_text(toml + "\n")
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_settings()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('digests_dir = "d"\n\n# sizes\nbatch_sise = 10\n', "4: unknown setting 'batch_sise'; did you mean 'batch_size'?"),
        ('  "track_open" = false\n', "1: unknown setting 'track_open'; did you mean 'track_opens'?"),
        ('base_url = "https://x.example"\n[smtp_hots]\nport = 2\n', "2: unknown setting 'smtp_hots'; did you mean 'smtp_host'?"),
        # A secret is suggested too: its own error then says where it belongs.
        ('smtp_pasword = "x"\n', "1: unknown setting 'smtp_pasword'; did you mean 'smtp_password'?"),
        ("zzz = 1\n", "1: unknown setting 'zzz'"),
    ],
)
def test_an_unknown_key_names_the_file_its_line_and_the_closest_setting(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "newsletter.toml").write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == f"{tmp_path / 'newsletter.toml'}:{message}"


def test_the_command_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text("batch_sise = 10\n")
    done = run_newsletter("lists", "list", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        f"error: {tmp_path / 'newsletter.toml'}:1: unknown setting 'batch_sise'; did you mean 'batch_size'?\n",
    )


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


def test_the_addresses_in_headers_are_validated_and_normalised(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text(
        'reply_to = "Editor@Example.COM"\nunsubscribe_mailto = "leave@Example.com"\n'
    )
    settings = load_settings()
    assert (settings.reply_to, settings.unsubscribe_mailto) == ("Editor@example.com", "leave@example.com")


API_KEY = "SG.abcdefghijklmnop.qrstuvwxyz0123456789"


@pytest.mark.parametrize("raw", [API_KEY + "\n", API_KEY + "\r\n", "  " + API_KEY + "\t"])
def test_the_api_key_loses_the_line_break_of_a_crlf_env_file(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", raw)
    assert load_settings().sendgrid_api_key.get_secret_value() == API_KEY


@pytest.mark.parametrize(
    "raw",
    [API_KEY[:10] + "\r" + API_KEY[10:], API_KEY[:10] + "\n" + API_KEY[10:], API_KEY + " x", API_KEY + "키"],
    ids=["CR inside", "LF inside", "space inside", "non-ASCII"],
)
def test_an_api_key_that_cannot_be_a_header_names_the_setting_and_never_the_key(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", raw)
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY") as raised:
        load_settings()
    assert API_KEY[:10] not in str(raised.value) and API_KEY[10:] not in str(raised.value)


def test_a_toml_multi_line_api_key_is_refused_by_the_command_without_showing_it(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(f'sendgrid_api_key = """{API_KEY[:10]}\n{API_KEY[10:]}"""\n')
    result = run_newsletter("--config", str(config), "subscribers", "sync")
    assert result.returncode == 1
    assert "bad setting 'sendgrid_api_key'" in result.stderr and "Traceback" not in result.stderr
    assert API_KEY[:10] not in result.stderr + result.stdout and API_KEY[10:] not in result.stderr


def test_an_empty_api_key_means_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", " \r\n")
    assert load_settings().sendgrid_api_key is None


def test_signing_keys_are_trimmed_and_at_least_16_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "a-long-enough-key\r\n")
    monkeypatch.setenv("NEWSLETTER_OLD_SECRET_KEYS", "an-older-signing-key, the-oldest-signing-key")
    assert load_settings().signing_keys() == [
        "a-long-enough-key",
        "an-older-signing-key",
        "the-oldest-signing-key",
    ]
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "short-key")
    with pytest.raises(ConfigError, match=r"'secret_key' \(NEWSLETTER_SECRET_KEY.*at least 16") as raised:
        load_settings()
    assert "short-key" not in str(raised.value)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "a-long-enough-key")
    monkeypatch.setenv("NEWSLETTER_OLD_SECRET_KEYS", "an-older-signing-key,old")
    with pytest.raises(ConfigError, match="'old_secret_keys'.*key 2.*at least 16"):
        load_settings()


def test_the_signing_key_file_is_made_with_the_database_readable_only_by_its_owner(tmp_path: Path) -> None:
    key_file = tmp_path / "subscribers" / "secret.key"
    key_file.parent.mkdir()  # as a fresh clone has it
    settings = load_settings()
    db.connect(settings.database).dispose()
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = settings.signing_keys()
    assert len(first[0]) >= 32 and load_settings().signing_keys() == first
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings().signing_keys()


@pytest.mark.slow
def test_the_database_folder_must_exist_and_is_never_made(tmp_path: Path) -> None:
    """A relative database_url is taken from the config file's folder; a folder missing there is
    named (a typo must not start an empty database elsewhere), and made by no command."""
    config = tmp_path / "newsletter.toml"
    config.write_text('database_url = "sqlite:///data/newsletter.db"\n')
    result = run_newsletter("--config", str(config), "lists", "list")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: bad setting 'database_url' (NEWSLETTER_DATABASE_URL): the folder {tmp_path / 'data'} "
        "does not exist; check the path, or create the folder"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["newsletter.toml"]
    (tmp_path / "data").mkdir()
    assert run_newsletter("--config", str(config), "lists", "list").returncode == 0
    assert (tmp_path / "data" / "newsletter.db").is_file()


@pytest.mark.slow
def test_a_missing_key_file_is_an_error_and_never_silently_replaced(tmp_path: Path) -> None:
    """Every link already sent is signed with the key: `serve` started where the key file is not
    must refuse to start, not sign (and check) with a new key."""
    config = tmp_path / "newsletter.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "newsletter.db"}"\n')
    settings = load_settings(config)
    db.connect(settings.database).dispose()
    key_file = tmp_path / "subscribers" / "secret.key"
    key_file.unlink()

    with pytest.raises(ConfigError, match="secret key file is missing.*NEWSLETTER_SECRET_KEY"):
        load_settings(config).signing_keys()
    result = run_newsletter("--config", str(config), "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert f"{key_file}: the secret key file is missing" in result.stderr
    assert "Restore it from a backup" in result.stderr and "Traceback" not in result.stderr
    assert not key_file.exists()


def test_a_key_file_that_cannot_be_used_is_one_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "subscribers" / "secret.key"
    key_file.mkdir(parents=True)
    with pytest.raises(ConfigError, match="secret.key: is a folder"):
        load_settings().signing_keys()
    key_file.rmdir()
    key_file.write_bytes(b"\xff\xfe" + "키".encode("utf-16-le") * 20)
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="secret.key: the secret key file is not UTF-8 text"):
        load_settings().signing_keys()
    key_file.write_text("too-short\n")
    with pytest.raises(ConfigError, match="secret.key: the secret key file's key is too short") as raised:
        load_settings().signing_keys()
    assert "too-short" not in str(raised.value)


def test_a_key_file_that_cannot_be_created_leaves_no_database_behind(tmp_path: Path) -> None:
    (tmp_path / "subscribers").mkdir()
    (tmp_path / "not-a-folder").write_text("a file where the key's folder should be")
    broken = load_settings(secret_key_file="not-a-folder/secret.key")
    with pytest.raises(ConfigError, match="not-a-folder/secret.key: cannot create the secret key file"):
        db.connect(broken.database)
    # The schema was not created without its key: the next run, with the setting fixed, makes both.
    engine = create_engine(broken.resolved_database_url)
    assert "lists" not in inspect(engine).get_table_names()
    engine.dispose()
    fixed = load_settings()
    db.connect(fixed.database).dispose()
    assert len(fixed.signing_keys()[0]) >= 32


@pytest.mark.slow
def test_processes_creating_the_key_at_once_agree_on_one_key(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from newsletter.config import load_settings\n"
        "settings = load_settings(config_dir=Path(sys.argv[1]))\n"
        "settings.ensure_signing_key()\n"
        "print(settings.signing_keys()[0])\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert [path.name for path in (tmp_path / "subscribers").iterdir()] == ["secret.key"]


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ('provider = "smtp"', {}, "smtp_host"),
        ('provider = "mailgun"', {}, "provider"),
        ('provider = "smtp"\nsmtp_host = "smtp.example.com"\nsmtp_security = "ssl"', {}, "smtp_security"),
        ('provider = "smtp"\nsmtp_host = "smtp.example.com"\nsmtp_port = 0', {}, "smtp_port"),
        (
            'provider = "smtp"\nsmtp_host = "smtp.example.com"\nsmtp_username = "sender"\n'
            'smtp_password = "in-the-file-never-shown"',
            {},
            "smtp_password",
        ),
        ('provider = "smtp"\nsmtp_host = "smtp.example.com"', {"NEWSLETTER_SMTP_PASSWORD": "pw-never-shown"}, "smtp_username"),
    ],
)
def test_a_provider_setting_that_cannot_work_stops_the_send_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], key: str
) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(toml + "\n")
    result = run_newsletter("--config", str(config), "send", "--yes", env=env, cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error:") and key in line
    assert "never-shown" not in result.stdout + result.stderr
    assert not (tmp_path / "subscribers").exists()  # nothing was created, nothing sent



def test_only_the_skins_take_the_whole_settings() -> None:
    # The rooms below the skins name what they read in their signatures: the sections.
    package = ROOT / "newsletter"
    skins = {package / name for name in ("config.py", "web.py", "daily.py", "doctor.py", "setup.py", "wiring.py")}
    whole = re.compile(r"import .*\bSettings\b|[:>] Settings\b|\bSettings\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path not in skins and package / "cli" not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if whole.search(line)
    ]
    assert offenders == []
