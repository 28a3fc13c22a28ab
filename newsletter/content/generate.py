"""Writing the day's digest: Hugging Face Daily Papers in, the `digest_top` most upvoted, a summary of
each (by any OpenAI-compatible model, or from the API's own text), and the Markdown file the parser
reads (digest.py) out, with each paper's thumbnail beside it for the asset pipeline.

Everything that comes from outside is data, never markup: the API's titles and abstracts are written
escaped, so that they come out of the parser as the very characters that went in, and a model's
answer is first reduced to plain text (its HTML, links and images removed, each field capped), so
that a model obeying a prompt injection in an abstract can put no script, link or image anywhere.

Each summary is cached in the database under (paper, model, language, prompt version) with the
tokens it cost: generating a day again makes no call for a paper already summarised and writes the
same bytes. The file is written all or nothing: one paper that cannot be summarised leaves no file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from html.parser import HTMLParser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from markdown_it import MarkdownIt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine

from .. import db
from .digest import clean_text, without_personal_tags
from ..providers.headers import plain_text
from ..errors import ConfigError, DigestExists, GenerateError
from ..files import atomic_file
from ..sections import Generation

PAPER_URL = "https://huggingface.co/papers/{id}"
# An arXiv id ("2601.15876", "2601.15876v2"), which is what Hugging Face's papers are named by: it
# names a file and goes into a URL, so nothing else passes.
_PAPER_ID = re.compile(r"\d{4}\.\d{4,5}(?:v\d{1,3})?")

# What one field of a summary may hold, in characters, and how many paragraphs an abstract may have:
# a model that runs on (or is told to) cannot fill the email.
# Bumped with every change to what markup_to_text keeps: it is part of the prompt version, so a
# summary cleaned by an older rule is made anew rather than served from the cache.
CLEANING = 2
TITLE_MAX = 300
SUMMARY_MAX = 1200
KEY_POINT_MAX = 400
PARAGRAPH_MAX = 3000
PARAGRAPHS_MAX = 12
KEY_POINTS = 3
# An answer larger than this is neither a day's papers nor a thumbnail, which also has at most
# THUMBNAIL_MAX_PIXELS: a small file can decode to gigabytes.
ANSWER_MAX_BYTES = 10 * 1024 * 1024
THUMBNAIL_MAX_PIXELS = 25_000_000
# Tries of a model whose answer is not the JSON the schema asks for (HTTP failures are retried by the
# openai client itself, honouring Retry-After).
ANSWER_TRIES = 3


# -- the source ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePaper:
    """One paper as the source gave it (all of it untrusted text)."""

    id: str
    title: str
    abstract: str
    upvotes: int
    ai_summary: str
    thumbnail_url: str | None

    @property
    def url(self) -> str:
        return PAPER_URL.format(id=self.id)


def top_papers(items: Any, top: int) -> list[SourcePaper]:
    """The `top` most upvoted papers of the API's answer (ties in the API's order); items that are not
    papers are left out."""
    if not isinstance(items, list):
        raise GenerateError("the source's answer is not a list of papers")
    papers = [paper for item in items if (paper := _source_paper(item)) is not None]
    # sorted() is stable: papers with equal upvotes keep the API's order.
    return sorted(papers, key=lambda paper: -paper.upvotes)[:top]


def _source_paper(item: Any) -> SourcePaper | None:
    paper = item.get("paper") if isinstance(item, dict) else None
    if not isinstance(paper, dict):
        return None
    paper_id, title = paper.get("id"), paper.get("title") or item.get("title")
    if not isinstance(paper_id, str) or not _PAPER_ID.fullmatch(paper_id) or not isinstance(title, str):
        return None
    # A title the digest would show as nothing (blanks, bidi controls) makes no card.
    title = " ".join(without_personal_tags(title).split())[:TITLE_MAX]
    if not title:
        return None
    upvotes = paper.get("upvotes")
    thumbnail = item.get("thumbnail")
    return SourcePaper(
        id=paper_id,
        title=title,
        abstract=_text(paper.get("summary")),
        upvotes=upvotes if isinstance(upvotes, int) and not isinstance(upvotes, bool) and upvotes >= 0 else 0,
        ai_summary=_text(paper.get("ai_summary")),
        thumbnail_url=thumbnail if isinstance(thumbnail, str) and re.match(r"https?://", thumbnail) else None,
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


class Source:
    """Hugging Face's Daily Papers API (`source_url`), and the thumbnails its answer names."""

    TRIES = 3

    def __init__(self, client: httpx.AsyncClient, source_url: str) -> None:
        self._client = client
        self._url = source_url.rstrip("/")

    async def papers(self, day: date, top: int) -> list[SourcePaper]:
        url = f"{self._url}/api/daily_papers"
        answer = await self._get(url, params={"date": day.isoformat()}, what="the source")
        try:
            items = answer.json()
        except ValueError:
            raise GenerateError(f"the source ({url}) answered something that is not JSON") from None
        return top_papers(items, top)

    async def thumbnail(self, paper: SourcePaper, folder: Path) -> tuple[str | None, str]:
        """(the thumbnail's path beside the digest, "" ) once downloaded into `folder`/images, or
        (None, why not). A file already there (an earlier run's) is kept."""
        if paper.thumbnail_url is None:
            return None, "the source names no thumbnail"
        images = folder / "images"
        for known in images.glob(f"{paper.id}.*") if images.is_dir() else ():
            return f"images/{known.name}", ""
        try:
            answer = await self._get(paper.thumbnail_url, what="the thumbnail's server")
        except GenerateError as error:
            return None, str(error)
        extension = _image_extension(answer.content)
        if extension is None:
            return None, "the thumbnail is not an image"
        with atomic_file(images / f"{paper.id}.{extension}") as out:
            out.write(answer.content)
        return f"images/{paper.id}.{extension}", ""

    async def _get(self, url: str, *, what: str, params: dict[str, str] | None = None) -> httpx.Response:
        delay = 1.0
        for attempt in range(1, self.TRIES + 1):
            try:
                answer = await self._read(url, params)
            except httpx.HTTPError as error:
                problem = f"{what} could not be reached ({type(error).__name__})"
            else:
                if answer is None:
                    raise GenerateError(f"{what} answered more than {ANSWER_MAX_BYTES // 2**20} MB")
                if answer.status_code == 200:
                    return answer
                problem = f"{what} answered {answer.status_code}"
                if answer.status_code not in (429, 500, 502, 503, 504):
                    break
            if attempt < self.TRIES:
                await asyncio.sleep(delay)
                delay *= 2
        raise GenerateError(f"{problem} ({url.split('?')[0]})")


    async def _read(self, url: str, params: dict[str, str] | None) -> httpx.Response | None:
        """The answer, its body read whole, or None once it runs past ANSWER_MAX_BYTES: read as it
        streams in, so an endless answer costs no more memory than that."""
        async with self._client.stream("GET", url, params=params) as answer:
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > ANSWER_MAX_BYTES:
                    return None
        return httpx.Response(answer.status_code, headers=answer.headers, content=bytes(body), request=answer.request)


