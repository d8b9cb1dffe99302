#!/usr/bin/env bash
# Reproduce the amazon-book tables of BENCHMARKS.md: 64-d and 128-d, every default codec and its
# faiss twin, all test users, one thread for every ranking. Results go to results/ (not committed).
# Usage: benchmarks/amazon_book.sh [PATH_TO_INTERACTIONS]
set -euo pipefail
DATA="${1:-${REELPACK_DATA:-../shared/data/amazon-book/interactions.txt}}"
for DIM in 64 128; do
  reelpack bench --data "$DATA" --dim "$DIM" --out results/amazon-book
done
