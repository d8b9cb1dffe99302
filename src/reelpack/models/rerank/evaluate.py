"""Measure re-rankers against float32 brute force and the codec's own ranking, in one run.

For each codec spec: fit on the item embeddings (seeded), encode, rank every evaluated
user's catalog by the codec (train items excluded; top-``R`` candidates, whose first 50 are
exactly the codec's own top-50), train a re-ranker on ``train_users`` (float32 targets,
:func:`reelpack.models.rerank.train.train_reranker`), re-rank and compute Recall@50, NDCG@10 and
MRR (:func:`reelpack.metrics.quality.ranking_metrics`) relative to float32 brute force over the
same users. ``popularity`` lists the variants trained per codec: True (features include
``log_pop``: codes + 1 popularity byte per item) and/or False (codes only); each row
reports ``bytes_per_item`` = code bytes + popularity bytes.

Latency (per user, one core): for ``latency_users`` users one at a time, the phone-side
work after the codec's top-R scan: gather the candidates' codes, popularity bytes (only for a
re-ranker with the ``log_pop`` feature) and the history codes, compute the features, run the
model (numpy, and onnxruntime with one intra-op thread), sort. Reported as mean and p95
milliseconds; the numpy and ONNX scores of the timed users are compared (max abs difference).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from reelpack.codecs import make_codec
from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError
from reelpack.metrics.quality import ranking_metrics
from reelpack.metrics.ranking import dense_score_fn, rank_users
from reelpack.models.rerank.features import quantise_popularity
from reelpack.models.rerank.model import OnnxReranker, Reranker
from reelpack.models.rerank.train import DEFAULT_R, candidate_lists, make_batch, train_reranker, user_history

__all__ = ["rerank_benchmark", "rerank_users", "time_rerank"]

KS = (10, 50)


def _metrics(ranked: np.ndarray, split: Split, users: np.ndarray) -> dict[str, float]:
    m = ranking_metrics(ranked, users, split.test_indptr, split.test_items, KS)
    return {k: m[k] for k in ("recall@50", "ndcg@10", "mrr")}


def _rel(m: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    return {f"rel_{k}": (v / ref[k] if ref[k] else float("nan")) for k, v in m.items()}


def _popularity_bytes(rr: Reranker, split: Split) -> np.ndarray | None:
    """The quantised popularity bytes a batch for ``rr`` carries: ``None`` when it has no ``log_pop`` feature."""
    return quantise_popularity(split.item_counts)[0] if rr.uses_popularity else None


def rerank_users(
    rr: Reranker,
    codec: Any,
    codes: np.ndarray,
    split: Split,
    user_emb: np.ndarray,
    users: np.ndarray,
    r: int = DEFAULT_R,
    block: int = 512,
    cand: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(codec order, re-ranked order): item indexes int64 [len(users), R] each, train items excluded.

    ``cand`` int [len(users), R]: the codec's candidate lists from an earlier call (same codec
    and users), to skip the catalog scan.
    """
    rr.check_codec(codec)
    pop = _popularity_bytes(rr, split)
    if cand is not None and np.shape(cand) != (len(users), r):
        raise InvalidInputError(f"cand must be [{len(users)}, {r}], got shape {np.shape(cand)}")
    xhat_t = np.ascontiguousarray(codec.decode(codes).T) if cand is None else None
    cands, news = [], []
    for start in range(0, len(users), block):
        ub = users[start : start + block]
        q = np.ascontiguousarray(user_emb[ub], np.float32)
        if cand is None:
            cb, _ = candidate_lists(q @ xhat_t, split, ub, r)
        else:
            cb = np.asarray(cand[start : start + block], np.int64)
        hist, valid = user_history(split, ub, rr.recent_window)
        res = rr.rerank(codec, make_batch(q, codes, cb, pop, hist, valid), check=False)
        cands.append(cb)
        news.append(np.take_along_axis(cb, res.order, axis=1))
    return np.concatenate(cands), np.concatenate(news)


