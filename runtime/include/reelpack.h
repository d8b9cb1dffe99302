/*
 * reelpack runtime: read a reelpack pack (docs/FORMAT.md) and rank it on a device.
 *
 * A dependency-free C99 library (libc only). It opens a pack from memory or a file, checks every
 * CRC32C, decodes the item ids, loads the codec of each layer and ranks one user's query against a
 * layer with a fused score + top-K (NEON on aarch64, AVX2 on x86-64, portable C elsewhere, chosen at
 * run time). Every function that can fail returns an rp_status and, when `err` is not NULL, fills it
 * with the same code and a one-line message. No function aborts, and no input (a hostile pack, a NaN
 * query, a K out of range) makes the library read outside the buffers it was given.
 *
 * Thread safety: an opened rp_pack and rp_codec are read-only and may be shared between threads once
 * open, except rp_pack_verify / rp_pack_block_status / rp_pack_bad_blocks / rp_pack_layer_codec /
 * rp_pack_layer_info / rp_pack_layer_codes / rp_pack_scanner / rp_pack_search, which may fill caches (the
 * codecs, the block statuses, the decoded codes of entropy-coded layers, and the reconstruction norms of rq -n
 * layers, filled once both of the next two calls have run): call rp_pack_verify and rp_pack_layer_codec on every
 * layer once before sharing. An rp_scanner holds scratch memory: use one per
 * thread.
 *
 * Scores are inner products of the query with the decoded items (the codec's own estimator where it
 * has one), as reelpack's Python `Codec.score`; ids come back best first, ties to the lower row.
 */
#ifndef REELPACK_H
#define REELPACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RP_VERSION_STRING "0.1.0"
#define RP_FORMAT_MAJOR 1

/* ---- status codes -------------------------------------------------------------------------- */
typedef enum rp_status {
    RP_OK = 0,
    RP_E_ARGUMENT = 1,     /* a NULL pointer, a layer or block out of range, a bad option */
    RP_E_NOT_A_PACK = 2,   /* wrong magic */
    RP_E_VERSION = 3,      /* a format major (or codec state version) this runtime does not read */
    RP_E_FORMAT = 4,       /* a structure that breaks docs/FORMAT.md (lengths, offsets, counts, tiling) */
    RP_E_CHECKSUM = 5,     /* a CRC32C mismatch */
    RP_E_TRUNCATED = 6,    /* fewer bytes than the pack needs */
    RP_E_UNSUPPORTED = 7,  /* a REQUIRED section type or a codec family not implemented; an entropy-coded layer too
                              large to decode into memory here */
    RP_E_DIMENSION = 8,    /* a query or code width that does not match the codec */
    RP_E_NONFINITE = 9,    /* a NaN, an Inf or a value beyond 1e30 in a query; or scores that overflow float32 */
    RP_E_K_RANGE = 10,     /* K outside 1..n_items (or above RP_MAX_K) */
    RP_E_NOMEM = 11,       /* an allocation failed */
    RP_E_IO = 12,          /* a file could not be opened, mapped or read */
    RP_E_DAMAGED = 13,     /* the layer or block asked for is damaged (its CRC32C failed or it is missing) */
    RP_E_CODEC = 14        /* a codec state (RPCS) whose header or arrays are invalid */
} rp_status;

#define RP_MAX_K (1u << 20)
#define RP_MESSAGE_SIZE 256

typedef struct rp_error {
    int code;                       /* an rp_status */
    char message[RP_MESSAGE_SIZE];  /* NUL-terminated, one line; never names a file path */
} rp_error;

/* The name of a status code ("RP_E_CHECKSUM"), or "RP_E_UNKNOWN". */
const char *rp_status_name(int code);
/* The runtime's version string (RP_VERSION_STRING). */
const char *rp_version(void);

