"""The benchmark harness: float32, reelpack codecs and their faiss twins, side by side.

One run evaluates, on the same embeddings, users and split:

* the float32 brute-force reference (exact inner products),
* every requested reelpack codec (fit on the catalog, encode, score asymmetrically),
* the faiss twin of each codec at the same bytes per item (see :mod:`reelpack.eval.baselines`).

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

from reelpack._validate import as_float_matrix
from reelpack.codecs import make_codec
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError, InvalidInputError
from reelpack.eval.baselines import faiss_rank_users, faiss_twin_spec, fit_faiss_twin
from reelpack.eval.energy import DEFAULT_DEVICE_MODEL, estimate_row, get_device_model
from reelpack.eval.metrics import ranking_metrics, relative, topk_overlap
from reelpack.eval.ranking import dense_score_fn, rank_users

__all__ = ["BenchConfig", "BenchResult", "run_bench", "rate_quality", "DEFAULT_CODECS", "RESULTS_SCHEMA_VERSION", "SWEEP_CODECS", "SWEEP_BASELINES", "SWEEP_QAT"]

RESULTS_SCHEMA_VERSION = 1
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
        device_model: preset of :mod:`reelpack.eval.energy` used for the phone latency and energy
            ESTIMATES (``est_*`` row fields; constants and sources in docs/ENERGY.md).
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

    def __post_init__(self) -> None:
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
    :func:`reelpack.eval.energy.estimate_row` (keys ``est_*``, for ``config.device_model``);
    ``provenance["device_model"]`` holds the model's constants and their sources.
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

            twin = faiss_twin_spec(codec.spec) if config.faiss_twins else None
            if twin is None:
                continue
            ft = fit_faiss_twin(twin, item_emb, seed=config.seed)
            ranked, search_s = faiss_rank_users(
                ft, user_emb, split, users, k, config.batch_size, report(ft.name)
            )
            frow = _faiss_row(ft, search_s, codec.spec, item_emb)
            finish(frow, ranked, reference, ref_ranked)
            key = f"rel_recall@{k}"
            row[f"delta_{key}_vs_faiss"] = row[key] - frow[key]
            row["rank_time_vs_faiss"] = row["rank_s"] / frow["rank_s"] if frow["rank_s"] > 0 else float("nan")
            # the twin row was appended after the codec row; keep that order

        for factory in config.baselines:
            ft = fit_faiss_twin(factory, item_emb, seed=config.seed, max_train=config.max_train)
            ranked, search_s = faiss_rank_users(ft, user_emb, split, users, k, config.batch_size, report(ft.name))
            frow = _faiss_row(ft, search_s, None, item_emb)
            finish(frow, ranked, reference, ref_ranked)

        for spec in config.qat:
            from reelpack.train.qat import QATConfig, finetune_codebooks

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
    device = get_device_model(config.device_model)
    for row in rows:
        row.update(estimate_row(row, split.n_items, device))
    prov = provenance(split, dim, provenance_extra)
    prov["device_model"] = device.to_dict()
    extra = {"rate_quality": rate_quality(rows, k)}
    prov["n_eval_users"] = int(len(users))
    prov["threads"] = config.threads
    prov["config"] = {**asdict(config), "codecs": list(config.codecs), "ks": list(config.ks)}
    return BenchResult(rows=rows, provenance=prov, extra=extra)


def _rd_bound(item_emb: np.ndarray, bytes_per_item: float) -> float:
    """Gaussian rate-distortion bound (squared error per vector) of ``item_emb`` at ``8 * bytes_per_item`` bits."""
    from reelpack.eval.ratedistortion import gaussian_distortion_bound, pca_variances

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
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        raise InvalidInputError(
            f"{p} has results schema version {version!r}; this reelpack reads version {RESULTS_SCHEMA_VERSION}"
        )
    return BenchResult(rows=data["rows"], provenance=data["provenance"], extra=data.get("extra", {}))
