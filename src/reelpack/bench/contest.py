"""The contest scorer: one 0..100 score per bench row, from the weighting of the project brief.

The weights (``WEIGHTS``) are 50 % recall preservation, 20 % compression, 15 % latency and energy,
10 % robustness under loss and 5 % engineering quality. Each term is a documented normalisation
of quantities that ``reelpack bench`` measures or estimates, mapped to [0, 1]; the formulas, their
constants and a worked example live in docs/SCORING.md (a test recomputes the example from the
numbers in that document).

Summary (K = the run's largest cut-off, normally 50; the float32 reference row is the row whose
``kind`` is ``"reference"``):

* ``recall = clip(mean(rel_recall@K, rel_ndcg@10, rel_mrr), 0, 1)`` (means over the inputs present);
* ``compression = clip(log2(c / 4) / log2(32 / 4), 0, 1)``, ``c = 4 * dim / bytes_per_item``
  (the row's ``compression``): 4x scores 0, 32x scores 1;
* ``latency_energy = mean(ratio_score(query_ms), ratio_score(session_J))`` where
  ``ratio_score(x) = clip(0.5 + log2(x_ref / x) / (2 * log2(8)), 0, 1)`` (as good as float32: 0.5,
  8x better: 1, 8x worse: 0) and ``session_J = est_download_J_4g + 100 * est_query_mJ / 1000``
  (one catalog download plus 100 queries on the phone, both ESTIMATES from docs/ENERGY.md);
  ``query_ms`` is MEASURED by ``reelpack bench`` one query at a time, median over a seeded user
  sample, through each method's single-query path: ``make_scanner(codec, codes).search`` for reelpack
  codecs, faiss ``index.search`` with one query, a float32 GEMV + top-K for the reference (the row's
  ``latency_path``, kept in each score's ``latency_path``; see :mod:`reelpack.bench.latency`);
* ``robustness = clip(robust_rel_recall@K / base, 0, 1)`` at the reference loss rate (10 % i.i.d.
  block loss, see ``result.extra["robustness"]``); ``base`` is ``robust_base_rel_recall@K`` (the same
  user sample without loss) when the row has it, else ``rel_recall@K``;
* ``engineering = passed / applicable`` over the row's ``engineering_checks`` (``None`` = not applicable).

``total = 100 * sum(weight * term)``; a missing term (input not measured) counts 0 and is listed in
``missing``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reelpack.errors import InvalidInputError

__all__ = [
    "WEIGHTS",
    "TERMS",
    "COMPRESSION_FLOOR",
    "COMPRESSION_CEIL",
    "RATIO_SPAN",
    "QUERIES_PER_SESSION",
    "ContestScore",
    "contest_scores",
    "contest_table",
    "ratio_score",
    "recall_term",
    "compression_term",
    "latency_energy_term",
    "robustness_term",
    "engineering_term",
    "latency_paths",
]

WEIGHTS: dict[str, float] = {
    "recall": 0.50,
    "compression": 0.20,
    "latency_energy": 0.15,
    "robustness": 0.10,
    "engineering": 0.05,
}
TERMS: tuple[str, ...] = tuple(WEIGHTS)
COMPRESSION_FLOOR = 4.0  # compression ratio scoring 0 (fp32 -> int8 is "free")
COMPRESSION_CEIL = 32.0  # compression ratio scoring 1
RATIO_SPAN = 8.0  # latency/energy: 8x better than float32 scores 1, 8x worse scores 0
QUERIES_PER_SESSION = 100  # queries per catalog download in the session energy


@dataclass(frozen=True)
class ContestScore:
    """The contest score of one bench row.

    Attributes:
        method: the row's ``method``.
        kind: the row's ``kind``: ``"reelpack"``, ``"faiss"`` or ``"reference"``.
        terms: each term of :data:`WEIGHTS` normalised to [0, 1]; ``None`` when its input is missing.
        inputs: the raw inputs used (relative metrics, compression ratio, query ms, energies, ...).
        total: ``100 * sum(weight * term)`` in [0, 100]; a missing term counts 0.
        missing: names of the missing terms, in :data:`TERMS` order.
        latency_path: what the row's ``query_ms`` timed (its ``latency_path``; ``None`` when not recorded).
    """

    method: str
    kind: str
    terms: dict[str, float | None]
    inputs: dict[str, float | None]
    total: float
    missing: tuple[str, ...]
    latency_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``missing`` as a list)."""
        d = asdict(self)
        d["missing"] = list(self.missing)
        return d


