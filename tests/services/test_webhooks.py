"""fal's deliveries received on a real HTTP server, as the worker serves them: verified before
anything is parsed or written (each refusal leaves the table exactly as it was), then handed
to the run that waits for them, or settled through the generation service — once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.adapters.fal_webhook import MAX_BODY, WebhookVerifier
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.session import Database
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.webhooks import JWKS_PATH, delivery_body
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.httpd import HttpServer
from imagen4ctl.services.webhooks import WebhookFollow, WebhookInbox, webhook_mode
from imagen4ctl.services.worker_state import WorkerEvent
from tests.factories import bot_row, insert_rows, sql
from tests.reliability._workers import free_port
from tests.services.conftest import KEY, MODEL, MakeService
from tests.services.test_worker import wait_for

PATH = "/fal/webhook"
OWNER = "webhook-test-host:1:me"


@dataclass
class Inbox:
    inbox: WebhookInbox
    server: HttpServer
    service: GenerationService
    db_url: str
    images: Path
    events: list[WorkerEvent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url(PATH)

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(self.url, content=body, headers=headers, timeout=30)

    def table(self) -> list[Any]:
        return [tuple(row) for row in sql(self.db_url, "SELECT * FROM generations ORDER BY id")]

    def stored(self) -> list[Path]:
        return sorted(p for p in self.images.rglob("*") if p.is_file())


@contextmanager
def receiving(service: GenerationService, emulator: FalEmulator, db_url: str,
              images: Path) -> Iterator[Inbox]:
    """`service` in webhook mode, its inbox served on a real server of its own."""
    found: list[WorkerEvent] = []
    verifier = WebhookVerifier(emulator.base_url + JWKS_PATH)
    inbox = webhook_mode(service, verifier, url="http://unused", path=PATH, grace=30.0,
                         owner=OWNER, claim_timeout=60.0, timeout=30.0,
                         on_event=found.append)
    server = HttpServer(inbox.routes(), host="127.0.0.1", port=0).start()
    if service.fal is not None:
        service.fal.webhook_url = server.url(PATH)
    try:
        yield Inbox(inbox, server, service, db_url, images, found)
    finally:
        server.stop()


@pytest.fixture
def box(make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str,
        tmp_path: Path) -> Iterator[Inbox]:
    fal_emulator.webhooks.time_scale = 1000.0  # one attempt per delivery within a test
    service = make_service()
    service.storage.create_if_missing()  # as the worker does when it starts
    with receiving(service, fal_emulator, migrated_db, tmp_path / "images") as found:
        yield found


def in_flight_row(box: Inbox, prompt: str = "a lighthouse", **row: Any) -> tuple[int, str]:
    """A request at fal (submitted without a webhook) and its row, PROCESSING, unclaimed."""
    request_id = FalAdapter(KEY).submit(MODEL, {"prompt": prompt}, Deadline(10)).request_id
    insert_rows(box.db_url, [bot_row("7", "imagen4", "PROCESSING", prompt=prompt,
                                     fal_request_id=request_id, fal_endpoint=MODEL, **row)])
    [(row_id,)] = sql(box.db_url, "SELECT id FROM generations WHERE fal_request_id = :r",
                      r=request_id)
    return int(row_id), request_id


def genuine(emulator: FalEmulator, request_id: str) -> tuple[bytes, dict[str, str]]:
    """fal's delivery of a finished request, as the emulator would sign and send it."""
    deadline = time.monotonic() + 10
    while emulator.state(request_id) != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    result = FalAdapter(KEY)._client.get_handle(MODEL, request_id).get()
    body = json.dumps(delivery_body(request_id, 200, result)).encode()
    return body, emulator.webhooks.headers(request_id, body)


def status_of(box: Inbox, row_id: int) -> tuple[str, str | None]:
    [(status, error)] = sql(box.db_url, "SELECT status, error FROM generations WHERE id = :i",
                            i=row_id)
    return status, error


# --- refused: nothing written ---


@pytest.mark.parametrize(("forge", "reason"), [
    ("signature", "signature matches none"), ("body", "signature matches none"),
    ("stale", "stale delivery"), ("unsigned", "unsigned delivery"),
    ("key", "signature matches none"),
])
def test_a_forged_delivery_is_refused_and_writes_nothing(box: Inbox, fal_emulator: FalEmulator,
                                                         forge: str, reason: str) -> None:
    fal_emulator.webhooks.forge = forge
    outcome = box.service.generate(GenerationSpec(user_id="7", prompt="forged"), Deadline(10),
                                   wait=False)  # submitted with the webhook; not waited for
    assert outcome.status == "PROCESSING"
    before = box.table()
    wait_for(lambda: fal_emulator.webhooks.attempts(outcome.fal_request_id), within=10.0)
    [attempt] = fal_emulator.webhooks.attempts(outcome.fal_request_id)
    assert (attempt.status, attempt.forged) == (401, forge)
    assert box.table() == before and box.stored() == []
    assert box.inbox.received == 0
    [event] = [e for e in box.events if e.level == "warning"]
    assert event.message == "webhook delivery refused (401)" and reason in (event.reason or "")
    assert status_of(box, outcome.id or 0) == ("PROCESSING", None)


