"""check-config's IMAGEN4_MODEL check: a `!` with the closest known endpoint id."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imagen4ctl.services.doctor import check_model
from imagen4ctl.settings import Settings
from tests.conftest import CliResult

Cli = Callable[..., CliResult]


@pytest.mark.parametrize("model", ["fal-ai/imagen4/preview", "fal-ai/imagen4/preview/fast",
                                   "fal-ai/imagen4/preview/ultra/"])
def test_a_known_model_adds_no_check(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEN4_MODEL", model)
    assert check_model(Settings.load(None)) is None


def test_a_typo_is_a_warning_with_the_closest_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEN4_MODEL", "fal-ai/imagen4/preview/ultar")
    check = check_model(Settings.load(None))
    assert check is not None
    assert (check.name, check.status) == ("fal_model", "warn")
    assert check.message == ("IMAGEN4_MODEL 'fal-ai/imagen4/preview/ultar' is not an Imagen 4 "
                             "endpoint imagen4ctl knows: did you mean "
                             "fal-ai/imagen4/preview/ultra?")
    monkeypatch.setenv("IMAGEN4_MODEL", "black-forest-labs/flux-pro")
    far = check_model(Settings.load(None))
    assert far is not None and far.message.endswith("imagen4ctl knows")


def test_check_config_shows_the_mark_and_the_guess(cli: Cli) -> None:
    result = cli("check-config", "--offline",
                 env={"IMAGEN4_MODEL": "fal-ai/imagen4/preview/fsat"})
    assert ("! fal_model: IMAGEN4_MODEL 'fal-ai/imagen4/preview/fsat' is not an Imagen 4 "
            "endpoint imagen4ctl knows: did you mean fal-ai/imagen4/preview/fast?"
            ) in result.stdout
    assert ("    hint: Set IMAGEN4_MODEL to one of fal-ai/imagen4/preview, "
            "fal-ai/imagen4/preview/fast, fal-ai/imagen4/preview/ultra; `imagen4ctl models` "
            "lists what each endpoint takes.") in result.stdout
    data = cli("check-config", "--offline", "--json",
               env={"IMAGEN4_MODEL": "fal-ai/imagen4/preview/fsat"}).json()
    assert isinstance(data, dict)
    [check] = [c for c in data["checks"] if c["name"] == "fal_model"]
    assert check["status"] == "warn"
