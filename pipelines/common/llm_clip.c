/* LLM text encoders: see llm_clip.h. */
#include "pipelines/common/llm_clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/bpe.h"

typedef struct llm_clip {
    kn_clip base;
    const kn_llm_clip_spec *spec;
    const kn_llm_clip_images *images; /* NULL: text only */
    kn_llm te;
    void *tower;                      /* the vision tower, NULL when the file has none */
    kn_bpe *bpe;
} llm_clip;

/* ---- the LLM with images spliced in ---------------------------------------------------- */

/* Where the image rows go: the k-th used image-pad token sits at ids index at[k]. */
typedef struct splice {
    int64_t *at, *n, *mh, *mw; /* [used]: pad index, rows, merged grid */
    kn_tensor *rows;           /* [used] */
    int used;
} splice;

static int encode_images(kn_ctx *ctx, const kn_llm_vl *m, kn_arena *a, const kn_tensor *ids,
                         const kn_tensor *const *images, splice *sp, kn_debug_fn debug, void *user) {
    kn_err *err = &ctx->err;
    const int64_t *id = ids->data;
    for (int64_t i = 0, k = 0; i < ids->ne[1] && k < sp->used; i++) {
        if (id[i] != m->image_pad) continue;
        int64_t grid[2];
        if (m->vision->encode(ctx, m->tower, a, images[k], &sp->rows[k], grid, debug, user))
            return kn_err_wrap(err, "image %lld", (long long)k + 1);
        if (sp->rows[k].ne[1] != m->llm->cfg.hidden)
            return kn_fail(err, KN_ERR_SHAPE, "image %lld: the vision tower's rows are %lld wide, the LLM's %lld",
                           (long long)k + 1, (long long)sp->rows[k].ne[1], (long long)m->llm->cfg.hidden);
        sp->at[k] = i;
        sp->n[k] = sp->rows[k].ne[0];
        sp->mh[k] = grid[0];
        sp->mw[k] = grid[1];
        if (debug) {
            char name[32];
            snprintf(name, sizeof name, "image%lld_embeds", (long long)k);
            KN_TRY(debug(user, name, &sp->rows[k]));
        }
        k++;
    }
    return KN_OK;
}

/* The spliced input rows x [1, L', D] and their (t, h, w) positions pos [L'][3]. */
static int assemble(kn_ctx *ctx, const kn_llm_vl *m, kn_arena *a, const kn_tensor *ids, const splice *sp,
                    kn_tensor *x, double **pos) {
    kn_err *err = &ctx->err;
    const int64_t L = ids->ne[1], D = m->llm->cfg.hidden;
    int64_t total = L - sp->used;
    for (int k = 0; k < sp->used; k++) total += sp->n[k];
    kn_tensor text;
    KN_TRY(kn_arena_tensor(a, x, KN_F32, 3, (int64_t[]){1, total, D}, err));
    KN_TRY(kn_arena_tensor(a, &text, KN_F32, 3, (int64_t[]){1, L, D}, err));
    if (!(*pos = kn_arena_alloc(a, (size_t)total * 3 * sizeof **pos, err))) return err->code;
    /* pads are ids like any other, so one lookup covers the whole list */
    if (kn_embedding(&m->llm->embed, ids, &text, err)) return kn_err_wrap(err, "llm: input_ids");
    float *dst = x->data;
    const float *src = text.data;
    double *p = *pos, shift = 0.0;
    int64_t o = 0;
    for (int64_t i = 0, k = 0; i < L; i++) {
        if (k < sp->used && i == sp->at[k]) {
            const double s = (double)o + shift;
            memcpy(dst + o * D, sp->rows[k].data, (size_t)(sp->n[k] * D) * sizeof *dst);
            for (int64_t j = 0; j < sp->n[k]; j++, o++) {
                p[3 * o] = s;
                p[3 * o + 1] = s + (double)(j / sp->mw[k]);
                p[3 * o + 2] = s + (double)(j % sp->mw[k]);
            }
            /* the text after the image continues max(mh, mw) on from its start */
            shift += (double)(sp->mh[k] > sp->mw[k] ? sp->mh[k] : sp->mw[k]) - (double)sp->n[k];
            k++;
            continue;
        }
        memcpy(dst + o * D, src + i * D, (size_t)D * sizeof *dst);
        p[3 * o] = p[3 * o + 1] = p[3 * o + 2] = (double)o + shift;
        o++;
    }
    return KN_OK;
}

