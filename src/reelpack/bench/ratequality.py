"""Rate against quality: the rate-quality summary of a run, and each row's reconstruction error and bound."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["rate_quality"]


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