def _image_extension(data: bytes) -> str | None:
    """The extension of an image Pillow can read, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > THUMBNAIL_MAX_PIXELS:
                return None
            image.verify()
            kind = image.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}.get(kind or "")


# -- summaries ------------------------------------------------------------------------------------------


class Sections(BaseModel):
    """A paper's three sections, as the digest shows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str = Field(min_length=1)
    key_points: list[str] = Field(min_length=KEY_POINTS, max_length=KEY_POINTS)
    abstract: list[str] = Field(min_length=1)


# What the model is asked to answer: OpenAI's json_schema mode, which vLLM, Ollama and llama.cpp's
# server accept too. Written out rather than derived, since strict mode takes a subset of JSON
# Schema and every server reads this one the same way.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "one paragraph"},
        "key_points": {"type": "array", "items": {"type": "string"}, "minItems": KEY_POINTS, "maxItems": KEY_POINTS},
        "abstract": {"type": "array", "items": {"type": "string"}, "description": "the abstract, paragraph by paragraph"},
    },
    "required": ["summary", "key_points", "abstract"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Summary:
    sections: Sections
    cached: bool  # from the database: no model call
    tokens: int  # what the model call cost (0 when cached or made without a model)


class Summarizer(Protocol):
    model: str  # names the cache's entries ("" for none: nothing is cached)

    async def summarize(self, paper: SourcePaper) -> Summary: ...


class FromTheSource:
    """`summarizer = "none"`: the digest from the API alone, in English: its AI summary (or the
    abstract's first sentences), three key sentences of the abstract, and the abstract itself."""

    model = ""

    async def summarize(self, paper: SourcePaper) -> Summary:
        sentences = _sentences(paper.abstract)
        summary = paper.ai_summary or " ".join(sentences[:2]) or paper.title
        points = sentences[:KEY_POINTS] if paper.ai_summary else sentences[2 : 2 + KEY_POINTS]
        paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", paper.abstract) if part.strip()]
        sections = Sections.model_construct(summary=summary, key_points=points, abstract=paragraphs or [paper.title])
        return Summary(within_limits(sections), cached=False, tokens=0)


def _sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])", " ".join(text.split())) if part]


