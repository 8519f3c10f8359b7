"""Images in a call: what a caller gives, read into the portable image parts of `_core.content`; each
protocol's limits on images; and what a call sends besides text, for the record (never the bytes).

An image may be given as a path, bytes, a URL (`https://...` or a `data:` URL), a PIL image, a matplotlib
figure (or axes), or anything with `_repr_png_` (IPython's `Image`). PIL and matplotlib are recognised by
what they can do (`save`, `savefig`), never imported: neither is a dependency. The media type is read from
the bytes themselves (their first bytes), not from a file name.

The limits are the providers' own (multimodal_tools.md): a target whose limit an image passes is skipped
before anything is sent, with the reason, instead of meeting a 400 or a 413.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .._core.content import image_of, image_part, image_url_part

#: the leading bytes of each image type nbrouter sends, and the type they say
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
)
#: the ISO media file brands of HEIC and HEIF (bytes 8 to 12, after `ftyp`)
_HEIC_BRANDS = {b"heic": "image/heic", b"heix": "image/heic", b"heim": "image/heic", b"heis": "image/heic",
                b"mif1": "image/heif", b"msf1": "image/heif", b"heif": "image/heif"}
#: what an image given as text may be besides a path
_URL = re.compile(r"(https?://|data:)", re.I)
#: the media types named when bytes are none of them
KNOWN_TYPES = ("PNG", "JPEG", "GIF", "WEBP", "HEIC/HEIF")


def media_type_of(data: bytes) -> str | None:
    """The image type the bytes say (`image/png`, `image/jpeg`, `image/gif`, `image/webp`,
    `image/heic`, `image/heif`), or None when they are none of these."""
    for offset, magic, kind in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return _HEIC_BRANDS.get(data[8:12])
    return None


def _bytes_part(data: bytes, what: str) -> dict[str, Any]:
    kind = media_type_of(data)
    if kind is None:
        raise ValueError(f"{what} is not an image nbrouter recognises ({', '.join(KNOWN_TYPES)}): "
                         f"its first bytes are {data[:8]!r}")
    return image_part(data, kind)


def _rendered(value: Any) -> bytes | None:
    """The PNG of a figure, an axes, a PIL image or anything with `_repr_png_`; None for anything else."""
    figure = value if hasattr(value, "savefig") else getattr(value, "figure", None)
    if figure is not None and hasattr(figure, "savefig"):  # a matplotlib Figure, or Axes through .figure
        buf = io.BytesIO()
        figure.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    if hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    render = getattr(value, "_repr_png_", None)
    if callable(render):
        png = render()
        if isinstance(png, str):  # some objects give their PNG as base64 text
            png = base64.b64decode(png)
        return png if isinstance(png, bytes) else None
    return None


def image_input(value: Any) -> dict[str, Any]:
    """One image as a portable content part (`_core.content.image_part` or `image_url_part`).

    Args:
        value: a path (str or PathLike), bytes, an `http(s)://` or `data:` URL, a PIL image, a matplotlib
            figure or axes, an object with `_repr_png_`, or a portable image part already made.

    Raises:
        ValueError: the bytes are no image type nbrouter recognises, or the value is none of these.
        FileNotFoundError: a path that names no file.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_part(bytes(value), "the image bytes")
    if isinstance(value, Mapping):
        if image_of(value) is None:
            raise ValueError(f"the dict {dict(value)!r:.80} is no image part (make one with image_part or image_url_part)")
        return dict(value)
    if isinstance(value, str) and _URL.match(value):
        if value[:5].lower() == "data:" and image_of(image_url_part(value)) is None:
            raise ValueError("a data: URL image must be base64, as data:image/png;base64,...")
        return image_url_part(value)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no image file {str(path)!r}")
        return _bytes_part(path.read_bytes(), f"the file {str(path)!r}")
    png = _rendered(value)
    if png is not None:
        return _bytes_part(png, f"the PNG of the {type(value).__name__}")
    raise ValueError(f"an image must be a path, bytes, a URL, a PIL image or a matplotlib figure, not a {type(value).__name__}")


