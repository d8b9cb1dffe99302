"""The re-ranker model: a tiny MLP over candidate features, its file format, numpy and ONNX runners.

Model (``F`` features, ``H`` hidden units; about ``F H + H^2 + 3 H + F + 1`` parameters,
1.6 k for ``F = 15, H = 32``)::

    z   = (x - mean) / std                      x float32 [..., F]
    h1  = relu(z @ W1 + b1)                     W1 [F, H]
    h2  = relu(h1 @ W2 + b2)                    W2 [H, H]
    out = h2 @ w3 + b3 + z @ w_lin              w3 [H], w_lin [F]; out float32 [...]

The linear skip ``z @ w_lin`` lets the model start from (a rescaled) codec score.
The numpy runner (:meth:`Reranker.score_features`) and the ONNX graph
(:meth:`Reranker.to_onnx`, run by :class:`OnnxReranker`) compute the same function;
they agree to 1e-5 (tested).

File layout (little-endian; written atomically)::

    magic      8 bytes  b"RPRERANK"
    version    u32      FORMAT_VERSION (1)
    hdr_len    u32      length of the JSON header
    header     hdr_len bytes, UTF-8 JSON: format_version, codec_spec, codec_fingerprint
               (sha256 hex of the fitted codec's to_bytes()), dim, feature_names, hidden,
               pop_scale, recent_window, arrays: [{name, shape, offset}] (offsets in floats
               from the start of the payload), info (free-form training record)
    payload    float32 values of every array, concatenated in header order
    crc        u32      CRC32C of everything before it

:func:`load_reranker` checks magic, version, every length and offset against the file,
array shapes against ``feature_names`` / ``hidden`` and the CRC, raising
:class:`~reelpack.errors.SerializationError` (or :class:`~reelpack.errors.UnsupportedVersionError`).
:meth:`Reranker.check_codec` raises :class:`~reelpack.errors.InvalidInputError` (codec spec or
fitted parameters differ) or :class:`~reelpack.errors.DimensionMismatchError` (dimension differs).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.util.atomic import atomic_write_bytes
from reelpack.codecs.base import Codec
from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    NonFiniteError,
    SerializationError,
    UnsupportedVersionError,
)
from reelpack.models.rerank.features import CandidateBatch, compute_features, feature_names
from reelpack.search.onnx_export import cpu_session, onnxruntime_module

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Reranker",
    "RerankResult",
    "OnnxReranker",
    "codec_fingerprint",
    "load_reranker",
]

MAGIC = b"RPRERANK"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_PARAMS = 1 << 22
_ARRAY_NAMES = ("mean", "std", "w1", "b1", "w2", "b2", "w3", "b3", "w_lin")


def codec_fingerprint(codec: Codec) -> str:
    """sha256 hex of the fitted codec's serialised parameters (``codec.to_bytes()``)."""
    return hashlib.sha256(codec.to_bytes()).hexdigest()


def _shapes(n_features: int, hidden: int) -> dict[str, tuple[int, ...]]:
    f, h = n_features, hidden
    return {"mean": (f,), "std": (f,), "w1": (f, h), "b1": (h,), "w2": (h, h), "b2": (h,),
            "w3": (h,), "b3": (1,), "w_lin": (f,)}  # fmt: skip


@dataclass
class RerankResult:
    """Re-ranked candidates of ``b`` users.

    Attributes:
        order: int64 [b, R] positions into each user's candidate list, best first.
        scores: float32 [b, R] the re-ranker's scores in ``order`` (the codec's when ``fallback``).
        fallback: True when a missing signal made the re-ranker return the codec's own order.
        reason: why it fell back ("" otherwise).
    """

    order: np.ndarray
    scores: np.ndarray
    fallback: bool = False
    reason: str = ""


