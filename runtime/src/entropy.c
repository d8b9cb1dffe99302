/* Entropy-coded layers (docs/FORMAT.md, "ENTROPY_CODED layers" and "ENTROPY_MODEL"): the per-column symbol
 * model of a layer and the ANS decoder of its blocks. Mirrors reelpack.format.entropy (ColumnModel.from_bytes,
 * decode_block): the model's integer CDFs are computed from the stored counts with binary64 arithmetic exactly
 * in the order the spec writes it (the library's constriction 0.5.0 computes the same), then each block is
 * decoded column by column with a 64-bit state and 32-bit words. */
#include "internal.h"

#include <float.h>
#include <stdlib.h>

#define EM_HEADER 12u                    /* magic, version, layout, reserved, bytes_per_vector */
#define EM_VERSION 1u
#define EM_MAX_BPV (1u << 16)
#define EM_COUNT_TOTAL_MAX 65535u
#define EM_PREC 24u
#define EM_ONE ((uint32_t)1 << EM_PREC)
#define EM_MAX_BLOCK_SYMBOLS ((uint64_t)1 << 25)

/* Where the compiler evaluates doubles in a wider format (x87), force every intermediate to binary64. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
typedef volatile double em_f64;
#else
typedef double em_f64;
#endif

void rp_entropy_model_free(rp_entropy_model *model) {
    if (model == NULL) return;
    free(model->cdf);
    memset(model, 0, sizeof *model);
}

/* The spec's integer model of one column: cdf[0..A] from counts c[0..A-1] (u16 little-endian). */
static void column_cdf(const uint8_t *counts, uint32_t A, uint32_t *cdf) {
    uint32_t i;
    uint64_t total = 0;
    em_f64 norm = 0.0, scale, cum = 0.0, t;
    for (i = 0; i < A; i++) total += rp_le16(counts + 2u * i);
    for (i = 0; i < A; i++) {
        em_f64 p = (double)rp_le16(counts + 2u * i) / (double)total;
        norm = norm + p;
    }
    scale = (double)(EM_ONE - A) / norm;
    for (i = 0; i < A; i++) {
        em_f64 p = (double)rp_le16(counts + 2u * i) / (double)total;
        t = cum * scale;
        /* 0 <= t < 2^24: the conversion truncates toward zero */
        cdf[i] = (uint32_t)t + i;
        cum = cum + p;
    }
    cdf[A] = EM_ONE;
}

