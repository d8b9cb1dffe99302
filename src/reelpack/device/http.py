"""The phone's HTTP connection to the pack service: bounded retries with exponential back-off, error messages
from the service's JSON error body, and byte/request counters.

Network failures and retryable statuses (:data:`RETRY_STATUSES`) are retried ``max_retries`` times in a row,
the back-off doubling from ``backoff_s`` up to ``max_backoff_s`` (simulated when the transport is a virtual-clock
:class:`~reelpack.device.shaper.ShapedTransport`, whose ``sleep`` is used), then ServiceError (``status`` is
``None`` when no response came back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from reelpack.errors import InvalidInputError, ServiceError

__all__ = ["ServiceConnection", "RETRY_STATUSES", "Unreachable", "strip_etag"]

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class Unreachable(Exception):
    """Internal: a request failed at the transport level or with a retryable status (retried)."""


def strip_etag(value: str | None) -> str | None:
    """An ETag header without ``W/`` and quotes."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


class ServiceConnection:
    """An ``httpx.Client`` on ``base_url`` with the retry policy and counters (body bytes received, requests,
    retries). Raises InvalidInputError for a ``base_url`` httpx refuses."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport, *, timeout_s: float, max_retries: int,
                 backoff_s: float, max_backoff_s: float) -> None:  # fmt: skip
        self.base_url = base_url
        self.transport = transport
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.sleep: Callable[[float], None] = getattr(transport, "sleep", time.sleep)
        try:
            self.http = httpx.Client(
                base_url=base_url, transport=transport, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
            )
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise InvalidInputError(f"base_url must be an http(s) URL, got {base_url!r}: {exc}") from None
        self.bytes_received = 0
        self.file_bytes_received = 0
        self.requests = 0
        self.retries = 0

    def close(self) -> None:
        self.http.close()

    def simulated(self) -> float:
        """Seconds charged so far by a virtual-clock transport (0 for a real one)."""
        return float(getattr(self.transport, "simulated_seconds", 0.0))

    def backoff(self, failures: int) -> None:
        self.sleep(min(self.backoff_s * (2.0 ** max(failures - 1, 0)), self.max_backoff_s))

    @staticmethod
    def error_message(response: httpx.Response) -> str:
        """``code: message`` from the service's JSON error body (else the start of the body)."""
        try:
            body = response.json()
            err = body.get("error", {}) if isinstance(body, dict) else {}
            return f"{err.get('code', 'error')}: {err.get('message', '')}".strip()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return response.text[:200]

    def http_error(self, response: httpx.Response, what: str) -> ServiceError:
        return ServiceError(
            f"{what}: the service answered {response.status_code} ({self.error_message(response)})",
            status=response.status_code,
        )

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """A non-streamed request with bounded retries; returns a 2xx/3xx response with its body read."""
        failures, last = 0, "no attempt"
        while True:
            self.requests += 1
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.UnsupportedProtocol as exc:
                raise ServiceError(f"{what}: {exc}") from None
            except httpx.TransportError as exc:
                last, status = f"{type(exc).__name__}: {exc}", None
            else:
                self.bytes_received += len(response.content)
                if response.status_code not in RETRY_STATUSES:
                    if response.status_code >= 400:
                        raise self.http_error(response, what)
                    return response
                last, status = f"HTTP {response.status_code} ({self.error_message(response)})", response.status_code
            failures += 1
            if failures > self.max_retries:
                raise ServiceError(
                    f"{what}: {self.base_url} failed {failures} times in a row (last: {last})", status=status
                )
            self.retries += 1
            self.backoff(failures)

    def get_json(self, url: str, what: str, **kwargs: Any) -> Any:
        """``GET url`` answered with JSON (ServiceError when the body is not JSON)."""
        response = self.request("GET", url, what, **kwargs)
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise ServiceError(f"{what}: the answer is not JSON", status=response.status_code) from None
