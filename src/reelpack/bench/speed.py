"""Single-core speed bench (``reelpack bench-speed``): reelpack's fused kernels and faiss on the same codes.

For each catalog size (default 100k and 1M items) and each code family, the bench
trains the faiss index once, takes faiss's own codes and parameters, and runs the
same queries through both:

====================  ===============================  =========================================
method                faiss index                      reelpack kernel (:mod:`reelpack.kernels.scan`)
====================  ===============================  =========================================
``flat``              ``IndexFlatIP``                  float32 GEMV (BLAS) + :func:`~reelpack.kernels.topk`
``pq16``              ``IndexPQ`` (16 x 8 bit)         :func:`~reelpack.kernels.scan.pq_search`
``pq32x4-fastscan``   ``IndexPQFastScan`` (32 x 4 bit) :func:`~reelpack.kernels.scan.fastscan_search`, ``exact=False``
``pq32x4-exact``      ``IndexPQ`` (32 x 4 bit)         :func:`~reelpack.kernels.scan.fastscan_search`, ``exact=True``
``sq8`` / ``sq4``     ``IndexScalarQuantizer``         :func:`~reelpack.kernels.scan.sq8_search` / ``sq4_search``
``binary128``         ``IndexBinaryFlat`` (Hamming)    :func:`~reelpack.kernels.scan.hamming_search`
``rabitq``            ``IndexRaBitQ`` (1 bit, own codes)  reelpack ``rabitq`` codec (own codes, 12 B)
``pq16-onnx``         reelpack's pq16 kernel           the exported ONNX model in onnxruntime (1 thread)
====================  ===============================  =========================================

In the ``pq16-onnx`` row the "faiss" columns hold reelpack's own fused pq16 kernel: the row compares
the portable ONNX scorer (:mod:`reelpack.search.onnx_export`, codes as a model input) with it.

"Same codes" is checked, not assumed: each row reports the overlap of the two
top-K lists (1.0 when the kernels agree). ``rabitq`` is the exception: faiss's
RaBitQ codes (bits + two float32 factors) and reelpack's (bits + two float16
factors) differ, so both encode the same vectors at the same bits per dimension.

Timing: every thread pool pinned to one thread; each query is timed alone
(``perf_counter`` around one call with one query), reelpack and faiss
alternating query by query so both see the same machine noise; median and p90
over ``n_queries`` after warm-up. Ratios (reelpack / faiss) are the figures to
quote. Also measured: decode throughput (100k codes to float32) and, in a fresh
subprocess, the peak memory of scoring a 1M-item pack read through a memmap
(``VmHWM`` growth after a reset, Linux). Phone latency figures are estimates
(:mod:`reelpack.bench.energy`), labelled ``est_``.

The catalog is synthetic (clustered Gaussian, unit norm; labelled so in the
results): speed does not depend on the data, and amazon-book has only 79k items.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from reelpack.util.memory import reset_peak_rss, status_kb
from reelpack.codecs.base import pack_state
from reelpack.codecs.registry import codec_from_bytes
from reelpack.errors import InvalidInputError
from reelpack.bench.energy import DEFAULT_DEVICE_MODEL, estimate_phone_ms, get_device_model
from reelpack.kernels import scan
from reelpack.search import make_scanner
from reelpack.kernels.simd import host_simd
from reelpack.kernels.topk import topk

__all__ = ["SpeedConfig", "SPEED_METHODS", "run_speed_bench", "speed_markdown", "synthetic_catalog", "memory_probe"]

SPEED_METHODS: tuple[str, ...] = (
    "flat", "pq16", "pq32x4-fastscan", "pq32x4-exact", "sq8", "sq4", "binary128", "rabitq", "pq16-onnx",
)  # fmt: skip
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SpeedConfig:
    """What one speed run measures.

    Attributes:
        sizes: catalog sizes (items).
        dim: vector dimension (must be divisible by 32 for pq32x4).
        n_queries: queries timed per method and size (each alone).
        k: top-K.
        methods: subset of :data:`SPEED_METHODS`.
        train_rows: rows used to train every codec.
        memory_check: measure peak memory of scoring the largest size from a memmapped pack.
        seed: data and training seed.
        device_model: preset of :mod:`reelpack.bench.energy` for the phone estimates.
        native: also time the C runtime (``libreelpack``, :mod:`reelpack.search.native`) on the same codes and
            queries, one thread, for the methods it implements (pq16, pq32x4-*, sq8, sq4, flat, rabitq); and its
            open + verify time and peak memory on the memmapped pack.
    """

    sizes: tuple[int, ...] = (100_000, 1_000_000)
    dim: int = 64
    n_queries: int = 200
    k: int = 50
    methods: tuple[str, ...] = SPEED_METHODS
    train_rows: int = 50_000
    memory_check: bool = True
    seed: int = 0
    device_model: str = DEFAULT_DEVICE_MODEL
    native: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in SPEED_METHODS]
        if unknown:
            raise InvalidInputError(f"unknown speed methods {unknown}; choose from {', '.join(SPEED_METHODS)}")
        if not self.sizes or min(self.sizes) < 1000 or max(self.sizes) > 50_000_000:
            raise InvalidInputError(f"sizes must be in 1,000..50,000,000 items, got {self.sizes}")
        if self.dim < 32 or self.dim % 32 or self.dim > 4096:
            raise InvalidInputError(f"dim must be a multiple of 32 in 32..4096, got {self.dim}")
        if not 1 <= self.n_queries <= 100_000:
            raise InvalidInputError(f"n_queries must be in 1..100000, got {self.n_queries}")
        if not 1 <= self.k <= min(self.sizes):
            raise InvalidInputError(f"k must be in 1..{min(self.sizes)}, got {self.k}")
        get_device_model(self.device_model)


def synthetic_catalog(n: int, dim: int, seed: int, n_clusters: int = 256) -> np.ndarray:
    """SYNTHETIC clustered catalog: float32 [n, dim], unit rows (cluster centre + noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 1 << 18
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = centres[rng.integers(0, n_clusters, m)] + 0.8 * rng.standard_normal((m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _limit_threads():
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    return threadpool_limits(limits=1)


def _timed_pair(
    ours: Callable[[np.ndarray], np.ndarray],
    theirs: Callable[[np.ndarray], np.ndarray] | None,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    native: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Time the callables one query at a time, alternating; medians, p90, top-K overlap, recall vs float32.

    ``native`` (the C runtime on the same codes) is timed in the same rotation when given."""
    for i in range(min(3, len(queries))):  # warm-up (JIT, caches)
        ours(queries[i : i + 1])
        if theirs is not None:
            theirs(queries[i : i + 1])
        if native is not None:
            native(queries[i : i + 1])
    t_ours, t_theirs, overlap, rec_ours, rec_theirs = [], [], [], [], []
    t_native, same_native = [], []
    k = exact_ids.shape[1]
    for i in range(len(queries)):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        a = ours(q)
        t1 = time.perf_counter()
        t_ours.append(t1 - t0)
        rec_ours.append(len(np.intersect1d(a[0], exact_ids[i])) / k)
        if theirs is not None:
            t2 = time.perf_counter()
            b = theirs(q)
            t_theirs.append(time.perf_counter() - t2)
            overlap.append(len(np.intersect1d(a[0], b[0])) / a.shape[1])
            rec_theirs.append(len(np.intersect1d(b[0], exact_ids[i])) / k)
        if native is not None:
            t3 = time.perf_counter()
            c = native(q)
            t_native.append(time.perf_counter() - t3)
            same_native.append(bool(np.array_equal(a[0], c[0])))
    out: dict[str, Any] = {
        "reelpack_ms": 1e3 * float(np.median(t_ours)),
        "reelpack_ms_p90": 1e3 * float(np.percentile(t_ours, 90)),
        "reelpack_recall_vs_float": float(np.mean(rec_ours)),
    }
    if theirs is not None:
        out.update(
            faiss_ms=1e3 * float(np.median(t_theirs)),
            faiss_ms_p90=1e3 * float(np.percentile(t_theirs, 90)),
            ratio=float(np.median(t_ours) / np.median(t_theirs)),
            overlap_vs_faiss=float(np.mean(overlap)),
            faiss_recall_vs_float=float(np.mean(rec_theirs)),
        )
    if native is not None:
        out.update(
            native_ms=1e3 * float(np.median(t_native)),
            native_ms_p90=1e3 * float(np.percentile(t_native, 90)),
            native_vs_numba=float(np.median(t_native) / np.median(t_ours)),
            native_same_ids=float(np.mean(same_native)),
        )
        if theirs is not None:
            out["native_vs_faiss"] = float(np.median(t_native) / np.median(t_theirs))
    return out


def _codec(spec: str, dim: int, arrays: dict[str, np.ndarray]):
    """A fitted reelpack codec built from (faiss-trained) parameters, validated like any loaded state."""
    return codec_from_bytes(pack_state(spec, dim, {}, arrays))


@dataclass
class _Prepared:
    """One method trained once; ``make(n)`` builds both sides for the first n items."""

    method: str
    bytes_per_item: float
    faiss_index: str
    kernel: str
    make: Callable[[int], tuple[Callable, Callable | None, float, float]]
    codec: Any = None
    codes: np.ndarray | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _prepare(method: str, X: np.ndarray, train: np.ndarray, k: int, seed: int) -> _Prepared:
    import faiss

    d = X.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    if method == "flat":

        def make(n: int):
            index = faiss.IndexFlatIP(d)
            index.add(X[:n])
            items = X[:n]
            return (lambda q: topk(q @ items.T, k)[0]), (lambda q: index.search(q, k)[1]), 0.0, 0.0

        return _Prepared(method, 4 * d, "IndexFlatIP", "float32 GEMV + topk", make)
    if method in ("pq16", "pq32x4-fastscan", "pq32x4-exact"):
        m, nbits = (16, 8) if method == "pq16" else (32, 4)
        pq = faiss.IndexPQ(d, m, nbits, ip)
        pq.pq.cp.seed = seed
        pq.train(train)
        codes = pq.sa_encode(X)
        centroids = faiss.vector_to_array(pq.pq.centroids).reshape(m, 1 << nbits, d // m)
        codec = _codec(f"pq{m}" + ("x4" if nbits == 4 else ""), d, {"centroids": centroids})

        def make(n: int):
            t0 = time.perf_counter()
            scanner = make_scanner(codec, codes[:n], exact=method != "pq32x4-fastscan")
            ours = lambda q: scanner.search(q, k)[0]  # noqa: E731
            prep = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = faiss.IndexPQ(d, m, nbits, ip)
            faiss.copy_array_to_vector(centroids.ravel(), index.pq.centroids)
            index.is_trained = True
            index.add_sa_codes(codes[:n])
            if method == "pq32x4-fastscan":
                index = faiss.IndexPQFastScan(index)
            return ours, (lambda q: index.search(q, k)[1]), prep, time.perf_counter() - t0

        if method == "pq16":
            kernel = "pq8-vbmi (uint8 tables in vpermi2b + exact rescoring)" if scan.HAS_VBMI else "pq8-scalar"
            name = "IndexPQ 16x8"
        elif method == "pq32x4-fastscan":
            kernel, name = _fs4_name() + " quantised (faiss semantics)", "IndexPQFastScan 32x4"
        else:
            kernel, name = _fs4_name() + " + exact rescoring", "IndexPQ 32x4"
        return _Prepared(method, codes.shape[1], name, kernel, make, codec, codes)
    if method in ("sq8", "sq4"):
        bits = 8 if method == "sq8" else 4
        qt = faiss.ScalarQuantizer.QT_8bit if bits == 8 else faiss.ScalarQuantizer.QT_4bit
        sq = faiss.IndexScalarQuantizer(d, qt, ip)
        sq.train(train)
        trained = faiss.vector_to_array(sq.sq.trained)
        vmin, vdiff = trained[:d], trained[d:]
        levels = (1 << bits) - 1
        lo = (vmin + 0.5 * vdiff / levels).astype(np.float32)  # faiss decodes x = vmin + (c + 0.5) / L * vdiff
        step = (vdiff / levels).astype(np.float32)
        codes = sq.sa_encode(X)
        codec = _codec(method, d, {"lo": lo, "step": step})
        fn = scan.sq8_search if bits == 8 else scan.sq4_search

        def make(n: int):
            index = faiss.IndexScalarQuantizer(d, qt, ip)
            faiss.copy_array_to_vector(trained, index.sq.trained)
            index.is_trained = True
            t0 = time.perf_counter()
            index.add_sa_codes(codes[:n])
            items = codes[:n]
            return (lambda q: fn(q, lo, step, items, k)[0]), (lambda q: index.search(q, k)[1]), 0.0, time.perf_counter() - t0

        return _Prepared(method, codes.shape[1], f"IndexScalarQuantizer QT_{bits}bit", f"sq{bits}-dot", make, codec, codes)
    if method == "pq16-onnx":
        from reelpack.search.onnx_export import OnnxScorer, export_onnx

        m = 16
        pq = faiss.IndexPQ(d, m, 8, ip)
        pq.pq.cp.seed = seed
        pq.train(train)
        codes = pq.sa_encode(X)
        centroids = faiss.vector_to_array(pq.pq.centroids).reshape(m, 256, d // m)
        codec = _codec("pq16", d, {"centroids": centroids})
        scorer = OnnxScorer(export_onnx(codec, k), threads=1)

        def make(n: int):
            items = codes[:n]
            scanner = make_scanner(codec, items)
            return (lambda q: scorer.search(q, items)[0]), (lambda q: scanner.search(q, k)[0]), 0.0, 0.0

        return _Prepared(method, 16, "reelpack pq16 kernel (in place of faiss)", "ONNX model, onnxruntime 1 thread",
                         make, codec, codes)  # fmt: skip
    if method == "binary128":
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((128, d)).astype(np.float32)
        codes = np.packbits(X @ proj.T > 0, axis=1)

        def make(n: int):
            index = faiss.IndexBinaryFlat(128)
            index.add(codes[:n])
            items = codes[:n]

            def ours(q):
                return scan.hamming_search(np.packbits(q @ proj.T > 0, axis=1), items, k)[0]

            def theirs(q):
                return index.search(np.packbits(q @ proj.T > 0, axis=1), k)[1]

            return ours, theirs, 0.0, 0.0

        return _Prepared(method, 16, "IndexBinaryFlat 128", "hamming-popcount", make, None, codes)
    if method == "rabitq":
        from reelpack.codecs import make_codec

        codec = make_codec("rabitq").fit(train, seed=seed)
        codes = codec.encode(X)
        findex = faiss.IndexRaBitQ(d, ip)
        findex.train(train)

        def make(n: int):
            t0 = time.perf_counter()
            scanner = make_scanner(codec, codes[:n])
            prep = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = faiss.IndexRaBitQ(d, ip)
            index.train(train)
            index.add(X[:n])
            return (lambda q: scanner.search(q, k)[0]), (lambda q: index.search(q, k)[1]), prep, time.perf_counter() - t0

        return _Prepared(
            method, codec.bytes_per_vector, f"IndexRaBitQ ({findex.code_size} B, own codes)",
            "rabitq-bitplane-8bit (own codes)", make, codec, codes,
            notes="own codes on each side: overlap measures agreement of two estimators, not identity",
        )  # fmt: skip
    raise InvalidInputError(f"unknown speed method {method!r}")


NATIVE_METHODS = ("flat", "pq16", "pq32x4-fastscan", "pq32x4-exact", "sq8", "sq4", "rabitq")


def _native_search(p: _Prepared, X: np.ndarray, n: int, k: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The C runtime's scanner on the method's codes (first ``n``), as ``q -> ids``; None where not implemented."""
    from reelpack.codecs import make_codec
    from reelpack.search.native import NativeScanner

    if p.method not in NATIVE_METHODS:
        return None
    if p.method == "flat":
        codec = make_codec("float32").fit(X[:16])
        codes = np.ascontiguousarray(X[:n]).view(np.uint8)
    else:
        codec, codes = p.codec, p.codes[:n]  # type: ignore[index]
    scanner = NativeScanner(codec, codes, exact=p.method != "pq32x4-fastscan")

    def search(q: np.ndarray) -> np.ndarray:
        return scanner.search(q, k)[0]

    search.kernel = scanner.kernel  # type: ignore[attr-defined]
    return search


def _fs4_name() -> str:
    if scan.FS4_WIDTH == 64:
        return "fs4-avx512 (vpshufb, 64-item blocks)"
    return "fs4-avx2 (vpshufb, 32-item blocks)" if scan.HAS_AVX2 else "fs4-portable"


def _decode_rows(prepared: dict[str, _Prepared], n: int) -> list[dict[str, Any]]:
    """Decode n codes to float32 with reelpack and with faiss's ``sa_decode`` (same codes)."""
    import faiss

    rows = []
    for method, spec, factory in (("pq16", "pq16", "PQ16np"), ("sq8", "sq8", "SQ8")):
        p = prepared.get(method)
        if p is None or p.codec is None:
            continue
        codes = p.codes[:n]
        d = p.codec.dim
        if method == "pq16":
            index = faiss.IndexPQ(d, 16, 8, faiss.METRIC_INNER_PRODUCT)
            faiss.copy_array_to_vector(p.codec.centroids.ravel(), index.pq.centroids)
        else:
            index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            vdiff = p.codec.step * 255.0
            trained = np.concatenate([p.codec.lo - 0.5 * p.codec.step, vdiff]).astype(np.float32)
            faiss.copy_array_to_vector(trained, index.sq.trained)
        index.is_trained = True
        ours_t, theirs_t = [], []
        ours = theirs = None
        for _ in range(5):
            t0 = time.perf_counter()
            ours = p.codec.decode(codes)
            t1 = time.perf_counter()
            theirs = index.sa_decode(codes)
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            theirs_t.append(t2 - t1)
        rows.append(
            {
                "method": f"decode {spec}",
                "n_items": n,
                "reelpack_ms": 1e3 * float(np.median(ours_t)),
                "faiss_ms": 1e3 * float(np.median(theirs_t)),
                "ratio": float(np.median(ours_t) / np.median(theirs_t)),
                "max_abs_diff_vs_faiss": float(np.abs(ours - theirs).max()),
                "output_mb_per_s": n * d * 4 / 1e6 / float(np.median(ours_t)),
                "faiss_index": f"{factory}.sa_decode",
            }
        )
    return rows


# ---- peak memory of scoring a memmapped pack (run in a fresh subprocess) --------------------------

def memory_probe(pack_path: str, k: int, n_queries: int, seed: int, backend: str = "numba") -> dict[str, Any]:
    """Open a pack through a memmap, build the fused scanner of layer 0, answer queries; report memory.

    ``backend="native"``: the C runtime maps the file, checks every CRC32C (open + verify, timed), and ranks
    through ``rp_pack_scanner``; the Python side only holds the queries.

    JIT compilation runs first on a tiny catalog; then the peak-RSS mark is reset
    (``/proc/self/clear_refs`` = 5) and ``VmHWM`` growth over the RSS at that moment
    is the figure: it counts the pack pages read (CRC check, scan), the scanner's
    prepared layout and every temporary.
    """
    from reelpack.format import PackReader

    if backend == "native":
        return _native_memory_probe(pack_path, k, n_queries, seed)
    rng = np.random.default_rng(seed)
    with PackReader(pack_path) as reader:
        codec = reader.codec(0)
        tiny = codec.encode(rng.standard_normal((2000, codec.dim)).astype(np.float32))
        make_scanner(codec, tiny).search(rng.standard_normal((1, codec.dim)).astype(np.float32), k)
    queries = rng.standard_normal((n_queries, codec.dim)).astype(np.float32)
    base_kb = reset_peak_rss()
    reset = base_kb is not None
    if base_kb is None:
        base_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    with PackReader(pack_path) as reader:
        codes = reader.layer_codes(0)  # CRC-checked, a view of the memmap
        is_view = isinstance(codes.base, np.memmap) or isinstance(codes, np.memmap) or not codes.flags.owndata
        scanner = make_scanner(reader.codec(0), codes)
        t1 = time.perf_counter()
        times = []
        for i in range(n_queries):
            s = time.perf_counter()
            scanner.search(queries[i : i + 1], k)
            times.append(time.perf_counter() - s)
        code_bytes = int(codes.nbytes)
        kernel = scanner.kernel
        prepared = scanner.prepared_bytes
    peak_kb = status_kb("VmHWM")
    out = {
        "pack": os.path.basename(pack_path),
        "spec": codec.spec,
        "n_items": int(code_bytes // codec.bytes_per_vector),
        "kernel": kernel,
        "codes_are_memmap_view": bool(is_view),
        "code_bytes": code_bytes,
        "prepared_bytes": int(prepared),
        "open_and_prepare_s": t1 - t0,
        "query_ms_median": 1e3 * float(np.median(times)),
        "peak_reset": reset,
    }
    if base_kb is not None and peak_kb is not None:
        growth = (peak_kb - base_kb) * 1024
        out.update(rss_base_bytes=base_kb * 1024, peak_growth_bytes=growth, limit_bytes=code_bytes + (64 << 20))
        out["within_limit"] = bool(growth < code_bytes + (64 << 20))
    return out


def _native_memory_probe(pack_path: str, k: int, n_queries: int, seed: int) -> dict[str, Any]:
    """:func:`memory_probe` through the C runtime (``libreelpack``)."""
    from reelpack.search.native import NativePack, load_runtime

    load_runtime()  # the library's own pages are not the ranking's memory
    rng = np.random.default_rng(seed)
    base_kb = reset_peak_rss()
    reset = base_kb is not None
    if base_kb is None:
        base_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    pack = NativePack(pack_path)
    report = pack.verify()
    t_verify = time.perf_counter()
    info = pack.layer_info(0)
    scanner = pack.scanner(0)
    t1 = time.perf_counter()
    queries = rng.standard_normal((n_queries, info.dim)).astype(np.float32)
    times = []
    for i in range(n_queries):
        s = time.perf_counter()
        scanner.search(queries[i], k)
        times.append(time.perf_counter() - s)
    peak_kb = status_kb("VmHWM")
    code_bytes = pack.n_items * info.bytes_per_vector
    out: dict[str, Any] = {
        "pack": os.path.basename(pack_path), "spec": info.spec, "n_items": pack.n_items, "kernel": scanner.kernel,
        "codes_are_memmap_view": True, "code_bytes": code_bytes, "prepared_bytes": scanner.prepared_bytes,
        "open_and_verify_ms": 1e3 * (t_verify - t0), "verify_clean": report["bad_blocks"] == 0,
        "open_and_prepare_s": t1 - t0, "query_ms_median": 1e3 * float(np.median(times)), "peak_reset": reset,
    }  # fmt: skip
    if base_kb is not None and peak_kb is not None:
        growth = (peak_kb - base_kb) * 1024
        out.update(rss_base_bytes=base_kb * 1024, peak_growth_bytes=growth, limit_bytes=code_bytes + (16 << 20))
        out["within_limit"] = bool(growth < code_bytes + (16 << 20))
    scanner.close()
    pack.close()
    return out


def _memory_rows(prepared: dict[str, _Prepared], n: int, k: int, seed: int, log: Callable[[str], None],
                 native: bool = False) -> list[dict]:  # fmt: skip
    from reelpack.format import write_pack

    rows = []
    with tempfile.TemporaryDirectory(prefix="reelpack-speed-") as tmp:
        for method in ("pq16", "pq32x4-exact", "sq8"):
            p = prepared.get(method)
            if p is None or p.codec is None or p.codes is None or p.codes.shape[0] < n:
                continue
            path = os.path.join(tmp, f"{method}.rpk")
            write_pack(path, np.arange(n, dtype=np.int64), [(p.codec, p.codes[:n])], items_per_block=4096)
            for backend in ("numba", "native") if native else ("numba",):
                log(f"memory probe: {method}, {n:,} items from a memmapped pack ({backend})")
                proc = subprocess.run(
                    [sys.executable, "-m", "reelpack.bench.speed", "--probe", path, str(k), "20", str(seed), backend],
                    capture_output=True, text=True, timeout=900,
                )  # fmt: skip
                name = method if backend == "numba" else f"{method} (C runtime)"
                if proc.returncode != 0:
                    rows.append({"method": name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]})
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["method"] = name
                row["pack_file_bytes"] = os.path.getsize(path)
                rows.append(row)
    return rows


def run_speed_bench(config: SpeedConfig = SpeedConfig(), log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the speed bench; return a JSON-able dict (``rows``, ``decode``, ``memory``, ``provenance``)."""
    log = log or (lambda msg: None)
    model = get_device_model(config.device_model)
    n_max = max(config.sizes)
    started = _dt.datetime.now(_dt.timezone.utc)
    log(f"synthetic catalog: {n_max:,} x {config.dim}")
    X = synthetic_catalog(n_max, config.dim, config.seed)
    queries = synthetic_catalog(config.n_queries, config.dim, config.seed + 1)
    rng = np.random.default_rng(config.seed)
    train = X[np.sort(rng.choice(n_max, min(config.train_rows, n_max), replace=False))]
    rows: list[dict[str, Any]] = []
    prepared: dict[str, _Prepared] = {}
    with _limit_threads():
        for method in config.methods:
            log(f"train + encode {method}")
            t0 = time.perf_counter()
            prepared[method] = _prepare(method, X, train, config.k, config.seed)
            prepared[method].extra["train_encode_s"] = time.perf_counter() - t0
        for n in sorted(config.sizes):
            exact_ids = np.concatenate([topk(queries[s : s + 50] @ X[:n].T, config.k)[0] for s in range(0, len(queries), 50)])
            for method in config.methods:
                p = prepared[method]
                log(f"{method}: {n:,} items, {config.n_queries} single queries")
                ours, theirs, prep_s, build_s = p.make(n)
                native = _native_search(p, X, n, config.k) if config.native else None
                timing = _timed_pair(ours, theirs, queries, exact_ids, native)
                row = {
                    "method": method,
                    "n_items": n,
                    "bytes_per_item": p.bytes_per_item,
                    "reelpack_kernel": p.kernel,
                    "faiss_index": p.faiss_index,
                    **timing,
                    "reelpack_prepare_s": prep_s,
                    "faiss_build_s": build_s,
                    "train_encode_s": p.extra["train_encode_s"],
                    "est_phone_ms": estimate_phone_ms(timing["reelpack_ms"], model),
                }
                if native is not None:
                    row["native_kernel"] = getattr(native, "kernel", "")
                if p.notes:
                    row["notes"] = p.notes
                rows.append(row)
        decode = _decode_rows(prepared, min(config.sizes))
    memory = _memory_rows(prepared, n_max, config.k, config.seed, log, config.native) if config.memory_check else []
    import faiss

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "speed",
        "rows": rows,
        "decode": decode,
        "memory": memory,
        "provenance": {
            "command": " ".join(sys.argv),
            "config": asdict(config),
            "data": f"SYNTHETIC clustered Gaussian catalog (256 clusters, unit norm), seed {config.seed}",
            "started_utc": started.isoformat(timespec="seconds"),
            "seconds": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "versions": {"numpy": np.__version__, "faiss": faiss.__version__, "numba": __import__("numba").__version__},
            "simd": host_simd(),
            "native_runtime": _native_provenance() if config.native else None,
            "threads": 1,
            "device_model": model.to_dict(),
            "estimates": "est_* fields are phone estimates (docs/ENERGY.md), not measurements",
        },
    }


def _native_provenance() -> dict[str, Any]:
    from reelpack.search.native import load_runtime

    rt = load_runtime()
    return {"library": rt.path.name, "version": rt.version, "kernel": rt.kernel}


def speed_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a :func:`run_speed_bench` result."""
    lines = [
        "| method | items | B/item | reelpack kernel | faiss index | reelpack ms | faiss ms | ratio | p90 ours / faiss | "
        "top-K overlap | recall vs float32 ours / faiss | est. phone ms |",
        "|---|---:|---:|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in result["rows"]:
        faiss_ms = f"{r['faiss_ms']:.3f}" if "faiss_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        p90 = f"{r['reelpack_ms_p90']:.3f} / {r['faiss_ms_p90']:.3f}" if "faiss_ms_p90" in r else "-"
        ov = f"{r['overlap_vs_faiss']:.3f}" if "overlap_vs_faiss" in r else "-"
        rec = f"{r['reelpack_recall_vs_float']:.3f} / " + (f"{r['faiss_recall_vs_float']:.3f}" if "faiss_recall_vs_float" in r else "-")
        lines.append(
            f"| {r['method']} | {r['n_items']:,} | {r['bytes_per_item']:g} | {r['reelpack_kernel']} | {r['faiss_index']} | "
            f"{r['reelpack_ms']:.3f} | {faiss_ms} | {ratio} | {p90} | {ov} | {rec} | {r['est_phone_ms']:.2f} |"
        )
    native_rows = [r for r in result["rows"] if "native_ms" in r]
    if native_rows:
        lines += ["", "C runtime (`libreelpack`, same codes and queries, one thread, timed in the same rotation):", "",
                  "| method | items | C kernel | C ms | numba ms | faiss ms | C / numba | C / faiss | same top-K ids as numba |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in native_rows:
            faiss_ms = f"{r['faiss_ms']:.3f}" if "faiss_ms" in r else "-"
            vs_faiss = f"{r['native_vs_faiss']:.2f}" if "native_vs_faiss" in r else "-"
            lines.append(
                f"| {r['method']} | {r['n_items']:,} | {r.get('native_kernel', '')} | {r['native_ms']:.3f} | "
                f"{r['reelpack_ms']:.3f} | {faiss_ms} | {r['native_vs_numba']:.2f} | {vs_faiss} | {r['native_same_ids']:.3f} |"
            )
    if result.get("decode"):
        lines += ["", "| decode | items | reelpack ms | faiss sa_decode ms | ratio | MB/s out | max abs diff |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["decode"]:
            lines.append(
                f"| {r['method']} | {r['n_items']:,} | {r['reelpack_ms']:.2f} | {r['faiss_ms']:.2f} | {r['ratio']:.2f} | "
                f"{r['output_mb_per_s']:.0f} | {r['max_abs_diff_vs_faiss']:.1e} |"
            )
    if result.get("memory"):
        lines += ["", "| memmapped pack | items | kernel | code MB | peak RSS growth MB | limit MB (codes + 64 MB; C: + 16 MB) "
                  "| within | query ms | open + verify ms |",
                  "|---|---:|---|---:|---:|---:|---|---:|---:|"]  # fmt: skip
        for r in result["memory"]:
            if "error" in r:
                lines.append(f"| {r['method']} | - | error: {r['error']} | | | | | | |")
                continue
            lines.append(
                f"| {r['method']} | {r['n_items']:,} | {r['kernel']} | {r['code_bytes'] / 2**20:.1f} | "
                f"{r.get('peak_growth_bytes', float('nan')) / 2**20:.1f} | {r.get('limit_bytes', 0) / 2**20:.0f} | "
                f"{r.get('within_limit')} | {r['query_ms_median']:.3f} | "
                + (f"{r['open_and_verify_ms']:.2f} |" if "open_and_verify_ms" in r else "- |")
            )
    prov = result["provenance"]
    lines += ["", f"Data: {prov['data']}. SIMD: {prov['simd']}. One thread everywhere. "
              "est. phone ms = measured x core_speed_ratio of the device model (an estimate, docs/ENERGY.md)."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":  # the memory probe's subprocess entry
    if len(sys.argv) in (6, 7) and sys.argv[1] == "--probe":
        from threadpoolctl import threadpool_limits

        probe_backend = sys.argv[6] if len(sys.argv) == 7 else "numba"
        with threadpool_limits(limits=1):
            print(json.dumps(memory_probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), probe_backend)))
    else:  # pragma: no cover
        sys.exit("usage: python -m reelpack.bench.speed --probe PACK K N_QUERIES SEED [numba|native]")
