/* libFuzzer target for Flux.1's tokenizers (pipelines/tokenizers/clip_bpe.h, spm.h,
 * charsmap.h) and ComfyUI's prompt step over them (prompt.h), with the tokenizer data
 * Kiln ships.
 *
 * Each input is used twice. As prompt text: both tokenizers must accept it exactly
 * when it is valid UTF-8, give ids inside their vocabularies framed by their special
 * tokens, and the prompt step must give CLIP-L chunks of 77 tokens and one T5 chunk
 * of at least 256 ending in </s> (or refuse only what ComfyUI refuses). The weighting
 * step alone (`(text:1.2)`, `((x))`, `\(`) may only drop bytes (parens, escapes,
 * weights), fails only on nesting past KN_PROMPT_MAX_NESTING, and leaves text without
 * parentheses or backslashes at weight 1. As a
 * precompiled charsmap blob: loading and normalizing may only fail as malformed
 * data, and what comes out is UTF-8. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/charsmap.h"
#include "pipelines/tokenizers/clip_bpe.h"
#include "pipelines/tokenizers/prompt.h"
#include "pipelines/tokenizers/spm.h"
#include "pipelines/tokenizers/unicode.h"

#define DATA KN_SOURCE_DIR "/pipelines/tokenizers/data"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static kn_clip_bpe *clip;
static kn_spm *t5;

static int find(void *ctx, const char *name, size_t len, bool *found, int32_t *handle, size_t *rows, kn_err *err) {
    (void)ctx, (void)err;
    *found = len == 8 && !memcmp(name, "kiln_emb", 8);
    *handle = 0;
    *rows = 2;
    return KN_OK;
}

static void check_ids(int rc, bool valid, const int32_t *ids, size_t n, int32_t vocab, int32_t first, int32_t last) {
    if (rc != (valid ? KN_OK : KN_ERR_INVALID)) abort();
    if (rc) return;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) abort();
    if ((first >= 0 && (n == 0 || ids[0] != first)) || (last >= 0 && (n == 0 || ids[n - 1] != last))) abort();
}

static void as_text(const uint8_t *data, size_t size) {
    bool valid = kn_utf8_validate(data, size) == size, specials = size % 2;
    int32_t *ids;
    size_t n;
    kn_err err;
    int rc = kn_clip_bpe_encode(clip, (const char *)data, size, specials, &ids, &n, &err);
    check_ids(rc, valid, ids, n, 49408, specials ? 49406 : -1, specials ? 49407 : -1);
    free(ids);
    rc = kn_spm_encode(t5, (const char *)data, size, specials, &ids, &n, &err);
    check_ids(rc, valid, ids, n, 32100, -1, specials ? 1 : -1);
    free(ids);

    kn_prompt_embeddings emb = {find, NULL};
    kn_prompt_chunks c;
    if (kn_prompt_clip_l(clip, &emb, (const char *)data, size, &c, &err) == KN_OK) {
        for (size_t k = 0; k < c.n_chunks; k++)
            if (c.chunk_start[k + 1] - c.chunk_start[k] != 77 || c.tokens[c.chunk_start[k]].id != 49406) abort();
    } else if (valid && !strstr(err.msg, "without a name")) {
        abort();
    }
    kn_prompt_chunks_free(&c);
    if (kn_prompt_t5(t5, KN_PROMPT_T5_FLUX_MIN_LENGTH, &emb, (const char *)data, size, &c, &err) == KN_OK) {
        size_t last = c.n_tokens;
        while (last > 0 && c.tokens[last - 1].id == 0 && c.tokens[last - 1].word == 0) last--;
        if (c.n_chunks != 1 || c.n_tokens < KN_PROMPT_T5_FLUX_MIN_LENGTH || last == 0 || c.tokens[last - 1].id != 1)
            abort();
    } else if (valid && !strstr(err.msg, "without a name")) {
        abort();
    }
    kn_prompt_chunks_free(&c);
}

static void as_weights(const uint8_t *data, size_t size) {
    kn_prompt_segment *segs = NULL;
    size_t n = 0, total = 0;
    kn_err err;
    int rc = kn_prompt_weights((const char *)data, size, &segs, &n, &err);
    if (rc != KN_OK && rc != KN_ERR_INVALID) abort();
    bool plain = !memchr(data, '(', size) && !memchr(data, ')', size) && !memchr(data, '\\', size);
    for (size_t k = 0; rc == KN_OK && k < n; k++) {
        total += segs[k].len;
        if (plain && segs[k].weight != 1.0) abort();
    }
    if ((rc == KN_OK && total > size) || (rc != KN_OK && plain)) abort();
    kn_prompt_segments_free(segs, n);
}

static void as_charsmap(const uint8_t *data, size_t size) {
    static const char sample[] = "a\r\nb \xef\xac\x81\xcc\x81 \xef\xbc\xa1\xcc\x81 "
                                 "caf\xc3\xa9\xe2\x80\x8b \xe2\x91\xa0";
    kn_charsmap *m;
    kn_err err;
    int rc = kn_charsmap_load(&m, data, size, &err);
    if (rc != KN_OK && (rc != KN_ERR_FORMAT || m)) abort();
    if (rc) return;
    kn_tok_bytes out = {0};
    rc = kn_charsmap_normalize(m, (const uint8_t *)sample, sizeof sample - 1, &out, &err);
    if (rc != KN_OK && rc != KN_ERR_FORMAT) abort();
    if (rc == KN_OK && kn_utf8_validate(out.v, out.n) != out.n) abort();
    free(out.v);
    kn_charsmap_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kn_err err;
    if (!clip && (kn_clip_bpe_load(&clip, DATA "/clip_l", &err) || kn_spm_load(&t5, DATA "/t5", &err))) abort();
    as_text(data, size);
    as_weights(data, size);
    as_charsmap(data, size);
    return 0;
}
