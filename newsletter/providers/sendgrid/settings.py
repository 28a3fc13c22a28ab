"""SendGrid's settings, mixed into Settings through the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator

from ...fields import absolute_http_url, api_key

if TYPE_CHECKING:
    from ...sections import Delivery


class Section(BaseModel):
    sendgrid_api_url: str = "https://api.sendgrid.com"
    sendgrid_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SENDGRID_API_KEY", "sendgrid_api_key"),
    )
    sendgrid_webhook_public_key: str | None = None

    ENVIRONMENT_ONLY: ClassVar[tuple[str, ...]] = ()

    @field_validator("sendgrid_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return absolute_http_url(value)

    @field_validator("sendgrid_api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        return api_key(value)


def batch_limit(delivery: Delivery) -> int:
    return delivery.pacing.batch_size
