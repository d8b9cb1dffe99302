/* Tests of the reader half of the runtime: CRC32C, the JSON reader, codec states (RPCS), packs (the golden
 * vectors of tests/format/vectors, every single-bit flip and every truncation of three of them, entropy-coded
 * blocks and models that pass their CRC32C but do not decode / parse), and the refinement frame. Run as: test_reader VECTORS_DIR (tests/format/vectors). Exit status 0 when all pass. */
#include "internal.h"
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int g_checks = 0, g_failed = 0;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        g_checks++;                                                         \
        if (!(cond)) {                                                      \
            g_failed++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

/* ---- small helpers ------------------------------------------------------------------------------ */
static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    if (f == NULL) return NULL;
    for (;;) {
        size_t got;
        if (n == cap) {
            uint8_t *g;
            cap = cap ? cap * 2 : 4096;
            g = (uint8_t *)realloc(buf, cap + 1);
            if (g == NULL) { free(buf); fclose(f); return NULL; }
            buf = g;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    *size = n;
    return buf;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Hex text (whitespace ignored) to bytes. */
static uint8_t *decode_hex(const char *text, size_t len, size_t *out_len) {
    uint8_t *out = (uint8_t *)malloc(len / 2 + 1);
    size_t i, n = 0;
    int hi = -1;
    *out_len = 0;
    if (out == NULL) return NULL;
    for (i = 0; i < len; i++) {
        int v = hexval((unsigned char)text[i]);
        if (v < 0) continue;
        if (hi < 0) hi = v;
        else {
            out[n++] = (uint8_t)(hi * 16 + v);
            hi = -1;
        }
    }
    *out_len = n;
    return out;
}

static void put_le16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_le32(uint8_t *p, uint32_t v) { put_le16(p, v & 0xFFFFu); put_le16(p + 2, v >> 16); }

/* ---- CRC32C ------------------------------------------------------------------------------------- */
static void test_crc(void) {
    static const char *nine = "123456789";
    uint8_t *buf = (uint8_t *)malloc(4096 + 16);
    uint32_t x = 12345u, i;
    size_t off, len;
    CHECK(rp_crc32c(0, nine, 9) == 0xE3069283u, "crc of 123456789 is %08x", (unsigned)rp_crc32c(0, nine, 9));
    CHECK(rp_crc32c_portable(0, nine, 9) == 0xE3069283u, "table crc");
    CHECK(rp_crc32c(0, "", 0) == 0u, "empty");
    CHECK(rp_crc32c(rp_crc32c(0, nine, 4), nine + 4, 5) == 0xE3069283u, "continuing convention");
    {
        uint8_t zeros[32];
        memset(zeros, 0, sizeof zeros);
        CHECK(rp_crc32c(0, zeros, 32) == 0x8A9136AAu, "32 zero bytes: %08x", (unsigned)rp_crc32c(0, zeros, 32));
        memset(zeros, 0xFF, sizeof zeros);
        CHECK(rp_crc32c(0, zeros, 32) == 0x62A8AB43u, "32 0xFF bytes: %08x", (unsigned)rp_crc32c(0, zeros, 32));
    }
    if (buf == NULL) { CHECK(0, "no memory"); return; }
    for (i = 0; i < 4096 + 16; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    for (off = 0; off < 9; off++)
        for (len = 0; len < 300; len += (len < 40 ? 1 : 37)) {
            uint32_t a = rp_crc32c(0x1234567u, buf + off, len), b = rp_crc32c_portable(0x1234567u, buf + off, len);
            CHECK(a == b, "hw %08x != table %08x at off %u len %u", (unsigned)a, (unsigned)b, (unsigned)off, (unsigned)len);
            if (len > 3) {
                uint32_t c = rp_crc32c(rp_crc32c(0, buf + off, 3), buf + off + 3, len - 3);
                CHECK(c == rp_crc32c(0, buf + off, len), "split crc at off %u len %u", (unsigned)off, (unsigned)len);
            }
        }
    CHECK(rp_crc32c(0, buf + 1, 4095) == rp_crc32c_portable(0, buf + 1, 4095), "long unaligned");
    printf("crc32c: instruction path %s\n", rp_crc32c_hw() ? "used" : "not available (table only)");
    free(buf);
}

/* ---- JSON --------------------------------------------------------------------------------------- */
static int json_ok(const char *s) {
    rp_json j;
    char why[96];
    int rc = rp_json_parse(s, strlen(s), &j, why, sizeof why);
    if (rc == 0) rp_json_free(&j);
    return rc == 0;
}

static void test_json(void) {
    rp_json j;
    const rp_json_node *n;
    char deep[2200];
    int i, rc;
    CHECK(json_ok("{}"), "empty object");
    CHECK(json_ok(" [1, -2, 3.5e3, true, false, null, \"a\\u00e9\\n\", NaN, -Infinity, {\"k\": []}] "), "mixed");
    CHECK(!json_ok(""), "empty text");
    CHECK(!json_ok("[1,]"), "trailing comma");
    CHECK(!json_ok("{\"a\" 1}"), "missing colon");
    CHECK(!json_ok("[01]"), "leading zero");
    CHECK(!json_ok("[1] x"), "extra data");
    CHECK(!json_ok("\"a\tb\""), "control character");
    CHECK(!json_ok("\"\\x\""), "bad escape");
    CHECK(!json_ok("\"\xff\""), "invalid UTF-8");
    CHECK(!json_ok("\"\xed\xa0\x80\""), "UTF-8 surrogate");
    CHECK(!json_ok("\"\xc0\xaf\""), "overlong UTF-8");
    CHECK(json_ok("\"\xf0\x9f\x98\x80\""), "4-byte UTF-8");
    CHECK(!json_ok("[1"), "unterminated");
    CHECK(!json_ok("{\"a\":1,}"), "trailing comma in object");
    CHECK(!json_ok("\xef\xbb\xbf{}"), "BOM");
    for (i = 0; i < 1000; i++) deep[i] = '[';
    for (i = 0; i < 1000; i++) deep[1000 + i] = ']';
    deep[2000] = '\0';
    CHECK(!json_ok(deep), "1000 levels are too deep");
    deep[500] = '\0';
    memset(deep + 500, ']', 500);
    memset(deep, '[', 500);
    deep[1000] = '\0';
    CHECK(json_ok(deep), "500 levels are fine");
    {
        const char *t = "{\"a\": 1, \"b\": {\"c\": \"x\"}, \"a\": 9223372036854775807, \"n\": 99999999999999999999}";
        rc = rp_json_parse(t, strlen(t), &j, NULL, 0);
    }
    if (rc == 0) {
        n = rp_json_get(&j, &j.nodes[0], "a");
        CHECK(n != NULL && n->is_int && !n->big && n->ival == INT64_MAX, "last duplicate wins, int64 max");
        n = rp_json_get(&j, &j.nodes[0], "n");
        CHECK(n != NULL && n->is_int && n->big, "big integer flagged");
        n = rp_json_get(&j, rp_json_get(&j, &j.nodes[0], "b"), "c");
        CHECK(rp_json_is_str(n, "x"), "nested string");
        rp_json_free(&j);
    } else {
        CHECK(0, "parse of a valid object failed");
    }
    if (rp_json_parse("\"\\ud83d\\ude00\\u0041\"", 20, &j, NULL, 0) == 0) {
        CHECK(j.nodes[0].len == 5 && memcmp(j.nodes[0].str, "\xf0\x9f\x98\x80" "A", 5) == 0, "surrogate pair decoded");
        rp_json_free(&j);
    } else {
        CHECK(0, "surrogate pair escape failed");
    }
}

/* ---- codec states ------------------------------------------------------------------------------- */
/* An RPCS state from a JSON header and a payload. */
static uint8_t *make_state(const char *header, const uint8_t *payload, size_t payload_len, uint16_t version, size_t *size) {
    size_t h = strlen(header);
    uint8_t *s = (uint8_t *)malloc(10 + h + payload_len + 1);
    memcpy(s, "RPCS", 4);
    put_le16(s + 4, version);
    put_le32(s + 6, (uint32_t)h);
    memcpy(s + 10, header, h);
    if (payload_len) memcpy(s + 10 + h, payload, payload_len);
    *size = 10 + h + payload_len;
    return s;
}

static void put_f32s(uint8_t *dst, const float *v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        put_le32(dst + 4 * i, u);
    }
}

static int open_state(const char *header, const uint8_t *payload, size_t payload_len, uint16_t version, rp_codec **out) {
    size_t size;
    uint8_t *s = make_state(header, payload, payload_len, version, &size);
    rp_error err;
    rp_codec *c = NULL;
    int rc = rp_codec_open(s, size, &c, &err);
    CHECK(rc == err.code, "error code filled (%d vs %d)", rc, err.code);
    free(s);
    if (out != NULL) *out = c;
    else rp_codec_free(c);
    return rc;
}

static void test_codecs(void) {
    uint8_t payload[4096 * 4];
    float f[4096];
    rp_codec *c;
    char hdr[1024];
    int rc, i;
    size_t size;
    uint8_t *s;

    /* float32 and the spec normalisation */
    rc = open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \" FLAT \"}", NULL, 0, 1, &c);
    CHECK(rc == RP_OK, "flat opens: %s", rp_status_name(rc));
    if (c) {
        CHECK(strcmp(rp_codec_spec(c), "float32") == 0 && strcmp(rp_codec_family(c), "float32") == 0, "spec %s", rp_codec_spec(c));
        CHECK(rp_codec_bytes_per_vector(c) == 16 && rp_codec_dim(c) == 4 && rp_codec_stages(c) == 1, "float32 sizes");
        rp_codec_free(c);
    }
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 2, NULL) == RP_E_VERSION, "version 2");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {\"x\": 1}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "fp16 with meta");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4.0, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "float dim");
    CHECK(open_state("{\"arrays\": [], \"dim\": true, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "bool dim");
    CHECK(open_state("{\"arrays\": [], \"dim\": 0, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "dim 0");
    CHECK(open_state("{\"arrays\": [], \"dim\": 1048577, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "dim 2^20+1");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": [], \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "meta list");
    CHECK(open_state("{\"arrays\": {}, \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "arrays object");
    CHECK(open_state("{\"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "no arrays");
    CHECK(open_state("[1]", NULL, 0, 1, NULL) == RP_E_CODEC, "header not an object");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"", NULL, 0, 1, NULL) == RP_E_CODEC, "broken JSON");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"f\xffp\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "bad UTF-8");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\", \"dim\": 8}", NULL, 0, 1, &c) == RP_OK && c &&
              rp_codec_dim(c) == 8, "last duplicate key wins");
    rp_codec_free(c);

    /* hostile structure */
    s = make_state("{}", NULL, 0, 1, &size);
    put_le32(s + 6, 0xFFFFFFFFu);
    {
        rp_error err;
        CHECK(rp_codec_open(s, size, &c, &err) == RP_E_CODEC, "huge header length");
        CHECK(rp_codec_open(s, 9, &c, &err) == RP_E_CODEC, "9 bytes");
        memcpy(s, "RPCX", 4);
        CHECK(rp_codec_open(s, size, &c, &err) == RP_E_CODEC, "bad magic");
        CHECK(rp_codec_open(NULL, 10, &c, &err) == RP_E_ARGUMENT, "NULL state");
    }
    free(s);
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 4, \"offset\": 0, \"shape\": [1099511627776, 1099511627776]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 4, 1, NULL) == RP_E_CODEC, "huge shape");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 0, \"shape\": [2]},"
                     " {\"dtype\": \"<f4\", \"name\": \"b\", \"nbytes\": 8, \"offset\": 4, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "overlapping arrays");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 0, \"shape\": [2]},"
                     " {\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 8, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "repeated name");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \">f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 0, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "big-endian dtype");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 12, \"offset\": 0, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "nbytes mismatch");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 12, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "beyond the payload");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": -1, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "negative offset");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 18446744073709551615, \"shape\": [2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "offset 2^64-1");
    CHECK(open_state("{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"a\", \"nbytes\": 8, \"offset\": 0, \"shape\": [1,1,1,1,1,1,1,1,2]}],"
                     " \"dim\": 4, \"meta\": {}, \"spec\": \"fp16\"}", payload, 16, 1, NULL) == RP_E_CODEC, "9 axes");
    {
        size_t ss;
        uint8_t *st = make_state("{\"arrays\": [], \"dim\": 4, \"meta\": {\"x\": [[[[[[[[1]]]]]]]]}, \"spec\": \"fp16\"}", NULL, 0, 1, &ss);
        uint32_t d = 0;
        char sp[64];
        CHECK(rp_codec_check_state(st, ss, sp, sizeof sp, &d, NULL) == RP_OK && d == 4 && strcmp(sp, "fp16") == 0,
              "structure check accepts a nested meta");
        free(st);
    }

    /* unsupported families */
    {
        rp_error err;
        s = make_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"usq16\"}", NULL, 0, 1, &size);
        rc = rp_codec_open(s, size, &c, &err);
        CHECK(rc == RP_E_UNSUPPORTED && strstr(err.message, "'usq'") != NULL && strstr(err.message, "'usq16'") != NULL,
              "usq: %s %s", rp_status_name(rc), err.message);
        free(s);
        /* rabitq is supported: a state without its arrays is an invalid state, not an unsupported family */
        CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rabitq4\"}", NULL, 0, 1, NULL) == RP_E_CODEC,
              "rabitq4 without arrays");
    }
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"qat-pq16\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "qat");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"wsq16\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "wsq");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"countsketch32\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "countsketch");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"nonsense\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "unknown");
    /* specs the grammar admits but whose parameters are out of range */
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"pq0\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "pq0");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"pq3x4\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "pq3x4");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"opq4,pq2\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "opq4,pq2");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"sq8-p40\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "sq8-p40");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"simhash12\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "simhash12");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq0+4\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq0+4");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq60+5\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq60+5");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"apq4-t1\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "apq4-t1");

    /* sq8 with a percentile: canonical spec; a negative step; a NaN */
    for (i = 0; i < 8; i++) f[i] = i < 4 ? (float)i : 0.5f;
    put_f32s(payload, f, 8);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"lo\", \"nbytes\": 16, \"offset\": 0, \"shape\": [4]},"
             " {\"dtype\": \"<f4\", \"name\": \"step\", \"nbytes\": 16, \"offset\": 16, \"shape\": [4]}], \"dim\": 4, \"meta\": {},"
             " \"spec\": \"%s\"}", "sq8-p99.90");
    rc = open_state(hdr, payload, 32, 1, &c);
    CHECK(rc == RP_OK && c && strcmp(rp_codec_spec(c), "sq8-p99.9") == 0 && c->family == RP_FAM_SQ8 && c->lo[3] == 3.0f &&
              c->step[0] == 0.5f && rp_codec_bytes_per_vector(c) == 4 && ((uintptr_t)c->lo & 63u) == 0,
          "sq8-p99.9: %s %s", rp_status_name(rc), c ? rp_codec_spec(c) : "");
    rp_codec_free(c);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"lo\", \"nbytes\": 16, \"offset\": 0, \"shape\": [4]},"
             " {\"dtype\": \"<f4\", \"name\": \"step\", \"nbytes\": 16, \"offset\": 16, \"shape\": [4]}], \"dim\": 4, \"meta\": {},"
             " \"spec\": \"sq4-p100\"}");
    rc = open_state(hdr, payload, 32, 1, &c);
    CHECK(rc == RP_OK && c && strcmp(rp_codec_spec(c), "sq4-p100") == 0 && rp_codec_bytes_per_vector(c) == 2, "sq4-p100");
    rp_codec_free(c);
    f[5] = -1.0f;
    put_f32s(payload, f, 8);
    CHECK(open_state(hdr, payload, 32, 1, NULL) == RP_E_CODEC, "negative step");
    f[5] = NAN;
    put_f32s(payload, f, 8);
    CHECK(open_state(hdr, payload, 32, 1, NULL) == RP_E_CODEC, "NaN step");
    f[5] = INFINITY;
    put_f32s(payload, f, 8);
    CHECK(open_state(hdr, payload, 32, 1, NULL) == RP_E_CODEC, "Inf step");

    /* pq2 (dim 4, ksub 3), then with a NaN centroid */
    for (i = 0; i < 12; i++) f[i] = (float)i;
    put_f32s(payload, f, 12);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 48, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}], \"dim\": 4, \"meta\": {}, \"spec\": \"pq2\"}");
    rc = open_state(hdr, payload, 48, 1, &c);
    CHECK(rc == RP_OK && c && c->family == RP_FAM_PQ8 && c->m == 2 && c->ksub == 3 && c->dsub == 2 && c->centroids[11] == 11.0f &&
              rp_codec_bytes_per_vector(c) == 2 && strcmp(rp_codec_family(c), "pq") == 0, "pq2: %s", rp_status_name(rc));
    rp_codec_free(c);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 48, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}], \"dim\": 4, \"meta\": {}, \"spec\": \"pq2x4\"}");
    rc = open_state(hdr, payload, 48, 1, &c);
    CHECK(rc == RP_OK && c && c->family == RP_FAM_PQ4 && rp_codec_bytes_per_vector(c) == 1, "pq2x4");
    rp_codec_free(c);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 48, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}], \"dim\": 6, \"meta\": {}, \"spec\": \"pq4\"}");
    CHECK(open_state(hdr, payload, 48, 1, NULL) == RP_E_CODEC, "dim not divisible");
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 48, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}], \"dim\": 4, \"meta\": {}, \"spec\": \"pq2\"}");
    f[7] = NAN;
    put_f32s(payload, f, 12);
    CHECK(open_state(hdr, payload, 48, 1, NULL) == RP_E_CODEC, "NaN centroid");
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f8\", \"name\": \"centroids\", \"nbytes\": 96, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}], \"dim\": 4, \"meta\": {}, \"spec\": \"pq2\"}");
    CHECK(open_state(hdr, payload, 96, 1, NULL) == RP_E_CODEC, "float64 centroids");

    /* opq2,pq2 with the identity rotation, then a non-orthogonal one */
    for (i = 0; i < 12; i++) f[i] = (float)i;
    for (i = 0; i < 16; i++) f[12 + i] = (i % 5 == 0) ? 1.0f : 0.0f;
    put_f32s(payload, f, 28);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 48, \"offset\": 0,"
             " \"shape\": [2, 3, 2]}, {\"dtype\": \"<f4\", \"name\": \"rotation\", \"nbytes\": 64, \"offset\": 48, \"shape\": [4, 4]}],"
             " \"dim\": 4, \"meta\": {}, \"spec\": \"opq2,pq2\"}");
    rc = open_state(hdr, payload, 112, 1, &c);
    CHECK(rc == RP_OK && c && c->family == RP_FAM_OPQ8 && c->rotation != NULL && c->rotation[5] == 1.0f &&
              ((uintptr_t)c->rotation & 63u) == 0 && strcmp(rp_codec_family(c), "opq") == 0, "opq: %s", rp_status_name(rc));
    rp_codec_free(c);
    f[12 + 1] = 0.01f;
    put_f32s(payload, f, 28);
    CHECK(open_state(hdr, payload, 112, 1, NULL) == RP_E_CODEC, "non-orthogonal rotation");

    /* apq: 256 centroids per sub-space, norm_scale, thresholds */
    for (i = 0; i < 2 * 256 * 2; i++) f[i] = (float)(i % 7);
    f[1024] = 1.5f;
    put_f32s(payload, f, 1025);
    {
        static const char *const specs[][2] = {{"apq2", "apq2"}, {"apq2-t0.2", "apq2"}, {"apq2-t.3", "apq2-t0.3"},
                                               {"apq2-t1e-5", "apq2-t1e-05"}, {"apq2-t0.25", "apq2-t0.25"}};
        size_t k;
        for (k = 0; k < sizeof specs / sizeof specs[0]; k++) {
            snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"centroids\", \"nbytes\": 4096, \"offset\": 0,"
                     " \"shape\": [2, 256, 2]}, {\"dtype\": \"<f4\", \"name\": \"norm_scale\", \"nbytes\": 4, \"offset\": 4096,"
                     " \"shape\": [1]}], \"dim\": 4, \"meta\": {}, \"spec\": \"%s\"}", specs[k][0]);
            rc = open_state(hdr, payload, 4100, 1, &c);
            CHECK(rc == RP_OK && c && strcmp(rp_codec_spec(c), specs[k][1]) == 0 && c->family == RP_FAM_PQ8 && c->ksub == 256 &&
                      strcmp(rp_codec_family(c), "apq") == 0, "%s: %s %s", specs[k][0], rp_status_name(rc), c ? rp_codec_spec(c) : "");
            rp_codec_free(c);
        }
        f[1024] = 0.0f;
        put_f32s(payload, f, 1025);
        CHECK(open_state(hdr, payload, 4100, 1, NULL) == RP_E_CODEC, "apq norm_scale 0");
    }

    /* rq2+1-b: stage tables */
    for (i = 0; i < 3 * 256 * 2; i++) f[i] = 0.25f;
    put_f32s(payload, f, 1536);
    put_le32(payload + 6144, 16);                   /* max_beam_size */
    f[0] = 1.0f; f[1] = 2.0f; f[2] = 0.5f; f[3] = 0.5f; /* norm_scale, calib */
    put_f32s(payload + 6148, f, 4);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"codebooks\", \"nbytes\": 6144, \"offset\": 0,"
             " \"shape\": [3, 256, 2]}, {\"dtype\": \"<i4\", \"name\": \"max_beam_size\", \"nbytes\": 4, \"offset\": 6144, \"shape\": [1]},"
             " {\"dtype\": \"<f4\", \"name\": \"norm_scale\", \"nbytes\": 8, \"offset\": 6148, \"shape\": [2]},"
             " {\"dtype\": \"<f4\", \"name\": \"calib\", \"nbytes\": 8, \"offset\": 6156, \"shape\": [2]}],"
             " \"dim\": 2, \"meta\": {}, \"spec\": \"rq2+1-b\"}");
    rc = open_state(hdr, payload, 6164, 1, &c);
    CHECK(rc == RP_OK && c && c->family == RP_FAM_RQ && rp_codec_stages(c) == 2 && rp_codec_bytes_per_vector(c) == 5 &&
              rp_codec_prefix_bytes(c, 1) == 3 && rp_codec_prefix_bytes(c, 2) == 5 && c->cb_col[0] == 0 && c->cb_col[1] == 1 &&
              c->cb_col[2] == 3 && c->n_codebooks == 3 && c->bounds == 1 && strcmp(rp_codec_spec(c), "rq2+1-b") == 0,
          "rq2+1-b: %s", rp_status_name(rc));
    rp_codec_free(c);
    put_le32(payload + 6144, 0);
    CHECK(open_state(hdr, payload, 6164, 1, NULL) == RP_E_CODEC, "rq beam 0");

    /* rq -pD / -n grammar: rq S [+S] [-r] [-pD] [-n] [-b], -pD and -n never with -b, D in 1..8192 without a leading zero */
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p2-b\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq4-p2-b");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-n-b\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq4-n-b");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p9000\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq4-p9000");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p0\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-p0");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p02\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-p02");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p123456\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-p123456");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-p\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-p");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-n-p2\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-n-p2 (order)");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-n-r\"}", NULL, 0, 1, NULL) == RP_E_UNSUPPORTED, "rq4-n-r (order)");
    CHECK(open_state("{\"arrays\": [], \"dim\": 4, \"meta\": {}, \"spec\": \"rq4-n\"}", NULL, 0, 1, NULL) == RP_E_CODEC, "rq4-n without arrays");

    /* rq2+1-r-p2-n on dim 3: codebooks [3, 256, 2], projection [3, 2] (orthonormal columns), mean [3] */
    {
        static const char *const rqpn_fmt =
            "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"codebooks\", \"nbytes\": 6144, \"offset\": 0, \"shape\": [3, 256, 2]},"
            " {\"dtype\": \"<i4\", \"name\": \"max_beam_size\", \"nbytes\": 4, \"offset\": 6144, \"shape\": [1]},"
            " {\"dtype\": \"<f4\", \"name\": \"projection\", \"nbytes\": %d, \"offset\": 6148, \"shape\": [%s]},"
            " {\"dtype\": \"<f4\", \"name\": \"mean\", \"nbytes\": 12, \"offset\": %d, \"shape\": [3]}],"
            " \"dim\": %d, \"meta\": {}, \"spec\": \"%s\"}";
        rp_error err;
        for (i = 0; i < 3 * 256 * 2; i++) f[i] = 0.125f * (float)(i % 7);
        put_f32s(payload, f, 1536);
        put_le32(payload + 6144, 16);
        f[0] = 0.6f; f[1] = 0.0f; /* P = [[0.6, 0], [0.8, 0], [0, 1]] */
        f[2] = 0.8f; f[3] = 0.0f;
        f[4] = 0.0f; f[5] = 1.0f;
        f[6] = 0.5f; f[7] = -1.0f; f[8] = 2.0f; /* mean */
        put_f32s(payload + 6148, f, 9);
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "RQ2+1-R-P2-N");
        rc = open_state(hdr, payload, 6184, 1, &c);
        CHECK(rc == RP_OK && c && c->family == RP_FAM_RQ && strcmp(rp_codec_spec(c), "rq2+1-r-p2-n") == 0 && c->rq_unit == 1 &&
                  c->rq_sub == 2 && rp_rq_width(c) == 2 && c->rq_proj != NULL && c->rq_proj[2] == 0.8f && c->rq_mean[2] == 2.0f &&
                  fabs(c->rq_mean_sq - 5.25) < 1e-12 && fabs(c->rq_pmean[0] - (0.3 - 0.8)) < 1e-6 && fabs(c->rq_pmean[1] - 2.0) < 1e-12 &&
                  rp_codec_stages(c) == 2 && rp_codec_bytes_per_vector(c) == 3 && c->bounds == 0,
              "rq2+1-r-p2-n: %s %s", rp_status_name(rc), c ? rp_codec_spec(c) : "");
        rp_codec_free(c);
        /* the projection's shape against the spec and dim: transposed, D > d, D != the codebooks' width */
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "2, 3", 6172, 3, "rq2+1-p2-n");
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq -p: projection [D, d]");
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-p3-n");
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq -p3 with projection [3, 2]");
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-p4");
        rc = open_state(hdr, payload, 6184, 1, NULL);
        CHECK(rc == RP_E_CODEC, "rq -p4 on dim 3: %s", rp_status_name(rc));
        {
            uint8_t *st = make_state(hdr, payload, 6184, 1, &size);
            rc = rp_codec_open(st, size, &c, &err);
            CHECK(rc == RP_E_CODEC && strstr(err.message, "projects to 4 of only 3") != NULL, "D > d message: %s", err.message);
            free(st);
        }
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 2, "rq2+1-p2-n");
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq -p: dim 2, projection [3, 2]");
        /* -p without -n: no -n flag; -p with -b refused; a projection without a mean */
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-p2");
        rc = open_state(hdr, payload, 6184, 1, &c);
        CHECK(rc == RP_OK && c && c->rq_unit == 0 && c->rq_proj != NULL && strcmp(rp_codec_spec(c), "rq2+1-p2") == 0, "rq2+1-p2");
        rp_codec_free(c);
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-p2-b");
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq2+1-p2-b");
        /* not orthonormal columns (P^T P != I); NaN in the mean */
        f[0] = 0.7f;
        put_f32s(payload + 6148, f, 9);
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-p2-n");
        {
            uint8_t *st = make_state(hdr, payload, 6184, 1, &size);
            rc = rp_codec_open(st, size, &c, &err);
            CHECK(rc == RP_E_CODEC && strstr(err.message, "orthonormal") != NULL, "non-orthonormal projection: %s", err.message);
            free(st);
        }
        f[0] = 0.6f;
        f[7] = NAN;
        put_f32s(payload + 6148, f, 9);
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq -p: NaN mean");
        /* a plain rq-n state (no projection) and one that carries a stray projection */
        snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"codebooks\", \"nbytes\": 6144, \"offset\": 0,"
                 " \"shape\": [3, 256, 2]}, {\"dtype\": \"<i4\", \"name\": \"max_beam_size\", \"nbytes\": 4, \"offset\": 6144,"
                 " \"shape\": [1]}], \"dim\": 2, \"meta\": {}, \"spec\": \"rq2+1-n\"}");
        rc = open_state(hdr, payload, 6148, 1, &c);
        CHECK(rc == RP_OK && c && c->rq_unit == 1 && c->rq_proj == NULL && rp_rq_width(c) == 2 && strcmp(rp_codec_spec(c), "rq2+1-n") == 0,
              "rq2+1-n: %s", rp_status_name(rc));
        rp_codec_free(c);
        snprintf(hdr, sizeof hdr, rqpn_fmt, 24, "3, 2", 6172, 3, "rq2+1-n");
        CHECK(open_state(hdr, payload, 6184, 1, NULL) == RP_E_CODEC, "rq2+1-n with a projection");
    }

    /* simhash16: projection [16, 2], scale */
    for (i = 0; i < 33; i++) f[i] = 0.5f;
    put_f32s(payload, f, 33);
    snprintf(hdr, sizeof hdr, "{\"arrays\": [{\"dtype\": \"<f4\", \"name\": \"projection\", \"nbytes\": 128, \"offset\": 0,"
             " \"shape\": [16, 2]}, {\"dtype\": \"<f4\", \"name\": \"scale\", \"nbytes\": 4, \"offset\": 128, \"shape\": [1]}],"
             " \"dim\": 2, \"meta\": {}, \"spec\": \"simhash16-hamming\"}");
    rc = open_state(hdr, payload, 132, 1, &c);
    CHECK(rc == RP_OK && c && c->family == RP_FAM_HAMMING && c->nbits == 16 && rp_codec_bytes_per_vector(c) == 2 && c->scale == 0.5f,
          "simhash16-hamming: %s", rp_status_name(rc));
    rp_codec_free(c);
}

