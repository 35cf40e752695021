#include "pipelines/tokenizers/tok_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kn_tok_read_file(const char *path, char **data, size_t *len, kn_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return kn_fail(err, KN_ERR_IO, "cannot open %s", path);
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return kn_fail(err, KN_ERR_IO, "cannot size %s", path);
    }
    buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return kn_fail(err, KN_ERR_NOMEM, "%s: %ld bytes", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) {
        free(buf);
        return kn_fail(err, KN_ERR_IO, "short read of %s", path);
    }
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return KN_OK;
}

int kn_tok_load_json(const char *path, json_t **out, kn_err *err) {
    json_error_t jerr;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out) {
        int code = strstr(jerr.text, "unable to open") ? KN_ERR_IO : KN_ERR_FORMAT;
        return kn_fail(err, code, "%s:%d: %s", path, jerr.line, jerr.text);
    }
    if (!json_is_object(*out)) return kn_fail(err, KN_ERR_FORMAT, "%s: not a JSON object", path);
    return KN_OK;
}

int kn_tok_ids_push(kn_tok_ids *ids, int32_t id, kn_err *err) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 64, bytes;
        int32_t *p;
        if (kn_mul_size(cap, sizeof *p, &bytes) || !(p = realloc(ids->v, bytes)))
            return kn_fail(err, KN_ERR_NOMEM, "token ids: %zu", cap);
        ids->v = p;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return KN_OK;
}

int kn_tok_bytes_add(kn_tok_bytes *b, const void *data, size_t n, kn_err *err) {
    size_t need;
    if (kn_add_size(b->n, n, &need)) return kn_fail(err, KN_ERR_NOMEM, "byte string of %zu + %zu bytes", b->n, n);
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            if (kn_mul_size(cap, 2, &cap)) return kn_fail(err, KN_ERR_NOMEM, "byte string of %zu bytes", need);
        uint8_t *p = realloc(b->v, cap);
        if (!p) return kn_fail(err, KN_ERR_NOMEM, "byte string of %zu bytes", cap);
        b->v = p;
        b->cap = cap;
    }
    if (n) memcpy(b->v + b->n, data, n);
    b->n = need;
    return KN_OK;
}

void *kn_tok_reserve(void *p, size_t *cap, size_t n, size_t elem, kn_err *err) {
    if (n <= *cap && p) return p;
    size_t bytes;
    free(p);
    void *q = kn_mul_size(n ? n : 1, elem, &bytes) ? NULL : malloc(bytes);
    *cap = q ? n : 0;
    if (!q) kn_fail(err, KN_ERR_NOMEM, "tokenizer scratch: %zu elements of %zu bytes", n, elem);
    return q;
}

int kn_added_push(kn_added_tokens *a, const char *text, size_t len, int32_t id, kn_err *err) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16, bytes;
        kn_added_token *p;
        if (kn_mul_size(cap, sizeof *p, &bytes) || !(p = realloc(a->v, bytes)))
            return kn_fail(err, KN_ERR_NOMEM, "added tokens: %zu", cap);
        a->v = p;
        a->cap = cap;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy) return kn_fail(err, KN_ERR_NOMEM, "added token of %zu bytes", len);
    memcpy(copy, text, len);
    a->v[a->n++] = (kn_added_token){copy, len, id};
    return KN_OK;
}

void kn_added_seal(kn_added_tokens *a) {
    for (size_t i = 1; i < a->n; i++) { /* insertion sort, longest first; stable */
        kn_added_token t = a->v[i];
        size_t j = i;
        for (; j > 0 && a->v[j - 1].len < t.len; j--) a->v[j] = a->v[j - 1];
        a->v[j] = t;
    }
    memset(a->first_byte, 0, sizeof a->first_byte);
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].len) a->first_byte[(uint8_t)a->v[i].text[0]] = true;
}

void kn_added_free(kn_added_tokens *a) {
    for (size_t i = 0; i < a->n; i++) free(a->v[i].text);
    free(a->v);
    *a = (kn_added_tokens){0};
}

const kn_added_token *kn_added_match(const kn_added_tokens *a, const uint8_t *s, size_t len) {
    if (!len || !a->first_byte[s[0]]) return NULL;
    for (size_t k = 0; k < a->n; k++)
        if (a->v[k].len && a->v[k].len <= len && memcmp(a->v[k].text, s, a->v[k].len) == 0) return &a->v[k];
    return NULL;
}

const kn_added_token *kn_added_find(const kn_added_tokens *a, const char *text, size_t len) {
    for (size_t k = 0; k < a->n; k++)
        if (a->v[k].len == len && memcmp(a->v[k].text, text, len) == 0) return &a->v[k];
    return NULL;
}

int kn_added_check_flags(const json_t *tok, bool normalized, const char *path, const char *what, kn_err *err) {
    static const char *const unsupported[] = {"lstrip", "rstrip", "single_word"};
    for (size_t k = 0; k < sizeof unsupported / sizeof *unsupported; k++)
        if (json_is_true(json_object_get(tok, unsupported[k])))
            return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: added token %s sets %s", path, what, unsupported[k]);
    const json_t *n = json_object_get(tok, "normalized");
    if (n && (!json_is_boolean(n) || json_is_true(n) != normalized))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: added token %s: only normalized=%s is implemented", path, what,
                       normalized ? "true" : "false");
    return KN_OK;
}
