"""ONNX export of codec scorers + TopK: parity with Codec.score / topk, embedded codes, CLI, errors, atomic writes."""

import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from reelpack.cli import app  # noqa: E402
from reelpack.codecs import make_codec  # noqa: E402
from reelpack.errors import (  # noqa: E402
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    NotFittedError,
    SerializationError,
    UnsupportedOperationError,
)
from reelpack.format import PackReader, write_pack  # noqa: E402
from reelpack.kernels import topk  # noqa: E402
from reelpack.search.onnx_export import SUPPORTED_FAMILIES, OnnxScorer, export_onnx, onnx_supported  # noqa: E402

K = 20
# spec -> dimension (odd d exercises sq4's pad nibble and rabitq's pad bits)
SPECS = {
    "float32": 33,
    "fp16": 33,
    "sq8": 33,
    "sq8-p99.5": 32,
    "sq4": 33,
    "sq4-p99": 32,
    "pq8": 32,
    "opq8,pq8": 32,
    "apq8": 32,
    "opq8,apq8-t0.3": 32,
    "simhash64": 32,
    "simhash48-hamming": 32,
    "rabitq": 33,
    "rabitq3": 33,
    "rabitq8": 32,
    "pq8x4": 32,  # 4-bit PQ (nibble-packed)
    "pq16x4": 32,
    "apq8-t0.3": 32,
    "opq8,apq8": 32,
}


def _data(d, n=1200, q=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 2.0, size=d).astype(np.float32)
    Q = rng.normal(size=(q, d)).astype(np.float32)
    return X, Q


_FITTED = {}


def _fitted(spec):
    if spec not in _FITTED:
        X, Q = _data(SPECS[spec])
        codec = make_codec(spec).fit(X, seed=3)
        _FITTED[spec] = (codec, codec.encode(X), Q)
    return _FITTED[spec]


def _assert_matches(codec, codes, Q, ids, scores, k=K):
    ref = codec.score(Q, codes)
    ref_ids, ref_vals = topk(ref, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (Q.shape[0], k)
    scale = float(np.abs(ref).max())
    assert np.abs(scores - ref_vals).max() <= 1e-5 * scale
    np.testing.assert_array_equal(ids, ref_ids)
    # the returned scores belong to the returned ids and come best first
    np.testing.assert_allclose(np.take_along_axis(ref, ids, axis=1), scores, rtol=0, atol=1e-5 * scale)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("spec", list(SPECS))
def test_scores_and_ids_match_codec(spec):
    codec, codes, Q = _fitted(spec)
    assert onnx_supported(codec)
    scorer = OnnxScorer(export_onnx(codec, K))
    assert not scorer.embedded and scorer.k == K and scorer.spec == codec.spec and scorer.dim == codec.dim
    ids, scores = scorer.search(Q, codes)
    _assert_matches(codec, codes, Q, ids, scores)
    # one model serves another catalog encoded by the same codec
    other = codes[::-3][:500]
    ids2, scores2 = scorer.search(Q[:2], other)
    _assert_matches(codec, other, Q[:2], ids2, scores2)


@pytest.mark.parametrize("spec", ["fp16", "sq4", "opq8,pq8", "simhash64", "rabitq3"])
def test_embedded_codes(spec):
    codec, codes, Q = _fitted(spec)
    model = export_onnx(codec, K, codes=codes)
    scorer = OnnxScorer(model)
    assert scorer.embedded and scorer.n_items == len(codes) and scorer.ids_kind == "rows"
    sess_inputs = [i.name for i in scorer.session.get_inputs()]
    assert sess_inputs == ["query"]
    ids, scores = scorer.search(Q)
    _assert_matches(codec, codes, Q, ids, scores)
    # with item ids, 'ids' maps rows to them
    item_ids = np.arange(len(codes), dtype=np.int64) * 7 + 1000
    ids2, scores2 = OnnxScorer(export_onnx(codec, K, codes=codes, item_ids=item_ids)).search(Q)
    np.testing.assert_array_equal(ids2, item_ids[ids])
    np.testing.assert_array_equal(scores2, scores)


def test_model_signature_and_metadata():
    codec, codes, _ = _fitted("pq8")
    model = onnx.load_from_string(export_onnx(codec, 7))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 18
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    assert ins["query"].elem_type == onnx.TensorProto.FLOAT and ins["codes"].elem_type == onnx.TensorProto.UINT8
    assert ins["codes"].shape.dim[1].dim_value == codec.bytes_per_vector
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outs == {"ids": onnx.TensorProto.INT64, "scores": onnx.TensorProto.FLOAT}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["reelpack.spec"] == "pq8" and props["reelpack.k"] == "7" and props["reelpack.ids"] == "rows"
    assert "TopK" in {n.op_type for n in model.graph.node}


def test_ties_go_to_the_lower_index():
    X, Q = _data(16, n=50)
    X[10] = X[3]
    X[40] = X[3]
    codec = make_codec("float32").fit(X)
    codes = codec.encode(X)
    q = X[3:4] * 2.0  # items 3, 10 and 40 tie for first place
    ids, scores = OnnxScorer(export_onnx(codec, 5)).search(q, codes)
    assert ids[0, :3].tolist() == [3, 10, 40] and scores[0, 0] == scores[0, 1] == scores[0, 2]
    np.testing.assert_array_equal(ids, topk(codec.score(q, codes), 5)[0])


_F32_SCORER = {}


def _bits_scorer(spec):
    if spec not in _F32_SCORER:
        codec = make_codec(spec).fit(np.zeros((2, 4), np.float32))
        _F32_SCORER[spec] = (codec, OnnxScorer(export_onnx(codec, 4)))
    return _F32_SCORER[spec]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-(2.0**99), 2.0**99, width=32), min_size=16, max_size=16))
