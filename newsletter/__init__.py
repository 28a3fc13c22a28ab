"""newsletter: turn a day's research digest into a responsive email and deliver it, once, through a mail provider (newsletter/providers/)."""

from .errors import NewsletterError

__version__ = "0.1.0"
__all__ = ["NewsletterError", "__version__"]
