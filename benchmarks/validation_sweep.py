"""Validation-selected codecs against faiss at 8/16/32 bytes per item (choices on validation, test read once).

Protocol (amazon-book by default):

1. per-user 80/20 train/test split (seed 0); a validation split carved from the train part only
   (:func:`reelpack.data.validation_split`, 10 % of each user's train items, seed 0);
2. two-tower embeddings trained on the fit part (train minus validation) at ``--dim``;
3. reelpack's candidates at each budget (:func:`reelpack.models.tune.candidate_specs`, fine-tuning of
   ``qat-`` candidates kept only where it wins on validation; each also fitted with the popularity weights of
   ``--popularity-betas``, from the fit part's interactions, and of ``--exposure-betas``, from the float32
   top-1000 of the users' vectors) are fitted with each codec seed and scored on
   the validation users; :func:`reelpack.models.tune.tune_codecs` chooses one per budget;
4. faiss's codecs at the same budgets (PQ, OPQ, RQ, LSQ, SQ, RaBitQ: every factory whose ``sa_code_size``
   equals the budget) are fitted with the same seeds and scored on the same validation users;
5. the test split is read once: float32, the validation-chosen reelpack codec and every faiss codec, on the
   test users, mean and spread over the seeds.

Usage (from the project root)::

    python benchmarks/validation_sweep.py --data ../shared/data/amazon-book/interactions.txt --dim 64 \\
        --budgets 8,16,32 --seeds 3 --users 10000 --out results/validation-sweep

Writes ``OUT/sweep-d{dim}.json`` (every figure) and ``OUT/tune-d{dim}.json`` (the choice, usable as
``reelpack pack --codecs auto16 --tune ...``), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from reelpack.bench.baselines import LSQ_MAX_TRAIN
from reelpack.data import load_interactions, train_test_split, validation_split
from reelpack.metrics.quality import ranking_metrics
from reelpack.metrics.ranking import dense_score_fn, rank_users
from reelpack.models import TwoTowerConfig
from reelpack.models.cache import load_or_train
from reelpack.models.tune import tune_codecs, validation_users

FAISS_TEMPLATES = ("PQ{B}np", "OPQ{B},PQ{B}np", "RQ{B}x8", "LSQ{B}x8", "SQ4", "SQ8", "RaBitQ")
K = 50


def faiss_factories(budget: int, dim: int) -> list[str]:
    """faiss factory strings whose codes are exactly ``budget`` bytes at ``dim``."""
    out = []
    for t in FAISS_TEMPLATES:
        f = t.format(B=budget)
        if "{B}" in t and dim % budget and f.startswith(("PQ", "OPQ")):
            continue
        try:
            idx = faiss.index_factory(dim, f, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError:
            continue
        if idx.sa_code_size() == budget and f not in out:
            out.append(f)
    return out


def seed_faiss(index: faiss.Index, seed: int) -> None:
    """Seed the k-means / local search of a faiss index (PQ, OPQ's PQ, RQ, LSQ)."""
    sub = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    # (OPQMatrix exposes no seed: OPQ's seeds differ only through its final PQ's k-means.)
    if hasattr(sub, "pq"):
        sub.pq.cp.seed = seed
        sub.pq.cp.min_points_per_centroid = 1
    if hasattr(sub, "rq"):
        sub.rq.cp.seed = seed
        sub.rq.cp.min_points_per_centroid = 1
    if hasattr(sub, "lsq"):
        sub.lsq.random_seed = seed


def fit_faiss(factory: str, items: np.ndarray, seed: int, max_train: int) -> tuple[faiss.Index, float, float]:
    d = items.shape[1]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    cap = min(max_train, LSQ_MAX_TRAIN) if factory.startswith("LSQ") else max_train
    rng = np.random.default_rng(seed)
    sample = items if len(items) <= cap else items[np.sort(rng.choice(len(items), cap, replace=False))]
    seed_faiss(index, seed)
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(sample))
    t1 = time.perf_counter()
    index.add(items)
    return index, t1 - t0, time.perf_counter() - t1


