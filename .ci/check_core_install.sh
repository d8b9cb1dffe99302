#!/usr/bin/env bash
# The light core install: `pip install . -c constraints.txt` (no extras) into a fresh venv, then check that
#   - no heavy library was installed or is loaded by `import reelpack`,
#   - `reelpack pack`, `inspect`, `verify` and `delta make` / `delta apply` work on a small generated .npy,
#   - `reelpack serve` exits 2 naming the extra to install (pip install 'reelpack[serve]').
# Downloads the core's wheels from PyPI. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Build from a copy of the sources, so the checkout gets no build/ or egg-info folders.
mkdir "$WORK/src"
tar --exclude='__pycache__' --exclude='*.egg-info' -cf - pyproject.toml README.md constraints.txt src | tar -xf - -C "$WORK/src"

"${PYTHON:-python3}" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
RP="$WORK/venv/bin/reelpack"
echo "core install: pip install . -c constraints.txt (fresh venv)"
"$PY" -m pip install -q "$WORK/src" -c "$WORK/src/constraints.txt"

cd "$WORK"  # away from the checkout: the venv's reelpack is the one imported
"$PY" - <<'PY'
import importlib.util
import sys

import reelpack

heavy = {"torch", "fastapi", "starlette", "uvicorn", "httpx", "usearch", "dask", "distributed", "matplotlib",
         "onnx", "onnxruntime", "sklearn", "pyarrow"}
assert not {"torch", "fastapi", "dask", "matplotlib"} & set(sys.modules), sorted(heavy & set(sys.modules))
installed = sorted(m for m in heavy if importlib.util.find_spec(m) is not None)
assert not installed, f"the core install brought optional libraries: {installed}"
print("core install: import reelpack loads no heavy library; none is installed")
PY

"$PY" - <<'PY'
import numpy as np

rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 32)).astype(np.float32)
np.save("emb.npy", X)
np.save("ids.npy", np.arange(2000, dtype=np.int64) * 3 + 11)
np.save("emb_b.npy", np.concatenate([X[100:], 0.5 * X[:50]]))
np.save("ids_b.npy", np.concatenate([np.arange(100, 2000) * 3 + 11, 10_000 + np.arange(50)]).astype(np.int64))
PY
"$RP" pack emb.npy --ids ids.npy --codecs "simhash64 sq8" --items-per-block 256 --out items.rpak
"$RP" inspect items.rpak --json > inspect.json
"$PY" -c "import json; info = json.load(open('inspect.json')); assert info['header']['n_items'] == 2000, info['header']"
"$RP" inspect items.rpak > /dev/null
"$RP" verify items.rpak
"$RP" delta make items.rpak emb_b.npy --ids ids_b.npy --out d.rpak --target b.rpak > /dev/null
"$RP" delta apply items.rpak d.rpak --out b2.rpak > /dev/null
cmp b.rpak b2.rpak
echo "core install: pack, inspect, verify, delta make/apply OK"

set +e
"$RP" serve --store store > serve.out 2>&1
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -qF "pip install 'reelpack[serve]'" serve.out; then
    echo "FAIL: 'reelpack serve' on the core install should exit 2 naming [serve]; got exit $rc:" >&2
    cat serve.out >&2
    exit 1
fi
echo "core install: 'reelpack serve' exits 2: $(tr -s ' \n' ' ' < serve.out)"
echo "core install: OK"
