"""Where a catalog build's encode tasks run: this process, or the workers of a Dask cluster.

The build pipeline (:mod:`reelpack.catalog.pipeline`) is the same code either way; it only asks its executor to
:meth:`~Executor.warm` the workers and to :meth:`~Executor.map_unordered` the encode task over the shard jobs.

* :class:`InProcessExecutor`: runs the tasks one after the other in this process (``build_catalog``).
* :class:`DaskExecutor`: a ``distributed.Client`` on a new LocalCluster (``local``: processes, ``threads``: in
  this process) or on a running scheduler (``tcp://host:8786``); ``build-catalog --scheduler``. Dask is the
  ``[scale]`` extra and is imported only when such an executor starts.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

from reelpack.errors import InvalidInputError, ServiceError
from reelpack.util.extras import require

__all__ = ["Executor", "InProcessExecutor", "DaskExecutor", "SCHEDULER_HELP"]

_ADDRESS_RE = re.compile(r"(tcp|tls|ucx|ws|wss|inproc)://\S+")
SCHEDULER_HELP = "'local', 'threads' or an address like tcp://host:8786"
_WHAT = "build-catalog --scheduler"


class Executor:
    """Runs a build's tasks. Use as a context manager: entering starts (or connects to) the workers, leaving
    stops them. ``distributed`` is true when tasks run in other processes or threads through a scheduler (their
    results then go through shard files in a work folder)."""

    distributed: bool = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        return None

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once on every worker before the tasks (nothing to do in-process)."""

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:  # pragma: no cover
        """Yield ``fn(job)`` for every job, in the order the tasks finish; a task's error is raised here."""
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Runs every task in this process, in order."""

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        for job in jobs:
            yield fn(job)


class DaskExecutor(Executor):
    """Runs the tasks on Dask workers (the ``[scale]`` extra).

    Args:
        scheduler: ``"local"`` (a new LocalCluster of ``n_workers`` processes, one thread each), ``"threads"`` (a
            LocalCluster of threads in this process) or a scheduler address (``tcp://host:8786``).
        n_workers: workers of a local cluster (ignored for an address).
        connect_timeout: seconds to reach the scheduler (and, for an address, to see a worker).

    Raises (on entering):
        MissingExtraError: dask or distributed is not installed. InvalidInputError: a bad ``scheduler``.
        ServiceError: the cluster does not start, the scheduler is unreachable or has no workers.
    """

    distributed = True

    def __init__(self, scheduler: str, n_workers: int = 2, connect_timeout: float = 10.0) -> None:
        if not isinstance(scheduler, str) or not (scheduler in ("local", "threads") or _ADDRESS_RE.fullmatch(scheduler)):
            raise InvalidInputError(f"scheduler must be {SCHEDULER_HELP}, got {scheduler!r}")
        self.scheduler = scheduler
        self.n_workers = int(n_workers)
        self.connect_timeout = float(connect_timeout)
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> Self:
        require("dask", "scale", _WHAT)
        distributed = require("distributed", "scale", _WHAT)
        if self.scheduler in ("local", "threads"):
            self._start_local(distributed)
        else:
            self._connect(distributed)
        return self

    def _start_local(self, distributed: Any) -> None:
        env = {k: "1" for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        kwargs: dict[str, Any] = {"n_workers": self.n_workers, "threads_per_worker": 1, "dashboard_address": None,
                                  "silence_logs": logging.ERROR}  # fmt: skip
        if self.scheduler == "local":
            kwargs.update(processes=True, memory_limit=0, env=env)
        else:
            kwargs.update(processes=False)
        try:
            self._cluster = distributed.LocalCluster(**kwargs)
            self._client = distributed.Client(self._cluster, timeout=self.connect_timeout)
        except Exception as exc:  # noqa: BLE001  any start failure becomes a typed error
            self._close()
            raise ServiceError(f"cannot start a local Dask cluster of {self.n_workers} worker(s): {exc}") from None

    def _connect(self, distributed: Any) -> None:
        t = self.connect_timeout
        try:
            self._client = distributed.Client(self.scheduler, timeout=t)
        except Exception as exc:  # noqa: BLE001  OSError, TimeoutError, CommClosedError ...
            raise ServiceError(f"cannot reach the Dask scheduler at {self.scheduler} within {t:g} s: {exc}") from None
        try:
            self._client.wait_for_workers(1, timeout=t)
        except Exception:  # noqa: BLE001
            self._close()
            raise ServiceError(f"the Dask scheduler at {self.scheduler} has no workers (waited {t:g} s)") from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
        self._client = self._cluster = None

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """``client.run(fn, *args)`` on every worker; a failure (a worker without reelpack, a lost worker ...)
        becomes a :class:`ServiceError`."""
        try:
            self._client.run(fn, *args)
        except Exception as exc:  # noqa: BLE001  a worker without reelpack, a lost worker ...
            raise ServiceError(f"the Dask workers could not load the fitted codecs: {type(exc).__name__}: {exc}") from None

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        distributed = require("distributed", "scale", _WHAT)
        futures = self._client.map(fn, list(jobs), pure=False)
        try:
            for fut in distributed.as_completed(futures):
                yield fut.result()
        finally:
            for f in futures:
                f.release()
