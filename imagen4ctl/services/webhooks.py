"""fal's webhooks for the worker: deliveries verified, then handed to the run that waits for
them, so that a row ends through the same `GenerationService.settle` as with polling.

A worker started with --webhook-url submits every request with it (`?fal_webhook=`), and its
runs wait up to --webhook-grace for the delivery before they follow fal themselves (stream or
polling, `WebhookFollow`): a delivery that never comes costs that time, never the row. Each
handler verifies before it parses and parses before it writes (adapters/fal_webhook.py):

- forged, tampered, stale, unsigned → 401, oversized → 413 (services/httpd.py refuses a
  Content-Length over 1 MB before reading it); fal's keys out of reach → 503;
- a request a run of this worker waits for: handed to it (200); the same delivery again: 200,
  nothing more; a delivery before its run waits (or for an id no row holds yet) is kept a
  while for it;
- a row no live run holds (its worker stopped or died): settled here, through the same
  generation service, and conditionally, so a delivery twice is one change; 503 while the
  images cannot be stored, so that fal delivers it again;
- a row another live worker holds: 503, so that fal delivers it again (that worker follows
  it meanwhile); the database down: 503.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from imagen4ctl.adapters.fal import FalStatus
from imagen4ctl.adapters.fal_webhook import (
    Delivery,
    WebhookMalformed,
    WebhookRejected,
    WebhookUnverifiable,
    WebhookVerifier,
    parse_delivery,
)
from imagen4ctl.db import generations
from imagen4ctl.db.generations import GenerationRow
from imagen4ctl.db.values import COMPLETED, FAILED, utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalError, Imagen4ctlError, UsageError
from imagen4ctl.services.following import Following
from imagen4ctl.services.httpd import Handler, HttpServer, Reply, Request
from imagen4ctl.services.outcome import Outcome
from imagen4ctl.services.recovery import claim_is_dead
from imagen4ctl.services.worker_state import EventSink, WorkerEvent
from imagen4ctl.settings import Follow

if TYPE_CHECKING:
    from imagen4ctl.services.generation import GenerationService

DEFAULT_GRACE = 60.0  # seconds a run waits for its delivery before it follows fal itself
KEPT_FOR = 600.0  # seconds a delivery no run waits for yet is kept for one
KEPT_AT_MOST = 1000


class _Waiter:
    """One run's wait for its delivery; the first status told wins."""

    def __init__(self) -> None:
        self._told = threading.Event()
        self.status: FalStatus | None = None

    def tell(self, status: FalStatus) -> bool:
        if self._told.is_set():
            return False
        self.status = status
        self._told.set()
        return True

    def wait(self, seconds: float) -> FalStatus | None:
        self._told.wait(max(0.0, seconds))
        return self.status


def told_status(delivery: Delivery) -> FalStatus:
    """A delivery as fal's final status; its answer rides along when fal could send it (a
    result fal could not serialize, or one we cannot read, is asked for as usual)."""
    if not delivery.ok:
        return FalStatus("COMPLETED", error=delivery.failure())
    try:
        result = delivery.result()
    except FalError:
        result = None
    return FalStatus("COMPLETED", result=result)


