/* Codec states (RPCS, docs/FORMAT.md "CODEC"): the structure checks of Python's
 * reelpack.codecs.base.check_state, the factory-string grammar of the supported families and each
 * family's _load_state checks; rp_codec_open and the accessors. */
#include "internal.h"
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define STATE_MAX_HEADER (1u << 20)
#define STATE_MAX_DIM (1u << 20)
#define STATE_MAX_NDIM 8
#define STATE_MAX_EXTENT ((uint64_t)1 << 48)
#define PQ_MAX_M 4096u
#define RQ_MAX_CODEBOOKS 64u
#define RQ_MAX_BEAM 4096
#define RQ_MAX_PROJECT 8192u
/* rq -pD: largest |P^T P - I| entry (float64 Gram matrix) a projection may show: the -n norms assume orthonormal columns */
#define RQ_PROJECT_ATOL 1e-4
#define SIMHASH_MAX_BITS 65536u

/* ---- the structure check (check_state) ------------------------------------------------------- */
typedef struct st_array {
    const char *name;
    size_t name_len;
    const char *dtype; /* one of the allowed dtype strings */
    uint32_t itemsize;
    uint32_t ndim;
    uint64_t shape[STATE_MAX_NDIM];
    uint64_t offset, nbytes;
} st_array;

typedef struct st_state {
    rp_json json;
    const char *spec;
    size_t spec_len;
    uint32_t dim;
    const rp_json_node *meta;
    st_array *arrays;
    uint32_t n_arrays;
    const uint8_t *payload;
    uint64_t payload_len;
} st_state;

static void st_free(st_state *st) {
    rp_json_free(&st->json);
    free(st->arrays);
    st->arrays = NULL;
}

static const struct {
    const char *name;
    uint32_t size;
} dtypes[] = {{"<f4", 4}, {"<f8", 8}, {"<i4", 4}, {"<i8", 8}, {"|u1", 1}, {"<u2", 2},
              {"<u4", 4}, {"<u8", 8}, {"|i1", 1}, {"<f2", 2}, {"<i2", 2}};

/* A JSON integer >= 0 that fits int64 (bool is not an integer, floats are not). */
static int json_uint(const rp_json_node *n, uint64_t *v) {
    if (n == NULL || n->type != RP_JSON_NUMBER || !n->is_int || n->big || n->ival < 0) return 0;
    *v = (uint64_t)n->ival;
    return 1;
}

static int cmp_name(const void *a, const void *b) {
    const st_array *x = *(const st_array *const *)a, *y = *(const st_array *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0) return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len ? 1 : 0;
}

static int cmp_span(const void *a, const void *b) {
    const st_array *x = *(const st_array *const *)a, *y = *(const st_array *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int st_check(const uint8_t *data, size_t size, st_state *st, rp_error *err) {
    uint32_t version, hlen, i;
    const rp_json_node *root, *spec, *dim, *meta, *arrays, *e;
    char why[96];
    int rc;
    uint64_t dim_v;
    st_array **order = NULL;

    memset(st, 0, sizeof *st);
    if (data == NULL && size > 0) return rp_fail(err, RP_E_ARGUMENT, "codec state is NULL");
    if (size < 10) return rp_fail(err, RP_E_CODEC, "codec state is truncated: %lu bytes, need at least 10", (unsigned long)size);
    if (memcmp(data, "RPCS", 4) != 0) return rp_fail(err, RP_E_CODEC, "not a reelpack codec state: bad magic, expected RPCS");
    version = rp_le16(data + 4);
    hlen = rp_le32(data + 6);
    if (version != 1)
        return rp_fail(err, RP_E_VERSION, "codec state version %u is not supported (this reader knows 1)", (unsigned)version);
    if (hlen > STATE_MAX_HEADER || (uint64_t)hlen + 10u > (uint64_t)size)
        return rp_fail(err, RP_E_CODEC, "codec state header length %lu exceeds the buffer (%lu bytes) or the %u-byte limit",
                       (unsigned long)hlen, (unsigned long)size, STATE_MAX_HEADER);
    rc = rp_json_parse((const char *)data + 10, hlen, &st->json, why, sizeof why);
    if (rc == -2) return rp_fail(err, RP_E_NOMEM, "out of memory parsing a codec state header");
    if (rc != 0) return rp_fail(err, RP_E_CODEC, "codec state header is corrupt: %s", why);
    root = &st->json.nodes[0];
    spec = rp_json_get(&st->json, root, "spec");
    dim = rp_json_get(&st->json, root, "dim");
    meta = rp_json_get(&st->json, root, "meta");
    arrays = rp_json_get(&st->json, root, "arrays");
    if (root->type != RP_JSON_OBJECT || spec == NULL || dim == NULL || meta == NULL || arrays == NULL) {
        st_free(st);
        return rp_fail(err, RP_E_CODEC, "codec state header is corrupt: missing spec, dim, meta or arrays");
    }
    if (spec->type != RP_JSON_STRING || !json_uint(dim, &dim_v) || dim_v < 1 || dim_v > STATE_MAX_DIM ||
        meta->type != RP_JSON_OBJECT) {
        st_free(st);
        return rp_fail(err, RP_E_CODEC, "codec state header has invalid spec, dim (1..%u) or meta fields", STATE_MAX_DIM);
    }
    if (arrays->type != RP_JSON_ARRAY) {
        st_free(st);
        return rp_fail(err, RP_E_CODEC, "codec state header 'arrays' must be a list");
    }
    st->spec = spec->str;
    st->spec_len = spec->len;
    st->dim = (uint32_t)dim_v;
    st->meta = meta;
    st->payload = data + 10 + hlen;
    st->payload_len = (uint64_t)size - 10u - hlen;
    if (arrays->count > 0) {
        st->arrays = (st_array *)calloc(arrays->count, sizeof(st_array));
        order = (st_array **)malloc(arrays->count * sizeof(st_array *));
        if (st->arrays == NULL || order == NULL) {
            free(order);
            st_free(st);
            return rp_fail(err, RP_E_NOMEM, "out of memory checking a codec state");
        }
    }
    for (e = rp_json_child(&st->json, arrays); e != NULL; e = rp_json_next(&st->json, e)) {
        const rp_json_node *name, *dtype, *shape, *off, *nbytes, *s;
        st_array *a = &st->arrays[st->n_arrays];
        uint64_t extent = 1, prod = 1;
        size_t k;
        if (e->type != RP_JSON_OBJECT) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array entry must be an object");
            goto fail;
        }
        name = rp_json_get(&st->json, e, "name");
        dtype = rp_json_get(&st->json, e, "dtype");
        shape = rp_json_get(&st->json, e, "shape");
        off = rp_json_get(&st->json, e, "offset");
        nbytes = rp_json_get(&st->json, e, "nbytes");
        if (name == NULL || dtype == NULL || shape == NULL || off == NULL || nbytes == NULL) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array entry is missing fields");
            goto fail;
        }
        if (name->type != RP_JSON_STRING) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array name is not a string");
            goto fail;
        }
        a->name = name->str;
        a->name_len = name->len;
        a->dtype = NULL;
        if (dtype->type == RP_JSON_STRING)
            for (k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
                if (rp_json_is_str(dtype, dtypes[k].name)) {
                    a->dtype = dtypes[k].name;
                    a->itemsize = dtypes[k].size;
                }
        if (a->dtype == NULL) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array %u has an unsupported dtype", (unsigned)st->n_arrays);
            goto fail;
        }
        if (shape->type != RP_JSON_ARRAY || shape->count > STATE_MAX_NDIM || !json_uint(off, &a->offset) ||
            !json_uint(nbytes, &a->nbytes)) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array %u has an invalid shape or offset", (unsigned)st->n_arrays);
            goto fail;
        }
        a->ndim = shape->count;
        for (k = 0, s = rp_json_child(&st->json, shape); s != NULL; s = rp_json_next(&st->json, s), k++) {
            uint64_t v;
            if (!json_uint(s, &v) || v > STATE_MAX_EXTENT) { extent = STATE_MAX_EXTENT + 1; break; }
            a->shape[k] = v;
            extent *= v > 1 ? v : 1; /* both factors <= 2^48 after the check below: no overflow */
            if (extent > STATE_MAX_EXTENT) break;
        }
        if (extent > STATE_MAX_EXTENT) {
            rc = rp_fail(err, RP_E_CODEC, "codec state array %u has an invalid shape or offset", (unsigned)st->n_arrays);
            goto fail;
        }
        for (k = 0; k < a->ndim; k++) prod *= a->shape[k];
        prod *= a->itemsize; /* <= 2^51 */
        if (prod != a->nbytes || a->offset > st->payload_len || a->nbytes > st->payload_len - a->offset) {
            rc = rp_fail(err, RP_E_CODEC,
                         "codec state array %u needs %llu bytes at offset %llu, entry says %llu, payload has %llu",
                         (unsigned)st->n_arrays, (unsigned long long)prod, (unsigned long long)a->offset,
                         (unsigned long long)a->nbytes, (unsigned long long)st->payload_len);
            goto fail;
        }
        order[st->n_arrays] = a;
        st->n_arrays++;
    }
    if (st->n_arrays > 1) {
        qsort(order, st->n_arrays, sizeof *order, cmp_name);
        for (i = 1; i < st->n_arrays; i++)
            if (cmp_name(&order[i - 1], &order[i]) == 0) {
                rc = rp_fail(err, RP_E_CODEC, "codec state array name is repeated");
                goto fail;
            }
        qsort(order, st->n_arrays, sizeof *order, cmp_span);
        for (i = 1; i < st->n_arrays; i++)
            if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
                rc = rp_fail(err, RP_E_CODEC, "codec state arrays overlap at payload offset %llu",
                             (unsigned long long)order[i]->offset);
                goto fail;
            }
    }
    free(order);
    return RP_OK;
