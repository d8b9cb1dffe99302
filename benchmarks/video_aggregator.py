"""Video item towers: Compressed Video Aggregator vs mean pooling vs full attention.

Data: SYNTHETIC. The default synthetic interactions (6000 users x 5000 items, 25 clusters) and
``reelpack.models.video.synthetic_video_catalog`` on them: 64 frames per video, d_frame 128 (8 planted
signal frames, the rest distractors), titles wrong for a share ``--rates`` of the videos.
Each (model, wrong-title rate) trains user tower + item tower jointly (in-batch softmax + logQ)
in a FRESH subprocess (``reelpack.models.video.train.train_isolated``) so that its peak memory (VmHWM growth
after the data are loaded and the code paths warmed up) is its own. The subprocesses run with
``MALLOC_MMAP_THRESHOLD_=65536`` so freed large buffers go back to the OS: without it glibc's heap
keeps them and the peak counts allocator retention instead of live tensors (same for every model).

Rows: Recall@50 / NDCG@10 on the test split (train items excluded), seconds per epoch (mean over
epochs; the one-time gradient-free preprocessing of the frozen inputs is shown apart), peak MB.
Oracle: MeanPool over the mean of each video's SIGNAL frames only (uses the planted labels; an upper
reference for pooling, trained in-process, memory not measured). Codecs: the aggregator's item
embeddings at wrong-title rate 0 encoded by each codec, users scored by ``codec.score``; Recall@50
relative to the aggregator's float32 embeddings.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/video_aggregator.py --out video.json   # ~10 min, 1 core
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/video_aggregator.py --epochs 1 --rates 0 --out quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.models.video.train import MODEL_NAMES, VideoTrainConfig, restrict_catalog, train_isolated, train_video_two_tower

CODECS = ("sq8", "pq16", "pq8", "pq32x4")


def _oracle(config: VideoTrainConfig, rate: float) -> dict[str, Any]:
    from reelpack.models.video.data import synthetic_video_catalog

    inter = synthetic_interactions()
    split = train_test_split(inter, seed=0)
    cat = restrict_catalog(synthetic_video_catalog(inter, wrong_title_rate=rate), split)
    sig = cat.signal_mean(normalize=True).astype(np.float32)
    oracle_cat = SimpleNamespace(frames=sig[:, None, :], n_frames=np.ones(len(sig), np.int64), title_emb=cat.title_emb)
    res = train_video_two_tower(split, oracle_cat, "mean", config)
    return {"model": "oracle (mean of signal frames)", **res.summary()}


def _codec_rows(user_emb: np.ndarray, item_emb: np.ndarray, ref: dict[str, float]) -> list[dict[str, Any]]:
    from reelpack.codecs import make_codec
    from reelpack.metrics.ranking import evaluate_scores

    split = train_test_split(synthetic_interactions(), seed=0)
    rows = []
    for spec in CODECS:
        try:
            codec = make_codec(spec).fit(item_emb, seed=0)
        except Exception as exc:  # e.g. d not divisible
            rows.append({"spec": spec, "error": str(exc)})
            continue
        codes = codec.encode(item_emb)
        metrics, _ = evaluate_scores(lambda u: codec.score(user_emb[u], codes), split)
        rows.append({
            "spec": spec, "bytes_per_vector": int(codec.bytes_per_vector),
            "recall@50": metrics["recall@50"], "ndcg@10": metrics["ndcg@10"],
            "rel_recall@50": metrics["recall@50"] / ref["recall@50"], "rel_ndcg@10": metrics["ndcg@10"] / ref["ndcg@10"],
        })  # fmt: skip
    return rows


def _mb(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.2, 0.5], help="wrong-title rates")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON output path")
    args = ap.parse_args(argv)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(v, "1")
    config = VideoTrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, num_threads=1)
    t_all = time.perf_counter()
    runs: list[dict[str, Any]] = []
    agg0 = None
    for rate in args.rates:
        for name in args.models:
            t0 = time.perf_counter()
            res = train_isolated(name, config, {}, {"wrong_title_rate": rate})
            row = {"rate": rate, **res.summary(), "wall_seconds": time.perf_counter() - t0}
            runs.append(row)
            print(f"rate {rate:.1f} {name:10s} R@50 {res.metrics['recall@50']:.4f} N@10 {res.metrics['ndcg@10']:.4f} "
                  f"{res.seconds_per_epoch:.2f} s/epoch ({res.cpu_seconds_per_epoch:.2f} CPU s) peak {_mb(res.peak_growth_bytes)} MB", file=sys.stderr, flush=True)  # fmt: skip
            if name == "aggregator" and agg0 is None:
                agg0 = res
    oracle = None if args.no_oracle else _oracle(config, args.rates[0])
    codecs = _codec_rows(agg0.user_emb, agg0.item_emb, agg0.metrics) if agg0 is not None else []
    total = time.perf_counter() - t_all

    def get(name: str, rate: float) -> dict[str, Any] | None:
        return next((r for r in runs if r["model"] == name and r["rate"] == rate), None)

    r0 = args.rates[0]
    lines = [
        "SYNTHETIC video catalog (reelpack.models.video.synthetic_video_catalog on synthetic_interactions(): 6000 users x 5000 "
        f"items, 25 clusters; 64 frames/video, d_frame 128, d_out {config.d_out}); {config.epochs} epochs, batch "
        f"{config.batch_size}, 1 thread",
        "",
        f"| model (wrong titles {r0:.0%}) | Recall@50 | NDCG@10 | s/epoch | CPU s/epoch | prep s | peak MB | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        r = get(name, r0)
        if r:
            lines.append(f"| {name} | {r['metrics']['recall@50']:.4f} | {r['metrics']['ndcg@10']:.4f} | "
                         f"{r['seconds_per_epoch']:.2f} | {r['cpu_seconds_per_epoch']:.2f} | {r['prep_seconds']:.2f} | {_mb(r['peak_growth_bytes'])} | "
                         f"{r['n_params']:,} |")  # fmt: skip
    if oracle:
        lines.append(f"| oracle: mean of signal frames | {oracle['metrics']['recall@50']:.4f} | "
                     f"{oracle['metrics']['ndcg@10']:.4f} | | | | | |")  # fmt: skip
    data_mb = runs[0]["data_bytes"] / 2**20 if runs else 0
    lines += ["", f"Catalog arrays (not counted in peak): {data_mb:.0f} MB.", ""]
    if len(args.rates) > 1:
        lines += ["| wrong titles | " + " | ".join(f"{m} R@50" for m in args.models) + " |",
                  "|---|" + "---|" * len(args.models)]  # fmt: skip
        for rate in args.rates:
            cells = [f"{get(m, rate)['metrics']['recall@50']:.4f}" if get(m, rate) else "" for m in args.models]
            lines.append(f"| {rate:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    if codecs:
        lines += ["| codec (aggregator items) | bytes/vector | Recall@50 | rel Recall@50 | rel NDCG@10 |", "|---|---|---|---|---|"]
        for c in codecs:
            if "error" in c:
                lines.append(f"| {c['spec']} | error: {c['error']} | | | |")
            else:
                lines.append(f"| {c['spec']} | {c['bytes_per_vector']} | {c['recall@50']:.4f} | "
                             f"{c['rel_recall@50']:.3f} | {c['rel_ndcg@10']:.3f} |")  # fmt: skip
        lines.append("")
    targets: dict[str, Any] = {}
    a, m, f = get("aggregator", r0), get("mean", r0), get("full", r0)
    if a and m and f:
        ra, rm, rf = (x["metrics"]["recall@50"] for x in (a, m, f))
        targets = {
            "agg_ge_mean": ra >= rm,
            "agg_within_2pct_of_full": ra >= 0.98 * rf,
            "agg_rel_to_full": ra / rf,
            "time_ratio_full_over_agg": f["seconds_per_epoch"] / a["seconds_per_epoch"],
            "cpu_time_ratio_full_over_agg": f["cpu_seconds_per_epoch"] / a["cpu_seconds_per_epoch"],
            "memory_ratio_full_over_agg": (f["peak_growth_bytes"] or 0) / max(a["peak_growth_bytes"] or 1, 1),
        }
        a5, m5 = get("aggregator", 0.5), get("mean", 0.5)
        if a5 and m5:
            targets["agg_ge_mean_at_50pct_wrong"] = a5["metrics"]["recall@50"] >= m5["metrics"]["recall@50"]
        lines.append("Targets: " + ", ".join(f"{k} = {v:.2f}" if isinstance(v, float) else f"{k} = {v}" for k, v in targets.items()))
    cmd = "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/video_aggregator.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"Command: `{cmd}` ({total:.0f} s total)"]
    print("\n".join(lines))
    with open(args.out, "w") as fh:
        json.dump({"label": "SYNTHETIC", "command": cmd, "total_seconds": total, "config": config.to_dict(),
                   "runs": runs, "oracle": oracle, "codecs": codecs, "targets": targets}, fh, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