class WebhookInbox:
    """Receives fal's deliveries for one worker (`handle` is the HTTP route) and hands them to
    its runs (`expecting`); thread-safe."""

    def __init__(self, service: GenerationService, verifier: WebhookVerifier, *, path: str,
                 owner: str, claim_timeout: float, timeout: float,
                 on_event: EventSink = lambda _event: None,
                 is_dead: Callable[[str | None], bool] = claim_is_dead) -> None:
        self.service = service
        self.verifier = verifier
        self.path = path
        self.owner = owner
        self.claim_timeout = claim_timeout
        self.timeout = timeout
        self.emit = on_event
        self.is_dead = is_dead
        self.received = 0  # verified deliveries (tests and --debug read it)
        self.answers: dict[int, int] = {}  # deliveries by the status they got
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiter] = {}
        self._kept: OrderedDict[str, tuple[float, FalStatus]] = OrderedDict()
        self._settling: set[int] = set()

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("POST", self.path): self.answer}

    def answer(self, request: Request) -> Reply:
        """`handle`, counted by the status it answered (the worker's /metrics shows them)."""
        reply = self.handle(request)
        with self._lock:
            self.answers[reply.status] = self.answers.get(reply.status, 0) + 1
        return reply

    @contextmanager
    def expecting(self, request_id: str) -> Iterator[_Waiter]:
        """A run waits for the delivery of `request_id` while in this block."""
        waiter = _Waiter()
        with self._lock:
            self._waiting[request_id] = waiter
            kept = self._kept.pop(request_id, None)
        if kept is not None:
            waiter.tell(kept[1])
        try:
            yield waiter
        finally:
            with self._lock:
                if self._waiting.get(request_id) is waiter:
                    del self._waiting[request_id]

    # --- the route ---

    def handle(self, request: Request) -> Reply:
        try:
            self.verifier.verify(request.headers, request.body)
        except WebhookRejected as e:
            self.emit(WorkerEvent(f"webhook delivery refused ({e.status})", reason=e.message,
                                  level="warning"))
            return Reply.text(e.status, f"refused: {e.message}\n")
        except WebhookUnverifiable as e:
            self.emit(WorkerEvent("webhook delivery not verified: fal's keys could not be had",
                                  reason=e.message, level="warning"))
            return Reply.text(503, "cannot verify deliveries now: deliver it again later\n")
        try:
            delivery = parse_delivery(request.body)
        except WebhookMalformed as e:
            self.emit(WorkerEvent("webhook delivery unreadable", reason=e.message,
                                  level="warning"))
            return Reply.text(400, f"{e.message}\n")
        with self._lock:
            self.received += 1
        try:
            return self._deliver(delivery.request_id, told_status(delivery))
        except Imagen4ctlError as e:  # the database (the lookup, or a state change)
            self.emit(WorkerEvent("webhook delivery not taken: deliver it again later",
                                  fal_request_id=delivery.request_id, reason=e.message,
                                  level="warning"))
            return Reply.text(503, "cannot take deliveries now: deliver it again later\n")

    def _deliver(self, request_id: str, status: FalStatus) -> Reply:
        with self._lock:
            waiter = self._waiting.get(request_id)
        if waiter is not None:
            fresh = waiter.tell(status)
            return Reply.text(200, "received\n" if fresh else "received already\n")
        row = generations.in_flight_with_request(self.service.database, request_id)
        holder = None if row is None else self._holder(row)
        if row is None or holder == "mine":  # not (or no longer) waited for; a run may come
            self._keep(request_id, status)
            if row is None:
                self.emit(WorkerEvent("webhook for a request no row waits for: nothing "
                                      "written", fal_request_id=request_id))
            return Reply.text(200, "received\n")
        if holder == "other":
            return Reply.text(503, "another worker follows this request: deliver it again "
                              "later\n")
        return self._settle(row, status)

    def _holder(self, row: GenerationRow) -> str | None:
        """Who follows `row` now: this worker ("mine"), another live one ("other"), or none."""
        if row.claimed_by is None:
            return None
        if row.claimed_by == self.owner:
            return "mine"
        live = row.held_by_live_claim(utcnow(), timedelta(seconds=self.claim_timeout),
                                      self.is_dead)
        return "other" if live else None

    def _keep(self, request_id: str, status: FalStatus) -> None:
        now = time.monotonic()
        with self._lock:
            self._kept[request_id] = (now, status)
            while self._kept and (len(self._kept) > KEPT_AT_MOST
                                  or next(iter(self._kept.values()))[0] < now - KEPT_FOR):
                self._kept.popitem(last=False)

    def _settle(self, row: GenerationRow, status: FalStatus) -> Reply:
        """A row no run follows: fal's verdict into it here, as its run would have."""
        with self._lock:
            if row.id in self._settling:
                return Reply.text(503, "being stored: deliver it again later\n")
            self._settling.add(row.id)
        started = time.monotonic()
        outcome = Outcome(row.id, row.user_id, row.status, fal_request_id=row.fal_request_id,
                          prompt=row.prompt, aspect_ratio=row.aspect_ratio)
        try:
            self.service.settle(outcome, row.fal_endpoint or self.service.model,
                                row.params if isinstance(row.params, dict) else {},
                                Deadline(self.timeout), error=status.error, result=status.result)
        finally:
            with self._lock:
                self._settling.discard(row.id)
        finished = outcome.status in (COMPLETED, FAILED)
        self.emit(WorkerEvent(
            ("completed" if outcome.status == COMPLETED else "failed") + " from fal's webhook"
            if finished else "webhook received, but the row is not stored yet",
            id=row.id, user_id=row.user_id, fal_request_id=row.fal_request_id,
            from_status=row.status, to_status=outcome.status if finished else None,
            seconds=time.monotonic() - started, reason=outcome.error,
            level="info" if finished else "warning"))
        if finished:
            return Reply.text(200, "received\n")
        return Reply.text(503, "not stored yet: deliver it again later\n")


