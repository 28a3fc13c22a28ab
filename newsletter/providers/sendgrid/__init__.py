"""SendGrid's v3 API: mail/send (`mail`), its signed Event Webhook (`events`), its suppression lists
(`suppressions`), the one HTTP client they share (`http`) and its settings (`settings`). May import
the neutral provider types (`..base`, `..headers`), the settings, errors and database statuses.

Loaded light: the settings read `settings` here, and must not pull in httpx with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazily

if TYPE_CHECKING:
    from .mail import SendGrid, encode_body

__all__ = ["SendGrid", "encode_body"]
__getattr__ = lazily(__name__, "mail", __all__)
