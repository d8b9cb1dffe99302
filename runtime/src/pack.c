/* Packs (docs/FORMAT.md): the header, the section table, the directory sections (ITEM_IDS, LAYERS,
 * BLOCK_INDEX), section and block CRC32Cs, and ranking a layer. Mirrors reelpack.format.layout
 * (parse_header, parse_directory, _parse_layers, _parse_block_index), reelpack.format.varint
 * (decode_item_ids) and reelpack.format.reader (_layer_problem, _load_model, _block_problems, _decode,
 * layer_codes, verify): the same checks in the same order, each Python exception class mapped to one
 * rp_status. Entropy-coded layers are decoded (entropy.c) on first use into a pack-owned array. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE 1 /* madvise / MADV_DONTNEED next to POSIX (glibc); other libcs expose them anyway */
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__unix__) || defined(__APPLE__)
#define RP_HAVE_MMAP 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#define HEADER_SIZE 64u
#define SECTION_SIZE 24u
#define LAYER_SIZE 48u
#define BLOCK_SIZE 32u
#define MAX_SECTIONS 4096u
#define MAX_LAYERS 256u
#define MAX_BPV (1u << 20)
#define MAX_IPB (1u << 20)
#define MAX_CORRECTIONS 1024u
#define MAX_METADATA (1u << 20)
#define NO_SECTION 0xFFFFFFFFu
#define MAX_ID ((uint64_t)INT64_MAX)
/* ids are expanded to int64 [n_items] at open: with an entropy-coded layer n_items may exceed the bytes of
 * the pack, and this runtime refuses claims above this many items there (2 GiB of ids) */
#define MAX_EXPANDED_IDS ((uint64_t)1 << 28)
/* an entropy-coded layer is decoded into one uint8 [n_items, B] array: refused (RP_E_UNSUPPORTED) above this */
#define MAX_DECODED_BYTES ((uint64_t)1 << 32)

enum { T_ITEM_IDS = 1, T_LAYERS = 2, T_CODEC = 3, T_LAYER_CODES = 4, T_BLOCK_INDEX = 5, T_CORRECTIONS = 6,
       T_METADATA = 7, T_PARITY = 8, T_ENTROPY_MODEL = 9 };
/* why a section is unusable (Directory.section_problems; PROB_INVALID = invalid_sections) */
enum { PROB_NONE = 0, PROB_TRUNCATED, PROB_CHECKSUM, PROB_INVALID, PROB_OTHER };

static const uint8_t MAGIC[8] = {0x52, 0x50, 0x41, 0x4B, 0x0D, 0x0A, 0x1A, 0x0A};

typedef struct pk_section {
    uint16_t type, flags;
    uint32_t crc;
    uint64_t offset, length, end; /* end saturates at UINT64_MAX */
} pk_section;

typedef struct pk_layer {
    uint16_t flags;
    uint32_t codec_s, codes_s, corr_s;
    uint32_t bpv, ipb, n_blocks, k;
    uint64_t codes_offset, codes_length;
    const uint8_t *entries; /* its BLOCK_INDEX entries */
    uint32_t model_s;       /* entropy-coded: its ENTROPY_MODEL section (Directory.entropy_models), or NO_SECTION */
    /* caches */
    uint8_t *status;        /* rp_status per block, NULL until computed */
    rp_codec *codec;
    int codec_rc;           /* -1 until tried */
    rp_error codec_err;
    rp_entropy_model model; /* entropy-coded: the parsed model (when model_rc == RP_OK) */
    int model_rc;           /* entropy-coded: -1 until tried, then RP_OK or why the layer is unusable */
    uint8_t *decoded;       /* entropy-coded: uint8 [n_items, B], the intact blocks decoded (bad ones zero) */
    float *rq_inv;          /* rq -n: inverse reconstruction norms float32 [n_stages][rq_inv_n] (rp_rq_inv_norms of
                               the rows before a truncation, damaged rows 0), NULL until computed */
    uint64_t rq_inv_n;
} pk_layer;

struct rp_pack {
    const uint8_t *buf;
    size_t size;
    void *map;        /* mmap'ed file, or NULL */
    size_t map_size;
    uint8_t *owned;   /* read file, or NULL */
    uint64_t file_length, n_items, prefix_length;
    uint32_t n_sections, n_layers;
    pk_section *sections;
    uint8_t *problem; /* per section */
    uint32_t n_problems;
    pk_layer *layers;
    int64_t *ids;
    const char *metadata;
    size_t metadata_len;
};

/* ---- open ------------------------------------------------------------------------------------- */
static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

typedef struct span {
    uint64_t start, end;
} span;
static int cmp_span(const void *a, const void *b) {
    const span *x = (const span *)a, *y = (const span *)b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static const char *type_name(uint16_t t) {
    static const char *const names[] = {"unknown", "ITEM_IDS", "LAYERS", "CODEC", "LAYER_CODES", "BLOCK_INDEX",
                                        "CORRECTIONS", "METADATA", "PARITY", "ENTROPY_MODEL"};
    return t < 10 ? names[t] : "unknown";
}

static int is_known(uint16_t t) { return t >= 1 && t <= 9 && t != T_PARITY; }

/* A directory section's bytes, CRC-checked (layout.parse_directory's body()). */
static int body(const rp_pack *pk, uint32_t idx, rp_error *err) {
    const pk_section *s = &pk->sections[idx];
    if (s->end > pk->size)
        return rp_fail(err, RP_E_TRUNCATED, "%s section [%llu, %llu) is beyond the %lu bytes read", type_name(s->type),
                       (unsigned long long)s->offset, (unsigned long long)s->end, (unsigned long)pk->size);
    if (rp_crc32c(0, pk->buf + s->offset, (size_t)s->length) != s->crc)
        return rp_fail(err, RP_E_CHECKSUM, "%s section (index %u) CRC32C mismatch", type_name(s->type), (unsigned)idx);
    return RP_OK;
}

static int parse_layers(rp_pack *pk, uint32_t idx, rp_error *err) {
    const pk_section *ls = &pk->sections[idx];
    const uint8_t *raw = pk->buf + ls->offset;
    uint32_t n_layers, i;
    uint8_t *used;
    if (ls->length < 8) return rp_fail(err, RP_E_FORMAT, "LAYERS section is %llu bytes, needs at least 8", (unsigned long long)ls->length);
    n_layers = rp_le32(raw);
    if (n_layers < 1 || n_layers > MAX_LAYERS) return rp_fail(err, RP_E_FORMAT, "layer count %u is outside 1..%u", (unsigned)n_layers, MAX_LAYERS);
    if (ls->length != 8u + (uint64_t)LAYER_SIZE * n_layers)
        return rp_fail(err, RP_E_FORMAT, "LAYERS section is %llu bytes, %u layers need %u", (unsigned long long)ls->length,
                       (unsigned)n_layers, (unsigned)(8u + LAYER_SIZE * n_layers));
    pk->layers = (pk_layer *)calloc(n_layers, sizeof(pk_layer));
    used = (uint8_t *)calloc(pk->n_sections ? pk->n_sections : 1u, 1);
    if (pk->layers == NULL || used == NULL) {
        free(used);
        return rp_fail(err, RP_E_NOMEM, "out of memory reading LAYERS");
    }
    pk->n_layers = n_layers;
    for (i = 0; i < n_layers; i++) {
        const uint8_t *e = raw + 8u + (size_t)LAYER_SIZE * i;
        pk_layer *L = &pk->layers[i];
        uint16_t index = rp_le16(e);
        uint64_t need_blocks;
        L->flags = rp_le16(e + 2);
        L->codec_s = rp_le32(e + 4);
        L->codes_s = rp_le32(e + 8);
        L->corr_s = rp_le32(e + 12);
        L->bpv = rp_le32(e + 16);
        L->ipb = rp_le32(e + 20);
        L->n_blocks = rp_le32(e + 24);
        L->k = rp_le32(e + 28);
        L->codes_offset = rp_le64(e + 32);
        L->codes_length = rp_le64(e + 40);
        L->codec_rc = -1;
        L->model_rc = -1;
        L->model_s = NO_SECTION;
        if (index != i) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: entry holds layer index %u, expected %u", (unsigned)i, (unsigned)index, (unsigned)i);
        }
        if (L->codec_s >= pk->n_sections || pk->sections[L->codec_s].type != T_CODEC) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: codec section index %u is not a CODEC section", (unsigned)i, (unsigned)L->codec_s);
        }
        if (L->codes_s >= pk->n_sections || pk->sections[L->codes_s].type != T_LAYER_CODES) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: codes section index %u is not a LAYER_CODES section", (unsigned)i, (unsigned)L->codes_s);
        }
        if (used[L->codes_s]) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: codes section %u is shared with another layer", (unsigned)i, (unsigned)L->codes_s);
        }
        used[L->codes_s] = 1;
        if (L->bpv < 1 || L->bpv > MAX_BPV || L->ipb < 1 || L->ipb > MAX_IPB) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: bytes_per_vector %u or items_per_block %u out of range", (unsigned)i,
                           (unsigned)L->bpv, (unsigned)L->ipb);
        }
        need_blocks = pk->n_items / L->ipb + (pk->n_items % L->ipb ? 1u : 0u);
        if ((uint64_t)L->n_blocks != need_blocks) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: %u blocks, but %llu items / %u per block need %llu", (unsigned)i,
                           (unsigned)L->n_blocks, (unsigned long long)pk->n_items, (unsigned)L->ipb, (unsigned long long)need_blocks);
        }
        if (L->codes_offset != pk->sections[L->codes_s].offset || L->codes_length != pk->sections[L->codes_s].length) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: first block offset / codes length disagree with section %u", (unsigned)i, (unsigned)L->codes_s);
        }
        if (!(L->flags & 1u) && (pk->n_items > UINT64_MAX / L->bpv || L->codes_length != pk->n_items * L->bpv)) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: codes section is %llu bytes, %llu items x %u B need more or less",
                           (unsigned)i, (unsigned long long)L->codes_length, (unsigned long long)pk->n_items, (unsigned)L->bpv);
        }
        if (L->corr_s != NO_SECTION) {
            const pk_section *cs;
            if (L->corr_s >= pk->n_sections || pk->sections[L->corr_s].type != T_CORRECTIONS) {
                free(used);
                return rp_fail(err, RP_E_FORMAT, "layer %u: corrections section index %u is not a CORRECTIONS section", (unsigned)i, (unsigned)L->corr_s);
            }
            cs = &pk->sections[L->corr_s];
            if (L->k < 1 || L->k > MAX_CORRECTIONS || pk->n_items > UINT64_MAX / (4u * (uint64_t)L->k) ||
                cs->length != 4u * (uint64_t)L->k * pk->n_items) {
                free(used);
                return rp_fail(err, RP_E_FORMAT, "layer %u: %u corrections per vector do not fit a %llu-byte section", (unsigned)i,
                               (unsigned)L->k, (unsigned long long)cs->length);
            }
        } else if (L->k != 0) {
            free(used);
            return rp_fail(err, RP_E_FORMAT, "layer %u: %u corrections per vector but no CORRECTIONS section", (unsigned)i, (unsigned)L->k);
        }
    }
    free(used);
    return RP_OK;
}

