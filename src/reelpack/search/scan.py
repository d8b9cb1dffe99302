"""The front door to fused top-K search: :func:`make_scanner` asks the codec for its scanner.

Each codec family declares how it is searched (:meth:`reelpack.codecs.Codec.scanner`); the kernels are in
:mod:`reelpack.kernels.scan`. Families without a fused kernel get ``codec.score`` + top-K.
"""

from __future__ import annotations

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.codecs.scanner import Scanner
from reelpack.errors import InvalidInputError

__all__ = ["Scanner", "make_scanner"]


BACKENDS = ("numba", "native")


def make_scanner(
    codec: Codec,
    codes: np.ndarray,
    *,
    exact: bool = True,
    query_bits: int = 8,
    rerank: int | None = None,
    backend: str = "numba",
) -> Scanner:
    """Prepare ``codes`` of a fitted ``codec`` for fused top-K search.

    Args:
        codec: a fitted :class:`reelpack.codecs.Codec`.
        codes: uint8 [n, codec.bytes_per_vector] (a read-only memmap is fine).
        exact: 4-bit PQ: rescore candidates with float tables (exact ADC ranking).
        query_bits: bits per query coordinate for binary asymmetric scoring (simhash, rabitq).
        rerank: rabitq with B > 1 bits: candidates from the 1-bit stage rescored with all bits
            (default ``max(20 K, 1000)``, capped at the catalog).
        backend: ``"numba"`` (the codec's own scanner, the default) or ``"native"``: the C runtime
            (:class:`reelpack.search.native.NativeScanner`; needs the built ``libreelpack``, see docs/RUNTIME.md).

    Returns:
        the codec's :class:`Scanner` (``codec.scanner(codes, ...)``).

    Raises:
        InvalidInputError: ``codec`` is not a :class:`Codec`, or a bad ``query_bits`` / ``rerank`` / ``exact`` /
            ``backend``.
        NativeRuntimeError: ``backend="native"`` and the runtime library is not built or not found.
        UnsupportedFeatureError: ``backend="native"`` and the runtime does not implement the codec's family.
        NotFittedError: the codec is not fitted.
        DTypeError, DimensionMismatchError, InvalidInputError: bad codes.
    """
    if not isinstance(codec, Codec):
        raise InvalidInputError(f"make_scanner needs a reelpack Codec, got {type(codec).__name__}")
    if isinstance(query_bits, bool) or not isinstance(query_bits, (int, np.integer)) or not 1 <= query_bits <= 16:
        raise InvalidInputError(f"query_bits must be an integer in 1..16, got {query_bits!r}")
    if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 1):
        raise InvalidInputError(f"rerank must be None or an integer >= 1, got {rerank!r}")
    if not isinstance(exact, (bool, np.bool_)):
        raise InvalidInputError(f"exact must be True or False, got {exact!r}")
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "native":
        if rerank is not None:
            raise InvalidInputError("the native runtime reranks rabitq's max(20 K, 1000) best stage-0 candidates; "
                                    "rerank cannot be changed there")
        from reelpack.search.native import NativeScanner  # ctypes + the library load only when asked for

        return NativeScanner(codec, codes, exact=bool(exact), query_bits=int(query_bits))
    return codec.scanner(codes, exact=bool(exact), query_bits=int(query_bits), rerank=None if rerank is None else int(rerank))
