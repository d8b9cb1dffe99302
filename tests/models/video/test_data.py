"""Tests of reelpack.models.video data side: the SYNTHETIC video catalog, the title encoder/alignment, the loaders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.data import synthetic_interactions
from reelpack.errors import (
    DataFormatError,
    DataNotFoundError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
)
from reelpack.models.video import (
    HashingTitleEncoder,
    TitleAlignment,
    VideoCatalog,
    align_titles,
    load_video_catalog,
    synthetic_video_catalog,
)
from reelpack.models.video.data import FRAME_GENERIC, FRAME_SIGNAL
from reelpack.models.video.text import _hashed_gaussian

N_ITEMS, N_FRAMES, D, SIG, K = 500, 16, 32, 4, 4
KW = dict(n_frames=N_FRAMES, d_frame=D, signal_frames=SIG, seed=3, title_dim=64)


@pytest.fixture(scope="module")
def inter():
    return synthetic_interactions(n_users=100, n_items=N_ITEMS, n_clusters=8, seed=1)


@pytest.fixture(scope="module")
def cat(inter):
    return synthetic_video_catalog(inter, **KW)


@pytest.fixture(scope="module")
def cat_wrong(inter):
    return synthetic_video_catalog(inter, wrong_title_rate=0.5, **KW)


def _topk_signal_precision(c: VideoCatalog, query: np.ndarray, k: int = K) -> np.ndarray:
    """Per video: share of the top-k frames by dot with ``query`` that are signal frames (plain numpy)."""
    scores = np.einsum("nfd,nd->nf", c.frames, query)
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(c.signal_mask, top, axis=1).mean(axis=1)


# ---------------------------------------------------------------- synthetic catalog


def test_synthetic_shapes_dtypes_and_label(cat):
    assert cat.frames.shape == (N_ITEMS, N_FRAMES, D) and cat.frames.dtype == np.float32
    assert cat.n_frames.dtype == np.int64 and (cat.n_frames == N_FRAMES).all()
    assert cat.title_emb.shape == (N_ITEMS, D) and cat.title_emb.dtype == np.float32
    assert cat.signal_mask.shape == (N_ITEMS, N_FRAMES) and (cat.signal_mask.sum(1) == SIG).all()
    assert cat.wrong_title.dtype == np.bool_ and not cat.wrong_title.any()
    assert cat.synthetic and "SYNTHETIC" in cat.label
    np.testing.assert_allclose(np.linalg.norm(cat.frames, axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cat.title_emb, axis=1), 1.0, atol=1e-5)
    assert len(cat.titles) == N_ITEMS and all(isinstance(t, str) and t for t in cat.titles)
    assert np.array_equal(cat.item_ids, np.arange(N_ITEMS))
    assert (cat.meta["frame_kind"] == FRAME_SIGNAL).sum() == N_ITEMS * SIG


def test_synthetic_deterministic(inter, cat):
    again = synthetic_video_catalog(inter, **KW)
    assert np.array_equal(again.frames, cat.frames)
    assert again.titles == cat.titles
    assert np.array_equal(again.title_emb, cat.title_emb)
    assert np.array_equal(again.signal_mask, cat.signal_mask)
    other = synthetic_video_catalog(inter, **{**KW, "seed": 4})
    assert not np.array_equal(other.frames, cat.frames)


def test_titles_come_from_the_item_cluster(cat):
    cl = cat.meta["item_cluster"]
    first = np.array([int(next(w for w in t.split() if w.startswith("c"))[1:].split("_")[0]) for t in cat.titles])
    assert np.array_equal(first, cl)


def test_signal_frames_carry_the_latent_and_mean_pooling_is_diluted(cat):
    lat = cat.meta["latent"]
    cos_signal = np.sum(cat.signal_mean() * lat, axis=1).mean()
    cos_mean = np.sum(cat.mean_frames(normalize=True) * lat, axis=1).mean()
    assert cos_signal > 0.9
    assert cos_mean < cos_signal - 0.3
    # generic frames are shared across videos: the raw mean frame points at them
    g = cat.global_mean_frame()
    g = g / np.linalg.norm(g)
    generic = cat.meta["frame_kind"] == FRAME_GENERIC
    assert (cat.frames[generic] @ g).mean() > (cat.frames[cat.signal_mask] @ g).mean() + 0.2


def test_title_topk_hits_signal_frames_only_with_correct_titles(cat, cat_wrong):
    chance = SIG / N_FRAMES
    ok = _topk_signal_precision(cat, cat.title_emb)
    assert ok.mean() > 0.7 > 2 * chance
    w = cat_wrong.wrong_title
    assert w.sum() == N_ITEMS // 2
    prec = _topk_signal_precision(cat_wrong, cat_wrong.title_emb)
    assert prec[~w].mean() > prec[w].mean() + 0.25
    assert prec[w].mean() < 0.45
    # the centred mean-frame query (the missing-title fallback) beats chance and the raw mean
    fb = _topk_signal_precision(cat, cat.mean_frames(normalize=True, center=True))
    assert fb.mean() > 0.6 and fb.mean() > _topk_signal_precision(cat, cat.mean_frames(normalize=True)).mean()


def test_wrong_titles_come_from_another_cluster(cat, cat_wrong):
    w = np.flatnonzero(cat_wrong.wrong_title)
    cl = cat_wrong.meta["item_cluster"]
    own = {t: i for i, t in enumerate(cat.titles)}  # the same seed draws the same original titles
    donors = np.array([own[cat_wrong.titles[i]] for i in w])
    assert (cl[donors] != cl[w]).all()
    keep = np.flatnonzero(~cat_wrong.wrong_title)
    assert [cat_wrong.titles[i] for i in keep] == [cat.titles[i] for i in keep]


def test_missing_titles_and_zero_frame_videos(inter):
    c = synthetic_video_catalog(inter, missing_title_rate=0.1, zero_frame_rate=0.1, **KW)
    no_title = np.array([t == "" for t in c.titles])
    assert no_title.sum() == N_ITEMS // 10
    assert not c.title_emb[no_title].any() and not c.has_title()[no_title].any()
    zero = c.n_frames == 0
    assert zero.sum() == N_ITEMS // 10
    assert not c.frames[zero].any() and not c.signal_mask[zero].any()
    assert not c.mean_frames()[zero].any() and not c.mean_frames(center=True, normalize=True)[zero].any()
    assert np.isfinite(c.title_emb).all()


def test_take_subsets_every_field(cat):
    rows = np.array([5, 0, 7, 7])
    sub = cat.take(rows)
    assert np.array_equal(sub.frames, cat.frames[rows]) and sub.titles == [cat.titles[i] for i in rows]
    assert np.array_equal(sub.item_ids, rows) and np.array_equal(sub.meta["latent"], cat.meta["latent"][rows])
    with pytest.raises(InvalidInputError, match="rows"):
        cat.take(np.array([N_ITEMS]))


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(n_frames=0), "n_frames"),
        (dict(n_frames=8, signal_frames=9), "signal_frames"),
        (dict(signal_frames=0), "signal_frames"),
        (dict(wrong_title_rate=1.5), "wrong_title_rate"),
        (dict(wrong_title_rate=0.6, missing_title_rate=0.6), "missing_title_rate"),
        (dict(d_frame=1), "d_frame"),
    ],
)
def test_synthetic_bad_parameters(inter, kw, words):
    with pytest.raises(InvalidInputError, match=words):
        synthetic_video_catalog(inter, **{**KW, **kw})


def test_synthetic_needs_cluster_labels(inter):
    from dataclasses import replace

    with pytest.raises(InvalidInputError, match="item_cluster"):
        synthetic_video_catalog(replace(inter, meta={}), **KW)


# ---------------------------------------------------------------- VideoCatalog validation


def _tiny(**over):
    rng = np.random.default_rng(0)
    base = dict(
        frames=rng.standard_normal((3, 4, 8)).astype(np.float32),
        n_frames=np.array([4, 0, 2]),
        titles=["a b", "", "c d"],
        title_emb=rng.standard_normal((3, 8)).astype(np.float32),
        signal_mask=None,
        wrong_title=None,
        synthetic=False,
        label="test",
    )
    base.update(over)
    return VideoCatalog(**base)


def test_catalog_validation():
    c = _tiny()
    assert c.n_items == 3 and c.max_frames == 4 and c.d_frame == 8
    bad = np.zeros((3, 4, 8), np.float32)
    bad[2, 1, 3] = np.nan
    with pytest.raises(NonFiniteError, match="1 video") as ei:
        _tiny(frames=bad)
    assert ei.value.rows == [2]
    with pytest.raises(DimensionMismatchError, match="align titles"):
        _tiny(title_emb=np.zeros((3, 6), np.float32))
    with pytest.raises(InvalidInputError, match=r"\[0, 4\]"):
        _tiny(n_frames=np.array([5, 0, 1]))
    with pytest.raises(InvalidInputError, match=r"\[0, 4\]"):
        _tiny(n_frames=np.array([-1, 0, 1]))
    with pytest.raises(DimensionMismatchError, match="titles"):
        _tiny(titles=["a"])
    with pytest.raises(DimensionMismatchError, match="3-D"):
        _tiny(frames=np.zeros((3, 8), np.float32))


# ---------------------------------------------------------------- title encoder


def test_encoder_deterministic_unit_rows_and_missing():
    titles = ["cats playing piano", "", "dogs at the beach", None]
    a = HashingTitleEncoder(dim=32, seed=5).encode(titles)
    b = HashingTitleEncoder(dim=32, seed=5).encode(titles)
    assert a.dtype == np.float32 and a.shape == (4, 32)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a[[0, 2]], axis=1), 1.0, atol=1e-6)
    assert not a[[1, 3]].any()
    c = HashingTitleEncoder(dim=32, seed=6).encode(titles)
    assert not np.allclose(a, c)
    assert HashingTitleEncoder(dim=8).encode([]).shape == (0, 8)


def test_encoder_similar_titles_have_higher_cosine():
    enc = HashingTitleEncoder(dim=256, seed=0)
    e = enc.encode(
        [
            "funny cats playing piano compilation",
            "cats playing piano funny moments",
            "stock market news today",
            "how to bake sourdough bread",
        ]
    )
    sim = e @ e.T
    assert sim[0, 1] > 0.4
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


def test_encoder_matches_dense_numpy_reference():
    from sklearn.feature_extraction.text import HashingVectorizer

    titles = ["red apple pie", "green apple", "the best red car", "car"]
    enc = HashingTitleEncoder(dim=16, n_features=64, seed=2)
    x = HashingVectorizer(n_features=64, ngram_range=(1, 2), norm="l2", alternate_sign=True).transform(titles)
    dense_proj = _hashed_gaussian(np.arange(64), 16, 2) / 4.0  # full [n_features, dim] matrix
    ref = x.toarray() @ dense_proj
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode(titles), ref, atol=1e-6)
    # the projection is close to N(0, 1): a sanity check on the hash-based generator
    g = _hashed_gaussian(np.arange(2000), 64, 0)
    assert abs(g.mean()) < 0.01 and abs(g.std() - 1) < 0.01


def test_encoder_bad_input():
    enc = HashingTitleEncoder(dim=8)
    with pytest.raises(InvalidInputError, match="single string"):
        enc.encode("a title")
    with pytest.raises(InvalidInputError, match="row 1"):
        enc.encode(["ok", 3])
    with pytest.raises(InvalidInputError, match="dim"):
        HashingTitleEncoder(dim=0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=8))
def test_encoder_property_finite_unit_or_zero(titles):
    e = HashingTitleEncoder(dim=16, n_features=2**10, seed=1).encode(titles)
    assert e.shape == (len(titles), 16) and np.isfinite(e).all()
    norms = np.linalg.norm(e, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


# ---------------------------------------------------------------- alignment


def test_alignment_reduces_error_vs_random_map():
    rng = np.random.default_rng(0)
    n, dt, df = 400, 24, 16
    t = rng.standard_normal((n, dt)).astype(np.float32)
    true_map = rng.standard_normal((dt, df))
    f = (t @ true_map + 0.3 * rng.standard_normal((n, df)) + 2.0).astype(np.float32)  # + shared offset
    al = align_titles(t, f, ridge=1.0)
    assert isinstance(al, TitleAlignment) and al.d_title == dt and al.d_frame == df and al.n_fit == n
    target = f - f.mean(0)
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    got = al.apply(t)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    rand = t @ rng.standard_normal((dt, df))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    cos_fit = np.sum(got * target, 1).mean()
    assert cos_fit > 0.95 and cos_fit > np.sum(rand * target, 1).mean() + 0.5
    # a plain normal-equations reference
    tc, fc = t - t.mean(0), f - f.mean(0)
    w = np.linalg.solve(tc.T.astype(np.float64) @ tc + np.eye(dt), tc.T.astype(np.float64) @ fc)
    np.testing.assert_allclose(al.weight, w, rtol=1e-3, atol=1e-4)


def test_alignment_on_the_synthetic_catalog_points_at_the_cluster(cat):
    cent, cl = cat.meta["centres"], cat.meta["item_cluster"]
    cos_own = np.sum(cat.title_emb * cent[cl], axis=1)
    cos_other = cat.title_emb @ cent.T
    assert cos_own.mean() > 0.4
    assert (np.argmax(cos_other, axis=1) == cl).mean() > 0.7  # d=32: the 8 centres overlap


def test_alignment_missing_rows_and_errors():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((10, 4))
    f = rng.standard_normal((10, 3))
    t[0] = 0.0  # missing title: left out of the fit, zero output
    f[1] = 0.0  # zero-frame video: left out of the fit
    al = align_titles(t, f)
    assert al.n_fit == 8
    out = al.apply(t)
    assert not out[0].any() and out.dtype == np.float32
    with pytest.raises(DimensionMismatchError, match="rows"):
        align_titles(t, f[:9])
    with pytest.raises(DimensionMismatchError, match="dimension 5, expected 4"):
        al.apply(np.ones((2, 5)))
    bad = t.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        align_titles(bad, f)
    with pytest.raises(EmptyInputError, match="at least 2"):
        align_titles(t[:2], f[:2])
    with pytest.raises(InvalidInputError, match="ridge"):
        align_titles(t, f, ridge=-1.0)


# ---------------------------------------------------------------- loaders


def test_load_npy_round_trip_with_titles(tmp_path, cat):
    np.save(tmp_path / "frames.npy", cat.frames)
    (tmp_path / "titles.txt").write_text("\n".join(cat.titles) + "\n", encoding="utf-8")
    got = load_video_catalog(
        tmp_path / "frames.npy", tmp_path / "titles.txt", encoder=HashingTitleEncoder(dim=64, seed=3)
    )
    assert not got.synthetic and got.signal_mask is None and got.wrong_title is None
    np.testing.assert_allclose(got.frames, cat.frames, atol=1e-6)
    assert np.array_equal(got.n_frames, cat.n_frames) and got.titles == cat.titles
    # same encoder, same mean frames, same ridge -> the same aligned titles as the generator
    np.testing.assert_allclose(got.title_emb, cat.title_emb, atol=1e-4)


def test_load_npy_padding_and_n_frames(tmp_path):
    rng = np.random.default_rng(2)
    fr = rng.standard_normal((3, 5, 4)).astype(np.float32) * 3
    fr[1, 2:] = 0.0
    fr[2] = 0.0
    np.save(tmp_path / "f.npy", fr)
    got = load_video_catalog(tmp_path / "f.npy")
    assert got.n_frames.tolist() == [5, 2, 0]
    np.testing.assert_allclose(np.linalg.norm(got.frames[0], axis=1), 1.0, atol=1e-5)
    assert not got.has_title().any() and got.titles == ["", "", ""]
    np.save(tmp_path / "n.npy", np.array([3, 2, 0]))
    got = load_video_catalog(tmp_path / "f.npy", n_frames_path=tmp_path / "n.npy", normalize=False)
    assert got.n_frames.tolist() == [3, 2, 0] and not got.frames[0, 3:].any()
    np.testing.assert_array_equal(got.frames[0, :3], fr[0, :3])
    np.save(tmp_path / "n_bad.npy", np.array([6, 2, 0]))
    with pytest.raises(InvalidInputError, match=r"\[0, 5\]"):
        load_video_catalog(tmp_path / "f.npy", n_frames_path=tmp_path / "n_bad.npy")


def test_load_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    counts = {10: 3, 4: 1, 7: 2}  # item ids need not be contiguous; frame rows may come in any order
    rows = [(i, f, rng.standard_normal(6).astype(np.float32)) for i, c in counts.items() for f in range(c)]
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    table = pa.table(
        {
            "item_id": pa.array([r[0] for r in rows], pa.int64()),
            "frame_index": pa.array([r[1] for r in rows], pa.int32()),
            "embedding": pa.array([r[2].tolist() for r in rows], pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, tmp_path / "frames.parquet")
    got = load_video_catalog(tmp_path / "frames.parquet", normalize=False)
    assert got.item_ids.tolist() == [4, 7, 10] and got.n_frames.tolist() == [1, 2, 3]
    assert got.frames.shape == (3, 3, 6)
    for i, f, e in rows:
        r = got.item_ids.tolist().index(i)
        np.testing.assert_allclose(got.frames[r, f], e, atol=1e-6)
    assert not got.frames[0, 1:].any()
    pq.write_table(table.drop(["frame_index"]), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match="frame_index"):
        load_video_catalog(tmp_path / "bad.parquet")
    ragged = pa.table(
        {"item_id": pa.array([0, 0]), "frame_index": pa.array([0, 1]), "embedding": pa.array([[1.0, 2.0], [1.0]])}
    )
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(DimensionMismatchError, match="same non-zero length"):
        load_video_catalog(tmp_path / "ragged.parquet")
    nan = pa.table(
        {
            "item_id": pa.array([0, 1]),
            "frame_index": pa.array([0, 0]),
            "embedding": pa.array([[1.0, 2.0], [np.nan, 1.0]]),
        }
    )
    pq.write_table(nan, tmp_path / "nan.parquet")
    with pytest.raises(NonFiniteError, match="1 video"):
        load_video_catalog(tmp_path / "nan.parquet")


def test_load_title_embeddings(tmp_path):
    rng = np.random.default_rng(4)
    fr = rng.standard_normal((20, 3, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", fr)
    te = rng.standard_normal((20, 8)).astype(np.float32)
    te[3] = 0.0
    np.save(tmp_path / "te.npy", te)
    got = load_video_catalog(tmp_path / "f.npy", title_emb_path=tmp_path / "te.npy")
    np.testing.assert_allclose(got.title_emb[0], te[0] / np.linalg.norm(te[0]), atol=1e-6)
    assert got.titles[3] == "" and not got.title_emb[3].any()
    np.save(tmp_path / "te_bad.npy", te[:, :5])
    with pytest.raises(DimensionMismatchError, match="dimension 5 but frames have 8"):
        load_video_catalog(tmp_path / "f.npy", title_emb_path=tmp_path / "te_bad.npy")
    # raw text-encoder embeddings of another dimension are aligned into the frame space
    raw = rng.standard_normal((20, 5)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    got = load_video_catalog(tmp_path / "f.npy", tmp_path / "raw.npy")
    assert got.title_emb.shape == (20, 8) and isinstance(got.meta["alignment"], TitleAlignment)


def test_load_bad_input(tmp_path):
    fr = np.ones((4, 3, 8), np.float32)
    fr[2, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", fr)
    with pytest.raises(NonFiniteError, match="1 video") as ei:
        load_video_catalog(tmp_path / "nan.npy")
    assert ei.value.rows == [2]
    np.save(tmp_path / "flat.npy", np.ones((4, 8), np.float32))
    with pytest.raises(DimensionMismatchError, match="3-D"):
        load_video_catalog(tmp_path / "flat.npy")
    with pytest.raises(DataNotFoundError):
        load_video_catalog(tmp_path / "missing.npy")
    np.save(tmp_path / "ok.npy", np.ones((4, 3, 8), np.float32))
    (tmp_path / "t.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="2 title lines for 4 videos"):
        load_video_catalog(tmp_path / "ok.npy", tmp_path / "t.txt")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataFormatError, match="npy"):
        load_video_catalog(tmp_path / "junk.npy")
