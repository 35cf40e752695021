/* The decoder LLM: see llm.h. */
#include "pipelines/common/llm.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ComfyUI fills masked scores with finfo(float32).min / 4: finite, so a query
 * whose visible keys are all padding averages them instead of producing NaN. */
#define LLM_MASKED (-FLT_MAX / 4)

/* ---- loading ---------------------------------------------------------------- */

enum { S_D, S_QD, S_KD, S_I, S_HD, S_VOCAB, N_SIZES };

#define LVEC(field, key, d, flags) KN_WSPEC_T1(kn_llm_layer, field, key, d, flags)
#define LLIN(field, key, r, c, flags) KN_WSPEC_LIN(kn_llm_layer, field, key, r, c, flags)

/* The layer's specs for these constants (biases and q/k norms come and go). */
static int layer_specs(const kn_llm_consts *k, kn_weight_spec *s) {
    int nb = k->qkv_bias ? 0 : KN_W_NO_BIAS;
    int n = 0;
    s[n++] = (kn_weight_spec)LVEC(input_norm, "input_layernorm.weight", S_D, 0);
    s[n++] = (kn_weight_spec)LVEC(post_norm, "post_attention_layernorm.weight", S_D, 0);
    s[n++] = (kn_weight_spec)LLIN(attn.q, "self_attn.q_proj", S_QD, S_D, nb);
    s[n++] = (kn_weight_spec)LLIN(attn.k, "self_attn.k_proj", S_KD, S_D, nb);
    s[n++] = (kn_weight_spec)LLIN(attn.v, "self_attn.v_proj", S_KD, S_D, nb);
    s[n++] = (kn_weight_spec)LLIN(attn.out, "self_attn.o_proj", S_D, S_QD, KN_W_NO_BIAS);
    if (k->qk_norm) {
        s[n++] = (kn_weight_spec)LVEC(attn.norm_q, "self_attn.q_norm.weight", S_HD, 0);
        s[n++] = (kn_weight_spec)LVEC(attn.norm_k, "self_attn.k_norm.weight", S_HD, 0);
    }
    s[n++] = (kn_weight_spec)LLIN(mlp.gate, "mlp.gate_proj", S_I, S_D, KN_W_NO_BIAS);
    s[n++] = (kn_weight_spec)LLIN(mlp.up, "mlp.up_proj", S_I, S_D, KN_W_NO_BIAS);
    s[n++] = (kn_weight_spec)LLIN(mlp.down, "mlp.down_proj", S_D, S_I, KN_W_NO_BIAS);
    return n;
}

/* Sizes from the weights; the constants supply what the file cannot. */
static int derive_config(kn_llm *m, const kn_st_file *f, const char *prefix, const kn_llm_consts *k, kn_err *err) {
    kn_llm_config *c = &m->cfg;
    int64_t krows = 0;
    if (k->heads <= 0 || k->head_dim <= 0 || k->head_dim % 2 || !(k->rope_theta > 0) || !(k->eps >= 0))
        return kn_fail(err, KN_ERR_INVALID,
                       "llm: bad constants (heads %lld, head_dim %lld (must be even), theta %g, eps %g)",
                       (long long)k->heads, (long long)k->head_dim, k->rope_theta, (double)k->eps);
    c->consts = *k;
    KN_TRY(kn_weights_dim(f, prefix, "embed_tokens.weight", 0, &c->vocab, err));
    KN_TRY(kn_weights_dim(f, prefix, "embed_tokens.weight", 1, &c->hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "layers.0.mlp.gate_proj.weight", 0, &c->intermediate, err));
    KN_TRY(kn_weights_dim(f, prefix, "layers.0.self_attn.k_proj.weight", 0, &krows, err));
    KN_TRY(kn_weights_count(f, prefix, "layers.", &c->layers, err));
    if (krows % k->head_dim || krows == 0 || k->heads % (krows / k->head_dim))
        return kn_fail(err, KN_ERR_SHAPE,
                       "%s: %slayers.0.self_attn.k_proj.weight has %lld rows: not a whole number of %lld-wide kv "
                       "heads dividing %lld heads",
                       kn_st_path(f), prefix, (long long)krows, (long long)k->head_dim, (long long)k->heads);
    c->kv_heads = krows / k->head_dim;
    return KN_OK;
}

