/* NEON twins of the portable scan kernels (aarch64). Same float32 operations per item and the same lane
 * structure as the portable code in scan.c, so both paths return identical scores. No FMA (vmul + vadd). */
#include "scan_internal.h"

#if RP_HAVE_NEON

#include <arm_neon.h>

static inline float finish8(float32x4_t a0, float32x4_t a1) {
    float a[8];
    vst1q_f32(a, a0);
    vst1q_f32(a + 4, a1);
    return rp_reduce8(a);
}

void rp_sq8_neon(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                 float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        uint32_t j = 0;
        float s;
        for (; j + 8u <= d; j += 8u) {
            uint16x8_t w = vmovl_u8(vld1_u8(p + j));
            float32x4_t lo = vcvtq_f32_u32(vmovl_u16(vget_low_u16(w)));
            float32x4_t hi = vcvtq_f32_u32(vmovl_u16(vget_high_u16(w)));
            a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(qs + j), lo));
            a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(qs + j + 4), hi));
        }
        s = finish8(a0, a1);
        for (; j < d; j++) s = s + qs[j] * (float)p[j];
        out[t] = s + offset;
    }
}

void rp_sq4_neon(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                 size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        uint32_t j = 0;
        float s;
        for (; j + 8u <= nbytes; j += 8u) {
            uint8x8_t c = vld1_u8(p + j);
            uint16x8_t lo = vmovl_u8(vand_u8(c, vdup_n_u8(15))), hi = vmovl_u8(vshr_n_u8(c, 4));
            a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(q_lo + j), vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)))));
            a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(q_lo + j + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)))));
            a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(q_hi + j), vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)))));
            a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(q_hi + j + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)))));
        }
        s = finish8(a0, a1);
        for (; j < nbytes; j++) {
            s = s + q_lo[j] * (float)(p[j] & 15u);
            s = s + q_hi[j] * (float)(p[j] >> 4);
        }
        out[t] = s + offset;
    }
}

void rp_f32_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        uint32_t j = 0;
        float s;
        for (; j + 8u <= d; j += 8u) {
            float32x4_t x0 = vreinterpretq_f32_u8(vld1q_u8(p + 4u * j));
            float32x4_t x1 = vreinterpretq_f32_u8(vld1q_u8(p + 4u * j + 16u));
            a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(q + j), x0));
            a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(q + j + 4), x1));
        }
        s = finish8(a0, a1);
        for (; j < d; j++) s = s + q[j] * rp_load_f32(p + 4u * j);
        out[t] = s;
    }
}

void rp_f16_neon(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        uint32_t j = 0;
        float s;
        for (; j + 8u <= d; j += 8u) {
            float32x4_t x0 = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p + 2u * j)));
            float32x4_t x1 = vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p + 2u * j + 8u)));
            a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(q + j), x0));
            a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(q + j + 4), x1));
        }
        s = finish8(a0, a1);
        for (; j < d; j++) s = s + q[j] * rp_half_to_float(rp_le16(p + 2u * j));
        out[t] = s;
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
    size_t t;
    uint32_t w, nw = bq->nwords;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dist = 0;
        for (w = 0; w < nw; w++) dist += pc64(bq->q[w] ^ rp_code_word(p, bq->nbytes, w));
        out[t] = -(float)dist;
    }
}

void rp_bitplane_neon(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    uint32_t w, i, nw = bq->nwords, np = bq->nplanes;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dot = 0, ones = 0;
        double v;
        for (w = 0; w < nw; w++) {
            uint64_t c = rp_code_word(p, bq->nbytes, w);
            ones += pc64(c);
            for (i = 0; i < np; i++) dot += (int64_t)pc64(bq->q[(size_t)i * nw + w] & c) << i;
        }
        v = bq->alpha * (double)dot + bq->beta * (double)ones + bq->gamma;
        out[t] = (float)(v + 0.0);
    }
}

#else
typedef int rp_scan_neon_unused; /* ISO C: a translation unit must declare something */
#endif
