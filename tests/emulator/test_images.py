"""The emulator's images on their own: real, deterministic PNGs of Imagen 4's sizes, and padded
ones of an exact size for the large-file faults."""

from __future__ import annotations

import io

from PIL import Image

from imagen4ctl.emulator import IMAGEN4_SIZES, image_size
from imagen4ctl.emulator.images import PNG_SIGNATURE, padded_png, png_header, render_png
from imagen4ctl.endpoints import ENDPOINTS


def test_images_are_real_deterministic_pngs() -> None:
    data = render_png("3:4", "1K", 7, 0)
    assert data == render_png("3:4", "1K", 7, 0)
    assert data != render_png("3:4", "1K", 7, 1)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (896, 1280) == image_size("3:4")
    assert image_size("16:9", "2K") == (2816, 1536)
    for endpoint in ENDPOINTS.values():
        assert set(IMAGEN4_SIZES) == set(endpoint.aspect_ratios)


def test_padded_png_has_a_sniffable_header_and_the_exact_size() -> None:
    pieces = list(padded_png(1024, 1024, 200_000, chunk_size=65_536))
    data = b"".join(pieces)
    assert len(data) == 200_000 and max(len(p) for p in pieces) <= 65_536
    assert data.startswith(png_header(1024, 1024)) and data.startswith(PNG_SIGNATURE)
    assert b"".join(padded_png(10, 10, 5)) == PNG_SIGNATURE[:5]
