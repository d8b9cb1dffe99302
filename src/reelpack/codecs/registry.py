"""Codec registry and the factory-string grammar.

A factory string names one codec, lower-case, components separated by commas
(an optional transform first, then a quantiser), for example ``"fp16"``,
``"sq8"``, ``"sq4-p99.9"``, ``"pq16"``, ``"opq16,pq16"``, ``"simhash128"``,
``"countsketch32"``. Each codec family registers one regular expression for the
whole string; :func:`make_codec` tries them in registration order.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reelpack.codecs.base import Codec, unpack_state
from reelpack.errors import CodecSpecError, SerializationError, UnknownCodecError

__all__ = ["register_codec", "make_codec", "codec_from_bytes", "available_codecs"]

_REGISTRY: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], Codec], str]] = []


def register_codec(family: str, pattern: str, example: str) -> Callable:
    """Class decorator-free registration: ``register_codec(name, regex, example)(builder)``.

    ``builder(match)`` returns an unfitted codec; it may raise
    :class:`CodecSpecError` for values the regex admits but the codec refuses.
    """

    def deco(builder: Callable[[re.Match[str]], Codec]) -> Callable[[re.Match[str]], Codec]:
        _REGISTRY.append((family, re.compile(pattern + r"\Z"), builder, example))
        return builder

    return deco


def available_codecs() -> dict[str, str]:
    """Registered families mapped to an example factory string."""
    return {family: example for family, _, _, example in _REGISTRY}


def make_codec(spec: str) -> Codec:
    """Build an unfitted codec from its factory string.

    Raises:
        CodecSpecError: ``spec`` is not a string or a parameter is out of range.
        UnknownCodecError: no registered family matches ``spec``.
    """
    if not isinstance(spec, str):
        raise CodecSpecError(f"codec spec must be a string, got {type(spec).__name__}")
    s = spec.strip().lower().replace(" ", "")
    for _, pattern, builder, _ in _REGISTRY:
        m = pattern.match(s)
        if m:
            return builder(m)
    known = ", ".join(repr(e) for e in available_codecs().values())
    raise UnknownCodecError(f"unknown codec spec {spec!r}; known forms: {known}")


def codec_from_bytes(data: bytes) -> Codec:
    """Rebuild a fitted codec from :meth:`Codec.to_bytes` output.

    Raises:
        SerializationError: the bytes are corrupt, truncated, or name an unknown codec.
    """
    spec, dim, meta, arrays = unpack_state(data)
    try:
        codec = make_codec(spec)
    except CodecSpecError as exc:
        raise SerializationError(f"codec state names an unusable spec: {exc}") from None
    try:
        codec._load_state(dim, meta, arrays)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(f"codec state for {spec!r} is inconsistent: {exc!r}") from None
    codec.dim = dim
    return codec
