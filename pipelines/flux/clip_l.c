/* CLIP's text transformer: see clip_l.h. */
#include "pipelines/flux/clip_l.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const kn_clip_text_consts kn_clip_l_consts = {64, 1e-5f};

enum { S_D, S_I, S_VOCAB, S_POS, N_SIZES };

#define LVEC(field, key) KN_WSPEC_T1(kn_clip_text_layer, field, key, S_D, 0)
#define LLIN(field, key, r, c) KN_WSPEC_LIN(kn_clip_text_layer, field, key, r, c, 0)
static const kn_weight_spec layer_specs[] = {
    LVEC(ln1_w, "layer_norm1.weight"),         LVEC(ln1_b, "layer_norm1.bias"),
    LVEC(ln2_w, "layer_norm2.weight"),         LVEC(ln2_b, "layer_norm2.bias"),
    LLIN(attn.q, "self_attn.q_proj", S_D, S_D), LLIN(attn.k, "self_attn.k_proj", S_D, S_D),
    LLIN(attn.v, "self_attn.v_proj", S_D, S_D), LLIN(attn.out, "self_attn.out_proj", S_D, S_D),
    LLIN(mlp.up, "mlp.fc1", S_I, S_D),         LLIN(mlp.down, "mlp.fc2", S_D, S_I),
};

static const kn_weight_spec model_specs[] = {
    KN_WSPEC_T2(kn_clip_text, tok_embed, "embeddings.token_embedding.weight", S_VOCAB, S_D, 0),
    KN_WSPEC_T2(kn_clip_text, pos_embed, "embeddings.position_embedding.weight", S_POS, S_D, 0),
    KN_WSPEC_T1(kn_clip_text, final_w, "final_layer_norm.weight", S_D, 0),
    KN_WSPEC_T1(kn_clip_text, final_b, "final_layer_norm.bias", S_D, 0),
};

#define PREFIX "text_model."

static int load(kn_clip_text *m, const kn_st_file *f, kn_err *err) {
    int64_t inter = 0;
    KN_TRY(kn_weights_dim(f, PREFIX, "embeddings.token_embedding.weight", 0, &m->vocab, err));
    KN_TRY(kn_weights_dim(f, PREFIX, "embeddings.token_embedding.weight", 1, &m->hidden, err));
    KN_TRY(kn_weights_dim(f, PREFIX, "embeddings.position_embedding.weight", 0, &m->positions, err));
    KN_TRY(kn_weights_dim(f, PREFIX, "encoder.layers.0.mlp.fc1.weight", 0, &inter, err));
    KN_TRY(kn_weights_count(f, PREFIX, "encoder.layers.", &m->layers, err));
    if (m->consts.head_dim <= 0 || m->hidden % m->consts.head_dim || m->layers < 1)
        return kn_fail(err, KN_ERR_SHAPE, "%s: CLIP text model of width %lld with %lld layers does not split into %lld-wide heads",
                       kn_st_path(f), (long long)m->hidden, (long long)m->layers, (long long)m->consts.head_dim);
    m->heads = m->hidden / m->consts.head_dim;
    const int64_t sizes[N_SIZES] = {[S_D] = m->hidden, [S_I] = inter, [S_VOCAB] = m->vocab, [S_POS] = m->positions};
    kn_weight_binder b = {f, PREFIX, sizes, "clip_text", &m->weights, err};
    KN_TRY(kn_weights_bind(&b, m, "", model_specs, (int)(sizeof model_specs / sizeof model_specs[0])));
    int64_t proj = m->hidden;
    if (kn_st_find(f, "text_projection.weight")) KN_TRY(kn_weights_dim(f, "", "text_projection.weight", 0, &proj, err));
    const int64_t psizes[N_SIZES] = {[S_D] = m->hidden, [S_I] = proj};
    kn_weight_binder pb = {f, "", psizes, "clip_text", &m->weights, err};
    const kn_weight_spec pspec = KN_WSPEC_LIN(kn_clip_text, projection, "text_projection", S_I, S_D,
                                              KN_W_NO_BIAS | KN_W_OPTIONAL);
    KN_TRY(kn_weights_bind(&pb, m, "", &pspec, 1));
    if (!(m->layer = calloc((size_t)m->layers, sizeof *m->layer)))
        return kn_fail(err, KN_ERR_NOMEM, "clip_text: out of memory");
    for (int64_t l = 0; l < m->layers; l++) {
        char sub[64];
        snprintf(sub, sizeof sub, "encoder.layers.%lld.", (long long)l);
        KN_TRY(kn_weights_bind(&b, &m->layer[l], sub, layer_specs, (int)(sizeof layer_specs / sizeof layer_specs[0])));
    }
    return KN_OK;
}

