"""Smoke tests of the command line on the synthetic catalog (small and fast)."""

import json

from typer.testing import CliRunner

from reelpack.cli import app

runner = CliRunner()


def test_bench_on_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    out = tmp_path / "res"
    args = ["bench", "--dim", "16", "--epochs", "2", "--codecs", "sq8 pq4", "--max-users", "300",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "Recall@50" in result.output
    data = json.loads((out / "bench-d16.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["float32 (exact)", "sq8", "faiss:SQ8", "pq4", "faiss:PQ4np"]
    assert data["provenance"]["synthetic"] is True
    # second run loads the embeddings from the cache instead of training
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "loaded from cache" in again.output


def test_codec_seed_changes_only_the_codecs(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    base = ["bench", "--dim", "16", "--epochs", "1", "--codecs", "simhash32", "--no-faiss",
            "--cache-dir", str(tmp_path / "cache")]
    results = {}
    for codec_seed in ("0", "5"):
        out = tmp_path / f"seed{codec_seed}"
        r = runner.invoke(app, base + ["--out", str(out), "--codec-seed", codec_seed])
        assert r.exit_code == 0, r.output
        results[codec_seed] = json.loads((out / "bench-d16.json").read_text())
    a, b = results["0"], results["5"]
    assert a["provenance"]["split_seed"] == b["provenance"]["split_seed"] == 0
    assert a["provenance"]["config"]["seed"] == 0 and b["provenance"]["config"]["seed"] == 5
    assert a["rows"][0]["recall@50"] == b["rows"][0]["recall@50"]  # same embeddings
    assert a["rows"][1]["overlap@50"] != b["rows"][1]["overlap@50"]  # another projection


def test_bad_arguments_exit_2_with_message(tmp_path):
    r = runner.invoke(app, ["bench", "--codecs", "bogus9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown codec spec" in r.output
    r = runner.invoke(app, ["bench", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not found" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2\n1 a\n")
    r = runner.invoke(app, ["train", "--data", str(bad)])
    assert r.exit_code == 2 and "bad.txt:2" in r.output


def test_codecs_lists_families():
    r = runner.invoke(app, ["codecs"])
    assert r.exit_code == 0
    for family in ("fp16", "sq8", "pq", "simhash", "countsketch"):
        assert family in r.output


# ---- pack / inspect / verify ---------------------------------------------------------------------
def _embeddings_npy(tmp_path, n=1200, d=16):
    import numpy as np

    X = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    path = tmp_path / "items.npy"
    np.save(path, X)
    ids = tmp_path / "ids.npy"
    np.save(ids, (np.arange(n) * 3 + 7)[::-1].copy())
    return X, path, ids


def test_pack_inspect_verify_round_trip(tmp_path):
    import numpy as np

    from reelpack.format import PackReader

    X, emb, ids = _embeddings_npy(tmp_path)
    out = tmp_path / "items.rpak"
    r = runner.invoke(app, ["pack", str(emb), "--ids", str(ids), "--codecs", "simhash64 sq8", "--out", str(out),
                            "--items-per-block", "100", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "1200 items" in r.output and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]  # atomic: no leftovers
    with PackReader(out) as pack:
        assert [pack.codec(i).spec for i in range(pack.n_layers)] == ["simhash64", "sq8"]
        assert pack.layers[1].items_per_block == 100 and pack.layers[1].n_blocks == 12
        np.testing.assert_array_equal(pack.item_ids, np.arange(1200) * 3 + 7)
        # row i belongs to item_ids[i]: the sq8 layer decodes close to the original row of that id
        rows = (pack.item_ids - 7) // 3
        original = np.load(emb)[::-1][rows]
        assert np.abs(pack.codec(1).decode(pack.layer_codes(1)) - original).max() < 0.05
        assert pack.metadata["codecs"] == ["simhash64", "sq8"] and pack.metadata["seed"] == 3

    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0, r.output
    for text in ("v1.0", "1200 items", "ITEM_IDS", "BLOCK_INDEX", "LAYER_CODES", "simhash64", "sq8", "layers"):
        assert text in r.output
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["header"]["n_items"] == 1200 and info["header"]["major"] == 1
    assert [la["codec"] for la in info["layers"]] == ["simhash64", "sq8"]
    assert [la["bytes_per_item"] for la in info["layers"]] == [8.0, 16.0]
    assert info["layers"][1]["block_max_sq_error"]["blocks_with_bounds"] == 12
    assert info["file_bytes"] == out.stat().st_size

    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0 and "OK" in r.output, r.output


def test_verify_reports_a_damaged_block_with_exit_1(tmp_path):
    from reelpack.format import PackReader

    _, emb, _ = _embeddings_npy(tmp_path)
    out = tmp_path / "p.rpak"
    assert runner.invoke(app, ["pack", str(emb), "--codecs", "sq4 sq8", "--out", str(out),
                               "--items-per-block", "100"]).exit_code == 0  # fmt: skip
    with PackReader(out) as pack:
        info = pack.layers[1]
        offset = info.codes_offset + 3 * info.items_per_block * info.bytes_per_vector + 5  # inside block 3
    raw = bytearray(out.read_bytes())
    raw[offset] ^= 0x40
    out.write_bytes(bytes(raw))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1, r.output
    assert "layer 1 block 3" in r.output and "CRC32C" in r.output and "100 of 1200 item ids lost" in r.output
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.output)
    assert rep["ok"] is False and rep["bad_blocks"] == [{"layer": 1, "block": 3, "reason": "block CRC32C mismatch"}]
    assert rep["lost_items"] == {"0": 0, "1": 100}
    # a truncated pack: blocks past the end are reported, exit 1
    out.write_bytes(bytes(raw[: len(raw) - 50]))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "truncated" in r.output


def test_verify_and_inspect_exit_2_on_unreadable_packs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a pack, just some text that is long enough to hold a header " * 3)
    for cmd in ("verify", "inspect"):
        r = runner.invoke(app, [cmd, str(text)])
        assert r.exit_code == 2 and "error" in r.output, r.output
        r = runner.invoke(app, [cmd, str(tmp_path / "missing.rpak")])
        assert r.exit_code == 2 and "not found" in r.output
    # a damaged header is a typed error too
    _, emb, _ = _embeddings_npy(tmp_path)
    out = tmp_path / "p.rpak"
    assert runner.invoke(app, ["pack", str(emb), "--codecs", "sq8", "--out", str(out)]).exit_code == 0
    raw = bytearray(out.read_bytes())
    raw[20] ^= 1
    out.write_bytes(bytes(raw))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 2 and "CRC" in r.output


def test_pack_bad_arguments_exit_2(tmp_path):
    _, emb, ids = _embeddings_npy(tmp_path)
    out = tmp_path / "p.rpak"
    r = runner.invoke(app, ["pack", str(emb), "--codecs", "sq8 bogus9", "--out", str(out)])
    assert r.exit_code == 2 and "unknown codec spec" in r.output
    r = runner.invoke(app, ["pack", str(tmp_path / "nope.npy"), "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    r = runner.invoke(app, ["pack", str(tmp_path / "junk.npy"), "--out", str(out)])
    assert r.exit_code == 2 and "cannot read" in r.output
    import numpy as np

    np.save(tmp_path / "short_ids.npy", np.arange(5))
    r = runner.invoke(app, ["pack", str(emb), "--ids", str(tmp_path / "short_ids.npy"), "--out", str(out)])
    assert r.exit_code == 2 and "ids must have shape" in r.output
    np.save(tmp_path / "dup_ids.npy", np.zeros(1200, np.int64))
    r = runner.invoke(app, ["pack", str(emb), "--ids", str(tmp_path / "dup_ids.npy"), "--out", str(out)])
    assert r.exit_code == 2 and "unique" in r.output
    r = runner.invoke(app, ["pack", str(emb), "--dim", "16", "--out", str(out)])
    assert r.exit_code == 2 and "not both" in r.output
    assert not out.exists()


def test_pack_from_trained_embeddings(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    from reelpack.format import PackReader

    out = tmp_path / "syn.rpak"
    r = runner.invoke(app, ["pack", "--dim", "16", "--epochs", "1", "--codecs", "simhash32;sq8", "--out", str(out),
                            "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC" in r.output
    with PackReader(out) as pack:
        assert pack.n_layers == 2 and pack.codec(1).dim == 16 and pack.verify().ok


# ---- delta make / delta apply --------------------------------------------------------------------
def _delta_setup(tmp_path):
    """A base pack from `reelpack pack`, and catalog B (some rows removed, added and changed) as .npy files."""
    import numpy as np

    rng = np.random.default_rng(1)
    X, emb, ids = _embeddings_npy(tmp_path, n=600, d=16)
    base = tmp_path / "a.rpak"
    r = runner.invoke(app, ["pack", str(emb), "--ids", str(ids), "--out", str(base), "--codecs", "simhash64 sq8",
                            "--items-per-block", "128"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ids_a = np.load(ids)
    keep = np.ones(ids_a.size, bool)
    keep[rng.choice(ids_a.size, 40, replace=False)] = False
    Xb = X[keep].copy()
    Xb[rng.choice(Xb.shape[0], 25, replace=False)] *= np.float32(0.8)  # changed rows, inside the sq8 ranges
    Xb = np.concatenate([Xb, np.float32(0.7) * X[rng.choice(X.shape[0], 30, replace=False)][:, ::-1]])
    ids_b = np.concatenate([ids_a[keep], 10_000 + np.arange(30)])
    np.save(tmp_path / "b.npy", Xb)
    np.save(tmp_path / "b_ids.npy", ids_b)
    return base, tmp_path / "b.npy", tmp_path / "b_ids.npy"


def test_delta_make_apply_byte_identical(tmp_path):
    import hashlib

    base, emb_b, ids_b = _delta_setup(tmp_path)
    delta, target, out = tmp_path / "d.rpak", tmp_path / "b.rpak", tmp_path / "b_applied.rpak"
    r = runner.invoke(app, ["delta", "make", str(base), str(emb_b), "--ids", str(ids_b), "--out", str(delta),
                            "--threshold", "0.1", "--target", str(target)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "40 removed, 30 added" in r.output and "delta/full" in r.output
    assert "reused" in r.output and "re-fitted" not in r.output
    assert delta.stat().st_size < target.stat().st_size
    r = runner.invoke(app, ["delta", "apply", str(base), str(delta), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == target.read_bytes()
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}" in r.output
    # a catalog whose values spread wider than sq8's fitted ranges: sq8 is re-fitted, every item's codes are sent,
    # and apply still rebuilds the target exactly
    import numpy as np

    wide = tmp_path / "wide.npy"
    np.save(wide, np.float32(1.5) * np.load(emb_b))
    r = runner.invoke(app, ["delta", "make", str(base), str(wide), "--ids", str(ids_b), "--out", str(delta),
                            "--threshold", "0.1", "--seed", "3", "--target", str(target)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "re-fitted" in r.output and "590 items' codes sent" in r.output
    r = runner.invoke(app, ["delta", "apply", str(base), str(delta), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == target.read_bytes()


def test_delta_errors_exit_2(tmp_path):
    base, emb_b, ids_b = _delta_setup(tmp_path)
    delta, target = tmp_path / "d.rpak", tmp_path / "b.rpak"
    r = runner.invoke(app, ["delta", "make", str(base), str(emb_b), "--ids", str(ids_b), "--out", str(delta),
                            "--target", str(target)])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "out.rpak"
    # wrong base: the delta was made for a.rpak, not for b.rpak
    r = runner.invoke(app, ["delta", "apply", str(target), str(delta), "--out", str(out)])
    assert r.exit_code == 2 and "SHA-256" in r.output
    assert not out.exists()
    # corrupted delta: flip one byte in its last section
    raw = bytearray(delta.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "bad.rpak"
    bad.write_bytes(bytes(raw))
    r = runner.invoke(app, ["delta", "apply", str(base), str(bad), "--out", str(out)])
    assert r.exit_code == 2 and "error" in r.output
    assert not out.exists()
    # missing files
    r = runner.invoke(app, ["delta", "apply", str(base), str(tmp_path / "nope.rpak"), "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["delta", "apply", str(tmp_path / "nope.rpak"), str(delta), "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["delta", "make", str(tmp_path / "nope.rpak"), str(emb_b), "--ids", str(ids_b),
                            "--out", str(delta)])  # fmt: skip
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["delta", "make", str(base), str(tmp_path / "nope.npy"), "--ids", str(ids_b),
                            "--out", str(delta)])  # fmt: skip
    assert r.exit_code == 2 and "not found" in r.output
    # a delta is not a base pack
    r = runner.invoke(app, ["delta", "make", str(delta), str(emb_b), "--ids", str(ids_b), "--out", str(bad)])
    assert r.exit_code == 2 and "delta" in r.output
    # help documents both subcommands
    r = runner.invoke(app, ["delta", "--help"])
    assert r.exit_code == 0 and "make" in r.output and "apply" in r.output


def test_pack_entropy_option(tmp_path):
    import numpy as np

    from reelpack.format import PackReader

    X, emb, ids = _embeddings_npy(tmp_path)
    plain, coded = tmp_path / "plain.rpak", tmp_path / "coded.rpak"
    base = ["pack", str(emb), "--ids", str(ids), "--codecs", "simhash64 sq4", "--items-per-block", "100"]
    assert runner.invoke(app, base + ["--out", str(plain)]).exit_code == 0
    r = runner.invoke(app, base + ["--out", str(coded), "--entropy", "auto"])
    assert r.exit_code == 0, r.output
    with PackReader(plain) as a, PackReader(coded) as b:
        assert not a.layers[1].entropy_coded and b.layers[1].entropy_coded and not b.layers[0].entropy_coded
        np.testing.assert_array_equal(a.layer_codes(1), b.layer_codes(1))
        assert b.verify().ok
    assert coded.stat().st_size < plain.stat().st_size
    r = runner.invoke(app, base + ["--out", str(tmp_path / "x.rpak"), "--entropy", "nibbles"])
    assert r.exit_code == 2 and "one word per codec" in r.output
    r = runner.invoke(app, base + ["--out", str(tmp_path / "x.rpak"), "--entropy", "none zstd"])
    assert r.exit_code == 2 and "unknown entropy layout" in r.output
