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
from imagen4ctl.endpoints import (
    DEFAULT_ENDPOINT,
    ENDPOINTS,
    FAL_JS_TYPES,
    IMAGEN4_FAST,
    IMAGEN4_PREVIEW,
    IMAGEN4_ULTRA,
    Endpoint,
    catalogue,
    closest,
    endpoint_named,
    option_help,
)
from imagen4ctl.errors import UsageError
from imagen4ctl.services.generation import GenerationSpec
from imagen4ctl.settings import VARIABLES

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4"]  # fal's order
FIELDS = ["prompt", "aspect_ratio", "num_images", "seed", "resolution", "output_format",
          "safety_tolerance", "sync_mode"]


def refusal(**values: object) -> str:
    """The message of the UsageError the default endpoint raises for `values`."""
    values = {"prompt": "a lighthouse", "aspect_ratio": "1:1", "num_images": 1, **values}
    with pytest.raises(UsageError) as caught:
        IMAGEN4_PREVIEW.check(**values)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
    return caught.value.message


def test_the_registry_is_keyed_by_endpoint_id() -> None:
    assert list(ENDPOINTS) == ["fal-ai/imagen4/preview", "fal-ai/imagen4/preview/fast",
                               "fal-ai/imagen4/preview/ultra"]
    assert all(key == endpoint.id for key, endpoint in ENDPOINTS.items())
    assert ENDPOINTS[DEFAULT_ENDPOINT] is IMAGEN4_PREVIEW


def test_the_fields_of_each_endpoint_are_fal_js_of_2026_04_07() -> None:
    """fal-js 9830f25: no negative_prompt anywhere, no resolution on /fast, ultra = preview."""
    assert [f.name for f in IMAGEN4_PREVIEW.fields] == FIELDS
    assert [f.name for f in IMAGEN4_FAST.fields] == [f for f in FIELDS if f != "resolution"]
    assert IMAGEN4_ULTRA.fields == IMAGEN4_PREVIEW.fields
    for endpoint in ENDPOINTS.values():
        assert not endpoint.takes("negative_prompt")
        assert list(endpoint.aspect_ratios) == RATIOS
        assert (endpoint.default_aspect_ratio, endpoint.default_num_images) == ("1:1", 1)
        assert endpoint.sources[0].startswith(FAL_JS_TYPES + "#L")
        assert endpoint.sources[1] == f"https://fal.ai/models/{endpoint.id}/api"
        tolerance = endpoint.field("safety_tolerance")
        assert tolerance is not None and tolerance.kind == "string"
        assert (tolerance.choices, tolerance.default) == (("1", "2", "3", "4", "5", "6"), "4")
        output_format = endpoint.field("output_format")
        assert output_format is not None
        assert (output_format.choices, output_format.default) == (("jpeg", "png", "webp"), "png")
    assert IMAGEN4_FAST.resolutions == () and IMAGEN4_FAST.default_resolution is None
    assert IMAGEN4_ULTRA.resolutions == ("1K", "2K") and IMAGEN4_ULTRA.default_resolution == "1K"


def test_the_default_endpoint_is_imagen4_models_default() -> None:
    [variable] = [v for v in VARIABLES if v.name == "IMAGEN4_MODEL"]
    assert variable.default == DEFAULT_ENDPOINT


def test_an_endpoint_is_frozen() -> None:
    with pytest.raises(AttributeError):
        IMAGEN4_PREVIEW.id = "x"  # type: ignore[misc]


def test_it_agrees_with_the_emulated_app() -> None:
    """The emulator checks the same registry: its defaults are fal's, as the registry's."""
    defaults = emulated.Imagen4Input(prompt="p")
    for endpoint in ENDPOINTS.values():
        parsed, errors = emulated.validate({"prompt": "p"}, endpoint)
        assert errors == [] and parsed is not None
        assert parsed.aspect_ratio == endpoint.default_aspect_ratio == defaults.aspect_ratio
        assert parsed.num_images == endpoint.default_num_images == defaults.num_images
        assert parsed.resolution == (endpoint.default_resolution or "1K")


@pytest.mark.parametrize("ratio", RATIOS)
def test_every_aspect_ratio_of_imagen4_is_accepted(ratio: str) -> None:
    IMAGEN4_PREVIEW.check(prompt="p", aspect_ratio=ratio, num_images=1)


@pytest.mark.parametrize("ratio", ["2:1", "1:1 ", "16/9", "", "21:9"])
def test_other_aspect_ratios_are_refused(ratio: str) -> None:
    assert refusal(aspect_ratio=ratio) == (
        f"aspect ratio {ratio!r} is not one of 1:1, 16:9, 9:16, 4:3, 3:4")


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


def test_a_negative_prompt_is_taken_by_no_endpoint_now() -> None:
    """fal-js dropped `negative_prompt` on 2025-12-15: refused, never sent and ignored."""
    for endpoint in ENDPOINTS.values():
        with pytest.raises(UsageError) as caught:
            endpoint.check(prompt="p", aspect_ratio="1:1", num_images=1, negative_prompt="fog")
        assert caught.value.message == f"{endpoint.id} does not take --negative-prompt"
        assert caught.value.hint == ("No current Imagen 4 endpoint at fal takes it; "
                                     "`imagen4ctl models` lists what each endpoint takes.")
        assert caught.value.exit_code == 2


