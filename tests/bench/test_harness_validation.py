"""run_bench with a validation split: validation figures beside the test ones, choices taken on validation."""

import dataclasses
import json

import numpy as np
import pytest

from reelpack.bench.harness import VAL_USERS_STREAM, BenchConfig, _qat_on_validation, run_bench
from reelpack.bench.report import has_validation, results_markdown, results_table
from reelpack.data import synthetic_interactions, train_test_split, validation_split
from reelpack.errors import DimensionMismatchError, InvalidInputError, TrainingDivergedError, ValidationTooSmallError
from reelpack.metrics.quality import ranking_metrics
from reelpack.metrics.ranking import dense_score_fn, rank_users

pytest.importorskip("torch")

VAL_KEYS = ("val_recall@50", "val_ndcg@10", "val_mrr", "val_rel_recall@50", "val_rel_ndcg@10")
FAST = dict(max_users=300, batch_size=128, robust_users=0, latency_users=10, latency_warmup=1)


@pytest.fixture(scope="module")
def setup(clustered_bench_data):
    """A small clustered catalog; the 'model' (sums of item vectors) sees only the fit part of the train split."""
    return clustered_bench_data(600, 700, 8, val_fraction=0.1)


@pytest.fixture(scope="module")
def with_val(setup):
    split, val, users, items = setup
    config = BenchConfig(codecs=("sq8", "qat-pq4"), qat=("qat-pq4",), qat_epochs=1, **FAST)
    return config, run_bench(users, items, split, config, val_split=val)


def test_validation_keys_beside_unchanged_test_keys(setup, with_val):
    split, val, users, items = setup
    config, result = with_val
    assert [r["method"] for r in result.rows] == ["float32 (exact)", "sq8", "faiss:SQ8", "qat-pq4", "qat-pq4 +QAT"]
    for row in result.rows:
        for key in VAL_KEYS:
            assert isinstance(row[key], float) and np.isfinite(row[key]), (row["method"], key)
        assert 0.0 <= row["val_recall@50"] <= 1.0 and 0.0 <= row["val_mrr"] <= 1.0
    ref = result.row("float32 (exact)")
    assert ref["val_rel_recall@50"] == 1.0 and ref["val_rel_ndcg@10"] == 1.0
    assert result.row("sq8")["val_rel_recall@50"] > 0.95  # 16 bytes at d=16 is close to float32

    # the validation figures, recomputed: the sampled validation users, fit items excluded, validation items as positives
    val_users = np.sort(np.random.default_rng([config.seed, VAL_USERS_STREAM]).choice(val.eval_users(), 300, replace=False))
    ranked = rank_users(dense_score_fn(users, items), val, val_users, 50)
    want = ranking_metrics(ranked, val_users, val.test_indptr, val.test_items, (10, 20, 50))
    assert ref["val_recall@50"] == pytest.approx(want["recall@50"]) and ref["val_mrr"] == pytest.approx(want["mrr"])
    assert ref["val_recall@50"] != pytest.approx(ref["recall@50"])  # another user set and other positives

    # the test side is what a run without val_split reports (same users, same figures), and has no val keys
    plain = run_bench(users, items, split, BenchConfig(codecs=("sq8",), **FAST))
    for method in ("float32 (exact)", "sq8", "faiss:SQ8"):
        for key in ("recall@50", "ndcg@10", "mrr", "rel_recall@50", "overlap@50", "n_users"):
            assert result.row(method)[key] == plain.row(method)[key], (method, key)
        assert not any(key.startswith("val_") for key in plain.row(method))
    assert "validation" not in plain.provenance and "test_read" not in plain.provenance
    assert "rate_quality_validation" not in plain.extra and not has_validation(plain)

    prov = result.provenance
    assert prov["test_read"] == "once, for the report"
    v = prov["validation"]
    assert v["fraction"] == 0.1 and v["seed"] == 0 and v["n_users"] == 300 and v["n_users_with_items"] == val.eval_users().size
    qat_choice = result.row("qat-pq4 +QAT")["qat_choice"]
    assert {"what": "qat-pq4 +QAT", "choice": qat_choice} in v["choices_on_validation"]
    assert any(c["what"] == "best reelpack at <= 16 bytes/item" for c in v["choices_on_validation"])
    json.loads(result.to_json())


