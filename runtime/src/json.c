/* A small strict JSON reader: see json.h. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const unsigned char *p, *end, *start;
    rp_json *out;
    uint32_t cap;
    size_t pool_used;
    char *why;
    size_t why_size;
} parser;

static int fail(parser *ps, const char *what) {
    if (ps->why != NULL && ps->why_size > 0)
        snprintf(ps->why, ps->why_size, "%s at byte %lu", what, (unsigned long)(ps->p - ps->start));
    return -1;
}

/* Strict UTF-8 as Python's decoder: no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c == 0xE0) { k = 2; lo = 0xA0; }
        else if (c == 0xED) { k = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) k = 2;
        else if (c == 0xF0) { k = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) k = 3;
        else if (c == 0xF4) { k = 3; hi = 0x8F; }
        else return i;
        if (n - i <= k) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        if (k >= 2 && (s[i + 2] & 0xC0) != 0x80) return i;
        if (k == 3 && (s[i + 3] & 0xC0) != 0x80) return i;
        i += k + 1;
    }
    return n;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int new_node(parser *ps, uint8_t type, uint32_t parent, uint32_t *index) {
    rp_json *j = ps->out;
    rp_json_node *nd;
    if (j->n_nodes == ps->cap) {
        /* at most one node per input byte (+1): a value takes at least one byte */
        size_t limit = (size_t)(ps->end - ps->start) + 1;
        size_t cap = ps->cap ? (size_t)ps->cap * 2 : 16;
        rp_json_node *grown;
        if (cap > limit) cap = limit;
        if (cap <= ps->cap || cap > 0xFFFFFFF0u || cap > ((size_t)-1) / sizeof(rp_json_node)) return -2;
        grown = (rp_json_node *)realloc(j->nodes, cap * sizeof(rp_json_node));
        if (grown == NULL) return -2;
        j->nodes = grown;
        ps->cap = (uint32_t)cap;
    }
    *index = j->n_nodes++;
    nd = &j->nodes[*index];
    memset(nd, 0, sizeof *nd);
    nd->type = type;
    nd->parent = parent;
    nd->next = nd->child = nd->last = RP_JSON_NONE;
    if (parent != RP_JSON_NONE) {
        rp_json_node *par = &j->nodes[parent];
        if (par->last == RP_JSON_NONE) par->child = *index;
        else j->nodes[par->last].next = *index;
        par->last = *index;
        par->count++;
    }
    return 0;
}

static int hex4(const unsigned char *p, unsigned *v) {
    unsigned r = 0;
    int i;
    for (i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        r = r * 16 + d;
    }
    *v = r;
    return 0;
}

/* Parse a string at ps->p (the opening quote); its decoded bytes go to the pool. */
static int parse_string(parser *ps, const char **str, size_t *len) {
    char *dst = ps->out->pool + ps->pool_used;
    size_t n = 0;
    ps->p++; /* the quote */
    for (;;) {
        unsigned c;
        if (ps->p >= ps->end) return fail(ps, "unterminated string");
        c = *ps->p;
        if (c == '"') { ps->p++; break; }
        if (c < 0x20) return fail(ps, "invalid control character in string");
        if (c != '\\') { dst[n++] = (char)c; ps->p++; continue; }
        if (ps->end - ps->p < 2) return fail(ps, "unterminated string");
        c = ps->p[1];
        ps->p += 2;
        switch (c) {
        case '"': dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; break;
        case '/': dst[n++] = '/'; break;
        case 'b': dst[n++] = '\b'; break;
        case 'f': dst[n++] = '\f'; break;
        case 'n': dst[n++] = '\n'; break;
        case 'r': dst[n++] = '\r'; break;
        case 't': dst[n++] = '\t'; break;
        case 'u': {
            unsigned u, u2;
            if (ps->end - ps->p < 4 || hex4(ps->p, &u) != 0) return fail(ps, "invalid \\uXXXX escape");
            ps->p += 4;
            if (u >= 0xD800 && u <= 0xDBFF && ps->end - ps->p > 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                if (hex4(ps->p + 2, &u2) != 0) return fail(ps, "invalid \\uXXXX escape");
                if (u2 >= 0xDC00 && u2 <= 0xDFFF) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00);
                    ps->p += 6;
                }
            }
            /* 6 or 12 escape bytes decode to at most 4: the pool never outgrows the input */
            if (u < 0x80) dst[n++] = (char)u;
            else if (u < 0x800) {
                dst[n++] = (char)(0xC0 | (u >> 6));
                dst[n++] = (char)(0x80 | (u & 0x3F));
            } else if (u < 0x10000) {
                dst[n++] = (char)(0xE0 | (u >> 12));
                dst[n++] = (char)(0x80 | ((u >> 6) & 0x3F));
                dst[n++] = (char)(0x80 | (u & 0x3F));
            } else {
                dst[n++] = (char)(0xF0 | (u >> 18));
                dst[n++] = (char)(0x80 | ((u >> 12) & 0x3F));
                dst[n++] = (char)(0x80 | ((u >> 6) & 0x3F));
                dst[n++] = (char)(0x80 | (u & 0x3F));
            }
            break;
        }
        default: ps->p -= 2; return fail(ps, "invalid escape");
        }
    }
    *str = dst;
    *len = n;
    ps->pool_used += n;
    return 0;
}

