#include "pipelines/tokenizers/spm.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/charsmap.h"
#include "pipelines/tokenizers/tok_util.h"
#include "pipelines/tokenizers/unicode.h"

/* Longest input encode accepts: keeps positions and the normalized text (charsmap
 * replacements grow a character by a bounded factor) far inside size_t. */
#define KN_SPM_MAX_INPUT ((size_t)1 << 24)

/* The reference's penalty: an unknown character scores this much below the worst
 * piece. */
#define UNK_PENALTY 10.0

/* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's word-boundary mark. */
static const char META[] = "\xe2\x96\x81";
#define META_LEN 3

typedef struct {
    uint32_t off, len; /* into kn_spm.bytes */
    double score;
} piece;

typedef struct {
    int32_t id; /* -1: empty */
    uint32_t tag;
} slot;

struct kn_spm {
    char *bytes; /* every piece's bytes, back to back */
    piece *pieces;
    size_t n_pieces, max_piece; /* max_piece: longest piece in bytes */
    slot *table;                /* open addressing over the pieces */
    size_t mask;
    double unk_score;
    int32_t unk_id, eos_id;
    kn_added_tokens added; /* matched in the raw text */
    kn_charsmap *charsmap;
};

/* ---- loading ------------------------------------------------------------------- */

static bool str_is(const json_t *v, const char *s) {
    return json_is_string(v) && json_string_length(v) == strlen(s) && !strcmp(json_string_value(v), s);
}

static bool type_is(const json_t *obj, const char *type) { return str_is(json_object_get(obj, "type"), type); }

static int32_t piece_find(const kn_spm *t, const void *s, size_t len, uint64_t hash) {
    for (size_t i = hash & t->mask;; i = (i + 1) & t->mask) {
        const slot *e = &t->table[i];
        if (e->id < 0) return -1;
        const piece *p = &t->pieces[e->id];
        if (e->tag == (uint32_t)(hash >> 32) && p->len == len && memcmp(t->bytes + p->off, s, len) == 0) return e->id;
    }
}

/* model.vocab: [[piece, score], ...], ids in order. */
static int load_pieces(kn_spm *t, const json_t *vocab, const char *path, kn_err *err) {
    size_t n = json_array_size(vocab), total = 0, bytes;
    if (!json_is_array(vocab) || n == 0 || n >= INT32_MAX)
        return kn_fail(err, KN_ERR_FORMAT, "%s: model.vocab is not a non-empty array", path);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (json_array_size(e) != 2 || !json_is_string(p) || json_string_length(p) == 0 || !json_is_number(s) ||
            !isfinite(json_number_value(s)))
            return kn_fail(err, KN_ERR_FORMAT, "%s: model.vocab[%zu] is not [piece, score]", path, i);
        total += json_string_length(p); /* no overflow: the strings are in memory */
    }
    if (total > UINT32_MAX) return kn_fail(err, KN_ERR_FORMAT, "%s: %zu bytes of pieces", path, total);
    t->n_pieces = n;
    t->mask = kn_tok_table_size(n) - 1;
    if (!(t->bytes = malloc(total)) || kn_mul_size(n, sizeof *t->pieces, &bytes) || !(t->pieces = malloc(bytes)) ||
        kn_mul_size(t->mask + 1, sizeof *t->table, &bytes) || !(t->table = malloc(bytes)))
        return kn_fail(err, KN_ERR_NOMEM, "%s: tables for %zu pieces", path, n);
    for (size_t i = 0; i <= t->mask; i++) t->table[i] = (slot){-1, 0};
    double min_score = INFINITY;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0);
        size_t len = json_string_length(p);
        double score = json_number_value(json_array_get(e, 1));
        memcpy(t->bytes + used, json_string_value(p), len);
        uint64_t h = kn_tok_hash(t->bytes + used, len);
        size_t k = h & t->mask;
        for (; t->table[k].id >= 0; k = (k + 1) & t->mask) {
            const piece *q = &t->pieces[t->table[k].id];
            if (q->len == len && !memcmp(t->bytes + q->off, t->bytes + used, len))
                return kn_fail(err, KN_ERR_FORMAT, "%s: piece %zu repeats piece %d", path, i, t->table[k].id);
        }
        t->table[k] = (slot){(int32_t)i, (uint32_t)(h >> 32)};
        t->pieces[i] = (piece){(uint32_t)used, (uint32_t)len, score};
        used += len;
        if (len > t->max_piece) t->max_piece = len;
        if (score < min_score) min_score = score;
    }
    t->unk_score = min_score - UNK_PENALTY;
    return KN_OK;
}

