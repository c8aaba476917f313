"""The endpoint registry: what each Imagen 4 endpoint accepts, the exact refusals a user reads,
and the input sent to fal for a spec."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagen4ctl.emulator import model as emulated
from imagen4ctl.endpoints import DEFAULT_ENDPOINT, ENDPOINTS, IMAGEN4_PREVIEW, Endpoint
from imagen4ctl.errors import UsageError
from imagen4ctl.services.generation import GenerationSpec
from imagen4ctl.settings import VARIABLES

RATIOS = ["1:1", "16:9", "9:16", "3:4", "4:3"]


def refusal(**values: object) -> str:
    """The message of the UsageError the default endpoint raises for `values`."""
    values = {"prompt": "a lighthouse", "aspect_ratio": "1:1", "num_images": 1, **values}
    with pytest.raises(UsageError) as caught:
        IMAGEN4_PREVIEW.check(**values)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
    return caught.value.message


def test_the_registry_is_keyed_by_endpoint_id() -> None:
    assert list(ENDPOINTS) == ["fal-ai/imagen4/preview"]
    assert all(key == endpoint.id for key, endpoint in ENDPOINTS.items())
    assert ENDPOINTS[DEFAULT_ENDPOINT] is IMAGEN4_PREVIEW


def test_the_default_endpoint_is_imagen4_models_default() -> None:
    [variable] = [v for v in VARIABLES if v.name == "IMAGEN4_MODEL"]
    assert variable.default == DEFAULT_ENDPOINT


def test_an_endpoint_is_frozen() -> None:
    with pytest.raises(AttributeError):
        IMAGEN4_PREVIEW.max_images = 8  # type: ignore[misc]


def test_it_agrees_with_the_emulated_app() -> None:
    """The emulator checks fal's schema its own way today: both must refuse the same values."""
    assert IMAGEN4_PREVIEW.aspect_ratios == emulated.ASPECT_RATIOS
    assert IMAGEN4_PREVIEW.resolutions == emulated.RESOLUTIONS
    assert IMAGEN4_PREVIEW.max_images == emulated.MAX_IMAGES
    defaults = emulated.Imagen4Input(prompt="p")
    assert IMAGEN4_PREVIEW.default_aspect_ratio == defaults.aspect_ratio
    assert IMAGEN4_PREVIEW.default_num_images == defaults.num_images
    assert IMAGEN4_PREVIEW.default_resolution == defaults.resolution


@pytest.mark.parametrize("ratio", RATIOS)
def test_every_aspect_ratio_of_imagen4_is_accepted(ratio: str) -> None:
    IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio=ratio, num_images=1)


@pytest.mark.parametrize("ratio", ["2:1", "1:1 ", "16/9", "", "21:9"])
def test_other_aspect_ratios_are_refused(ratio: str) -> None:
    assert refusal(aspect_ratio=ratio) == (
        f"aspect ratio {ratio!r} is not one of 1:1, 16:9, 9:16, 3:4, 4:3")


@given(st.text(max_size=8).filter(lambda r: r not in RATIOS))
def test_any_other_aspect_ratio_is_refused(ratio: str) -> None:
    with pytest.raises(UsageError, match="^aspect ratio "):
        IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio=ratio, num_images=1)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_one_to_four_images(count: int) -> None:
    IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio="1:1", num_images=count)


@pytest.mark.parametrize("count", [0, 5, -1, 100])
def test_more_than_four_images_or_none_is_refused(count: int) -> None:
    assert refusal(num_images=count) == f"--num-images must be 1 to 4, not {count}"


def test_resolutions() -> None:
    for resolution in ("1K", "2K", None):
        IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio="1:1", num_images=1,
                              resolution=resolution)
    assert refusal(resolution="4K") == "resolution '4K' is not one of 1K, 2K"
    assert refusal(resolution="1k") == "resolution '1k' is not one of 1K, 2K"


def test_seeds_are_32_bit_unsigned() -> None:
    for seed in (0, 7, 2**32 - 1, None):
        IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio="1:1", num_images=1, seed=seed)
    for seed in (-1, 2**32):
        assert refusal(seed=seed) == "seed must be between 0 and 4294967295"


def test_prompts() -> None:
    IMAGEN4_PREVIEW.check(prompt="x" * 4000, aspect_ratio="1:1", num_images=1)
    assert refusal(prompt=" \n\t") == "the prompt is empty"
    assert refusal(prompt="a\x00b") == "the prompt contains a NUL character"
    assert refusal(prompt="x" * 4001) == "the prompt has 4,001 characters; the limit is 4,000"