/* ---- packs: the golden vectors ------------------------------------------------------------------ */
static const char *const VECTORS[] = {"sq8_one_layer", "pq_two_layers_parity", "sq4_entropy", "delta_sq8"};

static uint8_t *load_vector(const char *dir, const char *name, size_t *len, rp_json *expect) {
    char path[1024];
    size_t tl;
    uint8_t *text, *bytes;
    snprintf(path, sizeof path, "%s/%s.hex", dir, name);
    text = read_file(path, &tl);
    if (text == NULL) return NULL;
    bytes = decode_hex((const char *)text, tl, len);
    free(text);
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    text = read_file(path, &tl);
    if (text == NULL || rp_json_parse((const char *)text, tl, expect, NULL, 0) != 0) {
        free(text);
        free(bytes);
        return NULL;
    }
    /* the JSON's strings point into its own pool: the text can go */
    free(text);
    return bytes;
}

static int64_t jint(const rp_json *j, const rp_json_node *obj, const char *key) {
    const rp_json_node *n = rp_json_get(j, obj, key);
    return (n != NULL && n->type == RP_JSON_NUMBER && n->is_int) ? n->ival : -999;
}

static void test_vector(const char *dir, const char *name) {
    rp_json ex;
    size_t len, i;
    uint8_t *bytes = load_vector(dir, name, &len, &ex);
    rp_pack *pk = NULL;
    rp_error err;
    int rc;
    const rp_json_node *root, *ids, *layers, *lay, *id;
    uint32_t l, expected_bad = 0;
    rp_verify_report rep;
    if (bytes == NULL) {
        CHECK(0, "cannot read vector %s from %s", name, dir);
        return;
    }
    root = &ex.nodes[0];
    CHECK((int64_t)len == jint(&ex, root, "length"), "%s: length", name);
    rc = rp_pack_open_memory(bytes, len, &pk, &err);
    CHECK(rc == RP_OK, "%s opens: %s %s", name, rp_status_name(rc), err.message);
    if (rc != RP_OK) goto done;
    CHECK((int64_t)rp_pack_n_items(pk) == jint(&ex, root, "n_items"), "%s: n_items", name);
    ids = rp_json_get(&ex, root, "item_ids");
    for (i = 0, id = rp_json_child(&ex, ids); id != NULL; id = rp_json_next(&ex, id), i++) {
        CHECK(i < rp_pack_n_items(pk) && rp_pack_item_ids(pk)[i] == id->ival, "%s: id %u", name, (unsigned)i);
        CHECK(rp_pack_row_of(pk, id->ival) == (int64_t)i, "%s: row_of", name);
        CHECK(rp_pack_row_of(pk, id->ival + 1) == -1 || rp_pack_item_ids(pk)[i + 1] == id->ival + 1, "%s: row_of absent", name);
    }
    CHECK(i == rp_pack_n_items(pk), "%s: id count", name);
    {
        size_t ml;
        const char *meta = rp_pack_metadata(pk, &ml);
        const rp_json_node *m = rp_json_get(&ex, root, "metadata");
        CHECK((m != NULL && m->type == RP_JSON_OBJECT) == (meta != NULL), "%s: metadata presence", name);
        if (meta != NULL) {
            rp_json mj;
            CHECK(rp_json_parse(meta, ml, &mj, NULL, 0) == 0 && mj.nodes[0].type == RP_JSON_OBJECT &&
                      mj.nodes[0].count == m->count, "%s: metadata parses", name);
            rp_json_free(&mj);
        }
    }
    CHECK(!rp_pack_truncated(pk), "%s: not truncated", name);
    layers = rp_json_get(&ex, root, "layers");
    CHECK(layers != NULL && layers->count == rp_pack_n_layers(pk), "%s: layer count", name);
    for (l = 0, lay = rp_json_child(&ex, layers); lay != NULL; lay = rp_json_next(&ex, lay), l++) {
        rp_layer_info info;
        const rp_json_node *spec = rp_json_get(&ex, lay, "codec"), *codes, *code;
        const rp_json_node *ent = rp_json_get(&ex, lay, "entropy_coded");
        int entropy = ent != NULL && ent->type == RP_JSON_TRUE;
        const uint8_t *cp;
        const rp_codec *codec;
        if (l >= rp_pack_n_layers(pk)) break;
        rc = rp_pack_layer_info(pk, l, &info, &err);
        CHECK(rc == RP_OK, "%s: layer info", name);
        CHECK(spec != NULL && strlen(info.spec) == spec->len && memcmp(info.spec, spec->str, spec->len) == 0, "%s: layer %u spec %s",
              name, (unsigned)l, info.spec);
        CHECK((int64_t)info.dim == jint(&ex, lay, "dim"), "%s: dim", name);
        CHECK((int64_t)info.bytes_per_vector == jint(&ex, lay, "bytes_per_vector"), "%s: bytes_per_vector", name);
        CHECK((int64_t)info.items_per_block == jint(&ex, lay, "items_per_block"), "%s: items_per_block", name);
        CHECK((int64_t)info.n_blocks == jint(&ex, lay, "n_blocks"), "%s: n_blocks", name);
        CHECK(info.entropy_coded == entropy, "%s: entropy flag", name);
        CHECK(info.status == RP_OK, "%s: layer %u status %s", name, (unsigned)l, rp_status_name(info.status));
        rc = rp_pack_layer_codec(pk, l, &codec, &err);
        CHECK(rc == RP_OK && codec != NULL && rp_codec_bytes_per_vector(codec) == info.bytes_per_vector &&
                  strcmp(rp_codec_spec(codec), info.spec) == 0, "%s: layer %u codec: %s", name, (unsigned)l, err.message);
        cp = rp_pack_layer_codes(pk, l);
        if (entropy) /* decoded into pack-owned memory, not a view of the buffer */
            CHECK(cp != NULL && (cp < bytes || cp >= bytes + len) && rp_pack_layer_codes(pk, l) == cp, "%s: decoded codes", name);
        codes = rp_json_get(&ex, lay, "codes");
        CHECK(cp != NULL && codes != NULL && codes->count == rp_pack_n_items(pk), "%s: codes", name);
        if (cp == NULL || codes == NULL) continue;
        for (i = 0, code = rp_json_child(&ex, codes); code != NULL; code = rp_json_next(&ex, code), i++) {
            size_t cl = 0;
            uint8_t *want = decode_hex(code->str, code->len, &cl);
            CHECK(want != NULL && cl == info.bytes_per_vector && memcmp(want, cp + i * info.bytes_per_vector, cl) == 0, "%s: layer %u code %u", name,
                  (unsigned)l, (unsigned)i);
            free(want);
        }
        for (i = 0; i < info.n_blocks; i++) CHECK(rp_pack_block_status(pk, l, (uint32_t)i) == RP_OK, "%s: block %u", name, (unsigned)i);
        CHECK(rp_pack_block_status(pk, l, info.n_blocks) == RP_E_ARGUMENT, "%s: block out of range", name);
    }
    CHECK(rp_pack_layer_info(pk, rp_pack_n_layers(pk), NULL, &err) == RP_E_ARGUMENT, "layer out of range");
    rc = rp_pack_verify(pk, &rep, &err);
    CHECK(rc == RP_OK && rep.section_problems == 0 && rep.bad_blocks == expected_bad && !rep.truncated,
          "%s: verify: %u section problems, %llu bad blocks", name, (unsigned)rep.section_problems, (unsigned long long)rep.bad_blocks);
done:
    rp_pack_close(pk);
    rp_json_free(&ex);
    free(bytes);
}

