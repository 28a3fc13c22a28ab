"""Thumbnails: remote ones as they are, local ones made fit for email and published by content hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from newsletter.content.assets import (
    MAX_STORED_WIDTH,
    THUMBNAIL_DISPLAY_WIDTH,
    Thumbnail,
    asset_file,
    assets_dir,
    resolve_thumbnail,
)
from newsletter.config import Settings, load_settings
from newsletter.content.digest import Digest, Paper, load_digest

HF_THUMB = "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/{}.png"


@pytest.fixture
def digest(settings: Settings) -> Digest:
    return load_digest(settings.site)


@pytest.fixture
def cdn_settings(project: Path) -> Settings:
    return load_settings(config_dir=project, asset_base_url="https://cdn.example.com/newsletter")


def with_thumbnail(paper: Paper, thumbnail: str | None, *, url: str | None = None) -> Paper:
    return dataclasses.replace(
        paper, thumbnail=thumbnail, url=url or paper.url, paper_id=None if url else paper.paper_id
    )


def photo(path: Path, size: tuple[int, int], *, orientation: int | None = None) -> None:
    """A JPEG whose top-left quarter is red (the rest blue), with camera EXIF and an ICC profile."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1] // 4))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0131] = "EditorApp 1.0"  # Software
    if orientation:
        exif[0x0112] = orientation
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", exif=exif.tobytes(), icc_profile=srgb, comment=b"private note")


def published(settings: Settings) -> list[Path]:
    folder = assets_dir(settings.site)
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_example_thumbnails_fall_back_to_hugging_face(settings: Settings, digest: Digest) -> None:
    # The example's images/ folder is not in the repository.
    thumbnails = [resolve_thumbnail(paper, digest, settings.site) for paper in digest.papers]

    assert [t.url for t in thumbnails if t] == [HF_THUMB.format(p.paper_id) for p in digest.papers]
    assert {(t.width, t.height) for t in thumbnails if t} == {(552, 290)}
    assert published(settings) == []


def test_absolute_https_thumbnail_is_used_as_is(settings: Settings, digest: Digest) -> None:
    paper = with_thumbnail(digest.papers[0], "https://images.example.com/a.png?x=1")

    assert resolve_thumbnail(paper, digest, settings.site) == Thumbnail("https://images.example.com/a.png?x=1", 552, 290)


def test_plain_http_thumbnail_is_not_used(settings: Settings, digest: Digest) -> None:
    paper = with_thumbnail(digest.papers[0], "http://images.example.com/a.png")

    thumbnail = resolve_thumbnail(paper, digest, settings.site)
    assert thumbnail is not None and thumbnail.url == HF_THUMB.format("2601.15876")


def test_local_jpeg_is_oriented_resized_stripped_and_hashed(
    cdn_settings: Settings, digest: Digest, project: Path
) -> None:
    source = project / "digests" / "images" / "paper one.jpg"
    photo(source, (3000, 2000), orientation=6)  # stored sideways: displays as 2000 wide, 3000 tall
    paper = with_thumbnail(digest.papers[0], "images/paper%20one.jpg")

    thumbnail = resolve_thumbnail(paper, digest, cdn_settings.site)

    (stored,) = published(cdn_settings)
    assert thumbnail == Thumbnail(f"https://cdn.example.com/newsletter/{stored.name}", 552, 828)
    assert stored.suffix == ".jpg" and len(stored.stem) == 24
    with Image.open(stored) as image:
        assert image.format == "JPEG"
        assert image.size == (MAX_STORED_WIDTH, 1656)
        assert not image.getexif()
        assert "icc_profile" not in image.info and "exif" not in image.info and "comment" not in image.info
        # Rotated 90° clockwise, the red corner now stands at the top right.
        red, _, blue = image.convert("RGB").getpixel((MAX_STORED_WIDTH - 10, 10))
        assert red > 200 and blue < 60
    assert b"SecretCam" not in stored.read_bytes() and b"private note" not in stored.read_bytes()


def test_republishing_is_deterministic_and_never_rewrites(settings: Settings, digest: Digest, project: Path) -> None:
    photo(project / "digests" / "images" / "a.jpg", (1600, 900))
    paper = with_thumbnail(digest.papers[0], "images/a.jpg")

    first = resolve_thumbnail(paper, digest, settings.site)
    (stored,) = published(settings)
    before = stored.stat()
    assert resolve_thumbnail(paper, digest, settings.site) == first
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    content = stored.read_bytes()
    stored.unlink()
    assert resolve_thumbnail(paper, digest, settings.site) == first
    assert stored.read_bytes() == content
    assert asset_file(settings.site, first.url) == stored


