"""Hierarchical (edge + cloud) retrieval: a device summary within a byte budget, a per-request local-vs-cloud
decision by calibrated score bounds, the merge of both answers, and a local fallback when the cloud is down.

Roles
-----
* **Cloud** (:class:`EdgeCatalog`, built once per catalog version): IVF coarse clusters of every item (faiss
  k-means on the float32 vectors, ``nlist`` centroids), the per-cluster radius ``r_c = max |x - c|`` over the
  cluster's items (computed against the float16 centroid the device gets, rounded up to float16), and compact
  codes of every item (``codec``, default ``"sq8"``). It also holds the full-precision HNSW index
  (:class:`~reelpack.catalog.ann.HNSWIndex`, served by ``POST /v1/retrieve``); :class:`ServiceCloud` calls that
  endpoint, any callable ``cloud(q, k) -> (ids, scores)`` works too.
* **Device** (:class:`DeviceSummary`, made by :meth:`EdgeCatalog.summary_for` for one user vector ``u``): ALL
  centroids (float16) and radii (float16), plus the ids and codes of the items of the clusters nearest ``u``
  (clusters taken in order of decreasing ``u . c`` while the whole serialised summary stays within
  ``budget_bytes``). The summary's size is ``len(summary.to_bytes())``: everything the device stores for it.

Decision (:meth:`EdgeRetriever.retrieve`, one request = one query vector ``q`` and ``k``)
-------------------------------------------------------------------------------------------
The device scores its local items with the codec, takes the local top-``k`` and its ``k``-th score ``s_k``, and
computes the *frontier* ``F = max over clusters c NOT on the device of (q . c + lam * |q| * r_c)``.

* ``policy="bound"`` (default): answer locally iff ``s_k >= F``. With ``lam = 1`` this is a guarantee (every
  item ``x`` of an absent cluster has ``q . x <= q . c + |q| r_c``, so no absent item beats the local ``k``-th;
  exact up to the codec's score error). On real 64-d embeddings the radii are large (~0.9 on unit vectors),
  so ``lam = 1`` almost never answers locally; ``lam < 1`` (stored in the summary, default 0.35) is a
  *calibrated* bound: an absent item would need its residual to point along ``q`` with more than ``lam`` of
  the cluster's radius. Choose ``lam`` on held-out users (benchmarks/hierarchical.py reports the trade-off).
* ``policy="coverage"``: answer locally iff the ``nprobe`` clusters with the largest ``q . c`` are all on the
  device (an IVF-style coverage rule).

Otherwise the device asks the cloud for the top-``k`` and merges: the union of cloud and local answers, each id
once (the cloud's full-precision score wins for ids in both), sorted by score, top ``k``. When the cloud fails
(unreachable, timeout, HTTP error, malformed answer) the result is the local top-``k`` with ``fallback=True``
and the reason in ``reason``: never an exception.

In the serving system: ``build_catalog(..., edge=True)`` (``reelpack build-catalog --edge``) stores the version's
:class:`EdgeCatalog` as ``edge.rpec`` (:meth:`EdgeCatalog.save` / :meth:`EdgeCatalog.load`, CRC32C-checked);
the service answers ``GET /v1/catalogs/{catalog}/versions/{version}/edge-summary?user_id=U&budget_bytes=B``
with a summary cut for that user's stored vector, and
:meth:`reelpack.device.client.PhoneClient.edge_retriever` downloads and caches it and returns an
:class:`EdgeRetriever` whose cloud is :class:`ServiceCloud` over the client's HTTP connection.

Serialised summary (little-endian; :meth:`DeviceSummary.to_bytes`)::

    b"RPES" | u16 format version (1) | u16 id width (4 or 8) | u32 dim | u32 nlist | u32 n_local clusters |
    u32 n_items | u32 bytes_per_vector | u64 catalog version | 8 bytes catalog fingerprint | f32 lam |
    u32 codec length |
    float16 centroids [nlist, dim] | float16 radii [nlist] | u32 local cluster ids [n_local] |
    u32 items per local cluster [n_local] | codec.to_bytes() | ids (u32 or i64) [n_items] |
    codes u8 [n_items, bytes_per_vector] | u32 CRC32C of all previous bytes

Items are grouped by local cluster in the order of the cluster list. The catalog fingerprint is the first
8 bytes of SHA-256 over the catalog's ids, centroids and codes: a summary checked against a catalog
(:meth:`DeviceSummary.check_catalog`) must carry the same dimension, version and fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.util.ids import check_item_ids
from reelpack.util.validate import as_float_matrix
from reelpack.codecs import Codec
from reelpack.codecs.registry import codec_from_bytes, make_codec
from reelpack.errors import (
    DataNotFoundError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    SerializationError,
)
from reelpack.format import crc32c

__all__ = [
    "EdgeCatalog",
    "check_lam",
    "DeviceSummary",
    "EDGE_MAGIC",
    "CATALOG_MAGIC",
    "EDGE_FORMAT_VERSION",
    "DEFAULT_LAMBDA",
]

EDGE_MAGIC = b"RPES"
EDGE_FORMAT_VERSION = 1
DEFAULT_LAMBDA = 0.35
_HEAD = struct.Struct("<4sHHIIIIIQ8sfI")
CATALOG_MAGIC = b"RPEC"
_CAT_HEAD = struct.Struct("<4sHHIIQIQ8sI")
_MAX_NLIST = 1 << 20
_MAX_DIM = 1 << 16


def _fp16_up(x: np.ndarray) -> np.ndarray:
    """float16 values >= ``x`` (float32 [n], finite, >= 0): rounded, then bumped one ulp where rounding went down."""
    h = x.astype(np.float16)
    low = h.astype(np.float32) < x
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h


def _fingerprint(ids: np.ndarray, centroids16: np.ndarray, codes: np.ndarray) -> bytes:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(ids, "<i8"), np.ascontiguousarray(centroids16, "<f2"), np.ascontiguousarray(codes)):
        h.update(a.tobytes())
    return h.digest()[:8]


def check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"lam must be a number in [0, 4], got {lam!r}")
    if not 0.0 <= float(lam) <= 4.0:
        raise InvalidInputError(f"lam must be in [0, 4] (1 = guaranteed ball bound), got {lam!r}")
    return float(lam)


# ---- parsing helpers shared by DeviceSummary.from_bytes and EdgeCatalog.from_bytes --------------------
def _open_frame(data: bytes, head: struct.Struct, magic: bytes, what: str) -> tuple[Any, ...]:
    """Check the minimum length, magic and format version of a serialised ``what``; returns the header fields.

    Raises:
        SerializationError: too short, bad magic or another format version.
    """
    if len(data) < head.size + 4:
        raise SerializationError(f"{what} is {len(data)} bytes, shorter than its {head.size + 4}-byte minimum")
    fields = head.unpack_from(data, 0)
    if fields[0] != magic:
        raise SerializationError(f"{what} magic is {fields[0]!r}, expected {magic!r}")
    if fields[1] != EDGE_FORMAT_VERSION:
        raise SerializationError(f"{what} format version {fields[1]}, this reelpack reads {EDGE_FORMAT_VERSION}")
    return fields


def _check_length_crc(data: bytes, expected: int, what: str) -> None:
    """Raise SerializationError unless ``data`` is ``expected`` bytes long and its trailing CRC32C matches."""
    if len(data) != expected:
        raise SerializationError(f"{what} header implies {expected} bytes, got {len(data)}")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if crc32c(data[:-4]) != crc:
        raise SerializationError(f"{what} CRC32C mismatch")


class _Reader:
    """Sequential little-endian array reads from ``data`` starting at ``off``."""

    def __init__(self, data: bytes, off: int) -> None:
        self.data, self.off = data, off

    def take(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.off)
        self.off += arr.nbytes
        return arr

    def raw(self, n: int) -> bytes:
        out = self.data[self.off : self.off + n]
        self.off += n
        return out

    def centroids_radii(self, nlist: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """float16 centroids [nlist, dim] and radii [nlist] (copies)."""
        return self.take("<f2", nlist * dim).reshape(nlist, dim).copy(), self.take("<f2", nlist).copy()


def _check_centroids_radii(centroids: np.ndarray, radii: np.ndarray, what: str) -> None:
    if not (np.isfinite(centroids).all() and np.isfinite(radii).all() and (radii >= 0).all()):
        raise SerializationError(f"{what} centroids or radii are not finite / non-negative")


def _parse_codec(codec_bytes: bytes, dim: int, bpv: int, what: str) -> Codec:
    """The codec of ``codec_bytes``; SerializationError unless it has ``dim`` and ``bpv`` bytes per vector."""
    codec = codec_from_bytes(codec_bytes)
    if codec.dim != dim or codec.bytes_per_vector != bpv:
        raise SerializationError(
            f"{what} codec has dim {codec.dim} and {codec.bytes_per_vector} bytes per vector, "
            f"the header says {dim} and {bpv}"
        )
    return codec


# ================================================================================================
# Device summary
# ================================================================================================
@dataclass(frozen=True)
class DeviceSummary:
    """What the device stores: all coarse centroids and radii, plus the codes of the clusters nearest its user.

    Attributes:
        dim: vector dimension d.
        catalog_version: catalog version the summary was cut from.
        fingerprint: 8 bytes identifying the catalog content (see the module docstring).
        lam: radius multiplier of the ``"bound"`` decision rule.
        centroids: float16 [nlist, d].
        radii: float16 [nlist], ``>= max |x - c|`` over each cluster's items.
        clusters: int64 [n_local], the clusters on the device, in the order they were chosen.
        counts: int64 [n_local], items of each local cluster.
        ids: int64 [n_items] item ids, grouped by local cluster.
        codes: uint8 [n_items, bytes_per_vector].
        codec: the fitted codec of ``codes``.
    """

    dim: int
    catalog_version: int
    fingerprint: bytes
    lam: float
    centroids: np.ndarray
    radii: np.ndarray
    clusters: np.ndarray
    counts: np.ndarray
    ids: np.ndarray
    codes: np.ndarray
    codec: Codec

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the device stores (the length of :meth:`to_bytes`)."""
        return len(self.to_bytes())

    def local_mask(self) -> np.ndarray:
        """bool [nlist]: which clusters are on the device."""
        m = np.zeros(self.nlist, dtype=bool)
        m[self.clusters] = True
        return m

    # ---- bytes -------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The serialised summary (layout in the module docstring)."""
        codec_bytes = self.codec.to_bytes()
        wide = self.ids.size > 0 and int(self.ids.max()) >= 2**32
        id_width = 8 if wide else 4
        head = _HEAD.pack(
            EDGE_MAGIC, EDGE_FORMAT_VERSION, id_width, self.dim, self.nlist, self.clusters.size, self.n_items,
            self.codec.bytes_per_vector, self.catalog_version, self.fingerprint, self.lam, len(codec_bytes),
        )  # fmt: skip
        body = b"".join((
            head,
            np.ascontiguousarray(self.centroids, "<f2").tobytes(),
            np.ascontiguousarray(self.radii, "<f2").tobytes(),
            np.ascontiguousarray(self.clusters, "<u4").tobytes(),
            np.ascontiguousarray(self.counts, "<u4").tobytes(),
            codec_bytes,
            np.ascontiguousarray(self.ids, "<i8" if wide else "<u4").tobytes(),
            np.ascontiguousarray(self.codes, np.uint8).tobytes(),
        ))  # fmt: skip
        return body + struct.pack("<I", crc32c(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceSummary:
        """Parse and check a serialised summary.

        Raises:
            SerializationError: bad magic, another format version, a length that does not match the header,
                inconsistent cluster lists, non-finite or negative values, or a CRC32C mismatch.
        """
        data = bytes(data)
        what = "device summary"
        (_, _, id_width, dim, nlist, n_local, n_items, bpv, cat_version, fp, lam,
         codec_len) = _open_frame(data, _HEAD, EDGE_MAGIC, what)  # fmt: skip
        if id_width not in (4, 8) or not 1 <= dim <= _MAX_DIM or not 1 <= nlist <= _MAX_NLIST or n_local > nlist:
            raise SerializationError(
                f"device summary header is inconsistent: id width {id_width}, dim {dim}, nlist {nlist}, "
                f"{n_local} local clusters"
            )
        expected = (_HEAD.size + 2 * nlist * dim + 2 * nlist + 8 * n_local + codec_len
                    + n_items * (id_width + bpv) + 4)  # fmt: skip
        _check_length_crc(data, expected, what)
        r = _Reader(data, _HEAD.size)
        centroids, radii = r.centroids_radii(nlist, dim)
        clusters = r.take("<u4", n_local).astype(np.int64)
        counts = r.take("<u4", n_local).astype(np.int64)
        codec_bytes = r.raw(codec_len)
        ids = r.take("<i8" if id_width == 8 else "<u4", n_items).astype(np.int64)
        codes = r.take("u1", n_items * bpv).reshape(n_items, bpv).copy()
        _check_centroids_radii(centroids, radii, what)
        if not np.isfinite(lam) or not 0.0 <= lam <= 4.0:
            raise SerializationError(f"device summary lam is {lam}, expected a value in [0, 4]")
        if (clusters >= nlist).any() or np.unique(clusters).size != n_local or int(counts.sum()) != n_items:
            raise SerializationError("device summary cluster list is inconsistent with nlist or the item count")
        check_item_ids(ids, what=f"{what} item ids", allow_empty=True, error=SerializationError)
        codec = _parse_codec(codec_bytes, dim, bpv, what)
        return cls(dim, int(cat_version), bytes(fp), float(lam), centroids, radii, clusters, counts, ids, codes, codec)

    def check_catalog(self, dim: int, catalog_version: int, fingerprint: bytes | None = None) -> None:
        """Refuse a summary cut from another catalog.

        Raises:
            DimensionMismatchError: another dimension. InvalidInputError: another version or fingerprint.
        """
        if dim != self.dim:
            raise DimensionMismatchError(f"device summary has dim {self.dim}, the catalog has dim {dim}")
        if catalog_version != self.catalog_version:
            raise InvalidInputError(
                f"device summary is for catalog version {self.catalog_version}, the catalog is version "
                f"{catalog_version}: build a new summary"
            )
        if fingerprint is not None and bytes(fingerprint) != self.fingerprint:
            raise InvalidInputError(
                f"device summary fingerprint {self.fingerprint.hex()} does not match the catalog's "
                f"{bytes(fingerprint).hex()}: it was cut from another catalog"
            )

    # ---- search ------------------------------------------------------------------------------------
    def local_top_k(self, q: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Local top-``k`` by codec score: (ids int64 [<=k], scores float32 [<=k]), best first.

        Args:
            q: float32 [d]; k: >= 1; exclude: optional int64 item ids never returned (e.g. items already seen).
            Fewer than ``k`` results when fewer items are local.
        """
        s = np.asarray(self.codec.score(q[None, :], self.codes)[0], dtype=np.float32) if self.n_items else None
        if s is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if exclude is not None and len(exclude):
            s = np.where(np.isin(self.ids, exclude), np.float32(-np.inf), s)
        kk = min(k, int(np.isfinite(s).sum()))
        if kk == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        part = np.argpartition(-s, kk - 1)[:kk]
        order = part[np.argsort(-s[part], kind="stable")]
        return self.ids[order], s[order]

    def frontier(self, q: np.ndarray, lam: float | None = None) -> float:
        """``max over absent clusters of q . c + lam |q| r_c`` (``-inf`` when every cluster is local)."""
        lam = self.lam if lam is None else check_lam(lam)
        absent = ~self.local_mask()
        if not absent.any():
            return float("-inf")
        c = self.centroids[absent].astype(np.float32)
        ub = c @ q + np.float32(lam) * np.float32(np.linalg.norm(q)) * self.radii[absent].astype(np.float32)
        return float(ub.max())

    def covered(self, q: np.ndarray, nprobe: int) -> bool:
        """Whether the ``nprobe`` clusters with the largest ``q . c`` are all on the device."""
        qc = self.centroids.astype(np.float32) @ q
        p = min(int(nprobe), self.nlist)
        top = np.argpartition(-qc, p - 1)[:p]
        return bool(self.local_mask()[top].all())


# ================================================================================================
# Cloud-side catalog (builds summaries)
# ================================================================================================
class EdgeCatalog:
    """Coarse clusters and compact codes of a whole catalog, from which :meth:`summary_for` cuts device summaries.

    Attributes:
        dim, catalog_version: as given to :meth:`build`.
        centroids: float16 [nlist, d]; radii: float16 [nlist]; assign: int64 [n] cluster of each item;
        ids: int64 [n]; codes: uint8 [n, B]; codec: fitted codec; fingerprint: 8 bytes.
    """

    def __init__(self, centroids: np.ndarray, radii: np.ndarray, assign: np.ndarray, ids: np.ndarray,
                 codes: np.ndarray, codec: Codec, catalog_version: int) -> None:  # fmt: skip
        self.centroids, self.radii, self.assign = centroids, radii, assign
        self.ids, self.codes, self.codec = ids, codes, codec
        self.catalog_version = int(catalog_version)
        self.dim = int(centroids.shape[1])
        self.fingerprint = _fingerprint(ids, centroids, codes)
        order = np.argsort(assign, kind="stable")
        self._order = order  # item rows grouped by cluster
        self._starts = np.searchsorted(assign[order], np.arange(centroids.shape[0] + 1))
        codec_len = len(codec.to_bytes())
        self.fixed_bytes = _HEAD.size + 2 * centroids.size + 2 * centroids.shape[0] + codec_len + 4
        self._id_width = 8 if ids.size and int(ids.max()) >= 2**32 else 4

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        nlist: int = 1024,
        codec: str = "sq8",
        catalog_version: int = 1,
        seed: int = 0,
        niter: int = 20,
    ) -> EdgeCatalog:
        """Cluster and encode a catalog.

        Args:
            vectors: float32 [n, d] item vectors (finite); ids: unique non-negative int64 [n].
            nlist: coarse clusters, 1..n (faiss k-means, ``niter`` iterations, ``seed``).
            codec: codec spec of the device codes (fitted on all ``vectors`` with ``seed``).
            catalog_version: the catalog version the summaries will carry (>= 1).
        """
        import faiss


        X = as_float_matrix(vectors, "vectors")
        if X.shape[0] == 0:
            raise EmptyInputError("vectors is empty")
        key_ids = check_item_ids(ids, what="ids", n=X.shape[0])
        top = min(X.shape[0], _MAX_NLIST)
        if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= top:
            raise InvalidInputError(f"nlist must be an integer in 1..{top}, got {nlist!r}")
        if isinstance(catalog_version, bool) or not isinstance(catalog_version, (int, np.integer)) \
                or catalog_version < 1:
            raise InvalidInputError(f"catalog_version must be an integer >= 1, got {catalog_version!r}")
        km = faiss.Kmeans(X.shape[1], int(nlist), niter=int(niter), seed=int(seed), verbose=False)
        km.train(X)
        c16 = km.centroids.astype(np.float16)
        c32 = c16.astype(np.float32)
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(c32)
        _, a = index.search(X, 1)
        assign = a[:, 0].astype(np.int64)
        res = np.linalg.norm(X - c32[assign], axis=1).astype(np.float32)
        rad = np.zeros(int(nlist), np.float32)
        np.maximum.at(rad, assign, res)
        fitted = make_codec(codec).fit(X, seed=int(seed))
        codes = fitted.encode(X)
        return cls(c16, _fp16_up(rad), assign, key_ids, codes, fitted, int(catalog_version))

    def item_bytes(self) -> int:
        """Bytes one item costs in a summary (id + code)."""
        return self._id_width + self.codec.bytes_per_vector

    def min_budget(self, user_vector: np.ndarray) -> int:
        """Smallest ``budget_bytes`` :meth:`summary_for` accepts for ``user_vector`` (float [d]): the fixed part
        plus the cluster with the largest ``u . c``."""
        q = as_float_matrix(np.asarray(user_vector).reshape(1, -1), "user_vector", dim=self.dim)[0]
        best = int(np.argmax(self.centroids.astype(np.float32) @ q))
        return int(self.fixed_bytes + 8 + (self._starts[best + 1] - self._starts[best]) * self.item_bytes())

    # ---- bytes (the ``edge.rpec`` file of a catalog version) ---------------------------------------
    def to_bytes(self) -> bytes:
        """The serialised catalog (little-endian)::

            b"RPEC" | u16 format version (1) | u16 0 | u32 dim | u32 nlist | u64 n | u32 bytes_per_vector |
            u64 catalog version | 8 bytes fingerprint | u32 codec length |
            float16 centroids [nlist, dim] | float16 radii [nlist] | u32 assign [n] | i64 ids [n] |
            codec.to_bytes() | codes u8 [n, bytes_per_vector] | u32 CRC32C of all previous bytes
        """
        codec_bytes = self.codec.to_bytes()
        head = _CAT_HEAD.pack(CATALOG_MAGIC, EDGE_FORMAT_VERSION, 0, self.dim, self.nlist, self.ids.shape[0],
                              self.codec.bytes_per_vector, self.catalog_version, self.fingerprint,
                              len(codec_bytes))  # fmt: skip
        body = b"".join((
            head,
            np.ascontiguousarray(self.centroids, "<f2").tobytes(),
            np.ascontiguousarray(self.radii, "<f2").tobytes(),
            np.ascontiguousarray(self.assign, "<u4").tobytes(),
            np.ascontiguousarray(self.ids, "<i8").tobytes(),
            codec_bytes,
            np.ascontiguousarray(self.codes, np.uint8).tobytes(),
        ))  # fmt: skip
        return body + struct.pack("<I", crc32c(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> EdgeCatalog:
        """Parse and check :meth:`to_bytes` output.

        Raises:
            SerializationError: bad magic or format version, a length that does not match the header, a CRC32C
                mismatch, cluster assignments out of range, non-unique or negative ids, non-finite or negative
                centroids/radii, a codec of another shape, or a fingerprint that does not match the content.
        """
        data = bytes(data)
        what = "edge catalog"
        _, _, _, dim, nlist, n, bpv, cat_version, fp, codec_len = _open_frame(data, _CAT_HEAD, CATALOG_MAGIC, what)
        if not 1 <= dim <= _MAX_DIM or not 1 <= nlist <= min(n, _MAX_NLIST) or cat_version < 1:
            raise SerializationError(
                f"edge catalog header is inconsistent: dim {dim}, nlist {nlist}, {n} items, version {cat_version}"
            )
        expected = _CAT_HEAD.size + 2 * nlist * dim + 2 * nlist + 12 * n + codec_len + n * bpv + 4
        _check_length_crc(data, expected, what)
        r = _Reader(data, _CAT_HEAD.size)
        centroids, radii = r.centroids_radii(nlist, dim)
        assign = r.take("<u4", n).astype(np.int64)
        ids = r.take("<i8", n).astype(np.int64)
        codec_bytes = r.raw(codec_len)
        codes = r.take("u1", n * bpv).reshape(n, bpv).copy()
        _check_centroids_radii(centroids, radii, what)
        if (assign >= nlist).any():
            raise SerializationError(f"edge catalog assigns items to clusters >= nlist {nlist}")
        check_item_ids(ids, what=f"{what} item ids", allow_empty=True, error=SerializationError)
        codec = _parse_codec(codec_bytes, dim, bpv, what)
        cat = cls(centroids, radii, assign, ids, codes, codec, int(cat_version))
        if cat.fingerprint != bytes(fp):
            raise SerializationError("edge catalog fingerprint does not match its ids, centroids and codes")
        return cat

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_bytes` to ``path`` atomically (temp file, fsync, rename); returns the path."""
        from reelpack.util.atomic import atomic_write_bytes

        return Path(atomic_write_bytes(path, self.to_bytes()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EdgeCatalog:
        """Read a file written by :meth:`save` (SerializationError when it fails its checks, DataNotFoundError
        when it is missing)."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise DataNotFoundError(f"edge catalog {path} does not exist") from None
        except OSError as exc:
            raise SerializationError(f"cannot read edge catalog {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(data)

    def summary_for(self, user_vector: np.ndarray, budget_bytes: int, *, lam: float = DEFAULT_LAMBDA) -> DeviceSummary:
        """The device summary for ``user_vector`` (float [d]) within ``budget_bytes``.

        Clusters are added in order of decreasing ``u . c`` while the serialised summary stays within the
        budget (the first cluster that does not fit ends the list).

        Raises:
            DimensionMismatchError: ``user_vector`` has another dimension.
            InvalidInputError: ``budget_bytes`` does not hold the centroids, radii, codec and the nearest cluster
                (the message gives that minimum).
        """
        q = as_float_matrix(np.asarray(user_vector).reshape(1, -1), "user_vector", dim=self.dim)[0]
        lam = check_lam(lam)
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)):
            raise InvalidInputError(f"budget_bytes must be an integer, got {budget_bytes!r}")
        order = np.argsort(-(self.centroids.astype(np.float32) @ q), kind="stable")
        sizes = np.diff(self._starts)[order]
        cost = self.fixed_bytes + np.cumsum(8 + sizes * self.item_bytes())
        n_local = int(np.searchsorted(cost, int(budget_bytes), side="right"))
        if n_local == 0:
            raise InvalidInputError(
                f"budget of {budget_bytes} bytes is too small: the centroids, radii and codec take "
                f"{self.fixed_bytes} bytes and the nearest cluster needs {int(cost[0])} bytes in all"
            )
        chosen = order[:n_local]
        rows = np.concatenate([self._order[self._starts[c] : self._starts[c + 1]] for c in chosen])
        return DeviceSummary(
            dim=self.dim, catalog_version=self.catalog_version, fingerprint=self.fingerprint, lam=lam,
            centroids=self.centroids, radii=self.radii, clusters=chosen.astype(np.int64),
            counts=sizes[:n_local].astype(np.int64), ids=self.ids[rows], codes=self.codes[rows], codec=self.codec,
        )  # fmt: skip
