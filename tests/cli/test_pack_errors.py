"""Careless-user inputs of ``reelpack pack`` / ``delta make`` / ``export-onnx``: each exits 2 with a one-line
``error:`` message (no traceback) and writes no file, partial or whole."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.cli.pack import MAX_PACK_DIM

runner = CliRunner()


def _invoke(args: list[str]):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output  # stdout and stderr together


def _assert_refused(result, text: str, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and not isinstance(result.exception, (OSError, MemoryError)), text
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, text
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32))
    return path


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_pack_into_a_missing_folder_exits_2(tmp_path, good):
    target = tmp_path / "nonexistent_dir" / "x.rpak"
    result, text = _invoke(["pack", good, "-o", target, "--codecs", "sq8"])
    _assert_refused(result, text, "nonexistent_dir", "not found")
    assert _files(tmp_path) == ["good.npy"]


def test_pack_onto_a_directory_exits_2(tmp_path, good):
    folder = tmp_path / "adir"
    folder.mkdir()
    result, text = _invoke(["pack", good, "-o", folder, "--codecs", "sq8"])
    _assert_refused(result, text, "is a directory")
    assert _files(tmp_path) == ["adir", "good.npy"] and _files(folder) == []


def test_pack_into_an_unwritable_folder_exits_2(tmp_path, good, monkeypatch):
    """An OSError while writing (permissions, a full disk) is reported, not raised."""
    import reelpack.format as fmt

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fmt, "write_pack", refuse)
    result, text = _invoke(["pack", good, "-o", tmp_path / "x.rpak", "--codecs", "sq8"])
    _assert_refused(result, text, "cannot write", "Permission denied")
    assert _files(tmp_path) == ["good.npy"]


def test_pack_of_a_too_wide_array_is_refused_before_fitting(tmp_path):
    """20 x 100,000: simhash's d x d rotation alone asked for 74.5 GiB (MemoryError, exit 1)."""
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((20, 100_000), np.float32))
    result, text = _invoke(["pack", wide, "-o", tmp_path / "w.rpak"])
    _assert_refused(result, text, "dimension 100000", f"at most {MAX_PACK_DIM}")
    assert _files(tmp_path) == ["wide.npy"]


def test_pack_ids_at_or_above_2_63_are_named_as_given(tmp_path, good):
    ids = np.arange(200, dtype=np.uint64)
    ids[1] = 2**63
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    result, text = _invoke(["pack", good, "--ids", path, "-o", tmp_path / "x.rpak", "--codecs", "sq8"])
    _assert_refused(result, text, "below 2**63", "9223372036854775808")
    assert "-9223372036854775808" not in text
    assert _files(tmp_path) == ["good.npy", "ids.npy"]


def test_delta_make_with_bad_out_paths_exits_2(tmp_path, good):
    base = tmp_path / "base.rpak"
    result, text = _invoke(["pack", good, "-o", base, "--codecs", "sq8"])
    assert result.exit_code == 0, text
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(200, dtype=np.int64))
    before = _files(tmp_path)
    folder = tmp_path / "adir"
    folder.mkdir()
    result, text = _invoke(["delta", "make", base, good, "--ids", ids, "-o", folder])
    _assert_refused(result, text, "is a directory")
    result, text = _invoke(["delta", "make", base, good, "--ids", ids, "-o", tmp_path / "missing" / "d.rpak"])
    _assert_refused(result, text, "missing", "not found")
    result, text = _invoke(["delta", "make", base, good, "--ids", ids, "-o", tmp_path / "d.rpak",
                            "--target", tmp_path / "missing" / "t.rpak"])  # fmt: skip
    _assert_refused(result, text, "missing", "not found")
    big = np.arange(200, dtype=np.uint64)
    big[5] = 2**63 + 7
    np.save(ids, big)
    result, text = _invoke(["delta", "make", base, good, "--ids", ids, "-o", tmp_path / "d.rpak"])
    _assert_refused(result, text, "below 2**63", str(2**63 + 7))
    assert _files(tmp_path) == sorted(before + ["adir"]) and _files(folder) == []


def test_delta_apply_with_bad_out_paths_exits_2(tmp_path, good):
    base = tmp_path / "base.rpak"
    assert _invoke(["pack", good, "-o", base, "--codecs", "sq8"])[0].exit_code == 0
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(200, dtype=np.int64))
    delta = tmp_path / "d.rpak"
    assert _invoke(["delta", "make", base, good, "--ids", ids, "-o", delta])[0].exit_code == 0
    folder = tmp_path / "adir"
    folder.mkdir()
    before = _files(tmp_path)
    result, text = _invoke(["delta", "apply", base, delta, "-o", folder])
    _assert_refused(result, text, "is a directory")
    result, text = _invoke(["delta", "apply", base, delta, "-o", tmp_path / "missing" / "n.rpak"])
    _assert_refused(result, text, "missing", "not found")
    assert _files(tmp_path) == before and _files(folder) == []


def test_export_onnx_checks_k_against_the_pack(tmp_path, good):
    """-k 1000000000 on a 200-item pack was accepted; the model then failed inside onnxruntime."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pack = tmp_path / "p.rpak"
    assert _invoke(["pack", good, "-o", pack, "--codecs", "sq8"])[0].exit_code == 0
    result, text = _invoke(["export-onnx", pack, "-k", "1000000000"])
    _assert_refused(result, text, "K=1000000000", "larger than the catalog (200 items)")
    result, text = _invoke(["export-onnx", pack, "-k", "201"])
    _assert_refused(result, text, "larger than the catalog")
    folder = tmp_path / "adir"
    folder.mkdir()
    result, text = _invoke(["export-onnx", pack, "-k", "5", "-o", folder])
    _assert_refused(result, text, "is a directory")
    assert _files(tmp_path) == ["adir", "good.npy", "p.rpak"] and _files(folder) == []
    result, text = _invoke(["export-onnx", pack, "-k", "200"])  # K = n is fine
    assert result.exit_code == 0, text
