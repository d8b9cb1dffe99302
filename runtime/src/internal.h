/* Internal declarations shared by the runtime's source files (not installed). */
#ifndef REELPACK_INTERNAL_H
#define REELPACK_INTERNAL_H

#include "reelpack.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

/* Fill `err` (when not NULL) and return `code`. printf-style message, truncated to fit. */
int rp_fail(rp_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void rp_clear(rp_error *err);

/* Little-endian loads from possibly unaligned bytes. */
static inline uint16_t rp_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rp_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rp_le64(const uint8_t *p) { return (uint64_t)rp_le32(p) | ((uint64_t)rp_le32(p + 4) << 32); }
static inline float rp_lef32(const uint8_t *p) {
    uint32_t u = rp_le32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- codec families ------------------------------------------------------------------------- */
typedef enum rp_family {
    RP_FAM_FLOAT32 = 1,
    RP_FAM_FP16,
    RP_FAM_SQ8,      /* sq8, sq8-pP */
    RP_FAM_SQ4,      /* sq4, sq4-pP */
    RP_FAM_PQ8,      /* pqM, apqM[-tT]: centroids [m][256 or fewer][dsub] */
    RP_FAM_PQ4,      /* pqMx4: centroids [m][<=16][dsub], nibble-packed codes */
    RP_FAM_OPQ8,     /* opqM,pqM and opqM,apqM[-tT]: rotation [d][d] then PQ8 */
    RP_FAM_RQ,       /* rqS1+S2+...[-r][-pD][-n][-b] */
    RP_FAM_SIMHASH,  /* simhashB: asymmetric score with a quantised query (bit planes) */
    RP_FAM_HAMMING,  /* simhashB-hamming: minus the Hamming distance of sign bits */
    RP_FAM_RABITQ    /* rabitq, rabitqB (B = 2..8): sign bits + extended bits, float16 factors per stage */
} rp_family;

#define RP_MAX_STAGES 64

struct rp_codec {
    rp_family family;
    char spec[64];
    char family_name[16];      /* Python's family: "float32" "fp16" "sq" "pq" "opq" "apq" "opq-apq" "rq" "simhash" */
    uint32_t dim;
    uint32_t bytes_per_vector;

    /* sq: lo, step float32 [dim] */
    float *lo, *step;

    /* pq / opq / apq: centroids float32 [m][ksub][dsub] (ksub <= 256; <= 16 for PQ4); rotation [dim][dim]
     * (row-major, codes quantise x @ rotation^T, so a query is rotated as y_i = sum_j R[i][j] q_j) or NULL */
    uint32_t m, ksub, dsub;
    float *centroids;
    float *rotation;

    /* rq: codebooks float32 [n_codebooks][256][W] (W = rp_rq_width: dim, or D with -pD); stage s has
     * stage_sizes[s] codebooks; code byte column of codebook c is cb_col[c] (skips the one bound byte after each
     * stage with "-b"); prefix_bytes[s] = bytes of the code through stage s (s = 0..n_stages-1) */
    uint32_t n_codebooks, n_stages;
    uint32_t stage_sizes[RP_MAX_STAGES];
    uint32_t prefix_bytes[RP_MAX_STAGES];
    uint32_t cb_col[RP_MAX_STAGES];   /* at most 64 codebooks */
    int bounds;
    float *codebooks;
    /* rq -pD (rq_proj != NULL): rq_sub = D (1..dim), rq_proj float32 [dim][D] row-major with orthonormal columns,
     * rq_mean float32 [dim], rq_pmean float64 [D] = P^T mean, rq_mean_sq = ||mean||^2; the reconstruction is
     * mean + P y with y = sum of the codewords (D dims), a score <q, mean> + <P^T q, y>.
     * rq -n (rq_unit): a score is divided by the norm of the (prefix) reconstruction (0 when that norm is 0). */
    uint32_t rq_sub;
    int rq_unit;
    float *rq_proj, *rq_mean;
    double *rq_pmean;
    double rq_mean_sq;

    /* simhash: projection float32 [nbits][dim], scale (the decode factor c) */
    uint32_t nbits;
    float *projection;
    float scale;

    void *arena;               /* one allocation holding every array above (64-byte aligned) */

    /* ---- RABITQ (RP_FAM_RABITQ) ----
     * rotation [dim][dim] in `rotation` above (a query is rotated as y_i = sum_j R[i][j] q_j, Python's
     * q @ rotation.T); rb_centroid float32 [dim]; rb_rho the factor scale (> 0); rb_bits B in 1..8;
     * rb_nb0 = ceil(dim / 8) sign bytes, rb_nb1 = ceil(dim (B - 1) / 8) low-bit bytes (0 for B = 1).
     * Stage 0 = [0, nb0 + 4) (signs, float16 sigma0, eps0); stage 1 (B > 1) = [nb0 + 4, nb0 + nb1 + 8).
     * n_stages (1 or 2) and prefix_bytes[0..n_stages-1] (above) hold the stage layout. */
    float *rb_centroid;
    float rb_rho;
    uint32_t rb_bits, rb_nb0, rb_nb1;
};

/* rq: the width of a codeword (D with -pD, else dim). */
static inline uint32_t rp_rq_width(const rp_codec *c) { return c->rq_proj != NULL ? c->rq_sub : c->dim; }

/* ---- kernels (scan.c) ---------------------------------------------------------------------- */
typedef enum rp_kernel { RP_KERNEL_PORTABLE = 0, RP_KERNEL_AVX2 = 1, RP_KERNEL_NEON = 2 } rp_kernel;
rp_kernel rp_active_kernel(void);

/* Check a query: finite and |q_i| <= 1e30 (RP_E_NONFINITE otherwise, naming the first bad index). */
int rp_check_query(const float *query, uint32_t dim, rp_error *err);

/* ---- packs (pack.c): rows of a layer that a pack scanner must skip ------------------------- */
/* Sorted, disjoint row ranges [lo, hi) to skip (damaged blocks), passed to a scanner. */
typedef struct rp_row_range {
    uint64_t lo, hi;
} rp_row_range;
int rp_scanner_set_skip(rp_scanner *scanner, const rp_row_range *ranges, size_t n_ranges, rp_error *err);


/* ---- READER (codec.c, crc32c.c): shared by pack.c and the tests ---------------------------- */
/* Check the structure of an RPCS codec state as Python's check_state does (header only, no array is
 * read): RP_OK, RP_E_CODEC, RP_E_VERSION (a state version other than 1) or RP_E_NOMEM. On RP_OK, the
 * header's spec (truncated to spec_size - 1 bytes, NUL-terminated) and dim when not NULL. */
int rp_codec_check_state(const uint8_t *data, size_t size, char *spec, size_t spec_size, uint32_t *dim,
                         rp_error *err);
/* The family of a codec spec as this runtime names it ("pq", "rabitq", ...), for messages. */
void rp_codec_family_of_spec(const char *spec, char *out, size_t out_size);
/* CRC32C by the table path only, and whether rp_crc32c uses CRC instructions on this CPU (tests). */
uint32_t rp_crc32c_portable(uint32_t crc, const void *data, size_t size);
int rp_crc32c_hw(void);


/* ---- KERNELS helper (scan.c): a scanner that never reads the rows of `ranges` ---------------- */
/* As rp_scanner_new, with sorted disjoint row ranges [lo, hi) to skip given up front: their codes are
 * never read (not checked, not copied, not scanned), so damaged blocks cannot fail the code checks. */
/* Called by a scanner under construction once it no longer needs the code bytes [lo, hi) (it copied them into
 * its own layout, 4-bit PQ): a pack opened from a file drops those mapped pages from memory. */
typedef void (*rp_release_fn)(void *ctx, const uint8_t *lo, const uint8_t *hi);
/* rq_inv_norms (rq -n only, else ignored; may be NULL): the inverse norms float32 [n] of the rows' reconstructions
 * through the scanner's stages (rp_rq_inv_norms), borrowed: they must outlive the scanner. NULL: the scanner
 * computes its own. */
int rp_scanner_new_release(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                           const rp_row_range *ranges, size_t n_ranges, rp_release_fn release, void *release_ctx,
                           const float *rq_inv_norms, rp_scanner **out, rp_error *err);
int rp_scanner_new_skip(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                        const rp_row_range *ranges, size_t n_ranges, rp_scanner **out, rp_error *err);
/* rq -n: out[s * n + t] = 1 / ||reconstruction of row t through stage s|| (float32; 0 when the norm is 0), for
 * s = 0..n_stages-1, t = 0..n-1 (rows at codes + t * stride, each holding the whole code); rows inside `ranges`
 * (sorted, disjoint) are never read and get 0. RP_OK, RP_E_ARGUMENT (not an rq -n codec) or RP_E_NOMEM. */
int rp_rq_inv_norms(const rp_codec *codec, const uint8_t *codes, uint64_t n, size_t stride, const rp_row_range *ranges,
                    size_t n_ranges, float *out, rp_error *err);


/* ---- ENTROPY (entropy.c): ENTROPY_MODEL sections and ANS-coded blocks (docs/FORMAT.md) ---------- */
/* A parsed column model: per symbol column the integer CDF of the spec (PREC = 24), cdf[c * (A + 1) + i]. */
typedef struct rp_entropy_model {
    uint32_t layout;            /* 1 = bytes, 2 = nibbles, 3 = bits */
    uint32_t alphabet;          /* A: 256, 16, 2 */
    uint32_t n_columns;         /* C: B, 2B, 8B */
    uint32_t bytes_per_vector;  /* B */
    uint32_t *cdf;              /* [C][A + 1], owned */
} rp_entropy_model;

/* Parse a ColumnModel (the ENTROPY_MODEL section after its 4-byte prefix) with the checks of Python's
 * ColumnModel.from_bytes, and build its CDFs. RP_OK, RP_E_FORMAT (invalid: message says why) or RP_E_NOMEM.
 * On failure *out is zeroed and owns nothing. */
int rp_entropy_model_parse(const uint8_t *data, size_t size, rp_entropy_model *out, rp_error *err);
void rp_entropy_model_free(rp_entropy_model *model);
/* Decode one ANS-coded block of `n_rows` rows into out (uint8 [n_rows, B], row stride B) as Python's
 * decode_block does. RP_OK, or RP_E_CHECKSUM when the bytes are not a valid encoding of n_rows rows (out is
 * then zeroed). */
int rp_entropy_decode_block(const rp_entropy_model *model, const uint8_t *data, size_t size, uint64_t n_rows,
                            uint8_t *out, rp_error *err);

#endif /* REELPACK_INTERNAL_H */
