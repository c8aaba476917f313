"""The contact sheet behind `imagen4ctl gallery`: one static, self-contained HTML page.

Stuck and FAILED rows come first, each with the command that deals with it; completed images
follow, newest first. Rows are read with bounded queries. The page is a Jinja2 template
(templates/gallery.html.j2, rendered by gallery_page.py) that escapes every value, because
prompts and keys come from the bot. It needs no JavaScript, and no network unless the images
are presigned links.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagen4ctl.db import generations
from imagen4ctl.db.generations import GenerationRow
from imagen4ctl.db.values import COMPLETED, FAILED, IMAGEN4, as_utc, utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import Imagen4ctlError, StorageError
from imagen4ctl.keys import is_remote
from imagen4ctl.services import gallery_page
from imagen4ctl.services.gallery_folder import MARKER, building, check_target, write_error
from imagen4ctl.services.gallery_page import ImageCard, ProblemCard

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.settings import Settings


class ImageMode(StrEnum):
    """How the page gets its images."""

    copy = "copy"  # files beside index.html: offline, never expire
    embed = "embed"  # thumbnails inside index.html as data: URIs: one file
    link = "link"  # presigned URLs: nothing copied, but they expire


THUMB_SIZE = 320  # pixels on the long side
LINK_LIFETIME = timedelta(hours=24)
PROBLEM_CARDS = 100  # stuck rows, and FAILED rows, shown at most
FETCH_WORKERS = 8  # below the S3 adapter's pool of 10 connections

# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class CompletedImage:
    """One image of a COMPLETED row; `entry` is an object key, fal's URL, or None (no image)."""

    id: int
    user_id: str
    kind: str
    prompt: str
    aspect_ratio: str | None
    created_at: datetime | None
    entry: str | None
    index: int = 0
    count: int = 1

    @property
    def hosted_by_fal(self) -> bool:
        return self.entry is not None and is_remote(self.entry)

    @property
    def name(self) -> str:
        """The file name stem beside index.html: from the row, never from a key the bot wrote."""
        return f"{self.id}-{self.index}"


@dataclass
class GalleryRows:
    user_id: str | None
    stuck_after_seconds: int
    now: datetime
    by_status: dict[str, int]
    stuck_count: int
    stuck: list[GenerationRow]  # PENDING/PROCESSING unchanged too long, ages as of `now`
    failed: list[GenerationRow]
    images: list[CompletedImage]
    completed_rows_shown: int

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def completed_count(self) -> int:
        return self.by_status.get(COMPLETED, 0)

    @property
    def failed_count(self) -> int:
        return self.by_status.get(FAILED, 0)

    @property
    def stored_keys(self) -> bool:
        return any(i.entry is not None and not i.hosted_by_fal for i in self.images)


