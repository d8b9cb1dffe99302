"""Progressive refinement study: coarse layer 0 for every item, refinement for candidates.

For each (layer 0, layer 1, candidates) the client ranks the whole catalog with layer 0,
fetches layer-1 codes only for its top ``candidates`` (train items excluded), re-ranks
them with :func:`reelpack.search.progressive_topk`, and we measure Recall@50 relative to
float32 and the bytes per catalog item the client transferred: all of layer 0 plus the
refinement codes of its candidates, counted per user either item by item (ideal range
requests) or as whole blocks of ``items_per_block`` items (block-granular fetches).

    PYTHONPATH=src python benchmarks/progressive_study.py 2>/dev/null

Embeddings come from the two-tower cache (``~/.cache/reelpack/twotower/*/`` with
``meta.json`` ``"dim"``), the split from ``reelpack.data.train_test_split``.
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path

import numpy as np

from reelpack.codecs import make_codec
from reelpack.data import load_interactions, train_test_split
from reelpack.metrics.quality import ranking_metrics
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from reelpack.search import progressive_topk


def load_embeddings(cache: Path, dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    found = []
    for meta_path in sorted(cache.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("dim") == dim:
            found.append(meta_path.parent)
    if len(found) != 1:
        sys.exit(f"expected one cached embedding with dim={dim} under {cache}, found {len(found)}")
    d = found[0]
    return np.load(d / "users.npy"), np.load(d / "items.npy"), d.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("REELPACK_DATA", "../shared/data/amazon-book/interactions.txt"),
        help="interactions file (default: $REELPACK_DATA, else ../shared/data/amazon-book/interactions.txt)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache/reelpack/twotower"))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coarse", default="simhash128 sq4")
    ap.add_argument("--refine", default="sq8 sq4 pq16")
    ap.add_argument("--candidates", default="200 500 1000 2000")
    ap.add_argument("--blocks", default="16 64 256 1024", help="items_per_block values for block-granular bytes")
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    command = "PYTHONPATH=src python benchmarks/progressive_study.py " + " ".join(sys.argv[1:])

    t0 = time.perf_counter()
    split = train_test_split(load_interactions(args.data))
    users_emb, items_emb, key = load_embeddings(Path(args.cache), args.dim)
    n = items_emb.shape[0]
    if n != split.n_items:
        sys.exit(f"cached embeddings have {n} items, the split {split.n_items}")
    rng = np.random.default_rng(args.seed)
    eval_users = split.eval_users()
    users = np.sort(rng.choice(eval_users, size=min(args.users, eval_users.size), replace=False))
    ks = (10, 20, 50)
    blocks = [int(b) for b in args.blocks.split()]
    cand_list = [int(c) for c in args.candidates.split()]

    f32 = evaluate_scores(dense_score_fn(users_emb, items_emb), split, users, ks)[0]["recall@50"]
    print(f"# data {args.data}: {n} items, {len(users)} sampled eval users (seed {args.seed}); "
          f"embeddings {key[:12]} d={args.dim}; float32 Recall@50 {f32:.4f}", file=sys.stderr)

    codecs = {}
    for spec in dict.fromkeys(args.coarse.split() + args.refine.split()):
        c = make_codec(spec).fit(items_emb, seed=args.seed)
        codecs[spec] = (c, c.encode(items_emb))

    def exclude_of(batch: np.ndarray) -> list[np.ndarray]:
        ip = split.train_indptr
        return [split.train_items[ip[u] : ip[u + 1]] for u in batch]

    rows_out = []
    # references: each codec alone over the whole catalog
    alone = {}
    for spec, (c, codes) in codecs.items():
        r = evaluate_scores(lambda u, c=c, codes=codes: c.score(users_emb[u], codes), split, users, ks)[0]["recall@50"]
        alone[spec] = r
    for coarse_spec in args.coarse.split():
        cc, ccodes = codecs[coarse_spec]
        for refine_spec in args.refine.split():
            if refine_spec == coarse_spec:
                continue
            fc, fcodes = codecs[refine_spec]
            for cand in cand_list:
                t = time.perf_counter()
                ranked = np.empty((len(users), 50), np.int64)
                item_bytes = np.empty(len(users))
                block_bytes = {b: np.empty(len(users)) for b in blocks}
                for s in range(0, len(users), args.batch):
                    batch = users[s : s + args.batch]
                    res = progressive_topk(users_emb[batch], cc, ccodes, lambda r: fcodes[r], fc, k=50,
                                           candidates=cand, exclude=exclude_of(batch))
                    ranked[s : s + len(batch)] = res.ids
                    item_bytes[s : s + len(batch)] = cand * fc.bytes_per_vector
                    for b in blocks:
                        blk = np.sort(res.candidates // b, axis=1)
                        touched = 1 + (np.diff(blk, axis=1) != 0).sum(axis=1)
                        # the last block may be short: count its real length when touched
                        last = (n - 1) // b
                        short = (b - (n - last * b)) * (blk[:, -1] == last)
                        block_bytes[b][s : s + len(batch)] = (touched * b - short) * fc.bytes_per_vector
                rec = ranking_metrics(ranked, users, split.test_indptr, split.test_items, ks)["recall@50"]
                b0 = cc.bytes_per_vector
                row = {
                    "layer0": coarse_spec, "layer1": refine_spec, "candidates": cand,
                    "rel_recall50": rec / f32, "layer1_alone_rel": alone[refine_spec] / f32,
                    "layer0_alone_rel": alone[coarse_spec] / f32,
                    "bytes_item": b0 + item_bytes.mean() / n,
                    # + the refinement layer's BLOCK_INDEX entries (32 B per block), part of the directory prefix
                    **{f"bytes_block{b}": b0 + block_bytes[b].mean() / n + 32 / b for b in blocks},
                    "full_both": b0 + fc.bytes_per_vector, "seconds": time.perf_counter() - t,
                }
                rows_out.append(row)
                print(json.dumps(row), file=sys.stderr)

    print(f"Command: `{command}`  ")
    print(f"amazon-book, d={args.dim}, {n} items, {len(users)} sampled eval users (seed {args.seed}), "
          f"float32 Recall@50 = {f32:.4f}. Bytes/item = average per user of (layer 0 for every item + "
          f"layer-1 codes fetched) / n_items; block columns add the layer-1 BLOCK_INDEX entries (32 B per block "
          f"= 32/P B/item), which every client downloads with the directory. Header, ids and codec sections are "
          f"not counted.\n")
    head = ["layer 0", "layer 1", "candidates", "rel R@50", "layer 1 alone", "layer 0 alone",
            "B/item (item ranges)"] + [f"B/item (blocks of {b})" for b in blocks] + ["B/item (both layers in full)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows_out:
        cells = [r["layer0"], r["layer1"], str(r["candidates"]), f"{r['rel_recall50']:.3f}",
                 f"{r['layer1_alone_rel']:.3f}", f"{r['layer0_alone_rel']:.3f}", f"{r['bytes_item']:.2f}"]
        cells += [f"{r[f'bytes_block{b}']:.2f}" for b in blocks] + [f"{r['full_both']}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