fail:
    free(order);
    st_free(st);
    return rc;
}

int rp_codec_check_state(const uint8_t *data, size_t size, char *spec, size_t spec_size, uint32_t *dim,
                         rp_error *err) {
    st_state st;
    int rc = st_check(data, size, &st, err);
    if (rc != RP_OK) return rc;
    if (spec != NULL && spec_size > 0) {
        size_t n = st.spec_len < spec_size - 1 ? st.spec_len : spec_size - 1;
        memcpy(spec, st.spec, n);
        spec[n] = '\0';
    }
    if (dim != NULL) *dim = st.dim;
    st_free(&st);
    return RP_OK;
}

/* ---- factory strings --------------------------------------------------------------------------- */
typedef struct cursor {
    const char *p, *e;
} cursor;

static int c_lit(cursor *c, const char *s) {
    size_t n = strlen(s);
    if ((size_t)(c->e - c->p) < n || memcmp(c->p, s, n) != 0) return 0;
    c->p += n;
    return 1;
}
static int c_end(const cursor *c) { return c->p == c->e; }
/* 1..maxd ASCII digits (greedy) as a value; 0 when none. */
static int c_num(cursor *c, int maxd, uint64_t *v) {
    int n = 0;
    uint64_t r = 0;
    while (c->p < c->e && n < maxd && *c->p >= '0' && *c->p <= '9') {
        r = r * 10 + (uint64_t)(*c->p - '0');
        c->p++;
        n++;
    }
    *v = r;
    return n > 0;
}
static int c_digits(cursor *c, int maxd) {
    uint64_t v;
    return c_num(c, maxd, &v);
}

/* A decimal string (ASCII, '.' as the point) to the nearest double, whatever the C locale. */
static double parse_double(const char *s, size_t n) {
    char buf[64];
    const char *point = localeconv()->decimal_point;
    size_t i;
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (point != NULL && point[0] != '\0' && point[0] != '.' && point[1] == '\0')
        for (i = 0; i < n; i++)
            if (buf[i] == '.') buf[i] = point[0];
    return strtod(buf, NULL);
}

/* Python's repr(float) for a finite double (the shortest string that parses back to it). */
static void py_repr(double v, char *out, size_t out_size) {
    char buf[40], digits[24];
    int prec, exp10 = 0, nd = 0, i;
    const char *p;
    char *q = out, *qe = out + out_size - 1;
    const char *point = localeconv()->decimal_point;
    char pc = (point != NULL && point[0] != '\0') ? point[0] : '.';
    for (prec = 0; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    p = buf;
    if (*p == '-') { if (q < qe) *q++ = '-'; p++; }
    for (; *p != '\0' && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < 20) digits[nd++] = *p;
        else if (*p != pc && *p != '.') break;
    if (*p == 'e') exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
#define PUT(ch) do { if (q < qe) *q++ = (ch); } while (0)
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 >= 0) {
            for (i = 0; i <= exp10; i++) PUT(i < nd ? digits[i] : '0');
            PUT('.');
            if (nd > exp10 + 1) for (i = exp10 + 1; i < nd; i++) PUT(digits[i]);
            else PUT('0');
        } else {
            PUT('0');
            PUT('.');
            for (i = 0; i < -exp10 - 1; i++) PUT('0');
            for (i = 0; i < nd; i++) PUT(digits[i]);
        }
    } else {
        char e[16];
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (i = 1; i < nd; i++) PUT(digits[i]);
        }
        snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        for (i = 0; e[i] != '\0'; i++) PUT(e[i]);
    }