static int parse_block_index(rp_pack *pk, uint32_t idx, rp_error *err) {
    const pk_section *bs = &pk->sections[idx];
    const uint8_t *raw = pk->buf + bs->offset;
    uint64_t total = 0, start = 0;
    uint32_t i;
    for (i = 0; i < pk->n_layers; i++) total += pk->layers[i].n_blocks;
    if (bs->length != total * BLOCK_SIZE)
        return rp_fail(err, RP_E_FORMAT, "BLOCK_INDEX is %llu bytes, %llu blocks need %llu", (unsigned long long)bs->length,
                       (unsigned long long)total, (unsigned long long)(total * BLOCK_SIZE));
    for (i = 0; i < pk->n_layers; i++) {
        pk_layer *L = &pk->layers[i];
        uint64_t k, max_off = 0, section_end = L->codes_offset + L->codes_length; /* inside the file: no overflow */
        L->entries = raw + start * BLOCK_SIZE;
        start += L->n_blocks;
        for (k = 0; k < L->n_blocks; k++) {
            const uint8_t *e = L->entries + k * BLOCK_SIZE;
            if (rp_le16(e) != i || rp_le32(e + 4) != k)
                return rp_fail(err, RP_E_FORMAT, "BLOCK_INDEX entries of layer %u are out of order", (unsigned)i);
        }
        for (k = 0; k < L->n_blocks; k++) {
            uint64_t off = rp_le64(L->entries + k * BLOCK_SIZE + 8);
            if (off > max_off) max_off = off;
        }
        if (L->n_blocks > 0 && max_off > section_end)
            return rp_fail(err, RP_E_FORMAT, "BLOCK_INDEX offset of layer %u lies outside its codes section", (unsigned)i);
        if (L->flags & 1u) {
            uint64_t expected = L->codes_offset;
            for (k = 0; k < L->n_blocks; k++) {
                const uint8_t *e = L->entries + k * BLOCK_SIZE;
                if (rp_le64(e + 8) != expected) break;
                expected += rp_le32(e + 16);
            }
            if (k != L->n_blocks || (L->n_blocks > 0 && expected != section_end))
                return rp_fail(err, RP_E_FORMAT, "BLOCK_INDEX blocks of entropy-coded layer %u do not tile its codes section", (unsigned)i);
        } else {
            for (k = 0; k < L->n_blocks; k++) {
                const uint8_t *e = L->entries + k * BLOCK_SIZE;
                uint64_t first = k * L->ipb;
                uint64_t rows = pk->n_items - first < L->ipb ? pk->n_items - first : L->ipb;
                if (rp_le64(e + 8) != L->codes_offset + first * L->bpv || (uint64_t)rp_le32(e + 16) != rows * L->bpv)
                    return rp_fail(err, RP_E_FORMAT, "BLOCK_INDEX offsets or lengths of layer %u disagree with its layout", (unsigned)i);
            }
        }
    }
    return RP_OK;
}

