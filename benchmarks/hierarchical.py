"""Hierarchical (edge + cloud) retrieval on amazon-book: device bytes, share answered locally, Recall@50.

Everything is measured in one run against float32 brute force over the same catalog and the same requests.

What a "request" is
-------------------
One request = one evaluated test user asking for the top-50 items (the user's train items excluded, as in the
float32 reference), with a query vector ``q``. The device summary of that user was cut at sync time from the
user's two-tower vector ``u`` (the vector the service hands the phone with a catalog version) within the byte
budget. Two scenarios, both reported:

* ``same``: ``q = u`` (the home feed between two syncs: in reelpack the phone's user vector only changes at sync).
* ``session``: ``q = normalise(u + w * e_last)`` with ``e_last`` the embedding of the user's most recent train
  item (file order) and ``w = --session-weight`` (0.5: mean cos(q, u) ~ 0.97 on amazon-book 64-d): a request
  steered by what the user just looked at, which the summary was NOT built for.

The decision's ``lam`` is calibrated on ``--calib-users`` users disjoint from the evaluated ones (smallest
``lam`` on a grid whose calibration ANN recall@50 vs float32 reaches ``--calib-target``), unless ``--lam`` is given.
The cloud is an in-process :class:`reelpack.catalog.ann.HNSWIndex` with the service's default parameters (the
code path behind ``POST /v1/retrieve``); ``lam = 1`` (the guaranteed ball bound) is reported too.

Metrics: ``rel_recall@50`` = Recall@50 of the held-out test items / the float32 brute force's Recall@50 (same
users); ``ann_recall@50`` = mean overlap of the returned top-50 with float32 exact top-50 of the same ``q``;
``local_share`` = requests answered without the cloud; ``device_bytes`` = ``len(summary.to_bytes())`` (max and
mean over users) vs 5 % of the catalog's float32 bytes.

Run::

    OMP_NUM_THREADS=1 python benchmarks/hierarchical.py --n-users 3000 --out hier.json
"""

from __future__ import annotations

import argparse
import os
import json
import platform
import sys
import time

import numpy as np

from reelpack.data import load_interactions, train_test_split
from reelpack.metrics.quality import ranking_metrics
from reelpack.metrics.ranking import rank_users
from reelpack.catalog.ann import HNSWIndex
from reelpack.catalog.edge import EdgeCatalog
from reelpack.device.edge import EdgeRetriever, merge_answers
from reelpack.models import TwoTowerConfig, load_cached

LAM_GRID = (0.0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 1.0)


def _train_items(split, u: int) -> np.ndarray:
    return split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]].astype(np.int64)


def run_requests(cat, cloud, split, users, U_sync, Q, budget, lam_grid, k=50, check_lam=None, n_check=20):
    """Every request both ways: the local answer and the merged cloud answer, plus the decision's inputs.

    Returns a dict: local_ids, merged_ids int64 [m, k]; kth float32 [m] (local k-th score); frontier float32
    [m, len(lam_grid)]; nbytes int64 [m] (summary bytes, -1 where not serialised to save time); n_local_items;
    mean local / cloud ms per request. With ``check_lam``, the first ``n_check`` requests also go through
    ``EdgeRetriever.retrieve`` and must give the same ids as the decision rebuilt here.
    """
    m = len(users)
    local_ids = np.full((m, k), -1, np.int64)
    merged_ids = np.full((m, k), -1, np.int64)
    kth = np.full(m, -np.inf, np.float32)
    frontier = np.full((m, len(lam_grid)), np.inf, np.float32)
    nbytes = np.zeros(m, np.int64)
    n_local_items = np.zeros(m, np.int64)
    c32 = cat.centroids.astype(np.float32)
    r32 = cat.radii.astype(np.float32)
    lam_arr = np.asarray(lam_grid, np.float32)
    t_local = t_cloud = 0.0
    for i, u in enumerate(users):
        summ = cat.summary_for(U_sync[i], budget)
        if i < 50 or i % 500 == 0:
            nbytes[i] = summ.nbytes
        else:
            nbytes[i] = -1
        n_local_items[i] = summ.n_items
        ex = _train_items(split, int(u))
        t0 = time.perf_counter()
        ids, sc = summ.local_top_k(Q[i], k, ex)
        t_local += time.perf_counter() - t0
        local_ids[i, : ids.size] = ids
        kth[i] = sc[-1] if sc.size == k else -np.inf
        absent = ~summ.local_mask()
        qc = c32[absent] @ Q[i]
        frontier[i] = (qc[None, :] + lam_arr[:, None] * np.linalg.norm(Q[i]) * r32[absent][None, :]).max(axis=1)
        # the cloud path (forced), merged with the local answer exactly as EdgeRetriever.retrieve does
        t0 = time.perf_counter()
        c_ids, c_sc = cloud(Q[i], min(k + ex.size, 1000))
        t_cloud += time.perf_counter() - t0
        keep = (c_ids >= 0) & ~np.isin(c_ids, ex)
        mi, _ = merge_answers((ids, sc), (c_ids[keep], c_sc[keep]), k)
        merged_ids[i, : mi.size] = mi
        if check_lam is not None and i < n_check:
            got = EdgeRetriever(summ, cloud, lam=check_lam).retrieve(Q[i], k, exclude=ex)
            j = lam_grid.index(check_lam)
            want = local_ids[i] if kth[i] >= frontier[i, j] else merged_ids[i]
            assert got.local == bool(kth[i] >= frontier[i, j]) and np.array_equal(got.ids, want[want >= 0]), i
    return dict(local_ids=local_ids, merged_ids=merged_ids, kth=kth, frontier=frontier, nbytes=nbytes,
                n_local_items=n_local_items, local_ms=1e3 * t_local / m, cloud_ms=1e3 * t_cloud / m)  # fmt: skip