def test_float_bytes_decode_exactly(values):
    """Exact bit-level decoding of float32 (incl. subnormals, -0) and fp16 codes: one-hot queries read values back."""
    X = np.asarray(values, np.float32).reshape(4, 4)
    eye = np.eye(4, dtype=np.float32)
    for spec in ("float32", "fp16"):
        codec, scorer = _bits_scorer(spec)
        codes = codec.encode(X)
        ids, scores = scorer.search(eye, codes)
        decoded = codec.decode(codes)  # [4 items, 4 dims]; query j reads dimension j of every item
        got = np.empty_like(decoded)
        np.put_along_axis(got.T, ids, scores, axis=1)
        np.testing.assert_array_equal(got, decoded)


def test_pq_with_few_centroids_rejects_out_of_range_codes():
    X, Q = _data(16, n=100)
    codec = make_codec("pq4").fit(X)  # ksub = 100 < 256
    codes = codec.encode(X)
    scorer = OnnxScorer(export_onnx(codec, 5))
    _assert_matches(codec, codes, Q, *scorer.search(Q, codes), k=5)
    bad = codes.copy()
    bad[0, 0] = 200
    with pytest.raises(InvalidInputError, match="centroids"):
        scorer.search(Q, bad)
    with pytest.raises(InvalidInputError, match="centroids"):
        export_onnx(codec, 5, codes=bad)


def test_pq4_with_few_centroids_rejects_out_of_range_nibbles():
    X, Q = _data(16, n=10)
    codec = make_codec("pq8x4").fit(X)  # ksub = 10 < 16
    codes = codec.encode(X)
    scorer = OnnxScorer(export_onnx(codec, 5))
    _assert_matches(codec, codes, Q, *scorer.search(Q, codes), k=5)
    bad = codes.copy()
    bad[0, 1] = 0xC3  # high nibble 12 >= 10
    with pytest.raises(InvalidInputError, match="centroids"):
        codec.score(Q, bad)
    with pytest.raises(InvalidInputError, match="centroids"):
        scorer.search(Q, bad)