@dataclass(frozen=True)
class Prompts:
    system: str
    user: Callable[[SourcePaper], str]
    version: str  # changes with the prompts' text and the schema: a new version is summarised anew


class ByModel:
    """`summarizer = "openai"`: one chat completion per paper from an OpenAI-compatible endpoint,
    its answer held to SCHEMA, cached in `engine` under (paper, model, language, prompt version)."""

    def __init__(self, client: Any, model: str, language: str, prompts: Prompts, engine: Engine) -> None:
        self._client = client  # an openai.AsyncOpenAI
        self.model = model
        self._language = language
        self._prompts = prompts
        self._engine = engine

    async def summarize(self, paper: SourcePaper) -> Summary:
        key = {"paper_id": paper.id, "model": self.model, "language": self._language, "prompt_version": self._prompts.version}
        cached = await asyncio.to_thread(self._cached, key)
        if cached is not None:
            return Summary(cached, cached=True, tokens=0)
        sections, prompt_tokens, completion_tokens = await self._ask(paper)
        await asyncio.to_thread(self._remember, key, sections, prompt_tokens, completion_tokens)
        return Summary(sections, cached=False, tokens=prompt_tokens + completion_tokens)

    async def _ask(self, paper: SourcePaper) -> tuple[Sections, int, int]:
        # Imported where a model is asked: the package costs a few tenths of a second to import,
        # which `summarizer = "none"` and every other command never need.
        import openai

        messages = [{"role": "system", "content": self._prompts.system}, {"role": "user", "content": self._prompts.user(paper)}]
        response_format = {"type": "json_schema", "json_schema": {"name": "paper_summary", "schema": SCHEMA, "strict": True}}
        problem = ""
        for attempt in range(1, ANSWER_TRIES + 1):
            try:
                answer = await self._client.chat.completions.create(
                    model=self.model, messages=messages, response_format=response_format
                )
            except openai.APIStatusError as error:
                raise GenerateError(f"paper {paper.id}: the model's server answered {error.status_code}") from None
            except openai.APIConnectionError as error:  # timeouts included
                raise GenerateError(f"paper {paper.id}: the model's server could not be reached ({type(error).__name__})") from None
            usage = answer.usage
            content = answer.choices[0].message.content if answer.choices else None
            try:
                sections = within_limits(Sections.model_validate_json(content or ""), markup_to_text)
            except ValidationError as error:
                problem = _why_invalid(error)
                if attempt < ANSWER_TRIES:
                    await asyncio.sleep(0.5 * attempt)
                continue
            tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            return sections, *tokens
        raise GenerateError(f"paper {paper.id}: the model's answer {problem}, {ANSWER_TRIES} times")

    def _cached(self, key: dict[str, str]) -> Sections | None:
        s = db.summaries.c
        with db.reading(self._engine) as conn:
            stored = conn.execute(
                select(s.sections).where(*(s[name] == value for name, value in key.items()))
            ).scalar()
        return Sections.model_construct(**stored) if stored is not None else None

    def _remember(self, key: dict[str, str], sections: Sections, prompt_tokens: int, completion_tokens: int) -> None:
        values = {
            **key,
            "sections": sections.model_dump(),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "created_at": datetime.now().astimezone(),
        }
        with self._engine.begin() as conn:
            # Two runs at once summarise a paper twice at worst; the first answer stays.
            conn.execute(db.insert_ignoring(conn.dialect.name, db.summaries).values(values))


