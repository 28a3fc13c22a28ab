"""Builds, from the Settings, the collaborators the skins (cli/, web, daily) hand down to the rooms
below them: one place, so that every skin builds them alike. Only the skins import it."""

from __future__ import annotations

from .config import Settings
from .send.parts import SendParts
from .tokens import ConfirmLinks, UnsubscribeLinks


def send_parts(settings: Settings, links: UnsubscribeLinks | None = None) -> SendParts:
    """What a send, a sign-up mail or an import's confirmations are built from; `links`: the
    unsubscribe signer already made (the web server's reads the legacy links' limit first)."""
    return SendParts(
        settings.site, settings.delivery, links or UnsubscribeLinks(settings.links), ConfirmLinks(settings.links)
    )
