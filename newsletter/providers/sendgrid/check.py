"""`newsletter doctor`'s look at SendGrid: the API key's scopes (GET /v3/scopes, which changes
nothing and sends nothing) must include mail.send."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

from .. import answers
from . import http

if TYPE_CHECKING:
    from ...sections import Delivery

SCOPES_PATH = "/v3/scopes"
SEND_SCOPE = "mail.send"


async def check(delivery: Delivery) -> tuple[str, str | None]:
    """What the key may do, and the fix (None when it may send mail)."""
    async with http.client(delivery.section, delivery.pacing, connections=1) as client:
        try:
            response = await client.send(client.build_request("GET", SCOPES_PATH), stream=True)
        except tuple(http.IMPOSSIBLE) as error:
            return str(http.impossible(error)), "correct the setting or variable it names"
        except httpx.TransportError as error:
            return (
                f"could not reach SendGrid at {delivery.section.sendgrid_api_url} ({http.describe(error)})",
                "check sendgrid_api_url and this machine's way out (DNS, firewall, HTTPS_PROXY)",
            )
        content = await answers.read_capped(response, http.MAX_ANSWER_BYTES)
    if response.status_code in (401, 403):
        return f"SendGrid refused the API key ({response.status_code})", "set SENDGRID_API_KEY to a key SendGrid accepts"
    if response.status_code != 200:
        return http.read_answer(response, content).reason, "try again later (status.sendgrid.com)"
    try:
        scopes = json.loads(content)["scopes"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"SendGrid answered GET {SCOPES_PATH} with something that is not a list of scopes", "check sendgrid_api_url"
    if SEND_SCOPE not in scopes:
        return (
            f"the API key lacks the {SEND_SCOPE} scope ({len(scopes)} other scopes)",
            "give the key the Mail Send permission in SendGrid (Settings, API Keys), or make one that has it",
        )
    return f"the API key has the {SEND_SCOPE} scope", None
