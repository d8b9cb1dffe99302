"""The benchmark harness: float32, reelpack codecs and their faiss twins, side by side.

One run evaluates, on the same embeddings, users and split:

* the float32 brute-force reference (exact inner products),
* every requested reelpack codec (fit on the catalog, encode, score asymmetrically),
* the faiss twin of each codec at the same bytes per item (see :mod:`reelpack.bench.baselines`).

Every method ranks the whole catalog for every evaluated user with the user's
train items excluded. Timings are wall-clock seconds on one thread (BLAS, numba
and faiss pinned to one thread), so that ratios between methods of the same run
are meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.util.validate import as_float_matrix
from reelpack.codecs import make_codec
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError, InvalidInputError
from reelpack.bench.baselines import faiss_rank_users, faiss_twin_spec, fit_faiss_twin
from reelpack.bench.energy import DEFAULT_DEVICE_MODEL, estimate_row, get_device_model
from reelpack.metrics.quality import ranking_metrics, relative, topk_overlap
from reelpack.metrics.ranking import dense_score_fn, rank_users

__all__ = [
    "BenchConfig",
    "BenchResult",
    "run_bench",
    "rate_quality",
    "load_results",
    "DEFAULT_CODECS",
    "DEFAULT_LOSS_RATES",
    "REFERENCE_LOSS_RATE",
    "LOSS_ITEMS_PER_BLOCK",
    "RESULTS_SCHEMA_VERSION",
    "SWEEP_CODECS",
    "SWEEP_BASELINES",
    "SWEEP_QAT",
]

RESULTS_SCHEMA_VERSION = 2
"""Version 2 added ``robust_rel_recall@K``, ``engineering_checks`` per row and ``extra.robustness``/``extra.contest``."""
DEFAULT_LOSS_RATES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
REFERENCE_LOSS_RATE = 0.1
"""The loss rate of the rows' ``robust_rel_recall@K`` (always measured, added to the rates when absent)."""
LOSS_ITEMS_PER_BLOCK = 64
"""Items per block (= per lost packet) of the packs written for the robustness measurement."""
DEFAULT_CODECS: tuple[str, ...] = (
    "fp16",
    "sq8",
    "sq4",
    "pq16",
    "pq8",
    "opq16,pq16",
    "simhash128",
    "simhash128-hamming",
    "countsketch32",
)

# The rate-quality sweep (``reelpack bench --sweep``): reelpack codecs at 8, 16 and 32 bytes per item
# (for d = 64; "pqM"/"apqM" need M to divide d), faiss's strongest codecs at the same budgets (PQ, OPQ,
# the additive quantisers RQ and LSQ, SQ, RaBitQ), and the codecs tuned by compression-aware training.
SWEEP_CODECS: tuple[str, ...] = (
    "pq8", "apq8-t0.3", "qat-rq4+4",
    "pq16", "apq16-t0.3", "qat-apq16-t0.3", "qat-rq8+8", "wsq16", "rabitq",
    "sq4", "pq32", "apq32-t0.3", "qat-pq32", "wsq32-mm", "rabitq2",
)  # fmt: skip
SWEEP_BASELINES: tuple[str, ...] = (
    "PQ8np", "OPQ8,PQ8np", "RQ8x8", "LSQ8x8",
    "PQ16np", "OPQ16,PQ16np", "RQ16x8", "LSQ16x8", "RaBitQ",
    "SQ4", "PQ32np", "RQ32x8",
)  # fmt: skip
SWEEP_QAT: tuple[str, ...] = ("qat-rq4+4", "qat-rq8+8", "qat-apq16-t0.3", "qat-pq32")