static int emit_positions(kn_debug_fn debug, void *user, kn_arena *a, const double *pos, int64_t L, kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_arena_tensor(a, &t, KN_F32, 2, (int64_t[]){3, L}, err));
    for (int64_t l = 0; l < L; l++)
        for (int s = 0; s < 3; s++) ((float *)t.data)[s * L + l] = (float)pos[3 * l + s];
    return debug(user, "position_ids", &t);
}

int kn_llm_vl_forward(kn_ctx *ctx, const kn_llm_vl *m, kn_arena *arena, const kn_tensor *ids,
                      const kn_tensor *const *images, int n, const kn_llm_outputs *out, kn_debug_fn debug,
                      void *debug_user) {
    kn_err *err = &ctx->err;
    char d[96];
    int pads = 0;
    if (ids->dtype == KN_I64 && ids->ndim == 2 && kn_tensor_is_contiguous(ids))
        for (int64_t i = 0; i < kn_tensor_numel(ids); i++) pads += ((const int64_t *)ids->data)[i] == m->image_pad;
    /* ComfyUI fills placeholders while images last: surplus pads stay tokens, surplus images go unseen */
    splice sp = {.used = pads < n ? pads : n};
    kn_tensor x;
    double *pos;
    if (sp.used == 0) {
        /* text only: the plain LLM; the intermediates only for the record */
        if (debug && ids->ne[0] == 1) {
            KN_TRY(assemble(ctx, m, arena, ids, &sp, &x, &pos));
            KN_TRY(debug(debug_user, "input_embeds", &x));
            KN_TRY(emit_positions(debug, debug_user, arena, pos, x.ne[1], err));
        }
        return kn_llm_run(ctx, m->llm, arena, &(kn_llm_input){ids, NULL, NULL, NULL, NULL}, out);
    }
    if (ids->ne[0] != 1)
        return kn_fail(err, KN_ERR_SHAPE, "llm: input_ids %s with images: one prompt at a time",
                       kn_tensor_desc(ids, d, sizeof d));
    if (!m->tower)
        return kn_fail(err, KN_ERR_NOT_FOUND, "the text encoder file has no vision tower (visual.* weights): it "
                       "cannot encode images");
    sp.at = kn_arena_alloc(arena, (size_t)sp.used * 4 * sizeof *sp.at, err);
    sp.rows = sp.at ? kn_arena_alloc(arena, (size_t)sp.used * sizeof *sp.rows, err) : NULL;
    if (!sp.rows) return err->code;
    sp.n = sp.at + sp.used;
    sp.mh = sp.n + sp.used;
    sp.mw = sp.mh + sp.used;
    KN_TRY(encode_images(ctx, m, arena, ids, images, &sp, debug, debug_user));
    KN_TRY(assemble(ctx, m, arena, ids, &sp, &x, &pos));
    if (debug) {
        KN_TRY(debug(debug_user, "input_embeds", &x));
        KN_TRY(emit_positions(debug, debug_user, arena, pos, x.ne[1], err));
    }
    return kn_llm_run(ctx, m->llm, arena, &(kn_llm_input){NULL, &x, NULL, pos, m->mrope}, out);
}

/* ---- the text encoder --------------------------------------------------------------- */

void kn_llm_clip_free(kn_clip *c) {
    llm_clip *q = (llm_clip *)c;
    if (!q) return;
    if (q->tower) q->images->vision->free(q->tower);
    kn_llm_free(&q->te);
    kn_bpe_free(q->bpe);
    free(q);
}

static int encode(kn_ctx *ctx, const kn_clip *c, const kn_clip_image_prompt *p, kn_text_cond *out, kn_debug_fn debug,
                  void *debug_user, kn_err *err);

