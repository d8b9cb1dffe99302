"""reelpack: compress recommender embeddings into small, checksummed packs that phones rank locally.

The dozen names a user starts from::

    codec = reelpack.make_codec("opq16,pq16").fit(item_vectors)       # float32 [n, d]
    reelpack.write_pack("catalog.rpk", item_ids, [(codec, codec.encode(item_vectors))])
    with reelpack.PackReader("catalog.rpk") as pack:
        scanner = reelpack.make_scanner(pack.codec(0), pack.layer_codes(0))
        ids, scores = scanner.search(user_vector, 50)                # rows of the pack, best first

Everything else lives in its layer, bottom to top: :mod:`reelpack.kernels`, :mod:`reelpack.codecs`,
:mod:`reelpack.format`, :mod:`reelpack.search`, :mod:`reelpack.data`, :mod:`reelpack.metrics`,
:mod:`reelpack.models` (``[train]``), :mod:`reelpack.catalog`, :mod:`reelpack.service` and
:mod:`reelpack.device` (``[serve]``), :mod:`reelpack.bench`, :mod:`reelpack.cli`. ``import reelpack``
loads none of torch, fastapi, dask or matplotlib.
"""

from __future__ import annotations

from reelpack import errors
from reelpack.codecs import Codec, available_codecs, codec_from_bytes, make_codec
from reelpack.errors import ReelpackError
from reelpack.format import PackReader, inspect, write_pack
from reelpack.search import make_scanner, progressive_topk

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Codec",
    "make_codec",
    "codec_from_bytes",
    "available_codecs",
    "write_pack",
    "PackReader",
    "inspect",
    "make_scanner",
    "progressive_topk",
    "ReelpackError",
    "errors",
]
