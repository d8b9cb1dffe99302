/* The refinement frame RPRF (docs/FORMAT.md "Refinement frame", reelpack.format.refine). */
#include "internal.h"

int rp_refine_frame_parse(const void *frame, size_t size, rp_refine_frame *out, rp_error *err) {
    const uint8_t *p = (const uint8_t *)frame;
    uint32_t n, bpv, layer;
    uint64_t expected;
    if (out != NULL) memset(out, 0, sizeof *out);
    if (out == NULL || (frame == NULL && size > 0)) return rp_fail(err, RP_E_ARGUMENT, "rp_refine_frame_parse: NULL argument");
    if (size < 20)
        return rp_fail(err, RP_E_FORMAT, "refinement frame has %lu bytes, fewer than the 20 of an empty one", (unsigned long)size);
    if (memcmp(p, "RPRF", 4) != 0) return rp_fail(err, RP_E_FORMAT, "refinement frame magic must be RPRF");
    n = rp_le32(p + 4);
    bpv = rp_le32(p + 8);
    layer = rp_le32(p + 12);
    /* 20 + n (8 + B) <= 20 + (2^32 - 1)(2^32 + 7) < 2^65: compute without overflow */
    if ((uint64_t)bpv + 8u > (UINT64_MAX - 20u) / ((uint64_t)n ? (uint64_t)n : 1u))
        return rp_fail(err, RP_E_FORMAT, "refinement frame of n=%u, bytes_per_vector=%u cannot have %lu bytes", (unsigned)n,
                       (unsigned)bpv, (unsigned long)size);
    expected = 20u + (uint64_t)n * ((uint64_t)bpv + 8u);
    if (expected != (uint64_t)size)
        return rp_fail(err, RP_E_FORMAT, "refinement frame of n=%u, bytes_per_vector=%u must have %llu bytes, got %lu",
                       (unsigned)n, (unsigned)bpv, (unsigned long long)expected, (unsigned long)size);
    if (rp_crc32c(0, p, size - 4) != rp_le32(p + size - 4))
        return rp_fail(err, RP_E_CHECKSUM, "refinement frame CRC32C mismatch");
    out->n_items = n;
    out->bytes_per_vector = bpv;
    out->layer = layer;
    out->ids_le = p + 16;
    out->codes = p + 16 + (size_t)n * 8u;
    rp_clear(err);
    return RP_OK;
}

int64_t rp_refine_frame_id(const rp_refine_frame *frame, uint32_t i) {
    if (frame == NULL || frame->ids_le == NULL || i >= frame->n_items) return -1;
    return (int64_t)rp_le64(frame->ids_le + (size_t)i * 8u);
}