/* Whether a damaged pack's damage is seen: open fails, or verify or a layer's status reports it. */
static int damage_noticed(const uint8_t *data, size_t len, int *open_rc) {
    rp_pack *pk = NULL;
    rp_error err;
    rp_verify_report rep;
    uint32_t l;
    int seen = 0;
    *open_rc = rp_pack_open_memory(data, len, &pk, &err);
    if (*open_rc != RP_OK) return pk == NULL && err.code == *open_rc && err.message[0] != '\0';
    if (rp_pack_verify(pk, &rep, &err) != RP_OK) seen = 1;
    if (rep.section_problems || rep.bad_blocks || rep.truncated) seen = 1;
    for (l = 0; l < rp_pack_n_layers(pk); l++) {
        rp_layer_info info;
        const rp_codec *c;
        if (rp_pack_layer_info(pk, l, &info, &err) != RP_OK || info.status != RP_OK) seen = 1;
        (void)rp_pack_layer_codec(pk, l, &c, &err);
        (void)rp_pack_layer_codes(pk, l);
    }
    {
        size_t ml;
        (void)rp_pack_metadata(pk, &ml);
        (void)rp_pack_row_of(pk, 7);
    }
    rp_pack_close(pk);
    return seen;
}

static void test_damage(const char *dir, const char *name) {
    rp_json ex;
    size_t len, i;
    uint8_t *bytes = load_vector(dir, name, &len, &ex), *copy;
    int bit, rc, counts[16];
    unsigned missed = 0;
    if (bytes == NULL) {
        CHECK(0, "cannot read vector %s", name);
        return;
    }
    memset(counts, 0, sizeof counts);
    copy = (uint8_t *)malloc(len);
    for (i = 0; i < len; i++)
        for (bit = 0; bit < 8; bit++) {
            memcpy(copy, bytes, len);
            copy[i] ^= (uint8_t)(1u << bit);
            if (!damage_noticed(copy, len, &rc)) missed++;
            counts[rc & 15]++;
        }
    CHECK(missed == 0, "%s: %u single-bit flips went unnoticed", name, missed);
    printf("%s: %lu bit flips: open OK %d, NOT_A_PACK %d, VERSION %d, FORMAT %d, CHECKSUM %d, UNSUPPORTED %d\n", name,
           (unsigned long)(len * 8), counts[RP_OK], counts[RP_E_NOT_A_PACK], counts[RP_E_VERSION], counts[RP_E_FORMAT],
           counts[RP_E_CHECKSUM], counts[RP_E_UNSUPPORTED]);
    missed = 0;
    memset(counts, 0, sizeof counts);
    for (i = 0; i < len; i++) {
        /* a fresh allocation of exactly i bytes, so that ASan catches any read past the end */
        uint8_t *cut = (uint8_t *)malloc(i ? i : 1);
        memcpy(cut, bytes, i);
        if (!damage_noticed(i ? cut : NULL, i, &rc)) missed++;
        counts[rc & 15]++;
        free(cut);
    }
    CHECK(missed == 0, "%s: %u truncations went unnoticed", name, missed);
    printf("%s: %lu truncations: open OK (truncated) %d, TRUNCATED %d, other %d\n", name, (unsigned long)len, counts[RP_OK],
           counts[RP_E_TRUNCATED], (int)len - counts[RP_OK] - counts[RP_E_TRUNCATED]);
    /* trailing bytes are refused */
    {
        uint8_t *longer = (uint8_t *)malloc(len + 1);
        rp_pack *pk = NULL;
        rp_error err;
        memcpy(longer, bytes, len);
        longer[len] = 0;
        CHECK(rp_pack_open_memory(longer, len + 1, &pk, &err) == RP_E_FORMAT, "%s: trailing byte", name);
        free(longer);
    }
    free(copy);
    free(bytes);
    rp_json_free(&ex);
}

