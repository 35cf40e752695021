#include "pipelines/tokenizers/charsmap.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/unicode.h"

/* The Hugging Face normalizer looks a whole grapheme cluster up only when it is
 * shorter than this many bytes. */
#define WHOLE_CLUSTER_MAX 6

struct kn_charsmap {
    uint32_t *units;
    size_t n_units;
    char *pool;
    size_t pool_len;
};

/* Darts-clone unit fields. */
static uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static uint32_t unit_label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
static bool unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static uint32_t unit_value(uint32_t u) { return u & 0x7FFFFFFF; }

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int kn_charsmap_load(kn_charsmap **out, const uint8_t *blob, size_t len, kn_err *err) {
    *out = NULL;
    if (len < 4) return kn_fail(err, KN_ERR_FORMAT, "charsmap: %zu bytes, no trie size", len);
    size_t trie = load_u32(blob);
    if (trie == 0 || trie % 4 || trie > len - 4)
        return kn_fail(err, KN_ERR_FORMAT, "charsmap: trie size %zu does not fit %zu bytes in whole units", trie,
                       len - 4);
    size_t pool_len = len - 4 - trie, bad = kn_utf8_validate(blob + 4 + trie, pool_len);
    if (bad < pool_len) return kn_fail(err, KN_ERR_FORMAT, "charsmap: replacement pool is not UTF-8 at byte %zu", bad);
    kn_charsmap *m = calloc(1, sizeof *m);
    if (!m || !(m->units = malloc(trie)) || !(m->pool = malloc(pool_len ? pool_len : 1))) {
        kn_charsmap_free(m);
        return kn_fail(err, KN_ERR_NOMEM, "charsmap: %zu bytes", len);
    }
    m->n_units = trie / 4;
    for (size_t i = 0; i < m->n_units; i++) m->units[i] = load_u32(blob + 4 + 4 * i);
    if (pool_len) memcpy(m->pool, blob + 4 + trie, pool_len);
    m->pool_len = pool_len;
    *out = m;
    return KN_OK;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 with '=' padding, as Python's base64 writes it into tokenizer.json. */
int kn_charsmap_load_base64(kn_charsmap **out, const char *b64, size_t len, kn_err *err) {
    *out = NULL;
    if (len % 4) return kn_fail(err, KN_ERR_FORMAT, "charsmap: base64 of %zu characters", len);
    uint8_t *blob = malloc(len / 4 * 3 + 1);
    if (!blob) return kn_fail(err, KN_ERR_NOMEM, "charsmap: %zu base64 characters", len);
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        size_t pad = i + 4 == len ? (b64[i + 3] == '=') + (b64[i + 2] == '=' && b64[i + 3] == '=') : 0;
        uint32_t v = 0;
        bool ok = true;
        for (size_t k = 0; k < 4; k++) {
            int d = k >= 4 - pad ? 0 : b64_value(b64[i + k]);
            ok = ok && d >= 0;
            v = v << 6 | (uint32_t)(d & 63);
        }
        if (!ok) {
            free(blob);
            return kn_fail(err, KN_ERR_FORMAT, "charsmap: not base64 near character %zu", i);
        }
        uint8_t bytes[3] = {(uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
        memcpy(blob + n, bytes, 3 - pad);
        n += 3 - pad;
    }
    int rc = kn_charsmap_load(out, blob, n, err);
    free(blob);
    return rc;
}

void kn_charsmap_free(kn_charsmap *m) {
    if (!m) return;
    free(m->units);
    free(m->pool);
    free(m);
}

/* The reference's first common-prefix-search result: *rep / *rep_len get the
 * replacement of the shortest key that is a prefix of s[0..len), *rep NULL when no
 * key is. Fails only on a malformed trie. */
static int shortest_key(const kn_charsmap *m, const uint8_t *s, size_t len, const char **rep, size_t *rep_len,
                        kn_err *err) {
    size_t pos = unit_offset(m->units[0]);
    *rep = NULL;
    for (size_t i = 0; i < len && s[i]; i++) {
        pos ^= s[i];
        if (pos >= m->n_units) return kn_fail(err, KN_ERR_FORMAT, "charsmap: trie walk leaves the array");
        uint32_t u = m->units[pos];
        if (unit_label(u) != s[i]) return KN_OK;
        pos ^= unit_offset(u);
        if (pos >= m->n_units) return kn_fail(err, KN_ERR_FORMAT, "charsmap: trie walk leaves the array");
        if (!unit_has_leaf(u)) continue;
        size_t at = unit_value(m->units[pos]);
        if (at > m->pool_len || (at < m->pool_len && ((uint8_t)m->pool[at] & 0xC0) == 0x80))
            return kn_fail(err, KN_ERR_FORMAT, "charsmap: replacement offset %zu is not a character of the pool", at);
        const char *end = memchr(m->pool + at, '\0', m->pool_len - at);
        *rep = m->pool + at;
        *rep_len = end ? (size_t)(end - *rep) : m->pool_len - at;
        return KN_OK;
    }
    return KN_OK;
}

int kn_charsmap_normalize(const kn_charsmap *m, const uint8_t *text, size_t len, kn_tok_bytes *out, kn_err *err) {
    const char *rep;
    size_t rep_len;
    for (size_t i = 0; i < len;) {
        size_t end = kn_uc_grapheme_end(text, len, i);
        if (end - i < WHOLE_CLUSTER_MAX) {
            if (shortest_key(m, text + i, end - i, &rep, &rep_len, err)) return err->code;
            if (rep) {
                if (kn_tok_bytes_add(out, rep, rep_len, err)) return err->code;
                i = end;
                continue;
            }
        }
        for (size_t k; i < end; i += k) {
            uint32_t cp;
            k = kn_utf8_decode(text + i, end - i, &cp);
            if (!k) return kn_fail(err, KN_ERR_INVALID, "charsmap: text is not UTF-8 at byte %zu", i);
            if (shortest_key(m, text + i, k, &rep, &rep_len, err) ||
                (rep ? kn_tok_bytes_add(out, rep, rep_len, err) : kn_tok_bytes_add(out, text + i, k, err)))
                return err->code;
        }
    }
    return KN_OK;
}
