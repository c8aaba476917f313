"""Real images with Imagen 4's sizes, deterministic from the seed and cheap to make.

Clients read width and height from the bytes (fal's output states them too since 2025-12,
fal-js `ImageFile`), so the emulator serves genuine images: a two-colour gradient with a few
shapes, as PNG or, for `output_format`, JPEG or WebP.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Iterator

from PIL import Image, ImageDraw

# Output sizes of fal-ai/imagen4 at 1K; 2K doubles both sides.
IMAGEN4_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
RESOLUTION_SCALE: dict[str, int] = {"1K": 1, "2K": 2}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# `output_format` → Content-Type (fal-js 9830f25: "jpeg" | "png" | "webp").
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# What a CDN sends when it answers with an error page under an image URL.
NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
    b"<body><h1>Forbidden</h1><p>The object is not available.</p></body></html>\n"
)


def image_size(aspect_ratio: str, resolution: str = "1K") -> tuple[int, int]:
    """Pixel size of an Imagen 4 image; KeyError for a ratio or resolution it does not make."""
    width, height = IMAGEN4_SIZES[aspect_ratio]
    scale = RESOLUTION_SCALE[resolution]
    return width * scale, height * scale


# Palette layout: a gradient over the first indices, one flat colour per shape after it.
GRADIENT_COLOURS = 200
SHAPES = 6
LAYOUTS = 4


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole chunk) for each chunk of an encoded PNG."""
    offset = len(PNG_SIGNATURE)
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        end = offset + 12 + length
        yield png[offset + 4:offset + 8], png[offset:end]
        offset = end


@functools.lru_cache(maxsize=64)
def _layout(aspect_ratio: str, resolution: str, variant: int) -> tuple[bytes, bytes]:
    """IHDR and IDAT chunks of a palette image: the pixels, encoded once, without colours."""
    width, height = image_size(aspect_ratio, resolution)
    rng = random.Random(f"imagen4-emulator-layout:{aspect_ratio}:{resolution}:{variant}")
    gradient = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270)))
    indices = gradient.resize((width, height), Image.Resampling.BILINEAR).point(
        lambda value: value * GRADIENT_COLOURS // 256)
    draw = ImageDraw.Draw(indices)
    for shape in range(SHAPES):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(width // 16, width // 4)
        box = (x - radius, y - radius, x + radius, y + radius)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=GRADIENT_COLOURS + shape)
        else:
            draw.rectangle(box, fill=GRADIENT_COLOURS + shape)
    paletted = Image.frombytes("P", indices.size, indices.tobytes())
    paletted.putpalette(bytes(768))
    buffer = io.BytesIO()
    paletted.save(buffer, "PNG")
    chunks = list(_chunks(buffer.getvalue()))
    ihdr = b"".join(chunk for kind, chunk in chunks if kind == b"IHDR")
    idat = b"".join(chunk for kind, chunk in chunks if kind == b"IDAT")
    return ihdr, idat


@functools.lru_cache(maxsize=256)
def render_png(aspect_ratio: str, resolution: str, seed: int, index: int) -> bytes:
    """The PNG for image `index` of a request with `seed`: same arguments, same bytes.

    Pixels come from one of a few cached layouts and colours from the seed's palette, so a
    new seed costs a palette, not an encode: batches of hundreds stay fast.
    """
    # A string seed goes through SHA-512, so the picture does not depend on PYTHONHASHSEED.
    rng = random.Random(f"imagen4-emulator:{seed}:{index}")
    ihdr, idat = _layout(aspect_ratio, resolution, rng.randrange(LAYOUTS))
    first, second = _colour(rng), _colour(rng)
    palette = bytearray()
    for step in range(GRADIENT_COLOURS):
        palette += bytes(a + (b - a) * step // (GRADIENT_COLOURS - 1)
                         for a, b in zip(first, second, strict=True))
    for _ in range(256 - GRADIENT_COLOURS):
        palette += bytes(_colour(rng))
    return PNG_SIGNATURE + ihdr + _chunk(b"PLTE", bytes(palette)) + idat + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=64)
def render_image(aspect_ratio: str, resolution: str, seed: int, index: int,
                 output_format: str = "png") -> bytes:
    """`render_png`'s picture in `output_format` (a key of CONTENT_TYPES)."""
    png = render_png(aspect_ratio, resolution, seed, index)
    if output_format == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, output_format.upper())
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header(width: int, height: int) -> bytes:
    """PNG signature and IHDR chunk: enough for a sniffer to believe in a width x height RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr)


def padded_png(width: int, height: int, total_size: int, chunk_size: int = 64 * 1024,
               ) -> Iterator[bytes]:
    """A valid PNG header padded with zeros to `total_size` bytes, made piece by piece.

    It never exists whole in memory, so a test can ask for gigabytes to check a size limit.
    """
    header = png_header(width, height)[:total_size]
    yield header
    remaining = total_size - len(header)
    zeros = bytes(chunk_size)
    while remaining > 0:
        piece = min(remaining, chunk_size)
        yield zeros if piece == chunk_size else bytes(piece)
        remaining -= piece
