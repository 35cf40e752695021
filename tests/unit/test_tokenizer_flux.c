/* Tests for Flux.1's tokenizers: CLIP-L (pipelines/tokenizers/clip_bpe.h), T5
 * (spm.h, with the charsmap of charsmap.h) and their ComfyUI chunks (prompt.h), against
 * tests/fixtures/tokenizers (copied unchanged from shared/tokenizers):
 * - golden/clip_l.jsonl, t5.jsonl: every line's ids and ids_special from the Hugging
 *   Face tokenizer, T5's text after the charsmap step, and the golden token strings
 *   looking up as their ids;
 * - golden/comfyui/flux.jsonl: ComfyUI's (token, weight, word) chunks for keys l and
 *   t5xxl, embeddings kiln_emb (2 rows) and kiln_vec (1 row) present.
 * Then: the Unicode 16.0 lowercase and grapheme rules the two normalizers rest on, a
 * hand-built charsmap and malformed ones, tokenizer.json settings that are refused,
 * invalid UTF-8 failing cleanly, and random bytes and random weighting syntax never
 * crashing and keeping the chunks' shape. No timings are asserted. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pipelines/tokenizers/charsmap.h"
#include "pipelines/tokenizers/clip_bpe.h"
#include "pipelines/tokenizers/prompt.h"
#include "pipelines/tokenizers/spm.h"
#include "pipelines/tokenizers/unicode.h"
#include "check.h"
#include "tokenizer_golden.h"

#define T5_UNK 2

typedef struct {
    const kn_clip_bpe *clip;
    const kn_spm *t5;
    int lines, matched; /* golden lines, and those that matched in every check */
} flux;

/* ---- raw ids ------------------------------------------------------------------- */

typedef int (*encode_fn)(const void *tok, const char *text, size_t len, bool specials, int32_t **ids, size_t *n,
                         kn_err *err);

/* ids and ids_special of one line; true when both match. */
static bool check_encodings(const json_t *line, const void *tok, encode_fn encode) {
    const json_t *text = json_object_get(line, "text");
    bool ok = true;
    for (int specials = 0; specials < 2; specials++) {
        int32_t *ids;
        size_t n;
        kn_err err;
        char what[160];
        snprintf(what, sizeof what, "%s%s", name_of(line), specials ? " (special)" : "");
        if (encode(tok, json_string_value(text), json_string_length(text), specials, &ids, &n, &err)) {
            CHECK(0, "%s: %s", what, err.msg);
            ok = false;
            continue;
        }
        ok = check_ids(what, ids, n, json_object_get(line, specials ? "ids_special" : "ids")) && ok;
        free(ids);
    }
    return ok;
}

static int clip_encode_fn(const void *tok, const char *text, size_t len, bool specials, int32_t **ids, size_t *n,
                          kn_err *err) {
    return kn_clip_bpe_encode(tok, text, len, specials, ids, n, err);
}

static int t5_encode_fn(const void *tok, const char *text, size_t len, bool specials, int32_t **ids, size_t *n,
                        kn_err *err) {
    return kn_spm_encode(tok, text, len, specials, ids, n, err);
}

static void check_clip_line(const json_t *line, void *ctx) {
    flux *f = ctx;
    bool ok = check_encodings(line, f->clip, clip_encode_fn);
    /* The golden's token strings are vocabulary keys: the lookup must agree. */
    const json_t *tokens = json_object_get(line, "tokens"), *ids = json_object_get(line, "ids");
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const json_t *t = json_array_get(tokens, i);
        int32_t id = kn_clip_bpe_token_id(f->clip, json_string_value(t), json_string_length(t));
        if (id != json_integer_value(json_array_get(ids, i))) {
            CHECK(0, "%s: token '%s' looks up as %d", name_of(line), json_string_value(t), id);
            ok = false;
            break;
        }
    }
    f->lines++;
    f->matched += ok;
}

