"""The queue protocol, driven by the real fal_client against the emulator."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import fal_client
import httpx
import pytest
from fal_client.client import FalClientHTTPError

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import FORBIDDEN_MESSAGE
from tests.emulator._helpers import MODEL, auth, download, png_size, queue_url


@pytest.fixture(autouse=True)
def quick(fal_emulator: FalEmulator) -> None:
    """Most of the protocol does not need the session's latency; timing tests set their own."""
    fal_emulator.latency = 0.05


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("1:1", (1024, 1024)), ("3:4", (896, 1280)), ("4:3", (1280, 896)),
     ("9:16", (768, 1408)), ("16:9", (1408, 768))],
)
def test_every_aspect_ratio_round_trips_with_real_png_sizes(
    fal_sync_client: fal_client.SyncClient, ratio: str, size: tuple[int, int]
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": f"a lighthouse at {ratio}",
                                            "aspect_ratio": ratio})
    events = list(handle.iter_events(with_logs=True, interval=0.02))
    assert isinstance(events[-1], fal_client.Completed) and events[-1].logs
    result = handle.get(interval=0.02)

    assert set(result) == {"images", "description"}  # no seed in fal's output since 2025-12
    [image] = result["images"]
    assert set(image) == {"url", "content_type", "file_name", "file_size", "width", "height"}
    assert (image["width"], image["height"]) == size
    assert image["content_type"] == "image/png"
    response = download(image["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert len(response.content) == image["file_size"]
    assert png_size(response.content) == size


def test_2k_doubles_the_size_and_a_seed_gives_the_same_images(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    arguments = {"prompt": "two foxes", "aspect_ratio": "9:16", "resolution": "2K",
                 "num_images": 2, "seed": 42}
    first = fal_sync_client.submit(MODEL, arguments).get(interval=0.02)
    second = fal_sync_client.submit(MODEL, arguments).get(interval=0.02)

    assert "seed" not in first
    first_bytes = [download(image["url"]).content for image in first["images"]]
    second_bytes = [download(image["url"]).content for image in second["images"]]
    assert [png_size(data) for data in first_bytes] == [(1536, 2816), (1536, 2816)]
    assert first_bytes == second_bytes
    assert first_bytes[0] != first_bytes[1]


def test_status_goes_from_queue_position_to_progress_logs_to_completed(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 1.0
    handle = fal_sync_client.submit(MODEL, {"prompt": "a slow river"})
    events = list(handle.iter_events(with_logs=True, interval=0.02))

    phases = [name for name, _ in groupby(type(event).__name__ for event in events)]
    assert phases == ["Queued", "InProgress", "Completed"]
    positions = [event.position for event in events if isinstance(event, fal_client.Queued)]
    assert positions == sorted(positions, reverse=True)
    assert positions[0] > positions[-1] == 0
    progress_logs = [len(event.logs or []) for event in events
                     if isinstance(event, fal_client.InProgress)]
    assert progress_logs == sorted(progress_logs) and progress_logs[-1] > progress_logs[0]
    completed = events[-1]
    assert isinstance(completed, fal_client.Completed)
    assert completed.error is None
    assert completed.metrics["inference_time"] == pytest.approx(0.7, abs=0.01)
    assert completed.logs is not None and len(completed.logs) == 4
    assert set(completed.logs[0]) == {"message", "level", "source", "timestamp"}


def test_submit_answers_with_request_urls_without_the_sub_path(
    fal_emulator: FalEmulator,
) -> None:
    fal_emulator.latency = 5.0
    response = httpx.post(queue_url(MODEL), json={"prompt": "a map"}, headers=auth("k"))

    assert response.status_code == 200
    body = response.json()
    request_id = body["request_id"]
    assert response.headers["x-fal-request-id"] == request_id
    base = queue_url(f"fal-ai/imagen4/requests/{request_id}")
    assert body == {"status": "IN_QUEUE", "request_id": request_id, "response_url": base,
                    "status_url": f"{base}/status", "cancel_url": f"{base}/cancel",
                    "queue_position": fal_emulator.queue_depth}
    status = httpx.get(body["status_url"], headers=auth("k"))
    assert status.status_code == 202
    assert status.json()["status"] == "IN_QUEUE"


def test_result_before_completion_is_400_and_unknown_ids_are_404(
    fal_emulator: FalEmulator,
) -> None:
    fal_emulator.latency = 5.0
    body = httpx.post(queue_url(MODEL), json={"prompt": "x"}, headers=auth("k")).json()

    early = httpx.get(body["response_url"], headers=auth("k"))
    assert early.status_code == 400
    assert early.json() == {"detail": "Request is still in progress"}
    unknown = httpx.get(queue_url("fal-ai/imagen4/requests/no-such-id"), headers=auth("k"))
    assert unknown.status_code == 404
    other_app = httpx.get(queue_url(f"fal-ai/flux/requests/{body['request_id']}"),
                          headers=auth("k"))
    assert other_app.status_code == 404


def test_unknown_key_is_401_and_forbidden_key_is_403(fal_emulator: FalEmulator) -> None:
    fal_emulator.accepted_keys = {"good-key"}
    fal_emulator.forbidden_keys = {"forbidden-key"}

    with pytest.raises(FalClientHTTPError) as unknown:
        fal_client.SyncClient(key="wrong-key").submit(MODEL, {"prompt": "x"})
    assert unknown.value.status_code == 401
    assert unknown.value.message == "No user found for Key ID and Secret"
    with pytest.raises(FalClientHTTPError) as forbidden:
        fal_client.SyncClient(key="forbidden-key").submit(MODEL, {"prompt": "x"})
    assert forbidden.value.status_code == 403
    assert forbidden.value.message == FORBIDDEN_MESSAGE  # a locked account: test_account.py
    assert fal_client.SyncClient(key="good-key").submit(MODEL, {"prompt": "x"}).request_id
    assert httpx.post(queue_url(MODEL), json={"prompt": "x"}).status_code == 401
    assert [entry.status for entry in fal_emulator.log.entries("submit")] == [401, 403, 200, 401]


@pytest.mark.parametrize(
    ("arguments", "field", "kind"),
    [
        ({"prompt": "x", "aspect_ratio": "2:1"}, "aspect_ratio", "literal_error"),
        ({"prompt": "x", "num_images": 5}, "num_images", "less_than_equal"),
        ({"aspect_ratio": "1:1"}, "prompt", "missing"),
        ({"prompt": ""}, "prompt", "string_too_short"),
    ],
)
def test_invalid_input_is_a_422_from_the_result_like_fal(
    fal_sync_client: fal_client.SyncClient, arguments: dict[str, object], field: str, kind: str
) -> None:
    handle = fal_sync_client.submit(MODEL, arguments)  # the queue accepts anything
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get(interval=0.02)

    assert raised.value.status_code == 422
    [error] = raised.value.response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == kind
    assert isinstance(error["msg"], str) and error["msg"]
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error is None


@pytest.mark.parametrize("prompt", ["never mind", "queued [fault:cancel=ignored]"],
                         ids=["plain", "cancel-ignored"])  # a queued request is removed anyway
def test_cancel_of_a_queued_request_ends_it_without_images(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient, prompt: str
) -> None:
    fal_emulator.latency = 5.0
    handle = fal_sync_client.submit(MODEL, {"prompt": prompt})
    handle.cancel()

    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed)
    assert (status.error, status.error_type) == ("Request was cancelled", "request_cancelled")
    with pytest.raises(FalClientHTTPError) as result:
        handle.get()
    assert result.value.status_code == 400
    with pytest.raises(FalClientHTTPError) as again:
        handle.cancel()
    assert again.value.status_code == 400
    assert again.value.response.json()["status"] == "ALREADY_COMPLETED"
    assert [e.status for e in fal_emulator.log.entries("cancel")] == [202, 400]


def test_cancel_after_completion_is_already_completed(
    fal_sync_client: fal_client.SyncClient,
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "done"})
    handle.get(interval=0.02)
    with pytest.raises(FalClientHTTPError) as raised:
        handle.cancel()
    assert raised.value.status_code == 400
    assert handle.get()["images"]


def test_results_expire_after_the_ttl_and_the_status_stays_completed(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.result_ttl = 0.2
    handle = fal_sync_client.submit(MODEL, {"prompt": "short-lived"})
    assert handle.get(interval=0.02)["images"]
    time.sleep(0.25)

    with pytest.raises(FalClientHTTPError) as raised:
        handle.get()
    assert raised.value.status_code == 404
    assert raised.value.message == "Request not found"
    assert isinstance(handle.status(), fal_client.Completed)


def test_large_results_expire_on_the_short_ttl(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.large_result_threshold = 100  # one image's JSON is ~250 bytes
    fal_emulator.large_result_ttl = 0.2
    handle = fal_sync_client.submit(MODEL, {"prompt": "big answer"})
    assert handle.get(interval=0.02)["images"]
    fal_emulator.large_result_threshold = 10_000
    time.sleep(0.25)
    assert handle.get()["images"], "below the threshold the hour-long TTL applies"
    fal_emulator.large_result_threshold = 100
    with pytest.raises(FalClientHTTPError) as raised:
        handle.get()
    assert raised.value.status_code == 404


def test_many_requests_run_side_by_side(fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.5
    client = fal_client.SyncClient(key="batch-key")
    count = 32

    def one(index: int) -> dict[str, object]:
        return client.submit(MODEL, {"prompt": f"batch {index}"}).get(interval=0.05)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.monotonic() - started

    assert all(result["images"] for result in results)
    assert wall < count * fal_emulator.latency / 4, f"{count} requests took {wall:.2f}s"
    assert fal_emulator.log.submission_count(prompt_contains="batch", key="batch-key") == count


def test_latency_and_queue_fraction_change_at_runtime(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 0.6
    fal_emulator.queue_fraction = 0.0
    handle = fal_sync_client.submit(MODEL, {"prompt": "no queue"})
    assert isinstance(handle.status(), fal_client.InProgress)
    started = time.monotonic()
    handle.get(interval=0.02)
    assert time.monotonic() - started > 0.3


def test_the_key_never_appears_in_the_log(fal_emulator: FalEmulator) -> None:
    key = "key-id-5b1e:secret-Qw3rTy-9f8e7d"
    client = fal_client.SyncClient(key=key)
    handle = client.submit(MODEL, {"prompt": "private"})
    result = handle.get(interval=0.02)
    download(result["images"][0]["url"], headers=auth(key))
    httpx.get(queue_url("fal-ai/imagen4/requests/nope/status"), headers=auth(key))

    entries = fal_emulator.log.entries()
    assert {entry.kind for entry in entries} >= {"submit", "status", "result", "file"}
    for entry in entries:
        for piece in (key, "secret-Qw3rTy", "5b1e:secret"):
            assert piece not in repr(entry)
    assert {e.key_fingerprint for e in entries} == {FalEmulator.fingerprint(key)}
    assert FalEmulator.fingerprint(key) != FalEmulator.fingerprint(key + "x")


def test_log_helpers_group_by_request_and_filter_submissions(
    fal_emulator: FalEmulator,
) -> None:
    one = fal_client.SyncClient(key="key-one")
    two = fal_client.SyncClient(key="key-two")
    first = one.submit(MODEL, {"prompt": "red apple"})
    two.submit(MODEL, {"prompt": "green apple"})
    first.get(interval=0.02)

    log = fal_emulator.log
    assert log.submission_count() == 2
    assert log.submission_count(prompt_contains="red") == 1
    assert [e.prompt for e in log.submissions(key="key-two")] == ["green apple"]
    kinds = [entry.kind for entry in log.requests_by_id()[first.request_id]]
    assert kinds[0] == "submit" and kinds[-1] == "result" and "status" in kinds
    assert fal_emulator.state(first.request_id) == "COMPLETED"
    fal_emulator.reset()
    assert len(log) == 0 and fal_emulator.state(first.request_id) is None


# --- the status stream (https://fal.ai/docs/inference-api/queue/status-stream) ---


@dataclass
class Streamed:
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: float = 0.0  # when the server closed it (monotonic)
    error: httpx.TransportError | None = None


def read_stream(status_url: str, key: str = "k", logs: bool = True) -> Streamed:
    """The stream's lines as they came: `data:` events (parsed) and comment lines."""
    streamed = Streamed()
    with httpx.stream("GET", status_url + "/stream", headers=auth(key), timeout=30,
                      params={"logs": "1" if logs else "0"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        try:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    streamed.events.append(json.loads(line[len("data: "):]))
                elif line.startswith(":"):
                    streamed.comments.append(line)
        except httpx.TransportError as e:
            streamed.error = e
    streamed.ended = time.monotonic()
    return streamed


def test_the_stream_sends_each_change_keeps_alive_and_ends_after_completed(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency, fal_emulator.keepalive = 0.8, 0.1
    handle = fal_sync_client.submit(MODEL, {"prompt": "streamed"})
    streamed = read_stream(handle.status_url)

    assert streamed.error is None
    states = [state for state, _ in groupby(e["status"] for e in streamed.events)]
    assert states == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert all(a != b for a, b in zip(streamed.events, streamed.events[1:], strict=False))
    assert [e["queue_position"] for e in streamed.events if e["status"] == "IN_QUEUE"][-1] == 0
    progress = [len(e["logs"]) for e in streamed.events if e["status"] == "IN_PROGRESS"]
    assert progress == sorted(progress) and len(progress) >= 2  # one event per new log line
    assert len(streamed.comments) >= 3 and set(streamed.comments) == {": keep-alive"}
    final = streamed.events[-1]
    status = httpx.get(handle.status_url, headers=auth("k"), params={"logs": "1"}).json()
    assert final == status  # "the same fields as the response of Get request status"
    assert [(e.kind, e.status) for e in fal_emulator.log.for_request(handle.request_id)
            if e.kind == "stream"] == [("stream", 200)]


def test_a_cancel_ends_the_stream_at_once_with_the_cancelled_status(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "hangs [fault:run=hang]"})
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_stream, handle.status_url)
        time.sleep(0.5)
        handle.cancel()
        cancelled = time.monotonic()
        streamed = reading.result(timeout=10)
    assert streamed.ended - cancelled < 0.5  # woken by the cancel, not its keep-alive timer
    assert streamed.events[-1]["status"] == "COMPLETED"
    assert streamed.events[-1]["error"] == "Request was cancelled"


@pytest.mark.parametrize(("fault", "code", "content_type"), [
    ("stream=refuse", 404, "application/json"),
    ("stream=503", 503, "application/json"),
    ("stream=malformed", 200, "application/json"),
])
def test_stream_faults_answer_something_that_is_no_stream(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient, fault: str, code: int,
    content_type: str
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": f"no stream [fault:{fault}]"})
    response = httpx.get(handle.status_url + "/stream", headers=auth("k"))
    assert (response.status_code, response.headers["content-type"]) == (code, content_type)


def test_a_cut_stream_stops_after_its_first_event_and_cutx1_only_once(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    handle = fal_sync_client.submit(MODEL, {"prompt": "cut once [fault:stream=cutx1]"})
    first = read_stream(handle.status_url)
    assert isinstance(first.error, httpx.RemoteProtocolError)  # the body never ended
    assert [e["status"] for e in first.events] == ["IN_QUEUE"]
    second = read_stream(handle.status_url)
    assert second.error is None and second.events[-1]["status"] == "COMPLETED"
    assert [e.kind for e in fal_emulator.log.for_request(handle.request_id)].count("stream") == 2
