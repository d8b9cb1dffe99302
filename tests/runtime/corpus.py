"""A corpus of hostile packs shared by the Python reader and the C runtime, with the Python reader's verdicts.

Built deterministically from the format fuzz tests' packs (tests/format/packtools.py) and a small entropy-coded
pack: every single-bit flip of the tiny two-layer pack, every truncation of the tiny, parity, delta and entropy
packs, length/offset/count fields (and the ENTROPY_MODEL's fields) set to extreme values and re-sealed with valid
CRCs (so structure checks, not checksums, must catch them), entropy-coded blocks damaged and re-sealed with a
valid block CRC32C (so the ANS decoder's own checks must catch them, as the library's decoder does), and random
bytes. :func:`python_verdict` is what a conforming reader must report for each: the same line as
``rp-rank --check`` prints.
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import crc32c
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
from reelpack.codecs import make_codec  # noqa: E402
from reelpack.format import PackReader, write_pack  # noqa: E402


def entropy_pack(n: int = 24, d: int = 6, items_per_block: int = 10, seed: int = 3) -> bytes:
    """A small one-layer sq4 pack stored ENTROPY_CODED (nibbles), like the sq4_entropy golden vector."""
    rng = np.random.default_rng(seed)
    X = (np.round(rng.normal(size=(n, d)) * 8) / 8).astype(np.float32)
    codec = make_codec("sq4").fit(X, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "entropy.rpak"
        write_pack(path, np.arange(n) * 5 + 2, [(codec, codec.encode(X))], vectors=X, items_per_block=items_per_block,
                   entropy=["nibbles"])  # fmt: skip
        return path.read_bytes()


PACKS = {"tiny": tiny_pack(n=10, d=4, items_per_block=4, metadata={"catalog": "fuzz"}),
         "parity": parity_pack(), "delta": delta_pack(), "entropy": entropy_pack()}  # fmt: skip
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
        if s_type == 9:  # ENTROPY_MODEL: layer index, version, layout, reserved, bytes_per_vector, a few counts
            sites += [(s_off, "<H"), (s_off + 8, "<H"), (s_off + 10, "<B"), (s_off + 11, "<B"), (s_off + 12, "<I")]
            sites += [(s_off + 16 + 2 * c, "<H") for c in range(0, (s_len - 16) // 2, 7)]
    return sites


def _blocks(raw: bytes) -> list[tuple[int, int, int]]:
    """(BLOCK_INDEX entry offset, block offset, block length) of every block."""
    out = []
    for s_type, _flags, _crc, s_off, s_len in sections(raw):
        if s_type == 5:
            for j in range(s_len // 32):
                base = s_off + 32 * j
                out.append((base, *struct.unpack_from("<QI", raw, base + 8)))
    return out


def _reseal_blocks(buf: bytearray) -> bytearray:
    """Recompute every block's CRC32C in BLOCK_INDEX, then the directory CRCs (reseal)."""
    for entry, off, length in _blocks(bytes(buf)):
        if off + length <= len(buf):
            struct.pack_into("<I", buf, entry + 20, crc32c.crc32c(bytes(buf[off : off + length])))
    return reseal(buf)


def _entropy_block_damage(raw: bytes, rng: np.random.Generator, count: int) -> dict[str, bytes]:
    """Entropy-coded blocks with flipped bits, zeroed / swapped / random words, re-sealed so their CRC32Cs match."""
    out: dict[str, bytes] = {}
    blocks = [(e, o, n) for e, o, n in _blocks(raw) if n >= 4]
    for i in range(count):
        buf = bytearray(raw)
        _entry, off, length = blocks[int(rng.integers(len(blocks)))]
        kind = i % 4
        if kind == 0:  # one bit
            bit = int(rng.integers(8 * length))
            buf[off + bit // 8] ^= 1 << (bit % 8)
        elif kind == 1:  # a word set to 0 or to 0xFFFFFFFF (the last one too)
            w = int(rng.integers(length // 4))
            buf[off + 4 * w : off + 4 * w + 4] = b"\x00" * 4 if rng.random() < 0.5 else b"\xff" * 4
        elif kind == 2:  # two words swapped
            a, b = (int(v) for v in rng.integers(length // 4, size=2))
            wa, wb = bytes(buf[off + 4 * a : off + 4 * a + 4]), bytes(buf[off + 4 * b : off + 4 * b + 4])
            buf[off + 4 * a : off + 4 * a + 4], buf[off + 4 * b : off + 4 * b + 4] = wb, wa
        else:  # random bytes
            buf[off : off + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        out[f"entropy-blockdamage{i}"] = bytes(_reseal_blocks(buf))
    return out


def build_corpus(
    seed: int = 0, mutations: int = 800, random_blobs: int = 200, block_damage: int = 200
) -> dict[str, bytes]:
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
    corpus.update(_entropy_block_damage(PACKS["entropy"], rng, block_damage))
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
