/*
 * rp-rank: the reference command-line client of the reelpack runtime (public API only).
 *
 *   rp-rank PACK QUERY.f32 [-k 50] [--layer L] [--exclude ID,ID,...] [--kernel NAME] [--json]
 *   rp-rank PACK QUERY.f32 --bench N [...]
 *   rp-rank --check PACK...
 *
 * Exit status: 0 success, 1 a runtime error (a pack, a query file or a ranking that fails),
 * 2 a usage error. Errors go to stderr as "rp-rank: <what>: RP_E_NAME: <message>".
 */
#define _POSIX_C_SOURCE 200809L

#include "reelpack.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define MAX_BENCH 10000000L

static const char USAGE[] =
    "usage: rp-rank PACK QUERY.f32 [options]     rank each query against a layer of PACK\n"
    "       rp-rank PACK QUERY.f32 --bench N     time open + verify and N searches of the first query\n"
    "       rp-rank --check PACK...              one canonical integrity line per pack\n"
    "       rp-rank --version | --help\n"
    "\n"
    "QUERY.f32 holds raw little-endian float32 values, a multiple of the layer's dim: one query or\n"
    "several, one after the other.\n"
    "\n"
    "options:\n"
    "  -k K                  results per query (default 50; 1..n_items)\n"
    "  --layer L             the layer to rank (default 0)\n"
    "  --exclude ID,ID,...   item ids never returned (a user's seen items; repeatable; ids the pack\n"
    "                        does not hold are ignored)\n"
    "  --kernel NAME         auto (default), portable, avx2 or neon\n"
    "  --stages S            rq codecs: score with the first S stages (default: all)\n"
    "  --query-bits B        simhash: bits per quantised query coordinate, 1..16 (default 8)\n"
    "  --approximate         4-bit pq: skip the exact rescoring\n"
    "  --json                print one JSON document instead of text lines\n"
    "  --bench N             benchmark mode (see above); prints `key value` lines\n"
    "  --check               integrity mode (see above)\n"
    "\n"
    "output (text): one line per result, `query rank item_id score` (query and rank from 0, best\n"
    "first, score with %.9g).\n"
    "--check prints, per file, tab-separated:\n"
    "  FILE OPEN_FAIL RP_E_NAME          the pack could not be opened\n"
    "  FILE VERIFY_FAIL RP_E_NAME        it opened but could not be checked\n"
    "  FILE OK n_items=N layers=L truncated=T section_problems=S bad=LAYER:BLOCK,... status=NAME,...\n"
    "  (status: one rp_status name per layer: RP_OK when the layer can be ranked). Exit 0 once every\n"
    "  file has its line, damaged or not.\n"
    "exit status: 0 success, 1 runtime error, 2 usage error.\n";

/* ---- small helpers ---------------------------------------------------------------------------- */
static void usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("rp-rank: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(try rp-rank --help)\n", stderr);
    exit(EXIT_USAGE);
}

static int runtime_error(const char *what, int code, const rp_error *err) {
    const char *msg = (err && err->code == code && err->message[0]) ? err->message : "";
    fprintf(stderr, "rp-rank: %s: %s%s%s\n", what, rp_status_name(code), msg[0] ? ": " : "", msg);
    return EXIT_RUNTIME;
}

static double now_s(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Unsigned decimal in [lo, hi]; 0 when `s` is not one. */
static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    char *end = NULL;
    unsigned long long v;
    if (!s || *s < '0' || *s > '9') return 0;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi) return 0;
    *out = (uint64_t)v;
    return 1;
}

/* A signed decimal int64 spanning exactly [s, s + len). */
static int parse_i64(const char *s, size_t len, int64_t *out) {
    char buf[32];
    char *end = NULL;
    long long v;
    size_t i = 0;
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (buf[0] == '-' || buf[0] == '+') i = 1;
    if (buf[i] < '0' || buf[i] > '9') return 0;
    errno = 0;
    v = strtoll(buf, &end, 10);
    if (errno || !end || *end) return 0;
    *out = (int64_t)v;
    return 1;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fputs("rp-rank: out of memory: RP_E_NOMEM\n", stderr);
        exit(EXIT_RUNTIME);
    }
    return p;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("rp-rank: out of memory: RP_E_NOMEM\n", stderr);
        exit(EXIT_RUNTIME);
    }
    return q;
}

