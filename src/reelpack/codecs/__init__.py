"""Vector codecs behind one :class:`Codec` interface, built from factory strings.

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> X = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
>>> codec = make_codec("fp16").fit(X)
>>> codec.encode(X).shape
(1000, 64)
"""

from reelpack.codecs.base import Codec
from reelpack.codecs.registry import available_codecs, codec_from_bytes, make_codec, register_codec

# Importing a family module registers its factory strings.
from reelpack.codecs import flat  # noqa: E402,F401  isort: skip

__all__ = ["Codec", "make_codec", "codec_from_bytes", "available_codecs", "register_codec"]
