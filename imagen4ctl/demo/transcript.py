"""The demo's transcript: split into steps, normalised for comparison, and written into the
README's example blocks (`python -m imagen4ctl.demo.transcript README.md` re-records them)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_STEP = re.compile(r"^# (\d+)\. ", re.MULTILINE)
_BLOCK = re.compile(r"(<!-- demo step (\d+) -->\n```text\n)(.*?)(^```$)",
                    re.DOTALL | re.MULTILINE)
_VOLATILE = [
    (re.compile(r"/tmp/imagen4ctl-demo-[\w-]+"), "<demo>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<request>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\b"), "<time>"),  # worker log lines
    (re.compile(r"\b\d+\.\d+s\b"), "<t>s"),
    (re.compile(r"(?<=\d[mh]) \d+[sm]\b"), ""),  # an age's last unit moves while it runs
    (re.compile(r"\b\d+\.\d\b"), "<t>"),  # seconds columns
    (re.compile(r"sha256 [0-9a-f]{6}"), "sha256 <fp>"),
    (re.compile(r"[─━═┄┈│┃┏┓┗┛┡┩┣┫┳┻╇╋┼├┤┬┴└┘┌┐╭╮╯╰]+"), " "),
]


def steps(transcript: str) -> dict[int, str]:
    """Each step's block as printed: from its `$ ` line through its `[exit N]` line."""
    found: dict[int, str] = {}
    marks = list(_STEP.finditer(transcript))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(transcript)
        body = transcript[mark.end():end]
        start = body.find("\n$ ")
        stop = body.find("\n[exit ")
        if start != -1 and stop != -1:
            close = body.find("\n", stop + 1)
            found[int(mark.group(1))] = body[start + 1: close if close != -1 else None].rstrip()
    return found


def normalize(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def readme_blocks(readme: str) -> dict[int, str]:
    return {int(m.group(2)): m.group(3).rstrip("\n") for m in _BLOCK.finditer(readme)}


def rewrite(readme: str, recorded: dict[int, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        number = int(match.group(2))
        body = recorded[number] + "\n" if number in recorded else match.group(3)
        return match.group(1) + body + match.group(4)

    return _BLOCK.sub(fill, readme)


def main(readme_path: str) -> int:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "imagen4ctl", "demo"], capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "110"})
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        return 1
    path = Path(readme_path)
    path.write_text(rewrite(path.read_text(encoding="utf-8"), steps(done.stdout)),
                    encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
