"""Sharded, resumable catalog builds on dask.distributed (``reelpack build-catalog --scheduler ...``).

A catalog too large for one process is built in four steps (docs/SCALE.md):

1. **fit** (driver): every codec is fitted once on a seeded sample of the id-sorted catalog
   (:func:`fit_sample_rows`; the whole catalog when it has at most ``fit_sample`` rows). The single-process
   :func:`~reelpack.catalog.store.build_catalog` uses the same rule, so both builds fit the same codecs.
2. **encode** (workers): the id-sorted rows are cut into shards of ``shard_size`` rows (a multiple of the items
   per block). Each shard is read (a ``.npy`` memory map, sliced) or generated (:class:`SyntheticSource`, from
   ``(seed, chunk index)``) on its worker, encoded **block by block** (one ``codec.encode`` call per block of
   ``items_per_block`` rows, in both builds, so batch-dependent float rounding cannot make them differ) and
   written to the work folder as one shard file (layout below) with a CRC32C and a fingerprint of
   (codec bytes, input identity, shard range, items per block).
3. **assemble** (driver): ``pack.rpk`` and ``layer0.rpk`` are streamed block by block from the shard files
   through :class:`~reelpack.format.PackWriter` (the float vectors are never all in the driver: one shard at
   a time), and ``vectors.npy`` is streamed the same way.
4. **publish**: the store's staging / rename / manifest protocol (:mod:`reelpack.catalog.store`).

Resuming: a rerun with the same arguments and work folder skips every shard whose file verifies (magic, length,
fingerprint, CRC32C) and rebuilds the others (missing, truncated, corrupt, or made from other codecs or input).
The fitted codecs are cached in the work folder too (``codecs.rps``), so a rerun does not re-fit.

Shard file (``shard-NNNNNN.rps``, little-endian)::

    0        8  magic b"RPSHARD\\x01"
    8        4  u32 H: length of the JSON header
    12       H  JSON header (UTF-8): format, kind, fingerprint, shard, lo, hi, d, bytes_per_vector [L],
                block_sums [L][blocks] (float64 sums of the per-item squared errors of each block, exact in JSON),
                sections [[name, offset, length], ...]
    ...         sections, each at an 8-byte aligned offset: codes{l} uint8 [m, B_l], err{l} float64 [m]
                (squared reconstruction error of each item), vectors float32 [m, d] (when arrays are kept)
    end-4    4  u32 CRC32C of every byte before it

The reference error stored in a pack's metadata (``reference_mse``, used by delta builds) is
``math.fsum(block sums) / n``: independent of how the blocks are grouped into shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mmap
import os
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.util.atomic import atomic_path
from reelpack.errors import (
    DataFormatError,
    DataNotFoundError,
    InvalidInputError,
    ServiceError,
    StoreError,
)
from reelpack.format.container import crc32c

__all__ = [
    "DEFAULT_FIT_SAMPLE",
    "DEFAULT_SHARD_SIZE",
    "FIT_RUN",
    "SYNTH_CHUNK",
    "NpySource",
    "SyntheticSource",
    "ArraySource",
    "fit_sample_rows",
    "fit_codecs",
    "encode_blocks",
    "write_packs",
    "build_catalog_sharded",
    "verify_shard_file",
]

DEFAULT_FIT_SAMPLE = 131_072
"""Rows the codecs are fitted on (all rows of a smaller catalog)."""
FIT_RUN = 256
"""The fit sample is made of runs of this many consecutive id-sorted rows (cheap to read or generate)."""
DEFAULT_SHARD_SIZE = 262_144
"""Rows per shard (rounded up to a multiple of the items per block)."""
SYNTH_CHUNK = 1024
"""Rows per independently seeded chunk of :class:`SyntheticSource`."""
SHARD_MAGIC = b"RPSHARD\x01"
SHARD_FORMAT = 1
_MAX_HEADER = 64 << 20

ProgressFn = Callable[[str, int, int], None]


# ================================================================================================
# Sources: the id-sorted catalog, readable by row range on any worker
# ================================================================================================
class _Source:
    """Base of the catalog sources: ``n`` rows of dimension ``d`` in id order, readable by row range."""

    n: int
    d: int

    def rows(self, lo: int, hi: int) -> np.ndarray:  # pragma: no cover - abstract
        """Rows ``[lo, hi)`` of the id-sorted catalog: float32 [hi - lo, d], C-contiguous, finite."""
        raise NotImplementedError

    def ids(self) -> np.ndarray:  # pragma: no cover - abstract
        """Sorted unique item ids int64 [n]."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-able description that changes whenever the rows could change (part of the shard fingerprint)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SyntheticSource(_Source):
    """SYNTHETIC clustered catalog of unit vectors, ids ``0..n-1``, generated chunk by chunk.

    Row ``i`` belongs to chunk ``i // SYNTH_CHUNK``; each chunk is drawn from its own generator
    ``default_rng([seed, 0x5C7A, chunk])`` (cluster label, then centre + 0.8 x Gaussian noise, normalised), the
    ``n_clusters`` centres from ``default_rng([seed, 0x5C7A])``. So any row range is generated identically by
    any process, and a 10M x 128 catalog never exists in one process.
    """

    n: int
    d: int
    seed: int = 0
    n_clusters: int = 256

    def __post_init__(self) -> None:
        for name, v, lo in (("n", self.n, 1), ("d", self.d, 1), ("seed", self.seed, 0), ("n_clusters", self.n_clusters, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
                raise InvalidInputError(f"SyntheticSource {name} must be an integer >= {lo}, got {v!r}")

    def _centres(self) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), 0x5C7A])
        return rng.standard_normal((self.n_clusters, self.d), dtype=np.float32)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = _check_range(lo, hi, self.n)
        centres = self._centres()
        out = np.empty((hi - lo, self.d), np.float32)
        for c in range(lo // SYNTH_CHUNK, -(-hi // SYNTH_CHUNK)):
            c_lo = c * SYNTH_CHUNK
            m = SYNTH_CHUNK  # always a whole chunk: a row does not depend on n
            rng = np.random.default_rng([int(self.seed), 0x5C7A, c])
            block = centres[rng.integers(0, self.n_clusters, m)]
            block += np.float32(0.8) * rng.standard_normal((m, self.d), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            a, b = max(lo, c_lo), min(hi, c_lo + m)
            out[a - lo : b - lo] = block[a - c_lo : b - c_lo]
        return out

    def ids(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def identity(self) -> dict[str, Any]:
        return {"kind": "synthetic", "n": int(self.n), "d": int(self.d), "seed": int(self.seed),
                "n_clusters": int(self.n_clusters), "chunk": SYNTH_CHUNK}  # fmt: skip


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class NpySource(_Source):
    """Item vectors in a ``.npy`` file (float [n, d]), memory-mapped and sliced by each worker.

    Args:
        path: the ``.npy`` file; it must be readable at the same path on every worker (shared filesystem).
        ids_path: optional ``.npy`` integer ids [n] (default ``0..n-1``). Rows are served in id order; when
            the ids are not sorted, the order is computed once and saved to ``order_path`` (in the work folder)
            for the workers.

    The identity (part of every shard's fingerprint) is the files' resolved paths, sizes and modification
    times: rewriting the input makes a rerun rebuild every shard.
    """

    def __init__(self, path: str | os.PathLike[str], ids_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.ids_path = None if ids_path is None else Path(ids_path)
        if not self.path.is_file():
            raise DataNotFoundError(f"embeddings file not found: {self.path}")
        if self.path.suffix.lower() != ".npy":
            raise DataFormatError(
                f"the sharded build reads .npy files (memory-mapped by each worker), got {self.path.name}; "
                "convert it with numpy.save or build without --scheduler",
                path=str(self.path),
            )
        X = self._map()
        if X.ndim != 2 or X.dtype.kind not in "fiu" or X.shape[0] == 0 or X.shape[1] == 0:
            raise DataFormatError(f"{self.path}: expected a non-empty 2-D numeric array, got {X.dtype} {X.shape}",
                                  path=str(self.path))  # fmt: skip
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.order_path: str | None = None
        self._ids: np.ndarray | None = None

    def _map(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataFormatError(f"cannot read {self.path} as a .npy array: {exc}", path=str(self.path)) from None

    def prepare(self, work_dir: Path) -> None:
        """Read and check the ids (driver); save the id order to the work folder when the ids are not sorted."""
        from reelpack.catalog.store import _check_ids, _load_array

        if self.ids_path is None:
            self._ids = np.arange(self.n, dtype=np.int64)
            return
        if not self.ids_path.is_file():
            raise DataNotFoundError(f"ids file not found: {self.ids_path}")
        ids = _check_ids(_load_array(self.ids_path, "ids"), self.n, "ids")
        if ids.size > 1 and np.any(np.diff(ids) < 0):
            order = np.argsort(ids, kind="stable")
            path = work_dir / "order.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, order.astype(np.int64), allow_pickle=False)
            self.order_path = str(path)
            ids = ids[order]
        self._ids = ids

    def rows(self, lo: int, hi: int) -> np.ndarray:
        from reelpack.util.validate import as_float_matrix

        lo, hi = _check_range(lo, hi, self.n)
        X = self._map()
        if self.order_path is None:
            part = X[lo:hi]
        else:
            order = np.load(self.order_path, mmap_mode="r")[lo:hi]
            idx = np.argsort(order, kind="stable")  # read the memory map in file order, then put rows in id order
            part = np.empty((hi - lo, self.d), X.dtype)
            part[idx] = X[np.asarray(order)[idx]]
        return np.ascontiguousarray(as_float_matrix(part, f"rows {lo}..{hi} of {self.path.name}"))

    def ids(self) -> np.ndarray:
        if self._ids is None:
            raise InvalidInputError("NpySource.prepare() must run before ids()")
        return self._ids

    def identity(self) -> dict[str, Any]:
        out = {"kind": "npy", "vectors": _file_identity(self.path), "shape": [self.n, self.d]}
        out["ids"] = None if self.ids_path is None else _file_identity(self.ids_path)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_ids"}  # workers need no ids

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ids = None


class ArraySource(_Source):
    """An in-memory catalog (ids [n] any order, vectors float [n, d]); for the threads scheduler and tests.

    With a process cluster the arrays are pickled into every task: use :class:`NpySource` for large catalogs.
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from reelpack.util.validate import as_float_matrix
        from reelpack.catalog.store import _check_ids

        X = as_float_matrix(vectors, "vectors")
        ids = _check_ids(ids, X.shape[0], "ids")
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._X = ids[order], np.ascontiguousarray(X[order])
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        h = hashlib.sha256(self._sorted_ids.tobytes())
        h.update(self._X.tobytes())
        self._digest = h.hexdigest()

    def rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = _check_range(lo, hi, self.n)
        return self._X[lo:hi]

    def ids(self) -> np.ndarray:
        return self._sorted_ids

    def identity(self) -> dict[str, Any]:
        return {"kind": "array", "shape": [self.n, self.d], "sha256": self._digest}


def _check_range(lo: int, hi: int, n: int) -> tuple[int, int]:
    lo, hi = int(lo), int(hi)
    if not 0 <= lo < hi <= n:
        raise InvalidInputError(f"row range [{lo}, {hi}) is outside [0, {n})")
    return lo, hi


# ================================================================================================
# Fitting and block-wise encoding (shared with the single-process build_catalog)
# ================================================================================================
def fit_sample_rows(n: int, seed: int, fit_sample: int = DEFAULT_FIT_SAMPLE) -> np.ndarray:
    """Row numbers (of the id-sorted catalog) the codecs are fitted on: int64 [s], sorted.

    All rows when ``n <= fit_sample``; else ``fit_sample // FIT_RUN`` distinct runs of ``FIT_RUN`` consecutive
    rows, the run starts (multiples of ``FIT_RUN`` among the ``n // FIT_RUN`` full runs) drawn without
    replacement by ``default_rng([seed, 0xF17])``.
    """
    if isinstance(fit_sample, bool) or not isinstance(fit_sample, (int, np.integer)) or fit_sample < FIT_RUN:
        raise InvalidInputError(f"fit_sample must be an integer >= {FIT_RUN}, got {fit_sample!r}")
    if n <= fit_sample:
        return np.arange(n, dtype=np.int64)
    k = int(fit_sample) // FIT_RUN
    runs = np.sort(np.random.default_rng([int(seed), 0xF17]).choice(n // FIT_RUN, k, replace=False))
    return (runs[:, None] * FIT_RUN + np.arange(FIT_RUN)[None, :]).reshape(-1).astype(np.int64)


def _sample(source: _Source | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The fit sample float32 [s, d], read run by run from a source (or taken from an id-sorted array)."""
    if isinstance(source, np.ndarray):
        return np.ascontiguousarray(source[rows])
    if rows.size == source.n:
        return source.rows(0, source.n)
    starts = rows[::FIT_RUN]
    return np.concatenate([source.rows(int(s), int(s) + FIT_RUN) for s in starts])


def fit_codecs(specs: Sequence[str], source: _Source | np.ndarray, seed: int,
               fit_sample: int = DEFAULT_FIT_SAMPLE) -> list[Any]:  # fmt: skip
    """Fit one codec per spec on the :func:`fit_sample_rows` sample of ``source`` (id-sorted rows).

    Args:
        specs: codec factory strings, layer 0 first. source: a source, or the id-sorted vectors float32 [n, d].
        seed: seed of the sample and of every codec's fit.
    """
    from reelpack.codecs import make_codec

    n = source.shape[0] if isinstance(source, np.ndarray) else source.n
    sample = _sample(source, fit_sample_rows(n, seed, fit_sample))
    return [make_codec(s).fit(sample, seed=seed) for s in specs]


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


def _reference_mse(block_sums: Sequence[Sequence[float]], n: int) -> list[float]:
    """Per layer ``fsum(block sums) / n`` (exactly rounded: independent of the shard grouping)."""
    return [math.fsum(s) / n for s in block_sums]


@dataclass
class _Part:
    """Encoded rows ``[lo, hi)``: per layer codes uint8 [m, B] and errors float64 [m]; optional vectors [m, d]."""

    lo: int
    hi: int
    codes: list[np.ndarray]
    err: list[np.ndarray]
    vectors: np.ndarray | None = None


def write_packs(pack: Path, layer0: Path, ids: np.ndarray, codecs: Sequence[Any], parts: Callable[[], Iterator[_Part]],
                block_sums: Sequence[Sequence[float]], metadata: dict[str, Any], ipb: int,
                progress: Callable[[int, int], None] | None = None, n_parts: int = 0) -> None:  # fmt: skip
    """Stream ``pack`` (all layers) and ``layer0`` (layer 0) from encoded parts, in row order.

    ``parts()`` is called once per layer (blocks go layer by layer) and yields the parts in row order; the
    layer-0 pass writes both files. The metadata of each pack is ``metadata`` plus ``reference_mse`` (per layer
    of that pack), as :func:`~reelpack.format.build_pack` writes it.
    """
    from reelpack.format import PackWriter

    ref = _reference_mse(block_sums, int(ids.size))
    w_pack = PackWriter(pack, ids, metadata={**metadata, "reference_mse": ref})
    w_l0 = PackWriter(layer0, ids, metadata={**metadata, "reference_mse": ref[:1]})
    try:
        for c in codecs:
            w_pack.add_layer(c, items_per_block=ipb)
        w_l0.add_layer(codecs[0], items_per_block=ipb)
        done = 0
        for layer in range(len(codecs)):
            for part in parts():
                codes, err = part.codes[layer], part.err[layer]
                for lo in range(0, part.hi - part.lo, ipb):
                    w_pack.write_block(layer, codes[lo : lo + ipb], sq_errors=err[lo : lo + ipb])
                    if layer == 0:
                        w_l0.write_block(0, codes[lo : lo + ipb], sq_errors=err[lo : lo + ipb])
                done += 1
                if progress is not None:
                    progress(done, n_parts * len(codecs))
        w_pack.commit()
        w_l0.commit()
    except BaseException:
        w_pack.abort()
        w_l0.abort()
        raise


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
            buf = None  # noqa: F841  release the exported buffer before closing the map
            parsed = None  # noqa: F841
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


def _shard_fingerprint(codec_digest: str, source_identity: dict[str, Any], lo: int, hi: int, ipb: int,
                       vectors: bool) -> str:  # fmt: skip
    key = {"format": SHARD_FORMAT, "codecs": codec_digest, "source": source_identity, "lo": lo, "hi": hi,
           "items_per_block": ipb, "vectors": vectors}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _codec_digest(codec_bytes: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for b in codec_bytes:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class _ShardJob:
    """What a worker needs to make (or verify) one shard file."""

    shard: int
    lo: int
    hi: int
    path: str
    fingerprint: str
    codec_bytes: tuple[bytes, ...]
    source: Any
    ipb: int
    vectors: bool


_CODEC_CACHE: dict[str, list[Any]] = {}


def _worker_codecs(codec_bytes: Sequence[bytes]) -> list[Any]:
    from reelpack.codecs import codec_from_bytes

    key = _codec_digest(codec_bytes)
    if key not in _CODEC_CACHE:
        _CODEC_CACHE.clear()
        _CODEC_CACHE[key] = [codec_from_bytes(b) for b in codec_bytes]
    return _CODEC_CACHE[key]


def _warm_worker(codec_bytes: Sequence[bytes], d: int) -> int:
    """Worker set-up run once per worker before the shards: import the codecs, deserialise them into the cache and
    encode one row (loads faiss/numba code), so the encode phase measures the shards' work only. Returns the pid."""
    for c in _worker_codecs(codec_bytes):
        c.encode(np.zeros((1, d), np.float32))
    return os.getpid()


def _ensure_shard(job: _ShardJob) -> dict[str, Any]:
    """Worker task: keep the shard file if it verifies, else (re)build it. Returns what it did and its costs.

    Returns:
        ``{"shard", "status": "verified" | "encoded" | "rebuilt", "rows", "bytes", "seconds", "worker",
        "pid", "vmhwm_kb"}`` (``vmhwm_kb``: the worker process's peak RSS so far, from /proc).
    """
    from reelpack.util.memory import status_kb

    t0 = time.perf_counter()
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
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = "local"
    return {"shard": job.shard, "status": status, "rows": job.hi - job.lo, "bytes": path.stat().st_size,
            "seconds": time.perf_counter() - t0, "worker": worker, "pid": os.getpid(),
            "vmhwm_kb": status_kb("VmHWM")}  # fmt: skip


def _read_shard(job: _ShardJob, layers: int, d: int, *, vectors: bool) -> Iterator[_Part]:
    """Yield the shard's part (codes, errors, optional vectors) from its mapped file; StoreError if it fails."""
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
            codes = [sec[f"codes{i}"].reshape(m, bpv[i]) for i in range(layers)]
            err = [sec[f"err{i}"].view(np.float64) for i in range(layers)]
            vec = sec["vectors"].view(np.float32).reshape(m, d) if vectors else None
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise StoreError(f"shard {job.shard} ({job.path}) has an unexpected layout: {exc}") from None
        yield _Part(job.lo, job.hi, codes, err, vec)


# ================================================================================================
# Dask
# ================================================================================================
_ADDRESS_RE = re.compile(r"(tcp|tls|ucx|ws|wss|inproc)://\S+")


@contextlib.contextmanager
def _dask_client(scheduler: str, n_workers: int, connect_timeout: float) -> Iterator[Any]:
    """A ``distributed.Client``: a new LocalCluster (``local``: processes; ``threads``: in this process) or a
    connection to a running scheduler (``tcp://host:port`` ...). Unreachable -> ServiceError naming the address."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler in ("local", "threads"):
        env = {k: "1" for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        kwargs: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": 1, "dashboard_address": None,
                                  "silence_logs": logging.ERROR}  # fmt: skip
        if scheduler == "local":
            kwargs.update(processes=True, memory_limit=0, env=env)
        else:
            kwargs.update(processes=False)
        try:
            cluster = LocalCluster(**kwargs)
            client = Client(cluster, timeout=connect_timeout)
        except Exception as exc:  # noqa: BLE001  any start failure becomes a typed error
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
            raise ServiceError(f"cannot start a local Dask cluster of {n_workers} worker(s): {exc}") from None
    else:
        if not isinstance(scheduler, str) or not _ADDRESS_RE.fullmatch(scheduler):
            raise InvalidInputError(
                f"scheduler must be 'local', 'threads' or an address like tcp://host:8786, got {scheduler!r}"
            )
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except Exception as exc:  # noqa: BLE001  OSError, TimeoutError, CommClosedError ...
            raise ServiceError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s: {exc}"
            ) from None
        try:
            client.wait_for_workers(1, timeout=connect_timeout)
        except Exception:  # noqa: BLE001
            client.close()
            raise ServiceError(f"the Dask scheduler at {scheduler} has no workers (waited {connect_timeout:g} s)") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


# ================================================================================================
# The sharded build
# ================================================================================================
def _codec_cache(work_dir: Path, fit_key: str, make: Callable[[], list[Any]]) -> tuple[list[Any], bool]:
    """The fitted codecs from ``work_dir/codecs.rps`` when made for ``fit_key``, else ``make()`` (then saved)."""
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


def _write_npy_header(fh: Any, shape: tuple[int, int]) -> None:
    """The header ``numpy.save`` writes for a C-order little-endian float32 array of ``shape``."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(fh, d)
    except ValueError:  # pragma: no cover - header over 64 KiB: numpy.save switches to version 2.0 too
        np.lib.format.write_array_header_2_0(fh, d)


def build_catalog_sharded(
    store: Any,
    catalog: str,
    source: _Source,
    *,
    codecs: Sequence[str] | str | None = None,
    users: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    items_per_block: int | None = None,
    seed: int = 0,
    index: bool = True,
    arrays: bool = True,
    scheduler: str = "local",
    n_workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    work_dir: str | os.PathLike[str] | None = None,
    keep_work: bool = False,
    fit_sample: int = DEFAULT_FIT_SAMPLE,
    connect_timeout: float = 10.0,
    progress: ProgressFn | None = None,
    threads: int = 1,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and publish the next version of ``catalog`` with shards encoded on Dask workers.

    The packs, ``vectors.npy``, ``ids.npy`` (and users, index) are byte-identical to what
    :func:`~reelpack.catalog.store.build_catalog` writes for the same catalog, codecs, items per block, seed and
    ``fit_sample`` when that build starts a fresh chain. A sharded build always starts a fresh chain: codecs
    fitted on this catalog, no delta (``delta_from`` null; a delta needs the previous codes and all new vectors
    in one place).

    Args:
        store: a :class:`~reelpack.catalog.store.CatalogStore`. catalog: a valid catalog name.
        source: :class:`NpySource` (``.npy`` memory-mapped by each worker: needs a filesystem shared with the
            workers), :class:`SyntheticSource` (generated on the workers) or :class:`ArraySource` (in memory).
        codecs, users, user_ids, items_per_block, seed, index, threads: as in ``build_catalog``.
        arrays: store ``vectors.npy`` / ``ids.npy`` (the server-side vectors); required by ``index``.
        scheduler: ``"local"`` (a new LocalCluster of ``n_workers`` processes, one thread each), ``"threads"``
            (a LocalCluster of threads in this process) or a scheduler address (``tcp://host:8786``).
        n_workers: workers of a local cluster (ignored for an address). shard_size: rows per shard, rounded
            up to a multiple of the items per block.
        work_dir: folder of the shard files and codec cache, shared with the workers. Default
            ``<store>/<catalog>/.work``. A rerun with the same arguments resumes from it.
        keep_work: keep the shard files after publishing (default: the work folder's files are removed).
        fit_sample: the codecs are fitted on :func:`fit_sample_rows` (``n, seed, fit_sample``).
        connect_timeout: seconds to reach the scheduler (and, for an address, to see a worker).
        progress: ``progress(stage, done, total)``; stages ``fit``, ``encode`` (shards done / shards),
            ``assemble`` (shard passes / total), ``arrays``, ``index``, ``recall``, ``publish``.
        stats: optional dict filled with timings (``cluster_s`` (start/connect), ``fit_s``, ``encode_s``, ``assemble_s``, ``publish_s``,
            ``total_s``), shard counts (``shards``, ``encoded``, ``rebuilt``, ``verified``), ``shard_bytes``,
            ``codecs_cached`` and per-worker peak RSS (``workers``: address -> kB).

    Returns:
        the new manifest entry (as ``build_catalog``).

    Raises:
        InvalidInputError (bad arguments), CodecSpecError, ServiceError (scheduler unreachable or without
        workers; raised before anything is written), StoreError; any error publishes nothing.
    """
    from distributed import as_completed

    from reelpack.codecs import make_codec
    from reelpack.catalog import ann
    from reelpack.catalog import store as st

    t_start = time.perf_counter()
    st.validate_catalog_name(catalog)
    if not isinstance(store, st.CatalogStore):
        raise InvalidInputError(f"store must be a CatalogStore, got {type(store).__name__}")
    if not isinstance(source, _Source):
        raise InvalidInputError(f"source must be an NpySource, SyntheticSource or ArraySource, got {type(source).__name__}")
    for name, v, lo in (("n_workers", n_workers, 1), ("shard_size", shard_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= 1 << 30:
            raise InvalidInputError(f"{name} must be an integer in {lo}..{1 << 30}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(connect_timeout, (int, float)) or not 0 < connect_timeout <= 3600:
        raise InvalidInputError(f"connect_timeout must be in (0, 3600] seconds, got {connect_timeout!r}")
    if index and not arrays:
        raise InvalidInputError("index=True needs arrays=True (the HNSW index is built from vectors.npy)")
    seed = int(seed)
    fit_sample_rows(1, seed, fit_sample)  # validates fit_sample
    specs = st._check_codecs_and_block(codecs, items_per_block)
    U = uids = None
    if users is not None:
        from reelpack.util.validate import as_float_matrix

        U = as_float_matrix(users, "users", dim=source.d)
        uids = np.arange(U.shape[0], dtype=np.int64) if user_ids is None else st._check_ids(user_ids, U.shape[0], "user_ids")
        uorder = np.argsort(uids, kind="stable")
        uids, U = uids[uorder], np.ascontiguousarray(U[uorder])
    elif user_ids is not None:
        raise InvalidInputError("user_ids given without users")

    # defaults from the previous version (re-read under the lock before publishing)
    prev_manifest = store._read_manifest(catalog)
    prev = None if prev_manifest is None else next(
        e for e in prev_manifest["versions"] if e["version"] == prev_manifest["latest"])  # fmt: skip
    if specs is None:
        specs = list(prev["codecs"]) if prev is not None else [make_codec(c).spec for c in st.DEFAULT_CODECS]
    ipb = int(items_per_block) if items_per_block is not None else (
        prev["items_per_block"] if prev is not None else st.DEFAULT_ITEMS_PER_BLOCK)  # fmt: skip
    shard_rows = -(-int(shard_size) // ipb) * ipb
    out_stats: dict[str, Any] = {} if stats is None else stats

    def step(name: str, done: int, total: int) -> None:
        if progress is not None:
            progress(name, done, total)

    t0 = time.perf_counter()
    with _dask_client(scheduler, int(n_workers), float(connect_timeout)) as client:  # ServiceError before any write
        out_stats["cluster_s"] = time.perf_counter() - t0
        wd = Path(work_dir) if work_dir is not None else store.catalog_dir(catalog) / ".work"
        try:
            wd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the work folder {wd}: {exc.strerror or exc}") from None
        if isinstance(source, NpySource):
            source.prepare(wd)
        ids = source.ids()

        step("fit", 0, 1)
        t0 = time.perf_counter()
        fit_key = hashlib.sha256(json.dumps({"specs": specs, "seed": seed, "fit_sample": int(fit_sample),
                                             "run": FIT_RUN, "source": source.identity()},
                                            sort_keys=True).encode()).hexdigest()  # fmt: skip
        fitted, cached = _codec_cache(wd, fit_key, lambda: fit_codecs(specs, source, seed, int(fit_sample)))
        codec_bytes = tuple(c.to_bytes() for c in fitted)
        digest = _codec_digest(codec_bytes)
        out_stats.update(fit_s=time.perf_counter() - t0, codecs_cached=cached)
        step("fit", 1, 1)

        t0 = time.perf_counter()
        try:
            client.run(_warm_worker, codec_bytes, int(source.d))
        except Exception as exc:  # noqa: BLE001  a worker without reelpack, a lost worker ...
            raise ServiceError(f"the Dask workers could not load the fitted codecs: {type(exc).__name__}: {exc}") from None
        out_stats["warm_s"] = time.perf_counter() - t0
        identity = source.identity()
        jobs = []
        for i, lo in enumerate(range(0, source.n, shard_rows)):
            hi = min(source.n, lo + shard_rows)
            fp = _shard_fingerprint(digest, identity, lo, hi, ipb, arrays)
            jobs.append(_ShardJob(i, lo, hi, str(wd / f"shard-{i:06d}.rps"), fp, codec_bytes, source, ipb, arrays))
        t0 = time.perf_counter()
        step("encode", 0, len(jobs))
        counts = {"encoded": 0, "rebuilt": 0, "verified": 0}
        peaks: dict[str, int] = {}
        shard_bytes = 0
        busy_s = 0.0
        futures = client.map(_ensure_shard, jobs, pure=False)
        try:
            for done, fut in enumerate(as_completed(futures), 1):
                r = fut.result()
                counts[r["status"]] += 1
                shard_bytes += r["bytes"]
                busy_s += r["seconds"]
                if r["vmhwm_kb"] is not None:
                    peaks[r["worker"]] = max(peaks.get(r["worker"], 0), r["vmhwm_kb"])
                step("encode", done, len(jobs))
        finally:
            for f in futures:
                f.release()
        out_stats.update(encode_s=time.perf_counter() - t0, shards=len(jobs), shard_bytes=shard_bytes, shard_busy_s=busy_s,
                         workers=peaks, **counts)  # fmt: skip
        nb = ((source.n + ipb - 1) // ipb)
        sums: list[list[float]] = [[] for _ in fitted]
        for job in jobs:  # block sums from the headers (small)
            with _open_container(Path(job.path), "shard", job.fingerprint) as parsed:
                if parsed is None:
                    raise StoreError(f"shard {job.shard} ({job.path}) failed its check after encoding; rerun to rebuild it")
                for layer, s in enumerate(parsed[0]["block_sums"]):
                    sums[layer].extend(float(x) for x in s)
        if any(len(s) != nb for s in sums):
            raise StoreError(f"the shard files hold {[len(s) for s in sums]} block sums, expected {nb} per layer")

    # ---- assemble and publish under the catalog lock (no cluster needed any more)
    with store.lock(catalog) as cat_dir:
        t0 = time.perf_counter()
        prev_manifest = store._read_manifest(catalog)
        st._clean_stale(cat_dir, prev_manifest)
        version = 1 if prev_manifest is None else prev_manifest["latest"] + 1
        meta = {"catalog": catalog, "catalog_version": version}
        with st._staged_version(cat_dir, catalog, version) as stage:
            staging = stage.staging
            files: dict[str, Path] = {"pack": staging / "pack.rpk", "layer0": staging / "layer0.rpk"}

            def parts() -> Iterator[_Part]:
                for job in jobs:
                    yield from _read_shard(job, len(fitted), source.d, vectors=False)

            write_packs(files["pack"], files["layer0"], ids, fitted, parts, sums, meta, ipb,
                        progress=lambda d, t: step("assemble", d, t), n_parts=len(jobs))  # fmt: skip
            index_info = None
            if arrays:
                step("arrays", 0, len(jobs))
                files["vectors"], files["ids"] = staging / "vectors.npy", staging / "ids.npy"
                with open(files["vectors"], "wb") as fh:
                    _write_npy_header(fh, (source.n, source.d))
                    for k, job in enumerate(jobs):
                        for part in _read_shard(job, len(fitted), source.d, vectors=True):
                            fh.write(memoryview(np.ascontiguousarray(part.vectors)).cast("B"))
                        step("arrays", k + 1, len(jobs))
                    fh.flush()
                    os.fsync(fh.fileno())
                st._save_npy(files["ids"], ids)
                if U is not None:
                    files["users"], files["user_ids"] = staging / "users.npy", staging / "user_ids.npy"
                    st._save_npy(files["users"], U)
                    st._save_npy(files["user_ids"], uids)
                if index:
                    hnsw = {"connectivity": ann.DEFAULT_CONNECTIVITY, "expansion_add": ann.DEFAULT_EXPANSION_ADD,
                            "expansion_search": ann.DEFAULT_EXPANSION_SEARCH}  # fmt: skip
                    step("index", 0, 1)
                    X = np.load(files["vectors"], mmap_mode="r")
                    hidx = ann.HNSWIndex.build(X, ids, seed=seed, threads=threads, **hnsw)
                    files["index"] = staging / "index.usearch"
                    hidx.save(files["index"])
                    step("recall", 0, 1)
                    queries, qsource = st._recall_queries(X, U, seed)
                    k = min(st.RECALL_K, source.n)
                    index_info = {"kind": "usearch-hnsw", "metric": "ip", **hnsw,
                                  "recall_at_50": round(hidx.recall_at(X, queries, k), 4),
                                  "recall_queries": qsource, "recall_k": k}  # fmt: skip
                    del hidx, X
            out_stats["assemble_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            step("publish", 0, 1)
            entry = {
                "version": version,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "n_items": int(source.n),
                "dim": int(source.d),
                "codecs": specs,
                "items_per_block": ipb,
                "files": {},
                "delta_from": None,
                "index": index_info,
                "edge": None,  # the hierarchical index's EdgeCatalog is built by the single-process path only
                "n_users": None if U is None else int(U.shape[0]),
                "seed": seed,
                "codecs_reused": None,
            }
            stage.publish(files, entry, prev_manifest)
    if not keep_work:
        for job in jobs:
            Path(job.path).unlink(missing_ok=True)
        for name in ("codecs.rps", "order.npy"):
            (wd / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            wd.rmdir()  # only when empty (a user's folder with other files stays)
    out_stats["publish_s"] = time.perf_counter() - t0
    out_stats["total_s"] = time.perf_counter() - t_start
    step("done", 1, 1)
    return entry
