"""Guarded, streaming downloads of fal's result images.

Only https (each redirect checked again), no link-local or metadata hosts, loopback and
private addresses only for the host fal itself is configured at (an emulator or proxy), a
size cap enforced while streaming, and the magic bytes checked before anything is stored.

A failure says whether it may pass: a refused or broken image is final (`ImageRejected`), a
404 or 410 is final unless fal has the image at another URL (`ImageGone`), while a reset, a
timeout, 408/425/429 or a 5xx from the image host may not happen again (`ImageUnavailable`):
the generation stays in flight for fix-pending rather than losing a paid image.
"""

from __future__ import annotations

import io
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalError, FalUnavailable

MAGIC = {
    b"\x89PNG\r\n\x1a\n": ("image/png", "png"),
    b"\xff\xd8\xff": ("image/jpeg", "jpg"),
}
_HEAD_BYTES = 64 * 1024
_MAX_REDIRECTS = 5
_BLOCKED_NAMES = {"metadata.google.internal", "metadata", "instance-data"}


class ImageRejected(FalError):
    """fal's image cannot be accepted: not an image, too large, a refused URL or answer."""


class ImageGone(ImageRejected):
    """The image URL answers 404 or 410: final, unless fal lists the image elsewhere."""


class ImageUnavailable(FalUnavailable):
    """The image could not be fetched this time (reset, timeout, 5xx): it may be later."""


_PASSING = frozenset({408, 425, 429})  # and every 5xx


@dataclass(frozen=True)
class ImageHead:
    content_type: str
    ext: str
    width: int | None
    height: int | None
    length: int | None  # from Content-Length, when the server said it


def _sniff(head: bytes) -> tuple[str, str] | None:
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("image/webp", "webp")
    return None


def _dimensions(head: bytes) -> tuple[int | None, int | None]:
    """Width and height from the header bytes alone (Pillow reads no pixels for this)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(head)) as image:
            width, height = image.size
            return int(width), int(height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None, None


def check_url(url: str, *, trusted_hosts: frozenset[str]) -> httpx.URL:
    """Refuse URLs a result image must never come from (file://, metadata endpoints…)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise ImageRejected("fal returned an invalid image URL") from e
    host = parsed.host.lower()
    if parsed.scheme != "https":
        raise ImageRejected(f"refusing image URL with scheme {parsed.scheme or 'none'!r}: "
                            "only https is accepted")
    if not host or host in _BLOCKED_NAMES:
        raise ImageRejected(f"refusing image URL at host {host or '(none)'!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and host not in trusted_hosts and (
        address.is_link_local or address.is_private or address.is_loopback
        or address.is_unspecified or address.is_reserved or address.is_multicast
    ):
        raise ImageRejected(f"refusing image URL at internal address {host}")
    if host in {"localhost"} and host not in trusted_hosts:
        raise ImageRejected("refusing image URL at localhost")
    return parsed


class _CappedStream(io.RawIOBase):
    """The rest of a download as a file object, raising once more than `cap` bytes arrive."""

    def __init__(self, head: bytes, chunks: Iterator[bytes], cap: int, deadline: Deadline) -> None:
        self._buffer = head
        self._chunks = chunks
        self._cap = cap
        self._deadline = deadline
        self.size = len(head)

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._deadline.passed:
                raise ImageUnavailable("downloading the image took longer than the deadline")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as e:
                raise ImageUnavailable(f"downloading the image failed: {type(e).__name__}") from e
            self.size += len(chunk)
            if self.size > self._cap:
                raise ImageRejected(f"the image is larger than the {self._cap:,}-byte cap "
                                    "(IMAGEN4_MAX_IMAGE_BYTES)")
            self._buffer = chunk
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def load_image_support() -> None:
    """Import Pillow and its format plugins now (tens of ms of imports, which hold the GIL),
    rather than when the first image is checked."""
    from PIL import Image

    Image.preinit()


def download_client() -> httpx.Client:
    """A client for `open_image`; one per run saves loading the CA bundle for every image."""
    return httpx.Client(follow_redirects=False)


@contextmanager
def open_image(
    url: str,
    *,
    max_bytes: int,
    deadline: Deadline,
    trusted_hosts: frozenset[str] = frozenset(),
    client: httpx.Client | None = None,
) -> Iterator[tuple[ImageHead, io.BufferedReader]]:
    """Open fal's image: its checked head, and a capped stream of all its bytes."""
    own = client is None
    http = client or download_client()
    try:
        target = check_url(url, trusted_hosts=trusted_hosts)
        for _ in range(_MAX_REDIRECTS + 1):
            timeout = httpx.Timeout(deadline.bound(30.0))
            request = http.build_request("GET", target, timeout=timeout)
            try:
                response = http.send(request, stream=True)
            except httpx.TimeoutException as e:
                raise ImageUnavailable("the image download timed out") from e
            except httpx.TransportError as e:
                raise ImageUnavailable(f"cannot download the image from {target.host}: "
                                       f"{type(e).__name__}") from e
            if response.is_redirect and "location" in response.headers:
                response.close()
                target = check_url(urljoin(str(target), response.headers["location"]),
                                   trusted_hosts=trusted_hosts)
                continue
            break
        else:
            raise ImageRejected("the image URL redirects too many times")
        try:
            code = response.status_code
            if code in {404, 410}:
                raise ImageGone(f"the image URL answered {code}")
            if code in _PASSING or code >= 500:
                raise ImageUnavailable(f"the image URL answered {code}")
            if code != 200:
                raise ImageRejected(f"the image URL answered {code}")
            length = _content_length(response)
            if length is not None and length > max_bytes:
                raise ImageRejected(f"the image is {length:,} bytes, over the {max_bytes:,}-byte "
                                    "cap (IMAGEN4_MAX_IMAGE_BYTES)")
            chunks = response.iter_bytes(64 * 1024)
            stream = _CappedStream(b"", chunks, max_bytes, deadline)
            head = _read_head(stream)
            kind = _sniff(head)
            if kind is None:
                raise ImageRejected("fal's file is not a PNG, JPEG or WebP image "
                                    f"(declared {response.headers.get('content-type', 'none')})")
            width, height = _dimensions(head)
            stream._buffer = head  # hand the head back: the caller reads the whole image
            yield (ImageHead(kind[0], kind[1], width, height, length),
                   io.BufferedReader(stream, buffer_size=256 * 1024))
        finally:
            response.close()
    finally:
        if own:
            http.close()


class Downloader:
    """Opens fal's images on one client for a whole run, made at first use: the CA bundle
    loads once, and connections to fal's file host are reused. Thread-safe."""

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Make the client now (loading the CA bundle takes a while), not at the first image."""
        self._http()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = download_client()
            return self._client

    def open(
        self, url: str, *, max_bytes: int, deadline: Deadline, trusted_hosts: frozenset[str]
    ) -> AbstractContextManager[tuple[ImageHead, io.BufferedReader]]:
        """`open_image` on this run's client."""
        return open_image(url, max_bytes=max_bytes, deadline=deadline,
                          trusted_hosts=trusted_hosts, client=self._http())


def _read_head(stream: _CappedStream) -> bytes:
    parts: list[bytes] = []
    size = 0
    buffer = bytearray(_HEAD_BYTES)
    while size < _HEAD_BYTES:
        n = stream.readinto(memoryview(buffer)[: _HEAD_BYTES - size])
        if n == 0:
            break
        parts.append(bytes(buffer[:n]))
        size += n
    return b"".join(parts)


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
