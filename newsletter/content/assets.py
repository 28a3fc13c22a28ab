"""Thumbnails for the email: every card image as an absolute https URL with its display size.

A thumbnail beside the digest is made fit for email (oriented, converted to sRGB, at most twice
its display width, metadata stripped) and published under a name made from its content, so that
re-running never rewrites it and a changed image never hides behind a cached one. Nothing here
fetches anything over the network.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..sections import Site
from .digest import Digest, Paper, absolute_url
from ..files import write_atomic

if TYPE_CHECKING:
    from PIL import Image

# The card image's width in CSS px: the 600px email body less 24px of padding on each side.
THUMBNAIL_DISPLAY_WIDTH = 552
# Stored at up to twice the display width, so that it stays sharp on high-density screens.
MAX_STORED_WIDTH = 2 * THUMBNAIL_DISPLAY_WIDTH
JPEG_QUALITY = 82
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP"]  # what a local thumbnail may be

HUGGING_FACE_THUMBNAIL = "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/{paper_id}.png"
# A remote image's size cannot be known without fetching it. Hugging Face's social thumbnails are
# Open Graph cards, whose standard shape is 1200x630; other remote images are assumed to share it.
REMOTE_ASPECT = (1200, 630)


@dataclass(frozen=True)
class Thumbnail:
    url: str  # absolute https
    width: int  # display size in CSS px
    height: int


# Sources already published by this process: (path, mtime, size, folder, URL) → (file name, thumbnail).
_published: dict[tuple[str, int, int, str, str], tuple[str, Thumbnail]] = {}
_REMEMBERED = 1024


def assets_dir(site: Site) -> Path:
    """The folder whose files are served at site.assets_url."""
    return site.public_dir / "assets"


def asset_file(site: Site, url: str) -> Path | None:
    """The local file behind an asset URL (for a preview server), or None if it is not one."""
    prefix = site.assets_url + "/"
    if not url.startswith(prefix):
        return None
    name = url[len(prefix) :]
    if not name or "/" in name or name.startswith("."):
        return None
    candidate = assets_dir(site) / name
    return candidate if candidate.is_file() else None


def resolve_thumbnail(paper: Paper, digest: Digest, site: Site) -> Thumbnail | None:
    """The card image of `paper`: the digest's own thumbnail, else Hugging Face's, else none."""
    source = paper.thumbnail
    if source:
        if urlsplit(source).scheme:
            # An absolute https image is used as is; any other URL (http:, data:, "https:foo"
            # without a host) could not show in an email.
            if absolute_url(source, ("https",)):
                return _remote(source)
        else:
            local = _beside(digest, source)
            published = publish_image(local, site) if local is not None else None
            if published is not None:
                return published
    if paper.paper_id:
        return _remote(HUGGING_FACE_THUMBNAIL.format(paper_id=paper.paper_id))
    return None


def publish_image(source: Path, site: Site) -> Thumbnail | None:
    """Publish a local image for email; None if it is not an image Pillow can read."""
    folder = assets_dir(site)
    try:
        stat = source.stat()
    except OSError:
        return None
    # Re-encoding a camera photo takes a good part of a second; a preview re-renders on every
    # template change, so an unchanged source already published is not processed again.
    key = (str(source), stat.st_mtime_ns, stat.st_size, str(folder), site.assets_url)
    known = _published.get(key)
    if known is not None and (folder / known[0]).is_file():
        return known[1]
    # Pillow is imported only for a local file: most digests link hosted thumbnails, and every
    # command that renders would otherwise pay for its import.
    from PIL import Image, UnidentifiedImageError

    try:
        data, extension, width, height = _prepare(source)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    name = f"{hashlib.sha256(data).hexdigest()[:24]}.{extension}"
    target = folder / name
    # The name is the content's hash: a file already there holds exactly these bytes.
    if not target.is_file():
        write_atomic(target, data)
    display_width = min(THUMBNAIL_DISPLAY_WIDTH, width)
    thumbnail = Thumbnail(
        url=f"{site.assets_url}/{name}",
        width=display_width,
        height=max(1, round(height * display_width / width)),
    )
    if len(_published) >= _REMEMBERED:
        _published.clear()
    _published[key] = (name, thumbnail)
    return thumbnail


def _remote(url: str) -> Thumbnail:
    width, height = REMOTE_ASPECT
    return Thumbnail(url=url, width=THUMBNAIL_DISPLAY_WIDTH, height=round(THUMBNAIL_DISPLAY_WIDTH * height / width))


def _beside(digest: Digest, source: str) -> Path | None:
    # The digest is untrusted: its thumbnail may only name a file inside the digest's own folder.
    folder = digest.path.parent.resolve()
    candidate = (folder / unquote(source)).resolve()
    if not candidate.is_relative_to(folder) or not candidate.is_file():
        return None
    return candidate


def _prepare(source: Path) -> tuple[bytes, str, int, int]:
    """(encoded bytes, extension, width, height) of the email version of an image."""
    from PIL import Image, ImageOps

    # Only the formats a digest's thumbnail can reasonably be: Pillow's other decoders (PSD, TGA,
    # EPS through Ghostscript, …) are more attack surface for an untrusted file than they are worth.
    with Image.open(source, formats=IMAGE_FORMATS) as original:
        keep_png = original.format == "PNG"
        # A camera JPEG is decoded straight at a fraction of its size (never below what is kept,
        # whichever way it turns out to be oriented): several times faster, a fraction of the memory.
        original.draft(None, (MAX_STORED_WIDTH, MAX_STORED_WIDTH))
        # Orientation lives in the EXIF data that is about to be stripped: apply it first.
        image = ImageOps.exif_transpose(original)
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    mode = "RGBA" if transparent else "RGB"
    image = _to_srgb(image, mode)
    if image.width > MAX_STORED_WIDTH:
        height = max(1, round(image.height * MAX_STORED_WIDTH / image.width))
        image = image.resize((MAX_STORED_WIDTH, height), Image.Resampling.LANCZOS)
    # Without this the encoders would carry over the source's ICC profile and text chunks.
    image.info.clear()
    out = io.BytesIO()
    if transparent or keep_png:
        image.save(out, "PNG", optimize=True)
        extension = "png"
    else:
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        extension = "jpg"
    return out.getvalue(), extension, image.width, image.height


def _to_srgb(image: Image.Image, mode: str) -> Image.Image:
    # Email clients ignore embedded colour profiles, so colours are converted rather than dropped.
    from PIL import ImageCms

    profile = image.info.get("icc_profile")
    if profile:
        try:
            return ImageCms.profileToProfile(
                image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), outputMode=mode
            )
        except (ImageCms.PyCMSError, ValueError, OSError):
            pass  # an unusable profile: the pixels are taken as sRGB already
    return image.convert(mode)
