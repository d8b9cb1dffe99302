"""Packet loss: a block-loss simulator and the degradation policy for damaged packs.

* :func:`simulate_loss` draws which blocks (packets) are lost: i.i.d. or in bursts
  (a Gilbert-Elliott two-state Markov chain), vectorised.
* :func:`degrade` / :func:`read_degraded` apply the degradation policy: an item is
  represented by its finest layer that is still readable (refinement where intact,
  else the coarser layer, decoded to vectors so that every score ``q · x_hat`` is on
  the same scale); an item with no readable layer is *reported*, never silently dropped.
* :func:`degraded_scores` scores queries against the degraded catalog; unreadable items
  get ``-inf`` so that they rank last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reelpack.util.validate import as_float_matrix
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError

__all__ = ["simulate_loss", "DegradedItems", "degrade", "read_degraded", "degraded_scores", "mean_run_length"]


def _check_rate(rate: object, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) or not 0.0 <= float(rate) <= 1.0:
        raise InvalidInputError(f"{name} must be a number in [0, 1], got {rate!r}")
    return float(rate)


def simulate_loss(
    n_blocks: int,
    rate: float,
    model: str = "iid",
    seed: int | np.random.Generator | None = None,
    burst_length: float = 4.0,
    loss_in_bad: float = 1.0,
    loss_in_good: float = 0.0,
) -> np.ndarray:
    """Which of ``n_blocks`` packets are lost: bool [n_blocks].

    Args:
        n_blocks: number of packets (data and parity blocks alike, in transmission order).
        rate: mean loss probability in [0, 1].
        model: ``"iid"`` (each block lost independently with probability ``rate``) or
            ``"gilbert-elliott"`` (a Good/Bad Markov chain: a block is lost with probability
            ``loss_in_good`` in Good and ``loss_in_bad`` in Bad; Bad runs last ``burst_length``
            blocks on average; the Bad share is set so that the mean loss is ``rate``).
        seed: an int, a Generator or None.
        burst_length: mean length (>= 1) of a Bad run (with the defaults, the mean run of lost blocks).
        loss_in_bad, loss_in_good: loss probabilities in each state; ``loss_in_good <= rate <= loss_in_bad``.
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 0:
        raise InvalidInputError(f"n_blocks must be a non-negative integer, got {n_blocks!r}")
    rate = _check_rate(rate)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = int(n_blocks)
    if model == "iid":
        return rng.random(n) < rate
    if model not in ("gilbert-elliott", "ge"):
        raise InvalidInputError(f"model must be 'iid' or 'gilbert-elliott', got {model!r}")
    lb, lg = _check_rate(loss_in_bad, "loss_in_bad"), _check_rate(loss_in_good, "loss_in_good")
    if isinstance(burst_length, bool) or not isinstance(burst_length, (int, float, np.floating, np.integer)) or not burst_length >= 1:
        raise InvalidInputError(f"burst_length must be a number >= 1, got {burst_length!r}")
    if not lg <= rate <= lb or lb == lg:
        raise InvalidInputError(f"need loss_in_good <= rate <= loss_in_bad and loss_in_good < loss_in_bad, "
                                f"got {lg}, {rate}, {lb}")  # fmt: skip
    if n == 0:
        return np.zeros(0, bool)
    pi_bad = (rate - lg) / (lb - lg)  # stationary share of the Bad state
    if pi_bad <= 0.0:
        return rng.random(n) < lg
    if pi_bad >= 1.0:
        return rng.random(n) < lb
    p_bg = 1.0 / float(burst_length)  # Bad -> Good
    p_gb = pi_bad * p_bg / (1.0 - pi_bad)  # Good -> Bad, so that p_gb / (p_gb + p_bg) = pi_bad
    if p_gb > 1.0:  # bursts this short cannot reach this Bad share: shorten the Good runs to 1
        p_gb = 1.0
        p_bg = (1.0 - pi_bad) / pi_bad
    # alternate geometric run lengths (vectorised); draw enough runs to cover n blocks
    state = np.empty(n, bool)
    start_bad = rng.random() < pi_bad
    mean_cycle = 1.0 / p_gb + 1.0 / p_bg
    n_cycles = int(n / mean_cycle * 1.5) + 16
    while True:
        good = rng.geometric(p_gb, n_cycles)
        bad = rng.geometric(p_bg, n_cycles)
        runs = np.empty(2 * n_cycles, np.int64)
        flags = np.empty(2 * n_cycles, bool)
        if start_bad:
            runs[0::2], runs[1::2], flags[0::2], flags[1::2] = bad, good, True, False
        else:
            runs[0::2], runs[1::2], flags[0::2], flags[1::2] = good, bad, False, True
        if runs.sum() >= n:
            break
        n_cycles *= 2
    state = np.repeat(flags, runs)[:n]
    p = np.where(state, lb, lg)
    return rng.random(n) < p


def mean_run_length(mask: np.ndarray) -> float:
    """Mean length of the runs of ``True`` in a bool vector (0.0 when there is none)."""
    m = np.asarray(mask, bool).astype(np.int8)
    if m.ndim != 1:
        raise DimensionMismatchError(f"mask must be 1-D, got shape {m.shape}")
    starts = np.count_nonzero(np.diff(np.concatenate([[0], m])) == 1)
    return float(m.sum() / starts) if starts else 0.0