static void check_t5_line(const json_t *line, void *ctx) {
    flux *f = ctx;
    bool ok = check_encodings(line, f->t5, t5_encode_fn);
    const json_t *text = json_object_get(line, "text"), *want = json_object_get(line, "charsmap");
    char *norm;
    size_t n;
    kn_err err;
    if (kn_spm_charsmap(f->t5, json_string_value(text), json_string_length(text), &norm, &n, &err)) {
        CHECK(0, "%s: %s", name_of(line), err.msg);
        ok = false;
    } else {
        bool same = n == json_string_length(want) && (!n || !memcmp(norm, json_string_value(want), n));
        CHECK(same, "%s: charsmap gives '%.*s', want '%s'", name_of(line), (int)n, norm, json_string_value(want));
        ok = ok && same;
        free(norm);
    }
    /* Token strings are pieces, except that an <unk> shows the text it covers. */
    const json_t *tokens = json_object_get(line, "tokens"), *ids = json_object_get(line, "ids");
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const json_t *t = json_array_get(tokens, i);
        json_int_t want_id = json_integer_value(json_array_get(ids, i));
        int32_t id = kn_spm_token_id(f->t5, json_string_value(t), json_string_length(t));
        if (want_id != T5_UNK && id != want_id) {
            CHECK(0, "%s: piece '%s' looks up as %d", name_of(line), json_string_value(t), id);
            ok = false;
            break;
        }
    }
    f->lines++;
    f->matched += ok;
}

/* ---- ComfyUI chunks -------------------------------------------------------------- */

static void check_flux_line(const json_t *line, void *ctx) {
    flux *f = ctx;
    const json_t *text = json_object_get(line, "text"), *out = json_object_get(line, "out");
    kn_prompt_embeddings emb = {test_find, NULL};
    bool ok = json_object_size(out) == 2;
    CHECK(ok, "%s: want keys l and t5xxl", name_of(line));
    for (int k = 0; k < 2; k++) {
        const char *key = k ? "t5xxl" : "l";
        const json_t *want = json_object_get(out, key);
        kn_prompt_chunks got;
        kn_err err;
        char what[160];
        snprintf(what, sizeof what, "flux %s [%s]", name_of(line), key);
        int rc = k ? kn_prompt_t5(f->t5, KN_PROMPT_T5_FLUX_MIN_LENGTH, &emb, json_string_value(text),
                                  json_string_length(text), &got, &err)
                   : kn_prompt_clip_l(f->clip, &emb, json_string_value(text), json_string_length(text), &got, &err);
        if (rc) {
            CHECK(0, "%s: %s", what, err.msg);
            ok = false;
        } else {
            ok = check_chunks(what, &got, want) && ok;
        }
        kn_prompt_chunks_free(&got);
    }
    f->lines++;
    f->matched += ok;
}

/* ---- Unicode rules beneath the normalizers ---------------------------------------- */

