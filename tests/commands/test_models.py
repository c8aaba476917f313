"""`models`: the registry of fal endpoints, as a table and as JSON."""

from __future__ import annotations

from collections.abc import Callable

from imagen4ctl.endpoints import ENDPOINTS
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
IDS = ["fal-ai/imagen4/preview", "fal-ai/imagen4/preview/fast", "fal-ai/imagen4/preview/ultra"]


def test_models_lists_the_three_endpoints(cli: Cli) -> None:
    result = cli("models", env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = {line.split()[1]: line for line in lines if line.startswith("│ fal-ai/")}
    assert list(rows) == IDS
    assert "1:1 16:9 9:16 4:3 3:4" in rows[IDS[0]] and "1 to 4" in rows[IDS[0]]
    assert "1K 2K" in rows[IDS[0]] and "1K 2K" in rows[IDS[2]]
    assert "│ -" in rows[IDS[1]]  # /fast takes no resolution
    assert '  output_format: jpeg, png, webp (fal\'s default "png")' in lines
    assert '  safety_tolerance: 1, 2, 3, 4, 5, 6 (fal\'s default "4")' in lines
    assert result.stderr == ""


def test_models_json_has_the_same_fields(cli: Cli) -> None:
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, list)
    assert [entry["endpoint"] for entry in data] == IDS == list(ENDPOINTS)
    for entry in data:
        assert set(entry) == {"endpoint", "title", "aspect_ratios", "images_per_request",
                              "resolutions", "other_options", "sources"}
        assert entry["aspect_ratios"] == ["1:1", "16:9", "9:16", "4:3", "3:4"]
        assert entry["images_per_request"] == {"min": 1, "max": 4, "default": 1}
        assert "negative_prompt" not in entry["other_options"]
        assert entry["sources"][1] == f"https://fal.ai/models/{entry['endpoint']}/api"
    assert [entry["resolutions"] for entry in data] == [["1K", "2K"], [], ["1K", "2K"]]


def test_models_needs_no_settings(cli: Cli) -> None:
    """A bad setting elsewhere does not hide the registry."""
    result = cli("models", "--json", env={"IMAGEN4_MODEL": "nope", "STUCK_AFTER": "soon"})
    assert result.exit_code == 0, result.output


def test_models_is_in_the_help_after_generate(cli: Cli) -> None:
    result = cli("--help", env={"COLUMNS": "120"})
    names = [line.split()[1] for line in result.stdout.splitlines()
             if line.startswith("│ ") and len(line.split()) > 1]
    assert names.index("models") == names.index("generate") + 1
    assert cli("models", "--help").exit_code == 0
