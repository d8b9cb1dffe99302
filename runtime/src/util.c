/* Errors and version: rp_fail, rp_clear, rp_status_name, rp_version. */
#include "internal.h"

#include <stdio.h>

int rp_fail(rp_error *err, int code, const char *fmt, ...) {
    if (err != NULL) {
        va_list ap;
        size_t i;
        err->code = code;
        va_start(ap, fmt);
        /* vsnprintf truncates to the buffer and always NUL-terminates a non-empty buffer */
        if (vsnprintf(err->message, sizeof err->message, fmt, ap) < 0) err->message[0] = '\0';
        va_end(ap);
        err->message[sizeof err->message - 1] = '\0';
        for (i = 0; err->message[i] != '\0'; i++) /* one line */
            if (err->message[i] == '\n' || err->message[i] == '\r') err->message[i] = ' ';
    }
    return code;
}

void rp_clear(rp_error *err) {
    if (err != NULL) {
        err->code = RP_OK;
        err->message[0] = '\0';
    }
}

const char *rp_status_name(int code) {
    switch (code) {
    case RP_OK: return "RP_OK";
    case RP_E_ARGUMENT: return "RP_E_ARGUMENT";
    case RP_E_NOT_A_PACK: return "RP_E_NOT_A_PACK";
    case RP_E_VERSION: return "RP_E_VERSION";
    case RP_E_FORMAT: return "RP_E_FORMAT";
    case RP_E_CHECKSUM: return "RP_E_CHECKSUM";
    case RP_E_TRUNCATED: return "RP_E_TRUNCATED";
    case RP_E_UNSUPPORTED: return "RP_E_UNSUPPORTED";
    case RP_E_DIMENSION: return "RP_E_DIMENSION";
    case RP_E_NONFINITE: return "RP_E_NONFINITE";
    case RP_E_K_RANGE: return "RP_E_K_RANGE";
    case RP_E_NOMEM: return "RP_E_NOMEM";
    case RP_E_IO: return "RP_E_IO";
    case RP_E_DAMAGED: return "RP_E_DAMAGED";
    case RP_E_CODEC: return "RP_E_CODEC";
    default: return "RP_E_UNKNOWN";
    }
}

const char *rp_version(void) { return RP_VERSION_STRING; }
