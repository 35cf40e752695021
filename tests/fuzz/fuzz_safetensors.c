/* libFuzzer target for the safetensors reader.
 *
 * Any input must either be rejected with a message or yield tensors whose
 * bytes all lie inside the data region (the input or its aligned copy) and that can be looked up by name. The data
 * is touched at both ends so ASan sees any tensor reaching past the buffer
 * (libFuzzer hands us an exactly sized heap copy). A prefix view (the first
 * tensor's name up to its first '.') must hold exactly the file's tensors
 * under that prefix, each the same data, and outlive the file's close. */
#include <stdint.h>
#include <stdio.h>
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
    char prefix[64] = "";
    if (kn_st_count(f)) {
        const char *name = kn_st_at(f, 0)->name, *dot = strchr(name, '.');
        size_t len = dot ? (size_t)(dot - name) + 1 : strlen(name);
        snprintf(prefix, sizeof prefix, "%.*s", (int)(len < sizeof prefix ? len : sizeof prefix - 1), name);
    }
    kn_st_file *view = NULL;
    if (kn_st_view(&view, f, prefix, &err) != KN_OK) abort(); /* only fails when out of memory */
    int under = 0;
    for (int i = 0; i < kn_st_count(f); i++) under += strncmp(kn_st_at(f, i)->name, prefix, strlen(prefix)) == 0;
    if (kn_st_count(view) != under) abort();
    for (int i = 0; i < kn_st_count(view); i++) {
        const kn_tensor *t = kn_st_at(view, i);
        char full[4096];
        snprintf(full, sizeof full, "%s%s", prefix, t->name);
        const kn_tensor *in_file = strlen(full) < sizeof full - 1 ? kn_st_find(f, full) : NULL;
        if (kn_st_find(view, t->name) != t || (in_file && in_file->data != t->data)) abort();
    }
    kn_st_close(f); /* the view keeps the data */
    for (int i = 0; i < kn_st_count(view); i++) {
        const kn_tensor *t = kn_st_at(view, i);
        if (kn_tensor_nbytes(t)) sink ^= ((const uint8_t *)t->data)[0];
    }
    kn_st_close(view);
    return 0;
}
