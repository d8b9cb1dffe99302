"""The ``reelpack`` command line, one module per command group on one typer app.

* :mod:`reelpack.cli.shared`: the app, consoles, shared options and helpers, error handling (exit 2).
* :mod:`reelpack.cli.pack`: codecs, pack, inspect, verify, delta make / delta apply, export-onnx.
* :mod:`reelpack.cli.bench`: bench, demo, bench-speed, contest, report.
* :mod:`reelpack.cli.models`: train, train-reranker, rerank-bench.
* :mod:`reelpack.cli.catalog`: build-catalog, serve, client, edge-summary.
* :mod:`reelpack.cli.tune`: tune (and the ``--codecs autoN --tune FILE`` of pack and build-catalog).

Importing this package loads typer, rich and reelpack's core only; each command imports what it needs, and a
command whose extra is missing exits 2 naming ``pip install 'reelpack[EXTRA]'``.
"""

from __future__ import annotations

# Each module registers its commands on the app; this order is the order of `reelpack --help`.
from reelpack.cli import bench, catalog, models, pack, tune  # noqa: F401, I001
from reelpack.cli.shared import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry
    """Run the command line (``reelpack`` and ``python -m reelpack.cli``)."""
    app()
