"""Benchmark commands: bench, demo, bench-speed, contest, report.

``bench`` and ``demo`` train embeddings (``[train]``); ``report`` draws figures (``[report]``). ``demo`` runs
quiet (:mod:`reelpack.cli.quiet`) and prints the compact table (:mod:`reelpack.cli.summary`); the full table
goes to its Markdown and JSON files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from reelpack.cli.shared import (
    DataOpt,
    app,
    console,
    describe_embeddings,
    err_console,
    fail,
    load_split,
    need,
    parse_codecs,
    two_tower_embeddings,
)
from reelpack.errors import ReelpackError
from reelpack.util.atomic import atomic_write_text

__all__ = ["DEMO_CODECS", "NEXT_COMMAND", "bench", "demo", "bench_speed", "contest", "report_cmd"]

DEMO_CODECS = ("fp16", "sq8", "sq4", "pq8", "pq4", "opq8,pq8", "simhash64", "simhash64-hamming", "countsketch16")
"""The demo's codecs at d=32: the same families as the bench default, at 2x-64x compression."""

NEXT_COMMAND = "reelpack bench --data ../shared/data/amazon-book/interactions.txt"
"""What the demo suggests next (the path is relative to the project root)."""


def _run_and_report(
    split: Any, emb: Any, config: Any, out: Path, stem: str, extra: dict, compact: bool = False, val_split: Any = None
) -> Any:
    """Run the bench with a progress bar, write OUT/STEM.json and .md (full table), print the full or compact table.

    ``val_split`` (a validation split of ``split``): every row also gets validation figures and every choice is
    taken on them (:func:`reelpack.bench.harness.run_bench`)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from reelpack.bench.harness import run_bench
    from reelpack.bench.report import results_table, write_results
    from reelpack.cli.summary import compact_table

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

        result = run_bench(
            emb.user_emb, emb.item_emb, split, config, progress=progress, provenance_extra=extra, val_split=val_split
        )
    json_path, md_path = write_results(result, out, stem)
    if compact:
        console.print(compact_table(result, full_table=md_path.name))
    else:
        console.print(results_table(result))
    console.print(f"wrote {json_path} and {md_path}")
    return result


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
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Rate-quality sweep at 8/16/32 bytes per item: reelpack's codecs (incl. compression-aware "
            "training) and faiss's PQ, OPQ, RQ, LSQ, SQ and RaBitQ in one run; JSON has 'extra.rate_quality'.",
        ),
    ] = False,
    baselines: Annotated[
        Optional[str], typer.Option(help="Extra faiss factory strings to measure, e.g. 'RQ16x8 LSQ16x8 RaBitQ'.")
    ] = None,
    qat: Annotated[
        Optional[str], typer.Option(help="'qat-...' specs to fine-tune by compression-aware training, e.g. 'qat-rq8+8'.")
    ] = None,
    qat_epochs: Annotated[int, typer.Option(help="Epochs of compression-aware training.")] = 3,
    device_model: Annotated[
        str,
        typer.Option(
            help="Phone preset for the latency/energy ESTIMATES ('est.' columns): midrange-2024 or flagship-2023; "
            "constants and sources in docs/ENERGY.md."
        ),
    ] = "midrange-2024",
    loss_rates: Annotated[
        str,
        typer.Option(
            help="i.i.d. block-loss rates of the robustness curves, comma-separated (0.1 is always measured: "
            "it gives each row's robust_rel_recall@K); '' turns robustness off."
        ),
    ] = "0,0.05,0.1,0.2",
    robust_users: Annotated[
        int, typer.Option(help="Users (a seeded sample of the evaluated ones) ranked under loss; 0 turns robustness off.")
    ] = 2000,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            help="Hold out this share of each user's train items for validation (0 < F <= 0.5; the test split is "
            "not touched): the two-tower trains on the rest, every row gets validation figures next to the test "
            "ones, and every choice (keeping compression-aware training, the best method per budget) is taken on "
            "validation. Default: no validation split."
        ),
    ] = None,
    val_seed: Annotated[
        Optional[int], typer.Option(help="Seed of the validation hold-out (default: --seed).")
    ] = None,
) -> None:
    """Train (or load) embeddings, then measure float32, every codec and its faiss twin in one run.

    Each row also gets its rank quality under packet loss (a real pack with lost blocks corrupted,
    found by CRC) and engineering checks; the JSON (results schema version 3) holds the contest score
    (docs/SCORING.md; print it with `reelpack contest RESULTS.json`). With --val-fraction the model is
    trained on the train split minus a validation hold-out, choices are taken on validation, and the
    test split is read once, for the report.
    """
    need("train", ("torch",), "reelpack bench")
    from reelpack.bench.harness import (
        DEFAULT_CODECS,
        SWEEP_BASELINES,
        SWEEP_CODECS,
        SWEEP_QAT,
        BenchConfig,
    )

    try:
        rates = tuple(float(x) for x in loss_rates.replace(" ", "").split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"--loss-rates must be comma-separated numbers, got {loss_rates!r}") from None

    try:
        default_codecs = SWEEP_CODECS if sweep else DEFAULT_CODECS
        config = BenchConfig(
            codecs=parse_codecs(codecs) if codecs else default_codecs,
            faiss_twins=not no_faiss and not sweep,
            max_users=max_users,
            seed=seed if codec_seed is None else codec_seed,
            threads=threads,
            baselines=parse_codecs(baselines) if baselines else (SWEEP_BASELINES if sweep else ()),
            qat=parse_codecs(qat) if qat else (SWEEP_QAT if sweep else ()),
            qat_epochs=qat_epochs,
            device_model=device_model,
            loss_rates=rates,
            robust_users=robust_users,
        )
        split = load_split(data, seed)
        val_split = None
        if val_fraction is not None:
            from reelpack.data import validation_split

            val_split = validation_split(split, val_fraction, seed if val_seed is None else val_seed)
            console.print(
                f"validation: {val_fraction:g} of each user's train items (seed {val_split.validation_seed}); "
                f"{val_split.eval_users().size} users with validation items; the two-tower trains on the rest"
            )
        emb = two_tower_embeddings(split if val_split is None else val_split, dim, epochs, cache_dir, retrain, seed)
        extra = {"embeddings": describe_embeddings(emb)}
        if val_split is not None:
            extra["embeddings"] += " (trained on the fit split: train minus validation; this recall@50 is on validation)"
        _run_and_report(split, emb, config, out, f"bench-d{dim}", extra, val_split=val_split)
    except ReelpackError as exc:
        fail(exc)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown results.")] = Path("results"),
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything.")] = 0,
) -> None:
    """A small bench on the embedded SYNTHETIC catalog (about a minute): train, compress, compare with faiss."""
    need("train", ("torch",), "reelpack demo")
    from reelpack.bench.harness import BenchConfig
    from reelpack.cli.quiet import quiet_third_party

    t0 = time.perf_counter()
    try:
        with quiet_third_party():
            split = _synthetic_split(seed)
            emb = two_tower_embeddings(split, 32, None, cache_dir, False, seed)
            config = BenchConfig(codecs=DEMO_CODECS, seed=seed, robust_users=500)  # robustness on, but small
            _run_and_report(split, emb, config, out, "demo", {"embeddings": describe_embeddings(emb)}, compact=True)
    except ReelpackError as exc:
        fail(exc)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s on SYNTHETIC data. Next, real data:")
    console.print(f"  {NEXT_COMMAND}", highlight=False)


def _synthetic_split(seed: int) -> Any:
    from reelpack.data import synthetic_interactions, train_test_split

    inter = synthetic_interactions(seed=seed)
    console.print(f"[bold yellow]SYNTHETIC catalog[/] (generated, not real data): {inter.n_users} users, "
                  f"{inter.n_interactions} interactions")  # fmt: skip
    return train_test_split(inter, seed=seed)


@app.command("bench-speed")
def bench_speed(
    sizes: Annotated[str, typer.Option(help="Catalog sizes, comma-separated.")] = "100000,1000000",
    dim: Annotated[int, typer.Option(help="Vector dimension (multiple of 32).")] = 64,
    queries: Annotated[int, typer.Option(help="Single queries timed per method and size.")] = 200,
    k: Annotated[int, typer.Option("--k", "-k", help="Top-K.")] = 50,
    methods: Annotated[
        Optional[str], typer.Option(help="Subset of: flat pq16 pq32x4-fastscan pq32x4-exact sq8 sq4 binary128 rabitq.")
    ] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Skip the memmapped-pack peak-memory probe.")] = False,
    train_rows: Annotated[int, typer.Option(help="Rows used to train every codec.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 0,
    device_model: Annotated[str, typer.Option(help="Phone preset for the 'est.' latency column.")] = "midrange-2024",
    out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown results.")] = Path("results"),
    native: Annotated[
        bool, typer.Option("--native", help="Also time the C runtime (libreelpack; `make -C runtime`, or REELPACK_RUNTIME_LIB).")
    ] = False,
) -> None:
    """Single-core speed of reelpack's fused kernels vs faiss on the same codes and queries (SYNTHETIC catalog).

    Every thread pool is pinned to one thread; each query is timed alone, reelpack and faiss alternating.
    Also measures decode throughput and the peak memory of scoring the largest catalog from a memmapped pack.
    """
    from reelpack.bench.speed import (
        SPEED_METHODS,
        SpeedConfig,
        run_speed_bench,
        speed_markdown,
    )

    try:
        try:
            size_list = tuple(int(x.replace("_", "")) for x in sizes.split(",") if x.strip())
        except ValueError:
            raise typer.BadParameter(f"--sizes must be integers separated by commas, got {sizes!r}") from None
        config = SpeedConfig(
            sizes=size_list,
            dim=dim,
            n_queries=queries,
            k=k,
            methods=parse_codecs(methods) if methods else SPEED_METHODS,
            train_rows=train_rows,
            memory_check=not no_memory,
            seed=seed,
            device_model=device_model,
            native=native,
        )
        if native:
            from reelpack.search.native import load_runtime

            load_runtime()  # NativeRuntimeError (how to build it) before minutes of training
        with err_console.status("speed bench") as status:
            result = run_speed_bench(config, log=lambda msg: status.update(f"speed bench: {msg}"))
        markdown = speed_markdown(result)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        json_path = atomic_write_text(out / f"speed-d{dim}-{stamp}.json", json.dumps(result, indent=1))
        md_path = atomic_write_text(out / f"speed-d{dim}-{stamp}.md", markdown + "\n")
        console.print(markdown)
        console.print(f"wrote {json_path} and {md_path}")
    except ReelpackError as exc:
        fail(exc)


@app.command("contest")
def contest(
    results: Annotated[Path, typer.Argument(help="A results JSON written by `reelpack bench` (results schema version 3).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON instead of a rich table.")] = False,
) -> None:
    """Print the contest score of every method of a bench run (formula: docs/SCORING.md)."""
    from reelpack.bench.contest import contest_scores, contest_table
    from reelpack.bench.harness import load_results
    from reelpack.bench.report import contest_rich_table

    try:
        result = load_results(results)
        if as_json:
            typer.echo(json.dumps(contest_table(contest_scores(result)), indent=2))
        else:
            console.print(contest_rich_table(result))
    except ReelpackError as exc:
        fail(exc)


@app.command("report")
def report_cmd(
    results: Annotated[Path, typer.Argument(help="Results JSON written by `reelpack bench`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (replaced atomically).")] = Path("report.html"),
) -> None:
    """Write one self-contained HTML report (no network): rate-quality curves, latency, loss robustness,
    contest score and provenance of a bench run."""
    need("report", ("matplotlib",), "reelpack report")
    from reelpack.bench.html_report import write_html_report

    try:
        path = write_html_report(results, out)
    except ReelpackError as exc:
        fail(exc)
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