def image_inputs(values: Any) -> list[dict[str, Any]]:
    """The portable parts of one image or a list of them (see `image_input`)."""
    if values is None:
        return []
    if isinstance(values, (list, tuple)):
        return [image_input(v) for v in values]
    return [image_input(values)]


def with_images(messages: list[dict[str, Any]], parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with the image parts added after the text of the last user message (a new list; the
    messages given are not changed).

    Raises:
        ValueError: there is no user message to put them in.
    """
    if not parts:
        return messages
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.get("role") == "user":
            content = message.get("content")
            before = list(content) if isinstance(content, list) else ([] if content in (None, "") else [content])
            return [*messages[:i], {**message, "content": [*before, *parts]}, *messages[i + 1:]]
    raise ValueError("images go with a user message: give a prompt, or messages that end with one")


def item_images(spec: Any, value: Any, index: int) -> Any:
    """The images of one item of `Router.map(..., images=spec)`: the column `spec` of a row or dict,
    the item itself for `images="item"`, or what a function of the item returns (None, or an empty
    cell, for none).

    Raises:
        KeyError: a row without the column.
        TypeError: `spec` is neither a column name nor a function.
    """
    if callable(spec):
        found = spec(value)
    elif isinstance(spec, str):
        if isinstance(value, Mapping) and spec in value:
            found = value[spec]
        elif spec == "item":
            found = value
        else:
            raise KeyError(f"images={spec!r}: item {index} has no column {spec!r} (images='item' takes the item itself)")
    else:
        raise TypeError(f"map's images= names a column (or 'item'), or is a function of the item, not a {type(spec).__name__}")
    return None if found is None or (isinstance(found, float) and found != found) else found  # NaN: an empty cell


# ---- what a request carries ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """One image of a request as its limits see it: its declared type, its size (None for a URL)."""

    media_type: str | None
    #: the image's bytes (decoded), None when it is sent by URL
    size: int | None
    #: the length of its base64 text (what a request body carries), None when it is sent by URL
    encoded: int | None


def _decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - (2 if data.endswith("==") else 1 if data.endswith("=") else 0)


def images_in(messages: Iterable[Mapping[str, Any]]) -> list[ImageInfo]:
    """Every image part of the messages (portable ones, and OpenAI's `image_url`), in order."""
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            image = image_of(part) if isinstance(part, Mapping) else None
            if image is None:
                continue
            if image.url is not None:
                out.append(ImageInfo(None, None, None))
            else:
                data = image.data or ""
                out.append(ImageInfo(image.media_type, _decoded_size(data), len(data)))
    return out


def size_text(n: int) -> str:
    """`340 B`, `34 KB`, `1.2 MB` (decimal units, as the providers' limits are written)."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1000:.0f} KB"
    return f"{n / 1_000_000:.1f}".removesuffix(".0") + " MB"


@dataclass(frozen=True)
class Sent:
    """What a call sent besides text, for the attempt log, the footer and the call log (never the bytes)."""

    images: int = 0
    #: the inline images' bytes (decoded); images sent by URL count 0
    image_bytes: int = 0
    #: of `images`, those sent by URL
    image_urls: int = 0
    tools: int = 0

    def __bool__(self) -> bool:
        return bool(self.images or self.tools)

    def text(self) -> str:
        """`2 images (340 KB), 3 tools`; empty when only text was sent."""
        parts = []
        if self.images:
            inline = self.images - self.image_urls
            what = f"{self.images} image{'s' if self.images != 1 else ''}"
            details = []
            if inline:
                details.append(size_text(self.image_bytes))
            if self.image_urls:
                details.append(f"{self.image_urls} by URL")
            parts.append(f"{what} ({', '.join(details)})")
        if self.tools:
            parts.append(f"{self.tools} tool{'s' if self.tools != 1 else ''}")
        return ", ".join(parts)


def sent_of(images: Sequence[ImageInfo], tools: int) -> Sent:
    """The summary of what a request carries beyond text: its images (`images_in`) and how many tools."""
    return Sent(images=len(images), image_bytes=sum(i.size or 0 for i in images),
                image_urls=sum(1 for i in images if i.size is None), tools=tools)


def digest_messages(messages: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The messages with each inline image's data replaced by its SHA-256 (what a cache key hashes: the
    same picture gives the same key, another picture another key, and the key's text stays small)."""
    out: list[Any] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts: list[Any] = []
        for part in content:
            image = image_of(part) if isinstance(part, Mapping) else None
            if image is None or image.url is not None:
                parts.append(part)
            else:
                digest = hashlib.sha256((image.data or "").encode("ascii", "replace")).hexdigest()
                parts.append({"type": "image", "media_type": image.media_type, "sha256": digest})
        out.append({**message, "content": parts})
    return out


# ---- each protocol's limits -----------------------------------------------------------------------

MB = 1_000_000


@dataclass(frozen=True)
class ImageLimits:
    """What one protocol takes in a request (multimodal_tools.md; None: no limit known)."""

    name: str
    media_types: tuple[str, ...]
    max_images: int | None = None
    #: the largest image, in bytes (of its base64 text when `encoded`)
    max_image_bytes: int | None = None
    #: all images of the request together, in bytes (of their base64 text when `encoded`)
    max_total_bytes: int | None = None
    #: the limits count the base64 text a request carries, not the image's bytes
    encoded: bool = False


#: per protocol: OpenAI's 50 MB of images and 500 images (a 400 past them, measured); Anthropic's 10 MB per
#: image and 32 MB per request (413 `request_too_large`), 100 images (200k-context models); Gemini's 100 MB
#: of inline data per request
IMAGE_LIMITS: dict[str, ImageLimits] = {
    "openai": ImageLimits("OpenAI", ("image/png", "image/jpeg", "image/webp", "image/gif"), max_images=500,
                          max_total_bytes=50 * MB),
    "anthropic": ImageLimits("Anthropic", ("image/jpeg", "image/png", "image/gif", "image/webp"), max_images=100,
                             max_image_bytes=10 * MB, max_total_bytes=32 * MB, encoded=True),
    "gemini": ImageLimits("Gemini", ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"),
                          max_total_bytes=100 * MB, encoded=True),
}


def over_limit(images: Sequence[ImageInfo], limits: ImageLimits) -> str | None:
    """Why these images may not be sent under `limits` (the reason a skip shows), or None when they may."""
    if limits.max_images is not None and len(images) > limits.max_images:
        return f"{len(images)} images, over {limits.name}'s {limits.max_images} per request"
    total = 0
    for n, image in enumerate(images, 1):
        if image.media_type is not None and image.media_type not in limits.media_types:
            kinds = ", ".join(t.partition("/")[2].upper() for t in limits.media_types)
            return f"image {n} is {image.media_type}, which {limits.name} does not take ({kinds})"
        size = image.encoded if limits.encoded else image.size
        if size is None:
            continue
        if limits.max_image_bytes is not None and size > limits.max_image_bytes:
            return f"image {n} is {size_text(size)}, over {limits.name}'s {size_text(limits.max_image_bytes)} per image"
        total += size
    if limits.max_total_bytes is not None and total > limits.max_total_bytes:
        counted = " as base64" if limits.encoded else ""
        return f"the images are {size_text(total)}{counted}, over {limits.name}'s {size_text(limits.max_total_bytes)} per request"
    return None


__all__ = ["IMAGE_LIMITS", "ImageInfo", "ImageLimits", "Sent", "digest_messages", "image_input", "image_inputs",
           "images_in", "item_images", "media_type_of", "over_limit", "sent_of", "size_text", "with_images"]
