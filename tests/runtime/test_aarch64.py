"""The aarch64 build (NEON kernels, ARMv8 CRC32C) run under qemu-aarch64: the C tests, the same packs ranked as
the Python scanners rank them, and the hostile-pack corpus."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from corpus import check_line_verdict, python_verdict
from test_native_pack import CORPUS, VECTORS, _check_with, _write_corpus

from reelpack.codecs import make_codec
from reelpack.format import PackReader, write_pack
from reelpack.search import make_scanner

QEMU = ["qemu-aarch64"]
SPECS = ["pq16", "pq16x4", "opq8,pq8", "apq8", "sq8", "sq4", "fp16", "float32", "rq4+4-b", "simhash64",
         "simhash128-hamming", "rabitq", "rabitq4"]  # fmt: skip
EXACT_SCORES = {"pq16", "pq16x4", "apq8", "simhash128-hamming"}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*QEMU, *args], capture_output=True, text=True, timeout=timeout)


def test_c_tests_pass_under_qemu(aarch64_build):
    for args in ([str(aarch64_build / "test_reader"), str(VECTORS)], [str(aarch64_build / "test_kernels")]):
        proc = _run(args)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_neon_is_the_kernel(aarch64_build, tmp_path):
    proc = _run([str(aarch64_build / "rp-rank"), "--version"])
    assert proc.returncode == 0 and "neon" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_same_top_k_as_the_python_scanners(aarch64_build, tmp_path, spec):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2500, 32)).astype(np.float32)
    ids = np.sort(rng.choice(10**6, 2500, replace=False))
    codec = make_codec(spec).fit(X, seed=0)
    path = tmp_path / "p.rpak"
    write_pack(path, ids, [(codec, codec.encode(X))], items_per_block=256)
    queries = rng.normal(size=(4, 32)).astype(np.float32)
    qfile = tmp_path / "q.f32"
    qfile.write_bytes(queries.astype("<f4").tobytes())
    proc = _run([str(aarch64_build / "rp-rank"), str(path), str(qfile), "-k", "50"])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    got_ids = np.array([int(r[2]) for r in rows], np.int64).reshape(4, 50)
    got_scores = np.array([float(r[3]) for r in rows], np.float32).reshape(4, 50)
    reader = PackReader(path)
    ref_rows, ref_scores = make_scanner(reader.codec(0), reader.layer_codes(0)).search(queries, 50)
    np.testing.assert_array_equal(got_ids, reader.item_ids[ref_rows])
    if spec in EXACT_SCORES:
        np.testing.assert_array_equal(got_scores, ref_scores)  # printed with %.9g: float32 round-trips exactly
    else:
        np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5 * np.abs(ref_scores).max())


def test_hostile_packs_under_qemu(aarch64_build, tmp_path):
    names = sorted(CORPUS)
    got = _check_with(QEMU, aarch64_build / "rp-rank", _write_corpus(tmp_path, names))
    wrong = {n: (python_verdict(CORPUS[n]), got.get(n)) for n in names if got.get(n) != python_verdict(CORPUS[n])}
    assert not wrong, f"{len(wrong)} differ, e.g. {sorted(wrong.items())[:5]}"
    assert check_line_verdict("x\tOK\tn_items=1\tstatus=RP_OK")[1] == "OK\tn_items=1"
