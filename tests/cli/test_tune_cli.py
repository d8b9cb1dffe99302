"""`reelpack tune` on the SYNTHETIC catalog, and `pack` / `build-catalog --codecs autoN --tune FILE`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.cli import app

pytest.importorskip("torch")
runner = CliRunner()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One small tune run: d=16, budgets 4 and 8, one seed, given candidates, uniform fits only, no fine-tune."""
    tmp = tmp_path_factory.mktemp("tune")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REELPACK_DATA", raising=False)
        r = runner.invoke(app, ["tune", "--dim", "16", "--epochs", "1", "--budget", "4,8", "--seeds", "1",
                                "--max-users", "300", "--candidates", "pq4 rq4 sq4 sq8", "--no-finetune", "--popularity-betas", "0",
                                "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache")])  # fmt: skip
    return r, tmp / "out" / "tune-d16.json"


def test_tune_on_synthetic_writes_the_choice(tuned):
    r, path = tuned
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # an 80-column console wraps the table headers
    assert "SYNTHETIC" in flat and "chosen" in flat and "val rel" in flat and "R@50" in flat
    assert "skipped sq8: 16 bytes per item at d=16: no such budget" in r.output
    doc = json.loads(path.read_text())
    assert doc["dim"] == 16 and doc["budgets"] == [4, 8] and doc["data"]["synthetic"] is True
    assert doc["choices"]["4"]["spec"] in ("pq4", "rq4") and doc["choices"]["8"]["spec"] == "sq4"
    assert doc["data"]["validation_fraction"] == 0.1 and doc["n_validation_users"] == 300
    assert f"--codecs auto4 --tune {path}" in r.output


