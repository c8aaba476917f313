"""`gallery` on SQLite and PostgreSQL with real PNGs in the S3 bucket (or a local folder):
problems first, real thumbnails, embedded and presigned images, escaping, headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagen4ctl.emulator import IMAGEN4_SIZES
from tests.conftest import CliResult
from tests.factories import bot_row, insert_rows

Cli = Callable[..., CliResult]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/imagen4ctl-gallery.png")
SIZES = {"1:1": (512, 512), "16:9": (640, 360), "9:16": (360, 640), "4:3": (600, 450)}
FAL_URL = "https://v3.fal.media/files/penguin/abc.png"
XSS = "<script>alert(1)</script>"


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 16):  # some detail, so the thumbnail has work to do
        for y in range(size[1]):
            image.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- the page


@dataclass
class Card:
    tag: str
    classes: set[str]
    attrs: dict[str, str]
    text: str = ""
    imgs: list[dict[str, str]] = field(default_factory=list)
    hrefs: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        return self.attrs.get("_prompt", "")


class PageParser(HTMLParser):
    """The cards in document order, with their text, images and links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[Card] = []
        self.tags: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self._card_depth: int | None = None
        self._in_prompt = False
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag not in {"img", "meta", "br", "link", "input"}:
            self._depth += 1
        classes = set(values.get("class", "").split())
        if "card" in classes and self._card_depth is None:
            self.cards.append(Card(tag, classes, values))
            self._card_depth = self._depth
        card = self.cards[-1] if self._card_depth is not None else None
        if "prompt" in classes and card is not None:
            self._in_prompt = True
        if tag == "img":
            self.imgs.append(values)
            if card is not None:
                card.imgs.append(values)
        if tag == "a":
            self.hrefs.append(values.get("href", ""))
            if card is not None:
                card.hrefs.append(values.get("href", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in {"img", "meta", "br", "link", "input"}:
            return
        self._in_prompt = False
        if self._card_depth is not None and self._depth == self._card_depth:
            self._card_depth = None
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._card_depth is not None:
            card = self.cards[-1]
            card.text += data
            if self._in_prompt:
                card.attrs["_prompt"] = card.attrs.get("_prompt", "") + data


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def card_kind(card: Card) -> str:
    for kind in ("stuck", "failed", "missing", "hosted", "image"):
        if kind in card.classes:
            return kind
    return "?"


# --------------------------------------------------------------------------- the data


@dataclass
class Dataset:
    db: str
    env: dict[str, str]
    images: dict[str, bytes]  # prompt → the PNG in storage
    sizes: dict[str, tuple[int, int]]


def _fill(db: str, put: Callable[[str, bytes], None], env: dict[str, str]) -> Dataset:
    images: dict[str, bytes] = {}
    sizes: dict[str, tuple[int, int]] = {}
    rows = []
    for n, (ratio, size) in enumerate(SIZES.items()):
        prompt = f"picture {ratio}"
        key = f"generations/42/{n + 1}/0.png"
        data = png(size, (40 * n, 120, 200 - 40 * n))
        put(key, data)
        images[prompt], sizes[prompt] = data, size
        rows.append(bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=10 + n),
                            prompt=prompt, aspect_ratio=ratio, result_urls=[key]))
    xss_key = "generations/42/9/0.png"
    images[XSS], sizes[XSS] = png((400, 300), (200, 30, 30)), (400, 300)
    put(xss_key, images[XSS])
    rows += [
        bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=5), prompt=XSS,
                aspect_ratio="4:3", result_urls=[xss_key]),
        bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=6), prompt="lost one",
                result_urls=["generations/42/404/0.png"]),
        bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=7), prompt="on fal's cdn",
                result_urls=[FAL_URL]),
        bot_row("42", "imagen4", "PENDING", age=timedelta(hours=33, minutes=4, seconds=5),
                prompt="stuck for ages"),
        bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=2), prompt="stuck at fal",
                fal_request_id="req-123"),
        bot_row("42", "imagen4", "PENDING", age=timedelta(minutes=2), prompt="young pending"),
        bot_row("42", "imagen4", "FAILED", age=timedelta(hours=1), prompt="broke",
                error="fal: <b>boom</b>"),
        bot_row("7", "imagen4", "COMPLETED", prompt="someone else's",
                result_urls=["generations/7/1/0.png"]),
        bot_row("7", "imagen4", "PENDING", age=timedelta(days=2), prompt="someone else stuck"),
    ]
    insert_rows(db, rows)
    return Dataset(db, {**env, "DATABASE_URL": db}, images, sizes)


