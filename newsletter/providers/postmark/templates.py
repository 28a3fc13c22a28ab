"""The issue as a Postmark template, so that a batch carries each reader's links rather than 500
copies of the issue: /email/batchWithTemplates with a TemplateModel of those links (about 700 bytes
a reader, not 48 KB; Postmark takes at most 50 MB a request).

The template is the mailing's subject, HTML and text with each personal tag turned into a
triple-braced Mustachio value (output as it is, as /email/batch would carry it), sent with
InlineCss false, so that every reader gets the same bytes either way. An issue that Mustachio
would read otherwise (it holds "{{"), or that Postmark will not take as a template, goes out whole
in /email/batch instead.

Its alias is the day it was made and a digest of what it holds ("newsletter-20260123-…"): a send
resumed the same day finds the one it made, and two mailings never share one. A server holds at
most 100 templates, so making one first deletes this tool's templates made KEPT_DAYS or more days
before. None is deleted sooner: Postmark does not say that a message it accepted has been
rendered, and a send of the same day, another list's, may be using its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from datetime import date, timedelta

import httpx

from ..base import PERSONAL_TAGS, Answer, RequestNotSent, Verdict
from . import http

log = logging.getLogger(__name__)

TEMPLATES = "/templates"
PREFIX = "newsletter-"
KEPT_DAYS = 2
# Postmark lists at most this many templates a page; a server holds at most 100.
LIST_PAGE = 100

# Below this many readers a batch carries whole copies: a template costs requests of its own (the
# stale ones listed, it made) and a place among the server's 100, and a small batch's copies are a
# megabyte or so.
TEMPLATED_FROM = 20

# Postmark's ErrorCode for a TemplateAlias that names no template of the server.
TEMPLATE_NOT_FOUND = 1101

# Each personal tag's name in the TemplateModel: "-unsubscribe_url-" is {{{unsubscribe_url}}}.
MODEL_KEYS: Mapping[str, str] = {tag: tag.strip("-") for tag in PERSONAL_TAGS}
# The personal tags where a whole copy fills them: left to right, so that tags sharing a dash
# ("-preferences_url-unsubscribe_url-") are read alike in a template and in a whole copy.
TAGS = re.compile("|".join(re.escape(tag) for tag in PERSONAL_TAGS))
# A tag next to a brace would make "{{{{" or "}}}}" of it, which Mustachio reads its own way.
_BRACED_TAG = re.compile("|".join(f"[{{}}]{re.escape(tag)}|{re.escape(tag)}[{{}}]" for tag in PERSONAL_TAGS))
# This tool's aliases, exactly: another template named alike is not ours to delete.
_OURS = re.compile(rf"{PREFIX}(\d{{8}})-[0-9a-f]{{32}}")


@dataclass(frozen=True)
class Template:
    alias: str
    subject: str
    html: str
    text: str

    @property
    def body(self) -> bytes:
        """POST /templates's body."""
        name = f"Newsletter: {self.subject}"[:100]
        fields = {"Name": name, "Alias": self.alias, "Subject": self.subject, "HtmlBody": self.html,
                  "TextBody": self.text, "TemplateType": "Standard"}  # fmt: skip
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def template_of(subject: str, html: str, text: str, headers: Mapping[str, str], day: date) -> Template | None:
    """The mailing as a template made on `day`, or None when Mustachio would not give it back as it is."""
    if any("{{" in part or _BRACED_TAG.search(part) for part in (subject, html, text)):
        return None
    html, text = (TAGS.sub(lambda tag: "{{{%s}}}" % MODEL_KEYS[tag[0]], part) for part in (html, text))
    # The mailing's own headers (its List-Id) are in the digest: two lists sent the same issue
    # have a template each.
    digest = hashlib.sha256(json.dumps([subject, html, text, sorted(headers.items())]).encode()).hexdigest()
    return Template(f"{PREFIX}{day:%Y%m%d}-{digest[:32]}", subject, html, text)


