"""The Platform API request listing at FAL_PLATFORM_API_URL, where results outlive the queue."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fal_client
import httpx
import pytest
from fal_client.client import FalClientHTTPError

from imagen4ctl.emulator import FalEmulator
from tests.emulator._helpers import MODEL, auth, platform_url

KEY = "platform-key"


@pytest.fixture(autouse=True)
def quick(fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.05


def _finished(client: fal_client.SyncClient, *argument_sets: dict[str, Any]) -> list[str]:
    handles = [client.submit(MODEL, arguments) for arguments in argument_sets]
    for handle in handles:
        while not isinstance(handle.status(), fal_client.Completed):
            time.sleep(0.02)
    return [handle.request_id for handle in handles]


def _list(key: str = KEY, path: str = "/models/requests/by-endpoint",
          **params: Any) -> httpx.Response:
    params.setdefault("endpoint_id", MODEL)
    return httpx.get(platform_url(path), params=params, headers=auth(key))


def test_lists_finished_requests_with_payloads(fal_sync_client: fal_client.SyncClient) -> None:
    ok, invalid = _finished(fal_sync_client, {"prompt": "a heron", "aspect_ratio": "4:3"},
                            {"prompt": "bad", "num_images": 9})
    fal_sync_client.submit(MODEL, {"prompt": "still running [fault:run=hang]"})

    response = _list(expand="payloads")
    assert response.status_code == 200
    body = response.json()
    assert body["has_more"] is False and body["next_cursor"] is None
    items = {item["request_id"]: item for item in body["items"]}
    assert set(items) == {ok, invalid}, "running requests are not listed"
    item = items[ok]
    assert set(item) == {"request_id", "endpoint_id", "started_at", "sent_at", "ended_at",
                         "status_code", "duration", "json_input", "json_output"}
    assert item["endpoint_id"] == MODEL and item["status_code"] == 200
    assert item["json_input"] == {"prompt": "a heron", "aspect_ratio": "4:3"}
    assert item["json_output"]["images"][0]["url"].endswith(f"/files/{ok}/0.png")
    sent, ended = (datetime.fromisoformat(item[k]) for k in ("sent_at", "ended_at"))
    assert sent <= datetime.fromisoformat(item["started_at"]) <= ended
    assert items[invalid]["status_code"] == 422
    assert items[invalid]["json_output"]["detail"][0]["loc"] == ["body", "num_images"]

    plain = _list().json()["items"]
    assert "json_input" not in plain[0]
    ends = [i["ended_at"] for i in plain]
    assert len(plain) == 2 and ends == sorted(ends, reverse=True), "newest end time first"


def test_payloads_outlive_the_queue_result(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.result_ttl = 0.1
    [request_id] = _finished(fal_sync_client, {"prompt": "recover me"})
    time.sleep(0.15)
    with pytest.raises(FalClientHTTPError):
        fal_sync_client.result(MODEL, request_id)

    [item] = _list(expand="payloads", request_id=request_id).json()["items"]
    assert item["json_output"]["images"]

    fal_emulator.payload_ttl = 0
    [item] = _list(expand="payloads", request_id=request_id).json()["items"]
    assert item["json_input"] is None and item["json_output"] is None


def test_pagination_filters_and_the_serverless_twin(
    fal_sync_client: fal_client.SyncClient, fal_emulator: FalEmulator,
) -> None:
    ids = _finished(fal_sync_client, {"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"},
                    {"prompt": ""})

    first = _list(limit=2).json()
    assert (len(first["items"]), first["has_more"], first["next_cursor"]) == (2, True, "Mg==")
    second = _list(limit=2, cursor="Mg==").json()
    assert len(second["items"]) == 2 and second["has_more"] is False
    seen = [i["request_id"] for i in first["items"] + second["items"]]
    assert sorted(seen) == sorted(ids)

    [user_error] = _list(status="user_error").json()["items"]
    assert user_error["request_id"] == ids[3]
    assert len(_list(status="success").json()["items"]) == 3
    assert _list(endpoint_id="fal-ai/flux/dev").json()["items"] == []
    both = _list(endpoint_id=f"fal-ai/flux/dev,{MODEL}").json()["items"]
    assert len(both) == 4
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _list(start=future).json()["items"] == []
    assert _list(end="2020-01-01").json()["items"] == []
    fal_emulator.owned_namespaces = {"fal-ai"}  # the twin lists only endpoints one owns
    twin = _list(path="/serverless/requests/by-endpoint", request_id=ids[0]).json()["items"]
    assert [i["request_id"] for i in twin] == [ids[0]]


def test_errors_use_the_platform_error_shape(fal_emulator: FalEmulator) -> None:
    fal_emulator.forbidden_keys = {"locked"}

    missing = httpx.get(platform_url(), params={"endpoint_id": MODEL})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authorization_error"
    assert _list(key="locked").status_code == 403
    no_endpoint = httpx.get(platform_url(), headers=auth(KEY))
    assert no_endpoint.status_code == 400
    assert no_endpoint.json()["error"]["type"] == "validation_error"
    assert _list(limit=101).status_code == 400
    assert _list(status="done").status_code == 400
    assert _list(cursor="!!").status_code == 400
    assert httpx.get(platform_url("/models/nothing"), headers=auth(KEY)).status_code == 404


def test_the_serverless_listing_refuses_endpoints_one_does_not_own(
    fal_emulator: FalEmulator,
) -> None:
    serverless = "/serverless/requests/by-endpoint"
    refused = _list(path=serverless)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["type"] == "authorization_error" and MODEL in error["message"]
    assert _list().status_code == 200  # models/ lists any endpoint, fal's public ones too

    fal_emulator.owned_namespaces = {"fal-ai"}
    assert _list(path=serverless).status_code == 200


def test_a_platform_fault(fal_emulator: FalEmulator) -> None:
    fal_emulator.faults = "platform=500x1"
    assert _list().status_code == 500
    assert _list().status_code == 200
    assert [e.status for e in fal_emulator.log.entries("platform")] == [500, 200]
