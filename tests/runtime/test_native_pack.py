"""The C runtime's pack reader against the Python reader: golden vectors, real packs, damaged blocks, and the
shared corpus of hostile packs (natively through ctypes, under AddressSanitizer + UBSan, and on aarch64 under
qemu through ``rp-rank --check``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from corpus import build_corpus, check_line_verdict, python_verdict

from reelpack.codecs import make_codec
from reelpack.errors import ReelpackError
from reelpack.format import PackReader, write_pack
from reelpack.search import make_scanner
from reelpack.search.native import STATUS_NAMES, NativePack

VECTORS = Path(__file__).resolve().parents[1] / "format" / "vectors"
CORPUS = build_corpus()


def native_verdict(rt, raw: bytes) -> str:
    """The Python-verdict line computed from the C reader through ctypes."""
    try:
        pack = NativePack(raw, runtime=rt)
    except ReelpackError as exc:
        name = str(exc).rsplit("[native ", 1)[-1].rstrip("]")
        return f"OPEN_FAIL\t{name}"
    rep = pack.verify()
    bad = ",".join(f"{layer}:{b}" for layer in range(pack.n_layers) for b in pack.bad_blocks(layer))
    return (f"OK\tn_items={pack.n_items}\tlayers={pack.n_layers}\ttruncated={rep['truncated']}"
            f"\tsection_problems={rep['section_problems']}\tbad={bad}")  # fmt: skip


@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("*.hex")))
def test_golden_vectors(rt, name):
    raw = bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))
    expect = json.loads((VECTORS / f"{name}.json").read_text())
    pack = NativePack(raw, runtime=rt)
    assert pack.n_items == expect["n_items"]
    np.testing.assert_array_equal(pack.item_ids, np.asarray(expect["item_ids"], np.int64))
    # every layer is usable, entropy-coded ones too (decoded by the runtime), and no block is bad
    assert pack.verify()["bad_blocks"] == 0
    reader = PackReader.from_buffer(raw)
    for i, layer in enumerate(expect["layers"]):
        info = pack.layer_info(i)
        assert (info.spec, info.bytes_per_vector, info.items_per_block, info.n_blocks) == (
            layer["codec"], layer["bytes_per_vector"], layer["items_per_block"], layer["n_blocks"])
        assert info.entropy_coded == layer["entropy_coded"]
        assert info.status == "RP_OK" and info.usable
        assert pack.bad_blocks(i) == []
        codes = reader.layer_codes(i)  # decoded by the Python reader for an entropy-coded layer
        np.testing.assert_array_equal(codes, np.array([list(bytes.fromhex(c)) for c in layer["codes"]], np.uint8))
        q = np.linspace(-1, 1, reader.codec(i).dim).astype(np.float32)
        ids, scores = pack.search(i, q, reader.n_items)
        ref_rows, _ = make_scanner(reader.codec(i), codes).search(q, reader.n_items)
        np.testing.assert_array_equal(ids, reader.item_ids[ref_rows[0]])


@pytest.fixture(scope="module")
def real_pack(tmp_path_factory):
    """A 3-layer pack (pq16 / sq8 / rq4+4-b) of 5,000 items with sparse ids, 512 items per block."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 32)).astype(np.float32)
    ids = np.sort(rng.choice(10**9, 5000, replace=False))
    layers = []
    for spec in ("pq16", "sq8", "rq4+4-b"):
        codec = make_codec(spec).fit(X, seed=0)
        layers.append((codec, codec.encode(X)))
    path = tmp_path_factory.mktemp("packs") / "real.rpak"
    write_pack(path, ids, layers, vectors=X, metadata={"catalog_version": "t"}, items_per_block=512)
    return path


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_real_pack_ranks_like_python(rt, real_pack, layer):
    reader = PackReader(real_pack)
    pack = NativePack(real_pack, runtime=rt)  # memory-mapped file
    np.testing.assert_array_equal(pack.item_ids, reader.item_ids)
    assert pack.verify() == {"bad_blocks": 0, "missing_items": 0, "section_problems": 0, "truncated": 0}
    codec, codes = reader.codec(layer), reader.layer_codes(layer)
    q = np.random.default_rng(layer).normal(size=codec.dim).astype(np.float32)
    seen = reader.item_ids[[3, 500, 4999]]
    ids, scores = pack.search(layer, q, 50, exclude_ids=np.concatenate([seen, [-5, 7]]))
    full = codec.score(q[None], codes)[0]
    full[[3, 500, 4999]] = -np.inf
    order = np.lexsort((np.arange(full.size), -full))[:50]
    np.testing.assert_array_equal(ids, reader.item_ids[order])
    np.testing.assert_allclose(scores, full[order], atol=1e-5 * np.abs(full[np.isfinite(full)]).max())


def test_damaged_block_is_reported_and_skipped(rt, real_pack, tmp_path):
    raw = bytearray(real_pack.read_bytes())
    reader = PackReader.from_buffer(bytes(raw))
    info = reader.layers[0]
    target = info.codes_offset + 2 * info.items_per_block * info.bytes_per_vector + 5  # block 2 of layer 0
    raw[target] ^= 0x40
    damaged = bytes(raw)
    py = PackReader.from_buffer(damaged).verify()
    pack = NativePack(damaged, runtime=rt)
    assert pack.bad_blocks(0) == [b for (lay, b, _) in py.bad_blocks if lay == 0] == [2]
    assert pack.verify()["missing_items"] == sum(v.size for v in py.missing_item_ids.values())
    q = np.ones(32, np.float32)
    ids, _ = pack.search(0, q, 100)
    lost = set(reader.item_ids[2 * 512 : 3 * 512].tolist())
    assert ids.size == 100 and not lost & set(ids.tolist())
    data = PackReader.from_buffer(damaged).read_layer(0)  # the intact part, ranked by numba
    ref_rows, _ = make_scanner(reader.codec(0), data.codes).search(q, 100)
    np.testing.assert_array_equal(ids, data.item_ids[ref_rows[0]])


def test_every_hostile_pack_gets_the_python_verdict(rt):
    wrong = {}
    for name, raw in CORPUS.items():
        expect, got = python_verdict(raw), native_verdict(rt, raw)
        if expect != got:
            wrong[name] = (expect, got)
    assert not wrong, f"{len(wrong)} of {len(CORPUS)} packs differ, e.g. {sorted(wrong.items())[:5]}"


def _write_corpus(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        path = folder / name
        path.write_bytes(CORPUS[name])
        paths.append(path)
    return paths


def _check_with(cmd_prefix: list[str], rank: Path, paths: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(paths), 500):
        proc = subprocess.run([*cmd_prefix, str(rank), "--check", *map(str, paths[i : i + 500])],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode in (0, 1), proc.stderr[-2000:]
        assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr, proc.stderr[-3000:]
        for line in proc.stdout.splitlines():
            name, verdict = check_line_verdict(line)
            out[name] = verdict
    return out


def test_hostile_packs_under_sanitizers(sanitized_build, tmp_path):
    names = sorted(CORPUS)
    got = _check_with([], sanitized_build / "rp-rank", _write_corpus(tmp_path, names))
    wrong = {n: (python_verdict(CORPUS[n]), got.get(n)) for n in names if got.get(n) != python_verdict(CORPUS[n])}
    assert not wrong, f"{len(wrong)} differ, e.g. {sorted(wrong.items())[:5]}"


def test_status_names_match_the_header():
    header = (Path(__file__).resolve().parents[2] / "runtime" / "include" / "reelpack.h").read_text()
    import re

    for value, name in STATUS_NAMES.items():
        assert re.search(rf"\b{name} = {value}\b", header), name
