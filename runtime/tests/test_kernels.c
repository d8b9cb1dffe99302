/* Tests of the scan kernels (scan.c, scan_avx2.c, scan_neon.c): hand-built codecs with random parameters and
 * codes, every kernel path against the others (identical ids and scores) and against a naive float64
 * reference (decode + dot), the tie rule, exclusion, skip ranges, K errors, bad queries, stride and prefix,
 * code checks and refinement. Exit status 0 when every check passes. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_fail = 0, g_checks = 0;
#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        g_checks++;                                                                     \
        if (!(cond)) {                                                                  \
            g_fail++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                        \
            fprintf(stderr, __VA_ARGS__);                                               \
            fprintf(stderr, "\n");                                                      \
        }                                                                               \
    } while (0)

/* ---- deterministic PRNG (splitmix64) ---------------------------------------------------------------- */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint32_t rndu(uint32_t n) { return (uint32_t)(rnd() % n); }
static float rndf(void) { return (float)((double)(rnd() >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0); }
static float rndn(void) { return rndf() + rndf() + rndf(); }

static void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static float *randf(size_t n, float scale) {
    float *a = (float *)xmalloc(n * sizeof(float));
    size_t i;
    for (i = 0; i < n; i++) a[i] = rndn() * scale;
    return a;
}

/* ---- hand-built codecs ---------------------------------------------------------------------------- */
static void codec_release(rp_codec *c) {
    free(c->lo);
    free(c->step);
    free(c->centroids);
    free(c->rotation);
    free(c->codebooks);
    free(c->projection);
    free(c->rb_centroid);
    free(c->rq_proj);
    free(c->rq_mean);
    free(c->rq_pmean);
    memset(c, 0, sizeof(*c));
}

static void make_pq(rp_codec *c, rp_family fam, uint32_t m, uint32_t dsub, uint32_t ksub, int rotate) {
    uint32_t d = m * dsub, i, j;
    memset(c, 0, sizeof(*c));
    c->family = fam;
    c->dim = d;
    c->m = m;
    c->dsub = dsub;
    c->ksub = ksub;
    c->bytes_per_vector = fam == RP_FAM_PQ4 ? m / 2u : m;
    c->centroids = randf((size_t)m * ksub * dsub, 1.0f);
    snprintf(c->spec, sizeof(c->spec), "test-pq");
    if (rotate) { /* a signed permutation: orthogonal, exact */
        uint32_t *perm = (uint32_t *)xmalloc(d * sizeof(uint32_t));
        for (i = 0; i < d; i++) perm[i] = i;
        for (i = d; i-- > 1;) {
            uint32_t r = rndu(i + 1u), t = perm[i];
            perm[i] = perm[r];
            perm[r] = t;
        }
        c->rotation = (float *)xmalloc((size_t)d * d * sizeof(float));
        for (i = 0; i < d; i++)
            for (j = 0; j < d; j++) c->rotation[(size_t)i * d + j] = perm[i] == j ? (rndu(2) ? 1.0f : -1.0f) : 0.0f;
        free(perm);
    }
}

static void make_sq(rp_codec *c, int bits, uint32_t d) {
    uint32_t j;
    memset(c, 0, sizeof(*c));
    c->family = bits == 8 ? RP_FAM_SQ8 : RP_FAM_SQ4;
    c->dim = d;
    c->bytes_per_vector = bits == 8 ? d : (d + 1u) / 2u;
    c->lo = randf(d, 1.0f);
    c->step = (float *)xmalloc(d * sizeof(float));
    for (j = 0; j < d; j++) c->step[j] = (float)(rnd() % 1000u) * (bits == 8 ? 1e-4f : 2e-3f);
    snprintf(c->spec, sizeof(c->spec), "sq%d", bits);
}

static void make_flat(rp_codec *c, int fp16, uint32_t d) {
    memset(c, 0, sizeof(*c));
    c->family = fp16 ? RP_FAM_FP16 : RP_FAM_FLOAT32;
    c->dim = d;
    c->bytes_per_vector = (fp16 ? 2u : 4u) * d;
    snprintf(c->spec, sizeof(c->spec), fp16 ? "fp16" : "float32");
}

static void make_rq(rp_codec *c, uint32_t d, const uint32_t *stages, uint32_t n_stages, int bounds) {
    uint32_t s, cb = 0, col = 0, b;
    memset(c, 0, sizeof(*c));
    c->family = RP_FAM_RQ;
    c->dim = d;
    c->n_stages = n_stages;
    c->bounds = bounds;
    for (s = 0; s < n_stages; s++) {
        c->stage_sizes[s] = stages[s];
        for (b = 0; b < stages[s]; b++) c->cb_col[cb++] = col++;
        if (bounds) col++;
        c->prefix_bytes[s] = col;
    }
    c->n_codebooks = cb;
    c->bytes_per_vector = col;
    c->codebooks = randf((size_t)cb * 256u * d, 0.5f);
    snprintf(c->spec, sizeof(c->spec), "rq-test");
}

static void make_simhash(rp_codec *c, uint32_t nbits, uint32_t d, int hamming) {
    memset(c, 0, sizeof(*c));
    c->family = hamming ? RP_FAM_HAMMING : RP_FAM_SIMHASH;
    c->dim = d;
    c->nbits = nbits;
    c->bytes_per_vector = nbits / 8u;
    c->projection = randf((size_t)nbits * d, 0.3f);
    c->scale = 0.37f;
    snprintf(c->spec, sizeof(c->spec), "simhash%u", (unsigned)nbits);
}

/* A random orthogonal matrix [d][d] (Gram-Schmidt in float64 on random rows, stored as float32). */
static float *rand_orthogonal(uint32_t d) {
    double *m = (double *)xmalloc((size_t)d * d * sizeof(double));
    float *r = (float *)xmalloc((size_t)d * d * sizeof(float));
    uint32_t i, j, k;
    for (i = 0; i < d * d; i++) m[i] = rndn();
    for (i = 0; i < d; i++) {
        double *ri = m + (size_t)i * d, nrm = 0.0;
        for (j = 0; j < i; j++) {
            const double *rj = m + (size_t)j * d;
            double dot = 0.0;
            for (k = 0; k < d; k++) dot += ri[k] * rj[k];
            for (k = 0; k < d; k++) ri[k] -= dot * rj[k];
        }
        for (k = 0; k < d; k++) nrm += ri[k] * ri[k];
        nrm = sqrt(nrm);
        for (k = 0; k < d; k++) ri[k] /= nrm;
    }
    for (i = 0; i < d * d; i++) r[i] = (float)m[i];
    free(m);
    return r;
}

/* rq -pD / -n as codec.c fills it: make_rq's layout with random codebooks of width D (project > 0: the first D
 * columns of a random orthogonal matrix as the projection, a random mean, P^T mean and ||mean||^2 in float64). */
static void make_rq_pn(rp_codec *c, uint32_t d, uint32_t project, const uint32_t *stages, uint32_t n_stages, int unit) {
    uint32_t w = project ? project : d, i, j;
    make_rq(c, d, stages, n_stages, 0);
    free(c->codebooks);
    c->codebooks = randf((size_t)c->n_codebooks * 256u * w, 0.5f);
    c->rq_unit = unit;
    c->rq_sub = w;
    if (project) {
        float *r = rand_orthogonal(d);
        c->rq_proj = (float *)xmalloc((size_t)d * w * sizeof(float));
        for (j = 0; j < d; j++)
            for (i = 0; i < w; i++) c->rq_proj[(size_t)j * w + i] = r[(size_t)j * d + i];
        free(r);
        c->rq_mean = randf(d, 0.3f);
        c->rq_pmean = (double *)xmalloc((size_t)w * sizeof(double));
        c->rq_mean_sq = 0.0;
        for (j = 0; j < d; j++) c->rq_mean_sq += (double)c->rq_mean[j] * c->rq_mean[j];
        for (i = 0; i < w; i++)
            for (j = 0; j < d; j++) c->rq_pmean[i] += (double)c->rq_proj[(size_t)j * w + i] * c->rq_mean[j];
    }
    snprintf(c->spec, sizeof(c->spec), "rq-test%s%s", project ? "-p" : "", unit ? "-n" : "");
}

/* A rabitq codec as codec.c fills it (B bits per dimension). */
static void make_rabitq(rp_codec *c, uint32_t d, uint32_t bits) {
    memset(c, 0, sizeof(*c));
    c->family = RP_FAM_RABITQ;
    c->dim = d;
    c->rb_bits = bits;
    c->rb_nb0 = (d + 7u) / 8u;
    c->rb_nb1 = (d * (bits - 1u) + 7u) / 8u;
    c->rb_rho = 3.25f;
    c->rb_centroid = randf(d, 0.5f);
    c->rotation = rand_orthogonal(d);
    c->prefix_bytes[0] = c->rb_nb0 + 4u;
    c->n_stages = bits > 1u ? 2u : 1u;
    if (bits > 1u) c->prefix_bytes[1] = c->rb_nb0 + c->rb_nb1 + 8u;
    c->bytes_per_vector = c->prefix_bytes[c->n_stages - 1u];
    snprintf(c->spec, sizeof(c->spec), bits > 1u ? "rabitq%u" : "rabitq", (unsigned)bits);
    snprintf(c->family_name, sizeof(c->family_name), "rabitq");
}

/* A float16 (bit pattern) in [0, 4): finite, non-negative. */
static uint16_t rand_half_pos(void) { return (uint16_t)((rndu(17) << 10) | rndu(1024)); }

/* Random valid codes for a codec (pq: values < ksub; float: finite values). */
static uint8_t *make_codes(const rp_codec *c, uint64_t n, size_t stride) {
    uint8_t *codes = (uint8_t *)xmalloc((size_t)n * stride);
    uint64_t t;
    uint32_t j;
    for (t = 0; t < n; t++) {
        uint8_t *p = codes + (size_t)t * stride;
        for (j = 0; j < stride; j++) p[j] = (uint8_t)rnd();
        if (c->family == RP_FAM_PQ8 || c->family == RP_FAM_OPQ8)
            for (j = 0; j < c->m; j++) p[j] = (uint8_t)rndu(c->ksub);
        if (c->family == RP_FAM_PQ4)
            for (j = 0; j < c->m / 2u; j++) p[j] = (uint8_t)(rndu(c->ksub) | (rndu(c->ksub) << 4));
        if (c->family == RP_FAM_FLOAT32)
            for (j = 0; j < c->dim; j++) {
                float v = rndn();
                memcpy(p + 4u * j, &v, 4); /* little-endian host assumed by the test */
            }
        if (c->family == RP_FAM_FP16)
            for (j = 0; j < c->dim; j++) { /* finite halves: exponent < 31, some subnormals */
                uint16_t h = (uint16_t)((rndu(2) << 15) | (rndu(18) << 10) | rndu(1024));
                p[2u * j] = (uint8_t)h;
                p[2u * j + 1u] = (uint8_t)(h >> 8);
            }
        if (c->family == RP_FAM_SQ4 && (c->dim & 1u)) p[c->dim / 2u] &= 0x0F;
        if (c->family == RP_FAM_RABITQ) { /* pad bits 0, factors finite and non-negative */
            uint32_t st, off;
            if (c->dim % 8u) p[c->rb_nb0 - 1u] &= (uint8_t)(0xFFu << (8u - c->dim % 8u));
            if (c->rb_bits > 1u && (c->dim * (c->rb_bits - 1u)) % 8u)
                p[c->rb_nb0 + 4u + c->rb_nb1 - 1u] &= (uint8_t)(0xFFu << (8u - (c->dim * (c->rb_bits - 1u)) % 8u));
            for (st = 0; st < c->n_stages; st++) {
                uint16_t h[2];
                off = st == 0 ? c->rb_nb0 : c->rb_nb0 + 4u + c->rb_nb1;
                h[0] = rand_half_pos(), h[1] = rndu(50) == 0 ? 0x7C00u : rand_half_pos(); /* eps may be +Inf */
                p[off] = (uint8_t)h[0], p[off + 1u] = (uint8_t)(h[0] >> 8);
                p[off + 2u] = (uint8_t)h[1], p[off + 3u] = (uint8_t)(h[1] >> 8);
            }
        }
    }
    return codes;
}

/* ---- float64 reference: decode + dot ------------------------------------------------------------------ */
static double half_ref(uint16_t h) {
    int e = (h >> 10) & 31, mnt = h & 1023;
    double v = e == 0 ? ldexp((double)mnt, -24) : ldexp(1024.0 + mnt, e - 25);
    return (h & 0x8000u) ? -v : v;
}

static double ref_score(const rp_codec *c, const float *q, const uint8_t *p, uint32_t stages) {
    uint32_t d = c->dim, j, s;
    double acc = 0.0;
    switch (c->family) {
    case RP_FAM_PQ8: case RP_FAM_OPQ8: case RP_FAM_PQ4: {
        double *y = (double *)xmalloc(d * sizeof(double));
        uint32_t k;
        for (j = 0; j < d; j++) {
            if (c->rotation == NULL) {
                y[j] = q[j];
            } else {
                y[j] = 0.0;
                for (k = 0; k < d; k++) y[j] += (double)c->rotation[(size_t)j * d + k] * q[k];
            }
        }
        for (j = 0; j < c->m; j++) {
            uint32_t code = c->family == RP_FAM_PQ4 ? (j & 1u ? p[j / 2u] >> 4 : p[j / 2u] & 15u) : p[j];
            const float *cen = c->centroids + ((size_t)j * c->ksub + code) * c->dsub;
            for (s = 0; s < c->dsub; s++) acc += y[j * c->dsub + s] * cen[s];
        }
        free(y);
        return acc;
    }
    case RP_FAM_SQ8: case RP_FAM_SQ4:
        for (j = 0; j < d; j++) {
            uint32_t code = c->family == RP_FAM_SQ8 ? p[j] : (j & 1u ? p[j / 2u] >> 4 : p[j / 2u] & 15u);
            acc += (double)q[j] * ((double)c->lo[j] + (double)c->step[j] * code);
        }
        return acc;
    case RP_FAM_FLOAT32:
        for (j = 0; j < d; j++) {
            float v;
            memcpy(&v, p + 4u * j, 4);
            acc += (double)q[j] * v;
        }
        return acc;
    case RP_FAM_FP16:
        for (j = 0; j < d; j++) acc += (double)q[j] * half_ref((uint16_t)(p[2u * j] | (p[2u * j + 1u] << 8)));
        return acc;
    case RP_FAM_RQ: {
        /* x = y (or mean + P y with -pD), y = sum of the codewords, float64; -n: <q, x> / ||x|| */
        uint32_t ns = stages ? stages : c->n_stages, ncb = 0, cb, w = c->rq_proj ? c->rq_sub : d, i;
        double *y = (double *)xmalloc((size_t)w * sizeof(double)), *x = (double *)xmalloc((size_t)d * sizeof(double)), nrm = 0.0;
        for (s = 0; s < ns; s++) ncb += c->stage_sizes[s];
        for (cb = 0; cb < ncb; cb++) {
            const float *cw = c->codebooks + ((size_t)cb * 256u + p[c->cb_col[cb]]) * w;
            for (j = 0; j < w; j++) y[j] += cw[j];
        }
        for (j = 0; j < d; j++) {
            if (c->rq_proj == NULL) x[j] = y[j];
            else
                for (x[j] = c->rq_mean[j], i = 0; i < w; i++) x[j] += (double)c->rq_proj[(size_t)j * w + i] * y[i];
            acc += (double)q[j] * x[j];
            nrm += x[j] * x[j];
        }
        free(y), free(x);
        if (c->rq_unit) return nrm > 0.0 ? acc / sqrt(nrm) : 0.0;
        return acc;
    }
    case RP_FAM_SIMHASH: case RP_FAM_HAMMING: {
        uint32_t i, dist = 0;
        for (i = 0; i < c->nbits; i++) {
            double pr = 0.0;
            int bit = (p[i / 8u] >> (7u - i % 8u)) & 1;
            for (j = 0; j < d; j++) pr += (double)c->projection[(size_t)i * d + j] * q[j];
            if (c->family == RP_FAM_SIMHASH)
                acc += (double)c->scale * pr * (bit ? 1.0 : -1.0);
            else
                dist += (uint32_t)((pr > 0.0) != bit);
        }
        return c->family == RP_FAM_SIMHASH ? acc : -(double)dist;
    }
    case RP_FAM_RABITQ: { /* <q, c> + sigma kappa rho <P q, g> (float64) */
        uint32_t stage = (stages ? stages : c->n_stages) - 1u, k, L = 1u << (c->rb_bits - 1u);
        uint32_t off = stage == 0 ? c->rb_nb0 : c->rb_nb0 + 4u + c->rb_nb1;
        double qc = 0.0, dot = 0.0, kappa = stage == 0 ? 1.0 / sqrt((double)d) : 1.0 / (L * sqrt((double)d));
        double sigma = half_ref((uint16_t)(p[off] | (p[off + 1u] << 8)));
        for (j = 0; j < d; j++) qc += (double)q[j] * c->rb_centroid[j];
        for (j = 0; j < d; j++) {
            double y = 0.0, g;
            int sign = (p[j / 8u] >> (7u - j % 8u)) & 1;
            for (k = 0; k < d; k++) y += (double)c->rotation[(size_t)j * d + k] * q[k];
            if (stage == 0) {
                g = sign ? 1.0 : -1.0;
            } else {
                uint32_t low = 0, b;
                for (b = 0; b + 1u < c->rb_bits; b++) {
                    uint32_t pos = j * (c->rb_bits - 1u) + b;
                    low = (low << 1) | ((p[c->rb_nb0 + 4u + pos / 8u] >> (7u - pos % 8u)) & 1u);
                }
                g = (double)((uint32_t)sign * L + low) - ((double)(1u << c->rb_bits) - 1.0) / 2.0;
            }
            dot += y * g;
        }
        return qc + sigma * kappa * (double)c->rb_rho * dot;
    }
    default:
        return 0.0;
    }
}

/* Reference top-K over scores (best first, ties to the lower row), rows excluded or skipped left out. */
static uint32_t ref_topk(const float *sc, uint64_t n, uint32_t k, const unsigned char *gone, int64_t *rows, float *vals) {
    uint32_t cnt = 0, i;
    uint64_t t;
    for (t = 0; t < n; t++) {
        if (gone != NULL && gone[t]) continue;
        if (cnt == k && !(sc[t] > vals[cnt - 1u])) continue;
        i = cnt < k ? cnt++ : k - 1u;
        while (i > 0 && sc[t] > vals[i - 1u]) {
            vals[i] = vals[i - 1u];
            rows[i] = rows[i - 1u];
            i--;
        }
        vals[i] = sc[t];
        rows[i] = (int64_t)t;
    }
    return cnt;
}

/* The kernels this build and CPU can run. */
static const char *g_kernels[3];
static int g_nk = 0;
static void find_kernels(void) {
    const char *names[3] = {"portable", "avx2", "neon"};
    int i;
    for (i = 0; i < 3; i++)
        if (rp_set_kernel(names[i], NULL) == RP_OK) g_kernels[g_nk++] = names[i];
    rp_set_kernel("auto", NULL);
}

/* Score with rp_codec_score (portable), compare to the float64 reference; returns the scores. */
static float *check_codec_score(const rp_codec *c, const float *q, const uint8_t *codes, uint64_t n, size_t stride,
                                uint32_t stages, const char *what) {
    float *sc = (float *)xmalloc((size_t)n * sizeof(float));
    double maxabs = 0.0, maxerr = 0.0;
    uint64_t t;
    rp_error e;
    int st;
    rp_set_kernel("portable", NULL);
    st = rp_codec_score(c, q, codes, n, stride, stages, sc, &e);
    CHECK(st == RP_OK, "%s: rp_codec_score failed: %s", what, e.message);
    for (t = 0; t < n && st == RP_OK; t++) {
        double r = ref_score(c, q, codes + (size_t)t * stride, stages);
        double err = fabs((double)sc[t] - r);
        if (fabs(r) > maxabs) maxabs = fabs(r);
        if (err > maxerr) maxerr = err;
    }
    CHECK(maxerr <= 1e-5 * (maxabs > 1e-30 ? maxabs : 1.0), "%s: codec_score differs from the reference by %g (max |score| %g)",
          what, maxerr, maxabs);
    /* every kernel path scores alike */
    {
        int ki;
        float *o = (float *)xmalloc((size_t)n * sizeof(float));
        for (ki = 0; ki < g_nk; ki++) {
            rp_set_kernel(g_kernels[ki], NULL);
            st = rp_codec_score(c, q, codes, n, stride, stages, o, NULL);
            CHECK(st == RP_OK && memcmp(o, sc, (size_t)n * sizeof(float)) == 0, "%s: codec_score differs on kernel %s", what,
                  g_kernels[ki]);
        }
        free(o);
    }
    rp_set_kernel("auto", NULL);
    return sc;
}

/* Simhash scanner reference: the quantised query (binscan.py), computed here in float64 from scratch. */
static void simhash_quantised_ref(const rp_codec *c, const float *q, int qbits, const uint8_t *codes, uint64_t n,
                                  size_t stride, float *out) {
    uint32_t nb = c->nbits, d = c->dim, i, j;
    float *proj = (float *)xmalloc(nb * sizeof(float));
    double lo, hi, delta, levels = (double)((1 << qbits) - 1), usum = 0.0, total;
    uint32_t *u = (uint32_t *)xmalloc(nb * sizeof(uint32_t));
    uint64_t t;
    for (i = 0; i < nb; i++) {
        double acc = 0.0;
        for (j = 0; j < d; j++) acc += (double)c->projection[(size_t)i * d + j] * q[j];
        proj[i] = c->scale * (float)acc;
    }
    lo = hi = proj[0];
    for (i = 1; i < nb; i++) {
        lo = proj[i] < lo ? proj[i] : lo;
        hi = proj[i] > hi ? proj[i] : hi;
    }
    delta = hi - lo > 0.0 ? (hi - lo) / levels : 1.0;
    for (i = 0; i < nb; i++) {
        double v = nearbyint(((double)proj[i] - lo) / delta);
        v = v < 0 ? 0 : (v > levels ? levels : v);
        u[i] = (uint32_t)v;
        usum += v;
    }
    total = lo * nb + delta * usum;
    for (t = 0; t < n; t++) {
        const uint8_t *p = codes + (size_t)t * stride;
        int64_t dot = 0, ones = 0;
        double v;
        for (i = 0; i < nb; i++)
            if ((p[i / 8u] >> (7u - i % 8u)) & 1u) {
                ones++;
                dot += u[i];
            }
        v = 2.0 * delta * (double)dot + 2.0 * lo * (double)ones + -total;
        out[t] = (float)(v + 0.0);
    }
    free(proj);
    free(u);
}

/* Run the scanner on every kernel and compare with the reference top-K of `ref` (scores the scanner must
 * reproduce bit for bit). Also exclusion and skip ranges. */
static void check_scanner(const rp_codec *c, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                          const float *q, const float *ref, const char *what) {
    uint32_t ks[3] = {1, 7, 50}, ki, kk;
    int64_t *rows = (int64_t *)xmalloc(64 * sizeof(int64_t)), *rr = (int64_t *)xmalloc(64 * sizeof(int64_t));
    float *vals = (float *)xmalloc(64 * sizeof(float)), *rv = (float *)xmalloc(64 * sizeof(float));
    int64_t *first_rows = (int64_t *)xmalloc(64 * sizeof(int64_t));
    float *first_vals = (float *)xmalloc(64 * sizeof(float));
    unsigned char *gone = (unsigned char *)xmalloc((size_t)n);
    int64_t excl[40];
    size_t n_excl = 0, i;
    rp_row_range skip[3];
    size_t n_skip = 0;
    rp_error e;
    int mode;
    /* exclusion: unsorted, repeated, out of range */
    for (i = 0; i < 30; i++) excl[n_excl++] = (int64_t)rndu((uint32_t)n);
    excl[n_excl++] = excl[0];
    excl[n_excl++] = excl[3];
    excl[n_excl++] = -5;
    excl[n_excl++] = (int64_t)n + 10;
    if (n > 200) {
        skip[0].lo = 33, skip[0].hi = 70;
        skip[1].lo = 100, skip[1].hi = 101;
        skip[2].lo = n - 17, skip[2].hi = n + 50; /* beyond n: clipped */
        n_skip = 3;
    }
    for (mode = 0; mode < 3; mode++) { /* 0 plain, 1 exclusion, 2 exclusion + skip */
        memset(gone, 0, (size_t)n);
        if (mode >= 1)
            for (i = 0; i < n_excl; i++)
                if (excl[i] >= 0 && (uint64_t)excl[i] < n) gone[excl[i]] = 1;
        if (mode == 2)
            for (i = 0; i < n_skip; i++) {
                uint64_t t;
                for (t = skip[i].lo; t < skip[i].hi && t < n; t++) gone[t] = 1;
            }
        for (kk = 0; kk < 3; kk++) {
            uint32_t k = ks[kk], nref, n_out, n_first = 0;
            if (k > n) continue;
            nref = ref != NULL ? ref_topk(ref, n, k, gone, rr, rv) : 0;
            for (ki = 0; ki < (uint32_t)g_nk; ki++) {
                rp_scanner *s = NULL;
                int st;
                rp_set_kernel(g_kernels[ki], NULL);
                if (mode == 2 && ki % 2u == 1u)
                    st = rp_scanner_new_skip(c, codes, n, opts, skip, n_skip, &s, &e);
                else {
                    st = rp_scanner_new(c, codes, n, opts, &s, &e);
                    if (st == RP_OK && mode == 2) st = rp_scanner_set_skip(s, skip, n_skip, &e);
                }
                CHECK(st == RP_OK, "%s: scanner_new: %s", what, e.message);
                if (st != RP_OK) continue;
                st = rp_scanner_search(s, q, k, mode ? excl : NULL, mode ? n_excl : 0, rows, vals, &n_out, &e);
                CHECK(st == RP_OK, "%s: search: %s", what, e.message);
                if (ref != NULL) {
                    CHECK(n_out == nref, "%s [%s k=%u mode=%d]: %u results, reference %u", what, rp_scanner_kernel(s), k,
                          mode, n_out, nref);
                    for (i = 0; i < n_out && i < nref; i++)
                        if (rows[i] != rr[i] || memcmp(&vals[i], &rv[i], 4) != 0) {
                            CHECK(0, "%s [%s k=%u mode=%d]: rank %zu row %lld score %.9g, reference row %lld score %.9g", what,
                                  rp_scanner_kernel(s), k, mode, i, (long long)rows[i], vals[i], (long long)rr[i], rv[i]);
                            break;
                        }
                } else { /* no reference (approximate): well-formed output */
                    for (i = 0; i < n_out; i++) {
                        CHECK(rows[i] >= 0 && (uint64_t)rows[i] < n && !gone[rows[i]], "%s: bad row %lld", what, (long long)rows[i]);
                        if (i > 0) CHECK(vals[i] < vals[i - 1] || (vals[i] == vals[i - 1] && rows[i] > rows[i - 1]), "%s: order", what);
                    }
                }
                if (ki == 0) {
                    n_first = n_out;
                    memcpy(first_rows, rows, n_out * sizeof(int64_t));
                    memcpy(first_vals, vals, n_out * sizeof(float));
                } else {
                    CHECK(n_out == n_first && memcmp(rows, first_rows, n_out * sizeof(int64_t)) == 0 &&
                              memcmp(vals, first_vals, n_out * sizeof(float)) == 0,
                          "%s: kernel %s differs from %s (k=%u mode=%d)", what, g_kernels[ki], g_kernels[0], k, mode);
                }
                rp_scanner_free(s);
            }
        }
    }
    rp_set_kernel("auto", NULL);
    free(rows), free(rr), free(vals), free(rv), free(first_rows), free(first_vals), free(gone);
}

static float *rand_query(uint32_t d) { return randf(d, 1.0f); }

static void test_family(rp_codec *c, uint64_t n, const char *what, int approx_too) {
    size_t stride = c->bytes_per_vector;
    uint8_t *codes = make_codes(c, n, stride);
    float *q = rand_query(c->dim);
    float *sc = check_codec_score(c, q, codes, n, stride, 0, what);
    if (c->family == RP_FAM_SIMHASH) { /* the scanner ranks by the quantised query */
        int qb;
        for (qb = 1; qb <= 16; qb += 7) {
            rp_scan_options o;
            memset(&o, 0, sizeof(o));
            o.query_bits = qb;
            simhash_quantised_ref(c, q, qb, codes, n, stride, sc);
            check_scanner(c, codes, n, &o, q, sc, what);
        }
    } else {
        check_scanner(c, codes, n, NULL, q, sc, what);
    }
    if (approx_too) {
        rp_scan_options o;
        memset(&o, 0, sizeof(o));
        o.approximate = 1;
        check_scanner(c, codes, n, &o, q, NULL, what);
    }
    free(sc);
    free(q);
    free(codes);
}

static void test_families(void) {
    rp_codec c;
    uint32_t rep;
    for (rep = 0; rep < 2; rep++) {
        uint64_t n = rep ? 1000 : 3001;
        make_pq(&c, RP_FAM_PQ8, 16, 4, 256, 0), test_family(&c, n, "pq16", 0), codec_release(&c);
        make_pq(&c, RP_FAM_PQ8, 13, 3, 37, 0), test_family(&c, n, "pq13 ksub37", 0), codec_release(&c);
        make_pq(&c, RP_FAM_OPQ8, 8, 4, 256, 1), test_family(&c, n, "opq8", 0), codec_release(&c);
        make_pq(&c, RP_FAM_PQ4, 32, 2, 16, 0), test_family(&c, n, "pq32x4", 1), codec_release(&c);
        make_pq(&c, RP_FAM_PQ4, 6, 3, 11, 0), test_family(&c, n, "pq6x4 ksub11", 1), codec_release(&c);
        make_pq(&c, RP_FAM_PQ4, 2, 1, 16, 0), test_family(&c, n, "pq2x4", 1), codec_release(&c);
        make_pq(&c, RP_FAM_PQ4, 260, 1, 16, 0), test_family(&c, 300, "pq260x4 (no fast-scan)", 0), codec_release(&c);
        make_sq(&c, 8, 37), test_family(&c, n, "sq8", 0), codec_release(&c);
        make_sq(&c, 4, 37), test_family(&c, n, "sq4 odd", 0), codec_release(&c);
        make_sq(&c, 4, 64), test_family(&c, n, "sq4", 0), codec_release(&c);
        make_flat(&c, 0, 29), test_family(&c, n, "float32", 0), codec_release(&c);
        make_flat(&c, 1, 35), test_family(&c, n, "fp16", 0), codec_release(&c);
        {
            uint32_t st[3] = {2, 1, 3};
            make_rq(&c, 24, st, 3, 1), test_family(&c, n, "rq2+1+3-b", 0), codec_release(&c);
            make_rq(&c, 16, st, 2, 0), test_family(&c, n, "rq2+1", 0), codec_release(&c);
            make_rq_pn(&c, 16, 0, st, 2, 1), test_family(&c, n, "rq2+1-n", 0), codec_release(&c);
            make_rq_pn(&c, 24, 7, st, 3, 0), test_family(&c, n, "rq2+1+3-p7", 0), codec_release(&c);
            make_rq_pn(&c, 24, 7, st, 3, 1), test_family(&c, n, "rq2+1+3-p7-n", 0), codec_release(&c);
            make_rq_pn(&c, 9, 9, st, 1, 1), test_family(&c, n, "rq2-p9-n (D = d)", 0), codec_release(&c);
        }
        make_simhash(&c, 128, 32, 0), test_family(&c, n, "simhash128", 0), codec_release(&c);
        make_simhash(&c, 72, 20, 0), test_family(&c, n, "simhash72", 0), codec_release(&c);
        make_simhash(&c, 128, 32, 1), test_family(&c, n, "simhash128-hamming", 0), codec_release(&c);
        make_simhash(&c, 40, 9, 1), test_family(&c, n, "simhash40-hamming", 0), codec_release(&c);
    }
}

/* ---- rabitq ------------------------------------------------------------------------------------------------ */
/* Stage-0 scanner scores from scratch: P q and <q, c> rounded to float32 (the runtime's float64 sums), the query
 * quantised to qbits planes (binscan.py), score = f32(s_t * (qproj . (2 b - 1)) + <q, c>), s_t = sigma0 kappa0 rho. */
static void rabitq_quantised_ref(const rp_codec *c, const float *q, int qbits, const uint8_t *codes, uint64_t n,
                                 size_t stride, float *out) {
    uint32_t d = c->dim, i, j;
    float *y = (float *)xmalloc(d * sizeof(float));
    double *u = (double *)xmalloc(d * sizeof(double));
    double lo, hi, delta, levels = (double)((1 << qbits) - 1), usum = 0.0, total, qc = 0.0;
    uint64_t t;
    for (i = 0; i < d; i++) {
        double acc = 0.0;
        for (j = 0; j < d; j++) acc += (double)c->rotation[(size_t)i * d + j] * q[j];
        y[i] = (float)acc;
    }
    for (j = 0; j < d; j++) qc += (double)q[j] * c->rb_centroid[j];
    qc = (double)(float)qc;
    lo = hi = y[0];
    for (i = 1; i < d; i++) {
        lo = y[i] < lo ? y[i] : lo;
        hi = y[i] > hi ? y[i] : hi;
    }
    delta = hi - lo > 0.0 ? (hi - lo) / levels : 1.0;
    for (i = 0; i < d; i++) {
        double v = nearbyint(((double)y[i] - lo) / delta);
        u[i] = v < 0 ? 0 : (v > levels ? levels : v);
        usum += u[i];
    }
    total = lo * d + delta * usum;
    for (t = 0; t < n; t++) {
        const uint8_t *p = codes + (size_t)t * stride;
        double dot = 0.0, ones = 0.0, v, scale;
        for (i = 0; i < 8u * c->rb_nb0; i++) /* pad bits count as ones (as binscan.py) */
            if ((p[i / 8u] >> (7u - i % 8u)) & 1u) {
                ones += 1.0;
                if (i < d) dot += u[i];
            }
        scale = (double)(float)half_ref((uint16_t)(p[c->rb_nb0] | (p[c->rb_nb0 + 1u] << 8))) *
                ((1.0 / sqrt((double)d)) * (double)c->rb_rho);
        v = 2.0 * delta * dot + 2.0 * lo * ones + -total;
        v *= scale;
        out[t] = (float)(v + qc);
    }
    free(y);
    free(u);
}

/* B > 1 reference: top min(n, max(20k, 1000)) of the stage-0 scores `s0` (rows in `gone` left out), rescored
 * with `full`, top k (ties to the lower row). */
static uint32_t rabitq_rerank_ref(const float *s0, const float *full, uint64_t n, uint32_t k, const unsigned char *gone,
                                  int64_t *rows, float *vals) {
    uint64_t m = (uint64_t)k * 20u > 1000u ? (uint64_t)k * 20u : 1000u, t;
    int64_t *cr;
    float *cv, *fs;
    unsigned char *out;
    uint32_t nc, i, r;
    if (m > n) m = n;
    cr = (int64_t *)xmalloc((size_t)m * sizeof(int64_t));
    cv = (float *)xmalloc((size_t)m * sizeof(float));
    nc = ref_topk(s0, n, (uint32_t)m, gone, cr, cv);
    out = (unsigned char *)xmalloc((size_t)n);
    memset(out, 1, (size_t)n);
    for (i = 0; i < nc; i++) out[cr[i]] = 0;
    fs = (float *)xmalloc((size_t)n * sizeof(float));
    for (t = 0; t < n; t++) fs[t] = full[t];
    r = ref_topk(fs, n, k, out, rows, vals);
    free(cr), free(cv), free(out), free(fs);
    return r;
}

static void test_rabitq_codec(uint32_t d, uint32_t bits, uint64_t n, const char *what) {
    rp_codec c;
    size_t stride;
    uint8_t *codes;
    float *q, *full, *s0;
    int qb;
    make_rabitq(&c, d, bits);
    stride = c.bytes_per_vector;
    codes = make_codes(&c, n, stride);
    q = rand_query(d);
    full = check_codec_score(&c, q, codes, n, stride, 0, what); /* all stages */
    free(check_codec_score(&c, q, codes, n, stride, 1, what));  /* stage 0 (the 1-bit estimate) */
    s0 = (float *)xmalloc((size_t)n * sizeof(float));
    for (qb = 1; qb <= 16; qb += 7) {
        rp_scan_options o;
        memset(&o, 0, sizeof(o));
        o.query_bits = qb;
        rabitq_quantised_ref(&c, q, qb, codes, n, stride, s0);
        if (bits == 1) {
            check_scanner(&c, codes, n, &o, q, s0, what);
        } else if (n <= 1000) { /* every row is a candidate: the full estimate ranks them */
            check_scanner(&c, codes, n, &o, q, full, what);
        } else {
            uint32_t ks[3] = {1, 7, 50}, kk, nref, n_out, i;
            int64_t rows[50], rr[50], excl[30];
            float vals[50], rv[50];
            unsigned char *gone = (unsigned char *)xmalloc((size_t)n);
            int ki, mode;
            rp_row_range skip[2] = {{10, 400}, {900, 901}};
            for (i = 0; i < 30; i++) excl[i] = (int64_t)rndu((uint32_t)n);
            for (mode = 0; mode < 3; mode++)
                for (kk = 0; kk < 3; kk++) {
                    memset(gone, 0, (size_t)n);
                    if (mode >= 1)
                        for (i = 0; i < 30; i++) gone[excl[i]] = 1;
                    if (mode == 2) {
                        uint64_t t;
                        for (t = 10; t < 400; t++) gone[t] = 1;
                        gone[900] = 1;
                    }
                    nref = rabitq_rerank_ref(s0, full, n, ks[kk], gone, rr, rv);
                    for (ki = 0; ki < g_nk; ki++) {
                        rp_scanner *s = NULL;
                        rp_error e;
                        int st;
                        rp_set_kernel(g_kernels[ki], NULL);
                        st = mode == 2 ? rp_scanner_new_skip(&c, codes, n, &o, skip, 2, &s, &e) : rp_scanner_new(&c, codes, n, &o, &s, &e);
                        CHECK(st == RP_OK, "%s: scanner_new: %s", what, e.message);
                        if (st != RP_OK) continue;
                        CHECK(strstr(rp_scanner_kernel(s), "rabitq-bitplane-") != NULL && strstr(rp_scanner_kernel(s), "+rerank") != NULL,
                              "%s: kernel name %s", what, rp_scanner_kernel(s));
                        st = rp_scanner_search(s, q, ks[kk], mode ? excl : NULL, mode ? 30u : 0u, rows, vals, &n_out, &e);
                        CHECK(st == RP_OK && n_out == nref, "%s: rerank search %d %u/%u", what, st, n_out, nref);
                        for (i = 0; st == RP_OK && i < n_out && i < nref; i++)
                            if (rows[i] != rr[i] || memcmp(&vals[i], &rv[i], 4) != 0) {
                                CHECK(0, "%s [%s k=%u mode=%d qb=%d]: rank %u row %lld %.9g, reference %lld %.9g", what,
                                      rp_scanner_kernel(s), ks[kk], mode, qb, i, (long long)rows[i], vals[i], (long long)rr[i], rv[i]);
                                break;
                            }
                        rp_scanner_free(s);
                    }
                }
            rp_set_kernel("auto", NULL);
            free(gone);
        }
        if (bits > 1) { /* stages = 1: the 1-bit ranking on the stage-0 prefix, read in place */
            o.stages = 1;
            o.stride = stride;
            check_scanner(&c, codes, n, &o, q, s0, what);
        }
    }
    free(s0), free(full), free(q), free(codes);
    codec_release(&c);
}

static void test_rabitq_errors(void) {
    rp_codec c;
    uint64_t n = 200;
    uint8_t *codes;
    float *q, vals[200], bad[40];
    int64_t rows[200];
    uint32_t n_out, j;
    rp_scanner *s = NULL;
    rp_scan_options o;
    rp_error e;
    make_rabitq(&c, 40, 3);
    codes = make_codes(&c, n, c.bytes_per_vector);
    q = rand_query(40);
    CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_OK, "rabitq errors: new: %s", e.message);
    CHECK(strcmp(rp_scanner_kernel(s), "rabitq-bitplane-portable+rerank") == 0 || strstr(rp_scanner_kernel(s), "+rerank") != NULL,
          "rabitq kernel name %s", rp_scanner_kernel(s));
    CHECK(rp_scanner_search(s, q, 0, NULL, 0, rows, vals, &n_out, &e) == RP_E_K_RANGE, "rabitq k = 0");
    CHECK(rp_scanner_search(s, q, 201, NULL, 0, rows, vals, &n_out, &e) == RP_E_K_RANGE, "rabitq k > n");
    {
        int64_t excl[4] = {3, 7, 3, 500};
        uint32_t i;
        CHECK(rp_scanner_search(s, q, 200, excl, 4, rows, vals, &n_out, &e) == RP_OK && n_out == 198, "rabitq exclusion count %u", n_out);
        for (i = 0; i < n_out; i++) CHECK(rows[i] != 3 && rows[i] != 7, "rabitq excluded row returned");
        CHECK(rows[198] == -1 && rows[199] == -1, "rabitq unused slots");
    }
    for (j = 0; j < 40; j++) bad[j] = q[j];
    bad[5] = NAN;
    CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "rabitq NaN query");
    for (j = 0; j < 40; j++) bad[j] = 1e30f;
    CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "rabitq |P q| > 1e30");
    CHECK(rp_scanner_search(s, q, 5, NULL, 0, rows, vals, &n_out, &e) == RP_OK, "rabitq search after a refusal");
    rp_scanner_free(s);
    c.rb_rho = 1e12f; /* scores that could leave float32's range are refused */
    CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_OK, "rabitq huge rho: new");
    for (j = 0; j < 40; j++) bad[j] = 1e29f * (j % 2 ? 1.0f : -1.0f);
    CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "rabitq score overflow refused");
    CHECK(rp_scanner_search(s, q, 5, NULL, 0, rows, vals, &n_out, &e) == RP_OK, "rabitq huge rho: ordinary query");
    rp_scanner_free(s);
    c.rb_rho = 3.25f;
    memset(&o, 0, sizeof(o));
    o.stages = 3;
    CHECK(rp_scanner_new(&c, codes, n, &o, &s, &e) == RP_E_ARGUMENT, "rabitq stages out of range");
    CHECK(rp_codec_score(&c, q, codes, n, 0, 3, vals, &e) == RP_E_ARGUMENT, "rabitq codec_score stages out of range");
    o.stages = 0;
    o.query_bits = 17;
    CHECK(rp_scanner_new(&c, codes, n, &o, &s, &e) == RP_E_ARGUMENT, "rabitq query_bits 17");
    /* factor bytes no encoder writes: NaN sigma (stage 0), negative eps (stage 1) */
    codes[7 * c.bytes_per_vector + c.rb_nb0 + 1u] = 0x7E; /* sigma0 of row 7: NaN */
    CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_E_CODEC, "rabitq NaN sigma refused");
    CHECK(rp_codec_score(&c, q, codes, n, 0, 0, vals, &e) == RP_E_CODEC, "rabitq codec_score NaN sigma");
    {
        rp_row_range r = {7, 8};
        CHECK(rp_scanner_new_skip(&c, codes, n, NULL, &r, 1, &s, &e) == RP_OK, "rabitq bad row in a skip range is never read");
        CHECK(rp_scanner_search(s, q, 10, NULL, 0, rows, vals, &n_out, &e) == RP_OK && n_out == 10, "rabitq skip search");
        for (j = 0; j < n_out; j++) CHECK(rows[j] != 7, "rabitq skipped row returned");
        rp_scanner_free(s);
    }
    codes[7 * c.bytes_per_vector + c.rb_nb0 + 1u] = 0x3C;
    codes[9 * c.bytes_per_vector + c.bytes_per_vector - 1u] = 0x80; /* eps1 of row 9: negative */
    CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_E_CODEC, "rabitq negative eps1 refused");
    CHECK(rp_codec_score(&c, q, codes, n, 0, 1, vals, &e) == RP_OK, "rabitq stage-0 score ignores stage 1 factors");
    o.query_bits = 0;
    o.stages = 1;
    o.stride = c.bytes_per_vector;
    CHECK(rp_scanner_new(&c, codes, n, &o, &s, &e) == RP_OK, "rabitq stage-0 scanner ignores stage 1 factors");
    CHECK(strstr(rp_scanner_kernel(s), "+rerank") == NULL, "rabitq stage-0 scanner name %s", rp_scanner_kernel(s));
    rp_scanner_free(s);
    free(codes), free(q);
    codec_release(&c);
}

