"""Progressive top-K: coarse layer 0 for everything, refinement codes fetched for candidates only."""

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import (
    ChecksumError,
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    InvalidKError,
    NotFittedError,
    ReelpackError,
)
from reelpack.format import PackReader, write_pack
from reelpack.kernels import topk
from reelpack.search import PackLayerFetcher, progressive_topk


def _clustered(n=4000, d=32, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32) * 2.0
    labels = rng.integers(0, clusters, size=n)
    X = centers[labels] + rng.normal(size=(n, d)).astype(np.float32) * 0.6
    Q = centers[rng.integers(0, clusters, size=30)] + rng.normal(size=(30, d)).astype(np.float32) * 0.6
    return X.astype(np.float32), Q.astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    X, Q = _clustered()
    coarse = make_codec("simhash128").fit(X, seed=0)
    fine = make_codec("sq8").fit(X, seed=0)
    return X, Q, coarse, coarse.encode(X), fine, fine.encode(X)


def test_all_candidates_equals_refinement_alone(setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    ids, scores, nbytes = progressive_topk(Q, coarse, ccodes, lambda r: fcodes[r], fine, k=20, candidates=len(X))
    ref_ids, ref_scores = topk(fine.score(Q, fcodes), 20)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert nbytes == len(X) * fine.bytes_per_vector


def test_good_coarse_layer_recovers_refinement_topk(setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    k = 10
    ref_ids = topk(fine.score(Q, fcodes), k)[0]
    res = progressive_topk(Q, coarse, ccodes, lambda r: fcodes[r], fine, k=k, candidates=10 * k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(res.ids, ref_ids)])
    assert overlap >= 0.9, overlap
    coarse_ids = topk(coarse.score(Q, ccodes), k)[0]  # layer 0 alone is far worse: refinement matters
    assert np.mean([len(set(a) & set(b)) / k for a, b in zip(coarse_ids, ref_ids)]) < overlap - 0.3
    # the returned scores are the refinement scores of the returned items, best first
    full = fine.score(Q, fcodes)
    np.testing.assert_allclose(res.scores, np.take_along_axis(full, res.ids, axis=1), rtol=1e-6)
    assert np.all(np.diff(res.scores, axis=1) <= 0)
    # and it fetched far fewer refinement codes than the catalog
    assert res.items_fetched == np.unique(res.candidates).size < len(X)
    assert res.candidates.shape == (len(Q), 10 * k)


def test_bytes_accounting_item_granularity(setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    calls = []

    def fetch(rows):
        calls.append(rows.copy())
        return fcodes[rows]

    res = progressive_topk(Q[:1], coarse, ccodes, fetch, fine, k=5, candidates=37)
    assert len(calls) == 1 and calls[0].size == 37 and np.all(np.diff(calls[0]) > 0)
    assert res.bytes_fetched == 37 * fine.bytes_per_vector and res.items_fetched == 37
    # several queries: the union is fetched once
    res = progressive_topk(Q[:3], coarse, ccodes, fetch, fine, k=5, candidates=37)
    union = np.unique(res.candidates)
    np.testing.assert_array_equal(calls[-1], union)
    assert res.bytes_fetched == union.size * fine.bytes_per_vector


def test_pack_fetcher_counts_blocks_touched(tmp_path, setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    ids = np.arange(len(X)) * 7 + 3
    path = write_pack(tmp_path / "p.rpak", ids, [(coarse, ccodes), (fine, fcodes)], vectors=X, items_per_block=256)
    with PackReader(path) as pack:
        fetch = PackLayerFetcher(pack, 1)
        res = progressive_topk(Q[:2], pack.codec(0), pack.layer_codes(0), fetch, pack.codec(1), k=10, candidates=100)
        direct = progressive_topk(Q[:2], coarse, ccodes, lambda r: fcodes[r], fine, k=10, candidates=100)
        np.testing.assert_array_equal(res.ids, direct.ids)
        blocks = np.unique(np.unique(res.candidates) // 256)
        sizes = [min(256, len(X) - b * 256) * fine.bytes_per_vector for b in blocks]
        assert res.bytes_fetched == sum(sizes) == fetch.bytes_fetched
        assert fetch.blocks_fetched == blocks.size
        # unsorted rows come back in request order; a single row costs one whole block
        rows = np.array([4000 - 1, 5, 300, 5])
        codes, nbytes = fetch(rows)
        np.testing.assert_array_equal(codes, fcodes[rows])
        assert nbytes == (256 + 256 + (4000 - 15 * 256)) * fine.bytes_per_vector
        with pytest.raises(InvalidInputError):
            fetch(np.array([len(X)]))
        with pytest.raises(InvalidInputError):
            PackLayerFetcher(pack, 2)


def test_corrupt_block_raises_checksum_error(tmp_path, setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    path = write_pack(tmp_path / "p.rpak", np.arange(len(X)), [(coarse, ccodes), (fine, fcodes)], items_per_block=256)
    with PackReader(path) as pack:
        off = pack.layers[1].codes_offset
    raw = bytearray(path.read_bytes())
    raw[off + 10] ^= 0xFF  # block 0 of layer 1
    with PackReader.from_buffer(bytes(raw)) as pack:
        fetch = PackLayerFetcher(pack, 1)
        fetch(np.array([300, 1000]))  # untouched blocks still work
        with pytest.raises(ChecksumError):
            progressive_topk(Q, coarse, ccodes, fetch, fine, k=5, candidates=len(X))


def test_exclude_drops_items(setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    first = progressive_topk(Q[:2], coarse, ccodes, lambda r: fcodes[r], fine, k=5, candidates=50).ids
    res = progressive_topk(Q[:2], coarse, ccodes, lambda r: fcodes[r], fine, k=5, candidates=50,
                           exclude=[first[0, :3], np.array([], np.int64)])
    assert not set(first[0, :3]) & set(res.ids[0])
    np.testing.assert_array_equal(res.ids[1], first[1])
    # excluding nearly everything leaves -inf at the end
    n = len(X)
    res = progressive_topk(Q[:1], coarse, ccodes, lambda r: fcodes[r], fine, k=5, candidates=10,
                           exclude=[np.arange(n - 2)])
    assert set(res.ids[0, :2]) == {n - 2, n - 1} and np.all(np.isneginf(res.scores[0, 2:]))


def test_bad_input_raises_typed_errors(setup):
    X, Q, coarse, ccodes, fine, fcodes = setup
    ok = dict(queries=Q, coarse_codec=coarse, coarse_codes=ccodes, fetch_refinement=lambda r: fcodes[r],
              refine_codec=fine, k=5, candidates=50)
    cases = [
        (dict(k=0), InvalidKError),
        (dict(k=51), InvalidKError),
        (dict(candidates=len(X) + 1), InvalidKError),
        (dict(queries=Q[:, :5]), DimensionMismatchError),
        (dict(queries=Q.astype(complex)), DTypeError),
        (dict(coarse_codes=ccodes[:, :3]), DimensionMismatchError),
        (dict(coarse_codes=ccodes.astype(np.int32)), DTypeError),
        (dict(refine_codec=make_codec("sq8")), NotFittedError),
        (dict(refine_codec=make_codec("sq8").fit(X[:, :8])), DimensionMismatchError),
        (dict(coarse_codec="simhash128"), InvalidInputError),
        (dict(fetch_refinement=None), InvalidInputError),
        (dict(fetch_refinement=lambda r: fcodes[r][:-1]), DimensionMismatchError),
        (dict(fetch_refinement=lambda r: fcodes[r].astype(np.float32)), DTypeError),
        (dict(fetch_refinement=lambda r: (fcodes[r], 1, 2)), InvalidInputError),
        (dict(exclude=[np.array([1])]), DimensionMismatchError),
        (dict(exclude=[np.array([len(X)])] * len(Q)), InvalidInputError),
    ]
    for change, err in cases:
        with pytest.raises(err):
            progressive_topk(**{**ok, **change})
        assert issubclass(err, ReelpackError)
