/* Golden-file helpers shared by the tokenizer tests (test_tokenizer.c: Qwen,
 * test_tokenizer_flux.c: CLIP-L and T5), over tests/fixtures/tokenizers (copied
 * unchanged from shared/tokenizers; its README states every rule). Include after
 * check.h; each test is one translation unit, so these are static. */
#ifndef KN_TEST_TOKENIZER_GOLDEN_H
#define KN_TEST_TOKENIZER_GOLDEN_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/prompt.h"

#define FIXTURES KN_SOURCE_DIR "/tests/fixtures/tokenizers"
#define TOKENIZERS KN_SOURCE_DIR "/pipelines/tokenizers/data" /* shipped with Kiln: the runtime reads them too */

/* Calls fn on every line of a .jsonl file; returns the line count. */
static int each_line(const char *path, void (*fn)(const json_t *line, void *ctx), void *ctx) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        CHECK(0, "cannot open %s", path);
        return 0;
    }
    int n = 0;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&buf, &cap, f)) > 0) {
        json_error_t jerr;
        json_t *line = json_loadb(buf, (size_t)len, JSON_ALLOW_NUL, &jerr);
        CHECK(line != NULL, "%s: %s", path, jerr.text);
        if (line) fn(line, ctx);
        json_decref(line);
        n++;
    }
    free(buf);
    fclose(f);
    return n;
}

static const char *name_of(const json_t *line) { return json_string_value(json_object_get(line, "name")); }

/* Checks ids[0..n) against a JSON array of ids; true when they agree. */
static bool check_ids(const char *what, const int32_t *ids, size_t n, const json_t *want) {
    size_t bad = n;
    for (size_t i = 0; i < n && i < json_array_size(want); i++)
        if (ids[i] != json_integer_value(json_array_get(want, i))) {
            bad = i;
            break;
        }
    bool same = n == json_array_size(want) && bad == n;
    CHECK(same, "%s: %zu ids (want %zu), first difference at %zu: got %d want %d", what, n, json_array_size(want), bad,
          bad < n ? ids[bad] : -1,
          bad < json_array_size(want) ? (int)json_integer_value(json_array_get(want, bad)) : -1);
    return same;
}

/* The goldens' embedding folder: kiln_emb (2 rows) and kiln_vec (1 row). */
static const char *const emb_names[] = {"kiln_emb", "kiln_vec"};
static const size_t emb_rows[] = {2, 1};

static int test_find(void *ctx, const char *name, size_t len, bool *found, int32_t *handle, size_t *rows,
                     kn_err *err) {
    (void)ctx, (void)err;
    *found = false;
    for (int32_t k = 0; k < 2; k++) {
        if (strlen(emb_names[k]) == len && !memcmp(emb_names[k], name, len)) {
            *found = true;
            *handle = k;
            *rows = emb_rows[k];
        }
    }
    return KN_OK;
}

/* Compares one chunk list with the golden's [[token, weight, word], ...] chunks;
 * true when they agree. */
static bool check_chunks(const char *name, const kn_prompt_chunks *got, const json_t *want) {
    bool same = got->n_chunks == json_array_size(want);
    CHECK(same, "%s: %zu chunks, want %zu", name, got->n_chunks, json_array_size(want));
    for (size_t c = 0; c < got->n_chunks && c < json_array_size(want); c++) {
        const json_t *chunk = json_array_get(want, c);
        size_t n = got->chunk_start[c + 1] - got->chunk_start[c];
        same = same && n == json_array_size(chunk);
        CHECK(n == json_array_size(chunk), "%s: chunk %zu has %zu tokens, want %zu", name, c, n,
              json_array_size(chunk));
        for (size_t i = 0; i < n && i < json_array_size(chunk); i++) {
            const kn_prompt_token *t = &got->tokens[got->chunk_start[c] + i];
            const json_t *w = json_array_get(chunk, i), *tok = json_array_get(w, 0);
            bool same_token;
            if (json_is_object(tok)) {
                const char *emb = json_string_value(json_object_get(tok, "embedding"));
                same_token = t->id == -1 && t->embedding >= 0 && t->embedding < 2 &&
                             !strcmp(emb_names[t->embedding], emb) &&
                             t->row == json_integer_value(json_object_get(tok, "row"));
            } else {
                same_token = t->id == json_integer_value(tok);
            }
            double weight = json_number_value(json_array_get(w, 1));
            bool ok = same_token && t->word == json_integer_value(json_array_get(w, 2)) &&
                      (t->weight == weight || (isnan(t->weight) && isnan(weight)));
            if (!ok) {
                char *dump = json_dumps(w, JSON_COMPACT);
                CHECK(0, "%s: chunk %zu token %zu: got (%d emb %d row %d, %.17g, %d) want %s", name, c, i, t->id,
                      t->embedding, t->row, t->weight, t->word, dump);
                free(dump);
                return false;
            }
        }
    }
    return same;
}

#endif