def test_rabitq_rejects_bad_factor_bytes():
    codec, codes, Q = _fitted("rabitq")
    bad = codes.copy()
    nb0 = -(-codec.dim // 8)
    bad[5, nb0 : nb0 + 2] = np.array([np.nan], "<f2").view(np.uint8)
    with pytest.raises(InvalidInputError, match="factor bytes"):
        codec.score(Q, bad)
    with pytest.raises(InvalidInputError, match="factor bytes"):
        OnnxScorer(export_onnx(codec, K)).search(Q, bad)


@pytest.mark.parametrize("spec", ["countsketch16", "rq4+4", "rq2+2-b", "wsq8", "usq8", "qat-pq8"])
def test_unsupported_families(spec):
    X, _ = _data(32, n=600)
    codec = make_codec(spec)
    assert codec.family not in SUPPORTED_FAMILIES and not onnx_supported(codec)
    codec.fit(X, seed=0)
    with pytest.raises(UnsupportedOperationError, match="supported families: .*pq"):
        export_onnx(codec, 5)


def test_bad_inputs_raise_typed_errors():
    codec, codes, Q = _fitted("sq8")
    scorer = OnnxScorer(export_onnx(codec, K))
    with pytest.raises(DimensionMismatchError, match="dimension"):
        scorer.search(Q[:, :-1], codes)
    nan_q = Q.copy()
    nan_q[1, 2] = np.nan
    with pytest.raises(NonFiniteError):
        scorer.search(nan_q, codes)
    with pytest.raises(DimensionMismatchError, match="bytes per vector"):
        scorer.search(Q, codes[:, :-1])
    with pytest.raises(DTypeError):
        scorer.search(Q, codes.astype(np.int16))
    with pytest.raises(EmptyInputError):
        scorer.search(Q[:0], codes)
    with pytest.raises(InvalidKError, match="larger than the catalog"):
        scorer.search(Q, codes[: K - 1])
    with pytest.raises(InvalidInputError, match="none given"):
        scorer.search(Q)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(InvalidKError):
            export_onnx(codec, bad_k)
    with pytest.raises(InvalidKError, match="larger than the catalog"):
        export_onnx(codec, 31, codes=codes[:30])
    with pytest.raises(DimensionMismatchError):
        export_onnx(codec, 5, codes=codes[:, :-1])
    with pytest.raises(InvalidInputError, match="item_ids need embedded codes"):
        export_onnx(codec, 5, item_ids=np.arange(len(codes)))
    with pytest.raises(DimensionMismatchError, match="item_ids"):
        export_onnx(codec, 5, codes=codes, item_ids=np.arange(3))
    with pytest.raises(InvalidInputError, match="opset"):
        export_onnx(codec, 5, opset=11)
    with pytest.raises(NotFittedError):
        export_onnx(make_codec("pq4"), 5)
    embedded = OnnxScorer(export_onnx(codec, 5, codes=codes))
    with pytest.raises(InvalidInputError, match="embeds its codes"):
        embedded.search(Q, codes)
    with pytest.raises(SerializationError):
        OnnxScorer(b"not an onnx model")
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    plain = h.make_model(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                         opset_imports=[h.make_opsetid("", 18)])
    plain.ir_version = 10
    with pytest.raises(SerializationError, match="reelpack"):
        OnnxScorer(plain.SerializeToString())


def test_atomic_write(tmp_path, monkeypatch):
    codec, codes, _ = _fitted("sq4")
    target = tmp_path / "model.onnx"
    data = export_onnx(codec, 5, path=target)
    assert target.read_bytes() == data
    before = target.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        export_onnx(codec, 9, path=target)
    assert target.read_bytes() == before  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp file left
    monkeypatch.undo()
    with pytest.raises(UnsupportedOperationError):
        export_onnx(make_codec("countsketch16").fit(_data(32, n=300)[0]), 5, path=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# ---- CLI -------------------------------------------------------------------------------------------
runner = CliRunner()


def _run_cli(args):
    r = runner.invoke(app, args)
    return r.exit_code, " ".join(r.output.split())  # rich wraps long lines



def _pack(tmp_path, specs=("pq8", "sq8"), n=700, d=32):
    X, Q = _data(d, n=n, seed=5)
    item_ids = np.arange(n, dtype=np.int64)[::-1] * 3 + 11  # unsorted on purpose
    layers = []
    for spec in specs:
        codec = make_codec(spec).fit(X, seed=0)
        layers.append((codec, codec.encode(X)))
    path = write_pack(tmp_path / "items.rpak", item_ids, layers, vectors=X, items_per_block=256)
    return path, Q


def test_cli_export_onnx_end_to_end(tmp_path):
    path, Q = _pack(tmp_path)
    code, out = _run_cli(["export-onnx", str(path), "-k", "10"])
    assert code == 0, out
    model = path.with_suffix(".onnx")
    assert model.is_file() and "codec pq8" in out and "K=10" in out and f"{model.stat().st_size} bytes" in out
    with PackReader(path) as reader:
        codec, codes, item_ids = reader.codec(0), np.array(reader.layer_codes(0)), np.array(reader.item_ids)
        codec1, codes1 = reader.codec(1), np.array(reader.layer_codes(1))
    ids, scores = OnnxScorer(model).search(Q, codes)
    _assert_matches(codec, codes, Q, ids, scores, k=10)

    out = tmp_path / "sq8_embedded.onnx"
    code, text = _run_cli(["export-onnx", str(path), "--layer", "1", "--embed-codes", "-o", str(out), "--k", "7"])
    assert code == 0, text
    assert "codec sq8" in text and "700 embedded items" in text
    scorer = OnnxScorer(out)
    assert scorer.embedded and scorer.ids_kind == "item_ids"
    ids, scores = scorer.search(Q)
    ref_rows, ref_vals = topk(codec1.score(Q, codes1), 7)
    np.testing.assert_array_equal(ids, item_ids[ref_rows])
    assert np.abs(scores - ref_vals).max() <= 1e-5 * np.abs(ref_vals).max()


def test_cli_export_onnx_errors(tmp_path):
    path, _ = _pack(tmp_path, specs=("countsketch16", "sq8"), n=300)
    code, out = _run_cli(["export-onnx", str(path), "-o", str(tmp_path / "a.onnx")])
    assert code == 2 and "supported families: float32" in out
    assert not (tmp_path / "a.onnx").exists()
    code, out = _run_cli(["export-onnx", str(path), "--layer", "1", "--embed-codes", "-k", "301"])
    assert code == 2 and "larger than the catalog" in out
    code, out = _run_cli(["export-onnx", str(path), "--layer", "5"])
    assert code == 2 and "layer must be" in out
    code, out = _run_cli(["export-onnx", str(path), "--layer", "1", "-k", "0"])
    assert code == 2 and "positive" in out
    code, out = _run_cli(["export-onnx", str(tmp_path / "missing.rpak")])
    assert code == 2 and "not found" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.rpak"]


def test_supported_family_list_is_registered():
    from reelpack.codecs import available_codecs

    assert set(SUPPORTED_FAMILIES) <= set(available_codecs())
    assert {make_codec(s).family for s in SPECS} == set(SUPPORTED_FAMILIES)  # every family's export is run above
