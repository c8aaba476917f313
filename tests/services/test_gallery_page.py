"""The gallery page's template on its own: every value escaped once, by the template; the
template shipped as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.commands.test_gallery import XSS, card_kind, parse

HOSTILE = XSS + '"><img src=x onerror=alert(2)>\'&amp;'
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "main",
             "section", "div", "article", "figure", "figcaption", "span", "code", "a", "img"}


def hostile_page(expires: str | None) -> Any:
    """A page where every value the template shows is hostile text."""
    from imagen4ctl.services.gallery_page import ImageCard, Page, ProblemCard

    text = HOSTILE
    return Page(
        user_id=text, who=text, made=text, stuck_after=text, mode="link", where=text,
        expires=expires, lifetime=text, total=4, completed_count=2, stuck_count=2,
        failed_count=1,
        stuck=[ProblemCard(1, text, True, text, text, None, text, [text, text],
                           f"imagen4ctl fix-pending {text}")],
        failed=[ProblemCard(2, text, False, text, None, text, text, [text], None)],
        fix_commands=[f"imagen4ctl fix-pending {text}"], hidden=1,
        more=f"imagen4ctl user-images {text}",
        images=[ImageCard(3, text, text, [text], text, text, 320, 240, False, ""),
                ImageCard(4, text, text, [text], None, text, None, None, True,
                          f"{text} `imagen4ctl reconcile {text}`")],
        completed_rows_shown=2)


@pytest.mark.parametrize("expires", [HOSTILE, None])
def test_the_template_escapes_every_value(expires: str | None) -> None:
    from imagen4ctl.services.gallery_page import render

    page = render(hostile_page(expires))
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;amp;" in page  # escaped once, by the template, not before it
    parsed = parse(page)
    assert set(parsed.tags) <= PAGE_TAGS, set(parsed.tags) - PAGE_TAGS
    assert [card_kind(c) for c in parsed.cards] == ["stuck", "failed", "image", "hosted"]
    assert all(c.prompt == HOSTILE for c in parsed.cards)
    assert [c.attrs["data-status"] for c in parsed.cards[:2]] == [HOSTILE, HOSTILE]
    [img] = parsed.imgs
    assert img["src"] == img["alt"] == HOSTILE and "onerror" not in img
    assert parsed.hrefs == [HOSTILE, HOSTILE]
    text = "".join(parsed.text)
    assert f"imagen4ctl gallery — {HOSTILE}" in text
    assert f"imagen4ctl fix-pending {HOSTILE}" in text  # the commands, word by word
    assert f"imagen4ctl reconcile {HOSTILE}" in text
    assert (f"file links into {HOSTILE}" if expires is None else f"EXPIRE at {HOSTILE}") in text


def test_the_template_ships_as_package_data(tmp_path: Path) -> None:
    """What setuptools copies into a wheel holds the page's template, which renders from there."""
    root = Path(__file__).parents[2]
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    shutil.copytree(root / "imagen4ctl", source / "imagen4ctl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = tmp_path / "built"
    done = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                           "build_py", "--build-lib", str(built)],
                          cwd=source, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (built / "imagen4ctl" / "templates").iterdir()) == [
        "gallery.css", "gallery.html.j2"]
    probe = ("import sys, imagen4ctl.services.gallery, imagen4ctl.services.gallery_page as p\n"
             "assert 'jinja2' not in sys.modules  # imported when a page is made\n"
             "print(p.__file__)\n"
             "print(p.render(p.Page(None, 'all users', 'now', '10m', 'copy', '', None, '24h', "
             "0, 0, 0, 0, [], [], [], 0, '', [], 0)))\n")
    env = {**os.environ, "PYTHONPATH": str(built)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    where, page = done.stdout.split("\n", 1)
    assert Path(where).is_relative_to(built)
    assert "code.cmd span" in page and '<p class="empty">no generations yet.</p>' in page
