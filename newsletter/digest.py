"""A day's digest: the Markdown file parsed into typed objects that every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class Inline:
    """A run of the digest's inline Markdown, made safe once for both parts of the email."""

    html: str  # escaped; only http(s) and mailto links kept
    text: str  # plain text, every link written out


@dataclass(frozen=True)
class Paper:
    rank: int
    title: str
    url: str
    paper_id: str | None  # the Hugging Face paper id (e.g. "2601.15876"), when the link is one
    upvotes: int | None
    thumbnail: str | None  # as written in the digest: a path beside it or an absolute URL
    summary: Inline | None
    key_points: list[Inline] = field(default_factory=list)
    abstract: list[Inline] = field(default_factory=list)  # paragraphs
    line: int = 0  # where the paper's heading stands in the file


@dataclass(frozen=True)
class Digest:
    date: date
    title: str
    papers: list[Paper]
    language: str  # BCP 47 tag of the body text ("ko" for the example)
    path: Path