/* ---- kernels ------------------------------------------------------------------------------- */
/* The code path rankings use: "neon", "avx2" or "portable". */
const char *rp_kernel_name(void);
/* Force a code path: "auto" (the default: the best the CPU has), "portable", "avx2" or "neon".
 * A path the CPU (or this build) lacks is refused with RP_E_UNSUPPORTED. The environment variable
 * REELPACK_NO_SIMD=1 makes "auto" portable. Process-wide; call it before ranking starts. */
int rp_set_kernel(const char *name, rp_error *err);

/* ---- CRC32C ---------------------------------------------------------------------------------- */
/* CRC32C (Castagnoli) of `size` bytes, continuing from `crc` (0 to start). SSE4.2 / ARMv8 CRC
 * instructions where present, a table otherwise. */
uint32_t rp_crc32c(uint32_t crc, const void *data, size_t size);

/* ---- codecs ---------------------------------------------------------------------------------- */
typedef struct rp_codec rp_codec;

/* Load a fitted codec from its RPCS state (a pack's CODEC section, Python's Codec.to_bytes()).
 * The arrays are copied: `state` may be freed afterwards. A family this runtime does not implement
 * is refused with RP_E_UNSUPPORTED and its spec named in the message. */
int rp_codec_open(const void *state, size_t size, rp_codec **out, rp_error *err);
void rp_codec_free(rp_codec *codec);
const char *rp_codec_spec(const rp_codec *codec);    /* the factory string, e.g. "opq16,pq16" */
const char *rp_codec_family(const rp_codec *codec);  /* "float32" "fp16" "sq" "pq" "opq" "apq" "opq-apq" "rq" "simhash" "rabitq" */
uint32_t rp_codec_dim(const rp_codec *codec);
uint32_t rp_codec_bytes_per_vector(const rp_codec *codec);
/* Stages of a progressive codec (rq: the number of stages; 1 for the others). */
uint32_t rp_codec_stages(const rp_codec *codec);
/* Bytes of a code prefix holding the first `stages` stages (rq; bytes_per_vector for the others). */
uint32_t rp_codec_prefix_bytes(const rp_codec *codec, uint32_t stages);

/* Score every code against one query: out[i] = score of codes[i * stride ...] (float32 [n]).
 * `query` float32 [dim]; `stride` >= the bytes the codec reads (0 = bytes_per_vector); `stages`
 * (rq only, 0 = all) scores with a code prefix. */
int rp_codec_score(const rp_codec *codec, const float *query, const uint8_t *codes, uint64_t n,
                   size_t stride, uint32_t stages, float *out, rp_error *err);

/* ---- scanners: fused score + top-K over a catalog of codes ---------------------------------- */
typedef struct rp_scanner rp_scanner;

typedef struct rp_scan_options {
    uint32_t stages;      /* rq: score with the first `stages` stages (0 = all) */
    size_t stride;        /* bytes between consecutive codes (0 = bytes_per_vector, or the prefix bytes) */
    int query_bits;       /* simhash (asymmetric): bits per quantised query coordinate, 1..16 (0 = 8) */
    int approximate;      /* 4-bit pq: 1 = skip the exact rescoring (faiss fast-scan semantics) */
} rp_scan_options;

/* Prepare `n` codes for ranking (codes are read in place, except 4-bit PQ, which copies them into
 * its block layout). `codes` must stay valid while the scanner is used; `opts` may be NULL. */
int rp_scanner_new(const rp_codec *codec, const uint8_t *codes, uint64_t n, const rp_scan_options *opts,
                   rp_scanner **out, rp_error *err);
void rp_scanner_free(rp_scanner *scanner);
/* The kernel the scanner runs, e.g. "pq8-avx2", "fs4-neon", "sq8-portable". */
const char *rp_scanner_kernel(const rp_scanner *scanner);
/* Bytes of memory the scanner allocated (prepared layouts and scratch). */
size_t rp_scanner_memory(const rp_scanner *scanner);

