"""Robustness under loss and engineering checks of the bench rows (results schema version 2 and later).

* :class:`_LossSetup`: one seeded user sample and one lost-block mask per loss rate, shared by every method;
* :func:`_pack_measure`: a reelpack codec through a real pack (write, read back, corrupt lost blocks, CRC);
* :func:`_faiss_measure`: a faiss index (serialise round trip; lost item blocks removed from the index).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.bench.baselines import faiss_rank_users
from reelpack.bench.config import LOSS_ITEMS_PER_BLOCK, REFERENCE_LOSS_RATE, BenchConfig
from reelpack.data.interactions import Split
from reelpack.metrics.quality import ranking_metrics

__all__: list[str] = []  # the harness's internals; run_bench is the interface


@dataclass
class _LossSetup:
    """The shared loss scenario of a run: one seeded user sample, one lost-block mask per rate.

    Every method sees the same lost blocks (blocks of ``LOSS_ITEMS_PER_BLOCK`` consecutive items,
    in item-index order) at each rate, and is ranked for the same users.
    """

    split: Split
    users: np.ndarray  # int64 [m] sampled user indexes (sorted)
    positions: np.ndarray  # int64 [m] their rows in the run's evaluated users
    rates: tuple[float, ...]
    lost_blocks: list[np.ndarray]  # bool [n_blocks] per rate
    k: int
    ks: tuple[int, ...]
    batch_size: int
    seed: int
    ref_recall: float = float("nan")
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, config: BenchConfig, split: Split, users: np.ndarray, n_items: int) -> _LossSetup | None:
        if config.robust_users == 0 or not config.loss_rates:
            return None
        from reelpack.bench.robustness import simulate_loss

        m = min(config.robust_users, len(users))
        pos = np.sort(np.random.default_rng([config.seed, 1]).choice(len(users), m, replace=False))
        rates = tuple(sorted({float(r) for r in config.loss_rates} | {REFERENCE_LOSS_RATE}))
        n_blocks = -(-n_items // LOSS_ITEMS_PER_BLOCK)
        lost = [
            simulate_loss(n_blocks, r, "iid", seed=np.random.default_rng([config.seed, 7, int(round(r * 1e6))])) for r in rates
        ]
        return cls(split, users[pos], pos, rates, lost, max(config.ks), tuple(config.ks), min(config.batch_size, 256), config.seed)

    def available_items(self, i: int) -> np.ndarray:
        """bool [n_items]: items outside the blocks lost at rate ``rates[i]``."""
        return ~np.repeat(self.lost_blocks[i], LOSS_ITEMS_PER_BLOCK)[: self.split.n_items]

    def set_reference(self, ref_ranked: np.ndarray) -> None:
        metrics = ranking_metrics(ref_ranked[self.positions], self.users, self.split.test_indptr, self.split.test_items, self.ks)
        self.ref_recall = float(metrics[f"recall@{self.k}"])

    def _record(self, row: dict[str, Any], ranked: list[np.ndarray], how: str) -> None:
        curve: list[float | None] = []
        for r in ranked:
            r = np.where(r < 0, self.split.n_items, r)  # "no result" (-1) becomes an id that is no test item
            rec = ranking_metrics(r, self.users, self.split.test_indptr, self.split.test_items, (self.k,))[f"recall@{self.k}"]
            curve.append(float(rec / self.ref_recall) if self.ref_recall > 0 else None)
        self.curves[row["method"]] = curve
        self.how[row["method"]] = how
        row[f"robust_rel_recall@{self.k}"] = curve[self.rates.index(REFERENCE_LOSS_RATE)]
        row[f"robust_base_rel_recall@{self.k}"] = curve[self.rates.index(0.0)] if 0.0 in self.rates else None

    def rank_masked(self, score_fn: Callable[[np.ndarray], np.ndarray], available: list[np.ndarray]) -> list[np.ndarray]:
        """Rank the sampled users once per availability mask; scores are computed once per batch.

        ``score_fn`` maps user indexes [b] to float32 [b, n_items]; unavailable items score -inf.
        One top-``K'`` pass (``K' = 2K + 64``) of the unmasked scores serves every mask: the first ``K``
        available items of that list, in order, are the masked top-``K`` whenever at least ``K`` of them
        are available (same order, same tie rule); rows with fewer fall back to a masked top-``K``.
        """
        from reelpack.kernels.topk import mask_rows, topk

        n = self.split.n_items
        k_wide = min(n, 2 * self.k + 64)
        out = [np.empty((len(self.users), self.k), np.int64) for _ in available]
        for start in range(0, len(self.users), self.batch_size):
            batch = self.users[start : start + self.batch_size]
            scores = np.array(score_fn(batch), dtype=np.float32, order="C", copy=True)
            mask_rows(scores, self.split.train_indptr, self.split.train_items, batch)
            wide, wide_vals = topk(scores, k_wide)
            finite = np.isfinite(wide_vals)  # -inf (train items) never counts as a ranked item here
            for o, avail in zip(out, available):
                ok = avail[wide] & finite
                pick = np.argsort(~ok, axis=1, kind="stable")[:, : self.k]
                res = np.take_along_axis(wide, pick, axis=1)
                short = np.flatnonzero(ok.sum(axis=1) < self.k)
                if short.size:
                    res[short] = topk(np.where(avail[None, :], scores[short], np.float32(-np.inf)), self.k)[0]
                o[start : start + len(batch)] = res
        return out

    def measure_dense(self, row: dict[str, Any], score_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """The float32 reference under the same loss: lost item blocks score -inf."""
        avail = [self.available_items(i) for i in range(len(self.rates))]
        self._record(row, self.rank_masked(score_fn, avail), "item-blocks")

    def summary(self) -> dict[str, Any]:
        out = {
            "metric": f"rel_recall@{self.k}",
            "model": "iid",
            "loss_rates": list(self.rates),
            "reference_rate": REFERENCE_LOSS_RATE,
            "items_per_block": LOSS_ITEMS_PER_BLOCK,
            "n_users": int(len(self.users)),
            "seeds": [self.seed],
            "lost_blocks": [int(b.sum()) for b in self.lost_blocks],
            "n_blocks": int(self.lost_blocks[0].size) if self.lost_blocks else 0,
            "curves": self.curves,
            "how": self.how,
        }
        if self.errors:
            out["errors"] = self.errors
        return out


def _bad_query_rejected(score: Callable[[np.ndarray], object], dim: int, typed: type[BaseException]) -> bool:
    """True when a wrong-dimension query and a non-finite query both raise an instance of ``typed``."""
    for q in (np.zeros((2, dim + 1), np.float32), np.full((2, dim), np.nan, np.float32)):
        try:
            score(q)
        except typed:
            continue
        except Exception:  # noqa: BLE001 - any other exception (or none) fails the check
            return False
        return False
    return True


def _corrupt(raw: np.ndarray, codes_offset: int, n_items: int, bpv: int, lost_blocks: np.ndarray) -> np.ndarray:
    """A copy of the pack bytes ``raw`` with every byte of the lost blocks of a plain layer XOR-ed with 0x5A."""
    buf = raw.copy()
    region = buf[codes_offset : codes_offset + n_items * bpv].reshape(n_items, bpv)
    rows = np.repeat(lost_blocks, LOSS_ITEMS_PER_BLOCK)[:n_items]
    region[rows] ^= np.uint8(0x5A)
    return buf


def _pack_measure(
    row: dict[str, Any],
    codec: Any,
    codes: np.ndarray,
    queries: np.ndarray,
    check_items: np.ndarray,
    lossy: _LossSetup | None,
    config: BenchConfig,
) -> None:
    """Engineering checks and robustness of a reelpack codec through a real pack (one layer, 64 items/block).

    The codes are written with :func:`reelpack.format.write_pack`, read back, and (per loss rate) the bytes
    of the lost blocks are corrupted; the reader's CRC32C check finds them and the rest is read. Scores come
    from the codec and codes read back from the pack; items of unreadable blocks score -inf.
    """
    if lossy is None and not config.engineering_checks:
        return
    import tempfile

    from reelpack.errors import ReelpackError
    from reelpack.format import PackReader, write_pack

    t0 = time.perf_counter()
    n = codes.shape[0]
    checks: dict[str, bool | None] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="reelpack-bench-") as tmp:
            path = write_pack(Path(tmp) / "codes.rpk", np.arange(n, dtype=np.int64), [(codec, codes)],
                              items_per_block=LOSS_ITEMS_PER_BLOCK)  # fmt: skip
            raw = np.fromfile(path, dtype=np.uint8)
        reader = PackReader.from_buffer(raw)
        read_codec = reader.codec(0)
        read_codes = np.array(reader.layer_codes(0))
        checks["pack_round_trip"] = bool(
            np.array_equal(read_codes, codes)
            and read_codec.to_bytes() == codec.to_bytes()
            and np.array_equal(reader.item_ids, np.arange(n))
        )
        info = reader.layers[0]

        def detect(lost: np.ndarray) -> tuple[bool, np.ndarray]:
            damaged = PackReader.from_buffer(_corrupt(raw, info.codes_offset, n, info.bytes_per_vector, lost))
            data = damaged.read_layer(0)
            avail = np.zeros(n, bool)
            avail[data.item_ids] = True
            ok = sorted(data.bad_blocks) == np.flatnonzero(lost).tolist() and np.array_equal(data.codes, codes[avail])
            return bool(ok), avail

        one = np.zeros(info.n_blocks, bool)
        one[info.n_blocks // 2] = True
        detected, _ = detect(one)
        checks["encode_deterministic"] = bool(np.array_equal(codec.encode(check_items), codec.encode(check_items)))
        checks["bad_query_typed_error"] = _bad_query_rejected(
            lambda q: read_codec.score(q, read_codes[:8]), codec.dim, ReelpackError
        )
        if lossy is not None:
            avail_list = []
            for lost in lossy.lost_blocks:
                ok, avail = detect(lost)
                detected &= ok
                avail_list.append(avail)

            def score(batch: np.ndarray) -> np.ndarray:
                return read_codec.score(queries[batch], read_codes)

            lossy._record(row, lossy.rank_masked(score, avail_list), "pack+crc")
        checks["corruption_detected"] = bool(detected)
    except ReelpackError as exc:  # a codec that cannot go through a pack: the checks fail, the run goes on
        checks.setdefault("pack_round_trip", False)
        if lossy is not None:
            lossy.errors[row["method"]] = f"{type(exc).__name__}: {exc}"
    row["engineering_checks"] = checks if config.engineering_checks else None
    row["robust_s"] = time.perf_counter() - t0


def _faiss_rank_masked(ft: Any, queries: np.ndarray, lossy: _LossSetup) -> list[np.ndarray]:
    """Top-K of the sampled users per loss rate, the lost item blocks dropped from the faiss index.

    One search of ``2K + 64 + max train items`` neighbours on the whole index serves every rate: its
    results, minus train items and lost items, in faiss's order, are what a search of the index with the
    lost items removed returns whenever at least K remain. Rows with fewer are searched again on a copy of
    the index with the lost items removed (``remove_ids``).
    """
    import faiss

    from reelpack.bench.baselines import FaissTwin
    from reelpack.metrics.quality import hit_matrix

    split, users, k = lossy.split, lossy.users, lossy.k
    avails = [lossy.available_items(i) for i in range(len(lossy.rates))]
    out = [np.empty((len(users), k), np.int64) for _ in avails]
    reduced: dict[int, FaissTwin] = {}
    n_train = np.diff(split.train_indptr)[users]
    for start in range(0, len(users), lossy.batch_size):
        batch = users[start : start + lossy.batch_size]
        k_search = min(split.n_items, 2 * k + 64 + int(n_train[start : start + len(batch)].max()))
        _, ids = ft.index.search(np.ascontiguousarray(queries[batch], dtype=np.float32), k_search)
        safe = np.maximum(ids, 0)
        valid = (ids >= 0) & ~hit_matrix(safe, batch, split.train_indptr, split.train_items)
        for i, avail in enumerate(avails):
            ok = valid & avail[safe]
            pick = np.argsort(~ok, axis=1, kind="stable")[:, :k]
            res = np.take_along_axis(ids, pick, axis=1)
            short = np.flatnonzero(ok.sum(axis=1) < k)
            if short.size:
                if i not in reduced:
                    keep = np.flatnonzero(avail)
                    part = faiss.clone_index(ft.index)
                    part.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(~avail).astype(np.int64)))
                    reduced[i] = FaissTwin(ft.factory, _RenumberedIndex(part, keep), 0.0, 0.0)
                res[short] = faiss_rank_users(reduced[i], queries, split, batch[short], k, lossy.batch_size)[0]
            out[i][start : start + len(batch)] = res
    return out


class _RenumberedIndex:
    """A faiss index holding a subset of the catalog whose ``search`` returns catalog item indexes.

    ``keep`` is int64 [ntotal]: the catalog index of each row of ``index`` (faiss ``remove_ids``
    compacts the remaining rows in order). Missing results (-1) stay -1.
    """

    def __init__(self, index: Any, keep: np.ndarray) -> None:
        self.index, self.keep = index, keep

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(q, min(k, self.index.ntotal))
        mapped = np.where(ids >= 0, self.keep[np.maximum(ids, 0)], -1)
        if mapped.shape[1] < k:  # fewer items left than asked for: pad with "no result"
            pad = k - mapped.shape[1]
            mapped = np.concatenate([mapped, np.full((len(q), pad), -1, np.int64)], axis=1)
            dist = np.concatenate([dist, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
        return dist, mapped


def _faiss_measure(
    row: dict[str, Any],
    ft: Any,
    queries: np.ndarray,
    check_items: np.ndarray,
    lossy: _LossSetup | None,
    config: BenchConfig,
) -> None:
    """Engineering checks and robustness of a faiss index (no container: lost item blocks are removed).

    Checks that apply to faiss: ``pack_round_trip`` (``serialize_index``/``deserialize_index`` gives the
    same bytes and codes), ``encode_deterministic`` (``sa_encode`` twice), ``bad_query_typed_error``
    (a ValueError subclass for a wrong-dimension and a NaN query). ``corruption_detected`` is ``None``:
    a faiss index file carries no checksums, so the check does not apply (docs/SCORING.md).
    """
    if lossy is None and not config.engineering_checks:
        return
    import faiss

    t0 = time.perf_counter()
    index = ft.index
    blob = faiss.serialize_index(index)
    again = faiss.deserialize_index(blob)
    checks: dict[str, bool | None] = {
        "pack_round_trip": bool(
            np.array_equal(faiss.serialize_index(again), blob)
            and np.array_equal(again.sa_encode(check_items), index.sa_encode(check_items))
        ),
        "corruption_detected": None,
        "encode_deterministic": bool(np.array_equal(index.sa_encode(check_items), index.sa_encode(check_items))),
        "bad_query_typed_error": _bad_query_rejected(lambda q: index.search(q, 5), index.d, ValueError),
    }
    if lossy is not None:
        try:
            lossy._record(row, _faiss_rank_masked(ft, queries, lossy), "item-blocks")
        except RuntimeError as exc:  # an index type without remove_ids
            lossy.errors[row["method"]] = f"faiss: {exc}".splitlines()[0]
    row["engineering_checks"] = checks if config.engineering_checks else None
    row["robust_s"] = time.perf_counter() - t0
