"""Postmark's settings, mixed into Settings through the registry. The server token and the
webhook's password come only from the environment (POSTMARK_SERVER_TOKEN,
NEWSLETTER_POSTMARK_WEBHOOK_PASSWORD), never from the config file."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator

from ...fields import absolute_http_url, api_key

if TYPE_CHECKING:
    from ...sections import Delivery

# Postmark takes at most this many messages in one /email/batch request.
MAX_BATCH = 500


class Section(BaseModel):
    postmark_api_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = Field(default="broadcast", pattern=r"^[a-z0-9-]{1,100}$")
    postmark_server_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("POSTMARK_SERVER_TOKEN", "postmark_server_token"),
    )
    # Postmark does not sign its webhooks: they are taken only with these HTTP basic credentials,
    # which the webhook's URL in Postmark carries (https://user:password@host/webhooks/postmark).
    postmark_webhook_user: str | None = None
    postmark_webhook_password: SecretStr | None = None

    ENVIRONMENT_ONLY: ClassVar[tuple[str, ...]] = ("postmark_server_token", "postmark_webhook_password")

    @field_validator("postmark_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return absolute_http_url(value)

    @field_validator("postmark_server_token", "postmark_webhook_password")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return api_key(value)


def batch_limit(delivery: Delivery) -> int:
    return min(delivery.pacing.batch_size, MAX_BATCH)