/* RPCS states: loading, the layout accessors and _load_state's checks. */
static uint8_t *rabitq_state(const char *spec, uint32_t d, const float *cent, const float *rot, float rho, size_t *size) {
    char hdr[512];
    size_t h, pay = (size_t)4u * d + (size_t)4u * d * d + 4u;
    uint8_t *s;
    snprintf(hdr, sizeof hdr,
             "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroid\", \"nbytes\": %u, \"offset\": 0, \"shape\": [%u]}, "
             "{\"dtype\": \"<f4\", \"name\": \"rotation\", \"nbytes\": %u, \"offset\": %u, \"shape\": [%u, %u]}, "
             "{\"dtype\": \"<f4\", \"name\": \"rho\", \"nbytes\": 4, \"offset\": %u, \"shape\": [1]}], "
             "\"dim\": %u, \"meta\": {}, \"spec\": \"%s\"}",
             4u * d, d, 4u * d * d, 4u * d, d, d, 4u * d + 4u * d * d, d, spec);
    h = strlen(hdr);
    s = (uint8_t *)xmalloc(10 + h + pay);
    memcpy(s, "RPCS", 4);
    s[4] = 1, s[5] = 0;
    s[6] = (uint8_t)h, s[7] = (uint8_t)(h >> 8), s[8] = 0, s[9] = 0;
    memcpy(s + 10, hdr, h);
    memcpy(s + 10 + h, cent, 4u * d); /* little-endian host assumed by the test */
    memcpy(s + 10 + h + 4u * d, rot, (size_t)4u * d * d);
    memcpy(s + 10 + h + 4u * d + 4u * d * d, &rho, 4);
    *size = 10 + h + pay;
    return s;
}

