/* libFuzzer target for the multipart/form-data parser of POST /upload/image
 * and /upload/mask (web/multipart.h).
 *
 * The input is "<Content-Type value>\n<body>". A parse either fails with a
 * message and no result, or gives at most KN_MULTIPART_MAX_PARTS parts whose
 * data lie inside the body, whose names are NUL-terminated within their
 * storage, and which kn_multipart_get finds by name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "web/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const kn_multipart *mp, const char *s) {
    const char *lo = (const char *)mp->names, *hi = lo + sizeof mp->names;
    return s >= lo && s < hi && memchr(s, '\0', (size_t)(hi - s)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t ct_len = nl ? (size_t)(nl - data) : size;
    char *ct = malloc(ct_len + 1);
    if (!ct) return 0;
    memcpy(ct, data, ct_len);
    ct[ct_len] = '\0';
    /* the body in its own allocation, so reads past it are caught */
    size_t len = nl ? size - ct_len - 1 : 0;
    char *body = malloc(len ? len : 1);
    if (!body) {
        free(ct);
        return 0;
    }
    if (len) memcpy(body, nl + 1, len);
    kn_multipart *mp = NULL;
    kn_err err;
    kn_err_clear(&err);
    int st = kn_multipart_parse(ct, body, len, &mp, &err);
    if (st != KN_OK) {
        if (mp || err.msg[0] == '\0') abort();
    } else {
        if (!mp || mp->n < 0 || mp->n > KN_MULTIPART_MAX_PARTS) abort();
        for (int i = 0; i < mp->n; i++) {
            const kn_multipart_part *p = &mp->parts[i];
            if (!p->name || !inside(mp, p->name) || (p->filename && !inside(mp, p->filename))) abort();
            if (p->len > len || (p->len && (p->data < body || p->data + p->len > body + len))) abort();
            const kn_multipart_part *found = kn_multipart_get(mp, p->name);
            if (!found || strcmp(found->name, p->name) != 0) abort();
        }
        free(mp);
    }
    free(body);
    free(ct);
    return 0;
}
