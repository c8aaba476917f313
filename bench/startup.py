"""P1 — start-up: `imagen4ctl --help` against a bare Typer app of ten commands, in one run.

    python bench/startup.py [--rounds 21]

Each round runs every command once, in a shuffled order (the machine is shared and noisy);
medians over the rounds are compared. Target: `imagen4ctl --help` <= 1.3x the reference app's
`--help` (Rich help included). `python -c pass` is the floor, `check-config --offline` (in an
empty temp dir) is shown alongside. Both apps run through the same interpreter directly (the console
script next to `sys.executable`), not through a pyenv shim, which adds the same constant to both.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from _perf import KEY, Samples, bench_env, header, machine, run_measured, verdict

TARGET = 1.3

REFERENCE_APP = '''\
"""A bare Typer app: ten commands with a couple of options each, Rich help."""
from typing import Annotated

import typer

app = typer.Typer(help="Reference app for the start-up benchmark.", no_args_is_help=True,
                  rich_markup_mode="rich")
'''

REFERENCE_COMMAND = '''

@app.command("command-{n}")
def command_{n}(
    name: Annotated[str, typer.Argument(help="What to act on.")] = "x",
    count: Annotated[int, typer.Option("--count", "-c", help="How many times.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", help="Say more.")] = False,
) -> None:
    """Command number {n}: does one thing, described in one line.

    A second paragraph, as real commands have, with an example: ref command-{n} x -c 2
    """
    typer.echo(f"{{name}} {{count}} {{verbose}}")
'''


def reference_app(folder: Path) -> Path:
    path = folder / "reference_app.py"
    source = REFERENCE_APP + "".join(REFERENCE_COMMAND.format(n=n) for n in range(1, 11))
    path.write_text(source + '\n\nif __name__ == "__main__":\n    app()\n')
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    entry = Path(sys.executable).parent / "imagen4ctl"
    if not entry.exists():
        print(f"no imagen4ctl entry point next to {sys.executable}: pip install -e .")
        return 2
    with tempfile.TemporaryDirectory(prefix="imagen4ctl-startup-") as tmp:
        folder = Path(tmp)
        app = reference_app(folder)
        work = folder / "work"
        work.mkdir()
        env = bench_env(HOME=str(work), FAL_KEY=KEY, COLUMNS="100")
        commands: dict[str, tuple[list[str], tuple[int, ...]]] = {
            "python -c pass (floor)": ([sys.executable, "-c", "pass"], (0,)),
            "reference Typer app --help": ([sys.executable, str(app), "--help"], (0,)),
            "imagen4ctl --help": ([str(entry), "--help"], (0,)),
            "imagen4ctl check-config --offline": ([str(entry), "check-config", "--offline"],
                                                  (0, 1)),
        }
        samples = {label: Samples(label) for label in commands}
        for command, ok in commands.values():  # warm the page cache and .pyc files
            run_measured(command, env=env, cwd=work, ok_codes=ok)
        labels = list(commands)
        for _ in range(args.rounds):
            random.shuffle(labels)
            for label in labels:
                command, ok = commands[label]
                samples[label].values.append(
                    run_measured(command, env=env, cwd=work, ok_codes=ok).seconds)

    print(f"P1 start-up — {machine()}")
    print(f"{args.rounds} interleaved rounds\n")
    print(header())
    for s in samples.values():
        print(s.row())
    floor = samples["python -c pass (floor)"].median
    ref = samples["reference Typer app --help"].median
    ours = samples["imagen4ctl --help"].median
    ratio = ours / ref
    print()
    print(f"imagen4ctl --help / reference --help: {ratio:.2f}x (target <= {TARGET}x): "
          f"{verdict(ratio <= TARGET)}")
    print(f"above the interpreter floor: imagen4ctl {1000 * (ours - floor):.1f} ms, "
          f"reference {1000 * (ref - floor):.1f} ms "
          f"({(ours - floor) / max(ref - floor, 1e-9):.2f}x)")
    check = samples["imagen4ctl check-config --offline"].median
    print(f"check-config --offline / reference --help: {check / ref:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