static void test_rabitq_state(void) {
    uint32_t d = 20, j;
    float *cent = randf(d, 1.0f), *rot = rand_orthogonal(d);
    size_t size;
    uint8_t *st;
    rp_codec *c = NULL;
    rp_error e;
    st = rabitq_state("rabitq5", d, cent, rot, 2.5f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_OK, "rabitq5 state: %s", e.message);
    if (c != NULL) {
        CHECK(strcmp(rp_codec_spec(c), "rabitq5") == 0 && strcmp(rp_codec_family(c), "rabitq") == 0, "rabitq5 spec/family");
        CHECK(rp_codec_bytes_per_vector(c) == 3u + 4u + 10u + 4u, "rabitq5 bytes_per_vector %u", rp_codec_bytes_per_vector(c));
        CHECK(rp_codec_stages(c) == 2u && rp_codec_prefix_bytes(c, 1) == 7u && rp_codec_prefix_bytes(c, 2) == 21u &&
                  rp_codec_prefix_bytes(c, 0) == 21u, "rabitq5 stages / prefix bytes");
        {   /* the loaded codec scores like the hand-built one */
            rp_codec h;
            uint8_t *codes;
            float *q = rand_query(d), *a = (float *)xmalloc(50 * sizeof(float)), *b = (float *)xmalloc(50 * sizeof(float));
            make_rabitq(&h, d, 5);
            memcpy(h.rb_centroid, cent, 4u * d);
            memcpy(h.rotation, rot, (size_t)4u * d * d);
            h.rb_rho = 2.5f;
            codes = make_codes(&h, 50, h.bytes_per_vector);
            CHECK(rp_codec_score(c, q, codes, 50, 0, 0, a, &e) == RP_OK && rp_codec_score(&h, q, codes, 50, 0, 0, b, &e) == RP_OK &&
                      memcmp(a, b, 50 * sizeof(float)) == 0, "rabitq5 loaded codec scores like the hand-built one");
            free(codes), free(q), free(a), free(b);
            codec_release(&h);
        }
        rp_codec_free(c);
    }
    free(st);
    st = rabitq_state("rabitq1", d, cent, rot, 2.5f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_OK && strcmp(rp_codec_spec(c), "rabitq") == 0 && rp_codec_stages(c) == 1u &&
              rp_codec_bytes_per_vector(c) == 7u && rp_codec_prefix_bytes(c, 1) == 7u, "rabitq1 is rabitq");
    rp_codec_free(c);
    free(st);
    {
        const char *badspecs[4] = {"rabitq9", "rabitq0", "rabitq04", "rabitq1000"};
        int i;
        for (i = 0; i < 4; i++) {
            st = rabitq_state(badspecs[i], d, cent, rot, 2.5f, &size);
            CHECK(rp_codec_open(st, size, &c, &e) == RP_E_CODEC, "%s refused", badspecs[i]);
            free(st);
        }
        st = rabitq_state("rabitq12345", d, cent, rot, 2.5f, &size);
        CHECK(rp_codec_open(st, size, &c, &e) == RP_E_UNSUPPORTED, "rabitq12345 is no rabitq spec");
        free(st);
    }
    st = rabitq_state("rabitq", d, cent, rot, 0.0f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_E_CODEC, "rabitq rho 0 refused");
    free(st);
    st = rabitq_state("rabitq", d, cent, rot, -1.0f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_E_CODEC, "rabitq rho < 0 refused");
    free(st);
    for (j = 0; j < d; j++) rot[j] *= 1.0003f; /* |R R^T - I| ~ 6e-4: beyond allclose(atol=1e-4) (OPQ's 1e-3 would pass) */
    st = rabitq_state("rabitq", d, cent, rot, 1.0f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_E_CODEC && strstr(e.message, "orthogonal") != NULL, "rabitq non-orthogonal rotation");
    free(st);
    free(rot);
    rot = rand_orthogonal(d);
    cent[2] = NAN;
    st = rabitq_state("rabitq", d, cent, rot, 1.0f, &size);
    CHECK(rp_codec_open(st, size, &c, &e) == RP_E_CODEC, "rabitq NaN centroid");
    free(st);
    free(cent), free(rot);
}