@dataclass
class DegradedItems:
    """A catalog after loss, under the degradation policy.

    Attributes:
        vectors: float32 [n, d] reconstruction of each item from its finest readable layer (zeros when none).
        level: int16 [n]: the layer each row comes from (-1: nothing readable).
        item_ids: int64 [n] ids (row order), or ``None`` when built from arrays without ids.
        missing_rows: int64 rows with nothing readable (excluded from ranking).
        missing_item_ids: their ids (when ``item_ids`` is known).
    """

    vectors: np.ndarray
    level: np.ndarray
    item_ids: np.ndarray | None
    missing_rows: np.ndarray
    missing_item_ids: np.ndarray | None

    def counts(self) -> dict[int, int]:
        """Number of items served by each layer (key -1: unreadable)."""
        values, counts = np.unique(self.level, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def degrade(
    decoded: Sequence[np.ndarray], available: Sequence[np.ndarray], item_ids: np.ndarray | None = None
) -> DegradedItems:
    """Apply the degradation policy to per-layer reconstructions.

    Args:
        decoded: float [n, d] per layer, coarsest first (``codec.decode`` of each layer's codes;
            rows of unavailable items are ignored).
        available: bool [n] per layer: the item's code in that layer is readable.
        item_ids: optional int64 [n] ids for the report.

    Each item takes its finest available layer; items available in no layer get level -1.
    """
    if len(decoded) == 0 or len(decoded) != len(available):
        raise InvalidInputError(f"need one availability mask per layer: {len(decoded)} layers, {len(available)} masks")
    mats = [as_float_matrix(x, f"decoded[{i}]") for i, x in enumerate(decoded)]
    n, d = mats[0].shape
    masks = []
    for i, (x, a) in enumerate(zip(mats, available)):
        if x.shape != (n, d):
            raise DimensionMismatchError(f"decoded[{i}] has shape {x.shape}, layer 0 has {(n, d)}")
        a = np.asarray(a)
        if a.dtype != bool:
            raise DTypeError(f"available[{i}] must be bool, got {a.dtype}")
        if a.shape != (n,):
            raise DimensionMismatchError(f"available[{i}] must have shape ({n},), got {a.shape}")
        masks.append(a)
    level = np.full(n, -1, np.int16)
    for i, a in enumerate(masks):
        level[a] = i  # finer layers overwrite coarser ones
    vectors = np.zeros((n, d), np.float32)
    for i, x in enumerate(mats):
        rows = level == i
        vectors[rows] = x[rows]
    missing = np.flatnonzero(level < 0)
    ids = None
    if item_ids is not None:
        ids = np.asarray(item_ids, np.int64)
        if ids.shape != (n,):
            raise DimensionMismatchError(f"item_ids must have shape ({n},), got {ids.shape}")
    return DegradedItems(vectors, level, ids, missing, None if ids is None else ids[missing])


def read_degraded(
    reader: object,
    lost: Mapping[int, np.ndarray] | None = None,
    lost_parity: Mapping[int, np.ndarray] | None = None,
    use_parity: bool = True,
    layers: Sequence[int] | None = None,
) -> tuple[DegradedItems, dict[int, object]]:
    """Read a (possibly damaged) pack under the degradation policy.

    Args:
        reader: a :class:`~reelpack.format.PackReader`.
        lost: optional ``{layer: bool [n_blocks]}`` simulated lost data blocks.
        lost_parity: optional ``{layer: bool [n_groups * m]}`` simulated lost parity blocks.
        use_parity: rebuild lost blocks from the PARITY section when present.
        layers: the layers to use (default all), coarsest first.

    Returns:
        (degraded catalog, ``{layer: LayerRecovery}``). A layer whose codec is unusable
        counts as entirely unavailable.
    """
    from reelpack.format import PackReader
    from reelpack.format.parity import recover_layer

    if not isinstance(reader, PackReader):
        raise InvalidInputError(f"read_degraded needs a PackReader, got {type(reader).__name__}")
    lost = {} if lost is None else dict(lost)
    lost_parity = {} if lost_parity is None else dict(lost_parity)
    layer_list = list(range(reader.n_layers)) if layers is None else [int(x) for x in layers]
    decoded, available, recoveries = [], [], {}
    dim = None
    for layer in layer_list:
        rec = recover_layer(reader, layer, lost=lost.get(layer), lost_parity=lost_parity.get(layer), use_parity=use_parity)
        recoveries[layer] = rec
        try:
            codec = reader.codec(layer)
        except Exception:  # noqa: BLE001  a corrupt CODEC section: the layer is unusable
            decoded.append(None)
            available.append(np.zeros(reader.n_items, bool))
            continue
        x = np.zeros((reader.n_items, codec.dim), np.float32)
        if rec.row_ok.any():
            x[rec.row_ok] = codec.decode(rec.codes[rec.row_ok])
        dim = codec.dim
        decoded.append(x)
        available.append(rec.row_ok)
    if dim is None:
        raise InvalidInputError("no layer of this pack has a usable codec")
    decoded = [np.zeros((reader.n_items, dim), np.float32) if x is None else x for x in decoded]
    return degrade(decoded, available, reader.item_ids), recoveries


def degraded_scores(queries: np.ndarray, items: DegradedItems) -> np.ndarray:
    """Scores float32 [nq, n] = ``queries @ vectors.T``; unreadable items score ``-inf`` (ranked last)."""
    q = as_float_matrix(queries, "queries", dim=items.vectors.shape[1])
    scores = q @ items.vectors.T
    if items.missing_rows.size:
        scores[:, items.missing_rows] = -np.inf
    return scores
