"""Small helpers shared by the emulator tests (the real fal_client does the talking)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    state: str | None  # the request's state at the emulator when the delivery came

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on plain http: records each delivery, answers from `answers`
    (the last one for ever after). With `emulator`, each delivery notes its request's state
    there."""

    emulator: FalEmulator | None = None
    answers: list[int] = field(default_factory=lambda: [200])
    got: list[Received] = field(default_factory=list)
    url: str = ""
    cookie: str | None = None  # a Set-Cookie header for every answer

    def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"{len(self.got)} deliveries, not {count}"
            time.sleep(0.02)
        return self.got


@contextmanager
def receiving(emulator: FalEmulator | None = None) -> Iterator[Receiver]:
    """A Receiver serving on a free port until the block ends."""
    found = Receiver(emulator)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.loads(body) if body.startswith(b"{") else {}
            state = None if found.emulator is None else \
                found.emulator.state(data.get("request_id", ""))
            found.got.append(Received(dict(self.headers.items()), body, state))
            status = found.answers[min(len(found.got), len(found.answers)) - 1]
            self.send_response(status)
            if found.cookie is not None:
                self.send_header("Set-Cookie", found.cookie)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/fal/webhook"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
