/* Tests for the Qwen2 BPE tokenizer (pipelines/tokenizers/bpe.h) and ComfyUI's prompt
 * step (pipelines/tokenizers/prompt.h), against tests/fixtures/tokenizers (copied
 * unchanged from shared/tokenizers; its README states every rule):
 * - golden/qwen25.jsonl, qwen3.jsonl: raw ids from the Hugging Face tokenizer;
 * - golden/comfyui/qwen_image.jsonl, z_image.jsonl: ComfyUI's (token, weight, word)
 *   chunks, embeddings kiln_emb (2 rows) and kiln_vec (1 row) present.
 * (Flux.1's CLIP-L and T5 and their ComfyUI chunks: test_tokenizer_flux.c.)
 * Then: Unicode-version edge cases with ids from the same reference library, the
 * README's weighting examples (and Python float() corners), invalid UTF-8 failing
 * cleanly, random bytes and random weighting syntax never crashing, random valid
 * text decoding back to its NFC form. (Load and encode times: bench/tokenizer_bench.) */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/bpe.h"
#include "pipelines/tokenizers/prompt.h"
#include "pipelines/tokenizers/unicode.h"
#include "check.h"
#include "tokenizer_golden.h"

/* ---- raw ids ------------------------------------------------------------------ */

static void check_raw_line(const json_t *line, void *ctx) {
    const kn_bpe *bpe = ctx;
    const json_t *text = json_object_get(line, "text"), *want = json_object_get(line, "ids");
    const json_t *tokens = json_object_get(line, "tokens");
    int32_t *ids;
    size_t n;
    kn_err err;
    if (kn_bpe_encode(bpe, json_string_value(text), json_string_length(text), &ids, &n, &err)) {
        CHECK(0, "%s: %s", name_of(line), err.msg);
        return;
    }
    check_ids(name_of(line), ids, n, want);
    /* The golden's token strings are vocabulary keys: the lookup must agree. */
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const json_t *t = json_array_get(tokens, i);
        int32_t id = kn_bpe_token_id(bpe, json_string_value(t), json_string_length(t));
        if (id != json_integer_value(json_array_get(want, i))) {
            CHECK(0, "%s: token '%s' looks up as %d", name_of(line), json_string_value(t), id);
            break;
        }
    }
    free(ids);
}

/* Cases outside the goldens where the reference's Unicode versions show (ids from
 * Hugging Face tokenizers 0.23.2 on the same files): letters and numbers of Unicode
 * 16.0 but not 17.0, NFC of Unicode 9.0, Oniguruma's case folding in contractions. */