static int bind_all(kn_llm *m, const kn_st_file *f, const char *prefix, kn_err *err) {
    const kn_llm_config *c = &m->cfg;
    const int64_t sizes[N_SIZES] = {[S_D] = c->hidden,
                                    [S_QD] = c->consts.heads * c->consts.head_dim,
                                    [S_KD] = c->kv_heads * c->consts.head_dim,
                                    [S_I] = c->intermediate,
                                    [S_HD] = c->consts.head_dim,
                                    [S_VOCAB] = c->vocab};
    kn_weight_binder b = {f, prefix, sizes, "llm", &m->weights, err};
    const kn_weight_spec model[] = {KN_WSPEC_T2(kn_llm, embed, "embed_tokens.weight", S_VOCAB, S_D, 0),
                                    KN_WSPEC_T1(kn_llm, norm, "norm.weight", S_D, 0)};
    KN_TRY(kn_weights_bind(&b, m, "", model, 2));
    kn_weight_spec specs[16];
    int n = layer_specs(&c->consts, specs);
    m->layer = calloc((size_t)(c->layers ? c->layers : 1), sizeof *m->layer);
    if (!m->layer) return kn_fail(err, KN_ERR_NOMEM, "llm: out of memory for %lld layers", (long long)c->layers);
    for (int64_t i = 0; i < c->layers; i++) {
        char sub[64];
        snprintf(sub, sizeof sub, "layers.%lld.", (long long)i);
        KN_TRY(kn_weights_bind(&b, &m->layer[i], sub, specs, n));
    }
    return KN_OK;
}

int kn_llm_load(kn_llm *m, const kn_st_file *f, const char *prefix, const kn_llm_consts *consts, kn_err *err) {
    memset(m, 0, sizeof *m);
    int rc = derive_config(m, f, prefix, consts, err);
    if (!rc && m->cfg.layers == 0) rc = kn_fail(err, KN_ERR_NOT_FOUND, "%s: no '%slayers.*' tensors", kn_st_path(f), prefix);
    if (!rc) rc = bind_all(m, f, prefix, err);
    if (rc) kn_llm_free(m);
    return rc;
}

void kn_llm_free(kn_llm *m) {
    if (!m) return;
    free(m->layer);
    m->layer = NULL;
    kn_weight_table_free(&m->weights);
}

/* ---- forward ---------------------------------------------------------------- */

static int scratch(kn_arena *a, kn_tensor *t, int ndim, const int64_t *ne, kn_err *err) {
    return kn_arena_tensor(a, t, KN_F32, ndim, ne, err);
}

/* Additive per-key mask for kn_attention: 0 where mask == 1, else masked. */
static int key_mask_from(kn_arena *a, const kn_tensor *mask, kn_tensor *km, kn_err *err) {
    KN_TRY(scratch(a, km, 2, mask->ne, err));
    float *v = km->data;
    size_t n = (size_t)kn_tensor_numel(mask);
    kn_to_f32(v, mask->data, mask->dtype, n, 1.0f);
    for (size_t i = 0; i < n; i++) v[i] = v[i] == 1.0f ? 0.0f : LLM_MASKED;
    return KN_OK;
}

/* 1-D RoPE at positions 0..L-1 over the whole head, or M-RoPE at the given streams. */
static int rope_tables(kn_ctx *ctx, kn_arena *a, int64_t L, const kn_llm_consts *k, const kn_llm_input *in,
                       kn_tensor *cos_t, kn_tensor *sin_t) {
    const int64_t ne[] = {L, k->head_dim / 2};
    KN_TRY(scratch(a, cos_t, 2, ne, &ctx->err));
    KN_TRY(scratch(a, sin_t, 2, ne, &ctx->err));
    if (in->pos) return kn_mrope_tables(ctx, cos_t, sin_t, in->pos, 3, in->mrope, k->rope_theta);
    double *pos = kn_arena_alloc(a, (size_t)L * sizeof(double), &ctx->err);
    if (!pos) return ctx->err.code;
    for (int64_t p = 0; p < L; p++) pos[p] = (double)p;
    int dims[1] = {(int)k->head_dim};
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 1, dims, k->rope_theta);
}

