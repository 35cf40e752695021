/* libFuzzer target for the safetensors reader.
 *
 * Any input must either be rejected with a message or yield tensors whose
 * bytes all lie inside the data region (the input or its aligned copy) and that can be looked up by name. The data
 * is touched at both ends so ASan sees any tensor reaching past the buffer
 * (libFuzzer hands us an exactly sized heap copy). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink; /* keeps the reads of tensor data from being optimised away */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kn_st_file *f = NULL;
    kn_err err;
    kn_err_clear(&err);
    if (kn_st_open_memory(&f, data, size, "fuzz", &err) != KN_OK) {
        if (f != NULL || err.msg[0] == '\0') abort(); /* a refusal must say why and leave nothing open */
        return 0;
    }
    size_t region_len;
    const uint8_t *region = kn_st_data(f, &region_len); /* the input, or its aligned copy */
    if (region_len > size) abort();
    for (int i = 0; i < kn_st_count(f); i++) {
        const kn_tensor *t = kn_st_at(f, i);
        const uint8_t *p = t->data;
        size_t n = kn_tensor_nbytes(t), at = (size_t)((uintptr_t)p - (uintptr_t)region);
        if (n && (at > region_len || n > region_len - at)) abort(); /* also catches p < region: `at` wraps */
        if (n) sink ^= p[0] ^ p[n - 1];
        if (kn_st_find(f, t->name) != t) abort();
        kn_tensor g;
        /* May fail (an unusable scale_weight), but must not crash or read out of bounds. */
        if (kn_st_get(f, t->name, &g, &err) == KN_OK) {
            uint8_t s[sizeof g.scale];
            memcpy(s, &g.scale, sizeof s);
            sink ^= s[0];
        }
    }
    const char *v = kn_st_metadata(f, "format");
    if (v) sink ^= (uint8_t)v[0];
    kn_st_close(f);
    return 0;
}