@dataclass
class Reranker:
    """A trained re-ranker bound to one fitted codec.

    Attributes:
        codec_spec, codec_fingerprint, dim: the codec it was trained for.
        feature_names: the fixed feature order (:func:`reelpack.models.rerank.features.feature_names`).
        hidden: hidden units H.
        pop_scale: ``log1p(max train count)`` of the popularity bytes it was trained with
            (unused, but still stored and > 0, when ``log_pop`` is not a feature).
        recent_window: L, the number of last history items used for recency features.
        arrays: float32 parameters (see the module docstring for names and shapes).
        info: free-form training record (JSON-able).
    """

    codec_spec: str
    codec_fingerprint: str
    dim: int
    feature_names: tuple[str, ...]
    hidden: int
    pop_scale: float
    recent_window: int
    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.feature_names = tuple(self.feature_names)
        shapes = _shapes(len(self.feature_names), int(self.hidden))
        if set(self.arrays) != set(shapes):
            raise SerializationError(f"re-ranker arrays {sorted(self.arrays)} differ from {sorted(shapes)}")
        for name, shape in shapes.items():
            arr = np.ascontiguousarray(self.arrays[name], np.float32)
            if arr.shape != shape:
                raise SerializationError(f"re-ranker array {name!r} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise SerializationError(f"re-ranker array {name!r} holds NaN or Inf")
            self.arrays[name] = arr
        if (self.arrays["std"] <= 0).any():
            raise SerializationError("re-ranker feature std must be positive")
        if not (np.isfinite(self.pop_scale) and self.pop_scale > 0) or self.recent_window < 0 or self.dim < 1:
            raise SerializationError("re-ranker pop_scale must be > 0, recent_window >= 0 and dim >= 1")

    @property
    def uses_popularity(self) -> bool:
        """True when ``log_pop`` is a feature (the phone must ship one popularity byte per item)."""
        return "log_pop" in self.feature_names

    @property
    def n_params(self) -> int:
        """Trainable parameters (normalisation constants excluded)."""
        return int(sum(a.size for k, a in self.arrays.items() if k not in ("mean", "std")))

    # ---- compatibility -----------------------------------------------------------------------
    def check_codec(self, codec: Codec) -> None:
        """Raise unless ``codec`` is the fitted codec this re-ranker was trained for.

        Raises:
            DimensionMismatchError: the codec's dimension differs.
            InvalidInputError: its spec or fitted parameters (fingerprint) differ.
        """
        if not codec.is_fitted:
            raise InvalidInputError(f"the codec {codec.spec!r} is not fitted")
        if codec.dim != self.dim:
            raise DimensionMismatchError(f"this re-ranker is for dimension {self.dim}, the codec has {codec.dim}")
        if codec.spec != self.codec_spec:
            raise InvalidInputError(f"this re-ranker is for codec {self.codec_spec!r}, got {codec.spec!r}")
        if codec_fingerprint(codec) != self.codec_fingerprint:
            raise InvalidInputError(
                f"this re-ranker was trained for another fit of {self.codec_spec!r} "
                f"(codec fingerprint {self.codec_fingerprint[:12]}..., got {codec_fingerprint(codec)[:12]}...)"
            )

    # ---- scoring ------------------------------------------------------------------------------
    def score_features(self, x: np.ndarray) -> np.ndarray:
        """Scores float32 [...] of features float32 [..., F] (numpy reference runner)."""
        x = np.asarray(x, np.float32)
        if x.shape[-1:] != (len(self.feature_names),):
            raise DimensionMismatchError(f"features must end in {len(self.feature_names)} columns, got {x.shape}")
        if not np.isfinite(x).all():
            raise NonFiniteError("features hold NaN or Inf")
        a = self.arrays
        z = (x - a["mean"]) / a["std"]
        h = np.maximum(z @ a["w1"] + a["b1"], 0.0)
        h = np.maximum(h @ a["w2"] + a["b2"], 0.0)
        return (h @ a["w3"] + a["b3"][0] + z @ a["w_lin"]).astype(np.float32)

    def features(self, codec: Codec, batch: CandidateBatch) -> np.ndarray:
        """Features float32 [b, R, F] of a candidate batch (the codec must match: :meth:`check_codec`)."""
        return compute_features(codec, batch, self.feature_names, self.pop_scale)

    def rerank(
        self, codec: Codec, batch: CandidateBatch, *, fallback: bool = False, check: bool = True
    ) -> RerankResult:
        """Re-rank each user's candidates.

        Args:
            codec: the fitted codec (checked against the file unless ``check=False``;
                skip the check only when it was done once for this codec).
            batch: the candidates (codec rank order) and signals.
            fallback: when a signal is missing (popularity, for a model with ``log_pop``), return the codec's own order
                (``RerankResult.fallback = True`` with the reason) instead of raising.

        Raises:
            InvalidInputError: a signal is missing and ``fallback`` is False (and the typed
                errors of :func:`reelpack.models.rerank.features.compute_features` for bad input).
        """
        if check:
            self.check_codec(codec)
        if batch.pop_bytes is None and "log_pop" in self.feature_names:
            if not fallback:
                raise InvalidInputError(
                    "candidates lack popularity bytes, which this re-ranker needs; pass pop_bytes "
                    "or fallback=True to keep the codec's own ranking"
                )
            b, r = np.asarray(batch.cand_codes).shape[:2]
            x = compute_features(codec, _with_dummy_pop(batch), self.feature_names, self.pop_scale)
            return RerankResult(
                np.broadcast_to(np.arange(r, dtype=np.int64), (b, r)).copy(),
                x[:, :, self.feature_names.index("codec_score")],
                True,
                "popularity missing: codec ranking kept",
            )
        s = self.score_features(self.features(codec, batch))
        order = np.argsort(-s, axis=1, kind="stable")
        return RerankResult(order, np.take_along_axis(s, order, axis=1))

    # ---- serialisation ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The file bytes (layout in the module docstring)."""
        specs, payload, offset = [], [], 0
        for name in _ARRAY_NAMES:
            arr = self.arrays[name]
            specs.append({"name": name, "shape": list(arr.shape), "offset": offset})
            payload.append(arr.astype("<f4").tobytes())
            offset += arr.size
        header = {
            "format": "reelpack-reranker", "format_version": FORMAT_VERSION, "codec_spec": self.codec_spec,
            "codec_fingerprint": self.codec_fingerprint, "dim": int(self.dim),
            "feature_names": list(self.feature_names), "hidden": int(self.hidden), "pop_scale": float(self.pop_scale),
            "recent_window": int(self.recent_window), "arrays": specs, "info": self.info,
        }  # fmt: skip
        hdr = json.dumps(header, sort_keys=True).encode()
        body = MAGIC + struct.pack("<II", FORMAT_VERSION, len(hdr)) + hdr + b"".join(payload)
        from reelpack.format import crc32c

        return body + struct.pack("<I", crc32c(body))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the file atomically; returns the path."""
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Reranker:
        """Parse and validate re-ranker file bytes (see the module docstring)."""
        from reelpack.format import crc32c

        data = bytes(data)
        if len(data) < len(MAGIC) + 12 or data[: len(MAGIC)] != MAGIC:
            raise SerializationError("not a reelpack re-ranker file (bad magic or too short)")
        version, hdr_len = struct.unpack_from("<II", data, len(MAGIC))
        if version != FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"re-ranker file format version {version}; this reader supports {FORMAT_VERSION}"
            )
        start = len(MAGIC) + 8
        if hdr_len > MAX_HEADER_BYTES or start + hdr_len + 4 > len(data):
            raise SerializationError(f"re-ranker header length {hdr_len} exceeds the file ({len(data)} bytes)")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if crc32c(data[:-4]) != crc:
            raise SerializationError("re-ranker file CRC32C mismatch: the file is corrupt")
        try:
            header = json.loads(data[start : start + hdr_len].decode())
            names = tuple(str(n) for n in header["feature_names"])
            hidden = int(header["hidden"])
            specs = header["arrays"]
            payload = data[start + hdr_len : -4]
            if len(payload) % 4:
                raise SerializationError("re-ranker payload is not a whole number of float32 values")
            values = np.frombuffer(payload, "<f4")
            if not 1 <= len(names) <= 4096 or not 1 <= hidden <= 4096:
                raise SerializationError(f"re-ranker sizes out of range: {len(names)} features, {hidden} hidden")
            shapes = _shapes(len(names), hidden)
            arrays: dict[str, np.ndarray] = {}
            total = 0
            for spec in specs:
                name, off = str(spec["name"]), int(spec["offset"])
                shape = tuple(int(s) for s in spec["shape"])
                if name not in shapes or shape != shapes[name]:
                    raise SerializationError(f"re-ranker array {name!r} has shape {shape}, expected {shapes.get(name)}")
                size = int(np.prod(shape))
                if off < 0 or off + size > values.size:
                    raise SerializationError(f"re-ranker array {name!r} lies outside the payload")
                arrays[name] = values[off : off + size].reshape(shape).astype(np.float32)
                total += size
            if total != values.size or total > MAX_PARAMS:
                raise SerializationError(f"re-ranker payload holds {values.size} floats, the header lists {total}")
            return cls(
                codec_spec=str(header["codec_spec"]),
                codec_fingerprint=str(header["codec_fingerprint"]),
                dim=int(header["dim"]),
                feature_names=names,
                hidden=hidden,
                pop_scale=float(header["pop_scale"]),
                recent_window=int(header["recent_window"]),
                arrays=arrays,
                info=dict(header.get("info", {})),
            )
        except SerializationError:
            raise
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise SerializationError(f"re-ranker header is malformed: {exc!r}") from None

    # ---- ONNX -------------------------------------------------------------------------------------
    def to_onnx(self, opset: int = 18) -> bytes:
        """ONNX model: input ``features`` float32 [b, R, F] -> output ``scores`` float32 [b, R]."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        a = self.arrays
        f = len(self.feature_names)
        inits = [numpy_helper.from_array(a[k], k) for k in _ARRAY_NAMES if k not in ("w3", "w_lin", "b3")]
        inits.append(numpy_helper.from_array(a["w_lin"].reshape(-1, 1), "w_lin_col"))
        inits.append(numpy_helper.from_array(a["w3"].reshape(-1, 1), "w3_col"))
        inits.append(numpy_helper.from_array(a["b3"], "b3"))
        inits.append(numpy_helper.from_array(np.asarray([2], np.int64), "last_axis"))
        nodes = [
            helper.make_node("Sub", ["features", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["z"]),
            helper.make_node("MatMul", ["z", "w1"], ["z1"]),
            helper.make_node("Add", ["z1", "b1"], ["a1"]),
            helper.make_node("Relu", ["a1"], ["h1"]),
            helper.make_node("MatMul", ["h1", "w2"], ["z2"]),
            helper.make_node("Add", ["z2", "b2"], ["a2"]),
            helper.make_node("Relu", ["a2"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w3_col"], ["o_h"]),
            helper.make_node("MatMul", ["z", "w_lin_col"], ["o_lin"]),
            helper.make_node("Add", ["o_h", "o_lin"], ["o_sum"]),
            helper.make_node("Add", ["o_sum", "b3"], ["o_b"]),
            helper.make_node("Squeeze", ["o_b", "last_axis"], ["scores"]),
        ]
        graph = helper.make_graph(
            nodes,
            "reelpack_reranker",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", "r", f])],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", "r"])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="reelpack")
        model.ir_version = min(model.ir_version, 9)
        for key, value in (("spec", self.codec_spec), ("fingerprint", self.codec_fingerprint), ("dim", str(self.dim)),
                           ("feature_names", ",".join(self.feature_names))):  # fmt: skip
            entry = model.metadata_props.add()
            entry.key, entry.value = f"reelpack.models.rerank.{key}", value
        onnx.checker.check_model(model)
        return model.SerializeToString()


def _with_dummy_pop(batch: CandidateBatch) -> CandidateBatch:
    b, r = np.asarray(batch.cand_codes).shape[:2]
    return CandidateBatch(batch.queries, batch.cand_codes, np.zeros((b, r), np.uint8), batch.recent_codes,
                          batch.recent_mask)  # fmt: skip


class OnnxReranker:
    """Runs :meth:`Reranker.to_onnx` models in onnxruntime (one intra-op thread by default).

    Args:
        model: ONNX bytes or a path.
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, model: bytes | str | os.PathLike[str], *, threads: int = 1) -> None:
        onnxruntime_module()  # unavailable: UnsupportedOperationError before reading the model
        if isinstance(model, (str, os.PathLike)):
            model = Path(model).read_bytes()
        self.session = cpu_session(model, threads, "the re-ranker")
        props = self.session.get_modelmeta().custom_metadata_map
        if "reelpack.models.rerank.feature_names" not in props:
            raise SerializationError("not a reelpack re-ranker ONNX model (reelpack.models.rerank.* metadata missing)")
        self.feature_names = tuple(props["reelpack.models.rerank.feature_names"].split(","))
        self.spec = props["reelpack.models.rerank.spec"]

    def score_features(self, x: np.ndarray) -> np.ndarray:
        """Scores float32 [b, R] of features float32 [b, R, F]."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 3 or x.shape[2] != len(self.feature_names):
            raise DimensionMismatchError(f"features must be [b, R, {len(self.feature_names)}], got {x.shape}")
        return self.session.run(["scores"], {"features": x})[0]


def load_reranker(path_or_bytes: str | os.PathLike[str] | bytes) -> Reranker:
    """Read a re-ranker file (or its bytes); see :meth:`Reranker.from_bytes` for the checks."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return Reranker.from_bytes(bytes(path_or_bytes))
    try:
        data = Path(path_or_bytes).read_bytes()
    except OSError as exc:
        raise SerializationError(f"cannot read re-ranker file {path_or_bytes}: {exc.strerror or exc}") from None
    return Reranker.from_bytes(data)
