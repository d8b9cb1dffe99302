"""A documented latency and energy *estimate* for scoring a pack on a phone.

Nothing in this module is a measurement on a phone. It turns two things the bench
does measure on the machine it runs on -- wall-clock ranking time and the bytes of
a codec's codes -- into estimates for a phone, through a handful of constants
taken from published measurements or stated as assumptions. Every constant, its
source and its year are listed in ``docs/ENERGY.md`` and in the ``sources`` field
of the dataclass that holds it. Every output key of :func:`estimate_row` that is
an estimate starts with ``est_``.

The model
=========

Latency::

    est_phone_ms = measured_ms * core_speed_ratio

``core_speed_ratio`` = (single-core time on the phone's fastest core) / (single-core
time on the bench machine's core), for the same work. The presets assume the bench
ran on a server-class x86 core (a ~2-3.5 GHz Xeon, Geekbench 6 single-core around
2000 -- an assumption, see ``docs/ENERGY.md``).

CPU energy (one big core busy for the estimated time; W x ms = mJ)::

    E_cpu [J] = cpu_watts_active * est_phone_ms / 1000

Radio energy to download ``B`` bytes in one transfer, after the power model of
Huang et al. (MobiSys 2012): while receiving at downlink throughput ``t_d`` (Mbit/s)
the radio draws ``P = alpha_d * t_d + beta`` (mW); the transfer takes
``8 B / (t_d * 1e6)`` s; a transfer also pays a promotion (idle -> connected) and a
tail (connected -> idle timer)::

    E_radio [J] = (alpha_d * t_d + beta) / 1000 * 8 B / (t_d * 1e6)
                  + promotion_s * promotion_w + tail_s * tail_w

Constants (see ``docs/ENERGY.md`` for the full table):

* Radio power models (``alpha_d``, ``beta``), promotion and tail powers and
  durations for 3G, LTE and Wi-Fi: J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen,
  O. Spatscheck, "A Close Examination of Performance and Power Characteristics of
  4G LTE Networks", MobiSys 2012 (power-model tables, measured on an HTC ThunderBolt).
  The values were entered from the paper's tables; the search tool available when
  this module was written could confirm only the paper's abstract, so re-check each
  value against the PDF before quoting figures (``docs/ENERGY.md`` marks which).
* LTE downlink throughput 13 Mbit/s: median downlink measured by 4GTest, same
  paper (abstract). 3G 1 Mbit/s and Wi-Fi 10 Mbit/s: ASSUMPTIONS (see the doc).
* 3G tail cross-check: N. Balasubramanian, A. Balasubramanian, A. Venkataramani,
  "Energy Consumption in Mobile Phones: A Measurement Study and Implications for
  Network Applications", IMC 2009 (3G tail of roughly 12 s).
* ``cpu_watts_active`` = 1.0 W for a mid-range big core: Arm's Cortex-A78 ISO-power
  design point of 1 W per core, which A. Frumusanu (AnandTech, "Arm's New Cortex-A78
  and Cortex-X1 Microarchitectures", May 2020) reports matches the power he measured
  for a 2.6 GHz Cortex-A77 (MediaTek Dimensity 1000).
* ``core_speed_ratio``: Geekbench 6 single-core scores. Reference point cited:
  Geekbench 6 scores are calibrated so that a Core i7-12700 scores 2500 (Primate Labs,
  "Geekbench 6 CPU Workloads", Feb 2023); Tensor G3 (Pixel 8 Pro) scored 1760
  single-core (reported Oct 2023). The bench host's ~2000 and a mid-range phone's
  ~1000 are ASSUMPTIONS, stated with their reasoning in the doc.

Left out: screen, idle/baseline power, decoding and storing the pack, thermal
throttling, DVFS, little cores, SIMD differences between x86 and ARM, uplink
traffic, radio signal strength. (The measured time is that of one query through the
method's single-query path, see :mod:`reelpack.bench.latency`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reelpack.errors import InvalidInputError

__all__ = [
    "RadioProfile",
    "DeviceModel",
    "EnergyEstimate",
    "RADIO_NAMES",
    "DEVICE_MODELS",
    "DEFAULT_DEVICE_MODEL",
    "get_device_model",
    "estimate_phone_ms",
    "estimate_energy",
    "estimate_row",
    "measured_query_ms",
]

RADIO_NAMES: tuple[str, ...] = ("3g", "4g", "wifi")

# ---- sources (quoted in the ``sources`` fields and in docs/ENERGY.md) -------------------------------------------
SRC_HUANG_2012 = (
    "J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck, 'A Close Examination of Performance and Power "
    "Characteristics of 4G LTE Networks', ACM MobiSys 2012: power-model tables (alpha_d, beta; promotion and tail "
    "power/duration) for LTE, 3G and WiFi, measured on an HTC ThunderBolt. Values entered from the paper's tables, "
    "not re-read against the PDF in this session: verify before quoting."
)
SRC_HUANG_2012_MEDIAN = (
    "Huang et al., MobiSys 2012, abstract: median LTE downlink throughput 13 Mbit/s measured by 4GTest (3000+ users); "
    "LTE up to 23x less power-efficient than WiFi, the long high-power tail being a key contributor."
)
SRC_BALA_2009 = (
    "N. Balasubramanian, A. Balasubramanian, A. Venkataramani, 'Energy Consumption in Mobile Phones: A Measurement "
    "Study and Implications for Network Applications', ACM IMC 2009: 3G and GSM lose a large tail energy after a "
    "transfer (3G tail of roughly 12 s); cross-check of the 3G tail duration."
)
SRC_ASSUME_3G_TPUT = (
    "ASSUMPTION: 3G (HSPA-class) downlink 1 Mbit/s, an order-of-magnitude figure below LTE's 13 Mbit/s median "
    "(Huang et al. 2012 found LTE downlink far above 3G); not a cited measurement."
)
SRC_ASSUME_WIFI_TPUT = (
    "ASSUMPTION: WiFi downlink 10 Mbit/s, chosen below LTE's 13 Mbit/s median because Huang et al. 2012 observed LTE "
    "downlink above WiFi in their data; home WiFi today is often faster, which lowers J/byte slightly."
)
SRC_ANANDTECH_A78 = (
    "A. Frumusanu, 'Arm's New Cortex-A78 and Cortex-X1 Microarchitectures', AnandTech, May 2020 (article 15813, "
    "'Performance & Power Projections'): Arm's ISO-power comparison at 1 W per core; the 1 W figure roughly matches "
    "the power measured on a 2.6 GHz Cortex-A77 (MediaTek Dimensity 1000). Used as the active power of one "
    "mid-range big core."
)
SRC_GB6_BASELINE = (
    "Primate Labs, 'Geekbench 6 CPU Workloads' (Feb 2023): scores are calibrated so that a Dell Precision 3460 with "
    "a Core i7-12700 scores 2500."
)
SRC_GB6_TENSOR_G3 = (
    "Tensor G3 (Pixel 8 Pro) Geekbench 6 single-core 1760, Snapdragon 8 Gen 2 2003 (first results, reported "
    "Oct 2023)."
)
SRC_ASSUME_HOST = (
    "ASSUMPTION: the bench host is a server-class x86 core (2-3.5 GHz Xeon/EPYC class) with a Geekbench 6 "
    "single-core score of about 2000 (about 0.8x the i7-12700 baseline of 2500, whose desktop turbo clock is higher). "
    "Not measured on the bench machine."
)
SRC_ASSUME_MIDRANGE = (
    "ASSUMPTION: a 2024 mid-range phone (Snapdragon 7-series / Dimensity 7000-class / Cortex-A78-A715 big core at "
    "2.2-2.6 GHz) scores about 1000 in Geekbench 6 single-core, so core_speed_ratio = 2000 / 1000 = 2.0. No single "
    "cited score; the order of magnitude follows from the flagship Tensor G3's cited 1760."
)
SRC_ASSUME_FLAGSHIP_W = (
    "ASSUMPTION: one Cortex-X-class prime core at full clock draws about 2.5 W (above the 1 W A78 design point of "
    "AnandTech 2020; prime cores run at higher voltage and clock). Not a cited measurement."
)


def _check_number(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 if ``positive``), else InvalidInputError naming it."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise InvalidInputError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise InvalidInputError(f"{name} must be finite, got {x}")
    if x < 0 or (positive and x == 0):
        raise InvalidInputError(f"{name} must be {'> 0' if positive else '>= 0'}, got {x}")
    return x


@dataclass(frozen=True)
class RadioProfile:
    """Download energy of one radio technology (Huang et al. 2012 power model).

    Attributes:
        name: ``"3g"``, ``"4g"`` or ``"wifi"``.
        alpha_d_mw_per_mbps: extra radio power per Mbit/s of downlink throughput (mW per Mbit/s).
        beta_mw: radio power while in the connected state at zero throughput (mW).
        throughput_mbps: assumed downlink throughput during the transfer (Mbit/s).
        promotion_s, promotion_w: duration (s) and power (W) of the idle -> connected promotion, paid once.
        tail_s, tail_w: duration (s) and power (W) of the tail after the last byte, paid once.
        sources: where each constant comes from (citations, or ASSUMPTION with the reasoning).
    """

    name: str
    alpha_d_mw_per_mbps: float
    beta_mw: float
    throughput_mbps: float
    promotion_s: float
    promotion_w: float
    tail_s: float
    tail_w: float
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in RADIO_NAMES:
            raise InvalidInputError(f"radio name must be one of {', '.join(RADIO_NAMES)}; got {self.name!r}")
        _check_number(self.alpha_d_mw_per_mbps, "alpha_d_mw_per_mbps")
        _check_number(self.beta_mw, "beta_mw")
        _check_number(self.throughput_mbps, "throughput_mbps", positive=True)
        for attr in ("promotion_s", "promotion_w", "tail_s", "tail_w"):
            _check_number(getattr(self, attr), attr)

    @property
    def active_power_w(self) -> float:
        """Radio power while receiving at ``throughput_mbps``: ``(alpha_d * t_d + beta) / 1000`` (W)."""
        return (self.alpha_d_mw_per_mbps * self.throughput_mbps + self.beta_mw) / 1000.0

    @property
    def joules_per_byte(self) -> float:
        """Marginal energy per downloaded byte: ``active_power_w * 8 / (t_d * 1e6)`` (J/byte)."""
        return self.active_power_w * 8.0 / (self.throughput_mbps * 1e6)

    @property
    def joules_per_mb(self) -> float:
        """The same per megabyte (10^6 bytes)."""
        return self.joules_per_byte * 1e6

    @property
    def fixed_joules(self) -> float:
        """Energy paid once per transfer whatever its size: promotion + tail (J)."""
        return self.promotion_s * self.promotion_w + self.tail_s * self.tail_w

    def transfer_seconds(self, n_bytes: float) -> float:
        """Promotion delay plus ``8 * n_bytes / (t_d * 1e6)`` (s); the tail follows the last byte and adds no delay."""
        b = _check_number(n_bytes, "bytes_downloaded")
        return self.promotion_s + 8.0 * b / (self.throughput_mbps * 1e6)

    def transfer_joules(self, n_bytes: float) -> float:
        """Radio energy of one transfer of ``n_bytes``: ``n_bytes * joules_per_byte + fixed_joules`` (J)."""
        b = _check_number(n_bytes, "bytes_downloaded")
        return b * self.joules_per_byte + self.fixed_joules


@dataclass(frozen=True)
class DeviceModel:
    """A phone, described by the few constants the estimate needs.

    Attributes:
        name: preset name (``"midrange-2024"``...).
        description: what phone class it stands for.
        core_speed_ratio: phone single-core time / bench machine single-core time for the same work (> 0;
            2.0 means the phone takes twice as long).
        cpu_watts_active: power of one big core busy (W = J/s), above idle.
        radios: one :class:`RadioProfile` per radio in :data:`RADIO_NAMES`.
        sources: where ``core_speed_ratio`` and ``cpu_watts_active`` come from.
    """

    name: str
    description: str
    core_speed_ratio: float
    cpu_watts_active: float
    radios: tuple[RadioProfile, ...]
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_number(self.core_speed_ratio, "core_speed_ratio", positive=True)
        _check_number(self.cpu_watts_active, "cpu_watts_active")
        names = [r.name for r in self.radios]
        if sorted(names) != sorted(RADIO_NAMES):
            raise InvalidInputError(f"a device model needs exactly one radio per {RADIO_NAMES}; got {names}")

    def radio(self, name: str) -> RadioProfile:
        """The radio profile called ``name`` (``"3g"``, ``"4g"`` or ``"wifi"``)."""
        for r in self.radios:
            if r.name == name:
                return r
        raise InvalidInputError(f"unknown radio {name!r}; expected one of {', '.join(RADIO_NAMES)}")

    def to_dict(self) -> dict[str, Any]:
        """Every constant and source, plus the derived J/byte and fixed J per radio (for provenance)."""
        out = asdict(self)
        out["sources"] = list(self.sources)
        out["radios"] = {
            r.name: {
                **{k: v for k, v in asdict(r).items() if k not in ("name", "sources")},
                "joules_per_byte": r.joules_per_byte,
                "fixed_joules_per_transfer": r.fixed_joules,
                "sources": list(r.sources),
            }
            for r in self.radios
        }
        out["docs"] = "docs/ENERGY.md"
        return out


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated joules of one download plus one computation, split by component."""

    radio_j: float
    cpu_j: float

    @property
    def total_j(self) -> float:
        return self.radio_j + self.cpu_j


