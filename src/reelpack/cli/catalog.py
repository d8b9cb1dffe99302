"""Catalog commands: build-catalog, verify-store, serve, client, edge-summary.

``serve`` and ``client`` need the ``[serve]`` extra (fastapi, uvicorn, httpx), ``build-catalog`` needs it for
its HNSW index (usearch; ``--no-index`` skips it) and ``[scale]`` (dask, distributed) with ``--scheduler``;
``verify-store`` and ``edge-summary`` run on the core. The synthetic catalog of ``build-catalog --synthetic`` lives in
:mod:`reelpack.catalog.synthetic`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from reelpack.cli.shared import app, console, err_console, fail, load_npy, need, parse_codecs
from reelpack.errors import ReelpackError

__all__ = ["serve_cmd", "build_catalog_cmd", "verify_store_cmd", "client_cmd", "edge_summary_cmd"]

CATALOG_ITEM_COUNTS_HELP = (
    "Training interactions per item .npy int [n] (the order of EMBEDDINGS' rows; ids 0..N-1 with --synthetic): "
    "a codec that `reelpack tune` chose with popularity weights (--codecs autoN --tune FILE) is fitted with "
    "them, as (count + 1) ** beta. Needed only then."
)
_ITEM_COUNTS_WHAT = "--item-counts COUNTS.npy (int [n])"
_USERS_WHAT = "--users USERS.npy (float [n_users, d])"


@app.command("serve")
def serve_cmd(
    store: Annotated[Path, typer.Option("--store", help="Catalog store folder (written by build-catalog).")],
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable holding the admin API key (unset: admin off).")
    ] = "REELPACK_API_KEY",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    max_body_mb: Annotated[int, typer.Option(help="Largest accepted publish upload, MiB.")] = 512,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log every request (costs CPU under load).")
    ] = False,
) -> None:
    """Serve a catalog store over HTTP (FastAPI + uvicorn): manifests, resumable pack and delta downloads,
    refinement codes, user-vector updates and online HNSW retrieval. API docs at http://HOST:PORT/docs."""
    need("serve", ("fastapi", "uvicorn"), "reelpack serve")
    import uvicorn

    from reelpack.service.app import create_app

    try:
        if not 1 <= port <= 65535:
            raise typer.BadParameter(f"--port must be in 1..65535, got {port}")
        if not 1 <= workers <= 64:
            raise typer.BadParameter(f"--workers must be in 1..64, got {workers}")
        if not 1 <= max_body_mb <= 1 << 20:
            raise typer.BadParameter(f"--max-body-mb must be in 1..{1 << 20}, got {max_body_mb}")
        key = os.environ.get(api_key_env) or None
        service = create_app(store, api_key=key, max_body_bytes=max_body_mb << 20)
        catalogs = service.state.store.catalogs()
        err_console.print(f"serving {len(catalogs)} catalog(s) from {store} on http://{host}:{port} (docs: /docs)")
        if key is None:
            err_console.print(f"[yellow]${api_key_env} is not set: admin endpoints answer 403[/]")
        if workers == 1:
            uvicorn.run(service, host=host, port=port, log_level=log_level, access_log=access_log)
        else:  # each worker process builds its own app from the environment
            os.environ["REELPACK_SERVE_STORE"] = str(Path(store).resolve())
            os.environ["REELPACK_SERVE_API_KEY_ENV"] = api_key_env
            os.environ["REELPACK_SERVE_MAX_BODY_BYTES"] = str(max_body_mb << 20)
            uvicorn.run("reelpack.service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                        log_level=log_level, access_log=access_log)  # fmt: skip
    except ReelpackError as exc:
        fail(exc)


@app.command("build-catalog")
def build_catalog_cmd(
    embeddings: Annotated[
        Optional[Path],
        typer.Argument(help="Item embeddings: .npy floats n x d (ids from --ids, default 0..n-1), .npz with 'ids' "
                       "and 'vectors', or Parquet with an 'id' column and 'embedding' (list) or e0..e{d-1}. "
                       "Omit with --synthetic. With --scheduler: .npy only (memory-mapped by the workers)."),  # fmt: skip
    ] = None,
    store: Annotated[Path, typer.Option("--store", help="Store root folder (created if missing).")] = ...,
    catalog: Annotated[str, typer.Option("--catalog", help="Catalog name: 1-64 of a-z 0-9 _ -.")] = ...,
    ids: Annotated[Optional[Path], typer.Option("--ids", help="Item ids .npy ints (n) for a .npy EMBEDDINGS.")] = None,
    codecs: Annotated[
        Optional[str],
        typer.Option(help="Codec specs, layer 0 first, separated by spaces or ';'. Default: the previous version's, "
                     "else 'pq4 sq8'. Other codecs than the previous version's start a fresh chain (no delta)."),  # fmt: skip
    ] = None,
    users: Annotated[Optional[Path], typer.Option("--users", help="User vectors .npy floats m x d (optional).")] = None,
    user_ids: Annotated[Optional[Path], typer.Option("--user-ids", help="User ids .npy ints (m) (default 0..m-1).")] = None,
    items_per_block: Annotated[
        Optional[int], typer.Option(help="Items per block. Default: the previous version's, else 1024.")
    ] = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Skip the server-side HNSW index.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of codec fitting, HNSW insertion order and recall queries.")] = 0,
    synthetic: Annotated[
        Optional[int],
        typer.Option("--synthetic", help="Build from a SYNTHETIC clustered catalog of N unit vectors (ids 0..N-1, "
                     "drawn with --seed, chunk by chunk) plus min(N, 1000) synthetic users from the same clusters."),  # fmt: skip
    ] = None,
    dim: Annotated[int, typer.Option(help="Dimension of the --synthetic catalog.")] = 64,
    threads: Annotated[int, typer.Option(help="HNSW build threads (1 = deterministic, 0 = all cores).")] = 1,
    scheduler: Annotated[
        Optional[str],
        typer.Option("--scheduler", help="Encode in shards on Dask: 'local' (a LocalCluster of --workers processes) "
                     "or a scheduler address such as tcp://host:8786. Default: one process, no Dask. "
                     "Same files either way (see docs/SCALE.md)."),  # fmt: skip
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes of --scheduler local.")] = 2,
    shard_size: Annotated[
        int, typer.Option("--shard-size", help="Rows per shard (rounded up to a multiple of the items per block).")
    ] = 262_144,
    work_dir: Annotated[
        Optional[Path],
        typer.Option("--work-dir", help="Folder of the shard files, shared with the workers; a rerun resumes from "
                     "it (finished shards are kept after their CRC32C check). Default: STORE/CATALOG/.work."),  # fmt: skip
    ] = None,
    keep_work: Annotated[bool, typer.Option("--keep-work", help="Keep the shard files after publishing.")] = False,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to reach the --scheduler address.")
    ] = 10.0,
    edge: Annotated[
        bool, typer.Option("--edge", help="Also build the hierarchical index's edge catalog (edge.rpec: coarse "
                           "clusters + sq8 codes) the service cuts device summaries from (single-process only).")
    ] = False,
    edge_nlist: Annotated[
        Optional[int], typer.Option("--edge-nlist", help="Coarse clusters of --edge (default min(1024, n // 64)).")
    ] = None,
    tune: Annotated[
        Optional[Path], typer.Option("--tune", help="Tune result (OUT/tune-dD.json of `reelpack tune`) that "
                                     "--codecs autoN picks from: the codec chosen for N bytes per item.")
    ] = None,
    item_counts: Annotated[Optional[Path], typer.Option("--item-counts", help=CATALOG_ITEM_COUNTS_HELP)] = None,
) -> None:
    """Publish the next version of a catalog in a store: packs, deltas from the previous version, HNSW index.

    With --scheduler the rows are encoded in shards on Dask workers (resumable) and the packs are streamed
    from the shard files; such a build always starts a fresh chain (no delta), as does one whose codecs are
    fitted with popularity weights (--item-counts)."""
    if scheduler is not None:
        need("scale", ("distributed",), "reelpack build-catalog --scheduler")
    if not no_index:
        need("serve", ("usearch",), "the HNSW index of reelpack build-catalog (--no-index skips it)")
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from reelpack.catalog.build import NpySource, build_catalog_sharded
    from reelpack.catalog.store import (
        CatalogStore,
        build_catalog,
        load_embeddings,
        validate_catalog_name,
    )
    from reelpack.catalog.synthetic import synthetic_items, synthetic_users
    from reelpack.cli.pack import load_item_counts
    from reelpack.cli.tune import (
        auto_exposure_betas,
        auto_popularity_betas,
        fit_weights_for,
        load_tune_for,
        popularity_fit_weights,
        require_users_for_exposure,
        resolve_auto_codecs,
    )
    from reelpack.errors import InvalidInputError

    try:
        validate_catalog_name(catalog)
        given = parse_codecs(codecs) if codecs else ()
        tuned = load_tune_for(given, tune, "reelpack build-catalog") if codecs else None
        betas = auto_popularity_betas(given, tuned)  # per codec as given (autoN unresolved): 0 = uniform fit
        expo_betas = auto_exposure_betas(given, tuned)  # per codec: exposure exponent (0: none)
        if item_counts is None:
            popularity_fit_weights(betas, None, _ITEM_COUNTS_WHAT)  # the typed error before any loading
        if users is None and synthetic is None:  # the typed error before any loading
            require_users_for_exposure(expo_betas, None, tuned.exposure_k if tuned is not None else 1, _USERS_WHAT)
        if scheduler is None and (work_dir is not None or keep_work):
            raise InvalidInputError("--work-dir and --keep-work need --scheduler")
        if scheduler is not None and edge:
            raise InvalidInputError("--edge needs the single-process build: omit --scheduler")
        if edge_nlist is not None and not edge:
            raise InvalidInputError("--edge-nlist needs --edge")
        src = None
        if synthetic is not None:
            if embeddings is not None or ids is not None or users is not None or user_ids is not None:
                raise InvalidInputError("--synthetic builds its own items and users: omit EMBEDDINGS, --ids, --users")
            src = synthetic_items(synthetic, dim, seed=seed)
            U, uids = synthetic_users(synthetic, dim, seed=seed)
            item_ids = X = None
            if scheduler is None:
                item_ids, X = src.ids(), src.rows(0, synthetic)
            source = f"SYNTHETIC clustered catalog {synthetic}x{dim} (seed {seed}) + {len(uids)} users"
        else:
            if embeddings is None:
                raise InvalidInputError("give an EMBEDDINGS file or --synthetic N")
            if scheduler is None:
                item_ids, X = load_embeddings(embeddings, ids)
                shape = X.shape
            else:
                src = NpySource(embeddings, ids)
                shape = (src.n, src.d)
                X = None  # the shards read the rows
            U = uids = None
            if users is not None:
                uids, U = load_embeddings(users, user_ids)
            elif user_ids is not None:
                raise InvalidInputError("--user-ids needs --users")
            source = f"{embeddings.name} {shape[0]}x{shape[1]}"
        if tuned is not None:  # autoN: the codec `reelpack tune` chose at this dimension
            codecs = " ".join(resolve_auto_codecs(parse_codecs(codecs), tuned, dim if synthetic is not None else shape[1]))
        fit_weights = None  # per codec None or float64 [n] in the input row order (the builders sort them by id)
        fit_info = None  # what the weights are, recorded in the manifest entry and the packs' metadata
        if item_counts is not None or any(expo_betas):
            counts = (load_item_counts(item_counts, synthetic if synthetic is not None else shape[0])
                      if item_counts is not None else None)  # fmt: skip
            if any(expo_betas) and X is None:
                raise InvalidInputError("a codec fitted with exposure weights (@expo) needs the single-process build: "
                                        "omit --scheduler")  # fmt: skip
            weights, fit_info = fit_weights_for(parse_codecs(codecs), betas, expo_betas, counts, U, X,
                                                tuned.exposure_k if tuned is not None else 1, _ITEM_COUNTS_WHAT,
                                                _USERS_WHAT)  # fmt: skip
            if any(w is not None for w in weights):
                fit_weights = weights
            if item_counts is not None and not any(betas):
                console.print("[yellow]--item-counts is not used: no codec was chosen with popularity weights[/]")
        how = "" if scheduler is None else f" on Dask ({scheduler}{', %d workers' % workers if scheduler == 'local' else ''})"
        console.print(f"building catalog {catalog!r} in {store} from {source}{how}")
        with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:  # fmt: skip
            task = bar.add_task("prepare", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            if scheduler is None:
                entry = build_catalog(
                    CatalogStore(store), catalog, item_ids, X, codecs=codecs, users=U, user_ids=uids,
                    items_per_block=items_per_block, seed=seed, index=not no_index, progress=progress, threads=threads,
                    edge=edge, edge_nlist=edge_nlist, fit_weights=fit_weights, fit_info=fit_info,
                )  # fmt: skip
            else:
                stats: dict = {}
                entry = build_catalog_sharded(
                    CatalogStore(store), catalog, src, codecs=codecs, users=U, user_ids=uids,
                    items_per_block=items_per_block, seed=seed, index=not no_index, scheduler=scheduler,
                    n_workers=workers, shard_size=shard_size, work_dir=work_dir, keep_work=keep_work,
                    connect_timeout=connect_timeout, progress=progress, threads=threads, stats=stats,
                    fit_weights=fit_weights, fit_info=fit_info,
                )  # fmt: skip
        if scheduler is not None:
            console.print(f"shards: {stats['shards']} ({stats['encoded']} encoded, {stats['rebuilt']} rebuilt, "
                          f"{stats['verified']} kept); fit {stats['fit_s']:.1f} s"
                          f"{' (cached)' if stats['codecs_cached'] else ''}, encode {stats['encode_s']:.1f} s, "
                          f"assemble {stats['assemble_s']:.1f} s")  # fmt: skip
    except ReelpackError as exc:
        fail(exc)
    idx = entry["index"]
    recall = "no index" if idx is None else f"HNSW recall@{idx['recall_k']} {idx['recall_at_50']:.4f} ({idx['recall_queries']})"
    delta = "first of its chain" if entry["delta_from"] is None else f"delta from version {entry['delta_from']}"
    console.print(f"published {catalog} version {entry['version']}: {entry['n_items']} items, d={entry['dim']}, "
                  f"codecs {' '.join(entry['codecs'])}, {delta}; {recall}")  # fmt: skip
    typer.echo(json.dumps(entry, indent=1))


@app.command("verify-store")
def verify_store_cmd(
    store: Annotated[Path, typer.Argument(help="Catalog store folder (written by build-catalog or the service).")],
    catalog: Annotated[Optional[str], typer.Option("--catalog", help="Check this catalog only.")] = None,
) -> None:
    """Check every file of every version in a catalog store against its manifest (size and SHA-256); one row per
    file, paths relative to STORE. Exit 0: all verify; 1: a file is damaged or missing (or a manifest unreadable);
    2: STORE or --catalog cannot be read."""
    from rich.table import Table

    from reelpack.catalog.store import CatalogStore
    from reelpack.errors import StoreError

    try:
        if not store.is_dir():
            raise StoreError(f"store {store} is not a folder")
        report = CatalogStore(store).verify(catalog)
    except ReelpackError as exc:
        fail(exc)
    table = Table(title=f"store {store}")
    for col, justify in (("catalog", "left"), ("version", "right"), ("file", "left"), ("bytes", "right"),
                         ("status", "left")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in report.checks:
        shown = c.detail if c.status != "ok" else "ok"
        table.add_row(c.catalog, "" if c.version is None else str(c.version), c.path,
                      "" if c.found_bytes is None else str(c.found_bytes),
                      shown if c.status == "ok" else f"[red]{escape(shown)}[/]")  # fmt: skip
    console.print(table)
    bad = report.problems
    catalogs = len({c.catalog for c in report.checks})
    if bad:
        console.print(f"[red]{len(bad)} of {len(report.checks)} file(s) damaged or missing in {catalogs} catalog(s):[/] "
                      + ", ".join(c.path for c in bad), soft_wrap=True)  # fmt: skip
        raise typer.Exit(code=1)
    console.print(f"all {len(report.checks)} file(s) of {catalogs} catalog(s) verify")


@app.command("client")
def client_cmd(
    server: Annotated[str, typer.Option(help="Base URL of the pack service, e.g. http://127.0.0.1:8000.")],
    catalog: Annotated[str, typer.Option(help="Catalog name.")],
    cache: Annotated[Path, typer.Option(help="SQLite cache file of this simulated phone (created if missing).")],
    profile: Annotated[
        Optional[str], typer.Option(help="Simulated network: 1mbit, 3g or 4g (virtual clock). Default: none.")
    ] = None,
    real_clock: Annotated[bool, typer.Option("--real-clock", help="Sleep for the simulated network time.")] = False,
    user_vector: Annotated[Optional[Path], typer.Option(help="User vector (.npy, float32, d values).")] = None,
    random_user: Annotated[bool, typer.Option("--random-user", help="Use a random unit user vector.")] = False,
    user_id: Annotated[Optional[str], typer.Option(help="Fetch this user's vector from the service.")] = None,
    k: Annotated[int, typer.Option("-k", help="Items to recommend.")] = 50,
    refine: Annotated[int, typer.Option(help="Layer-0 candidates rescored with layer-1 codes (0: layer 0 only).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of --random-user and of the simulated losses.")] = 0,
) -> None:
    """Simulate a phone: sync the catalog's layer 0, recommend, print the time to first recommendation and bytes."""
    need("serve", ("httpx",), "reelpack client")
    import httpx
    import numpy as np

    from reelpack.errors import InvalidInputError

    try:
        from reelpack.device.client import PhoneClient
        from reelpack.device.shaper import ShapedTransport, get_profile

        if sum((user_vector is not None, random_user, user_id is not None)) != 1:
            raise InvalidInputError("give exactly one of --user-vector V.npy, --random-user, --user-id ID")
        transport: httpx.BaseTransport = httpx.HTTPTransport()
        if profile is not None:
            transport = ShapedTransport(transport, get_profile(profile), clock="real" if real_clock else "virtual",
                                        seed=seed)  # fmt: skip
        with PhoneClient(server, catalog, cache, transport=transport) as phone:
            report = phone.sync()
            t_user = time.perf_counter()
            sim_user = getattr(transport, "simulated_seconds", 0.0)
            if user_vector is not None:
                q = np.asarray(load_npy(user_vector, "user vector"), dtype=np.float32).reshape(-1)
            elif user_id is not None:
                q = phone.user_vector(user_id)
            else:
                q = np.random.default_rng(seed).standard_normal(phone.dim).astype(np.float32)
                q /= np.linalg.norm(q)
            user_wall = time.perf_counter() - t_user
            user_sim = getattr(transport, "simulated_seconds", 0.0) - sim_user
            rec = phone.recommend(q, k=k, refine=refine)
        sim = report.simulated_seconds + user_sim + rec.simulated_seconds
        wall = report.wall_seconds + user_wall + rec.wall_seconds
        console.print(
            f"catalog {catalog} v{rec.version}: sync {'by delta' if report.used_delta else 'full' if report.bytes_downloaded else 'up to date'}, "
            f"{report.bytes_downloaded} file bytes + {report.metadata_bytes} metadata bytes, {report.retries} retries"
        )
        console.print(
            f"time to first recommendation: {sim + wall:.3f} s ({sim:.3f} s simulated network"
            f"{' (' + profile + ')' if profile else ''} + {wall:.3f} s wall); refinement {rec.bytes_downloaded} bytes, "
            f"{'refined' if rec.refined else 'NOT refined: ' + str(rec.note)}"
        )
        console.print(json.dumps({"ids": rec.ids.tolist(), "scores": [round(float(s), 5) for s in rec.scores]}))
    except ReelpackError as exc:
        fail(exc)


@app.command("edge-summary")
def edge_summary_cmd(
    vectors: Annotated[Path, typer.Option("--vectors", help="Catalog item vectors, float32 [n, d] .npy.")],
    user_vector: Annotated[Path, typer.Option("--user-vector", help="The device's user vector, float [d] .npy.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Device summary file to write (.rpes).")],
    ids: Annotated[Optional[Path], typer.Option("--ids", help="Item ids int64 [n] .npy (default 0..n-1).")] = None,
    budget_bytes: Annotated[
        Optional[int], typer.Option("--budget-bytes", help="Device byte budget (default: --budget-frac).")
    ] = None,
    budget_frac: Annotated[float, typer.Option(help="Budget as a share of the float32 catalog bytes.")] = 0.05,
    nlist: Annotated[int, typer.Option(help="Coarse clusters (faiss k-means).")] = 1024,
    codec: Annotated[str, typer.Option(help="Codec of the device item codes.")] = "sq8",
    lam: Annotated[float, typer.Option(help="Radius multiplier of the local-vs-cloud bound (1 = guaranteed).")] = 0.35,
    catalog_version: Annotated[int, typer.Option(help="Catalog version the summary belongs to.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of k-means and codec fitting.")] = 0,
) -> None:
    """Cut the hierarchical index's device summary (all coarse centroids + the codes of the clusters nearest the
    user) within a byte budget, and write it (reelpack.catalog.edge; the cloud keeps the HNSW index)."""
    import numpy as np

    from reelpack.catalog.edge import EdgeCatalog
    from reelpack.util.atomic import atomic_write_bytes

    try:
        X = np.asarray(load_npy(vectors, "vectors"), dtype=np.float32)
        item_ids = np.asarray(load_npy(ids, "ids")) if ids is not None else np.arange(X.shape[0], dtype=np.int64)
        u = np.asarray(load_npy(user_vector, "user vector"), dtype=np.float32).reshape(-1)
        budget = int(budget_bytes) if budget_bytes is not None else int(budget_frac * X.nbytes)
        cat = EdgeCatalog.build(X, item_ids, nlist=nlist, codec=codec, catalog_version=catalog_version, seed=seed)
        summary = cat.summary_for(u, budget, lam=lam)
        data = summary.to_bytes()
        path = atomic_write_bytes(out, data)
        console.print(
            f"wrote {path}: {len(data)} bytes ({100 * len(data) / X.nbytes:.2f} % of the float32 catalog, budget "
            f"{budget}), {summary.clusters.size}/{summary.nlist} clusters, {summary.n_items}/{X.shape[0]} items, "
            f"codec {codec}, lam {lam}, fingerprint {summary.fingerprint.hex()}"
        )
    except ReelpackError as exc:
        fail(exc)