/* A truncated pack opens, reports its missing blocks, and a pack scanner would skip them. */
static void test_truncated(const char *dir) {
    rp_json ex;
    size_t len;
    uint8_t *bytes = load_vector(dir, "sq8_one_layer", &len, &ex);
    rp_pack *pk = NULL;
    rp_error err;
    rp_verify_report rep;
    uint32_t blocks[4];
    size_t n_bad = 0;
    if (bytes == NULL) { CHECK(0, "cannot read sq8_one_layer"); return; }
    /* 6 items of 4 bytes in blocks of 4: cut 3 bytes off the last block */
    CHECK(rp_pack_open_memory(bytes, len - 3, &pk, &err) == RP_OK, "truncated pack opens: %s", err.message);
    if (pk != NULL) {
        CHECK(rp_pack_truncated(pk) == 1, "truncated flag");
        CHECK(rp_pack_verify(pk, &rep, &err) == RP_OK && rep.truncated && rep.bad_blocks == 1 && rep.missing_items == 2,
              "truncated verify: %llu bad, %llu missing", (unsigned long long)rep.bad_blocks, (unsigned long long)rep.missing_items);
        CHECK(rp_pack_block_status(pk, 0, 0) == RP_OK && rp_pack_block_status(pk, 0, 1) == RP_E_TRUNCATED, "block statuses");
        CHECK(rp_pack_bad_blocks(pk, 0, blocks, 4, &n_bad, &err) == RP_OK && n_bad == 1 && blocks[0] == 1, "bad blocks list");
        rp_pack_close(pk);
    }
    /* a flipped code byte: its block's CRC fails */
    bytes[len - 1] ^= 0x10;
    CHECK(rp_pack_open_memory(bytes, len, &pk, &err) == RP_OK, "pack with a bad block opens");
    if (pk != NULL) {
        CHECK(rp_pack_block_status(pk, 0, 1) == RP_E_CHECKSUM && rp_pack_block_status(pk, 0, 0) == RP_OK, "bad block CRC");
        CHECK(rp_pack_verify(pk, &rep, &err) == RP_OK && rep.bad_blocks == 1 && rep.missing_items == 2 && !rep.truncated, "verify");
        rp_pack_close(pk);
    }
    free(bytes);
    rp_json_free(&ex);
}

