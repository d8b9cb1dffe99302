"""Choose a codec for a byte budget on a validation split: ``reelpack tune`` and ``--codecs auto16``.

For each budget ``B`` (bytes per item) the candidates are the registry specs whose codes are exactly ``B``
bytes at the embedding dimension (:func:`candidate_specs`; the per-family templates are
:data:`CANDIDATE_FAMILIES`). :func:`tune_codecs` fits every candidate on the item vectors with each seed,
ranks the catalog for the *validation* users (fit items excluded, positives = validation items; see
:func:`reelpack.data.validation_split`) and compares with float32 on the same users:

* relative Recall@K (``rel_recall@50`` = codec Recall@50 / float32 Recall@50) and relative NDCG@10,
  mean, standard deviation and min / max over the seeds;
* ``qat-...`` candidates are also fine-tuned (:func:`reelpack.models.qat.finetune_codebooks`, softmax
  objective on the fit interactions); the fine-tuned codebooks are kept only when their mean validation
  rel Recall@K beats the untouched ones (both figures are recorded);
* every candidate is also fitted with popularity weights (``popularity_betas``, default
  :data:`DEFAULT_POPULARITY_BETAS`): training rows drawn in proportion to ``(item_counts + 1) ** beta`` of the fit
  interactions (:func:`reelpack.data.popularity_weights`, :meth:`reelpack.codecs.Codec.fit` ``weights=``), which
  spends the codec's error where the users' positives are. Such a candidate is labelled ``"rq8-n@pop1"``
  (:func:`candidate_label`); its row and the choice carry ``popularity_beta``, and ``pack`` / ``build-catalog``
  fit the chosen codec with the same weights;
* with ``exposure_betas`` (``reelpack tune --exposure-betas 1``), also with exposure weights: rows drawn in
  proportion to ``(exposure + 1) ** beta``, where an item's exposure is the number of users whose float32 top
  ``exposure_k`` holds it (:func:`reelpack.data.exposure_weights`, from the embeddings only). Such a candidate is
  labelled ``"rq8-n@expo1"`` and carries ``exposure_beta``; ``pack`` and ``build-catalog`` need the user vectors
  to fit it the same way;
* the choice is the highest mean rel Recall@K. Candidates within one paired standard error of the best
  (standard error of the per-user Recall@K differences on the same users, averaged over seeds, divided by
  float32 Recall@K) are a tie: the one with the higher rel NDCG@10 wins, then the faster to encode, and the
  result says so.

The test split is never read here: the report evaluates the chosen codec on it once.

:class:`TuneResult` saves as JSON (``save`` / ``load``); :func:`resolve_auto_spec` turns ``"auto16"`` into the
spec it chose for 16 bytes.

>>> candidate_specs(16, 64)
['pq16', 'opq16,pq16', 'rq16', 'rq16-r', 'rq16-n', 'rq16-r-n', 'apq16-t0.3', 'qat-rq16']
>>> candidate_specs(12, 64)
['rq12', 'rq12-r', 'rq12-n', 'rq12-r-n', 'rabitq', 'qat-rq12']
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.codecs import make_codec
from reelpack.codecs.base import Codec
from reelpack.codecs.rabitq import FACTOR_BYTES as RABITQ_FACTOR_BYTES
from reelpack.codecs.rabitq import MAX_BITS as RABITQ_MAX_BITS
from reelpack.data.exposure import DEFAULT_EXPOSURE_K, exposure_counts, weights_from_exposure
from reelpack.data.interactions import (
    MAX_POPULARITY_BETA,
    MIN_VALIDATION_USERS,
    Split,
    check_validation_split,
    popularity_weights,
)
from reelpack.errors import (
    CodecSpecError,
    DataNotFoundError,
    DimensionMismatchError,
    InvalidInputError,
    NoCandidateError,
    ReelpackError,
    SerializationError,
    TrainingError,
    ValidationTooSmallError,
)
from reelpack.metrics.quality import hit_matrix
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from reelpack.util.atomic import atomic_write_text
from reelpack.util.validate import as_float_matrix

__all__ = [
    "CandidateFamily",
    "CANDIDATE_FAMILIES",
    "PCA_MIN_DIM",
    "candidate_specs",
    "is_finetune_candidate",
    "CandidateRow",
    "BudgetChoice",
    "TuneResult",
    "tune_codecs",
    "validation_users",
    "resolve_auto_spec",
    "parse_auto_spec",
    "candidate_label",
    "parse_candidate",
    "parse_weighted_candidate",
    "DEFAULT_POPULARITY_BETAS",
    "DEFAULT_EXPOSURE_BETAS",
    "TUNE_FORMAT",
    "TUNE_VERSION",
]

TUNE_FORMAT = "reelpack-tune"
TUNE_VERSION = 3
#: versions :meth:`TuneResult.from_json` reads (1: written before popularity-weighted fits, its beta is 0; 2: before
#: exposure-weighted fits, its exposure beta is 0)
TUNE_READ_VERSIONS = (1, 2, 3)
#: popularity exponents :func:`tune_codecs` fits every candidate with by default (0: uniform training rows)
DEFAULT_POPULARITY_BETAS = (0.0, 1.0)
#: exposure exponents :func:`tune_codecs` also fits every candidate with by default (none: opt in)
DEFAULT_EXPOSURE_BETAS: tuple[float, ...] = ()
_CANDIDATE = re.compile(r"(?P<spec>[^@]+)@(?P<kind>pop|expo)(?P<beta>[0-9]+(\.[0-9]+)?)")
#: a candidate's fit weighting: ("pop", beta) popularity weights, ("expo", beta) exposure weights; beta 0: uniform
Weighting = tuple[str, float]
_UNIFORM: Weighting = ("pop", 0.0)
NDCG_CUTOFF = 10
_AUTO = re.compile(r"auto(?P<b>[0-9]{1,6})")


# ================================================================================================
# candidates
# ================================================================================================
@dataclass(frozen=True)
class CandidateFamily:
    """One template of candidate specs.

    Attributes:
        name: a label (the codec family, or a variant of it).
        spec: ``spec(budget, dim)`` -> the family's spec whose codes are exactly ``budget`` bytes per vector at
            dimension ``dim``, or ``None`` where the family has no such size. The width is the family's own
            layout arithmetic; :func:`tune_codecs` checks it against the fitted codec's ``bytes_per_vector``.
    """

    name: str
    spec: Callable[[int, int], str | None]


#: Smallest dimension at which the ``rq ... -pD`` (PCA projection) candidates are tried.
PCA_MIN_DIM = 256


def _divides(budget: int, dim: int) -> bool:
    return dim % budget == 0


def _rabitq_spec(budget: int, dim: int) -> str | None:
    """``rabitq`` (1 bit/dim): ceil(d/8) sign bytes + factors; ``rabitqB``: + ceil(d(B-1)/8) bytes + factors."""
    signs = -(-dim // 8) + RABITQ_FACTOR_BYTES
    for bits in range(1, RABITQ_MAX_BITS + 1):
        width = signs if bits == 1 else signs + -(-(dim * (bits - 1)) // 8) + RABITQ_FACTOR_BYTES
        if width == budget:
            return "rabitq" if bits == 1 else f"rabitq{bits}"
    return None


#: The candidate templates, in the order candidates are listed (and fitted). Add a family here, e.g.
#: ``CandidateFamily("rq-r", lambda b, d: f"rq{b}-r")``; specs the registry refuses are skipped.
CANDIDATE_FAMILIES: tuple[CandidateFamily, ...] = (
    CandidateFamily("pq", lambda b, d: f"pq{b}" if _divides(b, d) else None),
    CandidateFamily("opq", lambda b, d: f"opq{b},pq{b}" if _divides(b, d) else None),
    CandidateFamily("rq", lambda b, d: f"rq{b}"),
    CandidateFamily("rq-r", lambda b, d: f"rq{b}-r"),
    CandidateFamily("rq-n", lambda b, d: f"rq{b}-n"),  # unit-norm items only (others fail to fit: skipped)
    CandidateFamily("rq-r-n", lambda b, d: f"rq{b}-r-n"),
    # high dimensions (512-d video embeddings): the stages on the top d/4 or d/2 PCA coordinates encode in a
    # fraction of the full-dimension time; on amazon-book's 512-d embeddings the full-dimension rq-n / rq-r-n
    # above still won every budget on validation (BENCHMARKS 1.6), so both kinds stay candidates
    CandidateFamily("rq-p-n", lambda b, d: f"rq{b}-p{d // 4}-n" if d >= PCA_MIN_DIM else None),
    CandidateFamily("rq-r-p-n", lambda b, d: f"rq{b}-r-p{d // 4}-n" if d >= PCA_MIN_DIM else None),
    CandidateFamily("rq-p-n-half", lambda b, d: f"rq{b}-p{d // 2}-n" if d >= PCA_MIN_DIM else None),
    CandidateFamily("sq4", lambda b, d: "sq4" if (d + 1) // 2 == b else None),
    CandidateFamily("sq8", lambda b, d: "sq8" if d == b else None),
    CandidateFamily("rabitq", _rabitq_spec),
    CandidateFamily("apq", lambda b, d: f"apq{b}-t0.3" if _divides(b, d) else None),
    CandidateFamily("qat-rq", lambda b, d: f"qat-rq{b}"),  # fine-tuned as well (is_finetune_candidate)
)


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _specs_at(budget: int, dim: int) -> list[str]:
    out: list[str] = []
    for family in CANDIDATE_FAMILIES:
        spec = family.spec(budget, dim)
        if spec is None:
            continue
        try:
            spec = make_codec(spec).spec  # canonical form; values the registry refuses are skipped
        except CodecSpecError:
            continue
        if spec not in out:
            out.append(spec)
    return out


def _nearest_sizes(budget: int, dim: int) -> tuple[int | None, int | None]:
    """The largest size below and the smallest above ``budget`` at which some candidate exists."""
    below = next((b for b in range(budget - 1, 0, -1) if _specs_at(b, dim)), None)
    above = next((b for b in range(budget + 1, max(budget, 2 * dim + 64) + 1) if _specs_at(b, dim)), None)
    return below, above


def candidate_specs(budget: int, dim: int) -> list[str]:
    """Canonical specs of :data:`CANDIDATE_FAMILIES` whose codes are exactly ``budget`` bytes at ``dim``.

    Templates without a size of ``budget`` at ``dim`` (PQ needs ``budget`` to divide ``dim``, ``sq8`` is
    ``dim`` bytes...) and specs the registry refuses (more than 64 residual codebooks...) are skipped.

    Raises:
        InvalidInputError: ``budget`` or ``dim`` is not a positive integer.
        NoCandidateError: no candidate is left; the message names the budget, the dimension and the nearest
            sizes that have candidates.
    """
    budget = _check_positive(budget, "budget")
    dim = _check_positive(dim, "dim")
    specs = _specs_at(budget, dim)
    if not specs:
        below, above = _nearest_sizes(budget, dim)
        near = " or ".join(f"{b} bytes ({', '.join(_specs_at(b, dim)[:3])})" for b in (below, above) if b is not None)
        raise NoCandidateError(
            f"no candidate codec is exactly {budget} bytes per item at d={dim}; nearest sizes: {near or 'none'}"
        )
    return specs


def candidate_label(spec: str, popularity_beta: float = 0.0, exposure_beta: float = 0.0) -> str:
    """A candidate's name: ``spec`` for a uniform fit, ``"spec@popB"`` for one with popularity weights of exponent
    ``B`` (``candidate_label("rq8-n", 1.0) == "rq8-n@pop1"``), ``"spec@expoB"`` for exposure weights
    (``candidate_label("rq8-n", 0, 1.0) == "rq8-n@expo1"``)."""
    if float(exposure_beta) != 0.0:
        return f"{spec}@expo{float(exposure_beta):g}"
    return spec if float(popularity_beta) == 0.0 else f"{spec}@pop{float(popularity_beta):g}"


def parse_candidate(text: str) -> tuple[str, float | None]:
    """``(canonical spec, beta)`` of a candidate name: ``"rq8-n@pop1"`` -> ``("rq8-n", 1.0)``; a plain spec gives
    ``beta = None`` (fitted with every exponent of ``popularity_betas``). For exposure-weighted names
    (``"rq8-n@expo1"``) use :func:`parse_weighted_candidate`.

    Raises:
        CodecSpecError: a bad spec, a ``@pop`` exponent outside [0, MAX_POPULARITY_BETA], or an ``@expo`` name.
    """
    spec, weighting = parse_weighted_candidate(text)
    if weighting is None:
        return spec, None
    if weighting[0] != "pop":
        raise CodecSpecError(f"{text!r} is exposure-weighted: read it with parse_weighted_candidate")
    return spec, weighting[1]


def parse_weighted_candidate(text: str) -> tuple[str, Weighting | None]:
    """``(canonical spec, weighting)`` of a candidate name: ``"rq8-n@pop1"`` -> ``("rq8-n", ("pop", 1.0))``,
    ``"rq8-n@expo0.5"`` -> ``("rq8-n", ("expo", 0.5))``; a plain spec gives ``None`` (fitted with every exponent of
    ``popularity_betas`` and ``exposure_betas``).

    Raises:
        CodecSpecError: a bad spec, or an exponent outside [0, MAX_POPULARITY_BETA].
    """
    if not isinstance(text, str):
        raise CodecSpecError(f"candidate must be a string, got {type(text).__name__}")
    t = text.strip().lower()
    m = _CANDIDATE.fullmatch(t)
    if m is None:
        if "@" in t:
            raise CodecSpecError(f"{text!r}: a candidate is a codec spec, or spec@popB / spec@expoB with B the "
                                 f"popularity or exposure exponent in [0, {MAX_POPULARITY_BETA:g}] (e.g. rq8-n@pop1)")  # fmt: skip
        return make_codec(t).spec, None
    beta = float(m.group("beta"))
    if not 0.0 <= beta <= MAX_POPULARITY_BETA:
        what = "popularity" if m.group("kind") == "pop" else "exposure"
        raise CodecSpecError(f"{text!r}: the {what} exponent must lie in [0, {MAX_POPULARITY_BETA:g}]")
    kind = m.group("kind") if beta > 0 else "pop"  # any exponent 0 is the uniform fit
    return make_codec(m.group("spec")).spec, (kind, beta)


def _weighting_order(w: Weighting) -> tuple[bool, float]:
    """Candidates' order: uniform and popularity weights by exponent, then exposure weights by exponent."""
    return (w[0] == "expo", w[1])


