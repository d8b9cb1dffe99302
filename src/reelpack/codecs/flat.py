"""Uncompressed baselines: float32 (4 bytes/dim) and float16 (2 bytes/dim)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.codecs.registry import register_codec
from reelpack.codecs.scanner import Scanner
from reelpack.kernels.checks import check_codes, fast_queries
from reelpack.kernels.dense import check_score_bound
from reelpack.kernels.topk import topk
from reelpack.util.validate import check_k
from reelpack.errors import SerializationError

__all__ = ["Float32Codec", "Float16Codec", "FlatScanner"]


class Float32Codec(Codec):
    """Identity codec: codes are the raw little-endian float32 bytes (4*d bytes)."""

    family = "float32"
    max_item_value = None

    @property
    def spec(self) -> str:
        return "float32"

    def _bytes_per_vector(self) -> int:
        return 4 * int(self.dim)  # type: ignore[arg-type]

    def _fit(self, X: np.ndarray, seed: int) -> None:
        pass

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X.astype("<f4")).view(np.uint8).reshape(X.shape[0], self._bytes_per_vector())

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.view("<f4").astype(np.float32)

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Decoded float32 rows prepared once, then GEMV + top-K per query (:class:`FlatScanner`)."""
        self._require_fitted("scanner")
        return FlatScanner(self, codes)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if meta or arrays:
            raise SerializationError("float32 codec state must be empty")


class Float16Codec(Codec):
    """IEEE half precision per component (2*d bytes). Values beyond +-65504 are clipped."""

    family = "fp16"
    max_item_value = None
    _MAX = float(np.finfo(np.float16).max)

    @property
    def spec(self) -> str:
        return "fp16"

    def _bytes_per_vector(self) -> int:
        return 2 * int(self.dim)  # type: ignore[arg-type]

    def _fit(self, X: np.ndarray, seed: int) -> None:
        pass

    def _encode(self, X: np.ndarray) -> np.ndarray:
        h = np.clip(X, -self._MAX, self._MAX).astype("<f2")
        return np.ascontiguousarray(h).view(np.uint8).reshape(X.shape[0], self._bytes_per_vector())

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.view("<f2").astype(np.float32)

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Decoded float32 rows prepared once, then GEMV + top-K per query (:class:`FlatScanner`)."""
        self._require_fitted("scanner")
        return FlatScanner(self, codes)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if meta or arrays:
            raise SerializationError("fp16 codec state must be empty")


@register_codec("float32", r"(float32|flat)", "float32")
def _build_float32(m: re.Match[str]) -> Codec:
    return Float32Codec()


@register_codec("fp16", r"(fp16|float16)", "fp16")
def _build_fp16(m: re.Match[str]) -> Codec:
    return Float16Codec()


class FlatScanner(Scanner):
    """float32 / fp16 codes: the rows are decoded to float32 once (fp16: ``prepared_bytes`` = 4 n d), then each
    query is one GEMV and a top-K, which is what :meth:`Codec.score` computes for one query."""

    def __init__(self, codec: Codec, codes: np.ndarray) -> None:
        self.codec = codec
        codes = check_codes(codes, codec.bytes_per_vector)
        self.rows = np.ascontiguousarray(codec.decode(codes), np.float32)
        self.n_items = self.rows.shape[0]
        self.prepared_bytes = 0 if np.shares_memory(self.rows, codes) else int(self.rows.nbytes)
        self.column_max = np.abs(self.rows).max(axis=0).astype(np.float64)
        self.kernel = "float32-gemv+topk"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = fast_queries(queries, int(self.codec.dim))
        k = check_k(k, self.n_items)
        check_score_bound(q, self.column_max)
        return topk(q @ self.rows.T, k)
