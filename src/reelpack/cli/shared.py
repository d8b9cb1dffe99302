"""The typer app every command registers on, its consoles, shared options and helpers, and error handling.

Imports here stay light (typer, rich, reelpack.errors): heavy modules are imported inside the commands, so
``reelpack pack`` / ``inspect`` / ``verify`` / ``delta`` run with only the core installed. A command whose
extra is missing calls :func:`need` first: it exits 2 with ``pip install 'reelpack[EXTRA]'``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from reelpack.errors import ReelpackError

__all__ = ["app", "console", "err_console", "DataOpt", "parse_codecs", "fail", "need", "load_npy", "open_pack",
           "jsonable", "load_split", "two_tower_embeddings", "describe_embeddings", "require_file", "check_out_path",
           "write_error"]  # fmt: skip

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

DataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Interactions file ('user item item ...' per line). Default: $REELPACK_DATA, "
        "else the embedded SYNTHETIC catalog.",
    ),
]


def parse_codecs(text: str) -> tuple[str, ...]:
    """Codec specs separated by spaces or semicolons (commas belong to specs such as 'opq16,pq16')."""
    specs = tuple(s for s in re.split(r"[;\s]+", text.strip()) if s)
    if not specs:
        raise typer.BadParameter("give at least one codec spec")
    return specs


def fail(exc: ReelpackError) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr (the message verbatim, no rich markup) and exit 2."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=2)


def need(extra: str, modules: tuple[str, ...], what: str) -> None:
    """Exit 2 naming ``pip install 'reelpack[EXTRA]'`` unless every module of ``modules`` imports.

    Args:
        extra: the reelpack extra that brings the modules (``"serve"``, ``"train"``, ...).
        modules: top-level modules to import, e.g. ``("fastapi", "uvicorn")``.
        what: the feature, for the message (``"reelpack serve"``).
    """
    from reelpack.util.extras import require

    try:
        for module in modules:
            require(module, extra, what)
    except ReelpackError as exc:  # MissingExtraError
        fail(exc)


def require_file(path: Path, what: str) -> None:
    """Raise :class:`~reelpack.errors.DataNotFoundError` unless ``path`` is a file."""
    from reelpack.errors import DataNotFoundError

    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}")


def check_out_path(path: Path, what: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work is done: a directory
    (:class:`~reelpack.errors.InvalidInputError`) or a path whose folder does not exist
    (:class:`~reelpack.errors.DataNotFoundError`)."""
    from reelpack.errors import DataNotFoundError, InvalidInputError

    if path.is_dir():
        raise InvalidInputError(f"{what} {path} is a directory; give the path of a file to write")
    if not path.parent.is_dir():
        raise DataNotFoundError(f"folder of {what} {path} not found: {path.parent} (create it first)")


def write_error(exc: OSError, path: Path | str) -> ReelpackError:
    """An OSError met while writing ``path`` (permissions, a full disk...) as a typed one-line error."""
    from reelpack.errors import InvalidInputError

    return InvalidInputError(f"cannot write {path}: {exc.strerror or exc}")


def load_npy(path: Path, what: str) -> Any:
    """The array in a ``.npy`` file (no pickles); DataNotFoundError / InvalidInputError naming ``what``."""
    import numpy as np

    from reelpack.errors import DataNotFoundError, InvalidInputError

    if not path.is_file():
        raise DataNotFoundError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"cannot read {what} {path} as a .npy array: {exc}") from None


def open_pack(path: Path) -> Any:
    """A :class:`~reelpack.format.PackReader` of ``path``; DataNotFoundError / PackFormatError otherwise."""
    from reelpack.errors import DataNotFoundError, PackFormatError
    from reelpack.format import PackReader

    if not path.exists():
        raise DataNotFoundError(f"pack not found: {path}")
    try:
        return PackReader(path)
    except OSError as exc:
        raise PackFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    import numpy as np

    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def load_split(data: str | None, seed: int) -> Any:
    """The train/test split of ``--data`` (or $REELPACK_DATA, else the SYNTHETIC catalog), announced on stdout."""
    from reelpack.data import (
        load_interactions,
        resolve_data_path,
        synthetic_interactions,
        train_test_split,
    )

    path = resolve_data_path(data)
    inter = synthetic_interactions(seed=seed) if path is None else load_interactions(path)
    if inter.synthetic:
        console.print(f"[bold yellow]Using the {escape(inter.label)}[/]  (pass --data PATH or set REELPACK_DATA for real data)")
    else:
        console.print(f"data: {escape(str(inter.source))} ({inter.n_users} users, {inter.n_interactions} interactions)")
    return train_test_split(inter, seed=seed)


def two_tower_embeddings(split: Any, dim: int, epochs: int | None, cache_dir: str | None, retrain: bool, seed: int) -> Any:
    """Two-tower embeddings of ``split`` (cached or trained; needs the ``[train]`` extra), summary printed."""
    from reelpack.util.extras import require

    require("torch", "train", "training two-tower embeddings")
    from reelpack.models import TwoTowerConfig, load_or_train

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


def describe_embeddings(emb: Any) -> str:
    """One line naming the two-tower configuration and its float32 Recall@50 (the results' provenance)."""
    cfg = emb.config.to_dict()
    keys = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return f"two-tower ({keys}); float32 recall@50 {emb.metrics.get('recall@50', float('nan')):.4f}"