static void test_unicode(void) {
    static const struct {
        uint32_t cp, lower[2];
        size_t n;
    } lowers[] = {
        {'A', {'a'}, 1},
        {0x130, {'i', 0x307}, 2},    /* the one unconditional two-code-point mapping */
        {0x3A3, {0x3C3}, 1},         /* no final-sigma context */
        {0x1E9E, {0xDF}, 1},         /* capital sharp s */
        {0x1C90, {0x10D0}, 1},       /* Georgian Mtavruli (11.0) */
        {0x1C89, {0x1C8A}, 1},       /* Cyrillic Tje (16.0) */
        {0xA7CB, {0x264}, 1},        /* Latin Ramshorn (16.0) */
        {0x1F600, {0x1F600}, 1},
    };
    for (size_t i = 0; i < sizeof lowers / sizeof *lowers; i++) {
        uint32_t out[KN_UC_LOWER_MAX];
        size_t n = kn_uc_lower(lowers[i].cp, out);
        CHECK(n == lowers[i].n && !memcmp(out, lowers[i].lower, n * sizeof *out), "lower(U+%04X): %zu code points",
              (unsigned)lowers[i].cp, n);
    }

    static const struct {
        const char *what, *text;
        size_t ends[4];
    } graphemes[] = {
        {"CR LF", "\r\nx", {2, 3}},
        {"base + marks", "e\xcc\x81\xcc\x82x", {5, 6}},
        {"flags pair up", "\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5\xf0\x9f\x87\xba", {8, 12}},
        {"emoji ZWJ sequence", "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9!", {11, 12}},
        {"ZWJ after a non-pictograph", "a\xe2\x80\x8d\xf0\x9f\x91\xa9", {4, 8}},
        {"Hangul L V T", "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8" "a", {9, 10}},
        {"Devanagari conjunct (GB9c)", "\xe0\xa4\x95\xe0\xa5\x8d\xe0\xa4\xb7x", {9, 10}},
        {"prepend", "\xd8\x80" "1x", {3, 4}},
        {"control breaks", "a\x01\xcc\x81", {1, 2, 4}},
    };
    for (size_t i = 0; i < sizeof graphemes / sizeof *graphemes; i++) {
        const uint8_t *s = (const uint8_t *)graphemes[i].text;
        size_t len = strlen(graphemes[i].text), k = 0;
        for (size_t at = 0; at < len; k++) {
            at = kn_uc_grapheme_end(s, len, at);
            CHECK(k < 4 && at == graphemes[i].ends[k], "%s: cluster %zu ends at %zu", graphemes[i].what, k, at);
            if (k >= 4 || at != graphemes[i].ends[k]) break;
        }
    }
}

/* ---- charsmap format ----------------------------------------------------------- */

/* A hand-built Darts-clone trie with the one key "a" (root offset 1: "a" sits at
 * unit 1 ^ 0x61 = 96, its leaf at 96 ^ 1 = 97), replaced by pool[value]. Like
 * Darts-clone's, the array is whole blocks of 256 units, so that a walk from any
 * node stays inside it whatever the byte; fewer units make a malformed trie. */
#define UNITS 256
static size_t tiny_charsmap(uint8_t *blob, uint32_t value, const char *pool, size_t pool_len, size_t units) {
    uint32_t u[UNITS] = {0};
    u[0] = 1u << 10;
    u[96] = 0x61 | 1u << 8 | 1u << 10;
    u[97] = value;
    uint32_t trie = (uint32_t)(4 * units);
    for (int b = 0; b < 4; b++) blob[b] = (uint8_t)(trie >> 8 * b);
    for (size_t i = 0; i < units; i++)
        for (int b = 0; b < 4; b++) blob[4 + 4 * i + b] = (uint8_t)(u[i] >> 8 * b);
    memcpy(blob + 4 + trie, pool, pool_len);
    return 4 + trie + pool_len;
}

static int normalize_with(const uint8_t *blob, size_t len, const char *text, kn_tok_bytes *out, kn_err *err) {
    kn_charsmap *m;
    out->n = 0;
    int rc = kn_charsmap_load(&m, blob, len, err);
    if (!rc) rc = kn_charsmap_normalize(m, (const uint8_t *)text, strlen(text), out, err);
    kn_charsmap_free(m);
    return rc;
}