def time_rerank(
    rr: Reranker,
    codec: Any,
    codes: np.ndarray,
    split: Split,
    user_emb: np.ndarray,
    users: np.ndarray,
    cand: np.ndarray,
) -> dict[str, float]:
    """Per-user re-rank latency (ms) with numpy and onnxruntime (1 thread) for candidate lists ``cand`` [b, R]."""
    pop = _popularity_bytes(rr, split)
    onnx_rr = OnnxReranker(rr.to_onnx(), threads=1)
    hist, valid = user_history(split, users, rr.recent_window)
    t_np, t_ox, t_feat, diff = [], [], [], 0.0
    for i in range(-3, len(users)):  # 3 warm-up rounds on the first user
        j = max(i, 0)
        sl = slice(j, j + 1)
        t0 = time.perf_counter()
        batch = make_batch(user_emb[users[sl]], codes, cand[sl], pop, hist[sl], valid[sl])
        x = rr.features(codec, batch)
        t1 = time.perf_counter()
        s_np = rr.score_features(x)
        order_np = np.argsort(-s_np[0], kind="stable")
        t2 = time.perf_counter()
        s_ox = onnx_rr.score_features(x)
        order_ox = np.argsort(-s_ox[0], kind="stable")
        t3 = time.perf_counter()
        if i >= 0:
            t_feat.append(t1 - t0)
            t_np.append(t2 - t0)
            t_ox.append((t1 - t0) + (t3 - t2))
            diff = max(diff, float(np.abs(s_np - s_ox).max()))
        del order_np, order_ox
    ms = lambda v: 1e3 * np.asarray(v)  # noqa: E731
    return {
        "users_timed": int(len(users)),
        "features_ms_mean": float(ms(t_feat).mean()),
        "numpy_ms_mean": float(ms(t_np).mean()),
        "numpy_ms_p95": float(np.percentile(ms(t_np), 95)),
        "onnx_ms_mean": float(ms(t_ox).mean()),
        "onnx_ms_p95": float(np.percentile(ms(t_ox), 95)),
        "numpy_onnx_max_abs_diff": diff,
    }


def rerank_benchmark(
    split: Split,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    specs: tuple[str, ...],
    users: np.ndarray,
    train_users: np.ndarray,
    *,
    r: int = DEFAULT_R,
    latency_users: int = 300,
    seed: int = 0,
    popularity: tuple[bool, ...] = (True,),
    train_kwargs: dict[str, Any] | None = None,
    save_dir: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Float32, each codec's own ranking and its re-ranked ranking over ``users``; see the module docstring.

    Returns a JSON-able dict: ``float32`` (absolute metrics), ``rows`` (one per spec and
    ``popularity`` variant, with ``popularity``, ``bytes_per_item``,
    absolute and relative metrics of the codec and the re-ranked ranking, their differences,
    latency, fit/train seconds, parameter count) and ``config``.
    """
    popularity = tuple(bool(p) for p in popularity)
    if not popularity:
        raise InvalidInputError("popularity must list at least one variant (True and/or False)")
    if r < max(KS):
        raise InvalidInputError(f"R must be at least {max(KS)} to measure Recall@{max(KS)}, got {r}")
    say = progress or (lambda s: None)
    users = np.asarray(users, np.int64)
    train_users = np.asarray(train_users, np.int64)
    t0 = time.perf_counter()
    ref_ranked = rank_users(dense_score_fn(user_emb, item_emb), split, users, max(KS))
    ref = _metrics(ref_ranked, split, users)
    say(f"float32 brute force: {ref} ({time.perf_counter() - t0:.1f} s)")
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        codec = make_codec(spec).fit(item_emb, seed=seed)
        codes = codec.encode(item_emb)
        fit_s = time.perf_counter() - t0
        cand = None
        for use_pop in popularity:
            t0 = time.perf_counter()
            kw = train_kwargs or {}
            rr = train_reranker(codec, codes, split, user_emb, item_emb, train_users, r=r, seed=seed,
                                popularity=use_pop, **kw)  # fmt: skip
            train_s = time.perf_counter() - t0
            if save_dir is not None:
                from pathlib import Path

                tag = "" if use_pop else "-nopop"
                rr.save(Path(save_dir) / f"{spec.replace(',', '_')}{tag}.rerank")
            cand, new = rerank_users(rr, codec, codes, split, user_emb, users, r, cand=cand)
            m_codec, m_new = _metrics(cand[:, :50], split, users), _metrics(new[:, :50], split, users)
            rel_codec, rel_new = _rel(m_codec, ref), _rel(m_new, ref)
            lat_users = users[: min(latency_users, len(users))]
            lat = time_rerank(rr, codec, codes, split, user_emb, lat_users, cand[: len(lat_users)])
            pop_b = 1 if rr.uses_popularity else 0
            row = {
                "codec": spec, "popularity": rr.uses_popularity, "bytes_per_item": int(codec.bytes_per_vector) + pop_b,
                "bytes_per_item_codes": int(codec.bytes_per_vector), "bytes_per_item_popularity": pop_b,
                "codec_metrics": m_codec, "rerank_metrics": m_new, "codec_rel": rel_codec, "rerank_rel": rel_new,
                "gain": {k: rel_new[k] - rel_codec[k] for k in rel_codec},
                "latency": lat, "fit_s": fit_s, "train_s": train_s, "n_params": rr.n_params,
                "feature_names": list(rr.feature_names), "train_info": rr.info,
            }  # fmt: skip
            rows.append(row)
            say(f"{spec} (popularity {'on' if use_pop else 'off'}): codec {rel_codec} -> re-ranked {rel_new}; "
                f"latency {lat}")
    config = {"r": int(r), "n_users": int(len(users)), "n_train_users": int(len(train_users)), "seed": int(seed),
              "latency_users": int(latency_users), "popularity": list(popularity),
              "train_kwargs": train_kwargs or {}}  # fmt: skip
    return {"float32": ref, "rows": rows, "config": config}