/* Read a whole file. 0 on success; else prints why and returns EXIT_RUNTIME. */
static int read_whole_file(const char *path, unsigned char **out, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, len = 0;
    if (!f) {
        fprintf(stderr, "rp-rank: cannot open query file %s: RP_E_IO: %s\n", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            if (ncap < cap) {
                fclose(f);
                free(buf);
                fputs("rp-rank: query file too large: RP_E_NOMEM\n", stderr);
                return EXIT_RUNTIME;
            }
            buf = xrealloc(buf, ncap);
            cap = ncap;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        fclose(f);
        free(buf);
        fprintf(stderr, "rp-rank: cannot read query file %s: RP_E_IO\n", path);
        return EXIT_RUNTIME;
    }
    fclose(f);
    *out = buf;
    *size = len;
    return 0;
}

/* A growable string. */
typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf;

static void sb_add(strbuf *b, const char *fmt, ...) {
    va_list ap;
    int n;
    char tmp[128];
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof tmp) n = (int)sizeof tmp - 1; /* our pieces are short: names and numbers */
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t ncap = (b->cap ? b->cap * 2 : 128) + (size_t)n;
        b->s = xrealloc(b->s, ncap);
        b->cap = ncap;
    }
    memcpy(b->s + b->len, tmp, (size_t)n);
    b->len += (size_t)n;
    b->s[b->len] = '\0';
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- options ---------------------------------------------------------------------------------- */
typedef struct options {
    const char **positional;
    size_t n_positional;
    uint32_t k;
    uint32_t layer;
    int64_t *exclude;
    size_t n_exclude;
    const char *kernel;
    int json;
    long bench;  /* 0: no benchmark */
    int check;
    rp_scan_options scan;
} options;

static void add_excludes(options *o, const char *list) {
    size_t n = 1, i, start = 0, len = strlen(list);
    if (len == 0) return; /* --exclude "" : nothing to exclude */
    for (i = 0; i < len; i++)
        if (list[i] == ',') n++;
    o->exclude = xrealloc(o->exclude, (o->n_exclude + n) * sizeof(int64_t));
    for (i = 0; i <= len; i++) {
        if (i == len || list[i] == ',') {
            int64_t id;
            if (!parse_i64(list + start, i - start, &id))
                usage_error("--exclude: '%.*s' is not an item id (int64)", (int)(i - start), list + start);
            o->exclude[o->n_exclude++] = id;
            start = i + 1;
        }
    }
}

/* The value of option `name` at argv[*i]: "--name=VALUE", "--name VALUE", or "-kVALUE" for -k. */
static const char *option_value(int argc, char **argv, int *i, const char *name) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] == '\0') {
        if (*i + 1 >= argc) usage_error("%s needs a value", name);
        *i += 1;
        return argv[*i];
    }
    if (strcmp(name, "-k") == 0) return a + n; /* -k50 */
    return NULL;
}

static void parse_args(int argc, char **argv, options *o) {
    int i, only_positional = 0;
    memset(o, 0, sizeof *o);
    o->k = 50;
    o->positional = xmalloc((size_t)argc * sizeof(char *));
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        uint64_t u;
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            o->positional[o->n_positional++] = a;
        } else if (strcmp(a, "--") == 0) {
            only_positional = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(USAGE, stdout);
            exit(0);
        } else if (strcmp(a, "--version") == 0) {
            printf("rp-rank %s (reelpack runtime, pack format %d, kernel %s)\n", rp_version(), RP_FORMAT_MAJOR,
                   rp_kernel_name());
            exit(0);
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(a, "--check") == 0) {
            o->check = 1;
        } else if (strcmp(a, "--approximate") == 0) {
            o->scan.approximate = 1;
        } else if ((v = option_value(argc, argv, &i, "-k")) != NULL ||
                   (v = option_value(argc, argv, &i, "--k")) != NULL) {
            if (!parse_u64(v, 1, RP_MAX_K, &u)) usage_error("-k: '%s' is not an integer in 1..%u", v, RP_MAX_K);
            o->k = (uint32_t)u;
        } else if ((v = option_value(argc, argv, &i, "--layer")) != NULL) {
            if (!parse_u64(v, 0, UINT32_MAX, &u)) usage_error("--layer: '%s' is not a layer number", v);
            o->layer = (uint32_t)u;
        } else if ((v = option_value(argc, argv, &i, "--exclude")) != NULL) {
            add_excludes(o, v);
        } else if ((v = option_value(argc, argv, &i, "--kernel")) != NULL) {
            if (strcmp(v, "auto") && strcmp(v, "portable") && strcmp(v, "avx2") && strcmp(v, "neon"))
                usage_error("--kernel: '%s' is not one of auto, portable, avx2, neon", v);
            o->kernel = v;
        } else if ((v = option_value(argc, argv, &i, "--stages")) != NULL) {
            if (!parse_u64(v, 0, UINT32_MAX, &u)) usage_error("--stages: '%s' is not a stage count", v);
            o->scan.stages = (uint32_t)u;
        } else if ((v = option_value(argc, argv, &i, "--query-bits")) != NULL) {
            if (!parse_u64(v, 1, 16, &u)) usage_error("--query-bits: '%s' is not in 1..16", v);
            o->scan.query_bits = (int)u;
        } else if ((v = option_value(argc, argv, &i, "--bench")) != NULL) {
            if (!parse_u64(v, 1, MAX_BENCH, &u)) usage_error("--bench: '%s' is not a count in 1..%ld", v, MAX_BENCH);
            o->bench = (long)u;
        } else {
            usage_error("unknown option '%s'", a);
        }
    }
    if (o->check) {
        if (o->bench || o->json) usage_error("--check takes no --bench or --json");
        if (o->n_positional == 0) usage_error("--check needs at least one pack file");
    } else if (o->n_positional != 2) {
        usage_error("expected PACK and QUERY.f32 (got %zu file arguments)", o->n_positional);
    }
}

