#include "pipelines/tokenizers/clip_bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/bpe_internal.h"
#include "pipelines/tokenizers/unicode.h"

/* Longest input encode accepts: the normalized text (NFC growth times lowercase
 * growth, four bytes per code point) stays far below SIZE_MAX and INT32_MAX symbols
 * per pre-token. */
#define KN_CLIP_BPE_MAX_INPUT ((size_t)1 << 24)

struct kn_clip_bpe {
    kn_bpe *bpe;
    kn_added_tokens special; /* matched in the normalized text */
    int32_t bos, eos;
};

/* ---- loading ------------------------------------------------------------------- */

/* One special token of tokenizer_config.json: a string, or an AddedToken object
 * (matched after normalization, as CLIP's are). Its id is its vocabulary key's. */
static int add_special(kn_clip_bpe *c, const json_t *config, const char *key, const char *path, int32_t *id,
                       kn_err *err) {
    const json_t *v = json_object_get(config, key);
    if (json_is_object(v)) {
        if (kn_added_check_flags(v, true, path, key, err)) return err->code;
        v = json_object_get(v, "content");
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return kn_fail(err, KN_ERR_FORMAT, "%s: %s is missing or not a token", path, key);
    const char *text = json_string_value(v);
    size_t len = json_string_length(v);
    *id = kn_bpe_token_id(c->bpe, text, len);
    if (*id < 0) return kn_fail(err, KN_ERR_FORMAT, "%s: %s '%s' is not in vocab.json", path, key, text);
    if (kn_added_find(&c->special, text, len)) return KN_OK; /* unk and pad repeat eos */
    return kn_added_push(&c->special, text, len, *id, err);
}

static int load_all(kn_clip_bpe *c, const char *dir, kn_err *err) {
    char path[4096];
    json_t *config = NULL;
    int32_t unk, pad;
    if (kn_bpe_load_files(&c->bpe, dir, err)) return err->code;
    if (!kn_bpe_has_end_of_word(c->bpe))
        return kn_fail(err, KN_ERR_FORMAT, "%s/vocab.json: not every byte has an end-of-word (</w>) token", dir);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    int rc = kn_tok_load_json(path, &config, err);
    if (!rc) rc = add_special(c, config, "bos_token", path, &c->bos, err);
    if (!rc) rc = add_special(c, config, "eos_token", path, &c->eos, err);
    if (!rc) rc = add_special(c, config, "unk_token", path, &unk, err);
    if (!rc) rc = add_special(c, config, "pad_token", path, &pad, err);
    json_decref(config);
    kn_added_seal(&c->special);
    return rc;
}

int kn_clip_bpe_load(kn_clip_bpe **out, const char *dir, kn_err *err) {
    *out = NULL;
    kn_clip_bpe *c = calloc(1, sizeof *c);
    if (!c) return kn_fail(err, KN_ERR_NOMEM, "kn_clip_bpe_load");
    if (load_all(c, dir, err)) {
        kn_clip_bpe_free(c);
        return kn_err_wrap(err, "clip tokenizer %s", dir);
    }
    *out = c;
    return KN_OK;
}

void kn_clip_bpe_free(kn_clip_bpe *c) {
    if (!c) return;
    kn_bpe_free(c->bpe);
    kn_added_free(&c->special);
    free(c);
}

int32_t kn_clip_bpe_token_id(const kn_clip_bpe *c, const char *key, size_t len) {
    return kn_bpe_token_id(c->bpe, key, len);
}

/* ---- encoding ------------------------------------------------------------------ */

typedef struct {
    kn_tok_ids ids;
    uint32_t *cps, *nfc;
    uint8_t *norm; /* the normalized text, UTF-8 */
    size_t cap_cps, cap_nfc, cap_norm;
    kn_bpe_work work;
} scratch;

/* NFC, whitespace runs to one space, lowercase (one pass: lowercasing never makes
 * whitespace), into s->norm; returns its length in *out. */
static int normalize(scratch *s, const uint8_t *text, size_t len, size_t *out, kn_err *err) {
    size_t n = 0, bytes;
    if (!(s->cps = kn_tok_reserve(s->cps, &s->cap_cps, len, sizeof *s->cps, err))) return err->code;
    for (size_t i = 0; i < len; n++) i += kn_utf8_decode(text + i, len - i, &s->cps[n]);
    const uint32_t *cp = s->cps;
    if (!kn_uc_nfc_quick(cp, n)) {
        if (!(s->nfc = kn_tok_reserve(s->nfc, &s->cap_nfc, n * KN_UC_NFC_MAX_GROWTH, sizeof *s->nfc, err)))
            return err->code;
        n = kn_uc_nfc(cp, n, s->nfc);
        cp = s->nfc;
    }
    if (kn_mul_size(n, 4 * KN_UC_LOWER_MAX, &bytes) ||
        !(s->norm = kn_tok_reserve(s->norm, &s->cap_norm, bytes, 1, err)))
        return kn_fail(err, KN_ERR_NOMEM, "clip: normalizing %zu code points", n);
    size_t w = 0;
    bool space = false;
    for (size_t i = 0; i < n; i++) {
        if (kn_uc_is_white_space(cp[i])) {
            if (!space) s->norm[w++] = ' ';
            space = true;
            continue;
        }
        space = false;
        uint32_t lower[KN_UC_LOWER_MAX];
        size_t k = kn_uc_lower(cp[i], lower);
        for (size_t j = 0; j < k; j++) w += kn_utf8_encode(lower[j], s->norm + w);
    }
    *out = w;
    return KN_OK;
}

enum { C_OTHER, C_LETTER, C_NUMBER, C_SPACE };

static int classify(const uint8_t *s, size_t len, size_t i, size_t *k) {
    uint32_t cp;
    *k = kn_utf8_decode(s + i, len - i, &cp); /* valid: the text was checked */
    if (kn_uc_is_white_space(cp)) return C_SPACE;
    if (kn_uc_is_letter(cp)) return C_LETTER;
    if (kn_uc_is_number(cp)) return C_NUMBER;
    return C_OTHER;
}

/* Length of a contraction ('s 't 're 've 'm 'll 'd, case-sensitive: the text is
 * lowercase already) at s[i..len), or 0. */
static size_t contraction(const uint8_t *s, size_t len, size_t i) {
    static const char *const forms[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
        size_t n = strlen(forms[f]);
        if (n <= len - i && memcmp(s + i, forms[f], n) == 0) return n;
    }
    return 0;
}

/* Pre-tokenizes normalized text between special tokens and BPEs each pre-token. */
static int encode_segment(const kn_clip_bpe *c, scratch *s, const uint8_t *t, size_t len, kn_err *err) {
    for (size_t i = 0, k; i < len;) {
        size_t start = i, end = i + contraction(t, len, i);
        int cls = classify(t, len, i, &k);
        if (end == start) {
            end = i + k;
            if (cls == C_SPACE) {
                i = end;
                continue;
            }
            /* a letter run, one number, or a run of anything else but whitespace */
            if (cls != C_NUMBER)
                while (end < len && classify(t, len, end, &k) == cls) end += k;
        }
        if (kn_bpe_merge(c->bpe, &s->work, t + start, end - start, true, &s->ids, err)) return err->code;
        i = end;
    }
    return KN_OK;
}

static int encode_all(const kn_clip_bpe *c, scratch *s, const uint8_t *text, size_t len, bool specials, kn_err *err) {
    if (len > KN_CLIP_BPE_MAX_INPUT)
        return kn_fail(err, KN_ERR_INVALID, "text of %zu bytes is over the %zu limit", len, KN_CLIP_BPE_MAX_INPUT);
    size_t bad = kn_utf8_validate(text, len), n = 0;
    if (bad < len) return kn_fail(err, KN_ERR_INVALID, "text is not valid UTF-8 at byte %zu", bad);
    if (specials && kn_tok_ids_push(&s->ids, c->bos, err)) return err->code;
    if (normalize(s, text, len, &n, err)) return err->code;
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        const kn_added_token *t = kn_added_match(&c->special, s->norm + i, n - i);
        if (!t) {
            i++;
            continue;
        }
        if (encode_segment(c, s, s->norm + start, i - start, err) || kn_tok_ids_push(&s->ids, t->id, err))
            return err->code;
        i += t->len;
        start = i;
    }
    if (encode_segment(c, s, s->norm + start, n - start, err)) return err->code;
    return specials ? kn_tok_ids_push(&s->ids, c->eos, err) : KN_OK;
}

int kn_clip_bpe_encode(const kn_clip_bpe *c, const char *utf8, size_t len, bool specials, int32_t **ids, size_t *n,
                   kn_err *err) {
    *ids = NULL;
    *n = 0;
    scratch s = {0};
    int rc = encode_all(c, &s, (const uint8_t *)utf8, len, specials, err);
    free(s.cps);
    free(s.nfc);
    free(s.norm);
    kn_bpe_work_free(&s.work);
    if (rc) {
        free(s.ids.v);
        return kn_err_wrap(err, "clip tokenizer");
    }
    *ids = s.ids.v;
    *n = s.ids.n;
    return KN_OK;
}