def gone(answer: http.HTTPAnswer) -> bool:
    """Whether Postmark answered a templated batch, accepting none of it, that its template does not
    exist: nothing was sent, and the batch may go again once the template is made again. (Had it
    accepted some, the template went missing while it read the batch: the others are settled
    as refused, with Postmark's reason.)"""
    if isinstance(answer.body, dict):
        return answer.body.get("ErrorCode") == TEMPLATE_NOT_FOUND
    results = answer.body if answer.status == 200 and isinstance(answer.body, list) else []
    codes = [result.get("ErrorCode") if isinstance(result, dict) else None for result in results]
    return TEMPLATE_NOT_FOUND in codes and 0 not in codes


def _holds(body: Any, template: Template) -> bool:
    """Whether GET /templates/<alias> answered `template`, usable."""
    made = (body.get("Subject"), body.get("HtmlBody"), body.get("TextBody")) if isinstance(body, dict) else None
    # A deleted template is still read, inactive: messages naming it would be refused.
    return isinstance(body, dict) and body.get("Active") is True and made == (template.subject, template.html, template.text)


class Templates:
    """The templates a provider made (or found made) at Postmark: each made once, whatever the
    number of workers asking, after deleting the stale ones."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._lock = asyncio.Lock()
        self._ready: set[str] = set()
        self._refused: set[str] = set()
        self._lost: set[str] = set()  # went missing once: made again, but not a second time
        self._swept = False

    def ready(self, template: Template) -> bool:
        return template.alias in self._ready

    async def make(self, template: Template, today: date) -> Answer | None:
        """Make `template` unless done: None when it is ready or was refused (the batch then goes
        whole), else the answer that must be retried or that stops the send (a refused token).
        Raises RequestNotSent when Postmark could not be reached: no reader was sent anything."""
        async with self._lock:
            if template.alias in self._ready or template.alias in self._refused:
                return None
            if not self._swept:
                await self._sweep(today - timedelta(days=KEPT_DAYS))
                self._swept = True
            answer = await self._call("POST", TEMPLATES, template.body)
            if answer.status == 422:
                # Its alias may be taken by this very template, made by an earlier run of the day.
                found = await self._call("GET", f"{TEMPLATES}/{template.alias}")
                if found.retryable or found.status == 401 or (found.status == 200 and _holds(found.body, template)):
                    answer = found
            if answer.status == 200:
                self._ready.add(template.alias)
                return None
            if answer.status == 401:
                return Answer(Verdict.AUTH_REFUSED, http.auth_refused(answer.status))
            if answer.retryable:
                return Answer(Verdict.RETRY_LATER, f"making the issue's template: {answer.reason}", retry_after=answer.retry_after)
            self._refuse(template, answer.reason)
            return None

    def forget(self, template: Template) -> None:
        """It went missing at Postmark: the next batch makes it again, once."""
        self._ready.discard(template.alias)
        if template.alias in self._lost:
            self._refuse(template, "it went missing twice")
        self._lost.add(template.alias)

    def _refuse(self, template: Template, reason: str) -> None:
        self._refused.add(template.alias)
        log.warning("Postmark did not take the issue as a template (%s): each request carries the whole issue", reason)

    async def _sweep(self, through: date) -> None:
        """Delete this tool's templates made on `through` or before. A failure leaves them: it costs
        room, not mail."""
        try:
            answer = await self._call("GET", f"{TEMPLATES}?count={LIST_PAGE}&offset=0&templateType=Standard")
            listed = answer.body.get("Templates") if answer.status == 200 and isinstance(answer.body, dict) else None
            for item in listed if isinstance(listed, list) else []:
                alias = item.get("Alias") if isinstance(item, dict) else None
                ours = _OURS.fullmatch(alias) if isinstance(alias, str) else None
                if ours is not None and ours[1] <= f"{through:%Y%m%d}":
                    await self._call("DELETE", f"{TEMPLATES}/{alias}")
        except RequestNotSent as error:
            log.warning("could not delete the issues' old templates at Postmark (%s)", error)

    async def _call(self, method: str, path: str, content: bytes | None = None) -> http.HTTPAnswer:
        headers = {"Content-Type": "application/json"} if content is not None else {}
        request = self._client.build_request(method, path, content=content, headers=headers)
        try:
            return await http.read(await self._client.send(request, stream=True))
        except http.IMPOSSIBLE as error:
            raise http.impossible(error) from None
        except httpx.TransportError as error:
            raise RequestNotSent(f"{method} {TEMPLATES}: {http.describe(error)}") from None
