"""Polish a user notices: NO_COLOR, plain output when piped, completion, `python -m`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from imagen4ctl import cli, output, startup


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagen4ctl", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_no_color_turns_off_all_styling_even_on_a_forced_terminal() -> None:
    styled = run("check-config", "--offline", FORCE_COLOR="1")
    assert "\x1b[" in styled.stdout  # the check can fail: styling is there without NO_COLOR
    plain = run("check-config", "--offline", FORCE_COLOR="1", NO_COLOR="1")
    assert "\x1b[" not in plain.stdout + plain.stderr


def test_piped_output_is_plain() -> None:
    result = run("check-config", "--offline")
    assert "\x1b[" not in result.stdout + result.stderr
    assert result.stdout.startswith("✗ fal_credentials: no fal key")


def test_shell_completion_script() -> None:
    # The shell is named, not detected from the processes above the test (pytest's workers).
    result = run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert result.returncode == 0
    assert "_IMAGEN4CTL_COMPLETE" in result.stdout


def test_python_dash_m_and_version() -> None:
    from imagen4ctl import __version__

    result = run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"imagen4ctl {__version__}")


def test_a_batch_has_a_bar_on_a_terminal_and_a_few_lines_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    for terminal in (True, False):
        stream = io.StringIO()
        monkeypatch.setattr(output, "err_console",
                            Console(file=stream, force_terminal=terminal, width=80))
        with output.progress_bar(3, "batch of 3") as advance:
            for n in range(3):
                advance(f"generation {n} COMPLETED")
        text = stream.getvalue()
        if terminal:
            assert "batch of 3" in text and "3/3" in text and "[3/3]" not in text
        else:
            assert text.splitlines() == [f"[{n}/3] generation {n - 1} COMPLETED"
                                         for n in (1, 2, 3)]


# --- one command's start-up: only that command is built ---


@pytest.mark.parametrize(("args", "command"), [
    (["generate", "a cat"], "generate"),
    (["--debug", "--env-file", "prod.env", "user-images", "42"], "user-images"),
    (["--env-file=prod.env", "db", "upgrade"], "db"),
    (["fix-pending", "--help"], "fix-pending"),
    (["--help"], None),
    (["--version", "generate"], None),
    (["--show-completion", "bash"], None),
    (["generat"], None),
    (["--env-file", "generate"], None),  # the file's name, and no command
    ([], None),
])
def test_the_command_asked_for_is_found_before_the_cli_is_built(
    args: list[str], command: str | None
) -> None:
    assert startup.invoked_command(args, [*cli.COMMANDS, *cli.GROUPS]) == command


@pytest.mark.parametrize("name", [*cli.COMMANDS, *cli.GROUPS])
def test_a_command_built_alone_is_the_same_command(name: str) -> None:
    """Same options, arguments, help and usage line as in the whole CLI."""
    whole = CliRunner().invoke(cli.app, [name, "--help"], env={"COLUMNS": "100"})
    alone = CliRunner().invoke(cli.build_app(only=name), [name, "--help"],
                               env={"COLUMNS": "100"})
    assert whole.exit_code == alone.exit_code == 0
    assert f"imagen4ctl {name}" in whole.stdout
    assert alone.stdout == whole.stdout
    misused = [CliRunner().invoke(built, [name, "--no-such-option"])
               for built in (cli.app, cli.build_app(only=name))]
    assert misused[0].exit_code == misused[1].exit_code != 0  # health's are 3, not 2


def test_a_command_built_alone_has_the_root_options(tmp_path: Path) -> None:
    (tmp_path / "other.env").write_text("FAL_KEY=from-the-env-file-0001\n")
    result = run("--env-file", str(tmp_path / "other.env"), "check-config", "--offline",
                 "--json")
    assert result.returncode == 0, result.stderr
    key = json.loads(result.stdout)["settings"]["FAL_KEY"]
    assert key["source"] == f".env ({tmp_path / 'other.env'})"
    assert "from-the-env-file" not in result.stdout
