"""`imagen4ctl gallery`: a static HTML contact sheet, problems first, that opens anywhere."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from imagen4ctl.context import AppContext
from imagen4ctl.output import console, info, print_warning, progress_bar

if TYPE_CHECKING:
    from imagen4ctl.services.gallery import GalleryResult


class Images(StrEnum):
    """The choices of --images; the service's ImageMode, without importing it for --help."""

    copy = "copy"
    embed = "embed"
    link = "link"


def gallery(
    ctx: typer.Context,
    user_id: Annotated[
        str | None, typer.Option("--user-id", show_default=False,
                                 help="Only this user's generations (default: everyone's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", file_okay=False, show_default=False,
                                  help="Folder to write (default: ./gallery or "
                                  "./gallery-<user>); an earlier gallery there is replaced.")
    ] = None,
    images: Annotated[
        Images, typer.Option("--images", help="copy: files beside the page (offline, never "
                             "expire); embed: thumbnails inside one file; link: presigned URLs "
                             "(they expire).")
    ] = Images.copy,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Completed images to show, newest first.")
    ] = 200,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the page in a web browser.")
    ] = False,
) -> None:
    """Write a static HTML gallery: stuck and failed generations first, then completed images.

    Prints the path of index.html last.

    Example: imagen4ctl gallery --user-id 42 --open
    """
    from imagen4ctl.services import gallery as service

    app = AppContext.from_typer(ctx)
    result = service.make_gallery(
        app.settings, app.session, app.storage,
        out if out is not None else default_folder(user_id), service.ImageMode(images.value),
        user_id=user_id, limit=limit,
        progress=lambda total: progress_bar(total, f"gallery: {images.value} images"))
    _summarize(result)
    console.print(escape(str(result.index)), soft_wrap=True)
    if open_page:
        _open(result.index)


def default_folder(user_id: str | None) -> Path:
    if user_id is None:
        return Path("gallery")
    return Path(f"gallery-{re.sub(r'[^A-Za-z0-9_.-]+', '_', user_id).strip('.') or 'user'}")


def _summarize(result: GalleryResult) -> None:
    rows = result.rows
    shown = f"{len(result.tiles)} image{'' if len(result.tiles) == 1 else 's'}"
    if result.unavailable:
        shown += f" ({result.unavailable} missing or on fal's CDN)"
    info(f"gallery: {shown}, {rows.stuck_count} stuck, {rows.failed_count} failed")
    if result.expires_at is not None:
        info(f"the image links expire at {result.expires_at:%Y-%m-%d %H:%M} UTC")
    if rows.stuck_count:
        plural = "s" if rows.stuck_count != 1 else ""
        print_warning(f"{rows.stuck_count} stuck generation{plural}: at the top of the page, "
                      "with the fix-pending command")


def _open(index: Path) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(index.as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        print_warning("no web browser found: open the page yourself")