def test_negative_prompts() -> None:
    IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio="1:1", num_images=1,
                          negative_prompt="x" * 4000)
    assert refusal(negative_prompt="") == "the negative prompt is empty"
    assert refusal(negative_prompt="\x00") == "the negative prompt contains a NUL character"
    assert refusal(negative_prompt="x" * 5000) == (
        "the negative prompt has 5,000 characters; the limit is 4,000")


def test_the_first_bad_value_is_the_one_reported() -> None:
    """Prompt, aspect ratio, number, resolution, seed, negative prompt: in that order."""
    assert refusal(prompt="", aspect_ratio="2:1") == "the prompt is empty"
    assert refusal(aspect_ratio="2:1", num_images=9).startswith("aspect ratio")
    assert refusal(num_images=9, resolution="4K").startswith("--num-images")
    assert refusal(resolution="4K", seed=-1).startswith("resolution")
    assert refusal(seed=-1, negative_prompt="").startswith("seed")


def test_the_arguments_of_a_minimal_spec() -> None:
    arguments = GenerationSpec(user_id="42", prompt="a lighthouse").arguments()
    assert json.dumps(arguments) == (
        '{"prompt": "a lighthouse", "aspect_ratio": "1:1", "num_images": 1}')


def test_the_arguments_of_a_full_spec_in_the_order_they_are_sent() -> None:
    spec = GenerationSpec(user_id="42", prompt="a harbour", aspect_ratio="16:9", num_images=3,
                          seed=0, negative_prompt="fog", resolution="2K")
    assert list(spec.arguments().items()) == [
        ("prompt", "a harbour"), ("aspect_ratio", "16:9"), ("num_images", 3), ("seed", 0),
        ("negative_prompt", "fog"), ("resolution", "2K")]


def test_unset_optional_fields_are_not_sent() -> None:
    spec = GenerationSpec(user_id="42", prompt="p", negative_prompt="blur")
    assert spec.arguments() == {"prompt": "p", "aspect_ratio": "1:1", "num_images": 1,
                                "negative_prompt": "blur"}


def test_the_arguments_sent_pass_the_emulated_apps_check() -> None:
    spec = GenerationSpec(user_id="42", prompt="a harbour", aspect_ratio="3:4", num_images=4,
                          seed=2**32 - 1, negative_prompt="fog", resolution="2K")
    parsed, errors = emulated.validate(spec.arguments())
    assert errors == []
    assert parsed is not None and (parsed.aspect_ratio, parsed.num_images) == ("3:4", 4)


def test_a_spec_is_held_to_its_endpoints_rules() -> None:
    assert GenerationSpec(user_id="42", prompt="p").endpoint is IMAGEN4_PREVIEW
    with pytest.raises(UsageError, match=r"^aspect ratio '2:1' is not one of "):
        GenerationSpec(user_id="42", prompt="p", aspect_ratio="2:1")
    with pytest.raises(UsageError, match=r"^--num-images must be 1 to 4, not 5$"):
        GenerationSpec(user_id="42", prompt="p", num_images=5)


def test_a_second_endpoint_brings_its_own_rules() -> None:
    """What `ENDPOINTS` is for: an endpoint with other limits refuses by its own."""
    fast = Endpoint(**{**IMAGEN4_PREVIEW.__dict__, "id": "fal-ai/imagen4/preview/fast",
                       "max_images": 2, "resolutions": ("1K",)})
    fast.check(prompt="p", aspect_ratio="1:1", num_images=2)
    with pytest.raises(UsageError, match=r"^--num-images must be 1 to 2, not 3$"):
        fast.check(prompt="p", aspect_ratio="1:1", num_images=3)
    with pytest.raises(UsageError, match=r"^resolution '2K' is not one of 1K$"):
        fast.check(prompt="p", aspect_ratio="1:1", num_images=1, resolution="2K")


def test_the_module_imports_the_standard_library_alone() -> None:
    """The emulator is to share it: nothing third-party may come with it (measured against a
    bare interpreter, whose site packages may load some of their own)."""
    probe = ("import sys; before = set(sys.modules); import imagen4ctl.endpoints; "
             "print('\\n'.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    assert "imagen4ctl.endpoints" in loaded
    foreign = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] != "imagen4ctl"]
    assert foreign == []
