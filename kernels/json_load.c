/* kn_json_loadb and Kiln's unsigned 64-bit integers: see kernels/json.h.
 *
 * jansson holds integers as long long, so it refuses 2^63 .. 2^64 - 1 ("too
 * big integer"), which ComfyUI's seeds reach. A scan before jansson finds
 * those literals and writes each, in a copy, as a string of the same length
 * ("\u0000" and the literal's index, padded with spaces: positions in error
 * messages stay right); after parsing, each such string becomes a u64 value.
 * The same scan refuses "\u0000" in the text, so no string from the client
 * can pose as one. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"

/* A u64 value: a string "\0u64:" and the digits (no parsed string holds a NUL). */
static const char u64_tag[] = "\0u64:";
#define U64_TAG_LEN (sizeof u64_tag - 1)

json_t *kn_json_u64(uint64_t v) {
    if (v <= INT64_MAX) return json_integer((json_int_t)v);
    char buf[U64_TAG_LEN + 24];
    memcpy(buf, u64_tag, U64_TAG_LEN);
    int n = snprintf(buf + U64_TAG_LEN, sizeof buf - U64_TAG_LEN, "%" PRIu64, v);
    return json_stringn(buf, U64_TAG_LEN + (size_t)n);
}

const char *kn_json_u64_digits(const json_t *v) {
    if (!json_is_string(v) || json_string_length(v) <= U64_TAG_LEN) return NULL;
    const char *s = json_string_value(v);
    return memcmp(s, u64_tag, U64_TAG_LEN) == 0 ? s + U64_TAG_LEN : NULL;
}

int kn_json_u64_value(const json_t *v, uint64_t *out) {
    const char *d = kn_json_u64_digits(v);
    if (!d) return 0;
    *out = strtoull(d, NULL, 10);
    return 1;
}

/* ---- the scan ------------------------------------------------------------------- */

typedef struct big {
    size_t at, len;
    uint64_t v;
} big;

static void fail_at(json_error_t *e, const char *buf, size_t at, const char *what) {
    int line = 1, column = 1;
    for (size_t k = 0; k < at; k++) {
        if (buf[k] == '\n') {
            line++;
            column = 1;
        } else if (((unsigned char)buf[k] & 0xC0) != 0x80) {
            column++; /* characters, not UTF-8 continuation bytes */
        }
    }
    e->line = line;
    e->column = column;
    e->position = (int)at;
    snprintf(e->source, sizeof e->source, "<buffer>");
    snprintf(e->text, sizeof e->text, "%s", what);
}

/* Finds unsigned integer literals above INT64_MAX (appended to *bigs) and
 * refuses "\u0000"; 0, or -1 with e set (a failed allocation too). */
static int scan(const char *buf, size_t len, big **bigs, size_t *n, json_error_t *e) {
    size_t cap = 0;
    int in_string = 0;
    for (size_t k = 0; k < len; k++) {
        char ch = buf[k];
        if (in_string) {
            if (ch == '"') {
                in_string = 0;
            } else if (ch == '\\' && k + 1 < len) {
                if (buf[k + 1] == 'u' && len - k >= 6 && memcmp(buf + k + 2, "0000", 4) == 0) {
                    fail_at(e, buf, k, "NUL characters (\\u0000) in strings are not supported");
                    return -1;
                }
                k++; /* the escaped character */
            }
            continue;
        }
        if (ch == '"') {
            in_string = 1;
            continue;
        }
        /* a run of digits; a literal when neither a sign, a fraction nor an exponent touches it */
        if (ch < '0' || ch > '9') continue;
        size_t end = k;
        while (end < len && buf[end] >= '0' && buf[end] <= '9') end++;
        int integer = (end == len || !strchr(".eE", buf[end])) && (k == 0 || !strchr("-+.eE", buf[k - 1]));
        size_t digits = end - k;
        if (integer && (digits == 19 || digits == 20) && buf[k] != '0') {
            char lit[24];
            memcpy(lit, buf + k, digits);
            lit[digits] = '\0';
            errno = 0;
            unsigned long long v = strtoull(lit, NULL, 10);
            if (errno != ERANGE && v > INT64_MAX) {
                if (*n == cap) {
                    cap = cap ? 2 * cap : 8;
                    big *p = realloc(*bigs, cap * sizeof *p);
                    if (!p) {
                        fail_at(e, buf, k, "out of memory");
                        return -1;
                    }
                    *bigs = p;
                }
                (*bigs)[(*n)++] = (big){k, digits, v};
            }
        }
        k = end - 1;
    }
    return 0;
}