def _num(x: object) -> float | None:
    """A finite float, or ``None`` for missing / non-numeric / nan / inf values."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def ratio_score(value: float | None, reference: float | None, span: float = RATIO_SPAN) -> float | None:
    """``clip(0.5 + log2(reference / value) / (2 * log2(span)), 0, 1)`` for a lower-is-better quantity.

    Equal to the reference: 0.5; ``span`` times smaller: 1; ``span`` times larger: 0.
    ``None`` when either input is missing or not positive.
    """
    v, r = _num(value), _num(reference)
    if v is None or r is None or v <= 0 or r <= 0:
        return None
    return _clip01(0.5 + math.log2(r / v) / (2.0 * math.log2(span)))


def recall_term(rel_recall: float | None, rel_ndcg: float | None, rel_mrr: float | None) -> float | None:
    """``clip(mean of the present inputs, 0, 1)``; ``None`` when none is present."""
    vals = [v for v in (_num(rel_recall), _num(rel_ndcg), _num(rel_mrr)) if v is not None]
    return _clip01(sum(vals) / len(vals)) if vals else None


def compression_term(compression: float | None) -> float | None:
    """``clip(log2(c / 4) / log2(32 / 4), 0, 1)``; ``None`` when ``c`` is missing or not positive."""
    c = _num(compression)
    if c is None or c <= 0:
        return None
    return _clip01(math.log2(c / COMPRESSION_FLOOR) / math.log2(COMPRESSION_CEIL / COMPRESSION_FLOOR))


def session_energy_j(download_j: float | None, query_mj: float | None) -> float | None:
    """``download_J + QUERIES_PER_SESSION * query_mJ / 1000``, ``None`` when an input is missing."""
    d, q = _num(download_j), _num(query_mj)
    if d is None or q is None:
        return None
    return d + QUERIES_PER_SESSION * q / 1000.0


def latency_energy_term(latency: float | None, energy: float | None) -> float | None:
    """Mean of the present sub-scores (each from :func:`ratio_score`); ``None`` when both are missing."""
    vals = [v for v in (latency, energy) if v is not None]
    return sum(vals) / len(vals) if vals else None


def robustness_term(robust_rel_recall: float | None, rel_recall: float | None) -> float | None:
    """``clip(robust_rel_recall / rel_recall, 0, 1)``; ``None`` when an input is missing or ``rel_recall <= 0``."""
    r, base = _num(robust_rel_recall), _num(rel_recall)
    if r is None or base is None or base <= 0:
        return None
    return _clip01(r / base)


def engineering_term(checks: Mapping[str, object] | None) -> tuple[float | None, int, int]:
    """(passed / applicable, passed, applicable) over ``checks``; a ``None`` check is not applicable."""
    if not isinstance(checks, Mapping):
        return None, 0, 0
    applicable = [bool(v) for v in checks.values() if v is not None]
    if not applicable:
        return None, 0, 0
    passed = sum(applicable)
    return passed / len(applicable), passed, len(applicable)


def _as_parts(result: object) -> tuple[list[Mapping[str, Any]], Mapping[str, Any]]:
    """(rows, provenance) of a BenchResult or its JSON dict."""
    if isinstance(result, Mapping):
        rows, prov = result.get("rows"), result.get("provenance", {}) or {}
    else:
        rows, prov = getattr(result, "rows", None), getattr(result, "provenance", {}) or {}
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) or not all(isinstance(r, Mapping) for r in rows):
        raise InvalidInputError(f"contest_scores needs a BenchResult or a results dict with a list of rows, got {type(result).__name__}")
    return list(rows), prov if isinstance(prov, Mapping) else {}


def _k_of(rows: Sequence[Mapping[str, Any]], prov: Mapping[str, Any]) -> int:
    ks = (prov.get("config") or {}).get("ks") if isinstance(prov.get("config"), Mapping) else None
    if ks:
        return int(max(ks))
    found = [int(key.split("@", 1)[1]) for r in rows for key in r if key.startswith("rel_recall@") and key.split("@", 1)[1].isdigit()]
    return max(found) if found else 50


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict(WEIGHTS)
    if not isinstance(weights, Mapping) or set(weights) != set(TERMS):
        raise InvalidInputError(f"weights must name exactly the terms {list(TERMS)}, got {weights!r}")
    out = {}
    for name in TERMS:
        w = _num(weights[name])
        if w is None or w < 0:
            raise InvalidInputError(f"weight {name!r} must be a finite number >= 0, got {weights[name]!r}")
        out[name] = w
    if not math.isclose(sum(out.values()), 1.0, abs_tol=1e-9):
        raise InvalidInputError(f"weights must sum to 1, got {sum(out.values())}")
    return out


def contest_scores(result: object, weights: Mapping[str, float] | None = None) -> list[ContestScore]:
    """One :class:`ContestScore` per row of ``result`` (a ``BenchResult`` or its JSON dict), in row order.

    Args:
        result: bench results (schema version 2 fields are used where present; a field that is
            absent makes its term ``None``).
        weights: optional replacement for :data:`WEIGHTS` (same keys, non-negative, summing to 1).

    Raises:
        InvalidInputError: ``result`` has no list of rows, or ``weights`` are malformed.
    """
    w = _check_weights(weights)
    rows, prov = _as_parts(result)
    k = _k_of(rows, prov)
    ref = next((r for r in rows if r.get("kind") == "reference"), None)
    ref_ms = _num(ref.get("query_ms")) if ref else None
    ref_energy = (
        session_energy_j(ref.get("est_download_J_4g"), ref.get("est_query_mJ", ref.get("est_cpu_mJ_per_query")))
        if ref
        else None
    )
    out = []
    for row in rows:
        query_mj = row.get("est_query_mJ", row.get("est_cpu_mJ_per_query"))
        energy = session_energy_j(row.get("est_download_J_4g"), query_mj)
        lat_s = ratio_score(row.get("query_ms"), ref_ms)
        en_s = ratio_score(energy, ref_energy)
        eng, passed, applicable = engineering_term(row.get("engineering_checks"))
        # the loss-free baseline of the robustness term: the same user sample without loss when the
        # run recorded it (robust_base_rel_recall@K), else the row's rel_recall@K
        robust_base = _num(row.get(f"robust_base_rel_recall@{k}"))
        if robust_base is None:
            robust_base = _num(row.get(f"rel_recall@{k}"))
        inputs: dict[str, float | None] = {
            f"rel_recall@{k}": _num(row.get(f"rel_recall@{k}")),
            "rel_ndcg@10": _num(row.get("rel_ndcg@10")),
            "rel_mrr": _num(row.get("rel_mrr")),
            "compression": _num(row.get("compression")),
            "query_ms": _num(row.get("query_ms")),
            "ref_query_ms": ref_ms,
            "session_J": energy,
            "ref_session_J": ref_energy,
            "latency_score": lat_s,
            "energy_score": en_s,
            f"robust_rel_recall@{k}": _num(row.get(f"robust_rel_recall@{k}")),
            "robust_base": robust_base,
            "checks_passed": float(passed) if applicable else None,
            "checks_applicable": float(applicable) if applicable else None,
        }
        terms: dict[str, float | None] = {
            "recall": recall_term(inputs[f"rel_recall@{k}"], inputs["rel_ndcg@10"], inputs["rel_mrr"]),
            "compression": compression_term(inputs["compression"]),
            "latency_energy": latency_energy_term(lat_s, en_s),
            "robustness": robustness_term(inputs[f"robust_rel_recall@{k}"], robust_base),
            "engineering": eng,
        }
        total = 100.0 * sum(w[name] * (terms[name] or 0.0) for name in TERMS)
        missing = tuple(name for name in TERMS if terms[name] is None)
        path = row.get("latency_path")
        out.append(ContestScore(str(row.get("method")), str(row.get("kind")), terms, inputs, total, missing,
                                None if path is None else str(path)))  # fmt: skip
    return out


def latency_paths(result: object) -> dict[str, str]:
    """``{kind: latency_path}`` of the rows of ``result`` (a ``BenchResult`` or its JSON dict) that record
    one: what the latency term's ``query_ms`` timed for each kind of row (first path seen per kind)."""
    rows, _ = _as_parts(result)
    out: dict[str, str] = {}
    for row in rows:
        path = row.get("latency_path")
        if path is not None:
            out.setdefault(str(row.get("kind")), str(path))
    return out


def contest_table(scores: Sequence[ContestScore]) -> list[dict[str, Any]]:
    """JSON-able rows ``{rank, method, kind, total, <term>..., missing, latency_path}``, sorted by total (descending;
    ties keep input order)."""
    ordered = sorted(enumerate(scores), key=lambda t: (-t[1].total, t[0]))
    table = []
    for rank, (_, s) in enumerate(ordered, 1):
        entry: dict[str, Any] = {"rank": rank, "method": s.method, "kind": s.kind, "total": round(s.total, 4)}
        for name in TERMS:
            v = s.terms.get(name)
            entry[name] = None if v is None else round(v, 6)
        entry["missing"] = list(s.missing)
        entry["latency_path"] = s.latency_path
        table.append(entry)
    return table
