"""Tests of reelpack.models.video.aggregator and reelpack.models.video.train (tiny synthetic sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reelpack.data.interactions import synthetic_interactions, train_test_split
from reelpack.errors import DimensionMismatchError, InvalidInputError, NonFiniteError
from reelpack.models.video.aggregator import (
    FullAttention,
    MeanPool,
    VideoAggregator,
    calibrate_title_threshold,
)
from reelpack.models.video.data import synthetic_video_catalog
from reelpack.models.video.train import VideoTrainConfig, train_video_two_tower
from reelpack.util.memory import reset_peak_rss

torch.set_num_threads(1)

D = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _batch(b: int = 6, f: int = 12, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = _unit(rng.standard_normal((b, f, d)))
    n_frames = rng.integers(3, f + 1, size=b).astype(np.int64)
    for i in range(b):
        frames[i, n_frames[i] :] = 0.0
    title = _unit(rng.standard_normal((b, d)))
    return frames, n_frames, title


def _catalog(inter, f: int = 16, d: int = D, signal: int = 3, seed: int = 0, **kw):
    """Tiny SYNTHETIC video catalog of ``inter``'s items (planted signal frames + distractors)."""
    return synthetic_video_catalog(inter, n_frames=f, d_frame=d, signal_frames=signal, seed=seed, **kw)


# ----------------------------------------------------------------------------- shapes and selection


@pytest.mark.parametrize("cls", [VideoAggregator, MeanPool, FullAttention])
def test_output_shape_and_unit_norm(cls) -> None:
    torch.manual_seed(0)
    frames, n_frames, title = _batch()
    model = cls(D, 16)
    out = model(frames, n_frames, title)
    assert out.shape == (6, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)


def test_padded_frame_never_selected_even_if_it_matches_the_title() -> None:
    frames, n_frames, title = _batch(b=8, f=12)
    n_frames[:] = 4
    frames[:, 4:] = title[:, None]  # padding that would score a perfect 1.0 against the title
    agg = VideoAggregator(D, 16, top_k=8, title_threshold=-1.0)
    idx, sel_valid, _ = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert (idx[sel_valid] < 4).all()
    assert sel_valid.sum(1).tolist() == [4] * 8
    # padded slots must not change the output
    out1 = agg(frames, n_frames, title)
    frames[:, 4:] = 0.0
    out2 = agg(frames, n_frames, title)
    torch.testing.assert_close(out1, out2)


def test_title_selects_matching_frames() -> None:
    frames, n_frames, title = _batch(b=5, f=12)
    n_frames[:] = 12
    frames[:, 7] = _unit(title + 0.05)  # frame 7 matches the title
    agg = VideoAggregator(D, 16, top_k=2, title_threshold=0.5)
    idx, _, used = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert used.all() and (idx[:, 0] == 7).all()


def test_missing_and_low_confidence_title_fall_back_to_mean_frame() -> None:
    rng = np.random.default_rng(1)
    b, f = 4, 10
    core = _unit(rng.standard_normal((b, D)))
    frames = _unit(rng.standard_normal((b, f, D)))
    frames[:, :3] = _unit(core[:, None] + 0.1 * rng.standard_normal((b, 3, D)))  # 3 similar frames dominate the mean
    n_frames = np.full(b, f, np.int64)
    title = np.zeros((b, D), np.float32)
    title[2:] = _unit(rng.standard_normal((2, D)))  # unrelated titles: max cosine low
    agg = VideoAggregator(D, 16, top_k=3, title_threshold=0.6)
    idx, _, used = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert not used.any()
    assert sorted(idx[0].tolist()) == [0, 1, 2] and sorted(idx[3].tolist()) == [0, 1, 2]
    agg.set_calibration(-1.0)  # every present title trusted now
    _, _, used = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert used.tolist() == [False, False, True, True]


def _reference_select(frames, n_frames, title, thr, centre, k):
    """Plain NumPy reference of the selection rule (module docstring of reelpack.models.video.aggregator)."""
    out, used = [], []
    for fr, n, t in zip(frames, n_frames, title):
        v = fr[:n]
        present = np.linalg.norm(t) > 1e-6
        ok = present and n > 0 and (v @ t).max() >= thr
        if ok:
            s = v @ t
        else:
            c = v.mean(0) - centre if n else -centre
            s = v @ (c / max(np.linalg.norm(c), 1e-12))
        out.append(set(np.argsort(-s)[: min(k, n)].tolist()))
        used.append(bool(ok or (present and n == 0)))
    return out, used