def test_png_with_transparency_stays_png_without_metadata(settings: Settings, digest: Digest, project: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "someone private")
    source = project / "digests" / "figure.png"
    Image.new("RGBA", (400, 100), (10, 20, 30, 128)).save(source, pnginfo=info)
    paper = with_thumbnail(digest.papers[0], "figure.png")

    thumbnail = resolve_thumbnail(paper, digest, settings.site)

    (stored,) = published(settings)
    assert thumbnail == Thumbnail(f"{settings.assets_url}/{stored.name}", 400, 100)  # never upscaled
    with Image.open(stored) as image:
        assert image.format == "PNG" and image.mode == "RGBA" and image.size == (400, 100)
        assert "Author" not in image.info
        assert image.getpixel((0, 0)) == (10, 20, 30, 128)


def test_missing_local_file_falls_back_to_hugging_face(settings: Settings, digest: Digest) -> None:
    paper = with_thumbnail(digest.papers[2], "images/missing.jpg")

    assert resolve_thumbnail(paper, digest, settings.site) == Thumbnail(HF_THUMB.format("2601.14724"), 552, 290)


def test_missing_local_file_of_other_paper_has_no_image(settings: Settings, digest: Digest) -> None:
    paper = with_thumbnail(digest.papers[0], "images/missing.jpg", url="https://arxiv.org/abs/2601.15876")

    assert resolve_thumbnail(paper, digest, settings.site) is None
    assert resolve_thumbnail(with_thumbnail(paper, None), digest, settings.site) is None


def test_unreadable_image_is_treated_as_missing(settings: Settings, digest: Digest, project: Path) -> None:
    (project / "digests" / "broken.jpg").write_bytes(b"not an image")
    paper = with_thumbnail(digest.papers[0], "broken.jpg")

    assert resolve_thumbnail(paper, digest, settings.site) == Thumbnail(HF_THUMB.format("2601.15876"), 552, 290)
    assert published(settings) == []


def test_thumbnail_outside_the_digest_folder_is_refused(settings: Settings, digest: Digest, project: Path) -> None:
    photo(project / "private.jpg", (800, 600))
    paper = with_thumbnail(digest.papers[0], "../private.jpg", url="https://example.com/paper")

    assert resolve_thumbnail(paper, digest, settings.site) is None
    assert published(settings) == []


def test_asset_file_maps_only_asset_urls(settings: Settings) -> None:
    assert asset_file(settings.site, "https://elsewhere.example.com/x.jpg") is None
    assert asset_file(settings.site, f"{settings.assets_url}/../secret.key") is None
    assert asset_file(settings.site, f"{settings.assets_url}/nothing.jpg") is None
    assert THUMBNAIL_DISPLAY_WIDTH == 552


@pytest.mark.parametrize("url", ["https:foo.png", "https:/images/a.png", "https://:443/a.png"])
def test_https_thumbnail_without_a_host_is_not_used(settings: Settings, digest: Digest, url: str) -> None:
    paper = with_thumbnail(digest.papers[0], url)

    assert resolve_thumbnail(paper, digest, settings.site) == Thumbnail(HF_THUMB.format("2601.15876"), 552, 290)


@pytest.mark.parametrize("kind", ["BMP", "TIFF", "PPM"])
def test_images_of_other_formats_are_treated_as_missing(
    settings: Settings, digest: Digest, project: Path, kind: str
) -> None:
    # Readable by Pillow, but not a format a thumbnail is: its decoder is not run at all.
    Image.new("RGB", (64, 48), (10, 200, 10)).save(project / "digests" / "thumb.img", kind)
    paper = with_thumbnail(digest.papers[0], "thumb.img")

    assert resolve_thumbnail(paper, digest, settings.site) == Thumbnail(HF_THUMB.format("2601.15876"), 552, 290)
    assert published(settings) == []


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "WEBP"])
def test_images_of_the_thumbnail_formats_are_published(
    cdn_settings: Settings, digest: Digest, project: Path, kind: str
) -> None:
    Image.new("RGB", (64, 48), (10, 200, 10)).save(project / "digests" / "thumb.img", kind)
    paper = with_thumbnail(digest.papers[0], "thumb.img")

    thumbnail = resolve_thumbnail(paper, digest, cdn_settings.site)
    assert thumbnail is not None and thumbnail.url.startswith("https://cdn.example.com/newsletter/")
    assert (thumbnail.width, thumbnail.height) == (64, 48)
    assert len(published(cdn_settings)) == 1
