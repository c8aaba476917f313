"""The incident, replayed: every step is the real `imagen4ctl` in a subprocess, against the
fal emulator running in this process, a temporary SQLite database and image folder.

Hermetic: the children get a minimal environment (nothing of the user's, no ./.env), and
this is the one place imagen4ctl sets FAL_RUN_HOST, FAL_QUEUE_RUN_HOST and SSL_CERT_FILE —
for the children only. Each step's exit code and key numbers are checked: the demo fails
(exit 1) if anything differs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

USER = "42"
AVATARS = 137
DEMO_KEY = "demo-key-not-a-secret-0001"
EMULATOR_LATENCY = 0.3


@dataclass(frozen=True)
class Step:
    note: str
    argv: tuple[str, ...]
    exit_code: int
    expect: tuple[str, ...] = ()
    program: str = "imagen4ctl"  # or a python module run with -m


@dataclass
class StepResult:
    step: Step
    exit_code: int
    output: str
    seconds: float
    problems: list[str] = field(default_factory=list)


def story(workdir: Path) -> list[Step]:
    gallery = workdir / "gallery"
    return [
        Step("Create the generations table in a fresh SQLite database.",
             ("db", "upgrade"), 0, ("→ 0003",)),
        Step("The bot before its fix: it writes each generation PENDING, then calls fal_client "
             "with only FAL_API_KEY set. fal_client wants FAL_KEY, the submission fails, and "
             "nothing ever moves the rows on (they are dated 30 min to 33 h 4 min ago).",
             ("sqlite:///" + str(workdir / "demo.db"), USER), 0,
             ("No credentials found",), program="imagen4ctl.demo.naive_bot"),
        Step(f"The operator's first look. The incident's own report said 137 total, with "
             f"5 + 137 by kind: numbers that don't add up. Here: {AVATARS} + 5 = 142.",
             ("user-images", USER), 0,
             ("user 42 — 142 generations", "5 stuck Imagen4 generations, oldest 33h 4m")),
        Step("Health, as cron or Kubernetes would see it.", ("health",), 2, ("CRITICAL",)),
        Step("The doctor names the root cause.", ("check-config",), 0,
             ("only FAL_API_KEY is set", "root cause")),
        Step("What fix-pending would do (a dry run changes nothing).", ("fix-pending",), 0,
             ("never submitted", "5 fail (dry run")),
        Step("Recover instead of deleting: resubmit the five on the same rows.",
             ("fix-pending", "--apply", "--resubmit"), 0, ("5 resubmit (applied)",)),
        Step("The incident's five verification images.", ("seed-gallery", "--user-id", USER), 0,
             ("Beautiful sunset over the mountains", "An old castle")),
        Step(f"Now: {AVATARS} + 10 = 147, nothing stuck.",
             ("user-images", USER, "--recent", "0"), 0,
             ("user 42 — 147 generations", "nothing stuck")),
        Step("Health again.", ("health",), 0, ("OK",)),
        Step("The bot after its fix only inserts a row PENDING with the contract's columns, "
             "and calls nothing.",
             ("sqlite:///" + str(workdir / "demo.db"), USER), 0, ("written PENDING",),
             program="imagen4ctl.demo.bot"),
        Step("One pass of the worker submits it, stores its image and completes the row: "
             "what `imagen4ctl worker` does all the time.", ("worker", "--once"), 0,
             ("PENDING → PROCESSING", "PROCESSING → COMPLETED")),
        Step("A contact sheet of the gallery.",
             ("gallery", "--user-id", USER, "--out", str(gallery)), 0, ("index.html",)),
    ]


def child_env(workdir: Path, fal_env: dict[str, str]) -> dict[str, str]:
    """Nothing of the user's environment: only what the demo decides."""
    env = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "NO_COLOR", "TERM",
                                               "SYSTEMROOT") if name in os.environ}
    env.update({
        "HOME": str(workdir / "home"),
        "COLUMNS": "110",
        "DATABASE_URL": "sqlite:///" + str(workdir / "demo.db"),
        "IMAGES_DIR": str(workdir / "images"),
        "FAL_API_KEY": DEMO_KEY,  # the incident: only the legacy name is set
        "FAL_HOME_DIR": str(workdir / "fal-home"),  # no token file from the user's ~/.fal
        "IMAGEN4_USER_ID": USER,
        **fal_env,
    })
    return env