/* decode_item_ids: both encodings, expanded to int64 [n_items]. */
static int decode_ids(rp_pack *pk, uint32_t idx, rp_error *err) {
    const pk_section *s = &pk->sections[idx];
    const uint8_t *b = pk->buf + s->offset, *v;
    uint64_t len = s->length, nb, count, n_values = 0, i, pos, maxlen = 0;
    uint64_t *values = NULL;
    int non_minimal = 0;
    uint8_t encoding;
    if (len < 9) return rp_fail(err, RP_E_FORMAT, "ITEM_IDS section is %llu bytes, needs at least 9", (unsigned long long)len);
    encoding = b[0];
    count = rp_le64(b + 1);
    if (count != pk->n_items)
        return rp_fail(err, RP_E_FORMAT, "ITEM_IDS holds %llu ids, the header says %llu items", (unsigned long long)count,
                       (unsigned long long)pk->n_items);
    v = b + 9;
    nb = len - 9;
    /* decode_varints: the last byte must end a varint; at most 9 bytes each; minimal */
    if (nb > 0) {
        uint64_t run = 0;
        if (v[nb - 1] & 0x80u) return rp_fail(err, RP_E_FORMAT, "varint is truncated: the last byte has its continuation bit set");
        for (i = 0; i < nb; i++) {
            run++;
            if (!(v[i] & 0x80u)) {
                if (run > maxlen) maxlen = run;
                if (run > 1 && v[i] == 0) non_minimal = 1;
                n_values++;
                run = 0;
            }
        }
        if (maxlen > 9) return rp_fail(err, RP_E_FORMAT, "varint longer than 9 bytes (values must be < 2**63)");
        if (non_minimal) return rp_fail(err, RP_E_FORMAT, "varint is not minimally encoded (a trailing zero group)");
        values = (uint64_t *)malloc((size_t)n_values * sizeof(uint64_t));
        if (values == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory decoding item ids");
        {
            uint64_t acc = 0, j = 0;
            unsigned shift = 0;
            for (i = 0; i < nb; i++) {
                acc |= (uint64_t)(v[i] & 0x7Fu) << shift;
                shift += 7;
                if (!(v[i] & 0x80u)) {
                    values[j++] = acc;
                    acc = 0;
                    shift = 0;
                }
            }
        }
    }
    if (encoding == 0) {
        uint64_t prev = 0, cur = 0;
        if (n_values != count) {
            free(values);
            return rp_fail(err, RP_E_FORMAT, "ITEM_IDS (deltas) has %llu varints, expected %llu", (unsigned long long)n_values,
                           (unsigned long long)count);
        }
        for (i = 0; i < n_values; i++) {
            cur = prev + values[i]; /* wraps like numpy's uint64 cumsum; each value < 2^63, so a wrap decreases */
            if (i > 0 && (values[i] == 0 || cur <= prev)) {
                free(values);
                return rp_fail(err, RP_E_FORMAT, "ITEM_IDS are not strictly increasing (zero delta or overflow)");
            }
            prev = cur;
        }
        if (n_values > 0 && cur > MAX_ID) {
            free(values);
            return rp_fail(err, RP_E_FORMAT, "ITEM_IDS hold an id >= 2**63");
        }
        pk->ids = (int64_t *)malloc(count ? (size_t)count * sizeof(int64_t) : 1u);
        if (pk->ids == NULL) {
            free(values);
            return rp_fail(err, RP_E_NOMEM, "out of memory for %llu item ids", (unsigned long long)count);
        }
        for (i = 0, prev = 0; i < n_values; i++) {
            prev += values[i];
            pk->ids[i] = (int64_t)prev;
        }
        free(values);
        return RP_OK;
    }
    if (encoding == 1) {
        uint64_t r, n_runs = n_values / 2, end = 0, prev_end = 0, total = 0;
        if (n_values % 2) {
            free(values);
            return rp_fail(err, RP_E_FORMAT, "ITEM_IDS (runs) has an odd number of varints (%llu)", (unsigned long long)n_values);
        }
        for (r = 0; r < n_runs; r++)
            if (values[2 * r + 1] == 0 || (r > 0 && values[2 * r] == 0)) {
                free(values);
                return rp_fail(err, RP_E_FORMAT, "ITEM_IDS runs must have length >= 1 and gaps >= 1 between runs");
            }
        for (r = 0; r < n_runs; r++)
            if (values[2 * r + 1] > count) {
                free(values);
                return rp_fail(err, RP_E_FORMAT, "ITEM_IDS run longer than the %llu ids", (unsigned long long)count);
            }
        for (r = 0; r < n_runs; r++) {
            end += values[2 * r] + values[2 * r + 1]; /* uint64 wrap as numpy */
            if (r > 0 && end <= prev_end) {
                free(values);
                return rp_fail(err, RP_E_FORMAT, "ITEM_IDS runs overflow 64 bits");
            }
            prev_end = end;
        }
        if (n_runs > 0 && end > MAX_ID + 1u) {
            free(values);
            return rp_fail(err, RP_E_FORMAT, "ITEM_IDS hold an id >= 2**63");
        }
        /* ends increase without a wrap and stay <= 2^63: the lengths sum below 2^63 too */
        for (r = 0; r < n_runs; r++) total += values[2 * r + 1];
        if (total != count) {
            free(values);
            return rp_fail(err, RP_E_FORMAT, "ITEM_IDS runs cover %llu ids, expected %llu", (unsigned long long)total,
                           (unsigned long long)count);
        }
        if (count > (uint64_t)(((size_t)-1) / sizeof(int64_t)) || (count > pk->size && count > MAX_EXPANDED_IDS)) {
            free(values);
            return rp_fail(err, RP_E_UNSUPPORTED, "pack claims %llu items in %lu bytes: more than this runtime expands",
                           (unsigned long long)count, (unsigned long)pk->size);
        }
        pk->ids = (int64_t *)malloc(count ? (size_t)count * sizeof(int64_t) : 1u);
        if (pk->ids == NULL) {
            free(values);
            return rp_fail(err, RP_E_NOMEM, "out of memory for %llu item ids", (unsigned long long)count);
        }
        for (r = 0, pos = 0, end = 0; r < n_runs; r++) {
            uint64_t first = end + values[2 * r], j;
            for (j = 0; j < values[2 * r + 1]; j++) pk->ids[pos++] = (int64_t)(first + j);
            end = first + values[2 * r + 1];
        }
        free(values);
        return RP_OK;
    }
    free(values);
    return rp_fail(err, RP_E_FORMAT, "ITEM_IDS encoding %u is unknown (expected 0 or 1)", (unsigned)encoding);
}

static void set_problem(rp_pack *pk, uint32_t idx, uint8_t why) {
    if (pk->problem[idx] == PROB_NONE) pk->n_problems++;
    pk->problem[idx] = why;
}

/* _parse_metadata: at most 1 MiB of UTF-8 JSON whose value is an object. */
static int metadata_ok(const uint8_t *raw, uint64_t len, int *nomem) {
    rp_json j;
    int rc, ok;
    *nomem = 0;
    if (len > MAX_METADATA) return 0;
    rc = rp_json_parse((const char *)raw, (size_t)len, &j, NULL, 0);
    if (rc == -2) { *nomem = 1; return 0; }
    if (rc != 0) return 0;
    ok = j.nodes[0].type == RP_JSON_OBJECT;
    rp_json_free(&j);
    return ok;
}

static int parse_directory(rp_pack *pk, rp_error *err) {
    const uint8_t *buf = pk->buf;
    size_t n = pk->size;
    uint16_t major, minor;
    uint64_t table_offset, table_end, cursor, non_codes_end;
    uint32_t section_count, table_crc, i;
    uint32_t idx_ids = 0, idx_layers = 0, idx_blocks = 0, c_ids = 0, c_layers = 0, c_blocks = 0, c_meta = 0;
    int any_entropy = 0, rc;
    span *spans;

    /* parse_header */
    if (n < HEADER_SIZE) {
        size_t m = n < 8 ? n : 8;
        if (memcmp(buf, MAGIC, m) != 0) return rp_fail(err, RP_E_NOT_A_PACK, "not a reelpack pack: wrong magic");
        return rp_fail(err, RP_E_TRUNCATED, "pack is %lu bytes, shorter than the 64-byte header", (unsigned long)n);
    }
    if (memcmp(buf, MAGIC, 8) != 0) return rp_fail(err, RP_E_NOT_A_PACK, "not a reelpack pack: wrong magic");
    major = rp_le16(buf + 8);
    minor = rp_le16(buf + 10);
    if (major != RP_FORMAT_MAJOR)
        return rp_fail(err, RP_E_VERSION, "pack format version %u.%u is not supported: this reader implements version 1.0 (major 1, any minor)",
                       (unsigned)major, (unsigned)minor);
    if (rp_crc32c(0, buf, 60) != rp_le32(buf + 60))
        return rp_fail(err, RP_E_CHECKSUM, "header CRC32C mismatch: stored 0x%08x, computed 0x%08x", (unsigned)rp_le32(buf + 60),
                       (unsigned)rp_crc32c(0, buf, 60));
    pk->file_length = rp_le64(buf + 16);
    pk->n_items = rp_le64(buf + 24);
    table_offset = rp_le64(buf + 32);
    section_count = rp_le32(buf + 40);
    table_crc = rp_le32(buf + 44);
    pk->prefix_length = rp_le64(buf + 48);

    /* parse_directory */
    if ((uint64_t)n > pk->file_length)
        return rp_fail(err, RP_E_FORMAT, "pack is %lu bytes but its header says %llu: trailing bytes", (unsigned long)n,
                       (unsigned long long)pk->file_length);
    if (section_count > MAX_SECTIONS)
        return rp_fail(err, RP_E_FORMAT, "section count %u exceeds the limit %u", (unsigned)section_count, MAX_SECTIONS);
    table_end = add_sat(table_offset, (uint64_t)SECTION_SIZE * section_count);
    if (table_offset < HEADER_SIZE || table_end > pk->file_length)
        return rp_fail(err, RP_E_FORMAT, "section table lies outside [64, %llu)", (unsigned long long)pk->file_length);
    if (table_end > n) return rp_fail(err, RP_E_TRUNCATED, "pack is %lu bytes, the section table ends at %llu", (unsigned long)n, (unsigned long long)table_end);
    if (rp_crc32c(0, buf + table_offset, (size_t)(table_end - table_offset)) != table_crc)
        return rp_fail(err, RP_E_CHECKSUM, "section table CRC32C mismatch");

    pk->n_sections = section_count;
    pk->sections = (pk_section *)calloc(section_count ? section_count : 1u, sizeof(pk_section));
    pk->problem = (uint8_t *)calloc(section_count ? section_count : 1u, 1);
    spans = (span *)malloc((section_count + 2u) * sizeof(span));
    if (pk->sections == NULL || pk->problem == NULL || spans == NULL) {
        free(spans);
        return rp_fail(err, RP_E_NOMEM, "out of memory reading the section table");
    }
    for (i = 0; i < section_count; i++) {
        const uint8_t *e = buf + table_offset + (size_t)SECTION_SIZE * i;
        pk_section *s = &pk->sections[i];
        s->type = rp_le16(e);
        s->flags = rp_le16(e + 2);
        s->crc = rp_le32(e + 4);
        s->offset = rp_le64(e + 8);
        s->length = rp_le64(e + 16);
        s->end = add_sat(s->offset, s->length);
        spans[i + 2].start = s->offset;
        spans[i + 2].end = s->end;
    }
    spans[0].start = 0;
    spans[0].end = HEADER_SIZE;
    spans[1].start = table_offset;
    spans[1].end = table_end;
    qsort(spans, section_count + 2u, sizeof(span), cmp_span);
    cursor = 0;
    for (i = 0; i < section_count + 2u; i++) {
        if (spans[i].start != cursor) {
            uint64_t at = spans[i].start < cursor ? spans[i].start : cursor;
            free(spans);
            return rp_fail(err, RP_E_FORMAT, "pack regions leave a gap or overlap at byte %llu", (unsigned long long)at);
        }
        cursor = spans[i].end;
    }
    free(spans);
    if (cursor != pk->file_length)
        return rp_fail(err, RP_E_FORMAT, "pack regions end at byte %llu, the header says %llu", (unsigned long long)cursor,
                       (unsigned long long)pk->file_length);
    non_codes_end = table_end;
    for (i = 0; i < section_count; i++)
        if (pk->sections[i].type != T_LAYER_CODES && pk->sections[i].end > non_codes_end) non_codes_end = pk->sections[i].end;
    if (pk->prefix_length != non_codes_end)
        return rp_fail(err, RP_E_FORMAT, "header prefix_length is %llu, the directory sections end at %llu",
                       (unsigned long long)pk->prefix_length, (unsigned long long)non_codes_end);

    for (i = 0; i < section_count; i++) {
        const pk_section *s = &pk->sections[i];
        if (!is_known(s->type)) {
            if (s->flags & 1u)
                return rp_fail(err, RP_E_UNSUPPORTED, "section %u has type %u (%s) flagged required; this reader (format 1.0) does not implement it",
                               (unsigned)i, (unsigned)s->type, type_name(s->type));
            continue;
        }
        if (s->type == T_ITEM_IDS) { if (c_ids++ == 0) idx_ids = i; }
        else if (s->type == T_LAYERS) { if (c_layers++ == 0) idx_layers = i; }
        else if (s->type == T_BLOCK_INDEX) { if (c_blocks++ == 0) idx_blocks = i; }
        else if (s->type == T_METADATA) c_meta++;
    }
    if (c_ids != 1) return rp_fail(err, RP_E_FORMAT, "pack needs exactly one ITEM_IDS section, found %u", (unsigned)c_ids);
    if (c_layers != 1) return rp_fail(err, RP_E_FORMAT, "pack needs exactly one LAYERS section, found %u", (unsigned)c_layers);
    if (c_blocks != 1) return rp_fail(err, RP_E_FORMAT, "pack needs exactly one BLOCK_INDEX section, found %u", (unsigned)c_blocks);
    if (c_meta > 1) return rp_fail(err, RP_E_FORMAT, "pack has more than one METADATA section");

    if ((rc = body(pk, idx_layers, err)) != RP_OK) return rc;
    if ((rc = parse_layers(pk, idx_layers, err)) != RP_OK) return rc;
    for (i = 0; i < pk->n_layers; i++)
        if (pk->layers[i].flags & 1u) any_entropy = 1;
    if (pk->n_items > pk->file_length && !any_entropy)
        return rp_fail(err, RP_E_FORMAT, "header claims %llu items in a %llu-byte pack", (unsigned long long)pk->n_items,
                       (unsigned long long)pk->file_length);
    if (pk->n_items > (uint64_t)n && !any_entropy)
        return rp_fail(err, RP_E_TRUNCATED, "pack holds %llu items but only %lu bytes arrived: too short to read",
                       (unsigned long long)pk->n_items, (unsigned long)n);
    if ((rc = body(pk, idx_blocks, err)) != RP_OK) return rc;
    if ((rc = parse_block_index(pk, idx_blocks, err)) != RP_OK) return rc;
    if ((rc = body(pk, idx_ids, err)) != RP_OK) return rc;
    if ((rc = decode_ids(pk, idx_ids, err)) != RP_OK) return rc;

    /* ENTROPY_MODEL sections name distinct entropy-coded layers (entropy_models: layer -> section) */
    for (i = 0; i < section_count; i++) {
        const pk_section *s = &pk->sections[i];
        uint16_t li;
        if (s->type != T_ENTROPY_MODEL) continue;
        if (add_sat(s->offset, 4) > n) {
            set_problem(pk, i, PROB_TRUNCATED);
            continue;
        }
        if (s->length < 4)
            return rp_fail(err, RP_E_FORMAT, "ENTROPY_MODEL section %u is %llu bytes, shorter than its prefix", (unsigned)i,
                           (unsigned long long)s->length);
        li = rp_le16(buf + s->offset);
        if (li >= pk->n_layers || !(pk->layers[li].flags & 1u) || pk->layers[li].model_s != NO_SECTION) {
            set_problem(pk, i, PROB_OTHER);
            continue;
        }
        pk->layers[li].model_s = i;
    }
    /* every other section but LAYER_CODES: CRC32C (and the CODEC structure); reported, not raised */
    for (i = 0; i < section_count; i++) {
        const pk_section *s = &pk->sections[i];
        if (s->type == T_ITEM_IDS || s->type == T_LAYERS || s->type == T_BLOCK_INDEX || s->type == T_LAYER_CODES ||
            pk->problem[i] != PROB_NONE)
            continue;
        if (s->end > n) set_problem(pk, i, PROB_TRUNCATED);
        else if (rp_crc32c(0, buf + s->offset, (size_t)s->length) != s->crc) set_problem(pk, i, PROB_CHECKSUM);
        else if (s->type == T_CODEC) {
            rc = rp_codec_check_state(buf + s->offset, (size_t)s->length, NULL, 0, NULL, NULL);
            if (rc == RP_E_NOMEM) return rp_fail(err, RP_E_NOMEM, "out of memory checking a CODEC section");
            if (rc != RP_OK) set_problem(pk, i, PROB_INVALID);
        }
    }
    for (i = 0; i < section_count; i++) {
        const pk_section *s = &pk->sections[i];
        int nomem;
        if (s->type != T_METADATA || pk->problem[i] != PROB_NONE) continue;
        if (metadata_ok(buf + s->offset, s->length, &nomem)) {
            pk->metadata = (const char *)buf + s->offset;
            pk->metadata_len = (size_t)s->length;
        } else {
            if (nomem) return rp_fail(err, RP_E_NOMEM, "out of memory reading METADATA");
            set_problem(pk, i, PROB_OTHER);
        }
    }
    return RP_OK;
}

int rp_pack_open_memory(const void *data, size_t size, rp_pack **out, rp_error *err) {
    rp_pack *pk;
    int rc;
    static const uint8_t empty[1] = {0};
    if (out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_open_memory: out is NULL");
    *out = NULL;
    if (data == NULL && size > 0) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_open_memory: data is NULL");
    pk = (rp_pack *)calloc(1, sizeof *pk);
    if (pk == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory opening a pack");
    pk->buf = data != NULL ? (const uint8_t *)data : empty;
    pk->size = size;
    rc = parse_directory(pk, err);
    if (rc != RP_OK) {
        rp_pack_close(pk);
        return rc;
    }
    rp_clear(err);
    *out = pk;
    return RP_OK;
}

int rp_pack_open_file(const char *path, rp_pack **out, rp_error *err) {
    rp_pack *pk = NULL;
    uint8_t *owned = NULL;
    void *map = NULL;
    size_t size = 0;
    int rc;
    if (out == NULL || path == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_open_file: NULL argument");
    *out = NULL;
#if defined(RP_HAVE_MMAP)
    {
        struct stat st;
        int fd = open(path, O_RDONLY);
        if (fd < 0) return rp_fail(err, RP_E_IO, "cannot open the pack file: %s", strerror(errno));
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return rp_fail(err, RP_E_IO, "the pack path is not a readable regular file");
        }
        if ((uint64_t)st.st_size > (uint64_t)((size_t)-1) / 2) {
            close(fd);
            return rp_fail(err, RP_E_IO, "the pack file is too large to map");
        }
        size = (size_t)st.st_size;
        if (size > 0) {
            map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (map == MAP_FAILED) {
                size_t got = 0;
                map = NULL;
                owned = (uint8_t *)malloc(size);
                if (owned == NULL) {
                    close(fd);
                    return rp_fail(err, RP_E_NOMEM, "out of memory reading the pack file");
                }
                while (got < size) {
                    ssize_t r = read(fd, owned + got, size - got);
                    if (r < 0 && errno == EINTR) continue;
                    if (r <= 0) break;
                    got += (size_t)r;
                }
                if (got != size) {
                    free(owned);
                    close(fd);
                    return rp_fail(err, RP_E_IO, "the pack file could not be read");
                }
            }
        }
        close(fd);
    }
#else
    {
        FILE *f = fopen(path, "rb");
        long len;
        if (f == NULL) return rp_fail(err, RP_E_IO, "cannot open the pack file");
        if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
            fclose(f);
            return rp_fail(err, RP_E_IO, "the pack file could not be read");
        }
        size = (size_t)len;
        if (size > 0) {
            owned = (uint8_t *)malloc(size);
            if (owned == NULL) {
                fclose(f);
                return rp_fail(err, RP_E_NOMEM, "out of memory reading the pack file");
            }
            if (fread(owned, 1, size, f) != size) {
                free(owned);
                fclose(f);
                return rp_fail(err, RP_E_IO, "the pack file could not be read");
            }
        }
        fclose(f);
    }
#endif
    rc = rp_pack_open_memory(map != NULL ? map : (void *)owned, size, &pk, err);
    if (rc != RP_OK) {
#if defined(RP_HAVE_MMAP)
        if (map != NULL) munmap(map, size);
#endif
        free(owned);
        return rc;
    }
    pk->map = map;
    pk->map_size = size;
    pk->owned = owned;
    *out = pk;
    return RP_OK;
}

void rp_pack_close(rp_pack *pack) {
    uint32_t i;
    if (pack == NULL) return;
    if (pack->layers != NULL)
        for (i = 0; i < pack->n_layers; i++) {
            free(pack->layers[i].status);
            rp_codec_free(pack->layers[i].codec);
            rp_entropy_model_free(&pack->layers[i].model);
            free(pack->layers[i].decoded);
            free(pack->layers[i].rq_inv);
        }
    free(pack->layers);
    free(pack->sections);
    free(pack->problem);
    free(pack->ids);
#if defined(RP_HAVE_MMAP)
    if (pack->map != NULL) munmap(pack->map, pack->map_size);
#endif
    free(pack->owned);
    free(pack);
}

/* ---- accessors ------------------------------------------------------------------------------- */
uint64_t rp_pack_n_items(const rp_pack *pack) { return pack ? pack->n_items : 0; }
uint32_t rp_pack_n_layers(const rp_pack *pack) { return pack ? pack->n_layers : 0; }
int rp_pack_truncated(const rp_pack *pack) { return pack && (uint64_t)pack->size < pack->file_length; }
const int64_t *rp_pack_item_ids(const rp_pack *pack) { return pack ? pack->ids : NULL; }

int64_t rp_pack_row_of(const rp_pack *pack, int64_t item_id) {
    uint64_t lo = 0, hi;
    if (pack == NULL || pack->n_items == 0) return -1;
    hi = pack->n_items;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (pack->ids[mid] < item_id) lo = mid + 1;
        else hi = mid;
    }
    return (lo < pack->n_items && pack->ids[lo] == item_id) ? (int64_t)lo : -1;
}

const char *rp_pack_metadata(const rp_pack *pack, size_t *length) {
    if (length != NULL) *length = 0;
    if (pack == NULL || pack->metadata == NULL) return NULL;
    if (length != NULL) *length = pack->metadata_len;
    return pack->metadata;
}

static const uint8_t *layer_status(rp_pack *pk, uint32_t layer);

const uint8_t *rp_pack_layer_codes(const rp_pack *pack, uint32_t layer) {
    const pk_layer *L;
    if (pack == NULL || layer >= pack->n_layers) return NULL;
    L = &pack->layers[layer];
    if (L->flags & 1u) {
        /* decoded on first use: the pack was allocated (non-const) by rp_pack_open_*, its caches may be filled */
        if (layer_status((rp_pack *)(uintptr_t)pack, layer) == NULL) return NULL;
        return L->decoded;
    }
    if (L->codes_offset > (uint64_t)pack->size) return NULL;
    return pack->buf + L->codes_offset;
}

/* ---- entropy models -------------------------------------------------------------------------- */
/* _load_model: RP_OK when the entropy-coded layer's model is usable (parsed into L->model), else why not:
 * RP_E_FORMAT (no ENTROPY_MODEL section for it, or an invalid one), RP_E_CHECKSUM / RP_E_TRUNCATED (its
 * section is damaged), RP_E_UNSUPPORTED (the decoded layer would exceed MAX_DECODED_BYTES). Cached, except
 * RP_E_NOMEM (may succeed later). `err` (may be NULL) gets the reason. */
static int load_model(rp_pack *pk, uint32_t layer, rp_error *err) {
    pk_layer *L = &pk->layers[layer];
    int rc;
    if (L->model_rc >= 0) {
        if (L->model_rc != RP_OK && err != NULL) {
            if (L->model_s == NO_SECTION)
                return rp_fail(err, L->model_rc, "layer %u: entropy-coded layer has no usable ENTROPY_MODEL section", (unsigned)layer);
            if (L->model_rc == RP_E_UNSUPPORTED)
                return rp_fail(err, L->model_rc, "layer %u: %llu items x %u bytes decoded exceed what this runtime holds", (unsigned)layer,
                               (unsigned long long)pk->n_items, (unsigned)L->bpv);
            if (pk->problem[L->model_s] != PROB_NONE)
                return rp_fail(err, L->model_rc, "layer %u: its ENTROPY_MODEL section is %s", (unsigned)layer,
                               pk->problem[L->model_s] == PROB_TRUNCATED ? "truncated" : "damaged (CRC32C mismatch)");
            if (L->model.cdf != NULL)
                return rp_fail(err, L->model_rc, "layer %u: ENTROPY_MODEL has %u bytes per vector, the layer %u", (unsigned)layer,
                               (unsigned)L->model.bytes_per_vector, (unsigned)L->bpv);
            {
                const pk_section *s = &pk->sections[L->model_s];
                rp_entropy_model m;
                rp_error why;
                if (rp_entropy_model_parse(pk->buf + s->offset + 4, (size_t)s->length - 4u, &m, &why) == RP_OK) rp_entropy_model_free(&m);
                return rp_fail(err, L->model_rc, "layer %u: ENTROPY_MODEL section is invalid: %s", (unsigned)layer, why.message);
            }
        }
        return L->model_rc;
    }
    if (L->model_s == NO_SECTION) rc = RP_E_FORMAT;
    else if (pk->problem[L->model_s] != PROB_NONE)
        rc = pk->problem[L->model_s] == PROB_TRUNCATED ? RP_E_TRUNCATED : pk->problem[L->model_s] == PROB_CHECKSUM ? RP_E_CHECKSUM : RP_E_FORMAT;
    else {
        const pk_section *s = &pk->sections[L->model_s]; /* CRC-checked, inside the buffer, >= 4 bytes */
        rc = rp_entropy_model_parse(pk->buf + s->offset + 4, (size_t)s->length - 4u, &L->model, NULL);
        if (rc == RP_E_NOMEM) return rp_fail(err, RP_E_NOMEM, "out of memory loading the entropy model of layer %u", (unsigned)layer);
        if (rc != RP_OK) rc = RP_E_FORMAT;
        else if (L->model.bytes_per_vector != L->bpv) rc = RP_E_FORMAT; /* the model is kept for the message */
        else if (pk->n_items > MAX_DECODED_BYTES / L->bpv || pk->n_items * L->bpv > (uint64_t)(((size_t)-1) / 2))
            rc = RP_E_UNSUPPORTED;
    }
    L->model_rc = rc;
    return err != NULL && rc != RP_OK ? load_model(pk, layer, err) : rc;
}

/* ---- blocks ---------------------------------------------------------------------------------- */
/* The status every block of a layer shares when the layer itself is unusable, or RP_OK (_layer_problem: an
 * entropy-coded layer's model first, then its CODEC section). RP_E_NOMEM when the model could not be loaded. */
static int layer_problem(rp_pack *pk, uint32_t layer) {
    const pk_layer *L = &pk->layers[layer];
    if (L->flags & 1u) {
        int rc = load_model(pk, layer, NULL);
        if (rc != RP_OK) return rc;
    }
    switch (pk->problem[L->codec_s]) {
    case PROB_NONE: return RP_OK;
    case PROB_INVALID: return RP_E_FORMAT;
    default: return RP_E_CHECKSUM;
    }
}

/* Drop the whole pages inside [lo, hi) of a file-mapped pack from memory (MADV_DONTNEED: they are clean file
 * pages, read again from the page cache if touched later). A scanner that copies its codes into its own layout
 * (4-bit PQ) calls it as the copy goes, so the mapped codes and their copy are never both resident. A no-op
 * for packs in caller memory and where madvise is unavailable. */
static void drop_pages(const rp_pack *pk, const uint8_t *lo, const uint8_t *hi) {
#if defined(RP_HAVE_MMAP) && defined(MADV_DONTNEED)
    long ps;
    uintptr_t a, b;
    if (pk->map == NULL || hi <= lo) return;
    ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0) return;
    a = ((uintptr_t)lo + (uintptr_t)ps - 1u) & ~((uintptr_t)ps - 1u);
    b = (uintptr_t)hi & ~((uintptr_t)ps - 1u);
    if (b > a) (void)madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
#else
    (void)pk, (void)lo, (void)hi;
#endif
}

