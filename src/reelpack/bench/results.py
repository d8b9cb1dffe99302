"""The results of a bench run: :class:`BenchResult`, its JSON form and provenance, and :func:`load_results`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError

__all__ = ["BenchResult", "RESULTS_SCHEMA_VERSION", "load_results", "provenance"]

RESULTS_SCHEMA_VERSION = 3
"""Version 2 added ``robust_rel_recall@K``, ``engineering_checks`` per row and ``extra.robustness``/``extra.contest``.
Version 3 times ``query_ms`` one query at a time through each method's single-query path (median over a
seeded user sample, with ``query_ms_p90``, ``latency_path``, ``latency_users``, ``latency_overlap@K``),
where version 2 divided the batched ranking time by the users (now ``batch_ms_per_user``)."""


@dataclass
class BenchResult:
    """Rows (one dict per method) plus the provenance of the run."""

    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    schema_version: int = RESULTS_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=_json_default)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


def _json_default(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def provenance(split: Split, dim: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Command, versions, data identity and machine of a run."""
    import faiss
    import numba

    import reelpack

    versions = {"reelpack": reelpack.__version__, "numpy": np.__version__, "faiss": faiss.__version__}
    versions["numba"] = numba.__version__
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    out = {
        "command": " ".join(["reelpack", *sys.argv[1:]]) if sys.argv and "reelpack" in sys.argv[0] else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": split.label,
        "data_hash": split.data_hash,
        "synthetic": split.synthetic,
        "n_users": split.n_users,
        "n_items": split.n_items,
        "split_seed": split.seed,
        "test_fraction": split.test_fraction,
        "dim": dim,
        "versions": versions,
        "machine": _machine(),
    }
    out.update(extra or {})
    return out


def load_results(path: str | os.PathLike) -> BenchResult:
    """Read a results JSON written by :func:`write_results`; refuse other schema versions clearly."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        from reelpack.errors import DataNotFoundError

        raise DataNotFoundError(f"results file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{p} is not a reelpack results file (a JSON object with 'schema_version' and 'rows')")
    version = data.get("schema_version")
    if version != RESULTS_SCHEMA_VERSION:
        older = isinstance(version, int) and not isinstance(version, bool) and version < RESULTS_SCHEMA_VERSION
        what = "written by an older reelpack" if older else ("missing" if version is None else "unknown")
        raise InvalidInputError(
            f"{p} has results schema version {version!r} ({what}); this reelpack reads only schema version "
            f"{RESULTS_SCHEMA_VERSION}: re-run `reelpack bench` with this version to get a version-"
            f"{RESULTS_SCHEMA_VERSION} file (it times query_ms one query at a time through each method's "
            "single-query path, and has the robustness and engineering-check fields)"
        )
    rows, prov = data.get("rows"), data.get("provenance")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows) or not isinstance(prov, dict):
        raise InvalidInputError(f"{p}: results schema version {version} needs a list of 'rows' (each with 'method') and a 'provenance' object")
    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        raise InvalidInputError(f"{p}: 'extra' must be an object, got {type(extra).__name__}")
    return BenchResult(rows=rows, provenance=prov, extra=extra)