static void test_file(const char *dir) {
    rp_json ex;
    size_t len;
    uint8_t *bytes = load_vector(dir, "pq_two_layers_parity", &len, &ex);
    char path[256];
    FILE *f;
    rp_pack *pk = NULL;
    rp_error err;
    int rc;
    if (bytes == NULL) { CHECK(0, "cannot read pq_two_layers_parity"); return; }
    snprintf(path, sizeof path, "test_reader_tmp_%lu.rpak", (unsigned long)len);
    f = fopen(path, "wb");
    if (f != NULL) {
        fwrite(bytes, 1, len, f);
        fclose(f);
        rc = rp_pack_open_file(path, &pk, &err);
        CHECK(rc == RP_OK && rp_pack_n_items(pk) == 9 && rp_pack_n_layers(pk) == 2, "open_file: %s", err.message);
        rp_pack_close(pk);
        f = fopen(path, "wb");
        if (f != NULL) fclose(f);
        CHECK(rp_pack_open_file(path, &pk, &err) == RP_E_TRUNCATED, "empty file is truncated: %s", err.message);
        remove(path);
    }
    CHECK(rp_pack_open_file("/nonexistent/dir/x.rpak", &pk, &err) == RP_E_IO && strstr(err.message, "nonexistent") == NULL,
          "missing file: %s", err.message);
    CHECK(rp_pack_open_memory("RPAK\r\n\x1a\n", 8, &pk, &err) == RP_E_TRUNCATED, "8-byte magic only");
    CHECK(rp_pack_open_memory("GIF89a", 6, &pk, &err) == RP_E_NOT_A_PACK, "not a pack");
    CHECK(rp_pack_open_memory(NULL, 0, &pk, &err) == RP_E_TRUNCATED, "empty buffer");
    free(bytes);
    rp_json_free(&ex);
}

