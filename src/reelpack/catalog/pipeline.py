"""The one catalog build pipeline: the same code builds a version in this process or on Dask workers.

Stages (``reelpack build-catalog``, with or without ``--scheduler``; docs/SCALE.md):

1. **plan** (under the catalog lock): read the manifest, settle the codecs and items per block (the previous
   version's by default), decide whether the version continues the previous chain.
2. **fit** (driver): every codec is fitted once on a seeded sample of the id-sorted catalog
   (:func:`fit_sample_rows`; the whole catalog when it has at most ``fit_sample`` rows), optionally with per-row
   fit weights (``BuildOptions.fit_weights``: the weights of the sampled rows, :func:`fit_codecs`). With a work
   folder the fitted codecs are cached there (``codecs.rps``, keyed by the weights' digest too), so a rerun does
   not re-fit.
3. **encode** (executor): the id-sorted rows are cut into shards of whole blocks; the executor
   (:mod:`reelpack.catalog.executor`: this process, or Dask workers) runs :func:`~reelpack.catalog.shards.encode_shard`
   on each, block by block. In-process the encoded parts stay in memory; with a work folder they are written as
   shard files, which a rerun with the same arguments verifies and keeps (resume).
4. **assemble** (driver): ``pack.rpk`` and ``layer0.rpk`` are streamed block by block from the parts through
   :class:`~reelpack.format.PackWriter`; a version that continues its chain is made with
   :func:`~reelpack.format.make_delta` from the previous version instead (plus its deltas).
5. **arrays, index, recall, edge**: ``vectors.npy`` streamed from the parts (never all in the driver),
   ``ids.npy``, users; the HNSW index from ``vectors.npy``; the optional edge catalog.
6. **publish**: the store's staging / rename / manifest protocol (:mod:`reelpack.catalog.store`).

Because both builds run this code, encode every block on its own and fit on the same sample, they write the
same bytes. The reference error stored in a pack's metadata (``reference_mse``, used by delta builds) is
``math.fsum(block sums) / n``: independent of how the blocks are grouped into shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reelpack.catalog.executor import Executor
from reelpack.catalog.shards import (
    EncodedShards,
    Part,
    ShardJob,
    cached_codecs,
    codec_digest,
    encode_shard,
    shard_fingerprint,
    warm_worker,
)
from reelpack.catalog.sources import CatalogSource
from reelpack.catalog.store import (
    WORK_NAME,
    CatalogStore,
    clean_stale,
    latest_entry,
    staged_version,
    version_dir,
)
from reelpack.codecs.base import check_weights
from reelpack.errors import CodecSpecError, DimensionMismatchError, InvalidInputError, StoreError
from reelpack.format.delta import sha256_file
from reelpack.util.ids import check_item_ids
from reelpack.util.validate import as_float_matrix

__all__ = [
    "DEFAULT_CODECS",
    "DEFAULT_ITEMS_PER_BLOCK",
    "DEFAULT_FIT_SAMPLE",
    "DEFAULT_SHARD_SIZE",
    "FIT_RUN",
    "RECALL_K",
    "ProgressFn",
    "BuildOptions",
    "check_codecs_and_block",
    "check_users",
    "check_seed",
    "fit_sample_rows",
    "check_fit_weights",
    "check_fit_info",
    "fit_codecs",
    "write_packs",
    "save_npy",
    "run_build",
]

DEFAULT_CODECS = ("pq4", "sq8")
"""Codecs of a catalog's first version when none are given (layer 0 first)."""
DEFAULT_ITEMS_PER_BLOCK = 1024
DEFAULT_FIT_SAMPLE = 131_072
"""Rows the codecs are fitted on (all rows of a smaller catalog)."""
FIT_RUN = 256
"""The fit sample is made of runs of this many consecutive id-sorted rows (cheap to read or generate)."""
DEFAULT_SHARD_SIZE = 262_144
"""Rows per shard (rounded up to a multiple of the items per block)."""
RECALL_QUERIES = 200
RECALL_K = 50

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""


