/* multipart/form-data parsing: see web/multipart.h. */
#include "web/multipart.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KN_MULTIPART_MAX_HEADERS 8192
#define KN_MULTIPART_MAX_BOUNDARY 200

/* Finds parameter `key` in a header value "a; key=value; key2="v"" (case-
 * insensitive key, quoted or bare value) and copies it into dst. Returns
 * false when absent or too long. */
static bool header_param(const char *v, size_t len, const char *key, char *dst, size_t dst_len) {
    size_t klen = strlen(key);
    for (size_t i = 0; i < len;) {
        while (i < len && (v[i] == ';' || v[i] == ' ' || v[i] == '\t')) i++;
        size_t start = i;
        while (i < len && v[i] != '=' && v[i] != ';') i++;
        bool match = i - start == klen && strncasecmp(v + start, key, klen) == 0 && i < len && v[i] == '=';
        if (i < len && v[i] == '=') i++;
        size_t vs = i, ve;
        if (i < len && v[i] == '"') {
            vs = ++i;
            while (i < len && v[i] != '"') i++;
            ve = i;
            if (i < len) i++;
        } else {
            while (i < len && v[i] != ';') i++;
            ve = i;
            while (ve > vs && (v[ve - 1] == ' ' || v[ve - 1] == '\t')) ve--;
        }
        if (match) {
            if (ve - vs >= dst_len) return false;
            memcpy(dst, v + vs, ve - vs);
            dst[ve - vs] = '\0';
            return true;
        }
        while (i < len && v[i] != ';') i++;
    }
    return false;
}

static const char *find(const char *hay, size_t hay_len, const char *needle, size_t n) {
    return n <= hay_len ? memmem(hay, hay_len, needle, n) : NULL;
}

/* Reads the part headers in [h, h + len): its name and filename. */
static int part_headers(const char *h, size_t len, char *name, char *filename, bool *has_filename, kn_err *err) {
    name[0] = filename[0] = '\0';
    *has_filename = false;
    bool disposition = false;
    for (size_t i = 0; i < len;) {
        const char *eol = find(h + i, len - i, "\r\n", 2);
        size_t line = eol ? (size_t)(eol - (h + i)) : len - i;
        const char *l = h + i;
        static const char cd[] = "content-disposition:";
        if (line >= sizeof cd - 1 && strncasecmp(l, cd, sizeof cd - 1) == 0) {
            const char *v = l + sizeof cd - 1;
            size_t vlen = line - (sizeof cd - 1);
            if (!header_param(v, vlen, "name", name, KN_MULTIPART_MAX_NAME))
                return kn_fail(err, KN_ERR_FORMAT, "multipart: a part has no usable name");
            *has_filename = header_param(v, vlen, "filename", filename, KN_MULTIPART_MAX_NAME);
            disposition = true;
        }
        i += line + 2;
    }
    return disposition ? KN_OK : kn_fail(err, KN_ERR_FORMAT, "multipart: a part has no Content-Disposition");
}

int kn_multipart_parse(const char *content_type, const char *body, size_t len, kn_multipart **out, kn_err *err) {
    *out = NULL;
    static const char mf[] = "multipart/form-data";
    if (!content_type || strncasecmp(content_type, mf, sizeof mf - 1) != 0)
        return kn_fail(err, KN_ERR_FORMAT, "expected a multipart/form-data body");
    char boundary[KN_MULTIPART_MAX_BOUNDARY + 3] = "--";
    const char *params = content_type + sizeof mf - 1;
    if (!header_param(params, strlen(params), "boundary", boundary + 2, KN_MULTIPART_MAX_BOUNDARY) || !boundary[2])
        return kn_fail(err, KN_ERR_FORMAT, "multipart: no usable boundary");
    size_t blen = strlen(boundary);

    kn_multipart *mp = calloc(1, sizeof *mp);
    if (!mp) return kn_fail(err, KN_ERR_NOMEM, "multipart: out of memory");
    /* The first delimiter opens the body or follows a preamble line. */
    const char *p = len >= blen && memcmp(body, boundary, blen) == 0 ? body : NULL;
    if (!p) {
        char crlf_b[KN_MULTIPART_MAX_BOUNDARY + 5] = "\r\n";
        memcpy(crlf_b + 2, boundary, blen + 1);
        const char *f = find(body, len, crlf_b, blen + 2);
        p = f ? f + 2 : NULL;
    }
    const char *end = body + len;
    int rc = p ? KN_OK : kn_fail(err, KN_ERR_FORMAT, "multipart: boundary not found");
    while (!rc) {
        p += blen;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') break; /* closing delimiter */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            rc = kn_fail(err, KN_ERR_FORMAT, "multipart: malformed delimiter line");
            break;
        }
        p += 2;
        size_t avail = (size_t)(end - p);
        const char *hend = find(p, avail < KN_MULTIPART_MAX_HEADERS ? avail : KN_MULTIPART_MAX_HEADERS, "\r\n\r\n", 4);
        if (!hend) {
            rc = kn_fail(err, KN_ERR_FORMAT, "multipart: part headers not terminated");
            break;
        }
        if (mp->n == KN_MULTIPART_MAX_PARTS) {
            rc = kn_fail(err, KN_ERR_FORMAT, "multipart: more than %d parts", KN_MULTIPART_MAX_PARTS);
            break;
        }
        kn_multipart_part *part = &mp->parts[mp->n];
        bool has_filename;
        rc = part_headers(p, (size_t)(hend - p) + 2, mp->names[mp->n][0], mp->names[mp->n][1], &has_filename, err);
        if (rc) break;
        const char *data = hend + 4;
        char crlf_b[KN_MULTIPART_MAX_BOUNDARY + 5] = "\r\n";
        memcpy(crlf_b + 2, boundary, blen + 1);
        const char *next = find(data, (size_t)(end - data), crlf_b, blen + 2);
        if (!next) {
            rc = kn_fail(err, KN_ERR_FORMAT, "multipart: part '%s' is not terminated", mp->names[mp->n][0]);
            break;
        }
        part->name = mp->names[mp->n][0];
        part->filename = has_filename ? mp->names[mp->n][1] : NULL;
        part->data = data;
        part->len = (size_t)(next - data);
        mp->n++;
        p = next + 2;
    }
    if (rc) {
        free(mp);
        return rc;
    }
    *out = mp;
    return KN_OK;
}

const kn_multipart_part *kn_multipart_get(const kn_multipart *mp, const char *name) {
    for (int i = 0; i < mp->n; i++)
        if (strcmp(mp->parts[i].name, name) == 0) return &mp->parts[i];
    return NULL;
}