static void test_charsmap(void) {
    uint8_t blob[4 + 4 * UNITS + 16];
    kn_tok_bytes out = {0};
    kn_err err;
    size_t len = tiny_charsmap(blob, 1, "\0xy\0", 4, UNITS);
    int rc = normalize_with(blob, len, "ba" "a\xcc\x81", &out, &err);
    /* "a" + U+0301 is one short cluster with the key "a" as a prefix: all of it
     * becomes "xy", as in the Hugging Face normalizer. */
    CHECK(rc == KN_OK && out.n == 5 && !memcmp(out.v, "bxyxy", 5), "tiny charsmap gives '%.*s'", (int)out.n,
          (const char *)out.v);

    static const struct {
        const char *what;
        uint32_t value;
        const char *pool;
        size_t pool_len, units;
    } bad[] = {
        {"replacement past the pool", 9, "xy\0", 3, UNITS},
        {"replacement inside a character", 1, "\xc3\xa9\0", 3, UNITS},
        {"pool not UTF-8", 0, "\xff\0", 2, UNITS},
        {"walk leaves the array", 0, "x\0", 2, 98},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        len = tiny_charsmap(blob, bad[i].value, bad[i].pool, bad[i].pool_len, bad[i].units);
        rc = normalize_with(blob, len, "ab", &out, &err);
        CHECK(rc == KN_ERR_FORMAT, "%s: rc %d", bad[i].what, rc);
    }
    static const struct {
        const char *what;
        uint8_t bytes[8];
        size_t len;
    } headers[] = {
        {"no trie size", {1, 0}, 2},
        {"empty trie", {0, 0, 0, 0}, 4},
        {"trie size not whole units", {2, 0, 0, 0, 0, 0}, 6},
        {"trie past the end", {8, 0, 0, 0, 0, 0, 0, 0}, 8},
    };
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        kn_charsmap *m = (kn_charsmap *)1;
        rc = kn_charsmap_load(&m, headers[i].bytes, headers[i].len, &err);
        CHECK(rc == KN_ERR_FORMAT && m == NULL, "%s: rc %d", headers[i].what, rc);
    }
    static const char *const b64[] = {"", "QUJD=", "QU!D", "Q===", "QQ=A"};
    for (size_t i = 0; i < sizeof b64 / sizeof *b64; i++) {
        kn_charsmap *m;
        rc = kn_charsmap_load_base64(&m, b64[i], strlen(b64[i]), &err);
        CHECK(rc == KN_ERR_FORMAT && m == NULL, "base64 '%s': rc %d", b64[i], rc);
    }
    free(out.v);
}

/* ---- tokenizer.json settings that are refused ------------------------------------ */

/* Writes root as DIR/tokenizer.json into a scratch folder and loads it. */
static int load_t5_json(const json_t *root, kn_err *err) {
    const char *tmp = getenv("KN_TEST_TMP");
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/t5_variant", tmp ? tmp : "/tmp");
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    mkdir(dir, 0755);
    if (json_dump_file(root, path, JSON_COMPACT)) return kn_fail(err, KN_ERR_IO, "cannot write %s", path);
    kn_spm *t5 = NULL;
    int rc = kn_spm_load(&t5, dir, err);
    kn_spm_free(t5);
    return rc;
}

