import json

import numpy as np
import pytest

from reelpack.errors import DimensionMismatchError, InvalidInputError, UnknownCodecError
from reelpack.bench.baselines import faiss_twin_spec
from reelpack.bench.harness import BenchConfig, load_results, run_bench
from reelpack.bench.report import results_markdown, results_table, write_results


@pytest.fixture(scope="module")
def setup(clustered_bench_data):
    split, _, users, items = clustered_bench_data(600, 700, 8)
    return split, users, items


def test_bench_rows_metrics_and_twins(setup, tmp_path):
    split, users, items = setup
    config = BenchConfig(codecs=("sq8", "pq4", "countsketch8"), max_users=400, batch_size=128)
    result = run_bench(users, items, split, config)
    methods = [r["method"] for r in result.rows]
    assert methods == ["float32 (exact)", "sq8", "faiss:SQ8", "pq4", "faiss:PQ4np", "countsketch8"]
    ref = result.row("float32 (exact)")
    assert ref["rel_recall@50"] == 1.0 and ref["overlap@50"] == 1.0 and ref["bytes_per_item"] == 64
    assert ref["recall@50"] > 0.2  # the clustered toy embeddings carry real signal
    sq8 = result.row("sq8")
    assert sq8["bytes_per_item"] == 16 and sq8["compression"] == 4.0
    assert sq8["rel_recall@50"] > 0.97 and sq8["overlap@50"] > 0.8
    assert result.row("faiss:SQ8")["twin_of"] == "sq8"
    assert sq8["delta_rel_recall@50_vs_faiss"] == pytest.approx(
        sq8["rel_recall@50"] - result.row("faiss:SQ8")["rel_recall@50"]
    )
    pq = result.row("pq4")
    assert pq["bytes_per_item"] == 4 and result.row("faiss:PQ4np")["bytes_per_item"] == 4
    assert pq["rel_recall@50"] < sq8["rel_recall@50"] + 0.05  # 4 bytes cannot beat 16 by much
    for r in result.rows:
        assert r["n_users"] == ref["n_users"] <= 400
        assert r["rank_s"] >= 0 and 0 <= r["overlap@50"] <= 1
        assert not any(key.startswith(("val_", "qat_choice")) for key in r)  # no val_split: no validation keys
    assert "validation" not in result.provenance  # (tests/bench/test_harness_validation.py: with one)
    # report and JSON round trip
    json_path, md_path = write_results(result, tmp_path, "b")
    again = load_results(json_path)
    assert again.rows == json.loads(result.to_json())["rows"]
    md = md_path.read_text()
    assert "| sq8 | 16 |" in md and "faiss:SQ8" in md and "command:" in md
    assert results_table(result).row_count == len(result.rows)
    assert "SYNTHETIC" in results_markdown(result)


def test_bench_bad_input(setup, tmp_path):
    split, users, items = setup
    with pytest.raises(DimensionMismatchError):
        run_bench(users[:10], items, split, BenchConfig(codecs=("sq8",)))
    with pytest.raises(DimensionMismatchError):
        run_bench(users, items[:, :8], split, BenchConfig(codecs=("sq8",)))
    with pytest.raises(UnknownCodecError):
        BenchConfig(codecs=("nope7",))
    with pytest.raises(InvalidInputError):
        BenchConfig(max_users=0)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema_version": 0, "rows": [], "provenance": {}}))
    with pytest.raises(InvalidInputError, match="schema version 0"):
        load_results(old)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "spec, twin",
    [("float32", "Flat"), ("fp16", "SQfp16"), ("sq4", "SQ4"), ("sq8-p99.9", None), ("pq16", "PQ16np"), ("pq32x4", "PQ32x4np"),
     ("opq8,pq8", "OPQ8,PQ8np"), ("simhash128", "LSH128"), ("simhash64-hamming", "LSH64"), ("countsketch32", None)],
)
def test_faiss_twin_spec(spec, twin):
    assert faiss_twin_spec(spec) == twin


# ---- schema version 2: robustness under loss, engineering checks, contest -----------------------
def _masked_recall(split, users, scores, lost_rows, k=50):
    """Plain NumPy reference: Recall@k of ``scores`` with train items and lost item rows at -inf."""
    from reelpack.metrics.quality import ranking_metrics

    s = np.array(scores, np.float64)
    for i, u in enumerate(users):
        s[i, split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]]] = -np.inf
    s[:, lost_rows] = -np.inf
    ranked = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ranking_metrics(ranked, users, split.test_indptr, split.test_items, (k,))[f"recall@{k}"]


