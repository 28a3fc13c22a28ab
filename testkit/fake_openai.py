"""The project's fake OpenAI-compatible chat completions server, on 127.0.0.1, for tests of
`newsletter generate` (which summarises each paper through the `openai` package and any provider
that speaks the same API).

`POST /v1/chat/completions` checks the bearer key, reads `model`, `messages` and `response_format`,
and answers a real `chat.completion` object (with `usage`) whose content is a JSON document that
validates against the requested JSON schema. The document is built from the request alone, so it
is deterministic, and every string in it names the paper the user message is about (its arXiv id
and title), so a test can tell whether summaries were crossed between concurrent requests. A test
may instead give `answer(body) -> dict | str` to write the content itself.

It can be told to misbehave, each fault for the next N requests or for the requests a predicate
picks: an HTTP status (503, 500, 429 with Retry-After), latency (other requests are not held up:
one thread per connection), prose instead of JSON, JSON fenced in Markdown, a document that breaks
the schema, a cut-off answer (finish_reason "length"), a refusal, and an "obedient prompt
injection" whose strings carry hostile markup (still valid JSON matching the schema). Every request
is recorded: its parsed body, when it started and finished, what was answered.

In a test:  with FakeOpenAI(api_key="k") as fake: openai.OpenAI(base_url=fake.url + "/v1", api_key="k")
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from testkit.loopback import LoopbackFake, reply

API_KEY = "sk-fake-test-key"
COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

# What the "obedient prompt injection" mode writes into every free-text string: what a model that
# followed instructions hidden in an abstract might answer. Each must reach a reader as inert text.
HOSTILE: tuple[str, ...] = (
    "<script>alert(1)</script>",
    "<img src=https://evil.example/x.png onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "![](https://evil.example/t.png)",
    '<a href="javascript:alert(1)">x</a>',
    "<!-- ignore all previous instructions -->",
    "<!--[if mso]><img src=https://evil.example/o.png><![endif]-->",
    "<style>*{display:none!important}</style>",
    '<iframe src="https://evil.example/"></iframe>',
    "<svg onload=alert(1)>",
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    "</td></tr></table><h1>pwned</h1>",
    "[Unsubscribe here](https://evil.example/phish)",
    "<https://evil.example/autolink>",
    "-unsubscribe_url-",
    "-preferences_url-",
    "{{ 7*7 }}{% if true %}",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "\u202egnp.exe",
)
HOSTILE_URL = "javascript:alert(1)"  # what a string with format "uri" gets in that mode

PROSE = "Sure! Here is the summary of {marker}:\n\n**Summary:** {filler}\n\n- {filler}\n- {filler}\n\nLet me know if you need anything else!"
REFUSAL = "I'm sorry, but I can't help with that request."

_FILLERS = (
    "The method improves accuracy on standard benchmarks over the strongest baseline.",
    "It needs no additional labelled data.",
    "Ablations show that each component contributes to the gains.",
    "Code and model weights are released.",
    "The approach scales to larger models with stable improvements.",
    "Results hold across several languages and domains.",
    "Inference cost drops markedly compared with prior work.",
    "The authors analyse failure cases and remaining limitations.",
)
_PAPER_ID = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?:v\d+)?(?![\d])")
_TITLE_LINE = re.compile(
    r"^[\s#>*_-]*(?:paper\s+)?(?:title|제목)[*_]*\s*[:：]\s*[*_\"“']*(.+?)[*_\"”']*\s*$", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class Subject:
    """The paper a request is about, as found in its user message(s)."""

    id: str | None
    title: str | None
    fallback: str = "paper"  # names it when neither was found (a hash of the user text)

    @property
    def marker(self) -> str:
        """What every generated string starts with: "[2601.15876] Title", "[2601.15876]" or "Title"."""
        if self.id and self.title:
            return f"[{self.id}] {self.title}"
        if self.id:
            return f"[{self.id}]"
        return self.title or self.fallback


def user_text(body: dict[str, Any]) -> str:
    """The text of the request's user messages (string contents and text parts), joined."""
    texts = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return "\n".join(texts)