static void test_rabitq(void) {
    test_rabitq_codec(32, 1, 3001, "rabitq d32");
    test_rabitq_codec(37, 1, 1500, "rabitq d37");
    test_rabitq_codec(130, 1, 700, "rabitq d130");
    test_rabitq_codec(32, 4, 3001, "rabitq4 d32");
    test_rabitq_codec(21, 3, 800, "rabitq3 d21");
    test_rabitq_codec(64, 8, 3001, "rabitq8 d64");
    test_rabitq_codec(9, 2, 400, "rabitq2 d9");
    test_rabitq_errors();
    test_rabitq_state();
}

/* ---- ties, K, bad queries, code checks, stride and prefix, refinement ------------------------------------- */
static void test_ties_and_k(void) {
    rp_codec c;
    uint64_t n = 100, t;
    uint8_t *codes;
    float *q;
    int64_t rows[100];
    float vals[100];
    uint32_t n_out, ki;
    rp_error e;
    rp_scanner *s;
    make_pq(&c, RP_FAM_PQ8, 4, 2, 3, 0);
    codes = (uint8_t *)xmalloc(n * 4);
    for (t = 0; t < n; t++) memset(codes + t * 4, (int)(t % 3u), 4); /* three distinct scores, many ties */
    q = rand_query(c.dim);
    for (ki = 0; ki < (uint32_t)g_nk; ki++) {
        int64_t excl[3] = {99, 5, 99};
        uint32_t i;
        rp_set_kernel(g_kernels[ki], NULL);
        CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_OK, "ties: new: %s", e.message);
        CHECK(rp_scanner_search(s, q, 40, NULL, 0, rows, vals, &n_out, &e) == RP_OK && n_out == 40, "ties: search");
        for (i = 1; i < 40; i++)
            CHECK(vals[i] < vals[i - 1] || (vals[i] == vals[i - 1] && rows[i] > rows[i - 1]), "ties: order at %u", i);
        CHECK(rows[0] % 3 == rows[1] % 3 && rows[0] < 3 && rows[1] == rows[0] + 3, "ties: lower rows first");
        /* K range */
        CHECK(rp_scanner_search(s, q, 0, NULL, 0, rows, vals, &n_out, &e) == RP_E_K_RANGE, "k = 0");
        CHECK(rp_scanner_search(s, q, 101, NULL, 0, rows, vals, &n_out, &e) == RP_E_K_RANGE, "k > n");
        CHECK(rp_scanner_search(s, q, 100, excl, 3, rows, vals, &n_out, &e) == RP_OK && n_out == 98,
              "fewer results when rows are excluded (%u)", n_out);
        for (i = 0; i < n_out; i++) CHECK(rows[i] != 5 && rows[i] != 99, "excluded row returned");
        CHECK(rows[98] == -1, "unused slots are -1");
        /* bad queries */
        {
            float bad[8];
            memcpy(bad, q, sizeof(bad));
            bad[3] = NAN;
            CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "NaN query");
            bad[3] = INFINITY;
            CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "Inf query");
            bad[3] = 2e30f;
            CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "1e30 query");
            bad[3] = 1e30f; /* times centroids of 1e8: tables beyond 3e38 / m */
            {
                float saved[6];
                uint32_t z;
                for (z = 0; z < 6; z++) saved[z] = c.centroids[6 + z], c.centroids[6 + z] = 1e8f;
                CHECK(rp_scanner_search(s, bad, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE,
                      "tables beyond 3e38/m: %s", e.message);
                for (z = 0; z < 6; z++) c.centroids[6 + z] = saved[z];
            }
            CHECK(rp_scanner_search(s, q, 5, NULL, 0, rows, vals, &n_out, &e) == RP_OK, "search after a refusal");
            CHECK(rp_scanner_search(s, NULL, 5, NULL, 0, rows, vals, &n_out, &e) == RP_E_ARGUMENT, "NULL query");
            CHECK(rp_scanner_search(s, q, 5, NULL, 3, rows, vals, &n_out, &e) == RP_E_ARGUMENT, "NULL exclusion list");
        }
        {
            rp_row_range bad_r[2] = {{10, 20}, {15, 30}};
            CHECK(rp_scanner_set_skip(s, bad_r, 2, &e) == RP_E_ARGUMENT, "overlapping skip ranges");
            bad_r[1].lo = 40, bad_r[1].hi = 40;
            CHECK(rp_scanner_set_skip(s, bad_r, 2, &e) == RP_E_ARGUMENT, "empty skip range");
        }
        CHECK(rp_scanner_memory(s) > 0, "memory");
        rp_scanner_free(s);
    }
    rp_set_kernel("auto", NULL);
    /* code values beyond ksub */
    codes[4 * 7 + 2] = 3;
    CHECK(rp_scanner_new(&c, codes, n, NULL, &s, &e) == RP_E_CODEC, "pq code >= ksub refused");
    {
        rp_row_range r = {7, 8};
        CHECK(rp_scanner_new_skip(&c, codes, n, NULL, &r, 1, &s, &e) == RP_OK, "bad row in a skip range is never read");
        rp_scanner_free(s);
    }
    CHECK(rp_codec_score(&c, q, codes, n, 0, 0, vals, &e) == RP_E_CODEC, "codec_score: code >= ksub");
    CHECK(rp_scanner_new(&c, codes, 0, NULL, &s, &e) == RP_E_ARGUMENT, "n = 0");
    free(codes);
    free(q);
    codec_release(&c);

    /* float32: NaN codes refused; scores beyond float32 refused */
    make_flat(&c, 0, 8);
    codes = make_codes(&c, 10, 32);
    q = rand_query(8);
    {
        float big = 1e37f, nan = NAN;
        memcpy(codes + 32 * 3 + 4, &big, 4);
        CHECK(rp_scanner_new(&c, codes, 10, NULL, &s, &e) == RP_OK, "float32 new");
        q[1] = 1e29f;
        CHECK(rp_scanner_search(s, q, 3, NULL, 0, rows, vals, &n_out, &e) == RP_E_NONFINITE, "float32 score bound");
        rp_scanner_free(s);
        memcpy(codes + 32 * 5, &nan, 4);
        CHECK(rp_scanner_new(&c, codes, 10, NULL, &s, &e) == RP_E_CODEC, "float32 NaN code refused");
    }
    free(codes);
    free(q);
    codec_release(&c);

    /* kernel names */
    CHECK(rp_set_kernel("bogus", &e) == RP_E_ARGUMENT, "unknown kernel");
    CHECK(rp_set_kernel(NULL, &e) == RP_E_ARGUMENT, "NULL kernel");
