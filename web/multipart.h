/* kn_multipart: parse a multipart/form-data body held in memory (POST
 * /upload/image).
 *
 * Contract:
 *  - kn_multipart_parse takes the Content-Type header value and the body;
 *    it fills up to KN_MULTIPART_MAX_PARTS parts whose name/filename point
 *    into `names` storage owned by the result and whose data point into the
 *    body (which must outlive the result). A missing or bad boundary, a part
 *    without a terminating boundary, headers over 8 KiB or too many parts
 *    give KN_ERR_FORMAT with err set; nothing is allocated then.
 *  - filename is NULL when the part has none (a plain field); "" when the
 *    client sent an empty one. */
#ifndef KN_WEB_MULTIPART_H
#define KN_WEB_MULTIPART_H

#include <stddef.h>

#include "kernels/error.h"

#define KN_MULTIPART_MAX_PARTS 32
#define KN_MULTIPART_MAX_NAME 1024

typedef struct kn_multipart_part {
    const char *name, *filename;
    const char *data;
    size_t len;
} kn_multipart_part;

typedef struct kn_multipart {
    kn_multipart_part parts[KN_MULTIPART_MAX_PARTS];
    int n;
    char names[KN_MULTIPART_MAX_PARTS][2][KN_MULTIPART_MAX_NAME];
} kn_multipart;

/* *out is malloc'd (free() it) on success. */
int kn_multipart_parse(const char *content_type, const char *body, size_t len, kn_multipart **out, kn_err *err);
/* The part called name, or NULL. */
const kn_multipart_part *kn_multipart_get(const kn_multipart *mp, const char *name);

#endif
