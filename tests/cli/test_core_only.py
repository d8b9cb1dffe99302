"""The command line on a core-only install: every optional library is made unimportable in a subprocess.

A ``sys.meta_path`` finder raises ImportError for the extras' libraries (as if they were not installed); the pack
commands must still work, and each command that needs an extra exits 2 naming ``pip install 'reelpack[EXTRA]'``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

BLOCKED = ("torch", "fastapi", "starlette", "uvicorn", "httpx", "usearch", "dask", "distributed", "matplotlib",
           "onnx", "onnxruntime", "sklearn", "pyarrow")  # fmt: skip

# Runs each argv of argv[2] (a JSON list) through the CLI in one process with the BLOCKED libraries unimportable;
# prints a JSON list of {code, stdout, stderr} and the blocked modules that got loaded anyway.
DRIVER = r"""
import contextlib, io, json, sys

BLOCKED = set(sys.argv[1].split(","))


class BlockOptional:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: core-only install)", name=name)
        return None


sys.meta_path.insert(0, BlockOptional())
from reelpack.cli import app

results = []
for args in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args, prog_name="reelpack")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results.append({"args": args, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"results": results, "loaded": loaded}))
"""


def _run_core_only(commands: list[list[str]], cwd) -> tuple[list[dict], list[str]]:
    proc = subprocess.run([sys.executable, "-c", DRIVER, ",".join(BLOCKED), json.dumps(commands)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["results"], report["loaded"]


def test_pack_inspect_verify_delta_without_extras_and_extras_named(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", X)
    np.save(tmp_path / "ids.npy", np.arange(900, dtype=np.int64) * 2 + 5)
    np.save(tmp_path / "emb_b.npy", X[50:])
    np.save(tmp_path / "ids_b.npy", np.arange(50, 900, dtype=np.int64) * 2 + 5)
    commands = [
        ["pack", "emb.npy", "--ids", "ids.npy", "--codecs", "simhash64 sq8", "--items-per-block", "128", "--out", "a.rpak"],
        ["inspect", "a.rpak", "--json"],
        ["verify", "a.rpak"],
        ["delta", "make", "a.rpak", "emb_b.npy", "--ids", "ids_b.npy", "--out", "d.rpak", "--target", "b.rpak"],
        ["delta", "apply", "a.rpak", "d.rpak", "--out", "b2.rpak"],
        ["serve", "--store", "store"],
        ["client", "--server", "http://127.0.0.1:9", "--catalog", "c", "--cache", "c.db", "--random-user"],
        ["build-catalog", "--synthetic", "100", "--store", "store", "--catalog", "c"],
        ["build-catalog", "--synthetic", "100", "--store", "store", "--catalog", "c", "--no-index", "--scheduler", "local"],
        ["train", "--dim", "8"],
        ["demo", "--out", "res"],
        ["bench", "--out", "res"],
        ["pack", "--dim", "8", "--out", "t.rpak"],
        ["report", "missing.json"],
        ["export-onnx", "a.rpak"],
    ]
    results, loaded = _run_core_only(commands, tmp_path)
    assert loaded == []
    by_name = {" ".join(r["args"][:2]) if r["args"][0] == "delta" else r["args"][0]: r for r in results[:5]}
    for name in ("pack", "inspect", "verify", "delta make", "delta apply"):
        assert by_name[name]["code"] == 0, (name, by_name[name])
    assert "900 items" in by_name["pack"]["stdout"]
    assert json.loads(by_name["inspect"]["stdout"])["header"]["n_items"] == 900
    assert "OK" in by_name["verify"]["stdout"]
    assert (tmp_path / "b.rpak").read_bytes() == (tmp_path / "b2.rpak").read_bytes()
    expected = ["serve", "serve", "serve", "scale", "train", "train", "train", "train", "report", "onnx"]
    for r, extra in zip(results[5:], expected):
        message = r["stdout"] + r["stderr"]
        assert r["code"] == 2, (r["args"], message)
        assert f"pip install 'reelpack[{extra}]'" in message, (r["args"], message)
        assert "Traceback" not in message


def test_importing_the_cli_loads_no_heavy_library():
    code = f"import sys, reelpack.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {set(BLOCKED)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
