/* Fused score + top-K scans (the scanner API), one-shot codec scoring and refinement.
 *
 * Semantics follow reelpack's Python kernels (src/reelpack/kernels/scan.py, binscan.py, dense.py, heap.py):
 * - lookup tables of PQ-family codecs are float32 sums in the order of scan.py's _lut_into; every entry
 *   must lie within 3e38 / m (else the scores could overflow float32: RP_E_NONFINITE);
 * - 8-bit PQ scores are sum_j LUT[j][code_j] in float32, j increasing (exact ADC);
 * - 4-bit PQ runs the fast-scan: uint8-quantised tables (_quantize_one), uint16 block sums, a top-K on
 *   the sums gives tau, then every item with sum >= tau - (m + 2) is rescored exactly (pair tables, float32
 *   sum over bytes), unless approximate (faiss semantics: quantised ranking, dequantised scores);
 * - the top-K keeps the K best, ties to the lower row: rows are scanned in increasing order and a row
 *   enters only when its score is strictly greater than the worst kept one.
 * The SIMD twins (scan_avx2.c, scan_neon.c) compute the same float32 operations per item in the same
 * order (vectorised across items, or with the same lane structure), so every path returns identical
 * ids and scores.
 */
#include "scan_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RP_SENTINEL ((int64_t)1 << 62)
#define RP_CHUNK 256

/* ================================================================================================
 * kernel choice (process-wide: set once, before ranking starts)
 * ================================================================================================ */
static int g_kernel = -1; /* -1: auto (not resolved yet) */
static int g_auto = -1;   /* the resolved "auto" choice */

static rp_kernel detect_kernel(void) {
    const char *env = getenv("REELPACK_NO_SIMD");
    if (env != NULL && env[0] != '\0' && strcmp(env, "0") != 0) return RP_KERNEL_PORTABLE;
#if RP_HAVE_AVX2
    if (rp_cpu_has_avx2()) return RP_KERNEL_AVX2;
#endif
#if RP_HAVE_NEON
    return RP_KERNEL_NEON;
#else
    return RP_KERNEL_PORTABLE;
#endif
}

rp_kernel rp_active_kernel(void) {
    if (g_kernel >= 0) return (rp_kernel)g_kernel;
    if (g_auto < 0) g_auto = (int)detect_kernel();
    return (rp_kernel)g_auto;
}

static const char *kernel_str(rp_kernel k) {
    switch (k) {
    case RP_KERNEL_AVX2: return "avx2";
    case RP_KERNEL_NEON: return "neon";
    default: return "portable";
    }
}

const char *rp_kernel_name(void) { return kernel_str(rp_active_kernel()); }

int rp_set_kernel(const char *name, rp_error *err) {
    if (name == NULL) return rp_fail(err, RP_E_ARGUMENT, "kernel name is NULL");
    if (strcmp(name, "auto") == 0) {
        g_kernel = -1;
    } else if (strcmp(name, "portable") == 0) {
        g_kernel = RP_KERNEL_PORTABLE;
    } else if (strcmp(name, "avx2") == 0) {
#if RP_HAVE_AVX2
        if (!rp_cpu_has_avx2()) return rp_fail(err, RP_E_UNSUPPORTED, "this CPU has no AVX2");
        g_kernel = RP_KERNEL_AVX2;
#else
        return rp_fail(err, RP_E_UNSUPPORTED, "this build has no AVX2 kernels");
#endif
    } else if (strcmp(name, "neon") == 0) {
#if RP_HAVE_NEON
        g_kernel = RP_KERNEL_NEON;
#else
        return rp_fail(err, RP_E_UNSUPPORTED, "this build has no NEON kernels");
#endif
    } else {
        return rp_fail(err, RP_E_ARGUMENT, "unknown kernel (use auto, portable, avx2 or neon)");
    }
    rp_clear(err);
    return RP_OK;
}

/* ================================================================================================
 * checks
 * ================================================================================================ */
int rp_check_query(const float *query, uint32_t dim, rp_error *err) {
    uint32_t i;
    if (query == NULL) return rp_fail(err, RP_E_ARGUMENT, "query is NULL");
    for (i = 0; i < dim; i++) {
        float a = fabsf(query[i]);
        if (!(a <= 1e30f)) {
            if (query[i] != query[i] || a == INFINITY)
                return rp_fail(err, RP_E_NONFINITE, "query holds NaN or Inf at index %u", (unsigned)i);
            return rp_fail(err, RP_E_NONFINITE, "query value at index %u is beyond 1e30 in magnitude", (unsigned)i);
        }
    }
    return RP_OK;
}

static int all_finite(const float *a, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!(fabsf(a[i]) <= 3.4028234663852886e38f)) return 0;
    return 1;
}

static const char *OVERFLOW_MSG = "scores would overflow float32 (query magnitude times item magnitude is too large)";

/* Structural check of a codec (codec.c fills it; this guards the kernels' indexing). */
static int codec_check(const rp_codec *c, rp_error *err) {
    if (c == NULL) return rp_fail(err, RP_E_ARGUMENT, "codec is NULL");
    if (c->dim == 0 || c->bytes_per_vector == 0) return rp_fail(err, RP_E_CODEC, "codec has no dimension");
    switch (c->family) {
    case RP_FAM_FLOAT32:
        if ((uint64_t)c->dim * 4u != c->bytes_per_vector) return rp_fail(err, RP_E_CODEC, "float32 code width mismatch");
        return RP_OK;
    case RP_FAM_FP16:
        if ((uint64_t)c->dim * 2u != c->bytes_per_vector) return rp_fail(err, RP_E_CODEC, "fp16 code width mismatch");
        return RP_OK;
    case RP_FAM_SQ8:
    case RP_FAM_SQ4: {
        uint64_t w = c->family == RP_FAM_SQ8 ? c->dim : ((uint64_t)c->dim + 1u) / 2u;
        if (c->lo == NULL || c->step == NULL || w != c->bytes_per_vector)
            return rp_fail(err, RP_E_CODEC, "sq codec arrays or width invalid");
        return RP_OK;
    }
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
    case RP_FAM_PQ4: {
        int four = c->family == RP_FAM_PQ4;
        if (c->centroids == NULL || c->m == 0 || c->dsub == 0 || c->ksub == 0 || c->ksub > (four ? 16u : 256u) ||
            (uint64_t)c->m * c->dsub != c->dim)
            return rp_fail(err, RP_E_CODEC, "pq codec shape invalid");
        if (four ? (c->m % 2u != 0 || c->m / 2u != c->bytes_per_vector) : c->m != c->bytes_per_vector)
            return rp_fail(err, RP_E_CODEC, "pq code width mismatch");
        if (c->family == RP_FAM_OPQ8 && c->rotation == NULL) return rp_fail(err, RP_E_CODEC, "opq codec has no rotation");
        return RP_OK;
    }
    case RP_FAM_RQ: {
        uint32_t s, total = 0, cb;
        if (c->codebooks == NULL || c->n_codebooks == 0 || c->n_codebooks > RP_MAX_STAGES || c->n_stages == 0 ||
            c->n_stages > RP_MAX_STAGES)
            return rp_fail(err, RP_E_CODEC, "rq codec shape invalid");
        for (s = 0; s < c->n_stages; s++) {
            if (c->stage_sizes[s] == 0) return rp_fail(err, RP_E_CODEC, "rq stage without codebooks");
            total += c->stage_sizes[s];
            if (total > c->n_codebooks || c->prefix_bytes[s] > c->bytes_per_vector)
                return rp_fail(err, RP_E_CODEC, "rq stages invalid");
        }
        if (total != c->n_codebooks) return rp_fail(err, RP_E_CODEC, "rq stage sizes do not sum to the codebooks");
        if (c->rq_proj != NULL && (c->rq_mean == NULL || c->rq_pmean == NULL || c->rq_sub == 0 || c->rq_sub > c->dim))
            return rp_fail(err, RP_E_CODEC, "rq projection shape invalid");
        total = 0;
        for (s = 0; s < c->n_stages; s++) {
            total += c->stage_sizes[s];
            for (cb = total - c->stage_sizes[s]; cb < total; cb++)
                if (c->cb_col[cb] >= c->prefix_bytes[s]) return rp_fail(err, RP_E_CODEC, "rq code columns invalid");
        }
        return RP_OK;
    }
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING:
        if (c->projection == NULL || c->nbits == 0 || c->nbits % 8u != 0 || c->nbits / 8u != c->bytes_per_vector)
            return rp_fail(err, RP_E_CODEC, "simhash codec shape invalid");
        return RP_OK;
    case RP_FAM_RABITQ: {
        uint64_t nb0 = ((uint64_t)c->dim + 7u) / 8u, nb1 = ((uint64_t)c->dim * (c->rb_bits - 1u) + 7u) / 8u;
        if (c->rotation == NULL || c->rb_centroid == NULL || c->rb_bits < 1u || c->rb_bits > 8u || c->rb_nb0 != nb0 ||
            (c->rb_bits > 1u && c->rb_nb1 != nb1) || c->n_stages != (c->rb_bits > 1u ? 2u : 1u) ||
            c->prefix_bytes[0] != nb0 + 4u ||
            c->bytes_per_vector != (c->rb_bits > 1u ? nb0 + nb1 + 8u : nb0 + 4u) ||
            c->prefix_bytes[c->n_stages - 1u] != c->bytes_per_vector)
            return rp_fail(err, RP_E_CODEC, "rabitq codec shape invalid");
        if (!(c->rb_rho > 0.0f && c->rb_rho <= 3.4028234663852886e38f)) return rp_fail(err, RP_E_CODEC, "rabitq rho invalid");
        return RP_OK;
    }
    default:
        return rp_fail(err, RP_E_UNSUPPORTED, "codec family %d has no kernel", (int)c->family);
    }
}

/* Bytes a code (prefix) holds for `stages` (rq; 0 = all). */
static int bytes_read(const rp_codec *c, uint32_t stages, uint32_t *ncb, uint32_t *out, rp_error *err) {
    *ncb = 0;
    if (c->family == RP_FAM_RQ) {
        uint32_t s = stages == 0 ? c->n_stages : stages, i, tot = 0;
        if (s > c->n_stages) return rp_fail(err, RP_E_ARGUMENT, "stages %u out of range 1..%u", (unsigned)stages, (unsigned)c->n_stages);
        for (i = 0; i < s; i++) tot += c->stage_sizes[i];
        *ncb = tot;
        *out = c->prefix_bytes[s - 1];
        return RP_OK;
    }
    if (c->family == RP_FAM_RABITQ) {
        uint32_t s = stages == 0 ? c->n_stages : stages;
        if (s > c->n_stages) return rp_fail(err, RP_E_ARGUMENT, "stages %u out of range 1..%u", (unsigned)stages, (unsigned)c->n_stages);
        *ncb = s; /* rabitq: the stages used */
        *out = c->prefix_bytes[s - 1];
        return RP_OK;
    }
    if (stages > 1) return rp_fail(err, RP_E_ARGUMENT, "codec %s has a single stage", c->spec);
    *out = c->bytes_per_vector;
    return RP_OK;
}