static void test_reference_edges(const kn_bpe *bpe) {
    static const struct {
        const char *what, *text;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        {"U+1C89 is a letter (16.0)", "a\xe1\xb2\x89!", {64, 128233, 231, 0}, 4},
        {"U+A7CE is not (17.0)", "a\xea\x9f\x8e!", {64, 166, 253, 236, 0}, 5},
        {"U+1D2D3 is a number (15.0)", " \xf0\x9d\x8b\x93", {220, 56252, 233, 241}, 4},
        {"U+119E0 has ccc 0 in NFC 9.0", "'\xe2\xb7\xb4\xf0\x91\xa7\xa0", {6, 158, 115, 112, 128240, 100, 254}, 7},
        {"composition exclusion U+0958", "x\xe0\xa5\x98", {87, 64704, 5502, 120}, 4},
        {"Hangul jamo compose", "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", {126317}, 1},
        {"'\xc5\xbf (long s) is a contraction", "'\xc5\xbfx", {6, 144815, 87}, 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int32_t *ids;
        size_t n;
        kn_err err;
        if (kn_bpe_encode(bpe, cases[c].text, strlen(cases[c].text), &ids, &n, &err)) {
            CHECK(0, "%s: %s", cases[c].what, err.msg);
            continue;
        }
        CHECK(n == cases[c].n && !memcmp(ids, cases[c].ids, n * sizeof *ids), "%s: %zu ids, first %d", cases[c].what,
              n, n ? ids[0] : -1);
        free(ids);
    }
}

/* ---- ComfyUI chunks ----------------------------------------------------------- */

typedef struct {
    const kn_bpe *bpe;
    kn_qwen_family family;
    const char *key;
} qwen_case;

static void check_qwen_line(const json_t *line, void *ctx) {
    const qwen_case *qc = ctx;
    const json_t *text = json_object_get(line, "text");
    kn_prompt_embeddings emb = {test_find, NULL};
    kn_prompt_chunks got;
    kn_err err;
    int rc = kn_prompt_qwen(qc->bpe, qc->family, &emb, json_string_value(text), json_string_length(text), &got, &err);
    if (json_object_get(line, "error")) {
        CHECK(rc != KN_OK, "%s: ComfyUI raises, Kiln gave %zu tokens", name_of(line), got.n_tokens);
    } else if (rc) {
        CHECK(0, "%s: %s", name_of(line), err.msg);
    } else {
        check_chunks(name_of(line), &got, json_object_get(json_object_get(line, "out"), qc->key));
    }
    kn_prompt_chunks_free(&got);
}

/* ---- weights, by the README's examples ---------------------------------------- */

static void check_weights(const char *text, size_t n_want, const char *const *texts, const double *weights) {
    kn_prompt_segment *segs;
    size_t n;
    kn_err err;
    if (kn_prompt_weights(text, strlen(text), &segs, &n, &err)) {
        CHECK(0, "'%s': %s", text, err.msg);
        return;
    }
    CHECK(n == n_want, "'%s': %zu segments, want %zu", text, n, n_want);
    for (size_t i = 0; i < n && i < n_want; i++)
        CHECK(segs[i].len == strlen(texts[i]) && !memcmp(segs[i].text, texts[i], segs[i].len) &&
                  (segs[i].weight == weights[i] || (isnan(weights[i]) && isnan(segs[i].weight))),
              "'%s' segment %zu: '%.*s' %.17g, want '%s' %.17g", text, i, (int)segs[i].len, segs[i].text,
              segs[i].weight, texts[i], weights[i]);
    kn_prompt_segments_free(segs, n);
}

#define WEIGHTS(text, ...)                                                                 \
    do {                                                                                   \
        static const struct { const char *t; double w; } w_[] = {__VA_ARGS__};            \
        const char *t_[sizeof w_ / sizeof w_[0]];                                          \
        double ww_[sizeof w_ / sizeof w_[0]];                                              \
        for (size_t i_ = 0; i_ < sizeof w_ / sizeof w_[0]; i_++) t_[i_] = w_[i_].t, ww_[i_] = w_[i_].w; \
        check_weights(text, sizeof w_ / sizeof w_[0], t_, ww_);                            \
    } while (0)

static void test_weights(void) {
    WEIGHTS("a cat", {"a cat", 1.0});
    WEIGHTS("((x))", {"x", 1.1 * 1.1});
    WEIGHTS("(a (b:1.5) c:0.8)", {"a ", 0.8}, {"b", 1.5}, {" c", 0.8});
    WEIGHTS("(word:abc)", {"word:abc", 1.1});
    WEIGHTS("(:1.2)", {":1.2", 1.1});
    WEIGHTS("( cat : 1.2 )", {" cat ", 1.2});
    WEIGHTS("(cat:-1) (dog:0)", {"cat", -1.0}, {" ", 1.0}, {"dog", 0.0});
    WEIGHTS("(cat:1e-1)", {"cat", 0.1});
    WEIGHTS("(x:1_0.5)", {"x", 10.5});
    WEIGHTS("(x:1__0)", {"x:1__0", 1.1});
    WEIGHTS("(x:_1)", {"x:_1", 1.1});
    WEIGHTS("(x:-InFinity)", {"x", -INFINITY});
    WEIGHTS("(x:nan)", {"x", NAN});
    WEIGHTS("(x:\xd9\xa1.\xd9\xa5)", {"x", 1.5});          /* Arabic-Indic digits */
    WEIGHTS("(x:\xe3\x80\x80" "2\xc2\x85)", {"x", 2.0});  /* U+3000, U+0085 around */
    WEIGHTS("(x:2\x1c)", {"x:2\x1c", 1.1});                /* not float() whitespace */
    WEIGHTS("(x:.5)(y:5.)(z:.)", {"x", 0.5}, {"y", 5.0}, {"z:.", 1.1});
    WEIGHTS("\\(escaped\\) (x:1.5\\)", {"(escaped) ", 1.0}, {"(x:1.5)", 1.0});
    WEIGHTS("(a \\(b\\) c:1.2)", {"a (b) c", 1.2});
    WEIGHTS("(x:inf\\(nan)", {"x:inf(nan", 1.1}); /* the escape's NUL code ends no float */
    WEIGHTS("(unclosed paren", {"(unclosed paren", 1.0});
    WEIGHTS("closed) paren (x)", {"closed) paren (x)", 1.0}); /* depth -1, then 0: all text */
    WEIGHTS("a)b((c)d", {"a)b(", 1.0}, {"c", 1.1}, {"d", 1.0});
    WEIGHTS("((a)", {"(a", 1.1});
    WEIGHTS("()x", {"x", 1.0});
    WEIGHTS("[x]", {"[x]", 1.0});

    char deep[2 * (KN_PROMPT_MAX_NESTING + 2) + 2];
    size_t n = KN_PROMPT_MAX_NESTING + 2;
    memset(deep, '(', n);
    deep[n] = 'x';
    memset(deep + n + 1, ')', n);
    kn_prompt_segment *segs;
    kn_err err;
    CHECK(kn_prompt_weights(deep, 2 * n + 1, &segs, &n, &err) == KN_ERR_INVALID, "nesting past the limit is an error");
}

/* ---- robustness --------------------------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* A code point drawn to hit the tokenizer's classes: ASCII, Latin with combining
 * marks, Hangul jamo, CJK, whitespace, contractions, anything. */
static uint32_t random_cp(void) {
    static const uint32_t picks[] = {' ', '\n', '\r', '\t', '\'', 's', 'S', 'l', 0x17F, 0x300, 0x301,
                                     0x323, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xA0, 0x3000, 0x200D, 0xFE0F, 0x1F600,
                                     0x0958, 0x2126, 0xF900, 0x1D15E, 0x0F73, 0xFB2C};
    switch (rnd() % 5) {
    case 0: return 0x20 + rnd() % 0x5F;
    case 1: return picks[rnd() % (sizeof picks / sizeof *picks)];
    case 2: return rnd() % 0x3000;
    default: {
        uint32_t cp = rnd() % 0x110000;
        return cp >= 0xD800 && cp <= 0xDFFF ? 'x' : cp;
    }
    }
}

static void test_robustness(const kn_bpe *bpe) {
    static const char *const bad[] = {"\xff", "abc\x80", "\xc0\x80", "\xe0\x80\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                      "ok \xe4\xb8", "\xf0\x9f\x98"};
    int32_t *ids;
    size_t n;
    kn_err err;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = kn_bpe_encode(bpe, bad[i], strlen(bad[i]), &ids, &n, &err);
        CHECK(rc == KN_ERR_INVALID && ids == NULL && n == 0 && strstr(err.msg, "UTF-8"), "bad UTF-8 #%zu: rc %d", i, rc);
    }
    CHECK(kn_bpe_encode(bpe, "a\0b", 3, &ids, &n, &err) == KN_OK && n == 3, "NUL is text");
    free(ids);

    /* Arbitrary bytes: valid or not, never a crash (ASan/UBSan builds watch). */
    uint8_t buf[256];
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = rnd() % sizeof buf;
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rnd();
        if (iter % 2) /* mostly ASCII, so more of them are valid */
            for (size_t i = 0; i < len; i++) buf[i] &= rnd() % 8 ? 0x7F : 0xFF;
        int rc = kn_bpe_encode(bpe, (const char *)buf, len, &ids, &n, &err);
        CHECK(rc == KN_OK || rc == KN_ERR_INVALID, "random bytes: rc %d", rc);
        CHECK((rc == KN_OK) == (kn_utf8_validate(buf, len) == len), "UTF-8 validity and result disagree");
        free(ids);
        kn_prompt_chunks chunks;
        kn_prompt_qwen(bpe, iter % 3 ? KN_QWEN_IMAGE : KN_QWEN_Z_IMAGE, NULL, (const char *)buf, len, &chunks, &err);
        kn_prompt_chunks_free(&chunks);
    }

    /* Random valid text: the ids' bytes spell the NFC form of the text exactly. */
    uint32_t cps[64], nfc[64 * KN_UC_NFC_MAX_GROWTH];
    uint8_t text[64 * 4], want[sizeof nfc / sizeof *nfc * 4];
    int roundtrip_failures = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t ncp = rnd() % 64, len = 0, wlen = 0;
        for (size_t i = 0; i < ncp; i++) cps[i] = random_cp();
        for (size_t i = 0; i < ncp; i++) len += kn_utf8_encode(cps[i], text + len);
        /* (With this seed no text spells an added token, whose bytes would also
         * round-trip but cut the NFC into pieces.) */
        size_t nn = kn_uc_nfc(cps, ncp, nfc);
        for (size_t i = 0; i < nn; i++) wlen += kn_utf8_encode(nfc[i], want + wlen);
        if (kn_bpe_encode(bpe, (const char *)text, len, &ids, &n, &err)) {
            CHECK(0, "valid text refused: %s", err.msg);
            continue;
        }
        size_t pos = 0;
        bool same = true;
        for (size_t i = 0; i < n && same; i++) {
            size_t tl;
            const char *tb = kn_bpe_token_bytes(bpe, ids[i], &tl);
            same = tb && pos + tl <= wlen && !memcmp(want + pos, tb, tl);
            pos += tl;
        }
        if (!(same && pos == wlen) && roundtrip_failures++ < 5) CHECK(0, "round trip of a %zu-byte text failed", len);
        free(ids);
    }
    CHECK(roundtrip_failures == 0, "%d round-trip failures", roundtrip_failures);
}