# ---- presets ------------------------------------------------------------------------------------------------------
# Huang et al. 2012 power-model constants (see SRC_HUANG_2012 for the caveat).
_LTE = RadioProfile(
    name="4g",
    alpha_d_mw_per_mbps=51.97,
    beta_mw=1288.04,
    throughput_mbps=13.0,
    promotion_s=0.2601,
    promotion_w=1.2107,
    tail_s=11.576,
    tail_w=1.0600,
    sources=(SRC_HUANG_2012, SRC_HUANG_2012_MEDIAN),
)
_3G = RadioProfile(
    name="3g",
    alpha_d_mw_per_mbps=122.12,
    beta_mw=817.88,
    throughput_mbps=1.0,
    promotion_s=0.5821,
    promotion_w=0.6594,
    tail_s=8.0882,
    tail_w=0.8039,
    sources=(SRC_HUANG_2012, SRC_BALA_2009, SRC_ASSUME_3G_TPUT),
)
_WIFI = RadioProfile(
    name="wifi",
    alpha_d_mw_per_mbps=137.01,
    beta_mw=132.86,
    throughput_mbps=10.0,
    promotion_s=0.0791,
    promotion_w=0.1244,
    tail_s=0.2381,
    tail_w=0.1193,
    sources=(SRC_HUANG_2012, SRC_ASSUME_WIFI_TPUT),
)

