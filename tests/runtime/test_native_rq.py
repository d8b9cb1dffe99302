"""The C runtime's residual codecs with a PCA projection (``-pD``) and unit-norm reconstructions (``-n``) against
the Python codec: one-shot scores, every stage prefix, the scanners' top-K, packs (with a damaged block), and
states the runtime must refuse with a typed error.

Tolerance: within 1e-5 of the largest |score|. The runtime scores ``(<P^T q, y> + <q, mean>) / ||x_hat||`` from
lookup tables and the norm ``||mean||^2 + 2 <P^T mean, y> + ||y||^2``; Python decodes ``x_hat`` in float32 and
multiplies (BLAS), so the two round differently. Top-K ids must be identical (the data has no near ties).
"""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.errors import InvalidInputError, SerializationError
from reelpack.format import PackReader, write_pack
from reelpack.search.native import NativePack, NativePackScanner, NativeScanner, _NativeCodec, _options

D, N, Q, K = 32, 1500, 4, 30
SPECS = ["rq8-n", "rq4+4-r-n", "rq8-p16-n", "rq8-p16"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit-norm items float32 [N, D] and Gaussian queries float32 [Q, D]."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, D)).astype(np.float32)
    X = centers[rng.integers(0, 20, N)] + 0.4 * rng.normal(size=(N, D)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), rng.normal(size=(Q, D)).astype(np.float32)


X, QUERIES = _data()
_FITTED: dict[str, tuple] = {}


def _fitted(spec: str):
    """(codec, codes uint8 [N, B]) for spec, fitted on first use (each test pays at most one fit)."""
    if spec not in _FITTED:
        codec = make_codec(spec).fit(X, seed=1)
        _FITTED[spec] = (codec, codec.encode(X))
    return _FITTED[spec]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * (float(np.abs(b).max()) or 1.0))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Row indices int64 [q, k] of the k best scores float32 [q, n], ties to the lower row."""
    return np.stack([np.lexsort((np.arange(s.size), -s))[:k] for s in scores])


@pytest.mark.parametrize("spec", SPECS)
def test_codec_score_matches_python_at_every_stage_prefix(rt, spec):
    codec, codes = _fitted(spec)
    native = _NativeCodec(rt, codec.to_bytes())
    assert (native.spec, native.family, native.dim, native.bytes_per_vector) == (spec, "rq", D, codec.bytes_per_vector)
    assert int(rt.lib.rp_codec_stages(native.handle)) == len(codec.stages)
    full = codec.score(QUERIES, codes)
    for i, q in enumerate(QUERIES):
        _close(native.score(q, codes), full[i])
    for stages in range(1, len(codec.stages) + 1):
        prefix = np.ascontiguousarray(codes[:, : codec.prefix_bytes(stages)])
        ref = codec.score_prefix(QUERIES, prefix, stages)
        for i, q in enumerate(QUERIES):
            got = native.score(q, prefix, stages)
            _close(got, ref[i])
            np.testing.assert_array_equal(native.score(q, codes, stages), got)  # a prefix read in place
    if codec.unit:  # unit reconstructions: |score| <= ||q||
        assert (np.abs(full) <= np.linalg.norm(QUERIES, axis=1)[:, None] * (1 + 1e-5)).all()


@pytest.mark.parametrize("spec", SPECS)
def test_scanner_top_k_matches_python(rt, spec):
    codec, codes = _fitted(spec)
    ref = codec.score(QUERIES, codes)
    order = _top(ref, K)
    rt.set_kernel("auto")
    ids, scores = NativeScanner(codec, codes, runtime=rt).search(QUERIES, K)
    np.testing.assert_array_equal(ids, order)
    _close(scores, np.take_along_axis(ref, order, 1))
    rt.set_kernel("portable")
    ids2, scores2 = NativeScanner(codec, codes, runtime=rt).search(QUERIES, K)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(scores2, scores)  # one scalar post-scale on every kernel path


@pytest.mark.parametrize("spec", ["rq4+4-r-n", "rq8-p16-n"])
def test_progressive_prefix_scanner_normalises_the_prefix(rt, spec):
    codec, codes = _fitted(spec)
    for stages in range(1, len(codec.stages) + 1):
        prefix = np.ascontiguousarray(codes[:, : codec.prefix_bytes(stages)])
        ref = codec.score_prefix(QUERIES, prefix, stages)
        order = _top(ref, K)
        ids, scores = NativeScanner(codec, codes, stages=stages, runtime=rt).search(QUERIES, K)
        np.testing.assert_array_equal(ids, order)
        _close(scores, np.take_along_axis(ref, order, 1))
        ids2, scores2 = NativeScanner(codec, prefix, stages=stages, runtime=rt).search(QUERIES, K)  # the prefix alone
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_array_equal(scores2, scores)


def test_pack_layers_rank_like_python_with_a_damaged_block(rt, tmp_path):
    """rq -n and -pD layers of a pack: the pack's precomputed norms (rp_pack_scanner / rp_pack_search) give the
    Python ranking, a stage prefix is read in place in the layer's rows, and a damaged block's items are skipped
    (its rows never read)."""
    specs = ["rq8-n", "rq8-p16-n", "rq8-p16", "rq4+4-r-n"]
    ids = np.arange(N, dtype=np.int64) * 3 + 1
    path = tmp_path / "rq.rpak"
    write_pack(path, ids, [_fitted(s) for s in specs], vectors=X, items_per_block=256)
    reader = PackReader(path)
    q = QUERIES[0]
    pack = NativePack(path, runtime=rt)
    for layer, spec in enumerate(specs):
        info = pack.layer_info(layer)
        assert (info.spec, info.status) == (spec, "RP_OK")
        ref = reader.codec(layer).score(q[None], reader.layer_codes(layer))[0]
        order = _top(ref[None], K)[0]
        got_ids, got_scores = pack.search(layer, q, K)
        np.testing.assert_array_equal(got_ids, ids[order])
        _close(got_scores, ref[order])
        rows, scores = pack.scanner(layer).search(q, K)
        np.testing.assert_array_equal(rows, order)
        np.testing.assert_array_equal(scores, got_scores)
    codec, codes = reader.codec(3), reader.layer_codes(3)
    ref = codec.score_prefix(q[None], np.ascontiguousarray(codes[:, : codec.prefix_bytes(1)]), 1)[0]
    order = _top(ref[None], K)[0]
    rows, scores = NativePackScanner(pack, 3, _options(1, 0, 8, True)).search(q, K)  # stage 0 of 2, stride 0
    np.testing.assert_array_equal(rows, order)
    _close(scores, ref[order])
    with pytest.raises(InvalidInputError, match="stride"):
        NativePackScanner(pack, 3, _options(1, codec.prefix_bytes(1), 8, True))  # not the layer's width
    # damage block 1 of layer 0 (rq8-n): verify first (the norms are then filled once, skipping that block)
    raw = bytearray(path.read_bytes())
    lay = reader.layers[0]
    raw[lay.codes_offset + 1 * lay.items_per_block * lay.bytes_per_vector + 3] ^= 0x10
    damaged = NativePack(bytes(raw), runtime=rt)
    assert damaged.verify()["bad_blocks"] == 1 and damaged.bad_blocks(0) == [1]
    data = PackReader.from_buffer(bytes(raw)).read_layer(0)  # the intact rows
    ref = reader.codec(0).score(q[None], data.codes)[0]
    order = _top(ref[None], K)[0]
    got_ids, got_scores = damaged.search(0, q, K)
    np.testing.assert_array_equal(got_ids, data.item_ids[order])
    _close(got_scores, ref[order])
    assert not set(got_ids.tolist()) & set(ids[256:512].tolist())


def _state(codec, spec: str | None = None, dim: int | None = None, **changes: np.ndarray | None) -> bytes:
    """codec's state with its spec, dim or arrays replaced (an array set to None is dropped)."""
    s, d, meta, arrays = unpack_state(codec.to_bytes())
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return pack_state(spec or s, dim or d, meta, arrays)