@pytest.fixture
def s3_data(migrated_db: str, s3_bucket: Any, s3_env: dict[str, str]) -> Dataset:
    def put(key: str, data: bytes) -> None:
        s3_bucket.storage.put_bytes(key, data, content_type="image/png")

    return _fill(migrated_db, put, s3_env)


def run_gallery(cli: Cli, data: Dataset, out: Path, *args: str, says: str = "") -> str:
    result = cli("gallery", "--user-id", "42", "--out", str(out), *args, env=data.env)
    assert result.exit_code == 0, result.output
    assert says in result.stderr
    index = out.absolute() / "index.html"
    assert result.stdout.strip().splitlines()[-1] == str(index)  # the path, last
    assert "Traceback" not in result.output
    return index.read_text(encoding="utf-8")


def assert_problems_first(page: str) -> list[Card]:
    cards = parse(page).cards
    kinds = [card_kind(c) for c in cards]
    assert kinds[:3] == ["stuck", "stuck", "failed"], kinds
    assert set(kinds[3:]) <= {"image", "missing", "hosted"} and len(kinds) == 3 + 7
    stuck, processing, failed = cards[:3]
    assert stuck.prompt == "stuck for ages" and "33h 4m" in stuck.text  # oldest first
    assert processing.prompt == "stuck at fal" and "req-123" in processing.text
    assert "imagen4ctl fix-pending --user-id 42 --apply" in stuck.text
    assert "imagen4ctl fix-pending --user-id 42 --apply" in processing.text
    assert "fal: <b>boom</b>" in failed.text and "failed 1h ago" in failed.text  # as text
    assert "imagen4ctl generate broke --user-id 42 --aspect-ratio 1:1" in failed.text
    text = "".join(parse(page).text)
    assert "7 completed · 2 stuck · 1 failed · 11 generations" in text
    assert "young pending" not in text and "someone else" not in text
    return cards


# --------------------------------------------------------------------------- copy


