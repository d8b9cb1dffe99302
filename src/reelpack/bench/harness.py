"""The benchmark harness: float32, reelpack codecs and their faiss twins, side by side.

One run evaluates, on the same embeddings, users and split:

* the float32 brute-force reference (exact inner products),
* every requested reelpack codec (fit on the catalog, encode, score asymmetrically),
* the faiss twin of each codec at the same bytes per item (see :mod:`reelpack.bench.baselines`).

Quality: every method ranks the whole catalog for every evaluated user, in batches, with the user's
train items excluded. Latency (``query_ms``): a seeded sample of users is timed one query at a time
through each method's single-query path, the one a device uses (:mod:`reelpack.bench.latency`).
Timings are wall-clock on one thread (BLAS, numba and faiss pinned to one thread), so that ratios
between methods of the same run are meaningful on a shared, noisy machine.

The run's parts live beside this module: :mod:`~reelpack.bench.config` (what to run),
:mod:`~reelpack.bench.results` (the result, its JSON and schema), :mod:`~reelpack.bench.latency`,
:mod:`~reelpack.bench.checks` (robustness under loss, engineering checks) and
:mod:`~reelpack.bench.ratequality`. Their public names are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from reelpack.bench.baselines import faiss_rank_users, faiss_twin_spec, fit_faiss_twin
from reelpack.bench.checks import _faiss_measure, _LossSetup, _pack_measure
from reelpack.bench.config import (
    DEFAULT_CODECS,
    DEFAULT_LATENCY_USERS,
    DEFAULT_LOSS_RATES,
    LOSS_ITEMS_PER_BLOCK,
    REFERENCE_LOSS_RATE,
    SWEEP_BASELINES,
    SWEEP_CODECS,
    SWEEP_QAT,
    BenchConfig,
)
from reelpack.bench.energy import estimate_row, get_device_model
from reelpack.bench.latency import LatencyBench, dense_search, faiss_search, scanner_search
from reelpack.bench.ratequality import _codec_mse, _faiss_mse, rate_quality
from reelpack.bench.results import RESULTS_SCHEMA_VERSION, BenchResult, load_results, provenance
from reelpack.codecs import make_codec
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError
from reelpack.metrics.quality import ranking_metrics, relative, topk_overlap
from reelpack.metrics.ranking import dense_score_fn, rank_users
from reelpack.util.validate import as_float_matrix

__all__ = [
    "BenchConfig",
    "BenchResult",
    "run_bench",
    "rate_quality",
    "load_results",
    "provenance",
    "DEFAULT_CODECS",
    "DEFAULT_LATENCY_USERS",
    "DEFAULT_LOSS_RATES",
    "REFERENCE_LOSS_RATE",
    "LOSS_ITEMS_PER_BLOCK",
    "RESULTS_SCHEMA_VERSION",
    "SWEEP_CODECS",
    "SWEEP_BASELINES",
    "SWEEP_QAT",
]


def _limit_threads(n: int):
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    return threadpool_limits(limits=n)


def run_bench(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    split: Split,
    config: BenchConfig = BenchConfig(),
    progress: Callable[[str, int, int], None] | None = None,
    provenance_extra: dict[str, Any] | None = None,
) -> BenchResult:
    """Evaluate float32, each codec and each faiss twin; return one row per method.

    Args:
        user_emb: float32 [split.n_users, d] query embeddings (row = Split user index).
        item_emb: float32 [split.n_items, d] catalog embeddings (row = Split item index).
        split: the train/test split the embeddings were trained on.
        config: what to run.
        progress: optional ``progress(method, done_users, total_users)`` callback.

    Row keys: ``method``, ``kind`` (reference/reelpack/faiss), ``twin_of``,
    ``bytes_per_item``, ``compression``, the metrics (``recall@50``, ``ndcg@10``,
    ``mrr``...), ``rel_*`` metrics vs float32, ``overlap@K`` with the float32
    top-K, ``fit_s``, ``encode_s``, ``rank_s`` (batched ranking of every evaluated user) and
    ``batch_ms_per_user`` (``rank_s * 1000 / n_users``), and for reelpack rows with a twin
    ``delta_rel_recall@K_vs_faiss``, ``rank_time_vs_faiss`` and ``query_time_vs_faiss``.

    Every row also gets ``query_ms`` (MEASURED: median wall-clock ms of one query through the
    method's single-query path, over a seeded sample of ``config.latency_users`` users; see
    :mod:`reelpack.bench.latency`), ``query_ms_p90``, ``latency_path`` (which path was timed),
    ``latency_users``, ``latency_overlap@K``, ``payload_bytes`` and the phone ESTIMATES of
    :func:`reelpack.bench.energy.estimate_row` (keys ``est_*``, for ``config.device_model``, scaled
    from ``query_ms``); ``provenance["device_model"]`` holds the model's constants and their sources,
    ``provenance["latency"]`` how the latency was timed.

    Schema version 2 adds, per row, ``robust_rel_recall@K`` (relative Recall@K at 10 % i.i.d. block
    loss), ``robust_base_rel_recall@K`` (the same user sample without loss), ``engineering_checks``
    (``{name: bool | None}``, ``None`` for the float32 row) and ``robust_s`` (seconds spent on both);
    ``extra["robustness"]`` (the loss curves of every method), ``extra["contest"]`` (the
    :func:`reelpack.bench.contest.contest_scores` of the run, serialised) and ``extra["contest_weights"]``.
    Schema version 3 times ``query_ms`` through the single-query paths (version 2: ``rank_s`` per user).
    See docs/SCORING.md.
    """
    item_emb = as_float_matrix(item_emb, "item_emb")
    user_emb = as_float_matrix(user_emb, "user_emb", dim=item_emb.shape[1])
    if item_emb.shape[0] != split.n_items or user_emb.shape[0] != split.n_users:
        raise DimensionMismatchError(
            f"embeddings [{user_emb.shape[0]} users, {item_emb.shape[0]} items] do not match the split "
            f"[{split.n_users} users, {split.n_items} items]"
        )
    dim = item_emb.shape[1]
    k = max(config.ks)
    users = split.eval_users()
    if config.max_users is not None and config.max_users < len(users):
        rng = np.random.default_rng(config.seed)
        users = np.sort(rng.choice(users, config.max_users, replace=False))
    float_bytes = 4 * dim
    rows: list[dict[str, Any]] = []
    lossy = _LossSetup.make(config, split, users, item_emb.shape[0])
    latency = LatencyBench.make(split, users, k, config.latency_users, config.latency_warmup, config.seed)
    twins: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (reelpack row, its faiss twin's row)
    check_sample = np.sort(np.random.default_rng([config.seed, 3]).choice(split.n_items, min(split.n_items, 2048), replace=False))

    def report(method: str) -> Callable[[int], None]:
        done = [0]

        def cb(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(method, done[0], len(users))

        return cb

    def finish(row: dict[str, Any], ranked: np.ndarray, reference: dict[str, Any] | None, ref_ranked) -> None:
        metrics = ranking_metrics(ranked, users, split.test_indptr, split.test_items, config.ks)
        row.update({key: v for key, v in metrics.items() if key != "n_users"})
        row["n_users"] = int(metrics["n_users"])
        if reference is not None:
            row.update(relative(metrics, reference))
            row[f"overlap@{k}"] = topk_overlap(ranked, ref_ranked, k)
        rows.append(row)

    with _limit_threads(config.threads):
        # float32 reference
        t0 = time.perf_counter()
        ref_ranked = rank_users(
            dense_score_fn(user_emb, item_emb), split, users, k, config.batch_size, report("float32 (exact)")
        )
        ref_row: dict[str, Any] = {
            "method": "float32 (exact)",
            "kind": "reference",
            "twin_of": None,
            "bytes_per_item": float_bytes,
            "compression": 1.0,
            "fit_s": 0.0,
            "encode_s": 0.0,
            "rank_s": time.perf_counter() - t0,
        }
        finish(ref_row, ref_ranked, None, None)
        reference = {key: v for key, v in ref_row.items() if key in _metric_keys(config.ks)}
        ref_row.update(relative(reference, reference))
        ref_row[f"overlap@{k}"] = 1.0
        if lossy is not None:
            lossy.set_reference(ref_ranked)
            t0 = time.perf_counter()
            lossy.measure_dense(ref_row, dense_score_fn(user_emb, item_emb))
            ref_row["robust_s"] = time.perf_counter() - t0
        ref_row["engineering_checks"] = None  # the reference is not a contestant (docs/SCORING.md)
        latency.add(ref_row, dense_search(item_emb), user_emb, ref_ranked)

        fitted: dict[str, tuple[Any, np.ndarray]] = {}
        for spec in config.codecs:
            codec = make_codec(spec)
            t0 = time.perf_counter()
            codec.fit(item_emb, seed=config.seed)
            t1 = time.perf_counter()
            codes = codec.encode(item_emb)
            t2 = time.perf_counter()
            if codec.spec in config.qat:
                fitted[codec.spec] = (codec, codes)  # compression-aware training starts from these

            def score(batch: np.ndarray, codec=codec, codes=codes) -> np.ndarray:
                return codec.score(user_emb[batch], codes)

            ranked = rank_users(score, split, users, k, config.batch_size, report(codec.spec))
            t3 = time.perf_counter()
            row = {
                "method": codec.spec,
                "kind": "reelpack",
                "twin_of": None,
                "bytes_per_item": codec.bytes_per_vector,
                "compression": float_bytes / codec.bytes_per_vector,
                "fit_s": t1 - t0,
                "encode_s": t2 - t1,
                "rank_s": t3 - t2,
                **_codec_mse(codec, codes, item_emb),
            }
            finish(row, ranked, reference, ref_ranked)
            _pack_measure(row, codec, codes, user_emb, item_emb[check_sample], lossy, config)
            latency.add(row, scanner_search(codec, codes), user_emb, ranked)

            twin = faiss_twin_spec(codec.spec) if config.faiss_twins else None
            if twin is None:
                continue
            ft = fit_faiss_twin(twin, item_emb, seed=config.seed)
            ranked, search_s = faiss_rank_users(
                ft, user_emb, split, users, k, config.batch_size, report(ft.name)
            )
            frow = _faiss_row(ft, search_s, codec.spec, item_emb)
            finish(frow, ranked, reference, ref_ranked)
            _faiss_measure(frow, ft, user_emb, item_emb[check_sample], lossy, config)
            latency.add(frow, faiss_search(ft.index), user_emb, ranked)
            twins.append((row, frow))
            key = f"rel_recall@{k}"
            row[f"delta_{key}_vs_faiss"] = row[key] - frow[key]
            row["rank_time_vs_faiss"] = row["rank_s"] / frow["rank_s"] if frow["rank_s"] > 0 else float("nan")
            # the twin row was appended after the codec row; keep that order

        for factory in config.baselines:
            ft = fit_faiss_twin(factory, item_emb, seed=config.seed, max_train=config.max_train)
            ranked, search_s = faiss_rank_users(ft, user_emb, split, users, k, config.batch_size, report(ft.name))
            frow = _faiss_row(ft, search_s, None, item_emb)
            finish(frow, ranked, reference, ref_ranked)
            _faiss_measure(frow, ft, user_emb, item_emb[check_sample], lossy, config)
            latency.add(frow, faiss_search(ft.index), user_emb, ranked)

        for spec in config.qat:
            from reelpack.models.qat import QATConfig, finetune_codebooks

            t0 = time.perf_counter()
            codec, codes = fitted.get(make_codec(spec).spec, (None, None))
            if codec is None:
                codec = make_codec(spec).fit(item_emb, seed=config.seed)
            qat_config = QATConfig(epochs=config.qat_epochs, seed=config.seed, num_threads=config.threads, progress=False)
            tuned = finetune_codebooks(user_emb, item_emb, codec, qat_config, codes=codes)
            t1 = time.perf_counter()
            tuned_users = tuned.user_emb

            def score_tuned(batch: np.ndarray, tuned=tuned, tuned_users=tuned_users) -> np.ndarray:
                return tuned.codec.score(tuned_users[batch], tuned.codes)

            ranked = rank_users(score_tuned, split, users, k, config.batch_size, report(spec + " +QAT"))
            t2 = time.perf_counter()
            row = {
                "method": f"{spec} +QAT",
                "kind": "reelpack",
                "twin_of": None,
                "bytes_per_item": tuned.codec.bytes_per_vector,
                "compression": float_bytes / tuned.codec.bytes_per_vector,
                "fit_s": t1 - t0,
                "encode_s": 0.0,
                "rank_s": t2 - t1,
                "qat_epochs": config.qat_epochs,
                "qat_loss": tuned.loss_history,
                **_codec_mse(tuned.codec, tuned.codes, item_emb),
            }
            finish(row, ranked, reference, ref_ranked)
            _pack_measure(row, tuned.codec, tuned.codes, tuned_users, item_emb[check_sample], lossy, config)
            latency.add(row, scanner_search(tuned.codec, tuned.codes), tuned_users, ranked)

        # single-query latency of every method, interleaved user by user (quality is already measured)
        latency.run()
    for row in rows:
        row["batch_ms_per_user"] = row["rank_s"] * 1000.0 / row["n_users"] if row["n_users"] else None
    for row, frow in twins:
        row["query_time_vs_faiss"] = row["query_ms"] / frow["query_ms"] if frow["query_ms"] > 0 else float("nan")
    device = get_device_model(config.device_model)
    for row in rows:
        row.update(estimate_row(row, split.n_items, device))
    prov = provenance(split, dim, provenance_extra)
    prov["device_model"] = device.to_dict()
    extra: dict[str, Any] = {"rate_quality": rate_quality(rows, k)}
    for row in rows:  # schema 2: every row has these keys (None where not measured)
        row.setdefault(f"robust_rel_recall@{k}", None)
        row.setdefault(f"robust_base_rel_recall@{k}", None)
        row.setdefault("engineering_checks", None)
    extra["robustness"] = lossy.summary() if lossy is not None else None
    prov["n_eval_users"] = int(len(users))
    prov["threads"] = config.threads
    prov["latency"] = latency.summary()
    prov["config"] = {
        **asdict(config),
        "codecs": list(config.codecs),
        "ks": list(config.ks),
        "loss_rates": list(config.loss_rates),
    }
    result = BenchResult(rows=rows, provenance=prov, extra=extra)
    from reelpack.bench.contest import WEIGHTS, contest_scores

    extra["contest"] = [s.to_dict() for s in contest_scores(result)]
    extra["contest_weights"] = dict(WEIGHTS)
    return result




def _faiss_row(ft, search_s: float, twin_of: str | None, item_emb: np.ndarray) -> dict[str, Any]:
    """The result row of a faiss index (metrics are added by the caller)."""
    float_bytes = 4 * item_emb.shape[1]
    return {
        "method": ft.name,
        "kind": "faiss",
        "twin_of": twin_of,
        "bytes_per_item": ft.bytes_per_vector,
        "compression": float_bytes / ft.bytes_per_vector,
        "fit_s": ft.fit_seconds,
        "encode_s": ft.encode_seconds,
        "rank_s": search_s,
        **_faiss_mse(ft, item_emb),
    }


def _metric_keys(ks: tuple[int, ...] | list[int]) -> set[str]:
    keys = {"mrr"}
    for kk in ks:
        keys |= {f"recall@{kk}", f"ndcg@{kk}", f"precision@{kk}"}
    return keys