def _why_invalid(error: ValidationError) -> str:
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return "was not JSON"
    where = ".".join(str(part) for part in first["loc"]) or "the answer"
    return f"did not match the schema ({where}: {first['msg']})"


# -- untrusted text to plain text ------------------------------------------------------------------------

# HTML on, so that a model's tags are parsed as tags and dropped, not kept as text.
_markup = MarkdownIt("commonmark", {"html": True}).enable("strikethrough")


def markup_to_text(markup: str, limit: int) -> str:
    """`markup` (a model's Markdown or HTML) as the plain text a reader would see, one line, at most
    `limit` characters: tags, scripts and styles, images and link targets removed; a link keeps its
    words, and Markdown inside an HTML block is read as Markdown too."""
    # The parser's cleaning first: a bidi control inside "java\u202escript:" or "<scr\u202aipt>"
    # would otherwise hide it from the passes below and vanish after them.
    text = _LEFTOVER_TAG.sub(" ", _text_of(clean_text(markup), depth=2))
    text = _LEFTOVER_LINK.sub(lambda found: "" if found[1] else found[2], text)
    # Mail clients make links of URLs in text: a model's summary needs none, so none is left.
    return _capped(plain_text(_URL.sub(" ", text)), limit)


# What still looks like a tag or a link once the Markdown is read: a tag written as entities
# ("&lt;script&gt;"), a link whose target CommonMark refused to make one (javascript:).
_LEFTOVER_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", re.S)
_URL = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.|(?:javascript|vbscript|data|file):)\S*")
_LEFTOVER_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\((?:[^()\n]|\([^()\n]*\))*\)")


def _text_of(markup: str, depth: int) -> str:
    words: list[str] = []
    for block in _markup.parse(markup):
        if block.type == "inline":
            for token in block.children or []:
                if token.type in ("text", "code_inline"):
                    words.append(token.content)
                elif token.type in ("softbreak", "hardbreak"):
                    words.append(" ")
        elif block.type in ("fence", "code_block"):
            words.append(block.content)
        elif block.type == "html_block" and depth > 0:
            words.append(_text_of(_html_text(block.content), depth - 1))
        words.append(" ")
    return "".join(words)


