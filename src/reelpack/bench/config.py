"""What one ``reelpack bench`` run measures: :class:`BenchConfig` and the default codec lists."""

from __future__ import annotations

from dataclasses import dataclass

from reelpack.bench.energy import DEFAULT_DEVICE_MODEL, get_device_model
from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError

__all__ = [
    "BenchConfig",
    "DEFAULT_CODECS",
    "DEFAULT_LOSS_RATES",
    "DEFAULT_LATENCY_USERS",
    "DEFAULT_LATENCY_WARMUP",
    "REFERENCE_LOSS_RATE",
    "LOSS_ITEMS_PER_BLOCK",
    "SWEEP_CODECS",
    "SWEEP_BASELINES",
    "SWEEP_QAT",
]

DEFAULT_LOSS_RATES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
REFERENCE_LOSS_RATE = 0.1
"""The loss rate of the rows' ``robust_rel_recall@K`` (always measured, added to the rates when absent)."""
LOSS_ITEMS_PER_BLOCK = 64
"""Items per block (= per lost packet) of the packs written for the robustness measurement."""
DEFAULT_LATENCY_USERS = 200
"""Users of the seeded sample whose single queries are timed (``query_ms``, see :mod:`reelpack.bench.latency`)."""
DEFAULT_LATENCY_WARMUP = 10
"""Untimed single queries per method before the timed ones (JIT compilation, caches, BLAS start-up)."""
DEFAULT_CODECS: tuple[str, ...] = (
    "fp16",
    "sq8",
    "sq4",
    "pq16",
    "pq8",
    "opq16,pq16",
    "simhash128",
    "simhash128-hamming",
    "countsketch32",
)

# The rate-quality sweep (``reelpack bench --sweep``): reelpack codecs at 8, 16 and 32 bytes per item
# (for d = 64; "pqM"/"apqM" need M to divide d), faiss's strongest codecs at the same budgets (PQ, OPQ,
# the additive quantisers RQ and LSQ, SQ, RaBitQ), and the codecs tuned by compression-aware training.
SWEEP_CODECS: tuple[str, ...] = (
    "pq8", "apq8-t0.3", "qat-rq4+4",
    "pq16", "apq16-t0.3", "qat-apq16-t0.3", "qat-rq8+8", "wsq16", "rabitq",
    "sq4", "pq32", "apq32-t0.3", "qat-pq32", "wsq32-mm", "rabitq2",
)  # fmt: skip
SWEEP_BASELINES: tuple[str, ...] = (
    "PQ8np", "OPQ8,PQ8np", "RQ8x8", "LSQ8x8",
    "PQ16np", "OPQ16,PQ16np", "RQ16x8", "LSQ16x8", "RaBitQ",
    "SQ4", "PQ32np", "RQ32x8",
)  # fmt: skip
SWEEP_QAT: tuple[str, ...] = ("qat-rq4+4", "qat-rq8+8", "qat-apq16-t0.3", "qat-pq32")


@dataclass(frozen=True)
class BenchConfig:
    """What one bench run measures.

    Attributes:
        codecs: reelpack factory strings to evaluate.
        faiss_twins: also run each codec's faiss twin (where one exists).
        ks: metric cut-offs; the ranking depth is max(ks).
        max_users: evaluate a seeded random sample of this many users (``None``: all with test items).
        batch_size: users scored per batch.
        seed: seed for codec fitting, faiss training and the user sample.
        threads: threads for BLAS/faiss during the run (1 for comparable timings).
        device_model: preset of :mod:`reelpack.bench.energy` used for the phone latency and energy
            ESTIMATES (``est_*`` row fields; constants and sources in docs/ENERGY.md).
        loss_rates: i.i.d. block-loss rates of the robustness curves (``REFERENCE_LOSS_RATE`` is added
            when absent); empty: no robustness measurement.
        robust_users: seeded sample (drawn from the evaluated users) ranked under loss; 0 turns the
            robustness measurement off.
        engineering_checks: run the per-method engineering checks (pack round trip, CRC detection,
            deterministic encoding, typed error on a bad query).
        latency_users: size of the seeded user sample (drawn from the evaluated users) whose queries
            are timed one at a time through each method's single-query path (``query_ms``: median,
            ``query_ms_p90``; see :mod:`reelpack.bench.latency`); at least 1.
        latency_warmup: untimed single queries per method before the timed ones (>= 0).
    """

    codecs: tuple[str, ...] = DEFAULT_CODECS
    faiss_twins: bool = True
    ks: tuple[int, ...] = (10, 20, 50)
    max_users: int | None = None
    batch_size: int = 1024
    seed: int = 0
    threads: int = 1
    baselines: tuple[str, ...] = ()
    qat: tuple[str, ...] = ()
    qat_epochs: int = 3
    max_train: int = 100_000
    device_model: str = DEFAULT_DEVICE_MODEL
    loss_rates: tuple[float, ...] = DEFAULT_LOSS_RATES
    robust_users: int = 2000
    engineering_checks: bool = True
    latency_users: int = DEFAULT_LATENCY_USERS
    latency_warmup: int = DEFAULT_LATENCY_WARMUP

    def __post_init__(self) -> None:
        rates = tuple(self.loss_rates)
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0 for r in rates):
            raise InvalidInputError(f"loss_rates must be numbers in [0, 1), got {self.loss_rates!r}")
        if isinstance(self.robust_users, bool) or not isinstance(self.robust_users, int) or self.robust_users < 0:
            raise InvalidInputError(f"robust_users must be an integer >= 0 (0: no robustness), got {self.robust_users!r}")
        for name, low in (("latency_users", 1), ("latency_warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        get_device_model(self.device_model)  # unknown preset -> InvalidInputError listing the presets
        if not self.ks or min(self.ks) <= 0:
            raise InvalidInputError(f"ks must be positive cut-offs, got {self.ks}")
        if self.max_users is not None and self.max_users <= 0:
            raise InvalidInputError(f"max_users must be positive, got {self.max_users}")
        if self.batch_size <= 0 or self.threads <= 0:
            raise InvalidInputError("batch_size and threads must be positive")
        for spec in self.codecs:
            make_codec(spec)  # fail early on a bad spec
        for spec in self.qat:
            if make_codec(spec).family != "qat":
                raise InvalidInputError(f"compression-aware training needs a 'qat-...' spec, got {spec!r}")
        if self.qat and self.qat_epochs < 1:
            raise InvalidInputError(f"qat_epochs must be >= 1, got {self.qat_epochs}")