# ================================================================================================
# Argument checks shared by both front ends
# ================================================================================================
def check_codecs_and_block(codecs: Sequence[str] | str | None, items_per_block: int | None) -> list[str] | None:
    """Check the ``codecs`` and ``items_per_block`` arguments of a catalog build (``build_catalog``,
    :func:`~reelpack.catalog.build.build_catalog_sharded`); return the codecs' canonical specs (``None`` when
    ``codecs`` is ``None``: the previous version's or the default codecs apply).

    Raises:
        CodecSpecError: ``codecs`` is empty, not strings, or holds a bad spec (rejected before any work).
        InvalidInputError: ``items_per_block`` is given and not an integer in 1..2**20.
    """
    from reelpack.codecs import make_codec

    specs: list[str] | None = None
    if isinstance(codecs, str):
        codecs = [s for s in re.split(r"[;\s]+", codecs.strip()) if s]
    if codecs is not None:
        codecs = list(codecs)
        if not codecs or not all(isinstance(c, str) for c in codecs):
            raise CodecSpecError(f"codecs must be a non-empty list of codec specs, got {codecs!r}")
        specs = [make_codec(c).spec for c in codecs]
    if items_per_block is not None and (
        isinstance(items_per_block, bool) or not isinstance(items_per_block, (int, np.integer))
        or not 1 <= int(items_per_block) <= 1 << 20
    ):  # fmt: skip
        raise InvalidInputError(f"items_per_block must be an integer in 1..{1 << 20}, got {items_per_block!r}")
    return specs


