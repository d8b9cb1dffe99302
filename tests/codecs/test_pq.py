"""PQ and OPQ: parameters, small training sets, quality against faiss twins at equal bytes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.codecs.pq import OPQProductQuantizer, pq_assign
from reelpack.errors import CodecSpecError, DimensionMismatchError, InvalidInputError, SerializationError
from reelpack.kernels import topk

D, M = 32, 8
N_TRAIN, N_BASE, N_QUERY = 3000, 3000, 200


@pytest.fixture(scope="module")
def quality_data(make_clustered):
    X = make_clustered(N_TRAIN + N_BASE + N_QUERY, D, n_clusters=64, seed=11)
    train, base, queries = X[:N_TRAIN], X[N_TRAIN : N_TRAIN + N_BASE], X[N_TRAIN + N_BASE :]
    truth = topk(queries @ base.T, 10)[0]
    return {"train": train, "base": base, "queries": queries, "truth": truth}


@pytest.fixture(scope="module")
def ours(quality_data):
    return {
        "pq": make_codec(f"pq{M}").fit(quality_data["train"], seed=0),
        "opq": make_codec(f"opq{M},pq{M}").fit(quality_data["train"], seed=0),
    }


def _mse(reconstruction: np.ndarray, X: np.ndarray) -> float:
    return float(((reconstruction.astype(np.float64) - X) ** 2).sum(axis=1).mean())


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)]))


# ---- parameters ---------------------------------------------------------------------------------------


def test_m_must_divide_d():
    X = np.random.default_rng(0).normal(size=(300, 30)).astype(np.float32)
    for spec in ("pq8", "opq8,pq8"):
        with pytest.raises(DimensionMismatchError, match=r"pq8 needs a dimension divisible by 8, got d=30"):
            make_codec(spec).fit(X)
    with pytest.raises(DimensionMismatchError, match="divisible by 64"):
        make_codec("pq64").fit(X)


@pytest.mark.parametrize("spec", ["opq8,pq16", "opq16,pq8"])
def test_opq_m_must_equal_pq_m(spec):
    with pytest.raises(CodecSpecError, match="must equal the PQ's M"):
        make_codec(spec)


@pytest.mark.parametrize("spec", ["pq0", "pq5000", "opq0,pq0"])
def test_pq_m_out_of_range(spec):
    with pytest.raises(CodecSpecError, match="1..4096"):
        make_codec(spec)


def test_fewer_than_256_rows_use_fewer_centroids():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 16)).astype(np.float32)
    for spec in ("pq4", "opq4,pq4"):
        c = make_codec(spec).fit(X)
        assert c.ksub == 100 and c.centroids.shape == (4, 100, 4)
        codes = c.encode(rng.normal(size=(500, 16)).astype(np.float32))
        assert codes.max() < 100
        # with ksub == n, every training row is reproduced exactly (each row is a centroid)
        np.testing.assert_allclose(c.decode(c.encode(X)), X, atol=1e-5)
        bad = codes.copy()
        bad[3, 1] = 200
        with pytest.raises(InvalidInputError, match="value 200.*only 100 centroids"):
            c.decode(bad)
        with pytest.raises(InvalidInputError, match="only 100 centroids"):
            c.score(X[:2], bad)
        twin = codec_from_bytes(c.to_bytes())
        assert twin.ksub == 100 and np.array_equal(twin.encode(X), c.encode(X))


def test_pq_assign_is_the_nearest_centroid():
    rng = np.random.default_rng(3)
    cents = rng.normal(size=(4, 256, 3)).astype(np.float32)
    Y = rng.normal(size=(700, 12)).astype(np.float32)
    codes = pq_assign(Y, cents)
    sub = Y.reshape(700, 4, 1, 3).astype(np.float64)
    dist = ((sub - cents[None].astype(np.float64)) ** 2).sum(axis=3)  # [n, m, ksub]
    np.testing.assert_array_equal(codes, dist.argmin(axis=2))


def test_adc_and_gemm_paths_agree(ours, quality_data):
    # <= 64 queries go through LUT + ADC, more through decode + GEMM
    for codec in ours.values():
        codes = codec.encode(quality_data["base"])
        many = quality_data["queries"][:100]
        few = codec.score(many[:10], codes)
        bulk = codec.score(many, codes)[:10]
        np.testing.assert_allclose(few, bulk, rtol=1e-4, atol=1e-4 * np.abs(bulk).max())


def test_opq_rotation_is_orthogonal_and_learned(ours):
    R = ours["opq"].rotation
    assert R.dtype == np.float32 and R.shape == (D, D)
    np.testing.assert_allclose(R @ R.T, np.eye(D), atol=1e-4)
    assert np.abs(R - np.eye(D)).max() > 0.1


def test_opq_state_with_a_non_orthogonal_rotation_is_refused(ours):
    spec, dim, meta, arrays = unpack_state(ours["opq"].to_bytes())
    arrays["rotation"] = arrays["rotation"] * np.float32(1.5)
    with pytest.raises(SerializationError, match="not orthogonal"):
        codec_from_bytes(pack_state(spec, dim, meta, arrays))


def test_opq_outer_iterations_lower_the_error(quality_data):
    X = quality_data["train"][:1500]
    start = OPQProductQuantizer(M, outer_iters=0).fit(X, seed=0)
    learned = make_codec(f"opq{M},pq{M}").fit(X, seed=0)
    assert _mse(learned.decode(learned.encode(X)), X) < _mse(start.decode(start.encode(X)), X)


# ---- quality against faiss at equal bytes (8 bytes per vector) ----------------------------------------


def test_pq_reconstruction_vs_variance_and_faiss(ours, quality_data, faiss_single_thread):
    base = quality_data["base"]
    total_var = float(base.var(axis=0).sum())
    index = faiss.IndexPQ(D, M, 8)
    index.train(quality_data["train"])
    faiss_mse = _mse(index.sa_decode(index.sa_encode(base)), base)
    our_mse = _mse(ours["pq"].decode(ours["pq"].encode(base)), base)
    assert our_mse < 0.15 * total_var
    assert our_mse <= 1.02 * faiss_mse, (our_mse, faiss_mse)


def test_opq_reconstruction_vs_faiss_opq(ours, quality_data, faiss_single_thread):
    base = quality_data["base"]
    # faiss defaults (50 alternations); "np" skips polysemous training, which only permutes code ids
    index = faiss.index_factory(D, f"OPQ{M},PQ{M}np")
    index.train(quality_data["train"])
    faiss_mse = _mse(index.sa_decode(index.sa_encode(base)), base)
    our_mse = _mse(ours["opq"].decode(ours["opq"].encode(base)), base)
    pq_mse = _mse(ours["pq"].decode(ours["pq"].encode(base)), base)
    assert our_mse <= 1.02 * faiss_mse, (our_mse, faiss_mse)
    assert our_mse < pq_mse


def test_pq_recall_vs_faiss_index_pq(ours, quality_data, faiss_single_thread):
    base, queries, truth = quality_data["base"], quality_data["queries"], quality_data["truth"]
    index = faiss.IndexPQ(D, M, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(quality_data["train"])
    index.add(base)
    faiss_recall = _recall(index.search(queries, 10)[1], truth)
    pq = ours["pq"]
    our_recall = _recall(topk(pq.score(queries, pq.encode(base)), 10)[0], truth)
    opq = ours["opq"]
    opq_recall = _recall(topk(opq.score(queries, opq.encode(base)), 10)[0], truth)
    assert our_recall >= faiss_recall - 0.02, (our_recall, faiss_recall)
    assert opq_recall >= our_recall - 0.02
    assert our_recall > 0.3
