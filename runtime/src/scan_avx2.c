/* AVX2 twins of the portable scan kernels (x86-64, chosen at run time). Each computes the same float32
 * operations per item, in the same order, as its portable twin in scan.c (vectorised across items, or with
 * the same 8-lane accumulator structure), so both paths return identical scores. No FMA. */
#include "scan_internal.h"

#if RP_HAVE_AVX2

#include <cpuid.h>
#include <immintrin.h>

#define RP_AVX2 __attribute__((target("avx2")))

int rp_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}

int rp_cpu_has_f16c(void) { /* cpuid leaf 1, ECX bit 29 (clang 14's __builtin_cpu_supports lacks "f16c") */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_F16C) != 0;
}

/* ---- dot products (8 lanes, reduced like rp_reduce8) ------------------------------------------------
 * Four items at a time: four independent accumulator chains hide the add latency; each item's operations
 * and their order are those of the portable twin (lane l sums dimensions j = l mod 8, then rp_reduce8's
 * tree, then the tail dimensions in order), so both paths return identical scores. */
RP_AVX2 static inline float hsum8(__m256 acc) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)); /* a0+a4 .. a3+a7 */
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));                                     /* s0+s2, s1+s3 */
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));                      /* (s0+s2)+(s1+s3) */
}

RP_AVX2 static inline __m256 u8x8_to_ps(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

RP_AVX2 static inline float sq8_tail(float s, const float *qs, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + qs[j] * (float)p[j];
    return s;
}

RP_AVX2 void rp_sq8_avx2(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                         float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p0 = codes + t * stride, *p1 = p0 + stride, *p2 = p1 + stride, *p3 = p2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (j = 0; j < d8; j += 8u) {
            __m256 qv = _mm256_loadu_ps(qs + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, u8x8_to_ps(p0 + j)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, u8x8_to_ps(p1 + j)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, u8x8_to_ps(p2 + j)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, u8x8_to_ps(p3 + j)));
        }
        out[t] = sq8_tail(hsum8(a0), qs, d8, d, p0) + offset;
        out[t + 1u] = sq8_tail(hsum8(a1), qs, d8, d, p1) + offset;
        out[t + 2u] = sq8_tail(hsum8(a2), qs, d8, d, p2) + offset;
        out[t + 3u] = sq8_tail(hsum8(a3), qs, d8, d, p3) + offset;
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j < d8; j += 8u) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qs + j), u8x8_to_ps(p + j)));
        out[t] = sq8_tail(hsum8(acc), qs, d8, d, p) + offset;
    }
}

RP_AVX2 static inline __m256 sq4_step(__m256 acc, const float *q_lo, const float *q_hi, const uint8_t *p) {
    const __m256i m15 = _mm256_set1_epi32(15);
    __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q_lo), _mm256_cvtepi32_ps(_mm256_and_si256(c, m15))));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q_hi), _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4))));
}

RP_AVX2 static inline float sq4_tail(float s, const float *q_lo, const float *q_hi, uint32_t j, uint32_t nbytes,
                                     const uint8_t *p) {
    for (; j < nbytes; j++) {
        s = s + q_lo[j] * (float)(p[j] & 15u);
        s = s + q_hi[j] * (float)(p[j] >> 4);
    }
    return s;
}

RP_AVX2 void rp_sq4_avx2(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                         size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t n8 = nbytes & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p0 = codes + t * stride, *p1 = p0 + stride, *p2 = p1 + stride, *p3 = p2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (j = 0; j < n8; j += 8u) {
            a0 = sq4_step(a0, q_lo + j, q_hi + j, p0 + j);
            a1 = sq4_step(a1, q_lo + j, q_hi + j, p1 + j);
            a2 = sq4_step(a2, q_lo + j, q_hi + j, p2 + j);
            a3 = sq4_step(a3, q_lo + j, q_hi + j, p3 + j);
        }
        out[t] = sq4_tail(hsum8(a0), q_lo, q_hi, n8, nbytes, p0) + offset;
        out[t + 1u] = sq4_tail(hsum8(a1), q_lo, q_hi, n8, nbytes, p1) + offset;
        out[t + 2u] = sq4_tail(hsum8(a2), q_lo, q_hi, n8, nbytes, p2) + offset;
        out[t + 3u] = sq4_tail(hsum8(a3), q_lo, q_hi, n8, nbytes, p3) + offset;
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j < n8; j += 8u) acc = sq4_step(acc, q_lo + j, q_hi + j, p + j);
        out[t] = sq4_tail(hsum8(acc), q_lo, q_hi, n8, nbytes, p) + offset;
    }
}

