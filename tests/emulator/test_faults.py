"""Every fault knob, seen through the real fal_client (and httpx for the image downloads); the
fault grammar on its own."""

from __future__ import annotations

import io
import json
import time

import fal_client
import httpx
import pytest
from fal_client.client import FalClientHTTPError
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, UnidentifiedImageError

from imagen4ctl.emulator import FalEmulator, FaultSpecError, parse_faults
from imagen4ctl.emulator.faults import Fault, faults_in_prompt
from imagen4ctl.emulator.images import PNG_SIGNATURE
from tests.emulator._helpers import MODEL, download, png_size


@pytest.fixture(autouse=True)
def quick(fal_emulator: FalEmulator) -> None:
    """Faults do not need the session's latency; tests that do set their own."""
    fal_emulator.latency = 0.05


def _statuses(emulator: FalEmulator, request_id: str, kind: str) -> list[int | None]:
    return [e.status for e in emulator.log.for_request(request_id) if e.kind == kind]


def test_a_429_storm_at_submit_is_ridden_out_by_fal_client_retries(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    prompt = "a storm at sea [fault:submit=429x3]"
    result = fal_sync_client.submit(MODEL, {"prompt": prompt}).get(interval=0.02)

    assert result["images"]
    attempts = fal_emulator.log.submissions(prompt_contains="a storm at sea")
    assert [entry.status for entry in attempts] == [429, 429, 429, 200]
    assert attempts[-1].prompt == prompt, "the stored prompt keeps its directive"


def test_an_app_error_at_submit_is_not_retried(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    with pytest.raises(FalClientHTTPError) as raised:
        fal_sync_client.submit(MODEL, {"prompt": "boom [fault:submit=500]"})
    assert raised.value.status_code == 500
    assert "x-fal-request-id" in raised.value.response_headers
    assert fal_emulator.log.submission_count(prompt_contains="boom") == 1


def test_ingress_errors_are_retried_but_app_errors_of_the_same_code_are_not(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "gateway [fault:status=ingress503x2]"})
    assert handle.get(interval=0.02)["images"]
    assert _statuses(fal_emulator, handle.request_id, "status")[:3] in ([503, 503, 200],
                                                                      [503, 503, 202])

    handle = fal_sync_client.submit(MODEL, {"prompt": "app [fault:result=503]"})
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get(interval=0.02)
    assert raised.value.status_code == 503
    assert _statuses(fal_emulator, handle.request_id, "result") == [503]


def test_an_ingress_error_looks_like_nginx(fal_sync_client: fal_client.SyncClient) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "x [fault:result=ingress502]"})
    while not isinstance(handle.status(), fal_client.Completed):
        time.sleep(0.02)
    response = httpx.get(handle.response_url, headers={"Authorization": "Key k"})
    assert response.status_code == 502
    assert "nginx" in response.text
    assert "x-fal-request-id" not in response.headers


def test_completed_with_error_reports_it_in_status_and_result(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "x [fault:run=error:request_timeout]"})
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get(interval=0.02)

    assert raised.value.status_code == 504
    assert raised.value.error_type == "request_timeout"
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed)
    assert (status.error, status.error_type) == ("Request timed out", "request_timeout")


def test_a_run_can_succeed_without_images(fal_sync_client: fal_client.SyncClient) -> None:
    result = fal_sync_client.submit(MODEL, {"prompt": "x [fault:run=noimages]"}).get(
        interval=0.02)
    assert result == {"images": [], "description": ""}


def test_faults_also_come_from_the_submit_header(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "plain [fault:run=error]"},
                                    headers={"X-Emulator-Fault": "run=noimages"})
    assert handle.get(interval=0.02)["images"] == [], "the header wins over the prompt"


def test_image_url_404_and_not_an_image(fal_sync_client: fal_client.SyncClient) -> None:
    gone = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=404x1]"}).get(interval=0.02)
    url = gone["images"][0]["url"]
    assert download(url).status_code == 404
    assert download(url).status_code == 200, "x1: only the first download fails"

    fake = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=notimage]"}).get(
        interval=0.02)
    response = download(fake["images"][0]["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert len(response.content) == fake["images"][0]["file_size"]
    assert not response.content.startswith(PNG_SIGNATURE)
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize("point", ["submit", "status", "result"])
def test_malformed_json_reaches_the_caller(
    fal_sync_client: fal_client.SyncClient, point: str
) -> None:
    prompt = f"x [fault:{point}=malformed]"
    with pytest.raises(json.JSONDecodeError):
        fal_sync_client.submit(MODEL, {"prompt": prompt}).get(interval=0.02)


@pytest.mark.parametrize("point", ["submit", "status", "result"])
def test_dropped_connections_are_retried_by_fal_client(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient, point: str
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": f"drop {point} [fault:{point}=dropx2]"})
    assert handle.get(interval=0.02)["images"]

    entries = [e for e in fal_emulator.log.entries(point)  # type: ignore[arg-type]
               if point != "submit" or "drop" in (e.prompt or "")]
    statuses = [e.status for e in entries]
    assert statuses[:2] == [None, None]
    assert statuses[2] in (200, 202)


def test_a_dropped_file_download_is_a_transport_error(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    result = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=drop]"}).get(interval=0.02)
    with pytest.raises(httpx.TransportError):
        download(result["images"][0]["url"])


def test_a_slow_download_trickles_the_real_image(fal_sync_client: fal_client.SyncClient) -> None:
    result = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=slow:0.5]"}).get(
        interval=0.02)
    started = time.monotonic()
    response = download(result["images"][0]["url"])
    assert time.monotonic() - started >= 0.45
    assert png_size(response.content) == (1024, 1024)


def test_a_very_large_image_is_streamed_with_a_valid_header(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    size = 20 * 1024 * 1024
    result = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=large:20MiB]"}).get(
        interval=0.02)
    assert result["images"][0]["file_size"] == size
    with httpx.stream("GET", result["images"][0]["url"]) as response:
        assert int(response.headers["content-length"]) == size
        pieces = response.iter_bytes()
        first = next(pieces)
        assert first.startswith(PNG_SIGNATURE)
        total = len(first) + sum(len(piece) for piece in pieces)
    assert total == size


