"""An independent pure-Python reader written from docs/FORMAT.md alone decodes the golden test vectors.

Nothing here imports reelpack's format code, constriction or zfec to decode: CRC32C, varints, the section
table, LAYERS, BLOCK_INDEX, the CODEC (RPCS) header, the ANS decoder of ENTROPY_CODED layers (with the
probability-to-CDF rule of the spec), the Reed-Solomon parity of the PARITY section and the DELTA_REMOVED ids
are all implemented from the spec's text. The last tests compare the spec's ANS coder and Reed-Solomon
generator with the libraries the writer uses (constriction, zfec) on random inputs, byte for byte.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from make_vectors import NAMES, load

# ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------------------------
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def varints(raw: bytes) -> list[int]:
    out, value, shift = [], 0, 0
    for b in raw:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            out.append(value)
            value, shift = 0, 0
    assert shift == 0, "varint runs past the end"
    return out


# ---- the container -------------------------------------------------------------------------------------
def read_pack(raw: bytes) -> dict:
    magic, major, minor, _flags, file_length, n_items, t_off, count, t_crc, prefix, _r, h_crc = struct.unpack_from(
        "<8sHHIQQQIIQII", raw, 0)  # fmt: skip
    assert magic == b"RPAK\r\n\x1a\n" and (major, minor) == (1, 0) and file_length == len(raw)
    assert crc32c(raw[:60]) == h_crc and crc32c(raw[t_off : t_off + 24 * count]) == t_crc
    sections = [struct.unpack_from("<HHIQQ", raw, t_off + 24 * i) for i in range(count)]
    for s_type, _f, crc, off, length in sections:
        if s_type != 4:  # every section but LAYER_CODES has its CRC32C in the table
            assert crc32c(raw[off : off + length]) == crc
    body = {i: raw[off : off + length] for i, (_t, _f, _c, off, length) in enumerate(sections)}
    by_type: dict[int, list[int]] = {}
    for i, s in enumerate(sections):
        by_type.setdefault(s[0], []).append(i)
    # the order the writer uses (docs/FORMAT.md "File layout")
    order = [s[0] for s in sections]
    rank = {1: 0, 2: 1, 3: 2, 6: 3, 7: 4, 8: 5, 9: 6, 5: 7, 4: 8}
    assert [rank.get(t, 5) for t in order] == sorted(rank.get(t, 5) for t in order)
    assert prefix == max(s[3] + s[4] for s in sections if s[0] != 4)
    ids_raw = body[by_type[1][0]]
    encoding, id_count = ids_raw[0], struct.unpack_from("<Q", ids_raw, 1)[0]
    values = varints(ids_raw[9:])
    if encoding == 0:
        ids = list(np.cumsum(values).tolist())
    else:
        ids, start = [], 0
        for j in range(0, len(values), 2):
            start += values[j]  # the first run starts at its gap, each later one `gap` after the previous end
            ids.extend(range(start, start + values[j + 1]))
            start += values[j + 1]
    assert len(ids) == id_count == n_items
    lay_raw = body[by_type[2][0]]
    n_layers = struct.unpack_from("<I", lay_raw, 0)[0]
    layers = [dict(zip(("index", "flags", "codec", "codes", "corr", "bpv", "ipb", "n_blocks", "k", "off", "len"),
                       struct.unpack_from("<HHIIIIIIIQQ", lay_raw, 8 + 48 * j))) for j in range(n_layers)]  # fmt: skip
    index = body[by_type[5][0]]
    blocks = [struct.unpack_from("<HHIQIIff", index, 32 * j) for j in range(len(index) // 32)]
    return {"raw": raw, "n_items": n_items, "ids": ids, "sections": sections, "body": body, "by_type": by_type,
            "layers": layers, "blocks": blocks}  # fmt: skip


def read_codec_header(state: bytes) -> dict:
    """The RPCS header: offsets count from the end of the JSON header; arrays back to back, no padding."""
    assert state[:4] == b"RPCS"
    version, header_len = struct.unpack_from("<HI", state, 4)
    assert version == 1
    header = json.loads(state[10 : 10 + header_len])
    assert set(header) == {"spec", "dim", "meta", "arrays"}
    payload = state[10 + header_len :]
    cursor = 0
    for a in header["arrays"]:
        assert set(a) == {"name", "dtype", "shape", "offset", "nbytes"}
        assert a["nbytes"] == int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
        assert a["offset"] == cursor
        cursor += a["nbytes"]
    assert cursor == len(payload)
    return header


# ---- ANS (docs/FORMAT.md "ENTROPY_CODED layers") --------------------------------------------------------
PRECISION = 24


def cdf_from_counts(counts: list[int]) -> list[int]:
    total = sum(counts)
    probs = [c / total for c in counts]  # float64, correctly rounded division
    norm = 0.0
    for p in probs:  # summed left to right
        norm += p
    scale = float((1 << PRECISION) - len(probs)) / norm
    cdf, cum = [], 0.0
    for i, p in enumerate(probs):
        cdf.append(int(cum * scale) + i)  # truncated toward zero, plus i
        cum += p
    return cdf + [1 << PRECISION]


def ans_decode(words: list[int], cdfs: list[list[int]], n_rows: int) -> list[list[int]]:
    assert not words or words[-1] != 0
    words = list(words)
    state = 0
    if words:
        state = words.pop()
        if words:
            state = (state << 32) | words.pop()
    columns = []
    for cdf in cdfs:
        column = []
        for _ in range(n_rows):
            q = state & ((1 << PRECISION) - 1)
            s = max(i for i in range(len(cdf) - 1) if cdf[i] <= q)
            state = (state >> PRECISION) * (cdf[s + 1] - cdf[s]) + q - cdf[s]
            if state < (1 << 32) and words:
                state = (state << 32) | words.pop()
            column.append(s)
        columns.append(column)
    assert state == 0 and not words, "the decoder must end empty"
    return columns


def ans_encode(columns: list[list[int]], cdfs: list[list[int]]) -> list[int]:
    state, words = 0, []
    for cdf, column in reversed(list(zip(cdfs, columns))):
        for s in reversed(column):
            left, prob = cdf[s], cdf[s + 1] - cdf[s]
            if state >> (64 - PRECISION) >= prob:
                words.append(state & 0xFFFFFFFF)
                state >>= 32
            state = ((state // prob) << PRECISION) | (left + state % prob)
    if state:
        words.append(state & 0xFFFFFFFF)
        if state >> 32:
            words.append(state >> 32)
    return words


def symbols_to_codes(columns: list[list[int]], layout: int, n_rows: int) -> list[bytes]:
    rows = []
    for r in range(n_rows):
        sym = [col[r] for col in columns]
        if layout == 1:
            rows.append(bytes(sym))
        elif layout == 2:
            rows.append(bytes(sym[2 * j] | (sym[2 * j + 1] << 4) for j in range(len(sym) // 2)))
        else:
            rows.append(bytes(sum(sym[8 * j + i] << (7 - i) for i in range(8)) for j in range(len(sym) // 8)))
    return rows


# ---- Reed-Solomon over GF(2^8), polynomial 0x11D (docs/FORMAT.md "PARITY") ---------------------------------
EXP, LOG = [0] * 510, [0] * 256
_x = 1
for _i in range(255):
    EXP[_i] = EXP[_i + 255] = _x
    LOG[_x] = _i
    _x = (_x << 1) ^ (0x11D if _x & 0x80 else 0)


def gmul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]


def gmat_inv(m: list[list[int]]) -> list[list[int]]:
    k = len(m)
    a = [row[:] + [int(i == j) for j in range(k)] for i, row in enumerate(m)]
    for c in range(k):
        p = next(r for r in range(c, k) if a[r][c])
        a[c], a[p] = a[p], a[c]
        f = EXP[255 - LOG[a[c][c]]]
        a[c] = [gmul(f, v) for v in a[c]]
        for r in range(k):
            if r != c and a[r][c]:
                g = a[r][c]
                a[r] = [v ^ gmul(g, w) for v, w in zip(a[r], a[c])]
    return [row[k:] for row in a]


def rs_generator(k: int, n: int) -> list[list[int]]:
    """G = V · V[:k]^-1 with V[r][c] = x_r^c, x_0 = 0, x_r = 2^(r-1) (0^0 = 1): rows 0..k-1 are the identity."""
    points = [0] + [EXP[r % 255] for r in range(n - 1)]
    v = [[1 if c == 0 else (EXP[LOG[x] * c % 255] if x else 0) for c in range(k)] for x in points]
    top_inv = gmat_inv(v[:k])
    return [[_dot(row, [top_inv[i][j] for i in range(k)]) for j in range(k)] for row in v]


def _dot(a: list[int], b: list[int]) -> int:
    out = 0
    for x, y in zip(a, b):
        out ^= gmul(x, y)
    return out


def rs_combine(coefs: list[int], blocks: list[bytes]) -> bytes:
    out = bytearray(len(blocks[0]))
    for c, blk in zip(coefs, blocks):
        if c:
            for i, b in enumerate(blk):
                out[i] ^= gmul(c, b)
    return bytes(out)


# ---- the tests -----------------------------------------------------------------------------------------
def _layer_codes(pack: dict, layer: dict) -> list[bytes]:
    """Rows of one layer's codes, decoding ENTROPY_CODED blocks with the spec's ANS decoder."""
    raw, n, ipb, bpv = pack["raw"], pack["n_items"], layer["ipb"], layer["bpv"]
    blocks = [b for b in pack["blocks"] if b[0] == layer["index"]]
    assert [b[2] for b in blocks] == list(range(layer["n_blocks"]))
    rows: list[bytes] = []
    model = None
    if layer["flags"] & 1:
        for i in pack["by_type"].get(9, []):
            body = pack["body"][i]
            if struct.unpack_from("<H", body, 0)[0] == layer["index"]:
                magic, version, layout, _r, model_bpv = struct.unpack_from("<4sHBBI", body, 4)
                assert (magic, version, model_bpv) == (b"RPEM", 1, bpv)
                alphabet = {1: 256, 2: 16, 3: 2}[layout]
                counts = struct.unpack_from(f"<{(len(body) - 16) // 2}H", body, 16)
                cdfs = [cdf_from_counts(list(counts[c * alphabet : (c + 1) * alphabet]))
                        for c in range(len(counts) // alphabet)]  # fmt: skip
                model = (layout, cdfs)
        assert model is not None
    for k, (_l, _f, _b, off, length, crc, _mx, _mean) in enumerate(blocks):
        data = raw[off : off + length]
        assert crc32c(data) == crc
        m = min(ipb, n - k * ipb)
        if model is None:
            rows.extend(data[r * bpv : (r + 1) * bpv] for r in range(m))
        else:
            words = list(struct.unpack(f"<{length // 4}I", data))
            rows.extend(symbols_to_codes(ans_decode(words, model[1], m), model[0], m))
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_spec_reader_decodes_vector(name):
    raw, expected = load(name)
    pack = read_pack(raw)
    assert pack["ids"] == expected["item_ids"]
    for layer, lay in zip(pack["layers"], expected["layers"]):
        header = read_codec_header(pack["body"][layer["codec"]])
        assert (header["spec"], header["dim"]) == (lay["codec"], lay["dim"])
        assert bool(layer["flags"] & 1) == lay["entropy_coded"]
        assert [r.hex() for r in _layer_codes(pack, layer)] == lay["codes"]


def test_spec_reader_recomputes_parity_blocks():
    raw, expected = load("pq_two_layers_parity")
    pack = read_pack(raw)
    (idx,) = pack["by_type"][8]
    body = pack["body"][idx]
    n_rec, meta_crc = struct.unpack_from("<II", body, 0)
    records = [struct.unpack_from("<HHHHIIQII", body, 8 + 32 * r) for r in range(n_rec)]
    meta_end = 8 + 32 * n_rec + sum(4 * rec[4] * rec[3] for rec in records)
    assert crc32c(body[8:meta_end]) == meta_crc
    assert [{"layer": r[0], "k": r[2], "m": r[3], "n_groups": r[4], "block_length": r[5]} for r in records] == \
        expected["parity"]  # fmt: skip
    for layer_i, scheme, k, m, n_groups, length, data_off, crc_off, _ in records:
        assert scheme == 1
        layer = pack["layers"][layer_i]
        codes = b"".join(bytes.fromhex(h) for h in expected["layers"][layer_i]["codes"])
        n_blocks = layer["n_blocks"]
        data = [codes[b * length : (b + 1) * length].ljust(length, b"\0") for b in range(n_blocks)]
        gen = rs_generator(k, k + m)
        for g in range(n_groups):
            members = [data[b] for b in range(g, n_blocks, n_groups)]
            members += [bytes(length)] * (k - len(members))  # virtual all-zero blocks
            for j in range(m):
                at = data_off + (g * m + j) * length  # relative to the section start
                stored = body[at : at + length]
                assert stored == rs_combine(gen[k + j], members)
                assert crc32c(stored) == struct.unpack_from("<I", body, crc_off + 4 * (g * m + j))[0]


def test_spec_reader_reads_delta_sections():
    raw, expected = load("delta_sq8")
    pack = read_pack(raw)
    removed = np.cumsum(varints(pack["body"][pack["by_type"][0xDE17][0]])).tolist()
    assert removed == expected["delta"]["removed_ids"]
    bounds = pack["body"][pack["by_type"][0xDE18][0]]
    delta_meta = expected["metadata"]["reelpack_delta"]
    target_blocks = -(-len(expected["delta"]["target_item_ids"]) // delta_meta["target_items_per_block"])
    assert len(bounds) == 8 * target_blocks


def test_spec_ans_matches_the_library_on_random_blocks():
    from reelpack.format.entropy import code_symbols, encode_block, fit_column_model

    rng = np.random.default_rng(7)
    for trial in range(45):
        layout = ("bytes", "nibbles", "bits")[trial % 3]
        n, width = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        codes = np.clip(rng.normal(128, 1 + 40 * rng.random(), size=(n, width)), 0, 255).astype(np.uint8)
        if trial % 9 == 0:
            codes[:] = 0  # symbol 0 first: the state stays 0
        model = fit_column_model(codes, layout)
        cdfs = [cdf_from_counts([int(c) for c in row]) for row in model.counts]
        columns = code_symbols(codes, layout).T.tolist()
        words = np.frombuffer(encode_block(codes, model), "<u4").tolist()
        assert ans_encode(columns, cdfs) == words
        assert ans_decode(words, cdfs, n) == columns


@pytest.mark.parametrize(("k", "m"), [(1, 1), (2, 1), (3, 2), (5, 3), (10, 1), (17, 5), (12, 244)])
def test_spec_reed_solomon_matches_zfec(k, m):
    zfec = pytest.importorskip("zfec")
    rng = np.random.default_rng(k * 31 + m)
    data = [rng.integers(0, 256, 9, dtype=np.uint8).tobytes() for _ in range(k)]
    parity = zfec.Encoder(k, k + m).encode(data, tuple(range(k, k + m)))
    gen = rs_generator(k, k + m)
    assert all(gen[i] == [int(i == j) for j in range(k)] for i in range(k))  # systematic
    assert [bytes(p) for p in parity] == [rs_combine(gen[k + j], data) for j in range(m)]
    # and decoding from any k shares: solve with the generator's rows of the shares present
    shares = list(range(m, k + m))
    blocks = [data[s] if s < k else bytes(parity[s - k]) for s in shares]
    inv = gmat_inv([gen[s] for s in shares])
    assert [rs_combine(row, blocks) for row in inv] == data
