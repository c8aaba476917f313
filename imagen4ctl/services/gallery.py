"""The contact sheet behind `imagen4ctl gallery`: one static, self-contained HTML page.

Stuck and FAILED rows come first, each with the command that deals with it; completed images
follow, newest first. Rows are read with bounded queries. Every value from the database is
HTML-escaped, because prompts and keys come from the bot. The page needs no JavaScript, and
no network unless the images are presigned links.
"""

from __future__ import annotations

import base64
import html
import os
import shlex
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import COMPLETED, FAILED, IMAGEN4, IN_FLIGHT, Generation, as_utc, utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import Imagen4ctlError, StorageError, UsageError

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import Storage


class ImageMode(StrEnum):
    """How the page gets its images."""

    copy = "copy"  # files beside index.html: offline, never expire
    embed = "embed"  # thumbnails inside index.html as data: URIs: one file
    link = "link"  # presigned URLs: nothing copied, but they expire


THUMB_SIZE = 320  # pixels on the long side
LINK_LIFETIME = timedelta(hours=24)
PROBLEM_CARDS = 100  # stuck rows, and FAILED rows, shown at most
FETCH_WORKERS = 8  # below the S3 adapter's pool of 10 connections
MARKER = ".imagen4ctl-gallery"  # only a folder holding it is replaced by a new gallery

