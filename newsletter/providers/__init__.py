"""The delivery seam: the mail providers behind one neutral vocabulary, like listmonk's messengers.

This room owns everything that knows a provider: `base` (the neutral types: Message, Batch, Answer,
Event, the Provider, Feedback and SuppressionSource protocols), `registry` (which providers there
are; the only way in from outside), one folder per provider (`sendgrid`, `smtp`…), `headers` and
`mime` (what any provider's mail headers and messages may hold), `answers` (what every HTTP
provider reads alike in an answer: retries, Retry-After, a capped body, an error page in one line)
and `outbox` (the dry run's provider). It may import the package's leaves (errors, files, digest's
personal tags) and, in a provider's own modules, the sections it is built from (a `Delivery`: its own
settings section, the pacing, the sender, the clock), database names and statuses; nothing outside it
imports a provider's folder.

The names below are loaded when first asked for: loading the settings reads the registry, and
must not pull in the send loop's types (nor a provider's client) with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import (
        MAX_REASON,
        PERSONAL_TAGS,
        PREFERENCES_TAG,
        UNSUBSCRIBE_TAG,
        Answer,
        AnswerLost,
        Batch,
        Event,
        EventKind,
        Feedback,
        Message,
        Provider,
        Recipient,
        Refusal,
        RequestImpossible,
        RequestNotSent,
        Suppression,
        SuppressionList,
        SuppressionSource,
        Verdict,
        clip,
    )
    from .registry import batch_limit, provider_for

_FROM_REGISTRY = ("batch_limit", "provider_for")

__all__ = [
    "MAX_REASON",
    "PERSONAL_TAGS",
    "PREFERENCES_TAG",
    "UNSUBSCRIBE_TAG",
    "Answer",
    "AnswerLost",
    "Batch",
    "Event",
    "EventKind",
    "Feedback",
    "Message",
    "Provider",
    "Recipient",
    "Refusal",
    "RequestImpossible",
    "RequestNotSent",
    "Suppression",
    "SuppressionList",
    "SuppressionSource",
    "Verdict",
    "batch_limit",
    "clip",
    "provider_for",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "registry" if name in _FROM_REGISTRY else "base"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