/* Rank: the `k` best rows for `query` (float32 [dim]), best first, ties to the lower row.
 * `exclude_rows` (any order, may repeat, may be NULL) are never returned: a user's seen items.
 * Writes *n_out <= k results to out_rows (int64 [k]) and out_scores (float32 [k]); fewer than k only
 * when fewer rows remain after exclusion, and the places after them then hold row -1 and score -INFINITY.
 * 1 <= k <= min(n, RP_MAX_K), else RP_E_K_RANGE. */
int rp_scanner_search(rp_scanner *scanner, const float *query, uint32_t k, const int64_t *exclude_rows,
                      size_t n_exclude, int64_t *out_rows, float *out_scores, uint32_t *n_out, rp_error *err);

/* ---- packs ----------------------------------------------------------------------------------- */
typedef struct rp_pack rp_pack;

/* Open a pack held in memory (borrowed: it must outlive the pack). Checks the header, the section
 * table, the tiling, ITEM_IDS, LAYERS and BLOCK_INDEX (with their CRC32Cs) and decodes the item ids,
 * like reelpack's Python PackReader. Block CRCs are checked by rp_pack_verify / rp_pack_block_status.
 * A buffer shorter than the header's file_length opens as truncated when the directory is intact. */
int rp_pack_open_memory(const void *data, size_t size, rp_pack **out, rp_error *err);
/* Open a pack file: memory-mapped where the platform has mmap, else read into memory. */
int rp_pack_open_file(const char *path, rp_pack **out, rp_error *err);
void rp_pack_close(rp_pack *pack);

uint64_t rp_pack_n_items(const rp_pack *pack);
uint32_t rp_pack_n_layers(const rp_pack *pack);
int rp_pack_truncated(const rp_pack *pack);     /* 1 when the buffer is shorter than file_length */
/* The sorted item ids, int64 [n_items]; row i of every layer belongs to id i. */
const int64_t *rp_pack_item_ids(const rp_pack *pack);
/* The row of an item id (binary search), or -1 when the pack does not hold it. */
int64_t rp_pack_row_of(const rp_pack *pack, int64_t item_id);
/* The METADATA JSON text (not NUL-terminated) and its length; NULL when absent or damaged. */
const char *rp_pack_metadata(const rp_pack *pack, size_t *length);

typedef struct rp_layer_info {
    uint32_t index;
    uint32_t bytes_per_vector;
    uint32_t items_per_block;
    uint32_t n_blocks;
    uint32_t dim;            /* from the CODEC header; 0 when unreadable */
    int entropy_coded;
    int status;              /* RP_OK when the layer can be ranked; else why not (RP_E_CHECKSUM,
                                RP_E_TRUNCATED, RP_E_CODEC for its CODEC section, RP_E_UNSUPPORTED;
                                entropy-coded: RP_E_FORMAT when its ENTROPY_MODEL is missing or invalid,
                                RP_E_CHECKSUM / RP_E_TRUNCATED when that section is damaged) */
    char spec[64];           /* the codec's factory string from its CODEC header ("" when unreadable) */
    char family[16];
} rp_layer_info;

int rp_pack_layer_info(rp_pack *pack, uint32_t layer, rp_layer_info *out, rp_error *err);
/* The layer's codec (owned by the pack; built on first use). */
int rp_pack_layer_codec(rp_pack *pack, uint32_t layer, const rp_codec **out, rp_error *err);
/* The layer's codes as one row-major uint8 [n_items, B] array inside the pack buffer (some blocks
 * may be damaged: check them with rp_pack_block_status). For an entropy-coded layer, the blocks are
 * decoded on first use (of this, rp_pack_block_status, rp_pack_verify or rp_pack_scanner) into an array
 * the pack owns (n_items x B bytes; the rows of damaged blocks are zero); NULL when its model is unusable
 * or memory runs out. Valid until rp_pack_close. */
const uint8_t *rp_pack_layer_codes(const rp_pack *pack, uint32_t layer);

