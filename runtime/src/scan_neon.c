/* NEON twins of the portable scan kernels (aarch64). Same float32 operations per item and the same lane
 * structure as the portable code in scan.c, so both paths return identical scores. No FMA (vmul + vadd). */
#include "scan_internal.h"

#if RP_HAVE_NEON

#include <arm_neon.h>

/* rp_reduce8 of lanes a0 = [0..3], a1 = [4..7] in registers: ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)). */
static inline float finish8(float32x4_t a0, float32x4_t a1) {
    float32x4_t s = vaddq_f32(a0, a1);                          /* s0 = a0+a4, s1, s2, s3 */
    float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s)); /* s0+s2, s1+s3 */
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

/* Four items per pass (independent accumulator chains); each item's operations and their order are those of
 * the portable twin, so the scores are identical. ROWS4 runs BODY(i) for i = 0..3 on rows p[0..3]. */
#define RP_ROWS4(BODY) \
    do {               \
        BODY(0);       \
        BODY(1);       \
        BODY(2);       \
        BODY(3);       \
    } while (0)

static inline void sq8_step(float32x4_t *a0, float32x4_t *a1, const float *qs, const uint8_t *p) {
    uint16x8_t w = vmovl_u8(vld1_u8(p));
    *a0 = vaddq_f32(*a0, vmulq_f32(vld1q_f32(qs), vcvtq_f32_u32(vmovl_u16(vget_low_u16(w)))));
    *a1 = vaddq_f32(*a1, vmulq_f32(vld1q_f32(qs + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(w)))));
}

static inline float sq8_tail(float s, const float *qs, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + qs[j] * (float)p[j];
    return s;
}

void rp_sq8_neon(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                 float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p[4];
        float32x4_t a[4], b[4];
#define RP_INIT(i) (p[i] = codes + (t + (i)) * stride, a[i] = vdupq_n_f32(0.0f), b[i] = a[i])
        RP_ROWS4(RP_INIT);
#undef RP_INIT
        for (j = 0; j < d8; j += 8u) {
#define RP_STEP(i) sq8_step(&a[i], &b[i], qs + j, p[i] + j)
            RP_ROWS4(RP_STEP);
#undef RP_STEP
        }
#define RP_OUT(i) (out[t + (i)] = sq8_tail(finish8(a[i], b[i]), qs, d8, d, p[i]) + offset)
        RP_ROWS4(RP_OUT);
#undef RP_OUT
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (j = 0; j < d8; j += 8u) sq8_step(&a0, &a1, qs + j, p + j);
        out[t] = sq8_tail(finish8(a0, a1), qs, d8, d, p) + offset;
    }
}

static inline void sq4_step(float32x4_t *a0, float32x4_t *a1, const float *q_lo, const float *q_hi, const uint8_t *p) {
    uint8x8_t c = vld1_u8(p);
    uint16x8_t lo = vmovl_u8(vand_u8(c, vdup_n_u8(15))), hi = vmovl_u8(vshr_n_u8(c, 4));
    *a0 = vaddq_f32(*a0, vmulq_f32(vld1q_f32(q_lo), vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)))));
    *a1 = vaddq_f32(*a1, vmulq_f32(vld1q_f32(q_lo + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)))));
    *a0 = vaddq_f32(*a0, vmulq_f32(vld1q_f32(q_hi), vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)))));
    *a1 = vaddq_f32(*a1, vmulq_f32(vld1q_f32(q_hi + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)))));
}

static inline float sq4_tail(float s, const float *q_lo, const float *q_hi, uint32_t j, uint32_t nbytes,
                             const uint8_t *p) {
    for (; j < nbytes; j++) {
        s = s + q_lo[j] * (float)(p[j] & 15u);
        s = s + q_hi[j] * (float)(p[j] >> 4);
    }
    return s;
}