def evaluate(score_fn, split, users, ref=None) -> dict[str, float]:
    ranked = rank_users(score_fn, split, users, K, batch_size=512)
    m = ranking_metrics(ranked, users, split.test_indptr, split.test_items, (10, K))
    out = {"recall": m[f"recall@{K}"], "ndcg": m["ndcg@10"], "mrr": m["mrr"]}
    if ref is not None:
        out.update(rel_recall=out["recall"] / ref["recall"], rel_ndcg=out["ndcg"] / ref["ndcg"],
                   rel_mrr=out["mrr"] / ref["mrr"])  # fmt: skip
    return out


def faiss_score_fn(index: faiss.Index, user_emb: np.ndarray, n_items: int):
    """Scores of every item by the faiss codes (reconstruction dot products; the ranking faiss's IP search gives)."""
    recon = index.reconstruct_n(0, n_items).astype(np.float32)
    return dense_score_fn(user_emb, recon)


def summarise(per_seed: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in per_seed[0]:
        vals = np.array([p[key] for p in per_seed], np.float64)
        out[key] = float(vals.mean())
        out[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[key + "_min"], out[key + "_max"] = float(vals.min()), float(vals.max())
    return out


def merge_seeds(first, rest, chosen: dict[int, str]):
    """``rest`` (the chosen specs with the seeds after the first) with ``first``'s seed-0 runs of them prepended."""
    for b, spec in chosen.items():
        row0 = next(r for r in first.rows if r.label == spec and r.budget == b)
        row = next(r for r in rest.rows if r.label == spec and r.budget == b)
        row.seeds = row0.seeds + row.seeds
        row.per_seed = row0.per_seed + row.per_seed
        row.summarise()
        rest.fitted[spec] = first.fitted[spec][:1] + rest.fitted[spec]
    rest.seeds = first.seeds + rest.seeds
    return rest


def sample_users(split, n: int, seed: int) -> np.ndarray:
    users = split.eval_users()
    if n and len(users) > n:
        users = np.sort(np.random.default_rng(seed).choice(users, n, replace=False))
    return users


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--budgets", default="8,16,32")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=10000, help="validation and test users scored (a seeded sample)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--faiss-max-train", type=int, default=65536)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--candidates", default=None, help="reelpack specs instead of candidate_specs (space-separated)")
    ap.add_argument("--faiss-top", type=int, default=2, help="faiss codecs per budget run with every seed (best on validation)")
    ap.add_argument("--skip-faiss", default="", help="faiss factories to skip (space-separated), e.g. for time")
    ap.add_argument("--popularity-betas", default="0,1",
                    help="popularity exponents every reelpack candidate is fitted with (reelpack.data.popularity_weights)")
    ap.add_argument("--exposure-betas", default="",
                    help="exposure exponents every reelpack candidate is also fitted with (reelpack.data.exposure_weights; "
                         "none by default); a candidate spec@expoB names one")
    ap.add_argument("--out", default="results/validation-sweep")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = list(range(args.seeds))
    betas = [float(x) for x in args.popularity_betas.split(",")]
    expo_betas = [float(x) for x in args.exposure_betas.split(",") if x.strip()]
    faiss.omp_set_num_threads(1)
    t_start = time.time()
    inter = load_interactions(args.data)
    split = train_test_split(inter, 0.2, 0)
    fit = validation_split(split, args.val_fraction, 0)
    emb, loaded = load_or_train(fit, TwoTowerConfig(dim=args.dim, num_threads=1), progress=False, evaluate=False)
    U, X = emb.user_emb, emb.item_emb
    val_users = validation_users(fit, args.users)  # the users tune_codecs scores
    test_users = sample_users(split, args.users, 2)
    log = lambda *a: print(f"[{time.time() - t_start:7.0f}s]", *a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"d={args.dim}: {split.n_users} users, {split.n_items} items; fit {len(fit.train_items)}, "
        f"validation {len(fit.test_items)}, test {len(split.test_items)} interactions; embeddings "
        f"{'cached' if loaded else 'trained'}")  # fmt: skip

    # ---- 1. reelpack: choose on validation (seed 0), then the choice with every seed -------------------------
    cands = args.candidates.split() if args.candidates else None

    def progress(done, total, what):
        log(f"tune {done}/{total} {what}")

    tune = tune_codecs(U, X, fit, budgets, candidates=cands, seeds=seeds[:1], k=K, max_users=args.users,
                       finetune=True, progress=progress, finetune_epochs=args.finetune_epochs, keep_fitted=True,
                       popularity_betas=betas, exposure_betas=expo_betas)  # fmt: skip
    chosen = {b: tune.choice(b).label for b in budgets}  # "rq8-n" or, popularity-weighted, "rq8-n@pop1"
    log(f"chosen on validation (seed {seeds[0]}): {chosen}")
    if len(seeds) > 1:  # the choice with the other seeds: its validation spread, and the codecs the test reads
        rest = tune_codecs(U, X, fit, budgets, candidates=sorted(set(chosen.values())), seeds=seeds[1:], k=K,
                           max_users=args.users, finetune=True, progress=progress, popularity_betas=(0.0,),
                           finetune_epochs=args.finetune_epochs, keep_fitted=True)  # fmt: skip
        again = merge_seeds(tune, rest, chosen)
    else:
        again = tune
    tune.provenance = {"model": f"two-tower {args.dim}-d trained on the fit split",
                       "script": "benchmarks/validation_sweep.py", "choice_seeds": seeds[:1]}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tune.save(out / f"tune-d{args.dim}.json")

    # ---- 2. faiss on validation: every factory with seed 0, the best --faiss-top with every seed -----------
    ref_val = evaluate(dense_score_fn(U, X), fit, val_users)
    faiss_rows: dict[int, dict[str, dict]] = {}
    fitted_faiss: dict[str, dict[int, object]] = {}
    skip = set(args.skip_faiss.split())

    def run_faiss(f: str, s: int) -> dict:
        index, train_s, add_s = fit_faiss(f, X, s, args.faiss_max_train)
        sf = faiss_score_fn(index, U, split.n_items)
        r = evaluate(sf, fit, val_users, ref_val)
        r.update(train_s=train_s, add_s=add_s)
        fitted_faiss.setdefault(f, {})[s] = sf
        log(f"faiss {f} seed {s}: val rel R@50 {r['rel_recall']:.4f} (train {train_s:.0f}s, add {add_s:.0f}s)")
        return r

    for b in budgets:
        faiss_rows[b] = {}
        for f in faiss_factories(b, args.dim):
            if f in skip:
                faiss_rows[b][f] = {"skipped": "--skip-faiss"}
                continue
            faiss_rows[b][f] = {"validation_per_seed": [run_faiss(f, seeds[0])]}
        ranked = sorted((f for f in faiss_rows[b] if "validation_per_seed" in faiss_rows[b][f]),
                        key=lambda f: -faiss_rows[b][f]["validation_per_seed"][0]["rel_recall"])  # fmt: skip
        for f in ranked[: args.faiss_top]:
            faiss_rows[b][f]["validation_per_seed"] += [run_faiss(f, s) for s in seeds[1:]]
        for f, row in faiss_rows[b].items():
            if "validation_per_seed" in row:
                row["validation"] = summarise(row["validation_per_seed"])
                row["seeds"] = len(row["validation_per_seed"])

    # ---- 3. test, read once -----------------------------------------------------------------------------
    ref_test = evaluate(dense_score_fn(U, X), split, test_users)
    report: dict = {"float32": {"validation": ref_val, "test": ref_test}, "budgets": {}}
    for b in budgets:
        spec = chosen[b]
        per_seed = []
        for seed, codec, codes in again.fitted[spec]:
            per_seed.append(evaluate(lambda us, c=codec, z=codes: c.score(U[us], z), split, test_users, ref_test))
        row = next(r for r in again.rows if r.label == spec and r.budget == b)
        entry = {"reelpack": {"spec": spec, "choice": dict(vars(tune.choice(b))),
                              "validation": {**row.mean, **{k + "_std": v for k, v in row.std.items()},
                                             "finetune": row.finetune, "finetuned": row.finetuned},
                              "validation_per_seed": row.per_seed,
                              "test": summarise(per_seed), "test_per_seed": per_seed},
                 "faiss": faiss_rows[b]}  # fmt: skip
        for f, row_f in faiss_rows[b].items():
            if f not in fitted_faiss:
                continue
            ps = [evaluate(fn, split, test_users, ref_test) for _, fn in sorted(fitted_faiss[f].items())]
            row_f["test"] = summarise(ps)
            row_f["test_per_seed"] = ps
        tested = {f: r for f, r in faiss_rows[b].items() if "test" in r}
        best_val = max(tested, key=lambda f: tested[f]["validation"]["rel_recall"]) if tested else None
        best_test = max(tested, key=lambda f: tested[f]["test"]["rel_recall"]) if tested else None
        entry["best_faiss_on_validation"], entry["best_faiss_on_test"] = best_val, best_test
        if best_test:
            ours = entry["reelpack"]["test"]["rel_recall"]
            theirs = tested[best_test]["test"]["rel_recall"]
            entry["gap_closed"] = (ours - theirs) / (1.0 - theirs) if theirs < 1 else float("nan")
            entry["ndcg_diff"] = entry["reelpack"]["test"]["rel_ndcg"] - tested[best_test]["test"]["rel_ndcg"]
        report["budgets"][str(b)] = entry
        log(f"B={b}: reelpack {spec} test rel R@50 {entry['reelpack']['test']['rel_recall']:.4f}"
            f" ± {entry['reelpack']['test']['rel_recall_std']:.4f}; best faiss {best_test} "
            f"{tested[best_test]['test']['rel_recall'] if best_test else float('nan'):.4f}")  # fmt: skip
    report.update(
        dim=args.dim, seeds=seeds, users=args.users, data=args.data, validation_fraction=args.val_fraction,
        tune=json.loads(tune.to_json()), tune_all_seeds=json.loads(again.to_json()), seconds=time.time() - t_start,
        machine=f"{platform.machine()} {platform.processor() or ''} {__import__('os').cpu_count()} cores".strip(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        command="python " + " ".join(["benchmarks/validation_sweep.py"] + (argv if argv is not None else sys.argv[1:])),
    )  # fmt: skip
    (out / f"sweep-d{args.dim}.json").write_text(json.dumps(report, indent=1, default=float))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"### d = {report['dim']} ({len(report['seeds'])} codec seeds, {report['users']} users)", "",
             "| B | reelpack (chosen on validation) | val rel R@50 | test rel R@50 | test rel NDCG@10 | best faiss (test) "
             "| its test rel R@50 | its rel NDCG@10 | gap closed |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for b, e in report["budgets"].items():
        r = e["reelpack"]
        bf = e.get("best_faiss_on_test")
        fr = e["faiss"][bf]["test"] if bf else {}
        lines.append(
            f"| {b} | `{r['spec']}` | {r['validation']['rel_recall']:.4f} | {r['test']['rel_recall']:.4f} ± "
            f"{r['test']['rel_recall_std']:.4f} | {r['test']['rel_ndcg']:.4f} | {bf} | "
            f"{fr.get('rel_recall', float('nan')):.4f} ± {fr.get('rel_recall_std', float('nan')):.4f} | "
            f"{fr.get('rel_ndcg', float('nan')):.4f} | {e.get('gap_closed', float('nan')):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
