"""The SMTP server's settings, mixed into Settings through the registry. The password comes only
from the environment (NEWSLETTER_SMTP_PASSWORD), never from the config file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

if TYPE_CHECKING:
    from ...sections import Delivery


class Section(BaseModel):
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"

    ENVIRONMENT_ONLY: ClassVar[tuple[str, ...]] = ("smtp_password",)

    @model_validator(mode="after")
    def _smtp_complete(self) -> Any:
        if getattr(self, "provider", None) == "smtp" and not self.smtp_host:
            raise ValueError("'smtp_host' (NEWSLETTER_SMTP_HOST) must be set when provider is 'smtp'")
        if self.smtp_password is not None and not self.smtp_username:
            raise ValueError("'smtp_username' must be set when NEWSLETTER_SMTP_PASSWORD is")
        return self


def batch_limit(delivery: Delivery) -> int:
    """Each reader's message goes on its own, so that each gets an exact outcome (sent, refused, or
    uncertain) of its own."""
    return 1