#if !defined(__aarch64__)
    CHECK(rp_set_kernel("neon", &e) == RP_E_UNSUPPORTED, "neon off aarch64");
#endif
#if !defined(__x86_64__)
    CHECK(rp_set_kernel("avx2", &e) == RP_E_UNSUPPORTED, "avx2 off x86-64");
#endif
    rp_set_kernel("auto", NULL);
}

static void test_stride_prefix(void) {
    rp_codec c;
    uint32_t st[3] = {2, 2, 1};
    uint64_t n = 500;
    uint8_t *codes, *prefix;
    float *q, *full, *sc1;
    uint64_t t;
    rp_scan_options o;
    make_rq(&c, 12, st, 3, 1);
    codes = make_codes(&c, n, c.bytes_per_vector);
    q = rand_query(c.dim);
    /* a 1-stage prefix scored in place (stride = full width) equals the copied prefix */
    prefix = (uint8_t *)xmalloc(n * c.prefix_bytes[0]);
    for (t = 0; t < n; t++) memcpy(prefix + t * c.prefix_bytes[0], codes + t * c.bytes_per_vector, c.prefix_bytes[0]);
    sc1 = check_codec_score(&c, q, codes, n, c.bytes_per_vector, 1, "rq stage 1 (stride)");
    full = check_codec_score(&c, q, prefix, n, c.prefix_bytes[0], 1, "rq stage 1 (prefix)");
    CHECK(memcmp(sc1, full, n * sizeof(float)) == 0, "prefix in place equals copied prefix");
    memset(&o, 0, sizeof(o));
    o.stages = 1;
    check_scanner(&c, prefix, n, &o, q, full, "rq prefix scanner");
    o.stride = c.bytes_per_vector;
    check_scanner(&c, codes, n, &o, q, full, "rq prefix scanner (stride)");
    o.stages = 4;
    {
        rp_scanner *s;
        rp_error e;
        CHECK(rp_scanner_new(&c, codes, n, &o, &s, &e) == RP_E_ARGUMENT, "stages out of range");
        o.stages = 2;
        o.stride = 2;
        CHECK(rp_scanner_new(&c, codes, n, &o, &s, &e) == RP_E_ARGUMENT, "stride below the code width");
        CHECK(rp_codec_score(&c, q, codes, n, 2, 0, full, &e) == RP_E_ARGUMENT, "codec_score stride too small");
    }
    free(sc1), free(full), free(prefix), free(codes), free(q);
    codec_release(&c);

    /* pq8 with a stride larger than the code (codes inside wider rows) */
    make_pq(&c, RP_FAM_PQ8, 8, 2, 256, 0);
    codes = make_codes(&c, n, 13);
    q = rand_query(c.dim);
    full = check_codec_score(&c, q, codes, n, 13, 0, "pq8 stride 13");
    memset(&o, 0, sizeof(o));
    o.stride = 13;
    check_scanner(&c, codes, n, &o, q, full, "pq8 stride 13 scanner");
    free(full), free(codes), free(q);
    codec_release(&c);
}