def test_tune_impossible_budget_fails_before_training(tmp_path):
    r = runner.invoke(app, ["tune", "--dim", "16", "--budget", "4,65", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "exactly 65 bytes per item at d=16" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["tune", "--budget", "8,x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--budget" in r.output
    r = runner.invoke(app, ["tune", "--popularity-betas", "0,x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--popularity-betas" in r.output
    r = runner.invoke(app, ["tune", "--popularity-betas", "9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--popularity-betas" in r.output
    r = runner.invoke(app, ["tune", "--candidates", "pq4@pop9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "popularity exponent" in " ".join(r.output.split()) and "Traceback" not in r.output
    r = runner.invoke(app, ["tune", "--candidates", "pq4@expo9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "exposure exponent" in " ".join(r.output.split()) and "Traceback" not in r.output
    r = runner.invoke(app, ["tune", "--exposure-betas", "1,x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--exposure-betas" in r.output
    assert list(tmp_path.iterdir()) == []


def _npy(tmp_path, d=16, n=600):
    X = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    path = tmp_path / f"items{d}.npy"
    np.save(path, X)
    return path


def test_pack_with_auto_spec_uses_the_tuned_codec(tuned, tmp_path):
    from reelpack.format import PackReader

    _, tune_file = tuned
    chosen = json.loads(tune_file.read_text())["choices"]["4"]["spec"]
    out = tmp_path / "auto.rpak"
    r = runner.invoke(app, ["pack", str(_npy(tmp_path)), "--codecs", "auto4 sq8", "--tune", str(tune_file),
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"auto4 -> {chosen} (validation rel R@50" in r.output
    with PackReader(out) as pack:
        assert pack.codec(0).spec == chosen and pack.codec(1).spec == "sq8"


def test_pack_auto_spec_errors_are_clean(tuned, tmp_path):
    _, tune_file = tuned
    emb, out = _npy(tmp_path), tmp_path / "p.rpak"
    r = runner.invoke(app, ["pack", str(emb), "--codecs", "auto16", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "run `reelpack tune --dim D --budget 16`" in r.output and "--tune" in r.output
    r = runner.invoke(app, ["pack", str(_npy(tmp_path, d=32)), "--codecs", "auto4", "--tune", str(tune_file),
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "d=16" in r.output and "d=32" in r.output
    r = runner.invoke(app, ["pack", str(emb), "--codecs", "auto6", "--tune", str(tune_file), "--out", str(out)])
    assert r.exit_code == 2 and "reelpack tune --dim 16 --budget 6" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    r = runner.invoke(app, ["pack", str(emb), "--codecs", "auto4", "--tune", str(bad), "--out", str(out)])
    assert r.exit_code == 2 and "not a reelpack tune result" in r.output
    r = runner.invoke(app, ["pack", str(emb), "--codecs", "auto4", "--tune", str(tmp_path / "nope.json"),
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "tune result not found" in r.output
    assert not out.exists() and not list(tmp_path.glob(".p.rpak*"))


def test_build_catalog_with_auto_spec(tuned, tmp_path):
    _, tune_file = tuned
    chosen = json.loads(tune_file.read_text())["choices"]["8"]["spec"]
    store = tmp_path / "store"
    args = ["build-catalog", "--synthetic", "400", "--dim", "16", "--store", str(store), "--catalog", "c",
            "--no-index", "--codecs", "auto8"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "reelpack tune" in r.output and not store.exists()
    r = runner.invoke(app, args + ["--tune", str(tune_file)])
    assert r.exit_code == 0, r.output
    assert f"auto8 -> {chosen}" in r.output and f"codecs {chosen}" in r.output


def _weighted(tune_file, tmp_path, beta=1.0):
    """The tune result with its 4-byte choice marked as fitted with popularity weights of exponent ``beta``."""
    doc = json.loads(tune_file.read_text())
    doc["choices"]["4"]["popularity_beta"] = beta
    path = tmp_path / "weighted-d16.json"
    path.write_text(json.dumps(doc))
    return path, doc["choices"]["4"]["spec"]


def test_pack_fits_a_popularity_choice_with_the_item_counts(tuned, tmp_path):
    from reelpack.codecs import make_codec
    from reelpack.data import popularity_weights
    from reelpack.format import PackReader

    _, tune_file = tuned
    weighted, chosen = _weighted(tune_file, tmp_path)
    emb, out = _npy(tmp_path), tmp_path / "w.rpak"
    args = ["pack", str(emb), "--codecs", "auto4 sq8", "--tune", str(weighted), "--out", str(out)]
    r = runner.invoke(app, args)  # the choice needs the counts: a clear error, nothing written
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "popularity weights" in r.output and "--item-counts" in r.output and not out.exists()
    counts = np.random.default_rng(3).integers(0, 50, 600)
    np.save(tmp_path / "counts.npy", counts)
    r = runner.invoke(app, args + ["--item-counts", str(tmp_path / "counts.npy")])
    assert r.exit_code == 0, r.output
    assert "fitted with popularity weights" in " ".join(r.output.split())
    X = np.load(emb)
    twin = make_codec(chosen).fit(X, seed=0, weights=popularity_weights(counts, 1.0))
    with PackReader(out) as pack:
        assert pack.codec(0).to_bytes() == twin.to_bytes()  # layer 0 fitted with the weights, sq8 uniformly
        assert pack.metadata["popularity_beta"] == {chosen: 1.0}
    for bad, match in ((counts[:10], "shape \\(600,\\)"), (counts.astype(np.float32), "integer array"),
                       (-counts - 1, ">= 0")):  # fmt: skip
        np.save(tmp_path / "bad.npy", bad)
        r = runner.invoke(app, args[:-2] + ["--out", str(tmp_path / "bad.rpak"), "--item-counts", str(tmp_path / "bad.npy")])
        assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "bad.rpak").exists()
        assert __import__("re").search(match, " ".join(r.output.split())), r.output


def _tune_pq4(tuned, tmp_path, *more: str):
    """`reelpack tune` at d=16, budget 4, one seed, on the cached embeddings of ``tuned``; its result."""
    _, path = tuned
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REELPACK_DATA", raising=False)
        return runner.invoke(app, ["tune", "--dim", "16", "--epochs", "1", "--budget", "4", "--seeds", "1",
                                   "--max-users", "300", "--popularity-betas", "0", "--no-finetune", *more,
                                   "--out", str(tmp_path), "--cache-dir", str(path.parent.parent / "cache")])  # fmt: skip


def test_tune_with_a_popularity_candidate(tuned, tmp_path):
    """`spec@popB` candidates are fitted with popularity weights; the table names them and says what they are."""
    r = _tune_pq4(tuned, tmp_path, "--candidates", "pq4 pq4@pop1")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "pq4@pop1" in flat and "spec@popB: fitted on rows drawn in proportion" in flat
    doc = json.loads((tmp_path / "tune-d16.json").read_text())
    assert [(row["spec"], row["popularity_beta"]) for row in doc["rows"]] == [("pq4", 0.0), ("pq4", 1.0)]


def test_tune_with_an_exposure_candidate(tuned, tmp_path):
    """--exposure-betas fits every candidate with exposure weights too; the table names them and says what they are."""
    r = _tune_pq4(tuned, tmp_path, "--candidates", "pq4", "--exposure-betas", "1")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "pq4@expo1" in flat and "spec@expoB: fitted on rows drawn in proportion" in flat
    doc = json.loads((tmp_path / "tune-d16.json").read_text())
    assert [(row["spec"], row["exposure_beta"]) for row in doc["rows"]] == [("pq4", 0.0), ("pq4", 1.0)]
    assert doc["exposure_k"] == 1000
