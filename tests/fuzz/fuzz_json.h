/* Shared by the fuzz targets that print JSON: whatever Kiln prints must read
 * back as the same value. kn_json_loadb is the reader because the printer
 * writes u64 values (seeds beyond 2^63) as plain digits, which only it reads
 * back as the same value. */
#ifndef KN_FUZZ_JSON_H
#define KN_FUZZ_JSON_H

#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"

/* Aborts unless v printed by kn_json_dumps reads back as the same value. */
static inline void kn_fuzz_check_prints(const json_t *v) {
    char *s = kn_json_dumps(v, 0);
    if (!s) return; /* out of memory */
    json_error_t e;
    json_t *back = kn_json_loadb(s, strlen(s), &e);
    if (!back || !json_equal(back, v)) abort();
    json_decref(back);
    free(s);
}

#endif