DEVICE_MODELS: dict[str, DeviceModel] = {
    "midrange-2024": DeviceModel(
        name="midrange-2024",
        description="2024 mid-range Android phone (Snapdragon 7-series / Dimensity 7000-class, A78/A715 big core)",
        core_speed_ratio=2.0,
        cpu_watts_active=1.0,
        radios=(_3G, _LTE, _WIFI),
        sources=(SRC_GB6_BASELINE, SRC_GB6_TENSOR_G3, SRC_ASSUME_HOST, SRC_ASSUME_MIDRANGE, SRC_ANANDTECH_A78),
    ),
    "flagship-2023": DeviceModel(
        name="flagship-2023",
        description="2023 flagship (Tensor G3 / Snapdragon 8 Gen 2 class, Cortex-X prime core)",
        core_speed_ratio=round(2000.0 / 1760.0, 3),  # assumed host ~2000 / cited Tensor G3 1760
        cpu_watts_active=2.5,
        radios=(_3G, _LTE, _WIFI),
        sources=(SRC_GB6_BASELINE, SRC_GB6_TENSOR_G3, SRC_ASSUME_HOST, SRC_ASSUME_FLAGSHIP_W),
    ),
}
DEFAULT_DEVICE_MODEL = "midrange-2024"


def get_device_model(name: str) -> DeviceModel:
    """The preset called ``name``; unknown names raise InvalidInputError listing the presets."""
    try:
        return DEVICE_MODELS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown device model {name!r}; presets: {', '.join(sorted(DEVICE_MODELS))} (see docs/ENERGY.md)"
        ) from None


