"""Optional dependencies: import one, or say which reelpack extra brings it.

reelpack's core (codecs, the pack format, search) needs numpy, numba, faiss-cpu, crc32c, zfec and
constriction. Heavier parts are extras: ``[train]`` (torch), ``[serve]`` (fastapi, uvicorn, httpx, usearch),
``[scale]`` (dask, distributed), ``[report]`` (matplotlib), ``[onnx]`` (onnx, onnxruntime), ``[video]``,
``[all]``. :func:`require` imports a module of an extra or raises :class:`~reelpack.errors.MissingExtraError`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from reelpack.errors import MissingExtraError

__all__ = ["require", "EXTRAS"]

#: The optional-dependency extras and the top-level modules each one brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch",),
    "serve": ("fastapi", "uvicorn", "httpx", "usearch", "pyarrow"),
    "scale": ("dask", "distributed"),
    "report": ("matplotlib",),
    "onnx": ("onnx", "onnxruntime"),
    "video": ("torch", "sklearn", "pyarrow"),
}


def require(module: str, extra: str, what: str = "this feature") -> ModuleType:
    """Import ``module`` (a dependency of reelpack's ``extra``) or raise a clear error.

    Args:
        module: the module to import, e.g. ``"fastapi"`` or ``"onnxruntime"``.
        extra: the reelpack extra that installs it, e.g. ``"serve"``.
        what: the feature that needs it, for the message (``"reelpack serve"``).

    Raises:
        MissingExtraError: the module is not installed; the message says ``pip install 'reelpack[EXTRA]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs {module.split('.')[0]}, which is not installed: pip install 'reelpack[{extra}]'",
            extra,
        ) from exc
