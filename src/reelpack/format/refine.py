"""The refinement frame: the wire format of ``POST /v1/catalogs/{catalog}/versions/{version}/refine``.

The service answers a refine request with one frame holding the codes of one pack layer for the item ids the
client asked for; the phone checks it before it rescores anything. This module is the one encoder and the one
parser (the service and :class:`~reelpack.device.client.PhoneClient` both use it).

Layout (all integers little-endian; ``n`` items, ``B`` bytes per vector; ``20 + n * (8 + B)`` bytes in all)::

    offset          size   field
    0               4      magic b"RPRF"
    4               4      u32 n                  items in the frame
    8               4      u32 bytes_per_vector   B, the layer's code width
    12              4      u32 layer              the pack layer the codes belong to
    16              8 n    int64 ids [n]          item ids, in the order the client asked
    16 + 8 n        B n    uint8 codes [n, B]     row i holds the codes of ids[i]
    16 + n (8 + B)  4      u32 CRC32C             Castagnoli CRC of every byte before it

The header is ``struct.Struct("<4sIII")`` (16 bytes); an empty frame (``n = 0``) is 20 bytes. A reader
checks, in this order: at least 20 bytes, the magic, that the length equals ``20 + n * (8 + B)`` exactly (so a
lying ``n`` or ``B`` never makes it allocate), then the CRC32C.

Errors: every bad frame raises :class:`~reelpack.errors.PackFormatError` (short, bad magic, a length that
does not match the header, or, in :func:`parse_refine_frame`, a frame that is not the one asked for); a CRC32C
mismatch raises its subclass :class:`~reelpack.errors.ChecksumError`, as a pack's block does. Catch
``PackFormatError`` to catch every bad frame (it is also a ``SerializationError`` and a ``ValueError``).
"""

from __future__ import annotations

import struct

import crc32c as _crc32c
import numpy as np

from reelpack.errors import ChecksumError, InvalidInputError, PackFormatError

__all__ = [
    "REFINE_MAGIC",
    "REFINE_HEADER",
    "MIN_REFINE_FRAME_BYTES",
    "refine_frame_size",
    "encode_refine_frame",
    "decode_refine_frame",
    "parse_refine_frame",
]

REFINE_MAGIC = b"RPRF"
REFINE_HEADER = struct.Struct("<4sIII")
"""magic, n, bytes_per_vector, layer (16 bytes)."""
_CRC = struct.Struct("<I")
MIN_REFINE_FRAME_BYTES = REFINE_HEADER.size + _CRC.size
_U32_MAX = (1 << 32) - 1


def refine_frame_size(n: int, bytes_per_vector: int) -> int:
    """Bytes of a frame of ``n`` items of ``bytes_per_vector`` bytes: ``20 + n * (8 + bytes_per_vector)``."""
    return MIN_REFINE_FRAME_BYTES + int(n) * (8 + int(bytes_per_vector))


def encode_refine_frame(ids: np.ndarray, codes: np.ndarray, layer: int) -> bytes:
    """A refinement frame (layout in the module docstring).

    Args:
        ids: int [n] item ids (stored as int64), in the order the client asked.
        codes: uint8 [n, bytes_per_vector], row i the codes of ``ids[i]``.
        layer: the pack layer the codes belong to, ``0 <= layer < 2**32``.

    Raises:
        InvalidInputError: ``ids`` is not 1-D integer, ``codes`` not [n, B], or a header field does not fit a u32.
    """
    ids_arr = np.asarray(ids)
    if ids_arr.ndim != 1 or (ids_arr.size and ids_arr.dtype.kind not in "iu"):
        raise InvalidInputError(f"ids must be a 1-D integer array, got dtype {ids_arr.dtype} shape {ids_arr.shape}")
    ids_le = np.ascontiguousarray(ids_arr, dtype="<i8")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[0] != ids_le.shape[0]:
        raise InvalidInputError(f"codes must be [n={ids_le.shape[0]}, bytes_per_vector], got shape {codes.shape}")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) <= _U32_MAX:
        raise InvalidInputError(f"layer must be an integer in 0..{_U32_MAX}, got {layer!r}")
    if ids_le.shape[0] > _U32_MAX or codes.shape[1] > _U32_MAX:
        raise InvalidInputError(f"a frame holds at most {_U32_MAX} items of at most {_U32_MAX} bytes")
    body = REFINE_HEADER.pack(REFINE_MAGIC, ids_le.shape[0], codes.shape[1], int(layer)) + ids_le.tobytes()
    body += codes.tobytes()
    return body + _CRC.pack(_crc32c.crc32c(body))


def decode_refine_frame(frame: bytes | bytearray | memoryview) -> tuple[int, np.ndarray, np.ndarray]:
    """Parse and check a refinement frame.

    Returns:
        ``(layer, ids int64 [n], codes uint8 [n, bytes_per_vector])`` (copies, writable).

    Raises:
        PackFormatError: fewer than 20 bytes, bad magic, or a length that does not match the header.
        ChecksumError: the CRC32C does not match (a PackFormatError).
    """
    frame = bytes(frame)
    if len(frame) < MIN_REFINE_FRAME_BYTES:
        raise PackFormatError(
            f"refinement frame has {len(frame)} bytes, fewer than the {MIN_REFINE_FRAME_BYTES} of an empty one"
        )
    magic, n, bpv, layer = REFINE_HEADER.unpack_from(frame, 0)
    if magic != REFINE_MAGIC:
        raise PackFormatError(f"refinement frame magic must be {REFINE_MAGIC!r}, got {magic!r}")
    expected = refine_frame_size(n, bpv)
    if len(frame) != expected:
        raise PackFormatError(
            f"refinement frame of n={n}, bytes_per_vector={bpv} must have {expected} bytes, got {len(frame)}"
        )
    (crc,) = _CRC.unpack_from(frame, len(frame) - _CRC.size)
    if _crc32c.crc32c(frame[: -_CRC.size]) != crc:
        raise ChecksumError("refinement frame CRC32C mismatch")
    off = REFINE_HEADER.size
    ids = np.frombuffer(frame, dtype="<i8", count=n, offset=off).astype(np.int64)
    codes = np.frombuffer(frame, dtype=np.uint8, count=n * bpv, offset=off + 8 * n).reshape(n, bpv).copy()
    return int(layer), ids, codes


def parse_refine_frame(
    frame: bytes | bytearray | memoryview, ids: np.ndarray, bytes_per_vector: int, layer: int = 1
) -> np.ndarray:
    """Codes uint8 [n, bytes_per_vector] from a frame that answers a request for ``ids`` (int [n]) of ``layer``.

    :func:`decode_refine_frame`, then checks that the frame is the one asked for.

    Raises:
        ChecksumError: the CRC32C does not match.
        PackFormatError: any other bad frame (see :func:`decode_refine_frame`), or its count, code width, layer
            or ids differ from what was asked.
    """
    want = np.asarray(ids, dtype=np.int64).reshape(-1)
    got_layer, got_ids, codes = decode_refine_frame(frame)
    n_got, bpv = codes.shape
    if n_got != want.size or bpv != bytes_per_vector or got_layer != layer:
        raise PackFormatError(
            f"refinement frame must hold {want.size} codes of {bytes_per_vector} bytes for layer {layer}, "
            f"got {n_got} of {bpv} bytes for layer {got_layer}"
        )
    if not np.array_equal(got_ids, want):
        raise PackFormatError("refinement frame ids differ from the ids asked for")
    return codes
