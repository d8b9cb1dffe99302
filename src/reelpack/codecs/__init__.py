"""Vector codecs behind one :class:`Codec` interface, built from factory strings.

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> X = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
>>> codec = make_codec("fp16").fit(X)
>>> codec.encode(X).shape
(1000, 64)
>>> sq = make_codec("sq8").fit(X, seed=0)
>>> codes = sq.encode(X)
>>> codes.shape, codes.dtype
((1000, 32), dtype('uint8'))
>>> sq.score(X[:2], codes).shape
(2, 1000)
>>> sorted(available_codecs())
['apq', 'countsketch', 'float32', 'fp16', 'opq', 'opq-apq', 'pq', 'qat', 'rabitq', 'rq', 'simhash', 'sq', 'usq', 'wsq']
"""

from reelpack.codecs.base import Codec
from reelpack.codecs.scanner import GenericScanner, Scanner
from reelpack.codecs.registry import available_codecs, codec_from_bytes, make_codec, register_codec

# Importing a family module registers its factory strings.
from reelpack.codecs import flat  # noqa: E402,F401  isort: skip
from reelpack.codecs import scalar  # noqa: E402,F401  isort: skip
from reelpack.codecs import pq  # noqa: E402,F401  isort: skip
from reelpack.codecs import simhash  # noqa: E402,F401  isort: skip
from reelpack.codecs import countsketch  # noqa: E402,F401  isort: skip
from reelpack.codecs import residual  # noqa: E402,F401  isort: skip
from reelpack.codecs import rabitq  # noqa: E402,F401  isort: skip
from reelpack.codecs import bitalloc  # noqa: E402,F401  isort: skip
from reelpack.codecs import anisotropic  # noqa: E402,F401  isort: skip
from reelpack.codecs import additive  # noqa: E402,F401  isort: skip

__all__ = ["Codec", "Scanner", "GenericScanner", "make_codec", "codec_from_bytes", "available_codecs", "register_codec"]