def _check_betas(betas: Sequence[float], name: str = "popularity_betas", allow_empty: bool = False) -> list[float]:
    try:
        out = sorted({float(b) for b in betas})
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be numbers, got {betas!r}") from None
    if (not out and not allow_empty) or any(not 0.0 <= b <= MAX_POPULARITY_BETA for b in out):
        raise InvalidInputError(f"{name} must be {'' if allow_empty else 'at least one number '}in "
                                f"[0, {MAX_POPULARITY_BETA:g}], got {list(betas)!r}")  # fmt: skip
    return out


def is_finetune_candidate(spec: str) -> bool:
    """True for ``"qat-..."`` specs: :func:`tune_codecs` also fine-tunes their codebooks."""
    return make_codec(spec).family == "qat"


# ================================================================================================
# result
# ================================================================================================
_SUMMARY_KEYS = ("rel_recall", "rel_ndcg", "recall", "ndcg", "fit_s", "encode_s")


@dataclass
class CandidateRow:
    """One candidate at one budget.

    Attributes:
        spec: canonical codec spec.
        budget: bytes per item.
        seeds: the fitting seeds.
        per_seed: one dict per seed: ``seed``, ``rel_recall``, ``rel_ndcg``, ``recall``, ``ndcg``, ``fit_s``,
            ``encode_s``; fine-tune candidates add ``untouched_rel_recall`` / ``finetuned_rel_recall`` (and NDCG)
            and ``finetune_s``. The plain keys hold the variant kept.
        mean, std, min, max: of the plain keys over the seeds (std: sample std, 0 for one seed).
        finetune: None for codecs that are not fine-tuned; else ``"kept: ..."``, ``"dropped: ..."``,
            ``"fine-tune diverged: kept untouched ..."`` or ``"skipped: ..."`` with the figures.
        finetuned: True when the figures above are those of the fine-tuned codebooks.
        error: why the candidate could not be fitted (its figures are then empty and it is not chosen).
        popularity_beta: the codec was fitted with :func:`reelpack.data.popularity_weights` of this exponent
            (0: uniform training rows).
        exposure_beta: the codec was fitted with :func:`reelpack.data.exposure_weights` of this exponent (0: not
            exposure-weighted; never both).
    """

    spec: str
    budget: int
    seeds: list[int]
    per_seed: list[dict[str, float]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)
    finetune: str | None = None
    finetuned: bool = False
    error: str | None = None
    popularity_beta: float = 0.0
    exposure_beta: float = 0.0

    @property
    def label(self) -> str:
        """The candidate's name: the spec, ``@popB`` / ``@expoB`` added for a weighted fit (:func:`candidate_label`)."""
        return candidate_label(self.spec, self.popularity_beta, self.exposure_beta)

    def summarise(self) -> None:
        """Fill ``mean`` / ``std`` / ``min`` / ``max`` from ``per_seed``."""
        for key in _SUMMARY_KEYS:
            vals = np.array([float(s[key]) for s in self.per_seed], np.float64)
            if not vals.size:
                continue
            self.mean[key] = float(vals.mean())
            self.std[key] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            self.min[key] = float(vals.min())
            self.max[key] = float(vals.max())