static void release_codes(void *ctx, const uint8_t *lo, const uint8_t *hi) { drop_pages((const rp_pack *)ctx, lo, hi); }

/* The status of every block of a layer (_block_problems), computed once. An entropy-coded layer's intact
 * blocks (CRC32C matches) are decoded here into L->decoded; one that does not decode is RP_E_CHECKSUM. NULL
 * when out of memory (nothing cached then). */
static const uint8_t *layer_status(rp_pack *pk, uint32_t layer) {
    pk_layer *L = &pk->layers[layer];
    uint8_t *status, *decoded = NULL;
    uint32_t k;
    int lp;
    if (L->status != NULL) return L->status;
    lp = layer_problem(pk, layer);
    if (lp == RP_E_NOMEM) return NULL;
    status = (uint8_t *)malloc(L->n_blocks ? L->n_blocks : 1u);
    if (status == NULL) return NULL;
    if (lp == RP_OK && (L->flags & 1u)) {
        /* load_model checked n_items * B <= MAX_DECODED_BYTES (and half the address space) */
        size_t bytes = (size_t)(pk->n_items * L->bpv);
        decoded = (uint8_t *)calloc(bytes ? bytes : 1u, 1);
        if (decoded == NULL) {
            free(status);
            return NULL;
        }
    }
    for (k = 0; k < L->n_blocks; k++) {
        const uint8_t *e = L->entries + (size_t)k * BLOCK_SIZE;
        uint64_t off = rp_le64(e + 8), len = rp_le32(e + 16);
        if (lp != RP_OK) status[k] = (uint8_t)lp;
        else if (off + len > (uint64_t)pk->size) status[k] = RP_E_TRUNCATED;
        else if (rp_crc32c(0, pk->buf + off, (size_t)len) != rp_le32(e + 20)) status[k] = RP_E_CHECKSUM;
        else if (decoded != NULL) {
            uint64_t first = (uint64_t)k * L->ipb;
            uint64_t rows = pk->n_items - first < L->ipb ? pk->n_items - first : L->ipb;
            int rc = rp_entropy_decode_block(&L->model, pk->buf + off, (size_t)len, rows, decoded + (size_t)(first * L->bpv), NULL);
            status[k] = (uint8_t)(rc == RP_OK ? RP_OK : RP_E_CHECKSUM);
        } else status[k] = RP_OK;
    }
    L->decoded = decoded;
    L->status = status;
    return L->status;
}