static int load_model(kn_spm *t, const json_t *model, const char *path, kn_err *err) {
    if (!type_is(model, "Unigram")) return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: model is not Unigram", path);
    if (json_is_true(json_object_get(model, "byte_fallback")))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: byte_fallback is not implemented", path);
    if (load_pieces(t, json_object_get(model, "vocab"), path, err)) return err->code;
    const json_t *unk = json_object_get(model, "unk_id");
    if (!json_is_integer(unk) || json_integer_value(unk) < 0 || (size_t)json_integer_value(unk) >= t->n_pieces)
        return kn_fail(err, KN_ERR_FORMAT, "%s: model.unk_id is not a piece id", path);
    t->unk_id = (int32_t)json_integer_value(unk);
    return KN_OK;
}

/* The normalizer this file implements: the charsmap, then Strip(right), then
 * Replace(" {2,}", "▁"). */
static int load_normalizer(kn_spm *t, const json_t *norm, const char *path, kn_err *err) {
    const json_t *seq = json_object_get(norm, "normalizers");
    const json_t *pre = json_array_get(seq, 0), *strip = json_array_get(seq, 1), *rep = json_array_get(seq, 2);
    const json_t *map = json_object_get(pre, "precompiled_charsmap");
    if (!type_is(norm, "Sequence") || json_array_size(seq) != 3 || !type_is(pre, "Precompiled") ||
        !type_is(strip, "Strip") || !json_is_false(json_object_get(strip, "strip_left")) ||
        !json_is_true(json_object_get(strip, "strip_right")) || !type_is(rep, "Replace") ||
        !str_is(json_object_get(json_object_get(rep, "pattern"), "Regex"), " {2,}") ||
        !str_is(json_object_get(rep, "content"), META))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: normalizer is not [Precompiled, Strip right, Replace \" {2,}\"]",
                       path);
    if (!json_is_string(map)) return kn_fail(err, KN_ERR_FORMAT, "%s: precompiled_charsmap is not a string", path);
    if (kn_charsmap_load_base64(&t->charsmap, json_string_value(map), json_string_length(map), err))
        return kn_err_wrap(err, "%s", path);
    return KN_OK;
}

static int check_pre_tokenizer(const json_t *pre, const char *path, kn_err *err) {
    const json_t *split = json_object_get(pre, "split");
    if (!type_is(pre, "Metaspace") || !str_is(json_object_get(pre, "replacement"), META) ||
        !str_is(json_object_get(pre, "prepend_scheme"), "first") || (split && !json_is_true(split)))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: pre_tokenizer is not Metaspace(\"▁\", first, split)", path);
    return KN_OK;
}

/* A TemplateProcessing whose single-text template is the text and one special
 * token: that token's id is what encode appends. */
static int load_post_processor(kn_spm *t, const json_t *post, const char *path, kn_err *err) {
    const json_t *single = json_object_get(post, "single");
    const json_t *a = json_object_get(json_array_get(single, 0), "Sequence");
    const json_t *name = json_object_get(json_object_get(json_array_get(single, 1), "SpecialToken"), "id");
    const json_t *special = json_is_string(name)
                                ? json_object_get(json_object_get(post, "special_tokens"), json_string_value(name))
                                : NULL;
    const json_t *ids = json_object_get(special, "ids");
    if (!type_is(post, "TemplateProcessing") || json_array_size(single) != 2 ||
        !str_is(json_object_get(a, "id"), "A") || json_array_size(ids) != 1)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: post_processor is not TemplateProcessing of text + one token",
                       path);
    const json_t *id = json_array_get(ids, 0);
    if (!json_is_integer(id) || json_integer_value(id) < 0 || (size_t)json_integer_value(id) >= t->n_pieces)
        return kn_fail(err, KN_ERR_FORMAT, "%s: post_processor token id is not a piece id", path);
    t->eos_id = (int32_t)json_integer_value(id);
    return KN_OK;
}

static int load_added(kn_spm *t, const json_t *added, const char *path, kn_err *err) {
    if (added && !json_is_array(added)) return kn_fail(err, KN_ERR_FORMAT, "%s: added_tokens is not an array", path);
    size_t i;
    const json_t *v;
    json_array_foreach(added, i, v) {
        const json_t *id = json_object_get(v, "id"), *content = json_object_get(v, "content");
        char what[32];
        snprintf(what, sizeof what, "#%zu", i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= INT32_MAX ||
            !json_is_string(content) || json_string_length(content) == 0)
            return kn_fail(err, KN_ERR_FORMAT, "%s: added token %s needs an id and non-empty content", path, what);
        if (kn_added_check_flags(v, false, path, what, err) ||
            kn_added_push(&t->added, json_string_value(content), json_string_length(content),
                          (int32_t)json_integer_value(id), err))
            return err->code;
    }
    kn_added_seal(&t->added);
    return KN_OK;
}