def test_copy_mode_puts_problems_first_and_copies_real_thumbnails(
    cli: Cli, s3_data: Dataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    page = run_gallery(cli, s3_data, out, says="gallery: 7 images (2 missing or on fal's CDN), "
                       "2 stuck, 1 failed\nwarning: 2 stuck generations: at the top of the page")
    cards = assert_problems_first(page)
    images = [c for c in cards if card_kind(c) == "image"]
    assert [c.prompt for c in images] == [  # newest first
        XSS, "picture 1:1", "picture 16:9", "picture 9:16", "picture 4:3"]
    for card in images:
        [img] = card.imgs
        assert img["src"].startswith("thumbs/") and img.get("loading") == "eager"
        thumb = Image.open(out / img["src"])
        thumb.load()
        width, height = s3_data.sizes[card.prompt]
        assert max(thumb.size) == 320
        assert abs(thumb.size[0] / thumb.size[1] - width / height) < 0.01
        assert (img["width"], img["height"]) == (str(thumb.size[0]), str(thumb.size[1]))
        [href] = card.hrefs
        assert href.startswith("images/")
        assert (out / href).read_bytes() == s3_data.images[card.prompt]  # the full image
        assert f"{width}×{height}" in card.text
    [missing] = [c for c in cards if card_kind(c) == "missing"]
    assert missing.prompt == "lost one"
    assert "image missing — run imagen4ctl reconcile --user-id 42" in missing.text
    assert missing.imgs == []
    [hosted] = [c for c in cards if card_kind(c) == "hosted"]
    assert hosted.hrefs == [FAL_URL] and hosted.imgs == []
    assert "hosted by fal — may expire; run imagen4ctl reconcile --user-id 42 --fix" \
        in hosted.text
    # Offline: nothing the page loads comes from the network.
    assert all(not i["src"].startswith(("http:", "https:", "//")) for i in parse(page).imgs)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{c.attrs['data-id']}-0.png" for c in images)


def test_bot_text_is_escaped_everywhere(
    cli: Cli, s3_data: Dataset, tmp_path: Path
) -> None:
    weird = '"><img src=x onerror=alert(2)>'
    insert_rows(s3_data.db, [
        bot_row(weird, "imagen4", "PENDING", age=timedelta(hours=1), prompt=XSS),
        bot_row(weird, "imagen4", "FAILED", prompt="</code><script>alert(3)</script>",
                error="<img src=x onerror=alert(4)>", aspect_ratio='1:1"><b>'),
        bot_row(weird, "imagen4", "COMPLETED", prompt=XSS,
                result_urls=['generations/x"><script>alert(5)</script>.png']),
    ])
    page = run_gallery(cli, s3_data, tmp_path / "mine")  # user 42, with the XSS prompt
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    result = cli("gallery", "--out", str(tmp_path / "fleet"), env=s3_data.env)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "fleet" / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<b>" not in page.lower()
    parsed = parse(page)
    assert parsed.tags.count("script") == 0
    assert all(i["src"].startswith("thumbs/") for i in parsed.imgs)
    assert all("onerror" not in i for i in parsed.imgs)
    # The command on the card is the one to paste: the id is shell-quoted, then escaped.
    expected = "imagen4ctl fix-pending --user-id '\"><img src=x onerror=alert(2)>' --apply"
    assert expected in "".join(parsed.text)
    assert [card_kind(c) for c in parsed.cards][:6] == ["stuck"] * 4 + ["failed"] * 2


def test_local_folder_copy_mode(cli: Cli, migrated_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "images"

    def put(key: str, data: bytes) -> None:
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    folder.mkdir()
    data = _fill(migrated_db, put, {"IMAGES_DIR": str(folder)})
    out = tmp_path / "local-gallery"
    cards = assert_problems_first(run_gallery(cli, data, out))
    for card in (c for c in cards if card_kind(c) == "image"):
        assert (out / card.hrefs[0]).read_bytes() == data.images[card.prompt]
        assert max(Image.open(out / card.imgs[0]["src"]).size) == 320
    assert [c.prompt for c in cards if card_kind(c) == "missing"] == ["lost one"]


def test_images_made_by_generate_through_the_emulator(
    cli: Cli, migrated_db: str, s3_env: dict[str, str], s3_bucket: Any, fal_emulator: Any,
    tmp_path: Path,
) -> None:
    env = {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": "emulator-key-0001"}
    for ratio in ("16:9", "3:4"):
        result = cli("generate", f"A lighthouse {ratio}", "--aspect-ratio", ratio,
                     "--user-id", "42", env=env)
        assert result.exit_code == 0, result.output
    result = cli("gallery", "--user-id", "42", "--out", str(tmp_path / "g"), env=env)
    assert result.exit_code == 0, result.output
    cards = parse((tmp_path / "g" / "index.html").read_text(encoding="utf-8")).cards
    assert [c.prompt for c in cards] == ["A lighthouse 3:4", "A lighthouse 16:9"]
    for card, ratio in zip(cards, ("3:4", "16:9"), strict=True):
        full = Image.open(tmp_path / "g" / card.hrefs[0])
        thumb = Image.open(tmp_path / "g" / card.imgs[0]["src"])
        assert thumb.format == "JPEG" and max(thumb.size) == 320
        assert full.size == IMAGEN4_SIZES[ratio]
        assert abs(thumb.size[0] / thumb.size[1] - full.size[0] / full.size[1]) < 0.01
        assert f"{full.size[0]}×{full.size[1]}" in card.text and ratio in card.text


# --------------------------------------------------------------------------- embed, link


def test_embed_mode_is_one_file_without_external_references(
    cli: Cli, s3_data: Dataset, tmp_path: Path
) -> None:
    out = tmp_path / "embedded"
    page = run_gallery(cli, s3_data, out, "--images", "embed")
    assert sorted(p.name for p in out.iterdir()) == [".imagen4ctl-gallery", "index.html"]
    cards = assert_problems_first(page)
    parsed = parse(page)
    assert len(parsed.imgs) == 5
    for card in (c for c in cards if card_kind(c) == "image"):
        [img] = card.imgs
        prefix = "data:image/jpeg;base64,"
        assert img["src"].startswith(prefix)
        thumb = Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):])))
        width, height = s3_data.sizes[card.prompt]
        assert max(thumb.size) == 320
        assert abs(thumb.size[0] / thumb.size[1] - width / height) < 0.01
        assert card.hrefs == []
    # Nothing is loaded from elsewhere; the only outside link is the marked fal one.
    assert "link" not in parsed.tags and "url(" not in page and "@import" not in page
    assert [h for h in parsed.hrefs if h] == [FAL_URL]
    assert "Thumbnails are embedded in this file" in page