/* ---- entropy-coded layers: damage that passes the CRC32Cs ------------------------------------------ */
/* Recompute every block CRC32C, every directory section's CRC32C, the section table's and the header's. */
static void reseal(uint8_t *b, size_t len) {
    uint64_t t0 = rp_le64(b + 32);
    uint32_t n_sec = rp_le32(b + 40), i;
    for (i = 0; i < n_sec; i++) {
        uint8_t *e = b + t0 + 24u * i;
        uint64_t off = rp_le64(e + 8), sl = rp_le64(e + 16), j;
        if (rp_le16(e) != 5) continue;
        for (j = 0; j + 32 <= sl; j += 32) {
            uint8_t *be = b + off + j;
            uint64_t bo = rp_le64(be + 8), bl = rp_le32(be + 16);
            if (bo + bl <= len) put_le32(be + 20, rp_crc32c(0, b + bo, (size_t)bl));
        }
    }
    for (i = 0; i < n_sec; i++) {
        uint8_t *e = b + t0 + 24u * i;
        uint64_t off = rp_le64(e + 8), sl = rp_le64(e + 16);
        if (rp_le16(e) != 4 && off + sl <= len) put_le32(e + 4, rp_crc32c(0, b + off, (size_t)sl));
    }
    put_le32(b + 44, rp_crc32c(0, b + t0, 24u * (size_t)n_sec));
    put_le32(b + 60, rp_crc32c(0, b, 60));
}

/* The directory offsets of the sq4_entropy vector: its ENTROPY_MODEL section and block k's index entry. */
static const uint8_t *find_section(const uint8_t *b, uint16_t type, uint64_t *length) {
    uint64_t t0 = rp_le64(b + 32);
    uint32_t n_sec = rp_le32(b + 40), i;
    for (i = 0; i < n_sec; i++) {
        const uint8_t *e = b + t0 + 24u * i;
        if (rp_le16(e) == type) {
            *length = rp_le64(e + 16);
            return b + rp_le64(e + 8);
        }
    }
    return NULL;
}

