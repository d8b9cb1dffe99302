"""One faiss factory on every test user: test relative Recall@50 and NDCG@10 per seed (the report's opponent).

The codec is fitted and scored exactly as in ``benchmarks/validation_sweep.py`` (:func:`validation_sweep.fit_faiss`,
the same training cap and seeds, scores by reconstruction dot products) on the embeddings of
``benchmarks/validation_protocol.py``; the test split (per-user 80/20, seed 0) is read for the report, every test
user, relative to float32 on the same users. Use it to put a faiss codec on the same users as a study that scored
every user, without rerunning a whole sweep.

Usage (from the project root)::

    OMP_NUM_THREADS=1 python benchmarks/faiss_on_test.py --data ../shared/data/amazon-book/interactions.txt \\
        --dim 512 --factory RQ16x8 --seeds 3
"""

from __future__ import annotations

import argparse
import json

import faiss

from reelpack.data import load_interactions, train_test_split
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from validation_protocol import load_validation_protocol  # benchmarks/, beside this script
from validation_sweep import faiss_score_fn, fit_faiss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--factory", default="RQ16x8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--faiss-max-train", type=int, default=65536, help="as validation_sweep.py's option")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    P = load_validation_protocol(args.data, args.dim, None)
    split = train_test_split(load_interactions(args.data), 0.2, 0)
    users = split.eval_users()
    ref, _ = evaluate_scores(dense_score_fn(P.U, P.X), split, users, ks=(10, 50))
    for seed in range(args.seeds):
        index, train_s, _ = fit_faiss(args.factory, P.X, seed, args.faiss_max_train)
        m, _ = evaluate_scores(faiss_score_fn(index, P.U, P.X.shape[0]), split, users, ks=(10, 50))
        print(json.dumps({"factory": args.factory, "seed": seed, "test_users": int(len(users)),
                          "rel_recall@50": m["recall@50"] / ref["recall@50"],
                          "rel_ndcg@10": m["ndcg@10"] / ref["ndcg@10"], "train_s": train_s}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