/* rq -n prefixes (each stage count normalises its own prefix reconstruction), the norms a pack precomputes
 * (rp_rq_inv_norms) against the scanner's own, zero reconstructions, and bad projection shapes. */
static void test_rq_unit(void) {
    rp_codec c;
    uint32_t st[3] = {2, 1, 3}, stages, i, n_out[2];
    uint64_t n = 700, t;
    uint8_t *codes, *prefix;
    float *q, *sc, *sc2, *inv;
    rp_scan_options o;
    rp_row_range skip[2];
    rp_scanner *s;
    rp_error e;
    int64_t rows[2][20];
    float vals[2][20];
    make_rq_pn(&c, 24, 7, st, 3, 1);
    codes = make_codes(&c, n, c.bytes_per_vector);
    q = rand_query(c.dim);
    for (stages = 1; stages <= 3; stages++) {
        char what[64];
        size_t pw = c.prefix_bytes[stages - 1];
        snprintf(what, sizeof what, "rq-p7-n stages %u (stride)", (unsigned)stages);
        sc = check_codec_score(&c, q, codes, n, c.bytes_per_vector, stages, what);
        prefix = (uint8_t *)xmalloc(n * pw);
        for (t = 0; t < n; t++) memcpy(prefix + t * pw, codes + t * c.bytes_per_vector, pw);
        snprintf(what, sizeof what, "rq-p7-n stages %u (prefix)", (unsigned)stages);
        sc2 = check_codec_score(&c, q, prefix, n, pw, stages, what);
        CHECK(memcmp(sc, sc2, n * sizeof(float)) == 0, "rq -n prefix in place equals the copied prefix (stages %u)", stages);
        memset(&o, 0, sizeof(o));
        o.stages = stages;
        check_scanner(&c, prefix, n, &o, q, sc, what);
        o.stride = c.bytes_per_vector;
        check_scanner(&c, codes, n, &o, q, sc, "rq-p7-n prefix scanner (stride)");
        free(prefix), free(sc), free(sc2);
    }
    /* the pack's path: every stage's norms at once (skipped rows never read), borrowed by the scanner */
    inv = (float *)xmalloc(3 * n * sizeof(float));
    skip[0].lo = 10, skip[0].hi = 50;
    skip[1].lo = 600, skip[1].hi = 700;
    CHECK(rp_rq_inv_norms(&c, codes, n, c.bytes_per_vector, skip, 2, inv, &e) == RP_OK, "rp_rq_inv_norms: %s", e.message);
    CHECK(inv[20] == 0.0f && inv[2 * n + 650] == 0.0f && inv[n + 5] > 0.0f, "rp_rq_inv_norms: skipped rows 0");
    for (stages = 1; stages <= 3; stages++) {
        int k;
        memset(&o, 0, sizeof(o));
        o.stages = stages;
        o.stride = c.bytes_per_vector;
        for (k = 0; k < 2; k++) {
            int rc = k == 0 ? rp_scanner_new_skip(&c, codes, n, &o, skip, 2, &s, &e)
                            : rp_scanner_new_release(&c, codes, n, &o, skip, 2, NULL, NULL, inv + (size_t)(stages - 1u) * n, &s, &e);
            CHECK(rc == RP_OK, "rq -n scanner %d: %s", k, e.message);
            if (rc != RP_OK) continue;
            CHECK(rp_scanner_search(s, q, 20, NULL, 0, rows[k], vals[k], &n_out[k], &e) == RP_OK && n_out[k] == 20, "rq -n search");
            rp_scanner_free(s);
        }
        CHECK(memcmp(rows[0], rows[1], sizeof rows[0]) == 0 && memcmp(vals[0], vals[1], sizeof vals[0]) == 0,
              "rq -n: precomputed norms give the scanner's own scores (stages %u)", stages);
        for (i = 0; i < 20; i++) CHECK(rows[0][i] < 10 || (rows[0][i] >= 50 && rows[0][i] < 600), "rq -n: a skipped row returned");
    }
    CHECK(rp_rq_inv_norms(&c, codes, n, 2, NULL, 0, inv, &e) == RP_E_ARGUMENT, "rp_rq_inv_norms: stride below the code");
    free(inv), free(codes), free(q);
    codec_release(&c);

    /* a zero reconstruction scores 0 (no NaN), with and without -p */
    {
        uint32_t one[1] = {2}, pj;
        for (pj = 0; pj < 2; pj++) {
            float z[8];
            uint8_t zc[8 * 2];
            make_rq_pn(&c, 6, pj ? 3u : 0u, one, 1, 1);
            memset(c.codebooks, 0, (size_t)2 * 256u * rp_rq_width(&c) * sizeof(float));
            if (pj) {
                memset(c.rq_mean, 0, 6 * sizeof(float));
                memset(c.rq_pmean, 0, 3 * sizeof(double));
                c.rq_mean_sq = 0.0;
            }
            for (i = 0; i < 16; i++) zc[i] = (uint8_t)rnd();
            q = rand_query(6);
            CHECK(rp_codec_score(&c, q, zc, 8, 0, 0, z, &e) == RP_OK, "zero reconstruction: %s", e.message);
            for (i = 0; i < 8; i++) CHECK(z[i] == 0.0f, "zero reconstruction scores %g, not 0 (-p: %u)", z[i], pj);
            free(q);
            codec_release(&c);
        }
    }
    /* a hand-built codec whose projection does not fit its dim is refused, not read out of bounds */
    make_rq_pn(&c, 8, 4, st, 2, 1);
    codes = make_codes(&c, 10, c.bytes_per_vector);
    c.rq_sub = 9;
    CHECK(rp_scanner_new(&c, codes, 10, NULL, &s, &e) == RP_E_CODEC, "rq_sub > dim refused");
    c.rq_sub = 4;
    CHECK(rp_scanner_new(&c, codes, 10, NULL, &s, &e) == RP_OK, "rq_sub restored");
    rp_scanner_free(s);
    c.rq_unit = 0;
    CHECK(rp_rq_inv_norms(&c, codes, 10, c.bytes_per_vector, NULL, 0, vals[0], &e) == RP_E_ARGUMENT, "rp_rq_inv_norms without -n");
    free(codes);
    codec_release(&c);
}

