"""Polish a user notices: NO_COLOR, plain output when piped, completion, `python -m`."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from imagen4ctl import output


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
    result = run("--show-completion", "bash")
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