/* ================================================================================================
 * portable kernels
 * ================================================================================================ */
void rp_adc_portable(const float *lut, uint32_t ncols, const uint32_t *cols, const uint8_t *codes, size_t stride,
                     size_t cnt, float *out) {
    size_t t = 0;
    uint32_t j;
    if (cols == NULL) {
        for (; t + 4 <= cnt; t += 4) {
            const uint8_t *p0 = codes + t * stride, *p1 = p0 + stride, *p2 = p1 + stride, *p3 = p2 + stride;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (j = 0; j < ncols; j++) {
                const float *l = lut + (size_t)j * 256u;
                a0 += l[p0[j]];
                a1 += l[p1[j]];
                a2 += l[p2[j]];
                a3 += l[p3[j]];
            }
            out[t] = a0;
            out[t + 1] = a1;
            out[t + 2] = a2;
            out[t + 3] = a3;
        }
        for (; t < cnt; t++) {
            const uint8_t *p = codes + t * stride;
            float a = 0.0f;
            for (j = 0; j < ncols; j++) a += lut[(size_t)j * 256u + p[j]];
            out[t] = a;
        }
        return;
    }
    for (; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float a = 0.0f;
        for (j = 0; j < ncols; j++) a += lut[(size_t)j * 256u + p[cols[j]]];
        out[t] = a;
    }
}

void rp_sq8_portable(const float *qs, uint32_t d, float offset, const uint8_t *codes, size_t stride, size_t cnt,
                     float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
        uint32_t j = 0, l;
        for (; j + 8u <= d; j += 8u)
            for (l = 0; l < 8u; l++) a[l] = a[l] + qs[j + l] * (float)p[j + l];
        s = rp_reduce8(a);
        for (; j < d; j++) s = s + qs[j] * (float)p[j];
        out[t] = s + offset;
    }
}

void rp_sq4_portable(const float *q_lo, const float *q_hi, uint32_t nbytes, float offset, const uint8_t *codes,
                     size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
        uint32_t j = 0, l;
        for (; j + 8u <= nbytes; j += 8u)
            for (l = 0; l < 8u; l++) {
                a[l] = a[l] + q_lo[j + l] * (float)(p[j + l] & 15u);
                a[l] = a[l] + q_hi[j + l] * (float)(p[j + l] >> 4);
            }
        s = rp_reduce8(a);
        for (; j < nbytes; j++) {
            s = s + q_lo[j] * (float)(p[j] & 15u);
            s = s + q_hi[j] * (float)(p[j] >> 4);
        }
        out[t] = s + offset;
    }
}

void rp_f32_portable(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
        uint32_t j = 0, l;
        for (; j + 8u <= d; j += 8u)
            for (l = 0; l < 8u; l++) a[l] = a[l] + q[j + l] * rp_load_f32(p + 4u * (j + l));
        s = rp_reduce8(a);
        for (; j < d; j++) s = s + q[j] * rp_load_f32(p + 4u * j);
        out[t] = s;
    }
}

void rp_f16_portable(const float *q, uint32_t d, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
        uint32_t j = 0, l;
        for (; j + 8u <= d; j += 8u)
            for (l = 0; l < 8u; l++) a[l] = a[l] + q[j + l] * rp_half_to_float(rp_le16(p + 2u * (j + l)));
        s = rp_reduce8(a);
        for (; j < d; j++) s = s + q[j] * rp_half_to_float(rp_le16(p + 2u * j));
        out[t] = s;
    }
}

uint32_t rp_fs4_block_portable(const uint8_t *blk, const uint16_t *lut16, uint32_t n_pairs, uint16_t *sums,
                               uint16_t floor) {
    uint32_t acc[RP_FS4_WIDTH], p, t, mask = 0;
    for (t = 0; t < RP_FS4_WIDTH; t++) acc[t] = 0;
    for (p = 0; p < n_pairs; p++) {
        const uint8_t *row = blk + (size_t)p * RP_FS4_WIDTH;
        const uint16_t *l = lut16 + (size_t)p * 256u;
        for (t = 0; t < RP_FS4_WIDTH; t++) acc[t] += l[row[t]];
    }
    for (t = 0; t < RP_FS4_WIDTH; t++) {
        sums[t] = (uint16_t)acc[t];
        if (acc[t] >= floor) mask |= 1u << t;
    }
    return mask;
}

uint32_t rp_ge_mask_portable(const uint16_t *sums, uint16_t floor) {
    uint32_t t, mask = 0;
    for (t = 0; t < RP_FS4_WIDTH; t++)
        if (sums[t] >= floor) mask |= 1u << t;
    return mask;
}

static inline uint32_t popcount64(uint64_t x) { return (uint32_t)__builtin_popcountll(x); }

void rp_hamming_portable(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    size_t t;
    uint32_t w;
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        int64_t dist = 0;
        for (w = 0; w < bq->nwords; w++) dist += popcount64(bq->q[w] ^ rp_code_word(p, bq->nbytes, w));
        out[t] = -(float)dist;
    }
}

void rp_bitplane_portable(const rp_bitq *bq, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    rp_bitplane_loop(bq, codes, stride, cnt, out);
}

/* ================================================================================================
 * per-query state (lookup tables, scaled queries, bit planes)
 * ================================================================================================ */
typedef struct qstate {
    const rp_codec *c;
    rp_kernel kern;
    uint32_t nread;   /* bytes read per code */
    uint32_t ncols;   /* ADC columns (pq8: m; pq4: m/2 byte tables; rq: codebooks used) */
    uint32_t *cols;   /* rq with bounds: code column of each codebook (else NULL) */
    float *qp;        /* rq -pD: the projected query P^T q [D] */
    float *ydec;      /* rq -n: a decoded code [W] (scratch of rq_inv_norm) */
    float *qrot;      /* rotated query [dim] (opq) */
    float *lut;       /* ADC tables [ncols][256] */
    float *lut4;      /* pq4: float tables [m][16] */
    uint8_t *qlut;    /* pq4: quantised tables [m][16] */
    uint8_t *tab;     /* pq4 SIMD tables [n_pairs][2][16] */
    uint16_t *lut16;  /* pq4 portable tables [n_pairs][256] */
    double fs_scale, fs_bias;
    float *qs;        /* sq: scaled query [dim] (sq4: q_lo [nbytes] then q_hi [nbytes]) */
    float offset;     /* sq: <q, lo>; rq -pD: <q, mean> */
    const float *q;   /* float32 / fp16: the query */
    float *proj;      /* simhash: projections [nbits] */
    uint64_t *words;  /* simhash: planes [16][nwords] or hamming query [nwords] */
    rp_bitq bq;
    float rb_qc;      /* rabitq: <q, c> (float32, as Python's q @ centroid) */
    uint32_t rb_stages; /* rabitq: stages scored (1 or 2) */
    int query_bits;
    size_t bytes;     /* allocated */
} qstate;

static void *xcalloc(size_t n, size_t size, size_t *acc) {
    void *p;
    if (n == 0) n = 1;
    if (size != 0 && n > (size_t)-1 / size) return NULL;
    p = calloc(n, size);
    if (p != NULL && acc != NULL) *acc += n * size;
    return p;
}

static void qstate_free(qstate *s) {
    free(s->cols);
    free(s->qp);
    free(s->ydec);
    free(s->qrot);
    free(s->lut);
    free(s->lut4);
    free(s->qlut);
    free(s->tab);
    free(s->lut16);
    free(s->qs);
    free(s->proj);
    free(s->words);
    memset(s, 0, sizeof(*s));
}

/* Allocate the per-query buffers of codec `c` (ncb: rq codebooks used). */
static int qstate_init(qstate *s, const rp_codec *c, uint32_t nread, uint32_t ncb, int query_bits, rp_error *err) {
    size_t *b;
    int fail = 0;
    memset(s, 0, sizeof(*s));
    s->c = c;
    s->nread = nread;
    s->query_bits = query_bits == 0 ? 8 : query_bits;
    b = &s->bytes;
    if (c->rotation != NULL && (c->family == RP_FAM_PQ8 || c->family == RP_FAM_OPQ8 || c->family == RP_FAM_PQ4)) {
        s->qrot = (float *)xcalloc(c->dim, sizeof(float), b);
        fail |= s->qrot == NULL;
    }
    switch (c->family) {
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
        s->ncols = c->m;
        s->lut = (float *)xcalloc((size_t)c->m * 256u, sizeof(float), b);
        fail |= s->lut == NULL;
        break;
    case RP_FAM_PQ4:
        s->ncols = c->m / 2u;
        s->lut = (float *)xcalloc((size_t)s->ncols * 256u, sizeof(float), b);
        s->lut4 = (float *)xcalloc((size_t)c->m * 16u, sizeof(float), b);
        s->qlut = (uint8_t *)xcalloc((size_t)c->m * 16u, 1, b);
        s->tab = (uint8_t *)xcalloc((size_t)s->ncols * 32u, 1, b);
        s->lut16 = (uint16_t *)xcalloc((size_t)s->ncols * 256u, sizeof(uint16_t), b);
        fail |= s->lut == NULL || s->lut4 == NULL || s->qlut == NULL || s->tab == NULL || s->lut16 == NULL;
        break;
    case RP_FAM_RQ: {
        uint32_t j;
        s->ncols = ncb;
        s->lut = (float *)xcalloc((size_t)ncb * 256u, sizeof(float), b);
        fail |= s->lut == NULL;
        if (c->rq_proj != NULL) {
            s->qp = (float *)xcalloc(c->rq_sub, sizeof(float), b);
            fail |= s->qp == NULL;
        }
        if (c->rq_unit) {
            s->ydec = (float *)xcalloc(rp_rq_width(c), sizeof(float), b);
            fail |= s->ydec == NULL;
        }
        if (c->bounds) {
            s->cols = (uint32_t *)xcalloc(ncb, sizeof(uint32_t), b);
            fail |= s->cols == NULL;
            if (s->cols != NULL)
                for (j = 0; j < ncb; j++) s->cols[j] = c->cb_col[j];
        } else {
            for (j = 0; j < ncb; j++)
                if (c->cb_col[j] != j) break;
            if (j < ncb) {
                s->cols = (uint32_t *)xcalloc(ncb, sizeof(uint32_t), b);
                fail |= s->cols == NULL;
                if (s->cols != NULL)
                    for (j = 0; j < ncb; j++) s->cols[j] = c->cb_col[j];
            }
        }
        break;
    }
    case RP_FAM_SQ8:
        s->qs = (float *)xcalloc(c->dim, sizeof(float), b);
        fail |= s->qs == NULL;
        break;
    case RP_FAM_SQ4:
        s->qs = (float *)xcalloc((size_t)c->bytes_per_vector * 2u, sizeof(float), b);
        fail |= s->qs == NULL;
        break;
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING: {
        uint32_t nwords = (c->bytes_per_vector + 7u) / 8u;
        if (s->query_bits < 1 || s->query_bits > 16) return rp_fail(err, RP_E_ARGUMENT, "query_bits must be in 1..16, got %d", s->query_bits);
        s->proj = (float *)xcalloc(c->nbits, sizeof(float), b);
        s->words = (uint64_t *)xcalloc((size_t)nwords * (c->family == RP_FAM_HAMMING ? 1u : (uint32_t)s->query_bits),
                                       sizeof(uint64_t), b);
        fail |= s->proj == NULL || s->words == NULL;
        s->bq.nbytes = c->bytes_per_vector;
        s->bq.nwords = nwords;
        s->bq.q = s->words;
        break;
    }
    case RP_FAM_RABITQ: {
        uint32_t nwords = (c->rb_nb0 + 7u) / 8u;
        if (s->query_bits < 1 || s->query_bits > 16) return rp_fail(err, RP_E_ARGUMENT, "query_bits must be in 1..16, got %d", s->query_bits);
        s->rb_stages = ncb;
        s->qrot = (float *)xcalloc(c->dim, sizeof(float), b);
        s->words = (uint64_t *)xcalloc((size_t)nwords * (uint32_t)s->query_bits, sizeof(uint64_t), b);
        fail |= s->qrot == NULL || s->words == NULL;
        s->bq.nbytes = c->rb_nb0;
        s->bq.nwords = nwords;
        s->bq.q = s->words;
        break;
    }
    default:
        break;
    }
    if (fail) {
        qstate_free(s);
        return rp_fail(err, RP_E_NOMEM, "out of memory for the query tables");
    }
    return RP_OK;
}

