"""What a send is built from, made once per command by the skin that runs it and handed down."""

from __future__ import annotations

from dataclasses import dataclass

from ..sections import Clock, Delivery, Pacing, Sender, Site
from ..tokens import ConfirmLinks, UnsubscribeLinks


@dataclass(frozen=True)
class SendParts:
    """The issue's side (`site`: its digests, templates and outbox folder), the provider's
    (`delivery`: its section, the pacing, the sender, the clock), and the signers of the readers'
    links (`links`: unsubscribe and preferences; `confirmations`: a sign-up's confirmation)."""

    site: Site
    delivery: Delivery
    links: UnsubscribeLinks
    confirmations: ConfirmLinks

    @property
    def pacing(self) -> Pacing:
        return self.delivery.pacing

    @property
    def sender(self) -> Sender:
        return self.delivery.sender

    @property
    def clock(self) -> Clock:
        return self.delivery.clock