static void test_refine(void) {
    rp_codec c;
    uint32_t n = 60, i, n_out;
    uint8_t *codes, *ids;
    float *q, vals[60], sc[60];
    int64_t out[60];
    rp_refine_frame f;
    rp_error e;
    make_pq(&c, RP_FAM_PQ8, 4, 2, 5, 0);
    codes = make_codes(&c, n, 4);
    memcpy(codes + 4 * 40, codes + 4 * 10, 4); /* a tie: position 10 before 40 */
    ids = (uint8_t *)xmalloc(8 * n);
    for (i = 0; i < n; i++) {
        uint64_t id = 1000000007ull * (i + 1u);
        int b;
        for (b = 0; b < 8; b++) ids[8 * i + (uint32_t)b] = (uint8_t)(id >> (8 * b));
    }
    q = rand_query(c.dim);
    f.n_items = n, f.bytes_per_vector = 4, f.layer = 1, f.ids_le = ids, f.codes = codes;
    CHECK(rp_codec_score(&c, q, codes, n, 0, 0, sc, &e) == RP_OK, "refine: scores");
    CHECK(rp_refine(&c, q, &f, 100, out, vals, &n_out, &e) == RP_OK && n_out == n, "refine capped at n (%u)", n_out);
    for (i = 0; i < n_out; i++) {
        uint32_t pos = (uint32_t)((uint64_t)out[i] / 1000000007ull) - 1u;
        CHECK(pos < n && memcmp(&vals[i], &sc[pos], 4) == 0, "refine: id/score mismatch at %u", i);
        if (i > 0) CHECK(vals[i] <= vals[i - 1], "refine: order");
        if (pos == 40) {
            uint32_t j, seen10 = 0;
            for (j = 0; j < i; j++) seen10 |= out[j] == (int64_t)(1000000007ull * 11u);
            CHECK(seen10, "refine: ties to the earlier frame position");
        }
    }
    CHECK(rp_refine(&c, q, &f, 3, out, vals, &n_out, &e) == RP_OK && n_out == 3, "refine k=3");
    CHECK(rp_refine(&c, q, &f, 0, out, vals, &n_out, &e) == RP_E_K_RANGE, "refine k=0");
    f.bytes_per_vector = 5;
    CHECK(rp_refine(&c, q, &f, 3, out, vals, &n_out, &e) == RP_E_DIMENSION, "refine width mismatch");
    free(codes), free(ids), free(q);
    codec_release(&c);
}

int main(void) {
    find_kernels();
    printf("kernels:");
    {
        int i;
        for (i = 0; i < g_nk; i++) printf(" %s", g_kernels[i]);
    }
    printf(" (auto: %s)\n", rp_kernel_name());
    test_families();
    test_rabitq();
    test_ties_and_k();
    test_stride_prefix();
    test_rq_unit();
    test_refine();
    printf("%d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