static int load_all(kn_spm *t, const char *dir, kn_err *err) {
    char path[4096];
    json_t *root = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int rc = kn_tok_load_json(path, &root, err);
    if (!rc) rc = load_model(t, json_object_get(root, "model"), path, err);
    if (!rc) rc = load_normalizer(t, json_object_get(root, "normalizer"), path, err);
    if (!rc) rc = check_pre_tokenizer(json_object_get(root, "pre_tokenizer"), path, err);
    if (!rc) rc = load_post_processor(t, json_object_get(root, "post_processor"), path, err);
    if (!rc) rc = load_added(t, json_object_get(root, "added_tokens"), path, err);
    json_decref(root);
    return rc;
}

int kn_spm_load(kn_spm **out, const char *dir, kn_err *err) {
    *out = NULL;
    kn_spm *t = calloc(1, sizeof *t);
    if (!t) return kn_fail(err, KN_ERR_NOMEM, "kn_spm_load");
    if (load_all(t, dir, err)) {
        kn_spm_free(t);
        return kn_err_wrap(err, "sentencepiece tokenizer %s", dir);
    }
    *out = t;
    return KN_OK;
}

void kn_spm_free(kn_spm *t) {
    if (!t) return;
    free(t->bytes);
    free(t->pieces);
    free(t->table);
    kn_added_free(&t->added);
    kn_charsmap_free(t->charsmap);
    free(t);
}

int32_t kn_spm_token_id(const kn_spm *t, const char *s, size_t len) {
    const kn_added_token *a = kn_added_find(&t->added, s, len);
    return a ? a->id : piece_find(t, s, len, kn_tok_hash(s, len));
}

/* ---- encoding ------------------------------------------------------------------ */

/* Best path ending at a byte position: its score, where its last piece starts and
 * that piece's id. */
typedef struct {
    double score;
    size_t start;
    int32_t id;
    bool set;
} node;

typedef struct {
    kn_tok_ids ids;
    kn_tok_bytes norm, seg; /* a segment after the charsmap, and after the spaces */
    node *nodes;
    size_t cap_nodes;
} scratch;

/* The reference keeps the first candidate on a tie. */
static void relax(node *n, double score, size_t start, int32_t id) {
    if (!n->set || score > n->score) *n = (node){score, start, id, true};
}

/* Viterbi over one piece p[0..n) of valid UTF-8 (n > 0); appends its ids. */
static int viterbi(const kn_spm *t, scratch *s, const uint8_t *p, size_t n, kn_err *err) {
    if (!(s->nodes = kn_tok_reserve(s->nodes, &s->cap_nodes, n + 1, sizeof *s->nodes, err))) return err->code;
    node *nodes = s->nodes;
    for (size_t i = 0; i <= n; i++) nodes[i].set = false;
    nodes[0] = (node){0.0, 0, -1, true};
    for (size_t pos = 0, k; pos < n; pos += k) {
        uint32_t cp;
        k = kn_utf8_decode(p + pos, n - pos, &cp);
        /* every character start is reached: by a piece or <unk> */
        double base = nodes[pos].score;
        bool single = false;
        uint64_t h = KN_TOK_HASH_INIT;
        size_t longest = n - pos < t->max_piece ? n - pos : t->max_piece;
        for (size_t len = 1; len <= longest; len++) {
            h = kn_tok_hash_byte(h, p[pos + len - 1]);
            if (pos + len < n && (p[pos + len] & 0xC0) == 0x80) continue; /* pieces end on characters */
            int32_t id = piece_find(t, p + pos, len, kn_tok_mix(h));
            if (id < 0) continue;
            relax(&nodes[pos + len], base + t->pieces[id].score, pos, id);
            single = single || len == k;
        }
        if (!single) relax(&nodes[pos + k], base + t->unk_score, pos, t->unk_id);
    }
    /* Back from the end: ids come out reversed, a run of <unk> as one. */
    size_t first = s->ids.n;
    for (size_t end = n; end > 0; end = nodes[end].start) {
        int32_t id = nodes[end].id;
        if (id == t->unk_id && s->ids.n > first && s->ids.v[s->ids.n - 1] == t->unk_id) continue;
        if (kn_tok_ids_push(&s->ids, id, err)) return err->code;
    }
    for (size_t a = first, b = s->ids.n; a + 1 < b; a++, b--) {
        int32_t tmp = s->ids.v[a];
        s->ids.v[a] = s->ids.v[b - 1];
        s->ids.v[b - 1] = tmp;
    }
    return KN_OK;
}

