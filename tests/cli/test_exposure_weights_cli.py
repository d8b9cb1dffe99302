"""`pack` / `build-catalog --codecs autoN --tune FILE` where `reelpack tune` chose exposure weights (``@expoB``):
the codec is fitted with exposure_weights(users, items, exposure_k, B), which needs the user vectors (--users)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.catalog.store import CatalogStore
from reelpack.cli import app
from reelpack.codecs import make_codec
from reelpack.data import exposure_weights
from reelpack.format import PackReader
from reelpack.models.tune import BudgetChoice, TuneResult

runner = CliRunner()
N, D, K = 600, 16, 40


def _tune_file(tmp_path, beta: float):
    """A hand-made tune result at d=16: budget 4 -> pq4 fitted with exposure exponent ``beta`` (top-K exposure)."""
    choice = BudgetChoice(budget=4, spec="pq4", rel_recall=0.9, rel_ndcg=0.9, reason="test", exposure_beta=beta)
    result = TuneResult(dim=D, k=50, budgets=[4], seeds=[0], choices={4: choice}, rows=[],
                        float32={"recall": 0.5, "ndcg": 0.5}, data={"synthetic": True}, n_validation_users=300,
                        n_items=N, finetune=False, exposure_k=K)  # fmt: skip
    return result.save(tmp_path / f"tune-expo{beta:g}.json")


@pytest.fixture()
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    U = (X[rng.integers(0, 50, 200)] + 0.1 * rng.normal(size=(200, D))).astype(np.float32)  # users near 50 items
    np.save(tmp_path / "items.npy", X)
    np.save(tmp_path / "users.npy", U)
    return X, U, tmp_path / "items.npy", tmp_path / "users.npy"


def test_pack_fits_an_exposure_choice_with_the_user_vectors(tmp_path, vectors):
    X, U, items, users = vectors
    tune = _tune_file(tmp_path, 1.0)
    out = tmp_path / "p.rpk"
    r = runner.invoke(app, ["pack", str(items), "--codecs", "auto4", "--tune", str(tune), "--out", str(out)])
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert "exposure weights" in flat and "--users USERS.npy" in flat and "Traceback" not in flat
    assert not out.exists()

    r = runner.invoke(app, ["pack", str(items), "--codecs", "auto4", "--tune", str(tune), "--out", str(out),
                            "--users", str(users)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fitted with exposure weights" in " ".join(r.output.split())
    twin = make_codec("pq4").fit(X, seed=0, weights=exposure_weights(U, X, K, 1.0))
    with PackReader(out) as reader:
        assert reader.codec(0).to_bytes() == twin.to_bytes()
        assert reader.metadata["exposure_beta"] == {"pq4": 1.0} and reader.metadata["exposure_k"] == K
    assert twin.to_bytes() != make_codec("pq4").fit(X, seed=0).to_bytes()


def test_pack_refuses_bad_user_vectors(tmp_path, vectors):
    _, _, items, _ = vectors
    tune = _tune_file(tmp_path, 1.0)
    out = tmp_path / "p.rpk"
    for bad, match in ((np.ones((5, D + 1), np.float32), "dimension"), (np.full((5, D), np.nan, np.float32), "NaN"),
                       (np.array(["a"]), "dtype")):  # fmt: skip
        np.save(tmp_path / "bad.npy", bad)
        r = runner.invoke(app, ["pack", str(items), "--codecs", "auto4", "--tune", str(tune), "--out", str(out),
                                "--users", str(tmp_path / "bad.npy")])  # fmt: skip
        assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output, r.output
        assert not out.exists()


def test_build_catalog_fits_an_exposure_choice_with_its_users(tmp_path, vectors):
    X, U, items, users = vectors
    tune = _tune_file(tmp_path, 1.0)
    args = ["build-catalog", str(items), "--store", str(tmp_path / "s"), "--catalog", "c", "--no-index",
            "--codecs", "auto4", "--tune", str(tune)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--users USERS.npy" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "s").exists()
    r = runner.invoke(app, [*args, "--users", str(users)])
    assert r.exit_code == 0, r.output
    entry = CatalogStore(tmp_path / "s").read_manifest("c")["versions"][0]
    assert entry["fit_weights"] == {"exposure_beta": {"pq4": 1.0}, "exposure_k": K}
    twin = make_codec("pq4").fit(X, seed=0, weights=exposure_weights(U, X, K, 1.0))
    with PackReader(CatalogStore(tmp_path / "s").file("c", 1, "pack")) as reader:
        assert reader.codec(0).to_bytes() == twin.to_bytes()


def test_sharded_build_refuses_an_exposure_choice(tmp_path, vectors):
    pytest.importorskip("distributed")
    _, _, items, users = vectors
    tune = _tune_file(tmp_path, 1.0)
    r = runner.invoke(app, ["build-catalog", str(items), "--store", str(tmp_path / "s"), "--catalog", "c",
                            "--no-index", "--codecs", "auto4", "--tune", str(tune), "--users", str(users),
                            "--scheduler", "threads", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 2 and "single-process" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "s").exists()