# Each image loads and works offline; nothing runs; links do not leak the page's address.
_CSP = ("default-src 'none'; img-src data: file: http: https:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class ProblemRow:
    """A stuck (PENDING/PROCESSING unchanged too long) or FAILED row."""

    id: int
    user_id: str
    kind: str
    status: str
    prompt: str
    aspect_ratio: str | None
    fal_request_id: str | None
    error: str | None
    age_seconds: int  # since creation
    state_seconds: int  # since the last change

    @property
    def stuck(self) -> bool:
        return self.status != FAILED


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
        return self.entry is not None and self.entry.startswith(("https://", "http://"))

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
    stuck: list[ProblemRow]
    failed: list[ProblemRow]
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
    g = Generation
    scope = [g.user_id == user_id] if user_id is not None else []
    stuck_scope = [*scope, g.status.in_(IN_FLIGHT),
                   g.updated_at < now - timedelta(seconds=stuck_after)]
    by_status = {status: int(n) for status, n in session.execute(
        select(g.status, func.count()).where(*scope).group_by(g.status))}
    stuck_count = int(session.scalar(select(func.count()).where(*stuck_scope)) or 0)
    problem_columns = (g.id, g.user_id, g.kind, g.status, g.prompt, g.aspect_ratio,
                       g.fal_request_id, g.error, g.created_at, g.updated_at)

    def problems(query: Any) -> list[ProblemRow]:
        return [ProblemRow(r.id, r.user_id, r.kind, r.status, r.prompt or "", r.aspect_ratio,
                           r.fal_request_id, r.error, _seconds(now, r.created_at),
                           _seconds(now, r.updated_at))
                for r in session.execute(query.limit(PROBLEM_CARDS))]

    stuck = problems(select(*problem_columns).where(*stuck_scope)
                     .order_by(g.created_at, g.id)) if stuck_count else []
    failed = problems(select(*problem_columns).where(*scope, g.status == FAILED)
                      .order_by(g.updated_at.desc(), g.id.desc())) if by_status.get(FAILED) else []

    images: list[CompletedImage] = []
    rows_shown = 0
    if limit > 0 and by_status.get(COMPLETED):
        query = (select(g.id, g.user_id, g.kind, g.prompt, g.aspect_ratio, g.created_at,
                        g.result_urls)
                 .where(*scope, g.status == COMPLETED)
                 .order_by(g.created_at.desc(), g.id.desc()).limit(limit))
        for r in session.execute(query):
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


def _seconds(now: datetime, then: datetime | str | None) -> int:
    when = as_utc(then)
    return max(0, int((now - when).total_seconds())) if when is not None else 0


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
        raise _write_error(folder, e) from e
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
        raise _write_error(folder, e) from e
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


def retry_command(row: ProblemRow) -> str | None:
    """`generate` makes a new imagen4 row with the same prompt; other kinds are the bot's."""
    if row.kind != IMAGEN4:
        return None
    ratio = f" --aspect-ratio {shlex.quote(row.aspect_ratio)}" if row.aspect_ratio else ""
    return (f"imagen4ctl generate {shlex.quote(row.prompt)} "
            f"--user-id {shlex.quote(row.user_id)}{ratio}")


# --------------------------------------------------------------------------- page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "unknown date"


def _code(command: str) -> str:
    # Lines break between words only, never inside `--user-id`; copying gives the command.
    words = " ".join(f"<span>{_e(word)}</span>" for word in command.split(" "))
    return f'<code class="cmd">{words}</code>'


def _note(text: str) -> str:
    """A note whose `backticked` parts are commands: shown as code, to copy whole."""
    parts = text.split("`")
    return "".join(_code(part) if n % 2 else _e(part) for n, part in enumerate(parts))


def _problem_card(row: ProblemRow, show_user: bool) -> str:
    if row.stuck:
        badge = f"stuck · {row.status}"
        changed = (f" · unchanged for {format_duration(row.state_seconds)}"
                   if row.state_seconds != row.age_seconds else "")
        detail = (f'<p class="age">{_e(format_duration(row.age_seconds))}</p>'
                  f'<p class="meta">since it was created{_e(changed)}</p>')
        command: str | None = fix_pending_command(row.user_id, row.kind)
        label = "fix it"
    else:
        badge = "failed"
        error = (row.error or "no error recorded").strip()
        if len(error) > 500:
            error = error[:500] + "…"
        detail = (f'<p class="error">{_e(error)}</p>'
                  f'<p class="meta">failed {_e(format_duration(row.state_seconds))} ago</p>')
        command = retry_command(row)
        label = "retry"
    meta = [f"#{row.id}", row.kind, row.aspect_ratio or "ratio ?"]
    if show_user:
        meta.insert(1, f"user {row.user_id}")
    if row.fal_request_id:
        meta.append(f"fal {row.fal_request_id}")
    action = (f'<p class="label">{_e(label)}</p>{_code(command)}' if command else "")
    css = "stuck" if row.stuck else "failed"
    return (f'<article class="card problem {css}" id="row-{row.id}" data-id="{row.id}" '
            f'data-status="{_e(row.status)}">'
            f'<p><span class="badge">{_e(badge)}</span></p>{detail}'
            f'<p class="prompt" title="{_e(row.prompt)}">{_e(row.prompt)}</p>'
            f'<p class="meta">{_e(" · ".join(meta))}</p>{action}</article>')


def _image_card(tile: Tile, show_user: bool) -> str:
    image = tile.image
    if tile.src is not None:
        size = (f' width="{tile.width}" height="{tile.height}"'
                if tile.width and tile.height else "")
        alt = image.prompt if len(image.prompt) <= 200 else image.prompt[:200] + "…"
        picture = f'<img src="{_e(tile.src)}" alt="{_e(alt)}" loading="eager"{size}>'
        if tile.href is not None:
            picture = f'<a href="{_e(tile.href)}" rel="noreferrer">{picture}</a>'
        frame = f'<div class="frame">{picture}</div>'
        css = "image"
    else:
        link = (f'<a href="{_e(tile.href)}" rel="noreferrer">open the image</a>'
                if tile.href is not None else "")
        frame = (f'<div class="frame placeholder"><p>{_note(tile.problem or "no image")}</p>'
                 f"{link}</div>")
        css = "image hosted" if image.hosted_by_fal else "image missing"
    meta = [f"#{image.id}" + (f" ({image.index + 1}/{image.count})" if image.count > 1 else ""),
            image.aspect_ratio or "ratio ?", _when(image.created_at)]
    if show_user:
        meta.insert(1, f"user {image.user_id}")
    if image.kind != IMAGEN4:
        meta.append(image.kind)
    if tile.original is not None:
        meta.append(f"{tile.original[0]}×{tile.original[1]}")
    return (f'<figure class="card {css}" data-id="{image.id}">{frame}<figcaption>'
            f'<p class="prompt" title="{_e(image.prompt)}">{_e(image.prompt)}</p>'
            f'<p class="meta">{_e(" · ".join(meta))}</p></figcaption></figure>')


def _mode_note(mode: ImageMode, storage: Storage | None, expires_at: datetime | None,
               lifetime: timedelta) -> str:
    if mode is ImageMode.copy:
        return "Images are copied beside this page: it works offline and never expires."
    if mode is ImageMode.embed:
        return "Thumbnails are embedded in this file: it works offline and never expires."
    if expires_at is None:  # file:// links into a local folder
        where = storage.describe() if storage is not None else "the image folder"
        return (f"Images are file links into {where}: they work on this machine only, "
                "while the files stay there.")
    return (f"Images are presigned links that EXPIRE at {_when(expires_at)} "
            f"({format_duration(lifetime.total_seconds())} after this page was made). "
            "For a page that keeps working: imagen4ctl gallery --images copy")


def render_page(rows: GalleryRows, tiles: list[Tile], mode: ImageMode, *,
                storage: Storage | None = None, expires_at: datetime | None = None,
                link_lifetime: timedelta = LINK_LIFETIME) -> str:
    who = f"user {rows.user_id}" if rows.user_id is not None else "all users"
    show_user = rows.user_id is None
    note = _mode_note(mode, storage, expires_at, link_lifetime)
    counts = (f"{rows.completed_count} completed · {rows.stuck_count} stuck · "
              f"{rows.failed_count} failed · {rows.total} generations")
    parts = [f'<header><h1>imagen4ctl gallery — {_e(who)}</h1>'
             f'<p class="counts">{_e(counts)}</p>'
             f'<p class="meta">made {_e(_when(rows.now))} · stuck means PENDING/PROCESSING '
             f'unchanged for more than {_e(format_duration(rows.stuck_after_seconds))} '
             f'(STUCK_AFTER)</p>'
             f'<p class="note mode-{mode.value}">{_e(note)}'
             f"</p></header><main>"]
    if rows.total == 0:
        text = f"{who} has no generations" if rows.user_id is not None else "no generations yet"
        parts.append(f'<p class="empty">{_e(text)}.</p>')
    problems = rows.stuck + rows.failed
    if problems:
        parts.append(f'<section id="attention" data-stuck="{rows.stuck_count}" '
                     f'data-failed="{rows.failed_count}"><h2>Needs attention</h2>')
        if rows.stuck:
            commands = sorted({fix_pending_command(rows.user_id, r.kind) for r in rows.stuck})
            parts.append(f"<p>{rows.stuck_count} stuck: recover them from fal with "
                         + " ".join(_code(c) for c in commands)
                         + " (leave out --apply for a dry run).</p>")
        if rows.failed:
            parts.append(f"<p>{rows.failed_count} failed: the reason is on each card.</p>")
        hidden = rows.stuck_count - len(rows.stuck) + rows.failed_count - len(rows.failed)
        parts.append('<div class="grid">'
                     + "".join(_problem_card(r, show_user) for r in problems) + "</div>")
        if hidden > 0:
            scope = f" {shlex.quote(rows.user_id)}" if rows.user_id is not None else ""
            more = f"imagen4ctl user-images{scope}"
            parts.append(f'<p class="meta">… and {hidden} more: {_code(more)}</p>')
        parts.append("</section>")
    if rows.completed_count:
        images = f"{len(tiles)} image{'' if len(tiles) == 1 else 's'}"
        shown = (f"the newest {images}, from {rows.completed_rows_shown} of "
                 f"{rows.completed_count} completed generations (raise --limit for more)"
                 if rows.completed_rows_shown < rows.completed_count
                 else f"{images} of {rows.completed_count} completed generations, newest first")
        parts.append(f'<section id="completed" data-count="{len(tiles)}"><h2>Completed</h2>'
                     f'<p class="meta">{_e(shown)}</p><div class="grid">'
                     + "".join(_image_card(t, show_user) for t in tiles) + "</div></section>")
    elif rows.total:
        parts.append(f'<p class="empty">{_e(who)} has no completed images yet.</p>')
    parts.append("</main>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
            f'<meta name="referrer" content="no-referrer">'
            f'<meta name="generator" content="imagen4ctl gallery">'
            f"<title>imagen4ctl gallery — {_e(who)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


_CSS = """
:root{color-scheme:light dark;--bg:#f5f6f8;--card:#fff;--ink:#1c2230;--muted:#5f6878;
--line:#dfe3ea;--frame:#eceef2;--amber:#9a4a00;--amber-bg:#fff6e0;--red:#b42318;
--red-bg:#fef1f0;--code:#121826;--code-ink:#e6e9ef}
@media (prefers-color-scheme:dark){:root{--bg:#111318;--card:#1a1d24;--ink:#e6e8ec;
--muted:#9aa3b2;--line:#2b303a;--frame:#22262e;--amber:#ffb547;--amber-bg:#2e2410;
--red:#ff7b6e;--red-bg:#2e1715;--code:#0b0d12}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main{max-width:1440px;margin:0 auto;padding:16px 24px}
header{padding-top:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:8px 0}
p{margin:4px 0}
.counts{font-weight:600}
.meta{color:var(--muted);font-size:12.5px}
.note{margin-top:10px;padding:8px 12px;border-radius:8px;background:var(--card);
border:1px solid var(--line)}
.note.mode-link{border-color:var(--amber);background:var(--amber-bg)}
.empty{font-size:17px;padding:32px 0}
section{margin:8px 0 28px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:16px;
margin-top:12px}
.card{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;
overflow:hidden;display:flex;flex-direction:column}
.problem{padding:12px 14px;gap:2px}
.problem.stuck{border-color:var(--amber);border-top-width:4px}
.problem.failed{border-color:var(--red);border-top-width:4px}
.badge{display:inline-block;font-size:11px;font-weight:700;letter-spacing:.05em;
text-transform:uppercase;padding:2px 9px;border-radius:999px;border:1px solid currentColor}
.stuck .badge{color:var(--amber);background:var(--amber-bg)}
.failed .badge{color:var(--red);background:var(--red-bg)}
.age{font-size:26px;font-weight:700;margin:6px 0 0}
.error{color:var(--red);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:12.5px;overflow-wrap:anywhere;white-space:pre-wrap;margin:8px 0 2px}
.label{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);
margin-top:10px}
code.cmd{display:inline-block;max-width:100%;font:12.5px/1.4 ui-monospace,SFMono-Regular,
Menlo,Consolas,monospace;background:var(--code);color:var(--code-ink);padding:4px 8px;
border-radius:6px;overflow-x:auto;user-select:all;white-space:pre-wrap;
vertical-align:middle;text-align:left}
code.cmd span{white-space:pre}
.problem code.cmd{display:block}
.frame{aspect-ratio:1/1;background:var(--frame);display:flex;align-items:center;
justify-content:center;overflow:hidden}
.frame a{display:contents}
.frame img{display:block;max-width:100%;max-height:100%;width:auto;height:auto;
object-fit:contain}
.placeholder{flex-direction:column;gap:8px;padding:16px;text-align:center;color:var(--muted);
font-size:13px;border-bottom:1px solid var(--line)}
.missing .placeholder{color:var(--red);background:var(--red-bg)}
.hosted .placeholder{color:var(--amber);background:var(--amber-bg)}
figcaption{padding:10px 12px}
.prompt{overflow-wrap:anywhere;display:-webkit-box;-webkit-line-clamp:4;
-webkit-box-orient:vertical;overflow:hidden}
a{color:inherit}
"""


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


def check_target(out: Path) -> Path:
    """The absolute folder a gallery may be written to; refuse to replace anything else."""
    folder = Path(os.path.abspath(out.expanduser()))
    if not folder.name:
        raise UsageError(f"--out {out} cannot be a gallery folder", hint="Choose a new folder.")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder",
                             hint="Choose a new folder for the gallery.")
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise UsageError(f"--out {out} holds files that are not an imagen4ctl gallery",
                             hint="Choose a new folder, or empty that one.")
    return folder


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
    with _building(folder) as work:
        signed_at = utcnow()
        tiles = fetch_tiles(rows, storage, work, mode, link_lifetime=link_lifetime,
                            on_image=on_image)
        expires_at = (signed_at + link_lifetime
                      if mode is ImageMode.link and _expiring(storage) else None)
        page = render_page(rows, tiles, mode, storage=storage, expires_at=expires_at,
                           link_lifetime=link_lifetime)
        try:
            (work / "index.html").write_text(page, encoding="utf-8")
            (work / MARKER).write_text("made by `imagen4ctl gallery`; replaced on the next run\n",
                                       encoding="utf-8")
        except OSError as e:
            raise _write_error(folder, e) from e
    return GalleryResult(folder / "index.html", mode, rows, tiles, expires_at)


@contextmanager
def _building(folder: Path) -> Iterator[Path]:
    work = folder.parent / f".{folder.name}.imagen4ctl-new-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as e:
        raise _write_error(folder, e) from e
    try:
        yield work
        old = folder.parent / f".{folder.name}.imagen4ctl-old-{uuid.uuid4().hex[:8]}"
        try:
            if folder.exists() or folder.is_symlink():
                folder.rename(old)
            work.rename(folder)
        except OSError as e:
            if old.exists() and not folder.exists():
                old.rename(folder)
            raise _write_error(folder, e) from e
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_error(folder: Path, exc: OSError) -> Imagen4ctlError:
    reason = (exc.strerror or type(exc).__name__).lower()
    return Imagen4ctlError(f"cannot write the gallery to {folder}: {reason}",
                           hint="Choose another folder with --out.")


def _expiring(storage: Storage | None) -> bool:
    from imagen4ctl.adapters.storage import LocalStorage

    return storage is not None and not isinstance(storage, LocalStorage)
