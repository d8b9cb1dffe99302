"""Encoded parts of a catalog build: the block-by-block encode task and the shard files that keep its output.

The rows of the id-sorted catalog are cut into shards of whole blocks (:class:`ShardJob`). The task
:func:`encode_shard` runs wherever the build's executor puts it (this process, or a Dask worker): it encodes its
rows **block by block** (:func:`encode_blocks`: one ``codec.encode`` call per block of ``items_per_block`` rows,
so batch-dependent float rounding cannot make two builds differ) and either hands the encoded :class:`Part` back
(in-process builds) or writes it to a shard file in the work folder, which a rerun verifies and keeps (resume).
:class:`EncodedShards` then yields the parts in row order, from memory or from the mapped shard files.

Shard file (``shard-NNNNNN.rps``, little-endian; the fitted codecs are cached in the same container as
``codecs.rps``)::

    0        8  magic b"RPSHARD\\x01"
    8        4  u32 H: length of the JSON header
    12       H  JSON header (UTF-8): format, kind, fingerprint, shard, lo, hi, d, bytes_per_vector [L],
                block_sums [L][blocks] (float64 sums of the per-item squared errors of each block, exact in JSON),
                sections [[name, offset, length], ...]
    ...         sections, each at an 8-byte aligned offset: codes{l} uint8 [m, B_l], err{l} float64 [m]
                (squared reconstruction error of each item), vectors float32 [m, d] (when arrays are kept)
    end-4    4  u32 CRC32C of every byte before it

A shard file's fingerprint covers (codec bytes, input identity, shard range, items per block, vectors kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.errors import StoreError
from reelpack.format import crc32c
from reelpack.util.atomic import atomic_path

__all__ = [
    "SHARD_MAGIC",
    "SHARD_FORMAT",
    "Part",
    "ShardJob",
    "EncodedShards",
    "encode_blocks",
    "encode_shard",
    "warm_worker",
    "verify_shard_file",
    "shard_fingerprint",
    "codec_digest",
    "cached_codecs",
]

SHARD_MAGIC = b"RPSHARD\x01"
SHARD_FORMAT = 1
_MAX_HEADER = 64 << 20


# ================================================================================================
# Block-by-block encoding
# ================================================================================================
def encode_blocks(
    codecs: Sequence[Any], X: np.ndarray, ipb: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[list[float]]]:
    """Encode rows block by block: X float32 [m, d] whose first row starts a block of ``ipb`` rows.

    Every block is one ``codec.encode`` call (and one ``decode`` for its errors) in every build, so the codes
    and errors do not depend on how blocks are grouped into shards.

    Returns:
        codes: per layer uint8 [m, B]; err: per layer float64 [m], ``||x - decode(code)||^2``;
        block_sums: per layer the float64 sum of ``err`` over each block (Python floats).
    """
    m = X.shape[0]
    codes = [np.empty((m, c.bytes_per_vector), np.uint8) for c in codecs]
    err = [np.empty(m, np.float64) for _ in codecs]
    sums: list[list[float]] = [[] for _ in codecs]
    for lo in range(0, m, ipb):
        xb = X[lo : lo + ipb]
        x64 = xb.astype(np.float64)
        for i, c in enumerate(codecs):
            cb = c.encode(xb)
            e = ((x64 - c.decode(cb).astype(np.float64)) ** 2).sum(axis=1)
            codes[i][lo : lo + ipb] = cb
            err[i][lo : lo + ipb] = e
            sums[i].append(float(e.sum()))
    return codes, err, sums



@dataclass
class Part:
    """Encoded rows ``[lo, hi)``: per layer codes uint8 [m, B] and errors float64 [m]; optional vectors
    float32 [m, d]."""

    lo: int
    hi: int
    codes: list[np.ndarray]
    err: list[np.ndarray]
    vectors: np.ndarray | None = None


# ================================================================================================
# Shard files
# ================================================================================================
def _pad8(x: int) -> int:
    return (x + 7) & ~7


def _write_container(path: Path, header: dict[str, Any], sections: Sequence[tuple[str, np.ndarray | bytes]]) -> int:
    """Write a shard-format file atomically (temp file, fsync, rename); return its size in bytes."""
    names = [s[0] for s in sections]
    bodies = [memoryview(np.ascontiguousarray(b)).cast("B") if isinstance(b, np.ndarray) else memoryview(b)
              for _, b in sections]  # fmt: skip
    # the offsets depend on the header length, which holds the offsets: iterate to a fixed point
    head_len = 0
    while True:
        offset = _pad8(12 + head_len)
        table = []
        for name, body in zip(names, bodies):
            table.append([name, offset, body.nbytes])
            offset = _pad8(offset + body.nbytes)
        hdr = json.dumps({**header, "sections": table}, sort_keys=True, allow_nan=False).encode()
        if len(hdr) == head_len:
            break
        head_len = len(hdr)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(SHARD_MAGIC + struct.pack("<I", len(hdr)) + hdr)
        crc = crc32c(SHARD_MAGIC + struct.pack("<I", len(hdr)) + hdr)
        pos = 12 + len(hdr)
        for (_, off, _length), body in zip(table, bodies):
            pad = b"\0" * (off - pos)
            fh.write(pad)
            crc = _crc_extend(crc, pad)
            fh.write(body)
            crc = _crc_extend(crc, body)
            pos = off + body.nbytes
        fh.write(struct.pack("<I", crc))
    return pos + 4


def _crc_extend(crc: int, data: Any) -> int:
    import crc32c as _crc32c

    return _crc32c.crc32c(data, crc) if len(data) else crc


@contextlib.contextmanager
def _open_container(
    path: Path, kind: str, fingerprint: str
) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]] | None]:
    """Map a shard-format file and yield (header, sections as uint8 views), or ``None`` when it does not verify.

    Verifies magic, header, kind, fingerprint, exact length and the CRC32C of the whole file.
    """
    try:
        fh = open(path, "rb")
    except OSError:
        yield None
        return
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 16:
            yield None
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            buf = np.frombuffer(mm, np.uint8)
            parsed = _parse_container(buf, size, kind, fingerprint)
            yield parsed
        finally:
            buf = None  # release the exported buffer before closing the map
            parsed = None
            with contextlib.suppress(BufferError):
                mm.close()


def _parse_container(buf: np.ndarray, size: int, kind: str, fingerprint: str) -> tuple[dict, dict] | None:
    if buf[:8].tobytes() != SHARD_MAGIC:
        return None
    (hlen,) = struct.unpack("<I", buf[8:12].tobytes())
    if hlen > min(_MAX_HEADER, size - 16):
        return None
    try:
        header = json.loads(buf[12 : 12 + hlen].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("kind") != kind or header.get("fingerprint") != fingerprint:
        return None
    if header.get("format") != SHARD_FORMAT or not isinstance(header.get("sections"), list):
        return None
    sections: dict[str, np.ndarray] = {}
    end = 12 + hlen
    for s in header["sections"]:
        if not (isinstance(s, list) and len(s) == 3 and isinstance(s[0], str)
                and all(isinstance(v, int) and v >= 0 for v in s[1:])):  # fmt: skip
            return None
        if s[1] < end or s[1] + s[2] > size - 4:
            return None
        sections[s[0]] = buf[s[1] : s[1] + s[2]]
        end = s[1] + s[2]
    if end + 4 != size:
        return None
    (stored,) = struct.unpack("<I", buf[size - 4 : size].tobytes())
    if crc32c(buf[: size - 4]) != stored:
        return None
    return header, sections


def verify_shard_file(path: str | os.PathLike[str], fingerprint: str) -> bool:
    """True when ``path`` is a complete shard file made for ``fingerprint`` (length, header and CRC32C check)."""
    with _open_container(Path(path), "shard", fingerprint) as parsed:
        return parsed is not None


def shard_fingerprint(codecs_digest: str, source_identity: dict[str, Any], lo: int, hi: int, ipb: int,
                      vectors: bool) -> str:  # fmt: skip
    """Hex sha256 naming what a shard file holds: codecs (:func:`codec_digest`), input, rows ``[lo, hi)``,
    items per block and whether the vectors are kept."""
    key = {"format": SHARD_FORMAT, "codecs": codecs_digest, "source": source_identity, "lo": lo, "hi": hi,
           "items_per_block": ipb, "vectors": vectors}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def codec_digest(codec_bytes: Sequence[bytes]) -> str:
    """Hex sha256 of the serialised codecs (each length-prefixed), layer 0 first."""
    h = hashlib.sha256()
    for b in codec_bytes:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()




# ================================================================================================
# The encode task (runs in this process or on a Dask worker)
# ================================================================================================
@dataclass(frozen=True)
class ShardJob:
    """What the encode task needs to make (or verify) one shard: rows ``[lo, hi)`` of ``source``.

    ``path`` is the shard file (with its ``fingerprint``), or ``None`` when the encoded :class:`Part` goes back
    to the caller instead (an in-process build without a work folder).
    """

    shard: int
    lo: int
    hi: int
    path: str | None
    fingerprint: str
    codec_bytes: tuple[bytes, ...]
    source: Any
    ipb: int
    vectors: bool


_CODEC_CACHE: dict[str, list[Any]] = {}


def _worker_codecs(codec_bytes: Sequence[bytes]) -> list[Any]:
    """The codecs of ``codec_bytes``, deserialised once per process (the last set is cached)."""
    from reelpack.codecs import codec_from_bytes

    key = codec_digest(codec_bytes)
    if key not in _CODEC_CACHE:
        _CODEC_CACHE.clear()
        _CODEC_CACHE[key] = [codec_from_bytes(b) for b in codec_bytes]
    return _CODEC_CACHE[key]


def warm_worker(codec_bytes: Sequence[bytes], d: int) -> int:
    """Worker set-up run once per worker before the shards: deserialise the codecs into the cache and encode
    one row (loads faiss/numba code), so the encode phase measures the shards' work only. Returns the pid."""
    for c in _worker_codecs(codec_bytes):
        c.encode(np.zeros((1, d), np.float32))
    return os.getpid()


