"""How long the digest stage takes: parsing (the example, and a 250-paper digest) and making a
camera-sized local thumbnail fit for email (first time, and again when it is already published).

Prints medians; asserts nothing. Run: python bench/bench_digest.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from newsletter.content.assets import assets_dir, resolve_thumbnail  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content.digest import parse_digest  # noqa: E402

EXAMPLE = ROOT / "digests" / "2026-01-23.md"


def median_ms(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def big_digest(papers: int) -> str:
    text = EXAMPLE.read_text()
    head, _, body = text.partition("\n## 1. ")
    blocks = ("## 1. " + body).split("\n---\n")
    blocks = [block for block in blocks if block.strip()]
    out = [head.replace("(Top 5)", f"(Top {papers})")]
    for rank in range(1, papers + 1):
        block = blocks[(rank - 1) % len(blocks)]
        out.append(f"## {rank}. " + block.split(". ", 1)[1])
    return "\n\n---\n\n".join(out)


def main() -> None:
    example = EXAMPLE.read_text()
    ms = median_ms(lambda: parse_digest(example, EXAMPLE), 50)
    print(f"parse example digest (5 papers, {len(example.encode()) / 1024:.1f} KB): median {ms:.2f} ms")

    large = big_digest(250)
    ms = median_ms(lambda: parse_digest(large, EXAMPLE), 5)
    print(f"parse 250-paper digest ({len(large.encode()) / 1024:.0f} KB): median {ms:.1f} ms ({ms / 250:.3f} ms/paper)")

    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "digests" / "images").mkdir(parents=True)
        digest_file = project / "digests" / "2026-01-23.md"
        digest_file.write_text(example)
        digest = parse_digest(example, digest_file)
        paper = digest.papers[0]
        photo = project / "digests" / paper.thumbnail
        # A 12-megapixel camera photo with noise, so the encoder has real work to do.
        Image.effect_noise((4000, 3000), 64).convert("RGB").save(photo, quality=92)
        settings = load_settings(config_dir=project, asset_base_url="https://cdn.example.com")

        def fresh() -> None:
            for published in assets_dir(settings.site).glob("*"):
                published.unlink()
            resolve_thumbnail(paper, digest, settings.site)

        ms = median_ms(fresh, 5)
        print(f"thumbnail from a 4000x3000 JPEG ({photo.stat().st_size / 1024:.0f} KB), first time: median {ms:.0f} ms")
        ms = median_ms(lambda: resolve_thumbnail(paper, digest, settings.site), 5)
        print(f"thumbnail again, already published: median {ms:.2f} ms")
        (stored,) = assets_dir(settings.site).glob("*")
        with Image.open(stored) as image:
            print(f"published thumbnail: {image.size[0]}x{image.size[1]} {image.format}, {stored.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
