"""The package layout holds: no package reads another's private names, ``import reelpack`` stays light,
and the import-linter contract in pyproject.toml names every package."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import reelpack

SRC = Path(reelpack.__file__).parent
ROOT = SRC.parent.parent


def _package_of(module: str) -> str:
    """``reelpack.X`` for ``reelpack.X.Y...`` (the layer a module belongs to); ``reelpack`` for the root."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _private_imports(module: str, path: Path) -> list[str]:
    """``from reelpack.A import _x`` / ``import reelpack.A._m`` lines of ``module`` that cross into another package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _package_of(module)
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("reelpack"):
                continue
            if _package_of(target) == here:
                continue
            names = [a.name for a in node.names if a.name.startswith("_")]
            private_mod = any(p.startswith("_") for p in target.split(".")[1:])
            if names or private_mod:
                found.append(f"{module}:{node.lineno} from {target} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reelpack") and _package_of(alias.name) != here:
                    if any(p.startswith("_") for p in alias.name.split(".")[1:]):
                        found.append(f"{module}:{node.lineno} import {alias.name}")
    return found


def test_no_package_imports_a_private_name_of_another():
    bad = [line for module, path in _modules() for line in _private_imports(module, path)]
    assert bad == [], "private names read across packages:\n" + "\n".join(bad)


def test_checker_finds_a_private_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from reelpack.kernels.scan import _x\nfrom reelpack.codecs._common import row_blocks\n")
    assert len(_private_imports("reelpack.search.probe", probe)) == 2
    assert _private_imports("reelpack.kernels.probe", probe) == [
        "reelpack.kernels.probe:2 from reelpack.codecs._common import row_blocks"
    ]


def test_import_reelpack_loads_no_heavy_library():
    code = (
        "import sys, reelpack\n"
        "heavy = {'torch', 'fastapi', 'starlette', 'dask', 'distributed', 'matplotlib', 'uvicorn', 'httpx',"
        " 'usearch', 'onnx', 'onnxruntime', 'sklearn'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_api_is_small_and_importable():
    assert 8 <= len(reelpack.__all__) <= 16
    for name in reelpack.__all__:
        assert hasattr(reelpack, name), name
    assert not [n for n in dir(reelpack) if n.endswith("_reference")]


def test_layers_contract_names_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")
    listed = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == listed