int rp_entropy_model_parse(const uint8_t *data, size_t size, rp_entropy_model *out, rp_error *err) {
    uint32_t version, layout, reserved, bpv, A, per_byte, C, c, i;
    uint64_t expected;
    if (out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_entropy_model_parse: NULL argument");
    memset(out, 0, sizeof *out);
    if (data == NULL && size > 0) return rp_fail(err, RP_E_ARGUMENT, "rp_entropy_model_parse: NULL argument");
    if (size < EM_HEADER)
        return rp_fail(err, RP_E_FORMAT, "column model is truncated: %lu bytes, need at least %u", (unsigned long)size, EM_HEADER);
    if (memcmp(data, "RPEM", 4) != 0) return rp_fail(err, RP_E_FORMAT, "not a reelpack column model: wrong magic");
    version = rp_le16(data + 4);
    layout = data[6];
    reserved = data[7];
    bpv = rp_le32(data + 8);
    if (version != EM_VERSION)
        return rp_fail(err, RP_E_FORMAT, "column model version %u is not supported (this reader knows %u)", (unsigned)version, EM_VERSION);
    if (layout < 1 || layout > 3)
        return rp_fail(err, RP_E_FORMAT, "column model layout code %u is unknown, expected 1, 2 or 3", (unsigned)layout);
    if (reserved != 0) return rp_fail(err, RP_E_FORMAT, "column model reserved byte must be 0, got %u", (unsigned)reserved);
    if (bpv < 1 || bpv > EM_MAX_BPV)
        return rp_fail(err, RP_E_FORMAT, "column model bytes_per_vector must lie in [1, %u], got %u", EM_MAX_BPV, (unsigned)bpv);
    A = layout == 1 ? 256u : layout == 2 ? 16u : 2u;
    per_byte = layout == 1 ? 1u : layout == 2 ? 2u : 8u;
    C = bpv * per_byte; /* <= 2^19 */
    expected = EM_HEADER + 2u * (uint64_t)C * A;
    if ((uint64_t)size != expected)
        return rp_fail(err, RP_E_FORMAT, "column model for %u bytes per vector must be %llu bytes, got %lu", (unsigned)bpv,
                       (unsigned long long)expected, (unsigned long)size);
    for (c = 0; c < C; c++) {
        const uint8_t *row = data + EM_HEADER + 2u * (size_t)c * A;
        uint32_t total = 0;
        for (i = 0; i < A; i++) {
            uint32_t v = rp_le16(row + 2u * i);
            if (v < 1) return rp_fail(err, RP_E_FORMAT, "column model counts are invalid: a count is 0 (column %u)", (unsigned)c);
            total += v; /* at most 256 * 65535 */
        }
        if (total > EM_COUNT_TOTAL_MAX)
            return rp_fail(err, RP_E_FORMAT, "column model counts are invalid: column %u sums to %u, above %u", (unsigned)c,
                           (unsigned)total, EM_COUNT_TOTAL_MAX);
    }
    /* the section's exact length was checked: this allocation is about twice its size */
    out->cdf = (uint32_t *)malloc((size_t)C * (A + 1u) * sizeof(uint32_t));
    if (out->cdf == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory for a column model of %u columns", (unsigned)C);
    for (c = 0; c < C; c++) {
        uint32_t *cdf = out->cdf + (size_t)c * (A + 1u);
        column_cdf(data + EM_HEADER + 2u * (size_t)c * A, A, cdf);
        for (i = 0; i < A; i++)
            if (cdf[i + 1] <= cdf[i]) { /* cannot happen for counts >= 1; never decode with a broken table */
                rp_entropy_model_free(out);
                return rp_fail(err, RP_E_FORMAT, "column model column %u has an empty symbol", (unsigned)c);
            }
    }
    out->layout = layout;
    out->alphabet = A;
    out->n_columns = C;
    out->bytes_per_vector = bpv;
    rp_clear(err);
    return RP_OK;
}

static int bad_block(uint8_t *out, size_t n, rp_error *err, const char *why) {
    if (n > 0) memset(out, 0, n);
    return rp_fail(err, RP_E_CHECKSUM, "entropy-coded block does not decode: %s", why);
}

int rp_entropy_decode_block(const rp_entropy_model *model, const uint8_t *data, size_t size, uint64_t n_rows,
                            uint8_t *out, rp_error *err) {
    uint32_t A, C, B, c, layout;
    uint64_t x, n_symbols, limit, r;
    size_t W, left, out_bytes;
    if (model == NULL || model->cdf == NULL || (out == NULL && n_rows > 0) || (data == NULL && size > 0))
        return rp_fail(err, RP_E_ARGUMENT, "rp_entropy_decode_block: NULL argument");
    A = model->alphabet;
    C = model->n_columns;
    B = model->bytes_per_vector;
    layout = model->layout;
    if (n_rows > EM_MAX_BLOCK_SYMBOLS / C)
        return rp_fail(err, RP_E_CHECKSUM, "entropy-coded block does not decode: %llu rows exceed %llu symbols per block",
                       (unsigned long long)n_rows, (unsigned long long)EM_MAX_BLOCK_SYMBOLS);
    n_symbols = n_rows * C;
    out_bytes = (size_t)(n_rows * B); /* <= 2^25 */
    if (size % 4u != 0) return bad_block(out, out_bytes, err, "length is not a multiple of 4");
    limit = n_symbols == 0 ? 0 : 4u * (n_symbols + 4u);
    if ((uint64_t)size > limit) return bad_block(out, out_bytes, err, "longer than its rows can take");
    if (n_rows == 0) {
        rp_clear(err);
        return RP_OK;
    }
    W = size / 4u;
    x = 0;
    left = 0;
    if (W > 0) {
        x = rp_le32(data + 4u * (W - 1u));
        if (x == 0) return bad_block(out, out_bytes, err, "its last word is 0");
        if (W >= 2) x = (x << 32) | rp_le32(data + 4u * (W - 2u));
        left = W >= 2 ? W - 2u : 0u; /* words data[0 .. left), read from the end */
    }
    for (c = 0; c < C; c++) {
        const uint32_t *cdf = model->cdf + (size_t)c * (A + 1u);
        /* where the column's symbol goes: byte j of each row, at bit shift sh (nibbles: low / high; bits: 7 - i) */
        uint32_t j, sh;
        int first;
        if (layout == 1) j = c, sh = 0, first = 1;
        else if (layout == 2) j = c / 2u, sh = 4u * (c % 2u), first = (c % 2u) == 0;
        else j = c / 8u, sh = 7u - (c % 8u), first = (c % 8u) == 0;
        for (r = 0; r < n_rows; r++) {
            uint32_t q = (uint32_t)(x & (EM_ONE - 1u)), lo = 0, hi = A - 1u, s;
            uint8_t *dst = out + (size_t)r * B + j;
            /* the largest s in [0, A) with cdf[s] <= q (cdf[0] = 0 <= q) */
            while (lo < hi) {
                uint32_t mid = lo + (hi - lo + 1u) / 2u;
                if (cdf[mid] <= q) lo = mid;
                else hi = mid - 1u;
            }
            s = lo;
            /* (x >> 24) < 2^40 and prob < 2^24, q - cdf[s] < prob: no overflow */
            x = (x >> EM_PREC) * (uint64_t)(cdf[s + 1u] - cdf[s]) + (uint64_t)(q - cdf[s]);
            if (x < ((uint64_t)1 << 32) && left > 0) {
                left--;
                x = (x << 32) | rp_le32(data + 4u * left);
            }
            if (first) *dst = (uint8_t)(s << sh);
            else *dst = (uint8_t)(*dst | (s << sh));
        }
    }
    if (x != 0 || left != 0) return bad_block(out, out_bytes, err, "the decoder is not empty after the last symbol");
    rp_clear(err);
    return RP_OK;
}
