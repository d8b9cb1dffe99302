/* A small strict JSON reader (RFC 8259 plus what Python's json.loads also accepts: NaN, Infinity,
 * -Infinity), for RPCS codec headers and METADATA. Reads exactly `len` bytes (no NUL needed), checks
 * UTF-8 as Python's decoder does, nests at most RP_JSON_MAX_DEPTH containers, and allocates nodes in
 * proportion to the input (at most one node per input byte). Not installed; internal to the runtime. */
#ifndef REELPACK_JSON_H
#define REELPACK_JSON_H

#include <stddef.h>
#include <stdint.h>

#define RP_JSON_MAX_DEPTH 990 /* about where Python's json.loads raises RecursionError */
#define RP_JSON_NONE 0xFFFFFFFFu

typedef enum rp_json_type {
    RP_JSON_NULL = 0,
    RP_JSON_FALSE,
    RP_JSON_TRUE,
    RP_JSON_NUMBER,
    RP_JSON_STRING,
    RP_JSON_ARRAY,
    RP_JSON_OBJECT
} rp_json_type;

typedef struct rp_json_node {
    uint8_t type;      /* rp_json_type */
    uint8_t is_int;    /* number: an integer literal (no fraction, no exponent) */
    uint8_t big;       /* integer literal outside int64 (ival is then 0) */
    uint32_t parent;   /* index of the enclosing container, RP_JSON_NONE for the root */
    uint32_t next;     /* next sibling, RP_JSON_NONE */
    uint32_t child;    /* first child (array element or object member), RP_JSON_NONE */
    uint32_t last;     /* last child (while parsing) */
    uint32_t count;    /* number of children */
    int64_t ival;      /* integer value */
    const char *str;   /* string: decoded bytes (UTF-8; \u escapes of lone surrogates as 3-byte WTF-8) */
    size_t len;
    const char *key;   /* member of an object: its decoded key */
    size_t klen;
} rp_json_node;

typedef struct rp_json {
    rp_json_node *nodes; /* nodes[0] is the root */
    uint32_t n_nodes;
    char *pool;          /* decoded strings */
} rp_json;

/* 0 on success; -1 when the text is not valid JSON (a reason in `why`); -2 when out of memory. */
int rp_json_parse(const char *text, size_t len, rp_json *out, char *why, size_t why_size);
void rp_json_free(rp_json *json);
/* The member `key` of object `obj` (the last one when repeated, as Python's json), or NULL. */
const rp_json_node *rp_json_get(const rp_json *json, const rp_json_node *obj, const char *key);
/* Child / sibling navigation: NULL at the end. */
const rp_json_node *rp_json_child(const rp_json *json, const rp_json_node *node);
const rp_json_node *rp_json_next(const rp_json *json, const rp_json_node *node);
/* 1 when `node` is a string equal to `s`. */
int rp_json_is_str(const rp_json_node *node, const char *s);

#endif /* REELPACK_JSON_H */
