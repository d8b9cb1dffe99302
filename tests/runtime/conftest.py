"""Build (or find) the native runtime for the tests that compare it with the Python side.

* ``REELPACK_RUNTIME_LIB`` names a built ``libreelpack.so`` (CI builds it in runtime/build); otherwise the
  runtime is built here with ``make -C runtime`` into a temporary folder (a C compiler is needed).
* Without a compiler the tests skip, unless ``REELPACK_REQUIRE_RUNTIME=1`` (set by .ci/run), which turns the
  skip into a failure: in CI they must run.
* The aarch64 tests cross-build with ``aarch64-linux-gnu-gcc`` (static) and run under ``qemu-aarch64``; they
  skip without those tools unless ``REELPACK_REQUIRE_QEMU=1``.
* ``REELPACK_RUNTIME_ASAN`` / ``REELPACK_RUNTIME_AARCH64`` name build folders to reuse (runtime/ci.sh makes them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"


def _missing(what: str, env: str) -> None:
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} ({env}=1 requires it)")
    pytest.skip(what)


def _prebuilt(env: str) -> Path | None:
    folder = os.environ.get(env)
    return Path(folder) if folder and (Path(folder) / "rp-rank").is_file() else None


def build_runtime(out: Path, **make_vars: str) -> Path:
    """``make -C runtime BUILD=out VAR=value ...`` (quiet); returns ``out``. Fails the test with make's output."""
    cmd = ["make", "-s", "-C", str(RUNTIME), f"BUILD={out}", *(f"{k}={v}" for k, v in make_vars.items()), "all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"building the runtime failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def runtime_build(tmp_path_factory) -> Path:
    """The folder holding libreelpack.so and rp-rank for this machine."""
    lib = os.environ.get("REELPACK_RUNTIME_LIB")
    if lib and Path(lib).is_file() and (Path(lib).parent / "rp-rank").is_file():
        return Path(lib).parent
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        _missing("no C compiler or make to build the native runtime", "REELPACK_REQUIRE_RUNTIME")
    return build_runtime(tmp_path_factory.mktemp("runtime-native"))


@pytest.fixture(scope="session")
def runtime(runtime_build):
    """The loaded :class:`reelpack.search.native.NativeRuntime` (kernel choice reset to auto after each use)."""
    from reelpack.search.native import load_runtime

    return load_runtime(runtime_build / "libreelpack.so")


@pytest.fixture
def rt(runtime):
    runtime.set_kernel("auto")
    yield runtime
    runtime.set_kernel("auto")


@pytest.fixture(scope="session")
def aarch64_build(tmp_path_factory) -> Path:
    """A static aarch64 build (rp-rank and the C tests), run with qemu-aarch64."""
    if shutil.which("qemu-aarch64") is None:
        _missing("qemu-aarch64 is not installed", "REELPACK_REQUIRE_QEMU")
    if _prebuilt("REELPACK_RUNTIME_AARCH64"):
        return _prebuilt("REELPACK_RUNTIME_AARCH64")  # type: ignore[return-value]
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        _missing("aarch64-linux-gnu-gcc is not installed", "REELPACK_REQUIRE_QEMU")
    return build_runtime(tmp_path_factory.mktemp("runtime-aarch64"), CROSS="aarch64-linux-gnu-", STATIC="1")


@pytest.fixture(scope="session")
def sanitized_build(tmp_path_factory) -> Path:
    """An AddressSanitizer + UndefinedBehaviorSanitizer build of rp-rank (x86-64)."""
    if _prebuilt("REELPACK_RUNTIME_ASAN"):
        return _prebuilt("REELPACK_RUNTIME_ASAN")  # type: ignore[return-value]
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        _missing("no C compiler or make to build the native runtime", "REELPACK_REQUIRE_RUNTIME")
    return build_runtime(tmp_path_factory.mktemp("runtime-asan"), SANITIZE="1")