def test_real_qat_row_is_decided_on_validation(with_val):
    _, result = with_val
    row, untouched = result.row("qat-pq4 +QAT"), result.row("qat-pq4")
    assert row["qat_objective"] == "softmax" and isinstance(row["qat_loss"], list) and len(row["qat_loss"]) == 1
    assert row["qat_untouched_val_rel_recall@50"] == untouched["val_rel_recall@50"]
    if row["qat_kept"]:
        assert row["qat_choice"].startswith("kept (validation rel R@50 ")
        assert row["val_rel_recall@50"] == row["qat_tuned_val_rel_recall@50"] > untouched["val_rel_recall@50"]
    else:
        assert row["qat_choice"].startswith("dropped (validation rel R@50 ")
        assert row["recall@50"] == untouched["recall@50"] and row["val_recall@50"] == untouched["val_recall@50"]


def test_rate_quality_is_chosen_on_validation(with_val):
    _, result = with_val
    rq = result.extra["rate_quality_validation"]
    assert rq["metric"] == "rel_recall@50" and rq["chosen_on"] == "val_rel_recall@50"
    entry = rq["budgets"]["16"]
    cands = [r for r in result.rows if r["kind"] == "reelpack" and r["bytes_per_item"] <= 16]
    best = max(cands, key=lambda r: r["val_rel_recall@50"])
    assert entry["best_reelpack"]["method"] == best["method"]
    assert entry["best_reelpack"]["rel_recall@50"] == best["rel_recall@50"]  # the test figure of the chosen method
    assert entry["best_faiss"]["method"] == "faiss:SQ8"
    assert entry["closes_half_gap"] == (best["rel_recall@50"] >= entry["bar"])


def test_tables_show_validation_and_test_side_by_side(with_val):
    _, result = with_val
    md = results_markdown(result)
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "| val rel R@50 | test rel R@50 |" in header and "| val Recall@50 | test Recall@50 |" in header
    assert "QAT choice (validation)" in header
    qat_line = next(line for line in md.splitlines() if line.startswith("| qat-pq4 +QAT |"))
    assert result.row("qat-pq4 +QAT")["qat_choice"] in qat_line
    assert "CHOSEN on validation rel R@50" in md and "| reelpack (chosen on val) |" in md
    assert "test split read once, for the report" in md and "- validation: fraction 0.1, seed 0, 300 users" in md
    table = results_table(result)
    headers = [c.header for c in table.columns]
    assert "val rel R@50" in headers and "test rel R@50" in headers and "QAT (validation)" in headers
    assert table.row_count == len(result.rows)


def test_a_split_that_is_not_validation_is_refused(setup):
    split, val, users, items = setup
    config = BenchConfig(codecs=("sq8",), **FAST)
    with pytest.raises(InvalidInputError, match="not a validation split"):
        run_bench(users, items, split, config, val_split=split)
    with pytest.raises(InvalidInputError, match="must be a reelpack.data.Split"):
        run_bench(users, items, split, config, val_split="val")
    # a 'validation' part that holds the test items: fit + validation are no longer the train items
    leaky = dataclasses.replace(val, test_indptr=split.test_indptr, test_items=split.test_items)
    with pytest.raises(InvalidInputError, match="not the split's train items"):
        run_bench(users, items, split, config, val_split=leaky)
    other = train_test_split(synthetic_interactions(n_users=300, n_items=700, n_clusters=8, seed=0), seed=0)
    with pytest.raises(DimensionMismatchError, match="val_split has 300 users"):
        run_bench(users, items, split, config, val_split=validation_split(other, 0.1, min_users=50))
    with pytest.raises(ValidationTooSmallError) as info:
        run_bench(users, items, split, BenchConfig(codecs=(), qat=("qat-pq4",), max_users=100), val_split=val)
    assert info.value.users == 100 and info.value.needed == 200


def _fake_finetune(calls, outcome):
    """A finetune_codebooks stand-in: records its config and positives; returns scrambled codebooks or diverges."""
    from reelpack.codecs.additive import to_additive_codebooks
    from reelpack.codecs.registry import codec_from_bytes
    from reelpack.models.qat import QATResult

    def fake(user_emb, item_emb, codec, config, codes=None, positives=None):
        calls.append((config, positives))
        if outcome == "diverge":
            raise TrainingDivergedError("loss became nan (test)")
        tuned = codec_from_bytes(codec.to_bytes())
        books = to_additive_codebooks(codec)
        tuned.set_codebooks(np.random.default_rng(1).normal(size=books.shape).astype(np.float32))  # worse
        return QATResult(tuned, codec.encode(item_emb) if codes is None else codes, user_emb, [1.0], 0.0, 1.0)

    return fake


