"""`reelpack build-catalog --codecs autoN --tune FILE --item-counts COUNTS.npy`: popularity-weighted codec fits."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.catalog.store import CatalogStore
from reelpack.cli import app
from reelpack.format import PackReader
from reelpack.models.tune import BudgetChoice, TuneResult

runner = CliRunner()
N, D = 600, 16


def _tune_file(tmp_path, beta: float):
    """A hand-made tune result at d=16: budget 4 -> pq4 fitted with popularity exponent ``beta``."""
    choice = BudgetChoice(budget=4, spec="pq4", rel_recall=0.9, rel_ndcg=0.9, reason="test", popularity_beta=beta)
    result = TuneResult(dim=D, k=50, budgets=[4], seeds=[0], choices={4: choice}, rows=[],
                        float32={"recall": 0.5, "ndcg": 0.5}, data={"synthetic": True}, n_validation_users=300,
                        n_items=N, finetune=False)  # fmt: skip
    return result.save(tmp_path / f"tune-beta{beta:g}.json")


def _args(store, *more: str) -> list[str]:
    return ["build-catalog", "--synthetic", str(N), "--dim", str(D), "--store", str(store), "--catalog", "c",
            "--no-index", "--items-per-block", "100", *more]  # fmt: skip


def _codec_bytes(store) -> list[bytes]:
    with PackReader(CatalogStore(store).file("c", 1, "pack")) as r:
        return [r.codec(k).to_bytes() for k in range(r.n_layers)]


@pytest.fixture()
def counts(tmp_path):
    c = np.zeros(N, np.int64)
    c[: N // 10] = np.random.default_rng(0).integers(50, 500, N // 10)  # a few popular items
    path = tmp_path / "counts.npy"
    np.save(path, c)
    return path


def test_auto_codec_with_popularity_beta_needs_item_counts(tmp_path, counts):
    tune = _tune_file(tmp_path, 1.0)
    store = tmp_path / "store"
    r = runner.invoke(app, _args(store, "--codecs", "auto4 sq8", "--tune", str(tune)))
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert "popularity weights" in flat and "--item-counts COUNTS.npy (int [n])" in flat and "Traceback" not in flat
    assert not store.exists()

    r = runner.invoke(app, _args(store, "--codecs", "auto4 sq8", "--tune", str(tune), "--item-counts", str(counts)))
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "auto4 -> pq4" in flat and "fitted with popularity weights" in flat and "codecs pq4 sq8" in flat
    weighted = _codec_bytes(store)

    plain_store = tmp_path / "plain"
    r = runner.invoke(app, _args(plain_store, "--codecs", "pq4 sq8"))
    assert r.exit_code == 0, r.output
    plain = _codec_bytes(plain_store)
    assert weighted[0] != plain[0]  # layer 0 fitted with the popularity weights
    assert weighted[1] == plain[1]  # sq8 given by name: uniform fit, as before

    # what the weights were is recorded: the manifest entry and both packs' metadata
    entry = CatalogStore(store).read_manifest("c")["versions"][0]
    assert entry["fit_weights"] == {"popularity_beta": {"pq4": 1.0}}
    assert CatalogStore(plain_store).read_manifest("c")["versions"][0]["fit_weights"] is None
    for kind in ("pack", "layer0"):
        with PackReader(CatalogStore(store).file("c", 1, kind)) as r:
            assert r.metadata["popularity_beta"] == {"pq4": 1.0} and r.metadata["catalog"] == "c"


def test_sharded_build_uses_the_same_weights(tmp_path, counts):
    pytest.importorskip("distributed")
    tune = _tune_file(tmp_path, 1.0)
    more = ["--codecs", "auto4 sq8", "--tune", str(tune), "--item-counts", str(counts)]
    r = runner.invoke(app, _args(tmp_path / "a", *more))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, _args(tmp_path / "b", *more, "--scheduler", "threads", "--workers", "1",
                                 "--shard-size", "200"))  # fmt: skip
    assert r.exit_code == 0, r.output
    a, b = CatalogStore(tmp_path / "a"), CatalogStore(tmp_path / "b")
    assert a.file("c", 1, "pack").read_bytes() == b.file("c", 1, "pack").read_bytes()


def test_item_counts_errors_and_unused_counts(tmp_path, counts):
    tune = _tune_file(tmp_path, 1.0)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones(N - 1, np.int64))
    r = runner.invoke(app, _args(tmp_path / "s", "--codecs", "auto4", "--tune", str(tune), "--item-counts", str(bad)))
    assert r.exit_code == 2 and f"({N},)" in r.output and "Traceback" not in r.output
    np.save(bad, np.ones(N, np.float32))
    r = runner.invoke(app, _args(tmp_path / "s", "--codecs", "auto4", "--tune", str(tune), "--item-counts", str(bad)))
    assert r.exit_code == 2 and "integer" in r.output
    assert not (tmp_path / "s").exists()

    # a tune choice fitted uniformly (beta 0) needs no counts; given counts are then not used
    uniform = _tune_file(tmp_path, 0.0)
    r = runner.invoke(app, _args(tmp_path / "u", "--codecs", "auto4", "--tune", str(uniform)))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, _args(tmp_path / "v", "--codecs", "auto4", "--tune", str(uniform), "--item-counts",
                                 str(counts)))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "--item-counts is not used" in " ".join(r.output.split())
    assert _codec_bytes(tmp_path / "u") == _codec_bytes(tmp_path / "v")