def _model(model: DeviceModel | str) -> DeviceModel:
    return get_device_model(model) if isinstance(model, str) else model


def estimate_phone_ms(measured_ms: float, model: DeviceModel | str) -> float:
    """ESTIMATE of the phone time for work measured at ``measured_ms`` on the bench machine.

    ``measured_ms * model.core_speed_ratio``; ``measured_ms`` must be finite and >= 0.
    """
    return _check_number(measured_ms, "measured_ms") * _model(model).core_speed_ratio


def estimate_energy(
    bytes_downloaded: float, cpu_ms_phone: float, model: DeviceModel | str, radio: RadioProfile | str
) -> EnergyEstimate:
    """ESTIMATE of the joules to download ``bytes_downloaded`` in one transfer over ``radio`` and
    keep one big core busy for ``cpu_ms_phone`` (already in phone milliseconds, see :func:`estimate_phone_ms`).

    ``radio_j = bytes * radio.joules_per_byte + radio.fixed_joules`` when ``bytes_downloaded > 0``
    (no transfer, no promotion or tail: 0 J); ``cpu_j = model.cpu_watts_active * cpu_ms_phone / 1000``.
    """
    m = _model(model)
    r = m.radio(radio) if isinstance(radio, str) else radio
    b = _check_number(bytes_downloaded, "bytes_downloaded")
    ms = _check_number(cpu_ms_phone, "cpu_ms_phone")
    radio_j = r.transfer_joules(b) if b > 0 else 0.0
    return EnergyEstimate(radio_j=radio_j, cpu_j=m.cpu_watts_active * ms / 1000.0)