def test_bad_states_are_typed_errors(rt):
    codec, _ = _fitted("rq8-p16-n")
    arrays = unpack_state(codec.to_bytes())[3]
    P, mean = arrays["projection"], arrays["mean"]
    bad = {
        "projection [d, D/2]": (_state(codec, projection=np.ascontiguousarray(P[:, :8])), "projection"),
        "projection [D, d]": (_state(codec, projection=np.ascontiguousarray(P.T)), "projection"),
        "mean [d - 1]": (_state(codec, mean=mean[:-1].copy()), "mean"),
        "no mean": (_state(codec, mean=None), "3 arrays"),
        "-p with -b": (_state(codec, spec="rq8-p16-b"), "-b"),
        "-n with -b": (_state(_fitted("rq8-n")[0], spec="rq8-n-b"), "-b"),
        "D > d": (_state(codec, spec="rq8-p48-n", projection=np.zeros((D, 48), np.float32),
                         codebooks=np.zeros((8, 256, 48), np.float32)), "projects to 48 of only 32"),  # fmt: skip
        "codebooks [M, 256, d]": (_state(codec, codebooks=np.zeros((8, 256, D), np.float32)), "codebooks"),
        "projection not orthonormal": (_state(codec, projection=P * np.float32(0.9)), "orthonormal"),
        "NaN in the mean": (_state(codec, mean=np.where(np.arange(D) == 3, np.nan, mean).astype(np.float32)), "NaN"),
        "projection on a plain -n": (_state(_fitted("rq8-n")[0], projection=P, mean=mean), "4 arrays, expected 2"),
    }
    for what, (state, message) in bad.items():
        with pytest.raises(SerializationError, match=message) as info:
            _NativeCodec(rt, state)
        assert "RP_E_CODEC" in str(info.value), what
    # the same state, well-formed, opens (the checks above are the only difference)
    assert _NativeCodec(rt, _state(codec)).spec == "rq8-p16-n"
