"""Vectorised LEB128 varints and the ITEM_IDS section encodings (docs/FORMAT.md, "ITEM_IDS").

Values are unsigned and below 2**63, so a varint is 1 to 9 bytes: 7 value bits per
byte, least significant group first, high bit set on every byte but the last.
Decoding is strict: a varint longer than 9 bytes, a non-minimal varint (a last byte
of 0 after other bytes) or a missing last byte raise :class:`PackFormatError`.

Item ids are held as *runs*: ``run_starts`` int64 [R] (first id of each run of
consecutive ids) and ``run_offsets`` int64 [R + 1] (sorted position of each run's
first id; ``run_offsets[-1]`` is the number of ids). Both section encodings decode to
runs, so memory is proportional to the section's size, never to a claimed count.
"""

from __future__ import annotations

import numpy as np

from reelpack.errors import PackFormatError
from reelpack.util.ids import MAX_ITEM_ID

__all__ = [
    "encode_varints",
    "decode_varints",
    "IDS_DELTAS",
    "IDS_RUNS",
    "encode_item_ids",
    "decode_item_ids",
    "ids_from_runs",
    "ids_in_range",
    "MAX_ID",
]

MAX_VARINT_BYTES = 9
MAX_ID = MAX_ITEM_ID  # (1 << 63) - 1: ids are non-negative int64
IDS_DELTAS = 0
IDS_RUNS = 1


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128-encode non-negative integers [n] (each < 2**63) into bytes."""
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        lengths += v >= np.uint64(1 << (7 * k))
    starts = np.zeros(v.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for k in range(MAX_VARINT_BYTES):
        idx = np.flatnonzero(lengths > k)
        if idx.size == 0:
            break
        group = ((v[idx] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        group |= np.where(lengths[idx] > k + 1, 0x80, 0).astype(np.uint8)
        out[starts[idx] + k] = group
    return out.tobytes()


def decode_varints(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Decode a byte string that holds only whole varints; return uint64 [n] (each < 2**63)."""
    b = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint64)
    is_last = b < 0x80
    if not is_last[-1]:
        raise PackFormatError("varint is truncated: the last byte has its continuation bit set")
    ends = np.flatnonzero(is_last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise PackFormatError(f"varint longer than {MAX_VARINT_BYTES} bytes (values must be < 2**63)")
    if np.any((lengths > 1) & (b[ends] == 0)):
        raise PackFormatError("varint is not minimally encoded (a trailing zero group)")
    payload = b & 0x7F
    values = payload[starts].astype(np.uint64)
    for j in range(1, int(lengths.max())):  # one gather per byte position, over the varints that long
        longer = np.flatnonzero(lengths > j)
        values[longer] |= payload[starts[longer] + j].astype(np.uint64) << np.uint64(7 * j)
    return values


def _runs_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive values in sorted unique int64 ids [n]: (starts [R], lengths [R])."""
    if ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    first = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((first, [ids.size])))
    return ids[first], lengths


def encode_item_ids(ids: np.ndarray) -> bytes:
    """The ITEM_IDS section body for sorted unique int64 ids [n] in [0, 2**63).

    Picks whichever of the two encodings is smaller (runs on ties):
    ``u8 encoding | u64 count | varints``.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    count = int(ids.size)
    deltas = np.empty(count, dtype=np.int64)
    if count:
        deltas[0] = ids[0]
        deltas[1:] = np.diff(ids)
    starts, lengths = _runs_of(ids)
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    if starts.size:
        pairs[0] = starts[0]
        pairs[2::2] = starts[1:] - (starts[:-1] + lengths[:-1])
        pairs[1::2] = lengths
    runs_body = encode_varints(pairs)
    deltas_body = encode_varints(deltas)
    encoding, body = (IDS_RUNS, runs_body) if len(runs_body) <= len(deltas_body) else (IDS_DELTAS, deltas_body)
    return bytes([encoding]) + count.to_bytes(8, "little") + body


def decode_item_ids(data: bytes | memoryview, expected_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ITEM_IDS section body; return runs (run_starts int64 [R], run_offsets int64 [R + 1]).

    Raises:
        PackFormatError: unknown encoding, count different from ``expected_count``,
            ids not strictly increasing, an id >= 2**63, or malformed varints.
    """
    buf = memoryview(data)
    if len(buf) < 9:
        raise PackFormatError(f"ITEM_IDS section is {len(buf)} bytes, needs at least 9")
    encoding = buf[0]
    count = int.from_bytes(buf[1:9], "little")
    if count != expected_count:
        raise PackFormatError(f"ITEM_IDS holds {count} ids, the header says {expected_count} items")
    values = decode_varints(buf[9:])
    if encoding == IDS_DELTAS:
        if values.size != count:
            raise PackFormatError(f"ITEM_IDS (deltas) has {values.size} varints, expected {count}")
        starts_u = np.cumsum(values, dtype=np.uint64)
        if values.size > 1 and (np.any(values[1:] == 0) or np.any(starts_u[1:] <= starts_u[:-1])):
            raise PackFormatError("ITEM_IDS are not strictly increasing (zero delta or overflow)")
        if values.size and int(starts_u[-1]) > MAX_ID:
            raise PackFormatError("ITEM_IDS hold an id >= 2**63")
        run_starts = starts_u.astype(np.int64)
        run_offsets = np.arange(count + 1, dtype=np.int64)
        return run_starts, run_offsets
    if encoding == IDS_RUNS:
        if values.size % 2:
            raise PackFormatError(f"ITEM_IDS (runs) has an odd number of varints ({values.size})")
        gaps, lengths = values[0::2], values[1::2]
        if np.any(lengths == 0) or (gaps.size > 1 and np.any(gaps[1:] == 0)):
            raise PackFormatError("ITEM_IDS runs must have length >= 1 and gaps >= 1 between runs")
        if np.any(lengths > np.uint64(count)):
            raise PackFormatError(f"ITEM_IDS run longer than the {count} ids")
        # ends (exclusive) = cumulative sum of gap + length; every step adds >= 1, so a wrap shows as a decrease
        ends = np.cumsum(gaps + lengths, dtype=np.uint64)
        if ends.size > 1 and np.any(ends[1:] <= ends[:-1]):
            raise PackFormatError("ITEM_IDS runs overflow 64 bits")
        if ends.size and int(ends[-1]) > MAX_ID + 1:
            raise PackFormatError("ITEM_IDS hold an id >= 2**63")
        total = int(lengths.sum(dtype=np.uint64)) if lengths.size else 0  # each <= count, so no overflow
        if total != count:
            raise PackFormatError(f"ITEM_IDS runs cover {total} ids, expected {count}")
        run_starts = (ends - lengths).astype(np.int64)
        run_offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths.astype(np.int64), out=run_offsets[1:])
        return run_starts, run_offsets
    raise PackFormatError(f"ITEM_IDS encoding {encoding} is unknown (expected {IDS_DELTAS} or {IDS_RUNS})")


def ids_from_runs(run_starts: np.ndarray, run_offsets: np.ndarray) -> np.ndarray:
    """Expand runs into the full sorted id array int64 [run_offsets[-1]]."""
    n = int(run_offsets[-1])
    if run_starts.size == n:  # every run has length 1 (deltas encoding)
        return run_starts.copy()
    lengths = np.diff(run_offsets)
    return np.repeat(run_starts - run_offsets[:-1], lengths) + np.arange(n, dtype=np.int64)


def ids_in_range(run_starts: np.ndarray, run_offsets: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The ids at sorted positions [lo, hi) as int64 [hi - lo], without expanding every run."""
    pos = np.arange(lo, hi, dtype=np.int64)
    run = np.searchsorted(run_offsets, pos, side="right") - 1
    return run_starts[run] + (pos - run_offsets[run])
