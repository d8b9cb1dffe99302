"""reelpack: compress recommender embeddings into small packs that phones can score locally.

The public surface is small; everything else lives in the submodules
(:mod:`reelpack.codecs`, :mod:`reelpack.data`, :mod:`reelpack.eval`, :mod:`reelpack.format`,
:mod:`reelpack.score`, :mod:`reelpack.train`, :mod:`reelpack.serve`, :mod:`reelpack.rerank`,
:mod:`reelpack.video`). Training and benchmarking names load lazily, so ``import reelpack``
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reelpack import errors
from reelpack.codecs import Codec, available_codecs, codec_from_bytes, make_codec
from reelpack.data import load_interactions, synthetic_interactions, train_test_split
from reelpack.eval.metrics import ranking_metrics
from reelpack.score.topk import topk

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "errors",
    "Codec",
    "make_codec",
    "codec_from_bytes",
    "available_codecs",
    "load_interactions",
    "synthetic_interactions",
    "train_test_split",
    "ranking_metrics",
    "topk",
    "TwoTowerConfig",
    "train_two_tower",
    "load_or_train",
    "BenchConfig",
    "run_bench",
    "write_pack",
    "PackReader",
    "iter_blocks_stream",
    "progressive_topk",
    "make_scanner",
    "contest_scores",
    "write_html_report",
    "build_catalog_sharded",
    "Reranker",
    "load_reranker",
    "EdgeCatalog",
    "EdgeRetriever",
]

_LAZY = {
    "TwoTowerConfig": "reelpack.train",
    "train_two_tower": "reelpack.train",
    "load_or_train": "reelpack.train",
    "BenchConfig": "reelpack.eval.bench",
    "run_bench": "reelpack.eval.bench",
    "write_pack": "reelpack.format",
    "PackReader": "reelpack.format",
    "iter_blocks_stream": "reelpack.format",
    "progressive_topk": "reelpack.score.progressive",
    "make_scanner": "reelpack.score.scan",
    "contest_scores": "reelpack.eval.contest",
    "write_html_report": "reelpack.eval.html_report",
    "build_catalog_sharded": "reelpack.serve.scale",
    "Reranker": "reelpack.rerank",
    "load_reranker": "reelpack.rerank",
    "EdgeCatalog": "reelpack.serve.edge",
    "EdgeRetriever": "reelpack.serve.edge",
}

if TYPE_CHECKING:  # pragma: no cover
    from reelpack.eval.bench import BenchConfig, run_bench
    from reelpack.eval.contest import contest_scores
    from reelpack.eval.html_report import write_html_report
    from reelpack.format import PackReader, iter_blocks_stream, write_pack
    from reelpack.score.progressive import progressive_topk
    from reelpack.rerank import Reranker, load_reranker
    from reelpack.score.scan import make_scanner
    from reelpack.serve.edge import EdgeCatalog, EdgeRetriever
    from reelpack.serve.scale import build_catalog_sharded
    from reelpack.train import TwoTowerConfig, load_or_train, train_two_tower


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reelpack' has no attribute {name!r}")