/* ---- --check ---------------------------------------------------------------------------------- */
static void check_one(const char *path) {
    rp_pack *pack = NULL;
    rp_error err = {0};
    rp_verify_report rep;
    strbuf bad = {NULL, 0, 0}, status = {NULL, 0, 0};
    uint32_t layer, n_layers;
    int rc = rp_pack_open_file(path, &pack, &err);
    if (rc != RP_OK) {
        printf("%s\tOPEN_FAIL\t%s\n", path, rp_status_name(rc));
        fprintf(stderr, "rp-rank: %s: %s: %s\n", path, rp_status_name(rc), err.code == rc ? err.message : "");
        return;
    }
    memset(&rep, 0, sizeof rep);
    rc = rp_pack_verify(pack, &rep, &err);
    if (rc != RP_OK) {
        printf("%s\tVERIFY_FAIL\t%s\n", path, rp_status_name(rc));
        fprintf(stderr, "rp-rank: %s: %s: %s\n", path, rp_status_name(rc), err.code == rc ? err.message : "");
        rp_pack_close(pack);
        return;
    }
    sb_add(&bad, "%s", "");
    sb_add(&status, "%s", "");
    n_layers = rp_pack_n_layers(pack);
    for (layer = 0; layer < n_layers; layer++) {
        rp_layer_info info;
        int layer_status;
        memset(&info, 0, sizeof info);
        rc = rp_pack_layer_info(pack, layer, &info, &err);
        layer_status = rc != RP_OK ? rc : info.status;
        sb_add(&status, "%s%s", layer ? "," : "", rp_status_name(layer_status));
        if (rc == RP_OK) {
            size_t cap = (size_t)info.n_blocks + 1, n_bad = 0, j;
            uint32_t *blocks = xmalloc(cap * sizeof(uint32_t));
            rc = rp_pack_bad_blocks(pack, layer, blocks, cap, &n_bad, &err);
            if (rc == RP_OK && n_bad > cap) { /* more than the layer's block count: ask again with room */
                cap = n_bad;
                blocks = xrealloc(blocks, cap * sizeof(uint32_t));
                rc = rp_pack_bad_blocks(pack, layer, blocks, cap, &n_bad, &err);
            }
            if (rc == RP_OK) {
                if (n_bad > cap) n_bad = cap;
                qsort(blocks, n_bad, sizeof(uint32_t), cmp_u32);
                for (j = 0; j < n_bad; j++) sb_add(&bad, "%s%" PRIu32 ":%" PRIu32, bad.len ? "," : "", layer, blocks[j]);
            } else {
                fprintf(stderr, "rp-rank: %s: layer %" PRIu32 " bad blocks: %s\n", path, layer, rp_status_name(rc));
            }
            free(blocks);
        }
    }
    printf("%s\tOK\tn_items=%" PRIu64 "\tlayers=%" PRIu32 "\ttruncated=%d\tsection_problems=%" PRIu32
           "\tbad=%s\tstatus=%s\n",
           path, rp_pack_n_items(pack), n_layers, rp_pack_truncated(pack) ? 1 : 0, rep.section_problems, bad.s,
           status.s);
    free(bad.s);
    free(status.s);
    rp_pack_close(pack);
}

