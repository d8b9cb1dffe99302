"""Simulated phone networks for the reelpack client: bandwidth, round-trip time and lost connections.

:class:`ShapedTransport` wraps any :class:`httpx.BaseTransport` and makes every
request cost what it would over a :class:`NetworkProfile`: one round trip, plus
the request body over the uplink and the response body over the downlink. With
probability ``profile.loss`` per ``loss_chunk_bytes`` of a response body the
connection is cut: the body stops part-way and reading it raises
:class:`httpx.ReadError`, so a client must resume (``Range`` requests).

With ``clock="virtual"`` (default) nothing sleeps: the transport adds the time
to :attr:`ShapedTransport.simulated_seconds`, so tests and benchmarks run at
full speed and are deterministic (the losses come from ``seed``). With
``clock="real"`` it sleeps instead. Clients call :meth:`ShapedTransport.sleep`
for their retry back-off, so back-off is simulated too.

Only message bodies are counted (``bytes_down``/``bytes_up``); HTTP headers,
TCP/TLS handshakes and slow start are not modelled (one RTT per request stands
in for them).

>>> import httpx
>>> def app(request):
...     return httpx.Response(200, content=b"x" * 125_000)
>>> shaped = ShapedTransport(httpx.MockTransport(app), "1mbit")
>>> with httpx.Client(transport=shaped) as http:
...     len(http.get("http://phone.test/").content)
125000
>>> round(shaped.simulated_seconds, 3), shaped.bytes_down, shaped.requests
(1.1, 125000, 1)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np

from reelpack.errors import InvalidInputError

__all__ = ["NetworkProfile", "PROFILES", "get_profile", "ShapedTransport"]


@dataclass(frozen=True)
class NetworkProfile:
    """A network link as a phone sees it.

    Attributes:
        name: preset name (``"1mbit"``, ``"3g"``, ``"4g"``) or any label.
        down_bps: downlink bandwidth in bits per second (> 0).
        up_bps: uplink bandwidth in bits per second (> 0).
        rtt_s: round-trip time in seconds, paid once per request (>= 0).
        loss: probability in [0, 1) that the connection is cut during each chunk of a response body.
    """

    name: str
    down_bps: float
    up_bps: float
    rtt_s: float
    loss: float = 0.0

    def __post_init__(self) -> None:
        for field, value in (("down_bps", self.down_bps), ("up_bps", self.up_bps)):
            if not np.isfinite(value) or value <= 0:
                raise InvalidInputError(f"NetworkProfile.{field} must be a finite number > 0, got {value!r}")
        if not np.isfinite(self.rtt_s) or self.rtt_s < 0:
            raise InvalidInputError(f"NetworkProfile.rtt_s must be a finite number >= 0, got {self.rtt_s!r}")
        if not 0.0 <= self.loss < 1.0:
            raise InvalidInputError(f"NetworkProfile.loss must be in [0, 1), got {self.loss!r}")


PROFILES: dict[str, NetworkProfile] = {
    "1mbit": NetworkProfile("1mbit", down_bps=1e6, up_bps=1e6, rtt_s=0.100, loss=0.0),
    "3g": NetworkProfile("3g", down_bps=1.6e6, up_bps=0.5e6, rtt_s=0.300, loss=0.01),
    "4g": NetworkProfile("4g", down_bps=12e6, up_bps=5e6, rtt_s=0.060, loss=0.002),
}
"""Presets. Uplink rates of "3g" and "4g" are typical values (the spec fixes only the downlink)."""


def get_profile(profile: str | NetworkProfile) -> NetworkProfile:
    """The preset called ``profile`` (or ``profile`` itself); InvalidInputError names the presets."""
    if isinstance(profile, NetworkProfile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"network profile must be one of {', '.join(sorted(PROFILES))} or a NetworkProfile, got {profile!r}"
        ) from None


class _CutStream(httpx.SyncByteStream):
    """A response body that yields ``data`` in pieces, then raises ReadError when ``cut`` is set."""

    def __init__(self, data: bytes, cut: bool, request: httpx.Request, piece: int) -> None:
        self._data, self._cut, self._request, self._piece = data, cut, request, piece

    def __iter__(self) -> Iterator[bytes]:
        for lo in range(0, len(self._data), self._piece):
            yield self._data[lo : lo + self._piece]
        if self._cut:
            raise httpx.ReadError("connection cut by ShapedTransport (simulated loss)", request=self._request)


class ShapedTransport(httpx.BaseTransport):
    """An httpx transport that charges bandwidth and RTT and drops connections like a phone network.

    Args:
        inner: the transport that really answers (``httpx.HTTPTransport()``, a TestClient's transport, a mock).
        profile: a :class:`NetworkProfile` or a preset name from :data:`PROFILES`.
        clock: ``"virtual"`` (accumulate :attr:`simulated_seconds`, never sleep) or ``"real"`` (sleep).
        seed: seed of the loss draws (explicit, so runs are reproducible).
        loss_chunk_bytes: the unit of loss: each started chunk of a response body is cut with probability
            ``profile.loss``.

    Attributes:
        simulated_seconds: network time charged so far (and back-off passed to :meth:`sleep`), seconds.
        bytes_down: response body bytes delivered (including bytes of cut responses).
        bytes_up: request body bytes sent.
        requests: requests sent (including ones that failed).
        cuts: responses cut by simulated loss.
    """

    def __init__(
        self,
        inner: httpx.BaseTransport,
        profile: str | NetworkProfile,
        *,
        clock: str = "virtual",
        seed: int = 0,
        loss_chunk_bytes: int = 16384,
    ) -> None:
        if clock not in ("virtual", "real"):
            raise InvalidInputError(f"clock must be 'virtual' or 'real', got {clock!r}")
        if not isinstance(loss_chunk_bytes, int) or loss_chunk_bytes < 1:
            raise InvalidInputError(f"loss_chunk_bytes must be an int >= 1, got {loss_chunk_bytes!r}")
        self.inner = inner
        self.profile = get_profile(profile)
        self.clock = clock
        self.loss_chunk_bytes = loss_chunk_bytes
        self._rng = np.random.default_rng(seed)
        self.simulated_seconds = 0.0
        self.bytes_down = 0
        self.bytes_up = 0
        self.requests = 0
        self.cuts = 0

    # ---- clock ---------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``: added to :attr:`simulated_seconds` (virtual clock) or slept (real clock)."""
        seconds = max(0.0, float(seconds))
        self.simulated_seconds += seconds
        if self.clock == "real" and seconds:
            time.sleep(seconds)

    # ---- transport -----------------------------------------------------------------------------
    def _cut_at(self, n: int) -> int | None:
        """Byte offset where a body of ``n`` bytes is cut, or None when it arrives whole."""
        loss = self.profile.loss
        if loss <= 0 or n == 0:
            return None
        n_chunks = -(-n // self.loss_chunk_bytes)
        lost = np.flatnonzero(self._rng.random(n_chunks) < loss)
        if lost.size == 0:
            return None
        start = int(lost[0]) * self.loss_chunk_bytes
        return start + int(self._rng.integers(0, min(self.loss_chunk_bytes, n - start)))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through ``inner``; charge RTT and bandwidth; maybe cut the response body."""
        body_up = request.read()
        self.requests += 1
        self.bytes_up += len(body_up)
        # The RTT is paid even when the connection fails (a refused connection costs a round trip).
        self.sleep(self.profile.rtt_s + 8.0 * len(body_up) / self.profile.up_bps)
        response = self.inner.handle_request(request)
        headers = response.headers
        try:
            raw = b"".join(response.iter_raw())
        except httpx.StreamConsumed:  # a transport (httpx.MockTransport) that hands back a read response
            raw = response.content
            headers = httpx.Headers({k: v for k, v in headers.items() if k.lower() != "content-encoding"})
        finally:
            response.close()
        cut = self._cut_at(len(raw))
        data = raw if cut is None else raw[:cut]
        if cut is not None:
            self.cuts += 1
        self.bytes_down += len(data)
        self.sleep(8.0 * len(data) / self.profile.down_bps)
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=_CutStream(data, cut is not None, request, 65536),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        self.inner.close()
