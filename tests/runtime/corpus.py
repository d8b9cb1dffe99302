"""A corpus of hostile packs shared by the Python reader and the C runtime, with the Python reader's verdicts.

Built deterministically from the format fuzz tests' packs (tests/format/packtools.py): every single-bit flip of
the tiny two-layer pack, every truncation of the tiny, parity and delta packs, length/offset/count fields set to
extreme values and re-sealed with valid CRCs (so structure checks, not checksums, must catch them), and random
bytes. :func:`python_verdict` is what a conforming reader must report for each: the same line as
``rp-rank --check`` prints.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "format"))
from packtools import HEADER_FIELDS, delta_pack, parity_pack, reseal, sections, tiny_pack  # noqa: E402

from reelpack.errors import (  # noqa: E402
    ChecksumError,
    PackFormatError,
    ReelpackError,
    TruncatedPackError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from reelpack.format import PackReader  # noqa: E402

PACKS = {"tiny": tiny_pack(n=10, d=4, items_per_block=4, metadata={"catalog": "fuzz"}),
         "parity": parity_pack(), "delta": delta_pack()}  # fmt: skip
EXTREMES = [0, 1, 2, 63, 64, 65, 255, 256, 4095, 4096, 4097, 2**16 - 1, 2**20, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
            2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip


def _field_sites(raw: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the header's and the directory's length / offset / count fields."""
    sites = [HEADER_FIELDS[n] for n in ("file_length", "n_items", "table_offset", "section_count", "prefix_length")]
    t0 = struct.unpack_from("<Q", raw, HEADER_FIELDS["table_offset"][0])[0]
    for i, (s_type, _flags, _crc, s_off, s_len) in enumerate(sections(raw)):
        e = t0 + 24 * i
        sites += [(e, "<H"), (e + 2, "<H"), (e + 8, "<Q"), (e + 16, "<Q")]
        if s_type == 1:
            sites += [(s_off, "<B"), (s_off + 1, "<Q"), (s_off + 9, "<B"), (s_off + 10, "<B")]
        if s_type == 2:
            sites.append((s_off, "<I"))
            for j in range(struct.unpack_from("<I", raw, s_off)[0]):
                base = s_off + 8 + 48 * j
                sites += [(base, "<H"), (base + 2, "<H")] + [(base + 4 + 4 * k, "<I") for k in range(7)]
                sites += [(base + 32, "<Q"), (base + 40, "<Q")]
        if s_type == 5:
            for j in range(s_len // 32):
                base = s_off + 32 * j
                sites += [(base, "<H"), (base + 4, "<I"), (base + 8, "<Q"), (base + 16, "<I")]
    return sites


def build_corpus(seed: int = 0, mutations: int = 600, random_blobs: int = 200) -> dict[str, bytes]:
    """name -> hostile (or pristine) pack bytes."""
    rng = np.random.default_rng(seed)
    corpus: dict[str, bytes] = {f"{k}-pristine": v for k, v in PACKS.items()}
    tiny = PACKS["tiny"]
    for bit in range(8 * len(tiny)):
        buf = bytearray(tiny)
        buf[bit // 8] ^= 1 << (bit % 8)
        corpus[f"tiny-flip{bit}"] = bytes(buf)
    for name, raw in PACKS.items():
        for length in range(len(raw)):
            corpus[f"{name}-cut{length}"] = raw[:length]
        if name != "tiny":
            for bit in rng.choice(8 * len(raw), 400, replace=False).tolist():
                buf = bytearray(raw)
                buf[bit // 8] ^= 1 << (bit % 8)
                corpus[f"{name}-flip{bit}"] = bytes(buf)
    for name, raw in PACKS.items():
        sites = _field_sites(raw)
        for i in range(mutations // len(PACKS)):
            buf = bytearray(raw)
            for _ in range(int(rng.integers(1, 4))):
                off, fmt = sites[int(rng.integers(len(sites)))]
                value = EXTREMES[int(rng.integers(len(EXTREMES)))] if rng.random() < 0.7 else int(rng.integers(0, 2**63))
                struct.pack_into(fmt, buf, off, value % (1 << (8 * struct.calcsize(fmt))))
            corpus[f"{name}-mutated{i}"] = bytes(reseal(buf))
    for i in range(random_blobs):
        size = int(rng.integers(0, 400))
        blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        corpus[f"random{i}"] = blob if i % 2 else tiny[:64] + blob
    return corpus


def error_name(exc: ReelpackError) -> str:
    """The rp_status name a conforming C reader returns for a Python reader error."""
    if isinstance(exc, UnsupportedVersionError):
        return "RP_E_VERSION"
    if isinstance(exc, UnsupportedFeatureError):
        return "RP_E_UNSUPPORTED"
    if isinstance(exc, ChecksumError):
        return "RP_E_CHECKSUM"
    if isinstance(exc, TruncatedPackError):
        return "RP_E_TRUNCATED"
    if isinstance(exc, PackFormatError) and "not a reelpack pack" in str(exc):
        return "RP_E_NOT_A_PACK"
    return "RP_E_FORMAT"


def python_verdict(raw: bytes) -> str:
    """``OPEN_FAIL\\t<status>`` or ``OK\\tn_items=..\\tlayers=..\\ttruncated=..\\tsection_problems=..\\tbad=..``."""
    try:
        pack = PackReader.from_buffer(raw)
    except ReelpackError as exc:
        return f"OPEN_FAIL\t{error_name(exc)}"
    report = pack.verify()
    bad = ",".join(f"{layer}:{block}" for layer, block, _ in sorted(report.bad_blocks))
    return (f"OK\tn_items={pack.n_items}\tlayers={pack.n_layers}\ttruncated={int(report.truncated)}"
            f"\tsection_problems={len(report.section_problems)}\tbad={bad}")  # fmt: skip


def check_line_verdict(line: str) -> tuple[str, str]:
    """(file name, verdict without the per-layer status field) of one ``rp-rank --check`` line."""
    parts = line.rstrip("\n").split("\t")
    name = Path(parts[0]).name
    fields = [p for p in parts[1:] if not p.startswith("status=")]
    return name, "\t".join(fields)