/* Random weighting syntax through a CLIP-shaped chunker (77 per chunk, start/end,
 * padded) over the Qwen tokenizer: no crash, and the output keeps its shape. */
static int bpe_encode_cb(const void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, kn_err *err) {
    return kn_bpe_encode(ctx, text, len, ids, n, err);
}

static void test_prompt_syntax(const kn_bpe *bpe) {
    static const char *const atoms[] = {"(", ")", "(", ")", ":", "1.5", "\\(", "\\)", " ", "\n", "cat", "dog,",
                                        " embedding:", "kiln_emb", "kiln_vec,", "missing", "<|im_end|>", "e-3", "\xc3\xa9",
                                        "_", "inf", "\\", ",,", "\n\n", "  "};
    kn_prompt_tokenizer tok = {.encode = bpe_encode_cb, .ctx = bpe, .start_token = 1, .end_token = 2, .pad_token = 3,
                               .max_length = 77, .pad_to_max_length = true, .tokens_start = 0, .weights = true,
                               .eos_text = "<|im_end|>", .eos_id = 2};
    kn_prompt_embeddings emb = {test_find, NULL};
    char text[1024];
    int errors = 0;
    for (int iter = 0; iter < 5000; iter++) {
        size_t len = 0, atoms_n = rnd() % 60;
        for (size_t k = 0; k < atoms_n; k++) {
            const char *a = atoms[rnd() % (sizeof atoms / sizeof *atoms)];
            memcpy(text + len, a, strlen(a));
            len += strlen(a);
        }
        kn_prompt_chunks c;
        kn_err err;
        if (kn_prompt_tokenize(&tok, &emb, text, len, &c, &err)) {
            errors++; /* only 'embedding:' without a name may fail */
            CHECK(strstr(err.msg, "without a name") != NULL, "'%.*s': %s", (int)len, text, err.msg);
            continue;
        }
        bool shaped = c.n_chunks >= 1 && c.chunk_start[0] == 0 && c.chunk_start[c.n_chunks] == c.n_tokens;
        int32_t last_word = 0;
        for (size_t k = 0; shaped && k < c.n_chunks; k++) {
            const kn_prompt_token *t = c.tokens + c.chunk_start[k];
            size_t n = c.chunk_start[k + 1] - c.chunk_start[k];
            shaped = n == 77 && t[0].id == 1 && t[0].word == 0;
            for (size_t i = 1; shaped && i < n; i++) {
                shaped = t[i].word == 0 || t[i].word >= last_word;
                if (t[i].word) last_word = t[i].word;
            }
        }
        CHECK(shaped, "'%.*s': chunks out of shape", (int)len, text);
        kn_prompt_chunks_free(&c);
    }
    CHECK(errors < 5000, "every random prompt failed");
}

