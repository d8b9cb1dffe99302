"""The one npy header reader: shape/dtype/offset from the header alone, typed errors for anything else."""

import io

import numpy as np
import pytest

from reelpack.errors import DataFormatError
from reelpack.util.npy import read_npy_header


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_reads_shape_dtype_and_offset_without_the_data():
    data = _npy(np.zeros((3, 5), np.float32))
    shape, dtype, offset = read_npy_header(io.BytesIO(data))
    assert shape == (3, 5) and dtype == np.float32 and len(data) - offset == 3 * 5 * 4


@pytest.mark.parametrize("mutate", [
    lambda b: b[:5],  # truncated magic
    lambda b: b"\x93NUMPY\x09\x00" + b[8:],  # unknown version
    lambda b: b[:10] + b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5" + b[60:],  # broken literal
    lambda b: b[:20],  # truncated header
])  # fmt: skip
def test_bad_headers_raise_data_format_error(mutate):
    with pytest.raises(DataFormatError):
        read_npy_header(io.BytesIO(mutate(_npy(np.zeros((3, 5), np.float32)))))


def test_object_dtype_is_refused():
    with pytest.raises(DataFormatError, match="object"):
        read_npy_header(io.BytesIO(_npy(np.array([{"a": 1}], dtype=object))))