int rp_pack_block_status(rp_pack *pack, uint32_t layer, uint32_t block) {
    const uint8_t *st;
    if (pack == NULL || layer >= pack->n_layers || block >= pack->layers[layer].n_blocks) return RP_E_ARGUMENT;
    st = layer_status(pack, layer);
    if (st == NULL) return RP_E_NOMEM;
    return st[block];
}

static uint64_t block_rows(const rp_pack *pk, const pk_layer *L, uint32_t k) {
    uint64_t first = (uint64_t)k * L->ipb;
    return pk->n_items - first < L->ipb ? pk->n_items - first : L->ipb;
}

/* The rows a scanner of the layer reads, from its block statuses `st`: rows [0, *n_avail) (the blocks beyond the end
 * of a truncated pack are a suffix: the rows before them), less the merged row ranges of the other damaged blocks
 * (*ranges, malloc'ed, NULL when none; *n_bad counts every damaged block). RP_OK or RP_E_NOMEM. */
static int layer_rows(const rp_pack *pk, uint32_t layer, const uint8_t *st, rp_row_range **ranges, size_t *n_ranges,
                      uint64_t *n_avail, uint32_t *n_bad) {
    const pk_layer *L = &pk->layers[layer];
    uint32_t k;
    *ranges = NULL;
    *n_ranges = 0;
    *n_bad = 0;
    *n_avail = pk->n_items;
    for (k = 0; k < L->n_blocks; k++) {
        if (st[k] == RP_E_TRUNCATED && *n_avail == pk->n_items) *n_avail = (uint64_t)k * L->ipb;
        if (st[k] != RP_OK) (*n_bad)++;
    }
    if (*n_bad == 0) return RP_OK;
    *ranges = (rp_row_range *)malloc(*n_bad * sizeof(rp_row_range));
    if (*ranges == NULL) return RP_E_NOMEM;
    for (k = 0; k < L->n_blocks; k++) {
        uint64_t lo = (uint64_t)k * L->ipb, hi = lo + block_rows(pk, L, k);
        if (st[k] == RP_OK || lo >= *n_avail) continue;
        if (hi > *n_avail) hi = *n_avail;
        if (*n_ranges > 0 && (*ranges)[*n_ranges - 1].hi == lo) (*ranges)[*n_ranges - 1].hi = hi;
        else {
            (*ranges)[*n_ranges].lo = lo;
            (*ranges)[*n_ranges].hi = hi;
            (*n_ranges)++;
        }
    }
    return RP_OK;
}

