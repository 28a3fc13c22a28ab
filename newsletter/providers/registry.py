"""Which mail providers there are, and the one way the rest of the package reaches them.

Each provider registers its name and where its parts live, as import paths: the settings section
(a light module of pydantic fields, read when the settings are), the factory of its Provider, and
the capabilities it has, if any (`feedback`: its webhook; `suppressions`: its suppression lists;
`check`: its credentials tried by a call that changes nothing, for `newsletter doctor`).
Nothing but the settings section is imported until a command asks for it, so that loading the
settings imports no provider's HTTP or SMTP client.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..sections import Delivery
    from .base import Feedback, Provider, Refusal, SuppressionSource


@dataclass(frozen=True)
class Registration:
    """A provider's parts. `settings` names a module with `Section` (its settings, mixed into
    Settings) and `batch_limit(delivery)`; the others are "module:callable": `factory(delivery,
    connect=...)` → Provider; `feedback(section)` → Feedback, or the Refusal that answers every
    webhook request while it is not configured; `suppressions(delivery)` → SuppressionSource;
    `check(delivery)` → an awaitable of (what it found, the fix or None when all is well), raising
    MissingAPIKey when the credentials are not set. A `delivery` (sections.Delivery) carries the
    provider's section with the pacing, the sender and the clock."""

    name: str
    settings: str
    factory: str
    feedback: str | None = None
    suppressions: str | None = None
    check: str | None = None


REGISTERED = (
    Registration(
        "sendgrid",
        settings="newsletter.providers.sendgrid.settings",
        factory="newsletter.providers.sendgrid.mail:SendGrid",
        feedback="newsletter.providers.sendgrid.events:feedback",
        suppressions="newsletter.providers.sendgrid.suppressions:Suppressions",
        check="newsletter.providers.sendgrid.check:check",
    ),
    Registration(
        "smtp",
        settings="newsletter.providers.smtp.settings",
        factory="newsletter.providers.smtp.client:SMTP",
        check="newsletter.providers.smtp.check:check",
    ),
    Registration(
        "postmark",
        settings="newsletter.providers.postmark.settings",
        factory="newsletter.providers.postmark.mail:Postmark",
        feedback="newsletter.providers.postmark.webhooks:feedback",
        suppressions="newsletter.providers.postmark.suppressions:Suppressions",
        check="newsletter.providers.postmark.check:check",
    ),
)

_BY_NAME = {registration.name: registration for registration in REGISTERED}


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def sections() -> tuple[type[BaseModel], ...]:
    """Every provider's settings section, for config to build Settings from."""
    return tuple(_settings_module(registration).Section for registration in REGISTERED)


def section(name: str) -> type[BaseModel]:
    """Provider `name`'s settings section."""
    return _settings_module(registration(name)).Section


def environment_only() -> tuple[str, ...]:
    """The provider settings a config file must not hold (secrets)."""
    return tuple(name for section in sections() for name in getattr(section, "ENVIRONMENT_ONLY", ()))


def registration(name: str) -> Registration:
    return _BY_NAME[name]


def provider_for(delivery: Delivery, *, connect: bool = True) -> Provider:
    """The configured provider, its credentials checked (nothing is connected yet). With
    `connect=False` it only prepares requests, for the dry run, and needs no credentials."""
    factory: Callable[..., Provider] = _load(registration(delivery.provider).factory)
    return factory(delivery, connect=connect)


def batch_limit(delivery: Delivery) -> int:
    """Recipients per request with the configured provider, known before it is made (a send's plan)."""
    limit: int = _settings_module(registration(delivery.provider)).batch_limit(delivery)
    return limit


def feedback(section_of: Callable[[str], BaseModel]) -> dict[str, Feedback | Refusal]:
    """Each provider that has a webhook, by name: its Feedback (built from its section, as
    `section_of(name)` gives it), or the Refusal answering it while it is not configured."""
    return {
        each.name: _load(each.feedback)(section_of(each.name)) for each in REGISTERED if each.feedback is not None
    }


def suppressions(delivery: Delivery) -> SuppressionSource | None:
    """The configured provider's suppression lists, or None if it keeps none (MissingAPIKey if
    its credentials are not set)."""
    path = registration(delivery.provider).suppressions
    return None if path is None else _load(path)(delivery)


def check(delivery: Delivery) -> Awaitable[tuple[str, str | None]] | None:
    """The configured provider's credentials tried by a call that changes nothing (`newsletter
    doctor`): awaited, what it found and the fix (None: all is well); None if it has no such call."""
    path = registration(delivery.provider).check
    return None if path is None else _load(path)(delivery)


def lazily(package: str, module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that loads `names` from its `module` when first asked for: a
    provider's package is imported for its settings section, and must not import its client then."""
    wanted = frozenset(names)

    def load(name: str) -> Any:
        if name not in wanted:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return load


def _settings_module(registration: Registration) -> ModuleType:
    return importlib.import_module(registration.settings)


@cache
def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