def test_bench_robustness_and_checks_against_numpy_reference(setup):
    from reelpack.codecs import make_codec
    from reelpack.bench.checks import _LossSetup
    from reelpack.bench.harness import LOSS_ITEMS_PER_BLOCK, RESULTS_SCHEMA_VERSION
    from reelpack.bench.contest import contest_scores

    split, users, items = setup
    config = BenchConfig(codecs=("sq8", "pq4"), max_users=300, batch_size=128, loss_rates=(0.0, 0.3), robust_users=150)
    result = run_bench(users, items, split, config)
    assert result.schema_version == RESULTS_SCHEMA_VERSION == 3
    rob = result.extra["robustness"]
    assert rob["loss_rates"] == [0.0, 0.1, 0.3] and rob["reference_rate"] == 0.1  # 0.1 always added
    assert rob["n_users"] == 150 and rob["items_per_block"] == LOSS_ITEMS_PER_BLOCK and rob["lost_blocks"][2] > 0
    assert set(rob["curves"]) == {r["method"] for r in result.rows}
    assert rob["how"]["sq8"] == "pack+crc" and rob["how"]["faiss:SQ8"] == "item-blocks"

    # the same scenario, recomputed with plain NumPy (same sample users, same lost blocks)
    eval_users = split.eval_users()
    eval_users = np.sort(np.random.default_rng(config.seed).choice(eval_users, 300, replace=False))
    lossy = _LossSetup.make(config, split, eval_users, split.n_items)
    ref_recall = _masked_recall(split, lossy.users, users[lossy.users] @ items.T, [])
    codec = make_codec("pq4").fit(items, seed=config.seed)
    pq_scores = codec.score(users[lossy.users], codec.encode(items))
    for i, rate in enumerate(rob["loss_rates"]):
        lost_rows = np.flatnonzero(~lossy.available_items(i))
        want_f32 = _masked_recall(split, lossy.users, users[lossy.users] @ items.T, lost_rows) / ref_recall
        assert rob["curves"]["float32 (exact)"][i] == pytest.approx(want_f32, abs=1e-12)
        want_pq = _masked_recall(split, lossy.users, pq_scores, lost_rows) / ref_recall
        assert rob["curves"]["pq4"][i] == pytest.approx(want_pq, abs=1e-12)  # through a real pack + CRC
    # faiss: the same lost item blocks removed from the index (oracle: faiss's scores of every item, masked)
    import faiss

    from reelpack.bench.baselines import fit_faiss_twin

    assert np.flatnonzero(lossy.lost_blocks[2])[0] < lossy.lost_blocks[2].size - 1  # a loss that renumbers items
    ft = fit_faiss_twin("SQ8", items, seed=config.seed)
    dist, ids = ft.index.search(np.ascontiguousarray(users[lossy.users]), split.n_items)
    faiss_scores = np.full((len(lossy.users), split.n_items), -np.inf)
    np.put_along_axis(faiss_scores, ids, dist, axis=1)
    for i in range(len(rob["loss_rates"])):
        lost_rows = np.flatnonzero(~lossy.available_items(i))
        want = _masked_recall(split, lossy.users, faiss_scores, lost_rows) / ref_recall
        assert rob["curves"]["faiss:SQ8"][i] == pytest.approx(want, abs=1e-12)
    del faiss
    pq = result.row("pq4")
    assert pq["robust_rel_recall@50"] == rob["curves"]["pq4"][1]
    assert pq["robust_base_rel_recall@50"] == rob["curves"]["pq4"][0]

    # engineering checks
    assert result.row("sq8")["engineering_checks"] == {
        "pack_round_trip": True, "encode_deterministic": True, "bad_query_typed_error": True, "corruption_detected": True,
    }  # fmt: skip
    fchecks = result.row("faiss:PQ4np")["engineering_checks"]
    assert fchecks["corruption_detected"] is None and fchecks["pack_round_trip"] and fchecks["encode_deterministic"]
    assert fchecks["bad_query_typed_error"] is False  # faiss: AssertionError / silent -1 ids
    assert result.row("float32 (exact)")["engineering_checks"] is None

    # the contest is stored and agrees with a recomputation from the JSON
    stored = {c["method"]: c["total"] for c in result.extra["contest"]}
    again = {s.method: s.total for s in contest_scores(json.loads(result.to_json()))}
    assert stored == pytest.approx(again)
    assert next(c for c in result.extra["contest"] if c["method"] == "pq4")["missing"] == []


def test_bench_robustness_off_and_config_errors(setup, tmp_path):
    split, users, items = setup
    result = run_bench(users, items, split, BenchConfig(codecs=("sq8",), faiss_twins=False, max_users=100, robust_users=0))
    assert result.extra["robustness"] is None
    row = result.row("sq8")
    assert row["robust_rel_recall@50"] is None and row["engineering_checks"]["corruption_detected"] is True
    assert "robustness" in next(c for c in result.extra["contest"] if c["method"] == "sq8")["missing"]
    md_path = write_results(result, tmp_path, "off")[1]
    assert "Robustness under loss" not in md_path.read_text() and "Contest score" in md_path.read_text()
    for bad in ({"loss_rates": (1.0,)}, {"loss_rates": (-0.1,)}, {"robust_users": -1}, {"robust_users": True}):
        with pytest.raises(InvalidInputError):
            BenchConfig(**bad)