/* y_i = sum_j R[i][j] q_j (float64 sums rounded to float32). */
static void rotate_query(const rp_codec *c, const float *q, float *y) {
    uint32_t i, j, d = c->dim;
    for (i = 0; i < d; i++) {
        const float *r = c->rotation + (size_t)i * d;
        double acc = 0.0;
        for (j = 0; j < d; j++) acc += (double)r[j] * (double)q[j];
        y[i] = (float)acc;
    }
}

/* _lut_into: out[j][cc] = q[j*dsub:(j+1)*dsub] . centroids[j][cc] (float32, sequential), entries beyond ksub
 * set to 0 (width entries per row). Returns 0 when an entry is beyond 3e38 / m (or NaN). */
static int pq_lut(const rp_codec *c, const float *q, float *out, uint32_t width) {
    uint32_t m = c->m, ksub = c->ksub, dsub = c->dsub, j, cc, s;
    float limit = (float)(3.0e38 / (double)m);
    int ok = 1;
    for (j = 0; j < m; j++) {
        const float *qj = q + (size_t)j * dsub;
        float *row = out + (size_t)j * width;
        for (cc = 0; cc < ksub; cc++) {
            const float *cen = c->centroids + ((size_t)j * ksub + cc) * dsub;
            float acc = 0.0f;
            for (s = 0; s < dsub; s++) acc += qj[s] * cen[s];
            row[cc] = acc;
            if (!(fabsf(acc) <= limit)) ok = 0;
        }
        for (cc = ksub; cc < width; cc++) row[cc] = 0.0f;
    }
    return ok;
}

/* _quantize_one over lut [m][16]: qlut = round((lut - min_j) * scale); returns scale and bias. */
static void quantize_one(const float *lut, uint32_t m, uint8_t *qlut, double *scale_out, double *bias_out) {
    double span = 0.0, bias = 0.0, scale;
    uint32_t j, cc;
    for (j = 0; j < m; j++) {
        const float *row = lut + (size_t)j * 16u;
        float lo = row[0], hi = row[0];
        for (cc = 1; cc < 16u; cc++) {
            lo = row[cc] < lo ? row[cc] : lo;
            hi = row[cc] > hi ? row[cc] : hi;
        }
        if ((double)hi - (double)lo > span) span = (double)hi - (double)lo;
        bias += (double)lo;
    }
    scale = span > 0.0 ? 255.0 / span : 1.0;
    for (j = 0; j < m; j++) {
        const float *row = lut + (size_t)j * 16u;
        float lo = row[0];
        for (cc = 1; cc < 16u; cc++) lo = row[cc] < lo ? row[cc] : lo;
        for (cc = 0; cc < 16u; cc++) {
            /* floor(y + 0.5) with y >= 0 (row >= lo, scale > 0): truncation of y + 0.5, no libm call */
            double y = ((double)row[cc] - (double)lo) * scale + 0.5;
            double v = y < 256.0 ? (double)(int32_t)y : 255.0;
            qlut[(size_t)j * 16u + cc] = (uint8_t)(v > 255.0 ? 255.0 : v);
        }
    }
    *scale_out = scale;
    *bias_out = bias;
}

/* binscan.py's quantize_query_planes for one query of nb coordinates (s->words zeroed, [query_bits][nwords]):
 * u = rint((proj - lo) / delta) in 0..2^B-1, plane i = bit i of u packed like np.packbits; the bit-plane
 * kernel then scores proj_quantised . (2 b - 1) = alpha * dot_u + beta * ones + gamma. */
