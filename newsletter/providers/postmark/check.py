"""`newsletter doctor`'s look at Postmark: the server token must open GET /server (the server's
own settings, read only: nothing is sent or changed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ..base import clip
from . import http

if TYPE_CHECKING:
    from ...sections import Delivery

SERVER_PATH = "/server"


async def check(delivery: Delivery) -> tuple[str, str | None]:
    """Which server the token opens, and the fix (None when it opens one)."""
    async with http.client(delivery.section, delivery.pacing, connections=1) as client:
        try:
            answer = await http.read(await client.send(client.build_request("GET", SERVER_PATH), stream=True))
        except http.IMPOSSIBLE as error:
            return str(http.impossible(error)), "correct the setting or variable it names"
        except httpx.TransportError as error:
            return (
                f"could not reach Postmark at {delivery.section.postmark_api_url} ({http.describe(error)})",
                "check postmark_api_url and this machine's way out (DNS, firewall, HTTPS_PROXY)",
            )
    if answer.status == 401:
        return f"Postmark refused the server token ({answer.status})", "set POSTMARK_SERVER_TOKEN to the server's API token"
    if answer.status != 200 or not isinstance(answer.body, dict):
        return answer.reason, "try again later (status.postmarkapp.com)"
    name = clip(str(answer.body.get("Name", "")), 100)
    return f"the server token opens the server {name!r}", None