@pytest.mark.parametrize("missing", ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id",
                                     "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"])
def test_a_delivery_without_a_signed_header_writes_nothing(box: Inbox, fal_emulator: FalEmulator,
                                                           missing: str) -> None:
    row_id, request_id = in_flight_row(box)
    body, headers = genuine(fal_emulator, request_id)
    del headers[missing]
    before = box.table()
    answer = box.post(body, headers)
    assert (answer.status_code, answer.text) == (401, f"refused: unsigned delivery: no "
                                                      f"{missing}\n")
    assert box.table() == before and box.stored() == []


def test_a_tampered_delivery_writes_nothing(box: Inbox, fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box)
    body, headers = genuine(fal_emulator, request_id)
    before = box.table()
    failed = json.dumps({"request_id": request_id, "status": "ERROR", "error": "forged",
                         "payload": None}).encode()
    assert box.post(failed, headers).status_code == 401
    stale = fal_emulator.webhooks.headers(request_id, body, timestamp=int(time.time()) - 301)
    assert box.post(body, stale).status_code == 401
    assert box.table() == before and box.stored() == []
    assert status_of(box, row_id) == ("PROCESSING", None)


def test_an_oversized_delivery_is_refused_unread(box: Inbox, fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box)
    body = b" " * (MAX_BODY + 1)
    before = box.table()
    answer = box.post(body, fal_emulator.webhooks.headers(request_id, body))
    assert answer.status_code == 413
    assert box.table() == before and box.stored() == []
    assert box.inbox.verifier.fetches == 0  # refused before the keys were even needed


def test_an_unknown_key_refetches_the_keys_once(box: Inbox, fal_emulator: FalEmulator) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    row_id, request_id = in_flight_row(box)
    body, _ = genuine(fal_emulator, request_id)
    stranger = Ed25519PrivateKey.generate()
    before = box.table()
    for _ in range(3):
        forged = fal_emulator.webhooks.headers(request_id, body, key=stranger)
        assert box.post(body, forged).status_code == 401
    assert box.inbox.verifier.fetches == 2  # the keys, then once more for the unknown key
    assert box.table() == before and box.stored() == []


def test_an_unknown_request_id_is_taken_and_nothing_written(box: Inbox,
                                                            fal_emulator: FalEmulator) -> None:
    in_flight_row(box)
    body = json.dumps(delivery_body("no-such-request", 200, {"images": []})).encode()
    before = box.table()
    answer = box.post(body, fal_emulator.webhooks.headers("no-such-request", body))
    assert answer.status_code == 200
    assert box.table() == before and box.stored() == []
    assert [e.message for e in box.events] == [
        "webhook for a request no row waits for: nothing written"]


def test_the_database_down_answers_503_so_fal_delivers_again(
        make_service: MakeService, fal_emulator: FalEmulator, tmp_path: Path) -> None:
    service = make_service()
    service.database = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/gone")
    request_id = FalAdapter(KEY).submit(MODEL, {"prompt": "x"}, Deadline(10)).request_id
    body, headers = genuine(fal_emulator, request_id)
    with receiving(service, fal_emulator, "unused", tmp_path / "images") as box:
        answer = box.post(body, headers)
    assert answer.status_code == 503
    assert "later" in answer.text and "127.0.0.1" not in answer.text
    [event] = box.events
    assert event.level == "warning" and "cannot connect" in (event.reason or "")


def test_a_row_another_live_worker_holds_is_left_to_it(box: Inbox,
                                                       fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box, claimed_by="other-host:1:them",
                                       claimed_at=datetime.now(UTC))
    body, headers = genuine(fal_emulator, request_id)
    before = box.table()
    assert box.post(body, headers).status_code == 503
    assert box.table() == before and box.stored() == []


# --- taken: one change ---


def test_a_row_no_run_follows_is_completed_once(box: Inbox, fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box)
    body, headers = genuine(fal_emulator, request_id)
    fal_emulator.log.clear()
    answers: list[int] = []
    posts = [threading.Thread(target=lambda: answers.append(box.post(body, headers).status_code))
             for _ in range(2)]
    for post in posts:
        post.start()
    for post in posts:
        post.join()
    assert 200 in answers and set(answers) <= {200, 503}
    assert status_of(box, row_id) == ("COMPLETED", None)
    after = box.table()
    assert box.post(body, headers).status_code == 200  # once more, later: nothing changes
    assert box.table() == after
    assert len(box.stored()) == 1
    assert [e.kind for e in fal_emulator.log.for_request(request_id)] == ["file"]  # no more
    [event] = [e for e in box.events if e.to_status]
    assert (event.message, event.from_status, event.to_status) == (
        "completed from fal's webhook", "PROCESSING", "COMPLETED")