def evaluate(split, users, top, ref_metrics, exact):
    m = ranking_metrics(top, users, split.test_indptr, split.test_items, (10, 50))
    overlap = np.mean([np.isin(top[i], exact[i]).mean() for i in range(len(users))])
    return {
        "rel_recall@50": m["recall@50"] / ref_metrics["recall@50"],
        "rel_ndcg@10": m["ndcg@10"] / ref_metrics["ndcg@10"],
        "ann_recall@50": float(overlap),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("REELPACK_DATA", "../shared/data/amazon-book/interactions.txt"),
        help="interactions file (default: $REELPACK_DATA, else ../shared/data/amazon-book/interactions.txt)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n-users", type=int, default=3000, help="evaluated users (0 = all test users)")
    ap.add_argument("--calib-users", type=int, default=1000)
    ap.add_argument("--calib-target", type=float, default=0.985, help="calibration ANN recall@50 to reach")
    ap.add_argument("--lam", type=float, default=None, help="fixed lam (skips calibration)")
    ap.add_argument("--budget-frac", type=float, default=0.05, help="device budget / catalog float32 bytes")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--codec", default="sq8")
    ap.add_argument("--session-weight", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)
    t_start = time.perf_counter()
    split = train_test_split(load_interactions(args.data), seed=0)
    emb = load_cached(split, TwoTowerConfig(dim=args.dim, seed=0))
    if emb is None:
        sys.exit("no cached embeddings for this split/config: train them first (reelpack pack ... --data)")
    U, I = emb.user_emb, emb.item_emb
    n, d = I.shape
    ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(args.seed)
    pool = rng.permutation(split.eval_users())
    calib = np.sort(pool[: args.calib_users])
    rest = pool[args.calib_users :]
    users = np.sort(rest[: args.n_users]) if args.n_users else np.sort(rest)
    catalog_bytes = I.nbytes
    budget = int(args.budget_frac * catalog_bytes)
    print(f"catalog {n} x {d} float32 = {catalog_bytes} B, budget {budget} B; {len(users)} users, "
          f"{len(calib)} calibration users", flush=True)  # fmt: skip

    t0 = time.perf_counter()
    cat = EdgeCatalog.build(I, ids, nlist=args.nlist, codec=args.codec, seed=args.seed)
    t_edge = time.perf_counter() - t0
    t0 = time.perf_counter()
    hnsw = HNSWIndex.build(I, ids, seed=args.seed)
    t_hnsw = time.perf_counter() - t0
    print(f"edge catalog {t_edge:.1f} s, HNSW {t_hnsw:.1f} s", flush=True)

    def cloud(q, k):
        i, s = hnsw.search(q[None, :], k)
        return i[0], s[0]

    def queries(us, scenario):
        Qs = U[us]
        if scenario == "same":
            return Qs.copy()
        last = split.train_items[split.train_indptr[us + 1] - 1]
        Qr = Qs + np.float32(args.session_weight) * I[last]
        return (Qr / np.linalg.norm(Qr, axis=1, keepdims=True)).astype(np.float32)

    out = {"provenance": {"command": " ".join(sys.argv), "data": args.data, "data_hash": split.data_hash,
                          "machine": platform.platform(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S")},
           "params": vars(args), "catalog_float32_bytes": int(catalog_bytes), "budget_bytes": budget,
           "edge_build_s": t_edge, "hnsw_build_s": t_hnsw, "scenarios": {}}  # fmt: skip
    for scenario in ("same", "session"):
        # ---- calibration of lam on disjoint users (ANN recall vs float32 only: no test items used)
        lam = args.lam
        calib_info = None
        if lam is None:
            Qc = queries(calib, scenario)
            ex_c = rank_users(lambda b, Qc=Qc, pos={u: j for j, u in enumerate(calib)}:
                              Qc[[pos[int(x)] for x in b]] @ I.T, split, calib, 50)  # fmt: skip
            rc = run_requests(cat, cloud, split, calib, U[calib], Qc, budget, list(LAM_GRID))
            grid = []
            for j, lm in enumerate(LAM_GRID):
                loc = rc["kth"] >= rc["frontier"][:, j]
                top = np.where(loc[:, None], rc["local_ids"], rc["merged_ids"])
                ov = float(np.mean([np.isin(top[i], ex_c[i]).mean() for i in range(len(calib))]))
                grid.append({"lam": lm, "local_share": float(loc.mean()), "ann_recall@50": ov})
            ok = [g for g in grid if g["ann_recall@50"] >= args.calib_target]
            lam = min((g["lam"] for g in ok), default=1.0)
            calib_info = {"grid": grid, "chosen_lam": lam, "target": args.calib_target}
            print(f"[{scenario}] calibration: lam = {lam}", flush=True)
        # ---- evaluation: float32 brute force on the same requests, same run
        Q = queries(users, scenario)
        pos = {int(u): j for j, u in enumerate(users)}
        t0 = time.perf_counter()
        exact = rank_users(lambda b: Q[[pos[int(x)] for x in b]] @ I.T, split, users, 50)
        t_f32 = (time.perf_counter() - t0) * 1e3 / len(users)
        ref = ranking_metrics(exact, users, split.test_indptr, split.test_items, (10, 50))
        lam_grid = sorted(set(LAM_GRID) | {float(lam)})
        rr = run_requests(cat, cloud, split, users, U[users], Q, budget, lam_grid, check_lam=float(lam))
        rows = []
        for j, lm in enumerate(lam_grid):
            loc = rr["kth"] >= rr["frontier"][:, j]
            top = np.where(loc[:, None], rr["local_ids"], rr["merged_ids"])
            rows.append({"lam": lm, "local_share": float(loc.mean()), **evaluate(split, users, top, ref, exact)})
        chosen = rows[lam_grid.index(float(lam))]
        all_local = evaluate(split, users, rr["local_ids"], ref, exact)
        all_cloud = evaluate(split, users, rr["merged_ids"], ref, exact)
        nb = rr["nbytes"][rr["nbytes"] >= 0]
        res = {
            "requests": len(users),
            "lam": lam,
            "chosen": chosen,
            "lam_grid": rows,
            "calibration": calib_info,
            "always_local": all_local,
            "always_cloud_merged": all_cloud,
            "float32_recall@50": ref["recall@50"],
            "float32_ndcg@10": ref["ndcg@10"],
            "float32_ms_per_request": t_f32,
            "local_ms_per_request": rr["local_ms"],
            "cloud_ms_per_request": rr["cloud_ms"],
            "device_bytes_max": int(nb.max()),
            "device_bytes_mean": float(nb.mean()),
            "device_share_of_float32": float(nb.max() / catalog_bytes),
            "local_items_mean": float(rr["n_local_items"].mean()),
        }
        out["scenarios"][scenario] = res
        c = chosen
        print(f"[{scenario}] lam {lam}: local {c.get('local_share', float('nan')):.3f}, rel R@50 "
              f"{c.get('rel_recall@50', float('nan')):.4f}, ANN R@50 {c.get('ann_recall@50', float('nan')):.4f}; "
              f"always-local rel R@50 {all_local['rel_recall@50']:.4f}; device bytes max {res['device_bytes_max']} "
              f"({100 * res['device_share_of_float32']:.2f} % of float32), {res['local_items_mean']:.0f} local items",
              flush=True)  # fmt: skip
        for r in rows:
            print(f"   lam {r['lam']:.2f}: local {r['local_share']:.3f} rel R@50 {r['rel_recall@50']:.4f} "
                  f"ANN R@50 {r['ann_recall@50']:.4f} rel N@10 {r['rel_ndcg@10']:.4f}")
    out["total_s"] = time.perf_counter() - t_start
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
