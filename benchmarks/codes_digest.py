"""Digests of what codecs produce on a fixed set of vectors: SHA-256 of the codes, of the fitted codec's bytes and
of ``codec.score`` on the first 50 vectors against the first 2000 codes, one line per codec spec.

Two checkouts that print the same lines encode, serialise and score identically (the re-layout check in
BENCHMARKS.md compares the code before and after a refactor this way):

    python benchmarks/codes_digest.py runs/items-d64.npy > runs/digest-after.txt
    (cd ../old-checkout && PYTHONPATH=src python benchmarks/codes_digest.py ../reelpack/runs/items-d64.npy) > runs/digest-before.txt
    diff runs/digest-before.txt runs/digest-after.txt

The vectors: any float32 ``.npy`` [n, d] (for example a two-tower model's item embeddings, saved by
``reelpack train`` in the embedding cache).
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from reelpack.codecs import make_codec

DEFAULT_SPECS = ("fp16 sq8 sq4 pq16 pq8 opq16,pq16 simhash128 simhash128-hamming countsketch32 pq32x4 rabitq rq8+8 "
                 "apq16-t0.3 wsq16")  # fmt: skip


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vectors", help="float32 .npy [n, d]")
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="codec specs separated by spaces")
    parser.add_argument("--seed", type=int, default=0, help="fit seed")
    args = parser.parse_args()
    X = np.load(args.vectors, allow_pickle=False).astype(np.float32)
    for spec in args.specs.split():
        codec = make_codec(spec).fit(X, seed=args.seed)
        codes = codec.encode(X)
        scores = codec.score(X[:50], codes[:2000])
        print(spec, _digest(codes.tobytes()), _digest(codec.to_bytes()), _digest(scores.tobytes()), flush=True)


if __name__ == "__main__":
    main()