@pytest.mark.parametrize("outcome", ["worse", "diverge"])
def test_qat_worse_or_diverged_keeps_the_untouched_codec(setup, monkeypatch, outcome):
    import reelpack.models.qat as qat

    split, val, users, items = setup
    calls: list = []
    monkeypatch.setattr(qat, "finetune_codebooks", _fake_finetune(calls, outcome))
    config = BenchConfig(codecs=("qat-pq4",), faiss_twins=False, qat=("qat-pq4",), **FAST)
    result = run_bench(users, items, split, config, val_split=val)
    (qcfg, positives), = calls
    assert qcfg.objective == "softmax"
    assert all(np.array_equal(a, b) for a, b in zip(positives, val.train_pairs()))  # the fit pairs, nothing else
    row, untouched = result.row("qat-pq4 +QAT"), result.row("qat-pq4")
    assert row["qat_kept"] is False
    if outcome == "worse":
        assert row["qat_choice"].startswith("dropped (validation rel R@50 ")
        assert row["qat_tuned_val_rel_recall@50"] < untouched["val_rel_recall@50"]
    else:
        assert row["qat_choice"].startswith("diverged: untouched codec kept (") and "loss became nan (test)" in row["qat_choice"]
        assert row["qat_loss"] is None and row["qat_tuned_val_rel_recall@50"] is None
    for key in ("recall@50", "ndcg@10", "mrr", "mse", *VAL_KEYS):  # the row reports the untouched codec
        assert row[key] == untouched[key], key
    assert result.provenance["validation"]["choices_on_validation"][0] == {"what": "qat-pq4 +QAT", "choice": row["qat_choice"]}


def test_without_validation_qat_still_distils(setup, monkeypatch):
    import reelpack.models.qat as qat

    split, _, users, items = setup
    calls: list = []
    monkeypatch.setattr(qat, "finetune_codebooks", _fake_finetune(calls, "worse"))
    result = run_bench(users, items, split, BenchConfig(codecs=(), faiss_twins=False, qat=("qat-pq4",), **FAST))
    (qcfg, positives), = calls
    assert qcfg.objective == "distill" and positives is None
    row = result.row("qat-pq4 +QAT")
    assert "qat_choice" not in row and "val_recall@50" not in row and row["qat_loss"] == [1.0]  # reported as tuned


def test_qat_decision_rule():
    untouched = ("codec", "codes", "users")

    class Tuned:
        codec, codes, user_emb, loss_history = "tuned codec", "tuned codes", "tuned users", [0.5]

    def decide(after, before=0.905):
        return _qat_on_validation(lambda: Tuned(), lambda t: {"rel_recall@50": after}, untouched, {"rel_recall@50": before}, 50)

    chosen, metrics, out = decide(0.912)
    assert chosen == ("tuned codec", "tuned codes", "tuned users") and metrics == {"rel_recall@50": 0.912}
    assert out["qat_choice"] == "kept (validation rel R@50 0.9120 > untouched 0.9050)" and out["qat_kept"] is True
    chosen, metrics, out = decide(0.905)  # a tie is not a win
    assert chosen == untouched and out["qat_choice"] == "dropped (validation rel R@50 0.9050 <= untouched 0.9050)"
    chosen, _, out = decide(float("nan"))
    assert chosen == untouched and out["qat_kept"] is False


def test_cli_bench_with_val_fraction_on_synthetic(tmp_path, monkeypatch):
    """`reelpack bench --val-fraction` (lives here with the harness it drives; mirrors tests/cli/test_cli.py)."""
    from typer.testing import CliRunner

    from reelpack.cli import app

    monkeypatch.delenv("REELPACK_DATA", raising=False)
    runner = CliRunner()
    out = tmp_path / "res"
    args = ["bench", "--dim", "16", "--epochs", "1", "--codecs", "sq8", "--no-faiss", "--max-users", "300",
            "--robust-users", "0", "--val-fraction", "0.1", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC" in r.output and "validation: 0.1 of each user's train items" in r.output
    assert "Validation:" in r.output  # the table's caption (its headers are cut to the runner's width)
    assert "| val rel R@50 | test rel R@50 |" in (out / "bench-d16.md").read_text()
    data = json.loads((out / "bench-d16.json").read_text())
    assert [row["method"] for row in data["rows"]] == ["float32 (exact)", "sq8"]
    assert data["rows"][0]["val_rel_recall@50"] == 1.0 and 0 < data["rows"][1]["val_rel_recall@50"] <= 1.05
    assert data["provenance"]["validation"]["fraction"] == 0.1 and data["provenance"]["test_read"] == "once, for the report"
    assert "trained on the fit split" in data["provenance"]["embeddings"]
    r = runner.invoke(app, ["bench", "--val-fraction", "0.7", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "validation fraction must lie in (0, 0.5]" in r.output and "Traceback" not in r.output
