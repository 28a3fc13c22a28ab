"""Any SMTP server (`client`, through aiosmtplib) and its settings (`settings`). May import the
neutral provider types (`..base`, `..mime`, `..headers`), the settings and errors.

Loaded light: the settings read `settings` here, and must not pull in aiosmtplib with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazily

if TYPE_CHECKING:
    from .client import SMTP, Envelope

__all__ = ["SMTP", "Envelope"]
__getattr__ = lazily(__name__, "client", __all__)
