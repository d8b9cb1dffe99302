"""(Re)write the golden test vectors of the pack format in tests/format/vectors/.

Run from the repository root: ``python tests/format/make_vectors.py`` (``--check`` only compares).

Each vector is a small pack, committed as text (packs are git-ignored as binaries):

* ``NAME.hex``: the pack's bytes as lowercase hex, 32 bytes (64 digits) per line;
* ``NAME.json``: what any conforming reader must decode from it: ``sha256`` and ``length`` of the bytes,
  ``n_items``, the sorted ``item_ids``, ``metadata``, and per layer the ``codec`` spec, ``dim``,
  ``bytes_per_vector``, ``items_per_block``, ``entropy_coded`` (with ``entropy_layout``) and ``codes``
  (one hex string per item, in ``item_ids`` order); ``parity`` records where the pack has a PARITY section;
  for the delta, the removed ids, the ``base`` vector it applies to and the SHA-256 of the result.

The vectors (docs/FORMAT.md, "Golden test vectors"):

* ``sq8_one_layer``: 6 items, one sq8 layer, 4 items per block;
* ``pq_two_layers_parity``: 9 items, layers pq2x4 and pq4x4, 2 items per block, PARITY (k=2, m=1) on both;
* ``sq4_entropy``: 24 items, one sq4 layer stored ENTROPY_CODED (nibbles), 10 items per block;
* ``delta_sq8``: a delta from ``sq8_one_layer`` (one id removed, one added, one changed).

``tests/format/test_vectors.py`` decodes every vector with :class:`reelpack.format.PackReader` and checks the
JSON (it regenerates nothing), and ``tests/format/test_spec_reference.py`` decodes them again with an
independent pure-Python reader written from docs/FORMAT.md alone. The writer is deterministic, so rerunning
this script rewrites the same files; only rewrite them for a deliberate format change.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

VECTORS = Path(__file__).parent / "vectors"
NAMES = ("sq8_one_layer", "pq_two_layers_parity", "sq4_entropy", "delta_sq8")


def to_hex(raw: bytes) -> str:
    text = raw.hex()
    return "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\n"


def from_hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def load(name: str) -> tuple[bytes, dict[str, Any]]:
    """A committed vector: (pack bytes, expected values)."""
    raw = from_hex((VECTORS / f"{name}.hex").read_text())
    return raw, json.loads((VECTORS / f"{name}.json").read_text())


def _catalog(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, d)) * 8) / 8  # short binary fractions: exact in float32
    return (np.arange(n, dtype=np.int64) * 5 + 2), X.astype(np.float32)


def _expected(raw: bytes) -> dict[str, Any]:
    """The expected values, read back with PackReader (the writer's output is checked by the tests)."""
    from reelpack.format import PackReader, read_parity

    pack = PackReader.from_buffer(raw)
    assert pack.verify().ok
    layers = []
    for i, info in enumerate(pack.layers):
        codec = pack.codec(i)
        model = pack.entropy_model(i)
        layers.append({
            "codec": codec.spec, "dim": codec.dim, "bytes_per_vector": info.bytes_per_vector,
            "items_per_block": info.items_per_block, "n_blocks": info.n_blocks, "entropy_coded": info.entropy_coded,
            "entropy_layout": None if model is None else model.layout,
            "codes": [bytes(row).hex() for row in np.asarray(pack.layer_codes(i))],
        })  # fmt: skip
    out: dict[str, Any] = {
        "sha256": hashlib.sha256(raw).hexdigest(), "length": len(raw), "n_items": pack.n_items,
        "item_ids": [int(v) for v in pack.item_ids], "metadata": pack.metadata, "layers": layers,
    }  # fmt: skip
    parity = read_parity(pack)
    if parity:
        out["parity"] = [{"layer": p.layer, "k": p.k, "m": p.m, "n_groups": p.n_groups, "block_length": p.block_length}
                         for p in parity.values()]  # fmt: skip
    return out


def build(tmp: Path) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Write every vector into ``tmp`` and return {name: (bytes, expected)}."""
    from reelpack.codecs import make_codec
    from reelpack.format import apply_delta, make_delta, write_pack

    out: dict[str, tuple[bytes, dict[str, Any]]] = {}

    ids, X = _catalog(6, 4, seed=1)
    sq8 = make_codec("sq8").fit(X, seed=0)
    path = write_pack(tmp / "sq8.rpak", ids, [(sq8, sq8.encode(X))], vectors=X, items_per_block=4,
                      metadata={"catalog_version": "v1"})  # fmt: skip
    out["sq8_one_layer"] = (path.read_bytes(), _expected(path.read_bytes()))

    ids2, X2 = _catalog(9, 4, seed=2)
    layers = [(c, c.encode(X2)) for c in (make_codec(s).fit(X2, seed=0) for s in ("pq2x4", "pq4x4"))]
    path = write_pack(tmp / "pq.rpak", ids2, layers, vectors=X2, items_per_block=2, parity=(2, 1))
    out["pq_two_layers_parity"] = (path.read_bytes(), _expected(path.read_bytes()))

    ids3, X3 = _catalog(24, 6, seed=3)
    sq4 = make_codec("sq4").fit(X3, seed=0)
    path = write_pack(tmp / "sq4e.rpak", ids3, [(sq4, sq4.encode(X3))], vectors=X3, items_per_block=10,
                      entropy=["nibbles"])  # fmt: skip
    out["sq4_entropy"] = (path.read_bytes(), _expected(path.read_bytes()))

    ids_b = np.concatenate([ids[1:], [1000]])
    X_b = np.concatenate([X[1:], X[:1] * 0.5])
    X_b[1] += 0.5
    make_delta(tmp / "sq8.rpak", ids_b, X_b, tmp / "delta.rpak", metadata={"catalog_version": "v2"})
    applied = apply_delta(tmp / "sq8.rpak", tmp / "delta.rpak", tmp / "applied.rpak")
    raw = (tmp / "delta.rpak").read_bytes()
    expected = _expected(raw)
    target = applied.read_bytes()
    base_ids = set(int(v) for v in ids)
    expected["delta"] = {"base": "sq8_one_layer", "removed_ids": sorted(base_ids - set(int(v) for v in ids_b)),
                         "target_sha256": hashlib.sha256(target).hexdigest(), "target_length": len(target),
                         "target_item_ids": sorted(int(v) for v in ids_b)}  # fmt: skip
    out["delta_sq8"] = (raw, expected)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp))
    stale = []
    VECTORS.mkdir(exist_ok=True)
    for name, (raw, expected) in built.items():
        files = {VECTORS / f"{name}.hex": to_hex(raw), VECTORS / f"{name}.json": json.dumps(expected, indent=1) + "\n"}
        for path, text in files.items():
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
                if not check:
                    path.write_text(text)
    verb = "differ" if check else "rewritten"
    print(f"{len(stale)} files {verb}: {', '.join(stale) or '-'}", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