def test_selection_matches_numpy_reference() -> None:
    rng = np.random.default_rng(7)
    frames, n_frames, title = _batch(b=40, f=10, seed=7)
    n_frames[:3] = 0
    frames[:3] = 0.0
    title[3:8] = 0.0  # missing titles
    title[8:20] = _unit(frames[8:20, 0] + 0.3 * rng.standard_normal((12, D)))  # matching titles
    centre = (0.1 * rng.standard_normal(D)).astype(np.float32)
    agg = VideoAggregator(D, 8, top_k=4)
    agg.set_calibration(0.5, centre)
    idx, sel_valid, used = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    ref, ref_used = _reference_select(frames, n_frames, title, 0.5, centre, 4)
    got = [set(i[v].tolist()) for i, v in zip(idx.numpy(), sel_valid.numpy())]
    assert got == ref
    assert used.tolist() == ref_used
    assert 5 < sum(ref_used) < 40  # both branches exercised


def test_centred_fallback_ignores_shared_generic_frames() -> None:
    rng = np.random.default_rng(8)
    b, f = 50, 16
    generic = _unit(rng.standard_normal(D))
    core = _unit(rng.standard_normal((b, D)))
    frames = _unit(rng.standard_normal((b, f, D)))
    frames[:, :6] = _unit(generic + 0.05 * rng.standard_normal((b, 6, D)))  # intro/logo frames shared by all
    frames[:, 6:9] = _unit(core[:, None] + 0.2 * rng.standard_normal((b, 3, D)))  # the video's own content
    n_frames = np.full(b, f, np.int64)
    title = np.zeros((b, D), np.float32)
    agg = VideoAggregator(D, 8, top_k=3)
    idx, _, _ = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert (idx < 6).float().mean() > 0.9  # uncentred: the generic frames win
    _, centre = calibrate_title_threshold(frames, n_frames, title)
    agg.set_calibration(0.2, centre)
    idx, _, _ = agg.select(torch.from_numpy(frames), torch.from_numpy(n_frames), torch.from_numpy(title))
    assert (idx < 6).float().mean() < 0.05  # centred: no generic frame survives
    assert ((idx >= 6) & (idx < 9)).float().mean() > 0.6  # mostly the video's own frames (noise frames: the rest)


def test_zero_frames_title_only_and_unknown_vector() -> None:
    frames, n_frames, title = _batch(b=4, f=8)
    frames[:2] = 0.0
    n_frames[:2] = 0
    title[1] = 0.0  # video 1: neither frames nor title
    agg = VideoAggregator(D, 16)
    out = agg(frames, n_frames, title)
    assert torch.isfinite(out).all()
    unknown = torch.nn.functional.normalize(agg.unknown, dim=0)
    torch.testing.assert_close(out[1], unknown)
    assert not torch.allclose(out[0], unknown)
    # video 0's output depends on its title only (title-only path)
    title2 = title.copy()
    title2[0] = _unit(np.ones(D))
    assert not torch.allclose(agg(frames, n_frames, title2)[0], out[0])
    m = MeanPool(D, 16)(frames, n_frames, title)
    f_out = FullAttention(D, 16)(frames, n_frames, title)
    assert torch.isfinite(m).all() and torch.isfinite(f_out).all()


def test_gradient_reaches_latents_not_frozen_inputs() -> None:
    frames, n_frames, title = _batch()
    fr = torch.from_numpy(frames).requires_grad_(True)
    ti = torch.from_numpy(title).requires_grad_(True)
    agg = VideoAggregator(D, 16, title_threshold=-1.0)
    agg(fr, torch.from_numpy(n_frames), ti).sum().backward()
    assert agg.latents.grad is not None and agg.latents.grad.abs().sum() > 0
    assert agg.attn.in_proj_weight.grad.abs().sum() > 0 and agg.title_type.grad.abs().sum() > 0
    assert fr.grad is None and ti.grad is None


