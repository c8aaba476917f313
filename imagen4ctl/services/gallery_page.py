"""The gallery's HTML: templates/gallery.html.j2 renders a Page that services/gallery.py fills.

The page says what gallery.py decided (texts, commands, durations) and decides only how it
looks. Jinja2 escapes every value (autoescape), because prompts, ids and keys come from the bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

# Each image loads and works offline; nothing runs; links do not leak the page's address.
CSP = ("default-src 'none'; img-src data: file: http: https:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class ProblemCard:
    """A stuck or FAILED row, with the command that deals with it."""

    id: int
    status: str
    stuck: bool
    age: str  # stuck: since it was created; failed: since it failed
    unchanged: str | None  # stuck: since its last change, when that differs
    error: str | None  # failed: the reason, shortened
    prompt: str
    meta: list[str]
    command: str | None


@dataclass(frozen=True)
class ImageCard:
    """One completed image, or what stands in its place."""

    id: int
    prompt: str
    alt: str
    meta: list[str]
    src: str | None  # for <img>: a relative path, a data: URI or a URL
    href: str | None  # the full image
    width: int | None
    height: int | None
    hosted: bool  # on fal's CDN, not in our storage
    problem: str  # shown without `src`; its `backticked` parts are commands


@dataclass(frozen=True)
class Page:
    user_id: str | None
    who: str
    made: str
    stuck_after: str
    mode: str  # an ImageMode value
    where: str  # the image folder that file links point into
    expires: str | None  # when presigned links expire
    lifetime: str  # of presigned links
    total: int
    completed_count: int
    stuck_count: int
    failed_count: int
    stuck: list[ProblemCard]
    failed: list[ProblemCard]
    fix_commands: list[str]
    hidden: int  # problem rows left out
    more: str  # the command that lists them all
    images: list[ImageCard]
    completed_rows_shown: int


def render(page: Page) -> str:
    return _environment().get_template("gallery.html.j2").render(page=page, csp=CSP)


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("imagen4ctl", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