/* The layer's codes as a scanner reads them: the decoded array of an entropy-coded layer, else inside the buffer. */
static const uint8_t *layer_code_base(const rp_pack *pk, const pk_layer *L) {
    if (L->flags & 1u) return L->decoded;
    return L->codes_offset <= (uint64_t)pk->size ? pk->buf + L->codes_offset : pk->buf;
}

/* rq -n: the layer's inverse reconstruction norms of every stage prefix (L->rq_inv), computed once from the rows a
 * scanner reads (needs the codec and the block statuses). RP_OK (also when the codec is not rq -n: nothing to do),
 * RP_E_NOMEM. */
static int layer_rq_norms(rp_pack *pk, uint32_t layer, const rp_codec *codec, const uint8_t *st, rp_error *err) {
    pk_layer *L = &pk->layers[layer];
    rp_row_range *ranges;
    size_t n_ranges;
    uint64_t n_avail;
    uint32_t n_bad;
    float *inv;
    int rc;
    if (L->rq_inv != NULL || codec == NULL || codec->family != RP_FAM_RQ || !codec->rq_unit) return RP_OK;
    if (layer_rows(pk, layer, st, &ranges, &n_ranges, &n_avail, &n_bad) != RP_OK)
        return rp_fail(err, RP_E_NOMEM, "out of memory");
    /* n_stages floats per row: fewer than the row's code bytes (each stage holds >= 1 byte), checked anyway */
    if (n_avail > (uint64_t)((size_t)-1 / sizeof(float) / codec->n_stages)) {
        free(ranges);
        return rp_fail(err, RP_E_NOMEM, "layer %u: %llu rows x %u stages of rq norms do not fit in memory", (unsigned)layer,
                       (unsigned long long)n_avail, (unsigned)codec->n_stages);
    }
    inv = (float *)calloc(n_avail ? (size_t)n_avail * codec->n_stages : 1u, sizeof(float));
    if (inv == NULL) {
        free(ranges);
        return rp_fail(err, RP_E_NOMEM, "out of memory for the rq norms of layer %u", (unsigned)layer);
    }
    rc = rp_rq_inv_norms(codec, layer_code_base(pk, L), n_avail, L->bpv, ranges, n_ranges, inv, err);
    free(ranges);
    if (rc != RP_OK) {
        free(inv);
        return rc;
    }
    L->rq_inv = inv;
    L->rq_inv_n = n_avail;
    return RP_OK;
}

