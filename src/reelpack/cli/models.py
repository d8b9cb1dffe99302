"""Model commands: train (the two-tower model), train-reranker, rerank-bench. All need the ``[train]`` extra
(torch); the re-ranker's ONNX export and latency need ``[onnx]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from reelpack.cli.shared import (
    DataOpt,
    app,
    console,
    err_console,
    fail,
    load_split,
    need,
    parse_codecs,
    two_tower_embeddings,
)
from reelpack.errors import ReelpackError

__all__ = ["train", "train_reranker_cmd", "rerank_bench_cmd"]


@app.command()
def train(
    data: DataOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 64,
    epochs: Annotated[Optional[int], typer.Option(help="Override the training epochs.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache folder.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Ignore cached embeddings.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the split and training.")] = 0,
) -> None:
    """Train the two-tower model (or load it from the cache) and print its float32 metrics."""
    need("train", ("torch",), "reelpack train")
    try:
        split = load_split(data, seed)
        two_tower_embeddings(split, dim, epochs, cache_dir, retrain, seed)
    except ReelpackError as exc:
        fail(exc)


@app.command("train-reranker")
def train_reranker_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Re-ranker file to write (replaced atomically).")],
    codec: Annotated[str, typer.Option(help="Codec spec the phone ranks with (e.g. pq8, 'opq8,pq8', apq8).")] = "pq8",
    data: DataOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension (two-tower, cached or trained).")] = 64,
    train_users: Annotated[int, typer.Option(help="Training users (seeded sample of all users).")] = 10000,
    r: Annotated[int, typer.Option("--r", help="Candidates per user (the codec's top-R).")] = 200,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    hidden: Annotated[int, typer.Option(help="Hidden units of the MLP.")] = 32,
    temperature: Annotated[float, typer.Option(help="Teacher softmax temperature (x std of float32 scores).")] = 0.03,
    popularity: Annotated[
        bool,
        typer.Option("--popularity/--no-popularity",
                     help="Use the per-item popularity byte (log_pop feature); --no-popularity: codes only."),
    ] = True,
    onnx_out: Annotated[Optional[Path], typer.Option(help="Also write the model as ONNX here.")] = None,
    codec_out: Annotated[
        Optional[Path], typer.Option(help="Write the fitted codec (Codec.to_bytes) here; default OUT with suffix .codec.")
    ] = None,
    embed_epochs: Annotated[Optional[int], typer.Option(help="Two-tower epochs when training embeddings.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, codec fit, user sample and training.")] = 0,
) -> None:
    """Fit a codec and train an on-device re-ranker for it on the train split (float32 distillation targets)."""
    import numpy as np

    need("train", ("torch",), "reelpack train-reranker")
    if onnx_out is not None:
        need("onnx", ("onnx",), "reelpack train-reranker --onnx-out")
    from reelpack.codecs import make_codec
    from reelpack.models.rerank import train_reranker
    from reelpack.util.atomic import atomic_write_bytes

    try:
        split = load_split(data, seed)
        emb = two_tower_embeddings(split, dim, embed_epochs, None, False, seed)
        fitted = make_codec(codec).fit(emb.item_emb, seed=seed)
        codes = fitted.encode(emb.item_emb)
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(split.n_users, min(train_users, split.n_users), replace=False))
        rr = train_reranker(fitted, codes, split, emb.user_emb, emb.item_emb, users, r=min(r, split.n_items),
                            epochs=epochs, hidden=hidden, temperature=temperature, popularity=popularity,
                            seed=seed)  # fmt: skip
        rr.save(out)
        codec_path = codec_out if codec_out is not None else out.with_suffix(".codec")
        atomic_write_bytes(codec_path, fitted.to_bytes())
        if onnx_out is not None:
            atomic_write_bytes(onnx_out, rr.to_onnx())
    except ReelpackError as exc:
        fail(exc)
    console.print(f"wrote {out} ({out.stat().st_size} bytes): re-ranker for {fitted.spec} (d={fitted.dim}), "
                  f"{rr.n_params} parameters, {len(rr.feature_names)} features "
                  f"(popularity {'on: codes + 1 B/item' if rr.uses_popularity else 'off: codes only'}); "
                  f"codec -> {codec_path}"
                  + (f"; ONNX -> {onnx_out}" if onnx_out is not None else ""))  # fmt: skip


@app.command("rerank-bench")
def rerank_bench_cmd(
    codecs: Annotated[str, typer.Option(help="Codec specs separated by ';' or spaces.")] = "pq8;opq8,pq8;apq8",
    data: DataOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension (two-tower, cached or trained).")] = 64,
    users: Annotated[int, typer.Option(help="Evaluated users (seeded sample; 0 = all with test items).")] = 5000,
    train_users: Annotated[int, typer.Option(help="Training users, drawn outside the evaluated ones.")] = 10000,
    r: Annotated[int, typer.Option("--r", help="Candidates per user (the codec's top-R).")] = 200,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    latency_users: Annotated[int, typer.Option(help="Users timed one at a time.")] = 300,
    popularity: Annotated[
        str, typer.Option(help="Re-ranker variants: both, on (log_pop feature, codes + 1 B/item), off (codes only).")
    ] = "both",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON results file.")] = None,
    embed_epochs: Annotated[Optional[int], typer.Option(help="Two-tower epochs when training embeddings.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, fits, samples and training.")] = 0,
) -> None:
    """Float32 vs each codec's own ranking vs the re-ranked ranking (rel Recall@50, NDCG@10, MRR; latency)."""
    import numpy as np

    need("train", ("torch",), "reelpack rerank-bench")
    need("onnx", ("onnx", "onnxruntime"), "reelpack rerank-bench (its onnxruntime latency column)")
    from reelpack.models.rerank.evaluate import rerank_benchmark
    from reelpack.util.atomic import atomic_write_bytes

    specs = parse_codecs(codecs)
    variants = {"both": (True, False), "on": (True,), "off": (False,)}
    if popularity not in variants:
        err_console.print(f"[bold red]error:[/] --popularity must be one of both, on, off; got {popularity!r}")
        raise typer.Exit(2)
    try:
        split = load_split(data, seed)
        emb = two_tower_embeddings(split, dim, embed_epochs, None, False, seed)
        rng = np.random.default_rng(seed)
        ev = split.eval_users()
        ev_users = ev if users <= 0 or users >= len(ev) else np.sort(rng.choice(ev, users, replace=False))
        pool = np.setdiff1d(np.arange(split.n_users), ev_users)
        pool = pool if len(pool) >= train_users else np.arange(split.n_users)  # reads train items only
        tr_users = np.sort(rng.choice(pool, min(train_users, len(pool)), replace=False))
        result = rerank_benchmark(split, emb.user_emb, emb.item_emb, specs, ev_users, tr_users,
                                  r=min(r, split.n_items), latency_users=latency_users, seed=seed,
                                  popularity=variants[popularity], train_kwargs={"epochs": epochs},
                                  progress=console.print)  # fmt: skip
    except ReelpackError as exc:
        fail(exc)
    from rich.table import Table

    table = Table(title=f"re-ranking the top-{r} ({len(ev_users)} users; float32 = 1.000)")
    for col in ("codec", "popularity", "B/item", "rel R@50", "rel NDCG@10", "rel MRR", "numpy ms/user", "onnx ms/user"):
        table.add_column(col)
    for row in result["rows"]:
        c, n = row["codec_rel"], row["rerank_rel"]
        cells = [f"{c[k]:.3f} -> {n[k]:.3f} ({n[k] - c[k]:+.3f})" for k in ("rel_recall@50", "rel_ndcg@10", "rel_mrr")]
        lat = row["latency"]
        table.add_row(row["codec"], "on" if row["popularity"] else "off", str(row["bytes_per_item"]), *cells,
                      f"{lat['numpy_ms_mean']:.3f}", f"{lat['onnx_ms_mean']:.3f}")  # fmt: skip
    console.print(table)
    if out is not None:
        atomic_write_bytes(out, json.dumps(result, indent=2).encode())
        console.print(f"wrote {out}")
