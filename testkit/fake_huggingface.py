"""The project's fake Hugging Face Daily Papers API, on 127.0.0.1, for tests of `newsletter generate`.

It serves `GET /api/daily_papers?date=YYYY-MM-DD` in the shape of huggingface.co's public API (a JSON
array of items, each wrapping a `paper` object; field names as the real API spells them, camelCase
and snake_case mixed) and the thumbnails those items point at, `GET /thumbnails/<id>.png`, as small
real PNGs. A date it has no papers for is answered `[]`, as Hugging Face answers a weekend.

It can be told to misbehave, each fault for the next N requests or for the requests a predicate
picks: an HTTP status (503 with Retry-After, 500…), latency, a thumbnail that 404s or is not an
image. Every request is recorded (path, query, times, status) so that a test can assert what the
client asked for, and how often.

In a test:  with FakeHuggingFace({"2026-01-23": make_papers(8, date="2026-01-23")}) as fake: fake.url
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date as Date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from PIL import Image, ImageDraw

from testkit.loopback import LoopbackFake, reply

API_PATH = "/api/daily_papers"
THUMBNAIL_PREFIX = "/thumbnails/"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_THUMBNAIL = re.compile(r"/thumbnails/([^/]+)\.png")

_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Request:
    """One request as the fake received it; `status` and `finished` are set once it is answered."""

    seq: int
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]
    started: float  # time.time() when read
    finished: float | None = None
    status: int | None = None

    @property
    def is_api(self) -> bool:
        return self.path == API_PATH

    @property
    def is_thumbnail(self) -> bool:
        return self.path.startswith(THUMBNAIL_PREFIX)


Predicate = Callable[[Request], bool]


@dataclass
class Fault:
    """A misbehaviour armed by a setter: it applies to matching requests (all, without `when`) while
    `remaining` is not 0 (None: forever). `hits` counts the requests it applied to."""

    kind: str  # "status" or "latency"
    remaining: int | None
    when: Predicate | None
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    hits: int = 0

    def matches(self, request: Request) -> bool:
        return self.remaining != 0 and (self.when is None or self.when(request))


class FakeHuggingFace(LoopbackFake):
    """The Daily Papers API and its thumbnails on a free port of 127.0.0.1, in a thread of its own.

    `papers` maps a date ("YYYY-MM-DD" or a `date`) to that day's papers: each either a bare paper
    object (as `make_papers` makes; the fake wraps it in an item whose thumbnail is its own URL) or a
    whole item (a dict with a "paper" key), served as given.
    """

    def __init__(
        self,
        papers: Mapping[str | Date, Sequence[dict[str, Any]]] | None = None,
        *,
        port: int = 0,
        latency: float = 0.0,
        thumbnail_size: tuple[int, int] = (160, 84),
    ) -> None:
        self.papers: dict[str, list[dict[str, Any]]] = {
            _day(day): list(items) for day, items in (papers or {}).items()
        }
        self.latency = latency  # seconds before every answer, on top of any latency fault
        self.thumbnail_size = thumbnail_size
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.missing_thumbnails: set[str] = set()
        self.corrupt_thumbnails: set[str] = set()
        self.lock = threading.Lock()
        self._pngs: dict[str, bytes] = {}
        super().__init__(_handler(self), port)

    # -- what to serve ------------------------------------------------------------------------------

    def set_papers(self, day: str | Date, papers: Sequence[dict[str, Any]]) -> None:
        with self.lock:
            self.papers[_day(day)] = list(papers)

    def empty(self, day: str | Date) -> None:
        """Answer `[]` for this date, as Hugging Face does for a weekend or a holiday."""
        self.set_papers(day, [])

    def items(self, day: str | Date) -> list[dict[str, Any]]:
        """The array the API answers for this date (what a client should end up with)."""
        with self.lock:
            papers = list(self.papers.get(_day(day), []))
        return [self._item(paper) for paper in papers]

    def thumbnail_url(self, paper_id: str) -> str:
        return f"{self.url}{THUMBNAIL_PREFIX}{paper_id}.png"

    # -- faults -------------------------------------------------------------------------------------

    def fail(
        self, status: int, *, times: int | None = None, when: Predicate | None = None, retry_after: float | None = None
    ) -> Fault:
        """Answer `status` (with a JSON {"error": …} body, and Retry-After in seconds if given) to the
        next `times` matching requests (None: every one, until `clear_faults`)."""
        return self._arm(Fault("status", times, when, status=status, retry_after=retry_after))

    def slow(self, seconds: float, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """Wait `seconds` before answering the matching requests (other requests are not held up)."""
        return self._arm(Fault("latency", times, when, seconds=seconds))

    def missing_thumbnail(self, *paper_ids: str) -> None:
        """Answer 404 for these papers' thumbnails (the items still point at them)."""
        with self.lock:
            self.missing_thumbnails.update(paper_ids)

    def corrupt_thumbnail(self, *paper_ids: str) -> None:
        """Answer 200 image/png with bytes that are not an image for these papers' thumbnails."""
        with self.lock:
            self.corrupt_thumbnails.update(paper_ids)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.missing_thumbnails.clear()
            self.corrupt_thumbnails.clear()

    def _arm(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    # -- what was received --------------------------------------------------------------------------

    def api_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.is_api]

    def thumbnail_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.is_thumbnail]

    def dates_requested(self) -> list[str | None]:
        """The `date` of every API request, in order (None for a request without one)."""
        return [r.query.get("date") for r in self.api_requests()]

    # -- answering ----------------------------------------------------------------------------------

    def _receive(self, method: str, target: str, headers: Mapping[str, str]) -> tuple[Request, Fault | None, float]:
        parts = urlsplit(target)
        with self.lock:
            request = Request(
                seq=len(self.requests) + 1,
                method=method,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers=dict(headers),
                started=time.time(),
            )
            self.requests.append(request)
            delay = self.latency
            status_fault: Fault | None = None
            for fault in self.faults:
                # Each latency fault that matches adds its wait; the first status fault that matches answers.
                if fault.kind == "latency" and fault.matches(request):
                    delay += fault.seconds
                    _consume(fault)
                elif fault.kind == "status" and status_fault is None and fault.matches(request):
                    status_fault = fault
                    _consume(fault)
        return request, status_fault, delay

    def _answer(self, request: Request, fault: Fault | None) -> tuple[int, dict[str, str], bytes]:
        if fault is not None:
            headers = {"Content-Type": "application/json; charset=utf-8"}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return fault.status, headers, _json({"error": _REASONS.get(fault.status, "Error")})
        if request.is_api:
            return self._daily_papers(request.query)
        match = _THUMBNAIL.fullmatch(request.path)
        if match:
            return self._thumbnail(match.group(1))
        return 404, {"Content-Type": "application/json; charset=utf-8"}, _json({"error": "Sorry, we can't find the page you are looking for."})

    def _daily_papers(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        json_type = {"Content-Type": "application/json; charset=utf-8"}
        day = query.get("date")
        if day is not None and not _valid_date(day):
            return 400, json_type, _json({"error": f'"date" must be a valid date (YYYY-MM-DD), got {day!r}'})
        with self.lock:
            if day is None:  # no date: the latest day with papers, as the real API answers the latest
                day = max((d for d, papers in self.papers.items() if papers), default="")
            papers = list(self.papers.get(day, []))
        items = [self._item(paper) for paper in papers]
        limit = query.get("limit")
        if limit is not None and limit.isdigit():
            items = items[: int(limit)]
        return 200, json_type, _json(items)

    def _item(self, paper: dict[str, Any]) -> dict[str, Any]:
        if "paper" in paper:
            return paper
        submitter = paper.get("submittedOnDailyBy") or {}
        item: dict[str, Any] = {
            "paper": paper,
            "publishedAt": paper.get("publishedAt"),
            "title": paper.get("title"),
            "summary": paper.get("summary"),
            "mediaUrls": [],
            "thumbnail": self.thumbnail_url(paper["id"]),
            "numComments": 0,
            "submittedBy": {
                "_id": submitter.get("_id"),
                "avatarUrl": submitter.get("avatarUrl"),
                "fullname": submitter.get("fullname"),
                "name": submitter.get("user"),
                "type": "user",
                "isPro": False,
                "isHf": False,
                "isHfAdmin": False,
                "isMod": False,
                "followerCount": 0,
                "isUserFollowing": False,
            },
            "isAuthorParticipating": False,
        }
        if "organization" in paper:
            item["organization"] = paper["organization"]
        return item

    def _thumbnail(self, paper_id: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            known = any(_paper_id(p) == paper_id for papers in self.papers.values() for p in papers)
            missing = paper_id in self.missing_thumbnails
            corrupt = paper_id in self.corrupt_thumbnails
        if missing or not known:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        if corrupt:
            return 200, {"Content-Type": "image/png"}, b"<html>this is not a PNG</html>"
        return 200, {"Content-Type": "image/png", "Cache-Control": "public, max-age=86400"}, self._png(paper_id)

    def _png(self, paper_id: str) -> bytes:
        with self.lock:
            cached = self._pngs.get(paper_id)
        if cached is not None:
            return cached
        digest = hashlib.sha256(paper_id.encode()).digest()
        image = Image.new("RGB", self.thumbnail_size, tuple(digest[:3]))
        draw = ImageDraw.Draw(image)
        width, height = self.thumbnail_size
        draw.rectangle((4, 4, width - 5, height - 5), outline=tuple(255 - b for b in digest[:3]), width=2)
        draw.text((10, height // 2 - 6), paper_id, fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        with self.lock:
            self._pngs[paper_id] = buffer.getvalue()
        return self._pngs[paper_id]


def _consume(fault: Fault) -> None:
    fault.hits += 1
    if fault.remaining is not None:
        fault.remaining -= 1


def _day(day: str | Date) -> str:
    return day.isoformat() if isinstance(day, Date) else day


def _valid_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        Date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _paper_id(paper: dict[str, Any]) -> str | None:
    inner = paper.get("paper", paper)
    return inner.get("id") if isinstance(inner, dict) else None


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _handler(fake: FakeHuggingFace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            request, fault, delay = fake._receive("GET", self.path, self.headers)
            if delay:
                time.sleep(delay)  # this connection's thread only
            status, headers, content = fake._answer(request, fault)
            reply(self, status, headers, content)
            request.status, request.finished = status, time.time()

        def log_message(self, *_: Any) -> None:
            pass  # the records are the log

    return Handler


# -- plausible papers ---------------------------------------------------------------------------------

_OPENERS = (
    "Scaling", "Rethinking", "Sparse", "Efficient", "Robust", "Self-Supervised", "Multimodal",
    "Long-Context", "Verifiable", "Compositional", "Latent", "Adaptive", "Streaming", "Test-Time",
)
_SUBJECTS = (
    "Reasoning", "Diffusion Transformers", "Reward Models", "Mixture-of-Experts", "Video Generation",
    "Speech Tokenizers", "Vision-Language Agents", "Retrieval", "Code LLMs", "World Models",
    "Preference Optimization", "3D Gaussian Splatting", "Tool Use", "Small Language Models",
)
_TAILS = (
    "at Test Time", "without Labels", "via Curriculum Distillation", "for Low-Resource Languages",
    "with Verifiable Rewards", "in the Wild", "under Distribution Shift", "from Human Feedback",
    "on a Single GPU", "beyond Next-Token Prediction", "for Korean and English", "at Scale",
)
_FIRST = (
    "Minji", "Jiwoo", "Seo-yeon", "Haruto", "Wei", "Xinyu", "Ana", "José", "Łukasz", "Priya", "Noah",
    "Amélie", "Oluwaseun", "Mateo", "Sofía", "Dmitri", "Hyun-woo", "Yuki", "Fatima", "Lars",
)
_LAST = (
    "Kim", "Park", "Lee", "Choi", "Tanaka", "Zhang", "Wang", "García", "Kowalski", "Sharma", "Müller",
    "Okafor", "Rossi", "Novak", "Nguyen", "Johansson", "Haddad", "Silva", "Dubois", "Jeong",
)
_FINDINGS = (
    "improves accuracy by {n} points over the strongest baseline",
    "matches models {n}x larger while using a fraction of the compute",
    "reduces inference latency by {n}% without loss of quality",
    "generalises to unseen tasks with {n}% fewer training examples",
)


def make_papers(n: int, *, date: str | Date, seed: int = 0) -> list[dict[str, Any]]:
    """`n` distinct, plausible paper objects for `date` (the inner `paper` of each API item), with
    distinct ids, titles and upvotes, not sorted by upvotes (the client must rank them). The same
    arguments always give the same papers."""
    day = Date.fromisoformat(_day(date))
    rng = random.Random(f"{day.isoformat()}/{seed}")
    prefix = day.strftime("%y%m")
    numbers = rng.sample(range(1000, 30000), n)
    upvotes = rng.sample(range(1, max(400, 3 * n)), n)
    titles: set[str] = set()
    papers = []
    for index in range(n):
        title = _title(rng)
        while title in titles:
            title = f"{_title(rng)} ({index + 1})"
        titles.add(title)
        paper_id = f"{prefix}.{numbers[index]:05d}"
        subject = next(s for s in _SUBJECTS if s in title) if any(s in title for s in _SUBJECTS) else "models"
        finding = rng.choice(_FINDINGS).format(n=rng.randint(2, 40))
        abstract = (
            f"Recent progress in {subject.lower()} has been driven by ever larger models and datasets, "
            f"yet how to make them reliable remains unclear.\nWe introduce {title.split(':')[0]}, "
            f"a method that {finding}. Experiments on {rng.randint(3, 12)} benchmarks show consistent "
            f"gains, and ablations identify which components matter.\nCode and models are released."
        )
        published = datetime.combine(day - timedelta(days=rng.randint(1, 4)), datetime.min.time()) + timedelta(
            seconds=rng.randint(0, 86_399)
        )
        submitted = datetime.combine(day, datetime.min.time()) + timedelta(seconds=rng.randint(0, 43_199))
        submitter = rng.choice(_FIRST).lower().replace("-", "") + str(rng.randint(1, 99))
        paper: dict[str, Any] = {
            "id": paper_id,
            "authors": [
                {"_id": _hex(rng), "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", "hidden": False}
                for _ in range(rng.randint(1, 6))
            ],
            "publishedAt": _iso(published),
            "submittedOnDailyAt": _iso(submitted),
            "title": title,
            "submittedOnDailyBy": {
                "_id": _hex(rng),
                "avatarUrl": f"/avatars/{_hex(rng)}.svg",
                "isPro": False,
                "fullname": submitter.title(),
                "user": submitter,
                "type": "user",
            },
            "summary": abstract,
            "upvotes": upvotes[index],
            "discussionId": _hex(rng),
            "ai_summary": f"{title.split(':')[0]} {finding}.",
            "ai_keywords": rng.sample([s.lower() for s in _SUBJECTS], 3),
        }
        if rng.random() < 0.5:
            paper["projectPage"] = f"https://example.org/projects/{paper_id}"
            paper["githubRepo"] = f"https://github.com/example/{paper_id.replace('.', '-')}"
            paper["githubStars"] = rng.randint(0, 2000)
        papers.append(paper)
    return papers


def _title(rng: random.Random) -> str:
    core = f"{rng.choice(_OPENERS)} {rng.choice(_SUBJECTS)} {rng.choice(_TAILS)}"
    if rng.random() < 0.4:
        acronym = "".join(rng.choice("ABCDEFGHKLMNPRSTVXZ") for _ in range(rng.randint(3, 5)))
        return f"{acronym}: {core}"
    return core


def _hex(rng: random.Random) -> str:
    return "%024x" % rng.getrandbits(96)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


__all__ = ["API_PATH", "Fault", "FakeHuggingFace", "Request", "make_papers"]