def add_avatars(workdir: Path) -> None:
    """User 42's history: 137 completed avatars, written as the bot writes them."""
    from imagen4ctl.db import generations
    from imagen4ctl.db.session import Database

    when = datetime.now(UTC) - timedelta(days=30)
    folder = workdir / "images" / "avatars" / USER
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(AVATARS):  # real images: the gallery shows them
        (folder / f"{n}.png").write_bytes(_avatar_png(n))
    database = Database("sqlite:///" + str(workdir / "demo.db"))
    generations.insert_many(database, [
        generations.NewGeneration(USER, "avatar", f"avatar {n}", "1:1", status="COMPLETED",
                                  result_urls=[f"avatars/{USER}/{n}.png"], at=when)
        for n in range(AVATARS)])
    database.dispose()


def _avatar_png(n: int) -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (40 + n % 7 * 30, 90 + n % 5 * 30, 160 - n % 3 * 40))
    ImageDraw.Draw(image).ellipse((24, 14, 72, 62), fill=(245, 220, 190))
    ImageDraw.Draw(image).rectangle((18, 66, 78, 96), fill=(30, 30, 60))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def run_step(step: Step, env: dict[str, str], cwd: Path) -> StepResult:
    module = "imagen4ctl" if step.program == "imagen4ctl" else step.program
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", module, *step.argv], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=120)
    output = completed.stdout
    result = StepResult(step, completed.returncode, output, time.monotonic() - started)
    if completed.returncode != step.exit_code:
        result.problems.append(f"exit {completed.returncode}, expected {step.exit_code}")
    result.problems += [f"missing {text!r}" for text in step.expect if text not in output]
    return result


def shown(step: Step) -> str:
    if step.program == "imagen4ctl":
        return "imagen4ctl " + " ".join(step.argv)
    return f"python -m {step.program} DATABASE_URL {step.argv[-1]}"


@dataclass
class DemoResult:
    results: list[StepResult]
    gallery: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return all(not r.problems for r in self.results)


def run(keep: Path | None, echo: Callable[[str], None]) -> DemoResult:
    """Play the story; `echo` receives the transcript as it happens."""
    from imagen4ctl.emulator import FalEmulator

    started = time.monotonic()
    if keep is not None:
        if keep.exists() and any(keep.iterdir()):
            from imagen4ctl.errors import UsageError

            raise UsageError(f"--keep folder {keep} is not empty")
        keep.mkdir(parents=True, exist_ok=True)
        workdir = keep.absolute()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="imagen4ctl-demo-"))
    for sub in ("home", "images", "fal-home"):
        (workdir / sub).mkdir(exist_ok=True)
    emulator = FalEmulator(latency=EMULATOR_LATENCY, cert_dir=workdir / "fal-emulator")
    results: list[StepResult] = []
    with emulator:
        env = child_env(workdir, emulator.env())
        for number, step in enumerate(story(workdir), 1):
            echo(f"\n# {number}. {step.note}\n$ {shown(step)}\n")
            result = run_step(step, env, workdir)
            results.append(result)
            echo(result.output.rstrip("\n") + f"\n[exit {result.exit_code}]\n")
            for problem in result.problems:
                echo(f"!! step {number} differs: {problem}\n")
            if number == 1:
                add_avatars(workdir)
                echo(f"\n# (setup) user {USER} already has {AVATARS} completed avatars.\n")
    gallery = workdir / "gallery"
    if keep is None:  # keep the gallery only
        kept = Path(tempfile.mkdtemp(prefix="imagen4ctl-demo-gallery-"))
        if gallery.exists():
            shutil.copytree(gallery, kept, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        gallery = kept
    return DemoResult(results, gallery, time.monotonic() - started)
