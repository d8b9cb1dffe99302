"""The native C runtime (``runtime/``, ``libreelpack``) as a scanner backend, through ctypes.

The runtime is the dependency-free C99 library an app embeds (docs/RUNTIME.md). These bindings let the
Python side use it like any other scanner and check it against the numba kernels: the same codec bytes
(``codec.to_bytes()``, a pack's CODEC section) and the same codes go through both.

The library is optional at run time: ``import reelpack`` never loads it, and nothing else in reelpack
needs it. :func:`load_runtime` looks for it, in order, at the path it is given, at ``REELPACK_RUNTIME_LIB``,
and at ``runtime/build/libreelpack.so`` of a source checkout (``make -C runtime`` builds it there); when it
is absent, :class:`~reelpack.errors.NativeRuntimeError` says so.

>>> from reelpack.search.native import native_available   # doctest: +SKIP
>>> scanner = make_scanner(codec, codes, backend="native")  # doctest: +SKIP
>>> ids, scores = scanner.search(user_vectors, 50, exclude=[seen_rows])  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.codecs.scanner import Scanner
from reelpack.errors import (
    ChecksumError,
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    InvalidKError,
    NativeRuntimeError,
    NonFiniteError,
    PackFormatError,
    ReelpackError,
    SerializationError,
    TruncatedPackError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from reelpack.kernels.checks import check_codes
from reelpack.util.validate import check_k

__all__ = [
    "NativeRuntime",
    "NativeScanner",
    "NativePack",
    "NativeLayerInfo",
    "NativePackScanner",
    "load_runtime",
    "native_available",
    "native_refine",
    "STATUS_NAMES",
]

#: rp_status codes of runtime/include/reelpack.h, by value.
STATUS_NAMES = {
    0: "RP_OK",
    1: "RP_E_ARGUMENT",
    2: "RP_E_NOT_A_PACK",
    3: "RP_E_VERSION",
    4: "RP_E_FORMAT",
    5: "RP_E_CHECKSUM",
    6: "RP_E_TRUNCATED",
    7: "RP_E_UNSUPPORTED",
    8: "RP_E_DIMENSION",
    9: "RP_E_NONFINITE",
    10: "RP_E_K_RANGE",
    11: "RP_E_NOMEM",
    12: "RP_E_IO",
    13: "RP_E_DAMAGED",
    14: "RP_E_CODEC",
}

# the reelpack exception each C status becomes (the Python reader raises the same classes)
_ERRORS: dict[int, type[ReelpackError]] = {
    1: InvalidInputError,
    2: PackFormatError,
    3: UnsupportedVersionError,
    4: PackFormatError,
    5: ChecksumError,
    6: TruncatedPackError,
    7: UnsupportedFeatureError,
    8: DimensionMismatchError,
    9: NonFiniteError,
    10: InvalidKError,
    11: InvalidInputError,
    12: InvalidInputError,
    13: ChecksumError,
    14: SerializationError,
}

MAX_K = 1 << 20


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 256)]


class _ScanOptions(ctypes.Structure):
    _fields_ = [
        ("stages", ctypes.c_uint32),
        ("stride", ctypes.c_size_t),
        ("query_bits", ctypes.c_int),
        ("approximate", ctypes.c_int),
    ]


class _LayerInfo(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("bytes_per_vector", ctypes.c_uint32),
        ("items_per_block", ctypes.c_uint32),
        ("n_blocks", ctypes.c_uint32),
        ("dim", ctypes.c_uint32),
        ("entropy_coded", ctypes.c_int),
        ("status", ctypes.c_int),
        ("spec", ctypes.c_char * 64),
        ("family", ctypes.c_char * 16),
    ]


class _VerifyReport(ctypes.Structure):
    _fields_ = [
        ("bad_blocks", ctypes.c_uint64),
        ("missing_items", ctypes.c_uint64),
        ("section_problems", ctypes.c_uint32),
        ("truncated", ctypes.c_int),
    ]


class _RefineFrame(ctypes.Structure):
    _fields_ = [
        ("n_items", ctypes.c_uint32),
        ("bytes_per_vector", ctypes.c_uint32),
        ("layer", ctypes.c_uint32),
        ("ids_le", ctypes.c_void_p),
        ("codes", ctypes.c_void_p),
    ]


_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_E = ctypes.POINTER(_Error)
_U32, _U64, _I64, _SZ, _INT = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t, ctypes.c_int

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "rp_version": (ctypes.c_char_p, []),
    "rp_status_name": (ctypes.c_char_p, [_INT]),
    "rp_kernel_name": (ctypes.c_char_p, []),
    "rp_set_kernel": (_INT, [ctypes.c_char_p, _E]),
    "rp_crc32c": (_U32, [_U32, _P, _SZ]),
    "rp_codec_open": (_INT, [_P, _SZ, _PP, _E]),
    "rp_codec_free": (None, [_P]),
    "rp_codec_spec": (ctypes.c_char_p, [_P]),
    "rp_codec_family": (ctypes.c_char_p, [_P]),
    "rp_codec_dim": (_U32, [_P]),
    "rp_codec_bytes_per_vector": (_U32, [_P]),
    "rp_codec_stages": (_U32, [_P]),
    "rp_codec_prefix_bytes": (_U32, [_P, _U32]),
    "rp_codec_score": (_INT, [_P, _P, _P, _U64, _SZ, _U32, _P, _E]),
    "rp_scanner_new": (_INT, [_P, _P, _U64, ctypes.POINTER(_ScanOptions), _PP, _E]),
    "rp_scanner_free": (None, [_P]),
    "rp_scanner_kernel": (ctypes.c_char_p, [_P]),
    "rp_scanner_memory": (_SZ, [_P]),
    "rp_scanner_search": (_INT, [_P, _P, _U32, _P, _SZ, _P, _P, ctypes.POINTER(_U32), _E]),
    "rp_pack_open_memory": (_INT, [_P, _SZ, _PP, _E]),
    "rp_pack_open_file": (_INT, [ctypes.c_char_p, _PP, _E]),
    "rp_pack_close": (None, [_P]),
    "rp_pack_n_items": (_U64, [_P]),
    "rp_pack_n_layers": (_U32, [_P]),
    "rp_pack_truncated": (_INT, [_P]),
    "rp_pack_item_ids": (_P, [_P]),
    "rp_pack_row_of": (_I64, [_P, _I64]),
    "rp_pack_layer_info": (_INT, [_P, _U32, ctypes.POINTER(_LayerInfo), _E]),
    "rp_pack_layer_codec": (_INT, [_P, _U32, _PP, _E]),
    "rp_pack_block_status": (_INT, [_P, _U32, _U32]),
    "rp_pack_verify": (_INT, [_P, ctypes.POINTER(_VerifyReport), _E]),
    "rp_pack_bad_blocks": (_INT, [_P, _U32, _P, _SZ, ctypes.POINTER(_SZ), _E]),
    "rp_pack_scanner": (_INT, [_P, _U32, ctypes.POINTER(_ScanOptions), _PP, _E]),
    "rp_pack_search": (_INT, [_P, _U32, _P, _U32, _P, _SZ, _P, _P, ctypes.POINTER(_U32), _E]),
    "rp_refine_frame_parse": (_INT, [_P, _SZ, ctypes.POINTER(_RefineFrame), _E]),
    "rp_refine": (_INT, [_P, _P, ctypes.POINTER(_RefineFrame), _U32, _P, _P, ctypes.POINTER(_U32), _E]),
}


def _checkout_library() -> Path:
    """``runtime/build/libreelpack.so`` of the source checkout this module sits in (src/reelpack/search/)."""
    return Path(__file__).resolve().parents[3] / "runtime" / "build" / "libreelpack.so"


def _ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


class NativeRuntime:
    """A loaded ``libreelpack`` shared library with its C prototypes declared.

    Use :func:`load_runtime` (cached per path) rather than the constructor.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.lib = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise NativeRuntimeError(f"the native runtime library could not be loaded: {exc}") from None
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(self.lib, name)
            except AttributeError:
                raise NativeRuntimeError(f"the native runtime library lacks {name}: rebuild it (make -C runtime)") from None
            fn.restype, fn.argtypes = restype, argtypes
        self.version = self.lib.rp_version().decode()

    @property
    def kernel(self) -> str:
        """The code path rankings use now: ``"avx2"``, ``"neon"`` or ``"portable"``."""
        return self.lib.rp_kernel_name().decode()

    def set_kernel(self, name: str) -> None:
        """Force ``"auto"``, ``"portable"``, ``"avx2"`` or ``"neon"`` (process-wide; a path the CPU lacks is refused)."""
        err = _Error()
        self.check(self.lib.rp_set_kernel(str(name).encode(), ctypes.byref(err)), err)

    def crc32c(self, data: bytes, crc: int = 0) -> int:
        """CRC32C of ``data`` continuing from ``crc`` (the C implementation, for tests)."""
        return int(self.lib.rp_crc32c(crc, data, len(data)))

    @staticmethod
    def check(status: int, err: _Error) -> None:
        """Raise the reelpack error of a failed C call (``status`` != RP_OK), with the runtime's message."""
        if status == 0:
            return
        name = STATUS_NAMES.get(status, f"status {status}")
        message = err.message.decode("utf-8", "replace") or name
        raise _ERRORS.get(status, ReelpackError)(f"{message} [native {name}]")


