"""The two front ends of the catalog build: :func:`build_catalog` (in this process) and
:func:`build_catalog_sharded` (shards encoded on Dask workers, resumable; ``reelpack build-catalog --scheduler``).

Both check their arguments and run the one pipeline, :func:`reelpack.catalog.pipeline.run_build`, with an
in-process or a Dask executor (:mod:`reelpack.catalog.executor`), so they write the same bytes. The sources
(:mod:`reelpack.catalog.sources`), the fit rule and the block encoding (:mod:`reelpack.catalog.pipeline`,
:mod:`reelpack.catalog.shards`) are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.catalog.executor import DaskExecutor, InProcessExecutor
from reelpack.catalog.pipeline import (
    DEFAULT_FIT_SAMPLE,
    DEFAULT_SHARD_SIZE,
    FIT_RUN,
    BuildOptions,
    ProgressFn,
    check_codecs_and_block,
    check_fit_info,
    check_fit_weights,
    check_seed,
    check_users,
    fit_codecs,
    fit_sample_rows,
    run_build,
    write_packs,
)
from reelpack.catalog.shards import encode_blocks, verify_shard_file
from reelpack.catalog.sources import (
    SYNTH_CHUNK,
    ArraySource,
    CatalogSource,
    NpySource,
    SyntheticSource,
    load_npy_array,
)
from reelpack.catalog.store import CatalogStore, validate_catalog_name
from reelpack.errors import DataNotFoundError, InvalidInputError
from reelpack.util.ids import check_item_ids

__all__ = [
    "build_catalog",
    "build_catalog_sharded",
    "DEFAULT_FIT_SAMPLE",
    "DEFAULT_SHARD_SIZE",
    "FIT_RUN",
    "SYNTH_CHUNK",
    "NpySource",
    "SyntheticSource",
    "ArraySource",
    "fit_sample_rows",
    "check_fit_weights",
    "check_fit_info",
    "fit_codecs",
    "encode_blocks",
    "write_packs",
    "verify_shard_file",
]


def _check_store(store: object) -> None:
    if not isinstance(store, CatalogStore):
        raise InvalidInputError(f"store must be a CatalogStore, got {type(store).__name__}")


def _id_sorted_weights(fit_weights: Any, n_codecs: int | None, order: np.ndarray | None,
                       n: int) -> list[np.ndarray | None] | None:  # fmt: skip
    """Check ``fit_weights`` (:func:`check_fit_weights`; given in the input row order) and put each into the id
    order the build fits and encodes in: ``w[order]`` (``order``: int [n], the input row of each id-sorted row;
    ``None`` when the input rows are already in id order). ``None`` when no codec is weighted."""
    ws = check_fit_weights(fit_weights, n_codecs, n)
    if ws is None or order is None:
        return ws
    return [None if w is None else np.ascontiguousarray(w[order]) for w in ws]


def _npy_source_order(source: NpySource) -> np.ndarray | None:
    """The input row of each id-sorted row of an :class:`NpySource`: int64 [n] (the stable argsort of its ids, as
    :meth:`NpySource.prepare` sorts the rows), or ``None`` when it has no ids file (rows already in id order).

    Raises:
        DataNotFoundError: the ids file is missing. InvalidInputError and subclasses: bad ids.
    """
    if source.ids_path is None:
        return None
    if not source.ids_path.is_file():
        raise DataNotFoundError(f"ids file not found: {source.ids_path}")
    ids = check_item_ids(load_npy_array(source.ids_path, "ids"), what="ids", n=source.n)
    return np.argsort(ids, kind="stable")


def build_catalog(
    store: CatalogStore,
    catalog: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    codecs: Sequence[str] | str | None = None,
    users: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    items_per_block: int | None = None,
    seed: int = 0,
    index: bool = True,
    progress: ProgressFn | None = None,
    distortion_threshold: float = 0.1,
    connectivity: int | None = None,
    expansion_add: int | None = None,
    expansion_search: int | None = None,
    threads: int = 1,
    verify_deltas: bool = True,
    fit_sample: int | None = None,
    edge: bool = False,
    edge_nlist: int | None = None,
    fit_weights: Sequence[np.ndarray | None] | None = None,
    fit_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and publish the next version of ``catalog``; return its manifest entry.

    Args:
        store: the store. catalog: a valid catalog name (created on the first build).
        ids: unique non-negative integer item ids [n] (any order). vectors: float [n, d], finite.
        codecs: codec specs, layer 0 first (a list, or one string separated by spaces/';'). Default: the
            previous version's codecs, else ``("pq4", "sq8")``. Different codecs than the previous version's
            start a fresh chain (re-fitted, no delta).
        users, user_ids: optional user vectors float [m, d] and unique ids [m] (default ``0..m-1``), stored with
            the version (sorted by user id) and used as the recall queries of the index.
        items_per_block: items per block of both packs. Default: the previous version's, else 1024. A
            different value starts a fresh chain.
        seed: seed of codec fitting (first version / re-fits), of the index insertion order and recall queries.
        index: build the HNSW index (``index.usearch``); without it the entry's ``index`` is null.
        progress: optional ``progress(stage, done, total)`` callback.
        distortion_threshold: codec reuse rule of :func:`~reelpack.format.make_delta`.
        connectivity, expansion_add, expansion_search: HNSW parameters (default: :mod:`reelpack.catalog.ann`'s).
        threads: HNSW insertion threads (1 = deterministic; 0 = all cores).
        verify_deltas: check that applying each delta to the previous file rebuilds the new file byte for byte.
        fit_sample: a fresh chain's codecs are fitted on :func:`reelpack.catalog.build.fit_sample_rows` of the
            id-sorted catalog (all rows up to ``fit_sample``, default 131072; above it, seeded runs of 256 rows)
            and every block is encoded on its own, so :func:`reelpack.catalog.build.build_catalog_sharded` writes
            the same bytes.
        edge: also build the hierarchical index's :class:`~reelpack.catalog.edge.EdgeCatalog` (faiss k-means
            coarse clusters of the float32 vectors, ``sq8`` codes, ``seed``) as ``edge.rpec``; the service cuts
            device summaries from it (``GET .../edge-summary``). The entry's ``edge`` then describes it.
        edge_nlist: its coarse clusters (default ``min(1024, max(1, n // 64))``, at most n); needs ``edge``.
        fit_weights: optional per-codec fit weights, one entry per codec (layer 0 first; with ``codecs=None`` per
            codec that applies): ``None`` (uniform fit) or float [n] row weights, finite, >= 0, not all 0, in the
            order of ``ids`` / ``vectors`` (e.g. :func:`reelpack.data.popularity_weights` of the items' training
            interactions). They are sorted with the rows by id; each codec is fitted on the fit sample with the
            weights of its rows (:func:`fit_codecs`). A weighted build starts a fresh chain (no delta).
        fit_info: optional JSON description of ``fit_weights`` (e.g. ``{"popularity_beta": {"rq8-n": 1.0}}``;
            :func:`check_fit_info`): the entry's ``fit_weights`` (``{}`` when weighted without it, ``null`` when
            unweighted) and merged into both packs' metadata.

    Returns:
        the new version entry of the manifest (see the module docstring).

    Raises:
        InvalidInputError and subclasses (bad name, shapes, ids, NaN, fit weights), CodecSpecError (bad codec
        spec), StoreError (corrupt existing manifest, unwritable store). On any error no new version is published.
    """
    if fit_sample is None:
        fit_sample = DEFAULT_FIT_SAMPLE
    fit_sample_rows(1, 0, fit_sample)  # validates fit_sample
    validate_catalog_name(catalog)
    _check_store(store)
    source = ArraySource(ids, vectors)  # checks vectors, then ids; sorts by id
    U, uids = check_users(users, user_ids, source.d)
    specs = check_codecs_and_block(codecs, items_per_block)  # rejects bad specs before any work
    seed = check_seed(seed)
    weights = None
    if fit_weights is not None:  # the same stable id order ArraySource sorts the rows in
        order = np.argsort(check_item_ids(ids, what="ids", n=source.n), kind="stable")
        weights = _id_sorted_weights(fit_weights, None if specs is None else len(specs), order, source.n)
    info = check_fit_info(fit_info, weights is not None)
    if not isinstance(edge, (bool, np.bool_)):
        raise InvalidInputError(f"edge must be a bool, got {edge!r}")
    if edge_nlist is not None and not edge:
        raise InvalidInputError("edge_nlist needs edge=True")
    nlist = min(1024, max(1, source.n // 64)) if edge_nlist is None else edge_nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= int(nlist) <= source.n:
        raise InvalidInputError(f"edge_nlist must be an integer in 1..{source.n} (the item count), got {nlist!r}")
    hnsw = {k: v for k, v in (("connectivity", connectivity), ("expansion_add", expansion_add),
                              ("expansion_search", expansion_search)) if v is not None}  # fmt: skip
    opts = BuildOptions(specs=specs, items_per_block=items_per_block, seed=seed, users=U, user_ids=uids, index=index,
                        arrays=True, hnsw=hnsw, threads=threads, fit_sample=fit_sample, fit_weights=weights,
                        fit_info=info, delta=True, distortion_threshold=distortion_threshold,
                        verify_deltas=verify_deltas,
                        edge_nlist=int(nlist) if edge else None, stages="once")  # fmt: skip
    return run_build(store, catalog, source, opts, InProcessExecutor(), progress=progress)


def build_catalog_sharded(
    store: CatalogStore,
    catalog: str,
    source: CatalogSource,
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
    fit_weights: Sequence[np.ndarray | None] | None = None,
    fit_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and publish the next version of ``catalog`` with shards encoded on Dask workers.

    The packs, ``vectors.npy``, ``ids.npy`` (and users, index) are byte-identical to what
    :func:`build_catalog` writes for the same catalog, codecs, items per block, seed and
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
        progress: ``progress(stage, done, total)``; stages ``prepare``, ``fit``, ``encode`` (shards done /
            shards), ``assemble`` (shard passes / total), ``arrays`` (shards), ``index``, ``recall``, ``publish``,
            ``done``.
        stats: optional dict filled with timings (``cluster_s`` (start/connect), ``fit_s``, ``encode_s``, ``assemble_s``, ``publish_s``,
            ``total_s``), shard counts (``shards``, ``encoded``, ``rebuilt``, ``verified``), ``shard_bytes``,
            ``codecs_cached`` and per-worker peak RSS (``workers``: address -> kB).
        fit_weights: optional per-codec fit weights as in ``build_catalog`` (one entry per codec: ``None`` or
            float [n]), in the source's input order: the rows of an :class:`NpySource`'s ``.npy`` file (sorted here
            with its ids file, as its rows are), ids ``0..n-1`` of a :class:`SyntheticSource`, and the id-sorted
            rows (``source.ids()``) of an :class:`ArraySource`. The codec cache in the work folder is keyed by
            their digest, so a weighted fit never reuses an unweighted one (or one with other weights).
        fit_info: optional JSON description of ``fit_weights``, as in ``build_catalog``.

    The Dask cluster starts (or is reached) first; then the whole build runs under the catalog lock, as
    ``build_catalog`` does.

    Returns:
        the new manifest entry (as ``build_catalog``).

    Raises:
        InvalidInputError (bad arguments), CodecSpecError, MissingExtraError (dask not installed: the
        ``[scale]`` extra), ServiceError (scheduler unreachable or without workers; raised before anything is
        written), StoreError; any error publishes nothing.
    """
    validate_catalog_name(catalog)
    _check_store(store)
    if not isinstance(source, CatalogSource):
        raise InvalidInputError(f"source must be an NpySource, SyntheticSource or ArraySource, got {type(source).__name__}")
    for name, v, lo in (("n_workers", n_workers, 1), ("shard_size", shard_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= 1 << 30:
            raise InvalidInputError(f"{name} must be an integer in {lo}..{1 << 30}, got {v!r}")
    seed = check_seed(seed)
    if not isinstance(connect_timeout, (int, float)) or not 0 < connect_timeout <= 3600:
        raise InvalidInputError(f"connect_timeout must be in (0, 3600] seconds, got {connect_timeout!r}")
    if index and not arrays:
        raise InvalidInputError("index=True needs arrays=True (the HNSW index is built from vectors.npy)")
    fit_sample_rows(1, seed, fit_sample)  # validates fit_sample
    specs = check_codecs_and_block(codecs, items_per_block)
    U, uids = check_users(users, user_ids, source.d)
    weights = None
    if fit_weights is not None:
        order = _npy_source_order(source) if isinstance(source, NpySource) else None
        weights = _id_sorted_weights(fit_weights, None if specs is None else len(specs), order, source.n)
    info = check_fit_info(fit_info, weights is not None)
    executor = DaskExecutor(scheduler, int(n_workers), float(connect_timeout))
    opts = BuildOptions(specs=specs, items_per_block=items_per_block, seed=seed, users=U, user_ids=uids, index=index,
                        arrays=arrays, threads=threads, fit_sample=int(fit_sample), shard_size=int(shard_size),
                        fit_weights=weights, fit_info=info,
                        work_dir=None if work_dir is None else Path(work_dir), keep_work=keep_work,
                        stages="counts")  # fmt: skip
    return run_build(store, catalog, source, opts, executor, progress=progress, stats=stats)
