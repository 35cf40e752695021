/* LLM text encoders: see llm_clip.h. */
#include "pipelines/common/llm_clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/bpe.h"

typedef struct llm_clip {
    kn_clip base;
    const kn_llm_clip_spec *spec;
    kn_llm te;
    kn_bpe *bpe;
} llm_clip;

void kn_llm_clip_free(kn_clip *c) {
    llm_clip *q = (llm_clip *)c;
    if (!q) return;
    kn_llm_free(&q->te);
    kn_bpe_free(q->bpe);
    free(q);
}

int kn_llm_clip_load(kn_clip **out, const kn_llm_clip_spec *spec, const kn_st_file *f, const char *tokenizer_dir,
                     kn_err *err) {
    llm_clip *q = calloc(1, sizeof *q);
    if (!q) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    q->base.family = spec->family;
    q->spec = spec;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", tokenizer_dir, spec->tokenizer);
    int rc = kn_llm_load(&q->te, f, "model.", spec->consts, err);
    if (!rc && kn_bpe_load(&q->bpe, dir, err)) rc = kn_err_wrap(err, "Qwen2 tokenizer");
    if (rc) {
        kn_llm_clip_free(&q->base);
        return rc;
    }
    *out = &q->base;
    return KN_OK;
}

/* dst owns a copy of src (data NULL stays NULL). */
static int keep(const kn_tensor *src, kn_tensor *dst, kn_err *err) {
    if (!src->data) return KN_OK;
    KN_TRY(kn_tensor_new(dst, src->dtype, KN_DEV_CPU, src->ndim, src->ne, err));
    return kn_tensor_copy(dst, src, err);
}

int kn_llm_clip_encode(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out, kn_err *err) {
    const llm_clip *q = (const llm_clip *)c;
    const kn_llm_clip_spec *spec = q->spec;
    const char *text = texts[0];
    kn_prompt_chunks chunks = {0};
    kn_arena *arena = NULL;
    kn_tensor ids = {0}, hidden, cond = {0}, mask = {0};
    (void)n;
    memset(out, 0, sizeof *out);
    int rc = kn_prompt_qwen(q->bpe, spec->template, NULL, text, strlen(text), &chunks, err);
    int64_t L = rc ? 0 : (int64_t)chunks.n_tokens;
    if (!rc) rc = kn_tensor_new(&ids, KN_I64, KN_DEV_CPU, 2, (int64_t[]){1, L}, err);
    for (int64_t i = 0; !rc && i < L; i++) ((int64_t *)ids.data)[i] = chunks.tokens[i].id;
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    kn_llm_outputs o = spec->layer ? (kn_llm_outputs){NULL, NULL, &hidden, spec->layer}
                                   : (kn_llm_outputs){&hidden, NULL, NULL, 0};
    if (!rc && kn_llm_forward(ctx, &q->te, arena, &ids, NULL, &o)) {
        *err = ctx->err;
        rc = err->code;
    }
    if (!rc && spec->condition) rc = spec->condition(arena, &ids, &hidden, &cond, &mask, err);
    if (!rc) rc = keep(spec->condition ? &cond : &hidden, &out->cond, err);
    if (!rc) rc = keep(&mask, &out->mask, err);
    if (rc) kn_text_cond_free(out);
    kn_arena_destroy(arena);
    kn_tensor_free(&ids);
    kn_prompt_chunks_free(&chunks);
    return rc;
}
