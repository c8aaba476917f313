"""Downloads of result images are guarded: https only (each redirect checked again), no
internal addresses, a size cap enforced while streaming, magic bytes checked."""

from __future__ import annotations

import io
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trustme
from PIL import Image

from imagen4ctl.adapters.download import ImageRejected, check_url, open_image
from imagen4ctl.deadline import Deadline


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(out, "PNG")
    return out.getvalue()


ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        status, headers, body = ROUTES.get(self.path, (404, {}, b"nope"))
        self.send_response(status)
        chunked = headers.pop("chunked", None) is not None
        for name, value in headers.items():
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 65536):
                part = body[start:start + 65536]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up early (a cap was hit) is the point of some tests


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, httpx.Client]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = httpx.Client(verify=client_context, follow_redirects=False)
    yield f"https://127.0.0.1:{httpd.server_address[1]}", client
    client.close()
    httpd.shutdown()


TRUSTED = frozenset({"127.0.0.1"})


def fetch(url: str, client: httpx.Client, cap: int = 10_000_000) -> tuple[object, bytes]:
    with open_image(url, max_bytes=cap, deadline=Deadline(10), trusted_hosts=TRUSTED,
                    client=client) as (head, stream):
        return head, stream.read()


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "ftp://x/y.png",
    "https://169.254.169.254/x.png", "http://example.com/x.png", "https://10.0.0.5/x.png",
    "https://localhost/x.png", "https://[::1]/x.png", "https://metadata.google.internal/x",
    "data:image/png;base64,AAAA", "not a url",
])
def test_hostile_urls_refused(url: str) -> None:
    with pytest.raises(ImageRejected):
        check_url(url, trusted_hosts=frozenset())


def test_fal_cdn_and_trusted_emulator_allowed() -> None:
    assert check_url("https://v3.fal.media/files/a.png", trusted_hosts=frozenset()).host
    assert check_url("https://127.0.0.1:8443/f.png", trusted_hosts=TRUSTED).port == 8443


def test_a_real_image_streams_with_its_dimensions(server: tuple[str, httpx.Client]) -> None:
    base, client = server
    body = png(64, 48)
    ROUTES["/ok.png"] = (200, {"Content-Type": "image/png"}, body)
    head, data = fetch(f"{base}/ok.png", client)
    assert data == body
    assert (head.width, head.height, head.ext) == (64, 48, "png")  # type: ignore[attr-defined]


@pytest.mark.parametrize("target", ["http://127.0.0.1:1/x.png", "file:///etc/passwd",
                                    "https://169.254.169.254/x.png"])
def test_redirects_to_other_schemes_or_hosts_refused(server: tuple[str, httpx.Client],
                                                     target: str) -> None:
    base, client = server
    ROUTES["/redirect"] = (302, {"Location": target}, b"")
    with pytest.raises(ImageRejected, match="refusing"):
        fetch(f"{base}/redirect", client)


def test_a_redirect_to_https_is_followed(server: tuple[str, httpx.Client]) -> None:
    base, client = server
    ROUTES["/moved"] = (301, {"Location": "/ok2.png"}, b"")
    ROUTES["/ok2.png"] = (200, {"Content-Type": "image/png"}, png())
    assert fetch(f"{base}/moved", client)[1] == png()


def test_redirect_loops_end(server: tuple[str, httpx.Client]) -> None:
    base, client = server
    ROUTES["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(ImageRejected, match="redirects too many times"):
        fetch(f"{base}/loop", client)


def test_cap_from_content_length_and_while_streaming(server: tuple[str, httpx.Client]) -> None:
    base, client = server
    big = png() + b"\0" * 300_000
    ROUTES["/big-declared.png"] = (200, {"Content-Type": "image/png"}, big)
    ROUTES["/big-chunked.png"] = (200, {"Content-Type": "image/png", "chunked": "1"}, big)
    with pytest.raises(ImageRejected, match="over the 100,000-byte cap"):
        fetch(f"{base}/big-declared.png", client, cap=100_000)
    with pytest.raises(ImageRejected, match="larger than the 100,000-byte cap"):
        fetch(f"{base}/big-chunked.png", client, cap=100_000)


def test_magic_bytes_beat_the_content_type(server: tuple[str, httpx.Client]) -> None:
    base, client = server
    ROUTES["/fake.png"] = (200, {"Content-Type": "image/png"}, b"<html>not an image</html>")
    with pytest.raises(ImageRejected, match="not a PNG, JPEG or WebP"):
        fetch(f"{base}/fake.png", client)
