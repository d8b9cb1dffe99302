"""Typed exceptions raised by reelpack.

Every error reelpack raises on purpose derives from :class:`ReelpackError`,
which is also a :class:`ValueError`, so callers can catch either. Messages say
what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ReelpackError",
    "InvalidInputError",
    "NonFiniteError",
    "DimensionMismatchError",
    "DTypeError",
    "EmptyInputError",
    "InvalidKError",
    "NotFittedError",
    "CodecSpecError",
    "UnknownCodecError",
    "SerializationError",
    "PackFormatError",
    "UnsupportedVersionError",
    "UnsupportedFeatureError",
    "ChecksumError",
    "TruncatedPackError",
    "DataFormatError",
    "DataNotFoundError",
    "TrainingError",
    "EntropyCodingError",
    "DeltaError",
    "UnsupportedOperationError",
    "NotFoundError",
    "StoreError",
    "ServiceError",
    "MissingExtraError",
    "NativeRuntimeError",
    "ValidationTooSmallError",
    "NoCandidateError",
    "TrainingDivergedError",
]


class ReelpackError(ValueError):
    """Base class of every error reelpack raises on purpose."""


class InvalidInputError(ReelpackError):
    """An argument has the wrong shape, type or value."""


class NonFiniteError(InvalidInputError):
    """An array holds NaN or Inf values.

    Attributes:
        rows: indexes (along axis 0) of the offending rows, at most the first 20.
    """

    def __init__(self, message: str, rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.rows = list(rows)


class DimensionMismatchError(InvalidInputError):
    """An array's dimension does not match what the codec or model expects."""


class DTypeError(InvalidInputError):
    """An array has a dtype that cannot be used here (for example codes that are not uint8)."""


class EmptyInputError(InvalidInputError):
    """An array or catalog that must hold at least one row is empty."""


class InvalidKError(InvalidInputError):
    """A top-K size is not positive or is larger than the catalog."""


class NotFittedError(ReelpackError):
    """A codec was asked to encode, decode or score before ``fit``."""


class CodecSpecError(ReelpackError):
    """A codec factory string cannot be parsed."""


class UnknownCodecError(CodecSpecError):
    """A codec factory string names a codec family that is not registered."""


class SerializationError(ReelpackError):
    """Serialised codec parameters are corrupt, truncated or of an unknown version."""


class PackFormatError(SerializationError):
    """A reelpack pack (docs/FORMAT.md) is malformed: bad magic, inconsistent lengths, offsets or counts."""


class UnsupportedVersionError(PackFormatError):
    """A pack's major format version is not one this reader implements."""


class UnsupportedFeatureError(PackFormatError):
    """A pack needs a feature this reader lacks (an unknown required section, an entropy-coded layer)."""


class ChecksumError(PackFormatError):
    """A CRC32C stored in a pack does not match the bytes it covers."""


class TruncatedPackError(PackFormatError):
    """A pack is shorter than its header says, or too short to hold a header."""


class DataFormatError(ReelpackError):
    """An interactions file is malformed.

    Attributes:
        path: the file.
        line: 1-based line number of the first bad line (``None`` for whole-file problems).
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class DataNotFoundError(ReelpackError, FileNotFoundError):
    """An interactions file or cached artefact does not exist."""


class TrainingError(ReelpackError):
    """Training cannot run with the given data or configuration (or diverged)."""


class EntropyCodingError(SerializationError):
    """An entropy-coded block or its column model is corrupt, truncated or inconsistent."""


class DeltaError(PackFormatError):
    """A delta pack cannot be made or applied: it was made for another base pack, is not a delta, or is inconsistent."""


class UnsupportedOperationError(ReelpackError):
    """The codec does not provide this operation (for example score bounds, or more than one stage)."""


class NotFoundError(ReelpackError, LookupError):
    """A catalog, version, delta, item id or user the store or service was asked for does not exist."""


class StoreError(ReelpackError):
    """The catalog store on disk is inconsistent or cannot be written (corrupt manifest, missing file)."""


class ServiceError(ReelpackError):
    """A reelpack service answered with an error, could not be reached, or sent a response that fails its checks.

    Attributes:
        status: the HTTP status (``None`` when no response came back).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MissingExtraError(UnsupportedOperationError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra to install.

    Attributes:
        extra: the name of the extra (``"serve"``, ``"train"``, ...); ``pip install 'reelpack[EXTRA]'``.
    """

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class NativeRuntimeError(UnsupportedOperationError):
    """The native C runtime (``runtime/``, ``libreelpack``) is not available: not built, not found, or built for
    another platform. The message says how to build it (``make -C runtime``) and where it was looked for
    (``REELPACK_RUNTIME_LIB``)."""


class ValidationTooSmallError(InvalidInputError):
    """A validation split is too small to choose between codecs. ``users`` is how many users it holds with
    validation items, ``needed`` how many the choice needs; the message says both."""

    def __init__(self, message: str, users: int = 0, needed: int = 0) -> None:
        super().__init__(message)
        self.users = int(users)
        self.needed = int(needed)


class NoCandidateError(InvalidInputError):
    """No candidate codec fits a byte budget (``reelpack tune --budget``, ``auto16`` specs); the message names
    the budget and the smallest candidate size."""


class TrainingDivergedError(TrainingError):
    """A fine-tune diverged (non-finite loss, or a loss that grew far above its start); the untouched model or
    codec is the stated fallback."""