/* One decoder layer, updating the residual stream x [B, L, hidden] in place. */
static int layer_forward(kn_ctx *ctx, const kn_llm *m, const kn_llm_layer *ly, kn_arena *a, kn_tensor *x,
                         const kn_attn_args *args) {
    const kn_llm_config *c = &m->cfg;
    kn_err *err = &ctx->err;
    const int64_t B = x->ne[0], L = x->ne[1], D = c->hidden, HD = c->consts.head_dim;
    const kn_attn_shape shape = {c->consts.heads, c->kv_heads, HD, c->consts.eps};
    const int64_t ne_q[] = {B, L, shape.heads * HD}, ne_kv[] = {B, L, shape.kv_heads * HD}, ne_d[] = {B, L, D};
    kn_tensor h, q, k, v, att;
    KN_TRY(scratch(a, &h, 3, ne_d, err));
    KN_TRY(scratch(a, &q, 3, ne_q, err));
    KN_TRY(scratch(a, &k, 3, ne_kv, err));
    KN_TRY(scratch(a, &v, 3, ne_kv, err));
    KN_TRY(scratch(a, &att, 3, ne_q, err));
    /* attention block: x += o_proj(attn(rope(q), rope(k), v)) */
    KN_TRY(kn_rmsnorm(ctx, &h, x, &ly->input_norm, c->consts.eps));
    KN_TRY(kn_attn_project(ctx, &m->weights, &ly->attn, &shape, &h, &q, &k, &v));
    KN_TRY(kn_attn_joint(ctx, &shape, &q, &k, &v, &att, args));
    KN_TRY(kn_attn_output(ctx, &m->weights, &ly->attn, &att, 0, &h));
    KN_TRY(kn_binary(ctx, x, x, &h, KN_ADD));
    /* MLP block: x += down(silu(gate(n)) * up(n)), n = post_attention_layernorm(x) */
    kn_tensor o;
    KN_TRY(scratch(a, &o, 3, ne_d, err));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &ly->post_norm, c->consts.eps));
    KN_TRY(kn_mlp_forward(ctx, &m->weights, &ly->mlp, KN_ACT_SILU, &h, &o));
    return kn_binary(ctx, x, x, &o, KN_ADD);
}

/* Boundary checks of forward's inputs; messages name the tensor and shape.
 * *B, *L: the sequence's batch and length. */
static int check_inputs(const kn_ctx *ctx, const kn_llm *m, const kn_llm_input *in, const kn_llm_outputs *o,
                        int64_t *layer_index, int64_t *B, int64_t *L, kn_err *err) {
    char a[96], b[96];
    const kn_tensor *ids = in->ids, *x = in->embeds, *mask = in->mask;
    if (ctx->device != KN_DEV_CPU) return kn_fail(err, KN_ERR_UNSUPPORTED, "llm: forward runs on the CPU only so far");
    if (ids && (ids->dtype != KN_I64 || ids->device != KN_DEV_CPU || ids->ndim != 2 || ids->ne[0] < 1 ||
                ids->ne[1] < 1 || !kn_tensor_is_contiguous(ids)))
        return kn_fail(err, KN_ERR_SHAPE, "llm: input_ids %s: expected contiguous CPU I64 [B >= 1, L >= 1]",
                       kn_tensor_desc(ids, a, sizeof a));
    if (!ids && (!x || x->dtype != KN_F32 || x->device != KN_DEV_CPU || x->ndim != 3 || x->ne[0] < 1 ||
                 x->ne[1] < 1 || x->ne[2] != m->cfg.hidden || !kn_tensor_is_contiguous(x)))
        return kn_fail(err, KN_ERR_SHAPE, "llm: input rows %s: expected contiguous CPU F32 [B >= 1, L >= 1, %lld]",
                       x ? kn_tensor_desc(x, a, sizeof a) : "(none)", (long long)m->cfg.hidden);
    const kn_tensor *seq = ids ? ids : x;
    *B = seq->ne[0];
    *L = seq->ne[1];
    if (mask && (mask->device != KN_DEV_CPU || mask->ndim != 2 || mask->ne[0] != *B || mask->ne[1] != *L ||
                 !kn_tensor_is_contiguous(mask)))
        return kn_fail(err, KN_ERR_SHAPE, "llm: attention_mask %s does not match the input %s",
                       kn_tensor_desc(mask, a, sizeof a), kn_tensor_desc(seq, b, sizeof b));
    const int *sec = in->mrope;
    if (in->pos && (!sec || sec[0] < 0 || sec[1] < 0 || sec[2] < 0 || sec[0] + sec[1] + sec[2] != m->cfg.consts.head_dim / 2))
        return kn_fail(err, KN_ERR_INVALID, "llm: M-RoPE sections %d + %d + %d do not cover the %lld rotary pairs",
                       sec ? sec[0] : 0, sec ? sec[1] : 0, sec ? sec[2] : 0, (long long)(m->cfg.consts.head_dim / 2));
    *layer_index = o->layer_index < 0 ? m->cfg.layers + o->layer_index : o->layer_index;
    if (o->layer && (*layer_index < 0 || *layer_index >= m->cfg.layers))
        return kn_fail(err, KN_ERR_INVALID, "llm: hidden layer %lld of a %lld-layer model", (long long)o->layer_index,
                       (long long)m->cfg.layers);
    return KN_OK;
}