def test_fast_takes_no_resolution_and_names_the_endpoints_that_do() -> None:
    with pytest.raises(UsageError) as caught:
        IMAGEN4_FAST.check(prompt="p", aspect_ratio="1:1", num_images=1, resolution="2K")
    assert caught.value.message == "fal-ai/imagen4/preview/fast does not take --resolution"
    assert caught.value.hint == (
        "fal-ai/imagen4/preview and fal-ai/imagen4/preview/ultra take it; "
        "`imagen4ctl models` lists what each endpoint takes.")
    IMAGEN4_FAST.check(prompt="p", aspect_ratio="16:9", num_images=4, seed=3)
    IMAGEN4_ULTRA.check(prompt="p", aspect_ratio="1:1", num_images=1, resolution="2K")


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
                          seed=0, resolution="2K")
    assert list(spec.arguments().items()) == [
        ("prompt", "a harbour"), ("aspect_ratio", "16:9"), ("num_images", 3), ("seed", 0),
        ("resolution", "2K")]


def test_unset_optional_fields_are_not_sent() -> None:
    spec = GenerationSpec(user_id="42", prompt="p", seed=9)
    assert spec.arguments() == {"prompt": "p", "aspect_ratio": "1:1", "num_images": 1,
                                "seed": 9}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS.values()), ids=list(ENDPOINTS))
def test_the_arguments_sent_pass_the_emulated_apps_check(endpoint: Endpoint) -> None:
    resolution = "2K" if endpoint.takes("resolution") else None
    spec = GenerationSpec(user_id="42", prompt="a harbour", aspect_ratio="3:4", num_images=4,
                          seed=2**32 - 1, resolution=resolution, model=endpoint.id)
    parsed, errors = emulated.validate(spec.arguments(), endpoint)
    assert errors == []
    assert parsed is not None and (parsed.aspect_ratio, parsed.num_images) == ("3:4", 4)


def test_a_spec_is_held_to_its_endpoints_rules() -> None:
    assert GenerationSpec(user_id="42", prompt="p").endpoint is IMAGEN4_PREVIEW
    assert GenerationSpec(user_id="42", prompt="p", model=IMAGEN4_FAST.id).endpoint \
        is IMAGEN4_FAST
    with pytest.raises(UsageError, match=r"^aspect ratio '2:1' is not one of "):
        GenerationSpec(user_id="42", prompt="p", aspect_ratio="2:1")
    with pytest.raises(UsageError, match=r"^--num-images must be 1 to 4, not 5$"):
        GenerationSpec(user_id="42", prompt="p", num_images=5)
    with pytest.raises(UsageError, match=r"^fal-ai/imagen4/preview/fast does not take "):
        GenerationSpec(user_id="42", prompt="p", resolution="1K", model=IMAGEN4_FAST.id)


def test_an_unknown_endpoint_is_a_usage_error_with_the_closest_id() -> None:
    with pytest.raises(UsageError) as caught:
        endpoint_named("fal-ai/imagen4/preview/fsat", "IMAGEN4_MODEL")
    assert caught.value.message == (
        "IMAGEN4_MODEL 'fal-ai/imagen4/preview/fsat' is not an Imagen 4 endpoint imagen4ctl "
        "knows (fal-ai/imagen4/preview, fal-ai/imagen4/preview/fast, "
        "fal-ai/imagen4/preview/ultra)")
    assert caught.value.hint == ("Did you mean fal-ai/imagen4/preview/fast? "
                                 "`imagen4ctl models` lists what each endpoint takes.")
    assert closest("fal-ai/imagen4/preview/ultar") == "fal-ai/imagen4/preview/ultra"
    assert closest("fal-ai/imagen4") == "fal-ai/imagen4/preview"
    assert closest("black-forest-labs/flux") is None
    with pytest.raises(UsageError, match=r"^--model 'x' is not an Imagen 4 endpoint"):
        GenerationSpec(user_id="42", prompt="p", model="x")


def test_help_texts_come_from_the_registry() -> None:
    assert option_help("aspect_ratio") == "1:1, 16:9, 9:16, 4:3 or 3:4."
    assert option_help("num_images") == "1 to 4."
    assert option_help("resolution") == "1K or 2K. Not taken by fal-ai/imagen4/preview/fast."
    assert option_help("negative_prompt").startswith("Taken by no current Imagen 4 endpoint")


def test_the_catalogue_is_json_ready() -> None:
    entries = catalogue()
    assert json.loads(json.dumps(entries)) == entries
    fast = entries[1]
    assert fast["endpoint"] == "fal-ai/imagen4/preview/fast" and fast["resolutions"] == []
    assert fast["images_per_request"] == {"min": 1, "max": 4, "default": 1}
    assert list(fast["other_options"]) == ["seed", "output_format", "safety_tolerance",
                                           "sync_mode"]
    assert fast["other_options"]["output_format"] == {
        "type": "string", "choices": ["jpeg", "png", "webp"], "default": "png"}


def test_an_endpoint_with_other_limits_refuses_by_its_own() -> None:
    """What `ENDPOINTS` is for: a limit is a field's, not a constant of the code."""
    from dataclasses import replace

    from imagen4ctl.endpoints import NUM_IMAGES, RESOLUTION

    narrow = replace(IMAGEN4_PREVIEW, id="example/narrow", fields=tuple(
        replace(NUM_IMAGES, maximum=2) if f.name == "num_images"
        else replace(RESOLUTION, choices=("1K",)) if f.name == "resolution" else f
        for f in IMAGEN4_PREVIEW.fields))
    narrow.check(prompt="p", aspect_ratio="1:1", num_images=2)
    with pytest.raises(UsageError, match=r"^--num-images must be 1 to 2, not 3$"):
        narrow.check(prompt="p", aspect_ratio="1:1", num_images=3)
    with pytest.raises(UsageError, match=r"^resolution '2K' is not one of 1K$"):
        narrow.check(prompt="p", aspect_ratio="1:1", num_images=1, resolution="2K")


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