int kn_llm_clip_load_images(kn_clip **out, const kn_llm_clip_spec *spec, const kn_llm_clip_images *images,
                            const kn_st_file *f, const char *tokenizer_dir, kn_err *err) {
    llm_clip *q = calloc(1, sizeof *q);
    if (!q) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    q->base.family = spec->family;
    q->spec = spec;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", tokenizer_dir, spec->tokenizer);
    int rc = kn_llm_load(&q->te, f, "model.", spec->consts, err);
    if (!rc && kn_bpe_load(&q->bpe, dir, err)) rc = kn_err_wrap(err, "Qwen2 tokenizer");
    if (!rc && images) {
        q->images = images;
        q->base.encode_images = encode;
        rc = images->vision->load(&q->tower, f, err);
    }
    if (rc) {
        kn_llm_clip_free(&q->base);
        return rc;
    }
    *out = &q->base;
    return KN_OK;
}

int kn_llm_clip_load(kn_clip **out, const kn_llm_clip_spec *spec, const kn_st_file *f, const char *tokenizer_dir,
                     kn_err *err) {
    return kn_llm_clip_load_images(out, spec, NULL, f, tokenizer_dir, err);
}

/* dst owns a copy of src (data NULL stays NULL). */
static int keep(const kn_tensor *src, kn_tensor *dst, kn_err *err) {
    if (!src->data) return KN_OK;
    KN_TRY(kn_tensor_new(dst, src->dtype, KN_DEV_CPU, src->ndim, src->ne, err));
    return kn_tensor_copy(dst, src, err);
}

/* The template ids of p: the caller's template, else the family's (its image template when images come). */
static int tokenize(const llm_clip *q, const kn_clip_image_prompt *p, kn_prompt_chunks *chunks, kn_err *err) {
    const kn_llm_clip_spec *spec = q->spec;
    size_t len = strlen(p->text);
    if (p->llama_template) return kn_prompt_qwen_template(q->bpe, spec->template, p->llama_template, NULL, p->text, len,
                                                          chunks, err);
    kn_qwen_family family = q->images && p->n_images > 0 ? q->images->template : spec->template;
    return kn_prompt_qwen(q->bpe, family, NULL, p->text, len, chunks, err);
}

static int encode(kn_ctx *ctx, const kn_clip *c, const kn_clip_image_prompt *p, kn_text_cond *out, kn_debug_fn debug,
                  void *debug_user, kn_err *err) {
    const llm_clip *q = (const llm_clip *)c;
    const kn_llm_clip_spec *spec = q->spec;
    kn_prompt_chunks chunks = {0};
    kn_arena *arena = NULL;
    kn_tensor ids = {0}, hidden, cond = {0}, mask = {0};
    memset(out, 0, sizeof *out);
    int rc = tokenize(q, p, &chunks, err);
    int64_t L = rc ? 0 : (int64_t)chunks.n_tokens;
    if (!rc) rc = kn_tensor_new(&ids, KN_I64, KN_DEV_CPU, 2, (int64_t[]){1, L}, err);
    for (int64_t i = 0; !rc && i < L; i++) ((int64_t *)ids.data)[i] = chunks.tokens[i].id;
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    kn_llm_outputs o = spec->layer ? (kn_llm_outputs){NULL, NULL, &hidden, spec->layer}
                                   : (kn_llm_outputs){&hidden, NULL, NULL, 0};
    const kn_llm_clip_images *im = q->images;
    const kn_llm_vl vl = {&q->te, im ? im->vision : NULL, q->tower, im ? im->image_pad : -1, im ? im->mrope : NULL};
    if (!rc && kn_llm_vl_forward(ctx, &vl, arena, &ids, p->images, p->n_images, &o, debug, debug_user)) {
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

int kn_llm_clip_encode(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out, kn_err *err) {
    (void)n;
    const kn_clip_image_prompt p = {texts[0], NULL, NULL, 0};
    return encode(ctx, c, &p, out, NULL, NULL, err);
}