RP_AVX2 static inline __m256 f32x8(const uint8_t *p) { return _mm256_loadu_ps((const float *)(const void *)p); }

RP_AVX2 static inline float f32_tail(float s, const float *q, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + q[j] * rp_load_f32(p + 4u * j);
    return s;
}

RP_AVX2 void rp_f32_avx2(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p0 = codes + t * stride, *p1 = p0 + stride, *p2 = p1 + stride, *p3 = p2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (j = 0; j < d8; j += 8u) {
            __m256 qv = _mm256_loadu_ps(q + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, f32x8(p0 + 4u * j)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, f32x8(p1 + 4u * j)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, f32x8(p2 + 4u * j)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, f32x8(p3 + 4u * j)));
        }
        out[t] = f32_tail(hsum8(a0), q, d8, d, p0);
        out[t + 1u] = f32_tail(hsum8(a1), q, d8, d, p1);
        out[t + 2u] = f32_tail(hsum8(a2), q, d8, d, p2);
        out[t + 3u] = f32_tail(hsum8(a3), q, d8, d, p3);
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j < d8; j += 8u) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q + j), f32x8(p + 4u * j)));
        out[t] = f32_tail(hsum8(acc), q, d8, d, p);
    }
}

#define RP_F16C __attribute__((target("avx2,f16c")))

RP_F16C static inline float hsum8_f16c(__m256 acc) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

RP_F16C static inline __m256 f16x8(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

RP_F16C static inline float f16_tail(float s, const float *q, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + q[j] * rp_half_to_float(rp_le16(p + 2u * j));
    return s;
}

RP_F16C void rp_f16_avx2(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p0 = codes + t * stride, *p1 = p0 + stride, *p2 = p1 + stride, *p3 = p2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (j = 0; j < d8; j += 8u) {
            __m256 qv = _mm256_loadu_ps(q + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, f16x8(p0 + 2u * j)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, f16x8(p1 + 2u * j)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, f16x8(p2 + 2u * j)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, f16x8(p3 + 2u * j)));
        }
        out[t] = f16_tail(hsum8_f16c(a0), q, d8, d, p0);
        out[t + 1u] = f16_tail(hsum8_f16c(a1), q, d8, d, p1);
        out[t + 2u] = f16_tail(hsum8_f16c(a2), q, d8, d, p2);
        out[t + 3u] = f16_tail(hsum8_f16c(a3), q, d8, d, p3);
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j < d8; j += 8u) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q + j), f16x8(p + 2u * j)));
        out[t] = f16_tail(hsum8_f16c(acc), q, d8, d, p);
    }
}

/* ---- 4-bit fast-scan block: vpshufb lookups, uint16 sums (all bytes + 256 x odd bytes, odd bytes) -------- */
RP_AVX2 static inline uint32_t ge_mask(__m256i s0, __m256i s1, uint16_t floor) {
    __m256i f = _mm256_set1_epi16((short)floor);
    __m256i g0 = _mm256_cmpeq_epi16(_mm256_max_epu16(s0, f), s0);
    __m256i g1 = _mm256_cmpeq_epi16(_mm256_max_epu16(s1, f), s1);
    __m256i pk = _mm256_permute4x64_epi64(_mm256_packs_epi16(g0, g1), 0xD8);
    return (uint32_t)_mm256_movemask_epi8(pk);
}