static void test_entropy(const char *dir) {
    rp_json ex;
    size_t len;
    uint8_t *bytes = load_vector(dir, "sq4_entropy", &len, &ex), *copy;
    const uint8_t *bi, *model, *good_codes;
    uint64_t bi_len = 0, model_len = 0;
    rp_pack *pk = NULL, *ref = NULL;
    rp_error err;
    rp_verify_report rep;
    rp_layer_info info;
    uint32_t bad[4];
    size_t n_bad = 0;
    rp_scanner *sc = NULL;
    if (bytes == NULL) { CHECK(0, "cannot read sq4_entropy"); return; }
    copy = (uint8_t *)malloc(len);
    bi = find_section(bytes, 5, &bi_len);
    model = find_section(bytes, 9, &model_len);
    CHECK(bi != NULL && bi_len == 3 * 32 && model != NULL && model_len == 16 + 2 * 6 * 16, "sq4_entropy directory");
    CHECK(rp_pack_open_memory(bytes, len, &ref, &err) == RP_OK, "open sq4_entropy");
    good_codes = ref != NULL ? rp_pack_layer_codes(ref, 0) : NULL;
    CHECK(good_codes != NULL, "sq4_entropy decodes");
    if (bi == NULL || model == NULL || good_codes == NULL || copy == NULL) goto done;

    /* block 1 ends in a zero word: its CRC32C matches once resealed, but it does not decode */
    memcpy(copy, bytes, len);
    {
        uint8_t *e = copy + (bi - bytes) + 32;
        uint64_t off = rp_le64(e + 8), bl = rp_le32(e + 16);
        CHECK(bl >= 4 && bl % 4 == 0, "block 1 length %llu", (unsigned long long)bl);
        memset(copy + off + bl - 4, 0, 4);
    }
    reseal(copy, len);
    CHECK(rp_pack_open_memory(copy, len, &pk, &err) == RP_OK, "open a non-decoding block: %s", err.message);
    if (pk != NULL) {
        CHECK(rp_pack_block_status(pk, 0, 0) == RP_OK && rp_pack_block_status(pk, 0, 1) == RP_E_CHECKSUM &&
                  rp_pack_block_status(pk, 0, 2) == RP_OK, "non-decoding block is bad, the others intact");
        CHECK(rp_pack_verify(pk, &rep, &err) == RP_OK && rep.bad_blocks == 1 && rep.missing_items == 10 && rep.section_problems == 0,
              "verify a non-decoding block");
        CHECK(rp_pack_bad_blocks(pk, 0, bad, 4, &n_bad, &err) == RP_OK && n_bad == 1 && bad[0] == 1, "bad block list");
        CHECK(rp_pack_layer_info(pk, 0, &info, &err) == RP_OK && info.status == RP_OK, "layer usable with one bad block");
        CHECK(rp_pack_layer_codes(pk, 0) != NULL && memcmp(rp_pack_layer_codes(pk, 0), good_codes, 10 * 3) == 0 &&
                  memcmp(rp_pack_layer_codes(pk, 0) + 20 * 3, good_codes + 20 * 3, 4 * 3) == 0, "intact blocks decode");
        {
            float q[6] = {1, 1, 1, 1, 1, 1};
            int64_t ids[24];
            float scores[24];
            uint32_t n_out = 0, i;
            int rc = rp_pack_search(pk, 0, q, 24, NULL, 0, ids, scores, &n_out, &err);
            CHECK(rc == RP_OK && n_out == 14, "search skips the bad block: %s %u", rp_status_name(rc), (unsigned)n_out);
            for (i = 0; rc == RP_OK && i < n_out; i++) {
                int64_t row = rp_pack_row_of(pk, ids[i]);
                CHECK(row < 10 || row >= 20, "row %lld of the bad block returned", (long long)row);
            }
        }
        rp_pack_close(pk);
        pk = NULL;
    }

    /* block 2 with its last two words swapped and resealed: the decoder starts from a wrong state */
    memcpy(copy, bytes, len);
    {
        uint8_t *e = copy + (bi - bytes) + 64;
        uint64_t off = rp_le64(e + 8), bl = rp_le32(e + 16);
        if (bl >= 8) { /* swap the last two words: the state starts wrong */
            uint8_t w[4];
            memcpy(w, copy + off + bl - 4, 4);
            memcpy(copy + off + bl - 4, copy + off + bl - 8, 4);
            memcpy(copy + off + bl - 8, w, 4);
        }
        reseal(copy, len);
        if (bl >= 8 && memcmp(copy + off + bl - 8, copy + off + bl - 4, 4) != 0 && rp_le32(copy + off + bl - 4) != 0 &&
            rp_pack_open_memory(copy, len, &pk, &err) == RP_OK) {
            int st = rp_pack_block_status(pk, 0, 2);
            /* not a checksum: either it fails to decode or it decodes to other codes; never a crash */
            CHECK(st == RP_E_CHECKSUM || (st == RP_OK && memcmp(rp_pack_layer_codes(pk, 0) + 20 * 3, good_codes + 20 * 3, 4 * 3) != 0),
                  "swapped words: %s", rp_status_name(st));
            rp_pack_close(pk);
            pk = NULL;
        }
    }

    /* the model: a zero count, a row summing above 65535, a wrong width, a wrong layout: the layer is unusable */
    {
        static const struct { size_t at; uint8_t value; int status; const char *what; } cases[] = {
            {16, 0, RP_E_FORMAT, "zero count"},          /* count c[0][0] low byte (its high byte zeroed below) */
            {17, 0xFF, RP_E_FORMAT, "row sum > 65535"},  /* c[0][0] high byte: the row sums above 65535 */
            {12, 4, RP_E_FORMAT, "bytes_per_vector 4"},  /* then the section length no longer matches either */
            {10, 1, RP_E_FORMAT, "layout bytes"},
            {10, 4, RP_E_FORMAT, "layout 4"},
            {11, 1, RP_E_FORMAT, "reserved byte"},
            {8, 2, RP_E_FORMAT, "version 2"},
            {4, 'X', RP_E_FORMAT, "magic"},
            {0, 1, RP_E_FORMAT, "names layer 1 (no such layer): the layer has no model"},
        };
        size_t c;
        for (c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            memcpy(copy, bytes, len);
            copy[(model - bytes) + cases[c].at] = cases[c].value;
            if (cases[c].at == 16) copy[(model - bytes) + 17] = 0;
            reseal(copy, len);
            pk = NULL;
            CHECK(rp_pack_open_memory(copy, len, &pk, &err) == RP_OK, "model %s: open %s", cases[c].what, err.message);
            if (pk == NULL) continue;
            CHECK(rp_pack_layer_info(pk, 0, &info, &err) == RP_OK && info.status == cases[c].status, "model %s: status %s", cases[c].what,
                  rp_status_name(info.status));
            CHECK(rp_pack_verify(pk, &rep, &err) == RP_OK && rep.bad_blocks == 3 && rep.missing_items == 24, "model %s: all blocks bad",
                  cases[c].what);
            CHECK(rp_pack_layer_codes(pk, 0) == NULL, "model %s: no codes", cases[c].what);
            CHECK(rp_pack_scanner(pk, 0, NULL, &sc, &err) == cases[c].status && sc == NULL && err.message[0] != '\0',
                  "model %s: scanner refused (%s)", cases[c].what, err.message);
            rp_pack_close(pk);
        }
    }
    /* a damaged (CRC) model: reported as a section problem and the layer unusable */
    memcpy(copy, bytes, len);
    copy[(model - bytes) + 20] ^= 1;
    pk = NULL;
    CHECK(rp_pack_open_memory(copy, len, &pk, &err) == RP_OK, "open with a damaged model");
    if (pk != NULL) {
        CHECK(rp_pack_layer_info(pk, 0, &info, &err) == RP_OK && info.status == RP_E_CHECKSUM, "damaged model status");
        CHECK(rp_pack_verify(pk, &rep, &err) == RP_OK && rep.bad_blocks == 3 && rep.section_problems == 1, "damaged model verify");
        rp_pack_close(pk);
    }
done:
    rp_pack_close(ref);
    free(copy);
    free(bytes);
    rp_json_free(&ex);
}