def measured_query_ms(row: Mapping[str, Any]) -> float | None:
    """MEASURED query time on the bench machine (ms).

    ``row["query_ms"]`` when the row has it: the median time of one query through the method's
    single-query path, as ``reelpack bench`` times it (results schema 3, see
    :mod:`reelpack.bench.latency` and the row's ``latency_path``). Otherwise (a row without it) the
    batched figure ``rank_s * 1000 / n_users``: the wall-clock time to score every catalog item for
    every evaluated user in batches and take each user's top-K, amortised per user -- not the latency
    of one isolated query. ``None`` when the row has neither.
    """
    if row.get("query_ms") is not None:
        return _check_number(row["query_ms"], "query_ms")
    rank_s, n_users = row.get("rank_s"), row.get("n_users")
    if rank_s is None or not n_users:
        return None
    return _check_number(rank_s, "rank_s") * 1000.0 / _check_number(n_users, "n_users", positive=True)


def estimate_row(row: Mapping[str, Any], n_items: int, model: DeviceModel | str) -> dict[str, Any]:
    """Latency and energy fields for one bench row.

    Returns ``query_ms`` (MEASURED here, see :func:`measured_query_ms`), ``payload_bytes``
    (``bytes_per_item * n_items``: the codes only, without the pack header or codec parameters)
    and the ESTIMATES, every key prefixed ``est_``:

    * ``est_phone_query_ms``: ``query_ms * core_speed_ratio``;
    * ``est_query_mJ``: CPU energy of that time, ``cpu_watts_active * est_phone_query_ms`` (W x ms = mJ);
    * ``est_download_J_<radio>`` for 3g, 4g, wifi: radio energy of downloading ``payload_bytes`` in one
      transfer, promotion and tail included;
    * ``est_download_s_<radio>``: promotion delay plus transfer time at the radio's assumed throughput.

    Fields whose inputs are missing (no ``query_ms`` nor ``rank_s``/``n_users``, no ``bytes_per_item``)
    are ``None``.
    """
    m = _model(model)
    n = int(_check_number(n_items, "n_items"))
    out: dict[str, Any] = {}
    q = measured_query_ms(row)
    out["query_ms"] = q
    phone_ms = None if q is None else estimate_phone_ms(q, m)
    out["est_phone_query_ms"] = phone_ms
    out["est_query_mJ"] = None if phone_ms is None else estimate_energy(0, phone_ms, m, "4g").cpu_j * 1000.0
    bpi = row.get("bytes_per_item")
    payload = None if bpi is None else _check_number(bpi, "bytes_per_item") * n
    out["payload_bytes"] = payload
    for name in RADIO_NAMES:
        r = m.radio(name)
        out[f"est_download_J_{name}"] = None if payload is None else estimate_energy(payload, 0.0, m, r).radio_j
        out[f"est_download_s_{name}"] = None if payload is None else r.transfer_seconds(payload)
    return out