@dataclass(frozen=True)
class BenchConfig:
    """What one bench run measures.

    Attributes:
        codecs: reelpack factory strings to evaluate.
        faiss_twins: also run each codec's faiss twin (where one exists).
        ks: metric cut-offs; the ranking depth is max(ks).
        max_users: evaluate a seeded random sample of this many users (``None``: all with test items).
        batch_size: users scored per batch.
        seed: seed for codec fitting, faiss training and the user sample.
        threads: threads for BLAS/faiss during the run (1 for comparable timings).
        device_model: preset of :mod:`reelpack.bench.energy` used for the phone latency and energy
            ESTIMATES (``est_*`` row fields; constants and sources in docs/ENERGY.md).
        loss_rates: i.i.d. block-loss rates of the robustness curves (``REFERENCE_LOSS_RATE`` is added
            when absent); empty: no robustness measurement.
        robust_users: seeded sample (drawn from the evaluated users) ranked under loss; 0 turns the
            robustness measurement off.
        engineering_checks: run the per-method engineering checks (pack round trip, CRC detection,
            deterministic encoding, typed error on a bad query).
    """

    codecs: tuple[str, ...] = DEFAULT_CODECS
    faiss_twins: bool = True
    ks: tuple[int, ...] = (10, 20, 50)
    max_users: int | None = None
    batch_size: int = 1024
    seed: int = 0
    threads: int = 1
    baselines: tuple[str, ...] = ()
    qat: tuple[str, ...] = ()
    qat_epochs: int = 3
    max_train: int = 100_000
    device_model: str = DEFAULT_DEVICE_MODEL
    loss_rates: tuple[float, ...] = DEFAULT_LOSS_RATES
    robust_users: int = 2000
    engineering_checks: bool = True

    def __post_init__(self) -> None:
        rates = tuple(self.loss_rates)
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0 for r in rates):
            raise InvalidInputError(f"loss_rates must be numbers in [0, 1), got {self.loss_rates!r}")
        if isinstance(self.robust_users, bool) or not isinstance(self.robust_users, int) or self.robust_users < 0:
            raise InvalidInputError(f"robust_users must be an integer >= 0 (0: no robustness), got {self.robust_users!r}")
        get_device_model(self.device_model)  # unknown preset -> InvalidInputError listing the presets
        if not self.ks or min(self.ks) <= 0:
            raise InvalidInputError(f"ks must be positive cut-offs, got {self.ks}")
        if self.max_users is not None and self.max_users <= 0:
            raise InvalidInputError(f"max_users must be positive, got {self.max_users}")
        if self.batch_size <= 0 or self.threads <= 0:
            raise InvalidInputError("batch_size and threads must be positive")
        for spec in self.codecs:
            make_codec(spec)  # fail early on a bad spec
        for spec in self.qat:
            if make_codec(spec).family != "qat":
                raise InvalidInputError(f"compression-aware training needs a 'qat-...' spec, got {spec!r}")
        if self.qat and self.qat_epochs < 1:
            raise InvalidInputError(f"qat_epochs must be >= 1, got {self.qat_epochs}")


@dataclass
class BenchResult:
    """Rows (one dict per method) plus the provenance of the run."""

    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    schema_version: int = RESULTS_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=_json_default)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