/* ---- ranking a pack layer (rp_pack_search / rp_pack_scanner, with the kernels of scan.c) --------- */
static void test_search(const char *dir) {
    rp_json ex;
    size_t len;
    uint8_t *bytes = load_vector(dir, "sq8_one_layer", &len, &ex);
    rp_pack *pk = NULL;
    rp_error err;
    const rp_codec *codec = NULL;
    const float q[4] = {0.3f, -1.0f, 0.5f, 2.0f};
    double want[6];
    int64_t ids[6], excl[2];
    float scores[6];
    uint32_t n_out = 0, i, j, best = 0;
    int rc;
    if (bytes == NULL) { CHECK(0, "cannot read sq8_one_layer"); return; }
    if (rp_pack_open_memory(bytes, len, &pk, &err) != RP_OK || rp_pack_layer_codec(pk, 0, &codec, &err) != RP_OK) {
        CHECK(0, "sq8_one_layer codec: %s", err.message);
        rp_pack_close(pk);
        free(bytes);
        rp_json_free(&ex);
        return;
    }
    for (i = 0; i < 6; i++) {
        const uint8_t *code = rp_pack_layer_codes(pk, 0) + 4 * i;
        want[i] = 0.0;
        for (j = 0; j < 4; j++) want[i] += (double)q[j] * ((double)codec->lo[j] + (double)codec->step[j] * code[j]);
        if (want[i] > want[best]) best = i;
    }
    rc = rp_pack_search(pk, 0, q, 3, NULL, 0, ids, scores, &n_out, &err);
    CHECK(rc == RP_OK && n_out == 3, "search: %s %s", rp_status_name(rc), err.message);
    if (rc == RP_OK) {
        CHECK(ids[0] == rp_pack_item_ids(pk)[best], "best id %lld, expected %lld", (long long)ids[0], (long long)rp_pack_item_ids(pk)[best]);
        for (i = 0; i < n_out; i++) {
            int64_t row = rp_pack_row_of(pk, ids[i]);
            CHECK(row >= 0 && fabs((double)scores[i] - want[row]) <= 1e-4 * (1.0 + fabs(want[row])), "score %u: %g vs %g", (unsigned)i,
                  (double)scores[i], row >= 0 ? want[row] : 0.0);
            if (i > 0) CHECK(scores[i] <= scores[i - 1], "best first");
        }
    }
    excl[0] = rp_pack_item_ids(pk)[best];
    excl[1] = 123456789; /* not in the pack: ignored */
    rc = rp_pack_search(pk, 0, q, 6, excl, 2, ids, scores, &n_out, &err);
    CHECK(rc == RP_OK && n_out == 5, "search with exclusions: %s %u", rp_status_name(rc), (unsigned)n_out);
    for (i = 0; i < n_out; i++) CHECK(ids[i] != excl[0], "excluded id returned");
    CHECK(rp_pack_search(pk, 0, q, 0, NULL, 0, ids, scores, &n_out, &err) == RP_E_K_RANGE, "k = 0");
    CHECK(rp_pack_search(pk, 1, q, 1, NULL, 0, ids, scores, &n_out, &err) == RP_E_ARGUMENT, "layer out of range");
    rp_pack_close(pk);

    /* a damaged block: its items are never returned */
    bytes[len - 1] ^= 0x40;
    CHECK(rp_pack_open_memory(bytes, len, &pk, &err) == RP_OK, "open with a bad block");
    if (pk != NULL) {
        rc = rp_pack_search(pk, 0, q, 6, NULL, 0, ids, scores, &n_out, &err);
        CHECK(rc == RP_OK && n_out == 4, "search around a bad block: %s %u", rp_status_name(rc), (unsigned)n_out);
        for (i = 0; rc == RP_OK && i < n_out; i++) CHECK(rp_pack_row_of(pk, ids[i]) < 4, "row of a bad block returned");
        rp_pack_close(pk);
    }
    /* every block damaged */
    bytes[len - 9] ^= 0x40;
    CHECK(rp_pack_open_memory(bytes, len, &pk, &err) == RP_OK, "open with two bad blocks");
    if (pk != NULL) {
        CHECK(rp_pack_search(pk, 0, q, 1, NULL, 0, ids, scores, &n_out, &err) == RP_E_DAMAGED, "all blocks damaged");
        rp_pack_close(pk);
    }
    bytes[len - 9] ^= 0x40;
    bytes[len - 1] ^= 0x40;
    /* truncated: the missing block's rows are not ranked */
    CHECK(rp_pack_open_memory(bytes, len - 3, &pk, &err) == RP_OK, "open truncated");
    if (pk != NULL) {
        rc = rp_pack_search(pk, 0, q, 4, NULL, 0, ids, scores, &n_out, &err);
        CHECK(rc == RP_OK && n_out == 4, "search a truncated pack: %s %s", rp_status_name(rc), err.message);
        for (i = 0; rc == RP_OK && i < n_out; i++) CHECK(rp_pack_row_of(pk, ids[i]) < 4, "row beyond the end returned");
        rp_pack_close(pk);
    }
    free(bytes);
    rp_json_free(&ex);

    /* 4-bit PQ layer and an entropy-coded layer */
    bytes = load_vector(dir, "pq_two_layers_parity", &len, &ex);
    if (bytes != NULL && rp_pack_open_memory(bytes, len, &pk, &err) == RP_OK) {
        float qq[8] = {1, 0, -1, 0.5f, 0.25f, 0, 0, 2};
        uint32_t dim = 0;
        if (rp_pack_layer_codec(pk, 1, &codec, &err) == RP_OK) dim = rp_codec_dim(codec);
        rc = dim <= 8 ? rp_pack_search(pk, 1, qq, 5, NULL, 0, ids, scores, &n_out, &err) : RP_E_DIMENSION;
        CHECK(rc == RP_OK && n_out == 5, "pq4x4 search: %s %s", rp_status_name(rc), err.message);
        rp_pack_close(pk);
    }
    free(bytes);
    rp_json_free(&ex);
    bytes = load_vector(dir, "sq4_entropy", &len, &ex);
    if (bytes != NULL && rp_pack_open_memory(bytes, len, &pk, &err) == RP_OK) {
        float qq[6] = {0.5f, -1.0f, 0.25f, 2.0f, -0.75f, 1.0f}, ref[24];
        int64_t eids[24];
        float escores[24];
        CHECK(rp_pack_layer_codec(pk, 0, &codec, &err) == RP_OK && rp_codec_dim(codec) == 6, "sq4 entropy codec");
        rc = rp_pack_search(pk, 0, qq, 24, NULL, 0, eids, escores, &n_out, &err);
        CHECK(rc == RP_OK && n_out == 24, "entropy-coded layer search: %s %s", rp_status_name(rc), err.message);
        /* the ranking is the decoded codes' scores, best first, ties to the lower row */
        CHECK(rp_codec_score(codec, qq, rp_pack_layer_codes(pk, 0), 24, 0, 0, ref, &err) == RP_OK, "score decoded codes");
        for (i = 0; rc == RP_OK && i < n_out; i++) {
            int64_t row = rp_pack_row_of(pk, eids[i]);
            CHECK(row >= 0 && escores[i] == ref[row], "entropy search score %u", (unsigned)i);
            if (i > 0) {
                int64_t prev = rp_pack_row_of(pk, eids[i - 1]);
                CHECK(escores[i] < escores[i - 1] || (escores[i] == escores[i - 1] && row > prev), "entropy search order %u", (unsigned)i);
            }
        }
        rp_pack_close(pk);
    }
    free(bytes);
    rp_json_free(&ex);
}

/* ---- refinement frames -------------------------------------------------------------------------- */
static void test_frame(void) {
    uint8_t fr[20 + 3 * (8 + 5)];
    rp_refine_frame rf;
    rp_error err;
    uint32_t i;
    size_t size = sizeof fr;
    memcpy(fr, "RPRF", 4);
    put_le32(fr + 4, 3);
    put_le32(fr + 8, 5);
    put_le32(fr + 12, 1);
    for (i = 0; i < 3; i++) {
        put_le32(fr + 16 + 8 * i, 100u + i);
        put_le32(fr + 20 + 8 * i, i == 2 ? 0x7FFFFFFFu : 0u);
    }
    for (i = 0; i < 15; i++) fr[40 + i] = (uint8_t)i;
    put_le32(fr + size - 4, rp_crc32c(0, fr, size - 4));
    CHECK(rp_refine_frame_parse(fr, size, &rf, &err) == RP_OK && rf.n_items == 3 && rf.bytes_per_vector == 5 && rf.layer == 1 &&
              rp_refine_frame_id(&rf, 0) == 100 && rp_refine_frame_id(&rf, 2) == (int64_t)(((uint64_t)0x7FFFFFFF << 32) | 102u) &&
              rf.codes[14] == 14 && rp_refine_frame_id(&rf, 3) == -1, "good frame: %s", err.message);
    fr[41] ^= 1;
    CHECK(rp_refine_frame_parse(fr, size, &rf, &err) == RP_E_CHECKSUM, "flipped code byte");
    fr[41] ^= 1;
    CHECK(rp_refine_frame_parse(fr, size - 1, &rf, &err) == RP_E_FORMAT, "short by one");
    CHECK(rp_refine_frame_parse(fr, 19, &rf, &err) == RP_E_FORMAT, "19 bytes");
    fr[0] = 'X';
    CHECK(rp_refine_frame_parse(fr, size, &rf, &err) == RP_E_FORMAT, "bad magic");
    fr[0] = 'R';
    put_le32(fr + 4, 0xFFFFFFFFu);
    put_le32(fr + 8, 0xFFFFFFFFu);
    CHECK(rp_refine_frame_parse(fr, size, &rf, &err) == RP_E_FORMAT, "huge n and B");
    {
        uint8_t empty[20];
        memcpy(empty, "RPRF", 4);
        memset(empty + 4, 0, 12);
        put_le32(empty + 16, rp_crc32c(0, empty, 16));
        CHECK(rp_refine_frame_parse(empty, 20, &rf, &err) == RP_OK && rf.n_items == 0, "empty frame");
    }
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/format/vectors";
    size_t i;
    printf("reelpack runtime %s: reader tests\n", rp_version());
    test_crc();
    test_json();
    test_codecs();
    for (i = 0; i < sizeof VECTORS / sizeof VECTORS[0]; i++) test_vector(dir, VECTORS[i]);
    test_damage(dir, "sq8_one_layer");
    test_damage(dir, "pq_two_layers_parity");
    test_damage(dir, "sq4_entropy");
    test_entropy(dir);
    test_truncated(dir);
    test_file(dir);
    test_search(dir);
    test_frame();
    printf("%d checks, %d failed\n", g_checks, g_failed);
    return g_failed ? 1 : 0;
}