#undef PUT
    *q = '\0';
}

/* The family a spec names, for the "not supported" message: its leading letters. */
void rp_codec_family_of_spec(const char *spec, char *out, size_t out_size) {
    size_t n = 0;
    if (out_size == 0) return;
    while (spec[n] != '\0' && ((spec[n] >= 'a' && spec[n] <= 'z') || (spec[n] >= 'A' && spec[n] <= 'Z')) &&
           n + 1 < out_size) {
        out[n] = (char)(spec[n] >= 'A' && spec[n] <= 'Z' ? spec[n] - 'A' + 'a' : spec[n]);
        n++;
    }
    out[n] = '\0';
}

/* What a factory string asks for (after Python's normalisation). */
typedef struct spec_info {
    rp_family family;
    const char *family_name;
    uint32_t bits;        /* sq: 4 or 8; pq: 4 or 8 */
    double param;         /* sq percentile; apq threshold */
    int has_param;
    uint64_t m, o;        /* pq / opq / apq */
    uint32_t n_stages;    /* rq */
    uint64_t stages[RP_MAX_STAGES];
    int bounds;           /* rq -b */
    int refine;           /* rq -r (refined training; same state and scoring) */
    uint64_t project;     /* rq -pD: D (0 without -p) */
    int unit;             /* rq -n */
    uint64_t nbits;       /* simhash */
    int rotate;           /* opq, opq-apq */
    int apq;
} spec_info;

/* RP_OK (matched, parameters in range), RP_E_CODEC (matched, a parameter out of range) or
 * RP_E_UNSUPPORTED (no supported family matches). */