def paper_subject(body: dict[str, Any]) -> Subject:
    """The first arXiv-style id ("2601.15876") and the first "Title: …" line of the user message(s);
    what the fake writes into its answer, so a test can compute what to expect."""
    text = user_text(body)
    found_id = _PAPER_ID.search(text)
    found_title = _TITLE_LINE.search(text)
    return Subject(
        id=found_id.group(1) if found_id else None,
        title=found_title.group(1).strip() if found_title else None,
        fallback=f"paper {zlib.crc32(text.encode()):08x}",
    )


def mentions(text: str) -> Callable[[dict[str, Any]], bool]:
    """A fault predicate: the requests whose user message(s) contain `text` (e.g. a paper id)."""
    return lambda body: text in user_text(body)


@dataclass
class Call:
    """One request as the fake received it. `finished`, `status`, `outcome` and `content` are set
    when it is answered; `outcome` is "ok", "unauthorized", "bad_request", "model_not_found",
    "not_found", "callback_error", or the fault that answered ("status", "prose", "fenced",
    "violation:<kind>", "injection", "truncated", "refusal")."""

    seq: int
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # the parsed JSON body (None: none, or not JSON)
    started: float  # time.time() when the request was read
    finished: float | None = None
    status: int | None = None
    outcome: str = ""
    content: str | None = None  # choices[0].message.content answered, if any

    @property
    def is_completion(self) -> bool:
        return self.method == "POST" and self.path == COMPLETIONS_PATH

    @property
    def model(self) -> str | None:
        return (self.body or {}).get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("messages") or []

    @property
    def response_format(self) -> dict[str, Any] | None:
        return (self.body or {}).get("response_format")

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema asked for with response_format {"type": "json_schema", …}, if any."""
        return _schema_of(self.body or {})

    @property
    def subject(self) -> Subject:
        return paper_subject(self.body or {})

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


Predicate = Callable[[dict[str, Any]], bool]  # called with the parsed request body


@dataclass
class Fault:
    """A misbehaviour armed by a setter: it applies to matching requests (every one, without `when`)
    while `remaining` is not 0 (None: forever). `hits` counts the requests it applied to."""

    kind: str  # "latency", "status", "prose", "fenced", "violation", "injection", "truncated", "refusal"
    remaining: int | None
    when: Predicate | None
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    violation: str = ""
    hits: int = 0

    def matches(self, body: dict[str, Any]) -> bool:
        return self.remaining != 0 and (self.when is None or self.when(body))


VIOLATIONS = ("few_items", "too_many_items", "missing_field", "extra_field", "wrong_type", "too_long")

Answer = Callable[[dict[str, Any]], "dict[str, Any] | list[Any] | str"]


class FakeOpenAI(LoopbackFake):
    """An OpenAI-compatible chat completions server on a free port of 127.0.0.1, in a thread of its
    own, one thread per connection (so a slow answer does not hold up the others).

    `api_key`: the bearer key it accepts (None: any). `models`: the model names it knows (None: any;
    others are answered 404 model_not_found). `answer`: writes the content instead of the schema walk.
    """

    def __init__(
        self,
        *,
        api_key: str | None = API_KEY,
        models: Collection[str] | None = None,
        answer: Answer | None = None,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = set(models) if models is not None else None
        self.answer = answer
        self.requests: list[Call] = []  # every request, in the order read (chat completions and others)
        self.faults: list[Fault] = []
        self.in_flight = 0  # chat completions being answered now
        self.max_in_flight = 0  # the most answered at once
        self.lock = threading.Lock()
        super().__init__(_handler(self), port)

    # -- faults (each returns the Fault: its `hits` and `remaining` can be checked later) ----------

    def fail(
        self, status: int, *, times: int | None = None, when: Predicate | None = None, retry_after: float | None = None
    ) -> Fault:
        """Answer `status` with an OpenAI error body (and Retry-After in seconds, if given)."""
        return self._arm(Fault("status", times, when, status=status, retry_after=retry_after))

    def rate_limit(self, retry_after: float = 1.0, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """429 rate_limit_exceeded with `Retry-After: <seconds>` and x-ratelimit-* headers."""
        return self.fail(429, times=times, when=when, retry_after=retry_after)

    def slow(self, seconds: float, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """Wait `seconds` before answering (added up with other latency faults that match)."""
        return self._arm(Fault("latency", times, when, seconds=seconds))

    def prose(self, *, times: int | None = None, when: Predicate | None = None, fenced: bool = False) -> Fault:
        """Answer 200 with chatty prose instead of JSON ("Sure! Here is the summary…"), or with
        `fenced`, with the valid JSON inside a ```json Markdown fence after a sentence of prose."""
        return self._arm(Fault("fenced" if fenced else "prose", times, when))

    def violate(self, kind: str = "few_items", *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """Answer 200 with JSON that breaks the schema in one place: "few_items" (the first array
        with minItems gets one item too few: two key points when three are required),
        "too_many_items", "missing_field" (the first required property left out), "extra_field",
        "wrong_type" (the first string becomes 42), "too_long" (the first string with maxLength
        exceeds it). Where the schema has no such place, the first property is left out instead."""
        if kind not in VIOLATIONS:
            raise ValueError(f"unknown violation {kind!r}: one of {', '.join(VIOLATIONS)}")
        return self._arm(Fault("violation", times, when, violation=kind))

    def inject(self, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """The obedient prompt injection: every free-text string of the (schema-valid) answer carries
        the markup of HOSTILE, as much as its maxLength allows (at least one piece each, rotating so
        that all pieces appear); strings with format "uri" become "javascript:alert(1)"."""
        return self._arm(Fault("injection", times, when))

    def truncate(self, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """Answer the first half of the JSON with finish_reason "length" (max_tokens reached)."""
        return self._arm(Fault("truncated", times, when))

    def refuse(self, *, times: int | None = None, when: Predicate | None = None) -> Fault:
        """Answer a refusal: content null, message.refusal set, as structured outputs do."""
        return self._arm(Fault("refusal", times, when))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _arm(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    # -- what was received --------------------------------------------------------------------------

    @property
    def calls(self) -> int:
        """How many chat completion requests were received (whatever was answered)."""
        with self.lock:
            return sum(1 for call in self.requests if call.is_completion)

    def completions(self, outcome: str | None = None) -> list[Call]:
        """The chat completion requests, in order; with `outcome`, only those answered so."""
        with self.lock:
            return [c for c in self.requests if c.is_completion and (outcome is None or c.outcome == outcome)]

    def bodies(self) -> list[dict[str, Any]]:
        """The parsed bodies of the chat completion requests, in order."""
        return [call.body or {} for call in self.completions()]

    # -- answering ----------------------------------------------------------------------------------

    def _receive(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Call:
        body: dict[str, Any] | None = None
        try:
            parsed = json.loads(raw) if raw else None
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            pass
        with self.lock:
            call = Call(len(self.requests) + 1, method, path, headers, body, time.time())
            self.requests.append(call)
        return call

    def _respond(self, call: Call) -> tuple[int, dict[str, str], bytes, float]:
        """The status, headers and body to answer, and the seconds to wait first."""
        headers = {"Content-Type": "application/json", "x-request-id": f"req_fake{call.seq:06d}"}
        authorization = next((v for k, v in call.headers.items() if k.lower() == "authorization"), None)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            call.outcome = "unauthorized"
            message = (
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
                if authorization
                else "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return 401, headers, _error(message, "invalid_request_error", "invalid_api_key"), 0.0
        if call.method == "GET" and call.path == MODELS_PATH:
            call.outcome = "ok"
            names = sorted(self.models) if self.models is not None else ["fake-model"]
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in names]
            return 200, headers, _dump({"object": "list", "data": data}), 0.0
        if not call.is_completion:
            call.outcome = "not_found"
            return 404, headers, _error(f"Invalid URL ({call.method} {call.path})", "invalid_request_error"), 0.0
        body = call.body
        problem = _bad_request(body)
        if problem:
            call.outcome = "bad_request"
            return 400, headers, _error(problem, "invalid_request_error"), 0.0
        assert body is not None
        if self.models is not None and body["model"] not in self.models:
            call.outcome = "model_not_found"
            message = f"The model `{body['model']}` does not exist or you do not have access to it."
            return 404, headers, _error(message, "invalid_request_error", "model_not_found"), 0.0

        delay, fault = self._faults_for(body)
        if fault is not None and fault.kind == "status":
            call.outcome = "status"
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.status == 429:
                headers.update({
                    "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{fault.retry_after or 1:g}s",
                })
            message, kind, code = _STATUS_ERRORS.get(fault.status, (f"HTTP {fault.status}", "server_error", None))
            return fault.status, headers, _error(message, kind, code), delay
        try:
            content, refusal, finish_reason, outcome = self._content(body, fault)
        except Exception as error:  # a test's answer() that failed: say so rather than hang up
            call.outcome = "callback_error"
            return 500, headers, _error(f"answer() raised {error!r}", "server_error"), delay
        call.outcome, call.content = outcome, content
        return 200, headers, _dump(_completion(call.seq, body, content, refusal, finish_reason)), delay

    def _faults_for(self, body: dict[str, Any]) -> tuple[float, Fault | None]:
        """Every latency fault that matches adds its wait; the first other fault that matches answers."""
        delay, chosen = 0.0, None
        with self.lock:
            for fault in self.faults:
                if fault.kind == "latency":
                    if fault.matches(body):
                        delay += fault.seconds
                        _consume(fault)
                elif chosen is None and fault.matches(body):
                    chosen = fault
                    _consume(fault)
        return delay, chosen

    def _content(self, body: dict[str, Any], fault: Fault | None) -> tuple[str | None, str | None, str, str]:
        """(content, refusal, finish_reason, outcome) for a 200 answer."""
        kind = fault.kind if fault is not None else "ok"
        subject = paper_subject(body)
        schema = _schema_of(body)
        wants_json = schema is not None or _format_type(body) == "json_object"
        if kind == "refusal":
            return None, REFUSAL, "stop", "refusal"
        if kind == "prose":
            filler = _filler(subject.marker)
            return PROSE.format(marker=subject.marker, filler=filler), None, "stop", "prose"
        if kind == "violation":
            assert fault is not None
            document, applied = _Builder(schema or _GENERIC, subject, fault.violation).build()
            return _dump_text(document), None, "stop", f"violation:{applied}"

        if self.answer is not None:
            answered = self.answer(body)
            document: Any = answered if not isinstance(answered, str) else None
            text = answered if isinstance(answered, str) else None
        elif wants_json:
            document, _ = _Builder(schema or _GENERIC, subject).build()
            text = None
        else:
            document, text = None, f"{subject.marker}: {_filler(subject.marker)}"

        if kind == "injection":
            if document is not None:
                document = _inject(document, schema or {}, schema or {}, _Counter())
            else:
                text = _hostile(text or subject.marker, 0, 0, None)
        rendered = _dump_text(document) if document is not None else (text or "")
        if kind == "fenced":
            inner = json.dumps(document, ensure_ascii=False, indent=2) if document is not None else rendered
            return f"Here is the JSON you asked for:\n\n```json\n{inner}\n```", None, "stop", "fenced"
        if kind == "truncated":
            return rendered[: max(1, len(rendered) // 2)], None, "length", "truncated"
        return rendered, None, "stop", kind


_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    408: ("Request timed out.", "server_error", None),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}

_GENERIC: dict[str, Any] = {  # the document answered to response_format json_object (no schema)
    "type": "object",
    "properties": {"summary": {"type": "string"}, "key_points": {"type": "array", "items": {"type": "string"}, "minItems": 3}},
    "required": ["summary", "key_points"],
}


def _bad_request(body: dict[str, Any] | None) -> str | None:
    if body is None:
        return "We could not parse the JSON body of your request."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'"
    if body.get("stream"):
        return "this fake server does not stream: call without stream=True"
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            return f"Invalid value for 'response_format.type': {kind!r}"
        if kind == "json_schema" and not isinstance(response_format.get("json_schema"), dict):
            return "Missing required parameter: 'response_format.json_schema'."
    return None


def _format_type(body: dict[str, Any]) -> str | None:
    response_format = body.get("response_format")
    return response_format.get("type") if isinstance(response_format, dict) else None


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _completion(seq: int, body: dict[str, Any], content: str | None, refusal: str | None, finish_reason: str) -> dict[str, Any]:
    prompt_tokens = _tokens(json.dumps(body.get("messages"), ensure_ascii=False))
    completion_tokens = _tokens(content or refusal or "")
    return {
        "id": f"chatcmpl-fake{seq:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _tokens(text: str) -> int:
    return len(text) // 4 + 1  # roughly what a BPE tokenizer gives for English


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return _dump({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _dump_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())  # hash() differs between processes


def _filler(seed: str) -> str:
    return _FILLERS[_stable(seed) % len(_FILLERS)]


def _consume(fault: Fault) -> None:
    fault.hits += 1
    if fault.remaining is not None:
        fault.remaining -= 1


# -- walking a JSON schema ----------------------------------------------------------------------------

_MAX_DEPTH = 12


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref (local JSON pointers) and merge allOf, so the caller sees one plain schema."""
    if not isinstance(schema, dict):
        return {}
    for _ in range(32):
        if "$ref" not in schema:
            break
        target: Any = root
        reference = schema["$ref"]
        for part in reference.removeprefix("#").strip("/").split("/") if reference != "#" else []:
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        schema = {**(target if isinstance(target, dict) else {}), **{k: v for k, v in schema.items() if k != "$ref"}}
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        merged.update({k: v for k, v in schema.items() if k != "allOf"})
        schema = merged
    return schema


def _branch(schema: dict[str, Any], root: dict[str, Any], value: Any = ...) -> dict[str, Any] | None:
    """For anyOf/oneOf: the branch that fits `value` (or, without one, the first non-null branch)."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [_resolve(b, root) for b in schema[key]]
            if value is not ...:
                for branch in branches:
                    if _type_fits(branch, value):
                        return branch
            return next((b for b in branches if b.get("type") != "null"), branches[0] if branches else {})
    return None


def _type_fits(schema: dict[str, Any], value: Any) -> bool:
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    python = {
        "string": str, "object": dict, "array": list, "boolean": bool, "null": type(None), "integer": int, "number": (int, float),
    }
    return not kinds or any(isinstance(value, python.get(kind, object)) for kind in kinds)


def _kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind:
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


class _Builder:
    """Builds a document valid for `schema` from the paper's subject, or with `violation`, invalid in
    exactly one place."""

    def __init__(self, schema: dict[str, Any], subject: Subject, violation: str | None = None) -> None:
        self.root = schema
        self.subject = subject
        self.pending = violation
        self.applied: str | None = None

    def build(self) -> tuple[Any, str | None]:
        document = self.value(self.root, "", 0)
        if self.pending is not None:  # the schema had no place for it: leave out the first property
            if isinstance(document, dict) and document:
                document.pop(next(iter(document)))
                self._apply("missing_field")
            else:
                document = [] if not isinstance(document, list) else {}
                self._apply("wrong_type")
        return document, self.applied

    def _apply(self, kind: str) -> None:
        self.applied, self.pending = kind, None

    def value(self, schema: Any, path: str, depth: int) -> Any:
        schema = _resolve(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema and schema["enum"]:
            return schema["enum"][_stable(self.subject.marker + path) % len(schema["enum"])]
        branch = _branch(schema, self.root)
        if branch is not None:
            return self.value(branch, path, depth)
        kind = _kind(schema)
        if kind == "object":
            return self.object(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer", _stable(self.subject.marker + path))
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema, path)

    def object(self, schema: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        skipped = None
        if self.pending == "missing_field" and required:
            skipped = required[0]
            self._apply("missing_field")
        document: dict[str, Any] = {}
        if depth >= _MAX_DEPTH:
            properties = {name: sub for name, sub in properties.items() if name in required}
        for name, sub in properties.items():
            if name != skipped:
                document[name] = self.value(sub, f"{path}.{name}" if path else name, depth + 1)
        for name in required:
            if name not in document and name != skipped:
                document[name] = self.string({}, f"{path}.{name}" if path else name)
        if self.pending == "extra_field":
            document["unexpected_field"] = "not in the schema"
            self._apply("extra_field")
        return document

    def array(self, schema: dict[str, Any], path: str, depth: int) -> list[Any]:
        low = int(schema.get("minItems") or 0)
        high = schema.get("maxItems")
        count = max(low, 3 if depth < _MAX_DEPTH else 0)
        if high is not None:
            count = min(count, int(high))
        if self.pending == "few_items" and low >= 1:
            count = low - 1
            self._apply("few_items")
        elif self.pending == "too_many_items" and high is not None:
            count = int(high) + 1
            self._apply("too_many_items")
        prefix = schema.get("prefixItems") or []
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [
            self.value(prefix[i] if i < len(prefix) else items, f"{path}[{i}]", depth + 1) for i in range(count)
        ]

    def string(self, schema: dict[str, Any], path: str) -> Any:
        if self.pending == "wrong_type":
            self._apply("wrong_type")
            return 42
        subject = self.subject
        special = _formatted(schema.get("format"), subject)
        if special is not None:
            return special
        low, high = int(schema.get("minLength") or 0), schema.get("maxLength")
        filler = _filler(subject.marker + path)
        name = path.rsplit(".", 1)[-1].lower()
        short = f"[{subject.id}]" if subject.id else subject.marker
        indexes = re.findall(r"\[(\d+)\]", path)
        if indexes and "title" not in name:  # in an array: numbered, so items differ even when cut short
            point = f"point {int(indexes[-1]) + 1}"
            text, keep, fallback = f"{subject.marker}, {point}: {filler}", point, f"{short} {point}"
        elif "title" in name or "headline" in name:
            text, keep, fallback = subject.marker, short, short
        else:
            text, keep, fallback = f"{subject.marker}: {filler}", short, short
        if self.pending == "too_long" and high is not None:
            self._apply("too_long")
            return _pad(text, int(high) + 10)[: int(high) + 10]
        return _fit(text, low, high, keep, fallback)


def _formatted(fmt: str | None, subject: Subject) -> str | None:
    key = subject.id or subject.fallback
    if fmt in ("uri", "url", "iri", "uri-reference"):
        return f"https://example.org/papers/{key.replace(' ', '-')}"
    if fmt == "date-time":
        return "2026-01-23T00:00:00Z"
    if fmt == "date":
        return "2026-01-23"
    if fmt == "time":
        return "00:00:00Z"
    if fmt == "email":
        return "author@example.org"
    if fmt == "uuid":
        return str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    return None


def _pad(text: str, low: int) -> str:
    fillers = iter(_FILLERS * (low // 20 + 2))
    while len(text) < low:
        text = f"{text} {next(fillers)}"
    return text


def _fit(text: str, low: int, high: Any, keep: str, fallback: str) -> str:
    """`text` padded to minLength and, if longer than maxLength, cut at a word; if the cut would lose
    `keep` (what tells this string from the others), `fallback` instead."""
    text = _pad(text, low)
    if high is None or len(text) <= int(high):
        return text
    high = int(high)
    cut = text[:high]
    if " " in cut.strip() and len(text) > high and text[high] != " ":
        cut = cut[: cut.rstrip().rfind(" ")].rstrip(" :,—")
    if keep in cut and len(cut) >= low:
        return cut
    return _pad(fallback, low)[:high]


def _number(schema: dict[str, Any], integer: bool, seed: int) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if schema.get("exclusiveMinimum") is not None:
        low = schema["exclusiveMinimum"] + (1 if integer else 0.5)
    if schema.get("exclusiveMaximum") is not None:
        high = schema["exclusiveMaximum"] - (1 if integer else 0.5)
    if low is None and high is None:
        low, high = 1, 10
    elif low is None:
        low = high - 9
    elif high is None:
        high = low + 9
    if integer:
        low, high = math.ceil(low), math.floor(high)
        return low + seed % max(1, high - low + 1) if high >= low else low
    return low + (high - low) * (seed % 101) / 100


# -- the obedient prompt injection ------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value - 1


def _inject(value: Any, schema: Any, root: dict[str, Any], counter: _Counter) -> Any:
    """`value` with hostile markup added to each free-text string, within the schema's limits."""
    schema = _resolve(schema, root)
    branch = _branch(schema, root, value)
    if branch is not None:
        schema = branch
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        return {key: _inject(item, properties.get(key, {}), root, counter) for key, item in value.items()}
    if isinstance(value, list):
        prefix = schema.get("prefixItems") or []
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_inject(item, prefix[i] if i < len(prefix) else items, root, counter) for i, item in enumerate(value)]
    if not isinstance(value, str) or "enum" in schema or "const" in schema:
        return value
    fmt = schema.get("format")
    if fmt in ("uri", "url", "iri", "uri-reference"):
        return HOSTILE_URL
    if fmt in ("date", "date-time", "time", "email", "uuid"):
        return value
    return _hostile(value, counter.next(), int(schema.get("minLength") or 0), schema.get("maxLength"))


def _hostile(original: str, start: int, low: int, high: Any) -> str:
    """`original` followed by as many HOSTILE pieces as fit (starting at piece `start`, so that the
    strings of one answer carry different pieces), at least one even if `original` must be cut."""
    order = HOSTILE[start % len(HOSTILE):] + HOSTILE[: start % len(HOSTILE)]
    if high is None:
        return _pad(" ".join((original, *order)), low)
    high = int(high)
    text, added = original, 0
    for piece in order:
        if len(text) + 1 + len(piece) <= high:
            text, added = f"{text} {piece}", added + 1
    if not added:
        piece = next((p for p in order if len(p) + 2 <= high), min(HOSTILE, key=len))
        room = high - len(piece) - 1
        text = f"{original[:room]} {piece}" if room > 0 else piece[:high]
    return _pad(text, low)[:high]


# -- HTTP -------------------------------------------------------------------------------------------


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the openai client pools connections

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            self._serve("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            call = fake._receive(method, self.path.split("?", 1)[0], dict(self.headers.items()), raw)
            counted = call.is_completion
            if counted:
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                status, headers, content, delay = fake._respond(call)
                if delay:
                    time.sleep(delay)  # this connection's thread only
                reply(self, status, headers, content)
                call.status = status
            finally:
                call.finished = time.time()
                if counted:
                    with fake.lock:
                        fake.in_flight -= 1

        def log_message(self, *_: Any) -> None:
            pass  # the records are the log

    return Handler


__all__ = [
    "API_KEY", "Call", "FakeOpenAI", "Fault", "HOSTILE", "HOSTILE_URL", "Subject", "VIOLATIONS",
    "mentions", "paper_subject", "user_text",
]
