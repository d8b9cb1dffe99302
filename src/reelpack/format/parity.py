"""Forward error correction for packs: Reed-Solomon parity over interleaved groups of blocks.

The PARITY section (type 8, docs/FORMAT.md "PARITY") stores, for some layers, ``m``
parity blocks for every group of ``k`` data blocks, each parity block with its own
CRC32C. A client that lost (or received corrupt) data blocks rebuilds them with
:func:`recover_layer` when a group lost at most ``m`` of its ``k + m`` blocks; every
rebuilt block is checked against its CRC32C in the BLOCK_INDEX.

Groups are *interleaved*: with ``G = ceil(n_blocks / k)`` groups, data block ``b``
belongs to group ``b mod G``, so a burst of up to ``G`` consecutive lost blocks
costs each group at most one block.

The code is systematic Reed-Solomon over GF(2^8) (``zfec``); ``k + m <= 256``.

Write parity with ``write_pack(..., parity=(k, m))`` (:func:`reelpack.format.write_pack`), which builds the
section with :func:`parity_section`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reelpack.errors import ChecksumError, DTypeError, DimensionMismatchError, InvalidInputError, PackFormatError
from reelpack.format.layout import SectionType, crc32c
from reelpack.format.reader import PackReader

__all__ = [
    "PARITY_SCHEME_RS",
    "ParityPlan",
    "ParityLayer",
    "LayerRecovery",
    "parity_groups",
    "encode_parity",
    "parity_section",
    "parse_parity",
    "read_parity",
    "recover_layer",
]

#: ``(k, m)`` for every layer, or ``{layer: (k, m)}`` for some layers (``m`` parity blocks per ``k`` data blocks).
ParityPlan = tuple[int, int] | Mapping[int, tuple[int, int]]

PARITY_SCHEME_RS = 1
_HEAD = struct.Struct("<II")  # n_records, meta_crc32c
_RECORD = struct.Struct("<HHHHIIQII")  # 32 bytes
assert _HEAD.size == 8 and _RECORD.size == 32
MAX_GROUP = 256


def _zfec() -> Any:
    try:
        import zfec
    except ImportError as exc:  # pragma: no cover - zfec is a dependency
        raise InvalidInputError("parity needs the zfec package (pip install zfec)") from exc
    return zfec


def parity_groups(n_blocks: int, k: int) -> list[np.ndarray]:
    """The data blocks of each group: group ``g`` holds blocks ``g, g + G, g + 2G, ...`` (``G = ceil(n_blocks / k)``)."""
    n_groups = -(-n_blocks // k)
    return [np.arange(g, n_blocks, n_groups) for g in range(n_groups)]


def _check_km(k: object, m: object) -> tuple[int, int]:
    if not isinstance(k, (int, np.integer)) or not isinstance(m, (int, np.integer)) or isinstance(k, bool) or isinstance(m, bool):
        raise InvalidInputError(f"parity k and m must be integers, got {k!r}, {m!r}")
    if k < 1 or m < 1 or k + m > MAX_GROUP:
        raise InvalidInputError(f"parity needs k >= 1, m >= 1 and k + m <= {MAX_GROUP}, got k={k}, m={m}")
    return int(k), int(m)


@dataclass(frozen=True)
class ParityLayer:
    """One layer's parity record, parsed from a PARITY section.

    Attributes:
        layer, k, m: the layer and its code: ``m`` parity blocks per group of ``k`` data blocks.
        n_groups: ``ceil(n_blocks / k)``.
        block_length: bytes per parity block (``items_per_block × bytes_per_vector``).
        crcs: uint32 [n_groups, m] CRC32C of each parity block.
        blocks: uint8 [n_groups, m, block_length] parity blocks (a copy; blocks past a truncated end are zero).
        available: bool [n_groups, m]: the parity block is present and its CRC matches.
    """

    layer: int
    k: int
    m: int
    n_groups: int
    block_length: int
    crcs: np.ndarray
    blocks: np.ndarray | None
    available: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.n_groups * self.m * self.block_length


def encode_parity(layers: Sequence[tuple[int, np.ndarray, int, int, int]]) -> bytes:
    """Build a PARITY section body.

    Args:
        layers: ``(layer, codes, items_per_block, k, m)`` per protected layer, codes uint8 [n_items, B]
            in ITEM_IDS (sorted) order, exactly as written to the layer's blocks, and the layer's
            ``items_per_block`` (the pack must be written with the same value).

    Returns:
        the section bytes (docs/FORMAT.md "PARITY").
    """
    if not layers:
        raise InvalidInputError("encode_parity needs at least one layer")
    zfec = _zfec()
    records, crc_tables, payloads = [], [], []
    seen = set()
    for entry in layers:
        if not isinstance(entry, tuple) or len(entry) != 5:
            raise InvalidInputError("each parity layer must be (layer, codes, items_per_block, k, m)")
        layer, codes, ipb, k, m = entry
        k, m = _check_km(k, m)
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < 256 or layer in seen:
            raise InvalidInputError(f"parity layer must be a distinct integer in 0..255, got {layer!r}")
        seen.add(int(layer))
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise DTypeError(f"codes must be uint8, got {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DimensionMismatchError(f"codes must be a non-empty [n_items, B] array, got {arr.shape}")
        if not isinstance(ipb, (int, np.integer)) or ipb < 1:
            raise InvalidInputError(f"items_per_block must be a positive integer, got {ipb!r}")
        n, bpv = arr.shape
        length = int(ipb) * bpv
        n_blocks = -(-n // int(ipb))
        # data blocks, zero-padded to the full block length; rows past n_blocks are the virtual zero blocks
        groups = parity_groups(n_blocks, k)
        n_groups = len(groups)
        padded = np.zeros((n_groups * k, length), np.uint8)
        flat = np.ascontiguousarray(arr).reshape(-1)
        for b in range(n_blocks):
            chunk = flat[b * length : (b + 1) * length]
            padded[b, : chunk.size] = chunk
        enc = zfec.Encoder(k, k + m)
        wanted = tuple(range(k, k + m))
        par = np.empty((n_groups, m, length), np.uint8)
        for g in range(n_groups):
            members = tuple(padded[g + j * n_groups].tobytes() for j in range(k))
            for j, blk in enumerate(enc.encode(members, wanted)):
                par[g, j] = np.frombuffer(blk, np.uint8)
        crcs = np.array([[crc32c(par[g, j]) for j in range(m)] for g in range(n_groups)], dtype="<u4")
        records.append([int(layer), PARITY_SCHEME_RS, k, m, n_groups, length])
        crc_tables.append(crcs.tobytes())
        payloads.append(par.tobytes())
    meta_len = _HEAD.size + _RECORD.size * len(records) + sum(len(c) for c in crc_tables)
    rec_bytes, crc_off, data_off = [], _HEAD.size + _RECORD.size * len(records), meta_len
    for rec, crcs_b, payload in zip(records, crc_tables, payloads):
        rec_bytes.append(_RECORD.pack(*rec, data_off, crc_off, 0))
        crc_off += len(crcs_b)
        data_off += len(payload)
    meta = b"".join(rec_bytes) + b"".join(crc_tables)
    return _HEAD.pack(len(records), crc32c(meta)) + meta + b"".join(payloads)


def parse_parity(body: bytes | np.ndarray, available_length: int | None = None) -> dict[int, ParityLayer]:
    """Parse a PARITY section body (``available_length``: bytes of it actually present, default all).

    Raises:
        ChecksumError: the records or CRC tables are corrupt.
        PackFormatError: inconsistent counts, offsets or lengths.
    """
    buf = np.frombuffer(body, np.uint8) if isinstance(body, (bytes, bytearray, memoryview)) else np.asarray(body, np.uint8)
    total = int(buf.size)
    avail = total if available_length is None else max(0, min(total, int(available_length)))
    if avail < _HEAD.size:
        raise PackFormatError(f"PARITY section is {avail} bytes, too short for its 8-byte head")
    n_rec, meta_crc = _HEAD.unpack(buf[: _HEAD.size].tobytes())
    if not 1 <= n_rec <= 256 or _HEAD.size + n_rec * _RECORD.size > avail:
        raise PackFormatError(f"PARITY section claims {n_rec} layer records in {avail} bytes")
    raw_recs = [_RECORD.unpack_from(buf[_HEAD.size + i * _RECORD.size : _HEAD.size + (i + 1) * _RECORD.size].tobytes())
                for i in range(n_rec)]  # fmt: skip
    meta_end = _HEAD.size + n_rec * _RECORD.size + sum(4 * r[4] * r[3] for r in raw_recs)
    if meta_end > avail:
        raise PackFormatError(f"PARITY CRC tables end at {meta_end}, beyond the {avail} bytes present")
    if crc32c(buf[_HEAD.size : meta_end]) != meta_crc:
        raise ChecksumError("PARITY section records/CRC tables CRC32C mismatch")
    out: dict[int, ParityLayer] = {}
    for layer, scheme, k, m, n_groups, length, data_off, crc_off, _ in raw_recs:
        if scheme != PARITY_SCHEME_RS:
            raise PackFormatError(f"PARITY layer {layer}: unknown scheme {scheme}")
        if k < 1 or m < 1 or k + m > MAX_GROUP or length < 1 or layer in out:
            raise PackFormatError(f"PARITY layer {layer}: invalid record k={k} m={m} length={length}")
        if crc_off + 4 * n_groups * m > meta_end or data_off + n_groups * m * length > total:
            raise PackFormatError(f"PARITY layer {layer}: CRC table or blocks lie outside the section")
        crcs = buf[crc_off : crc_off + 4 * n_groups * m].view("<u4").reshape(n_groups, m)
        present = max(0, min(n_groups * m, (avail - data_off) // length))
        blocks = buf[data_off : data_off + present * length]
        available = np.zeros(n_groups * m, bool)
        for i in range(present):
            available[i] = crc32c(blocks[i * length : (i + 1) * length]) == int(crcs.reshape(-1)[i])
        full = np.zeros(n_groups * m * length, np.uint8)
        full[: blocks.size] = blocks
        out[int(layer)] = ParityLayer(int(layer), int(k), int(m), int(n_groups), int(length), crcs,
                                      full.reshape(n_groups, m, length), available.reshape(n_groups, m))  # fmt: skip
    return out


def read_parity(reader: PackReader) -> dict[int, ParityLayer]:
    """The parity records of ``reader``'s pack, by layer (empty when it has no PARITY section).

    The section's own CRC is not required to match: a corrupt parity block only
    makes that block unavailable (its per-block CRC), the rest stays usable.
    """
    sections = [s for s in reader._dir.sections if s.type == SectionType.PARITY]
    if not sections:
        return {}
    if len(sections) > 1:
        raise PackFormatError(f"pack has {len(sections)} PARITY sections, at most 1 is allowed")
    s = sections[0]
    buf = reader._buf
    body = buf[s.offset : min(s.end, buf.size)] if s.offset < buf.size else np.zeros(0, np.uint8)
    padded = np.zeros(s.length, np.uint8)
    padded[: body.size] = body
    return parse_parity(padded, available_length=body.size)


@dataclass
class LayerRecovery:
    """Result of :func:`recover_layer`.

    Attributes:
        codes: uint8 [n_items, B], every row whose block is intact or rebuilt (other rows are zero).
        row_ok: bool [n_items]: the row's code is usable.
        item_ids: int64 [n_items] sorted ids (row order).
        missing_item_ids: ids whose code could not be read nor rebuilt.
        lost_blocks: data blocks that were lost or corrupt before recovery.
        recovered_blocks: the lost blocks rebuilt from parity (and verified against their CRC32C).
        unrecoverable_blocks: the lost blocks still missing.
        failed_groups: groups with more than ``m`` unavailable blocks (or whose rebuild failed its CRC).
        parity_problems: messages, e.g. a corrupt parity block or a missing/corrupt PARITY section.
    """

    codes: np.ndarray
    row_ok: np.ndarray
    item_ids: np.ndarray
    missing_item_ids: np.ndarray
    lost_blocks: list[int]
    recovered_blocks: list[int]
    unrecoverable_blocks: list[int]
    failed_groups: list[int] = field(default_factory=list)
    parity_problems: list[str] = field(default_factory=list)


def _as_mask(mask: object, n: int, what: str) -> np.ndarray:
    if mask is None:
        return np.zeros(n, bool)
    arr = np.asarray(mask)
    if arr.dtype != bool:
        raise DTypeError(f"{what} must be a boolean mask, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise DimensionMismatchError(f"{what} must have shape ({n},), got {arr.shape}")
    return arr


def recover_layer(
    reader: PackReader,
    layer: int,
    lost: np.ndarray | None = None,
    lost_parity: np.ndarray | None = None,
    use_parity: bool = True,
) -> LayerRecovery:
    """Read ``layer``'s codes, rebuilding lost or corrupt blocks from parity where possible.

    Args:
        reader: an open pack.
        layer: layer index.
        lost: optional bool [n_blocks]: data blocks to treat as lost (a packet-loss simulation),
            on top of those whose CRC fails or that lie beyond a truncated end.
        lost_parity: optional bool [n_groups * m] (group-major): parity blocks to treat as lost.
        use_parity: False reads without recovery (the baseline).

    A group is rebuilt when at most ``m`` of its data and parity blocks are unavailable;
    each rebuilt block must match its BLOCK_INDEX CRC32C, else it stays lost.
    Never raises for damage; raises :class:`InvalidInputError` for bad arguments.
    """
    if not isinstance(reader, PackReader):
        raise InvalidInputError(f"recover_layer needs a PackReader, got {type(reader).__name__}")
    info = reader._layer(layer)
    if info.entropy_coded:
        raise InvalidInputError(f"layer {info.index} is entropy coded: parity recovery needs fixed-width blocks")
    n, bpv, ipb, nb = reader.n_items, info.bytes_per_vector, info.items_per_block, info.n_blocks
    lost_mask = _as_mask(lost, nb, "lost").copy()
    problems = reader._block_problems(info)
    lost_mask |= np.array([p is not None for p in problems], bool)
    codes = np.zeros((n, bpv), np.uint8)
    flat = codes.reshape(-1)
    entries = reader._dir.blocks[reader._dir.block_start[info.index] : reader._dir.block_start[info.index + 1]]
    buf = reader._buf
    for b in np.flatnonzero(~lost_mask).tolist():
        off, length = int(entries["offset"][b]), int(entries["length"][b])
        flat[b * ipb * bpv : b * ipb * bpv + length] = buf[off : off + length]
    block_ok = ~lost_mask
    recovered: list[int] = []
    failed: list[int] = []
    msgs: list[str] = []
    par = None
    if use_parity and lost_mask.any():
        try:
            par = read_parity(reader).get(info.index)
            if par is None:
                msgs.append(f"no parity for layer {info.index}")
        except PackFormatError as exc:
            msgs.append(f"PARITY section unusable: {exc}")
        if par is not None and (par.n_groups != -(-nb // par.k) or par.block_length != ipb * bpv):
            msgs.append(f"parity record of layer {info.index} does not match the layer's blocks")
            par = None
    if par is not None:
        k, m, length = par.k, par.m, par.block_length
        par_ok = par.available.copy()
        if lost_parity is not None:
            par_ok &= ~_as_mask(lost_parity, par.n_groups * m, "lost_parity").reshape(par.n_groups, m)
        if not par.available.all():
            msgs.append(f"layer {info.index}: {int((~par.available).sum())} parity blocks corrupt or missing")
        dec = _zfec().Decoder(k, k + m)
        for g, members in enumerate(parity_groups(nb, k)):
            bad = members[lost_mask[members]]
            if bad.size == 0:
                continue
            shares, nums = [], []
            for j in range(k):  # data positions; positions past the group's real blocks are virtual zeros
                if j >= members.size:
                    shares.append(bytes(length))
                    nums.append(j)
                elif not lost_mask[members[j]]:
                    b = int(members[j])
                    blk = np.zeros(length, np.uint8)
                    seg = flat[b * ipb * bpv : min(n * bpv, (b + 1) * ipb * bpv)]
                    blk[: seg.size] = seg
                    shares.append(blk.tobytes())
                    nums.append(j)
            for j in range(m):
                if len(shares) >= k:
                    break
                if par_ok[g, j]:
                    shares.append(par.blocks[g, j].tobytes())
                    nums.append(k + j)
            if len(shares) < k:
                failed.append(g)
                continue
            out = dec.decode(tuple(shares[:k]), tuple(nums[:k]))
            for j in range(members.size):
                b = int(members[j])
                if not lost_mask[b]:
                    continue
                blen = int(entries["length"][b])
                data = np.frombuffer(out[j], np.uint8)[:blen]
                if crc32c(data) == int(entries["crc32c"][b]):
                    flat[b * ipb * bpv : b * ipb * bpv + blen] = data
                    block_ok[b] = True
                    recovered.append(b)
                elif g not in failed:
                    failed.append(g)
    row_ok = np.repeat(block_ok, ipb)[:n]
    ids = reader.item_ids
    return LayerRecovery(codes, row_ok, ids, ids[~row_ok], np.flatnonzero(lost_mask).tolist(), sorted(recovered),
                         np.flatnonzero(~block_ok).tolist(), failed, msgs)  # fmt: skip


def parity_section(
    parity: ParityPlan,
    codes: Sequence[np.ndarray],
    items_per_block: Sequence[int],
    entropy_coded: Sequence[bool] | None = None,
) -> bytes:
    """The PARITY section body that protects the layers named by ``parity`` (``b""`` when it names none).

    Args:
        parity: ``(k, m)`` for every layer, or ``{layer: (k, m)}`` for some layers.
        codes: per layer, codes uint8 [n_items, B] in ITEM_IDS (sorted) order, as written to the blocks.
        items_per_block: per layer, the items per block the pack is written with.
        entropy_coded: per layer, whether it is entropy coded (parity needs fixed-width blocks).

    Raises:
        InvalidInputError: a malformed plan, a layer out of range or entropy coded, bad ``k``/``m``.
    """
    n_layers = len(codes)
    if isinstance(parity, Mapping):
        plan = dict(parity)
    elif isinstance(parity, tuple) and len(parity) == 2:
        plan = {i: parity for i in range(n_layers)}
    else:
        raise InvalidInputError(f"parity must be (k, m) or {{layer: (k, m)}}, got {parity!r}")
    spec = []
    for layer, km in plan.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise InvalidInputError(f"parity names layer {layer!r}, the pack has {n_layers}")
        if not isinstance(km, tuple) or len(km) != 2:
            raise InvalidInputError(f"parity of layer {layer} must be (k, m), got {km!r}")
        if entropy_coded is not None and entropy_coded[layer]:
            raise InvalidInputError(f"layer {layer} is entropy coded: parity needs fixed-width blocks")
        spec.append((int(layer), codes[layer], items_per_block[layer], *_check_km(*km)))
    spec.sort(key=lambda entry: entry[0])
    return encode_parity(spec) if spec else b""
