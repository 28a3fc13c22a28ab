"""The fakes behind `newsletter generate` answer real clients as the real services do: the Hugging
Face Daily Papers API to httpx, an OpenAI-compatible server to the `openai` package (sync and
async, structured outputs), each of their fault modes as the client sees it."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Annotated, Any

import httpx
import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testkit.fake_huggingface import FakeHuggingFace, make_papers
from testkit.fake_openai import HOSTILE, FakeOpenAI, mentions, paper_subject

openai = pytest.importorskip("openai")

DAY = "2026-01-23"
KEY = "sk-test-generate"
MODEL = "gpt-fake-mini"


# -- Hugging Face -----------------------------------------------------------------------------------


def test_make_papers_is_deterministic_distinct_and_unsorted() -> None:
    papers = make_papers(12, date=DAY)
    assert papers == make_papers(12, date=DAY)
    assert papers != make_papers(12, date=DAY, seed=1)
    assert len({p["id"] for p in papers}) == len({p["title"] for p in papers}) == len({p["upvotes"] for p in papers}) == 12
    assert all(p["id"].startswith("2601.") for p in papers)
    upvotes = [p["upvotes"] for p in papers]
    assert upvotes != sorted(upvotes, reverse=True)  # the client has to rank them itself


def test_daily_papers_have_the_real_shape_and_thumbnails_are_pngs() -> None:
    papers = make_papers(5, date=DAY)
    with FakeHuggingFace({DAY: papers}) as fake:
        answer = httpx.get(f"{fake.url}/api/daily_papers", params={"date": DAY})
        items = answer.json()
        thumbnails = [httpx.get(item["thumbnail"]) for item in items]

    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert [item["paper"]["id"] for item in items] == [p["id"] for p in papers]
    for item, paper in zip(items, papers):
        assert set(item) >= {"paper", "publishedAt", "title", "summary", "thumbnail", "numComments", "submittedBy", "isAuthorParticipating"}
        inner = item["paper"]
        assert set(inner) >= {"id", "title", "summary", "upvotes", "ai_summary", "ai_keywords", "authors", "publishedAt", "submittedOnDailyAt"}
        assert item["title"] == inner["title"] == paper["title"] and item["numComments"] == 0
        assert all(isinstance(a["name"], str) for a in inner["authors"])
        assert item["thumbnail"] == f"{fake.url}/thumbnails/{inner['id']}.png"
    for response in thumbnails:
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
    assert [(r.path, r.query) for r in fake.api_requests()] == [("/api/daily_papers", {"date": DAY})]
    assert len(fake.thumbnail_requests()) == 5 and all(r.status == 200 and r.finished for r in fake.requests)


def test_weekend_unknown_and_bad_dates() -> None:
    with FakeHuggingFace({DAY: make_papers(3, date=DAY)}) as fake:
        fake.empty("2026-01-24")
        weekend = httpx.get(f"{fake.url}/api/daily_papers", params={"date": "2026-01-24"})
        unknown = httpx.get(f"{fake.url}/api/daily_papers", params={"date": "2025-12-25"})
        bad = httpx.get(f"{fake.url}/api/daily_papers", params={"date": "23/01/2026"})
        latest = httpx.get(f"{fake.url}/api/daily_papers")
    assert weekend.json() == [] and unknown.json() == []
    assert bad.status_code == 400 and "date" in bad.json()["error"]
    assert len(latest.json()) == 3
    assert fake.dates_requested() == ["2026-01-24", "2025-12-25", "23/01/2026", None]


@pytest.mark.slow
def test_hugging_face_faults() -> None:
    papers = make_papers(3, date=DAY)
    with FakeHuggingFace({DAY: papers}) as fake, httpx.Client(base_url=fake.url) as client:
        outage = fake.fail(503, times=2, retry_after=3, when=lambda r: r.is_api)
        fake.missing_thumbnail(papers[0]["id"])
        fake.corrupt_thumbnail(papers[1]["id"])
        first, second, third = (client.get("/api/daily_papers", params={"date": DAY}) for _ in range(3))
        missing = client.get(f"/thumbnails/{papers[0]['id']}.png")
        corrupt = client.get(f"/thumbnails/{papers[1]['id']}.png")
        fake.fail(500, times=1)
        broken = client.get("/api/daily_papers", params={"date": DAY})
        fake.clear_faults()
        fake.slow(0.4)
        started = time.monotonic()

        async def four() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=fake.url) as aclient:
                return await asyncio.gather(*(aclient.get("/api/daily_papers", params={"date": DAY}) for _ in range(4)))

        slow = asyncio.run(four())
        elapsed = time.monotonic() - started

    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert first.headers["retry-after"] == "3" and outage.hits == 2 and outage.remaining == 0
    assert missing.status_code == 404
    assert corrupt.status_code == 200 and corrupt.headers["content-type"] == "image/png"
    with pytest.raises(Exception):
        Image.open(io.BytesIO(corrupt.content))
    assert broken.status_code == 500
    assert all(r.status_code == 200 for r in slow)
    assert 0.4 <= elapsed < 1.2  # latency holds up each request, not the others


# -- OpenAI-compatible -----------------------------------------------------------------------------


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=300)
    summary: str = Field(max_length=600)
    key_points: list[Annotated[str, Field(max_length=200)]] = Field(min_length=3, max_length=5)
    why_it_matters: str = Field(max_length=120)


def messages_for(paper: dict[str, Any]) -> list[dict[str, str]]:
    return [
        # An id in the system prompt must not be mistaken for the paper's: only user messages count.
        {"role": "system", "content": "Summarise the paper for a newsletter (never paper 2401.00001)."},
        {"role": "user", "content": f"Paper ID: {paper['id']}\nTitle: {paper['title']}\n\nAbstract:\n{paper['summary']}"},
    ]


def sync_client(fake: FakeOpenAI, **options: Any) -> Any:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=options.pop("max_retries", 0), **options)


def summarise(client: Any, paper: dict[str, Any]) -> Any:
    return client.chat.completions.parse(model=MODEL, messages=messages_for(paper), response_format=Summary)


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_structured_output_parses_and_names_its_paper() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        completion = summarise(sync_client(fake), paper)
        again = summarise(sync_client(fake), paper)

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Summary) and 3 <= len(parsed.key_points) <= 5
    assert paper["id"] in parsed.summary and paper["title"] in parsed.summary
    assert all(paper["id"] in s for s in strings(parsed.model_dump()))
    assert completion.choices[0].message.content == again.choices[0].message.content  # deterministic
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert fake.calls == 2
    call = fake.completions()[0]
    assert call.model == MODEL and call.messages == messages_for(paper)
    assert call.response_format["type"] == "json_schema" and call.response_format["json_schema"]["strict"] is True
    assert call.schema["properties"]["key_points"]["minItems"] == 3
    assert call.subject.id == paper["id"] and call.subject.title == paper["title"]
    assert call.status == 200 and call.outcome == "ok" and call.finished >= call.started


@pytest.mark.slow
def test_async_concurrent_requests_are_not_mixed_up_nor_serialised() -> None:
    papers = make_papers(10, date=DAY)
    with FakeOpenAI(api_key=KEY) as fake:
        fake.slow(0.8)

        async def run() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0)
            return await asyncio.gather(*(
                client.chat.completions.parse(model=MODEL, messages=messages_for(p), response_format=Summary) for p in papers
            ))

        started = time.monotonic()
        completions = asyncio.run(run())
        elapsed = time.monotonic() - started

    for paper, completion in zip(papers, completions):
        parsed = completion.choices[0].message.parsed
        assert paper["id"] in parsed.summary and all(other["id"] not in parsed.summary for other in papers if other is not paper)
    assert elapsed < 1.6 and fake.max_in_flight > 1  # ten answers of 0.8 s each, side by side
    assert fake.calls == 10 and all(c.duration >= 0.8 for c in fake.completions())


def test_a_wrong_key_is_refused_without_using_up_faults() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        outage = fake.fail(503, times=1)
        client = openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            summarise(client, paper)
    assert refused.value.status_code == 401 and "sk-wrong" not in str(refused.value)
    assert outage.hits == 0 and fake.completions()[0].outcome == "unauthorized"


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, "InternalServerError"), (500, "InternalServerError"), (429, "RateLimitError"), (400, "BadRequestError")],
)
def test_status_faults_reach_the_client(status: int, error: str) -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.fail(status, times=1, retry_after=2 if status == 429 else None)
        with pytest.raises(getattr(openai, error)) as raised:
            summarise(sync_client(fake), paper)
        recovered = summarise(sync_client(fake), paper)
    assert raised.value.status_code == status
    assert raised.value.body["message"]  # the OpenAI error envelope, as the client unwraps it
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "2"
        assert raised.value.code == "rate_limit_exceeded"
    assert recovered.choices[0].message.parsed is not None
    assert [c.outcome for c in fake.completions()] == ["status", "ok"]


@pytest.mark.slow
def test_the_client_honours_retry_after() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.rate_limit(0.6, times=1)
        started = time.monotonic()
        completion = summarise(sync_client(fake, max_retries=1), paper)
        elapsed = time.monotonic() - started
    assert completion.choices[0].message.parsed is not None
    assert fake.calls == 2 and elapsed >= 0.6


@pytest.mark.slow
def test_latency_trips_the_client_timeout_and_only_for_the_chosen_paper() -> None:
    slow_paper, fast_paper = make_papers(2, date=DAY)
    with FakeOpenAI(api_key=KEY) as fake:
        fake.slow(2.0, when=mentions(slow_paper["id"]))
        client = sync_client(fake, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            summarise(client, slow_paper)
        assert summarise(client, fast_paper).choices[0].message.parsed is not None


def test_prose_and_fenced_json_fail_to_parse() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.prose(times=1)
        fake.prose(times=1, fenced=True)
        prose = sync_client(fake).chat.completions.create(model=MODEL, messages=messages_for(paper))
        with pytest.raises(ValidationError):
            summarise(sync_client(fake), paper)
    assert prose.choices[0].message.content.startswith("Sure! Here is the summary")
    fenced = fake.completions()[1].content
    assert fenced.count("```") == 2 and "```json" in fenced
    assert [c.outcome for c in fake.completions()] == ["prose", "fenced"]


@pytest.mark.parametrize("kind", ["few_items", "missing_field", "too_long", "wrong_type", "extra_field", "too_many_items"])
def test_schema_violations_fail_validation(kind: str) -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.violate(kind, times=1)
        with pytest.raises(ValidationError):
            summarise(sync_client(fake), paper)
    call = fake.completions()[0]
    assert call.outcome == f"violation:{kind}"
    document = json.loads(call.content)
    if kind == "few_items":
        assert len(document["key_points"]) == 2
    if kind == "missing_field":
        assert "title" not in document


def test_obedient_prompt_injection_is_valid_json_full_of_markup() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.inject()
        completion = summarise(sync_client(fake), paper)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Summary)  # still matches the schema
    texts = strings(parsed.model_dump())
    assert all(any(piece in text for piece in HOSTILE) for text in texts)
    for piece in ("<script>alert(1)</script>", "[click](javascript:alert(1))", "![](https://evil.example/t.png)", "<!--"):
        assert any(piece in text for text in texts)
    assert paper["id"] in parsed.summary


def test_truncated_and_refused_answers() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY) as fake:
        fake.truncate(times=1)
        fake.refuse(times=1)
        with pytest.raises(openai.LengthFinishReasonError):
            summarise(sync_client(fake), paper)
        refused = summarise(sync_client(fake), paper)
    assert refused.choices[0].message.parsed is None and refused.choices[0].message.refusal


def test_async_client_sees_each_fault() -> None:
    papers = make_papers(4, date=DAY)
    with FakeOpenAI(api_key=KEY) as fake:
        fake.fail(503, when=mentions(papers[0]["id"]))
        fake.rate_limit(5, when=mentions(papers[1]["id"]))
        fake.violate("few_items", when=mentions(papers[2]["id"]))

        async def run() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0)
            return await asyncio.gather(
                *(client.chat.completions.parse(model=MODEL, messages=messages_for(p), response_format=Summary) for p in papers),
                return_exceptions=True,
            )

        results = asyncio.run(run())
    assert isinstance(results[0], openai.InternalServerError) and results[0].status_code == 503
    assert isinstance(results[1], openai.RateLimitError) and results[1].response.headers["retry-after"] == "5"
    assert isinstance(results[2], ValidationError)
    assert papers[3]["id"] in results[3].choices[0].message.parsed.summary


def test_answer_callback_json_object_text_and_unknown_model() -> None:
    paper = make_papers(1, date=DAY)[0]
    with FakeOpenAI(api_key=KEY, models={MODEL}, answer=lambda body: {"echo": paper_subject(body).id}) as fake:
        client = sync_client(fake)
        echoed = client.chat.completions.create(model=MODEL, messages=messages_for(paper))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=messages_for(paper))
        fake.answer = None
        as_object = client.chat.completions.create(
            model=MODEL, messages=messages_for(paper), response_format={"type": "json_object"}
        )
        as_text = client.chat.completions.create(model=MODEL, messages=messages_for(paper))
        listed = client.models.list()
    assert json.loads(echoed.choices[0].message.content) == {"echo": paper["id"]}
    assert paper["id"] in json.loads(as_object.choices[0].message.content)["summary"]
    assert paper["id"] in as_text.choices[0].message.content
    assert [m.id for m in listed.data] == [MODEL]
    assert fake.calls == 4 and [c.outcome for c in fake.completions()] == ["ok", "model_not_found", "ok", "ok"]
