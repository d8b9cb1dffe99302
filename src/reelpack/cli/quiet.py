"""Keep third-party noise out of a command's output: Python warnings, chatty loggers, and native stderr lines.

:func:`quiet_third_party` is what ``reelpack demo`` runs under. reelpack's own warnings (classes defined in
``reelpack.*``) still show; other libraries' warnings are dropped; a few loggers are raised to ERROR; and lines
that C++ libraries print straight to file descriptor 2 and that match :data:`NATIVE_NOISE` (faiss's k-means
"please provide at least ... training points", printed once per sub-quantiser and OPQ iteration) are filtered
out while every other stderr line passes through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

__all__ = ["NATIVE_NOISE", "NOISY_LOGGERS", "filtered_native_stderr", "quiet_third_party"]

#: Lines a native library writes to fd 2 that carry no information for a user of reelpack.
NATIVE_NOISE = re.compile(rb"^WARNING clustering \d+ points to \d+ centroids: please provide at least \d+ training points")
_NOISE_PREFIX = b"WARNING clustering "

#: Loggers set to ERROR while quiet.
NOISY_LOGGERS = ("numba", "faiss", "torch", "distributed", "matplotlib", "onnxruntime", "httpx")


def _could_become_noise(partial: bytes) -> bool:
    n = min(len(partial), len(_NOISE_PREFIX))
    return partial[:n] == _NOISE_PREFIX[:n]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pump(read_fd: int, out_fd: int, pattern: re.Pattern[bytes]) -> None:
    """Copy ``read_fd`` to ``out_fd`` line by line, dropping lines that match ``pattern``."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        keep = b"".join(line + b"\n" for line in lines if not pattern.match(line))
        if pending and not _could_become_noise(pending):  # a prompt or progress text without newline: pass it on
            keep, pending = keep + pending, b""
        if keep:
            with contextlib.suppress(OSError):
                _write_all(out_fd, keep)
    if pending and not pattern.match(pending):
        with contextlib.suppress(OSError):
            _write_all(out_fd, pending)


@contextlib.contextmanager
def filtered_native_stderr(pattern: re.Pattern[bytes] = NATIVE_NOISE) -> Iterator[None]:
    """While inside, lines written to file descriptor 2 (by C/C++ code too) that match ``pattern`` are dropped.

    fd 2 is pointed at a pipe read by a thread that forwards every other line to the original stderr; on exit
    fd 2 is restored. Where fd 2 cannot be redirected, nothing is filtered.
    """
    try:
        os.fstat(2)
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        os.close(saved)
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved, pattern), name="reelpack-stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end (unless a child process inherited it)
        pump.join(timeout=5.0)
        if not pump.is_alive():  # else a child process still holds the pipe: the thread keeps forwarding it
            os.close(read_fd)
            os.close(saved)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Drop other libraries' warnings, raise :data:`NOISY_LOGGERS` to ERROR and filter :data:`NATIVE_NOISE`."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        warnings.simplefilter("default")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            if getattr(category, "__module__", "").startswith("reelpack"):
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            with filtered_native_stderr():
                yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