static int match_word(parser *ps, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0) return 0;
    ps->p += n;
    return 1;
}

/* Parse one scalar or open a container; *opened = 1 for a container. */
static int parse_value(parser *ps, uint32_t parent, const char *key, size_t klen, uint32_t *index, int *opened) {
    unsigned c;
    int rc;
    *opened = 0;
    if (ps->p >= ps->end) return fail(ps, "expecting value");
    c = *ps->p;
    if (c == '{' || c == '[') {
        if ((rc = new_node(ps, c == '{' ? RP_JSON_OBJECT : RP_JSON_ARRAY, parent, index)) != 0) return rc;
        ps->p++;
        *opened = 1;
    } else if (c == '"') {
        const char *s;
        size_t n;
        if ((rc = parse_string(ps, &s, &n)) != 0) return rc;
        if ((rc = new_node(ps, RP_JSON_STRING, parent, index)) != 0) return rc;
        ps->out->nodes[*index].str = s;
        ps->out->nodes[*index].len = n;
    } else if (match_word(ps, "true")) {
        if ((rc = new_node(ps, RP_JSON_TRUE, parent, index)) != 0) return rc;
    } else if (match_word(ps, "false")) {
        if ((rc = new_node(ps, RP_JSON_FALSE, parent, index)) != 0) return rc;
    } else if (match_word(ps, "null")) {
        if ((rc = new_node(ps, RP_JSON_NULL, parent, index)) != 0) return rc;
    } else if (match_word(ps, "NaN") || match_word(ps, "Infinity") || match_word(ps, "-Infinity")) {
        if ((rc = new_node(ps, RP_JSON_NUMBER, parent, index)) != 0) return rc;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        const unsigned char *q = ps->p, *digits;
        int neg = 0, is_int = 1, big = 0;
        uint64_t mag = 0;
        size_t nd;
        if (*q == '-') { neg = 1; q++; }
        if (q >= ps->end || *q < '0' || *q > '9') return fail(ps, "expecting value");
        digits = q;
        if (*q == '0') q++;
        else
            while (q < ps->end && *q >= '0' && *q <= '9') {
                unsigned d = (unsigned)(*q - '0');
                if (mag > (UINT64_MAX - d) / 10) big = 1;
                else mag = mag * 10 + d;
                q++;
            }
        nd = (size_t)(q - digits);
        if (q + 1 < ps->end && *q == '.' && q[1] >= '0' && q[1] <= '9') {
            is_int = 0;
            q++;
            while (q < ps->end && *q >= '0' && *q <= '9') q++;
        }
        if (q < ps->end && (*q == 'e' || *q == 'E')) {
            const unsigned char *e = q + 1;
            if (e < ps->end && (*e == '+' || *e == '-')) e++;
            if (e < ps->end && *e >= '0' && *e <= '9') {
                is_int = 0;
                while (e < ps->end && *e >= '0' && *e <= '9') e++;
                q = e;
            }
        }
        if (is_int && nd > 4300) return fail(ps, "integer literal exceeds 4300 digits");
        if ((rc = new_node(ps, RP_JSON_NUMBER, parent, index)) != 0) return rc;
        {
            rp_json_node *nd_ = &ps->out->nodes[*index];
            nd_->is_int = (uint8_t)is_int;
            if (is_int) {
                if (big || (!neg && mag > (uint64_t)INT64_MAX) || (neg && mag > (uint64_t)INT64_MAX + 1u)) {
                    nd_->big = 1;
                } else if (neg) {
                    nd_->ival = mag == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)mag;
                } else {
                    nd_->ival = (int64_t)mag;
                }
            }
        }
        ps->p = q;
    } else {
        return fail(ps, "expecting value");
    }
    ps->out->nodes[*index].key = key;
    ps->out->nodes[*index].klen = klen;
    return 0;
}