static int parse_spec(const char *s, size_t n, spec_info *si, rp_error *err) {
    cursor c;
    uint64_t v;
    char norm[256];
    size_t a = 0, b = n, k, nn = 0;
    memset(si, 0, sizeof *si);
    /* Python: spec.strip().lower().replace(" ", "") (ASCII whitespace only here) */
    while (a < b && (s[a] == ' ' || (s[a] >= '\t' && s[a] <= '\r') || (s[a] >= 0x1c && s[a] <= 0x1f))) a++;
    while (b > a && (s[b - 1] == ' ' || (s[b - 1] >= '\t' && s[b - 1] <= '\r') || (s[b - 1] >= 0x1c && s[b - 1] <= 0x1f))) b--;
    for (k = a; k < b; k++) {
        char ch = s[k];
        if (ch == ' ') continue;
        if (nn + 1 >= sizeof norm) return RP_E_UNSUPPORTED; /* longer than any spec this runtime reads */
        norm[nn++] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
    }
    norm[nn] = '\0';
    c.p = norm;
    c.e = norm + nn;

    if (strcmp(norm, "float32") == 0 || strcmp(norm, "flat") == 0) {
        si->family = RP_FAM_FLOAT32;
        si->family_name = "float32";
        return RP_OK;
    }
    if (strcmp(norm, "fp16") == 0 || strcmp(norm, "float16") == 0) {
        si->family = RP_FAM_FP16;
        si->family_name = "fp16";
        return RP_OK;
    }
    /* sq(4|8)(-p\d{1,3}(\.\d{1,15})?)? */
    c.p = norm;
    if (c_lit(&c, "sq") && (c_lit(&c, "4") || c_lit(&c, "8"))) {
        const char *ps;
        int ok = 1;
        si->bits = norm[2] == '4' ? 4u : 8u;
        if (c_lit(&c, "-p")) {
            ps = c.p;
            ok = c_digits(&c, 3);
            if (ok && c_lit(&c, ".")) ok = c_digits(&c, 15);
            if (ok) {
                si->has_param = 1;
                si->param = parse_double(ps, (size_t)(c.p - ps));
            }
        }
        if (ok && c_end(&c)) {
            si->family = si->bits == 8 ? RP_FAM_SQ8 : RP_FAM_SQ4;
            si->family_name = "sq";
            if (si->has_param && !(si->param > 50.0 && si->param <= 100.0))
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: sq percentile must be in (50, 100]");
            return RP_OK;
        }
    }
    /* opq\d{1,6},pq\d{1,6} and opq\d{1,6},apq\d{1,6}(-t...)? */
    c.p = norm;
    if (c_lit(&c, "opq") && c_num(&c, 6, &si->o) && c_lit(&c, ",")) {
        cursor save = c;
        if (c_lit(&c, "pq") && c_num(&c, 6, &si->m) && c_end(&c)) {
            si->family = RP_FAM_OPQ8;
            si->family_name = "opq";
            si->rotate = 1;
            si->bits = 8;
            if (si->o != si->m)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: in 'opqM,pqM' the two M must be equal");
            if (si->m < 1 || si->m > PQ_MAX_M)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: pq sub-quantiser count must be in 1..%u", PQ_MAX_M);
            return RP_OK;
        }
        c = save;
        if (c_lit(&c, "apq") && c_num(&c, 6, &si->m)) {
            si->rotate = 1;
            goto apq_tail;
        }
    }
    /* apq\d{1,6}(-t...)? */
    c.p = norm;
    if (c_lit(&c, "apq") && c_num(&c, 6, &si->m)) {
        int ok;
    apq_tail:
        ok = 1;
        si->apq = 1;
        si->bits = 8;
        si->param = 0.2;
        if (c_lit(&c, "-t")) {
            /* (\d{1,3}(\.\d{1,17})?|\.\d{1,17})(e-?\d{1,3})? */
            const char *ts = c.p;
            if (c_lit(&c, ".")) ok = c_digits(&c, 17);
            else {
                ok = c_digits(&c, 3);
                if (ok && c_lit(&c, ".")) ok = c_digits(&c, 17);
            }
            if (ok && c.p < c.e && *c.p == 'e') {
                cursor save = c;
                c.p++;
                c_lit(&c, "-");
                if (!c_digits(&c, 3)) c = save;
            }
            if (ok) {
                si->has_param = 1;
                si->param = parse_double(ts, (size_t)(c.p - ts));
            }
        }
        if (ok && c_end(&c)) {
            si->family = si->rotate ? RP_FAM_OPQ8 : RP_FAM_PQ8;
            si->family_name = si->rotate ? "opq-apq" : "apq";
            if (si->rotate && si->o != si->m)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: in 'opqM,apqM' the two M must be equal");
            if (si->m < 1 || si->m > PQ_MAX_M)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: apq sub-quantiser count must be in 1..%u", PQ_MAX_M);
            if (!(si->param > 0.0 && si->param < 1.0))
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: apq threshold T must be in (0, 1)");
            return RP_OK;
        }
        si->rotate = 0;
        si->apq = 0;
        si->has_param = 0;
    }
    /* pq\d{1,6}(x4)? */
    c.p = norm;
    if (c_lit(&c, "pq") && c_num(&c, 6, &si->m)) {
        si->bits = c_lit(&c, "x4") ? 4u : 8u;
        if (c_end(&c)) {
            si->family = si->bits == 4 ? RP_FAM_PQ4 : RP_FAM_PQ8;
            si->family_name = "pq";
            if (si->m < 1 || si->m > PQ_MAX_M)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: pq sub-quantiser count must be in 1..%u", PQ_MAX_M);
            if (si->bits == 4 && si->m % 2)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: 4-bit pq needs an even m");
            return RP_OK;
        }
    }
    /* simhash\d{1,6}(-hamming)? */
    c.p = norm;
    if (c_lit(&c, "simhash") && c_num(&c, 6, &si->nbits)) {
        int ham = c_lit(&c, "-hamming");
        if (c_end(&c)) {
            si->family = ham ? RP_FAM_HAMMING : RP_FAM_SIMHASH;
            si->family_name = "simhash";
            if (si->nbits == 0 || si->nbits % 8 || si->nbits > SIMHASH_MAX_BITS)
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: simhash bit count must be a positive multiple of 8 up to %u", SIMHASH_MAX_BITS);
            return RP_OK;
        }
    }
    /* rabitq(\d{1,4})? with B in 1..8, no leading zeros ("rabitq1" is "rabitq") */
    c.p = norm;
    if (c_lit(&c, "rabitq")) {
        const char *ds = c.p;
        int has = c_num(&c, 4, &v);
        if (c_end(&c)) {
            si->family = RP_FAM_RABITQ;
            si->family_name = "rabitq";
            si->bits = has ? (uint32_t)(v > 8u ? 9u : v) : 1u;
            if (has && (ds[0] == '0' || v < 1u || v > 8u))
                return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rabitq bits per dimension must be in 1..8 (no leading zeros)");
            return RP_OK;
        }
    }
    /* rq\d{1,4}(\+\d{1,4})*(-r)?(-p[1-9]\d{0,4})?(-n)?(-b)? */
    c.p = norm;
    if (c_lit(&c, "rq") && c_num(&c, 4, &v)) {
        uint64_t total = 0;
        int zero = 0, many = 0;
        for (;;) {
            if (si->n_stages < RP_MAX_STAGES) si->stages[si->n_stages++] = v;
            else many = 1;
            total += v;
            if (v == 0) zero = 1;
            if (!c_lit(&c, "+")) break;
            if (!c_num(&c, 4, &v)) { c.p = c.e + 1; break; }
        }
        if (c.p <= c.e) {
            int ok = 1;
            si->refine = c_lit(&c, "-r"); /* refined training: same state and scoring */
            if (c_lit(&c, "-p")) /* no leading zero */
                ok = c.p < c.e && *c.p >= '1' && *c.p <= '9' && c_num(&c, 5, &si->project);
            if (ok) {
                si->unit = c_lit(&c, "-n");
                si->bounds = c_lit(&c, "-b");
            }
            if (ok && c_end(&c)) {
                si->family = RP_FAM_RQ;
                si->family_name = "rq";
                if (zero) return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rq stages must each hold at least 1 codebook");
                if (many || total < 1 || total > RQ_MAX_CODEBOOKS)
                    return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rq needs 1..%u codebooks in all", RQ_MAX_CODEBOOKS);
                if (si->project > RQ_MAX_PROJECT)
                    return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rq -p needs 1..%u projected dimensions", RQ_MAX_PROJECT);
                if (si->unit && si->bounds)
                    return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rq -n (unit-norm reconstructions) cannot carry -b bounds");
                if (si->project && si->bounds)
                    return rp_fail(err, RP_E_CODEC, "codec state names an unusable spec: rq -p (a PCA projection) cannot carry -b bounds");
                return RP_OK;
            }
        }
    }
    return RP_E_UNSUPPORTED;
}

static void canonical_spec(const spec_info *si, char *out, size_t size) {
    char num[40];
    size_t len;
    uint32_t i;
    switch (si->family) {
    case RP_FAM_FLOAT32: snprintf(out, size, "float32"); break;
    case RP_FAM_FP16: snprintf(out, size, "fp16"); break;
    case RP_FAM_SQ8:
    case RP_FAM_SQ4:
        if (!si->has_param) snprintf(out, size, "sq%u", (unsigned)si->bits);
        else {
            py_repr(si->param, num, sizeof num);
            len = strlen(num);
            if (len >= 2 && strcmp(num + len - 2, ".0") == 0) num[len - 2] = '\0';
            snprintf(out, size, "sq%u-p%s", (unsigned)si->bits, num);
        }
        break;
    case RP_FAM_PQ4: snprintf(out, size, "pq%llux4", (unsigned long long)si->m); break;
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
        if (si->apq) {
            char base[96];
            if (si->param != 0.2) {
                py_repr(si->param, num, sizeof num);
                snprintf(base, sizeof base, "apq%llu-t%s", (unsigned long long)si->m, num);
            } else {
                snprintf(base, sizeof base, "apq%llu", (unsigned long long)si->m);
            }
            if (si->rotate) snprintf(out, size, "opq%llu,%s", (unsigned long long)si->m, base);
            else snprintf(out, size, "%s", base);
        } else if (si->rotate) {
            snprintf(out, size, "opq%llu,pq%llu", (unsigned long long)si->m, (unsigned long long)si->m);
        } else {
            snprintf(out, size, "pq%llu", (unsigned long long)si->m);
        }
        break;
    case RP_FAM_RQ:
        /* at most 64 stages: longer specs are cut to the buffer (the spec is informative) */
        snprintf(out, size, "rq");
        for (i = 0; i < si->n_stages; i++) {
            len = strlen(out);
            snprintf(out + len, size - len, i ? "+%llu" : "%llu", (unsigned long long)si->stages[i]);
        }
        if (si->refine) {
            len = strlen(out);
            snprintf(out + len, size - len, "-r");
        }
        if (si->project) {
            len = strlen(out);
            snprintf(out + len, size - len, "-p%llu", (unsigned long long)si->project);
        }
        if (si->unit) {
            len = strlen(out);
            snprintf(out + len, size - len, "-n");
        }
        if (si->bounds) {
            len = strlen(out);
            snprintf(out + len, size - len, "-b");
        }
        break;
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING:
        snprintf(out, size, "simhash%llu%s", (unsigned long long)si->nbits, si->family == RP_FAM_HAMMING ? "-hamming" : "");
        break;
    case RP_FAM_RABITQ:
        if (si->bits == 1u) snprintf(out, size, "rabitq");
        else snprintf(out, size, "rabitq%u", (unsigned)si->bits);
        break;
    default: out[0] = '\0'; break;
    }
}

