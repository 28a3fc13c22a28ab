"""Settings: embedded defaults < newsletter.toml < NEWSLETTER_<KEY> environment variables < arguments.

With no config file every command works on a fresh clone. Tests set the seams (base URLs, the clock,
the database URL) here instead of patching code.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import os
import re
import secrets
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    NoDecode,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .fields import absolute_http_url, api_key
from .providers import registry
from .sections import Clock, Database, Delivery, Generation, Links, Pacing, Sender, Site

DEFAULT_CONFIG_FILE = "newsletter.toml"
PACKAGE_DIR = Path(__file__).resolve().parent

# An HMAC key shorter than this is guessable enough to forge unsubscribe links.
MIN_SIGNING_KEY_LENGTH = 16
# A key file is one line; reading no more than this keeps a wrong file from filling memory.
_MAX_KEY_FILE = 64 * 1024

# What subject_template may name: the date, its first paper's short name, " 외 4편" when
# there are more, the number of papers, the digest's title and the sender's name.
SUBJECT_FIELDS = ("date", "first", "more", "papers", "title", "from_name")

# weekly_day's values (as datetime.date.weekday() numbers them, Monday first) and their full names.
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_NAMES = dict(zip(WEEKDAYS, ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")))

def bundled_templates() -> Path:
    # Installed from a wheel the templates sit inside the package; in a checkout (or an editable
    # install) they sit at the top of the repo.
    bundled = PACKAGE_DIR / "templates"
    return bundled if bundled.is_dir() else PACKAGE_DIR.parent / "templates"


# The settings that name a folder, relative to the config file's unless absolute.
_FOLDERS = frozenset({"digests_dir", "templates_dir", "public_dir", "outbox_dir"})
_Section = TypeVar("_Section")

_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml_file", default=None)


class Settings(*registry.sections(), BaseSettings):  # type: ignore[misc]
    # validate_default=False: the defaults below are valid as written, and validating them would
    # import email-validator (a tenth of the cold start) on every command.
    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_", extra="forbid", populate_by_name=True, frozen=True, validate_default=False
    )

    # Where things are. Relative paths are taken from the config file's folder (or the current one).
    digests_dir: Path = Path("digests")
    templates_dir: Path = Field(default_factory=bundled_templates)
    public_dir: Path = Path("public")
    outbox_dir: Path = Path("outbox")
    database_url: str = "sqlite:///subscribers/newsletter.db"
    # How long to wait for a database that is locked (SQLite) or unreachable (PostgreSQL restarting)
    # before giving up: a send keeps retrying its records this long, so that no answer is lost.
    database_timeout: float = Field(default=60.0, gt=0, le=3600)

    # Where readers reach us: the archive, the unsubscribe pages and (by default) the thumbnails.
    base_url: str = "http://127.0.0.1:8000"
    asset_base_url: str | None = None

    # Who sends, and what the law asks a commercial sender to show.
    from_email: str = "papers@example.com"
    from_name: str = "Daily Papers"
    reply_to: str | None = None
    postal_address: str = "Daily Papers, 1 Example Street, Seoul 04524, Republic of Korea"
    default_list: str = "daily-papers"
    unsubscribe_mailto: str | None = None

    # What the email shows. Inbox rows already show the From name, so the subject does not repeat it.
    subject_template: str = "{date} — {first}{more}"
    # How much of each paper's abstract the email carries; the web version always carries all of it.
    email_abstract: Literal["none", "first-paragraph", "full"] = "none"
    # The one language of every page and mail readers see. None: an issue's pages and mail speak
    # its digest's language, the pages and mails no digest decides digest_language's.
    language: Literal["ko", "en"] | None = None

    # Open and click tracking, set explicitly on every request (the account's defaults are not
    # relied on). Unsubscribe links are never click-tracked, whatever these say.
    track_opens: bool = True
    track_clicks: bool = True

    # Which provider delivers mail (one of the registry's); each provider's own settings are its
    # section, mixed in below.
    provider: str = "sendgrid"
    batch_size: int = Field(default=1000, ge=1, le=1000)
    send_concurrency: int = Field(default=4, ge=1, le=64)
    send_rate_limit: float = Field(default=50.0, gt=0, description="mail/send requests per second")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=6, ge=0)

    # Signing unsubscribe links: NEWSLETTER_SECRET_KEY, else the key in this file, generated when the
    # database is created. Old keys stay valid for verification so that rotating the secret keeps
    # old links working.
    secret_key: SecretStr | None = None
    old_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    secret_key_file: Path = Path("subscribers/secret.key")

    # Readers who sign up themselves (`newsletter serve`'s /subscribe/<list>): sign-ups accepted per
    # client address per hour, beyond which the form answers the same and nothing is stored or sent;
    # whether a confirmation records the reader's IP address with their consent (personal data:
    # off unless the law you answer to asks for it).
    signup_rate_per_hour: int = Field(default=20, ge=1)
    record_consent_ip: bool = False

    # The daily run (`newsletter run`): the day it sends is today in `timezone`; the weekly edition
    # goes out on `weekly_day`; `run_lists` names the lists it sends to (None: every list).
    timezone: str = "Asia/Seoul"
    weekly_day: str = "sun"
    # How many papers the weekly edition shows: its week's most upvoted.
    weekly_top: int = Field(default=10, ge=1)
    run_lists: Annotated[list[str] | None, NoDecode] = None

    # Where the day's digest comes from: written by hand ("none"), or generated (`newsletter generate`,
    # and `newsletter run` when the day's digest is missing) from Hugging Face's Daily Papers.
    source: Literal["none", "huggingface"] = "none"
    source_url: str = "https://huggingface.co"
    digest_top: int = Field(default=5, ge=1, le=50)
    digest_language: str = "ko"
    # Who writes each paper's summary: "none" takes the source's own text (English, no key needed);
    # "openai" asks an OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama, llama.cpp…).
    # The key comes only from the environment (NEWSLETTER_LLM_API_KEY), never from the config file.
    summarizer: Literal["none", "openai"] = "none"
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_concurrency: int = Field(default=4, ge=1, le=64)
    llm_timeout: float = Field(default=120.0, gt=0)
    # Whether a generated issue goes out by itself ("auto") or waits for an editor's `newsletter
    # approve` ("approve"), the editors getting it as a test first.
    review: Literal["auto", "approve"] = "auto"
    editors: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The clock, as a seam: tests pin it here instead of patching time.
    now: datetime | None = None

    config_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(_ConfigFile(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("provider")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in registry.names():
            raise ValueError(f"Input should be {' or '.join(repr(name) for name in registry.names())}")
        return value

    @field_validator("base_url", "asset_base_url", "source_url", "llm_base_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        return absolute_http_url(value)

    @field_validator("from_email", "reply_to", "unsubscribe_mailto")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        # reply_to and unsubscribe_mailto end up in mail headers (List-Unsubscribe) and in HTML.
        from email_validator import EmailNotValidError, validate_email

        if value is None:
            return None
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as error:
            raise ValueError(str(error)) from None

    @field_validator("subject_template")
    @classmethod
    def _subject_fields(cls, value: str) -> str:
        from string import Formatter

        if not value.strip():
            raise ValueError("is empty")
        if any(char in value for char in "\r\n\t"):
            raise ValueError("must be one line: a subject is a single header line")
        braces = "write {{ and }} for literal braces"
        try:
            names = [name for _, name, _, _ in Formatter().parse(value) if name is not None]
        except ValueError as error:  # an unmatched brace
            raise ValueError(f"{error} in {value!r} ({braces})") from None
        for name in names:
            if name not in SUBJECT_FIELDS:
                known = ", ".join(f"{{{known}}}" for known in SUBJECT_FIELDS)
                raise ValueError(f"unknown field {{{name}}} in {value!r}; the fields are {known} ({braces})")
        try:
            # A format spec that does not suit its field ("{papers:%Y}") fails now, not at send time.
            value.format(**{name: 1 if name == "papers" else "x" for name in SUBJECT_FIELDS})
        except ValueError as error:
            raise ValueError(f"{error} in {value!r}") from None
        return value

    @field_validator("llm_api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return api_key(value)

    @field_validator("timezone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone this machine knows; use an IANA name such as 'Asia/Seoul' or 'UTC'") from None
        return value.strip()

    @field_validator("weekly_day")
    @classmethod
    def _weekday(cls, value: str) -> str:
        day = value.strip().lower()
        for name in WEEKDAYS:
            if day in (name, _WEEKDAY_NAMES[name]):
                return name
        raise ValueError(f"{value!r} is not a weekday name; use one of {', '.join(WEEKDAYS)} (or the full English name)")

    @field_validator("run_lists", mode="before")
    @classmethod
    def _list_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None  # NEWSLETTER_RUN_LISTS= (empty) means not set: every list
            value = value.split(",")
        if isinstance(value, list):
            names = [name.strip() for name in value if isinstance(name, str)]
            if len(names) == len(value) and not all(names):
                raise ValueError("holds an empty list name")
            if not value:
                raise ValueError("is empty: name at least one list, or leave the setting out to send to every list")
            return names if len(names) == len(value) else value
        return value

    @field_validator("editors", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        from email_validator import EmailNotValidError, validate_email

        if isinstance(value, str):  # NEWSLETTER_EDITORS=a@example.com,b@example.com
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            return value
        addresses = []
        for item in value:
            try:
                addresses.append(validate_email(str(item).strip(), check_deliverability=False).normalized)
            except EmailNotValidError as error:
                raise ValueError(f"{item!r}: {error}") from None
        return addresses

    @field_validator("old_secret_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("secret_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if problem := _signing_key_problem(key):
            raise ValueError(problem)
        return SecretStr(key)

    @field_validator("old_secret_keys")
    @classmethod
    def _old_signing_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        keys = [key.get_secret_value().strip() for key in value]
        for number, key in enumerate(keys, start=1):
            if problem := _signing_key_problem(key):
                raise ValueError(f"key {number}: {problem}")
        return [SecretStr(key) for key in keys]

    # -- derived values ------------------------------------------------------------------------

    def path(self, value: Path) -> Path:
        """A configured path, resolved against the config file's folder."""
        return value if value.is_absolute() else self.config_dir / value

    @property
    def assets_url(self) -> str:
        return self.asset_base_url or f"{self.base_url}/assets"

    @property
    def resolved_database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and not self.database_url.startswith(prefix + "/"):
            rest = self.database_url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.path(Path(rest)))
        return self.database_url

    @property
    def clock(self) -> Clock:
        """The current time (called), pinned by `now` in tests, and the day in `timezone`."""
        return Clock(self.now, self.timezone)

    # -- the sections handed to the parts below the skins (newsletter.sections) ---------------

    @property
    def database(self) -> Database:
        return Database(self.resolved_database_url, self.database_timeout, self.ensure_signing_key)

    @property
    def pacing(self) -> Pacing:
        return self._section(Pacing)

    @property
    def sender(self) -> Sender:
        return self._section(Sender)

    @property
    def site(self) -> Site:
        return self._section(Site)

    @property
    def links(self) -> Links:
        return self._section(Links)

    @property
    def generation(self) -> Generation:
        return self._section(Generation)

    @property
    def delivery(self) -> Delivery:
        return Delivery(self.provider, self.provider_section(self.provider), self.pacing, self.sender, self.clock)

    def _section(self, section: type[_Section]) -> _Section:
        """`section` (a dataclass of newsletter.sections) filled with the settings of its fields'
        names, the folders resolved against the config file's."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(section)}
        return section(**{name: self.path(value) if name in _FOLDERS else value for name, value in values.items()})

    def provider_section(self, name: str) -> BaseModel:
        """Provider `name`'s own settings (its settings module's Section), as set here."""
        section = registry.section(name)
        return section.model_construct(**{field: getattr(self, field) for field in section.model_fields})

    def signing_keys(self) -> list[str]:
        """The secret that signs new links first, then every older key still accepted."""
        current = self.secret_key.get_secret_value() if self.secret_key else self._key_from_file()
        return [current, *(key.get_secret_value() for key in self.old_secret_keys)]

    def ensure_signing_key(self) -> None:
        """Create the key file of a new database (db.migrate calls this as it creates the schema).

        Only then: every link already sent is signed with this key, so a key file that goes missing
        later is an error (signing_keys), never silently replaced by a new key. A key file already
        there (a database recreated beside it, another process that got there first) is kept.
        """
        if self.secret_key is not None:
            return
        key_file = self.path(self.secret_key_file)
        try:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under a temporary name (owner-only, as mkstemp creates it), then linked
            # into place: link() fails if the name exists, so of two processes creating the key one
            # wins and the other keeps it, and no reader ever sees a half-written key.
            fd, temporary = tempfile.mkstemp(prefix=f".{key_file.name}.", dir=key_file.parent)
        except OSError as error:
            raise ConfigError(f"{key_file}: cannot create the secret key file ({error.strerror})") from None
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, key_file)
        except FileExistsError:
            pass
        except OSError as error:
            raise ConfigError(f"{key_file}: cannot create the secret key file ({error.strerror})") from None
        finally:
            os.unlink(temporary)

    def _key_from_file(self) -> str:
        key_file = self.path(self.secret_key_file)
        try:
            # Non-blocking, then checked on the open file: a FIFO or a device in its place would
            # otherwise hang the command on the read (and a check before opening could be raced).
            fd = os.open(key_file, os.O_RDONLY | os.O_NONBLOCK)
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    raise ConfigError(f"{key_file}: is a folder, not the secret key file (secret_key_file)")
                if not stat.S_ISREG(mode):
                    raise ConfigError(
                        f"{key_file}: is not a regular file (a pipe, socket or device?); secret_key_file "
                        "must name the file that holds the signing key"
                    )
                if stat.S_IMODE(mode) & 0o077:
                    raise ConfigError(
                        f"{key_file}: the secret key file must be readable only by its owner "
                        f"(mode is {stat.S_IMODE(mode):o}; run: chmod 600 {key_file})"
                    )
                key = os.read(fd, _MAX_KEY_FILE).decode("utf-8").strip()
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ConfigError(
                f"{key_file}: the secret key file is missing. It is made when the database is created "
                "and signs every unsubscribe link already sent, so it is not made again on its own "
                "(those links would stop working). Restore it from a backup (chmod 600), or set "
                "NEWSLETTER_SECRET_KEY to the key it held; if no email was ever sent with this "
                "database, a new random key of 16 or more characters in either place will do. Relative "
                "paths are taken from the config file's folder, else the current one: was the command "
                "started from another folder?"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{key_file}: the secret key file is not UTF-8 text") from None
        except OSError as error:
            raise ConfigError(f"{key_file}: cannot read the secret key file ({error.strerror})") from None
        if problem := _signing_key_problem(key):
            raise ConfigError(f"{key_file}: the secret key file's key {problem}")
        return key


# Secrets a config file must not hold: it is shared, copied and committed far more than an environment.
_ENVIRONMENT_ONLY = ("llm_api_key", *registry.environment_only())


class _ConfigFile(TomlConfigSettingsSource):
    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        variables = {name: variable for variable, name in reversed(environment_names().items())}
        for key in _ENVIRONMENT_ONLY:
            if key in values or variables[key] in values:
                raise ValueError(f"{key} must not be in the config file: set {variables[key]} in the environment")
        return values


def _signing_key_problem(key: str) -> str | None:
    """What makes a signing key unusable (never quoting it), or None."""
    if len(key) < MIN_SIGNING_KEY_LENGTH:
        return f"is too short: it must have at least {MIN_SIGNING_KEY_LENGTH} characters"
    return None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the defaults, the config file, the environment and `overrides`, in that order.

    `config` names a TOML file; without it ./newsletter.toml is read if it exists.
    """
    if config is None:
        candidate = Path.cwd() / DEFAULT_CONFIG_FILE
        config_file = candidate if candidate.is_file() else None
    else:
        config_file = Path(config)
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: config file not found")
    config_dir = config_file.resolve().parent if config_file else Path.cwd()
    token = _toml_file.set(config_file)
    try:
        return Settings(**{"config_dir": config_dir, **overrides})
    except ValidationError as error:
        raise ConfigError(_describe(error, config_file)) from None
    except ValueError as error:  # a TOML syntax error, or an environment value that does not parse
        raise ConfigError(f"{config_file or 'the environment'}: {error}") from None
    finally:
        _toml_file.reset(token)