_RUNTIMES: dict[str, NativeRuntime] = {}
_LOCK = threading.Lock()


def load_runtime(path: str | os.PathLike[str] | None = None) -> NativeRuntime:
    """The native runtime at ``path``, ``REELPACK_RUNTIME_LIB`` or the checkout's ``runtime/build`` (cached).

    Raises:
        NativeRuntimeError: no library there, or it cannot be loaded.
    """
    if path is None:
        path = os.environ.get("REELPACK_RUNTIME_LIB") or _checkout_library()
    path = Path(path)
    if not path.is_file():
        raise NativeRuntimeError(
            "the native runtime library (libreelpack) was not found: build it with `make -C runtime` in a source "
            "checkout, or set REELPACK_RUNTIME_LIB to its path"
        )
    key = str(path.resolve())
    with _LOCK:
        if key not in _RUNTIMES:
            _RUNTIMES[key] = NativeRuntime(path)
        return _RUNTIMES[key]


def native_available(path: str | os.PathLike[str] | None = None) -> bool:
    """True when :func:`load_runtime` finds and loads the library."""
    try:
        load_runtime(path)
    except NativeRuntimeError:
        return False
    return True


class _NativeCodec:
    """An ``rp_codec`` loaded from a codec's RPCS bytes (freed with this object)."""

    def __init__(self, rt: NativeRuntime, state: bytes) -> None:
        self.rt, self.state = rt, bytes(state)
        handle = ctypes.c_void_p()
        err = _Error()
        rt.check(rt.lib.rp_codec_open(self.state, len(self.state), ctypes.byref(handle), ctypes.byref(err)), err)
        self.handle = handle
        self.dim = int(rt.lib.rp_codec_dim(handle))
        self.bytes_per_vector = int(rt.lib.rp_codec_bytes_per_vector(handle))
        self.spec = rt.lib.rp_codec_spec(handle).decode()
        self.family = rt.lib.rp_codec_family(handle).decode()

    def __del__(self) -> None:
        h = getattr(self, "handle", None)
        if h is not None and h.value:
            self.rt.lib.rp_codec_free(h)
            self.handle = None

    def score(self, query: np.ndarray, codes: np.ndarray, stages: int = 0) -> np.ndarray:
        """float32 [n] scores of one query float32 [dim] against codes uint8 [n, >= B] (``rp_codec_score``)."""
        q = np.ascontiguousarray(query, np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise DimensionMismatchError(f"query has {q.shape[0]} values, the codec {self.dim}")
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2:
            raise DimensionMismatchError(f"codes must be 2-D [n, bytes], got shape {codes.shape}")
        out = np.empty(codes.shape[0], np.float32)
        err = _Error()
        self.rt.check(self.rt.lib.rp_codec_score(self.handle, _ptr(q), _ptr(codes), codes.shape[0], codes.shape[1],
                                                 int(stages), _ptr(out), ctypes.byref(err)), err)  # fmt: skip
        return out


def _options(stages: int, stride: int, query_bits: int, exact: bool) -> _ScanOptions:
    return _ScanOptions(int(stages), int(stride), int(query_bits), 0 if exact else 1)


def _exclusions(exclude: Sequence[Any] | None, n_queries: int) -> list[np.ndarray | None]:
    """One int64 array (or None) per query from ``exclude``: None, or one sequence of rows per query."""
    if exclude is None:
        return [None] * n_queries
    if len(exclude) != n_queries:
        raise InvalidInputError(f"exclude has {len(exclude)} entries, one per query ({n_queries}) is needed")
    out: list[np.ndarray | None] = []
    for rows in exclude:
        if rows is None:
            out.append(None)
            continue
        arr = np.asarray(rows)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInputError(f"excluded rows must be integers, got dtype {arr.dtype}")
        out.append(np.ascontiguousarray(arr.reshape(-1), np.int64))
    return out


class _OutParams:
    """The out-parameters of ``rp_scanner_search`` (result count, error), made once per thread and scanner."""

    def __init__(self) -> None:
        self.n = ctypes.c_uint32(0)
        self.err = _Error()
        self.n_ref = ctypes.byref(self.n)
        self.err_ref = ctypes.byref(self.err)


class NativeScanner(Scanner):
    """A catalog of codes ranked by the C runtime (``rp_scanner``), one scanner per thread inside.

    Args:
        codec: the fitted codec; its ``to_bytes()`` is loaded by the runtime (a family the runtime lacks raises
            :class:`~reelpack.errors.UnsupportedFeatureError` naming it).
        codes: uint8 [n, B] (kept referenced: the runtime reads them in place, except 4-bit PQ, which copies
            them into its block layout).
        exact: 4-bit PQ: exact rescoring (``False``: faiss fast-scan semantics).
        query_bits: simhash's asymmetric scan: bits per quantised query coordinate.
        stages: rq: rank with the first ``stages`` stages (0 = all); ``codes`` may then hold only the prefix.
        runtime: a :class:`NativeRuntime` (default :func:`load_runtime`).
    """

    def __init__(self, codec: Codec, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8, stages: int = 0,
                 runtime: NativeRuntime | None = None) -> None:  # fmt: skip
        if not isinstance(codec, Codec):
            raise InvalidInputError(f"NativeScanner needs a reelpack Codec, got {type(codec).__name__}")
        self.rt = runtime or load_runtime()
        self.codec = codec
        self._codec = _NativeCodec(self.rt, codec.to_bytes())
        width = int(self.rt.lib.rp_codec_prefix_bytes(self._codec.handle, int(stages))) if stages else codec.bytes_per_vector
        codes = np.asarray(codes)
        if codes.ndim == 2 and codes.shape[1] > width and stages:
            width = codes.shape[1]  # a full code scored with a prefix: the rows keep their stride
        self.codes = np.ascontiguousarray(check_codes(codes, width))
        self.n_items = int(self.codes.shape[0])
        self._opts = _options(stages, self.codes.shape[1] if stages else 0, query_bits, exact)
        self._local = threading.local()
        self._handles: list[ctypes.c_void_p] = []
        first = self._scanner()
        self.kernel = "native-" + self.rt.lib.rp_scanner_kernel(first).decode()
        self.prepared_bytes = int(self.rt.lib.rp_scanner_memory(first))

    def _scanner(self) -> ctypes.c_void_p:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = ctypes.c_void_p()
            err = _Error()
            status = self.rt.lib.rp_scanner_new(self._codec.handle, _ptr(self.codes), self.n_items,
                                                ctypes.byref(self._opts), ctypes.byref(handle), ctypes.byref(err))  # fmt: skip
            if status == 14:  # RP_E_CODEC from codes (a value the codec cannot hold): bad input, not a bad state
                raise InvalidInputError(f"{err.message.decode('utf-8', 'replace')} [native RP_E_CODEC]")
            self.rt.check(status, err)
            self._local.handle = handle
            with _LOCK:
                self._handles.append(handle)
        return handle

    def __del__(self) -> None:
        rt = getattr(self, "rt", None)
        for h in getattr(self, "_handles", []):
            if rt is not None and h.value:
                rt.lib.rp_scanner_free(h)
        self._handles = []

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows (ids int64 [q, k], scores float32 [q, k]) of float32 queries [q, d] (or [d]).

        ``exclude``: per query, rows never returned (a user's seen items); a row list per query. When
        exclusions leave fewer than ``k`` rows, the missing places hold id -1 and score -inf. NaN, Inf and
        values beyond 1e30 are refused by the runtime (:class:`~reelpack.errors.NonFiniteError`).
        """
        # the hot path of a phone ranking one user: the runtime checks the values, Python only shapes and types
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.dtype.kind not in "fiu":
            raise DTypeError(f"queries must be a real float or integer array, got dtype {q.dtype}")
        if q.ndim != 2 or q.shape[1] != self._codec.dim or q.shape[0] == 0:
            raise DimensionMismatchError(f"queries must be [q >= 1, {self._codec.dim}], got shape {q.shape}")
        if q.dtype != np.float32 or not q.flags.c_contiguous:
            q = np.ascontiguousarray(q, np.float32)
        k = check_k(k, self.n_items)
        if k > MAX_K:
            raise InvalidKError(f"K={k} exceeds the runtime's limit {MAX_K}")
        skip = _exclusions(exclude, q.shape[0])
        handle = self._scanner()
        res = getattr(self._local, "out", None)
        if res is None:
            res = self._local.out = _OutParams()
        ids = np.empty((q.shape[0], k), np.int64)
        scores = np.empty((q.shape[0], k), np.float32)
        q_ptr, id_ptr, score_ptr = q.ctypes.data, ids.ctypes.data, scores.ctypes.data
        row_bytes = 4 * q.shape[1]
        fn, check, n_ref, err_ref = self.rt.lib.rp_scanner_search, self.rt.check, res.n_ref, res.err_ref
        for i in range(q.shape[0]):
            rows = skip[i]
            # unused places (exclusions left fewer than k rows) are written as -1 / -inf by the runtime
            status = fn(handle, q_ptr + i * row_bytes, k, None if rows is None else rows.ctypes.data,
                        0 if rows is None else rows.shape[0], id_ptr + 8 * i * k, score_ptr + 4 * i * k,
                        n_ref, err_ref)  # fmt: skip
            if status:
                check(status, res.err)
        return ids, scores


class NativeLayerInfo:
    """What the runtime reads from one layer (``rp_layer_info``)."""

    def __init__(self, raw: _LayerInfo) -> None:
        self.index = int(raw.index)
        self.bytes_per_vector = int(raw.bytes_per_vector)
        self.items_per_block = int(raw.items_per_block)
        self.n_blocks = int(raw.n_blocks)
        self.dim = int(raw.dim)
        self.entropy_coded = bool(raw.entropy_coded)
        self.status = STATUS_NAMES.get(int(raw.status), str(raw.status))
        self.spec = raw.spec.decode("utf-8", "replace")
        self.family = raw.family.decode("utf-8", "replace")

    @property
    def usable(self) -> bool:
        return self.status == "RP_OK"

    def __repr__(self) -> str:
        return f"NativeLayerInfo(index={self.index}, spec={self.spec!r}, status={self.status})"


class NativePack:
    """A pack opened by the C runtime (from a path, memory-mapped, or from bytes).

    Raises the same error classes as :class:`reelpack.format.PackReader` for a pack it refuses.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview,
                 runtime: NativeRuntime | None = None) -> None:  # fmt: skip
        self.rt = runtime or load_runtime()
        handle = ctypes.c_void_p()
        err = _Error()
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._buf = np.frombuffer(bytes(source), np.uint8)  # kept alive: the runtime borrows it
            status = self.rt.lib.rp_pack_open_memory(_ptr(self._buf) if self._buf.size else None, self._buf.size,
                                                     ctypes.byref(handle), ctypes.byref(err))  # fmt: skip
        else:
            self._buf = None
            status = self.rt.lib.rp_pack_open_file(os.fsencode(os.fspath(source)), ctypes.byref(handle), ctypes.byref(err))
        self.rt.check(status, err)
        self.handle = handle
        self.n_items = int(self.rt.lib.rp_pack_n_items(handle))
        self.n_layers = int(self.rt.lib.rp_pack_n_layers(handle))
        self.truncated = bool(self.rt.lib.rp_pack_truncated(handle))

    def close(self) -> None:
        if getattr(self, "handle", None) is not None and self.handle.value:
            self.rt.lib.rp_pack_close(self.handle)
        self.handle = None

    __del__ = close

    def __enter__(self) -> NativePack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_handle(self) -> ctypes.c_void_p:
        if self.handle is None:
            raise InvalidInputError("this NativePack is closed")
        return self.handle

    @property
    def item_ids(self) -> np.ndarray:
        """int64 [n_items] sorted item ids (a copy)."""
        ptr = self.rt.lib.rp_pack_item_ids(self._open_handle())
        if not ptr or not self.n_items:
            return np.zeros(0, np.int64)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_int64)), (self.n_items,)).copy()

    def layer_info(self, layer: int) -> NativeLayerInfo:
        raw, err = _LayerInfo(), _Error()
        self.rt.check(self.rt.lib.rp_pack_layer_info(self._open_handle(), int(layer), ctypes.byref(raw), ctypes.byref(err)), err)
        return NativeLayerInfo(raw)

    def verify(self) -> dict[str, int]:
        """``rp_pack_verify``: bad_blocks, missing_items, section_problems, truncated."""
        rep, err = _VerifyReport(), _Error()
        self.rt.check(self.rt.lib.rp_pack_verify(self._open_handle(), ctypes.byref(rep), ctypes.byref(err)), err)
        return {"bad_blocks": int(rep.bad_blocks), "missing_items": int(rep.missing_items),
                "section_problems": int(rep.section_problems), "truncated": int(rep.truncated)}  # fmt: skip

    def bad_blocks(self, layer: int) -> list[int]:
        """Block numbers of ``layer`` that cannot be used."""
        info = self.layer_info(layer)
        out = np.zeros(max(1, info.n_blocks), np.uint32)
        n, err = ctypes.c_size_t(0), _Error()
        self.rt.check(self.rt.lib.rp_pack_bad_blocks(self._open_handle(), int(layer), _ptr(out), out.shape[0],
                                                     ctypes.byref(n), ctypes.byref(err)), err)  # fmt: skip
        return [int(b) for b in out[: int(n.value)]]

    def scanner(self, layer: int, *, exact: bool = True, query_bits: int = 8) -> NativePackScanner:
        """A scanner over the layer's intact blocks (``rp_pack_scanner``), kept for many queries."""
        return NativePackScanner(self, int(layer), _options(0, 0, query_bits, exact))

    def search(self, layer: int, query: np.ndarray, k: int, exclude_ids: Sequence[int] | np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """One user's top-``k`` item ids (int64 [<= k]) and scores (float32) over the layer's intact blocks,
        never returning ``exclude_ids`` (``rp_pack_search``)."""
        q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= MAX_K:
            raise InvalidKError(f"K must be an integer in 1..{MAX_K}, got {k!r}")
        ex = None if exclude_ids is None else np.ascontiguousarray(np.asarray(exclude_ids).reshape(-1), np.int64)
        ids, scores = np.empty(int(k), np.int64), np.empty(int(k), np.float32)
        n, err = ctypes.c_uint32(0), _Error()
        info = self.layer_info(layer)
        if info.dim and q.shape[0] != info.dim:
            raise DimensionMismatchError(f"query has {q.shape[0]} values, layer {layer}'s codec {info.dim}")
        status = self.rt.lib.rp_pack_search(self._open_handle(), int(layer), _ptr(q), int(k), _ptr(ex),
                                            0 if ex is None else ex.shape[0], _ptr(ids), _ptr(scores),
                                            ctypes.byref(n), ctypes.byref(err))  # fmt: skip
        self.rt.check(status, err)
        return ids[: n.value].copy(), scores[: n.value].copy()


class NativePackScanner:
    """``rp_pack_scanner`` of one layer (from :meth:`NativePack.scanner`): pack rows, damaged blocks skipped.

    Not thread-safe: use one per thread (the C scanner holds scratch memory)."""

    def __init__(self, pack: NativePack, layer: int, opts: _ScanOptions) -> None:
        self.pack, self.rt = pack, pack.rt
        self.dim = pack.layer_info(layer).dim
        handle, err = ctypes.c_void_p(), _Error()
        self.rt.check(self.rt.lib.rp_pack_scanner(pack._open_handle(), layer, ctypes.byref(opts), ctypes.byref(handle),
                                                  ctypes.byref(err)), err)  # fmt: skip
        self.handle = handle
        self.kernel = "native-" + self.rt.lib.rp_scanner_kernel(handle).decode()
        self.prepared_bytes = int(self.rt.lib.rp_scanner_memory(handle))
        self._out = _OutParams()

    def close(self) -> None:
        if getattr(self, "handle", None) is not None and self.handle.value:
            self.rt.lib.rp_scanner_free(self.handle)
        self.handle = None

    __del__ = close

    def search(self, query: np.ndarray, k: int, exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` pack rows (int64 [<= k]) and scores (float32) of one query float32 [dim]."""
        if self.handle is None:
            raise InvalidInputError("this scanner is closed")
        q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
        if q.shape[0] != self.dim:
            raise DimensionMismatchError(f"query has {q.shape[0]} values, the codec {self.dim}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= MAX_K:
            raise InvalidKError(f"K must be an integer in 1..{MAX_K}, got {k!r}")
        res = self._out
        rows, scores = np.empty(int(k), np.int64), np.empty(int(k), np.float32)
        ex = None if exclude_rows is None else np.ascontiguousarray(np.asarray(exclude_rows).reshape(-1), np.int64)
        status = self.rt.lib.rp_scanner_search(self.handle, _ptr(q), int(k), _ptr(ex), 0 if ex is None else ex.shape[0],
                                               _ptr(rows), _ptr(scores), res.n_ref, res.err_ref)  # fmt: skip
        self.rt.check(status, res.err)
        n = int(res.n.value)
        return rows[:n], scores[:n]


def native_refine(codec: Codec, query: np.ndarray, frame: bytes, k: int,
                  runtime: NativeRuntime | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rescore an RPRF refinement frame's candidates with ``codec`` in the runtime (``rp_refine``): the ``k``
    best item ids (int64) and scores (float32), best first; ``k`` is capped at the frame's item count."""
    rt = runtime or load_runtime()
    native = _NativeCodec(rt, codec.to_bytes())
    raw = bytes(frame)
    buf = np.frombuffer(raw, np.uint8)
    parsed, err = _RefineFrame(), _Error()
    rt.check(rt.lib.rp_refine_frame_parse(_ptr(buf) if buf.size else None, buf.size, ctypes.byref(parsed), ctypes.byref(err)), err)
    q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
    if q.shape[0] != native.dim:
        raise DimensionMismatchError(f"query has {q.shape[0]} values, the codec {native.dim}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= MAX_K:
        raise InvalidKError(f"K must be an integer in 1..{MAX_K}, got {k!r}")
    kk = max(1, min(int(k), int(parsed.n_items)))
    ids, scores = np.empty(kk, np.int64), np.empty(kk, np.float32)
    n = ctypes.c_uint32(0)
    rt.check(rt.lib.rp_refine(native.handle, _ptr(q), ctypes.byref(parsed), kk, _ptr(ids), _ptr(scores),
                              ctypes.byref(n), ctypes.byref(err)), err)  # fmt: skip
    return ids[: n.value].copy(), scores[: n.value].copy()
