"""SIMD table-lookup blocks for numba: in-register lookup tables (x86 ``pshufb`` / ``vpermi2b``).

numba cannot express a byte shuffle, the instruction that makes "fast-scan"
product quantisation fast: a whole lookup table lives in a vector register
and one instruction looks up 32 or 64 codes at once. The two ``@intrinsic``
functions here emit that LLVM IR directly; numba inlines them into the scan
loops of :mod:`reelpack.kernels.scan`.

* :func:`fs4_block` / :func:`fs4_block64`: 4-bit codes, 16-entry uint8 tables,
  ``vpshufb`` on 256-bit (AVX2, 32 items per block) or 512-bit registers
  (AVX-512BW, 64 items); one byte per pair of sub-quantisers (low nibble: even
  sub-quantiser).
* :func:`pq8_block`: 8-bit codes, 256-entry uint8 tables, AVX-512 VBMI
  ``vpermi2b`` (``llvm.x86.avx512.vpermi2var.qi.512``) twice plus a blend on
  the top bit; 64 items per block.

Both accumulate the looked-up bytes in uint16 lanes, so a block's sums
are exact integers (at most 255 per sub-quantiser; callers keep the number of
sub-quantisers <= 257). Availability depends on the host CPU:
:data:`HAS_AVX2` and :data:`HAS_VBMI` say whether the kernels may be called;
callers must use their portable fallbacks otherwise (calling a kernel whose
instructions the CPU lacks fails in LLVM's instruction selection).
"""

from __future__ import annotations

import os

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "HAS_AVX2", "HAS_AVX512BW", "HAS_VBMI", "FS4_BLOCK", "PQ8_BLOCK", "fs4_block", "fs4_block64", "pq8_block", "ctz64", "host_simd",
]  # fmt: skip

#: Items per block of the 4-bit kernel (one 256-bit register of codes).
FS4_BLOCK = 32
#: Items per block of the 8-bit kernel (one 512-bit register of codes).
PQ8_BLOCK = 64


def _host_features() -> set[str]:
    """CPU features numba compiles for ('avx2', 'avx512vbmi', ...); empty when not the host CPU."""
    if os.environ.get("REELPACK_NO_SIMD"):
        return set()
    cpu_name = numba.config.CPU_NAME
    if cpu_name not in (None, "", "host"):
        return set()  # compiling for a named (e.g. generic) CPU: stay portable
    try:
        from llvmlite import binding as llvm

        features = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - platforms where llvmlite cannot tell
        return set()
    return {name.lstrip("+") for name, on in features.items() if on}


_FEATURES = _host_features()
#: The 4-bit ``vpshufb`` kernel may run here (x86-64 with AVX2; ``REELPACK_NO_SIMD=1`` turns it off).
HAS_AVX2: bool = "avx2" in _FEATURES
#: The 8-bit ``vpermi2b`` kernel may run here (AVX-512 VBMI and BW).
HAS_VBMI: bool = {"avx512vbmi", "avx512bw", "avx512f"} <= _FEATURES
#: The 64-item 4-bit kernel (:func:`fs4_block64`) may run here (AVX-512BW).
HAS_AVX512BW: bool = {"avx512bw", "avx512f"} <= _FEATURES


