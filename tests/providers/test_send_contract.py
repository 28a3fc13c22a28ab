"""Every body the sender builds is one SendGrid's own OpenAPI description accepts: Stoplight Prism
validates them against tests/sendgrid_specs/tsg_mail_v3.json (1 recipient, 1000, 1001 → two requests,
sandbox mode, the real rendered issue)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from newsletter import db, send
from newsletter.providers import Verdict
from newsletter.providers.sendgrid import SendGrid, encode_body
from newsletter.send import addressing, unrecorded
from newsletter.tokens import UnsubscribeLinks
from testkit.projects import API_KEY, LIST, configure, engine_of, seed
from newsletter.wiring import send_parts

from ..support import prism

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

DAY = date(2026, 1, 23)


@pytest.fixture(scope="module")
def prism_url():
    with prism("tsg_mail_v3.json") as url:
        yield url


@pytest.mark.parametrize(("recipients", "requests"), [(1, 1), (1000, 1), (1001, 2)])
def test_prism_accepts_every_request_of_a_send(project: Path, prism_url: str, recipients: int, requests: int) -> None:
    settings = configure(project, sendgrid_api_url=prism_url, sendgrid_api_key=API_KEY, reply_to="editor@example.com")
    seed(settings, recipients)
    report = send.send_campaign(engine_of(settings), send_parts(settings), send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST))

    assert report.error is None and report.finished
    assert report.requests == requests
    assert report.counts["sent"] == recipients
    with engine_of(settings).connect() as conn:
        sizes = sorted(conn.execute(select(db.batches.c.size).where(db.batches.c.state == "sent")).scalars())
    assert sizes == ([1] if recipients == 1 else [1000] if recipients == 1000 else [1, 1000])


def test_prism_accepts_sandbox_mode_and_test_sends(project: Path, prism_url: str) -> None:
    settings = configure(project, sendgrid_api_url=prism_url, sendgrid_api_key=API_KEY)
    seed(settings, 3)
    plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
    sandbox = unrecorded.send_unrecorded(engine_of(settings), send_parts(settings), plan, SendGrid(settings.delivery), sandbox=True)
    test = unrecorded.send_unrecorded(engine_of(settings), send_parts(settings), plan, SendGrid(settings.delivery), to=["someone@example.org"])
    assert (sandbox.problems, sandbox.accepted) == ([], 3)
    assert (test.problems, test.accepted) == ([], 1)


def test_prism_does_reject_what_the_sender_must_never_build(project: Path, prism_url: str) -> None:
    """The contract has teeth: 1001 personalizations in one body, or no Authorization, are refused."""
    settings = configure(project, sendgrid_api_url=prism_url, sendgrid_api_key=API_KEY)
    seed(settings, 1)
    plan = send.plan_send(engine_of(settings), send_parts(settings), DAY, LIST)
    provider = SendGrid(settings.delivery, connect=False)
    builder = addressing.Addressing(
        settings.sender, plan.content, mailing_list=plan.mailing_list, campaign_id=1, links=UnsubscribeLinks(settings.links),
        provider=provider,
    )  # fmt: skip
    too_many = builder.prepare([addressing.Reader(n, n, f"r{n}@example.com", None) for n in range(1, 1002)])

    answer = asyncio.run(_post_once(settings, too_many))
    assert answer.verdict is Verdict.MESSAGE_REFUSED and "personalizations" in answer.reason
    anonymous = httpx.post(f"{prism_url}/v3/mail/send", content=encode_body(builder.prepare([])), timeout=30)
    assert anonymous.status_code == 401


async def _post_once(settings, body):
    provider = SendGrid(settings.delivery)
    try:
        return await provider.send(body)
    finally:
        await provider.aclose()
