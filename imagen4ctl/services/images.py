"""Storing a generation's images: each is streamed from fal's URL into storage under its
object key, all or nothing. Generation, fix-pending and reconcile all store through here."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagen4ctl.adapters.download import Downloader, load_image_support
from imagen4ctl.errors import StorageError
from imagen4ctl.keys import LINK_EXPIRY, is_remote, object_key
from imagen4ctl.settings import crash_point

if TYPE_CHECKING:
    from imagen4ctl.adapters.fal import ImageRef
    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.deadline import Deadline

# An S3 upload holds up to a whole image in memory (minio buffers a part, and the previous one
# while it reads the last). Uploads run on this many threads of their own, whatever
# --concurrency: glibc keeps such buffers in the arena of the thread that freed them, so
# uploads spread over 16 threads kept ~16 images resident even with fewer in flight.
MAX_UPLOADS = 8


@dataclass(frozen=True)
class StoredImage:
    key: str
    url: str
    width: int | None
    height: int | None
    content_type: str
    size: int


def fal_sizes(params: Any, images: Sequence[ImageRef]) -> dict[str, Any]:
    """The column values that keep fal's width and height of each image in the row's `params`
    (under "images"), for generate and fix-pending alike: `{"params": ...}`, or nothing when
    fal gave no sizes (it may omit them) or the row's `params` is not an object to add to."""
    if not any(i.width is not None or i.height is not None for i in images):
        return {}
    if params is not None and not isinstance(params, dict):
        return {}
    sizes = [{"width": i.width, "height": i.height} for i in images]
    return {"params": {**(params or {}), "images": sizes}}


class ImageStore:
    """Downloads fal's images and uploads them, with one download client and one upload pool
    for the whole run."""

    def __init__(
        self,
        storage: Storage,
        *,
        prefix: str,
        max_image_bytes: int,
        trusted_hosts: frozenset[str] = frozenset(),
        uploads: int = MAX_UPLOADS,
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.max_image_bytes = max_image_bytes
        self.trusted_hosts = trusted_hosts
        self._uploads = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix="upload")
        self._downloads = Downloader()
        self._prepare_lock = threading.Lock()
        self._prepared = False

    def prepare(self) -> None:
        """Once, on a thread of its own: load what storing an image needs (Pillow, the
        download client) while the first generations are at fal. Left to the first image, it
        ran when a whole batch's first wave finished at once and delayed every status call."""
        with self._prepare_lock:
            if self._prepared:
                return
            self._prepared = True

        def prepare() -> None:
            load_image_support()
            self._downloads.prepare()

        threading.Thread(target=prepare, name="prepare-storing", daemon=True).start()

    def store(
        self, generation_id: int, user_id: str, urls: Iterable[str], deadline: Deadline
    ) -> list[StoredImage]:
        """All or nothing: a failure removes the images of this generation already stored."""
        stored: list[StoredImage] = []
        try:
            for n, url in enumerate(urls):
                with self._downloads.open(url, max_bytes=self.max_image_bytes,
                                          deadline=deadline,
                                          trusted_hosts=self.trusted_hosts) as (head, stream):
                    key = object_key(self.prefix, user_id, generation_id, n, head.ext)
                    crash_point("downloading")
                    info = self._uploads.submit(
                        self.storage.put_stream, key, stream, content_type=head.content_type,
                        length=head.length).result()
                stored.append(StoredImage(key, self.storage.presigned_url(key, LINK_EXPIRY),
                                          head.width, head.height, head.content_type, info.size))
                crash_point("uploading")  # some images stored, the row not yet updated
        except BaseException:
            for image in stored:
                try:
                    self.storage.delete(image.key)
                except StorageError:
                    pass
            raise
        return stored

    def copy_remote(
        self, generation_id: int, user_id: str, entries: list[str], deadline: Deadline
    ) -> list[str]:
        """`entries` (a row's `result_urls`) with each fal URL replaced by the key of its copy
        in storage; keys already there stay as they are."""
        stored = self.store(generation_id, user_id, [e for e in entries if is_remote(e)],
                            deadline)
        copied = iter(image.key for image in stored)
        return [next(copied) if is_remote(entry) else entry for entry in entries]
