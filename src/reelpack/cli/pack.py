"""Pack commands: codecs, pack, inspect, verify, delta make / delta apply, export-onnx.

All of them but ``pack --data`` (two-tower training: ``[train]``) and ``export-onnx`` (``[onnx]``) run with only
the core installed: every heavy import is inside the command that needs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from reelpack.cli.shared import (
    DataOpt,
    app,
    check_out_path,
    console,
    fail,
    jsonable,
    load_npy,
    load_split,
    need,
    open_pack,
    parse_codecs,
    require_file,
    two_tower_embeddings,
    write_error,
)
from reelpack.errors import ReelpackError

__all__ = ["list_codecs", "pack", "inspect_pack", "verify", "delta_app", "delta_make", "delta_apply", "export_onnx_cmd",
           "MAX_PACK_DIM"]  # fmt: skip

#: Largest embedding dimension ``pack`` and ``delta make`` accept. Codecs such as simhash, rabitq and OPQ fit a
#: random d x d rotation (a float64 QR: 8 d^2 bytes, O(d^3) work): 512 MiB at d = 8192, 74.5 GiB at d = 100,000.
MAX_PACK_DIM = 8192


@app.command("codecs")
def list_codecs() -> None:
    """List the registered codec families with an example factory string."""
    from rich.table import Table

    from reelpack.bench.baselines import faiss_twin_spec
    from reelpack.codecs import available_codecs

    table = Table(title="reelpack codecs")
    table.add_column("family")
    table.add_column("example spec")
    table.add_column("faiss twin")
    for family, example in available_codecs().items():
        table.add_row(family, example, faiss_twin_spec(example) or "-")
    console.print(table)


# ================================================================================================
# Packs: pack, inspect, verify
# ================================================================================================
def _pack_source(
    embeddings: Path | None,
    ids: Path | None,
    data: str | None,
    dim: int | None,
    epochs: int | None,
    cache_dir: str | None,
    retrain: bool,
    seed: int,
) -> tuple[Any, Any, str, Any, Any]:
    """(vectors float32 [n, d], item ids int64 [n], description, train interactions per item int64 [n] or None,
    user vectors float32 [n_users, d] or None) from a .npy (no counts, no users) or from the embedding cache (the
    split's counts, the user tower)."""
    import numpy as np

    from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError
    from reelpack.util.ids import check_item_ids
    from reelpack.util.validate import as_float_matrix

    if embeddings is not None:
        if data is not None or dim is not None:
            raise InvalidInputError("give either an embeddings .npy or --data/--dim, not both")
        raw_x = load_npy(embeddings, "embeddings")
        _check_dim(raw_x.shape[-1] if raw_x.ndim else 0, "embeddings have")
        X = as_float_matrix(raw_x, "embeddings")
        source = f"{embeddings.name} {X.shape[0]}x{X.shape[1]}"
        if ids is None:
            return X, np.arange(X.shape[0], dtype=np.int64), source, None, None
        raw = load_npy(ids, "ids")
        if raw.dtype.kind not in "iu":
            raise DTypeError(f"ids must be an integer array, got dtype {raw.dtype}")
        if raw.shape != (X.shape[0],):
            raise DimensionMismatchError(f"ids must have shape ({X.shape[0]},) to match the embeddings, got {raw.shape}")
        # negative or >= 2**63 ids are named as given (a uint64 2**63 is not shown as its int64 wrap-around)
        return X, check_item_ids(raw, what="ids", n=X.shape[0], unique=False), source, None, None
    if ids is not None:
        raise InvalidInputError("--ids needs an embeddings .npy (with --data the split's item ids are used)")
    if dim is not None:
        _check_dim(dim, "--dim is")
    split = load_split(data, seed)
    emb = two_tower_embeddings(split, 64 if dim is None else dim, epochs, cache_dir, retrain, seed)
    return (emb.item_emb, np.asarray(split.item_ids, np.int64), f"two-tower item embeddings d={emb.item_emb.shape[1]}",
            split.item_counts, emb.user_emb)


def load_item_counts(path: Path, n: int) -> Any:
    """Training interactions per item, int64 [n], from a .npy of non-negative integers (``--item-counts``).

    Raises:
        DTypeError: not an integer array. DimensionMismatchError: not ``n`` values. InvalidInputError: negative.
    """
    import numpy as np

    from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError

    raw = load_npy(path, "item counts")
    if raw.dtype.kind not in "iu":
        raise DTypeError(f"--item-counts must be an integer array (interactions per item), got dtype {raw.dtype}")
    if raw.shape != (n,):
        raise DimensionMismatchError(f"--item-counts must have shape ({n},), one count per item, got {raw.shape}")
    if raw.dtype.kind == "i" and raw.size and int(raw.min()) < 0:
        raise InvalidInputError("--item-counts must be >= 0 (interactions per item)")
    if raw.dtype.kind == "u" and raw.size and int(raw.max()) > 2**62:
        raise InvalidInputError("--item-counts values must be below 2**62")
    return raw.astype(np.int64)


USERS_HELP = ("User (query) vectors .npy float [n_users, d]: a codec that `reelpack tune` chose with exposure "
              "weights (@expoB) is fitted with them. With --data the user tower is used.")
ITEM_COUNTS_HELP = ("Training interactions per item .npy int [n] (the embeddings' order): a codec that `reelpack "
                    "tune` chose with popularity weights is fitted with them. With --data the split's counts are used.")


def load_user_vectors(path: Path, dim: int) -> Any:
    """User (query) vectors float32 [n_users, dim] from a .npy (``--users``).

    Raises:
        DataNotFoundError, InvalidInputError: the file is missing or not a .npy; DTypeError,
        DimensionMismatchError, EmptyInputError, NonFiniteError: not a finite float matrix of width ``dim``.
    """
    from reelpack.util.validate import as_float_matrix

    return as_float_matrix(load_npy(path, "users"), "users", dim=dim)


def _check_dim(dim: int, what: str) -> None:
    """InvalidInputError for a dimension beyond :data:`MAX_PACK_DIM` (before any codec allocates d x d)."""
    from reelpack.errors import InvalidInputError

    if dim > MAX_PACK_DIM:
        raise InvalidInputError(
            f"{what} dimension {dim}; reelpack packs at most {MAX_PACK_DIM} dimensions (codecs such as simhash, "
            f"rabitq and opq fit a d x d rotation: {8 * dim * dim / 2**30:.1f} GiB at d={dim})"
        )


@app.command()
def pack(
    embeddings: Annotated[
        Optional[Path], typer.Argument(help="Item embeddings .npy float [n, d]. Omit to use --data/--dim.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Pack file to write (replaced atomically).")] = Path("items.rpak"),
    codecs: Annotated[
        str, typer.Option(help="Codec specs separated by spaces or ';': the first is layer 0, the others refinement layers.")
    ] = "simhash128 sq8",
    ids: Annotated[Optional[Path], typer.Option(help="Item ids .npy int [n] (default 0..n-1).")] = None,
    items_per_block: Annotated[int, typer.Option(help="Items per block (the unit of CRC checks and range fetches).")] = 1024,
    data: DataOpt = None,
    dim: Annotated[Optional[int], typer.Option(help="Embedding dimension when packing trained embeddings (default 64).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the training epochs.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache folder.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Ignore cached embeddings.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for codec fitting (and the split/training with --data).")] = 0,
    entropy: Annotated[
        str,
        typer.Option(
            help="Entropy coding per layer, one word per codec ('none', 'nibbles', 'bytes', 'bits'), or 'auto': "
            "'nibbles' for sq4 layers (21 % smaller on amazon-book), none elsewhere."
        ),
    ] = "none",
    tune: Annotated[
        Optional[Path], typer.Option("--tune", help="Tune result (OUT/tune-dD.json of `reelpack tune`) that "
                                     "--codecs autoN picks from: the codec chosen for N bytes per item.")
    ] = None,
    item_counts: Annotated[Optional[Path], typer.Option("--item-counts", help=ITEM_COUNTS_HELP)] = None,
    users: Annotated[Optional[Path], typer.Option("--users", help=USERS_HELP)] = None,
) -> None:
    """Fit codecs on item embeddings and write a pack: layer 0 coarse, later layers refinement."""
    from datetime import datetime, timezone

    from reelpack.codecs import make_codec
    from reelpack.format import write_pack
    from reelpack.format.policy import entropy_layouts

    try:
        specs = parse_codecs(codecs)
        from reelpack.cli.tune import (
            auto_exposure_betas,
            auto_popularity_betas,
            fit_weights_for,
            load_tune_for,
            resolve_auto_codecs,
        )

        tuned = load_tune_for(specs, tune, "reelpack pack")  # autoN: the codec `reelpack tune` chose
        betas = auto_popularity_betas(specs, tuned)  # popularity exponent of each layer's fit (0: uniform)
        expo_betas = auto_exposure_betas(specs, tuned)  # exposure exponent of each layer's fit (0: none)
        auto = None
        if tuned is not None:  # .npy embeddings: their dimension is checked against the tune result once loaded
            want_dim = tuned.dim if embeddings is not None else (64 if dim is None else dim)
            auto, specs = specs, resolve_auto_codecs(specs, tuned, want_dim)
            auto = {a: s for a, s in zip(auto, specs) if a != s} | {"tune_data_hash": tuned.data.get("data_hash")}
        built = [make_codec(s) for s in specs]  # reject bad specs before loading anything
        layouts = entropy_layouts(entropy, [c.spec for c in built])
        if isinstance(items_per_block, bool) or not 1 <= items_per_block <= 1 << 20:
            raise typer.BadParameter(f"--items-per-block must be in 1..{1 << 20}, got {items_per_block}")
        check_out_path(out)  # before the fitting, which may take minutes
        X, item_ids, source, counts, U = _pack_source(embeddings, ids, data, dim, epochs, cache_dir, retrain, seed)
        if item_counts is not None:
            counts = load_item_counts(item_counts, X.shape[0])
        if users is not None:
            U = load_user_vectors(users, X.shape[1])
        if tuned is not None and X.shape[1] != tuned.dim:
            from reelpack.errors import DimensionMismatchError

            raise DimensionMismatchError(f"the tune result {tune} is for d={tuned.dim}, the embeddings have "
                                         f"d={X.shape[1]}; run `reelpack tune --dim {X.shape[1]}`")  # fmt: skip
        weights, fit_info = fit_weights_for(
            [c.spec for c in built], betas, expo_betas, counts, U, X, tuned.exposure_k if tuned is not None else 1,
            "--item-counts COUNTS.npy (int [n]) or --data", "--users USERS.npy (float [n_users, d]) or --data",
        )  # fmt: skip
        layers = []
        for codec, w in zip(built, weights):
            codec.fit(X, seed=seed, weights=w)
            layers.append((codec, codec.encode(X)))
        meta = {"created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "source": source,
                "codecs": [c.spec for c in built], "seed": seed}  # fmt: skip
        if fit_info is not None:  # {"popularity_beta": {spec: beta}} and / or {"exposure_beta": ..., "exposure_k": K}
            meta.update(fit_info)
        if auto is not None:
            meta["auto_codecs"] = auto
        try:
            path = write_pack(
                out, item_ids, layers, vectors=X, metadata=meta, items_per_block=items_per_block, entropy=layouts
            )
        except OSError as exc:  # the writer removes its temporary file: nothing is left behind
            raise write_error(exc, out) from None
    except ReelpackError as exc:
        fail(exc)
    size = path.stat().st_size
    layer_text = ", ".join(f"layer {i}: {c.spec} ({c.bytes_per_vector} B/item)" for i, (c, _) in enumerate(layers))
    console.print(f"wrote {path}: {len(item_ids)} items, {size} bytes ({size / len(item_ids):.2f} B/item); {layer_text}")


def _block_bound_summary(reader: Any, layer: int) -> dict:
    import numpy as np

    mx = np.array([b.max_sq_error for b in reader.blocks(layer)], np.float64)
    known = mx[np.isfinite(mx)]
    if not known.size:
        return {"blocks_with_bounds": 0}
    return {"blocks_with_bounds": int(known.size), "min": float(known.min()),
            "median": float(np.median(known)), "max": float(known.max())}  # fmt: skip


@app.command("inspect")
def inspect_pack(
    path: Annotated[Path, typer.Argument(help="Pack file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
) -> None:
    """Describe a pack: header, versions, sections, layers (codec, bytes/item, blocks, error bounds)."""
    from rich.table import Table

    from reelpack.format import inspect as inspect_file

    try:
        with open_pack(path) as reader:
            info = inspect_file(path)
            for layer in info["layers"]:
                layer["block_max_sq_error"] = _block_bound_summary(reader, layer["layer"])
    except ReelpackError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(jsonable(info), indent=2, allow_nan=False))
        return
    h = info["header"]
    console.print(f"[bold]{path}[/]: reelpack pack v{h['major']}.{h['minor']}, {h['n_items']} items, "
                  f"{h['file_length']} bytes{' [red](TRUNCATED: ' + str(info['file_bytes']) + ' bytes present)[/]' if info['truncated'] else ''}")  # fmt: skip
    console.print(f"header flags {h['flags']:#x}, {h['section_count']} sections, prefix (directory) {h['prefix_length']} bytes; "
                  f"payload {info['payload_bytes']} bytes, overhead {info['overhead_bytes']} bytes "
                  f"({100 * info['overhead_fraction']:.2f} % of payload)")  # fmt: skip
    st = Table(title="sections")
    for col in ("#", "type", "required", "offset", "length", "crc32c", "status"):
        st.add_column(col, justify="right" if col in ("#", "offset", "length") else "left")
    for s in info["sections"]:
        crc = "(per block)" if s["type_name"] == "LAYER_CODES" else f"{s['crc32c']:08x}"
        status = s["problem"] or ("skipped (unknown)" if s["skipped"] else "ok")
        st.add_row(str(s["index"]), f"{s['type_name']} ({s['type']})", "yes" if s["required"] else "no",
                   str(s["offset"]), str(s["length"]), crc, status)  # fmt: skip
    console.print(st)
    lt = Table(title="layers")
    for col in ("layer", "codec", "B/item", "items/block", "blocks", "codes bytes", "corrections",
                "mean ‖x−x̂‖²", "block max ‖x−x̂‖² (min / median / max)"):  # fmt: skip
        lt.add_column(col)
    for layer in info["layers"]:
        b = layer["block_max_sq_error"]
        bounds = (f"{b['min']:.4g} / {b['median']:.4g} / {b['max']:.4g}" if b["blocks_with_bounds"] else "unknown")
        mean = layer["mean_sq_error"]
        lt.add_row(str(layer["layer"]), str(layer["codec"] or "[red]unreadable[/]"), f"{layer['bytes_per_item']:.2f}",
                   str(layer["items_per_block"]), str(layer["n_blocks"]), str(layer["codes_bytes"]),
                   str(layer["corrections_per_vector"]), "unknown" if math.isnan(mean) else f"{mean:.4g}",
                   bounds + (" [yellow](entropy coded)[/]" if layer["entropy_coded"] else ""))  # fmt: skip
    console.print(lt)
    if info["metadata"] is not None:
        console.print("metadata: " + json.dumps(info["metadata"]))


_MAX_BAD_BLOCKS_SHOWN = 50


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Pack file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check every CRC32C of a pack. Exit 0 when intact, 1 when blocks or sections are damaged, 2 when unreadable."""
    try:
        with open_pack(path) as reader:
            report = reader.verify()
            n_items, layers = reader.n_items, reader.layers
    except ReelpackError as exc:
        fail(exc)
    lost = {layer: int(ids.size) for layer, ids in report.missing_item_ids.items()}
    n_blocks = sum(info.n_blocks for info in layers)
    if as_json:
        typer.echo(json.dumps({
            "ok": report.ok, "truncated": report.truncated, "n_items": n_items, "n_blocks": n_blocks,
            "bad_blocks": [{"layer": la, "block": b, "reason": r} for la, b, r in report.bad_blocks],
            "lost_items": {str(k): v for k, v in lost.items()}, "section_problems": report.section_problems,
        }, indent=2))  # fmt: skip
    elif report.ok:
        console.print(f"[green]OK[/] {path}: {n_items} items, {len(layers)} layers, {n_blocks} blocks; every CRC32C matches")
    else:
        console.print(f"[bold red]DAMAGED[/] {path}: {len(report.bad_blocks)} of {n_blocks} blocks unusable"
                      + (" (file is truncated)" if report.truncated else ""))  # fmt: skip
        for la, b, reason in report.bad_blocks[:_MAX_BAD_BLOCKS_SHOWN]:
            console.print(f"  layer {la} block {b}: {reason}")
        if len(report.bad_blocks) > _MAX_BAD_BLOCKS_SHOWN:
            console.print(f"  ... and {len(report.bad_blocks) - _MAX_BAD_BLOCKS_SHOWN} more bad blocks (--json lists all)")
        for problem in report.section_problems:
            console.print(f"  {problem}")
        for la, count in lost.items():
            if count:
                console.print(f"  layer {la}: {count} of {n_items} item ids lost")
    if not report.ok:
        raise typer.Exit(code=1)


# ================================================================================================
# Deltas: delta make, delta apply
# ================================================================================================
delta_app = typer.Typer(
    help="Catalog updates as small packs: 'delta make BASE NEW.npy --ids IDS.npy --out D' writes a delta from "
    "pack BASE to the new catalog; 'delta apply BASE D --out NEW' rebuilds the new pack, byte-identical to a "
    "fresh build (docs/FORMAT.md, 'Delta packs').",
    no_args_is_help=True,
)
app.add_typer(delta_app, name="delta")


def _sha256(path: Path) -> str:
    from reelpack.format.delta import sha256_file

    return sha256_file(path)


@delta_app.command("make")
def delta_make(
    base: Annotated[Path, typer.Argument(help="Pack of the current catalog (version A).")],
    embeddings: Annotated[Path, typer.Argument(help="Embeddings .npy of the new catalog (version B): floats, n rows x d.")],
    ids: Annotated[Path, typer.Option("--ids", help="Item ids .npy of the new catalog: n unique integers, any order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Delta file to write (replaced atomically).")],
    threshold: Annotated[
        float,
        typer.Option(help="Re-fit a layer's codec when its error on the new catalog exceeds (1 + threshold) x its "
                     "reference error; otherwise reuse the base codec."),  # fmt: skip
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of re-fitted codecs.")] = 0,
    target: Annotated[
        Optional[Path], typer.Option(help="Also write the full pack of the new catalog here (what apply rebuilds).")
    ] = None,
) -> None:
    """Write a delta that turns pack BASE into the pack of the new catalog; print sizes and per-layer decisions."""
    from rich.table import Table

    from reelpack.format import make_delta

    try:
        require_file(base, "base pack")
        check_out_path(out)
        if target is not None:
            check_out_path(target, "--target")
        X, item_ids, _, _, _ = _pack_source(embeddings, ids, None, None, None, None, False, seed)
        if not (math.isfinite(threshold) and threshold >= 0):
            raise typer.BadParameter(f"--threshold must be a finite number >= 0, got {threshold}")
        try:
            rep = make_delta(base, item_ids, X, out, distortion_threshold=threshold, seed=seed, target_path=target)
        except OSError as exc:
            raise write_error(exc, out if target is None else f"{out} or {target}") from None
    except ReelpackError as exc:
        fail(exc)
    console.print(
        f"wrote {rep.path}: {rep.delta_bytes} bytes; a full pack of the new catalog is {rep.target_bytes} bytes "
        f"(delta/full {rep.size_ratio:.3f}); codec sections {rep.codec_bytes} bytes"
    )
    console.print(
        f"base {rep.n_base} items (sha256 {rep.base_sha256}) -> new {rep.n_target} items: "
        f"{rep.n_removed} removed, {rep.n_added} added, {rep.n_changed} changed codes; {rep.n_sent} items' codes sent"
    )
    table = Table(title=f"layers (re-fit when new/reference error > 1 + {rep.threshold:g})")
    for col in ("layer", "codec", "reference ‖x−x̂‖²", "new ‖x−x̂‖²", "ratio", "re-fit ‖x−x̂‖²", "decision"):
        table.add_column(col)
    for lay in rep.layers:
        if not lay.reused:
            decision = "[yellow]re-fitted[/]"
        elif lay.refit_mse is not None:
            decision = "reused (re-fit not better)"
        else:
            decision = "reused"
        table.add_row(str(lay.layer), lay.spec, f"{lay.reference_mse:.4g} ({lay.reference_source})", f"{lay.new_mse:.4g}",
                      f"{lay.ratio:.3f}", "-" if lay.refit_mse is None else f"{lay.refit_mse:.4g}", decision)  # fmt: skip
    console.print(table)
    if target is not None:
        console.print(f"wrote the full pack of the new catalog to {target} (sha256 {_sha256(target)})")


@delta_app.command("apply")
def delta_apply(
    base: Annotated[Path, typer.Argument(help="The base pack the delta was made for (checked by SHA-256).")],
    delta: Annotated[Path, typer.Argument(help="Delta file from 'reelpack delta make'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pack of the new catalog to write (replaced atomically).")],
) -> None:
    """Apply a delta to its base pack; exit 0 and print the SHA-256 of the result, exit 2 on a wrong base or corrupt delta."""
    from reelpack.errors import PackFormatError
    from reelpack.format import apply_delta

    try:
        require_file(base, "base pack")
        require_file(delta, "delta")
        check_out_path(out)
        try:
            path = apply_delta(base, delta, out)
        except OSError as exc:
            raise PackFormatError(f"cannot apply {delta} to {base}: {exc.strerror or exc}") from None
    except ReelpackError as exc:
        fail(exc)
    console.print(f"wrote {path}: {path.stat().st_size} bytes")
    typer.echo(f"sha256 {_sha256(path)}")


@app.command("export-onnx")
def export_onnx_cmd(
    path: Annotated[Path, typer.Argument(help="Pack file.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="ONNX model to write (default: PACK with suffix .onnx; replaced atomically)."),
    ] = None,
    layer: Annotated[
        int,
        typer.Option(help="Pack layer whose codec (and codes, with --embed-codes) to export. Default 0 (the coarse "
                     "layer every item has); each layer's codec scores full vectors, so any layer works."),  # fmt: skip
    ] = 0,
    k: Annotated[int, typer.Option("--k", "-k", help="Results per query (TopK size).")] = 50,
    embed_codes: Annotated[
        bool,
        typer.Option("--embed-codes", help="Bake the layer's codes and item ids into the model: its only input is the "
                     "query and 'ids' are item ids. Default: codes are an input and 'ids' are row indexes."),  # fmt: skip
    ] = False,
) -> None:
    """Write a layer's codec as an ONNX model: query (q x d floats) + codes (n x B bytes) -> top-K ids and scores."""
    need("onnx", ("onnx", "onnxruntime"), "reelpack export-onnx")
    from reelpack.search.onnx_export import export_onnx

    target = out if out is not None else path.with_suffix(".onnx")
    try:
        with open_pack(path) as reader:
            check_out_path(target)
            codec = reader.codec(layer)
            codes = reader.layer_codes(layer) if embed_codes else None  # a view of the file, read while open
            ids = reader.item_ids if embed_codes else None
            # K is checked against the pack's catalog even when codes are a model input
            data = export_onnx(codec, k, codes=codes, item_ids=ids, n_items=reader.n_items, path=target)
    except ReelpackError as exc:
        fail(exc)
    except OSError as exc:
        fail(write_error(exc, target))
    inputs = f"query float32 (q x {codec.dim})"
    inputs += "" if embed_codes else f" and codes uint8 (n x {codec.bytes_per_vector})"
    what = f"{len(codes)} embedded items, ids are item ids" if codes is not None else "ids are row indexes into codes"
    console.print(f"wrote {target}: {len(data)} bytes; layer {layer} codec {codec.spec} (d={codec.dim}, "
                  f"{codec.bytes_per_vector} B/item), K={k}; inputs {inputs}; {what}")  # fmt: skip
