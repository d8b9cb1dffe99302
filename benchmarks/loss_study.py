"""Packet-loss study: relative Recall@50 against block loss, with and without parity.

Two packs of the amazon-book item embeddings (dim 64, two-tower cache):

* ``pq16``: one layer, 16 B/item, 64 items per block (1 KiB blocks);
* ``simhash128+sq8``: layer 0 simhash128 (16 B/item, 64 items/block), layer 1 sq8 (64 B/item,
  16 items/block); items whose sq8 block is lost are scored from layer 0 (degradation policy).

Each pack is written without parity and with Reed-Solomon parity (k data + m parity blocks per
interleaved group, on every layer). The directory prefix (header, ids, codecs, block index,
PARITY records) is assumed delivered (it is fetched first and re-requested on loss); every
data block *and* every parity block is a packet, dropped i.i.d. or in Gilbert-Elliott bursts
(one mask over the packets in transmission order: parity blocks, then layer 0, then layer 1).
Items with nothing readable score -inf (ranked last) and are counted.

Recall@50 over a seeded sample of evaluation users, relative to float32 scoring
(``rel``) and to the same pack without loss (``rel/pack``), averaged over ``--seeds`` loss draws.

    PYTHONPATH=src python benchmarks/loss_study.py 2>/dev/null
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reelpack.codecs import make_codec
from reelpack.data import load_interactions, train_test_split
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from reelpack.bench.robustness import degraded_scores, read_degraded, simulate_loss
from reelpack.format import PackReader
from reelpack.format import inspect, read_parity, write_pack


def load_embeddings(cache: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    found = [p.parent for p in sorted(cache.glob("*/meta.json"))
             if json.loads(p.read_text()).get("dim") == dim and not json.loads(p.read_text()).get("synthetic")]  # fmt: skip
    if len(found) != 1:
        sys.exit(f"expected one cached amazon-book embedding with dim={dim} under {cache}, found {len(found)}")
    return np.load(found[0] / "items.npy").astype(np.float32), np.load(found[0] / "users.npy").astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("REELPACK_DATA", "../shared/data/amazon-book/interactions.txt"),
        help="interactions file (default: $REELPACK_DATA, else ../shared/data/amazon-book/interactions.txt)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache/reelpack/twotower"))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=2, help="loss draws per scenario")
    ap.add_argument("--burst-length", type=float, default=4.0, help="Gilbert-Elliott mean burst length (blocks)")
    ap.add_argument("--parity", default="10:1,20:2", help="comma-separated k:m parity settings")
    args = ap.parse_args()

    t0 = time.time()
    items, users = load_embeddings(Path(args.cache), args.dim)
    split = train_test_split(load_interactions(args.data))
    rng = np.random.default_rng(0)
    ev = split.eval_users()
    ev = np.sort(rng.choice(ev, size=min(args.users, ev.size), replace=False))
    ref, _ = evaluate_scores(dense_score_fn(users, items), split, ev, ks=(50,))
    r_float = ref["recall@50"]
    n = items.shape[0]
    ids = np.arange(n)

    packs = {
        "pq16": [("pq16", 64)],
        "simhash128+sq8": [("simhash128", 64), ("sq8", 16)],
    }
    parities = [None] + [tuple(int(v) for v in s.split(":")) for s in args.parity.split(",") if s]
    losses = [("none", 0.0)] + [(m, r) for m in ("iid", "gilbert-elliott") for r in (0.01, 0.05, 0.20)]
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for pack_name, spec in packs.items():
        layers = []
        for codec_spec, _ in spec:
            codec = make_codec(codec_spec).fit(items, seed=0)
            layers.append((codec, codec.encode(items)))
        ipbs = [ipb for _, ipb in spec]
        base_recall = None
        for par in parities:
            plan = {} if par is None else {i: par for i in range(len(layers))}
            path = write_pack(tmp / f"{pack_name}.rpak", ids, layers, parity=plan or None, items_per_block=ipbs)
            with PackReader(path) as r:
                par_recs = read_parity(r)
                codes_bytes = sum(r.n_items * lay.bytes_per_vector for lay in r.layers)
            parity_bytes = sum(s["length"] for s in inspect(path)["sections"] if s["type_name"] == "PARITY")
            overhead = parity_bytes / codes_bytes
            with PackReader(path) as r:
                n_data = [lay.n_blocks for lay in r.layers]
                n_par = [par_recs[i].n_groups * par_recs[i].m if i in par_recs else 0 for i in range(r.n_layers)]
                for model, rate in losses:
                    acc = []
                    for seed in range(args.seeds if rate > 0 else 1):
                        mask = simulate_loss(sum(n_par) + sum(n_data), rate, model="iid" if model == "none" else model,
                                             seed=1000 * seed + 17, burst_length=args.burst_length)  # fmt: skip
                        cuts = np.cumsum(n_par + n_data)[:-1]
                        parts = np.split(mask, cuts)
                        L = r.n_layers
                        lost_par = {i: parts[i] for i in range(L) if n_par[i]}
                        lost = {i: parts[L + i] for i in range(L)}
                        deg, recs = read_degraded(r, lost=lost, lost_parity=lost_par, use_parity=par is not None)
                        m, _ = evaluate_scores(lambda u, deg=deg: degraded_scores(users[u], deg), split, ev, ks=(50,))
                        counts = deg.counts()
                        acc.append((m["recall@50"], mask.mean(),
                                    sum(len(rc.lost_blocks) for rc in recs.values()) / sum(n_data),
                                    sum(len(rc.unrecoverable_blocks) for rc in recs.values()) / sum(n_data),
                                    counts.get(0, 0) / n if L > 1 else 0.0, counts.get(-1, 0)))  # fmt: skip
                    a = np.array(acc, dtype=np.float64)
                    rec50 = a[:, 0].mean()
                    if model == "none":
                        base_recall = rec50 if par is None else base_recall
                    rows.append({
                        "pack": pack_name, "parity": "none" if par is None else f"RS k={par[0]} m={par[1]}",
                        "overhead": overhead, "loss": "0" if model == "none" else f"{model} {rate:.0%}",
                        "packet_loss": a[:, 1].mean(), "data_lost": a[:, 2].mean(), "after_fec": a[:, 3].mean(),
                        "from_l0": a[:, 4].mean(), "unreadable": a[:, 5].mean(), "recall": rec50,
                        "rel": rec50 / r_float, "rel_pack": rec50 / base_recall,
                    })  # fmt: skip
                    print(f"[{time.time() - t0:6.0f}s] {rows[-1]}", file=sys.stderr, flush=True)

    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Loss study: amazon-book, dim {args.dim}, {n} items, {ev.size} eval users (seed 0), "
          f"float32 Recall@50 = {r_float:.4f}; {args.seeds} loss draws per lossy scenario; "
          f"Gilbert-Elliott mean burst {args.burst_length:g} blocks; blocks of 1 KiB.\n")  # fmt: skip
    print("| pack | parity | overhead | loss model | packets lost | data blocks lost | lost after FEC | "
          "items from layer 0 | unreadable items | Recall@50 | rel. float32 | rel. pack |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in rows:
        print(f"| {w['pack']} | {w['parity']} | {w['overhead']:.1%} | {w['loss']} | {w['packet_loss']:.2%} | "
              f"{w['data_lost']:.2%} | {w['after_fec']:.2%} | {w['from_l0']:.2%} | {w['unreadable']:.0f} | "
              f"{w['recall']:.4f} | {w['rel']:.3f} | {w['rel_pack']:.3f} |")  # fmt: skip
    print(f"\nCommand: PYTHONPATH=src python benchmarks/loss_study.py {' '.join(sys.argv[1:])} 2>/dev/null"
          f"  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