@intrinsic
def ctz64(typingctx, x):  # type: ignore[no-untyped-def]
    """Count trailing zero bits of a uint64 (LLVM ``cttz``; 64 for 0)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        val = builder.zext(args[0], ir.IntType(64)) if args[0].type.width < 64 else args[0]
        return builder.cttz(val, ir.Constant(ir.IntType(1), 0))

    return types.uint64(x), codegen


def host_simd() -> dict[str, bool]:
    """Which SIMD kernels this process uses: ``{"avx2_pshufb": bool, "avx512_vbmi": bool}``."""
    return {"avx2_pshufb": HAS_AVX2, "avx512bw_pshufb": HAS_AVX512BW, "avx512_vbmi": HAS_VBMI}


def _vec_ptr(builder: ir.IRBuilder, base: ir.Value, offset: ir.Value, vec: ir.Type) -> ir.Value:
    return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())


def _mask_at_least(builder: ir.IRBuilder, sums: ir.Value, vec_type: ir.Type, lanes: int, floor: ir.Value) -> ir.Value:
    """uint64 whose bit t is set when lane t of the uint16 vector ``sums`` is >= ``floor`` (uint16)."""
    splat = builder.insert_element(ir.Constant(vec_type, None), floor, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    splat = builder.shuffle_vector(splat, ir.Constant(vec_type, None), zeros)
    bits = builder.bitcast(builder.icmp_unsigned(">=", sums, splat), ir.IntType(lanes))
    return builder.zext(bits, ir.IntType(64)) if lanes < 64 else bits


def _fs4_codegen(lanes: int, shuffle_name: str):
    """IR generator of the 4-bit block kernel for ``lanes`` items (32: AVX2, 64: AVX-512BW)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        v8 = ir.VectorType(ir.IntType(8), lanes)
        v16 = ir.VectorType(ir.IntType(16), lanes)
        barr = context.make_array(signature.args[0])(context, builder, args[0])
        larr = context.make_array(signature.args[2])(context, builder, args[2])
        oarr = context.make_array(signature.args[5])(context, builder, args[5])
        bbase = builder.gep(barr.data, [args[1]])
        lbase = builder.gep(larr.data, [args[3]])
        shuf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8]), shuffle_name)
        half = ir.VectorType(ir.IntType(16), lanes // 2)
        # faiss's trick: add each looked-up byte vector as 16-bit lanes (even byte + 256 * odd byte) and,
        # shifted right by 8, as the odd bytes alone; even sums = acc_all - 256 * acc_odd at the end.
        acc_all = cgutils.alloca_once_value(builder, ir.Constant(half, None))
        acc_odd = cgutils.alloca_once_value(builder, ir.Constant(half, None))
        low4 = ir.Constant(v8, [15] * lanes)
        four = ir.Constant(v8, [4] * lanes)
        eight = ir.Constant(half, [8] * (lanes // 2))
        with cgutils.for_range(builder, args[4]) as loop:
            p = loop.index
            codes = builder.load(_vec_ptr(builder, bbase, builder.mul(p, ir.Constant(p.type, lanes)), v8), align=1)
            loff = builder.mul(p, ir.Constant(p.type, 2 * lanes))
            t_lo = builder.load(_vec_ptr(builder, lbase, loff, v8), align=1)
            t_hi = builder.load(_vec_ptr(builder, lbase, builder.add(loff, ir.Constant(p.type, lanes)), v8), align=1)
            lo = builder.bitcast(builder.call(shuf, [t_lo, builder.and_(codes, low4)]), half)
            hi = builder.bitcast(builder.call(shuf, [t_hi, builder.and_(builder.lshr(codes, four), low4)]), half)
            a = builder.add(builder.load(acc_all), builder.add(lo, hi))
            o = builder.add(builder.load(acc_odd), builder.add(builder.lshr(lo, eight), builder.lshr(hi, eight)))
            builder.store(a, acc_all)
            builder.store(o, acc_odd)
        odd = builder.load(acc_odd)
        even = builder.sub(builder.load(acc_all), builder.shl(odd, eight))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [v for i in range(lanes // 2) for v in (i, lanes // 2 + i)])
        sums = builder.shuffle_vector(even, odd, mask)
        builder.store(sums, _vec_ptr(builder, oarr.data, args[6], v16), align=1)
        return _mask_at_least(builder, sums, v16, lanes, args[7])

    return codegen


@intrinsic
def fs4_block(typingctx, blocks, block_off, luts, lut_off, n_pairs, out, out_off, floor):  # type: ignore[no-untyped-def]
    """Sum 4-bit table lookups for one block of 32 items into ``out[out_off : out_off + 32]`` (uint16).

    Returns a uint64 bit mask: bit ``t`` set when item ``t``'s sum is >= ``floor`` (uint16; padding lanes
    included).

    ``blocks`` uint8 1-D: at ``block_off``, ``n_pairs`` rows of 32 bytes, row ``p`` byte ``t`` =
    ``code[t, 2p] | code[t, 2p+1] << 4``. ``luts`` uint8 1-D: at ``lut_off``, per pair 64 bytes: the
    16-entry table of sub-quantiser ``2p`` twice, then that of ``2p + 1`` twice (one copy per
    128-bit lane). ``out`` uint16 1-D.
    """
    sig = types.uint64(blocks, types.intp, luts, types.intp, types.intp, out, types.intp, types.uint16)
    return sig, _fs4_codegen(32, "llvm.x86.avx2.pshuf.b")


@intrinsic
def fs4_block64(typingctx, blocks, block_off, luts, lut_off, n_pairs, out, out_off, floor):  # type: ignore[no-untyped-def]
    """:func:`fs4_block` for blocks of 64 items with AVX-512BW ``vpshufb`` on 512-bit registers.

    Rows are 64 bytes; per pair the tables take 128 bytes (each 16-entry table four times).
    """
    sig = types.uint64(blocks, types.intp, luts, types.intp, types.intp, out, types.intp, types.uint16)
    return sig, _fs4_codegen(64, "llvm.x86.avx512.pshuf.b.512")


@intrinsic
def pq8_block(typingctx, blocks, block_off, luts, m, out, out_off, floor):  # type: ignore[no-untyped-def]
    """Sum 8-bit table lookups for one block of 64 items into ``out[out_off : out_off + 64]`` (uint16).

    Returns a uint64 bit mask: bit ``t`` set when item ``t``'s sum is >= ``floor`` (uint16; padding
    lanes included).

    ``blocks`` uint8 1-D: at ``block_off``, ``m`` rows of 64 bytes (row ``j`` = sub-code ``j`` of the
    block's 64 items). ``luts`` uint8 1-D [m * 256]: the quantised table of each sub-quantiser.
    ``out`` uint16 1-D.
    """
    sig = types.uint64(blocks, types.intp, luts, types.intp, out, types.intp, types.uint16)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        lanes = 64
        v8 = ir.VectorType(ir.IntType(8), lanes)
        v16 = ir.VectorType(ir.IntType(16), lanes)
        half = ir.VectorType(ir.IntType(16), lanes // 2)
        barr = context.make_array(signature.args[0])(context, builder, args[0])
        larr = context.make_array(signature.args[2])(context, builder, args[2])
        oarr = context.make_array(signature.args[4])(context, builder, args[4])
        bbase = builder.gep(barr.data, [args[1]])
        perm = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v8, [v8, v8, v8]), "llvm.x86.avx512.vpermi2var.qi.512"
        )
        # even/odd byte accumulation as in fs4_block: all = even + 256 * odd (mod 2^16), odd alone
        acc_all = cgutils.alloca_once_value(builder, ir.Constant(half, None))
        acc_odd = cgutils.alloca_once_value(builder, ir.Constant(half, None))
        zero = ir.Constant(v8, None)
        eight = ir.Constant(half, [8] * (lanes // 2))
        with cgutils.for_range(builder, args[3]) as loop:
            j = loop.index
            idx = builder.load(_vec_ptr(builder, bbase, builder.mul(j, ir.Constant(j.type, 64)), v8), align=1)
            toff = builder.mul(j, ir.Constant(j.type, 256))
            tabs = [
                builder.load(_vec_ptr(builder, larr.data, builder.add(toff, ir.Constant(j.type, 64 * q)), v8), align=1)
                for q in range(4)
            ]
            low = builder.call(perm, [tabs[0], idx, tabs[1]])  # entries 0..127 (bit 6 picks the table)
            high = builder.call(perm, [tabs[2], idx, tabs[3]])  # entries 128..255
            val = builder.bitcast(builder.select(builder.icmp_signed("<", idx, zero), high, low), half)
            builder.store(builder.add(builder.load(acc_all), val), acc_all)
            builder.store(builder.add(builder.load(acc_odd), builder.lshr(val, eight)), acc_odd)
        odd = builder.load(acc_odd)
        even = builder.sub(builder.load(acc_all), builder.shl(odd, eight))
        order = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [v for i in range(lanes // 2) for v in (i, lanes // 2 + i)])
        sums = builder.shuffle_vector(even, odd, order)
        builder.store(sums, _vec_ptr(builder, oarr.data, args[5], v16), align=1)
        return _mask_at_least(builder, sums, v16, lanes, args[6])

    return sig, codegen
