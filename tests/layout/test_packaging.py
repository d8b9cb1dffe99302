"""Packaging holds: a light core with compatible ranges, one extra per heavy part, and constraints.txt pinning
every dependency to a version inside its range (the versions CI tests with)."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from reelpack.util.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
CORE = {"numpy", "numba", "faiss-cpu", "crc32c", "zfec", "constriction", "typer", "rich", "threadpoolctl"}
HEAVY = {"torch", "fastapi", "uvicorn", "httpx", "usearch", "dask", "distributed", "matplotlib", "onnx", "onnxruntime",
         "scikit-learn", "pyarrow"}  # fmt: skip
DIST_OF_MODULE = {"sklearn": "scikit-learn"}


def _requirements(items: list[str]) -> list[Requirement]:
    return [Requirement(r) for r in items]


def _pins() -> dict[str, list[Requirement]]:
    pins: dict[str, list[Requirement]] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins.setdefault(req.name.lower(), []).append(req)
    return pins


def test_core_is_light():
    names = {r.name.lower() for r in _requirements(PROJECT["dependencies"])}
    assert names == CORE
    assert not names & HEAVY


def test_every_range_is_compatible_not_exact():
    extras = PROJECT["optional-dependencies"]
    reqs = _requirements(PROJECT["dependencies"]) + [r for k, v in extras.items() if k != "all" for r in _requirements(v)]
    for req in reqs:
        ops = {s.operator for s in req.specifier}
        assert ops == {">=", "<"}, f"{req}: give a range '>=x.y,<next major', exact pins go to constraints.txt"


def test_extras_bring_the_modules_that_require_names():
    extras = PROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert extra in extras, extra
        names = {r.name.lower() for r in _requirements(extras[extra])}
        for module in modules:
            assert DIST_OF_MODULE.get(module, module) in names, (extra, module)
    assert {"pytest", "pytest-xdist", "hypothesis", "pytrec-eval-terrier", "import-linter"} <= {
        r.name.lower() for r in _requirements(extras["test"])
    }
    (everything,) = extras["all"]
    listed = set(re.fullmatch(r"reelpack\[(.*)\]", everything).group(1).split(","))
    assert listed == set(extras) - {"all", "test"}


def test_constraints_pin_every_dependency_inside_its_range():
    pins = _pins()
    extras = PROJECT["optional-dependencies"]
    reqs = _requirements(PROJECT["dependencies"]) + [r for k, v in extras.items() if k != "all" for r in _requirements(v)]
    for req in reqs:
        candidates = pins.get(req.name.lower())
        assert candidates, f"constraints.txt does not pin {req.name}"
        for pin in candidates:
            if req.marker is not None and pin.marker is not None and str(req.marker) != str(pin.marker):
                continue
            (spec,) = pin.specifier
            assert spec.operator == "==", pin
            assert req.specifier.contains(Version(spec.version), prereleases=True), (str(req), str(pin))


def test_ci_installs_with_the_constraints_and_checks_the_core_install():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[all,test]" -c constraints.txt && python -m pytest -q' in run.splitlines()
    assert "lint-imports" in run.splitlines()
    assert ".ci/check_core_install.sh" in run
    script = (ROOT / ".ci" / "check_core_install.sh").read_text(encoding="utf-8")
    assert "-c" in script and "constraints.txt" in script and "reelpack[serve]" in script