/* ---- the families' _load_state checks ---------------------------------------------------------- */
static const st_array *find_array(const st_state *st, const char *name) {
    uint32_t i;
    size_t n = strlen(name);
    for (i = 0; i < st->n_arrays; i++)
        if (st->arrays[i].name_len == n && memcmp(st->arrays[i].name, name, n) == 0) return &st->arrays[i];
    return NULL;
}

/* check_state_keys: meta empty and exactly these array names. */
static int check_keys(const st_state *st, const char *spec, const char *const *names, uint32_t n, rp_error *err) {
    uint32_t i;
    if (st->meta->count != 0) return rp_fail(err, RP_E_CODEC, "%s state has unexpected meta keys", spec);
    if (st->n_arrays != n) return rp_fail(err, RP_E_CODEC, "%s state has %u arrays, expected %u", spec, (unsigned)st->n_arrays, (unsigned)n);
    for (i = 0; i < n; i++)
        if (find_array(st, names[i]) == NULL) return rp_fail(err, RP_E_CODEC, "%s state lacks the array '%s'", spec, names[i]);
    return RP_OK;
}

/* state_array: exact dtype and shape. */
static int check_array(const st_state *st, const char *spec, const char *name, const char *dtype, uint32_t ndim,
                       const uint64_t *shape, const st_array **out, rp_error *err) {
    const st_array *a = find_array(st, name);
    uint32_t i;
    if (a == NULL) return rp_fail(err, RP_E_CODEC, "%s state lacks the array '%s'", spec, name);
    if (strcmp(a->dtype, dtype) != 0)
        return rp_fail(err, RP_E_CODEC, "%s state array '%s' has dtype %s, expected %s", spec, name, a->dtype, dtype);
    if (a->ndim != ndim) return rp_fail(err, RP_E_CODEC, "%s state array '%s' has %u axes, expected %u", spec, name, (unsigned)a->ndim, (unsigned)ndim);
    for (i = 0; i < ndim; i++)
        if (a->shape[i] != shape[i])
            return rp_fail(err, RP_E_CODEC, "%s state array '%s' has axis %u of %llu, expected %llu", spec, name, (unsigned)i,
                           (unsigned long long)a->shape[i], (unsigned long long)shape[i]);
    *out = a;
    return RP_OK;
}

static size_t align64(size_t n) { return (n + 63u) & ~(size_t)63u; }

/* Copy a <f4 array into the arena (host floats), refusing NaN and Inf. */
static int copy_f32(const st_state *st, const char *spec, const st_array *a, float *dst, rp_error *err) {
    const uint8_t *src = st->payload + a->offset;
    uint64_t i, n = a->nbytes / 4u;
    for (i = 0; i < n; i++) {
        float f = rp_lef32(src + 4u * i);
        if (!isfinite(f)) return rp_fail(err, RP_E_CODEC, "%s state array '%.*s' holds NaN or Inf", spec, (int)(a->name_len > 32 ? 32 : a->name_len), a->name);
        dst[i] = f;
    }
    return RP_OK;
}

static int check_rotation(const char *spec, const float *r, uint32_t d, rp_error *err) {
    uint32_t i, j, k;
    double worst = 0.0;
    for (i = 0; i < d; i++) {
        const float *ri = r + (size_t)i * d;
        for (j = i; j < d; j++) {
            const float *rj = r + (size_t)j * d;
            double s = 0.0, dev;
            for (k = 0; k < d; k++) s += (double)ri[k] * (double)rj[k];
            dev = fabs(s - (i == j ? 1.0 : 0.0));
            if (dev > worst) worst = dev;
        }
        if (worst > 1e-3) break;
    }
    if (worst > 1e-3) return rp_fail(err, RP_E_CODEC, "%s state rotation is not orthogonal (|R R^T - I| = %.3g)", spec, worst);
    return RP_OK;
}

/* rq -pD: the projection P float32 [d][D] has orthonormal columns: every entry of P^T P (float64) within
 * RQ_PROJECT_ATOL of I (Python checks only max |P| <= 1 + 1e-3; the runtime's -n norms,
 * ||mean + P y||^2 = ||mean||^2 + 2 <P^T mean, y> + ||y||^2, rely on orthonormality). */
static int check_projection(const char *spec, const float *p, uint32_t d, uint32_t sub, rp_error *err) {
    uint32_t a, b, j;
    for (a = 0; a < sub; a++)
        for (b = a; b < sub; b++) {
            double s = 0.0, target = a == b ? 1.0 : 0.0;
            for (j = 0; j < d; j++) s += (double)p[(size_t)j * sub + a] * (double)p[(size_t)j * sub + b];
            if (!(fabs(s - target) <= RQ_PROJECT_ATOL))
                return rp_fail(err, RP_E_CODEC,
                               "%s state projection must hold orthonormal columns (|P^T P - I| = %.3g at %u,%u)", spec,
                               fabs(s - target), (unsigned)a, (unsigned)b);
        }
    return RP_OK;
}

/* rabitq's check: np.allclose(R R^T, I, atol=1e-4) (rtol 1e-5), the Gram matrix in float64. */
static int check_rotation_close(const char *spec, const float *r, uint32_t d, rp_error *err) {
    uint32_t i, j, k;
    for (i = 0; i < d; i++) {
        const float *ri = r + (size_t)i * d;
        for (j = i; j < d; j++) {
            const float *rj = r + (size_t)j * d;
            double s = 0.0, target = i == j ? 1.0 : 0.0;
            for (k = 0; k < d; k++) s += (double)ri[k] * (double)rj[k];
            if (!(fabs(s - target) <= 1e-4 + 1e-5 * target))
                return rp_fail(err, RP_E_CODEC, "%s state rotation is not orthogonal (|R R^T - I| = %.3g at %u,%u)", spec,
                               fabs(s - target), (unsigned)i, (unsigned)j);
        }
    }
    return RP_OK;
}

