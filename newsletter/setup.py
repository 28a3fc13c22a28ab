"""`newsletter init`: a new project in a folder: its commented newsletter.toml, its database and
signing key, and its list; no example subscribers and no issue (`make demo` is for those).

Nothing is overwritten: a folder that already has its config file is left as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import db
from .config import Settings, load_settings
from .errors import ConfigError, NewsletterError
from .files import write_atomic
from .providers import registry
from .subscribers import MailingList, create_list


@dataclass(frozen=True)
class Answers:
    """What `init` asks; the rest of the settings keep their defaults."""

    base_url: str
    from_email: str
    postal_address: str
    list_name: str


def default_answers() -> Answers:
    fields = Settings.model_fields
    return Answers(
        base_url=fields["base_url"].default,
        from_email=fields["from_email"].default,
        postal_address=fields["postal_address"].default,
        list_name=fields["default_list"].default,
    )


@dataclass(frozen=True)
class Project:
    """What `init` made."""

    config_file: Path
    database: str  # its URL, as it may be shown
    key_file: Path | None  # None when NEWSLETTER_SECRET_KEY signs the links
    mailing_list: MailingList


# The database and the key live in subscribers/ beside the config file, as in a checkout (where git
# ignores them); owner-only, since the database holds the readers' addresses.
DATA_FOLDER = "subscribers"


def config_text(answers: Answers) -> str:
    """The commented newsletter.toml. Values are written as JSON strings, which TOML reads alike."""

    def value(text: str) -> str:
        return json.dumps(text)

    defaults = {name: value(field.default) for name, field in Settings.model_fields.items() if isinstance(field.default, str)}
    return f"""\
# newsletter's settings (README, Configuration, lists every key). Environment variables
# NEWSLETTER_<KEY> override them; relative paths are taken from this file's folder.
# Secrets never go here: the provider's key or password and NEWSLETTER_SECRET_KEY belong in the
# environment the commands run with (e.g. /etc/newsletter/env, mode 640).

# The public https address of `newsletter serve` behind its reverse proxy: every link in an email,
# the unsubscribe links among them, is made from it.
base_url = {value(answers.base_url)}

# The sender, and the postal address every footer shows (CAN-SPAM).
from_email = {value(answers.from_email)}
from_name = {defaults["from_name"]}
postal_address = {value(answers.postal_address)}

# The list commands use without --list (newsletter init created it).
default_list = {value(answers.list_name)}

# Who delivers: {", ".join(registry.names())} (each one's settings: README, Configuration).
provider = {defaults["provider"]}

# The subscribers' database (any SQLAlchemy URL; postgresql://… works too) and the key that signs
# every unsubscribe link, made with the database, mode 600: back both up.
database_url = {value(f"sqlite:///{DATA_FOLDER}/newsletter.db")}
secret_key_file = {value(f"{DATA_FOLDER}/secret.key")}

# The day `newsletter run` sends is today in this time zone.
timezone = {defaults["timezone"]}

# Where digests come from: "none" (written by hand into digests/YYYY-MM-DD.md) or "huggingface"
# (`newsletter run` generates a missing one; README, Generating the digest).
source = {defaults["source"]}
"""


def init_project(config_file: Path, answers: Answers) -> Project:
    """Write `config_file` from `answers`, then make its database, key and list (a database and a
    list already there are kept). ConfigError when the file is there already; the error of a bad
    answer (a setting, the list's name) with the file removed again."""
    if config_file.exists():
        raise ConfigError(
            f"{config_file}: already exists; nothing was changed (edit it, or run newsletter doctor)"
        )
    write_atomic(config_file, config_text(answers))
    try:
        settings = load_settings(config_file)
        settings.path(Path(DATA_FOLDER)).mkdir(mode=0o700, exist_ok=True)
        with db.connected(settings.database) as engine, engine.begin() as conn:
            mailing_list = create_list(conn, answers.list_name, now=settings.clock(), exist_ok=True)
        settings.signing_keys()  # a database kept from before whose key file is gone: say so now
    except NewsletterError:
        # Without its config file the folder is not a project yet: init can be run again (a
        # database it made is reused, with its key).
        config_file.unlink()
        raise
    key_file = None if settings.secret_key is not None else settings.path(settings.secret_key_file)
    return Project(config_file, db.safe_url(settings.resolved_database_url), key_file, mailing_list)
