"""Render a digest into the issue's email: Jinja2 + MJML → HTML, CSS inlined by premailer, and a
plain-text part made from the same Digest objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

# SendGrid substitution tag that each recipient's personal unsubscribe URL replaces, in both parts.
# One render serves every recipient: the sender fills this per personalization.
UNSUBSCRIBE_TAG = "-unsubscribe_url-"


@dataclass(frozen=True)
class RenderedIssue:
    date: date
    subject: str
    preheader: str
    html: str  # holds UNSUBSCRIBE_TAG where the recipient's unsubscribe URL goes
    text: str  # likewise
    language: str
    web_url: str  # the "view in browser" page of this issue

    def personalised(self, unsubscribe_url: str) -> tuple[str, str]:
        """(html, text) as one recipient receives them."""
        return (
            self.html.replace(UNSUBSCRIBE_TAG, unsubscribe_url),
            self.text.replace(UNSUBSCRIBE_TAG, unsubscribe_url),
        )
