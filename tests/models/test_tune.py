"""Codec choice on a validation split: candidate sizes, the validation guards, the choice, ties, JSON, autoN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.data import (
    DEFAULT_EXPOSURE_K,
    MIN_VALIDATION_USERS,
    exposure_weights,
    popularity_weights,
    synthetic_interactions,
    train_test_split,
    validation_split,
)
from reelpack.errors import (
    CodecSpecError,
    DataNotFoundError,
    DimensionMismatchError,
    InvalidInputError,
    NoCandidateError,
    SerializationError,
    TrainingDivergedError,
    ValidationTooSmallError,
)
from reelpack.models import tune
from reelpack.models.tune import (
    CANDIDATE_FAMILIES,
    BudgetChoice,
    CandidateFamily,
    CandidateRow,
    TuneResult,
    candidate_label,
    candidate_specs,
    is_finetune_candidate,
    parse_candidate,
    parse_weighted_candidate,
    resolve_auto_spec,
    tune_codecs,
)

D = 16


@pytest.fixture(scope="module")
def problem():
    """A validation split of a small synthetic catalog (400 users, ~375 items) and embeddings that rank it:
    clustered unit items, each user the sum of its fit items (no training needed)."""
    split = train_test_split(synthetic_interactions(n_users=400, n_items=400, n_clusters=8, seed=0), seed=0)
    val = validation_split(split, 0.2, seed=0)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, D))
    items = (centers[rng.integers(0, 8, val.n_items)] + 0.5 * rng.normal(size=(val.n_items, D))).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = np.zeros((val.n_users, D), np.float32)
    np.add.at(users, np.repeat(np.arange(val.n_users), np.diff(val.train_indptr)), items[val.train_items])
    users += 0.01 * rng.normal(size=users.shape).astype(np.float32)
    return {"split": split, "val": val, "users": users, "items": items}


@pytest.fixture(scope="module")
def result(problem):
    p = problem
    return tune_codecs(p["users"], p["items"], p["val"], [4, 8], seeds=(0, 1), finetune=False)


# ---- candidates ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, dim", [(4, 16), (8, 16), (6, 16), (12, 16), (16, 16), (8, 32)])
def test_candidate_specs_are_exactly_the_budget(budget, dim):
    X = np.random.default_rng(0).normal(size=(300, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # two-tower items are unit vectors ("-n" candidates need them)
    specs = candidate_specs(budget, dim)
    assert specs and len(set(specs)) == len(specs)
    for spec in specs:
        assert make_codec(spec).spec == spec  # canonical
        assert make_codec(spec).fit(X, seed=0).bytes_per_vector == budget, spec


def test_candidate_specs_families():
    assert candidate_specs(16, 64) == ["pq16", "opq16,pq16", "rq16", "rq16-r", "rq16-n", "rq16-r-n", "apq16-t0.3", "qat-rq16"]
    assert "sq8" in candidate_specs(64, 64) and "sq4" in candidate_specs(32, 64)
    assert "rabitq" in candidate_specs(12, 64)  # 1 bit per dimension: 8 sign bytes + 4 factor bytes
    assert "pq6" not in candidate_specs(6, 64)  # 6 does not divide 64
    assert [s for s in candidate_specs(8, 16) if is_finetune_candidate(s)] == ["qat-rq8"]
    assert all(isinstance(f, CandidateFamily) for f in CANDIDATE_FAMILIES)


def test_pca_candidates_from_pca_min_dim():
    """At high d the projected residual codes (d/4 and d/2 PCA coordinates) are candidates; below, none is."""
    assert not any("-p" in s for s in candidate_specs(16, tune.PCA_MIN_DIM // 2))
    at_512 = candidate_specs(16, 512)
    assert {"rq16-p128-n", "rq16-r-p128-n", "rq16-p256-n"} <= set(at_512)
    X = np.random.default_rng(1).normal(size=(400, tune.PCA_MIN_DIM)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    for spec in (s for s in candidate_specs(4, tune.PCA_MIN_DIM) if "-p" in s):
        codec = make_codec(spec).fit(X, seed=0)
        assert codec.bytes_per_vector == 4 and codec.spec == spec


def test_candidate_families_extend_and_refused_specs_are_skipped(monkeypatch):
    extra = (CandidateFamily("bogus", lambda b, d: f"bogus{b}"), CandidateFamily("rq-stages", lambda b, d: f"rq{b // 2}+{b - b // 2}"))
    monkeypatch.setattr(tune, "CANDIDATE_FAMILIES", CANDIDATE_FAMILIES + extra)
    specs = candidate_specs(8, 16)
    assert "rq4+4" in specs and not any(s.startswith("bogus") for s in specs)


def test_no_candidate_names_budget_dim_and_nearest_sizes():
    with pytest.raises(NoCandidateError) as err:
        candidate_specs(65, 64)  # rq stops at 64 codebooks; no PQ, SQ or RaBitQ size is 65 bytes at d=64
    msg = str(err.value)
    assert "65 bytes" in msg and "d=64" in msg and "64 bytes" in msg and "72 bytes (rabitq8)" in msg
    with pytest.raises(InvalidInputError, match="budget must be a positive integer"):
        candidate_specs(0, 64)


# ---- the validation guards ---------------------------------------------------------------------------
def test_refuses_a_non_validation_split(problem):
    p = problem
    with pytest.raises(InvalidInputError, match="validation split; the test split is for the report"):
        tune_codecs(p["users"], p["items"], p["split"], [4], seeds=(0,), finetune=False)


def test_too_few_validation_users(problem):
    p = problem
    with pytest.raises(ValidationTooSmallError) as err:
        tune_codecs(p["users"], p["items"], p["val"], [4], seeds=(0,), max_users=50, finetune=False)
    assert err.value.users == 50 and err.value.needed == MIN_VALIDATION_USERS
    assert str(MIN_VALIDATION_USERS) in str(err.value)


def test_bad_shapes_and_budgets(problem):
    p = problem
    with pytest.raises(DimensionMismatchError):
        tune_codecs(p["users"][:10], p["items"], p["val"], [4], seeds=(0,))
    with pytest.raises(NoCandidateError, match="65 bytes"):
        tune_codecs(p["users"], p["items"], p["val"], [65], seeds=(0,))
    with pytest.raises(InvalidInputError, match="seeds"):
        tune_codecs(p["users"], p["items"], p["val"], [4], seeds=(0, 0))


# ---- the choice ------------------------------------------------------------------------------------------
def test_tune_chooses_per_budget(problem, result):
    assert sorted(result.choices) == [4, 8] and result.dim == D and result.seeds == [0, 1]
    for b in (4, 8):
        rows = result.rows_for(b)
        # every candidate with each default popularity exponent (0: uniform, 1: weighted by fit interactions)
        assert [r.label for r in rows] == [candidate_label(s, beta) for s in candidate_specs(b, D) for beta in (0, 1)]
        assert [r.popularity_beta for r in rows] == [0.0, 1.0] * len(candidate_specs(b, D))
        ok = [r for r in rows if r.error is None]
        best = max(r.mean["rel_recall"] for r in ok)
        choice = result.choices[b]
        assert choice.label in {r.label for r in ok} and choice.reason
        chosen_row = next(r for r in ok if r.label == choice.label)
        assert choice.spec == chosen_row.spec and choice.popularity_beta == chosen_row.popularity_beta
        if not choice.tie:
            assert choice.rel_recall == best
        for r in ok:
            assert len(r.per_seed) == 2 and r.min["rel_recall"] <= r.mean["rel_recall"] <= r.max["rel_recall"]
            assert r.std["rel_recall"] >= 0 and r.mean["fit_s"] >= 0 and r.finetune is None
            assert 0 < r.mean["rel_recall"] < 2
    assert result.n_validation_users == problem["val"].eval_users().size
    assert result.data["validation_fraction"] == 0.2 and result.data["data_hash"] == problem["val"].data_hash
    assert 0 < result.float32["recall"] <= 1


def test_json_round_trip_and_save_load(result, tmp_path):
    again = TuneResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()
    assert again.choices[4] == result.choices[4]
    path = result.save(tmp_path / "sub" / "tune-d16.json")
    assert TuneResult.load(path).to_json() == result.to_json()
    assert [p.name for p in path.parent.iterdir()] == ["tune-d16.json"]  # no temporary file left
    doc = json.loads(path.read_text())
    assert doc["format"] == "reelpack-tune" and doc["version"] == 3 and "created_at" in doc
    assert all("popularity_beta" in r for r in doc["rows"])


def test_load_errors(result, tmp_path):
    with pytest.raises(DataNotFoundError, match="reelpack tune"):
        TuneResult.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SerializationError, match="not JSON"):
        TuneResult.load(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SerializationError, match="not a reelpack tune result"):
        TuneResult.load(bad)
    doc = json.loads(result.to_json())
    bad.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(SerializationError, match="version 99"):
        TuneResult.load(bad)
    del doc["choices"]["4"]["spec"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(SerializationError, match="malformed"):
        TuneResult.load(bad)


def test_given_candidates_join_the_budget_of_their_size(problem):
    p = problem
    res = tune_codecs(p["users"], p["items"], p["val"], [4, 8], candidates=["pq4", "sq4", "sq8"], seeds=(0,), finetune=False,
                      popularity_betas=(0,))
    assert [r.spec for r in res.rows_for(4)] == ["pq4"] and [r.spec for r in res.rows_for(8)] == ["sq4"]
    assert res.skipped == [{"spec": "sq8", "bytes": 16, "reason": "16 bytes per item at d=16: no such budget"}]
    assert res.choices[4].spec == "pq4" and res.choices[4].reason == "the only candidate that could be fitted"
    with pytest.raises(NoCandidateError, match="exactly 8 bytes"):
        tune_codecs(p["users"], p["items"], p["val"], [8], candidates=["pq4"], seeds=(0,))


def _row(spec, rel_recall, ndcg, encode_s=0.1):
    row = CandidateRow(spec=spec, budget=4, seeds=[0])
    row.per_seed = [{"seed": 0, "rel_recall": rel_recall, "rel_ndcg": ndcg, "recall": rel_recall, "ndcg": ndcg,
                     "fit_s": 0.0, "encode_s": encode_s}]  # fmt: skip
    row.summarise()
    return row


def test_tie_within_paired_standard_error_goes_to_ndcg():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    per_user = {"a": base, "b": base - 0.001 + 0.05 * rng.normal(size=400), "c": base - 0.5}
    rows = [_row("a", 1.0, 0.5), _row("b", 0.999, 0.6), _row("c", 0.5, 0.9)]
    choice = tune._choose(4, rows, per_user, 1.0, 50)
    assert choice.tie and choice.spec == "b" and choice.tied_with == ["a"] and "tie" in choice.reason
    # a clear gap is no tie
    clear = tune._choose(4, [rows[0], rows[2]], {"a": base, "c": base - 0.5}, 1.0, 50)
    assert not clear.tie and clear.spec == "a" and clear.runner_up == "c" and clear.paired_se is not None
    # equal figures on every user tie; then the faster encoder wins
    same = tune._choose(4, [_row("a", 1.0, 0.5, 0.2), _row("b", 1.0, 0.5, 0.1)], {"a": base, "b": base}, 1.0, 50)
    assert same.tie and same.spec == "b"


# ---- fine-tuning -------------------------------------------------------------------------------------
def test_finetune_kept_or_dropped_with_figures(problem):
    pytest.importorskip("torch")
    p = problem
    res = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["qat-rq4", "pq4"], seeds=(0,), finetune_epochs=1,
                      popularity_betas=(0,))
    row = res.rows_for(4)[0]
    assert row.spec == "qat-rq4" and row.finetune is not None
    assert row.finetune.startswith(("kept: fine-tuned rel R@50", "dropped: fine-tuned rel R@50", "skipped:")), row.finetune
    if not row.finetune.startswith("skipped"):
        e = row.per_seed[0]
        assert {"untouched_rel_recall", "finetuned_rel_recall", "finetune_s"} <= set(e)
        kept = row.finetune.startswith("kept")
        assert row.finetuned == kept
        assert e["rel_recall"] == (e["finetuned_rel_recall"] if kept else e["untouched_rel_recall"])
        assert (e["finetuned_rel_recall"] > e["untouched_rel_recall"]) == kept
    assert res.rows_for(4)[1].finetune is None  # pq4 is not fine-tuned


def test_finetune_divergence_keeps_the_untouched_codec(problem, monkeypatch):
    pytest.importorskip("torch")
    p = problem

    def diverge(*args, **kwargs):
        raise TrainingDivergedError("loss became nan at epoch 1")

    monkeypatch.setattr(tune, "_finetune", diverge)
    monkeypatch.setattr(tune, "_softmax_finetune_available", lambda: True)
    res = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["qat-rq4"], seeds=(0, 1), popularity_betas=(0,))
    row = res.rows_for(4)[0]
    assert row.finetune.startswith("fine-tune diverged: kept untouched") and "nan" in row.finetune
    assert not row.finetuned and res.choices[4].spec == "qat-rq4"
    assert all(e["rel_recall"] == e["untouched_rel_recall"] for e in row.per_seed)


# ---- autoN -----------------------------------------------------------------------------------------------
def test_resolve_auto_spec(result):
    assert resolve_auto_spec("auto4", D, result) == result.choices[4].spec
    assert resolve_auto_spec(" AUTO8 ", D, result) == result.choices[8].spec
    with pytest.raises(InvalidInputError, match=r"run `reelpack tune --dim 16 --budget 4`"):
        resolve_auto_spec("auto4", D, None)
    with pytest.raises(InvalidInputError, match=r"budgets 4, 8 .*`reelpack tune --dim 16 --budget 6`"):
        resolve_auto_spec("auto6", D, result)
    with pytest.raises(DimensionMismatchError, match="d=16.*d=32"):
        resolve_auto_spec("auto4", 32, result)
    with pytest.raises(NoCandidateError, match="65 bytes"):
        resolve_auto_spec("auto65", 64, None)
    for bad in ("autox", "pq4", "auto0"):
        with pytest.raises(CodecSpecError):
            resolve_auto_spec(bad, D, result)


def test_budget_choice_fields_round_trip():
    c = BudgetChoice(16, "rq16", 0.97, 0.9, tie=True, tied_with=["pq16"], reason="tie")
    doc = json.loads(json.dumps(c.__dict__))
    assert BudgetChoice(**doc) == c


# ---- popularity-weighted fits ------------------------------------------------------------------------------
def test_candidate_labels_parse_and_print():
    assert candidate_label("rq8-n", 0.0) == "rq8-n" and candidate_label("rq8-n", 1.0) == "rq8-n@pop1"
    assert candidate_label("pq4", 0.5) == "pq4@pop0.5"
    assert parse_candidate("RQ8-N@pop1") == ("rq8-n", 1.0) and parse_candidate("pq4") == ("pq4", None)
    assert parse_candidate(candidate_label("pq4", 0.5)) == ("pq4", 0.5)
    for bad in ("pq4@pop", "pq4@x1", "pq4@pop9", "bogus@pop1", "pq4@pop-1"):
        with pytest.raises(CodecSpecError):
            parse_candidate(bad)


def test_popularity_candidates_fit_with_the_weights_of_the_fit_part(problem):
    """``spec@popB`` is fitted with popularity_weights(fit item counts, B): the kept codec equals such a fit; its
    row, the choice and the JSON carry the exponent; plain specs get every exponent of popularity_betas."""
    p = problem
    res = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4@pop1", "sq4"], seeds=(0,),
                      finetune=False, keep_fitted=True, popularity_betas=(0, 0.5))  # fmt: skip
    assert [r.label for r in res.rows_for(4)] == ["pq4@pop1"]
    row = res.rows_for(4)[0]
    assert row.popularity_beta == 1.0 and res.choices[4].label == "pq4@pop1"
    assert res.choices[4].spec == "pq4" and res.choices[4].popularity_beta == 1.0
    (seed, codec, codes), = res.fitted["pq4@pop1"]
    twin = make_codec("pq4").fit(p["items"], seed=0, weights=popularity_weights(p["val"].item_counts, 1.0))
    assert codec.to_bytes() == twin.to_bytes()
    assert codec.to_bytes() != make_codec("pq4").fit(p["items"], seed=0).to_bytes()
    again = TuneResult.from_json(res.to_json())
    assert again.choices[4].popularity_beta == 1.0 and again.rows[0].label == "pq4@pop1"
    plain = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4"], seeds=(0,), finetune=False,
                        popularity_betas=(1, 0))  # fmt: skip
    assert [r.label for r in plain.rows_for(4)] == ["pq4", "pq4@pop1"]


def test_bad_popularity_betas(problem):
    p = problem
    for bad in ((), (-1,), (5,), ("x",)):
        with pytest.raises(InvalidInputError, match="popularity_betas"):
            tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4"], seeds=(0,), popularity_betas=bad)


def test_version_1_results_load_with_uniform_fits_and_bad_betas_are_refused(result, tmp_path):
    doc = json.loads(result.to_json())
    old = json.loads(result.to_json())
    old["version"] = 1
    for c in old["choices"].values():
        del c["popularity_beta"]
    for r in old["rows"]:
        del r["popularity_beta"]
    loaded = TuneResult.from_json(json.dumps(old))
    assert all(c.popularity_beta == 0.0 for c in loaded.choices.values())
    for bad in (-1, 99, "1", True):
        doc["choices"]["4"]["popularity_beta"] = bad
        with pytest.raises(SerializationError, match="popularity_beta"):
            TuneResult.from_json(json.dumps(doc))


def test_exposure_candidates_fit_with_the_exposure_weights_of_the_embeddings(problem):
    """``spec@expoB`` is fitted with exposure_weights(users, items, exposure_k, B); its row, the choice and the JSON
    carry the exponent and K; plain specs get every exponent of exposure_betas beside popularity_betas'."""
    p = problem
    res = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4@expo1"], seeds=(0,), finetune=False,
                      keep_fitted=True, exposure_k=20)  # fmt: skip
    row = res.rows_for(4)[0]
    assert row.label == "pq4@expo1" and row.exposure_beta == 1.0 and row.popularity_beta == 0.0
    assert res.choices[4].label == "pq4@expo1" and res.choices[4].exposure_beta == 1.0 and res.exposure_k == 20
    (_, codec, _), = res.fitted["pq4@expo1"]
    twin = make_codec("pq4").fit(p["items"], seed=0, weights=exposure_weights(p["users"], p["items"], 20, 1.0))
    assert codec.to_bytes() == twin.to_bytes()
    again = TuneResult.from_json(res.to_json())
    assert again.choices[4].label == "pq4@expo1" and again.exposure_k == 20
    plain = tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4"], seeds=(0,), finetune=False,
                        popularity_betas=(0,), exposure_betas=(1, 0.5))  # fmt: skip
    assert [r.label for r in plain.rows_for(4)] == ["pq4", "pq4@expo0.5", "pq4@expo1"]


