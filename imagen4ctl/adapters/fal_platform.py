"""fal's Platform API: the requests of an endpoint, with their payloads, after fal's queue
has forgotten them. fix-pending reads it to recover a result or find a lost submission."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx

from imagen4ctl.adapters.fal import detail_text, transport_reason
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalError, FalUnavailable


class PlatformRefused(FalError):
    """fal's Platform API would not answer: the key (401), its permissions (403), or no such
    route at FAL_PLATFORM_API_URL (404). A failure to ask, never a verdict on a request."""


@dataclass(frozen=True)
class PlatformRequest:
    """One finished request as fal's Platform API lists it (payloads expanded)."""

    request_id: str
    endpoint_id: str
    status_code: int | None
    sent_at: str | None
    ended_at: str | None
    json_input: Any
    json_output: Any

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def platform_requests(
    base_url: str,
    key: str,
    endpoint: str,
    deadline: Deadline,
    *,
    request_id: str | None = None,
    start: str | None = None,
    end: str | None = None,
    max_pages: int = 20,
    trusted_hosts: frozenset[str] = frozenset(),
    client: httpx.Client | None = None,
) -> Iterator[PlatformRequest]:
    """Requests of `endpoint` from fal's Platform API (GET /models/requests/by-endpoint with
    expand=payloads), newest first, page by page, every call bounded by `deadline`."""
    params: dict[str, str | int] = {"endpoint_id": endpoint, "expand": "payloads", "limit": 100}
    if request_id is not None:
        params["request_id"] = request_id
    if start is not None:
        params["start"] = start
    if end is not None:
        params["end"] = end
    url, host = _platform_url(base_url, "/models/requests/by-endpoint", trusted_hosts)
    # A caller making many lookups passes its client: a new one loads the CA bundle each time.
    http = client or httpx.Client(follow_redirects=False)
    auth = {"Authorization": f"Key {key}"}
    try:
        for _ in range(max_pages):
            try:
                response = http.get(url, params=params, headers=auth,
                                    timeout=httpx.Timeout(deadline.bound(30.0)))
            except httpx.TransportError as e:
                raise FalUnavailable(f"cannot reach fal's Platform API at {host}: "
                                     f"{transport_reason(e)}") from e
            if response.status_code in {401, 403}:
                raise PlatformRefused(
                    f"fal's Platform API refused to list requests of {endpoint} "
                    f"({response.status_code}: {_platform_message(response)})",
                    hint="A key with API scope can list requests of any endpoint; check the "
                    "key at fal.ai/dashboard/keys.")
            if response.status_code == 404:
                # The listing answers "not found" with an empty list; a 404 is the route's.
                raise PlatformRefused(
                    f"fal's Platform API has no request listing at {url} (404)",
                    hint="Check FAL_PLATFORM_API_URL (default https://api.fal.ai/v1).")
            if response.status_code >= 400:
                raise FalUnavailable(f"fal's Platform API answered {response.status_code}: "
                                     f"{_platform_message(response)}")
            try:
                data = response.json()
                items = data["items"]
            except (ValueError, KeyError, TypeError) as e:
                raise FalError("fal's Platform API sent a malformed answer") from e
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("request_id"), str):
                    yield PlatformRequest(
                        item["request_id"], str(item.get("endpoint_id", endpoint)),
                        item.get("status_code"), item.get("sent_at"), item.get("ended_at"),
                        item.get("json_input"), item.get("json_output"))
            cursor = data.get("next_cursor")
            if not data.get("has_more") or not cursor:
                return
            params["cursor"] = cursor
    finally:
        if client is None:
            http.close()


def _platform_url(base_url: str, path: str, trusted_hosts: frozenset[str]) -> tuple[str, str]:
    """`path` at FAL_PLATFORM_API_URL, and its host: https only (the key goes with every
    call), but for the hosts trusted as fal's own (an emulator)."""
    url = f"{base_url.rstrip('/')}{path}"
    parsed = httpx.URL(url)
    if parsed.scheme != "https" and parsed.host not in trusted_hosts:
        raise FalError(f"refusing FAL_PLATFORM_API_URL {base_url!r}: only https is accepted")
    return url, parsed.host


def _platform_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return detail_text(response.text)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return detail_text(data["error"].get("message", ""))
    if isinstance(data, dict) and "detail" in data:
        return detail_text(data["detail"])
    return detail_text(data)


class PlatformAPI:
    """fal's Platform API for one key; one client for every look-up of a run (thread-safe,
    the CA bundle loaded once), made at the first."""

    def __init__(self, base_url: str, key: str, *, trusted_hosts: frozenset[str]) -> None:
        self.base_url = base_url
        self.key = key
        self.trusted_hosts = trusted_hosts

    @cached_property
    def _http(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False)

    def requests(
        self,
        endpoint: str,
        deadline: Deadline,
        *,
        request_id: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Iterator[PlatformRequest]:
        return platform_requests(self.base_url, self.key, endpoint, deadline,
                                 request_id=request_id, start=start, end=end,
                                 trusted_hosts=self.trusted_hosts, client=self._http)


@dataclass(frozen=True)
class AccountBalance:
    balance: float
    currency: str


def account_balance(base_url: str, key: str, *, timeout: float,
                    trusted_hosts: frozenset[str] = frozenset()) -> AccountBalance:
    """The account's credit balance (GET /account/billing?expand=credits): read-only, free.

    fal documents no "locked" flag; a balance of 0 or less is the one sign of a lock visible
    here, and a positive one does not rule a lock out (fal-ai/fal issue 1147). 401/403 (a key
    without billing permission) raise PlatformRefused, anything else unusable FalError.
    """
    url, host = _platform_url(base_url, "/account/billing", trusted_hosts)
    try:
        response = httpx.get(url, params={"expand": "credits"},
                             headers={"Authorization": f"Key {key}"},
                             timeout=httpx.Timeout(timeout), follow_redirects=False)
    except httpx.TransportError as e:
        raise FalUnavailable(f"cannot reach fal's Platform API at {host}: "
                             f"{transport_reason(e)}") from e
    if response.status_code in {401, 403}:
        raise PlatformRefused(f"the key has no billing permission ({response.status_code}: "
                              f"{_platform_message(response)})")
    if response.status_code >= 400:
        raise FalUnavailable(f"fal's Platform API answered {response.status_code} at {url}")
    try:
        credits = response.json()["credits"]
        return AccountBalance(float(credits["current_balance"]),
                              str(credits.get("currency") or ""))
    except (ValueError, KeyError, TypeError) as e:
        raise FalError("fal's Platform API sent a billing answer without a balance") from e