def _worker_name() -> str:
    """The Dask worker's address, or ``"local"`` outside a worker (distributed is never imported here)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return "local"
    try:
        return distributed.get_worker().address
    except ValueError:
        return "local"


def encode_shard(job: ShardJob) -> dict[str, Any]:
    """The encode task: encode the job's rows block by block; keep a shard file that verifies, else (re)write it.

    Returns:
        ``{"shard", "status": "verified" | "encoded" | "rebuilt", "rows", "bytes", "seconds", "worker",
        "pid", "vmhwm_kb"}`` (``vmhwm_kb``: the process's peak RSS so far, from /proc; ``bytes``: the shard
        file's size, 0 without a file), plus ``"part"`` and ``"block_sums"`` when ``job.path`` is ``None``.
    """
    from reelpack.util.memory import status_kb

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    size = 0
    if job.path is None:
        codecs = _worker_codecs(job.codec_bytes)
        X = job.source.rows(job.lo, job.hi)
        codes, err, sums = encode_blocks(codecs, X, job.ipb)
        extra = {"part": Part(job.lo, job.hi, codes, err, X if job.vectors else None), "block_sums": sums}
        status = "encoded"
    else:
        path = Path(job.path)
        existed = path.exists()
        if existed and verify_shard_file(path, job.fingerprint):
            status = "verified"
        else:
            codecs = _worker_codecs(job.codec_bytes)
            X = job.source.rows(job.lo, job.hi)
            codes, err, sums = encode_blocks(codecs, X, job.ipb)
            sections: list[tuple[str, np.ndarray]] = [(f"codes{i}", c) for i, c in enumerate(codes)]
            sections += [(f"err{i}", e) for i, e in enumerate(err)]
            if job.vectors:
                sections.append(("vectors", X))
            header = {"format": SHARD_FORMAT, "kind": "shard", "fingerprint": job.fingerprint, "shard": job.shard,
                      "lo": job.lo, "hi": job.hi, "d": int(X.shape[1]),
                      "bytes_per_vector": [int(c.shape[1]) for c in codes], "block_sums": sums}  # fmt: skip
            del X
            _write_container(path, header, sections)
            status = "rebuilt" if existed else "encoded"
        size = path.stat().st_size
    return {"shard": job.shard, "status": status, "rows": job.hi - job.lo, "bytes": size,
            "seconds": time.perf_counter() - t0, "worker": _worker_name(), "pid": os.getpid(),
            "vmhwm_kb": status_kb("VmHWM"), **extra}  # fmt: skip


# ================================================================================================
# Reading the encoded parts back (driver)
# ================================================================================================
class EncodedShards:
    """The encoded parts of a build in row order: each job's :class:`Part` from the task's result (in memory) or
    from its mapped shard file.

    Args:
        jobs: the jobs, in row order. results: :func:`encode_shard`'s result of every job, by shard number.
        layers: the number of codecs. d: the vector dimension.
    """

    def __init__(self, jobs: Sequence[ShardJob], results: dict[int, dict[str, Any]], layers: int, d: int) -> None:
        self.jobs = list(jobs)
        self._results = results
        self.layers = layers
        self.d = d

    def block_sums(self) -> list[list[float]]:
        """Per layer the float64 sum of the squared errors of every block, in row order (Python floats)."""
        sums: list[list[float]] = [[] for _ in range(self.layers)]
        for job in self.jobs:
            if job.path is None:
                per_layer = self._results[job.shard]["block_sums"]
            else:
                with _open_container(Path(job.path), "shard", job.fingerprint) as parsed:
                    if parsed is None:
                        raise StoreError(
                            f"shard {job.shard} ({job.path}) failed its check after encoding; rerun to rebuild it"
                        )
                    per_layer = parsed[0]["block_sums"]
            for layer, s in enumerate(per_layer):
                sums[layer].extend(float(x) for x in s)
        return sums

    def parts(self, *, vectors: bool = False) -> Iterator[Part]:
        """Yield every job's part in row order (``vectors``: with its rows float32 [m, d]); a shard file is mapped
        only while its part is in use. :class:`StoreError` when a shard file fails its check."""
        for job in self.jobs:
            if job.path is None:
                yield self._results[job.shard]["part"]
            else:
                yield from self._read_shard(job, vectors=vectors)

    def _read_shard(self, job: ShardJob, *, vectors: bool) -> Iterator[Part]:
        assert job.path is not None
        with _open_container(Path(job.path), "shard", job.fingerprint) as parsed:
            if parsed is None:
                raise StoreError(
                    f"shard {job.shard} ({job.path}) failed its check while assembling the packs; "
                    "rerun the same command to rebuild it"
                )
            header, sec = parsed
            m = job.hi - job.lo
            bpv = header["bytes_per_vector"]
            try:
                codes = [sec[f"codes{i}"].reshape(m, bpv[i]) for i in range(self.layers)]
                err = [sec[f"err{i}"].view(np.float64) for i in range(self.layers)]
                vec = sec["vectors"].view(np.float32).reshape(m, self.d) if vectors else None
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise StoreError(f"shard {job.shard} ({job.path}) has an unexpected layout: {exc}") from None
            yield Part(job.lo, job.hi, codes, err, vec)


# ================================================================================================
# The fitted codecs, cached in the work folder
# ================================================================================================
def cached_codecs(work_dir: Path, fit_key: str, make: Callable[[], list[Any]]) -> tuple[list[Any], bool]:
    """The fitted codecs from ``work_dir/codecs.rps`` when made for ``fit_key``, else ``make()`` (then saved).

    Returns:
        (codecs, whether they came from the cache).
    """
    from reelpack.codecs import codec_from_bytes
    from reelpack.errors import SerializationError

    path = work_dir / "codecs.rps"
    with _open_container(path, "codecs", fit_key) as parsed:
        if parsed is not None:
            _, sec = parsed
            try:
                return [codec_from_bytes(sec[f"codec{i}"].tobytes()) for i in range(len(sec))], True
            except (KeyError, SerializationError):
                pass
    codecs = make()
    _write_container(path, {"format": SHARD_FORMAT, "kind": "codecs", "fingerprint": fit_key},
                     [(f"codec{i}", c.to_bytes()) for i, c in enumerate(codecs)])  # fmt: skip
    return codecs, False
