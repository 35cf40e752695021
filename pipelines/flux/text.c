/* Flux.1's CLIP-L + T5-XXL text encoder: see text.h. */
#include "pipelines/flux/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/flux/clip_l.h"
#include "pipelines/flux/t5.h"
#include "pipelines/tokenizers/prompt.h"

#define T5_END 1 /* </s> */
#define T5_PAD 0

typedef struct flux_clip {
    kn_clip base;
    kn_clip_text clip;
    kn_t5 t5;
    kn_clip_bpe *bpe;
    kn_spm *spm;
} flux_clip;

static void clip_free(kn_clip *c) {
    flux_clip *f = (flux_clip *)c;
    if (!f) return;
    kn_clip_text_free(&f->clip);
    kn_t5_free(&f->t5);
    kn_clip_bpe_free(f->bpe);
    kn_spm_free(f->spm);
    free(f);
}

static int clip_load(kn_clip **out, const kn_st_file *const *files, const char *tokenizer_dir, kn_err *err) {
    flux_clip *f = calloc(1, sizeof *f);
    if (!f) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    f->base.family = &kn_flux_clip;
    char dir[4200];
    int rc = kn_clip_text_load(&f->clip, files[0], &kn_clip_l_consts, err);
    if (!rc) rc = kn_t5_load(&f->t5, files[1], &kn_t5_xxl_consts, err);
    snprintf(dir, sizeof dir, "%s/clip_l", tokenizer_dir);
    if (!rc && kn_clip_bpe_load(&f->bpe, dir, err)) rc = kn_err_wrap(err, "CLIP tokenizer");
    snprintf(dir, sizeof dir, "%s/t5", tokenizer_dir);
    if (!rc && kn_spm_load(&f->spm, dir, err)) rc = kn_err_wrap(err, "T5 tokenizer");
    if (rc) {
        clip_free(&f->base);
        return rc;
    }
    *out = &f->base;
    return KN_OK;
}

/* The encoder's batch: every chunk, plus ComfyUI's empty sequence (start?,
 * end, pad...) when some weight is not 1. ids [rows, L] I64. */
static int batch_ids(const kn_prompt_chunks *ch, int32_t start, int32_t end, int32_t pad, kn_tensor *ids,
                     int *weighted, kn_err *err) {
    size_t L = ch->n_chunks ? ch->chunk_start[1] - ch->chunk_start[0] : 0;
    *weighted = 0;
    for (size_t c = 0; c < ch->n_chunks; c++)
        if (ch->chunk_start[c + 1] - ch->chunk_start[c] != L)
            return kn_fail(err, KN_ERR_INVALID, "prompt chunks of different lengths");
    for (size_t i = 0; i < ch->n_tokens; i++) {
        if (ch->tokens[i].id < 0)
            return kn_fail(err, KN_ERR_UNSUPPORTED, "textual-inversion embeddings are not supported");
        *weighted |= ch->tokens[i].weight != 1.0;
    }
    if (L == 0) return kn_fail(err, KN_ERR_INVALID, "empty prompt encoding");
    int64_t rows = (int64_t)ch->n_chunks + (*weighted ? 1 : 0);
    KN_TRY(kn_tensor_new(ids, KN_I64, KN_DEV_CPU, 2, (int64_t[]){rows, (int64_t)L}, err));
    int64_t *d = ids->data;
    for (size_t i = 0; i < ch->n_tokens; i++) d[i] = ch->tokens[i].id;
    if (*weighted) {
        int64_t *e = d + ch->n_tokens, k = 0;
        if (start >= 0) e[k++] = start;
        e[k++] = end;
        for (; k < (int64_t)L; k++) e[k] = pad;
    }
    return KN_OK;
}

/* out [1, chunks * L, D] = the chunks' rows of hidden, weighted tokens moved
 * away from the empty sequence's row: (z - z_empty) * w + z_empty. */
static int weighted_output(const kn_prompt_chunks *ch, const kn_tensor *hidden, int weighted, kn_tensor *out,
                           kn_err *err) {
    int64_t L = hidden->ne[1], D = hidden->ne[2];
    KN_TRY(kn_tensor_new(out, KN_F32, KN_DEV_CPU, 3, (int64_t[]){1, (int64_t)ch->n_tokens, D}, err));
    const float *h = hidden->data, *empty = h + (int64_t)ch->n_chunks * L * D;
    float *o = out->data;
    memcpy(o, h, (size_t)ch->n_tokens * (size_t)D * sizeof(float));
    for (size_t i = 0; weighted && i < ch->n_tokens; i++) {
        float w = (float)ch->tokens[i].weight;
        if (ch->tokens[i].weight == 1.0) continue;
        const float *ze = empty + (int64_t)(i % (size_t)L) * D;
        float *z = o + (int64_t)i * D;
        for (int64_t d = 0; d < D; d++) z[d] = (z[d] - ze[d]) * w + ze[d];
    }
    return KN_OK;
}

static int encode(kn_ctx *ctx, const flux_clip *f, const char *text_l, const char *text_t5, kn_arena *arena,
                  kn_text_cond *out, kn_err *err) {
    kn_prompt_chunks cl = {0}, ct = {0};
    kn_tensor ids_l = {0}, ids_t = {0}, pooled, hidden;
    int wl = 0, wt = 0;
    int rc = kn_prompt_clip_l(f->bpe, NULL, text_l, strlen(text_l), &cl, err);
    if (!rc) rc = kn_prompt_t5(f->spm, KN_PROMPT_T5_FLUX_MIN_LENGTH, NULL, text_t5, strlen(text_t5), &ct, err);
    if (!rc) rc = batch_ids(&cl, KN_CLIP_BOS, KN_CLIP_EOS, KN_CLIP_EOS, &ids_l, &wl, err);
    if (!rc) rc = batch_ids(&ct, -1, T5_END, T5_PAD, &ids_t, &wt, err);
    /* Flux reads only CLIP-L's pooled vector of the first chunk: its weighting cannot matter */
    if (!rc && (kn_clip_text_forward(ctx, &f->clip, arena, &ids_l, &(kn_clip_text_outputs){.pooled = &pooled}) ||
                kn_t5_forward(ctx, &f->t5, arena, &ids_t, NULL, &hidden))) {
        *err = ctx->err;
        rc = err->code;
    }
    if (!rc) rc = weighted_output(&ct, &hidden, wt, &out->cond, err);
    if (!rc) rc = kn_tensor_new(&out->pooled, KN_F32, KN_DEV_CPU, 2, (int64_t[]){1, pooled.ne[1]}, err);
    if (!rc) memcpy(out->pooled.data, pooled.data, (size_t)pooled.ne[1] * sizeof(float));
    kn_tensor_free(&ids_l);
    kn_tensor_free(&ids_t);
    kn_prompt_chunks_free(&cl);
    kn_prompt_chunks_free(&ct);
    return rc;
}

static int clip_encode(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out,
                       kn_err *err) {
    kn_arena *arena = NULL;
    memset(out, 0, sizeof *out);
    int rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    if (!rc) rc = encode(ctx, (const flux_clip *)c, texts[0], texts[n > 1 ? 1 : 0], arena, out, err);
    if (rc) kn_text_cond_free(out);
    kn_arena_destroy(arena);
    return rc;
}

const kn_clip_family kn_flux_clip = {"flux", "Flux.1 (CLIP-L + T5-XXL)", 2, clip_load, clip_free, clip_encode};