@dataclass(frozen=True)
class WebhookFollow:
    """How a run follows fal when fal calls back (a `Told` for services/following.py): it
    waits up to `grace` for the delivery (never more than half what is left of its deadline),
    then follows the `fallback` way, and still takes the delivery should it come."""

    inbox: WebhookInbox
    grace: float = DEFAULT_GRACE
    fallback: Follow = "auto"

    def follow(self, following: Following) -> Iterator[FalStatus]:
        with self.inbox.expecting(following.request_id) as waiter:
            told = waiter.wait(min(self.grace, following.deadline.remaining() / 2))
            following.how = "fal's webhook"
            if told is None:
                told = yield from self._followed(following, waiter)
            if told is not None:
                yield told

    def _followed(self, following: Following,
                  waiter: _Waiter) -> Generator[FalStatus, None, FalStatus | None]:
        inner = Following(following.fal, following.endpoint, following.request_id,
                          following.deadline, submitted=following.submitted,
                          mode=self.fallback, interval=following.interval)
        try:
            with closing(iter(inner)) as statuses:
                for status in statuses:
                    if waiter.status is not None:
                        break
                    yield status
        finally:
            following.step = inner.step
            following.how = f"{inner.how} (no webhook within {self.grace:g}s)"
        if waiter.status is not None:
            following.how = f"fal's webhook, while {following.how}"
        return waiter.status


def webhook_mode(service: GenerationService, verifier: WebhookVerifier, *, url: str,
                 path: str, grace: float, owner: str, claim_timeout: float, timeout: float,
                 on_event: EventSink) -> WebhookInbox:
    """Switch `service` to fal's webhooks: its submissions carry `url`, its runs wait for the
    deliveries the returned inbox receives (served on `path`)."""
    inbox = WebhookInbox(service, verifier, path=path, owner=owner,
                         claim_timeout=claim_timeout, timeout=timeout, on_event=on_event)
    fallback = service.follow if isinstance(service.follow, str) else "auto"
    service.follow = WebhookFollow(inbox, grace=grace, fallback=fallback)
    if service.fal is not None:
        service.fal.webhook_url = url
    return inbox


# --- the worker's options and server for them ---


class _ServerOptions(Protocol):
    @property
    def webhook_port(self) -> int | None: ...
    @property
    def webhook_host(self) -> str: ...
    @property
    def metrics_port(self) -> int | None: ...


def check_webhook_options(url: str | None, port: int | None, host: str,
                          metrics_port: int | None, metrics_host: str) -> None:
    """--webhook-url and --webhook-port go together; one port is one server, on one host."""
    if (url is None) != (port is None):
        raise UsageError("--webhook-url and --webhook-port go together",
                         hint="--webhook-url is where fal can reach the worker (a reverse "
                         "proxy, say); --webhook-port where the worker listens.")
    if url is not None and (urlsplit(url).scheme not in ("http", "https")
                            or not urlsplit(url).hostname):
        raise UsageError(f"--webhook-url must be an http(s) URL, not {url!r}")
    if port and port == metrics_port and host != metrics_host:
        raise UsageError("--webhook-port equals --metrics-port: one server, so give "
                         "--webhook-host and --metrics-host the same address")


def shares_server(options: _ServerOptions) -> bool:
    """Deliveries come to the /metrics server when both ports are the same (not 0)."""
    return bool(options.webhook_port) and options.webhook_port == options.metrics_port


def webhook_path(url: str) -> str:
    """The path the worker receives deliveries on: --webhook-url's (a proxy keeps it)."""
    return urlsplit(url).path or "/"


def serve_webhooks(inbox: WebhookInbox, options: _ServerOptions) -> HttpServer:
    server = HttpServer(inbox.routes(), host=options.webhook_host,
                        port=options.webhook_port or 0,
                        hint="Pick another --webhook-port, or check --webhook-host.")
    return server.start()