int rp_codec_open(const void *state, size_t size, rp_codec **out, rp_error *err) {
    st_state st;
    spec_info si;
    rp_codec *c = NULL;
    int rc;
    char spec[160], raw_spec[64];
    const st_array *a_lo = NULL, *a_step = NULL, *a_cent = NULL, *a_rot = NULL, *a_cb = NULL, *a_proj = NULL;
    const st_array *a_ns = NULL, *a_calib = NULL, *a_beam = NULL, *a_scale = NULL, *a_rho = NULL, *a_mean = NULL;
    size_t total = 0;
    uint8_t *base;
    uint64_t shp[3];
    uint32_t d, i;

    if (out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_codec_open: out is NULL");
    *out = NULL;
    if (state == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_codec_open: state is NULL");
    rc = st_check((const uint8_t *)state, size, &st, err);
    if (rc != RP_OK) return rc;
    d = st.dim;
    {
        size_t n = st.spec_len < sizeof raw_spec - 1 ? st.spec_len : sizeof raw_spec - 1;
        memcpy(raw_spec, st.spec, n);
        raw_spec[n] = '\0';
        for (i = 0; i < n; i++)
            if ((unsigned char)raw_spec[i] < 0x20 || (unsigned char)raw_spec[i] >= 0x7F) raw_spec[i] = '?';
    }
    rc = parse_spec(st.spec, st.spec_len, &si, err);
    if (rc == RP_E_UNSUPPORTED) {
        char fam[24];
        rp_codec_family_of_spec(raw_spec, fam, sizeof fam);
        st_free(&st);
        return rp_fail(err, RP_E_UNSUPPORTED, "codec family '%s' (spec '%s') is not supported by this runtime", fam, raw_spec);
    }
    if (rc != RP_OK) goto done;
    canonical_spec(&si, spec, sizeof spec);

    switch (si.family) {
    case RP_FAM_FLOAT32:
    case RP_FAM_FP16:
        if (st.meta->count != 0 || st.n_arrays != 0) rc = rp_fail(err, RP_E_CODEC, "%s codec state must be empty", spec);
        break;
    case RP_FAM_SQ8:
    case RP_FAM_SQ4: {
        static const char *const names[] = {"lo", "step"};
        shp[0] = d;
        if ((rc = check_keys(&st, spec, names, 2, err)) != RP_OK) break;
        if ((rc = check_array(&st, spec, "lo", "<f4", 1, shp, &a_lo, err)) != RP_OK) break;
        if ((rc = check_array(&st, spec, "step", "<f4", 1, shp, &a_step, err)) != RP_OK) break;
        total = 2 * align64((size_t)d * 4);
        break;
    }
    case RP_FAM_PQ4:
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8: {
        static const char *const pq_names[] = {"centroids"};
        static const char *const opq_names[] = {"centroids", "rotation"};
        static const char *const apq_names[] = {"centroids", "norm_scale"};
        static const char *const opqapq_names[] = {"centroids", "norm_scale", "rotation"};
        uint32_t max_ksub = si.bits == 4 ? 16u : 256u;
        const st_array *cent;
        if (si.apq) rc = check_keys(&st, spec, si.rotate ? opqapq_names : apq_names, si.rotate ? 3u : 2u, err);
        else rc = check_keys(&st, spec, si.rotate ? opq_names : pq_names, si.rotate ? 2u : 1u, err);
        if (rc != RP_OK) break;
        if (d % si.m) {
            rc = rp_fail(err, RP_E_CODEC, "%s state has dim %u, not divisible by %llu", spec, (unsigned)d, (unsigned long long)si.m);
            break;
        }
        cent = find_array(&st, "centroids");
        shp[0] = si.m;
        shp[1] = si.apq ? 256u : (cent->ndim == 3 ? cent->shape[1] : 0u);
        shp[2] = d / si.m;
        if (!si.apq && (shp[1] < 1 || shp[1] > max_ksub)) {
            rc = rp_fail(err, RP_E_CODEC, "%s state centroids must have shape [m, 1..%u, d/m]", spec, (unsigned)max_ksub);
            break;
        }
        if ((rc = check_array(&st, spec, "centroids", "<f4", 3, shp, &a_cent, err)) != RP_OK) break;
        total = align64((size_t)a_cent->nbytes);
        if (si.apq) {
            uint64_t one = 1;
            if ((rc = check_array(&st, spec, "norm_scale", "<f4", 1, &one, &a_ns, err)) != RP_OK) break;
        }
        if (si.rotate) {
            uint64_t rs[2];
            rs[0] = rs[1] = d;
            if ((rc = check_array(&st, spec, "rotation", "<f4", 2, rs, &a_rot, err)) != RP_OK) break;
            total += align64((size_t)a_rot->nbytes);
        }
        break;
    }
    case RP_FAM_RQ: {
        /* ResidualCodec._load_state: the names, then D <= d, projection [d, D] and mean [d], then the codebooks
         * [M, 256, D] (D = d without -p) and the rest */
        static const char *const rq_names[] = {"codebooks", "max_beam_size"};
        static const char *const rqb_names[] = {"codebooks", "max_beam_size", "norm_scale", "calib"};
        static const char *const rqp_names[] = {"codebooks", "max_beam_size", "projection", "mean"};
        uint64_t ncb = 0, one = 1, ns = si.n_stages, sub = d;
        for (i = 0; i < si.n_stages; i++) ncb += si.stages[i];
        if (si.project)
            rc = check_keys(&st, spec, rqp_names, 4u, err);
        else
            rc = check_keys(&st, spec, si.bounds ? rqb_names : rq_names, si.bounds ? 4u : 2u, err);
        if (rc != RP_OK) break;
        if (si.project) {
            uint64_t ps[2];
            if (si.project > d) {
                rc = rp_fail(err, RP_E_CODEC, "%s state projects to %llu of only %u dimensions", spec,
                             (unsigned long long)si.project, (unsigned)d);
                break;
            }
            sub = si.project;
            ps[0] = d;
            ps[1] = sub;
            if ((rc = check_array(&st, spec, "projection", "<f4", 2, ps, &a_proj, err)) != RP_OK) break;
            shp[0] = d;
            if ((rc = check_array(&st, spec, "mean", "<f4", 1, shp, &a_mean, err)) != RP_OK) break;
        }
        shp[0] = ncb;
        shp[1] = 256;
        shp[2] = sub;
        if ((rc = check_array(&st, spec, "codebooks", "<f4", 3, shp, &a_cb, err)) != RP_OK) break;
        if ((rc = check_array(&st, spec, "max_beam_size", "<i4", 1, &one, &a_beam, err)) != RP_OK) break;
        if (si.bounds) {
            if ((rc = check_array(&st, spec, "norm_scale", "<f4", 1, &ns, &a_ns, err)) != RP_OK) break;
            if ((rc = check_array(&st, spec, "calib", "<f4", 1, &ns, &a_calib, err)) != RP_OK) break;
        }
        total = align64((size_t)a_cb->nbytes);
        if (si.project) /* projection, mean, then P^T mean as float64 [D] */
            total += align64((size_t)a_proj->nbytes) + align64((size_t)d * 4u) + align64((size_t)sub * 8u);
        break;
    }
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING: {
        static const char *const names[] = {"projection", "scale"};
        uint64_t one = 1;
        if ((rc = check_keys(&st, spec, names, 2, err)) != RP_OK) break;
        shp[0] = si.nbits;
        shp[1] = d;
        if ((rc = check_array(&st, spec, "projection", "<f4", 2, shp, &a_proj, err)) != RP_OK) break;
        if ((rc = check_array(&st, spec, "scale", "<f4", 1, &one, &a_scale, err)) != RP_OK) break;
        total = align64((size_t)a_proj->nbytes);
        break;
    }
    case RP_FAM_RABITQ: {
        static const char *const names[] = {"centroid", "rotation", "rho"};
        uint64_t one = 1, rs[2];
        if ((rc = check_keys(&st, spec, names, 3, err)) != RP_OK) break;
        shp[0] = d;
        if ((rc = check_array(&st, spec, "centroid", "<f4", 1, shp, &a_cent, err)) != RP_OK) break;
        rs[0] = rs[1] = d;
        if ((rc = check_array(&st, spec, "rotation", "<f4", 2, rs, &a_rot, err)) != RP_OK) break;
        if ((rc = check_array(&st, spec, "rho", "<f4", 1, &one, &a_rho, err)) != RP_OK) break;
        total = align64((size_t)a_cent->nbytes) + align64((size_t)a_rot->nbytes);
        break;
    }
    default: rc = rp_fail(err, RP_E_UNSUPPORTED, "codec spec '%s' is not supported by this runtime", raw_spec); break;
    }
    if (rc != RP_OK) goto done;

    c = (rp_codec *)calloc(1, sizeof *c);
    if (c == NULL || (total > 0 && (c->arena = malloc(total + 63u)) == NULL)) {
        rc = rp_fail(err, RP_E_NOMEM, "out of memory loading codec '%s'", spec);
        goto done;
    }
    base = (uint8_t *)(((uintptr_t)c->arena + 63u) & ~(uintptr_t)63u);
    c->family = si.family;
    memcpy(c->spec, spec, sizeof c->spec - 1); /* a longer rq spec is cut (the spec is informative) */
    c->spec[sizeof c->spec - 1] = '\0';
    snprintf(c->family_name, sizeof c->family_name, "%s", si.family_name);
    c->dim = d;
    c->n_stages = 1;

    switch (si.family) {
    case RP_FAM_FLOAT32: c->bytes_per_vector = 4u * d; break;
    case RP_FAM_FP16: c->bytes_per_vector = 2u * d; break;
    case RP_FAM_SQ8:
    case RP_FAM_SQ4:
        c->bytes_per_vector = si.family == RP_FAM_SQ8 ? d : (d + 1u) / 2u;
        c->nbits = si.bits;
        c->lo = (float *)base;
        c->step = (float *)(base + align64((size_t)d * 4));
        if ((rc = copy_f32(&st, spec, a_lo, c->lo, err)) != RP_OK) break;
        if ((rc = copy_f32(&st, spec, a_step, c->step, err)) != RP_OK) break;
        for (i = 0; i < d; i++)
            if (c->step[i] < 0.0f) {
                rc = rp_fail(err, RP_E_CODEC, "%s state has negative steps", spec);
                break;
            }
        break;
    case RP_FAM_PQ4:
    case RP_FAM_PQ8:
    case RP_FAM_OPQ8:
        c->m = (uint32_t)si.m;
        c->ksub = (uint32_t)a_cent->shape[1];
        c->dsub = d / c->m;
        c->nbits = si.bits;
        c->bytes_per_vector = si.bits == 4 ? c->m / 2u : c->m;
        c->centroids = (float *)base;
        if ((rc = copy_f32(&st, spec, a_cent, c->centroids, err)) != RP_OK) break;
        if (a_ns != NULL) {
            float s = rp_lef32(st.payload + a_ns->offset);
            if (!isfinite(s)) { rc = rp_fail(err, RP_E_CODEC, "%s state array 'norm_scale' holds NaN or Inf", spec); break; }
            if (!(s > 0.0f)) { rc = rp_fail(err, RP_E_CODEC, "%s state norm_scale must be positive", spec); break; }
        }
        if (a_rot != NULL) {
            c->rotation = (float *)(base + align64((size_t)a_cent->nbytes));
            if ((rc = copy_f32(&st, spec, a_rot, c->rotation, err)) != RP_OK) break;
            if ((rc = check_rotation(spec, c->rotation, d, err)) != RP_OK) break;
        }
        break;
    case RP_FAM_RQ: {
        uint32_t s, col = 0, cb = 0, width = 0;
        int32_t beam;
        c->codebooks = (float *)base;
        if ((rc = copy_f32(&st, spec, a_cb, c->codebooks, err)) != RP_OK) break;
        beam = (int32_t)rp_le32(st.payload + a_beam->offset);
        if (beam < 1 || beam > RQ_MAX_BEAM) {
            rc = rp_fail(err, RP_E_CODEC, "%s state max_beam_size %ld is outside 1..%d", spec, (long)beam, RQ_MAX_BEAM);
            break;
        }
        if (si.bounds) {
            for (s = 0; s < si.n_stages && rc == RP_OK; s++) {
                float ns = rp_lef32(st.payload + a_ns->offset + 4u * s);
                float ca = rp_lef32(st.payload + a_calib->offset + 4u * s);
                if (!isfinite(ns) || !isfinite(ca)) rc = rp_fail(err, RP_E_CODEC, "%s state norm_scale or calib holds NaN or Inf", spec);
            }
            if (rc != RP_OK) break;
            for (s = 0; s < si.n_stages && rc == RP_OK; s++) {
                float ns = rp_lef32(st.payload + a_ns->offset + 4u * s);
                float ca = rp_lef32(st.payload + a_calib->offset + 4u * s);
                if (!(ns > 0.0f) || !(ca > 0.0f)) rc = rp_fail(err, RP_E_CODEC, "%s state norm_scale and calib must be positive", spec);
            }
            if (rc != RP_OK) break;
            for (s = 0; s < si.n_stages && rc == RP_OK; s++)
                if (!(rp_lef32(st.payload + a_ns->offset + 4u * s) < 1e30f))
                    rc = rp_fail(err, RP_E_CODEC, "%s state norm_scale must stay below 1e30", spec);
            if (rc != RP_OK) break;
        }
        c->n_stages = si.n_stages;
        c->bounds = si.bounds;
        c->rq_unit = si.unit;
        c->rq_sub = d;
        if (si.project) {
            uint8_t *p = base + align64((size_t)a_cb->nbytes);
            uint32_t sub = (uint32_t)si.project, j, k;
            c->rq_sub = sub;
            c->rq_proj = (float *)p;
            p += align64((size_t)a_proj->nbytes);
            c->rq_mean = (float *)p;
            p += align64((size_t)d * 4u);
            c->rq_pmean = (double *)p;
            if ((rc = copy_f32(&st, spec, a_proj, c->rq_proj, err)) != RP_OK) break;
            if ((rc = copy_f32(&st, spec, a_mean, c->rq_mean, err)) != RP_OK) break;
            if ((rc = check_projection(spec, c->rq_proj, d, sub, err)) != RP_OK) break;
            c->rq_mean_sq = 0.0;
            for (j = 0; j < d; j++) c->rq_mean_sq += (double)c->rq_mean[j] * (double)c->rq_mean[j];
            for (k = 0; k < sub; k++) c->rq_pmean[k] = 0.0;
            for (j = 0; j < d; j++) {
                const float *row = c->rq_proj + (size_t)j * sub;
                double m = (double)c->rq_mean[j];
                for (k = 0; k < sub; k++) c->rq_pmean[k] += (double)row[k] * m;
            }
        }
        for (s = 0; s < si.n_stages; s++) {
            uint32_t k;
            c->stage_sizes[s] = (uint32_t)si.stages[s];
            for (k = 0; k < c->stage_sizes[s]; k++) c->cb_col[cb++] = col++;
            if (si.bounds) col++;
            width += c->stage_sizes[s] + (si.bounds ? 1u : 0u);
            c->prefix_bytes[s] = width;
        }
        c->n_codebooks = cb;
        c->m = cb;
        c->ksub = 256;
        c->bytes_per_vector = width;
        break;
    }
    case RP_FAM_SIMHASH:
    case RP_FAM_HAMMING:
        c->nbits = (uint32_t)si.nbits;
        c->bytes_per_vector = c->nbits / 8u;
        c->projection = (float *)base;
        if ((rc = copy_f32(&st, spec, a_proj, c->projection, err)) != RP_OK) break;
        c->scale = rp_lef32(st.payload + a_scale->offset);
        if (!isfinite(c->scale)) rc = rp_fail(err, RP_E_CODEC, "%s state array 'scale' holds NaN or Inf", spec);
        break;
    case RP_FAM_RABITQ: {
        uint32_t b = si.bits;
        c->rb_bits = b;
        c->rb_nb0 = (d + 7u) / 8u;
        c->rb_nb1 = (uint32_t)(((uint64_t)d * (b - 1u) + 7u) / 8u);
        c->rb_centroid = (float *)base;
        c->rotation = (float *)(base + align64((size_t)a_cent->nbytes));
        if ((rc = copy_f32(&st, spec, a_cent, c->rb_centroid, err)) != RP_OK) break;
        if ((rc = copy_f32(&st, spec, a_rot, c->rotation, err)) != RP_OK) break;
        c->rb_rho = rp_lef32(st.payload + a_rho->offset);
        if (!isfinite(c->rb_rho)) { rc = rp_fail(err, RP_E_CODEC, "%s state array 'rho' holds NaN or Inf", spec); break; }
        if (!(c->rb_rho > 0.0f)) { rc = rp_fail(err, RP_E_CODEC, "%s state has a non-positive rho %g", spec, (double)c->rb_rho); break; }
        if ((rc = check_rotation_close(spec, c->rotation, d, err)) != RP_OK) break;
        c->prefix_bytes[0] = c->rb_nb0 + 4u;
        if (b == 1u) {
            c->n_stages = 1;
            c->bytes_per_vector = c->prefix_bytes[0];
        } else {
            c->n_stages = 2;
            c->prefix_bytes[1] = c->rb_nb0 + c->rb_nb1 + 8u;
            c->bytes_per_vector = c->prefix_bytes[1];
        }
        break;
    }
    default: break;
    }
done:
    st_free(&st);
    if (rc != RP_OK) {
        rp_codec_free(c);
        return rc;
    }
    rp_clear(err);
    *out = c;
    return RP_OK;
}

void rp_codec_free(rp_codec *codec) {
    if (codec == NULL) return;
    free(codec->arena);
    free(codec);
}

const char *rp_codec_spec(const rp_codec *codec) { return codec ? codec->spec : ""; }
const char *rp_codec_family(const rp_codec *codec) { return codec ? codec->family_name : ""; }
uint32_t rp_codec_dim(const rp_codec *codec) { return codec ? codec->dim : 0u; }
uint32_t rp_codec_bytes_per_vector(const rp_codec *codec) { return codec ? codec->bytes_per_vector : 0u; }
uint32_t rp_codec_stages(const rp_codec *codec) {
    if (codec == NULL) return 0;
    return codec->family == RP_FAM_RQ || codec->family == RP_FAM_RABITQ ? codec->n_stages : 1u;
}
uint32_t rp_codec_prefix_bytes(const rp_codec *codec, uint32_t stages) {
    if (codec == NULL) return 0;
    if ((codec->family != RP_FAM_RQ && codec->family != RP_FAM_RABITQ) || stages == 0 || stages >= codec->n_stages)
        return codec->bytes_per_vector;
    return codec->prefix_bytes[stages - 1];
}