/* Fill the rq -n norms once both the codec and the block statuses are cached (after rp_pack_verify and
 * rp_pack_layer_codec, in either order, so a pack prepared that way is shared read-only); failures are left to
 * rp_pack_scanner, which computes them again. */
static void rq_norms_when_ready(rp_pack *pk, uint32_t layer) {
    const pk_layer *L = &pk->layers[layer];
    if (L->status != NULL && L->codec != NULL && L->codec_rc == RP_OK && L->rq_inv == NULL && layer_problem(pk, layer) == RP_OK)
        (void)layer_rq_norms(pk, layer, L->codec, L->status, NULL);
}

int rp_pack_verify(rp_pack *pack, rp_verify_report *report, rp_error *err) {
    uint32_t i, k;
    rp_verify_report r;
    if (pack == NULL || report == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_verify: NULL argument");
    memset(&r, 0, sizeof r);
    r.truncated = rp_pack_truncated(pack);
    r.section_problems = pack->n_problems;
    for (i = 0; i < pack->n_layers; i++) {
        const uint8_t *st = layer_status(pack, i);
        if (st == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory verifying a pack");
        for (k = 0; k < pack->layers[i].n_blocks; k++)
            if (st[k] != RP_OK) {
                r.bad_blocks++;
                r.missing_items += block_rows(pack, &pack->layers[i], k);
            }
        rq_norms_when_ready(pack, i);
    }
    *report = r;
    rp_clear(err);
    return RP_OK;
}

int rp_pack_bad_blocks(rp_pack *pack, uint32_t layer, uint32_t *blocks, size_t cap, size_t *n_bad, rp_error *err) {
    const uint8_t *st;
    size_t count = 0;
    uint32_t k;
    if (pack == NULL || n_bad == NULL || (blocks == NULL && cap > 0))
        return rp_fail(err, RP_E_ARGUMENT, "rp_pack_bad_blocks: NULL argument");
    if (layer >= pack->n_layers) return rp_fail(err, RP_E_ARGUMENT, "layer %u is out of range (the pack has %u)", (unsigned)layer, (unsigned)pack->n_layers);
    st = layer_status(pack, layer);
    if (st == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory");
    for (k = 0; k < pack->layers[layer].n_blocks; k++)
        if (st[k] != RP_OK) {
            if (count < cap) blocks[count] = k;
            count++;
        }
    *n_bad = count;
    rp_clear(err);
    return RP_OK;
}

/* ---- layers and codecs ----------------------------------------------------------------------- */
static int codec_section_error(const rp_pack *pk, uint32_t layer, rp_error *err) {
    const pk_layer *L = &pk->layers[layer];
    switch (pk->problem[L->codec_s]) {
    case PROB_TRUNCATED: return rp_fail(err, RP_E_TRUNCATED, "layer %u: its CODEC section is truncated", (unsigned)layer);
    case PROB_CHECKSUM: return rp_fail(err, RP_E_CHECKSUM, "layer %u: its CODEC section CRC32C mismatch", (unsigned)layer);
    case PROB_INVALID: return rp_fail(err, RP_E_CODEC, "layer %u: its CODEC section is invalid", (unsigned)layer);
    default: return RP_OK;
    }
}

int rp_pack_layer_codec(rp_pack *pack, uint32_t layer, const rp_codec **out, rp_error *err) {
    pk_layer *L;
    const pk_section *s;
    int rc;
    if (out != NULL) *out = NULL;
    if (pack == NULL || out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_layer_codec: NULL argument");
    if (layer >= pack->n_layers) return rp_fail(err, RP_E_ARGUMENT, "layer %u is out of range (the pack has %u)", (unsigned)layer, (unsigned)pack->n_layers);
    L = &pack->layers[layer];
    if ((rc = codec_section_error(pack, layer, err)) != RP_OK) return rc;
    if (L->codec_rc < 0) {
        rp_codec *c = NULL;
        s = &pack->sections[L->codec_s];
        rp_clear(&L->codec_err);
        rc = rp_codec_open(pack->buf + s->offset, (size_t)s->length, &c, &L->codec_err);
        if (rc == RP_OK && c->bytes_per_vector != L->bpv) {
            rc = rp_fail(&L->codec_err, RP_E_FORMAT, "layer %u: codec '%s' has %u bytes per vector, the layer says %u",
                         (unsigned)layer, c->spec, (unsigned)c->bytes_per_vector, (unsigned)L->bpv);
            rp_codec_free(c);
            c = NULL;
        }
        if (rc == RP_E_NOMEM) return rp_fail(err, rc, "%s", L->codec_err.message); /* not cached: may succeed later */
        L->codec = c;
        L->codec_rc = rc;
        if (rc == RP_OK) rq_norms_when_ready(pack, layer);
    }
    if (L->codec_rc != RP_OK) return rp_fail(err, L->codec_rc, "%s", L->codec_err.message);
    *out = L->codec;
    rp_clear(err);
    return RP_OK;
}

int rp_pack_layer_info(rp_pack *pack, uint32_t layer, rp_layer_info *out, rp_error *err) {
    const pk_layer *L;
    const pk_section *s;
    const rp_codec *codec;
    char spec[64];
    uint32_t dim = 0;
    int rc;
    if (pack == NULL || out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_layer_info: NULL argument");
    if (layer >= pack->n_layers) return rp_fail(err, RP_E_ARGUMENT, "layer %u is out of range (the pack has %u)", (unsigned)layer, (unsigned)pack->n_layers);
    L = &pack->layers[layer];
    s = &pack->sections[L->codec_s];
    memset(out, 0, sizeof *out);
    out->index = layer;
    out->bytes_per_vector = L->bpv;
    out->items_per_block = L->ipb;
    out->n_blocks = L->n_blocks;
    out->entropy_coded = (L->flags & 1u) ? 1 : 0;
    if (pack->problem[L->codec_s] == PROB_NONE &&
        rp_codec_check_state(pack->buf + s->offset, (size_t)s->length, spec, sizeof spec, &dim, NULL) == RP_OK) {
        size_t i;
        out->dim = dim;
        for (i = 0; spec[i] != '\0'; i++)
            if ((unsigned char)spec[i] < 0x20 || (unsigned char)spec[i] >= 0x7F) spec[i] = '?';
        memcpy(out->spec, spec, sizeof out->spec);
        rp_codec_family_of_spec(spec, out->family, sizeof out->family);
    }
    if (out->entropy_coded && (rc = load_model(pack, layer, NULL)) != RP_OK) {
        if (rc == RP_E_NOMEM) return rp_fail(err, RP_E_NOMEM, "out of memory loading the entropy model of layer %u", (unsigned)layer);
        out->status = rc; /* its ENTROPY_MODEL is missing, damaged or invalid (or it decodes too large) */
    } else if ((rc = codec_section_error(pack, layer, NULL)) != RP_OK) out->status = rc;
    else {
        rc = rp_pack_layer_codec(pack, layer, &codec, NULL);
        out->status = rc;
        if (rc == RP_OK) snprintf(out->family, sizeof out->family, "%s", codec->family_name);
        if (rc == RP_E_NOMEM) return rp_fail(err, RP_E_NOMEM, "out of memory loading the codec of layer %u", (unsigned)layer);
    }
    rp_clear(err);
    return RP_OK;
}

/* ---- ranking --------------------------------------------------------------------------------- */
int rp_pack_scanner(rp_pack *pack, uint32_t layer, const rp_scan_options *opts, rp_scanner **out, rp_error *err) {
    const rp_codec *codec;
    const pk_layer *L;
    const uint8_t *st;
    const float *inv = NULL;
    rp_scan_options o;
    rp_row_range *ranges = NULL;
    size_t n_ranges = 0;
    uint64_t n_avail;
    uint32_t n_bad = 0;
    rp_scanner *sc = NULL;
    int rc;
    if (out != NULL) *out = NULL;
    if (pack == NULL || out == NULL) return rp_fail(err, RP_E_ARGUMENT, "rp_pack_scanner: NULL argument");
    if (layer >= pack->n_layers) return rp_fail(err, RP_E_ARGUMENT, "layer %u is out of range (the pack has %u)", (unsigned)layer, (unsigned)pack->n_layers);
    L = &pack->layers[layer];
    if ((L->flags & 1u) && (rc = load_model(pack, layer, err)) != RP_OK) return rc; /* the model first, as _layer_problem */
    if ((rc = rp_pack_layer_codec(pack, layer, &codec, err)) != RP_OK) return rc;
    st = layer_status(pack, layer);
    if (st == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory");
    if (layer_rows(pack, layer, st, &ranges, &n_ranges, &n_avail, &n_bad) != RP_OK)
        return rp_fail(err, RP_E_NOMEM, "out of memory");
    if (L->n_blocks > 0 && n_bad == L->n_blocks) {
        free(ranges);
        return rp_fail(err, RP_E_DAMAGED, "layer %u: all %u blocks are damaged or missing", (unsigned)layer, (unsigned)L->n_blocks);
    }
    /* a layer's rows are whole codes: a stage prefix (rq, rabitq) is read in place at the layer's width */
    memset(&o, 0, sizeof o);
    if (opts != NULL) o = *opts;
    if (o.stride == 0) o.stride = L->bpv;
    if (o.stride != L->bpv) {
        free(ranges);
        return rp_fail(err, RP_E_ARGUMENT, "layer %u: stride %zu is not the layer's %u bytes per vector", (unsigned)layer,
                       o.stride, (unsigned)L->bpv);
    }
    opts = &o;
    if (codec->family == RP_FAM_RQ && codec->rq_unit) {
        /* rq -n: the layer's norms, computed once (a stage count out of range: the scanner refuses the options) */
        uint32_t stages = o.stages;
        if (stages <= codec->n_stages) {
            if ((rc = layer_rq_norms(pack, layer, codec, st, err)) != RP_OK) {
                free(ranges);
                return rc;
            }
            if (L->rq_inv_n == n_avail) inv = L->rq_inv + (size_t)((stages == 0 ? codec->n_stages : stages) - 1u) * (size_t)n_avail;
        }
    }
    /* the damaged rows are never read (a corrupt block may hold code values the codec refuses); an entropy-coded
     * layer is ranked from its decoded array (pack-owned heap memory: nothing to release) */
    if (L->flags & 1u)
        rc = rp_scanner_new_release(codec, L->decoded, n_avail, opts, ranges, n_ranges, NULL, NULL, inv, &sc, err);
    else
        rc = rp_scanner_new_release(codec, layer_code_base(pack, L), n_avail, opts, ranges, n_ranges, release_codes, pack,
                                    inv, &sc, err);
    free(ranges);
    if (rc != RP_OK) return rc;
    *out = sc;
    return RP_OK;
}

int rp_pack_search(rp_pack *pack, uint32_t layer, const float *query, uint32_t k, const int64_t *exclude_ids,
                   size_t n_exclude, int64_t *out_ids, float *out_scores, uint32_t *n_out, rp_error *err) {
    rp_scanner *sc = NULL;
    int64_t *rows = NULL;
    size_t i, n_rows = 0;
    uint32_t j;
    int rc;
    if (n_out != NULL) *n_out = 0;
    if (pack == NULL || query == NULL || out_ids == NULL || out_scores == NULL || n_out == NULL ||
        (exclude_ids == NULL && n_exclude > 0))
        return rp_fail(err, RP_E_ARGUMENT, "rp_pack_search: NULL argument");
    if (n_exclude > 0) {
        if (n_exclude > ((size_t)-1) / sizeof(int64_t)) return rp_fail(err, RP_E_ARGUMENT, "too many excluded ids");
        rows = (int64_t *)malloc(n_exclude * sizeof(int64_t));
        if (rows == NULL) return rp_fail(err, RP_E_NOMEM, "out of memory");
        for (i = 0; i < n_exclude; i++) {
            int64_t r = rp_pack_row_of(pack, exclude_ids[i]);
            if (r >= 0) rows[n_rows++] = r;
        }
    }
    rc = rp_pack_scanner(pack, layer, NULL, &sc, err);
    if (rc == RP_OK) {
        rc = rp_scanner_search(sc, query, k, rows, n_rows, out_ids, out_scores, n_out, err);
        if (rc == RP_OK)
            for (j = 0; j < *n_out; j++) out_ids[j] = pack->ids[out_ids[j]];
        else
            *n_out = 0;
    }
    rp_scanner_free(sc);
    free(rows);
    return rc;
}