/* A placeholder's index, or -1 for any other value. */
static long long placeholder(const json_t *s) {
    return json_is_string(s) && json_string_length(s) > 0 && json_string_value(s)[0] == '\0'
               ? strtoll(json_string_value(s) + 1, NULL, 10)
               : -1;
}

/* Replaces the placeholder strings under v with u64 values (a value is
 * replaced by its parent); -1 when out of memory. */
static int restore(json_t *v, const big *bigs, size_t n) {
    if (json_is_object(v)) {
        for (void *it = json_object_iter(v); it; it = json_object_iter_next(v, it)) {
            long long idx = placeholder(json_object_iter_value(it));
            if (idx >= 0 ? (size_t)idx >= n || json_object_iter_set_new(v, it, kn_json_u64(bigs[idx].v)) != 0
                         : restore(json_object_iter_value(it), bigs, n) != 0)
                return -1;
        }
    } else if (json_is_array(v)) {
        for (size_t k = 0; k < json_array_size(v); k++) {
            long long idx = placeholder(json_array_get(v, k));
            if (idx >= 0 ? (size_t)idx >= n || json_array_set_new(v, k, kn_json_u64(bigs[idx].v)) != 0
                         : restore(json_array_get(v, k), bigs, n) != 0)
                return -1;
        }
    }
    return 0;
}

json_t *kn_json_loadb(const char *buf, size_t len, json_error_t *e) {
    memset(e, 0, sizeof *e);
    size_t skip = len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0; /* a UTF-8 BOM, as json.loads(bytes) */
    buf += skip;
    len -= skip;
    big *bigs = NULL;
    size_t n = 0;
    json_t *doc = NULL;
    int jansson_error = 0;
    if (scan(buf, len, &bigs, &n, e) == 0) {
        char *copy = n ? malloc(len) : NULL;
        if (n && !copy) {
            fail_at(e, buf, 0, "out of memory");
        } else if (!n) {
            doc = json_loadb(buf, len, JSON_DECODE_ANY, e);
            jansson_error = !doc;
        } else {
            memcpy(copy, buf, len);
            for (size_t k = 0; k < n; k++) {
                /* "\u0000<k>" and spaces: no longer than the literal (19+ digits) */
                char ph[32];
                int w = snprintf(ph, sizeof ph, "\"\\u0000%zu\"", k);
                memset(copy + bigs[k].at, ' ', bigs[k].len);
                memcpy(copy + bigs[k].at, ph, (size_t)w);
            }
            doc = json_loadb(copy, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, e);
            jansson_error = !doc;
            if (doc && placeholder(doc) == 0) { /* the text is the one literal */
                json_decref(doc);
                doc = kn_json_u64(bigs[0].v);
            }
            if (doc && restore(doc, bigs, n) != 0) {
                json_decref(doc);
                doc = NULL;
                fail_at(e, buf, 0, "out of memory");
            }
            free(copy);
        }
    }
    free(bigs);
    /* jansson counts the bytes it read, the offending one included; Python's char is its offset */
    if (jansson_error && e->position > 0) e->position--;
    /* jansson quotes the input it stopped at ("invalid escape near '"\<byte>'"):
     * anything but printable ASCII becomes '?', so the text is valid UTF-8
     * (error bodies carry it in JSON strings) */
    for (char *c = e->text; jansson_error && *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
    if (!doc && skip) {
        e->position += (int)skip;
        if (e->line == 1) e->column += 1;
    }
    return doc;
}

void kn_json_error_text(const json_error_t *e, char *buf, size_t len) {
    /* Python's json.JSONDecodeError: "<msg>: line L column C (char P)" */
    snprintf(buf, len, "%s: line %d column %d (char %d)", e->text, e->line, e->column, e->position);
}
