/* Declarations shared by the scan kernels (scan.c, scan_avx2.c, scan_neon.c); not installed. */
#ifndef REELPACK_SCAN_INTERNAL_H
#define REELPACK_SCAN_INTERNAL_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* Exactness: the lookup tables, the ADC sums and the bit-plane scores must round exactly like reelpack's
 * Python kernels (float32 sums in a fixed order, no fused multiply-add). The build passes
 * -ffp-contract=off; these pragmas keep that true when it does not. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define RP_HAVE_AVX2 1
#else
#define RP_HAVE_AVX2 0
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#define RP_HAVE_NEON 1
#else
#define RP_HAVE_NEON 0
#endif

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define RP_LITTLE_ENDIAN 1
#else
#define RP_LITTLE_ENDIAN 0
#endif

/* Items per 4-bit fast-scan block (every kernel path uses the same layout). */
#define RP_FS4_WIDTH 32

/* ---- kernel entry points (portable in scan.c, SIMD twins in scan_avx2.c / scan_neon.c) ------- */
/* ADC: out[t] = sum_{j<ncols} lut[j*256 + codes[t*stride + col_j]] in float32, j in increasing order;
 * col_j = j (cols NULL) or cols[j]. */
void rp_adc_portable(const float *lut, uint32_t ncols, const uint32_t *cols, const uint8_t *codes, size_t stride,
                     size_t cnt, float *out);
/* Dot products with 8 lane accumulators (lane l takes dims j = l mod 8 of each full group of 8), the lanes
 * reduced as ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), then the tail dims in order, then + offset. */
void rp_sq8_portable(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                     float *out);
/* sq4: per byte j: acc += q_lo[j] * (c & 15); acc += q_hi[j] * (c >> 4) (same lane scheme over bytes). */
void rp_sq4_portable(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                     size_t stride, size_t cnt, float *out);
void rp_f32_portable(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_f16_portable(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
/* 4-bit block: sums (uint16, item order) of one block of RP_FS4_WIDTH items; returns the mask of items
 * whose sum is >= floor. lut16: [n_pairs][256] combined uint16 tables. */
uint32_t rp_fs4_block_portable(const uint8_t *blk, const uint16_t *lut16, uint32_t n_pairs, uint16_t *sums,
                               uint16_t floor);
uint32_t rp_ge_mask_portable(const uint16_t *sums, uint16_t floor);

/* Bit codes: W64 = bytes / 8 full words, then `tail` bytes (< 8) zero-padded into one more word. */
typedef struct rp_bitq {
    uint32_t nbytes;      /* bytes read per code */
    uint32_t nwords;      /* ceil(nbytes / 8) */
    uint32_t nplanes;     /* asymmetric: query bit planes (0 for hamming) */
    const uint64_t *q;    /* hamming: query words [nwords]; asymmetric: planes [nplanes][nwords] */
    double alpha, beta, gamma;
    /* asymmetric score of item t: v = alpha * dot + beta * ones + gamma; v *= scale[t] when scale is not
     * NULL (rabitq: per-item factor, indexed from the first code passed); out[t] = (float)(v + offset) */
    const double *scale;
    double offset;
} rp_bitq;
void rp_hamming_portable(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_bitplane_portable(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);

#if RP_HAVE_AVX2
int rp_cpu_has_avx2(void);
int rp_cpu_has_f16c(void);
void rp_sq8_avx2(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                 float *out);
void rp_sq4_avx2(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                 size_t stride, size_t cnt, float *out);
void rp_f32_avx2(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_f16_avx2(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
/* tab: [n_pairs][2][16] uint8 tables (the even sub-quantiser's, then the odd one's). */
uint32_t rp_fs4_block_avx2(const uint8_t *blk, const uint8_t *tab, uint32_t n_pairs, uint16_t *sums, uint16_t floor);
uint32_t rp_ge_mask_avx2(const uint16_t *sums, uint16_t floor);
void rp_hamming_avx2(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_bitplane_avx2(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);
#endif

#if RP_HAVE_NEON
void rp_sq8_neon(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                 float *out);
void rp_sq4_neon(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                 size_t stride, size_t cnt, float *out);
void rp_f32_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_f16_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out);
uint32_t rp_fs4_block_neon(const uint8_t *blk, const uint8_t *tab, uint32_t n_pairs, uint16_t *sums, uint16_t floor);
uint32_t rp_ge_mask_neon(const uint16_t *sums, uint16_t floor);
void rp_hamming_neon(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);
void rp_bitplane_neon(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out);
#endif

/* fp16 (IEEE binary16, little-endian bytes) to float32, exact. */
static inline float rp_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (uint32_t)(h >> 10) & 0x1Fu;
    uint32_t man = (uint32_t)h & 0x3FFu;
    uint32_t bits;
    float f;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: man * 2^-24, exact in float32 */
            f = (float)man * 5.9604644775390625e-8f;
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static inline float rp_load_f32(const uint8_t *p) {
#if RP_LITTLE_ENDIAN
    float f;
    memcpy(&f, p, 4);
    return f;
#else
    return rp_lef32(p);
#endif
}

static inline uint64_t rp_load_u64(const uint8_t *p) {
#if RP_LITTLE_ENDIAN
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    return rp_le64(p);
#endif
}

/* Word w of a bit code (the tail word zero-padded). */
static inline uint64_t rp_code_word(const uint8_t *code, uint32_t nbytes, uint32_t w) {
    uint32_t off = w * 8u;
    if (off + 8u <= nbytes) return rp_load_u64(code + off);
    {
        uint8_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        memcpy(tmp, code + off, nbytes - off);
        return rp_load_u64(tmp);
    }
}

/* The bit-plane asymmetric scan (simhash, rabitq stage 0) shared by the three code paths: each wraps it in a
 * function compiled for its ISA, so __builtin_popcountll becomes popcnt (x86-64 with POPCNT), cnt + addv
 * (aarch64) or the portable sequence. score_t = offset + scale_t (alpha dot_t + beta ones_t + gamma) with
 * dot_t = sum_i 2^i popcount(plane_i & code_t). */
static inline void rp_bitplane_loop(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    uint32_t w, i, nw = bq->nwords, np = bq->nplanes;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dot = 0, ones = 0;
        double v;
        for (w = 0; w < nw; w++) {
            uint64_t c = rp_code_word(p, bq->nbytes, w);
            ones += __builtin_popcountll(c);
            for (i = 0; i < np; i++) dot += (int64_t)__builtin_popcountll(bq->q[(size_t)i * nw + w] & c) << i;
        }
        v = bq->alpha * (double)dot + bq->beta * (double)ones + bq->gamma;
        if (bq->scale != NULL) v *= bq->scale[t];
        out[t] = (float)(v + bq->offset);
    }
}

/* Lane reduction shared by every dot kernel: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
static inline float rp_reduce8(const float *a) {
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

#endif /* REELPACK_SCAN_INTERNAL_H */