class _HTMLText(HTMLParser):
    """The text of some HTML, without what a browser would not show as text."""

    HIDDEN = frozenset({"script", "style", "template", "noscript", "iframe", "object", "svg", "math", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self._hidden:
            self._hidden -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def _capped(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def within_limits(sections: Sections, clean: Callable[[str, int], str] = _capped) -> Sections:
    """`sections` with every field made one line by `clean` within its cap; empty ones dropped. The
    source's text keeps every character (it is escaped when written); a model's goes through
    markup_to_text."""
    paragraphs = [text for paragraph in sections.abstract[:PARAGRAPHS_MAX] if (text := clean(paragraph, PARAGRAPH_MAX))]
    return Sections.model_construct(
        summary=clean(sections.summary, SUMMARY_MAX),
        key_points=[text for point in sections.key_points[:KEY_POINTS] if (text := clean(point, KEY_POINT_MAX))],
        abstract=paragraphs,
    )


# -- the digest -------------------------------------------------------------------------------------------

_HEADINGS = {
    "ko": ("📌 요약", "🔑 핵심 포인트", "📝 초록 (번역)"),
    "en": ("📌 Summary", "🔑 Key points", "📝 Abstract"),
}
# Characters that mean something in CommonMark wherever they stand (emphasis, links, entities,
# autolinks, code, strikethrough, escapes); the others matter only at the start of a line.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>&~])")
_LINE_START = re.compile(r"^([#+=>|-]|\d+(?=[.)]))")


def markdown_text(text: str) -> str:
    """`text` written so that CommonMark reads it back as exactly these characters, on one line (less
    any personal tag's dashes: no text from outside may carry a reader's link)."""
    escaped = _INLINE_SPECIAL.sub(r"\\\1", " ".join(without_personal_tags(text).split()))
    start = _LINE_START.match(escaped)
    if start is None:
        return escaped
    if start.group(1).isdigit():  # "1. " or "1) " would start a list: escape the punctuation
        end = start.end()
        return f"{escaped[:end]}\\{escaped[end:]}"
    return f"\\{escaped}"


@dataclass(frozen=True)
class DigestPaper:
    paper: SourcePaper
    thumbnail: str | None  # path beside the digest
    summary: Summary


def digest_markdown(day: date, papers: Sequence[DigestPaper], language: str) -> str:
    """The digest file: the format of digests/2026-01-23.md, which digest.py reads."""
    summary_heading, points_heading, abstract_heading = _HEADINGS["ko" if language == "ko" else "en"]
    lines = [f"# {day.isoformat()} Daily Papers (Top {len(papers)})", ""]
    for rank, item in enumerate(papers, start=1):
        paper, sections = item.paper, item.summary.sections
        lines += [f"## {rank}. [{markdown_text(paper.title)}]({paper.url})", f"**Upvotes**: {paper.upvotes}", ""]
        if item.thumbnail:
            lines += [f"![Thumbnail]({item.thumbnail})", ""]
        lines += [f"### {summary_heading}", markdown_text(sections.summary), ""]
        if sections.key_points:
            lines += [f"### {points_heading}", *(f"- {markdown_text(point)}" for point in sections.key_points), ""]
        lines += [f"### {abstract_heading}"]
        for paragraph in sections.abstract:
            lines += [markdown_text(paragraph), ""]
        lines += ["", "---", ""]
    return "\n".join(lines[:-3]) + "\n"


# -- the day ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    path: Path
    papers: list[DigestPaper]
    warnings: list[str]  # thumbnails that could not be had

    @property
    def tokens(self) -> int:
        return sum(item.summary.tokens for item in self.papers)


async def generate_digest(
    day: date,
    *,
    folder: Path,
    source: Source,
    summarizer: Summarizer,
    top: int,
    language: str,
    concurrency: int,
    force: bool = False,
    on_paper: Callable[[SourcePaper], None] = lambda paper: None,
) -> Generated:
    """Write `day`'s digest into `folder` from `source`, each paper summarised by `summarizer`
    (at most `concurrency` at once): all of it, or nothing (GenerateError naming the paper and why).
    An existing digest is kept unless `force` (DigestExists); a day without papers is NothingToday."""
    path = folder / f"{day.isoformat()}.md"
    if path.exists() and not force:
        raise DigestExists(f"{path}: a digest is there already (an editor may have edited it); --force writes it anew")
    papers = await source.papers(day, top)
    if not papers:
        raise GenerateError(f"the source has no papers for {day.isoformat()}", nothing_today=True)
    slots = asyncio.Semaphore(concurrency)

    async def one(paper: SourcePaper) -> tuple[DigestPaper, str]:
        async with slots:
            summary = await summarizer.summarize(paper)
        thumbnail, why_not = await source.thumbnail(paper, folder)
        on_paper(paper)
        warning = f"paper {paper.id} has no thumbnail: {why_not}" if thumbnail is None else ""
        return DigestPaper(paper, thumbnail, summary), warning

    results = await asyncio.gather(*(one(paper) for paper in papers), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    for failure in failures:
        if not isinstance(failure, GenerateError):
            raise failure
    if failures:
        # Every summary that succeeded is cached: the next try costs only the failures.
        raise GenerateError("; ".join(str(failure) for failure in failures))
    done = [result for result in results if not isinstance(result, BaseException)]
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(digest_markdown(day, [item for item, _ in done], language))
    return Generated(path, [item for item, _ in done], [warning for _, warning in done if warning])


def prompts_from(templates_dir: Path, language: str) -> Prompts:
    """The prompts in templates/prompts/ (where an editor tunes them) for `language`."""
    from babel import Locale, UnknownLocaleError
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    try:
        language_name = Locale.parse(language.replace("-", "_")).get_display_name("en")
    except (ValueError, UnknownLocaleError):
        raise ConfigError(f"digest_language: {language!r} is not a language tag (such as 'ko' or 'en')") from None
    folder = templates_dir / "prompts"
    environment = Environment(loader=FileSystemLoader(folder), undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    system, user = (environment.get_template(name) for name in ("summarize.system.j2", "summarize.user.j2"))
    sources = "".join((folder / name).read_text(encoding="utf-8") for name in ("summarize.system.j2", "summarize.user.j2"))
    signed = f"{sources}{json.dumps(SCHEMA, sort_keys=True)}{CLEANING}"
    version = hashlib.sha256(signed.encode()).hexdigest()[:16]
    context = {"language": language_name, "key_points": KEY_POINTS}
    return Prompts(
        system=system.render(context),
        user=lambda paper: user.render(context, title=paper.title, abstract=paper.abstract, paper_id=paper.id),
        version=version,
    )


def generate_day(
    generation: Generation,
    engine: Engine,
    day: date,
    *,
    top: int | None = None,
    force: bool = False,
    on_paper: Callable[[SourcePaper], None] = lambda paper: None,
) -> Generated:
    """generate_digest with the configured source and summarizer, built here (the command's edge)."""
    uses_model = generation.summarizer == "openai"
    if uses_model and not generation.llm_model:
        raise ConfigError("summarizer = 'openai' needs llm_model: the model to ask (e.g. 'gpt-4o-mini', or a local model's name)")
    if uses_model and generation.llm_api_key is None:
        raise ConfigError("summarizer = 'openai' needs NEWSLETTER_LLM_API_KEY in the environment (any value for a local server without keys)")
    timeout = httpx.Timeout(generation.read_timeout, connect=generation.connect_timeout)

    async def run() -> Generated:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            summarizer: Summarizer = FromTheSource()
            if uses_model:
                import openai

                assert generation.llm_api_key is not None and generation.llm_model is not None
                model_client = openai.AsyncOpenAI(
                    api_key=generation.llm_api_key.get_secret_value(),
                    base_url=generation.llm_base_url,
                    timeout=generation.llm_timeout,
                    max_retries=generation.max_retries,
                )
                prompts = prompts_from(generation.templates_dir, generation.digest_language)
                summarizer = ByModel(model_client, generation.llm_model, generation.digest_language, prompts, engine)
            try:
                return await generate_digest(
                    day,
                    folder=generation.digests_dir,
                    source=Source(client, generation.source_url),
                    summarizer=summarizer,
                    top=top or generation.digest_top,
                    language=generation.digest_language if uses_model else "en",
                    concurrency=generation.llm_concurrency,
                    force=force,
                    on_paper=on_paper,
                )
            finally:
                if uses_model:
                    await model_client.close()

    return asyncio.run(run())
