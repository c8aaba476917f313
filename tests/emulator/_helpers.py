"""Small helpers shared by the emulator tests (the real fal_client does the talking)."""

from __future__ import annotations

import os
import time
from io import BytesIO
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

if TYPE_CHECKING:
    from imagen4ctl.emulator import FalEmulator

MODEL = "fal-ai/imagen4/preview"


def download(url: str, **kwargs: Any) -> httpx.Response:
    """GET with TLS verified through SSL_CERT_FILE, as the product's own code does."""
    return httpx.get(url, timeout=30, **kwargs)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(BytesIO(data)) as image:
        return image.size


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def platform_url(path: str = "/models/requests/by-endpoint") -> str:
    return os.environ["FAL_PLATFORM_API_URL"] + path


def queue_url(path: str) -> str:
    return f"https://{os.environ['FAL_QUEUE_RUN_HOST']}/{path.lstrip('/')}"


def wait_for(emulator: FalEmulator, request_id: str, state: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while emulator.state(request_id) != state:
        assert time.monotonic() < deadline, f"{request_id} never reached {state}"
        time.sleep(0.01)