static void test_t5_refusals(void) {
    json_error_t jerr;
    json_t *root = json_load_file(TOKENIZERS "/t5/tokenizer.json", 0, &jerr);
    CHECK(root != NULL, "tokenizer.json: %s", jerr.text);
    if (!root) return;
    static const struct {
        const char *what, *section, *key;
        int want;
    } cases[] = {
        {"as shipped", NULL, NULL, KN_OK},
        {"byte fallback", "model", "byte_fallback", KN_ERR_UNSUPPORTED},
        {"prepend_scheme always", "pre_tokenizer", "prepend_scheme", KN_ERR_UNSUPPORTED},
        {"unk_id past the vocabulary", "model", "unk_id", KN_ERR_FORMAT},
        {"a repeated piece", "model", "vocab", KN_ERR_FORMAT},
        {"a normalizer less", "normalizer", "normalizers", KN_ERR_UNSUPPORTED},
        {"lstrip on an added token", "added_tokens", NULL, KN_ERR_UNSUPPORTED},
        {"a post-processor without the end token", "post_processor", "single", KN_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *v = json_deep_copy(root), *sec = cases[i].section ? json_object_get(v, cases[i].section) : NULL;
        json_t *field = cases[i].key ? json_object_get(sec, cases[i].key) : NULL;
        switch (i) {
        case 1: json_object_set_new(sec, "byte_fallback", json_true()); break;
        case 2: json_object_set_new(sec, "prepend_scheme", json_string("always")); break;
        case 3: json_object_set_new(sec, "unk_id", json_integer(32100)); break;
        case 4: json_array_set(json_array_get(field, 5), 0, json_array_get(json_array_get(field, 4), 0)); break;
        case 5: json_array_remove(field, 1); break;
        case 6: json_object_set_new(json_array_get(sec, 0), "lstrip", json_true()); break;
        case 7: json_array_remove(field, 1); break;
        }
        kn_err err;
        int rc = load_t5_json(v, &err);
        CHECK(rc == cases[i].want, "tokenizer.json with %s: rc %d (%s)", cases[i].what, rc, rc ? err.msg : "");
        json_decref(v);
    }
    json_decref(root);
}

/* ---- robustness ---------------------------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void test_robustness(const flux *f) {
    static const char *const bad[] = {"\xff", "abc\x80", "\xc0\x80", "\xed\xa0\x80", "ok \xe4\xb8", "\xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        for (int k = 0; k < 2; k++) {
            int32_t *ids;
            size_t n;
            kn_err err;
            int rc = (k ? t5_encode_fn : clip_encode_fn)(k ? (const void *)f->t5 : (const void *)f->clip, bad[i],
                                                         strlen(bad[i]), true, &ids, &n, &err);
            CHECK(rc == KN_ERR_INVALID && ids == NULL && n == 0 && strstr(err.msg, "UTF-8"), "bad UTF-8 #%zu (%s): %d",
                  i, k ? "t5" : "clip", rc);
        }
    }
    /* Arbitrary bytes, valid or not: never a crash (ASan/UBSan builds watch), ids in
     * the vocabularies. */
    uint8_t buf[256];
    for (int iter = 0; iter < 5000; iter++) {
        size_t len = rnd() % sizeof buf;
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rnd();
        if (iter % 2)
            for (size_t i = 0; i < len; i++) buf[i] &= rnd() % 8 ? 0x7F : 0xFF;
        bool valid = kn_utf8_validate(buf, len) == len;
        for (int k = 0; k < 2; k++) {
            int32_t *ids;
            size_t n;
            kn_err err;
            int rc = (k ? t5_encode_fn : clip_encode_fn)(k ? (const void *)f->t5 : (const void *)f->clip,
                                                         (const char *)buf, len, iter % 3 == 0, &ids, &n, &err);
            CHECK(rc == (valid ? KN_OK : KN_ERR_INVALID), "random bytes (%s): rc %d", k ? "t5" : "clip", rc);
            bool in_range = true;
            for (size_t i = 0; i < n; i++) in_range = in_range && ids[i] >= 0 && ids[i] < (k ? 32100 : 49408);
            CHECK(in_range, "random bytes (%s): id out of range", k ? "t5" : "clip");
            free(ids);
        }
    }
}

/* Random weighting syntax, through both families: CLIP chunks are 77 long and
 * framed by start/end, T5 is one chunk of at least 256 ending in </s> then pads. */
