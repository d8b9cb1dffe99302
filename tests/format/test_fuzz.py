"""Fuzz the pack parsers: every corruption is noticed, and only reelpack errors are ever raised.

Exhaustive: every single-bit flip and every truncation of a small pack. Hypothesis:
random bytes, random bit flips, truncations with random chunking for the streaming
reader, and mutated length/offset/count fields re-sealed with valid CRCs (so the
structural checks, not the checksums, must catch them). Together the hypothesis
tests run >= 10,000 examples (2,500 per test, 4 tests; test_fuzz_budget_meets_ci_minimum
checks the settings and the examples that really ran); set REELPACK_FUZZ_EXAMPLES to run more per test.
"""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, is_hypothesis_test, settings
from hypothesis import strategies as st
from packtools import HEADER_FIELDS, delta_pack, exercise, parity_pack, reseal, sections, stream, tiny_pack

from reelpack.format import iter_blocks_stream

EXAMPLES = int(os.environ.get("REELPACK_FUZZ_EXAMPLES", "2500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
PACK = tiny_pack(n=10, d=4, items_per_block=4, metadata={"catalog": "fuzz"})
# packs with the optional sections: PARITY (type 8), and a delta's DELTA_REMOVED / DELTA_BOUNDS (0xDE17, 0xDE18)
PACKS = {"plain": PACK, "parity": parity_pack(), "delta": delta_pack()}
MAX_PEAK_BYTES = 32 << 20  # a few-hundred-byte input must never make the parser allocate more than this
CI_MINIMUM = 10_000  # hypothesis examples per run, all fuzz tests together
RAN: dict[str, int] = {}  # examples each hypothesis test of this module really ran in this session


def _ran(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


@pytest.mark.parametrize("kind", sorted(PACKS))
def test_pristine_pack_is_clean(kind):
    assert not exercise(PACKS[kind])
    assert all(b.intact for b in iter_blocks_stream([PACKS[kind]]))


def test_fuzzed_packs_have_the_optional_sections():
    types = {kind: {s[0] for s in sections(raw)} for kind, raw in PACKS.items()}
    assert 8 in types["parity"] and {0xDE17, 0xDE18} <= types["delta"]


@pytest.mark.parametrize("kind", sorted(PACKS))
def test_every_single_bit_flip_is_noticed(kind):
    buf = bytearray(PACKS[kind])
    missed = []
    for bit in range(8 * len(buf)):
        buf[bit // 8] ^= 1 << (bit % 8)
        raw = bytes(buf)
        if not exercise(raw):
            missed.append(bit)
        stream(raw, [bit // 8])
        buf[bit // 8] ^= 1 << (bit % 8)
    assert not missed, f"{len(missed)} undetected bit flips, first at byte {missed[0] // 8}"


@pytest.mark.parametrize("kind", sorted(PACKS))
def test_every_truncation_is_noticed(kind):
    for length in range(len(PACKS[kind])):
        raw = PACKS[kind][:length]
        assert exercise(raw), f"truncation to {length} bytes went unnoticed"
        stream(raw, [length // 2])


@FUZZ
@given(st.binary(max_size=400) | st.binary(max_size=300).map(lambda b: PACK[:64] + b))
def test_random_bytes(raw):
    _ran("test_random_bytes")
    assert exercise(raw) == (raw != PACK)  # anything but the pristine pack is noticed
    stream(raw, [len(raw) // 3])


@FUZZ
@given(st.lists(st.integers(0, 8 * len(PACK) - 1), min_size=1, max_size=8, unique=True))
def test_random_bit_flips(bits):
    _ran("test_random_bit_flips")
    buf = bytearray(PACK)
    for bit in bits:
        buf[bit // 8] ^= 1 << (bit % 8)
    assert exercise(bytes(buf))
    stream(bytes(buf), bits)


@FUZZ
@given(st.integers(0, len(PACK)), st.lists(st.integers(0, len(PACK)), max_size=6))
def test_truncated_streams(length, cuts):
    _ran("test_truncated_streams")
    raw = PACK[:length]
    assert exercise(raw) == (length < len(PACK))
    stream(raw, cuts)


_INTERESTING = st.sampled_from([0, 1, 2, 3, 4, 7, 8, 24, 32, 48, 64, 255, 256, 2**16 - 1, 2**31, 2**32 - 1,
                                2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)  # fmt: skip


def _field_sites(raw: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every length/offset/count field of the header and directory (docs/FORMAT.md)."""
    sites = [HEADER_FIELDS[n] for n in ("file_length", "n_items", "table_offset", "section_count", "prefix_length")]
    table_offset = HEADER_FIELDS["table_offset"][0]
    t0 = struct.unpack_from("<Q", raw, table_offset)[0]
    for i, (s_type, _flags, _crc, s_off, _len) in enumerate(sections(raw)):
        e = t0 + 24 * i
        sites += [(e, "<H"), (e + 2, "<H"), (e + 8, "<Q"), (e + 16, "<Q")]
        if s_type == 1:  # ITEM_IDS: encoding, count, first varints
            sites += [(s_off, "<B"), (s_off + 1, "<Q"), (s_off + 9, "<B"), (s_off + 10, "<B")]
        if s_type == 2:  # LAYERS: count, then each 48-byte entry's fields
            sites.append((s_off, "<I"))
            n_layers = struct.unpack_from("<I", raw, s_off)[0]
            for j in range(n_layers):
                base = s_off + 8 + 48 * j
                sites += [(base, "<H"), (base + 2, "<H")] + [(base + 4 + 4 * k, "<I") for k in range(7)]
                sites += [(base + 32, "<Q"), (base + 40, "<Q")]
        if s_type == 5:  # BLOCK_INDEX: each 32-byte entry's layer, block, offset, length
            for j in range(_len // 32):
                base = s_off + 32 * j
                sites += [(base, "<H"), (base + 4, "<I"), (base + 8, "<Q"), (base + 16, "<I")]
    return sites


SITES = _field_sites(PACK)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(range(len(SITES))), _INTERESTING), min_size=1, max_size=3))
def test_mutated_fields_resealed(mutations):
    _ran("test_mutated_fields_resealed")
    buf = bytearray(PACK)
    for site, value in mutations:
        off, fmt = SITES[site]
        struct.pack_into(fmt, buf, off, value % (1 << (8 * struct.calcsize(fmt))))
    raw = bytes(reseal(buf))
    tracemalloc.start()
    try:
        exercise(raw)
        stream(raw, [len(raw) // 2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"parsing a {len(raw)}-byte pack allocated {peak} bytes"


@pytest.mark.skipif("REELPACK_FUZZ_EXAMPLES" in os.environ, reason="budget set by the environment")
def test_fuzz_budget_meets_ci_minimum():
    # the hypothesis tests of this module, as hypothesis will run them (their attached settings)
    fuzz_tests = {name: fn for name, fn in globals().items() if name.startswith("test_") and is_hypothesis_test(fn)}
    assert set(fuzz_tests) == {"test_random_bytes", "test_random_bit_flips", "test_truncated_streams",
                               "test_mutated_fields_resealed"}  # fmt: skip
    budget = {name: fn._hypothesis_internal_use_settings.max_examples for name, fn in fuzz_tests.items()}
    assert sum(budget.values()) >= CI_MINIMUM, budget
    # and the tests that ran before this one in this session (file order) ran their whole budget
    for name, count in RAN.items():
        assert count >= budget[name], (name, count, budget[name])


@pytest.mark.parametrize("value", [2**40, 2**63 - 1])
def test_huge_claimed_item_count_is_refused_cheaply(value):
    buf = bytearray(PACK)
    struct.pack_into("<Q", buf, HEADER_FIELDS["n_items"][0], value)
    exercise(bytes(reseal(buf)))
    stream(bytes(reseal(buf)), [])
