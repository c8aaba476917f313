"""The emulator serves the registry's three Imagen 4 endpoints as fal-js types them (as of
2026-04-07) and nothing else, through the real fal_client over TLS."""

from __future__ import annotations

import base64

import fal_client
import pytest
from fal_client.client import FalClientHTTPError

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.endpoints import ENDPOINTS
from tests.emulator._helpers import download, png_size


@pytest.fixture(autouse=True)
def quick(fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.05


@pytest.mark.parametrize(("path", "detail"), [
    ("fal-ai/imagen4/preview/fsat", "Path /preview/fsat not found"),
    ("fal-ai/imagen4/preview/ultra/", None),  # a trailing slash is the same endpoint
    ("fal-ai/imagen4", "Not Found"),
    ("fal-ai/flux/dev", "Not Found"),
])
def test_an_unknown_endpoint_is_a_404_at_submit(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient, path: str,
    detail: str | None,
) -> None:
    if detail is None:
        assert fal_sync_client.submit(path, {"prompt": "a cat"}).request_id
        return
    with pytest.raises(FalClientHTTPError) as raised:
        fal_sync_client.submit(path, {"prompt": "a cat"})
    assert raised.value.status_code == 404
    assert raised.value.response.json() == {"detail": detail}
    assert fal_emulator.request_ids() == []  # nothing queued, nothing to pay for
    assert [e.status for e in fal_emulator.log.entries("submit")] == [404]


@pytest.mark.parametrize(("endpoint", "arguments", "field"), [
    ("fal-ai/imagen4/preview/fast", {"resolution": "2K"}, "resolution"),
    ("fal-ai/imagen4/preview", {"negative_prompt": "fog"}, "negative_prompt"),
    ("fal-ai/imagen4/preview/ultra", {"negative_prompt": ""}, "negative_prompt"),
])
def test_a_field_the_endpoint_does_not_take_is_a_422(
    fal_sync_client: fal_client.SyncClient, endpoint: str, arguments: dict[str, object],
    field: str,
) -> None:
    handle = fal_sync_client.submit(endpoint, {"prompt": "a cat", **arguments})
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get(interval=0.02)
    assert raised.value.status_code == 422
    assert raised.value.response.json()["detail"] == [{
        "loc": ["body", field], "msg": "Extra inputs are not permitted",
        "type": "extra_forbidden", "input": arguments[field]}]


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("safety_tolerance", 4, "string_type"),  # a string "1".."6" at fal, not a number
    ("safety_tolerance", "7", "literal_error"),
    ("output_format", "gif", "literal_error"),
    ("sync_mode", "yes please", "bool_type"),
    ("aspect_ratio", "21:9", "literal_error"),
])
def test_the_2026_fields_are_checked(
    fal_sync_client: fal_client.SyncClient, field: str, value: object, kind: str,
) -> None:
    handle = fal_sync_client.submit("fal-ai/imagen4/preview/fast",
                                    {"prompt": "a cat", field: value})
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get(interval=0.02)
    [error] = raised.value.response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", field], kind)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_endpoint_answers_with_fals_current_output(
    fal_sync_client: fal_client.SyncClient, endpoint: str,
) -> None:
    """Images with width and height, a description, and no seed (fal-js `NanoBananaOutput`)."""
    result = fal_sync_client.submit(endpoint, {"prompt": "a fox", "aspect_ratio": "4:3",
                                               "num_images": 2, "seed": 5}).get(interval=0.02)
    assert set(result) == {"images", "description"}
    assert len(result["images"]) == 2
    for image in result["images"]:
        assert set(image) == {"url", "content_type", "file_name", "file_size", "width",
                              "height"}
        assert (image["width"], image["height"]) == (1280, 896)
        data = download(image["url"]).content
        assert png_size(data) == (1280, 896) and len(data) == image["file_size"]


def test_ultra_at_2k_and_other_formats(fal_sync_client: fal_client.SyncClient) -> None:
    result = fal_sync_client.submit("fal-ai/imagen4/preview/ultra", {
        "prompt": "a fox", "resolution": "2K", "output_format": "webp"}).get(interval=0.02)
    [image] = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (2048, 2048,
                                                                        "image/webp")
    assert image["url"].endswith(".webp")
    response = download(image["url"])
    assert response.headers["content-type"] == "image/webp"
    assert png_size(response.content) == (2048, 2048)  # Pillow reads WebP as well

    result = fal_sync_client.submit("fal-ai/imagen4/preview/fast", {
        "prompt": "a fox", "output_format": "jpeg", "sync_mode": True}).get(interval=0.02)
    [image] = result["images"]
    prefix = "data:image/jpeg;base64,"
    assert image["url"].startswith(prefix)
    assert png_size(base64.b64decode(image["url"][len(prefix):])) == (1024, 1024)