def test_exposure_labels_parse_and_bad_exposure_arguments_are_refused(problem, result):
    assert candidate_label("rq8-n", 0, 1.0) == "rq8-n@expo1"
    assert parse_weighted_candidate("RQ8-N@expo0.5") == ("rq8-n", ("expo", 0.5))
    assert parse_weighted_candidate("rq8-n@pop1") == ("rq8-n", ("pop", 1.0))
    assert parse_weighted_candidate("rq8-n@expo0") == ("rq8-n", ("pop", 0.0))  # exponent 0: the uniform fit
    assert parse_weighted_candidate("pq4") == ("pq4", None)
    with pytest.raises(CodecSpecError, match="parse_weighted_candidate"):
        parse_candidate("pq4@expo1")
    with pytest.raises(CodecSpecError, match="exposure exponent"):
        parse_weighted_candidate("pq4@expo9")
    p = problem
    for kw, match in (({"exposure_betas": (-1,)}, "exposure_betas"), ({"exposure_betas": ("x",)}, "exposure_betas"),
                      ({"exposure_k": 0}, "exposure_k"), ({"exposure_k": True}, "exposure_k")):  # fmt: skip
        with pytest.raises(InvalidInputError, match=match):
            tune_codecs(p["users"], p["items"], p["val"], [4], candidates=["pq4"], seeds=(0,), **kw)
    doc = json.loads(result.to_json())
    doc["choices"]["4"]["exposure_beta"] = 1.0
    doc["choices"]["4"]["popularity_beta"] = 1.0
    with pytest.raises(SerializationError, match="both"):
        TuneResult.from_json(json.dumps(doc))
    doc = json.loads(result.to_json())
    for bad in (0, -3, "5", True):
        doc["exposure_k"] = bad
        with pytest.raises(SerializationError, match="exposure_k"):
            TuneResult.from_json(json.dumps(doc))
    old = json.loads(result.to_json())
    old["version"] = 2
    del old["exposure_k"]
    for c in old["choices"].values():
        del c["exposure_beta"]
    for r in old["rows"]:
        del r["exposure_beta"]
    loaded = TuneResult.from_json(json.dumps(old))
    assert all(c.exposure_beta == 0.0 for c in loaded.choices.values()) and loaded.exposure_k == DEFAULT_EXPOSURE_K