int kn_clip_text_load(kn_clip_text *m, const kn_st_file *f, const kn_clip_text_consts *consts, kn_err *err) {
    memset(m, 0, sizeof *m);
    m->consts = *consts;
    int rc = load(m, f, err);
    if (rc) kn_clip_text_free(m);
    return rc;
}

void kn_clip_text_free(kn_clip_text *m) {
    free(m->layer);
    m->layer = NULL;
    kn_weight_table_free(&m->weights);
}

static int layer_forward(kn_ctx *ctx, const kn_clip_text *m, const kn_clip_text_layer *ly, kn_tensor *x,
                         const kn_attn_args *args) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    const kn_attn_shape shape = {m->heads, m->heads, m->consts.head_dim, 0.0f};
    kn_tensor h, q, k, v, o;
    kn_tensor *bufs[] = {&h, &q, &k, &v, &o};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        KN_TRY(kn_arena_tensor(a, bufs[i], KN_F32, 3, x->ne, e));
    KN_TRY(kn_layernorm(ctx, &h, x, &ly->ln1_w, &ly->ln1_b, m->consts.eps));
    KN_TRY(kn_attn_project(ctx, &m->weights, &ly->attn, &shape, &h, &q, &k, &v));
    KN_TRY(kn_attn_joint(ctx, &shape, &q, &k, &v, &o, args));
    KN_TRY(kn_attn_output(ctx, &m->weights, &ly->attn, &o, 0, &h));
    KN_TRY(kn_binary(ctx, x, x, &h, KN_ADD));
    KN_TRY(kn_layernorm(ctx, &h, x, &ly->ln2_w, &ly->ln2_b, m->consts.eps));
    KN_TRY(kn_mlp_forward(ctx, &m->weights, &ly->mlp, KN_ACT_QUICK_GELU, &h, &o));
    return kn_binary(ctx, x, x, &o, KN_ADD);
}

/* pooled[b] = hidden[b, first EOS of row b] (SDClipModel's num_tokens - 1). */
static void pool(const kn_tensor *ids, const kn_tensor *hidden, kn_tensor *pooled) {
    int64_t B = ids->ne[0], L = ids->ne[1], D = hidden->ne[2];
    const int64_t *id = ids->data;
    for (int64_t b = 0; b < B; b++) {
        int64_t t = L - 1;
        for (int64_t i = 0; i < L; i++)
            if (id[b * L + i] == KN_CLIP_EOS) {
                t = i;
                break;
            }
        memcpy((float *)pooled->data + b * D, (const float *)hidden->data + (b * L + t) * D, (size_t)D * sizeof(float));
    }
}

