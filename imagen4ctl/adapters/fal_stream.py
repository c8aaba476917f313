"""fal's status stream: a request's statuses as fal pushes them, one server-sent event each.

fal's words (https://fal.ai/docs/inference-api/queue/status-stream): "Receive status updates
as server-sent events. Each event has a data: line with a status object. The status object
has the same fields as the response of Get request status. The server closes the stream after
it sends the COMPLETED event. The server sends a comment line every 15 seconds to keep the
connection open." fal_client 1.0.3 has no call for it; fal-js's `streamStatus` reads
`{request}/status/stream?logs=0|1`. It is read here with httpx-sse on the fal adapter's own
client, so it goes out through the same deadline-bounded transport, with the key passed
explicitly. This module continues fal.py (which is at its size limit), hence its use of that
adapter's private parts.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Generator, Iterator
from contextlib import ExitStack, contextmanager

import httpx

from imagen4ctl.adapters.fal import (
    FalAdapter,
    FalStatus,
    FalTimeout,
    detail_text,
    fal_status,
    transport_reason,
)
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalUnavailable


class StreamRefused(FalUnavailable):
    """The stream was answered with an error, or not as an event stream (a proxy on the way,
    a host without it): opening it again would get the same answer."""


class StreamBroken(FalUnavailable):
    """The stream could not be reached, broke, or ended before COMPLETED: it may open again."""


def stream_status(fal: FalAdapter, endpoint: str, request_id: str,
                  deadline: Deadline) -> Generator[FalStatus, None, None]:
    """fal's statuses of `request_id` as its stream sends them, until COMPLETED (the last).

    Raises StreamRefused, StreamBroken, or FalTimeout once `deadline` has passed, whatever
    the stream was doing then. Close the iterator when leaving it early: that closes the stream.
    """
    from httpx_sse import connect_sse

    handle = fal._client.get_handle(endpoint, request_id)
    with ExitStack() as stack:
        try:
            with fal.bounded(deadline), fal._translated("status stream"):
                source = stack.enter_context(connect_sse(
                    fal._http, "GET", handle.status_url + "/stream", params={"logs": "1"}))
        except FalTimeout:
            raise
        except FalUnavailable as e:  # not reached: the connection may come next time
            raise StreamBroken(f"the status stream could not be opened ({e.message})") from e
        _check_opened(source.response)
        stack.enter_context(_hang_up_at(deadline, source.response))
        try:
            for event in source.iter_sse():  # comment lines are no events: never seen here
                status = fal_status(handle._parse_status(json.loads(event.data)), request_id)
                yield status
                if status.state == "COMPLETED":
                    return
        except httpx.TransportError as e:
            if deadline.passed:
                raise _timeout() from e
            raise StreamBroken(f"the status stream broke ({transport_reason(e)})") from e
        except (ValueError, KeyError, TypeError) as e:
            raise StreamBroken("fal sent a malformed status event") from e
    if deadline.passed:
        raise _timeout()
    raise StreamBroken("fal closed the status stream before COMPLETED")


def _timeout() -> FalTimeout:
    return FalTimeout("the deadline passed while following fal's status stream",
                      hint="Raise --timeout, or check fal's status page.")


def _check_opened(response: httpx.Response) -> None:
    """A stream that will not come: an error answer, or one that is not an event stream."""
    if response.status_code != 200:
        response.read()
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        raise StreamRefused(f"fal answered the status stream with {response.status_code}"
                            + (f": {detail_text(detail)}" if detail is not None else ""))
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise StreamRefused(f"fal answered the status stream with {content_type or 'no type'}, "
                            "not an event stream")


@contextmanager
def _hang_up_at(deadline: Deadline, response: httpx.Response) -> Iterator[None]:
    """Ends the stream at the deadline. The transport caps each read by what was left of the
    deadline when the stream opened, but every keep-alive comment starts a new read: only a
    timer can end a stream that talks without ever completing."""
    network = response.extensions.get("network_stream")
    sock = network.get_extra_info("socket") if network is not None else None
    if not isinstance(sock, socket.socket) or deadline.at is None:
        yield
        return
    lock = threading.Lock()
    reading = True

    def hang_up() -> None:
        with lock:  # never once the stream is left: its connection may serve another call
            if reading:
                try:  # socket.socket's, not SSLSocket's, which drops its TLS state under a reader
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    timer = threading.Timer(max(0.0, deadline.remaining()), hang_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            reading = False
        timer.cancel()