def test_a_hanging_request_stays_in_progress_until_cancelled(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "x [fault:run=hang]"})
    time.sleep(0.2)  # four times the latency
    assert isinstance(handle.status(), fal_client.InProgress)
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error == "Request was cancelled"


def test_one_request_can_have_its_own_latency(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    slow = fal_sync_client.submit(MODEL, {"prompt": "x [fault:latency=0.6]"})
    fast = fal_sync_client.submit(MODEL, {"prompt": "y"})
    fast.get(interval=0.02)
    assert fal_emulator.state(slow.request_id) != "COMPLETED"
    started = time.monotonic()
    slow.get(interval=0.02)
    assert time.monotonic() - started > 0.2


def test_run_wide_faults_apply_to_every_request_and_count_per_request(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.faults = "status=429x2"
    handles = [fal_sync_client.submit(MODEL, {"prompt": f"p{i}"}) for i in range(2)]
    for handle in handles:
        assert handle.get(interval=0.02)["images"]
        assert _statuses(fal_emulator, handle.request_id, "status")[:2] == [429, 429]

    fal_emulator.faults = "submit=503"
    with pytest.raises(FalClientHTTPError):
        fal_sync_client.submit(MODEL, {"prompt": "refused"})
    fal_emulator.faults = None
    assert fal_sync_client.submit(MODEL, {"prompt": "fine"}).request_id


def test_a_cancel_fault_and_a_bad_directive(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 5.0
    handle = fal_sync_client.submit(MODEL, {"prompt": "x [fault:cancel=500]"})
    with pytest.raises(FalClientHTTPError) as raised:
        handle.cancel()
    assert raised.value.status_code == 500
    assert fal_emulator.state(handle.request_id) == "IN_QUEUE"

    with pytest.raises(FalClientHTTPError) as bad:
        fal_sync_client.submit(MODEL, {"prompt": "x [fault:submit=teapot]"})
    assert bad.value.status_code == 400
    assert "submit=teapot" in bad.value.message


# --- the fault grammar ---


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("submit=429x3", Fault("submit", "http", code=429, times=3)),
        ("status = ingress503", Fault("status", "ingress", code=503)),
        ("result=malformed", Fault("result", "malformed")),
        ("file=dropx1", Fault("file", "drop", times=1)),
        ("file=notimage", Fault("file", "notimage")),
        ("file=slow:2.5", Fault("file", "slow", seconds=2.5)),
        ("file=large:60MB", Fault("file", "large", size=60_000_000)),
        ("run=error", Fault("run", "error", error_type="runner_disconnected")),
        ("run=error:request_timeout", Fault("run", "error", error_type="request_timeout")),
        ("run=hang", Fault("run", "hang")),
        ("latency=4", Fault("latency", "latency", seconds=4.0)),
        ("stream=refuse", Fault("stream", "refuse")),
        ("stream=cutx1", Fault("stream", "cut", times=1)),
        ("stream=503", Fault("stream", "http", code=503)),
    ],
)
def test_fault_grammar(spec: str, fault: Fault) -> None:
    plan = parse_faults(spec)
    assert plan.faults == (fault,)
    assert parse_faults(plan.describe()) == plan


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("submit", "expected POINT=ACTION"),
        ("queue=500", "unknown point 'queue'"),
        ("submit=200", "code of 400 or more"),
        ("file=malformed", "unknown action"),
        ("status=cut", "unknown action"),
        ("run=hangx2", "only HTTP points take a count"),
        ("latency=soon", "not a number of seconds"),
        ("file=large:lots", "not a size"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(spec)


@given(st.text(max_size=40))
def test_any_text_either_parses_or_raises_fault_spec_error(text: str) -> None:
    try:
        parse_faults(text)
    except FaultSpecError:
        pass


def test_prompt_directives_merge_point_by_point() -> None:
    plan = faults_in_prompt("a cat [fault:submit=500,file=404] on a mat [FAULT:submit=429x2]")
    assert plan.describe() == "file=404,submit=429x2"
    assert not faults_in_prompt("a cat on a mat")
