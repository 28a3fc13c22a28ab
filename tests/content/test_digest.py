"""The digest parser: the real example, and the ways real files vary or break."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.content.digest import Digest, digest_dates, load_digest, parse_digest
from newsletter.errors import DigestError

from ..support import EXAMPLE_DIGEST

PAPER = """\
## {rank}. [{title}](https://huggingface.co/papers/{paper_id})
**Upvotes**: {upvotes}

![Thumbnail](images/{paper_id}.jpg)

### {emoji} {summary}
A short summary.

### {emoji} {points}
- First point.
- Second point.

### {emoji} {abstract}
First paragraph.

Second paragraph.

---
"""


def digest_text(*papers: str, title: str = "# 2026-01-23 Daily Papers (Top 2)") -> str:
    return title + "\n\n" + "\n".join(papers)


def paper(
    rank: int = 1,
    *,
    title: str = "A Paper",
    paper_id: str = "2601.00001",
    upvotes: str = "10",
    emoji: str = "📌",
    summary: str = "요약",
    points: str = "핵심 포인트",
    abstract: str = "초록 (번역)",
) -> str:
    return PAPER.format(
        rank=rank,
        title=title,
        paper_id=paper_id,
        upvotes=upvotes,
        emoji=emoji,
        summary=summary,
        points=points,
        abstract=abstract,
    )


def parse(text: str, name: str = "2026-01-23.md") -> Digest:
    return parse_digest(text, Path("digests") / name)


# -- the real example --------------------------------------------------------------------------


def test_example_digest_parses_into_five_papers(settings: Settings) -> None:
    digest = load_digest(settings.site, date(2026, 1, 23))

    assert digest.date == date(2026, 1, 23)
    assert digest.title == "2026-01-23 Daily Papers (Top 5)"
    assert digest.language == "ko"
    assert [p.rank for p in digest.papers] == [1, 2, 3, 4, 5]
    assert [p.upvotes for p in digest.papers] == [62, 55, 52, 50, 45]
    assert [p.paper_id for p in digest.papers] == ["2601.15876", "2601.15165", "2601.14724", "2601.15197", "2601.16206"]
    first = digest.papers[0]
    assert first.title == (
        "EvoCUA: Evolving Computer Use Agents via Learning from Scalable Synthetic Experience"
    )
    assert first.url == "https://huggingface.co/papers/2601.15876"
    assert first.thumbnail == (
        "images/EvoCUA_Evolving_Computer_Use_Agents_via_Learning_from_Scalable_Synthetic_Experience_img.jpg"
    )
    assert first.line == 3
    assert first.summary is not None
    assert first.summary.text.startswith("정적인 데이터 모방의 한계를 극복하고")
    assert all(len(p.key_points) == 3 for p in digest.papers)
    assert first.key_points[1].text.startswith("OSWorld 벤치마크에서 56.7%의 성공률로")
    assert [len(p.abstract) for p in digest.papers] == [3, 4, 3, 1, 1]
    assert first.abstract[2].text.startswith("OSWorld 벤치마크 평가 결과")
    assert digest.papers[3].key_points[0].text.startswith("['정보 붕괴(Information Collapse)' 방지]")


def test_example_digest_has_no_replacement_character_anywhere(settings: Settings) -> None:
    assert "\ufffd" in EXAMPLE_DIGEST.read_text()  # the broken emoji this test is about
    digest = load_digest(settings.site)

    assert "\ufffd" not in repr(digest)


def test_latest_digest_is_loaded_without_a_date(settings: Settings, project: Path) -> None:
    newer = parse(EXAMPLE_DIGEST.read_text()).papers[0]
    (project / "digests" / "2026-01-24.md").write_text(
        digest_text(paper(title=newer.title), title="# 2026-01-24 Daily Papers (Top 1)")
    )
    (project / "digests" / "notes.md").write_text("# not a digest\n")

    assert digest_dates(settings.site) == [date(2026, 1, 23), date(2026, 1, 24)]
    assert load_digest(settings.site).date == date(2026, 1, 24)
    assert load_digest(settings.site, date(2026, 1, 23)).date == date(2026, 1, 23)


# -- tolerance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("emoji", ["📌", "💡", "\ufffd", "", "🔑\ufe0f"])
def test_section_headings_with_any_emoji_or_none(emoji: str) -> None:
    digest = parse(digest_text(paper(emoji=emoji)))

    (only,) = digest.papers
    assert only.summary is not None and only.summary.text == "A short summary."
    assert [point.text for point in only.key_points] == ["First point.", "Second point."]
    assert [paragraph.text for paragraph in only.abstract] == ["First paragraph.", "Second paragraph."]
    assert "\ufffd" not in repr(digest)


def test_english_headings() -> None:
    digest = parse(digest_text(paper(summary="Summary", points="Key Points", abstract="Abstract")))

    (only,) = digest.papers
    assert only.summary is not None and only.summary.text == "A short summary."
    assert len(only.key_points) == 2 and len(only.abstract) == 2
    assert digest.language == "en"


def test_missing_upvotes_and_thumbnail() -> None:
    text = digest_text(paper()).replace("**Upvotes**: 10\n", "").replace("![Thumbnail](images/2601.00001.jpg)\n", "")

    (only,) = parse(text).papers
    assert only.upvotes is None
    assert only.thumbnail is None
    assert only.summary is not None


@pytest.mark.parametrize(("written", "value"), [("1,234", 1234), ("12 345", 12345), ("7", 7), ("1.024", 1024)])
def test_upvotes_with_thousands_separators(written: str, value: int) -> None:
    (only,) = parse(digest_text(paper(upvotes=written))).papers
    assert only.upvotes == value


def test_replacement_characters_are_stripped_from_body_text() -> None:
    text = digest_text(paper(title="Bro\ufffdken")).replace("A short summary.", "A \ufffdshort summary.")

    (only,) = parse(text).papers
    assert only.title == "Broken"
    assert only.summary is not None and only.summary.text == "A short summary."
    assert "\ufffd" not in only.summary.html


def test_separator_right_under_text_is_not_a_heading() -> None:
    # "Second paragraph.\n---" is a setext heading to CommonMark; here it is the abstract's last paragraph.
    text = digest_text(paper(), paper(2, paper_id="2601.00002"))
    text = text.replace("Second paragraph.\n\n---", "Second paragraph.\n---")

    first, second = parse(text).papers
    assert [p.text for p in first.abstract] == ["First paragraph.", "Second paragraph."]
    assert second.rank == 2 and second.paper_id == "2601.00002"


def test_key_point_with_a_sub_list_stays_one_point() -> None:
    text = digest_text(paper()).replace("- First point.\n", "- First point.\n  - detail\n")

    (only,) = parse(text).papers
    assert [point.text for point in only.key_points] == ["First point. detail", "Second point."]


def test_paper_without_rank_is_numbered_by_position() -> None:
    text = digest_text(paper(1), paper(2, paper_id="2601.00002")).replace("## 2. [", "## [")

    assert [p.rank for p in parse(text).papers] == [1, 2]


def test_non_hugging_face_link_has_no_paper_id() -> None:
    text = digest_text(paper()).replace("https://huggingface.co/papers/2601.00001", "https://arxiv.org/abs/2601.00001")

    (only,) = parse(text).papers
    assert only.paper_id is None
    assert only.url == "https://arxiv.org/abs/2601.00001"


# -- inline Markdown and untrusted text -------------------------------------------------------


def test_inline_markdown_becomes_safe_html_and_plain_text() -> None:
    text = digest_text(paper()).replace(
        "A short summary.",
        "**Bold** and `x < y` with [the code](https://github.com/a/b?x=1&y=2) and <https://example.com>.",
    )

    summary = parse(text).papers[0].summary
    assert summary is not None
    assert summary.html == (
        '<strong>Bold</strong> and <code>x &lt; y</code> with '
        '<a href="https://github.com/a/b?x=1&amp;y=2">the code</a> and '
        '<a href="https://example.com">https://example.com</a>.'
    )
    assert summary.text == "Bold and x < y with the code (https://github.com/a/b?x=1&y=2) and https://example.com."


def test_raw_html_is_escaped_and_unsafe_links_keep_only_their_label() -> None:
    text = digest_text(paper()).replace(
        "A short summary.",
        '<script>alert(1)</script> <img src=x onerror="alert(2)"> [click](javascript:alert(3)) '
        "[data](data:text/html,hi) [rel](/relative) [mail](mailto:someone@example.com)",
    )

    summary = parse(text).papers[0].summary
    assert summary is not None
    assert "<script" not in summary.html and "<img" not in summary.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in summary.html
    assert "javascript:" not in summary.html and "data:" not in summary.html and "/relative" not in summary.html
    assert "click data rel" in summary.html
    assert '<a href="mailto:someone@example.com">mail</a>' in summary.html
    assert summary.text.endswith("click data rel mail (someone@example.com)")


def test_raw_html_block_is_text() -> None:
    text = digest_text(paper()).replace("A short summary.", '<div onclick="x()">hi</div>')

    summary = parse(text).papers[0].summary
    assert summary is not None
    assert summary.html == "&lt;div onclick=\"x()\"&gt;hi&lt;/div&gt;"


# -- digests that cannot make an issue --------------------------------------------------------


def test_empty_digest_is_an_error() -> None:
    with pytest.raises(DigestError, match=r"^digests/2026-01-23\.md:1: no title"):
        parse("")


def test_digest_without_papers_is_an_error() -> None:
    with pytest.raises(DigestError, match=r"^digests/2026-01-23\.md:1: no papers"):
        parse("# 2026-01-23 Daily Papers (Top 5)\n\nNothing today.\n")


def test_paper_without_linked_title_names_the_line() -> None:
    text = digest_text(paper(1), paper(2))
    text = text.replace("## 2. [A Paper](https://huggingface.co/papers/2601.00001)", "## 2. A Paper")
    line = text.splitlines().index("## 2. A Paper") + 1

    with pytest.raises(DigestError) as caught:
        parse(text)
    assert str(caught.value).startswith(f"digests/2026-01-23.md:{line}: paper heading '2. A Paper' has no linked title")
    assert caught.value.line == line


def test_paper_linked_to_javascript_is_an_error() -> None:
    text = digest_text(paper()).replace("https://huggingface.co/papers/2601.00001", "javascript:alert(1)")

    with pytest.raises(DigestError, match=r":3: the paper's link must be an absolute http\(s\) URL"):
        parse(text)


def test_title_date_must_match_the_file_name() -> None:
    with pytest.raises(DigestError, match=r"^digests/2026-01-24\.md:1: the title's date 2026-01-23 does not match"):
        parse(digest_text(paper()), name="2026-01-24.md")


def test_date_from_title_when_the_file_is_not_named_by_date() -> None:
    assert parse(digest_text(paper()), name="today.md").date == date(2026, 1, 23)
    with pytest.raises(DigestError, match="cannot tell the digest's date"):
        parse(digest_text(paper(), title="# Daily Papers"), name="today.md")


def test_missing_digest_names_the_path(settings: Settings, project: Path) -> None:
    with pytest.raises(DigestError) as caught:
        load_digest(settings.site, date(2026, 2, 1))
    assert str(caught.value) == f"{project / 'digests' / '2026-02-01.md'}: no digest for 2026-02-01"


def test_no_digest_at_all(settings: Settings, project: Path) -> None:
    (project / "digests" / "2026-01-23.md").unlink()
    with pytest.raises(DigestError, match="no digest found"):
        load_digest(settings.site)


def test_undecodable_bytes_are_dropped(settings: Settings, project: Path) -> None:
    path = project / "digests" / "2026-01-22.md"
    text = digest_text(paper(), title="# 2026-01-22 Daily Papers (Top 1)")
    path.write_bytes(text.encode().replace(b"A short", b"A \xf0\x9f short"))

    summary = load_digest(settings.site, date(2026, 1, 22)).papers[0].summary
    assert summary is not None and summary.text == "A  short summary."


# -- the unsubscribe placeholder, runaway numbers, invisible controls -----------------------------


@pytest.mark.parametrize(
    ("where", "written"),
    [
        ("a link", "[win](https://evil.example/?u=-unsubscribe_url-)"),
        ("plain text", "Reply with -unsubscribe_url- to win."),
        ("another case", "-UNSUBSCRIBE_URL-"),
        ("an image", "![x](https://evil.example/-Unsubscribe_Url-.png)"),
    ],
)
def test_the_unsubscribe_placeholder_is_refused_naming_its_line(where: str, written: str) -> None:
    text = digest_text(paper()).replace("A short summary.", f"A short summary.\n{written}")
    line = text.splitlines().index(written) + 1

    with pytest.raises(DigestError, match=rf"^digests/2026-01-23\.md:{line}: .*'-unsubscribe_url-'.*personal links"):
        parse(text)


def test_the_unsubscribe_placeholder_in_a_title_is_refused() -> None:
    # SendGrid substitutes in the subject too, which is made from the first paper's title.
    with pytest.raises(DigestError, match=r"2026-01-23\.md:3: .*unsubscribe"):
        parse(digest_text(paper(title="-unsubscribe_url-: A Paper")))


@pytest.mark.parametrize(
    "spelled",
    [
        r"-unsubscribe\_url-",  # a Markdown escape
        "-unsubscribe&#95;url-",  # an entity
        "-unsubscribe`_url-`",  # split by a code span: the text part joins it again
        "[win](https://evil.example/?u=-unsubscribe&#x5f;url-)",  # an entity inside a link
    ],
)
def test_the_unsubscribe_placeholder_spelled_otherwise_is_refused(spelled: str) -> None:
    text = digest_text(paper()).replace("A short summary.", f"A short summary.\n{spelled}")

    with pytest.raises(DigestError, match=r"2026-01-23\.md:9: .*unsubscribe_url"):
        parse(text)


def test_key_points_end_at_a_heading_inside_their_list_item() -> None:
    # The abstract heading sits inside the last key point's list item; that point must stay with
    # the first paper and not be glued to the second paper's first point.
    first = paper().replace(
        "- Second point.\n\n### 📌 초록 (번역)\nFirst paragraph.\n",
        "- paper-one point\n  ### 초록\n  abstract text\n",
    )
    second = paper(2, paper_id="2601.00002").replace("- First point.", "- paper-two point")

    one, two = parse(digest_text(first, second)).papers
    assert [point.text for point in one.key_points] == ["First point.", "paper-one point"]
    assert [paragraph.text for paragraph in one.abstract] == ["abstract text", "Second paragraph."]
    assert [point.text for point in two.key_points] == ["paper-two point", "Second point."]


@pytest.mark.parametrize("upvotes", ["9" * 5000, "1234567890", "1,234,567,890"], ids=["5000-nines", "10", "10-grouped"])
def test_an_upvote_count_with_too_many_digits_names_its_line(upvotes: str) -> None:
    with pytest.raises(DigestError, match=r"2026-01-23\.md:4: the upvote count \d+.* has more than 9 digits"):
        parse(digest_text(paper(upvotes=upvotes)))


def test_a_rank_with_too_many_digits_names_its_line() -> None:
    text = digest_text(paper()).replace("## 1. [", "## " + "7" * 5000 + ". [")

    with pytest.raises(DigestError, match=r"2026-01-23\.md:3: the rank 777777777777… \(5000 digits\) has more"):
        parse(text)


def test_the_largest_counts_still_parse() -> None:
    text = digest_text(paper(upvotes="999,999,999")).replace("## 1. [", "## 123456789. [")

    (only,) = parse(text).papers
    assert (only.rank, only.upvotes) == (123456789, 999999999)


def test_bidi_and_control_characters_are_stripped() -> None:
    controls = "\u202e\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c\x00\x07\x1b\x7f\x85"
    text = digest_text(paper(title=f"Safe{controls} Title")).replace(
        "A short summary.", "A short\u202e summary.\x0b\tTabbed."
    )

    (only,) = parse(text).papers
    assert only.title == "Safe Title"
    assert only.summary is not None and only.summary.text == "A short summary.\tTabbed."
    assert not any(char in repr(only) for char in controls)