def collect(
    session: Session,
    user_id: str | None,
    *,
    stuck_after: float,
    limit: int,
    now: datetime | None = None,
) -> GalleryRows:
    """The rows one page shows: counts from the database, at most `limit` completed images."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stuck_after)
    by_status = generations.counts_by_status(session, user_id=user_id)
    stuck_count = generations.count_stuck(session, cutoff=cutoff, user_id=user_id)
    stuck = generations.stuck_rows(session, cutoff=cutoff, limit=PROBLEM_CARDS, read_at=now,
                                   user_id=user_id) if stuck_count else []
    failed = generations.failed_rows(session, limit=PROBLEM_CARDS, read_at=now,
                                     user_id=user_id) if by_status.get(FAILED) else []

    images: list[CompletedImage] = []
    rows_shown = 0
    if limit > 0 and by_status.get(COMPLETED):
        for r in generations.completed_rows(session, limit=limit, user_id=user_id):
            if len(images) >= limit:
                break
            rows_shown += 1
            entries = _entries(r.result_urls)
            common = (r.id, r.user_id, r.kind, r.prompt or "", r.aspect_ratio,
                      as_utc(r.created_at))
            if not entries:
                images.append(CompletedImage(*common, entry=None))
            for n, entry in enumerate(entries):
                images.append(CompletedImage(*common, entry=entry, index=n, count=len(entries)))
        del images[limit:]
    return GalleryRows(user_id, int(stuck_after), now, by_status, stuck_count, stuck, failed,
                       images, rows_shown)


def _entries(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Tile:
    """What the page shows for one completed image."""

    image: CompletedImage
    src: str | None = None  # for <img>: a relative path, a data: URI or a URL
    href: str | None = None  # the full image
    width: int | None = None  # of `src`, when known
    height: int | None = None
    original: tuple[int, int] | None = None  # the full image's size, when known
    problem: str | None = None  # shown instead of the image


def fetch_tiles(
    rows: GalleryRows,
    storage: Storage | None,
    folder: Path,
    mode: ImageMode,
    *,
    link_lifetime: timedelta = LINK_LIFETIME,
    on_image: Callable[[str], None] | None = None,
) -> list[Tile]:
    """One tile per image, in order; copy and embed write files below `folder`.

    A missing or unreadable object becomes a tile that says so; only a storage that cannot
    be used at all stops the gallery.
    """
    if rows.stored_keys:
        if storage is None:
            raise StorageError("no storage to read the images from")
        if not storage.bucket_exists():
            raise StorageError(f"{storage.describe()} does not exist",
                               hint="Check MINIO_BUCKET (or IMAGES_DIR); see "
                               "`imagen4ctl check-config`.")
    if mode is not ImageMode.link and rows.stored_keys:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "thumbs").mkdir(exist_ok=True)

    def tile(image: CompletedImage) -> Tile:
        if image.entry is None:
            return Tile(image, problem="no image recorded — run "
                        f"`{reconcile_command(image)}`")
        if image.hosted_by_fal:
            return Tile(image, href=image.entry, problem="hosted by fal — may expire; run "
                        f"`{reconcile_command(image)} --fix`")
        assert storage is not None
        if mode is ImageMode.link:
            return _linked_tile(image, image.entry, storage, link_lifetime)
        return _copied_tile(image, image.entry, storage, folder, mode)

    tiles: list[Tile] = []
    with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
        for result in pool.map(tile, rows.images):
            tiles.append(result)
            if on_image is not None:
                on_image(f"#{result.image.id}")
    if mode is ImageMode.embed:
        shutil.rmtree(folder / "images", ignore_errors=True)
        shutil.rmtree(folder / "thumbs", ignore_errors=True)
    return tiles


def _missing_or(image: CompletedImage, key: str, storage: Storage, error: Imagen4ctlError) -> str:
    """What a card says when reading `key` failed: missing, or why not."""
    try:
        missing = storage.stat(key) is None
    except Imagen4ctlError:
        missing = False
    if missing:
        return f"image missing — run `{reconcile_command(image)}`"
    return f"image unreadable: {error.message}"


def _linked_tile(image: CompletedImage, key: str, storage: Storage,
                 lifetime: timedelta) -> Tile:
    try:
        if storage.stat(key) is None:
            return Tile(image, problem=f"image missing — run `{reconcile_command(image)}`")
        url = storage.presigned_url(key, lifetime)
    except Imagen4ctlError as e:
        return Tile(image, problem=f"image unreadable: {e.message}")
    return Tile(image, src=url, href=url)


def _copied_tile(image: CompletedImage, key: str, storage: Storage, folder: Path,
                 mode: ImageMode) -> Tile:
    from PIL import Image, ImageOps

    part = folder / "images" / f"{image.name}.part"
    try:
        with storage.open(key) as stream, open(part, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
    except Imagen4ctlError as e:
        part.unlink(missing_ok=True)
        return Tile(image, problem=_missing_or(image, key, storage, e))
    except OSError as e:
        part.unlink(missing_ok=True)
        raise write_error(folder, e) from e
    thumb = folder / "thumbs" / f"{image.name}.jpg"
    try:
        with Image.open(part) as opened:
            original = opened.size
            suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}.get(
                opened.format or "", ".img")
            opened.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG decodes at a fraction
            picture = ImageOps.exif_transpose(opened)
            picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
            flat = _flatten(picture)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        length = part.stat().st_size
        part.unlink(missing_ok=True)
        return Tile(image, problem=f"the stored object is not a readable image ({length} bytes)")
    try:
        flat.save(thumb, "JPEG", quality=85, optimize=True)
        if mode is ImageMode.embed:  # the page holds the thumbnail; no file stays behind
            data = base64.b64encode(thumb.read_bytes()).decode("ascii")
            part.unlink()
            thumb.unlink()
            return Tile(image, src=f"data:image/jpeg;base64,{data}", width=flat.width,
                        height=flat.height, original=original)
        full = part.with_suffix(suffix)
        os.replace(part, full)
    except OSError as e:
        raise write_error(folder, e) from e
    return Tile(image, src=f"thumbs/{thumb.name}", href=f"images/{full.name}",
                width=flat.width, height=flat.height, original=original)


def _flatten(picture: Any) -> Any:
    """RGB for JPEG: transparency lands on white, as a browser shows it on a light page."""
    from PIL import Image

    if picture.mode in ("RGBA", "LA", "PA") or (
            picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return picture.convert("RGB")


# --------------------------------------------------------------------------- commands


def _scope_args(user_id: str | None, kind: str) -> str:
    args = f" --user-id {shlex.quote(user_id)}" if user_id is not None else ""
    return args + (f" --kind {shlex.quote(kind)}" if kind != IMAGEN4 else "")


def fix_pending_command(user_id: str | None, kind: str) -> str:
    return f"imagen4ctl fix-pending{_scope_args(user_id, kind)} --apply"


def reconcile_command(image: CompletedImage) -> str:
    return f"imagen4ctl reconcile{_scope_args(image.user_id, image.kind)}"


def retry_command(row: GenerationRow) -> str | None:
    """`generate` makes a new imagen4 row with the same prompt; other kinds are the bot's."""
    if row.kind != IMAGEN4:
        return None
    ratio = f" --aspect-ratio {shlex.quote(row.aspect_ratio)}" if row.aspect_ratio else ""
    return (f"imagen4ctl generate {shlex.quote(row.prompt)} "
            f"--user-id {shlex.quote(row.user_id)}{ratio}")