def test_bad_query_check_and_corruption_helper():
    from reelpack.errors import ReelpackError
    from reelpack.bench.checks import _bad_query_rejected, _corrupt

    def typed(q):
        raise InvalidInputError("bad")

    def assertion(q):
        raise AssertionError

    assert _bad_query_rejected(typed, 4, ReelpackError)
    assert not _bad_query_rejected(assertion, 4, ReelpackError)
    assert not _bad_query_rejected(lambda q: None, 4, ReelpackError)
    raw = np.arange(10 + 130 * 2, dtype=np.uint8)
    lost = np.array([False, True, False])
    out = _corrupt(raw, 10, 130, 2, lost)
    changed = np.flatnonzero(out != raw)
    assert changed.min() == 10 + 64 * 2 and changed.max() == 10 + 128 * 2 - 1 and changed.size == 128
    assert np.array_equal(raw, np.arange(10 + 130 * 2, dtype=np.uint8))  # input untouched


def test_load_results_refuses_version_1_clearly(tmp_path):
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({"schema_version": 1, "rows": [{"method": "sq8"}], "provenance": {}}))
    with pytest.raises(InvalidInputError) as info:
        load_results(old)
    msg = str(info.value)
    assert "schema version 1" in msg and "older" in msg and "version 3" in msg and "re-run `reelpack bench`" in msg
    v2 = tmp_path / "v2.json"  # version 2 timed query_ms as batched time per user: refused as well
    v2.write_text(json.dumps({"schema_version": 2, "rows": [{"method": "sq8"}], "provenance": {}}))
    with pytest.raises(InvalidInputError) as info:
        load_results(v2)
    msg = str(info.value)
    assert "schema version 2" in msg and "older" in msg and "version 3" in msg and "one query at a time" in msg
    future = tmp_path / "v9.json"
    future.write_text(json.dumps({"schema_version": 9, "rows": [], "provenance": {}}))
    with pytest.raises(InvalidInputError, match="schema version 9 \\(unknown\\)"):
        load_results(future)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="not a reelpack results file"):
        load_results(tmp_path / "list.json")
    (tmp_path / "norows.json").write_text(json.dumps({"schema_version": 3, "rows": "x", "provenance": {}}))
    with pytest.raises(InvalidInputError, match="list of 'rows'"):
        load_results(tmp_path / "norows.json")


def test_rank_masked_equals_masked_topk(setup):
    """The one-pass shortcut of _LossSetup.rank_masked gives exactly the masked top-K, fallback rows included."""
    from reelpack.bench.checks import _LossSetup
    from reelpack.kernels.topk import mask_rows, topk

    split, users, items = setup
    config = BenchConfig(codecs=(), loss_rates=(0.0, 0.5, 0.9), robust_users=200, batch_size=64)
    lossy = _LossSetup.make(config, split, split.eval_users(), split.n_items)
    avail = [lossy.available_items(i) for i in range(len(lossy.rates))]
    assert avail[-1].sum() < 2 * lossy.k + 64  # the 0.9 rate needs the fallback
    q = np.round(users[lossy.users] @ items.T, 1).astype(np.float32)  # rounded: many ties
    got = lossy.rank_masked(lambda b: q[np.searchsorted(lossy.users, b)], avail)
    full = q.copy()
    mask_rows(full, split.train_indptr, split.train_items, lossy.users)
    for g, a in zip(got, avail):
        assert np.array_equal(g, topk(np.where(a[None, :], full, np.float32(-np.inf)), lossy.k)[0])


def test_faiss_rank_masked_equals_search_after_removal(setup):
    """The faiss shortcut (one wide search, filtered) equals a search of the index with the lost items removed."""
    import faiss

    from reelpack.bench.baselines import FaissTwin, faiss_rank_users, fit_faiss_twin
    from reelpack.bench.checks import _faiss_rank_masked, _LossSetup, _RenumberedIndex

    split, users, items = setup
    config = BenchConfig(codecs=(), loss_rates=(0.0, 0.5, 0.9), robust_users=200, batch_size=64)
    lossy = _LossSetup.make(config, split, split.eval_users(), split.n_items)
    ft = fit_faiss_twin("SQ8", items, seed=0)
    got = _faiss_rank_masked(ft, users, lossy)
    for i in range(len(lossy.rates)):
        avail = lossy.available_items(i)
        part = faiss.clone_index(ft.index)
        part.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(~avail).astype(np.int64)))
        twin = FaissTwin("SQ8", _RenumberedIndex(part, np.flatnonzero(avail)), 0.0, 0.0)
        want = faiss_rank_users(twin, users, split, lossy.users, lossy.k, 64)[0]
        finite = want >= 0
        assert np.array_equal(got[i][finite], want[finite])
        assert avail[got[i][got[i] >= 0]].all()  # no lost item is ever ranked