int main(void) {
    kn_bpe *qwen25 = NULL, *qwen3 = NULL;
    kn_err err;
    if (kn_bpe_load(&qwen25, TOKENIZERS "/qwen25", &err)) {
        printf("FAIL %s\n", err.msg);
        return 1;
    }
    if (kn_bpe_load(&qwen3, TOKENIZERS "/qwen3", &err)) {
        printf("FAIL %s\n", err.msg);
        return 1;
    }
    CHECK(kn_bpe_vocab_size(qwen25) == 151669, "vocab size %zu", kn_bpe_vocab_size(qwen25));
    kn_bpe *none = qwen25;
    CHECK(kn_bpe_load(&none, FIXTURES "/missing", &err) == KN_ERR_IO && none == NULL && strstr(err.msg, "missing"),
          "missing dir: %s", err.msg);

    int lines = each_line(FIXTURES "/golden/qwen25.jsonl", check_raw_line, qwen25);
    lines += each_line(FIXTURES "/golden/qwen3.jsonl", check_raw_line, qwen3);
    printf("raw goldens: %d prompts\n", lines);

    qwen_case qi = {qwen25, KN_QWEN_IMAGE, "qwen25_7b"}, zi = {qwen3, KN_QWEN_Z_IMAGE, "qwen3_4b"};
    lines = each_line(FIXTURES "/golden/comfyui/qwen_image.jsonl", check_qwen_line, &qi);
    lines += each_line(FIXTURES "/golden/comfyui/z_image.jsonl", check_qwen_line, &zi);
    printf("comfyui qwen goldens: %d prompts\n", lines);

    test_reference_edges(qwen25);
    test_weights();
    test_robustness(qwen25);
    test_prompt_syntax(qwen25);

    kn_bpe_free(qwen25);
    kn_bpe_free(qwen3);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
