"""What imagen4ctl serves over HTTP: `metrics --serve`, the worker's /metrics and /healthz,
and fal's webhooks later. The standard library's ThreadingHTTPServer speaks HTTP; a route is
one entry of a dict from (method, path) to a function of a `Request`, so a new endpoint is a
new entry, not new server code. A body is read only up to `max_body` bytes, before any
handler sees it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from imagen4ctl.errors import Imagen4ctlError

TEXT = "text/plain; charset=utf-8"
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT

    @classmethod
    def text(cls, status: int, text: str) -> Reply:
        return cls(status, text.encode())


Handler = Callable[[Request], Reply]
Routes = Mapping[tuple[str, str], Handler]


class _RequestHandler(BaseHTTPRequestHandler):
    server: HttpServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        server = self.server
        handler = server.routes.get(("GET" if method == "HEAD" else method, path))
        if handler is None:
            allowed = sorted({m for m, p in server.routes if p == path})
            reply = (Reply.text(405, f"method not allowed: use {', '.join(allowed)}\n")
                     if allowed else server.not_found)
            self._reply(reply, head=method == "HEAD")
            return
        try:
            body = self._body()
        except ValueError as e:
            self._reply(Reply.text(413 if "large" in str(e) else 400, f"{e}\n"))
            return
        try:
            reply = handler(Request(method, path, query, dict(self.headers.items()), body))
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            reply = Reply.text(500, f"failed: {type(e).__name__}\n")
        self._reply(reply, head=method == "HEAD")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        if not length.isdigit():
            raise ValueError("bad Content-Length")
        if int(length) > self.server.max_body:
            raise ValueError(f"body too large: over {self.server.max_body} bytes")
        return self.rfile.read(int(length))

    def _reply(self, reply: Reply, *, head: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if not head:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # probes and scrapes every few seconds would drown stderr


class HttpServer(ThreadingHTTPServer):
    """Serves `routes` on (host, port); port 0 picks a free one (see `url`)."""

    daemon_threads = True

    def __init__(self, routes: Routes, *, host: str, port: int, not_found: Reply | None = None,
                 max_body: int = MAX_BODY,
                 hint: str = "Pick another port, or check the address.") -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.routes = routes
        self.not_found = not_found or Reply.text(404, "not found\n")
        self.max_body = max_body
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), _RequestHandler)
        except OSError as e:
            raise Imagen4ctlError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                  hint=hint) from e

    def url(self, path: str = "") -> str:
        host, port = self.server_address[:2]
        shown = f"[{host!s}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}{path}"

    def start(self) -> HttpServer:
        """Serve on a thread of its own (until `stop`)."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="imagen4ctl-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
