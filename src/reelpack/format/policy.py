"""Which entropy layout each layer of a pack gets: the policy behind ``reelpack pack --entropy``.

A pack layer's codes are stored raw or entropy coded with one of :data:`reelpack.format.entropy.LAYOUTS`
(``"bytes"``, ``"nibbles"``, ``"bits"``). :func:`entropy_layouts` turns the words of ``--entropy`` into one
layout (or ``None``: raw) per layer; ``"auto"`` applies :data:`AUTO_LAYOUTS`, the layouts that paid off in
``benchmarks/entropy_study.py`` (sq4 levels as nibbles: 21 % smaller on amazon-book; PQ cells and SimHash signs
are near uniform, so they stay raw).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reelpack.errors import InvalidInputError
from reelpack.format.entropy import LAYOUTS

__all__ = ["AUTO_LAYOUTS", "entropy_layouts"]

#: Codec spec -> entropy layout chosen by ``"auto"``; every other spec stays raw.
AUTO_LAYOUTS: dict[str, str] = {"sq4": "nibbles"}


def entropy_layouts(entropy: str, specs: Sequence[str]) -> list[str | None]:
    """Per-layer entropy layouts from a policy string.

    Args:
        entropy: ``"none"`` (every layer raw), ``"auto"`` (:data:`AUTO_LAYOUTS`), or one word per layer separated
            by spaces or ``;``, each ``"none"`` or a layout of :data:`reelpack.format.entropy.LAYOUTS`.
        specs: the codec spec string of each layer, layer 0 first (``["simhash128", "sq4"]``).

    Returns:
        A list of ``len(specs)`` entries: a layout name, or ``None`` for a raw layer.

    Raises:
        InvalidInputError: ``entropy`` is not a string, the word count differs from the layer count, or a word is
            not ``"none"`` nor a known layout.
    """
    if not isinstance(entropy, str):
        raise InvalidInputError(f"entropy must be a string such as 'auto', 'none' or 'bytes nibbles', got {entropy!r}")
    specs = [str(s) for s in specs]
    words = [w for w in re.split(r"[\s;]+", entropy.strip()) if w]
    if words == ["auto"]:
        return [AUTO_LAYOUTS.get(s) for s in specs]
    if words == ["none"]:
        return [None] * len(specs)
    if len(words) != len(specs):
        raise InvalidInputError(f"--entropy needs one word per codec ({len(specs)}), 'auto' or 'none'; got {entropy!r}")
    bad = [w for w in words if w != "none" and w not in LAYOUTS]
    if bad:
        raise InvalidInputError(f"unknown entropy layout(s) {bad}; expected 'none' or one of {list(LAYOUTS)}")
    return [None if w == "none" else w for w in words]