static int forward(kn_ctx *ctx, const kn_clip_text *m, kn_arena *arena, const kn_tensor *ids,
                   const kn_clip_text_outputs *o, int64_t layer_index) {
    kn_err *e = &ctx->err;
    int64_t B = ids->ne[0], L = ids->ne[1], D = m->hidden, ne[3] = {B, L, D};
    int want_final = o->hidden || o->pooled || o->projected;
    int64_t run = want_final ? m->layers : layer_index + 1;
    if (o->hidden) KN_TRY(kn_arena_tensor(arena, o->hidden, KN_F32, 3, ne, e));
    if (o->pooled) KN_TRY(kn_arena_tensor(arena, o->pooled, KN_F32, 2, (int64_t[]){B, D}, e));
    if (o->projected)
        KN_TRY(kn_arena_tensor(arena, o->projected, KN_F32, 2, (int64_t[]){B, m->projection.w.ne[0]}, e));
    if (o->layer) KN_TRY(kn_arena_tensor(arena, o->layer, KN_F32, 3, ne, e));
    if (o->layer_normed) KN_TRY(kn_arena_tensor(arena, o->layer_normed, KN_F32, 3, ne, e));
    size_t mark = kn_arena_mark(arena);
    kn_tensor x, pos, hidden;
    int rc = kn_arena_tensor(arena, &x, KN_F32, 3, ne, e);
    if (!rc && (rc = kn_embedding(&m->tok_embed, ids, &x, e))) kn_err_wrap(e, "clip_text: input_ids");
    if (!rc) rc = kn_arena_tensor(arena, &pos, KN_F32, 2, (int64_t[]){L, D}, e);
    if (!rc) {
        kn_tensor rows;
        rc = kn_tensor_slice(&rows, &m->pos_embed, 0, 0, L, e);
        if (!rc) rc = kn_tensor_copy(&pos, &rows, e);
    }
    if (!rc) rc = kn_binary(ctx, &x, &x, &pos, KN_ADD);
    const kn_attn_args args = {.causal = 1};
    for (int64_t l = 0; !rc && l < run; l++) {
        size_t lm = kn_arena_mark(ctx->scratch);
        if ((rc = layer_forward(ctx, m, &m->layer[l], &x, &args))) kn_err_wrap(e, "clip_text: layer %lld", (long long)l);
        kn_arena_reset(ctx->scratch, lm);
        if (!rc && l == layer_index && o->layer) rc = kn_tensor_copy(o->layer, &x, e);
        if (!rc && l == layer_index && o->layer_normed)
            rc = kn_layernorm(ctx, o->layer_normed, &x, &m->final_w, &m->final_b, m->consts.eps);
    }
    if (!rc && want_final) {
        hidden = o->hidden ? *o->hidden : x; /* in place when only the pooled vector is wanted */
        rc = kn_layernorm(ctx, &hidden, &x, &m->final_w, &m->final_b, m->consts.eps);
        kn_tensor pooled = o->pooled ? *o->pooled : (kn_tensor){0};
        if (!rc && !o->pooled && o->projected) rc = kn_arena_tensor(arena, &pooled, KN_F32, 2, (int64_t[]){B, D}, e);
        if (!rc && pooled.data) pool(ids, &hidden, &pooled);
        if (!rc && o->projected) rc = kn_lin_forward(ctx, &m->weights, o->projected, &pooled, &m->projection);
    }
    kn_arena_reset(arena, mark);
    return rc;
}

int kn_clip_text_forward(kn_ctx *ctx, const kn_clip_text *m, kn_arena *arena, const kn_tensor *ids,
                         const kn_clip_text_outputs *o) {
    char d[96];
    if (ids->dtype != KN_I64 || ids->ndim != 2 || ids->ne[0] < 1 || ids->ne[1] < 1 || ids->ne[1] > m->positions ||
        !kn_tensor_is_contiguous(ids) || ids->device != KN_DEV_CPU)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "clip_text: input_ids %s: expected contiguous CPU I64 [B, 1..%lld]",
                       kn_tensor_desc(ids, d, sizeof d), (long long)m->positions);
    if (o->projected && !m->projection.w.data)
        return kn_fail(&ctx->err, KN_ERR_NOT_FOUND, "clip_text: the model has no text_projection.weight");
    int64_t li = o->layer_index < 0 ? m->layers + o->layer_index : o->layer_index;
    if ((o->layer || o->layer_normed) && (li < 0 || li >= m->layers))
        return kn_fail(&ctx->err, KN_ERR_INVALID, "clip_text: layer %lld of a %lld-layer model",
                       (long long)o->layer_index, (long long)m->layers);
    return forward(ctx, m, arena, ids, o, li);
}
