/* libFuzzer target for the extra_model_paths.yaml reader (runtime/extra_paths.h).
 *
 * Each input is the file's text. The reader must either give one models root (a
 * NUL-terminated path) or fail with a message naming the file, never both; reading the
 * same text twice gives the same answer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/extra_paths.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int read_root(const uint8_t *data, size_t size, char **root, kn_err *err) {
    static const char empty[1];
    FILE *f = fmemopen(size ? (void *)data : (void *)empty, size ? size : 1, "r");
    if (!f) abort();
    if (!size) fgetc(f); /* fmemopen needs a size: read past the one byte of an empty file */
    kn_err_clear(err);
    int rc = kn_extra_paths_root(f, "fuzz.yaml", root, err);
    fclose(f);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *a, *b;
    kn_err ea, eb;
    int ra = read_root(data, size, &a, &ea), rb = read_root(data, size, &b, &eb);
    if ((ra == KN_OK) != (a != NULL) || ra != rb) abort();
    if (ra && (!strstr(ea.msg, "fuzz.yaml") || strcmp(ea.msg, eb.msg) != 0)) abort();
    if (!ra && (strlen(a) == 0 || strcmp(a, b) != 0)) abort();
    free(a);
    free(b);
    return 0;
}