static void build_planes(qstate *s, const float *proj, uint32_t nb) {
    double lo, hi, span, delta, usum = 0.0, total;
    int qb = s->query_bits;
    double levels = (double)((1 << qb) - 1);
    uint32_t i, nw = s->bq.nwords;
    lo = hi = (double)proj[0];
    for (i = 1; i < nb; i++) {
        double v = (double)proj[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    span = hi - lo;
    delta = span > 0.0 ? span / levels : 1.0;
    for (i = 0; i < nb; i++) {
        double u = nearbyint(((double)proj[i] - lo) / delta);
        uint32_t ui, pl;
        u = u < 0.0 ? 0.0 : (u > levels ? levels : u);
        usum += u;
        ui = (uint32_t)u;
        for (pl = 0; pl < (uint32_t)qb; pl++)
            if ((ui >> pl) & 1u) {
                uint32_t byte = i / 8u, bit = 7u - i % 8u;
                s->words[(size_t)pl * nw + byte / 8u] |= (uint64_t)1 << (8u * (byte % 8u) + bit);
            }
    }
    total = lo * (double)nb + delta * usum;
    s->bq.nplanes = (uint32_t)qb;
    s->bq.alpha = 2.0 * delta;
    s->bq.beta = 2.0 * lo;
    s->bq.gamma = -total;
}

/* Prepare the tables of one query. quantised (4-bit pq): 1 = also the uint8 tables, 2 = only those (approximate). */
static int qstate_query(qstate *s, const float *query, int quantised, rp_error *err) {
    const rp_codec *c = s->c;
    const float *q = query;
    int st = rp_check_query(query, c->dim, err);
    if (st != RP_OK) return st;
    if (s->qrot != NULL && c->family != RP_FAM_RABITQ) {
        rotate_query(c, query, s->qrot);
        q = s->qrot;
    }
    switch (c->family) {
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
        if (!pq_lut(c, q, s->lut, 256u)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
        return RP_OK;
    case RP_FAM_PQ4: {
        uint32_t p, b, np = s->ncols;
        if (!pq_lut(c, q, s->lut4, 16u)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
        if (quantised == 0) /* pair tables [n_pairs][256] (exact ADC of every code): lut[2p][b & 15] + lut[2p+1][b >> 4];
                               the fast-scan's rescoring computes the same float32 pair sums on the fly */
            for (p = 0; p < np; p++) {
                const float *le = s->lut4 + (size_t)(2u * p) * 16u, *lo = le + 16;
                float *pt = s->lut + (size_t)p * 256u;
                for (b = 0; b < 256u; b++) pt[b] = le[b & 15u] + lo[b >> 4];
            }
        if (quantised) {
            quantize_one(s->lut4, c->m, s->qlut, &s->fs_scale, &s->fs_bias);
            for (p = 0; p < np; p++) {
                const uint8_t *qe = s->qlut + (size_t)(2u * p) * 16u, *qo = qe + 16;
                memcpy(s->tab + (size_t)p * 32u, qe, 16);
                memcpy(s->tab + (size_t)p * 32u + 16u, qo, 16);
                if (s->kern == RP_KERNEL_PORTABLE)
                    for (b = 0; b < 256u; b++) s->lut16[(size_t)p * 256u + b] = (uint16_t)(qe[b & 15u] + qo[b >> 4]);
            }
        }
        return RP_OK;
    }
    case RP_FAM_RQ: {
        uint32_t cb, k, j, d = rp_rq_width(c);
        float limit = (float)(3.0e38 / (double)s->ncols);
        if (c->rq_proj != NULL) {
            /* -pD: <q, x_hat> = <q, mean> + <P^T q, y>: the tables take P^T q (float64 sums rounded to float32), the
             * offset <q, mean> is added to each ADC sum; the ncols tables and the offset share float32's range */
            uint32_t i, dim = c->dim;
            double off = 0.0;
            for (i = 0; i < d; i++) {
                double acc = 0.0;
                for (j = 0; j < dim; j++) acc += (double)query[j] * (double)c->rq_proj[(size_t)j * d + i];
                s->qp[i] = (float)acc;
            }
            for (j = 0; j < dim; j++) off += (double)query[j] * (double)c->rq_mean[j];
            s->offset = (float)off;
            limit = (float)(3.0e38 / ((double)s->ncols + 1.0));
            if (!(fabsf(s->offset) <= limit)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
            q = s->qp;
        }
        for (cb = 0; cb < s->ncols; cb++)
            for (k = 0; k < 256u; k++) {
                const float *w = c->codebooks + ((size_t)cb * 256u + k) * d;
                double acc = 0.0;
                float v;
                for (j = 0; j < d; j++) acc += (double)q[j] * (double)w[j];
                v = (float)acc;
                if (!(fabsf(v) <= limit)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
                s->lut[(size_t)cb * 256u + k] = v;
            }
        return RP_OK;
    }
    case RP_FAM_SQ8:
    case RP_FAM_SQ4: {
        uint32_t j, d = c->dim;
        double off = 0.0;
        for (j = 0; j < d; j++) off += (double)q[j] * (double)c->lo[j];
        s->offset = (float)off;
        if (c->family == RP_FAM_SQ8) {
            for (j = 0; j < d; j++) s->qs[j] = q[j] * c->step[j];
        } else {
            uint32_t nb = c->bytes_per_vector;
            float *ql = s->qs, *qh = s->qs + nb;
            for (j = 0; j < nb; j++) {
                ql[j] = q[2u * j] * c->step[2u * j];
                qh[j] = 2u * j + 1u < d ? q[2u * j + 1u] * c->step[2u * j + 1u] : 0.0f;
            }
        }
        return RP_OK;
    }
    case RP_FAM_FLOAT32:
    case RP_FAM_FP16:
        s->q = q;
        return RP_OK;
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING: {
        uint32_t nb = c->nbits, d = c->dim, i, j, nw = s->bq.nwords;
        float scale = c->scale;
        memset(s->words, 0, sizeof(uint64_t) * nw * (c->family == RP_FAM_HAMMING ? 1u : (uint32_t)s->query_bits));
        if (c->family == RP_FAM_HAMMING) {
            for (i = 0; i < nb; i++) {
                const float *r = c->projection + (size_t)i * d;
                double acc = 0.0;
                for (j = 0; j < d; j++) acc += (double)r[j] * (double)q[j];
                if ((float)acc > 0.0f) { /* np.packbits order: bit i is bit 7 - i%8 of byte i/8 */
                    uint32_t byte = i / 8u, bit = 7u - i % 8u;
                    s->words[byte / 8u] |= (uint64_t)1 << (8u * (byte % 8u) + bit);
                }
            }
            s->bq.nplanes = 0;
            return RP_OK;
        } else {
            for (i = 0; i < nb; i++) {
                const float *r = c->projection + (size_t)i * d;
                double acc = 0.0;
                float v;
                for (j = 0; j < d; j++) acc += (double)r[j] * (double)q[j];
                v = scale * (float)acc;
                if (!(fabsf(v) <= 1e30f)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
                s->proj[i] = v;
            }
            build_planes(s, s->proj, nb);
            return RP_OK;
        }
    }
    case RP_FAM_RABITQ: {
        /* Python: qrot = q @ rotation.T (float32), |qrot| <= 1e30; qc = q @ centroid (float32) */
        uint32_t d = c->dim, j;
        double acc = 0.0;
        rotate_query(c, query, s->qrot);
        for (j = 0; j < d; j++)
            if (!(fabsf(s->qrot[j]) <= 1e30f)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
        for (j = 0; j < d; j++) acc += (double)query[j] * (double)c->rb_centroid[j];
        s->rb_qc = (float)acc;
        if (!(fabsf(s->rb_qc) <= 3.4028234663852886e38f)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
        memset(s->words, 0, sizeof(uint64_t) * s->bq.nwords * (uint32_t)s->query_bits);
        build_planes(s, s->qrot, d);
        s->bq.offset = (double)s->rb_qc;
        return RP_OK;
    }
    default:
        return rp_fail(err, RP_E_UNSUPPORTED, "codec family has no kernel");
    }
}

/* Score `cnt` codes (rows at codes + t * stride) for the prepared query. */
static void qstate_score(const qstate *s, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    const rp_codec *c = s->c;
    rp_kernel k = s->kern;
    switch (c->family) {
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
    case RP_FAM_PQ4:
    case RP_FAM_RQ:
        /* one scalar loop for every path: an AVX2 gather version (8 items, codes transposed in registers)
         * measured 1.3-1.4x slower than this loop on AMD EPYC (100k x 16 B), and NEON has no gather */
        rp_adc_portable(s->lut, s->ncols, s->cols, codes, stride, cnt, out);
        return;
    case RP_FAM_SQ8:
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2) { rp_sq8_avx2(s->qs, c->dim, s->offset, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_sq8_neon(s->qs, c->dim, s->offset, codes, stride, cnt, out); return; }
#endif
        rp_sq8_portable(s->qs, c->dim, s->offset, codes, stride, cnt, out);
        return;
    case RP_FAM_SQ4: {
        uint32_t nb = c->bytes_per_vector;
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2) { rp_sq4_avx2(s->qs, s->qs + nb, nb, s->offset, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_sq4_neon(s->qs, s->qs + nb, nb, s->offset, codes, stride, cnt, out); return; }
#endif
        rp_sq4_portable(s->qs, s->qs + nb, nb, s->offset, codes, stride, cnt, out);
        return;
    }
    case RP_FAM_FLOAT32:
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2) { rp_f32_avx2(s->q, c->dim, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_f32_neon(s->q, c->dim, codes, stride, cnt, out); return; }
#endif
        rp_f32_portable(s->q, c->dim, codes, stride, cnt, out);
        return;
    case RP_FAM_FP16:
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2 && rp_cpu_has_f16c()) { rp_f16_avx2(s->q, c->dim, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_f16_neon(s->q, c->dim, codes, stride, cnt, out); return; }
#endif
        rp_f16_portable(s->q, c->dim, codes, stride, cnt, out);
        return;
    case RP_FAM_HAMMING:
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2) { rp_hamming_avx2(&s->bq, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_hamming_neon(&s->bq, codes, stride, cnt, out); return; }
#endif
        rp_hamming_portable(&s->bq, codes, stride, cnt, out);
        return;
    case RP_FAM_SIMHASH:
    case RP_FAM_RABITQ:
#if RP_HAVE_AVX2
        if (k == RP_KERNEL_AVX2) { rp_bitplane_avx2(&s->bq, codes, stride, cnt, out); return; }
#endif
#if RP_HAVE_NEON
        if (k == RP_KERNEL_NEON) { rp_bitplane_neon(&s->bq, codes, stride, cnt, out); return; }
#endif
        rp_bitplane_portable(&s->bq, codes, stride, cnt, out);
        return;
    default:
        return;
    }
}

/* simhash (asymmetric) exact score for rp_codec_score: c * (R q) . s, s = 2 b - 1 (float64, rounded). */
static void simhash_exact(const qstate *s, const uint8_t *codes, size_t stride, size_t cnt, float *out) {
    const rp_codec *c = s->c;
    uint32_t nb = c->nbits, i;
    double total = 0.0;
    size_t t;
    for (i = 0; i < nb; i++) total += (double)s->proj[i];
    for (t = 0; t < cnt; t++) {
        const uint8_t *p = codes + t * stride;
        double on = 0.0;
        for (i = 0; i < nb; i++)
            if ((p[i / 8u] >> (7u - i % 8u)) & 1u) on += (double)s->proj[i];
        out[t] = (float)(2.0 * on - total);
    }
}

/* ---- rabitq (rabitq.py: _stage_factors, _grid, _estimate) ------------------------------------------ */
/* kappa0 = 1/sqrt(d), kappa1 = 1/(L sqrt(d)), L = 2^(B-1) */
static double rb_kappa(const rp_codec *c, uint32_t stage) {
    double d = (double)c->dim;
    return stage == 0 ? 1.0 / sqrt(d) : 1.0 / ((double)(1u << (c->rb_bits - 1u)) * sqrt(d));
}

/* Byte offset of a stage's two float16 factors (sigma, eps). */
static uint32_t rb_factor_off(const rp_codec *c, uint32_t stage) {
    return stage == 0 ? c->rb_nb0 : c->rb_nb0 + 4u + c->rb_nb1;
}

/* The factors of stages 0..stages-1 are ones an encoder writes: sigma finite and >= 0, eps >= 0 (Inf allowed). */
static int rb_factors_ok(const rp_codec *c, const uint8_t *p, uint32_t stages) {
    uint32_t st;
    for (st = 0; st < stages; st++) {
        uint32_t off = rb_factor_off(c, st);
        float sigma = rp_half_to_float(rp_le16(p + off)), eps = rp_half_to_float(rp_le16(p + off + 2u));
        if (!(sigma >= 0.0f && sigma <= 65504.0f) || !(eps >= 0.0f)) return 0;
    }
    return 1;
}

/* s = sigma * (kappa * rho) in float64, as Python's _stage_factors. */
static double rb_item_scale(const rp_codec *c, const uint8_t *p, uint32_t stage) {
    double scale = rb_kappa(c, stage) * (double)c->rb_rho;
    return (double)rp_half_to_float(rp_le16(p + rb_factor_off(c, stage))) * scale;
}

/* The estimate of the stage the query state scores (rb_stages - 1): <q, c> + f32(f32(<P q, g>) * f32(s)),
 * in float32 like Python's est = qc + dot * s.astype(float32); the dot is summed in float64 and rounded. */
static float rb_estimate(const qstate *s, const uint8_t *p) {
    const rp_codec *c = s->c;
    const float *y = s->qrot;
    uint32_t d = c->dim, j, stage = s->rb_stages - 1u;
    double dot = 0.0;
    float dot32, s32, term;
    if (stage == 0) {
        for (j = 0; j < d; j++) dot += ((p[j >> 3] >> (7u - (j & 7u))) & 1u) ? (double)y[j] : -(double)y[j];
    } else {
        uint32_t bm1 = c->rb_bits - 1u, levels = 1u << bm1, pos = 0, b;
        double half = (double)((1u << c->rb_bits) - 1u) / 2.0;
        const uint8_t *lp = p + c->rb_nb0 + 4u;
        for (j = 0; j < d; j++) {
            uint32_t k = ((p[j >> 3] >> (7u - (j & 7u))) & 1u) * levels, low = 0;
            for (b = 0; b < bm1; b++, pos++) low = (low << 1) | ((lp[pos >> 3] >> (7u - (pos & 7u))) & 1u);
            dot += (double)y[j] * ((double)(k + low) - half);
        }
    }
    dot32 = (float)dot;
    s32 = (float)rb_item_scale(c, p, stage);
    term = dot32 * s32;
    return s->rb_qc + term;
}

/* Code values beyond ksub (pq families): index of the first bad row, or -1. Rows in `skip` are not read. */
static int pq_codes_ok(const rp_codec *c, const uint8_t *p) {
    uint32_t j;
    if (c->family == RP_FAM_PQ4) {
        if (c->ksub >= 16u) return 1;
        for (j = 0; j < c->m / 2u; j++)
            if ((p[j] & 15u) >= c->ksub || (p[j] >> 4) >= c->ksub) return 0;
        return 1;
    }
    if (c->family != RP_FAM_PQ8 && c->family != RP_FAM_OPQ8) return 1;
    if (c->ksub >= 256u) return 1;
    for (j = 0; j < c->m; j++)
        if (p[j] >= c->ksub) return 0;
    return 1;
}

/* ---- rq -pD / -n ------------------------------------------------------------------------------------------ */
/* rq -n: 1 / ||x_hat|| (float64, rounded to float32; 0 when the norm is 0) of the reconstruction of code p from its
 * first ncb codebooks. y = the sum of the codewords in float32, codebook order (Python's rq_decode); the squared
 * norm is summed in float64: ||y||^2, and with -pD ||mean + P y||^2 = ||mean||^2 + 2 <P^T mean, y> + ||y||^2
 * (P has orthonormal columns; Python takes the norm of the float32 d-dim reconstruction: equal to float32
 * rounding). y: scratch [W]. */
static float rq_inv_of(const rp_codec *c, const float *y) {
    uint32_t w = rp_rq_width(c), j;
    double n2 = 0.0;
    for (j = 0; j < w; j++) n2 += (double)y[j] * (double)y[j];
    if (c->rq_proj != NULL) {
        double cross = 0.0;
        for (j = 0; j < w; j++) cross += c->rq_pmean[j] * (double)y[j];
        n2 += c->rq_mean_sq + 2.0 * cross;
    }
    return n2 > 0.0 ? (float)(1.0 / sqrt(n2)) : 0.0f;
}

/* y += the codewords of codebooks [cb0, cb1) of code p (float32, in codebook order). */
static void rq_add_words(const rp_codec *c, const uint8_t *p, uint32_t cb0, uint32_t cb1, float *y) {
    uint32_t w = rp_rq_width(c), cb, j;
    for (cb = cb0; cb < cb1; cb++) {
        const float *cw = c->codebooks + ((size_t)cb * 256u + p[c->cb_col[cb]]) * w;
        for (j = 0; j < w; j++) y[j] += cw[j];
    }
}

static float rq_inv_norm(const rp_codec *c, const uint8_t *p, uint32_t ncb, float *y) {
    memset(y, 0, (size_t)rp_rq_width(c) * sizeof(float));
    rq_add_words(c, p, 0, ncb, y);
    return rq_inv_of(c, y);
}

/* An rq ADC sum to the score: + <q, mean> (-pD), then times the inverse norm (-n), in float32. The scanners and
 * rp_codec_score both finish through this, so their scores are identical. */
static inline float rq_finish(const qstate *s, float v, float inv) {
    if (s->c->rq_proj != NULL) v = v + s->offset;
    if (s->c->rq_unit) v = v * inv;
    return v;
}

static int rq_needs_finish(const rp_codec *c) { return c->family == RP_FAM_RQ && (c->rq_proj != NULL || c->rq_unit); }

int rp_rq_inv_norms(const rp_codec *c, const uint8_t *codes, uint64_t n, size_t stride, const rp_row_range *ranges,
                    size_t n_ranges, float *out, rp_error *err) {
    float *y;
    uint64_t t;
    size_t ri = 0;
    uint32_t w, s, ncb;
    int st = codec_check(c, err);
    if (st != RP_OK) return st;
    if (c->family != RP_FAM_RQ || !c->rq_unit || (n > 0 && (codes == NULL || out == NULL)))
        return rp_fail(err, RP_E_ARGUMENT, "rp_rq_inv_norms: not an rq -n codec, or a NULL argument");
    if (stride < c->bytes_per_vector) return rp_fail(err, RP_E_ARGUMENT, "stride %zu is below the code width", stride);
    w = rp_rq_width(c);
    y = (float *)malloc((size_t)w * sizeof(float));
    if (y == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory for the rq norms");
    for (t = 0; t < n; t++) {
        const uint8_t *p = codes + (size_t)t * stride;
        while (ri < n_ranges && ranges[ri].hi <= t) ri++;
        if (ri < n_ranges && ranges[ri].lo <= t) { /* a skipped row: never read */
            for (s = 0; s < c->n_stages; s++) out[(size_t)s * n + t] = 0.0f;
            continue;
        }
        /* the stages' prefixes one after the other: y after stage s is the float32 sum rq_inv_norm forms */
        memset(y, 0, (size_t)w * sizeof(float));
        for (s = 0, ncb = 0; s < c->n_stages; s++) {
            rq_add_words(c, p, ncb, ncb + c->stage_sizes[s], y);
            ncb += c->stage_sizes[s];
            out[(size_t)s * n + t] = rq_inv_of(c, y);
        }
    }
    free(y);
    rp_clear(err);
    return RP_OK;
}

/* ================================================================================================
 * one-shot scoring
 * ================================================================================================ */
int rp_codec_score(const rp_codec *codec, const float *query, const uint8_t *codes, uint64_t n, size_t stride,
                   uint32_t stages, float *out, rp_error *err) {
    qstate s;
    uint32_t nread = 0, ncb = 0;
    uint64_t t;
    int st = codec_check(codec, err);
    if (st != RP_OK) return st;
    if (query == NULL || (n > 0 && (codes == NULL || out == NULL))) return rp_fail(err, RP_E_ARGUMENT, "NULL argument");
    st = bytes_read(codec, stages, &ncb, &nread, err);
    if (st != RP_OK) return st;
    if (stride == 0) stride = codec->bytes_per_vector;
    if (stride < nread) return rp_fail(err, RP_E_ARGUMENT, "stride %zu is below the %u bytes a code holds", stride, (unsigned)nread);
    if (n > 0 && (n - 1u) > (uint64_t)(((size_t)-1 - nread) / stride))
        return rp_fail(err, RP_E_ARGUMENT, "n * stride overflows");
    st = rp_check_query(query, codec->dim, err);
    if (st != RP_OK) return st;
    for (t = 0; t < n; t++)
        if (!pq_codes_ok(codec, codes + (size_t)t * stride))
            return rp_fail(err, RP_E_CODEC, "code %llu holds a value beyond the codebook's %u entries",
                           (unsigned long long)t, (unsigned)codec->ksub);
    if (codec->family == RP_FAM_RABITQ)
        for (t = 0; t < n; t++)
            if (!rb_factors_ok(codec, codes + (size_t)t * stride, ncb))
                return rp_fail(err, RP_E_CODEC, "code %llu holds factor bytes no encoder writes (NaN, Inf or negative float16)",
                               (unsigned long long)t);
    st = qstate_init(&s, codec, nread, ncb, 8, err);
    if (st != RP_OK) return st;
    s.kern = rp_active_kernel();
    st = qstate_query(&s, query, 0, err);
    if (st == RP_OK) {
        if (codec->family == RP_FAM_SIMHASH)
            simhash_exact(&s, codes, stride, (size_t)n, out);
        else if (codec->family == RP_FAM_RABITQ)
            for (t = 0; t < n; t++) out[t] = rb_estimate(&s, codes + (size_t)t * stride);
        else {
            qstate_score(&s, codes, stride, (size_t)n, out);
            if (rq_needs_finish(codec))
                for (t = 0; t < n; t++)
                    out[t] = rq_finish(&s, out[t], codec->rq_unit ? rq_inv_norm(codec, codes + (size_t)t * stride, ncb, s.ydec) : 1.0f);
        }
        if (!all_finite(out, (size_t)n)) st = rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
    }
    qstate_free(&s);
    if (st == RP_OK) rp_clear(err);
    return st;
}

/* ================================================================================================
 * the bounded heap (min-heap on (value, -index): the root is the worst kept candidate)
 * ================================================================================================ */
static void sift_down(float *hv, int64_t *hi, size_t pos, size_t size) {
    for (;;) {
        size_t l = 2u * pos + 1u, r, ch;
        float tv;
        int64_t ti;
        if (l >= size) return;
        ch = l;
        r = l + 1u;
        if (r < size && (hv[r] < hv[l] || (hv[r] == hv[l] && hi[r] > hi[l]))) ch = r;
        if (!(hv[ch] < hv[pos] || (hv[ch] == hv[pos] && hi[ch] > hi[pos]))) return;
        tv = hv[pos], hv[pos] = hv[ch], hv[ch] = tv;
        ti = hi[pos], hi[pos] = hi[ch], hi[ch] = ti;
        pos = ch;
    }
}

static void heap_reset(float *hv, int64_t *hi, size_t k) {
    size_t j;
    for (j = 0; j < k; j++) {
        hv[j] = -INFINITY;
        hi[j] = RP_SENTINEL + (int64_t)j;
    }
}

static inline void heap_replace(float *hv, int64_t *hi, size_t k, float v, int64_t idx) {
    hv[0] = v;
    hi[0] = idx;
    sift_down(hv, hi, 0, k);
}

/* Pop worst-first into the outputs from the back (best first); returns the count of real entries. */
static uint32_t heap_drain(float *hv, int64_t *hi, size_t k, int64_t *out_ids, float *out_vals) {
    size_t size = k, t;
    uint32_t n = 0;
    for (t = k; t-- > 0;) {
        out_vals[t] = hv[0];
        out_ids[t] = hi[0];
        size--;
        hv[0] = hv[size];
        hi[0] = hi[size];
        sift_down(hv, hi, 0, size);
    }
    for (t = 0; t < k; t++)
        if (out_ids[t] < RP_SENTINEL) n++;
    for (t = n; t < k; t++) {
        out_ids[t] = -1;
        out_vals[t] = -INFINITY;
    }
    return n;
}

/* ================================================================================================
 * scanners
 * ================================================================================================ */
struct rp_scanner {
    const rp_codec *codec;
    const uint8_t *codes;
    uint64_t n;
    size_t stride;
    uint32_t nread, ncb;
    int approximate;
    int fs4;                 /* 4-bit PQ with the quantised block pass */
    qstate q;
    /* 4-bit blocks */
    uint8_t *blocks;         /* [nb][n_pairs][32] */
    uint16_t *accs;          /* [nb * 32] */
    uint64_t nblocks;
    /* float32 / fp16 / sq: largest |x_j| any item decodes to */
    double *colmax;
    /* rq -pD / -n: finish the ADC sums (rq_finish); -n: inverse norms [n] of the rows' reconstructions through the
     * scanned stages (rq_inv: borrowed from a pack, or rq_inv_own: computed by the scanner; 0 for skipped rows) */
    int rq_post;
    const float *rq_inv;
    float *rq_inv_own;
    /* rabitq: stage-0 item scales [n] (0 for skipped rows), the largest scale of the stages used, and the
     * candidate buffers of the rescoring pass */
    double *rb_scale;
    double rb_smax;
    int64_t *rb_rows;
    float *rb_vals;
    size_t rb_cap;
    /* scratch */
    float *chunk;            /* [RP_CHUNK] */
    float *hv;
    int64_t *hi;
    size_t hcap;
    int64_t *excl;
    size_t excl_cap, n_excl;
    rp_row_range *skip;
    size_t n_skip, skip_cap;
    size_t mem;
    char kname[40];
    int kname_kern;        /* the kernel kname was formatted for */
};

static void scanner_name(rp_scanner *s, rp_kernel k) {
    const rp_codec *c = s->codec;
    const char *base = "?";
    const char *kn = kernel_str(k);
    switch (c->family) {
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8: base = "pq8"; kn = "scalar"; break;
    case RP_FAM_PQ4:
        base = s->fs4 ? "fs4" : "pq4-adc";
        if (!s->fs4) kn = "scalar";
        break;
    case RP_FAM_RQ: base = "rq-adc"; kn = "scalar"; break;
    case RP_FAM_SQ8: base = "sq8"; break;
    case RP_FAM_SQ4: base = "sq4"; break;
    case RP_FAM_FLOAT32: base = "float32"; break;
    case RP_FAM_FP16: base = "fp16"; break;
    case RP_FAM_SIMHASH: base = "simhash-bitplane"; break;
    case RP_FAM_HAMMING: base = "hamming"; break;
    case RP_FAM_RABITQ: base = "rabitq-bitplane"; break;
    default: break;
    }
    snprintf(s->kname, sizeof(s->kname), "%s-%s%s", base, kn,
             s->fs4 && s->approximate ? "-approx" : (c->family == RP_FAM_RABITQ && s->q.rb_stages > 1u ? "+rerank" : ""));
    s->kname_kern = (int)k;
}

void rp_scanner_free(rp_scanner *s) {
    if (s == NULL) return;
    qstate_free(&s->q);
    free(s->blocks);
    free(s->accs);
    free(s->colmax);
    free(s->rq_inv_own);
    free(s->rb_scale);
    free(s->rb_rows);
    free(s->rb_vals);
    free(s->chunk);
    free(s->hv);
    free(s->hi);
    free(s->excl);
    free(s->skip);
    free(s);
}

const char *rp_scanner_kernel(const rp_scanner *s) { return s == NULL ? "" : s->kname; }
size_t rp_scanner_memory(const rp_scanner *s) { return s == NULL ? 0 : s->mem + s->q.bytes; }

int rp_scanner_set_skip(rp_scanner *s, const rp_row_range *ranges, size_t n_ranges, rp_error *err) {
    size_t i;
    if (s == NULL || (ranges == NULL && n_ranges > 0)) return rp_fail(err, RP_E_ARGUMENT, "NULL argument");
    for (i = 0; i < n_ranges; i++) {
        if (ranges[i].lo >= ranges[i].hi) return rp_fail(err, RP_E_ARGUMENT, "skip range %zu is empty or reversed", i);
        if (i > 0 && ranges[i].lo < ranges[i - 1].hi)
            return rp_fail(err, RP_E_ARGUMENT, "skip ranges must be sorted and disjoint (range %zu)", i);
    }
    if (n_ranges > s->skip_cap) {
        rp_row_range *r = (rp_row_range *)malloc(n_ranges * sizeof(rp_row_range));
        if (r == NULL || n_ranges > (size_t)-1 / sizeof(rp_row_range)) {
            free(r);
            return rp_fail(err, RP_E_NOMEM, "out of memory for the skip ranges");
        }
        free(s->skip);
        s->mem += (n_ranges - s->skip_cap) * sizeof(rp_row_range);
        s->skip = r;
        s->skip_cap = n_ranges;
    }
    if (n_ranges > 0) memcpy(s->skip, ranges, n_ranges * sizeof(rp_row_range));
    s->n_skip = n_ranges;
    rp_clear(err);
    return RP_OK;
}

/* Iterate the rows that are not skipped: [a, b) segments in increasing order. */
typedef struct seg_iter {
    const rp_scanner *s;
    uint64_t row;
    size_t si;
} seg_iter;

static int seg_next(seg_iter *it, uint64_t *a, uint64_t *b) {
    const rp_scanner *s = it->s;
    while (it->row < s->n) {
        if (it->si < s->n_skip && s->skip[it->si].hi <= it->row) {
            it->si++;
            continue;
        }
        if (it->si < s->n_skip && s->skip[it->si].lo <= it->row) {
            it->row = s->skip[it->si].hi;
            it->si++;
            continue;
        }
        *a = it->row;
        *b = it->si < s->n_skip && s->skip[it->si].lo < s->n ? s->skip[it->si].lo : s->n;
        it->row = *b;
        return 1;
    }
    return 0;
}

int rp_scanner_new(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                   rp_scanner **out, rp_error *err) {
    return rp_scanner_new_skip(codec, codes, n, opts, NULL, 0, out, err);
}

int rp_scanner_new_skip(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                        const rp_row_range *ranges, size_t n_ranges, rp_scanner **out, rp_error *err) {
    return rp_scanner_new_release(codec, codes, n, opts, ranges, n_ranges, NULL, NULL, NULL, out, err);
}

int rp_scanner_new_release(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                           const rp_row_range *ranges, size_t n_ranges, rp_release_fn release, void *release_ctx,
                           const float *rq_inv_norms, rp_scanner **out, rp_error *err) {
    rp_scanner *s;
    seg_iter it;
    uint64_t sa, sb;
    uint32_t nread = 0, ncb = 0;
    size_t stride;
    uint64_t t;
    int st;
    if (out == NULL) return rp_fail(err, RP_E_ARGUMENT, "out is NULL");
    *out = NULL;
    st = codec_check(codec, err);
    if (st != RP_OK) return st;
    if (codes == NULL && n > 0) return rp_fail(err, RP_E_ARGUMENT, "codes is NULL");
    if (n == 0) return rp_fail(err, RP_E_ARGUMENT, "a scanner needs at least one code");
    if (opts != NULL && (opts->query_bits < 0 || opts->query_bits > 16))
        return rp_fail(err, RP_E_ARGUMENT, "query_bits must be in 1..16 (0 = 8), got %d", opts->query_bits);
    st = bytes_read(codec, opts != NULL ? opts->stages : 0, &ncb, &nread, err);
    if (st != RP_OK) return st;
    stride = opts != NULL && opts->stride != 0 ? opts->stride
             : ((codec->family == RP_FAM_RQ || codec->family == RP_FAM_RABITQ) && opts != NULL && opts->stages != 0
                    ? nread : codec->bytes_per_vector);
    if (stride < nread) return rp_fail(err, RP_E_ARGUMENT, "stride %zu is below the %u bytes a code holds", stride, (unsigned)nread);
    if ((n - 1u) > (uint64_t)(((size_t)-1 - nread) / stride)) return rp_fail(err, RP_E_ARGUMENT, "n * stride overflows");

    /* codec parameters the kernels trust */
    {
        size_t cnt = 0;
        const float *arr = NULL;
        switch (codec->family) {
        case RP_FAM_PQ8: case RP_FAM_OPQ8: case RP_FAM_PQ4:
            arr = codec->centroids; cnt = (size_t)codec->m * codec->ksub * codec->dsub; break;
        case RP_FAM_RQ:
            arr = codec->codebooks;
            cnt = (size_t)codec->n_codebooks * 256u * rp_rq_width(codec);
            if (codec->rq_proj != NULL &&
                (!all_finite(codec->rq_proj, (size_t)codec->dim * codec->rq_sub) || !all_finite(codec->rq_mean, codec->dim)))
                return rp_fail(err, RP_E_CODEC, "rq projection or mean holds NaN or Inf");
            break;
        case RP_FAM_SIMHASH: case RP_FAM_HAMMING: arr = codec->projection; cnt = (size_t)codec->nbits * codec->dim; break;
        case RP_FAM_RABITQ: arr = codec->rb_centroid; cnt = codec->dim; break;
        case RP_FAM_SQ8: case RP_FAM_SQ4:
            if (!all_finite(codec->lo, codec->dim)) return rp_fail(err, RP_E_CODEC, "sq lo holds NaN or Inf");
            arr = codec->step; cnt = codec->dim; break;
        default: break;
        }
        if (arr != NULL && !all_finite(arr, cnt)) return rp_fail(err, RP_E_CODEC, "codec parameters hold NaN or Inf");
        if (codec->rotation != NULL && !all_finite(codec->rotation, (size_t)codec->dim * codec->dim))
            return rp_fail(err, RP_E_CODEC, "codec rotation holds NaN or Inf");
        if (codec->family == RP_FAM_SIMHASH && !(fabsf(codec->scale) <= 3.4e38f))
            return rp_fail(err, RP_E_CODEC, "simhash scale is not finite");
    }
    s = (rp_scanner *)calloc(1, sizeof(*s));
    if (s == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory");
    s->mem = sizeof(*s);
    s->codec = codec;
    s->codes = codes;
    s->n = n;
    st = rp_scanner_set_skip(s, ranges, n_ranges, err);
    if (st != RP_OK) {
        rp_scanner_free(s);
        return st;
    }
    /* code values beyond the codebook (rows in skip ranges are never read) */
    it.s = s, it.row = 0, it.si = 0;
    while (seg_next(&it, &sa, &sb))
        for (t = sa; t < sb; t++)
            if (!pq_codes_ok(codec, codes + (size_t)t * stride)) {
                rp_scanner_free(s);
                return rp_fail(err, RP_E_CODEC, "code %llu holds a value beyond the codebook's %u entries",
                               (unsigned long long)t, (unsigned)codec->ksub);
            }
    s->stride = stride;
    s->nread = nread;
    s->ncb = ncb;
    s->approximate = opts != NULL && opts->approximate;
    st = qstate_init(&s->q, codec, nread, ncb, opts != NULL ? opts->query_bits : 0, err);
    if (st != RP_OK) {
        free(s);
        return st;
    }
    s->chunk = (float *)xcalloc(RP_CHUNK, sizeof(float), &s->mem);
    if (s->chunk == NULL) goto nomem;

    if (codec->family == RP_FAM_RABITQ) {
        /* stage-0 scales as float64 (Python's _stage_factors), factor bytes checked for every stage used */
        uint32_t nst = s->q.rb_stages, stg;
        if (n > (uint64_t)((size_t)-1 / sizeof(double))) goto nomem;
        s->rb_scale = (double *)xcalloc((size_t)n, sizeof(double), &s->mem);
        if (s->rb_scale == NULL) goto nomem;
        s->rb_smax = 0.0;
        it.s = s, it.row = 0, it.si = 0;
        while (seg_next(&it, &sa, &sb))
            for (t = sa; t < sb; t++) {
                const uint8_t *p = codes + (size_t)t * stride;
                if (!rb_factors_ok(codec, p, nst)) {
                    rp_scanner_free(s);
                    return rp_fail(err, RP_E_CODEC, "code %llu holds factor bytes no encoder writes (NaN, Inf or negative float16)",
                                   (unsigned long long)t);
                }
                s->rb_scale[t] = rb_item_scale(codec, p, 0);
                for (stg = 0; stg < nst; stg++) {
                    double v = stg == 0 ? s->rb_scale[t] : rb_item_scale(codec, p, stg);
                    if (v > s->rb_smax) s->rb_smax = v;
                }
            }
    }

    if (rq_needs_finish(codec)) {
        s->rq_post = 1;
        if (codec->rq_unit && rq_inv_norms != NULL) {
            s->rq_inv = rq_inv_norms;
        } else if (codec->rq_unit) {
            /* the inverse norms of the scanned prefix, once per scanner (not per query) */
            if (n > (uint64_t)((size_t)-1 / sizeof(float))) goto nomem;
            s->rq_inv_own = (float *)xcalloc((size_t)n, sizeof(float), &s->mem);
            if (s->rq_inv_own == NULL) goto nomem;
            it.s = s, it.row = 0, it.si = 0;
            while (seg_next(&it, &sa, &sb))
                for (t = sa; t < sb; t++) s->rq_inv_own[t] = rq_inv_norm(codec, codes + (size_t)t * stride, ncb, s->q.ydec);
            s->rq_inv = s->rq_inv_own;
        }
    }
    if (codec->family == RP_FAM_PQ4 && codec->m / 2u <= 128u && n < ((uint64_t)1 << 40)) {
        /* fast-scan block layout: block b, row p, lane t = byte p of item 32 b + t (zero padded) */
        uint32_t np = codec->m / 2u, p;
        uint64_t nb = (n + RP_FS4_WIDTH - 1u) / RP_FS4_WIDTH;
        s->fs4 = 1;
        s->nblocks = nb;
        if (nb > ((size_t)-1 / RP_FS4_WIDTH) / np) goto nomem;
        s->blocks = (uint8_t *)xcalloc((size_t)nb * np, RP_FS4_WIDTH, &s->mem);
        s->accs = (uint16_t *)xcalloc((size_t)nb * RP_FS4_WIDTH, sizeof(uint16_t), &s->mem);
        if (s->blocks == NULL || s->accs == NULL) goto nomem;
        it.s = s, it.row = 0, it.si = 0;
        while (seg_next(&it, &sa, &sb)) {
            uint64_t done = sa;
            for (t = sa; t < sb; t++) {
                const uint8_t *code = codes + (size_t)t * stride;
                uint8_t *dst = s->blocks + (size_t)(t / RP_FS4_WIDTH) * np * RP_FS4_WIDTH + (size_t)(t % RP_FS4_WIDTH);
                for (p = 0; p < np; p++) dst[(size_t)p * RP_FS4_WIDTH] = code[p];
                /* the copied rows' source bytes are not read again: let the owner drop them as the copy goes,
                 * so a mapped pack's codes and their copy are not both resident */
                if (release != NULL && (t + 1u - done >= 8192u || t + 1u == sb)) {
                    release(release_ctx, codes + (size_t)done * stride, codes + (size_t)(t + 1u) * stride);
                    done = t + 1u;
                }
            }
        }
    }
    if (codec->family == RP_FAM_FLOAT32 || codec->family == RP_FAM_FP16 || codec->family == RP_FAM_SQ8 ||
        codec->family == RP_FAM_SQ4) {
        uint32_t d = codec->dim, j;
        s->colmax = (double *)xcalloc(d, sizeof(double), &s->mem);
        if (s->colmax == NULL) goto nomem;
        if (codec->family == RP_FAM_SQ8 || codec->family == RP_FAM_SQ4) {
            double levels = codec->family == RP_FAM_SQ8 ? 255.0 : 15.0;
            for (j = 0; j < d; j++) {
                double lo = fabs((double)codec->lo[j]), top = fabs((double)codec->lo[j] + levels * (double)codec->step[j]);
                s->colmax[j] = lo > top ? lo : top;
            }
        } else {
            it.s = s, it.row = 0, it.si = 0;
            while (seg_next(&it, &sa, &sb))
            for (t = sa; t < sb; t++) {
                const uint8_t *p = codes + (size_t)t * stride;
                for (j = 0; j < d; j++) {
                    float v = codec->family == RP_FAM_FLOAT32 ? rp_lef32(p + 4u * j) : rp_half_to_float(rp_le16(p + 2u * j));
                    double a = fabs((double)v);
                    if (!(a <= 3.4028234663852886e38)) {
                        rp_scanner_free(s);
                        return rp_fail(err, RP_E_CODEC, "code %llu holds NaN or Inf at dimension %u",
                                       (unsigned long long)t, (unsigned)j);
                    }
                    if (a > s->colmax[j]) s->colmax[j] = a;
                }
            }
        }
    }
    scanner_name(s, rp_active_kernel());
    *out = s;
    rp_clear(err);
    return RP_OK;
nomem:
    rp_scanner_free(s);
    return rp_fail(err, RP_E_NOMEM, "out of memory for the scanner");
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int is_excluded(const rp_scanner *s, int64_t row) {
    size_t lo = 0, hi = s->n_excl;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2u;
        if (s->excl[mid] < row)
            lo = mid + 1u;
        else if (s->excl[mid] > row)
            hi = mid;
        else
            return 1;
    }
    return 0;
}

/* Offer scores of rows base..base+cnt-1 (increasing) to the heap. */
static void offer_scores(rp_scanner *s, size_t k, const float *sc, uint64_t base, size_t cnt) {
    float *hv = s->hv;
    int64_t *hi = s->hi;
    float thr = hv[0];
    size_t i;
    for (i = 0; i < cnt; i++) {
        if (sc[i] > thr) {
            int64_t row = (int64_t)(base + i);
            if (s->n_excl > 0 && is_excluded(s, row)) continue;
            heap_replace(hv, hi, k, sc[i], row);
            thr = hv[0];
        }
    }
}

static uint32_t lane_mask(uint64_t base, uint64_t a, uint64_t b) {
    uint64_t lo = a > base ? a - base : 0, hi = b - base < RP_FS4_WIDTH ? b - base : RP_FS4_WIDTH;
    uint32_t m_hi = hi >= 32u ? 0xFFFFFFFFu : ((1u << hi) - 1u);
    uint32_t m_lo = lo >= 32u ? 0xFFFFFFFFu : ((1u << lo) - 1u);
    return m_hi & ~m_lo;
}

static inline int ctz32(uint32_t x) { return __builtin_ctz(x); }

/* Exact 4-bit score of item t from the block layout: per byte the float32 pair sum lut[2p][lo] + lut[2p+1][hi]
 * (the value of dense.pair_tables), summed over the bytes in order, as the numba kernel's _fs4_exact. */
static inline float fs4_exact(const rp_scanner *s, uint64_t t) {
    uint32_t np = s->q.ncols, p;
    uint64_t b = t / RP_FS4_WIDTH;
    const uint8_t *col = s->blocks + (size_t)b * np * RP_FS4_WIDTH + (size_t)(t - b * RP_FS4_WIDTH);
    const float *l4 = s->q.lut4;
    float acc = 0.0f;
    for (p = 0; p < np; p++) {
        uint8_t c = col[(size_t)p * RP_FS4_WIDTH];
        float pair = l4[(size_t)(2u * p) * 16u + (c & 15u)] + l4[(size_t)(2u * p + 1u) * 16u + (c >> 4)];
        acc += pair;
    }
    return acc;
}

/* Pass 1 keeps its K best sums as packed keys sum << 40 | (2^40 - 1 - row) (larger key: larger sum, or the
 * same sum and a lower row), a min-heap with one compare per level; empty slots are -1. */
#define RP_KEY_BITS 40
#define RP_KEY_MASK (((int64_t)1 << RP_KEY_BITS) - 1)

static void sift_keys(int64_t *keys, size_t pos, size_t size) {
    for (;;) {
        size_t ch = 2u * pos + 1u;
        int64_t tmp;
        if (ch >= size) return;
        if (ch + 1u < size && keys[ch + 1u] < keys[ch]) ch++;
        if (keys[ch] >= keys[pos]) return;
        tmp = keys[pos], keys[pos] = keys[ch], keys[ch] = tmp;
        pos = ch;
    }
}

static void fs4_search(rp_scanner *s, size_t k, rp_kernel kern, int64_t *out_rows, float *out_scores, uint32_t *n_out) {
    float *hv = s->hv;
    int64_t *hi = s->hi, *keys = s->hi;
    uint32_t np = s->q.ncols;
    seg_iter it;
    uint64_t a, b;
    size_t j;
    for (j = 0; j < k; j++) keys[j] = -1;
    /* pass 1: quantised sums, top-K on them */
    it.s = s, it.row = 0, it.si = 0;
    while (seg_next(&it, &a, &b)) {
        uint64_t blk;
        for (blk = a / RP_FS4_WIDTH; blk * RP_FS4_WIDTH < b; blk++) {
            uint64_t base = blk * RP_FS4_WIDTH;
            const uint8_t *bp = s->blocks + (size_t)blk * np * RP_FS4_WIDTH;
            uint16_t *sums = s->accs + (size_t)base;
            uint16_t floor16;
            uint32_t mask;
            if (keys[0] < 0)
                floor16 = 0;
            else
                floor16 = (keys[0] >> RP_KEY_BITS) >= 65535 ? (uint16_t)65535u : (uint16_t)((keys[0] >> RP_KEY_BITS) + 1);
#if RP_HAVE_AVX2
            if (kern == RP_KERNEL_AVX2)
                mask = rp_fs4_block_avx2(bp, s->q.tab, np, sums, floor16);
            else
#endif
#if RP_HAVE_NEON
            if (kern == RP_KERNEL_NEON)
                mask = rp_fs4_block_neon(bp, s->q.tab, np, sums, floor16);
            else
#endif
                mask = rp_fs4_block_portable(bp, s->q.lut16, np, sums, floor16);
            mask &= lane_mask(base, a, b);
            while (mask) {
                int l = ctz32(mask);
                int64_t row = (int64_t)(base + (uint64_t)l);
                int64_t key = ((int64_t)sums[l] << RP_KEY_BITS) | (RP_KEY_MASK - row);
                mask &= mask - 1u;
                if (key > keys[0]) {
                    if (s->n_excl > 0 && is_excluded(s, row)) continue;
                    keys[0] = key;
                    sift_keys(keys, 0, k);
                }
            }
        }
    }
    if (s->approximate) { /* quantised ranking, dequantised scores (faiss fast-scan semantics) */
        size_t size = k, t;
        uint32_t n = 0;
        double inv = 1.0 / s->q.fs_scale;
        for (t = k; t-- > 0;) {
            int64_t key = keys[0];
            size--;
            keys[0] = keys[size];
            sift_keys(keys, 0, size);
            hv[t] = key < 0 ? -INFINITY : (float)(key >> RP_KEY_BITS); /* hv as scratch: best first */
            out_rows[t] = key < 0 ? -1 : RP_KEY_MASK - (key & RP_KEY_MASK);
        }
        for (t = 0; t < k; t++) {
            if (out_rows[t] < 0) {
                out_scores[t] = -INFINITY;
                continue;
            }
            out_scores[t] = (float)(s->q.fs_bias + (double)hv[t] * inv);
            n++;
        }
        *n_out = n;
        return;
    }
    /* pass 2: exact rescoring of every item whose sum is >= tau - (m + 2) */
    {
        int64_t fl = 0;
        uint16_t floor16;
        if (keys[0] >= 0) fl = (keys[0] >> RP_KEY_BITS) - (int64_t)(s->codec->m + 2u);
        floor16 = fl <= 0 ? 0 : (uint16_t)fl;
        heap_reset(hv, hi, k);
        it.s = s, it.row = 0, it.si = 0;
        while (seg_next(&it, &a, &b)) {
            uint64_t blk;
            for (blk = a / RP_FS4_WIDTH; blk * RP_FS4_WIDTH < b; blk++) {
                uint64_t base = blk * RP_FS4_WIDTH;
                uint32_t mask;
#if RP_HAVE_AVX2
                if (kern == RP_KERNEL_AVX2)
                    mask = rp_ge_mask_avx2(s->accs + (size_t)base, floor16);
                else
#endif
#if RP_HAVE_NEON
                if (kern == RP_KERNEL_NEON)
                    mask = rp_ge_mask_neon(s->accs + (size_t)base, floor16);
                else
#endif
                    mask = rp_ge_mask_portable(s->accs + (size_t)base, floor16);
                mask &= lane_mask(base, a, b);
                while (mask) {
                    int l = ctz32(mask);
                    uint64_t t = base + (uint64_t)l;
                    float v = fs4_exact(s, t);
                    mask &= mask - 1u;
                    if (v > hv[0]) {
                        if (s->n_excl > 0 && is_excluded(s, (int64_t)t)) continue;
                        heap_replace(hv, hi, k, v, (int64_t)t);
                    }
                }
            }
        }
    }
    *n_out = heap_drain(hv, hi, k, out_rows, out_scores);
}

/* RaBitQScanner: stage 0 by the bit-plane scan with per-item scale and offset <q, c>; for B > 1 the top `m`
 * stage-0 candidates (exclusions and skipped rows left out), in row order, are rescored with the full B-bit
 * estimate and the top k of those returned (ties to the lower row). */
static void rabitq_search(rp_scanner *s, size_t k, size_t m, int64_t *out_rows, float *out_scores, uint32_t *n_out) {
    seg_iter it;
    uint64_t a, b, t;
    heap_reset(s->hv, s->hi, m);
    it.s = s, it.row = 0, it.si = 0;
    while (seg_next(&it, &a, &b))
        for (t = a; t < b; t += RP_CHUNK) {
            size_t cnt = (size_t)(b - t < RP_CHUNK ? b - t : RP_CHUNK);
            s->q.bq.scale = s->rb_scale + t;
            qstate_score(&s->q, s->codes + (size_t)t * s->stride, s->stride, cnt, s->chunk);
            offer_scores(s, m, s->chunk, t, cnt);
        }
    s->q.bq.scale = NULL;
    if (s->q.rb_stages <= 1u) {
        *n_out = heap_drain(s->hv, s->hi, m, out_rows, out_scores);
        return;
    }
    {
        uint32_t nc = heap_drain(s->hv, s->hi, m, s->rb_rows, s->rb_vals), i;
        if (nc > 1) qsort(s->rb_rows, nc, sizeof(int64_t), cmp_i64);
        heap_reset(s->hv, s->hi, k);
        for (i = 0; i < nc; i++) {
            int64_t row = s->rb_rows[i];
            float v = rb_estimate(&s->q, s->codes + (size_t)row * s->stride);
            if (v > s->hv[0]) heap_replace(s->hv, s->hi, k, v, row);
        }
        *n_out = heap_drain(s->hv, s->hi, k, out_rows, out_scores);
    }
}

/* Grow a (float score, int64 row) scratch pair to hold `need` entries (kept when already large enough); the
 * scanner's memory count follows. Returns 0, with both arrays unchanged, when an allocation fails. */
static int grow_pairs(float **vals, int64_t **rows, size_t *cap, size_t need, size_t *mem) {
    float *v;
    int64_t *r;
    if (need <= *cap) return 1;
    v = (float *)malloc(need * sizeof(float));
    r = (int64_t *)malloc(need * sizeof(int64_t));
    if (v == NULL || r == NULL) {
        free(v);
        free(r);
        return 0;
    }
    free(*vals);
    free(*rows);
    *mem += (need - *cap) * (sizeof(float) + sizeof(int64_t));
    *vals = v;
    *rows = r;
    *cap = need;
    return 1;
}

int rp_scanner_search(rp_scanner *s, const float *query, uint32_t k, const int64_t *exclude_rows, size_t n_exclude,
                      int64_t *out_rows, float *out_scores, uint32_t *n_out, rp_error *err) {
    const rp_codec *c;
    rp_kernel kern;
    uint64_t hneed;
    int st;
    if (n_out != NULL) *n_out = 0;
    if (s == NULL || query == NULL || out_rows == NULL || out_scores == NULL || n_out == NULL ||
        (exclude_rows == NULL && n_exclude > 0))
        return rp_fail(err, RP_E_ARGUMENT, "NULL argument");
    c = s->codec;
    if (k == 0 || k > RP_MAX_K || (uint64_t)k > s->n)
        return rp_fail(err, RP_E_K_RANGE, "k = %u is outside 1..%llu", (unsigned)k,
                       (unsigned long long)(s->n < RP_MAX_K ? s->n : RP_MAX_K));
    hneed = k;
    kern = rp_active_kernel();
    s->q.kern = kern;
    if ((int)kern != s->kname_kern) scanner_name(s, kern); /* formatted again only when the kernel choice changed */
    st = qstate_query(&s->q, query, s->fs4 ? (s->approximate ? 2 : 1) : 0, err);
    if (st != RP_OK) return st;
    if (s->colmax != NULL) { /* float32 / fp16 / sq: refuse scores that could leave float32's range */
        double bound = 0.0;
        uint32_t j;
        for (j = 0; j < c->dim; j++) bound += fabs((double)query[j]) * s->colmax[j];
        if (bound > 1e38) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
    }
    if (c->family == RP_FAM_RABITQ) { /* refuse scores that could leave float32's range */
        double qmax = 0.0, gmax = s->q.rb_stages > 1u ? (double)((1u << c->rb_bits) - 1u) / 2.0 : 1.0, bound;
        uint32_t j;
        for (j = 0; j < c->dim; j++)
            if (fabs((double)s->q.qrot[j]) > qmax) qmax = fabs((double)s->q.qrot[j]);
        bound = fabs((double)s->q.rb_qc) + s->rb_smax * (double)c->dim * qmax * gmax;
        if (!(bound <= 1e38)) return rp_fail(err, RP_E_NONFINITE, "%s", OVERFLOW_MSG);
        /* stage 0 keeps the top min(n, max(20 k, 1000)) for the rescoring (B > 1), else the top k */
        if (s->q.rb_stages > 1u) {
            uint64_t m = (uint64_t)k * 20u > 1000u ? (uint64_t)k * 20u : 1000u;
            hneed = m < s->n ? m : s->n;
            if (hneed > (uint64_t)((size_t)-1 / 16u)) return rp_fail(err, RP_E_NOMEM, "out of memory for the candidates");
        }
    }
    /* scratch sized to k (rabitq with rescoring: to its candidate count) */
    if (!grow_pairs(&s->hv, &s->hi, &s->hcap, (size_t)hneed, &s->mem))
        return rp_fail(err, RP_E_NOMEM, "out of memory for the top-K heap");
    if (c->family == RP_FAM_RABITQ && s->q.rb_stages > 1u &&
        !grow_pairs(&s->rb_vals, &s->rb_rows, &s->rb_cap, (size_t)hneed, &s->mem))
        return rp_fail(err, RP_E_NOMEM, "out of memory for the candidates");
    /* exclusion: a sorted copy of the in-range rows */
    s->n_excl = 0;
    if (n_exclude > 0) {
        size_t i, j;
        if (n_exclude > s->excl_cap) {
            int64_t *e;
            if (n_exclude > (size_t)-1 / sizeof(int64_t)) return rp_fail(err, RP_E_NOMEM, "exclusion list too long");
            e = (int64_t *)malloc(n_exclude * sizeof(int64_t));
            if (e == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory for the exclusion list");
            free(s->excl);
            s->mem += (n_exclude - s->excl_cap) * sizeof(int64_t);
            s->excl = e;
            s->excl_cap = n_exclude;
        }
        for (i = 0; i < n_exclude; i++)
            if (exclude_rows[i] >= 0 && (uint64_t)exclude_rows[i] < s->n) s->excl[s->n_excl++] = exclude_rows[i];
        if (s->n_excl > 1) {
            qsort(s->excl, s->n_excl, sizeof(int64_t), cmp_i64);
            for (i = 1, j = 1; i < s->n_excl; i++)
                if (s->excl[i] != s->excl[j - 1]) s->excl[j++] = s->excl[i];
            s->n_excl = j;
        }
    }
    if (s->fs4) {
        fs4_search(s, k, kern, out_rows, out_scores, n_out);
    } else if (c->family == RP_FAM_RABITQ) {
        rabitq_search(s, k, (size_t)hneed, out_rows, out_scores, n_out);
    } else {
        seg_iter it;
        uint64_t a, b;
        heap_reset(s->hv, s->hi, k);
        it.s = s, it.row = 0, it.si = 0;
        while (seg_next(&it, &a, &b)) {
            uint64_t t;
            for (t = a; t < b; t += RP_CHUNK) {
                size_t cnt = (size_t)(b - t < RP_CHUNK ? b - t : RP_CHUNK);
                qstate_score(&s->q, s->codes + (size_t)t * s->stride, s->stride, cnt, s->chunk);
                if (s->rq_post) {
                    size_t i;
                    for (i = 0; i < cnt; i++) s->chunk[i] = rq_finish(&s->q, s->chunk[i], s->rq_inv != NULL ? s->rq_inv[t + i] : 1.0f);
                }
                offer_scores(s, k, s->chunk, t, cnt);
            }
        }
        *n_out = heap_drain(s->hv, s->hi, k, out_rows, out_scores);
    }
    rp_clear(err);
    return RP_OK;
}

/* ================================================================================================
 * refinement
 * ================================================================================================ */
int rp_refine(const rp_codec *codec, const float *query, const rp_refine_frame *frame, uint32_t k, int64_t *out_ids,
              float *out_scores, uint32_t *n_out, rp_error *err) {
    float *scores, *hv;
    int64_t *hi, *pos;
    uint32_t kk, i, n;
    int st;
    if (n_out != NULL) *n_out = 0;
    if (codec == NULL || query == NULL || frame == NULL || out_ids == NULL || out_scores == NULL || n_out == NULL)
        return rp_fail(err, RP_E_ARGUMENT, "NULL argument");
    if (k == 0 || k > RP_MAX_K) return rp_fail(err, RP_E_K_RANGE, "k = %u is outside 1..%u", (unsigned)k, (unsigned)RP_MAX_K);
    if (frame->bytes_per_vector != codec->bytes_per_vector)
        return rp_fail(err, RP_E_DIMENSION, "frame codes have %u bytes, the codec %u", (unsigned)frame->bytes_per_vector,
                       (unsigned)codec->bytes_per_vector);
    if (frame->n_items > 0 && (frame->codes == NULL || frame->ids_le == NULL))
        return rp_fail(err, RP_E_ARGUMENT, "frame has no codes");
    st = rp_check_query(query, codec->dim, err);
    if (st != RP_OK) return st;
    n = frame->n_items;
    kk = k < n ? k : n;
    if (kk == 0) {
        rp_clear(err);
        return RP_OK;
    }
    scores = (float *)malloc((size_t)n * sizeof(float));
    hv = (float *)malloc((size_t)kk * sizeof(float));
    hi = (int64_t *)malloc((size_t)kk * sizeof(int64_t));
    pos = (int64_t *)malloc((size_t)kk * sizeof(int64_t));
    if (scores == NULL || hv == NULL || hi == NULL || pos == NULL) {
        st = rp_fail(err, RP_E_NOMEM, "out of memory for refinement");
        goto done;
    }
    st = rp_codec_score(codec, query, frame->codes, n, codec->bytes_per_vector, 0, scores, err);
    if (st != RP_OK) goto done;
    heap_reset(hv, hi, kk);
    for (i = 0; i < n; i++)
        if (scores[i] > hv[0]) heap_replace(hv, hi, kk, scores[i], (int64_t)i);
    *n_out = heap_drain(hv, hi, kk, pos, out_scores);
    for (i = 0; i < *n_out; i++) {
        const uint8_t *p = frame->ids_le + (size_t)pos[i] * 8u;
        out_ids[i] = (int64_t)rp_le64(p);
    }
    rp_clear(err);
done:
    free(scores);
    free(hv);
    free(hi);
    free(pos);
    return st;
}
