"""Regenerate tests/format/data/golden_v1_0.rpak.

Run from the repository root: ``PYTHONPATH=src python tests/format/make_golden.py``.

The golden pack is committed; test_golden.py checks that it always loads with the
expected contents and that the writer still produces it byte for byte. Only
regenerate it for a deliberate format change (and bump the version).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "data" / "golden_v1_0.rpak"
GOLDEN_IDS = np.array([3, 4, 5, 6, 100, 7], dtype=np.int64)  # unsorted on purpose: the pack sorts them
GOLDEN_VECTORS = np.array(
    [[0.0, 1.0, -1.0, 0.5], [1.0, 0.0, 0.25, -0.5], [-2.0, 0.5, 0.0, 1.0],
     [0.125, -0.25, 2.0, 0.0], [1.5, 1.5, -1.5, -1.5], [0.0, 0.0, 0.0, 0.0]],
    dtype=np.float32,
)  # fmt: skip
GOLDEN_METADATA = {"catalog_version": "golden-1", "created_at": "2026-01-01T00:00:00Z"}


def build(path: Path) -> None:
    """Write the golden pack: an fp16 layer then an sq8 layer, 4 items per block."""
    from reelpack.codecs import make_codec
    from reelpack.format import write_pack

    layers = []
    for spec in ("fp16", "sq8"):
        codec = make_codec(spec).fit(GOLDEN_VECTORS, seed=0)
        layers.append((codec, codec.encode(GOLDEN_VECTORS)))
    write_pack(path, GOLDEN_IDS, layers, vectors=GOLDEN_VECTORS, metadata=GOLDEN_METADATA, items_per_block=4)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    build(GOLDEN)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)", file=sys.stderr)