@dataclass
class BudgetChoice:
    """The codec chosen for one budget.

    Attributes:
        budget: bytes per item.
        spec: the chosen spec.
        rel_recall, rel_ndcg: its mean validation figures (relative to float32).
        finetuned: the figures are those of fine-tuned codebooks (``pack`` fits the codec untouched).
        tie: other candidates lie within one paired standard error of the best rel Recall.
        tied_with: those candidates' labels (:func:`candidate_label`).
        runner_up: the second-best candidate's label by rel Recall (None with one candidate).
        paired_se: the paired standard error (rel scale) between the best and the runner-up.
        reason: one sentence saying how the choice was made.
        popularity_beta: fit the codec with ``weights=popularity_weights(item_counts, popularity_beta)`` (0:
            uniform), as it was fitted on validation.
        exposure_beta: fit the codec with ``weights=exposure_weights(user_emb, item_emb, exposure_k, exposure_beta)``
            (0: not exposure-weighted; :attr:`TuneResult.exposure_k`).
    """

    budget: int
    spec: str
    rel_recall: float
    rel_ndcg: float
    finetuned: bool = False
    tie: bool = False
    tied_with: list[str] = field(default_factory=list)
    runner_up: str | None = None
    paired_se: float | None = None
    reason: str = ""
    popularity_beta: float = 0.0
    exposure_beta: float = 0.0

    @property
    def label(self) -> str:
        """The chosen candidate's name (:func:`candidate_label`)."""
        return candidate_label(self.spec, self.popularity_beta, self.exposure_beta)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class TuneResult:
    """What :func:`tune_codecs` measured and chose; JSON with :meth:`to_json` / :meth:`save`.

    Attributes:
        dim: embedding dimension.
        k: the Recall cut-off (``rel_recall`` is Recall@k relative to float32).
        budgets: the budgets, in bytes per item.
        seeds: the fitting seeds.
        choices: budget -> :class:`BudgetChoice`.
        rows: every :class:`CandidateRow`, budget by budget, in candidate order.
        float32: float32 validation ``recall`` (@k) and ``ndcg`` (@10).
        data: ``source``, ``data_hash``, ``synthetic``, ``split_seed``, ``test_fraction``,
            ``validation_fraction``, ``validation_seed``.
        n_validation_users: users the figures average over.
        n_items: catalog size.
        finetune: whether ``qat-`` candidates were fine-tuned.
        skipped: given candidates that match no budget: ``{"spec", "bytes", "reason"}``.
        created_at: UTC date, ISO 8601.
        provenance: free JSON-able notes (the embedding model, the command).
        exposure_k: the top-K of :func:`reelpack.data.exposure_weights` for ``@expo`` candidates.
        fitted: with ``keep_fitted=True`` only (never saved): ``spec -> [(seed, codec, codes), ...]``.
    """

    dim: int
    k: int
    budgets: list[int]
    seeds: list[int]
    choices: dict[int, BudgetChoice]
    rows: list[CandidateRow]
    float32: dict[str, float]
    data: dict[str, Any]
    n_validation_users: int
    n_items: int
    finetune: bool = True
    skipped: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    exposure_k: int = DEFAULT_EXPOSURE_K
    fitted: dict[str, list[tuple[int, Codec, np.ndarray]]] = field(default_factory=dict, repr=False, compare=False)

    def choice(self, budget: int) -> BudgetChoice:
        """The :class:`BudgetChoice` of ``budget``; InvalidInputError (naming ``reelpack tune``) if not tuned."""
        try:
            return self.choices[int(budget)]
        except KeyError:
            have = ", ".join(str(b) for b in sorted(self.choices)) or "none"
            raise InvalidInputError(
                f"this tune result holds budgets {have} bytes at d={self.dim}, not {budget}; "
                f"run `reelpack tune --dim {self.dim} --budget {budget}`"
            ) from None

    def rows_for(self, budget: int) -> list[CandidateRow]:
        """The candidate rows of ``budget``."""
        return [r for r in self.rows if r.budget == int(budget)]

    # ---- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Strict JSON (non-finite floats as null)."""
        doc = {
            "format": TUNE_FORMAT,
            "version": TUNE_VERSION,
            "dim": self.dim,
            "k": self.k,
            "budgets": list(self.budgets),
            "seeds": list(self.seeds),
            "finetune": self.finetune,
            "created_at": self.created_at,
            "data": self.data,
            "n_validation_users": self.n_validation_users,
            "n_items": self.n_items,
            "float32": self.float32,
            "choices": {str(b): asdict(c) for b, c in sorted(self.choices.items())},
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
            "provenance": self.provenance,
            "exposure_k": self.exposure_k,
        }
        return json.dumps(_finite_or_none(doc), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> TuneResult:
        """Parse :meth:`to_json` output.

        Raises:
            SerializationError: not JSON, not a tune result, another version, or a field of the wrong type.
        """
        try:
            doc = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise SerializationError(f"tune result is not JSON: {str(exc)[:200]}") from None
        if not isinstance(doc, dict) or doc.get("format") != TUNE_FORMAT:
            raise SerializationError(f"not a reelpack tune result (expected \"format\": \"{TUNE_FORMAT}\")")
        if doc.get("version") not in TUNE_READ_VERSIONS:
            raise SerializationError(
                f"tune result version {doc.get('version')!r} is not supported (this reader knows {TUNE_VERSION}); "
                "run `reelpack tune` again"
            )
        try:
            dim = _int_field(doc, "dim")
            choices: dict[int, BudgetChoice] = {}
            raw_choices = _field(doc, "choices", dict)
            for key, c in raw_choices.items():
                choice = BudgetChoice(**_check_keys(c, BudgetChoice, "choice"))
                if str(choice.budget) != key or not isinstance(choice.spec, str):
                    raise SerializationError(f"tune result choice {key!r} is inconsistent")
                choice.popularity_beta = _beta_field(choice.popularity_beta, f"choice {key!r}")
                choice.exposure_beta = _beta_field(choice.exposure_beta, f"choice {key!r}", "exposure_beta")
                _one_weighting(choice.popularity_beta, choice.exposure_beta, f"choice {key!r}")
                choices[int(choice.budget)] = choice
            rows = [CandidateRow(**_check_keys(r, CandidateRow, "row")) for r in _field(doc, "rows", list)]
            for r in rows:
                r.popularity_beta = _beta_field(r.popularity_beta, f"row {r.spec!r}")
                r.exposure_beta = _beta_field(r.exposure_beta, f"row {r.spec!r}", "exposure_beta")
                _one_weighting(r.popularity_beta, r.exposure_beta, f"row {r.spec!r}")
            return cls(
                dim=dim,
                k=_int_field(doc, "k"),
                budgets=[int(b) for b in _field(doc, "budgets", list)],
                seeds=[int(s) for s in _field(doc, "seeds", list)],
                choices=choices,
                rows=rows,
                float32=_field(doc, "float32", dict),
                data=_field(doc, "data", dict),
                n_validation_users=_int_field(doc, "n_validation_users"),
                n_items=_int_field(doc, "n_items"),
                finetune=bool(doc.get("finetune", True)),
                skipped=_field(doc, "skipped", list),
                created_at=str(doc.get("created_at", "")),
                provenance=_field(doc, "provenance", dict),
                exposure_k=_exposure_k_field(doc),
            )
        except SerializationError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SerializationError(f"tune result is malformed: {type(exc).__name__}: {str(exc)[:200]}") from None

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (the folder is created); returns the path."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TuneResult:
        """Read a saved result.

        Raises:
            DataNotFoundError: no such file.
            SerializationError: unreadable or malformed (see :meth:`from_json`).
        """
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(f"tune result not found: {path} (write one with `reelpack tune`)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SerializationError(f"cannot read tune result {path}: {exc}") from None
        try:
            return cls.from_json(text)
        except SerializationError as exc:
            raise SerializationError(f"{path}: {exc}") from None


def _field(doc: dict, name: str, kind: type) -> Any:
    if name not in doc or not isinstance(doc[name], kind):
        raise SerializationError(f"tune result field {name!r} is missing or not a {kind.__name__}")
    return doc[name]


def _beta_field(value: Any, what: str, name: str = "popularity_beta") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_POPULARITY_BETA:
        raise SerializationError(f"tune result {what} {name} must be a number in [0, {MAX_POPULARITY_BETA}]")
    return float(value)


def _exposure_k_field(doc: dict) -> int:
    if "exposure_k" not in doc:
        return DEFAULT_EXPOSURE_K
    v = _int_field(doc, "exposure_k")
    if v < 1:
        raise SerializationError(f"tune result field 'exposure_k' must be a positive integer, got {v}")
    return v


def _one_weighting(popularity_beta: float, exposure_beta: float, what: str) -> None:
    if popularity_beta > 0 and exposure_beta > 0:
        raise SerializationError(f"tune result {what} has both popularity_beta and exposure_beta; a fit has one")


def _int_field(doc: dict, name: str) -> int:
    v = _field(doc, name, int)
    if isinstance(v, bool) or v < 0:
        raise SerializationError(f"tune result field {name!r} must be a non-negative integer, got {v!r}")
    return v


def _check_keys(obj: Any, cls: type, what: str) -> dict:
    if not isinstance(obj, dict):
        raise SerializationError(f"tune result {what} must be an object")
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    extra = set(obj) - known
    if extra:
        raise SerializationError(f"tune result {what} has unknown fields {sorted(extra)}")
    return obj


# ================================================================================================
# tuning
# ================================================================================================
ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, what)``: steps finished (one per fit or fine-tune), their total, the current step."""


@dataclass
class _Eval:
    metrics: dict[str, float]
    per_user: np.ndarray  # float64 [n_users]: Recall@k of each validation user


def _softmax_finetune_available() -> bool:
    """Whether :mod:`reelpack.models.qat` offers ``QATConfig(objective="softmax")`` and ``positives=``."""
    import inspect
    from dataclasses import fields

    from reelpack.models.qat import QATConfig, finetune_codebooks

    return "objective" in {f.name for f in fields(QATConfig)} and "positives" in inspect.signature(
        finetune_codebooks
    ).parameters


def tune_codecs(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    val_split: Split,
    budgets: Sequence[int],
    candidates: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 50,
    max_users: int | None = None,
    finetune: bool = True,
    progress: ProgressFn | None = None,
    *,
    finetune_epochs: int = 3,
    threads: int = 1,
    min_users: int = MIN_VALIDATION_USERS,
    batch_size: int = 256,
    keep_fitted: bool = False,
    popularity_betas: Sequence[float] = DEFAULT_POPULARITY_BETAS,
    exposure_betas: Sequence[float] = DEFAULT_EXPOSURE_BETAS,
    exposure_k: int = DEFAULT_EXPOSURE_K,
) -> TuneResult:
    """Fit, score and choose a codec per byte budget on a validation split (see the module docstring).

    Args:
        user_emb: float32 [n_users, d], the user tower trained on ``val_split``'s fit part.
        item_emb: float32 [n_items, d], the item tower (the codecs are fitted on it).
        val_split: a validation split (:func:`reelpack.data.validation_split`): ``train_*`` the fit part
            (excluded when ranking), ``test_*`` the validation items.
        budgets: bytes per item, each a positive integer.
        candidates: specs to compare instead of :func:`candidate_specs`; each joins the budget equal to its
            fitted ``bytes_per_vector`` (others are listed in ``skipped``). A plain spec is fitted with every
            exponent of ``popularity_betas`` and ``exposure_betas``; ``"spec@popB"`` / ``"spec@expoB"``
            (:func:`parse_weighted_candidate`) with that weighting only.
        seeds: codec fitting seeds (the spread is over them).
        k: Recall cut-off (NDCG is at 10).
        max_users: evaluate a seeded sample of this many validation users.
        finetune: also fine-tune ``qat-`` candidates.
        progress: ``progress(done, total, what)`` after each fit or fine-tune.
        finetune_epochs: epochs of each fine-tune.
        threads: torch threads of the fine-tune.
        min_users: fewest validation users the choice accepts (:data:`MIN_VALIDATION_USERS`).
        batch_size: users scored at once (memory: ``batch_size * n_items`` float32).
        keep_fitted: keep every fitted codec and its item codes in ``TuneResult.fitted`` (``label -> [(seed,
            codec, codes uint8 [n_items, budget]), ...]``, keyed by :func:`candidate_label`, the fine-tuned ones
            where fine-tuning was kept), so a report can score them on the test split without fitting again. Not
            saved with the result.
        popularity_betas: exponents of the popularity weights each candidate is fitted with (0: uniform rows;
            :func:`reelpack.data.popularity_weights` of ``val_split.item_counts``, the fit part's interactions).
        exposure_betas: exponents of the exposure weights each candidate is also fitted with (none by default;
            :func:`reelpack.data.exposure_weights` of ``user_emb`` and ``item_emb`` with top-``exposure_k``; 0 is
            the uniform fit, already among ``popularity_betas``' when 0 is there).
        exposure_k: the top-K that counts as exposure (:data:`reelpack.data.DEFAULT_EXPOSURE_K`).

    Returns:
        :class:`TuneResult`.

    Raises:
        InvalidInputError: ``val_split`` is not a validation split, or bad arguments.
        DimensionMismatchError: embeddings and split disagree.
        ValidationTooSmallError: fewer than ``min_users`` validation users (after ``max_users``).
        NoCandidateError: a budget has no candidate, or every candidate of a budget failed to fit.
    """
    val_split = check_validation_split(
        val_split,
        refusal="tune must run on a validation split; the test split is for the report "
        "(make one with reelpack.data.validation_split(split))",
    )
    item_emb = as_float_matrix(item_emb, "item_emb")
    dim = int(item_emb.shape[1])
    user_emb = as_float_matrix(user_emb, "user_emb", dim=dim)
    if item_emb.shape[0] != val_split.n_items or user_emb.shape[0] != val_split.n_users:
        raise DimensionMismatchError(
            f"embeddings are {user_emb.shape[0]} users x {item_emb.shape[0]} items, the split has "
            f"{val_split.n_users} users x {val_split.n_items} items"
        )
    if isinstance(budgets, (int, np.integer)):
        budgets = [int(budgets)]
    budgets = sorted({_check_positive(b, "budget") for b in budgets})
    if not budgets:
        raise InvalidInputError("give at least one budget (bytes per item)")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidInputError(f"seeds must be distinct integers, at least one, got {seeds}")
    k = _check_positive(k, "k")
    if k > val_split.n_items or NDCG_CUTOFF > val_split.n_items:
        raise InvalidInputError(
            f"k={k} and NDCG@{NDCG_CUTOFF} need at least that many items; the catalog has {val_split.n_items}"
        )
    finetune_epochs = _check_positive(finetune_epochs, "finetune_epochs")
    betas = _check_betas(popularity_betas)
    expo_betas = _check_betas(exposure_betas, "exposure_betas", allow_empty=True)
    if isinstance(exposure_k, bool) or not isinstance(exposure_k, (int, np.integer)) or exposure_k < 1:
        raise InvalidInputError(f"exposure_k must be a positive integer, got {exposure_k!r}")
    plain_weightings: list[Weighting] = sorted({("pop", b) for b in betas}
                                               | {("expo", b) if b > 0 else _UNIFORM for b in expo_betas},
                                               key=_weighting_order)  # fmt: skip
    users = validation_users(val_split, max_users, min_users)

    # ---- candidates per budget (user candidates: by their fitted width) -------------------------------
    first_fits: dict[str, tuple[Codec, float]] = {}  # spec -> (codec fitted with seeds[0], seconds)
    skipped: list[dict[str, Any]] = []
    given: dict[str, set[Weighting]] = {}  # spec -> the weightings named with @popB / @expoB
    if candidates is None:
        per_budget = {b: candidate_specs(b, dim) for b in budgets}
    else:
        if isinstance(candidates, str):
            raise InvalidInputError("candidates must be a list of specs, not one string")
        plain: list[str] = []
        for c in candidates:
            spec, weighting = parse_weighted_candidate(c)
            if weighting is None:
                given.setdefault(spec, set()).update(plain_weightings)
            else:
                given.setdefault(spec, set()).add(weighting)
            if spec not in plain:
                plain.append(spec)
        per_budget = _assign_candidates(plain, budgets, dim, item_emb, seeds[0], first_fits, skipped)
    pairs = {b: [(s, w) for s in specs for w in sorted(given.get(s, plain_weightings), key=_weighting_order)] for b, specs in per_budget.items()}
    wanted = {w for got in pairs.values() for _, w in got if w[1] > 0}
    exposure = exposure_counts(user_emb, item_emb, exposure_k) if any(w[0] == "expo" for w in wanted) else None
    weights = {w: popularity_weights(val_split.item_counts, w[1]) if w[0] == "pop"
               else weights_from_exposure(exposure, w[1]) for w in wanted}  # type: ignore[arg-type]  # fmt: skip

    ks = tuple(sorted({NDCG_CUTOFF, k}))
    reference = _evaluate(dense_score_fn(user_emb, item_emb), val_split, users, ks, k, batch_size)
    ref = {"recall": reference.metrics[f"recall@{k}"], "ndcg": reference.metrics[f"ndcg@{NDCG_CUTOFF}"]}
    fine = {s for specs in per_budget.values() for s in specs if finetune and is_finetune_candidate(s)}
    ready = bool(fine) and _softmax_finetune_available()
    steps = sum(len(seeds) * (2 if s in fine else 1) for got in pairs.values() for s, _ in got)
    run = _Run(user_emb, item_emb, val_split, users, ks, k, batch_size, ref,
               positives=val_split.train_pairs() if ready else None, finetune_ready=ready,
               finetune_epochs=finetune_epochs, threads=threads, progress=progress, total=steps,
               keep_fitted=bool(keep_fitted))  # fmt: skip

    rows: list[CandidateRow] = []
    choices: dict[int, BudgetChoice] = {}
    for budget in budgets:
        per_user: dict[str, np.ndarray] = {}
        budget_rows: list[CandidateRow] = []
        for spec, weighting in pairs[budget]:
            row, users_recall = run.candidate(spec, budget, seeds, spec in fine,
                                              first_fits.pop(spec, None) if weighting[1] == 0 else None,
                                              weighting, weights.get(weighting))  # fmt: skip
            budget_rows.append(row)
            if users_recall is not None:
                per_user[row.label] = users_recall
        rows.extend(budget_rows)
        choices[budget] = _choose(budget, budget_rows, per_user, ref["recall"], k)

    return TuneResult(
        dim=dim,
        k=k,
        budgets=list(budgets),
        seeds=list(seeds),
        choices=choices,
        rows=rows,
        float32={"recall": float(ref["recall"]), "ndcg": float(ref["ndcg"])},
        data={
            "source": val_split.label,
            "data_hash": val_split.data_hash,
            "synthetic": bool(val_split.synthetic),
            "split_seed": int(val_split.seed),
            "test_fraction": float(val_split.test_fraction),
            "validation_fraction": float(val_split.validation_fraction),
            "validation_seed": int(val_split.validation_seed),
        },
        n_validation_users=int(len(users)),
        n_items=int(val_split.n_items),
        finetune=bool(finetune),
        skipped=skipped,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        exposure_k=int(exposure_k),
        fitted=run.fitted,
    )


@dataclass
class _Run:
    """What every candidate of one :func:`tune_codecs` call is measured with."""

    user_emb: np.ndarray
    item_emb: np.ndarray
    split: Split
    users: np.ndarray
    ks: tuple[int, ...]
    k: int
    batch_size: int
    ref: dict[str, float]  # float32 "recall" (@k) and "ndcg" (@10) on the same users
    positives: tuple[np.ndarray, np.ndarray] | None
    finetune_ready: bool
    finetune_epochs: int
    threads: int
    progress: ProgressFn | None
    total: int
    keep_fitted: bool = False
    done: int = 0
    fitted: dict[str, list[tuple[int, Codec, np.ndarray]]] = field(default_factory=dict)

    def step(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def measure(self, codec: Codec, codes: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """(rel_recall, rel_ndcg, recall, ndcg) and the per-user Recall@k float64 [n_users] of ``codec``."""
        ev = _evaluate(_codec_score_fn(codec, codes, self.user_emb), self.split, self.users, self.ks, self.k,
                       self.batch_size)  # fmt: skip
        r, n = ev.metrics[f"recall@{self.k}"], ev.metrics[f"ndcg@{NDCG_CUTOFF}"]
        return {"rel_recall": r / self.ref["recall"] if self.ref["recall"] else float("nan"),
                "rel_ndcg": n / self.ref["ndcg"] if self.ref["ndcg"] else float("nan"),
                "recall": r, "ndcg": n}, ev.per_user  # fmt: skip

    def candidate(self, spec: str, budget: int, seeds: list[int], finetune: bool,
                  first_fit: tuple[Codec, float] | None, weighting: Weighting = _UNIFORM,
                  weights: np.ndarray | None = None) -> tuple[CandidateRow, np.ndarray | None]:  # fmt: skip
        """The row of ``spec`` (fitted with ``weights``, the popularity or exposure weights of ``weighting``) over
        ``seeds`` and its per-user Recall@k averaged over them (None if it failed)."""
        kind, beta = weighting
        row = CandidateRow(spec=spec, budget=budget, seeds=list(seeds),
                           popularity_beta=float(beta) if kind == "pop" else 0.0,
                           exposure_beta=float(beta) if kind == "expo" else 0.0)  # fmt: skip
        name = row.label
        untouched: list[np.ndarray] = []
        tuned: list[np.ndarray] = []
        fitted_untouched: list[tuple[int, Codec, np.ndarray]] = []
        fitted_tuned: list[tuple[int, Codec, np.ndarray]] = []
        status: str | None = None
        if finetune and not self.finetune_ready:
            status = ("skipped: reelpack.models.qat has no softmax objective (QATConfig(objective='softmax'), "
                      "positives=); kept untouched")  # fmt: skip
        for i, seed in enumerate(seeds):
            try:
                if i == 0 and first_fit is not None:
                    codec, fit_s = first_fit
                else:
                    t0 = time.perf_counter()
                    codec = make_codec(spec).fit(self.item_emb, seed=seed, weights=weights)
                    fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                codes = codec.encode(self.item_emb)
                encode_s = time.perf_counter() - t0
            except ReelpackError as exc:
                row.error, row.per_seed = f"fit failed (seed {seed}): {exc}", []
                self.step(f"{name} (failed)")
                return row, None
            if codec.bytes_per_vector != budget:
                raise CodecSpecError(
                    f"candidate {spec} is {codec.bytes_per_vector} bytes per vector at d={codec.dim}, not the budget "
                    f"{budget}: its template in reelpack.models.tune.CANDIDATE_FAMILIES is wrong"
                )
            figures, per_user = self.measure(codec, codes)
            untouched.append(per_user)
            kept_untouched = (seed, codec, codes)
            kept_tuned = None
            entry: dict[str, float] = {"seed": seed, **figures, "fit_s": fit_s, "encode_s": encode_s}
            self.step(f"{name} seed {seed}")
            if finetune:
                entry["untouched_rel_recall"], entry["untouched_rel_ndcg"] = entry["rel_recall"], entry["rel_ndcg"]
                if status is None:
                    try:
                        t0 = time.perf_counter()
                        ft = _finetune(self.user_emb, self.item_emb, codec, codes, self.positives, seed,
                                       self.finetune_epochs, self.threads)  # fmt: skip
                        entry["finetune_s"] = time.perf_counter() - t0
                        f, per_user = self.measure(ft.codec, ft.codes)
                        tuned.append(per_user)
                        kept_tuned = (seed, ft.codec, ft.codes)
                        entry.update({f"finetuned_{key}": value for key, value in f.items()})
                    except TrainingError as exc:  # TrainingDivergedError included
                        status, tuned = f"fine-tune diverged: kept untouched ({exc})", []
                self.step(f"{name} seed {seed} fine-tune")
            row.per_seed.append(entry)
            if self.keep_fitted:
                fitted_untouched.append(kept_untouched)
                if kept_tuned is not None:
                    fitted_tuned.append(kept_tuned)
        chosen = untouched
        if finetune and status is None:
            ft_mean = float(np.mean([e["finetuned_rel_recall"] for e in row.per_seed]))
            un_mean = float(np.mean([e["untouched_rel_recall"] for e in row.per_seed]))
            if ft_mean > un_mean:
                status = f"kept: fine-tuned rel R@{self.k} {ft_mean:.4f} > untouched {un_mean:.4f}"
                row.finetuned, chosen = True, tuned
                for e in row.per_seed:
                    e.update({key: e[f"finetuned_{key}"] for key in ("rel_recall", "rel_ndcg", "recall", "ndcg")})
            else:
                status = f"dropped: fine-tuned rel R@{self.k} {ft_mean:.4f} <= untouched {un_mean:.4f}"
        row.finetune = status if finetune else None
        row.summarise()
        if self.keep_fitted:
            self.fitted[name] = fitted_tuned if row.finetuned and len(fitted_tuned) == len(seeds) else fitted_untouched
        return row, np.mean(chosen, axis=0)


def validation_users(val_split: Split, max_users: int | None = None, min_users: int = MIN_VALIDATION_USERS) -> np.ndarray:
    """int64 user indexes :func:`tune_codecs` scores: the validation users, a seeded sample of ``max_users``.

    Raises:
        ValidationTooSmallError: fewer than ``min_users`` remain (the message says how many are needed).
    """
    users = val_split.eval_users()
    if max_users is not None:
        max_users = _check_positive(max_users, "max_users")
        if max_users < len(users):
            rng = np.random.default_rng([int(val_split.validation_seed), 0x7E5E])
            users = np.sort(rng.choice(users, max_users, replace=False))
    if len(users) < int(min_users):
        cut = f" (--max-users {max_users})" if max_users is not None and max_users < val_split.eval_users().size else ""
        raise ValidationTooSmallError(
            f"the validation split gives {len(users)} users with validation items{cut}; choosing a codec needs at "
            f"least {int(min_users)} (use more users or more data, or a larger validation fraction)",
            users=len(users),
            needed=int(min_users),
        )
    return users


def _assign_candidates(
    candidates: Sequence[str],
    budgets: list[int],
    dim: int,
    item_emb: np.ndarray,
    seed: int,
    first_fits: dict[str, tuple[Codec, float]],
    skipped: list[dict[str, Any]],
) -> dict[int, list[str]]:
    """Given specs grouped by their width at ``dim``: a template's width when a template gives the spec at one of
    the budgets, else the width of a fit on the items (kept in ``first_fits`` for the first seed)."""
    if isinstance(candidates, str):
        raise InvalidInputError("candidates must be a list of specs, not one string")
    specs: list[str] = []
    for s in candidates:
        c = make_codec(s).spec  # a bad spec is the caller's error (CodecSpecError)
        if c not in specs:
            specs.append(c)
    if not specs:
        raise InvalidInputError("give at least one candidate spec")
    known = {s: b for b in budgets for s in _specs_at(b, dim)}
    per_budget: dict[int, list[str]] = {b: [] for b in budgets}
    widths: dict[str, int] = {}
    for spec in specs:
        width = known.get(spec)
        if width is None:
            try:
                t0 = time.perf_counter()
                codec = make_codec(spec).fit(item_emb, seed=seed)
                first_fits[spec] = (codec, time.perf_counter() - t0)
                width = codec.bytes_per_vector
            except ReelpackError as exc:
                skipped.append({"spec": spec, "bytes": None, "reason": f"fit failed: {exc}"})
                continue
        widths[spec] = width
        if width in per_budget:
            per_budget[width].append(spec)
        else:
            first_fits.pop(spec, None)
            skipped.append({"spec": spec, "bytes": int(width), "reason": f"{width} bytes per item at d={dim}: no such budget"})
    for b, got in per_budget.items():
        if not got:
            sizes = ", ".join(f"{s} ({w} B)" for s, w in widths.items()) or "none could be fitted"
            raise NoCandidateError(f"no given candidate is exactly {b} bytes per item at d={dim}; the candidates: {sizes}")
    return per_budget


def _codec_score_fn(codec: Codec, codes: np.ndarray, user_emb: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(users: np.ndarray) -> np.ndarray:
        return codec.score(user_emb[users], codes)

    return score


def _evaluate(score_fn: Callable, split: Split, users: np.ndarray, ks: tuple[int, ...], k: int, batch: int) -> _Eval:
    metrics, ranked = evaluate_scores(score_fn, split, users, ks=ks, batch_size=batch)
    hits = hit_matrix(ranked[:, :k], users, split.test_indptr, split.test_items)
    n_val = np.diff(split.test_indptr)[users]
    return _Eval(metrics, hits.sum(axis=1) / n_val)


def _finetune(user_emb: np.ndarray, item_emb: np.ndarray, codec: Codec, codes: np.ndarray,
              positives: Any, seed: int, epochs: int, threads: int) -> Any:  # fmt: skip
    """The fine-tuned :class:`reelpack.models.qat.QATResult` (softmax objective on the fit interactions; the user
    vectors stay those of the model: only the codebooks, which a pack ships, are tuned)."""
    from reelpack.models.qat import QATConfig, finetune_codebooks

    config = QATConfig(objective="softmax", epochs=epochs, seed=seed, tune_users=False, num_threads=threads,  # type: ignore[call-arg]
                       progress=False)  # fmt: skip
    return finetune_codebooks(user_emb, item_emb, codec, config, codes=codes, positives=positives)  # type: ignore[call-arg]


def _choose(budget: int, rows: list[CandidateRow], per_user: dict[str, np.ndarray], ref_recall: float,
            k: int) -> BudgetChoice:  # fmt: skip
    ok = [r for r in rows if r.error is None and math.isfinite(r.mean.get("rel_recall", float("nan")))]
    if not ok:
        why = "; ".join(f"{r.label}: {r.error}" for r in rows if r.error) or "no finite figures"
        raise NoCandidateError(f"every candidate for {budget} bytes failed: {why}")
    ok.sort(key=lambda r: -r.mean["rel_recall"])
    best = ok[0]
    if len(ok) == 1:
        return BudgetChoice(budget, best.spec, best.mean["rel_recall"], best.mean["rel_ndcg"], best.finetuned,
                            reason="the only candidate that could be fitted",
                            popularity_beta=best.popularity_beta, exposure_beta=best.exposure_beta)  # fmt: skip
    scale = ref_recall if ref_recall else float("nan")

    def paired_se(other: CandidateRow) -> float:
        diff = per_user[best.label] - per_user[other.label]
        return float(diff.std(ddof=1) / math.sqrt(diff.size)) / scale if diff.size > 1 else float("inf")

    se_runner = paired_se(ok[1])
    gaps = {r.label: best.mean["rel_recall"] - r.mean["rel_recall"] for r in ok[1:]}
    tied = [r for r in ok[1:] if gaps[r.label] == 0.0 or gaps[r.label] < paired_se(r)]  # equal figures tie too
    if not tied:
        return BudgetChoice(budget, best.spec, best.mean["rel_recall"], best.mean["rel_ndcg"], best.finetuned,
                            runner_up=ok[1].label, paired_se=se_runner, popularity_beta=best.popularity_beta,
                            exposure_beta=best.exposure_beta,
                            reason=f"highest mean validation rel R@{k}; {ok[1].label} is "
                                   f"{best.mean['rel_recall'] - ok[1].mean['rel_recall']:.4f} below "
                                   f"(paired SE {se_runner:.4f})")  # fmt: skip
    group = [best] + tied
    winner = min(group, key=lambda r: (-r.mean["ndcg"], r.mean["encode_s"]))  # same users: NDCG orders as rel NDCG
    names = "; ".join(r.label for r in group)
    return BudgetChoice(
        budget, winner.spec, winner.mean["rel_recall"], winner.mean["rel_ndcg"], winner.finetuned, tie=True,
        tied_with=[r.label for r in group if r is not winner], runner_up=ok[1].label, paired_se=se_runner,
        popularity_beta=winner.popularity_beta, exposure_beta=winner.exposure_beta,
        reason=f"tie on validation rel R@{k} within one paired SE ({names}); chosen by rel NDCG@{NDCG_CUTOFF}, "
               f"then encode time",
    )  # fmt: skip


# ================================================================================================
# auto specs
# ================================================================================================
def parse_auto_spec(spec: str) -> int | None:
    """The budget of an ``"autoN"`` spec (``"auto16"`` -> 16), or None for any other string."""
    if not isinstance(spec, str):
        raise CodecSpecError(f"codec spec must be a string, got {type(spec).__name__}")
    m = _AUTO.fullmatch(spec.strip().lower())
    return int(m.group("b")) if m else None


def resolve_auto_spec(spec: str, dim: int, tune_result: TuneResult | None) -> str:
    """The spec ``tune_result`` chose for ``"autoN"`` (N bytes per item) at dimension ``dim``.

    Raises:
        CodecSpecError: ``spec`` is not ``autoN`` with N >= 1.
        NoCandidateError: no codec is N bytes at ``dim`` (and the result holds no choice for N).
        InvalidInputError: no tune result, or one for another dimension or without budget N (the message
            gives the ``reelpack tune`` command to run); DimensionMismatchError for another dimension.
    """
    budget = parse_auto_spec(spec)
    if budget is None or budget < 1:
        raise CodecSpecError(f"{spec!r} is not an auto spec: write autoN, N the bytes per item (e.g. auto16)")
    dim = _check_positive(dim, "dim")
    command = f"`reelpack tune --dim {dim} --budget {budget}`"
    if tune_result is not None and tune_result.dim == dim and budget in tune_result.choices:
        return tune_result.choices[budget].spec
    candidate_specs(budget, dim)  # NoCandidateError when no codec can be `budget` bytes at `dim`
    if tune_result is None:
        raise InvalidInputError(f"{spec} picks the codec that validation chose for {budget} bytes per item: "
                                f"run {command} and pass its JSON with --tune")  # fmt: skip
    if tune_result.dim != dim:
        raise DimensionMismatchError(f"the tune result is for d={tune_result.dim}, the embeddings have d={dim}; "
                                     f"run {command}")  # fmt: skip
    return tune_result.choice(budget).spec  # InvalidInputError naming the command