static int forward(kn_ctx *ctx, const kn_llm *m, kn_arena *arena, const kn_llm_input *in, const kn_llm_outputs *o,
                   int64_t layer_index, int64_t B, int64_t L) {
    kn_err *err = &ctx->err;
    const int64_t ne[] = {B, L, m->cfg.hidden};
    int last = o->hidden || o->prenorm;
    int64_t run = last ? m->cfg.layers : layer_index + 1;
    /* outputs first, so that they survive the scratch reset below */
    if (o->hidden) KN_TRY(scratch(arena, o->hidden, 3, ne, err));
    if (o->prenorm) KN_TRY(scratch(arena, o->prenorm, 3, ne, err));
    if (o->layer) KN_TRY(scratch(arena, o->layer, 3, ne, err));
    const size_t mark = kn_arena_mark(arena);
    kn_tensor x, cos_t, sin_t, km;
    int rc = o->prenorm ? (x = *o->prenorm, KN_OK) : scratch(arena, &x, 3, ne, err);
    if (!rc && in->ids && (rc = kn_embedding(&m->embed, in->ids, &x, err))) kn_err_wrap(err, "llm: input_ids");
    if (!rc && !in->ids) rc = kn_tensor_copy(&x, in->embeds, err);
    if (!rc) rc = rope_tables(ctx, arena, L, &m->cfg.consts, in, &cos_t, &sin_t);
    if (!rc && in->mask) rc = key_mask_from(arena, in->mask, &km, err);
    kn_attn_args args = {.cos = &cos_t, .sin = &sin_t, .rope = KN_ROPE_HALF, .key_mask = in->mask ? &km : NULL,
                         .causal = 1};
    for (int64_t i = 0; !rc && i < run; i++) {
        size_t lm = kn_arena_mark(arena);
        if ((rc = layer_forward(ctx, m, &m->layer[i], arena, &x, &args))) kn_err_wrap(err, "llm: layer %lld", (long long)i);
        kn_arena_reset(arena, lm);
        if (!rc && o->layer && i == layer_index) rc = kn_tensor_copy(o->layer, &x, err);
    }
    if (!rc && o->hidden) rc = kn_rmsnorm(ctx, o->hidden, &x, &m->norm, m->cfg.consts.eps);
    kn_arena_reset(arena, mark);
    return rc;
}

int kn_llm_run(kn_ctx *ctx, const kn_llm *m, kn_arena *arena, const kn_llm_input *in, const kn_llm_outputs *o) {
    int64_t layer_index = 0, B = 0, L = 0;
    KN_TRY(check_inputs(ctx, m, in, o, &layer_index, &B, &L, &ctx->err));
    return forward(ctx, m, arena, in, o, layer_index, B, L);
}

int kn_llm_forward(kn_ctx *ctx, const kn_llm *m, kn_arena *arena, const kn_tensor *ids, const kn_tensor *mask,
                   const kn_llm_outputs *o) {
    const kn_llm_input in = {ids, NULL, mask, NULL, NULL};
    return kn_llm_run(ctx, m, arena, &in, o);
}