def _json_default(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def provenance(split: Split, dim: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Command, versions, data identity and machine of a run."""
    import faiss
    import numba

    import reelpack

    versions = {"reelpack": reelpack.__version__, "numpy": np.__version__, "faiss": faiss.__version__}
    versions["numba"] = numba.__version__
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    out = {
        "command": " ".join(["reelpack", *sys.argv[1:]]) if sys.argv and "reelpack" in sys.argv[0] else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": split.label,
        "data_hash": split.data_hash,
        "synthetic": split.synthetic,
        "n_users": split.n_users,
        "n_items": split.n_items,
        "split_seed": split.seed,
        "test_fraction": split.test_fraction,
        "dim": dim,
        "versions": versions,
        "machine": _machine(),
    }
    out.update(extra or {})
    return out


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
    top-K, ``fit_s``, ``encode_s``, ``rank_s`` (ranking every evaluated user),
    and for reelpack rows with a twin ``delta_rel_recall@K_vs_faiss``.

    Every row also gets ``query_ms`` (MEASURED: ``rank_s * 1000 / n_users``, batched scoring of all
    items plus top-K, amortised per user), ``payload_bytes`` and the phone ESTIMATES of
    :func:`reelpack.bench.energy.estimate_row` (keys ``est_*``, for ``config.device_model``);
    ``provenance["device_model"]`` holds the model's constants and their sources.

    Schema version 2 adds, per row, ``robust_rel_recall@K`` (relative Recall@K at 10 % i.i.d. block
    loss), ``robust_base_rel_recall@K`` (the same user sample without loss), ``engineering_checks``
    (``{name: bool | None}``, ``None`` for the float32 row) and ``robust_s`` (seconds spent on both);
    ``extra["robustness"]`` (the loss curves of every method), ``extra["contest"]`` (the
    :func:`reelpack.bench.contest.contest_scores` of the run, serialised) and ``extra["contest_weights"]``.
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


# ------------------------------------------------------------------------------------------------
# Robustness under loss and engineering checks (schema version 2)
# ------------------------------------------------------------------------------------------------
@dataclass
class _LossSetup:
    """The shared loss scenario of a run: one seeded user sample, one lost-block mask per rate.

    Every method sees the same lost blocks (blocks of ``LOSS_ITEMS_PER_BLOCK`` consecutive items,
    in item-index order) at each rate, and is ranked for the same users.
    """

    split: Split
    users: np.ndarray  # int64 [m] sampled user indexes (sorted)
    positions: np.ndarray  # int64 [m] their rows in the run's evaluated users
    rates: tuple[float, ...]
    lost_blocks: list[np.ndarray]  # bool [n_blocks] per rate
    k: int
    ks: tuple[int, ...]
    batch_size: int
    seed: int
    ref_recall: float = float("nan")
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, config: BenchConfig, split: Split, users: np.ndarray, n_items: int) -> _LossSetup | None:
        if config.robust_users == 0 or not config.loss_rates:
            return None
        from reelpack.bench.robustness import simulate_loss

        m = min(config.robust_users, len(users))
        pos = np.sort(np.random.default_rng([config.seed, 1]).choice(len(users), m, replace=False))
        rates = tuple(sorted({float(r) for r in config.loss_rates} | {REFERENCE_LOSS_RATE}))
        n_blocks = -(-n_items // LOSS_ITEMS_PER_BLOCK)
        lost = [
            simulate_loss(n_blocks, r, "iid", seed=np.random.default_rng([config.seed, 7, int(round(r * 1e6))])) for r in rates
        ]
        return cls(split, users[pos], pos, rates, lost, max(config.ks), tuple(config.ks), min(config.batch_size, 256), config.seed)

    def available_items(self, i: int) -> np.ndarray:
        """bool [n_items]: items outside the blocks lost at rate ``rates[i]``."""
        return ~np.repeat(self.lost_blocks[i], LOSS_ITEMS_PER_BLOCK)[: self.split.n_items]

    def set_reference(self, ref_ranked: np.ndarray) -> None:
        metrics = ranking_metrics(ref_ranked[self.positions], self.users, self.split.test_indptr, self.split.test_items, self.ks)
        self.ref_recall = float(metrics[f"recall@{self.k}"])

    def _record(self, row: dict[str, Any], ranked: list[np.ndarray], how: str) -> None:
        curve: list[float | None] = []
        for r in ranked:
            r = np.where(r < 0, self.split.n_items, r)  # "no result" (-1) becomes an id that is no test item
            rec = ranking_metrics(r, self.users, self.split.test_indptr, self.split.test_items, (self.k,))[f"recall@{self.k}"]
            curve.append(float(rec / self.ref_recall) if self.ref_recall > 0 else None)
        self.curves[row["method"]] = curve
        self.how[row["method"]] = how
        row[f"robust_rel_recall@{self.k}"] = curve[self.rates.index(REFERENCE_LOSS_RATE)]
        row[f"robust_base_rel_recall@{self.k}"] = curve[self.rates.index(0.0)] if 0.0 in self.rates else None

    def rank_masked(self, score_fn: Callable[[np.ndarray], np.ndarray], available: list[np.ndarray]) -> list[np.ndarray]:
        """Rank the sampled users once per availability mask; scores are computed once per batch.

        ``score_fn`` maps user indexes [b] to float32 [b, n_items]; unavailable items score -inf.
        One top-``K'`` pass (``K' = 2K + 64``) of the unmasked scores serves every mask: the first ``K``
        available items of that list, in order, are the masked top-``K`` whenever at least ``K`` of them
        are available (same order, same tie rule); rows with fewer fall back to a masked top-``K``.
        """
        from reelpack.kernels.topk import mask_rows, topk

        n = self.split.n_items
        k_wide = min(n, 2 * self.k + 64)
        out = [np.empty((len(self.users), self.k), np.int64) for _ in available]
        for start in range(0, len(self.users), self.batch_size):
            batch = self.users[start : start + self.batch_size]
            scores = np.array(score_fn(batch), dtype=np.float32, order="C", copy=True)
            mask_rows(scores, self.split.train_indptr, self.split.train_items, batch)
            wide, wide_vals = topk(scores, k_wide)
            finite = np.isfinite(wide_vals)  # -inf (train items) never counts as a ranked item here
            for o, avail in zip(out, available):
                ok = avail[wide] & finite
                pick = np.argsort(~ok, axis=1, kind="stable")[:, : self.k]
                res = np.take_along_axis(wide, pick, axis=1)
                short = np.flatnonzero(ok.sum(axis=1) < self.k)
                if short.size:
                    res[short] = topk(np.where(avail[None, :], scores[short], np.float32(-np.inf)), self.k)[0]
                o[start : start + len(batch)] = res
        return out

    def measure_dense(self, row: dict[str, Any], score_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """The float32 reference under the same loss: lost item blocks score -inf."""
        avail = [self.available_items(i) for i in range(len(self.rates))]
        self._record(row, self.rank_masked(score_fn, avail), "item-blocks")

    def summary(self) -> dict[str, Any]:
        out = {
            "metric": f"rel_recall@{self.k}",
            "model": "iid",
            "loss_rates": list(self.rates),
            "reference_rate": REFERENCE_LOSS_RATE,
            "items_per_block": LOSS_ITEMS_PER_BLOCK,
            "n_users": int(len(self.users)),
            "seeds": [self.seed],
            "lost_blocks": [int(b.sum()) for b in self.lost_blocks],
            "n_blocks": int(self.lost_blocks[0].size) if self.lost_blocks else 0,
            "curves": self.curves,
            "how": self.how,
        }
        if self.errors:
            out["errors"] = self.errors
        return out


def _bad_query_rejected(score: Callable[[np.ndarray], object], dim: int, typed: type[BaseException]) -> bool:
    """True when a wrong-dimension query and a non-finite query both raise an instance of ``typed``."""
    for q in (np.zeros((2, dim + 1), np.float32), np.full((2, dim), np.nan, np.float32)):
        try:
            score(q)
        except typed:
            continue
        except Exception:  # noqa: BLE001 - any other exception (or none) fails the check
            return False
        return False
    return True


def _corrupt(raw: np.ndarray, codes_offset: int, n_items: int, bpv: int, lost_blocks: np.ndarray) -> np.ndarray:
    """A copy of the pack bytes ``raw`` with every byte of the lost blocks of a plain layer XOR-ed with 0x5A."""
    buf = raw.copy()
    region = buf[codes_offset : codes_offset + n_items * bpv].reshape(n_items, bpv)
    rows = np.repeat(lost_blocks, LOSS_ITEMS_PER_BLOCK)[:n_items]
    region[rows] ^= np.uint8(0x5A)
    return buf


def _pack_measure(
    row: dict[str, Any],
    codec: Any,
    codes: np.ndarray,
    queries: np.ndarray,
    check_items: np.ndarray,
    lossy: _LossSetup | None,
    config: BenchConfig,
) -> None:
    """Engineering checks and robustness of a reelpack codec through a real pack (one layer, 64 items/block).

    The codes are written with :func:`reelpack.format.write_pack`, read back, and (per loss rate) the bytes
    of the lost blocks are corrupted; the reader's CRC32C check finds them and the rest is read. Scores come
    from the codec and codes read back from the pack; items of unreadable blocks score -inf.
    """
    if lossy is None and not config.engineering_checks:
        return
    import tempfile

    from reelpack.errors import ReelpackError
    from reelpack.format import PackReader, write_pack

    t0 = time.perf_counter()
    n = codes.shape[0]
    checks: dict[str, bool | None] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="reelpack-bench-") as tmp:
            path = write_pack(Path(tmp) / "codes.rpk", np.arange(n, dtype=np.int64), [(codec, codes)],
                              items_per_block=LOSS_ITEMS_PER_BLOCK)  # fmt: skip
            raw = np.fromfile(path, dtype=np.uint8)
        reader = PackReader.from_buffer(raw)
        read_codec = reader.codec(0)
        read_codes = np.array(reader.layer_codes(0))
        checks["pack_round_trip"] = bool(
            np.array_equal(read_codes, codes)
            and read_codec.to_bytes() == codec.to_bytes()
            and np.array_equal(reader.item_ids, np.arange(n))
        )
        info = reader.layers[0]

        def detect(lost: np.ndarray) -> tuple[bool, np.ndarray]:
            damaged = PackReader.from_buffer(_corrupt(raw, info.codes_offset, n, info.bytes_per_vector, lost))
            data = damaged.read_layer(0)
            avail = np.zeros(n, bool)
            avail[data.item_ids] = True
            ok = sorted(data.bad_blocks) == np.flatnonzero(lost).tolist() and np.array_equal(data.codes, codes[avail])
            return bool(ok), avail

        one = np.zeros(info.n_blocks, bool)
        one[info.n_blocks // 2] = True
        detected, _ = detect(one)
        checks["encode_deterministic"] = bool(np.array_equal(codec.encode(check_items), codec.encode(check_items)))
        checks["bad_query_typed_error"] = _bad_query_rejected(
            lambda q: read_codec.score(q, read_codes[:8]), codec.dim, ReelpackError
        )
        if lossy is not None:
            avail_list = []
            for lost in lossy.lost_blocks:
                ok, avail = detect(lost)
                detected &= ok
                avail_list.append(avail)

            def score(batch: np.ndarray) -> np.ndarray:
                return read_codec.score(queries[batch], read_codes)

            lossy._record(row, lossy.rank_masked(score, avail_list), "pack+crc")
        checks["corruption_detected"] = bool(detected)
    except ReelpackError as exc:  # a codec that cannot go through a pack: the checks fail, the run goes on
        checks.setdefault("pack_round_trip", False)
        if lossy is not None:
            lossy.errors[row["method"]] = f"{type(exc).__name__}: {exc}"
    row["engineering_checks"] = checks if config.engineering_checks else None
    row["robust_s"] = time.perf_counter() - t0


def _faiss_rank_masked(ft: Any, queries: np.ndarray, lossy: _LossSetup) -> list[np.ndarray]:
    """Top-K of the sampled users per loss rate, the lost item blocks dropped from the faiss index.

    One search of ``2K + 64 + max train items`` neighbours on the whole index serves every rate: its
    results, minus train items and lost items, in faiss's order, are what a search of the index with the
    lost items removed returns whenever at least K remain. Rows with fewer are searched again on a copy of
    the index with the lost items removed (``remove_ids``).
    """
    import faiss

    from reelpack.bench.baselines import FaissTwin
    from reelpack.metrics.quality import hit_matrix

    split, users, k = lossy.split, lossy.users, lossy.k
    avails = [lossy.available_items(i) for i in range(len(lossy.rates))]
    out = [np.empty((len(users), k), np.int64) for _ in avails]
    reduced: dict[int, FaissTwin] = {}
    n_train = np.diff(split.train_indptr)[users]
    for start in range(0, len(users), lossy.batch_size):
        batch = users[start : start + lossy.batch_size]
        k_search = min(split.n_items, 2 * k + 64 + int(n_train[start : start + len(batch)].max()))
        _, ids = ft.index.search(np.ascontiguousarray(queries[batch], dtype=np.float32), k_search)
        safe = np.maximum(ids, 0)
        valid = (ids >= 0) & ~hit_matrix(safe, batch, split.train_indptr, split.train_items)
        for i, avail in enumerate(avails):
            ok = valid & avail[safe]
            pick = np.argsort(~ok, axis=1, kind="stable")[:, :k]
            res = np.take_along_axis(ids, pick, axis=1)
            short = np.flatnonzero(ok.sum(axis=1) < k)
            if short.size:
                if i not in reduced:
                    keep = np.flatnonzero(avail)
                    part = faiss.clone_index(ft.index)
                    part.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(~avail).astype(np.int64)))
                    reduced[i] = FaissTwin(ft.factory, _RenumberedIndex(part, keep), 0.0, 0.0)
                res[short] = faiss_rank_users(reduced[i], queries, split, batch[short], k, lossy.batch_size)[0]
            out[i][start : start + len(batch)] = res
    return out


class _RenumberedIndex:
    """A faiss index holding a subset of the catalog whose ``search`` returns catalog item indexes.

    ``keep`` is int64 [ntotal]: the catalog index of each row of ``index`` (faiss ``remove_ids``
    compacts the remaining rows in order). Missing results (-1) stay -1.
    """

    def __init__(self, index: Any, keep: np.ndarray) -> None:
        self.index, self.keep = index, keep

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(q, min(k, self.index.ntotal))
        mapped = np.where(ids >= 0, self.keep[np.maximum(ids, 0)], -1)
        if mapped.shape[1] < k:  # fewer items left than asked for: pad with "no result"
            pad = k - mapped.shape[1]
            mapped = np.concatenate([mapped, np.full((len(q), pad), -1, np.int64)], axis=1)
            dist = np.concatenate([dist, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
        return dist, mapped


def _faiss_measure(
    row: dict[str, Any],
    ft: Any,
    queries: np.ndarray,
    check_items: np.ndarray,
    lossy: _LossSetup | None,
    config: BenchConfig,
) -> None:
    """Engineering checks and robustness of a faiss index (no container: lost item blocks are removed).

    Checks that apply to faiss: ``pack_round_trip`` (``serialize_index``/``deserialize_index`` gives the
    same bytes and codes), ``encode_deterministic`` (``sa_encode`` twice), ``bad_query_typed_error``
    (a ValueError subclass for a wrong-dimension and a NaN query). ``corruption_detected`` is ``None``:
    a faiss index file carries no checksums, so the check does not apply (docs/SCORING.md).
    """
    if lossy is None and not config.engineering_checks:
        return
    import faiss

    t0 = time.perf_counter()
    index = ft.index
    blob = faiss.serialize_index(index)
    again = faiss.deserialize_index(blob)
    checks: dict[str, bool | None] = {
        "pack_round_trip": bool(
            np.array_equal(faiss.serialize_index(again), blob)
            and np.array_equal(again.sa_encode(check_items), index.sa_encode(check_items))
        ),
        "corruption_detected": None,
        "encode_deterministic": bool(np.array_equal(index.sa_encode(check_items), index.sa_encode(check_items))),
        "bad_query_typed_error": _bad_query_rejected(lambda q: index.search(q, 5), index.d, ValueError),
    }
    if lossy is not None:
        try:
            lossy._record(row, _faiss_rank_masked(ft, queries, lossy), "item-blocks")
        except RuntimeError as exc:  # an index type without remove_ids
            lossy.errors[row["method"]] = f"faiss: {exc}".splitlines()[0]
    row["engineering_checks"] = checks if config.engineering_checks else None
    row["robust_s"] = time.perf_counter() - t0


def _rd_bound(item_emb: np.ndarray, bytes_per_item: float) -> float:
    """Gaussian rate-distortion bound (squared error per vector) of ``item_emb`` at ``8 * bytes_per_item`` bits."""
    from reelpack.metrics.ratedistortion import gaussian_distortion_bound, pca_variances

    return float(gaussian_distortion_bound(pca_variances(item_emb), 8.0 * bytes_per_item))


def _codec_mse(codec, codes: np.ndarray, item_emb: np.ndarray) -> dict[str, float]:
    """``mse`` (mean squared reconstruction error per vector) and ``rd_bound`` of a reelpack codec's codes."""
    if codec.family in ("simhash",):  # decode is a sign pattern, not a reconstruction: no MSE
        return {}
    recon = codec.decode(codes)
    mse = float(np.mean(np.sum((recon.astype(np.float64) - item_emb) ** 2, axis=1)))
    return {"mse": mse, "rd_bound": _rd_bound(item_emb, codec.bytes_per_vector)}


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


def _faiss_mse(ft, item_emb: np.ndarray) -> dict[str, float]:
    """The same for a faiss index, through ``sa_encode``/``sa_decode`` (absent where faiss cannot decode)."""
    if ft.factory.startswith("LSH"):  # binary codes, no reconstruction
        return {}
    try:
        recon = ft.index.sa_decode(ft.index.sa_encode(item_emb))
    except RuntimeError:
        return {}
    mse = float(np.mean(np.sum((recon.astype(np.float64) - item_emb) ** 2, axis=1)))
    return {"mse": mse, "rd_bound": _rd_bound(item_emb, ft.bytes_per_vector)}


def rate_quality(rows: Sequence[dict[str, Any]], k: int = 50, budgets: Sequence[int] = (8, 16, 32)) -> dict[str, Any]:
    """The rate-quality sweep of a run: every compressed method's (bytes/item, rel Recall@k, rel NDCG@10),
    and per byte budget the best reelpack and best faiss method at or under it.

    ``closes_half_gap`` is True when the best reelpack method reaches
    ``faiss + (1 - faiss) / 2`` relative Recall@k (it beats the best faiss method
    and closes at least half of that method's remaining gap to float32).
    """
    key = f"rel_recall@{k}"
    points = [
        {
            "method": r["method"],
            "kind": r["kind"],
            "bytes_per_item": r["bytes_per_item"],
            key: r.get(key),
            "rel_ndcg@10": r.get("rel_ndcg@10"),
        }
        for r in rows
        if r["kind"] != "reference" and r.get(key) is not None
    ]
    per_budget = {}
    for budget in budgets:
        best: dict[str, dict[str, Any] | None] = {}
        for kind in ("reelpack", "faiss"):
            cands = [p for p in points if p["kind"] == kind and p["bytes_per_item"] <= budget]
            best[kind] = max(cands, key=lambda p: p[key]) if cands else None
        entry: dict[str, Any] = {"best_reelpack": best["reelpack"], "best_faiss": best["faiss"]}
        if best["reelpack"] and best["faiss"]:
            f = best["faiss"][key]
            entry["bar"] = max(f, f + (1.0 - f) / 2.0)
            entry["closes_half_gap"] = bool(best["reelpack"][key] >= entry["bar"])
        per_budget[str(budget)] = entry
    return {"metric": key, "points": sorted(points, key=lambda p: (p["bytes_per_item"], p["method"])), "budgets": per_budget}


def _metric_keys(ks: Sequence[int]) -> set[str]:
    keys = {"mrr"}
    for kk in ks:
        keys |= {f"recall@{kk}", f"ndcg@{kk}", f"precision@{kk}"}
    return keys


def load_results(path: str | os.PathLike) -> BenchResult:
    """Read a results JSON written by :func:`write_results`; refuse other schema versions clearly."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        from reelpack.errors import DataNotFoundError

        raise DataNotFoundError(f"results file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{p} is not a reelpack results file (a JSON object with 'schema_version' and 'rows')")
    version = data.get("schema_version")
    if version != RESULTS_SCHEMA_VERSION:
        older = isinstance(version, int) and not isinstance(version, bool) and version < RESULTS_SCHEMA_VERSION
        what = "written by an older reelpack" if older else ("missing" if version is None else "unknown")
        raise InvalidInputError(
            f"{p} has results schema version {version!r} ({what}); this reelpack reads only schema version "
            f"{RESULTS_SCHEMA_VERSION}: re-run `reelpack bench` with this version to get a version-"
            f"{RESULTS_SCHEMA_VERSION} file (it adds the robustness and engineering-check fields)"
        )
    rows, prov = data.get("rows"), data.get("provenance")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows) or not isinstance(prov, dict):
        raise InvalidInputError(f"{p}: results schema version {version} needs a list of 'rows' (each with 'method') and a 'provenance' object")
    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        raise InvalidInputError(f"{p}: 'extra' must be an object, got {type(extra).__name__}")
    return BenchResult(rows=rows, provenance=prov, extra=extra)