void rp_sq4_neon(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                 size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t n8 = nbytes & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p[4];
        float32x4_t a[4], b[4];
#define RP_INIT(i) (p[i] = codes + (t + (i)) * stride, a[i] = vdupq_n_f32(0.0f), b[i] = a[i])
        RP_ROWS4(RP_INIT);
#undef RP_INIT
        for (j = 0; j < n8; j += 8u) {
#define RP_STEP(i) sq4_step(&a[i], &b[i], q_lo + j, q_hi + j, p[i] + j)
            RP_ROWS4(RP_STEP);
#undef RP_STEP
        }
#define RP_OUT(i) (out[t + (i)] = sq4_tail(finish8(a[i], b[i]), q_lo, q_hi, n8, nbytes, p[i]) + offset)
        RP_ROWS4(RP_OUT);
#undef RP_OUT
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (j = 0; j < n8; j += 8u) sq4_step(&a0, &a1, q_lo + j, q_hi + j, p + j);
        out[t] = sq4_tail(finish8(a0, a1), q_lo, q_hi, n8, nbytes, p) + offset;
    }
}

static inline void f32_step(float32x4_t *a0, float32x4_t *a1, const float *q, const uint8_t *p) {
    *a0 = vaddq_f32(*a0, vmulq_f32(vld1q_f32(q), vreinterpretq_f32_u8(vld1q_u8(p))));
    *a1 = vaddq_f32(*a1, vmulq_f32(vld1q_f32(q + 4), vreinterpretq_f32_u8(vld1q_u8(p + 16u))));
}

static inline float f32_tail(float s, const float *q, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + q[j] * rp_load_f32(p + 4u * j);
    return s;
}

void rp_f32_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p[4];
        float32x4_t a[4], b[4];
#define RP_INIT(i) (p[i] = codes + (t + (i)) * stride, a[i] = vdupq_n_f32(0.0f), b[i] = a[i])
        RP_ROWS4(RP_INIT);
#undef RP_INIT
        for (j = 0; j < d8; j += 8u) {
#define RP_STEP(i) f32_step(&a[i], &b[i], q + j, p[i] + 4u * j)
            RP_ROWS4(RP_STEP);
#undef RP_STEP
        }
#define RP_OUT(i) (out[t + (i)] = f32_tail(finish8(a[i], b[i]), q, d8, d, p[i]))
        RP_ROWS4(RP_OUT);
#undef RP_OUT
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (j = 0; j < d8; j += 8u) f32_step(&a0, &a1, q + j, p + 4u * j);
        out[t] = f32_tail(finish8(a0, a1), q, d8, d, p);
    }
}

static inline void f16_step(float32x4_t *a0, float32x4_t *a1, const float *q, const uint8_t *p) {
    *a0 = vaddq_f32(*a0, vmulq_f32(vld1q_f32(q), vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)))));
    *a1 = vaddq_f32(*a1, vmulq_f32(vld1q_f32(q + 4), vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p + 8u)))));
}

static inline float f16_tail(float s, const float *q, uint32_t j, uint32_t d, const uint8_t *p) {
    for (; j < d; j++) s = s + q[j] * rp_half_to_float(rp_le16(p + 2u * j));
    return s;
}

void rp_f16_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t = 0;
    uint32_t d8 = d & ~7u, j;
    for (; t + 4u <= cnt; t += 4u) {
        const uint8_t *p[4];
        float32x4_t a[4], b[4];
#define RP_INIT(i) (p[i] = codes + (t + (i)) * stride, a[i] = vdupq_n_f32(0.0f), b[i] = a[i])
        RP_ROWS4(RP_INIT);
#undef RP_INIT
        for (j = 0; j < d8; j += 8u) {
#define RP_STEP(i) f16_step(&a[i], &b[i], q + j, p[i] + 2u * j)
            RP_ROWS4(RP_STEP);
#undef RP_STEP
        }
#define RP_OUT(i) (out[t + (i)] = f16_tail(finish8(a[i], b[i]), q, d8, d, p[i]))
        RP_ROWS4(RP_OUT);
#undef RP_OUT
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (j = 0; j < d8; j += 8u) f16_step(&a0, &a1, q + j, p + 2u * j);
        out[t] = f16_tail(finish8(a0, a1), q, d8, d, p);
    }
}