def test_calibration_separates_true_from_shuffled_titles() -> None:
    rng = np.random.default_rng(2)
    n, f = 400, 12
    frames = _unit(rng.standard_normal((n, f, D)))
    title = _unit(frames[:, 0] + 0.2 * rng.standard_normal((n, D)))
    thr, centre = calibrate_title_threshold(frames, np.full(n, f, np.int64), title, quantile=0.9)
    true_best = np.einsum("nfd,nd->nf", frames, title).max(1)
    assert (true_best >= thr).mean() > 0.95
    assert centre.shape == (D,) and np.allclose(centre, frames.reshape(-1, D).mean(0), atol=1e-5)


def test_automatic_quantile_follows_the_share_of_wrong_titles() -> None:
    rng = np.random.default_rng(3)
    n, f = 600, 12
    frames = _unit(rng.standard_normal((n, f, D)))
    good = _unit(frames[:, 0] + 0.2 * rng.standard_normal((n, D)))
    found = {}
    for wrong_rate in (0.0, 0.5):
        title = good.copy()
        wrong = rng.random(n) < wrong_rate
        title[wrong] = good[rng.permutation(n)][wrong]  # another video's title
        details: dict = {}
        thr, _ = calibrate_title_threshold(frames, np.full(n, f, np.int64), title, quantile=None, details=details)
        found[wrong_rate] = (details["wrong_title_estimate"], details["quantile"], thr)
    assert found[0.0][0] < 0.1 and found[0.0][1] == pytest.approx(0.5)
    assert 0.35 < found[0.5][0] < 0.65 and found[0.5][1] > 0.8
    assert found[0.5][2] > found[0.0][2]  # distrusting titles raises the threshold
    with pytest.raises(InvalidInputError):
        calibrate_title_threshold(frames, np.full(n, f, np.int64), good, quantile=1.5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", [VideoAggregator, MeanPool, FullAttention])
def test_bad_inputs_raise_typed_errors(cls) -> None:
    frames, n_frames, title = _batch()
    model = cls(D, 16)
    bad = frames.copy()
    bad[3, 1, 5] = np.nan
    with pytest.raises(NonFiniteError, match="NaN") as exc:
        model(bad, n_frames, title)
    assert exc.value.rows == [3]
    bad_t = title.copy()
    bad_t[2, 0] = np.inf
    with pytest.raises(NonFiniteError, match="title_emb"):
        model(frames, n_frames, bad_t)
    with pytest.raises(DimensionMismatchError, match="d_frame=32"):
        model(np.zeros((6, 12, 16), np.float32), n_frames, np.zeros((6, 16), np.float32))
    with pytest.raises(DimensionMismatchError, match="title_emb"):
        model(frames, n_frames, title[:, :16])
    with pytest.raises(DimensionMismatchError, match="frames must be"):
        model(frames[0], n_frames, title)
    with pytest.raises(InvalidInputError, match="n_frames"):
        model(frames, n_frames + 100, title)


def test_bad_config_and_catalog() -> None:
    with pytest.raises(InvalidInputError, match="top_k"):
        VideoTrainConfig(top_k=0)
    with pytest.raises(DimensionMismatchError, match="n_heads"):
        VideoAggregator(30, 8, n_heads=4)
    inter = synthetic_interactions(n_users=200, n_items=120, n_clusters=4, seed=3)
    split = train_test_split(inter, seed=0)
    cat = _catalog(inter)
    from types import SimpleNamespace

    short = SimpleNamespace(frames=np.asarray(cat.frames)[:10], n_frames=np.asarray(cat.n_frames)[:10],
                            title_emb=np.asarray(cat.title_emb)[:10])  # fmt: skip
    with pytest.raises(DimensionMismatchError, match="videos"):
        train_video_two_tower(split, short, "aggregator", VideoTrainConfig(epochs=1))
    with pytest.raises(InvalidInputError, match="model_name"):
        train_video_two_tower(split, cat, "lstm", VideoTrainConfig(epochs=1))


# ----------------------------------------------------------------------------- training


def _restricted(inter, split):
    from reelpack.models.video.train import restrict_catalog

    return restrict_catalog(_catalog(inter), split)


def test_training_beats_untrained_model() -> None:
    inter = synthetic_interactions(n_users=600, n_items=300, n_clusters=6, mean_items_per_user=10, seed=4)
    split = train_test_split(inter, seed=0)
    cat = _restricted(inter, split)
    base = dict(d_out=16, batch_size=128, top_k=4, n_latents=2, seed=0)
    trained = train_video_two_tower(split, cat, "aggregator", VideoTrainConfig(epochs=6, **base))
    # "untrained": same init, learning rates ~ 0 (one epoch to exercise the code path)
    untrained = train_video_two_tower(split, cat, "aggregator", VideoTrainConfig(epochs=1, lr=1e-9, item_lr=1e-9, **base))
    assert trained.item_emb.shape == (split.n_items, 16) and trained.user_emb.shape == (split.n_users, 16)
    assert trained.loss_history[-1] < trained.loss_history[0]
    assert trained.metrics["recall@50"] > untrained.metrics["recall@50"] + 0.1, (trained.metrics, untrained.metrics)
    assert 0.0 <= trained.info["title_used_share"] <= 1.0


def test_training_is_deterministic_and_runs_baselines() -> None:
    inter = synthetic_interactions(n_users=150, n_items=80, n_clusters=3, mean_items_per_user=6, seed=5)
    split = train_test_split(inter, seed=0)
    cat = _restricted(inter, split)
    cfg = VideoTrainConfig(d_out=8, epochs=1, batch_size=64, top_k=3, n_latents=2, measure_memory=True)
    a = train_video_two_tower(split, cat, "aggregator", cfg)
    b = train_video_two_tower(split, cat, "aggregator", cfg)
    np.testing.assert_array_equal(a.item_emb, b.item_emb)
    # measure_memory: the VmHWM growth in bytes wherever the peak mark can be reset (Linux /proc), else None
    measurable = reset_peak_rss() is not None
    for r in (a, b):
        if measurable:
            assert isinstance(r.peak_growth_bytes, int) and r.peak_growth_bytes >= 0, r.peak_growth_bytes
            assert r.peak_growth_bytes % 1024 == 0  # whole kB from /proc/self/status
        else:
            assert r.peak_growth_bytes is None
    for name in ("mean", "full"):
        r = train_video_two_tower(split, cat, name, cfg)
        assert r.item_emb.shape == (split.n_items, 8) and np.isfinite(r.item_emb).all()
        assert "recall@50" in r.metrics
        assert (r.peak_growth_bytes is not None) == measurable
    unmeasured_cfg = VideoTrainConfig(**{**cfg.to_dict(), "measure_memory": False})
    unmeasured = train_video_two_tower(split, cat, "mean", unmeasured_cfg)
    assert unmeasured.peak_growth_bytes is None  # nothing measured, nothing reported


def test_training_with_missing_titles_zero_frames_and_nan_catalog() -> None:
    inter = synthetic_interactions(n_users=150, n_items=80, n_clusters=3, mean_items_per_user=6, seed=6)
    split = train_test_split(inter, seed=0)
    from reelpack.models.video.train import restrict_catalog

    cat = restrict_catalog(_catalog(inter, missing_title_rate=0.3, zero_frame_rate=0.2, wrong_title_rate=0.3), split)
    assert (np.asarray(cat.n_frames) == 0).any() and (np.abs(cat.title_emb).sum(1) == 0).any()
    cfg = VideoTrainConfig(d_out=8, epochs=1, batch_size=64, top_k=3, n_latents=2)
    for name in ("aggregator", "mean", "full"):
        r = train_video_two_tower(split, cat, name, cfg)
        assert np.isfinite(r.item_emb).all()
        np.testing.assert_allclose(np.linalg.norm(r.item_emb, axis=1), 1.0, rtol=1e-5)
    from types import SimpleNamespace

    frames = np.array(cat.frames, copy=True)
    frames[5, 0, 0] = np.nan
    bad = SimpleNamespace(frames=frames, n_frames=cat.n_frames, title_emb=cat.title_emb)
    for name in ("aggregator", "mean", "full"):
        with pytest.raises(NonFiniteError, match="frames") as exc:
            train_video_two_tower(split, bad, name, cfg)
        assert exc.value.rows == [5]