# --------------------------------------------------------------------------- page


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "unknown date"


def _problem_card(row: GenerationRow, show_user: bool) -> ProblemCard:
    meta = [f"#{row.id}", row.kind, row.aspect_ratio or "ratio ?"]
    if show_user:
        meta.insert(1, f"user {row.user_id}")
    if row.fal_request_id:
        meta.append(f"fal {row.fal_request_id}")
    if row.in_flight:  # a stuck row (the others are FAILED)
        unchanged = (format_duration(row.state_seconds)
                     if row.state_seconds != row.age_seconds else None)
        return ProblemCard(row.id, row.status, True, format_duration(row.age_seconds), unchanged,
                           None, row.prompt, meta, fix_pending_command(row.user_id, row.kind))
    error = (row.error or "no error recorded").strip()
    if len(error) > 500:
        error = error[:500] + "…"
    return ProblemCard(row.id, row.status, False, format_duration(row.state_seconds), None,
                       error, row.prompt, meta, retry_command(row))


def _image_card(tile: Tile, show_user: bool) -> ImageCard:
    image = tile.image
    meta = [f"#{image.id}" + (f" ({image.index + 1}/{image.count})" if image.count > 1 else ""),
            image.aspect_ratio or "ratio ?", _when(image.created_at)]
    if show_user:
        meta.insert(1, f"user {image.user_id}")
    if image.kind != IMAGEN4:
        meta.append(image.kind)
    if tile.original is not None:
        meta.append(f"{tile.original[0]}×{tile.original[1]}")
    alt = image.prompt if len(image.prompt) <= 200 else image.prompt[:200] + "…"
    return ImageCard(image.id, image.prompt, alt, meta, tile.src, tile.href, tile.width,
                     tile.height, image.hosted_by_fal, tile.problem or "no image")