RP_AVX2 static inline void fs4_pair(const uint8_t *blk, const uint8_t *tab, __m256i *all, __m256i *odd) {
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    __m256i c = _mm256_loadu_si256((const __m256i *)(const void *)blk);
    __m256i te = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)tab));
    __m256i to = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(tab + 16u)));
    __m256i ve = _mm256_shuffle_epi8(te, _mm256_and_si256(c, m0f));
    __m256i vo = _mm256_shuffle_epi8(to, _mm256_and_si256(_mm256_srli_epi16(c, 4), m0f));
    *all = _mm256_add_epi16(*all, _mm256_add_epi16(ve, vo));
    *odd = _mm256_add_epi16(*odd, _mm256_add_epi16(_mm256_srli_epi16(ve, 8), _mm256_srli_epi16(vo, 8)));
}

RP_AVX2 uint32_t rp_fs4_block_avx2(const uint8_t *blk, const uint8_t *tab, uint32_t n_pairs, uint16_t *sums,
                                   uint16_t floor) {
    /* 16-bit lanes: `all` = sum of (even byte + 256 x odd byte), `odd` = sum of odd bytes (mod 2^16, exact:
     * every true sum fits 16 bits), so even = all - 256 odd; two accumulator pairs for two byte columns */
    __m256i all = _mm256_setzero_si256(), odd = all, all2 = all, odd2 = all, even, x0, x1, s0, s1;
    uint32_t p = 0;
    for (; p + 2u <= n_pairs; p += 2u) {
        fs4_pair(blk + (size_t)p * 32u, tab + (size_t)p * 32u, &all, &odd);
        fs4_pair(blk + (size_t)p * 32u + 32u, tab + (size_t)p * 32u + 32u, &all2, &odd2);
    }
    if (p < n_pairs) fs4_pair(blk + (size_t)p * 32u, tab + (size_t)p * 32u, &all, &odd);
    all = _mm256_add_epi16(all, all2);
    odd = _mm256_add_epi16(odd, odd2);
    even = _mm256_sub_epi16(all, _mm256_slli_epi16(odd, 8));
    x0 = _mm256_unpacklo_epi16(even, odd); /* items 0..7 | 16..23 */
    x1 = _mm256_unpackhi_epi16(even, odd); /* items 8..15 | 24..31 */
    s0 = _mm256_permute2x128_si256(x0, x1, 0x20);
    s1 = _mm256_permute2x128_si256(x0, x1, 0x31);
    _mm256_storeu_si256((__m256i *)(void *)sums, s0);
    _mm256_storeu_si256((__m256i *)(void *)(sums + 16), s1);
    return ge_mask(s0, s1, floor);
}

RP_AVX2 uint32_t rp_ge_mask_avx2(const uint16_t *sums, uint16_t floor) {
    __m256i s0 = _mm256_loadu_si256((const __m256i *)(const void *)sums);
    __m256i s1 = _mm256_loadu_si256((const __m256i *)(const void *)(sums + 16));
    return ge_mask(s0, s1, floor);
}

/* ---- bit codes: the portable loops with the hardware popcount ------------------------------------------ */
__attribute__((target("popcnt"))) void rp_hamming_avx2(const rp_bitq *bq, const uint8_t *codes, size_t stride,
                                                       size_t cnt, float *out) {
    size_t t;
    uint32_t w, nw = bq->nwords;
    if (bq->nbytes == 16u) {
        uint64_t q0 = bq->q[0], q1 = bq->q[1];
        for (t = 0; t < cnt; t++) {
            const uint8_t *p = codes + t * stride;
            int64_t dist = __builtin_popcountll(q0 ^ rp_load_u64(p)) + __builtin_popcountll(q1 ^ rp_load_u64(p + 8));
            out[t] = -(float)dist;
        }
        return;
    }
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dist = 0;
        for (w = 0; w < nw; w++) dist += __builtin_popcountll(bq->q[w] ^ rp_code_word(p, bq->nbytes, w));
        out[t] = -(float)dist;
    }
}

__attribute__((target("popcnt"))) void rp_bitplane_avx2(const rp_bitq *bq, const uint8_t *codes, size_t stride,
                                                        size_t cnt, float *out) {
    rp_bitplane_loop(bq, codes, stride, cnt, out);
}

#else
typedef int rp_scan_avx2_unused; /* ISO C: a translation unit must declare something */
#endif