def test_link_mode_urls_open_and_say_when_they_expire(
    cli: Cli, s3_data: Dataset, tmp_path: Path
) -> None:
    before = datetime.now(UTC)
    page = run_gallery(cli, s3_data, tmp_path / "linked", "--images", "link")
    cards = assert_problems_first(page)
    assert sorted(p.name for p in (tmp_path / "linked").iterdir()) == [
        ".imagen4ctl-gallery", "index.html"]
    images = [c for c in cards if card_kind(c) == "image"]
    assert len(images) == 5
    for card in images:
        [img] = card.imgs
        assert img["src"].startswith("http://127.0.0.1:") and "X-Amz-Signature" in img["src"]
        response = httpx.get(img["src"], timeout=5)
        assert response.status_code == 200
        assert response.content == s3_data.images[card.prompt]
    match = re.search(r"presigned links that EXPIRE at (\d{4}-\d\d-\d\d \d\d:\d\d) UTC "
                      r"\(24h[ 0m]* after this page was made\)", page)
    assert match, page
    expires = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert timedelta(hours=23, minutes=58) < expires - before < timedelta(hours=24, minutes=1)
    [missing] = [c for c in cards if card_kind(c) == "missing"]
    assert "image missing — run imagen4ctl reconcile --user-id 42" in missing.text


# --------------------------------------------------------------------------- edges


def test_user_without_rows_gets_a_page_that_says_so(
    cli: Cli, migrated_db: str, tmp_path: Path
) -> None:
    result = cli("gallery", "--user-id", "nobody", env={"DATABASE_URL": migrated_db})
    assert result.exit_code == 0, result.output
    index = Path.cwd() / "gallery-nobody" / "index.html"  # the default folder
    assert result.stdout.strip().splitlines()[-1] == str(index)
    page = index.read_text(encoding="utf-8")
    assert "user nobody has no generations." in page
    assert parse(page).cards == []
    assert sorted(p.name for p in index.parent.iterdir()) == [".imagen4ctl-gallery",
                                                              "index.html"]


def test_limit_caps_completed_images_newest_first(cli: Cli, s3_data: Dataset,
                                                  tmp_path: Path) -> None:
    page = run_gallery(cli, s3_data, tmp_path / "four", "--limit", "4")
    cards = parse(page).cards
    assert [c.prompt for c in cards if card_kind(c) in {"image", "missing", "hosted"}] == [
        XSS, "lost one", "on fal's cdn", "picture 1:1"]
    assert "the newest 4 images, from 4 of 7 completed generations (raise --limit for " \
        "more)" in page
    assert len(list((tmp_path / "four" / "images").iterdir())) == 2
    assert [card_kind(c) for c in cards[:3]] == ["stuck", "stuck", "failed"]  # not capped


@pytest.mark.parametrize("mode", ["copy", "embed"])
def test_an_object_that_is_not_an_image_is_a_card_not_a_crash(
    cli: Cli, s3_data: Dataset, s3_bucket: Any, tmp_path: Path, mode: str
) -> None:
    s3_bucket.storage.put_bytes("generations/42/77/0.png", b"not an image",
                                content_type="image/png")
    insert_rows(s3_data.db, [bot_row("42", "imagen4", "COMPLETED", prompt="garbage",
                                     age=timedelta(seconds=30),
                                     result_urls=["generations/42/77/0.png"])])
    out = tmp_path / mode
    page = run_gallery(cli, s3_data, out, "--images", mode, "--limit", "2")
    garbage, xss = (c for c in parse(page).cards if "image" in c.classes)
    assert garbage.prompt == "garbage" and garbage.imgs == []
    assert "the stored object is not a readable image (12 bytes)" in garbage.text
    assert xss.prompt == XSS and len(xss.imgs) == 1
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ([".imagen4ctl-gallery", "index.html"] if mode == "embed" else
                     [".imagen4ctl-gallery", f"images/{xss.attrs['data-id']}-0.png",
                      "index.html", f"thumbs/{xss.attrs['data-id']}-0.jpg"])


def test_rerun_replaces_its_own_gallery_only(cli: Cli, s3_data: Dataset,
                                            tmp_path: Path) -> None:
    out = tmp_path / "again"
    run_gallery(cli, s3_data, out)
    (out / "images" / "stale.png").write_bytes(b"old")
    page = run_gallery(cli, s3_data, out, "--limit", "1")
    assert not (out / "images" / "stale.png").exists()
    assert len(list((out / "images").iterdir())) == 1 and "the newest 1 image," in page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = cli("gallery", "--out", str(foreign), env=s3_data.env)
    assert result.exit_code == 2
    assert f"error: --out {foreign} holds files that are not an imagen4ctl gallery" \
        in result.stderr
    assert "hint: Choose a new folder, or empty that one." in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


def test_unreachable_storage_is_one_line(cli: Cli, s3_data: Dataset, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**s3_data.env, "MINIO_ENDPOINT": f"127.0.0.1:{port}"}
    result = cli("gallery", "--user-id", "42", "--out", str(tmp_path / "g"), env=env)
    assert result.exit_code == 1
    assert f"error: cannot reach the S3 server at 127.0.0.1:{port}: connection refused" \
        in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "g").exists()


