"""K is checked against the catalog at export time, also when codes are a model input (``n_items``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from reelpack.codecs import make_codec
from reelpack.errors import DimensionMismatchError, InvalidInputError, InvalidKError
from reelpack.search import OnnxScorer, export_onnx


@pytest.fixture(scope="module")
def sq8():
    X = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    codec = make_codec("sq8").fit(X, seed=0)
    return codec, codec.encode(X), X[:4]


def test_k_beyond_n_items_is_refused_at_export(sq8):
    codec = sq8[0]
    with pytest.raises(InvalidKError, match=r"K=1000000000 is larger than the catalog \(300 items\)"):
        export_onnx(codec, 1_000_000_000, n_items=300)
    with pytest.raises(InvalidKError, match="larger than the catalog"):
        export_onnx(codec, 301, n_items=300)


def test_k_up_to_n_items_exports_a_working_model(sq8):
    codec, codes, queries = sq8
    ids, scores = OnnxScorer(export_onnx(codec, 300, n_items=300)).search(queries, codes)
    assert ids.shape == scores.shape == (len(queries), 300)
    assert OnnxScorer(export_onnx(codec, 7, codes=codes, n_items=300)).search(queries)[0].shape == (4, 7)


def test_bad_n_items(sq8):
    codec, codes, _ = sq8
    for bad in (0, -5, 2.5, True, "300"):
        with pytest.raises(InvalidInputError, match="n_items"):
            export_onnx(codec, 5, n_items=bad)
    with pytest.raises(DimensionMismatchError, match="n_items is 299"):
        export_onnx(codec, 5, codes=codes, n_items=299)


def test_item_ids_beyond_int64_are_named_as_given(sq8):
    codec, codes, _ = sq8
    ids = np.arange(len(codes), dtype=np.uint64)
    ids[3] = 2**63
    with pytest.raises(InvalidInputError, match=r"below 2\*\*63; found 9223372036854775808"):
        export_onnx(codec, 5, codes=codes, item_ids=ids)
