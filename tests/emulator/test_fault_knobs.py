"""The faults a paid request meets after fal accepted it: a result call dropped once, an image
URL answering 503 once, an answer lost after the request was queued, a cancel a running
request ignores. Seen through the real fal_client and plain httpx, as imagen4ctl calls fal."""

from __future__ import annotations

import fal_client
import httpx
import pytest

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.faults import FaultSpecError, parse_faults
from tests.emulator._helpers import MODEL, auth, download, platform_url, queue_url, wait_for
from tests.plugins.fal import TEST_KEY


def running(emulator: FalEmulator, client: fal_client.SyncClient,
            prompt: str) -> fal_client.SyncRequestHandle:
    """A request submitted and seen IN_PROGRESS, with time left to cancel it."""
    emulator.latency, emulator.queue_fraction = 0.6, 0.1
    handle = client.submit(MODEL, {"prompt": prompt})
    wait_for(emulator, handle.request_id, "IN_PROGRESS")
    return handle


def test_a_result_call_drops_once_then_answers(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 0.05
    handle = fal_sync_client.submit(MODEL, {"prompt": "x [fault:result=dropx1]"})
    wait_for(fal_emulator, handle.request_id, "COMPLETED")
    with pytest.raises(httpx.TransportError):
        httpx.get(handle.response_url, headers=auth(TEST_KEY))
    again = httpx.get(handle.response_url, headers=auth(TEST_KEY))
    assert again.status_code == 200 and again.json()["images"]
    assert [e.status for e in fal_emulator.log.for_request(handle.request_id)
            if e.kind == "result"] == [None, 200]


def test_an_image_url_answers_503_once_then_serves_the_image(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 0.05
    result = fal_sync_client.submit(MODEL, {"prompt": "x [fault:file=503x1]"}).get(interval=0.02)
    url = result["images"][0]["url"]
    first = download(url)
    assert first.status_code == 503
    assert "x-fal-request-id" not in first.headers, "a CDN answer, not the queue app's"
    assert download(url).status_code == 200


def test_an_ingress_502_after_the_request_was_queued(fal_emulator: FalEmulator) -> None:
    """The request runs and is billed; its answer is nginx's, which fal_client would retry."""
    fal_emulator.latency = 0.05
    response = httpx.post(queue_url(MODEL), headers=auth(TEST_KEY),
                          json={"prompt": "lost [fault:submit=queued:ingress502]"})
    assert response.status_code == 502
    assert "nginx" in response.text and "x-fal-request-id" not in response.headers
    [request_id] = fal_emulator.request_ids()
    wait_for(fal_emulator, request_id, "COMPLETED")
    [entry] = fal_emulator.log.submissions(prompt_contains="lost")
    assert (entry.status, entry.request_id) == (502, request_id)
    assert fal_emulator.log.queued_count(prompt_contains="lost") == 1
    listed = httpx.get(platform_url(), headers=auth(TEST_KEY),
                       params={"endpoint_id": MODEL, "request_id": request_id}).json()
    assert [item["request_id"] for item in listed["items"]] == [request_id]


def test_fal_client_pays_twice_for_an_answer_lost_after_queueing(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    """Why imagen4ctl sends its submissions itself: fal_client resends an nginx 502."""
    handle = fal_sync_client.submit(MODEL, {"prompt": "twice [fault:submit=queued:ingress502x1]"})
    assert handle.request_id
    assert fal_emulator.log.submission_count(prompt_contains="twice") == 2
    assert fal_emulator.log.queued_count(prompt_contains="twice") == 2


def test_a_refused_submission_queues_nothing(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError):
        fal_sync_client.submit(MODEL, {"prompt": "no [fault:submit=422]"})
    assert fal_emulator.log.submission_count(prompt_contains="no") == 1
    assert fal_emulator.log.queued_count(prompt_contains="no") == 0
    assert fal_emulator.request_ids() == []


def test_a_running_request_ignores_the_cancel_and_completes(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    handle = running(fal_emulator, fal_sync_client, "stubborn [fault:cancel=ignored]")
    handle.cancel()  # 202 CANCELLATION_REQUESTED, as fal answers
    assert fal_emulator.state(handle.request_id) == "IN_PROGRESS"
    result = handle.get(interval=0.02)
    assert result["images"]
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error is None
    assert [e.status for e in fal_emulator.log.entries("cancel")] == [202]


def test_a_running_request_honours_the_cancel_by_default(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    handle = running(fal_emulator, fal_sync_client, "obliging")
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error == "Request was cancelled"


@pytest.mark.parametrize("spec", ["submit=queued:ingress502x1", "submit=queued:drop",
                                  "submit=queued:500", "cancel=ignored", "result=dropx1",
                                  "file=503x1"])
def test_the_new_specs_read_back_as_written(spec: str) -> None:
    assert parse_faults(spec).describe() == spec


@pytest.mark.parametrize(("spec", "complaint"), [
    ("submit=queued:notimage", "unknown action .notimage."),
    ("submit=queued:queued:502", "queued: takes"),
    ("status=queued:502", "unknown action"),
    ("status=ignored", "unknown action"),
])
def test_the_new_specs_refuse_what_they_cannot_do(spec: str, complaint: str) -> None:
    with pytest.raises(FaultSpecError, match=complaint):
        parse_faults(spec)