/* ---- 4-bit fast-scan block: tbl lookups, widening uint16 sums ------------------------------------------ */
static inline uint32_t ge8(uint16x8_t s, uint16x8_t f) {
    static const uint16_t w[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    return (uint32_t)vaddvq_u16(vandq_u16(vcgeq_u16(s, f), vld1q_u16(w)));
}

static inline uint32_t ge32(uint16x8_t a0, uint16x8_t a1, uint16x8_t a2, uint16x8_t a3, uint16_t floor) {
    uint16x8_t f = vdupq_n_u16(floor);
    return ge8(a0, f) | (ge8(a1, f) << 8) | (ge8(a2, f) << 16) | (ge8(a3, f) << 24);
}

uint32_t rp_fs4_block_neon(const uint8_t *blk, const uint8_t *tab, uint32_t n_pairs, uint16_t *sums, uint16_t floor) {
    uint16x8_t a0 = vdupq_n_u16(0), a1 = vdupq_n_u16(0), a2 = vdupq_n_u16(0), a3 = vdupq_n_u16(0);
    const uint8x16_t m0f = vdupq_n_u8(0x0F);
    uint32_t p;
    for (p = 0; p < n_pairs; p++) {
        const uint8_t *row = blk + (size_t)p * 32u;
        uint8x16_t x = vld1q_u8(row), y = vld1q_u8(row + 16);
        uint8x16_t te = vld1q_u8(tab + (size_t)p * 32u), to = vld1q_u8(tab + (size_t)p * 32u + 16u);
        uint8x16_t xe = vqtbl1q_u8(te, vandq_u8(x, m0f)), xo = vqtbl1q_u8(to, vshrq_n_u8(x, 4));
        uint8x16_t ye = vqtbl1q_u8(te, vandq_u8(y, m0f)), yo = vqtbl1q_u8(to, vshrq_n_u8(y, 4));
        a0 = vaddw_u8(a0, vget_low_u8(xe));
        a1 = vaddw_high_u8(a1, xe);
        a0 = vaddw_u8(a0, vget_low_u8(xo));
        a1 = vaddw_high_u8(a1, xo);
        a2 = vaddw_u8(a2, vget_low_u8(ye));
        a3 = vaddw_high_u8(a3, ye);
        a2 = vaddw_u8(a2, vget_low_u8(yo));
        a3 = vaddw_high_u8(a3, yo);
    }
    vst1q_u16(sums, a0);
    vst1q_u16(sums + 8, a1);
    vst1q_u16(sums + 16, a2);
    vst1q_u16(sums + 24, a3);
    return ge32(a0, a1, a2, a3, floor);
}

uint32_t rp_ge_mask_neon(const uint16_t *sums, uint16_t floor) {
    return ge32(vld1q_u16(sums), vld1q_u16(sums + 8), vld1q_u16(sums + 16), vld1q_u16(sums + 24), floor);
}

/* ---- bit codes: vcnt popcount ----------------------------------------------------------------------------- */
static inline uint32_t pc64(uint64_t x) { return (uint32_t)vaddv_u8(vcnt_u8(vcreate_u8(x))); }

void rp_hamming_neon(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    /* 16 code bytes per vcnt: the query words hold the code's bytes in order (little-endian words) */
    size_t t;
    uint32_t w, c, nw = bq->nwords, n16 = bq->nbytes / 16u;
    const uint8_t *qb = (const uint8_t *)bq->q;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dist = 0;
        for (c = 0; c < n16; c++)
            dist += vaddlvq_u8(vcntq_u8(veorq_u8(vld1q_u8(qb + 16u * c), vld1q_u8(p + 16u * c))));
        for (w = 2u * n16; w < nw; w++) dist += pc64(bq->q[w] ^ rp_code_word(p, bq->nbytes, w));
        out[t] = -(float)dist;
    }
}

void rp_bitplane_neon(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    rp_bitplane_loop(bq, codes, stride, cnt, out);
}

#else
typedef int rp_scan_neon_unused; /* ISO C: a translation unit must declare something */
#endif