def test_open_calls_the_browser_and_survives_none(migrated_db: str, tmp_path: Path) -> None:
    browser = tmp_path / "browser.sh"
    seen = tmp_path / "opened.txt"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {seen}\n')
    browser.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env.update(DATABASE_URL=migrated_db, PATH=str(empty), BROWSER=str(browser))
    command = [sys.executable, "-m", "imagen4ctl", "gallery", "--user-id", "9", "--open"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    index = tmp_path / "gallery-9" / "index.html"
    assert done.stdout.strip() == str(index)
    assert seen.read_text() == index.as_uri()
    env["BROWSER"] = str(tmp_path / "no-such-browser")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "warning: no web browser found: open the page yourself" in done.stderr
    assert done.stdout.strip() == str(index)


def test_help(cli: Cli) -> None:
    result = cli("gallery", "--help")
    assert result.exit_code == 0
    assert "--images" in result.stdout and "copy|embed|link" in result.stdout


# --------------------------------------------------------------------------- Chromium


class DevTools:
    """A page in headless Chromium, driven over the DevTools protocol."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self.next_id = 0

    def call(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.websocket.send(json.dumps({"id": self.next_id, "method": method,
                                        "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.websocket.recv(timeout=deadline - time.monotonic()))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[[str], DevTools]]:
    """Start Chromium on a URL; yields a function returning a DevTools client for its page."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    from websockets.sync.client import connect

    processes: list[subprocess.Popen[bytes]] = []
    sockets = contextlib.ExitStack()

    def start(url: str) -> DevTools:
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-quic", "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp_path / 'chromium-profile'}",
                   "--remote-debugging-port=0", "--window-size=1280,900", url]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        processes.append(process)
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:  # keep reading, or Chromium blocks on a full pipe
            assert process.stderr is not None
            for raw in process.stderr:
                lines.put(raw.decode(errors="replace"))

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 10
        seen = []
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"Chromium did not start within 10s: {''.join(seen)[-2000:]}")
            seen.append(line)
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if match:
                break
        port = int(match.group(1))
        for _ in range(50):
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"Chromium on port {port} shows no page")
        websocket = sockets.enter_context(connect(pages[0]["webSocketDebuggerUrl"],
                                                  max_size=None, open_timeout=5, proxy=None))
        return DevTools(websocket)

    yield start
    sockets.close()
    for process in processes:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # SIGKILL what is left of the group (zygotes, renderers)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


PAGE_CHECK = """
new Promise(resolve => {
  const done = () => resolve({
    images: document.images.length,
    decoded: Array.from(document.images).every(i => i.complete && i.naturalWidth > 0),
    widths: Array.from(document.images).map(i => i.naturalWidth),
    cards: Array.from(document.querySelectorAll('.card')).map(c => c.className),
    scripts: document.scripts.length,
    title: document.title,
  });
  if (document.readyState === 'complete') done(); else addEventListener('load', done);
})
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_image_decodes_in_headless_chromium(
    cli: Cli, s3_data: Dataset, tmp_path: Path, chromium: Callable[[str], DevTools]
) -> None:
    began = time.monotonic()
    out = tmp_path / "browse"
    run_gallery(cli, s3_data, out)
    url = (out / "index.html").as_uri()
    page = chromium("about:blank")
    page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
              deviceScaleFactor=1, mobile=False)
    page.call("Page.navigate", url=url)
    deadline = time.monotonic() + 10
    while page.call("Runtime.evaluate", expression="document.readyState + ' ' + location.href",
                    returnByValue=True)["result"]["value"] != f"complete {url}":
        assert time.monotonic() < deadline, "the gallery did not load within 10s"
        time.sleep(0.05)
    result = page.call("Runtime.evaluate", expression=PAGE_CHECK, awaitPromise=True,
                       returnByValue=True)["result"]["value"]
    assert result["images"] == 5 and result["decoded"] is True, result
    assert sorted(result["widths"]) == [180, 320, 320, 320, 320]
    assert [c.split()[-1] for c in result["cards"][:3]] == ["stuck", "stuck", "failed"]
    assert result["scripts"] == 0 and result["title"] == "imagen4ctl gallery — user 42"
    shot = page.call("Page.captureScreenshot", format="png")["data"]
    screenshot = tmp_path / "gallery.png"
    screenshot.write_bytes(base64.b64decode(shot))
    assert Image.open(screenshot).size == (1280, 900)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    assert time.monotonic() - began < 30