int rp_json_parse(const char *text, size_t len, rp_json *out, char *why, size_t why_size) {
    parser ps;
    uint32_t cur = RP_JSON_NONE; /* the innermost open container */
    uint32_t depth = 0;
    int rc;
    size_t bad;
    memset(out, 0, sizeof *out);
    memset(&ps, 0, sizeof ps);
    ps.start = ps.p = (const unsigned char *)text;
    ps.end = ps.p + len;
    ps.out = out;
    ps.why = why;
    ps.why_size = why_size;
    if (why != NULL && why_size > 0) why[0] = '\0';
    if (text == NULL && len > 0) return fail(&ps, "no text");
    bad = utf8_invalid_at(ps.start, len);
    if (bad != len) {
        ps.p = ps.start + bad;
        return fail(&ps, "invalid UTF-8");
    }
    out->pool = (char *)malloc(len ? len : 1);
    if (out->pool == NULL) return -2;

    /* state: expecting a value (possibly the root); after a value, close or continue the container */
    skip_ws(&ps);
    {
        uint32_t idx;
        int opened;
        const char *key = NULL;
        size_t klen = 0;
        int need_value = 1;
        for (;;) {
            if (need_value) {
                if ((rc = parse_value(&ps, cur, key, klen, &idx, &opened)) != 0) goto error;
                key = NULL;
                klen = 0;
                need_value = 0;
                if (opened) {
                    if (++depth > RP_JSON_MAX_DEPTH) { rc = fail(&ps, "nesting too deep"); goto error; }
                    cur = idx;
                    skip_ws(&ps);
                    if (ps.p < ps.end && *ps.p == (out->nodes[cur].type == RP_JSON_OBJECT ? '}' : ']')) {
                        ps.p++; /* empty container: closes at once */
                        depth--;
                        cur = out->nodes[cur].parent;
                    } else if (out->nodes[cur].type == RP_JSON_OBJECT) {
                        goto member;
                    } else {
                        need_value = 1;
                        continue;
                    }
                }
            }
            /* after a value */
            if (cur == RP_JSON_NONE) break;
            skip_ws(&ps);
            if (ps.p >= ps.end) { rc = fail(&ps, "unterminated container"); goto error; }
            if (*ps.p == ',') {
                ps.p++;
                skip_ws(&ps);
                if (out->nodes[cur].type == RP_JSON_OBJECT) goto member;
                need_value = 1;
                continue;
            }
            if (*ps.p == (out->nodes[cur].type == RP_JSON_OBJECT ? '}' : ']')) {
                ps.p++;
                depth--;
                cur = out->nodes[cur].parent;
                continue;
            }
            rc = fail(&ps, "expecting ',' or a closing bracket");
            goto error;
        member:
            if (ps.p >= ps.end || *ps.p != '"') { rc = fail(&ps, "expecting a property name"); goto error; }
            if ((rc = parse_string(&ps, &key, &klen)) != 0) goto error;
            skip_ws(&ps);
            if (ps.p >= ps.end || *ps.p != ':') { rc = fail(&ps, "expecting ':'"); goto error; }
            ps.p++;
            skip_ws(&ps);
            need_value = 1;
        }
    }
    skip_ws(&ps);
    if (ps.p != ps.end) { rc = fail(&ps, "extra data"); goto error; }
    return 0;
error:
    rp_json_free(out);
    return rc;
}

void rp_json_free(rp_json *json) {
    if (json == NULL) return;
    free(json->nodes);
    free(json->pool);
    json->nodes = NULL;
    json->pool = NULL;
    json->n_nodes = 0;
}

const rp_json_node *rp_json_get(const rp_json *json, const rp_json_node *obj, const char *key) {
    const rp_json_node *found = NULL;
    size_t kl = strlen(key);
    uint32_t i;
    if (obj == NULL || obj->type != RP_JSON_OBJECT) return NULL;
    for (i = obj->child; i != RP_JSON_NONE; i = json->nodes[i].next) {
        const rp_json_node *m = &json->nodes[i];
        if (m->klen == kl && memcmp(m->key, key, kl) == 0) found = m;
    }
    return found;
}

const rp_json_node *rp_json_child(const rp_json *json, const rp_json_node *node) {
    if (node == NULL || node->child == RP_JSON_NONE) return NULL;
    return &json->nodes[node->child];
}

const rp_json_node *rp_json_next(const rp_json *json, const rp_json_node *node) {
    if (node == NULL || node->next == RP_JSON_NONE) return NULL;
    return &json->nodes[node->next];
}

int rp_json_is_str(const rp_json_node *node, const char *s) {
    size_t n = strlen(s);
    return node != NULL && node->type == RP_JSON_STRING && node->len == n && memcmp(node->str, s, n) == 0;
}