def render_page(rows: GalleryRows, tiles: list[Tile], mode: ImageMode, *,
                storage: Storage | None = None, expires_at: datetime | None = None,
                link_lifetime: timedelta = LINK_LIFETIME) -> str:
    """What the page says is decided here; templates/gallery.html.j2 lays it out."""
    show_user = rows.user_id is None
    scope = f" {shlex.quote(rows.user_id)}" if rows.user_id is not None else ""
    return gallery_page.render(gallery_page.Page(
        user_id=rows.user_id,
        who=f"user {rows.user_id}" if rows.user_id is not None else "all users",
        made=_when(rows.now),
        stuck_after=format_duration(rows.stuck_after_seconds),
        mode=mode.value,
        where=storage.describe() if storage is not None else "the image folder",
        expires=_when(expires_at) if expires_at is not None else None,
        lifetime=format_duration(link_lifetime.total_seconds()),
        total=rows.total,
        completed_count=rows.completed_count,
        stuck_count=rows.stuck_count,
        failed_count=rows.failed_count,
        stuck=[_problem_card(r, show_user) for r in rows.stuck],
        failed=[_problem_card(r, show_user) for r in rows.failed],
        fix_commands=sorted({fix_pending_command(rows.user_id, r.kind) for r in rows.stuck}),
        hidden=rows.stuck_count - len(rows.stuck) + rows.failed_count - len(rows.failed),
        more=f"imagen4ctl user-images{scope}",
        images=[_image_card(t, show_user) for t in tiles],
        completed_rows_shown=rows.completed_rows_shown,
    ))


# --------------------------------------------------------------------------- folder


@dataclass
class GalleryResult:
    index: Path
    mode: ImageMode
    rows: GalleryRows
    tiles: list[Tile] = field(default_factory=list)
    expires_at: datetime | None = None

    @property
    def unavailable(self) -> int:
        return sum(1 for t in self.tiles if t.src is None)


def make_gallery(
    settings: Settings,
    session: Callable[[], AbstractContextManager[Session]],
    storage: Callable[[], Storage],
    out: Path,
    mode: ImageMode,
    *,
    user_id: str | None,
    limit: int,
    progress: Callable[[int], AbstractContextManager[Callable[[str], None]]],
) -> GalleryResult:
    """`imagen4ctl gallery`: the folder checked before any setting is read or the database
    opened, the storage made only when an image is in it, and `progress(number of images)`
    advanced once per image."""
    folder = check_target(out)
    with session() as opened:
        rows = collect(opened, user_id, stuck_after=settings.stuck_after, limit=limit)
    images = storage() if rows.stored_keys else None
    with progress(len(rows.images)) as on_image:
        return write_gallery(rows, images, folder, mode, on_image=on_image)


def write_gallery(
    rows: GalleryRows,
    storage: Storage | None,
    out: Path,
    mode: ImageMode,
    *,
    link_lifetime: timedelta = LINK_LIFETIME,
    on_image: Callable[[str], None] | None = None,
) -> GalleryResult:
    """Build the gallery in a fresh folder beside `out`, then put it in `out`'s place.

    An earlier gallery there is replaced whole, so no stale image survives; a failure
    leaves it as it was.
    """
    folder = check_target(out)
    with building(folder) as work:
        signed_at = utcnow()
        tiles = fetch_tiles(rows, storage, work, mode, link_lifetime=link_lifetime,
                            on_image=on_image)
        expires_at = (signed_at + link_lifetime
                      if mode is ImageMode.link and storage is not None
                      and storage.links_expire else None)
        page = render_page(rows, tiles, mode, storage=storage, expires_at=expires_at,
                           link_lifetime=link_lifetime)
        try:
            (work / "index.html").write_text(page, encoding="utf-8")
            (work / MARKER).write_text("made by `imagen4ctl gallery`; replaced on the next run\n",
                                       encoding="utf-8")
        except OSError as e:
            raise write_error(folder, e) from e
    return GalleryResult(folder / "index.html", mode, rows, tiles, expires_at)
