"""SimHash: bit layout, the documented estimator, the fitted scale, and quality against faiss IndexLSH."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import CodecSpecError
from reelpack.kernels import topk


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def test_bit_order_is_packbits_big_endian(contract_data):
    c = make_codec("simhash64").fit(contract_data["train"], seed=3)
    X = contract_data["items"][:20]
    bits = (X @ c.projection.T) > 0  # [n, 64], bit i of each vector
    codes = c.encode(X)
    for i in (0, 1, 7, 8, 13, 63):
        assert np.array_equal((codes[:, i // 8] >> (7 - i % 8)) & 1, bits[:, i].astype(np.uint8))


@pytest.mark.parametrize("spec", ["simhash0", "simhash12", "simhash70000"])
def test_bad_bit_counts(spec):
    with pytest.raises(CodecSpecError, match="multiple of 8"):
        make_codec(spec)


def test_projection_is_seeded_unit_rows_orthogonal_within_blocks(contract_data):
    a = make_codec("simhash128").fit(contract_data["train"], seed=5)
    b = make_codec("simhash128-hamming").fit(contract_data["train"][:10], seed=5)
    c = make_codec("simhash128").fit(contract_data["train"], seed=6)
    assert a.projection.shape == (128, 32) and a.projection.dtype == np.float32
    np.testing.assert_array_equal(a.projection, b.projection)  # only the seed picks R
    assert not np.allclose(a.projection, c.projection)
    np.testing.assert_allclose(np.linalg.norm(a.projection, axis=1), 1.0, atol=1e-5)
    for blk in range(4):  # 128 rows = 4 orthogonal 32 x 32 blocks
        R = a.projection[32 * blk : 32 * (blk + 1)]
        np.testing.assert_allclose(R @ R.T, np.eye(32), atol=1e-5)
    assert np.abs(a.projection[:32] @ a.projection[32:64].T).max() > 0.1  # blocks are independent


def test_projection_rows_are_uniform_directions():
    # every coordinate of a uniform unit vector in R^d has mean 0 and variance 1/d
    R = make_codec("simhash4096").fit(np.eye(16, dtype=np.float32), seed=2).projection
    assert abs(R.mean()) < 0.01
    np.testing.assert_allclose((R.astype(np.float64) ** 2).mean(axis=0), 1 / 16, rtol=0.1)


def test_asymmetric_estimator_matches_the_documented_expectation():
    # E[(R q).s] = b * kappa_d * q.x / |x| for unit rows uniform on the sphere; with b = 4096 one
    # draw is within a few %
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 24)).astype(np.float32)
    Q = rng.normal(size=(6, 24)).astype(np.float32)
    c = make_codec("simhash4096").fit(X, seed=1)
    b, d = 4096, 24
    kappa = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    est = c.score(Q, c.encode(X[:50])) / (c.scale * b * kappa)
    cosine_like = Q @ X[:50].T / np.linalg.norm(X[:50], axis=1)
    assert np.abs(est - cosine_like).max() < 0.08 * np.linalg.norm(Q, axis=1).max()
    # for vectors of norm rho = c * b * kappa_d the score estimates q.x itself
    rho = c.scale * b * kappa
    Xr = X[:50] / np.linalg.norm(X[:50], axis=1, keepdims=True) * rho
    rel = np.abs(c.score(Q, c.encode(Xr)) - Q @ Xr.T) / (np.linalg.norm(Q, axis=1)[:, None] * rho)
    assert rel.max() < 0.08


def test_scale_is_the_least_squares_fit(contract_data):
    X = contract_data["train"]
    c = make_codec("simhash64").fit(X, seed=0)
    codes = c.encode(X)
    dec = c.decode(codes)
    base = ((dec - X) ** 2).sum()
    for factor in (0.95, 1.05):
        assert (((dec * factor) - X) ** 2).sum() > base
    assert c.scale > 0


def test_asymmetric_beats_hamming_and_hamming_matches_faiss_lsh(make_clustered):
    # equal bytes (8 per vector); SimHash ranks by q.x/|x|, so the reference ranking is cosine to the items
    d, nbits = 32, 64
    X = make_clustered(4200, d, n_clusters=64, seed=21)
    train, base, queries = X[:1000], X[1000:4000], X[4000:]
    truth = topk(queries @ (base / np.linalg.norm(base, axis=1, keepdims=True)).T, 10)[0]
    asym = make_codec(f"simhash{nbits}").fit(train, seed=0)
    ham = make_codec(f"simhash{nbits}-hamming").fit(train, seed=0)
    codes = asym.encode(base)
    r_asym = _recall(topk(asym.score(queries, codes), 10)[0], truth)
    r_ham = _recall(topk(ham.score(queries, codes), 10)[0], truth)  # Hamming ties go to the lower index
    index = faiss.IndexLSH(d, nbits)
    index.train(train)
    index.add(base)
    r_faiss = _recall(index.search(queries, 10)[1], truth)
    assert r_asym > r_ham + 0.03, (r_asym, r_ham)
    assert r_ham >= r_faiss - 0.05, (r_ham, r_faiss)
    assert r_ham > 0.3