def check_users(users: np.ndarray | None, user_ids: np.ndarray | None, d: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The optional user vectors and ids of a build, sorted by user id: (float32 [m, d], int64 [m]) or (None, None).

    ``user_ids`` defaults to ``0..m-1``. InvalidInputError and subclasses: bad shapes, values or ids, or
    ``user_ids`` without ``users``.
    """
    if users is None:
        if user_ids is not None:
            raise InvalidInputError("user_ids given without users")
        return None, None
    U = as_float_matrix(users, "users", dim=d)
    uids = np.arange(U.shape[0], dtype=np.int64) if user_ids is None else check_item_ids(
        user_ids, what="user_ids", n=U.shape[0])  # fmt: skip
    order = np.argsort(uids, kind="stable")
    return np.ascontiguousarray(U[order]), uids[order]


def check_seed(seed: object) -> int:
    """``seed`` as an int; InvalidInputError unless a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ================================================================================================
# Fitting on a sample
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


def _sample(source: CatalogSource | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The fit sample float32 [s, d], read run by run from a source (or taken from an id-sorted array)."""
    if isinstance(source, np.ndarray):
        return np.ascontiguousarray(source[rows])
    if rows.size == source.n:
        return source.rows(0, source.n)
    starts = rows[::FIT_RUN]
    return np.concatenate([source.rows(int(s), int(s) + FIT_RUN) for s in starts])


def check_fit_weights(weights: Sequence[Any] | None, n_codecs: int | None,
                      n: int) -> list[np.ndarray | None] | None:  # fmt: skip
    """Check per-codec fit weights: ``None``, or one entry per codec, each ``None`` (uniform fit) or float [n].

    Args:
        weights: ``None`` or a list/tuple aligned with the codecs (layer 0 first) of ``None`` or float [n] row
            weights (finite, >= 0, not all 0), e.g. :func:`reelpack.data.popularity_weights`.
        n_codecs: the number of codecs, or ``None`` when not known yet (the count is then not checked).
        n: rows of the catalog.

    Returns:
        ``None`` when ``weights`` is ``None`` or holds only ``None`` (the unweighted fit); else a list of ``None``
        or float64 [n] C-contiguous copies.

    Raises:
        InvalidInputError: not a list/tuple; an entry not 1-D, not finite, negative or all 0.
        DimensionMismatchError: not one entry per codec, or an entry without ``n`` values.
    """
    if weights is None:
        return None
    if not isinstance(weights, (list, tuple)):
        raise InvalidInputError(f"fit weights must be a list with one entry (None or float [n]) per codec, "
                                f"got {type(weights).__name__}")  # fmt: skip
    if n_codecs is not None and len(weights) != n_codecs:
        raise DimensionMismatchError(f"fit weights hold {len(weights)} entries, one per codec expected ({n_codecs})")
    out = [None if w is None else check_weights(w, n, f"fit weights of codec {k}", "the catalog")
           for k, w in enumerate(weights)]  # fmt: skip
    return out if any(w is not None for w in out) else None


#: pack metadata keys a build writes itself; ``fit_info`` may not use them
_BUILD_META_KEYS = ("catalog", "catalog_version", "reference_mse")
#: the largest ``fit_info``, as compact JSON
MAX_FIT_INFO_BYTES = 65536


def check_fit_info(fit_info: Any, weighted: bool) -> dict[str, Any] | None:
    """Check ``fit_info``, a JSON description of a build's fit weights (what they are, e.g.
    ``{"popularity_beta": {"rq8-n": 1.0}}``), recorded in the manifest entry (``fit_weights``) and merged into both
    packs' metadata.

    Args:
        fit_info: ``None`` or a dict with string keys, JSON-serialisable, at most :data:`MAX_FIT_INFO_BYTES` as JSON,
            without the keys a build writes itself (``catalog``, ``catalog_version``, ``reference_mse``).
        weighted: whether the build has fit weights (``fit_info`` describes them, so it needs them).

    Returns:
        a JSON round-tripped copy, or ``None``.

    Raises:
        InvalidInputError: any of the above broken.
    """
    if fit_info is None:
        return None
    if not weighted:
        raise InvalidInputError("fit_info describes fit weights: give fit_weights too")
    if not isinstance(fit_info, dict) or not all(isinstance(k, str) for k in fit_info):
        raise InvalidInputError(f"fit_info must be a dict with string keys, got {type(fit_info).__name__}")
    clash = sorted(set(fit_info) & set(_BUILD_META_KEYS))
    if clash:
        raise InvalidInputError(f"fit_info may not use the keys the build writes itself: {', '.join(clash)}")
    try:
        text = json.dumps(fit_info, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"fit_info must be JSON (finite numbers, strings, lists, dicts): {exc}") from None
    size = len(text.encode())
    if size > MAX_FIT_INFO_BYTES:
        raise InvalidInputError(f"fit_info is {size} bytes as JSON, at most {MAX_FIT_INFO_BYTES}")
    return json.loads(text)


def fit_codecs(specs: Sequence[str], source: CatalogSource | np.ndarray, seed: int,
               fit_sample: int = DEFAULT_FIT_SAMPLE,
               weights: Sequence[Any] | None = None) -> list[Any]:  # fmt: skip
    """Fit one codec per spec on the :func:`fit_sample_rows` sample of ``source`` (id-sorted rows).

    Args:
        specs: codec factory strings, layer 0 first. source: a source, or the id-sorted vectors float32 [n, d].
        seed: seed of the sample and of every codec's fit.
        fit_sample: rows of the sample (:func:`fit_sample_rows`).
        weights: ``None`` (every codec fitted on the sample as is), or one entry per spec: ``None`` or float [n]
            row weights in the source's (id-sorted) row order (:func:`check_fit_weights`). A weighted codec is
            fitted with ``weights=w[rows]``, the weights of the sampled rows (:meth:`reelpack.codecs.Codec.fit`).

    Returns:
        the fitted codecs, one per spec.

    Raises:
        InvalidInputError: bad weights (see :func:`check_fit_weights`), or weights that are all 0 on the sample.
        DimensionMismatchError: not one weight entry per spec, or an entry without ``n`` values.
    """
    from reelpack.codecs import make_codec

    n = source.shape[0] if isinstance(source, np.ndarray) else source.n
    ws = check_fit_weights(weights, len(specs), n)
    rows = fit_sample_rows(n, seed, fit_sample)
    sample = _sample(source, rows)
    if ws is None:
        return [make_codec(s).fit(sample, seed=seed) for s in specs]
    out = []
    for s, w in zip(specs, ws):
        w_rows = None if w is None else w[rows]
        if w_rows is not None and not w_rows.sum() > 0:
            raise InvalidInputError(f"the fit weights of {s} are all 0 on the {rows.size} sampled rows: give the "
                                    f"items of the catalog positive weights")  # fmt: skip
        out.append(make_codec(s).fit(sample, seed=seed, weights=w_rows))
    return out


# ================================================================================================
# Writing the files of a version
# ================================================================================================
def _reference_mse(block_sums: Sequence[Sequence[float]], n: int) -> list[float]:
    """Per layer ``fsum(block sums) / n`` (exactly rounded: independent of the shard grouping)."""
    return [math.fsum(s) / n for s in block_sums]


def write_packs(pack: Path, layer0: Path, ids: np.ndarray, codecs: Sequence[Any], parts: Callable[[], Iterator[Part]],
                block_sums: Sequence[Sequence[float]], metadata: dict[str, Any], ipb: int,
                progress: Callable[[int, int], None] | None = None, n_parts: int = 0) -> None:  # fmt: skip
    """Stream ``pack`` (all layers) and ``layer0`` (layer 0) from encoded parts, in row order.

    ``parts()`` is called once per layer (blocks go layer by layer) and yields the parts in row order; the
    layer-0 pass writes both files. The metadata of each pack is ``metadata`` plus ``reference_mse`` (per layer
    of that pack), as :func:`~reelpack.format.delta.build_pack` writes it.
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


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``numpy.save`` (no pickles) into ``path``; the publish step fsyncs it with every file of the version."""
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _write_npy_header(fh: Any, shape: tuple[int, int]) -> None:
    """The header ``numpy.save`` writes for a C-order little-endian float32 array of ``shape``."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(fh, d)
    except ValueError:  # pragma: no cover - header over 64 KiB: numpy.save switches to version 2.0 too
        np.lib.format.write_array_header_2_0(fh, d)


def _write_vectors(path: Path, shape: tuple[int, int], chunks: Iterator[np.ndarray],
                   progress: Callable[[int], None]) -> None:  # fmt: skip
    """Stream float32 rows into ``path`` as the ``.npy`` file ``numpy.save`` writes for the whole [n, d] array."""
    with open(path, "wb") as fh:
        _write_npy_header(fh, shape)
        for k, rows in enumerate(chunks, 1):
            fh.write(memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B"))
            progress(k)


def _recall_queries(X: np.ndarray, users: np.ndarray | None, seed: int) -> tuple[np.ndarray, str]:
    """Up to 200 queries float32 [q, d]: sampled users, else sampled items plus Gaussian noise (norm ~ 0.5 |x|)."""
    rng = np.random.default_rng([int(seed), 0x5EC])
    if users is not None:
        rows = rng.choice(users.shape[0], min(RECALL_QUERIES, users.shape[0]), replace=False)
        return users[np.sort(rows)], "users"
    rows = np.sort(rng.choice(X.shape[0], min(RECALL_QUERIES, X.shape[0]), replace=False))
    base = X[rows]
    scale = 0.5 * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(X.shape[1])
    noise = rng.standard_normal(base.shape).astype(np.float32)
    return (base + scale * noise).astype(np.float32), "items+noise"


def _same_codec_bytes(a: Path, b: Path) -> bool:
    from reelpack.format import PackReader

    with PackReader(a) as ra, PackReader(b) as rb:
        return ra.codec(0).to_bytes() == rb.codec(0).to_bytes()


def _check_delta(base: Path, delta: Path, target: Path, scratch: Path) -> None:
    """``apply_delta(base, delta)`` must give ``target`` byte for byte (what a phone will do)."""
    from reelpack.format import apply_delta

    out = scratch / f".check-{delta.name}"
    try:
        apply_delta(base, delta, out)
        if sha256_file(out) != sha256_file(target):
            raise StoreError(f"applying {delta.name} to the previous version does not rebuild {target.name}")
    finally:
        out.unlink(missing_ok=True)


# ================================================================================================
# The pipeline
# ================================================================================================
@dataclass
class BuildOptions:
    """What a build makes, already checked by its front end (:mod:`reelpack.catalog.build`).

    Attributes:
        specs: canonical codec specs, layer 0 first, or ``None`` (the previous version's, else
            :data:`DEFAULT_CODECS`). items_per_block: or ``None`` (the previous version's, else 1024).
        seed: seed of the fit sample, codec fits, index insertion order and recall queries.
        users, user_ids: float32 [m, d] and int64 [m] sorted by user id, or ``None``.
        index: build the HNSW index (needs ``arrays``). arrays: store ``vectors.npy`` / ``ids.npy``.
        hnsw: ``connectivity``, ``expansion_add``, ``expansion_search`` of the index.
        threads: HNSW insertion threads. fit_sample: rows the codecs are fitted on. shard_size: rows per shard.
        fit_weights: ``None`` (uniform fits) or, per codec (aligned with the codecs that apply), ``None`` or
            float64 [n] row weights in the source's id-sorted row order (:func:`check_fit_weights`). A weighted
            build always starts a fresh chain (its codecs are fitted with the weights, never reused).
        fit_info: ``None`` or what the fit weights are, as JSON (:func:`check_fit_info`): the manifest entry's
            ``fit_weights`` and merged into both packs' metadata. A weighted build without it records ``{}``.
        delta: continue the previous version's chain with deltas when codecs, dimension and items per block
            match (needs the whole catalog in the driver: the single-process build) and no fit weights are given.
        distortion_threshold, verify_deltas: the delta rules (:func:`~reelpack.format.make_delta`).
        edge_nlist: build the edge catalog with this many clusters, or ``None`` for none.
        work_dir: folder of the shard files and codec cache (default ``<store>/<catalog>/.work``); the shards go
            through it when the executor is distributed or ``work_dir`` is given. keep_work: keep it afterwards.
        stages: how progress is reported: ``"once"`` (each stage of a fixed list once, ``(index, count)``, as
            ``build_catalog`` always did) or ``"counts"`` (every event with its own ``(done, total)``).
    """

    specs: list[str] | None = None
    items_per_block: int | None = None
    seed: int = 0
    users: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    index: bool = True
    arrays: bool = True
    hnsw: dict[str, int] = field(default_factory=dict)
    threads: int = 1
    fit_sample: int = DEFAULT_FIT_SAMPLE
    shard_size: int = DEFAULT_SHARD_SIZE
    fit_weights: list[np.ndarray | None] | None = None
    fit_info: dict[str, Any] | None = None
    delta: bool = False
    distortion_threshold: float = 0.1
    verify_deltas: bool = True
    edge_nlist: int | None = None
    work_dir: Path | None = None
    keep_work: bool = False
    stages: str = "counts"


class _Progress:
    """Reports the pipeline's events ``(stage, done, total)`` to a ``progress`` callback.

    ``"counts"`` passes every event through. ``"once"`` reports each stage of a fixed list once, when its first
    event comes, as ``(stage, its index, number of stages)``: ``fit`` and ``encode`` count as ``pack`` and
    ``assemble`` as ``layer0`` there (the stages ``build_catalog`` has always reported).
    """

    _ALIASES: ClassVar[dict[str, str]] = {"fit": "pack", "encode": "pack", "assemble": "layer0"}

    def __init__(self, progress: ProgressFn | None, mode: str, opts: BuildOptions) -> None:
        self.progress = progress
        self.mode = mode
        self.stages = (["prepare", "pack", "layer0"] + (["arrays"] if opts.arrays else [])
                       + (["index", "recall"] if opts.index else []) + (["edge"] if opts.edge_nlist else [])
                       + ["publish"])  # fmt: skip
        self.seen: set[str] = set()

    def __call__(self, stage: str, done: int = 0, total: int = 1) -> None:
        if self.progress is None:
            return
        if self.mode == "counts":
            self.progress(stage, done, total)
            return
        if stage == "done":
            self.progress("done", len(self.stages), len(self.stages))
            return
        stage = self._ALIASES.get(stage, stage)
        if stage in self.stages and stage not in self.seen:
            self.seen.add(stage)
            self.progress(stage, self.stages.index(stage), len(self.stages))


def run_build(
    store: CatalogStore,
    catalog: str,
    source: CatalogSource,
    opts: BuildOptions,
    executor: Executor,
    *,
    progress: ProgressFn | None = None,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and publish the next version of ``catalog`` from ``source`` (stages in the module docstring).

    The executor starts first (a Dask cluster that cannot start or be reached raises :class:`ServiceError` before
    anything is written); then everything runs under the catalog lock, so builds and deletions of a catalog
    serialise. ``stats`` (optional) is filled with timings and shard counts (see ``build_catalog_sharded``).

    Returns:
        the new manifest entry. On any error no new version is published.
    """
    t_start = time.perf_counter()
    if opts.index:
        from reelpack.catalog.ann import require_usearch

        require_usearch()  # MissingExtraError before any work
    out_stats: dict[str, Any] = {} if stats is None else stats
    ev = _Progress(progress, opts.stages, opts)
    t0 = time.perf_counter()
    with executor:
        out_stats["cluster_s"] = time.perf_counter() - t0
        with store.lock(catalog) as cat_dir:
            ev("prepare")
            prev_manifest = store.read_manifest(catalog)  # StoreError if corrupt: never overwrite it
            clean_stale(cat_dir, prev_manifest)
            prev = latest_entry(prev_manifest)
            version = 1 if prev is None else prev["version"] + 1
            specs, ipb, chain = _settle(prev, opts, source.d)
            work = opts.work_dir if opts.work_dir is not None else cat_dir / WORK_NAME
            use_files = executor.distributed or opts.work_dir is not None
            if use_files:
                try:
                    work.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the work folder {work}: {exc.strerror or exc}") from None
            source.prepare(work)
            ids = source.ids()
            meta = {**(opts.fit_info or {}), "catalog": catalog, "catalog_version": version}
            with staged_version(cat_dir, catalog, version) as stage:
                staging = stage.staging
                files: dict[str, Path] = {"pack": staging / "pack.rpk", "layer0": staging / "layer0.rpk"}
                encoded: EncodedShards | None = None
                reused: list[bool] | None = None
                t0 = time.perf_counter()
                if chain:
                    reused = _delta_packs(cat_dir / version_dir(prev["version"]), prev["version"], source, ids, files,
                                          meta, opts, ev)  # fmt: skip
                else:
                    fitted, encoded, sums = _encode(source, specs, ipb, opts, executor, work if use_files else None,
                                                    ev, out_stats)  # fmt: skip
                    n_parts = len(encoded.jobs)
                    t0 = time.perf_counter()
                    ev("assemble", 0, n_parts * len(fitted))
                    write_packs(files["pack"], files["layer0"], ids, fitted, encoded.parts, sums, meta, ipb,
                                progress=lambda d, n: ev("assemble", d, n), n_parts=n_parts)  # fmt: skip
                if not _same_codec_bytes(files["pack"], files["layer0"]):
                    raise StoreError(
                        f"catalog {catalog!r} version {version}: layer0.rpk and pack.rpk have different layer-0 codecs"
                    )
                index_info = edge_info = None
                if opts.arrays:
                    _write_arrays(staging, files, source, ids, encoded, opts, ev)
                    if opts.index:
                        index_info = _build_index(staging, files, ids, opts, ev)
                if opts.edge_nlist is not None:
                    edge_info = _build_edge(staging, files, source, ids, version, opts, ev)
                out_stats["assemble_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                ev("publish")
                entry = {
                    "version": version,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "n_items": int(source.n),
                    "dim": int(source.d),
                    "codecs": specs,
                    "items_per_block": ipb,
                    "files": {},
                    "delta_from": prev["version"] if chain else None,
                    "index": index_info,
                    "n_users": None if opts.users is None else int(opts.users.shape[0]),
                    "seed": opts.seed,
                    "codecs_reused": reused,
                    "edge": edge_info,
                    "fit_weights": None if opts.fit_weights is None else dict(opts.fit_info or {}),
                }
                stage.publish(files, entry, prev_manifest)
    if use_files and not opts.keep_work:
        _remove_work(work, encoded)
    out_stats["publish_s"] = time.perf_counter() - t0
    out_stats["total_s"] = time.perf_counter() - t_start
    ev("done", 1, 1)
    return entry


def _settle(prev: dict[str, Any] | None, opts: BuildOptions, d: int) -> tuple[list[str], int, bool]:
    """The codecs and items per block of the new version (given, else the previous version's, else the defaults)
    and whether it continues the previous version's chain (``opts.delta``, no fit weights and the same codecs, items
    per block and dimension)."""
    specs = opts.specs
    if specs is None:
        from reelpack.codecs import make_codec

        specs = list(prev["codecs"]) if prev is not None else [make_codec(c).spec for c in DEFAULT_CODECS]
    ipb = int(opts.items_per_block) if opts.items_per_block is not None else (
        prev["items_per_block"] if prev is not None else DEFAULT_ITEMS_PER_BLOCK)  # fmt: skip
    chain = (opts.delta and opts.fit_weights is None and prev is not None and prev["codecs"] == specs
             and prev["items_per_block"] == ipb and prev["dim"] == d)  # fmt: skip
    return specs, ipb, bool(chain)


def _delta_packs(base_dir: Path, base_version: int, source: CatalogSource, ids: np.ndarray, files: dict[str, Path],
                 meta: dict[str, Any], opts: BuildOptions, ev: _Progress) -> list[bool]:  # fmt: skip
    """Continue the chain: ``pack.rpk`` and ``layer0.rpk`` with :func:`~reelpack.format.make_delta` from the previous
    version's files (its codecs reused while their distortion allows) and the two deltas, checked by applying
    them when ``opts.verify_deltas``. Returns per layer whether the previous codec was reused."""
    from reelpack.format import make_delta

    staging = files["pack"].parent
    X = source.rows(0, source.n)
    delta = staging / f"delta-from-{base_version:06d}.rpk"
    l0_delta = staging / f"layer0-delta-from-{base_version:06d}.rpk"
    ev("pack")
    rep = make_delta(base_dir / "pack.rpk", ids, X, delta, distortion_threshold=opts.distortion_threshold,
                     metadata=meta, seed=opts.seed, target_path=files["pack"])  # fmt: skip
    ev("layer0")
    make_delta(base_dir / "layer0.rpk", ids, X, l0_delta, distortion_threshold=opts.distortion_threshold,
               metadata=meta, seed=opts.seed, target_path=files["layer0"])  # fmt: skip
    files.update(delta=delta, layer0_delta=l0_delta)
    if opts.verify_deltas:
        _check_delta(base_dir / "pack.rpk", delta, files["pack"], staging)
        _check_delta(base_dir / "layer0.rpk", l0_delta, files["layer0"], staging)
    return [lay.reused for lay in rep.layers]


def _encode(source: CatalogSource, specs: list[str], ipb: int, opts: BuildOptions, executor: Executor,
            work: Path | None, ev: _Progress,
            stats: dict[str, Any]) -> tuple[list[Any], EncodedShards, list[list[float]]]:  # fmt: skip
    """Fit the codecs (cached in ``work`` when given) and encode every shard on the executor; with ``work`` the
    parts go to shard files there (a file that verifies is kept), else they come back in memory.

    Returns:
        (fitted codecs, the encoded parts, per layer the squared-error sum of every block).
    """
    ev("fit", 0, 1)
    t0 = time.perf_counter()
    seed, fit_sample, weights = opts.seed, int(opts.fit_sample), opts.fit_weights

    def fit() -> list[Any]:
        return fit_codecs(specs, source, seed, fit_sample, weights=weights)

    if work is not None:
        key: dict[str, Any] = {"specs": specs, "seed": seed, "fit_sample": fit_sample, "run": FIT_RUN,
                               "source": source.identity()}  # fmt: skip
        if weights is not None:  # a weighted fit never reuses another fit (an unweighted key stays as it was)
            key["weights"] = [None if w is None else hashlib.sha256(np.ascontiguousarray(w, np.float64)).hexdigest()
                              for w in weights]  # fmt: skip
        fit_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        fitted, cached = cached_codecs(work, fit_key, fit)
    else:
        fitted, cached = fit(), False
    codec_bytes = tuple(c.to_bytes() for c in fitted)
    stats.update(fit_s=time.perf_counter() - t0, codecs_cached=cached)
    ev("fit", 1, 1)

    t0 = time.perf_counter()
    executor.warm(warm_worker, codec_bytes, int(source.d))
    stats["warm_s"] = time.perf_counter() - t0
    shard_rows = -(-int(opts.shard_size) // ipb) * ipb
    digest = codec_digest(codec_bytes)
    identity = source.identity() if work is not None else None
    jobs = []
    for i, lo in enumerate(range(0, source.n, shard_rows)):
        hi = min(source.n, lo + shard_rows)
        path = fp = None
        if work is not None:
            fp = shard_fingerprint(digest, identity, lo, hi, ipb, opts.arrays)
            path = str(work / f"shard-{i:06d}.rps")
        jobs.append(ShardJob(i, lo, hi, path, fp or "", codec_bytes, source, ipb, opts.arrays))
    t0 = time.perf_counter()
    ev("encode", 0, len(jobs))
    counts = {"encoded": 0, "rebuilt": 0, "verified": 0}
    peaks: dict[str, int] = {}
    results: dict[int, dict[str, Any]] = {}
    shard_bytes = 0
    busy_s = 0.0
    for done, r in enumerate(executor.map_unordered(encode_shard, jobs), 1):
        results[r["shard"]] = r
        counts[r["status"]] += 1
        shard_bytes += r["bytes"]
        busy_s += r["seconds"]
        if r["vmhwm_kb"] is not None:
            peaks[r["worker"]] = max(peaks.get(r["worker"], 0), r["vmhwm_kb"])
        ev("encode", done, len(jobs))
    stats.update(encode_s=time.perf_counter() - t0, shards=len(jobs), shard_bytes=shard_bytes, shard_busy_s=busy_s,
                 workers=peaks, **counts)  # fmt: skip
    encoded = EncodedShards(jobs, results, len(fitted), int(source.d))
    sums = encoded.block_sums()
    nb = -(-source.n // ipb)
    if any(len(s) != nb for s in sums):
        raise StoreError(f"the encoded shards hold {[len(s) for s in sums]} block sums, expected {nb} per layer")
    return fitted, encoded, sums


def _write_arrays(staging: Path, files: dict[str, Path], source: CatalogSource, ids: np.ndarray,
                  encoded: EncodedShards | None, opts: BuildOptions, ev: _Progress) -> None:  # fmt: skip
    """``vectors.npy`` (streamed from the encoded parts, else from the source in shard-sized chunks), ``ids.npy``
    and the users' files."""
    if encoded is not None:
        n_chunks = len(encoded.jobs)
        chunks: Iterator[np.ndarray] = (p.vectors for p in encoded.parts(vectors=True))
    else:
        step = int(opts.shard_size)
        n_chunks = -(-source.n // step)
        chunks = (source.rows(lo, min(source.n, lo + step)) for lo in range(0, source.n, step))
    ev("arrays", 0, n_chunks)
    files["vectors"], files["ids"] = staging / "vectors.npy", staging / "ids.npy"
    _write_vectors(files["vectors"], (source.n, source.d), chunks, lambda k: ev("arrays", k, n_chunks))
    save_npy(files["ids"], ids)
    if opts.users is not None:
        files["users"], files["user_ids"] = staging / "users.npy", staging / "user_ids.npy"
        save_npy(files["users"], opts.users)
        save_npy(files["user_ids"], opts.user_ids)


def _build_index(staging: Path, files: dict[str, Path], ids: np.ndarray, opts: BuildOptions,
                 ev: _Progress) -> dict[str, Any]:  # fmt: skip
    """The HNSW index over ``vectors.npy`` (memory-mapped) as ``index.usearch``; returns the entry's ``index``."""
    from reelpack.catalog import ann

    hnsw = {"connectivity": opts.hnsw.get("connectivity", ann.DEFAULT_CONNECTIVITY),
            "expansion_add": opts.hnsw.get("expansion_add", ann.DEFAULT_EXPANSION_ADD),
            "expansion_search": opts.hnsw.get("expansion_search", ann.DEFAULT_EXPANSION_SEARCH)}  # fmt: skip
    ev("index", 0, 1)
    X = np.load(files["vectors"], mmap_mode="r")
    hidx = ann.HNSWIndex.build(X, ids, seed=opts.seed, threads=opts.threads, **hnsw)
    files["index"] = staging / "index.usearch"
    hidx.save(files["index"])
    ev("recall", 0, 1)
    queries, qsource = _recall_queries(X, opts.users, opts.seed)
    k = min(RECALL_K, X.shape[0])
    return {"kind": "usearch-hnsw", "metric": "ip", **hnsw, "recall_at_50": round(hidx.recall_at(X, queries, k), 4),
            "recall_queries": qsource, "recall_k": k}  # fmt: skip


def _build_edge(staging: Path, files: dict[str, Path], source: CatalogSource, ids: np.ndarray, version: int,
                opts: BuildOptions, ev: _Progress) -> dict[str, Any]:  # fmt: skip
    """The hierarchical index's edge catalog (``sq8`` codes, ``opts.edge_nlist`` clusters) as ``edge.rpec``."""
    from reelpack.catalog.edge import EdgeCatalog

    ev("edge", 0, 1)
    ecat = EdgeCatalog.build(source.rows(0, source.n), ids, nlist=int(opts.edge_nlist), codec="sq8",
                             catalog_version=version, seed=opts.seed)  # fmt: skip
    files["edge"] = ecat.save(staging / "edge.rpec")
    return {"nlist": ecat.nlist, "codec": ecat.codec.spec, "fingerprint": ecat.fingerprint.hex(),
            "fixed_bytes": int(ecat.fixed_bytes), "item_bytes": int(ecat.item_bytes())}  # fmt: skip


def _remove_work(work: Path, encoded: EncodedShards | None) -> None:
    """Remove the build's files from the work folder, and the folder when it is then empty."""
    if encoded is not None:
        for job in encoded.jobs:
            if job.path is not None:
                Path(job.path).unlink(missing_ok=True)
    for name in ("codecs.rps", "order.npy"):
        with contextlib.suppress(OSError):
            (work / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()  # only when empty (a user's folder with other files stays)