/* RP_OK, RP_E_CHECKSUM (CRC32C mismatch, the layer's CODEC section is damaged, or an entropy-coded
 * block that matches its CRC32C but does not decode), RP_E_TRUNCATED (beyond the end of a truncated
 * pack), RP_E_FORMAT (the CODEC section is invalid, or an entropy-coded layer's ENTROPY_MODEL is missing
 * or invalid) or RP_E_UNSUPPORTED (an entropy-coded layer too large to decode here); RP_E_ARGUMENT for a
 * layer/block out of range, RP_E_NOMEM when decoding ran out of memory. */
int rp_pack_block_status(rp_pack *pack, uint32_t layer, uint32_t block);

typedef struct rp_verify_report {
    uint64_t bad_blocks;          /* blocks (all layers) that cannot be used */
    uint64_t missing_items;       /* (layer, item) pairs whose codes cannot be read */
    uint32_t section_problems;    /* CODEC, CORRECTIONS, METADATA, ENTROPY_MODEL, PARITY, application
                                     sections whose CRC32C fails, that are truncated or invalid */
    int truncated;
} rp_verify_report;

/* Check every CRC32C (sections and blocks). RP_OK when the pack could be checked (damage is in
 * the report, not in the return code). */
int rp_pack_verify(rp_pack *pack, rp_verify_report *report, rp_error *err);
/* The damaged blocks of a layer: writes up to `cap` block numbers and the total count to *n_bad.
 * Block b holds rows [b * items_per_block, min(n_items, (b + 1) * items_per_block)); the items it holds are
 * rp_pack_item_ids(pack)[row] for those rows (the ones a scanner of this layer never returns). */
int rp_pack_bad_blocks(rp_pack *pack, uint32_t layer, uint32_t *blocks, size_t cap, size_t *n_bad, rp_error *err);

/* A scanner over a layer's intact blocks (damaged blocks are skipped: their items are never
 * returned). Rows are pack rows: map them to item ids with rp_pack_item_ids. `opts->stride` must be 0
 * or the layer's bytes per vector (a stage prefix is read in place in the layer's rows). */
int rp_pack_scanner(rp_pack *pack, uint32_t layer, const rp_scan_options *opts, rp_scanner **out, rp_error *err);

/* One-shot ranking of a layer for one user: the `k` best item ids (not rows) and scores, excluding
 * `exclude_ids` (item ids; ids the pack does not hold are ignored). */
int rp_pack_search(rp_pack *pack, uint32_t layer, const float *query, uint32_t k, const int64_t *exclude_ids,
                   size_t n_exclude, int64_t *out_ids, float *out_scores, uint32_t *n_out, rp_error *err);

/* ---- refinement (the two-layer progressive flow) --------------------------------------------- */
typedef struct rp_refine_frame {
    uint32_t n_items;
    uint32_t bytes_per_vector;
    uint32_t layer;
    const uint8_t *ids_le;     /* n_items int64 little-endian ids (unaligned: read with rp_refine_frame_id) */
    const uint8_t *codes;      /* uint8 [n_items, bytes_per_vector] */
} rp_refine_frame;

/* Parse an RPRF frame (docs/FORMAT.md, "Refinement frame"): size, magic, exact length, CRC32C. */
int rp_refine_frame_parse(const void *frame, size_t size, rp_refine_frame *out, rp_error *err);
int64_t rp_refine_frame_id(const rp_refine_frame *frame, uint32_t i);

/* Rescore the frame's candidates with `codec` (the refinement layer's codec) and return the `k`
 * best of them (item ids and scores, best first, ties to the earlier frame position); k is capped
 * at the frame's item count. The frame's bytes_per_vector must equal the codec's. */
int rp_refine(const rp_codec *codec, const float *query, const rp_refine_frame *frame, uint32_t k,
              int64_t *out_ids, float *out_scores, uint32_t *n_out, rp_error *err);

#ifdef __cplusplus
}
#endif
#endif /* REELPACK_H */
