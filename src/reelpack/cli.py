"""The ``reelpack`` command line: demo, bench, train, codecs."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reelpack.errors import ReelpackError

app = typer.Typer(
    name="reelpack",
    help="Compress recommender embeddings into small packs that phones can score locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Redirected output (a log file, CI) gets a width that fits the results table instead of rich's 80 columns.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 180
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True)

DEMO_CODECS = ("fp16", "sq8", "sq4", "pq8", "pq4", "opq8,pq8", "simhash64", "simhash64-hamming", "countsketch16")
"""The demo's codecs at d=32: the same families as the bench default, at 2x-64x compression."""

DataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Interactions file ('user item item ...' per line). Default: $REELPACK_DATA, "
        "else the embedded SYNTHETIC catalog.",
    ),
]


def _parse_codecs(text: str) -> tuple[str, ...]:
    """Codec specs separated by spaces or semicolons (commas belong to specs such as 'opq16,pq16')."""
    specs = tuple(s for s in re.split(r"[;\s]+", text.strip()) if s)
    if not specs:
        raise typer.BadParameter("give at least one codec spec")
    return specs


def _load_split(data: str | None, seed: int):
    from reelpack.data import load_interactions, resolve_data_path, synthetic_interactions, train_test_split

    path = resolve_data_path(data)
    inter = synthetic_interactions(seed=seed) if path is None else load_interactions(path)
    if inter.synthetic:
        console.print(f"[bold yellow]Using the {inter.label}[/]  (pass --data PATH or set REELPACK_DATA for real data)")
    else:
        console.print(f"data: {inter.source} ({inter.n_users} users, {inter.n_interactions} interactions)")
    return train_test_split(inter, seed=seed)


def _embeddings(split, dim: int, epochs: int | None, cache_dir: str | None, retrain: bool, seed: int):
    from reelpack.train import TwoTowerConfig, load_or_train

    config = TwoTowerConfig.for_synthetic(dim=dim, seed=seed) if split.synthetic else TwoTowerConfig(dim=dim, seed=seed)
    if epochs is not None:
        config = TwoTowerConfig.from_dict({**config.to_dict(), "epochs": epochs})
    emb, loaded = load_or_train(split, config, cache_dir=cache_dir, progress=True, retrain=retrain)
    how = "loaded from cache" if loaded else f"trained in {emb.train_seconds:.1f} s"
    m = emb.metrics
    console.print(
        f"two-tower d={dim}: {how}; float32 Recall@50 {m.get('recall@50', float('nan')):.4f}, "
        f"NDCG@10 {m.get('ndcg@10', float('nan')):.4f}, MRR {m.get('mrr', float('nan')):.4f}"
    )
    return emb


def _run_and_report(split, emb, config, out: Path, stem: str, extra: dict) -> None:
    from reelpack.eval.bench import run_bench
    from reelpack.eval.report import results_table, write_results

    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(method: str, done: int, total: int) -> None:
            if method not in tasks:
                tasks[method] = bar.add_task(method, total=total)
            bar.update(tasks[method], completed=done)

        result = run_bench(emb.user_emb, emb.item_emb, split, config, progress=progress, provenance_extra=extra)
    console.print(results_table(result))
    json_path, md_path = write_results(result, out, stem)
    console.print(f"wrote {json_path} and {md_path}")


def _fail(exc: ReelpackError) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


@app.command()
def bench(
    data: DataOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension of the two-tower model.")] = 64,
    codecs: Annotated[
        Optional[str], typer.Option(help="Codec specs separated by spaces or ';', e.g. 'sq8 pq16 opq16,pq16'.")
    ] = None,
    max_users: Annotated[Optional[int], typer.Option(help="Evaluate a seeded sample of this many users.")] = None,
    no_faiss: Annotated[bool, typer.Option("--no-faiss", help="Skip the faiss twins.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown results.")] = Path("results"),
    threads: Annotated[int, typer.Option(help="Threads for BLAS/faiss while ranking (1 = comparable timings).")] = 1,
    epochs: Annotated[Optional[int], typer.Option(help="Override the training epochs.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache (default $REELPACK_CACHE or ~/.cache/reelpack).")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Ignore cached embeddings.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the split, training, codecs and faiss.")] = 0,
    codec_seed: Annotated[
        Optional[int],
        typer.Option(
            help="Seed for codec fitting, faiss training and the --max-users sample only (default: --seed); "
            "vary it to measure the spread of randomised codecs on the same cached embeddings."
        ),
    ] = None,
) -> None:
    """Train (or load) embeddings, then measure float32, every codec and its faiss twin in one run."""
    from reelpack.eval.bench import DEFAULT_CODECS, BenchConfig

    try:
        config = BenchConfig(
            codecs=_parse_codecs(codecs) if codecs else DEFAULT_CODECS,
            faiss_twins=not no_faiss,
            max_users=max_users,
            seed=seed if codec_seed is None else codec_seed,
            threads=threads,
        )
        split = _load_split(data, seed)
        emb = _embeddings(split, dim, epochs, cache_dir, retrain, seed)
        extra = {"embeddings": _describe(emb)}
        _run_and_report(split, emb, config, out, f"bench-d{dim}", extra)
    except ReelpackError as exc:
        _fail(exc)


def _describe(emb) -> str:
    cfg = emb.config.to_dict()
    keys = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return f"two-tower ({keys}); float32 recall@50 {emb.metrics.get('recall@50', float('nan')):.4f}"


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown results.")] = Path("results"),
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything.")] = 0,
) -> None:
    """A small bench on the embedded SYNTHETIC catalog (about a minute): train, compress, compare with faiss."""
    from reelpack.eval.bench import BenchConfig

    t0 = time.perf_counter()
    try:
        split = _synthetic_split(seed)
        emb = _embeddings(split, 32, None, cache_dir, False, seed)
        config = BenchConfig(codecs=DEMO_CODECS, seed=seed)
        _run_and_report(split, emb, config, out, "demo", {"embeddings": _describe(emb)})
    except ReelpackError as exc:
        _fail(exc)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s (SYNTHETIC data; run 'reelpack bench --data PATH' for real data)")


def _synthetic_split(seed: int):
    from reelpack.data import synthetic_interactions, train_test_split

    inter = synthetic_interactions(seed=seed)
    console.print(f"[bold yellow]Using the {inter.label}[/] (the demo always runs on synthetic data)")
    return train_test_split(inter, seed=seed)


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
    try:
        split = _load_split(data, seed)
        _embeddings(split, dim, epochs, cache_dir, retrain, seed)
    except ReelpackError as exc:
        _fail(exc)


@app.command("codecs")
def list_codecs() -> None:
    """List the registered codec families with an example factory string."""
    from reelpack.codecs import available_codecs
    from reelpack.eval.baselines import faiss_twin_spec
    from rich.table import Table

    table = Table(title="reelpack codecs")
    table.add_column("family")
    table.add_column("example spec")
    table.add_column("faiss twin")
    for family, example in available_codecs().items():
        table.add_row(family, example, faiss_twin_spec(example) or "-")
    console.print(table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