def test_an_error_delivery_fails_the_row_with_fals_error(box: Inbox,
                                                         fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box, prompt="[fault:run=error:internal_error] boom")
    deadline = time.monotonic() + 10
    while fal_emulator.state(request_id) != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    body = json.dumps(delivery_body(request_id, 500, {"detail": "Internal server error",
                                                      "error_type": "internal_error"})).encode()
    assert box.post(body, fal_emulator.webhooks.headers(request_id, body)).status_code == 200
    assert status_of(box, row_id) == (
        "FAILED", "fal: Invalid status code: 500: Internal server error")


def test_a_storage_fault_leaves_the_row_in_flight_and_asks_again(
        make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str,
        tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the images should go")
    service = make_service()
    service.storage = service.images.storage = LocalStorage(blocked / "images")
    with receiving(service, fal_emulator, migrated_db, blocked) as box:
        row_id, request_id = in_flight_row(box)
        body, headers = genuine(fal_emulator, request_id)
        assert box.post(body, headers).status_code == 503  # fal delivers it again later
    status, error = status_of(box, row_id)
    assert status == "PROCESSING" and (error or "").startswith("storage: ")


# --- the run that waits for its delivery ---


def test_a_run_ends_through_its_delivery_without_asking_fal(box: Inbox,
                                                            fal_emulator: FalEmulator) -> None:
    outcome = box.service.generate(GenerationSpec(user_id="7", prompt="told"), Deadline(30))
    assert outcome.status == "COMPLETED", outcome.error
    assert outcome.followed == "fal's webhook"
    kinds = [e.kind for e in fal_emulator.log.for_request(outcome.fal_request_id or "")]
    assert kinds == ["submit", "file"]  # no status, stream or result call: fal told us
    assert box.inbox.received == 1


def test_a_lost_delivery_costs_time_not_the_row(make_service: MakeService,
                                               fal_emulator: FalEmulator, migrated_db: str,
                                               tmp_path: Path) -> None:
    fal_emulator.webhooks.drop = True
    service = make_service()
    with receiving(service, fal_emulator, migrated_db, tmp_path / "images") as box:
        service.follow = WebhookFollow(box.inbox, grace=0.3, fallback="auto")
        outcome = service.generate(GenerationSpec(user_id="7", prompt="lost"), Deadline(30))
    assert outcome.status == "COMPLETED", outcome.error
    assert outcome.followed.endswith("(no webhook within 0.3s)")


def test_a_delivery_without_its_payload_fetches_the_result(box: Inbox,
                                                           fal_emulator: FalEmulator) -> None:
    fal_emulator.webhooks.payload_error = True
    outcome = box.service.generate(GenerationSpec(user_id="7", prompt="big"), Deadline(30))
    assert outcome.status == "COMPLETED", outcome.error
    kinds = [e.kind for e in fal_emulator.log.for_request(outcome.fal_request_id or "")]
    assert kinds == ["submit", "result", "file"]


def test_a_run_fails_with_the_error_its_delivery_brings(box: Inbox,
                                                        fal_emulator: FalEmulator) -> None:
    outcome = box.service.generate(
        GenerationSpec(user_id="7", prompt="[fault:run=error:request_timeout] slow"),
        Deadline(30))
    assert (outcome.status, outcome.error) == (
        "FAILED", "fal: Invalid status code: 504: Request timed out")


def test_a_waiting_run_is_told_once_and_the_inbox_writes_nothing(
        box: Inbox, fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box)
    body, headers = genuine(fal_emulator, request_id)
    before = box.table()
    with box.inbox.expecting(request_id) as waiter:
        answers = [box.post(body, headers).text for _ in range(2)]
        told = waiter.wait(0)
    assert answers == ["received\n", "received already\n"]
    assert told is not None and told.state == "COMPLETED" and told.error is None
    assert told.result is not None and len(told.result.images) == 1
    assert box.table() == before  # the run stores and writes, through the generation service


def test_a_delivery_before_its_run_waits_is_kept_for_it(box: Inbox,
                                                        fal_emulator: FalEmulator) -> None:
    row_id, request_id = in_flight_row(box, claimed_by=OWNER, claimed_at=datetime.now(UTC))
    body, headers = genuine(fal_emulator, request_id)
    before = box.table()
    assert box.post(body, headers).status_code == 200
    with box.inbox.expecting(request_id) as waiter:
        told = waiter.wait(0)
    assert told is not None and told.result is not None
    assert box.table() == before
