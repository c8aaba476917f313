"""The app as a user runs it: `python -m`, `--version`, completion, and one command built alone
with the same options and the root options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagen4ctl import cli


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagen4ctl", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_shell_completion_script() -> None:
    # The shell is named, not detected from the processes above the test (pytest's workers).
    result = run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert result.returncode == 0
    assert "_IMAGEN4CTL_COMPLETE" in result.stdout


def test_python_dash_m_and_version() -> None:
    from imagen4ctl import __version__

    result = run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"imagen4ctl {__version__}")


# --- one command built alone ---


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
