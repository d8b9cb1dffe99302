"""Delta packs: catalog version A -> version B as a small pack.

A *delta* is itself a pack (same container, docs/FORMAT.md) that says how to turn
one exact base pack (A) into the pack a fresh :func:`build_pack` of catalog B
would write, byte for byte:

* ITEM_IDS: the *sent* items: ids of B whose codes are not in A (added items and
  items whose codes changed; all of B's items when a codec was re-fitted).
* one layer per layer of B: B's codec and the sent items' codes. The container
  needs a CODEC section per layer, so a reused codec is carried too (and checked
  against the base's bytes on apply); only a re-fitted one is new information.
* METADATA: ``{"reelpack_delta": {...}}``: kind, version, the SHA-256 of the base
  file, item counts, B's metadata, B's items per block, which layers were re-fitted
  and the distortion figures that decided it.
* application section 0xDE17 (``DELTA_REMOVED``): ids of A that B drops, as LEB128
  varints of the sorted ids' gaps (first id, then differences).
* application section 0xDE18 (``DELTA_BOUNDS``): the 8 bound bytes
  (max_sq_error, mean_sq_error) of every BLOCK_INDEX entry of B, layer by layer, so
  that the applied pack carries the exact error bounds a fresh build computes from
  B's vectors (which the applier does not have).

Every byte of a delta is covered by a CRC32C, like any pack; :func:`apply_delta`
checks all of them (a corrupt delta raises :class:`~reelpack.errors.ChecksumError`
or another :class:`~reelpack.errors.PackFormatError`) and refuses a delta made for
another base (:class:`~reelpack.errors.DeltaError`).

Codebook reuse: a pack built by :func:`build_pack` records, per layer, the codec's
mean squared reconstruction error on the catalog it was fitted on
(``metadata["reference_mse"]``). :func:`make_delta` reuses a layer's codec while its
error on the new catalog stays within ``(1 + distortion_threshold)`` times that
reference, and re-fits it (same factory string, same seed) past it, keeping the
re-fitted codec only when its error on the new catalog is lower.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reelpack.codecs import Codec, make_codec
from reelpack.errors import ChecksumError, DeltaError, DimensionMismatchError, InvalidInputError, PackFormatError
from reelpack.format.inspection import inspect
from reelpack.format.layout import crc32c
from reelpack.format.reader import PackReader
from reelpack.format.writer import PackWriter, write_pack
from reelpack.format.varint import decode_varints, encode_varints
from reelpack.util.atomic import fsync_dir
from reelpack.util.ids import check_item_ids

__all__ = [
    "DELTA_KIND",
    "DELTA_VERSION",
    "SECTION_DELTA_REMOVED",
    "SECTION_DELTA_BOUNDS",
    "REFERENCE_MSE_KEY",
    "DeltaLayerReport",
    "DeltaReport",
    "build_pack",
    "make_delta",
    "apply_delta",
    "is_delta",
]

DELTA_KIND = "reelpack.delta"
DELTA_VERSION = 1
DELTA_META_KEY = "reelpack_delta"
REFERENCE_MSE_KEY = "reference_mse"
SECTION_DELTA_REMOVED = 0xDE17
SECTION_DELTA_BOUNDS = 0xDE18
_BOUNDS_OFFSET = 24  # max_sq_error, mean_sq_error: bytes [24, 32) of a BLOCK_INDEX entry


# ================================================================================================
# Deterministic full build
# ================================================================================================
def _prepare(item_ids: object, vectors: object) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids int64 [n] and float32 vectors [n, d] in that order."""
    ids = check_item_ids(item_ids)
    X = np.asarray(vectors, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != ids.size:
        raise DimensionMismatchError(f"vectors must be [{ids.size}, d], got {X.shape}")
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(X[order])


def _mse(codec: Codec, X: np.ndarray) -> float:
    """Mean over rows of ||x - decode(encode(x))||^2 (float64, deterministic for a given row order)."""
    err = ((X.astype(np.float64) - codec.decode(codec.encode(X)).astype(np.float64)) ** 2).sum(axis=1)
    return float(err.mean())


def build_pack(
    path: str | os.PathLike[str],
    item_ids: np.ndarray,
    vectors: np.ndarray,
    codecs: Sequence[Codec],
    metadata: dict[str, Any] | None = None,
    reference_mse: Sequence[float] | None = None,
    items_per_block: int = 1024,
) -> Path:
    """Deterministic full build of a catalog with fitted codecs (one layer per codec, each encoding ``vectors``).

    The same arguments always give the same bytes (no timestamps are added). The
    pack's metadata is ``metadata`` plus ``"reference_mse"``: per layer, the codec's
    mean squared error on the catalog it was fitted on. Pass it when the codecs were
    fitted on another catalog (a reused codec keeps its reference); by default it is
    measured on ``vectors`` (codecs fitted on this catalog).
    """
    ids, X = _prepare(item_ids, vectors)
    codecs = list(codecs)
    if not codecs:
        raise InvalidInputError("build_pack needs at least one codec")
    if reference_mse is None:
        ref = [_mse(c, X) for c in codecs]
    else:
        ref = [float(r) for r in reference_mse]
        if len(ref) != len(codecs):
            raise InvalidInputError(f"reference_mse needs one value per codec ({len(codecs)}), got {len(ref)}")
    meta = dict(metadata or {})
    meta[REFERENCE_MSE_KEY] = ref
    layers = [(c, c.encode(X)) for c in codecs]
    return write_pack(path, ids, layers, vectors=X, metadata=meta, items_per_block=items_per_block)


# ================================================================================================
# Reports
# ================================================================================================
@dataclass
class DeltaLayerReport:
    """What :func:`make_delta` decided for one layer.

    Attributes:
        layer: layer index; spec: the codec's factory string.
        reference_mse: the base codec's error at fit time (from the base pack).
        reference_source: ``"metadata"`` or ``"block_index"`` (base pack without reference_mse:
            the mean error over A's blocks is used instead).
        new_mse: the base codec's mean squared error on the new catalog.
        ratio: ``new_mse / reference_mse``.
        reused: True when the base codec was kept, False when it was re-fitted.
        refit_mse: the re-fitted codec's error on the new catalog; None when the ratio was within
            the threshold (no re-fit tried). A re-fit that is not better than the base codec on the
            new catalog is discarded: then ``reused`` is True and ``refit_mse >= new_mse``.
    """

    layer: int
    spec: str
    reference_mse: float
    reference_source: str
    new_mse: float
    ratio: float
    reused: bool
    refit_mse: float | None = None


@dataclass
class DeltaReport:
    """Result of :func:`make_delta`: the delta file, its size against a full pack of B, and per-layer decisions.

    ``codec_bytes`` is the part of ``delta_bytes`` taken by CODEC sections (the container
    needs one per layer, so a reused codec is carried again; for PQ codebooks this can
    dominate a small delta).
    """

    path: str
    delta_bytes: int
    target_bytes: int
    base_sha256: str
    n_base: int
    n_target: int
    n_removed: int
    n_added: int
    n_changed: int
    n_sent: int
    threshold: float
    codec_bytes: int = 0
    layers: list[DeltaLayerReport] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        """delta_bytes / target_bytes."""
        return self.delta_bytes / self.target_bytes

    @property
    def refitted(self) -> bool:
        return any(not lay.reused for lay in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        return d


# ================================================================================================
# Helpers
# ================================================================================================
def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (how a delta names its base pack)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _block_bounds(reader: PackReader) -> bytes:
    """The 8 bound bytes of every block of every layer, layer by layer."""
    parts = []
    for layer in range(reader.n_layers):
        for block in reader.blocks(layer):
            parts.append(np.array([block.max_sq_error, block.mean_sq_error], dtype="<f4").tobytes())
    return b"".join(parts)


def _encode_sorted_ids(ids: np.ndarray) -> bytes:
    if ids.size == 0:
        return b""
    gaps = np.empty(ids.size, dtype=np.int64)
    gaps[0] = ids[0]
    gaps[1:] = np.diff(ids)
    return encode_varints(gaps)


def _decode_sorted_ids(raw: bytes) -> np.ndarray:
    gaps = decode_varints(raw).astype(np.int64)
    if gaps.size > 1 and np.any(gaps[1:] <= 0):
        raise DeltaError("removed ids of the delta are not strictly increasing")
    ids = np.cumsum(gaps, dtype=np.int64)
    if ids.size and int(ids[-1]) < 0:
        raise DeltaError("removed ids of the delta overflow")
    return ids


def _app_sections(path: Path, info: dict[str, Any]) -> dict[int, bytes]:
    """Bytes of the delta's application sections, each checked against its CRC32C."""
    out: dict[int, bytes] = {}
    with open(path, "rb") as f:
        for s in info["sections"]:
            if s["type"] not in (SECTION_DELTA_REMOVED, SECTION_DELTA_BOUNDS):
                continue
            if s["type"] in out:
                raise DeltaError(f"delta has two sections of type {s['type']:#x}")
            f.seek(s["offset"])
            body = f.read(s["length"])
            if len(body) != s["length"]:
                raise ChecksumError(f"delta section {s['index']} is truncated")
            if crc32c(body) != s["crc32c"]:
                raise ChecksumError(f"delta section {s['index']} (type {s['type']:#x}): CRC32C mismatch")
            out[s["type"]] = body
    return out


def is_delta(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a readable pack whose metadata marks it as a delta."""
    try:
        with PackReader(path) as r:
            meta = r.metadata
    except PackFormatError:
        return False
    return isinstance(meta, dict) and isinstance(meta.get(DELTA_META_KEY), dict) and \
        meta[DELTA_META_KEY].get("kind") == DELTA_KIND  # fmt: skip


class _ExactBoundsWriter(PackWriter):
    """A PackWriter whose block error bounds are given as the exact 8 bytes of a fresh build."""

    def write_block_bounds(self, layer: int, codes: np.ndarray, bounds: bytes) -> None:
        self.write_block(layer, codes)  # bounds NaN, patched below before commit() writes the index
        entry = self._index[-1]
        self._index[-1] = entry[:_BOUNDS_OFFSET] + bounds


# ================================================================================================
# make_delta
# ================================================================================================
def make_delta(
    base_pack_path: str | os.PathLike[str],
    new_ids: np.ndarray,
    new_vectors: np.ndarray,
    out_path: str | os.PathLike[str],
    distortion_threshold: float = 0.1,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    target_path: str | os.PathLike[str] | None = None,
) -> DeltaReport:
    """Write a delta that turns the pack at ``base_pack_path`` into the pack of catalog (new_ids, new_vectors).

    The target is what :func:`build_pack` writes for the new catalog with, per layer,
    the base codec (reused while ``new_mse / reference_mse <= 1 + distortion_threshold``)
    or a codec of the same spec re-fitted on the new vectors with ``seed``; items per
    block as in the base. When any layer is re-fitted the delta carries every item's
    codes.

    Args:
        base_pack_path: pack of version A (written by :func:`build_pack`, or any pack without
            corrections; without ``reference_mse`` metadata the error over A's blocks is the reference).
        new_ids, new_vectors: catalog B: unique ids [n] and float32 vectors [n, d], any order.
        out_path: where the delta is written (atomically).
        distortion_threshold: allowed relative increase of a codec's error before it is re-fitted.
        metadata: metadata of B without ``reference_mse`` (default: A's, e.g. change ``catalog_version``).
        seed: seed of re-fitted codecs.
        target_path: also keep the full pack of B there (it is built anyway to compute the delta).

    Returns:
        a :class:`DeltaReport` (sizes, counts, per-layer reuse decisions and distortion ratios).
    """
    base_path = Path(base_pack_path)
    out_path = Path(out_path)
    if not (isinstance(distortion_threshold, (int, float)) and distortion_threshold >= 0):
        raise InvalidInputError(f"distortion_threshold must be a number >= 0, got {distortion_threshold!r}")
    ids_b, X = _prepare(new_ids, new_vectors)
    base_sha = sha256_file(base_path)
    with PackReader(base_path) as base:
        report = base.verify()
        if not report.ok:
            raise ChecksumError(f"base pack {base_path} is damaged: {report.section_problems or report.bad_blocks[:3]}")
        if base.metadata is not None and DELTA_META_KEY in base.metadata:
            raise DeltaError(f"{base_path} is a delta, not a catalog pack")
        ids_a = np.array(base.item_ids)
        base_meta = dict(base.metadata or {})
        codecs = [base.codec(i) for i in range(base.n_layers)]
        ipb = [info.items_per_block for info in base.layers]
        if any(base.layer_corrections(i) is not None for i in range(base.n_layers)):
            raise DeltaError("deltas of packs with CORRECTIONS sections are not supported")
        codes_a = [np.array(base.layer_codes(i)) for i in range(base.n_layers)]
    if len(set(ipb)) != 1:
        raise DeltaError(f"deltas need the same items per block in every layer, base has {ipb}")
    for c in codecs:
        if c.dim != X.shape[1]:
            raise DimensionMismatchError(f"new vectors have dimension {X.shape[1]}, the base codec {c.spec!r} {c.dim}")

    ref = base_meta.pop(REFERENCE_MSE_KEY, None)
    source = "metadata"
    if not (isinstance(ref, list) and len(ref) == len(codecs) and all(isinstance(r, (int, float)) for r in ref)):
        source = "block_index"
        ref = [float(lay["mean_sq_error"]) for lay in inspect(base_path)["layers"]]
    target_meta = dict(metadata) if metadata is not None else base_meta
    target_meta.pop(REFERENCE_MSE_KEY, None)

    layer_reports = []
    new_codecs: list[Codec] = []
    new_ref: list[float] = []
    for i, codec in enumerate(codecs):
        new_mse = _mse(codec, X)
        r = float(ref[i])
        ratio = new_mse / r if r > 0 else (1.0 if new_mse == 0 else float("inf"))
        if ratio <= 1.0 + distortion_threshold:
            new_codecs.append(codec)
            new_ref.append(r)
            layer_reports.append(DeltaLayerReport(i, codec.spec, r, source, new_mse, ratio, True))
        else:
            refit = make_codec(codec.spec).fit(X, seed=seed)
            refit_mse = _mse(refit, X)
            if refit_mse < new_mse:
                new_codecs.append(refit)
                new_ref.append(refit_mse)
                layer_reports.append(DeltaLayerReport(i, codec.spec, r, source, new_mse, ratio, False, refit_mse))
            else:  # the re-fitted codec is no better on the new catalog (e.g. min/max ranges widened by outliers)
                new_codecs.append(codec)
                new_ref.append(r)
                layer_reports.append(DeltaLayerReport(i, codec.spec, r, source, new_mse, ratio, True, refit_mse))
    any_refit = any(not lay.reused for lay in layer_reports)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".target.tmp")
    os.close(fd)
    tmp_target = Path(tmp)
    try:
        build_pack(tmp_target, ids_b, X, new_codecs, metadata=target_meta, reference_mse=new_ref,
                   items_per_block=ipb[0])  # fmt: skip
        target_bytes = tmp_target.stat().st_size
        with PackReader(tmp_target) as tgt:
            codes_b = [np.array(tgt.layer_codes(i)) for i in range(tgt.n_layers)]
            bounds = _block_bounds(tgt)
            full_target_meta = tgt.metadata
        # which items of B must be sent
        _, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
        removed = np.setdiff1d(ids_a, ids_b, assume_unique=True)
        added_mask = ~np.isin(ids_b, ids_a, assume_unique=True)
        if any_refit:
            send_mask = np.ones(ids_b.size, dtype=bool)
            changed = np.zeros(ia.size, dtype=bool)
            for ca, cb in zip(codes_a, codes_b):
                if ca.shape[1] == cb.shape[1]:
                    changed |= np.any(ca[ia] != cb[ib], axis=1)
                else:
                    changed[:] = True
        else:
            changed = np.zeros(ia.size, dtype=bool)
            for ca, cb in zip(codes_a, codes_b):
                changed |= np.any(ca[ia] != cb[ib], axis=1)
            send_mask = added_mask.copy()
            send_mask[ib[changed]] = True
            if not send_mask.any():  # a pack needs >= 1 item: resend one unchanged code
                send_mask[0] = True
        sent = np.flatnonzero(send_mask)
        info = {
            "kind": DELTA_KIND,
            "version": DELTA_VERSION,
            "base_sha256": base_sha,
            "base_n_items": int(ids_a.size),
            "base_catalog_version": base_meta.get("catalog_version"),
            "target_catalog_version": (full_target_meta or {}).get("catalog_version"),
            "target_n_items": int(ids_b.size),
            "target_metadata": full_target_meta,
            "target_items_per_block": ipb[0],
            "n_removed": int(removed.size),
            "n_added": int(added_mask.sum()),
            "n_changed": int(changed.sum()),
            "refit": [not lay.reused for lay in layer_reports],
            "distortion_threshold": float(distortion_threshold),
            "distortion_ratio": [lay.ratio if np.isfinite(lay.ratio) else None for lay in layer_reports],
        }
        writer = PackWriter(out_path, ids_b[sent], metadata={DELTA_META_KEY: info})
        with writer:
            for c in new_codecs:
                writer.add_layer(c, items_per_block=ipb[0])
            writer.add_section(SECTION_DELTA_REMOVED, _encode_sorted_ids(removed))
            writer.add_section(SECTION_DELTA_BOUNDS, bounds)
            for i, cb in enumerate(codes_b):
                writer.write_layer(i, cb[sent])
        if target_path is not None:
            os.replace(tmp_target, target_path)
            fsync_dir(Path(target_path).parent)
    finally:
        tmp_target.unlink(missing_ok=True)
    return DeltaReport(
        path=str(out_path), delta_bytes=out_path.stat().st_size, target_bytes=target_bytes, base_sha256=base_sha,
        n_base=int(ids_a.size), n_target=int(ids_b.size), n_removed=info["n_removed"], n_added=info["n_added"],
        n_changed=info["n_changed"], n_sent=int(sent.size), threshold=float(distortion_threshold),
        codec_bytes=sum(len(c.to_bytes()) for c in new_codecs), layers=layer_reports,
    )  # fmt: skip


# ================================================================================================
# apply_delta
# ================================================================================================
_DeltaParts = tuple[dict[str, Any], np.ndarray, list[Codec], list[bytes], list[np.ndarray], dict[int, bytes]]


def _read_delta(delta_path: Path) -> _DeltaParts:
    """(delta metadata, sent ids, codecs, codec section bytes, sent codes per layer, app sections), all CRC-checked."""
    info = inspect(delta_path)  # raises PackFormatError subclasses for a broken header/table/directory
    with PackReader(delta_path) as d:
        rep = d.verify()
        if rep.truncated:
            raise ChecksumError(f"delta {delta_path} is truncated")
        if rep.section_problems or rep.bad_blocks:
            problems = rep.section_problems + [f"layer {b[0]} block {b[1]}: {b[2]}" for b in rep.bad_blocks]
            raise ChecksumError(f"delta {delta_path} is corrupt: {problems}")
        meta = d.metadata
        if not isinstance(meta, dict) or not isinstance(meta.get(DELTA_META_KEY), dict):
            raise DeltaError(f"{delta_path} is not a delta pack (no {DELTA_META_KEY!r} metadata)")
        dm = meta[DELTA_META_KEY]
        if dm.get("kind") != DELTA_KIND:
            raise DeltaError(f"{delta_path}: unknown delta kind {dm.get('kind')!r}")
        if dm.get("version") != DELTA_VERSION:
            raise DeltaError(
                f"{delta_path}: delta version {dm.get('version')!r}, this reader implements {DELTA_VERSION}"
            )
        sent_ids = np.array(d.item_ids)
        codecs = [d.codec(i) for i in range(d.n_layers)]
        codec_bytes = []
        for s_idx in (lay.codec_section for lay in d.layers):
            s = info["sections"][s_idx]
            with open(delta_path, "rb") as f:
                f.seek(s["offset"])
                codec_bytes.append(f.read(s["length"]))
        codes = [np.array(d.layer_codes(i)) for i in range(d.n_layers)]
    apps = _app_sections(delta_path, info)
    for t in (SECTION_DELTA_REMOVED, SECTION_DELTA_BOUNDS):
        if t not in apps:
            raise DeltaError(f"{delta_path}: delta section {t:#x} is missing")
    return dm, sent_ids, codecs, codec_bytes, codes, apps


def apply_delta(
    base_pack_path: str | os.PathLike[str], delta_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> Path:
    """Apply a delta from :func:`make_delta` to its base pack; write the target pack atomically to ``out_path``.

    The result is byte-identical to a fresh :func:`build_pack` of the target catalog.

    Raises:
        ChecksumError, TruncatedPackError, PackFormatError: the delta is corrupt.
        DeltaError: the delta was made for another base (SHA-256 mismatch), is not a delta, or is inconsistent.
    """
    base_path, delta_path = Path(base_pack_path), Path(delta_path)
    dm, sent_ids, d_codecs, d_codec_bytes, d_codes, apps = _read_delta(delta_path)
    base_sha = sha256_file(base_path)
    if base_sha != dm.get("base_sha256"):
        raise DeltaError(
            f"delta {delta_path.name} was made for a base pack with SHA-256 {dm.get('base_sha256')} "
            f"(catalog version {dm.get('base_catalog_version')!r}), {base_path} has {base_sha}"
        )
    refit = dm.get("refit")
    with PackReader(base_path) as base:
        if not isinstance(refit, list) or len(refit) != base.n_layers or len(d_codecs) != base.n_layers:
            raise DeltaError(f"delta has {len(d_codecs)} layers, the base {base.n_layers}")
        ids_a = np.array(base.item_ids)
        base_codecs = [base.codec(i) for i in range(base.n_layers)]
        codes_a = [np.array(base.layer_codes(i)) for i in range(base.n_layers)]
    removed = _decode_sorted_ids(apps[SECTION_DELTA_REMOVED])
    if removed.size != dm.get("n_removed") or not np.all(np.isin(removed, ids_a, assume_unique=True)):
        raise DeltaError("delta removes ids that the base pack does not hold")
    kept = np.setdiff1d(ids_a, removed, assume_unique=True)
    ids_b = np.union1d(kept, sent_ids)
    if ids_b.size != dm.get("target_n_items"):
        raise DeltaError(f"delta gives {ids_b.size} items, its metadata says {dm.get('target_n_items')}")
    pos_sent = np.searchsorted(ids_b, sent_ids)
    from_base = ~np.isin(ids_b, sent_ids, assume_unique=True)
    base_rows = np.searchsorted(ids_a, ids_b[from_base])
    ipb = dm.get("target_items_per_block")
    if not isinstance(ipb, int):
        raise DeltaError("delta metadata lacks target_items_per_block")
    n_blocks = -(-ids_b.size // ipb)
    bounds = apps[SECTION_DELTA_BOUNDS]
    if len(bounds) != 8 * n_blocks * len(d_codecs):
        raise DeltaError(f"delta bounds section has {len(bounds)} bytes, expected {8 * n_blocks * len(d_codecs)}")
    layers = []
    for i in range(len(d_codecs)):
        if refit[i]:
            if from_base.any():
                raise DeltaError(f"layer {i} was re-fitted but the delta does not carry every item's codes")
            codec = d_codecs[i]
        else:
            if d_codec_bytes[i] != base_codecs[i].to_bytes():
                raise DeltaError(f"layer {i}: the delta's codec differs from the base's but is marked reused")
            codec = base_codecs[i]
        bpv = codec.bytes_per_vector
        codes = np.empty((ids_b.size, bpv), dtype=np.uint8)
        codes[pos_sent] = d_codes[i]
        if from_base.any():
            codes[from_base] = codes_a[i][base_rows]
        layers.append((codec, codes))
    target_meta = dm.get("target_metadata")
    writer = _ExactBoundsWriter(out_path, ids_b, metadata=target_meta)
    with writer:
        for codec, _ in layers:
            writer.add_layer(codec, items_per_block=ipb)
        k = 0
        for i, (_, codes) in enumerate(layers):
            for lo in range(0, ids_b.size, ipb):
                writer.write_block_bounds(i, codes[lo : lo + ipb], bounds[8 * k : 8 * k + 8])
                k += 1
    return writer.path