static void test_prompt_syntax(const flux *f) {
    static const char *const atoms[] = {"(", ")", "(", ")", ":", "1.5", "\\(", "\\)", " ", "\n", "cat", "DOG,",
                                        " embedding:", "kiln_emb", "kiln_vec,", "missing", "<|endoftext|>", "</s>",
                                        "e-3", "\xc3\xa9", "\xef\xbd\xb6\xef\xbe\x9e", "\xe7\x8c\xab", "  ", "'s"};
    kn_prompt_embeddings emb = {test_find, NULL};
    char text[1024];
    int bad_shape = 0;
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = 0, atoms_n = rnd() % 60;
        for (size_t k = 0; k < atoms_n; k++) {
            const char *a = atoms[rnd() % (sizeof atoms / sizeof *atoms)];
            memcpy(text + len, a, strlen(a));
            len += strlen(a);
        }
        kn_prompt_chunks c;
        kn_err err;
        if (kn_prompt_clip_l(f->clip, &emb, text, len, &c, &err) == KN_OK) {
            bool shaped = c.n_chunks >= 1 && c.chunk_start[c.n_chunks] == c.n_tokens;
            for (size_t k = 0; shaped && k < c.n_chunks; k++) {
                const kn_prompt_token *t = c.tokens + c.chunk_start[k];
                size_t n = c.chunk_start[k + 1] - c.chunk_start[k];
                shaped = n == 77 && t[0].id == 49406 && t[0].word == 0;
            }
            bad_shape += !shaped;
        } else {
            CHECK(strstr(err.msg, "without a name") != NULL, "clip '%.*s': %s", (int)len, text, err.msg);
        }
        kn_prompt_chunks_free(&c);
        if (kn_prompt_t5(f->t5, KN_PROMPT_T5_FLUX_MIN_LENGTH, &emb, text, len, &c, &err) == KN_OK) {
            size_t last = c.n_tokens;
            while (last > 0 && c.tokens[last - 1].id == 0 && c.tokens[last - 1].word == 0) last--;
            bad_shape += !(c.n_chunks == 1 && c.n_tokens >= KN_PROMPT_T5_FLUX_MIN_LENGTH && last > 0 &&
                           c.tokens[last - 1].id == 1 && c.tokens[last - 1].word == 0);
        } else {
            CHECK(strstr(err.msg, "without a name") != NULL, "t5 '%.*s': %s", (int)len, text, err.msg);
        }
        kn_prompt_chunks_free(&c);
    }
    CHECK(bad_shape == 0, "%d random prompts gave chunks out of shape", bad_shape);
}

int main(void) {
    kn_clip_bpe *clip = NULL;
    kn_spm *t5 = NULL;
    kn_err err;
    if (kn_clip_bpe_load(&clip, TOKENIZERS "/clip_l", &err) || kn_spm_load(&t5, TOKENIZERS "/t5", &err)) {
        printf("FAIL %s\n", err.msg);
        kn_clip_bpe_free(clip);
        return 1;
    }
    kn_clip_bpe *no_clip = clip;
    kn_spm *no_t5 = t5;
    CHECK(kn_clip_bpe_load(&no_clip, FIXTURES "/missing", &err) == KN_ERR_IO && !no_clip && strstr(err.msg, "missing"),
          "missing clip dir: %s", err.msg);
    CHECK(kn_spm_load(&no_t5, FIXTURES "/missing", &err) == KN_ERR_IO && !no_t5 && strstr(err.msg, "missing"),
          "missing t5 dir: %s", err.msg);

    flux f = {clip, t5, 0, 0};
    each_line(FIXTURES "/golden/clip_l.jsonl", check_clip_line, &f);
    printf("clip_l goldens: %d of %d lines match\n", f.matched, f.lines);
    CHECK(f.lines == 70 && f.matched == f.lines, "clip_l: %d of %d", f.matched, f.lines);
    f.lines = f.matched = 0;
    each_line(FIXTURES "/golden/t5.jsonl", check_t5_line, &f);
    printf("t5 goldens: %d of %d lines match\n", f.matched, f.lines);
    CHECK(f.lines == 71 && f.matched == f.lines, "t5: %d of %d", f.matched, f.lines);
    f.lines = f.matched = 0;
    each_line(FIXTURES "/golden/comfyui/flux.jsonl", check_flux_line, &f);
    printf("comfyui flux goldens (l and t5xxl): %d of %d prompts match\n", f.matched, f.lines);
    CHECK(f.lines == 38 && f.matched == f.lines, "flux: %d of %d", f.matched, f.lines);

    test_unicode();
    test_charsmap();
    test_t5_refusals();
    test_robustness(&f);
    test_prompt_syntax(&f);

    kn_clip_bpe_free(clip);
    kn_spm_free(t5);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
