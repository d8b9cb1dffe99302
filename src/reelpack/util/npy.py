"""The one npy header reader: shape, dtype and data offset of an ``.npy`` stream without reading its data."""

from __future__ import annotations

import struct
import tokenize
from typing import Any

import numpy as np

from reelpack.errors import DataFormatError

__all__ = ["read_npy_header"]


def read_npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of the npy stream ``fh``, read from its header alone.

    Args:
        fh: a binary file object positioned at the start of an ``.npy`` (a file, or a zip member).

    Raises:
        DataFormatError: not npy format 1.0 or 2.0, a header numpy cannot parse (lying lengths, broken literals,
            truncation), or an object dtype (pickled data is never accepted).
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise DataFormatError(f"npy format {version}, expected 1.0 or 2.0")
        offset = fh.tell()
    except DataFormatError:
        raise
    except (ValueError, SyntaxError, TypeError, RecursionError, EOFError, struct.error, tokenize.TokenError) as exc:
        raise DataFormatError(f"the npy header cannot be parsed ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise DataFormatError(f"the npy header has dtype {dtype}: object arrays need pickle and are refused")
    return tuple(int(s) for s in shape), dtype, offset
