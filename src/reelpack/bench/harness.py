"""The benchmark harness: float32, reelpack codecs and their faiss twins, side by side.

One run evaluates, on the same embeddings, users and split:

* the float32 brute-force reference (exact inner products),
* every requested reelpack codec (fit on the catalog, encode, score asymmetrically),
* the faiss twin of each codec at the same bytes per item (see :mod:`reelpack.bench.baselines`).

Quality: every method ranks the whole catalog for every evaluated user, in batches, with the user's
train items excluded. With a validation split (``val_split``, carved from the train part by
:func:`reelpack.data.validation_split`) every method is also ranked for the validation users (fit items
excluded, positives = validation items), every choice the run makes (whether compression-aware training
is kept, the best method per byte budget) is taken on those figures, and the test split is read once,
for the report. Latency (``query_ms``): a seeded sample of users is timed one query at a time
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
from reelpack.data.interactions import MIN_VALIDATION_USERS, Split, check_validation_split
from reelpack.errors import DimensionMismatchError, TrainingDivergedError, ValidationTooSmallError
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
    "validation_keys",
    "rate_quality_on_validation",
    "VAL_USERS_STREAM",
    "RATE_QUALITY_BUDGETS",
]

VAL_USERS_STREAM = 11
"""Seed stream of the validation-user sample: ``default_rng([config.seed, VAL_USERS_STREAM])`` (the test sample
draws from ``default_rng(config.seed)``)."""

RATE_QUALITY_BUDGETS: tuple[int, ...] = (8, 16, 32)
"""Byte budgets of ``extra["rate_quality"]`` and ``extra["rate_quality_validation"]``."""


def validation_keys(k: int) -> tuple[tuple[str, str], ...]:
    """(validation row key, the metric it holds) of a run whose ranking depth is ``k``.

    >>> validation_keys(50)[0]
    ('val_recall@50', 'recall@50')
    """
    return (
        (f"val_recall@{k}", f"recall@{k}"),
        ("val_ndcg@10", "ndcg@10"),
        ("val_mrr", "mrr"),
        (f"val_rel_recall@{k}", f"rel_recall@{k}"),
        ("val_rel_ndcg@10", "rel_ndcg@10"),
    )


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
    val_split: Split | None = None,
) -> BenchResult:
    """Evaluate float32, each codec and each faiss twin; return one row per method.

    Args:
        user_emb: float32 [split.n_users, d] query embeddings (row = Split user index).
        item_emb: float32 [split.n_items, d] catalog embeddings (row = Split item index).
        split: the train/test split the embeddings were trained on (with ``val_split``: the split it was
            carved from; the embeddings were then trained on ``val_split``'s fit part).
        config: what to run.
        progress: optional ``progress(method, done_users, total_users)`` callback (validation rankings
            report as ``"METHOD (validation)"``).
        provenance_extra: entries added to the provenance (command-line context, the embeddings).
        val_split: optional validation split, ``reelpack.data.validation_split(split, ...)``: same users
            and items, ``train_*`` the fit part, ``test_*`` the validation items. Every choice of the run
            is then taken on it, and the test split is only read for the report.

    Raises:
        DimensionMismatchError: the embeddings do not match ``split``, or ``val_split`` has other user or
            item counts.
        InvalidInputError: ``val_split`` is not a validation split, or was not carved from ``split`` (other
            data, ids, or fit + validation items that are not ``split``'s train items).
        ValidationTooSmallError: compression-aware training is asked for and fewer than
            ``MIN_VALIDATION_USERS`` validation users remain after the ``max_users`` sample.
        TrainingDivergedError: compression-aware training diverged (only without ``val_split``; with it
            the untouched codec is kept and the row says so).

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

    With ``val_split`` (validation keys; absent without it, so runs without it are unchanged):

    * every row (float32, codecs, faiss twins and baselines, QAT rows) also gets ``val_recall@K``,
      ``val_ndcg@10``, ``val_mrr`` (floats) and ``val_rel_recall@K``, ``val_rel_ndcg@10`` (relative to
      float32 on the same validation users; 1.0 for float32): the method ranked for the validation
      users (``val_split.eval_users()``, a seeded sample of ``max_users`` drawn from the seed stream
      ``[config.seed, VAL_USERS_STREAM]``) with the fit items excluded and the validation items as
      positives. The test keys above keep their meaning (test users, all train items excluded);
    * QAT rows fine-tune with ``QATConfig(objective="softmax")`` on the fit interactions
      (``val_split.train_pairs()``) and keep the fine-tuned codebooks only when their
      ``val_rel_recall@K`` beats the untouched codec's; otherwise the row holds the untouched codec.
      Extra keys: ``qat_choice`` (str: ``"kept (validation rel R@50 0.9120 > untouched 0.9050)"``,
      ``"dropped (...)"`` or ``"diverged: untouched codec kept (...)"``), ``qat_kept`` (bool),
      ``qat_objective`` and ``qat_untouched_val_rel_recall@K`` / ``qat_tuned_val_rel_recall@K``
      (``None`` when it diverged). Without ``val_split`` QAT distils the float32 scores
      (``objective="distill"``) and the tuned codec is reported as before;
    * ``extra["rate_quality_validation"]``: per byte budget the best reelpack and faiss method chosen on
      ``val_rel_recall@K``, with their test figures, the bar and whether it is met (test figures);
    * ``provenance["validation"] = {"fraction", "seed", "n_users", "n_users_with_items",
      "users_seed_stream", "choices_on_validation": [{"what", "choice"}, ...]}`` and
      ``provenance["test_read"] = "once, for the report"``.
    """
    item_emb = as_float_matrix(item_emb, "item_emb")
    user_emb = as_float_matrix(user_emb, "user_emb", dim=item_emb.shape[1])
    if item_emb.shape[0] != split.n_items or user_emb.shape[0] != split.n_users:
        raise DimensionMismatchError(
            f"embeddings [{user_emb.shape[0]} users, {item_emb.shape[0]} items] do not match the split "
            f"[{split.n_users} users, {split.n_items} items]"
        )
    if val_split is not None:
        check_validation_split(val_split, split)
    dim = item_emb.shape[1]
    k = max(config.ks)
    users = split.eval_users()
    if config.max_users is not None and config.max_users < len(users):
        rng = np.random.default_rng(config.seed)
        users = np.sort(rng.choice(users, config.max_users, replace=False))
    val_users = np.empty(0, np.int64)
    if val_split is not None:
        val_users = val_split.eval_users()
        if config.max_users is not None and config.max_users < len(val_users):
            rng = np.random.default_rng([config.seed, VAL_USERS_STREAM])
            val_users = np.sort(rng.choice(val_users, config.max_users, replace=False))
        if config.qat and len(val_users) < MIN_VALIDATION_USERS:
            raise ValidationTooSmallError(
                f"{len(val_users)} validation users (max_users {config.max_users}) are too few to decide whether "
                f"compression-aware training is kept; at least {MIN_VALIDATION_USERS} are needed (raise max_users, "
                "or use more data or a larger validation fraction)",
                users=len(val_users),
                needed=MIN_VALIDATION_USERS,
            )
    float_bytes = 4 * dim
    rows: list[dict[str, Any]] = []
    lossy = _LossSetup.make(config, split, users, item_emb.shape[0])
    latency = LatencyBench.make(split, users, k, config.latency_users, config.latency_warmup, config.seed)
    twins: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (reelpack row, its faiss twin's row)
    check_sample = np.sort(np.random.default_rng([config.seed, 3]).choice(split.n_items, min(split.n_items, 2048), replace=False))
    choices: list[dict[str, str]] = []  # the choices taken on validation (provenance["validation"])
    val_reference: dict[str, float] = {}
    val_clock = [0.0]  # seconds spent ranking validation users (kept out of fit_s / rank_s)

    def report(method: str, total: int | None = None) -> Callable[[int], None]:
        done = [0]
        n = len(users) if total is None else total

        def cb(m: int) -> None:
            done[0] += m
            if progress is not None:
                progress(method, done[0], n)

        return cb

    def finish(row: dict[str, Any], ranked: np.ndarray, reference: dict[str, Any] | None, ref_ranked) -> None:
        metrics = ranking_metrics(ranked, users, split.test_indptr, split.test_items, config.ks)
        row.update({key: v for key, v in metrics.items() if key != "n_users"})
        row["n_users"] = int(metrics["n_users"])
        if reference is not None:
            row.update(relative(metrics, reference))
            row[f"overlap@{k}"] = topk_overlap(ranked, ref_ranked, k)
        rows.append(row)

    def val_rank(method: str, score: Callable[[np.ndarray], np.ndarray] | None = None, ft=None) -> dict[str, float]:
        """Rank the validation users (fit items excluded) by ``score`` or the faiss twin ``ft``; their metrics
        plus the ``rel_*`` ones against float32 on the same users."""
        assert val_split is not None  # only called when there is one
        t0 = time.perf_counter()
        cb = report(f"{method} (validation)", len(val_users))
        if ft is not None:
            ranked = faiss_rank_users(ft, user_emb, val_split, val_users, k, config.batch_size, cb)[0]
        else:
            ranked = rank_users(score, val_split, val_users, k, config.batch_size, cb)
        val_clock[0] += time.perf_counter() - t0
        metrics = ranking_metrics(ranked, val_users, val_split.test_indptr, val_split.test_items, config.ks)
        metrics.update(relative(metrics, val_reference or metrics))
        return metrics

    def set_val(row: dict[str, Any], metrics: dict[str, float]) -> None:
        for key, metric in validation_keys(k):
            row[key] = metrics.get(metric)

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
        if val_split is not None:
            ref_val = val_rank("float32 (exact)", dense_score_fn(user_emb, item_emb))  # relative to itself
            val_reference.update({key: v for key, v in ref_val.items() if key in _metric_keys(config.ks)})
            set_val(ref_row, ref_val)
        if lossy is not None:
            lossy.set_reference(ref_ranked)
            t0 = time.perf_counter()
            lossy.measure_dense(ref_row, dense_score_fn(user_emb, item_emb))
            ref_row["robust_s"] = time.perf_counter() - t0
        ref_row["engineering_checks"] = None  # the reference is not a contestant (docs/SCORING.md)
        latency.add(ref_row, dense_search(item_emb), user_emb, ref_ranked)

        fitted: dict[str, tuple[Any, np.ndarray]] = {}
        fitted_val: dict[str, dict[str, float]] = {}  # validation metrics of the untouched qat codecs
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
            if val_split is not None:
                metrics = val_rank(codec.spec, score)
                set_val(row, metrics)
                if codec.spec in config.qat:
                    fitted_val[codec.spec] = metrics
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
            if val_split is not None:
                set_val(frow, val_rank(ft.name, ft=ft))
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
            if val_split is not None:
                set_val(frow, val_rank(ft.name, ft=ft))
            _faiss_measure(frow, ft, user_emb, item_emb[check_sample], lossy, config)
            latency.add(frow, faiss_search(ft.index), user_emb, ranked)

        for spec in config.qat:
            from reelpack.models.qat import QATConfig, finetune_codebooks

            method = f"{spec} +QAT"
            t0 = time.perf_counter()
            val_before = val_clock[0]
            chosen_val: dict[str, float] | None = None
            canonical = make_codec(spec).spec
            codec, codes = fitted.get(canonical, (None, None))
            if codec is None:
                codec = make_codec(spec).fit(item_emb, seed=config.seed)
            qat_row: dict[str, Any] = {"qat_epochs": config.qat_epochs}
            if val_split is None:
                qat_config = QATConfig(objective="distill", epochs=config.qat_epochs, seed=config.seed, num_threads=config.threads, progress=False)
                tuned = finetune_codebooks(user_emb, item_emb, codec, qat_config, codes=codes)
                chosen = (tuned.codec, tuned.codes, tuned.user_emb)
                qat_row["qat_loss"] = tuned.loss_history
            else:
                if codes is None:
                    codes = codec.encode(item_emb)
                untouched_val = fitted_val.get(canonical)
                if untouched_val is None:  # the untouched codec is not a row of its own: rank it for validation

                    def score_untouched(batch: np.ndarray, codec=codec, codes=codes) -> np.ndarray:
                        return codec.score(user_emb[batch], codes)

                    untouched_val = val_rank(f"{canonical} (untouched)", score_untouched)
                qat_config = QATConfig(objective="softmax", epochs=config.qat_epochs, seed=config.seed, num_threads=config.threads, progress=False)
                chosen, chosen_val, qat_row = _qat_on_validation(
                    lambda: finetune_codebooks(user_emb, item_emb, codec, qat_config, codes=codes,
                                               positives=val_split.train_pairs()),
                    lambda tuned: val_rank(method, lambda b, t=tuned: t.codec.score(t.user_emb[b], t.codes)),
                    (codec, codes, user_emb),
                    untouched_val,
                    k,
                )  # fmt: skip
                qat_row = {"qat_epochs": config.qat_epochs, **qat_row}
                choices.append({"what": method, "choice": qat_row["qat_choice"]})
            t1 = time.perf_counter()
            fit_s = t1 - t0 - (val_clock[0] - val_before)  # fit + fine-tune, not the validation rankings
            q_codec, q_codes, q_users = chosen

            def score_chosen(batch: np.ndarray, q_codec=q_codec, q_codes=q_codes, q_users=q_users) -> np.ndarray:
                return q_codec.score(q_users[batch], q_codes)

            ranked = rank_users(score_chosen, split, users, k, config.batch_size, report(method))
            t2 = time.perf_counter()
            row = {
                "method": method,
                "kind": "reelpack",
                "twin_of": None,
                "bytes_per_item": q_codec.bytes_per_vector,
                "compression": float_bytes / q_codec.bytes_per_vector,
                "fit_s": fit_s,
                "encode_s": 0.0,
                "rank_s": t2 - t1,
                **qat_row,
                **_codec_mse(q_codec, q_codes, item_emb),
            }
            finish(row, ranked, reference, ref_ranked)
            if chosen_val is not None:
                set_val(row, chosen_val)
            _pack_measure(row, q_codec, q_codes, q_users, item_emb[check_sample], lossy, config)
            latency.add(row, scanner_search(q_codec, q_codes), q_users, ranked)

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
    if val_split is not None:
        extra["rate_quality_validation"] = rate_quality_on_validation(rows, k)
        for budget, entry in extra["rate_quality_validation"]["budgets"].items():
            for kind in ("reelpack", "faiss"):
                best = entry[f"best_{kind}"]
                if best is not None:
                    choices.append({
                        "what": f"best {kind} at <= {budget} bytes/item",
                        "choice": f"{best['method']} (validation rel R@{k} {_fmt(best[f'val_rel_recall@{k}'])})",
                    })  # fmt: skip
    for row in rows:  # schema 2: every row has these keys (None where not measured)
        row.setdefault(f"robust_rel_recall@{k}", None)
        row.setdefault(f"robust_base_rel_recall@{k}", None)
        row.setdefault("engineering_checks", None)
    extra["robustness"] = lossy.summary() if lossy is not None else None
    prov["n_eval_users"] = int(len(users))
    if val_split is not None:
        prov["validation"] = {
            "fraction": float(val_split.validation_fraction),
            "seed": int(val_split.validation_seed),
            "n_users": int(len(val_users)),
            "n_users_with_items": int(val_split.eval_users().size),
            "users_seed_stream": [int(config.seed), VAL_USERS_STREAM],
            "choices_on_validation": choices,
        }
        prov["test_read"] = "once, for the report"
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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _qat_on_validation(
    finetune: Callable[[], Any],
    validate: Callable[[Any], dict[str, float]],
    untouched: tuple[Any, np.ndarray, np.ndarray],
    untouched_val: dict[str, float],
    k: int,
) -> tuple[tuple[Any, np.ndarray, np.ndarray], dict[str, float], dict[str, Any]]:
    """Fine-tune, then keep the tuned codebooks only if their validation rel Recall@k beats the untouched codec's.

    Args:
        finetune: runs the fine-tune, returns a :class:`reelpack.models.qat.QATResult` (may raise
            :class:`~reelpack.errors.TrainingDivergedError`).
        validate: validation metrics (with ``rel_*``) of a ``QATResult``.
        untouched: (codec, codes uint8 [n_items, M], user_emb float32 [n_users, d]) of the untouched codec.
        untouched_val: its validation metrics (with ``rel_*``).
        k: the ranking depth (``rel_recall@k`` decides).

    Returns:
        ((codec, codes, users) of the variant kept, its validation metrics, the row's ``qat_*`` keys).
    """
    key = f"rel_recall@{k}"
    before = untouched_val.get(key)
    out: dict[str, Any] = {"qat_objective": "softmax", f"qat_untouched_val_rel_recall@{k}": before}
    try:
        tuned = finetune()
    except TrainingDivergedError as exc:
        out.update({
            f"qat_tuned_val_rel_recall@{k}": None, "qat_loss": None, "qat_kept": False,
            "qat_choice": f"diverged: untouched codec kept (untouched validation rel R@{k} {_fmt(before)}; {exc})",
        })  # fmt: skip
        return untouched, untouched_val, out
    tuned_val = validate(tuned)
    after = tuned_val.get(key)
    kept = after is not None and before is not None and after > before  # NaN compares False: dropped
    out.update({f"qat_tuned_val_rel_recall@{k}": after, "qat_loss": tuned.loss_history, "qat_kept": kept})
    if kept:
        out["qat_choice"] = f"kept (validation rel R@{k} {_fmt(after)} > untouched {_fmt(before)})"
        return (tuned.codec, tuned.codes, tuned.user_emb), tuned_val, out
    out["qat_choice"] = f"dropped (validation rel R@{k} {_fmt(after)} <= untouched {_fmt(before)})"
    return untouched, untouched_val, out


def rate_quality_on_validation(
    rows: list[dict[str, Any]], k: int = 50, budgets: tuple[int, ...] = RATE_QUALITY_BUDGETS
) -> dict[str, Any]:
    """Per byte budget, the best reelpack and faiss method at or under it CHOSEN on ``val_rel_recall@k``,
    each with its validation and test figures; ``bar`` and ``closes_half_gap`` as in
    :func:`reelpack.bench.ratequality.rate_quality`, from the chosen methods' TEST ``rel_recall@k``.

    Rows without ``val_rel_recall@k`` (a run without a validation split) take no part.
    """
    vkey, tkey = f"val_rel_recall@{k}", f"rel_recall@{k}"
    fields = ("method", "kind", "bytes_per_item", vkey, tkey, "val_rel_ndcg@10", "rel_ndcg@10")
    points = [
        {f: r.get(f) for f in fields}
        for r in rows
        if r["kind"] != "reference" and r.get(vkey) is not None and not np.isnan(r[vkey])
    ]
    per_budget: dict[str, Any] = {}
    for budget in budgets:
        entry: dict[str, Any] = {}
        for kind in ("reelpack", "faiss"):
            cands = [p for p in points if p["kind"] == kind and p["bytes_per_item"] <= budget]
            entry[f"best_{kind}"] = max(cands, key=lambda p: p[vkey]) if cands else None
        r, f = entry["best_reelpack"], entry["best_faiss"]
        if r and f and r.get(tkey) is not None and f.get(tkey) is not None:
            entry["bar"] = max(f[tkey], f[tkey] + (1.0 - f[tkey]) / 2.0)
            entry["closes_half_gap"] = bool(r[tkey] >= entry["bar"])
        per_budget[str(budget)] = entry
    return {"metric": tkey, "chosen_on": vkey, "budgets": per_budget}


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