/* ---- ranking ---------------------------------------------------------------------------------- */
static int finish_output(int rc) {
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fputs("rp-rank: cannot write the output: RP_E_IO\n", stderr);
        return EXIT_RUNTIME;
    }
    return rc;
}

static int rank(const options *o) {
    const char *pack_path = o->positional[0], *query_path = o->positional[1];
    rp_error err = {0};
    rp_pack *pack = NULL;
    rp_scanner *scanner = NULL;
    rp_verify_report rep;
    const rp_codec *codec = NULL;
    const int64_t *ids;
    unsigned char *raw = NULL;
    size_t raw_size = 0, n_values, n_queries, q, i;
    float *queries = NULL, *scores = NULL;
    int64_t *rows = NULL, *exclude_rows = NULL;
    size_t n_exclude_rows = 0;
    uint64_t n_items;
    uint32_t dim, n_layers;
    double t0, t1, t2;
    int rc, ret = EXIT_RUNTIME;

    if (o->kernel && (rc = rp_set_kernel(o->kernel, &err)) != RP_OK) return runtime_error("--kernel", rc, &err);

    t0 = now_s();
    if ((rc = rp_pack_open_file(pack_path, &pack, &err)) != RP_OK) {
        fprintf(stderr, "rp-rank: cannot open pack %s\n", pack_path);
        return runtime_error("open", rc, &err);
    }
    memset(&rep, 0, sizeof rep);
    if ((rc = rp_pack_verify(pack, &rep, &err)) != RP_OK) {
        runtime_error("verify", rc, &err);
        goto done;
    }
    t1 = now_s();
    n_layers = rp_pack_n_layers(pack);
    n_items = rp_pack_n_items(pack);
    ids = rp_pack_item_ids(pack);
    if (o->layer >= n_layers) {
        fprintf(stderr, "rp-rank: --layer %" PRIu32 ": RP_E_ARGUMENT: the pack has %" PRIu32 " layer(s)\n", o->layer,
                n_layers);
        goto done;
    }
    if ((rc = rp_pack_layer_codec(pack, o->layer, &codec, &err)) != RP_OK) {
        runtime_error("layer codec", rc, &err);
        goto done;
    }
    dim = rp_codec_dim(codec);
    {
        uint32_t one_block;
        size_t n_bad = 0;
        if (rp_pack_bad_blocks(pack, o->layer, &one_block, 0, &n_bad, &err) == RP_OK && n_bad)
            fprintf(stderr, "rp-rank: warning: layer %" PRIu32 " has %zu damaged block(s): their items are skipped\n",
                    o->layer, n_bad);
        if (rep.truncated || rep.section_problems)
            fprintf(stderr, "rp-rank: warning: the pack is damaged (%s%" PRIu32 " section problem(s))\n",
                    rep.truncated ? "truncated, " : "", rep.section_problems);
    }

    /* The queries: little-endian float32, a whole number of dim-long vectors. */
    if (read_whole_file(query_path, &raw, &raw_size) != 0) goto done;
    if (dim == 0 || raw_size == 0 || raw_size % 4 != 0 || (raw_size / 4) % dim != 0) {
        fprintf(stderr,
                "rp-rank: query file: RP_E_DIMENSION: %zu bytes is not a positive multiple of dim %" PRIu32
                " float32 values (%" PRIu64 " bytes)\n",
                raw_size, dim, (uint64_t)dim * 4);
        goto done;
    }
    n_values = raw_size / 4;
    n_queries = n_values / dim;
    queries = xmalloc(n_values * sizeof(float));
    for (i = 0; i < n_values; i++) {
        const unsigned char *p = raw + 4 * i;
        uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        memcpy(&queries[i], &u, 4);
    }

    /* Excluded ids -> rows (ids the pack does not hold are ignored). */
    exclude_rows = xmalloc(o->n_exclude * sizeof(int64_t));
    for (i = 0; i < o->n_exclude; i++) {
        int64_t row = rp_pack_row_of(pack, o->exclude[i]);
        if (row >= 0) exclude_rows[n_exclude_rows++] = row;
    }

    if ((rc = rp_pack_scanner(pack, o->layer, &o->scan, &scanner, &err)) != RP_OK) {
        runtime_error("scanner", rc, &err);
        goto done;
    }
    t2 = now_s();
    rows = xmalloc((size_t)o->k * sizeof(int64_t));
    scores = xmalloc((size_t)o->k * sizeof(float));

    if (o->bench) {
        double *us = xmalloc((size_t)o->bench * sizeof(double));
        uint32_t n_out = 0;
        long b;
        /* one untimed warm-up search (first touch of the codes and tables) */
        if ((rc = rp_scanner_search(scanner, queries, o->k, exclude_rows, n_exclude_rows, rows, scores, &n_out,
                                    &err)) != RP_OK) {
            free(us);
            runtime_error("search", rc, &err);
            goto done;
        }
        for (b = 0; b < o->bench; b++) {
            double s = now_s();
            rc = rp_scanner_search(scanner, queries, o->k, exclude_rows, n_exclude_rows, rows, scores, &n_out, &err);
            us[b] = (now_s() - s) * 1e6;
            if (rc != RP_OK) {
                free(us);
                runtime_error("search", rc, &err);
                goto done;
            }
        }
        qsort(us, (size_t)o->bench, sizeof(double), cmp_double);
        printf("kernel %s\n", rp_scanner_kernel(scanner));
        printf("codec %s\n", rp_codec_spec(codec));
        printf("n_items %" PRIu64 "\n", n_items);
        printf("layer %" PRIu32 "\n", o->layer);
        printf("k %" PRIu32 "\n", o->k);
        printf("open_verify_ms %.3f\n", (t1 - t0) * 1e3);
        printf("scanner_ms %.3f\n", (t2 - t1) * 1e3);
        printf("scanner_bytes %zu\n", rp_scanner_memory(scanner));
        printf("searches %ld\n", o->bench);
        printf("search_us_median %.2f\n", us[(o->bench - 1) / 2]);
        printf("search_us_p90 %.2f\n", us[(size_t)((o->bench * 9 + 9) / 10) - 1]);
        free(us);
        ret = finish_output(0);
        goto done;
    }

    if (o->json)
        printf("{\"layer\": %" PRIu32 ", \"k\": %" PRIu32 ", \"kernel\": \"%s\", \"n_items\": %" PRIu64
               ", \"queries\": [",
               o->layer, o->k, rp_scanner_kernel(scanner), n_items);
    for (q = 0; q < n_queries; q++) {
        uint32_t n_out = 0, r;
        rc = rp_scanner_search(scanner, queries + q * dim, o->k, exclude_rows, n_exclude_rows, rows, scores, &n_out,
                               &err);
        if (rc != RP_OK) {
            char what[64];
            fflush(stdout);
            snprintf(what, sizeof what, "query %zu", q);
            runtime_error(what, rc, &err);
            goto done;
        }
        if (n_out > o->k) n_out = o->k;
        if (o->json) printf("%s{\"query\": %zu, \"ids\": [", q ? ", " : "", q);
        for (r = 0; r < n_out; r++) {
            int64_t row = rows[r];
            if (row < 0 || (uint64_t)row >= n_items || !ids) {
                fflush(stdout);
                fprintf(stderr, "rp-rank: query %zu: RP_E_FORMAT: the scanner returned row %" PRId64 "\n", q, row);
                goto done;
            }
            if (o->json)
                printf("%s%" PRId64, r ? ", " : "", ids[row]);
            else
                printf("%zu %" PRIu32 " %" PRId64 " %.9g\n", q, r, ids[row], (double)scores[r]);
        }
        if (o->json) {
            printf("], \"scores\": [");
            for (r = 0; r < n_out; r++) {
                if (isfinite(scores[r]))
                    printf("%s%.9g", r ? ", " : "", (double)scores[r]);
                else
                    printf("%snull", r ? ", " : "");
            }
            printf("]}");
        }
    }
    if (o->json) printf("]}\n");
    ret = finish_output(0);

done:
    if (scanner) rp_scanner_free(scanner);
    if (pack) rp_pack_close(pack);
    free(raw);
    free(queries);
    free(exclude_rows);
    free(rows);
    free(scores);
    return ret;
}

int main(int argc, char **argv) {
    options o;
    int ret;
    size_t i;
    parse_args(argc, argv, &o);
    if (o.check) {
        for (i = 0; i < o.n_positional; i++) check_one(o.positional[i]);
        ret = finish_output(0);
    } else {
        ret = rank(&o);
    }
    free(o.positional);
    free(o.exclude);
    return ret;
}