static bool starts_meta(const uint8_t *p, size_t n) { return n >= META_LEN && !memcmp(p, META, META_LEN); }

/* One segment between added tokens: normalize, mark word starts, cut, Viterbi. */
static int encode_segment(const kn_spm *t, scratch *s, const uint8_t *text, size_t len, bool first, kn_err *err) {
    s->norm.n = s->seg.n = 0;
    if (kn_charsmap_normalize(t->charsmap, text, len, &s->norm, err)) return err->code;
    const uint8_t *q = s->norm.v;
    size_t keep = 0; /* the text without its trailing White_Space */
    for (size_t i = 0, k; i < s->norm.n; i += k) {
        uint32_t cp;
        k = kn_utf8_decode(q + i, s->norm.n - i, &cp);
        if (!k) return kn_fail(err, KN_ERR_FORMAT, "charsmap output is not UTF-8"); /* cannot happen */
        if (!kn_uc_is_white_space(cp)) keep = i + k;
    }
    if (first && keep && q[0] != ' ' && !starts_meta(q, keep) && kn_tok_bytes_add(&s->seg, META, META_LEN, err))
        return err->code;
    for (size_t i = 0; i < keep;) {
        if (q[i] != ' ') {
            if (kn_tok_bytes_add(&s->seg, q + i++, 1, err)) return err->code;
            continue;
        }
        while (i < keep && q[i] == ' ') i++;
        if (kn_tok_bytes_add(&s->seg, META, META_LEN, err)) return err->code;
    }
    const uint8_t *g = s->seg.v;
    for (size_t start = 0, end; start < s->seg.n; start = end) {
        for (end = start + 1; end < s->seg.n && !starts_meta(g + end, s->seg.n - end); end++) {}
        if (viterbi(t, s, g + start, end - start, err)) return err->code;
    }
    return KN_OK;
}

static int encode_all(const kn_spm *t, scratch *s, const uint8_t *text, size_t len, bool specials, kn_err *err) {
    if (len > KN_SPM_MAX_INPUT)
        return kn_fail(err, KN_ERR_INVALID, "text of %zu bytes is over the %zu limit", len, KN_SPM_MAX_INPUT);
    size_t bad = kn_utf8_validate(text, len);
    if (bad < len) return kn_fail(err, KN_ERR_INVALID, "text is not valid UTF-8 at byte %zu", bad);
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        const kn_added_token *a = kn_added_match(&t->added, text + i, len - i);
        if (!a) {
            i++;
            continue;
        }
        if (encode_segment(t, s, text + start, i - start, start == 0, err) || kn_tok_ids_push(&s->ids, a->id, err))
            return err->code;
        i += a->len;
        start = i;
    }
    if (encode_segment(t, s, text + start, len - start, start == 0, err)) return err->code;
    return specials ? kn_tok_ids_push(&s->ids, t->eos_id, err) : KN_OK;
}

static void scratch_free(scratch *s) {
    free(s->norm.v);
    free(s->seg.v);
    free(s->nodes);
}

int kn_spm_encode(const kn_spm *t, const char *utf8, size_t len, bool specials, int32_t **ids, size_t *n,
                 kn_err *err) {
    *ids = NULL;
    *n = 0;
    scratch s = {0};
    int rc = encode_all(t, &s, (const uint8_t *)utf8, len, specials, err);
    scratch_free(&s);
    if (rc) {
        free(s.ids.v);
        return kn_err_wrap(err, "sentencepiece tokenizer");
    }
    *ids = s.ids.v;
    *n = s.ids.n;
    return KN_OK;
}

int kn_spm_charsmap(const kn_spm *t, const char *utf8, size_t len, char **out, size_t *out_len, kn_err *err) {
    *out = NULL;
    *out_len = 0;
    kn_tok_bytes b = {0};
    size_t bad = kn_utf8_validate((const uint8_t *)utf8, len);
    int rc = bad < len ? kn_fail(err, KN_ERR_INVALID, "text is not valid UTF-8 at byte %zu", bad)
                       : kn_charsmap_normalize(t->charsmap, (const uint8_t *)utf8, len, &b, err);
    if (rc) {
        free(b.v);
        return kn_err_wrap(err, "sentencepiece charsmap");
    }
    *out = (char *)b.v;
    *out_len = b.n;
    return KN_OK;
}
