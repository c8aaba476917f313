"""fal's Platform API as the emulator understands it: the request listing and the balance.

Listing. Source: https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint ("Lists
requests for one or more endpoints", "Requires API key (user or enterprise)"): any endpoint
id, fal's public ones included. Its twin
https://fal.ai/docs/platform-apis/v1/serverless/requests/by-endpoint "Lists requests for one
or more endpoints owned by the authenticated user"; the emulator answers it 403 for an
endpoint outside `owned_namespaces` (fal's answer there is not documented). Base URL
https://api.fal.ai/v1, auth `Authorization: Key ...`.

    GET /v1/models/requests/by-endpoint      (also /v1/serverless/requests/by-endpoint)
      endpoint_id  required; repeated or comma-separated, up to 50 ids (full ids, sub-path
                   included: fal-ai/imagen4/preview)
      start, end   ISO 8601 date or datetime; end is exclusive. start defaults to 24 hours
                   ago, or 90 days ago when request_id is given; end defaults to now
      status       success | error | user_error
      request_id   one request
      limit        1..100, default 50
      cursor       opaque; fal's encodes the page number (base64 of "2" is "Mg==")
      sort_by      ended_at (default) | duration, newest / longest first
      expand       payloads -> adds json_input and json_output to each item

    200 {"items": [{"request_id", "endpoint_id", "started_at", "sent_at", "ended_at",
                    "status_code", "duration", ["json_input", "json_output"]}],
         "next_cursor": str | null, "has_more": bool}
    errors: {"error": {"type": "authorization_error" | "validation_error" | "not_found" |
             ..., "message": str}}

An unknown route under /v1 answers 404 (what a wrong FAL_PLATFORM_API_URL meets); the
listing itself never answers 404: "no such request" is an empty `items`.

Balance. Source: https://fal.ai/docs/platform-apis/v1/account/billing ("Returns billing
information for the authenticated account. Use the `expand` parameter to include additional
details. Expandable Fields: - `credits` — Current credit balance and currency"). The field
names are not in fal's excerpts; they follow a third party that reads this route
(https://raw.githubusercontent.com/steipete/CodexBar/main/docs/fal.md: "displays
`credits.current_balance` in `credits.currency`", and an inference-only key "returns HTTP
403"):

    GET /v1/account/billing[?expand=credits]
    200 {"username": str, ["credits": {"current_balance": float, "currency": "USD"}]}
    403 {"error": {"type": "authorization_error", ...}}  when `billing_refused` is set

Assumptions where the docs are silent (all in this emulator, not promises about fal):
the time window applies to `ended_at`; only finished requests are listed (requests cancelled
in the queue never reached a runner and are not listed); `duration` is seconds from sent_at
to ended_at; status success/user_error/error means 2xx/4xx/other; payloads are kept
`payload_ttl` seconds (30 days by default) and are null afterwards; parameter errors are 400.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_ENDPOINTS = 50
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
STATUSES = ("success", "error", "user_error")
SORTS = ("ended_at", "duration")


@dataclass(frozen=True)
class PlatformRecord:
    """One finished request as the Platform API reports it; times are aware UTC."""

    request_id: str
    endpoint_id: str
    sent_at: datetime
    started_at: datetime
    ended_at: datetime
    status_code: int
    json_input: Any
    json_output: Any

    @property
    def duration(self) -> float:
        return (self.ended_at - self.sent_at).total_seconds()

    @property
    def status(self) -> str:
        if 200 <= self.status_code < 300:
            return "success"
        return "user_error" if 400 <= self.status_code < 500 else "error"


class PlatformError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message}}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PlatformError(400, "validation_error",
                            f"{name}: {text!r} is not an ISO 8601 date or datetime") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _many(query: dict[str, list[str]], name: str) -> list[str]:
    return [part.strip() for value in query.get(name, []) for part in value.split(",")
            if part.strip()]


def _page(cursor: str | None) -> int:
    if cursor is None:
        return 1
    try:
        page = int(base64.b64decode(cursor, validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise PlatformError(400, "validation_error", f"cursor: {cursor!r} is not valid") from None
    if page < 1:
        raise PlatformError(400, "validation_error", f"cursor: {cursor!r} is not valid")
    return page


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise PlatformError(400, "validation_error",
                            f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return limit


def endpoint_ids(query: dict[str, list[str]]) -> list[str]:
    ids = _many(query, "endpoint_id")
    if not ids:
        raise PlatformError(400, "validation_error", "endpoint_id: field required")
    if len(ids) > MAX_ENDPOINTS:
        raise PlatformError(400, "validation_error",
                            f"endpoint_id: at most {MAX_ENDPOINTS} endpoints per request")
    return ids


def billing(balance: float, query: dict[str, list[str]]) -> dict[str, Any]:
    """The 200 body of GET /account/billing; credits only when expanded."""
    body: dict[str, Any] = {"username": "emulator"}
    if "credits" in _many(query, "expand"):
        body["credits"] = {"current_balance": balance, "currency": "USD"}
    return body


def list_requests(records: list[PlatformRecord], query: dict[str, list[str]], now: datetime,
                  payload_ttl: float) -> dict[str, Any]:
    """The 200 body for `query` over `records`; raises PlatformError for bad parameters."""
    wanted = set(endpoint_ids(query))
    request_id = _one(query, "request_id")
    start_text, end_text = _one(query, "start"), _one(query, "end")
    default_start = now - (timedelta(days=90) if request_id else timedelta(hours=24))
    start = _parse_time("start", start_text) if start_text else default_start
    end = _parse_time("end", end_text) if end_text else now
    status = _one(query, "status")
    if status is not None and status not in STATUSES:
        raise PlatformError(400, "validation_error", f"status: one of {', '.join(STATUSES)}")
    sort_by = _one(query, "sort_by") or "ended_at"
    if sort_by not in SORTS:
        raise PlatformError(400, "validation_error", f"sort_by: one of {', '.join(SORTS)}")
    limit, page = _limit(_one(query, "limit")), _page(_one(query, "cursor"))
    payloads = "payloads" in _many(query, "expand")

    matching = [
        r for r in records
        if r.endpoint_id in wanted and start <= r.ended_at < end
        and (request_id is None or r.request_id == request_id)
        and (status is None or r.status == status)
    ]
    if sort_by == "duration":
        matching.sort(key=lambda r: r.duration, reverse=True)
    else:
        matching.sort(key=lambda r: r.ended_at, reverse=True)
    offset = (page - 1) * limit
    window = matching[offset:offset + limit]
    has_more = len(matching) > offset + limit
    items = []
    for record in window:
        item: dict[str, Any] = {
            "request_id": record.request_id,
            "endpoint_id": record.endpoint_id,
            "started_at": iso(record.started_at),
            "sent_at": iso(record.sent_at),
            "ended_at": iso(record.ended_at),
            "status_code": record.status_code,
            "duration": round(record.duration, 3),
        }
        if payloads:
            kept = (now - record.ended_at).total_seconds() < payload_ttl
            item["json_input"] = record.json_input if kept else None
            item["json_output"] = record.json_output if kept else None
        items.append(item)
    next_cursor = base64.b64encode(str(page + 1).encode()).decode() if has_more else None
    return {"items": items, "next_cursor": next_cursor, "has_more": has_more}