def environment_names() -> dict[str, str]:
    """Every environment variable a setting is read from → that setting's name."""
    names = {}
    for name, field in Settings.model_fields.items():
        if field.exclude:
            continue
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [f"NEWSLETTER_{name}"]
        names.update({str(choice).upper(): name for choice in choices})
    return names


def environment_warnings(environ: Mapping[str, str]) -> list[str]:
    """One warning per NEWSLETTER_* variable that no setting reads (a typo is otherwise silently
    ignored and the default used), naming the closest known variable. Values are never quoted."""
    known = environment_names()
    # Compared without the shared prefix, which would make every name look alike.
    by_stem = {name.removeprefix("NEWSLETTER_"): name for name in known}
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("NEWSLETTER_") or upper in known:
            continue
        close = _closest(upper.removeprefix("NEWSLETTER_"), by_stem)
        hint = f"; did you mean {by_stem[close]}?" if close else ""
        warnings.append(f"environment variable {variable} is not a setting and is ignored{hint}")
    return warnings


def _closest(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, or None: the one way a setting's
    name is suggested, for the environment's variables and the config file's keys."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(key: str, config_file: Path | None) -> str:
    """`newsletter.toml:4: unknown setting 'batch_sise'; did you mean 'batch_size'?`: a key of the
    config file that is no setting (or a key given to load_settings, without a file)."""
    # Secrets too: `smtp_pasword` is best answered with smtp_password, whose own error then says
    # that it belongs in the environment.
    close = _closest(key, (name for name, field in Settings.model_fields.items() if not field.exclude))
    unknown = f"unknown setting {key!r}" + (f"; did you mean {close!r}?" if close else "")
    if config_file is None:
        return unknown
    line = _key_line(config_file, key)
    return f"{config_file}:{line}: {unknown}" if line else f"{config_file}: {unknown}"


def _key_line(config_file: Path, key: str) -> int | None:
    """The line of the config file that sets `key` (`key = …`, a dotted `key.sub = …`, or a
    `[key]` table), or None. tomllib tells no positions, so the file is scanned for the key at the
    start of a line, bare or quoted."""
    quoted = re.escape(key)
    starts = re.compile(rf"""\s*\[*\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*[=.\]]""")
    try:
        lines = config_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((number for number, line in enumerate(lines, start=1) if starts.match(line)), None)


def _describe(error: ValidationError, config_file: Path | None) -> str:
    where = f"{config_file} or the environment" if config_file else "the environment"
    names = environment_names()
    aliases = {variable: name for variable, name in names.items() if not variable.startswith("NEWSLETTER_")}
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # a rule about several settings names them itself
            lines.append(f"bad settings (from {where}): {message}")
            continue
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            # Only a file (or the caller) can give a key that is no setting: the environment
            # source reads the variables of known settings alone.
            lines.append(_unknown_key(key, config_file))
            continue
        # A value given under its alias is reported under the setting's name.
        key = aliases.get(key.upper(), key)
        env = next((variable for variable, name in names.items() if name == key), f"NEWSLETTER_{key.upper()}")
        lines.append(f"bad setting '{key}' ({env}, from {where}): {message}")
    return "\n".join(lines)
