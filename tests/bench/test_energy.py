"""The phone latency and energy estimate (reelpack.bench.energy) and its wiring into the bench."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.errors import InvalidInputError
from reelpack.bench.harness import BenchConfig, run_bench
from reelpack.bench.energy import (
    DEFAULT_DEVICE_MODEL,
    DEVICE_MODELS,
    RADIO_NAMES,
    DeviceModel,
    RadioProfile,
    estimate_energy,
    estimate_phone_ms,
    estimate_row,
    get_device_model,
    measured_query_ms,
)
from reelpack.bench.report import results_markdown, results_table


def _radio(name="4g", **kw):
    args = dict(
        name=name, alpha_d_mw_per_mbps=100.0, beta_mw=900.0, throughput_mbps=10.0,
        promotion_s=0.5, promotion_w=1.0, tail_s=10.0, tail_w=1.0,
    )  # fmt: skip
    args.update(kw)
    return RadioProfile(**args)


def _toy_model(ratio=3.0, watts=2.0):
    return DeviceModel(
        name="toy", description="round numbers", core_speed_ratio=ratio, cpu_watts_active=watts,
        radios=(_radio("3g"), _radio("4g"), _radio("wifi", promotion_s=0.0, tail_s=0.0)),
    )  # fmt: skip


# ---- formulas against hand-computed numbers ------------------------------------------------------------------------


def test_radio_formula_by_hand():
    r = _radio()
    # P = 100 mW/Mbps * 10 Mbps + 900 mW = 1.9 W; 1 MB = 8 Mbit takes 0.8 s at 10 Mbit/s -> 1.52 J
    assert r.active_power_w == pytest.approx(1.9)
    assert r.joules_per_byte == pytest.approx(1.52e-6)
    assert r.joules_per_mb == pytest.approx(1.52)
    # promotion 0.5 s x 1 W + tail 10 s x 1 W = 10.5 J, once per transfer
    assert r.fixed_joules == pytest.approx(10.5)
    assert r.transfer_joules(1_000_000) == pytest.approx(12.02)
    assert r.transfer_seconds(1_000_000) == pytest.approx(0.5 + 0.8)


def test_estimates_by_hand():
    m = _toy_model(ratio=3.0, watts=2.0)
    assert estimate_phone_ms(5.0, m) == pytest.approx(15.0)
    e = estimate_energy(1_000_000, 15.0, m, "4g")
    assert e.radio_j == pytest.approx(12.02)
    assert e.cpu_j == pytest.approx(0.030)  # 2 W x 15 ms = 30 mJ
    assert e.total_j == pytest.approx(12.05)
    # no bytes: no transfer, so no promotion or tail either
    assert estimate_energy(0, 0.0, m, "4g").radio_j == 0.0
    # a RadioProfile can be passed directly
    assert estimate_energy(500_000, 0.0, m, _radio(tail_s=0.0)).radio_j == pytest.approx(0.76 + 0.5)


def test_preset_lte_matches_the_power_model():
    lte = get_device_model("midrange-2024").radio("4g")
    # Huang et al. 2012 model at 13 Mbit/s: 8 * (alpha_d + beta / t_d) nJ per byte
    assert lte.joules_per_byte == pytest.approx(8 * (51.97 + 1288.04 / 13.0) * 1e-9)
    assert lte.fixed_joules == pytest.approx(0.2601 * 1.2107 + 11.576 * 1.06)


def test_estimate_row_by_hand():
    m = _toy_model(ratio=3.0, watts=2.0)
    row = {"method": "sq8", "rank_s": 2.0, "n_users": 400, "bytes_per_item": 16}
    est = estimate_row(row, n_items=62_500, model=m)  # 1,000,000 payload bytes
    assert est["query_ms"] == pytest.approx(5.0)  # 2 s * 1000 / 400 users, measured
    assert est["est_phone_query_ms"] == pytest.approx(15.0)
    assert est["est_query_mJ"] == pytest.approx(30.0)
    assert est["payload_bytes"] == 1_000_000
    assert est["est_download_J_4g"] == pytest.approx(12.02)
    assert est["est_download_J_3g"] == pytest.approx(12.02)
    assert est["est_download_J_wifi"] == pytest.approx(1.52)  # no promotion/tail in the toy wifi
    assert est["est_download_s_4g"] == pytest.approx(1.3)
    # every key but the measured/exact ones is labelled as an estimate
    assert {k for k in est if not k.startswith("est_")} == {"query_ms", "payload_bytes"}
    # missing inputs -> None, not a made-up number
    empty = estimate_row({"method": "x"}, 10, m)
    assert empty["query_ms"] is None and empty["est_phone_query_ms"] is None and empty["est_download_J_4g"] is None
    assert measured_query_ms({"rank_s": 1.0, "n_users": 0}) is None
    # a timed single-query median (results schema 3) takes precedence over the batched figure
    timed = estimate_row({**row, "query_ms": 0.25}, n_items=62_500, model=m)
    assert timed["query_ms"] == 0.25 and timed["est_phone_query_ms"] == pytest.approx(0.75)


# ---- monotonicity and the ordering the constants imply -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 1e9, allow_nan=False), st.floats(0, 1e9, allow_nan=False),
    st.floats(0, 1e4, allow_nan=False), st.sampled_from(sorted(DEVICE_MODELS)), st.sampled_from(RADIO_NAMES),
)  # fmt: skip
def test_more_bytes_or_time_never_costs_less(b1, b2, ms, preset, radio):
    m = get_device_model(preset)
    lo, hi = sorted((b1, b2))
    e_lo, e_hi = estimate_energy(lo, ms, m, radio), estimate_energy(hi, ms, m, radio)
    assert e_hi.radio_j >= e_lo.radio_j
    assert e_hi.cpu_j == e_lo.cpu_j
    assert estimate_energy(lo, ms + 1.0, m, radio).cpu_j > e_lo.cpu_j
    assert estimate_phone_ms(ms + 1.0, m) > estimate_phone_ms(ms, m)


@pytest.mark.parametrize("preset", sorted(DEVICE_MODELS))
def test_presets_order_radios_as_the_sources_do(preset):
    m = get_device_model(preset)
    g3, g4, wifi = m.radio("3g"), m.radio("4g"), m.radio("wifi")
    assert g3.joules_per_byte > wifi.joules_per_byte  # 3G costs more per byte than Wi-Fi
    assert g3.joules_per_byte > g4.joules_per_byte
    # LTE's long high-power tail (Huang et al. 2012) makes a small download far dearer than over Wi-Fi
    assert g4.transfer_joules(100_000) > 5 * wifi.transfer_joules(100_000)
    assert m.core_speed_ratio > 1.0  # a phone core is slower than the server core the bench runs on
    assert m.sources and all(r.sources for r in m.radios)
    json.dumps(m.to_dict())  # provenance must be JSON


def test_midrange_is_slower_than_flagship():
    mid, flag = get_device_model("midrange-2024"), get_device_model("flagship-2023")
    assert estimate_phone_ms(10.0, mid) > estimate_phone_ms(10.0, flag)
    assert DEFAULT_DEVICE_MODEL == "midrange-2024"


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_unknown_preset_and_bad_values():
    with pytest.raises(InvalidInputError, match="unknown device model 'iphone-1'.*midrange-2024"):
        get_device_model("iphone-1")
    with pytest.raises(InvalidInputError, match="presets: flagship-2023, midrange-2024"):
        BenchConfig(codecs=("sq8",), device_model="nope")
    m = get_device_model("midrange-2024")
    with pytest.raises(InvalidInputError, match="unknown radio '5g'"):
        m.radio("5g")
    with pytest.raises(InvalidInputError, match="measured_ms must be >= 0"):
        estimate_phone_ms(-1.0, m)
    with pytest.raises(InvalidInputError, match="finite"):
        estimate_energy(math.nan, 0.0, m, "4g")
    with pytest.raises(InvalidInputError, match="real number"):
        estimate_energy("10", 0.0, m, "4g")
    with pytest.raises(InvalidInputError, match="throughput_mbps must be > 0"):
        _radio(throughput_mbps=0.0)
    with pytest.raises(InvalidInputError, match="radio name"):
        _radio(name="lte")
    with pytest.raises(InvalidInputError, match="one radio per"):
        DeviceModel(name="x", description="", core_speed_ratio=1.0, cpu_watts_active=1.0, radios=(_radio(),))
    with pytest.raises(InvalidInputError, match="core_speed_ratio must be > 0"):
        _toy_model(ratio=0.0)


# ---- the bench rows and the report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bench(random_bench_data):
    split, users, items = random_bench_data(300, 400, 6, seed=1)
    config = BenchConfig(codecs=("sq8",), faiss_twins=False, max_users=100, batch_size=64)
    return split, run_bench(users, items, split, config)


def test_bench_rows_carry_measured_and_estimated_fields(tiny_bench):
    split, result = tiny_bench
    model = get_device_model("midrange-2024")
    assert [r["method"] for r in result.rows] == ["float32 (exact)", "sq8"]
    for row in result.rows:
        # query_ms: median of single queries through the method's device path; the batched figure is kept apart
        assert row["batch_ms_per_user"] == pytest.approx(row["rank_s"] * 1000 / row["n_users"])
        assert 0 < row["query_ms"] <= row["query_ms_p90"] and row["latency_path"] and row["latency_users"] == 100
        assert row["est_phone_query_ms"] == pytest.approx(row["query_ms"] * model.core_speed_ratio)
        assert row["est_query_mJ"] == pytest.approx(row["est_phone_query_ms"] * model.cpu_watts_active)
        assert row["payload_bytes"] == row["bytes_per_item"] * split.n_items
        for radio in RADIO_NAMES:
            assert row[f"est_download_J_{radio}"] == pytest.approx(
                model.radio(radio).transfer_joules(row["payload_bytes"])
            )
        assert row["est_download_J_3g"] > row["est_download_J_wifi"]
    # 4 bytes/dim of float32 vs 1 of sq8: the compressed pack is cheaper to download
    assert result.row("sq8")["est_download_J_4g"] < result.row("float32 (exact)")["est_download_J_4g"]
    prov = result.provenance["device_model"]
    assert prov["name"] == "midrange-2024" and prov["core_speed_ratio"] == model.core_speed_ratio
    assert prov["radios"]["4g"]["alpha_d_mw_per_mbps"] == 51.97 and prov["radios"]["4g"]["sources"]
    assert result.provenance["config"]["device_model"] == "midrange-2024"
    json.loads(result.to_json())


def test_report_labels_estimates(tiny_bench):
    _, result = tiny_bench
    md = results_markdown(result)
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "| query ms | est. phone ms | est. download J (4G) |" in header
    assert 'Columns headed "est." are ESTIMATES' in md and "docs/ENERGY.md" in md
    assert "device model (estimates only" in md
    table = results_table(result)
    headers = [c.header for c in table.columns]
    assert "est. phone ms" in headers and "est. download J (4G)" in headers and "query ms" in headers
    # every column fed by an est_ key says "est." in its header
    from reelpack.bench.report import _columns

    for head, key, _ in _columns(result):
        assert key.startswith("est_") == head.startswith("est."), (head, key)


def test_other_preset_scales_the_estimates(random_bench_data):
    split, users, items = random_bench_data(200, 300, 4, seed=2, dim=8)
    cfg = BenchConfig(codecs=(), faiss_twins=False, max_users=50, batch_size=64, device_model="flagship-2023")
    row = run_bench(users, items, split, cfg).rows[0]
    flag = get_device_model("flagship-2023")
    assert row["est_phone_query_ms"] == pytest.approx(row["query_ms"] * flag.core_speed_ratio)


def test_docs_tables_match_the_code():
    """docs/ENERGY.md states the constants and derived figures; they must agree with the presets."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "ENERGY.md").read_text()
    m = get_device_model("midrange-2024")
    g3, g4, wifi = (m.radio(n) for n in ("3g", "4g", "wifi"))
    per_mb = " | ".join(f"{r.joules_per_mb:.2f}" for r in (g3, g4, wifi))
    fixed = " | ".join(f"{r.fixed_joules:.2f}" for r in (g3, g4, wifi))
    alpha = " | ".join(str(r.alpha_d_mw_per_mbps) for r in (g3, g4, wifi))
    assert f"| marginal energy (J per MB = 10^6 bytes) | {per_mb} |" in doc
    assert f"| fixed energy per transfer (J) | {fixed} |" in doc
    assert f"| `alpha_d` (mW per Mbit/s) | {alpha} |" in doc
    assert f"| `beta` (mW) | {g3.beta_mw} | {g4.beta_mw} | {wifi.beta_mw} |" in doc
    flag = get_device_model("flagship-2023")
    assert f"| `core_speed_ratio` | {m.core_speed_ratio} | {flag.core_speed_ratio} |" in doc
    assert f"| `cpu_watts_active` (W, one busy big core) | {m.cpu_watts_active} | {flag.cpu_watts_active} |" in doc
