/* The T5 encoder: see t5.h. */
#include "pipelines/flux/t5.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const kn_t5_consts kn_t5_xxl_consts = {32, 128, 1e-6f};

enum { S_D, S_INNER, S_F, S_VOCAB, S_BUCKETS, S_HEADS, N_SIZES };

#define BVEC(field, key) KN_WSPEC_T1(kn_t5_block, field, key, S_D, 0)
#define BLIN(field, key, r, c) KN_WSPEC_LIN(kn_t5_block, field, key, r, c, KN_W_NO_BIAS)
static const kn_weight_spec block_specs[] = {
    BVEC(ln_attn, "layer.0.layer_norm.weight"),
    BLIN(attn.q, "layer.0.SelfAttention.q", S_INNER, S_D),
    BLIN(attn.k, "layer.0.SelfAttention.k", S_INNER, S_D),
    BLIN(attn.v, "layer.0.SelfAttention.v", S_INNER, S_D),
    BLIN(attn.out, "layer.0.SelfAttention.o", S_D, S_INNER),
    BVEC(ln_ff, "layer.1.layer_norm.weight"),
    BLIN(ff.gate, "layer.1.DenseReluDense.wi_0", S_F, S_D),
    BLIN(ff.up, "layer.1.DenseReluDense.wi_1", S_F, S_D),
    BLIN(ff.down, "layer.1.DenseReluDense.wo", S_D, S_F),
};

static const kn_weight_spec model_specs[] = {
    KN_WSPEC_T2(kn_t5, embed, "shared.weight", S_VOCAB, S_D, 0),
    KN_WSPEC_T2(kn_t5, rel_bias, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", S_BUCKETS,
                S_HEADS, 0),
    KN_WSPEC_T1(kn_t5, final_norm, "encoder.final_layer_norm.weight", S_D, 0),
};

static int load(kn_t5 *m, const kn_st_file *f, kn_err *err) {
    int64_t ff = 0;
    KN_TRY(kn_weights_dim(f, "", "shared.weight", 0, &m->vocab, err));
    KN_TRY(kn_weights_dim(f, "", "shared.weight", 1, &m->dim, err));
    KN_TRY(kn_weights_dim(f, "", "encoder.block.0.layer.0.SelfAttention.q.weight", 0, &m->inner, err));
    KN_TRY(kn_weights_dim(f, "", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0, &ff, err));
    KN_TRY(kn_weights_count(f, "", "encoder.block.", &m->layers, err));
    KN_TRY(kn_weights_dim(f, "", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 1, &m->heads,
                          err));
    if (m->heads < 1 || m->inner % m->heads || (m->inner / m->heads) % 2 || m->layers < 1 || m->consts.buckets < 2)
        return kn_fail(err, KN_ERR_SHAPE, "%s: T5 with %lld-wide attention, %lld heads and %lld blocks is inconsistent",
                       kn_st_path(f), (long long)m->inner, (long long)m->heads, (long long)m->layers);
    m->head_dim = m->inner / m->heads;
    const int64_t sizes[N_SIZES] = {[S_D] = m->dim,         [S_INNER] = m->inner,
                                    [S_F] = ff,             [S_VOCAB] = m->vocab,
                                    [S_BUCKETS] = m->consts.buckets, [S_HEADS] = m->heads};
    kn_weight_binder b = {f, "", sizes, "t5", &m->weights, err};
    KN_TRY(kn_weights_bind(&b, m, "", model_specs, (int)(sizeof model_specs / sizeof model_specs[0])));
    if (!(m->block = calloc((size_t)m->layers, sizeof *m->block))) return kn_fail(err, KN_ERR_NOMEM, "t5: out of memory");
    for (int64_t l = 0; l < m->layers; l++) {
        char sub[64];
        snprintf(sub, sizeof sub, "encoder.block.%lld.", (long long)l);
        KN_TRY(kn_weights_bind(&b, &m->block[l], sub, block_specs, (int)(sizeof block_specs / sizeof block_specs[0])));
    }
    return KN_OK;
}

int kn_t5_load(kn_t5 *m, const kn_st_file *f, const kn_t5_consts *consts, kn_err *err) {
    memset(m, 0, sizeof *m);
    m->consts = *consts;
    int rc = load(m, f, err);
    if (rc) kn_t5_free(m);
    return rc;
}

void kn_t5_free(kn_t5 *m) {
    free(m->block);
    m->block = NULL;
    kn_weight_table_free(&m->weights);
}

int kn_t5_bucket(const kn_t5_consts *k, int64_t r) {
    int half = k->buckets / 2, exact = half / 2;
    int b = r > 0 ? half : 0;
    int64_t n = r < 0 ? -r : r;
    if (n < exact) return b + (int)n;
    /* float32 as torch computes it: log(n / exact) / log(max / exact) * (half - exact) */
    float v = logf((float)n / (float)exact) / (float)log((double)k->max_distance / exact) * (float)(half - exact);
    int64_t large = exact + (int64_t)v;
    return b + (int)(large < half - 1 ? large : half - 1);
}

/* bias [1, H, L, L] from block 0's table, widened to F32. */
static int position_bias(kn_ctx *ctx, const kn_t5 *m, kn_arena *a, int64_t L, kn_tensor *bias) {
    int64_t H = m->heads, nb = m->consts.buckets;
    KN_TRY(kn_arena_tensor(a, bias, KN_F32, 4, (int64_t[]){1, H, L, L}, &ctx->err));
    float *table = kn_arena_alloc(a, (size_t)(nb * H) * sizeof(float), &ctx->err);
    int *bucket = kn_arena_alloc(a, (size_t)(2 * L - 1) * sizeof(int), &ctx->err);
    if (!table || !bucket) return ctx->err.code;
    kn_to_f32(table, m->rel_bias.data, m->rel_bias.dtype, (size_t)(nb * H), m->rel_bias.scale);
    for (int64_t r = -(L - 1); r < L; r++) bucket[r + L - 1] = kn_t5_bucket(&m->consts, r);
    float *bd = bias->data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < L; i++)
            for (int64_t j = 0; j < L; j++) bd[(h * L + i) * L + j] = table[bucket[j - i + L - 1] * H + h];
    return KN_OK;
}

static int block_forward(kn_ctx *ctx, const kn_t5 *m, const kn_t5_block *w, kn_tensor *x, const kn_attn_args *args) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    const kn_attn_shape shape = {m->heads, m->heads, m->head_dim, 0.0f};
    int64_t B = x->ne[0], L = x->ne[1];
    kn_tensor h, q, k, v, o;
    KN_TRY(kn_arena_tensor(a, &h, KN_F32, 3, x->ne, e));
    kn_tensor *qkvo[] = {&q, &k, &v, &o};
    for (int i = 0; i < 4; i++) KN_TRY(kn_arena_tensor(a, qkvo[i], KN_F32, 3, (int64_t[]){B, L, m->inner}, e));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &w->ln_attn, m->consts.eps));
    KN_TRY(kn_attn_project(ctx, &m->weights, &w->attn, &shape, &h, &q, &k, &v));
    KN_TRY(kn_attn_joint(ctx, &shape, &q, &k, &v, &o, args));
    KN_TRY(kn_attn_output(ctx, &m->weights, &w->attn, &o, 0, &h));
    KN_TRY(kn_binary(ctx, x, x, &h, KN_ADD));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &w->ln_ff, m->consts.eps));
    KN_TRY(kn_arena_tensor(a, &o, KN_F32, 3, x->ne, e));
    KN_TRY(kn_mlp_forward(ctx, &m->weights, &w->ff, KN_ACT_GELU_TANH, &h, &o));
    return kn_binary(ctx, x, x, &o, KN_ADD);
}

int kn_t5_forward(kn_ctx *ctx, const kn_t5 *m, kn_arena *arena, const kn_tensor *ids, const kn_tensor *mask,
                  kn_tensor *hidden) {
    kn_err *e = &ctx->err;
    char d[96];
    if (ids->dtype != KN_I64 || ids->ndim != 2 || ids->ne[0] < 1 || ids->ne[1] < 1 || !kn_tensor_is_contiguous(ids) ||
        ids->device != KN_DEV_CPU)
        return kn_fail(e, KN_ERR_SHAPE, "t5: input_ids %s: expected contiguous CPU I64 [B >= 1, L >= 1]",
                       kn_tensor_desc(ids, d, sizeof d));
    if (mask && (mask->ndim != 2 || mask->ne[0] != ids->ne[0] || mask->ne[1] != ids->ne[1] ||
                 !kn_tensor_is_contiguous(mask) || mask->device != KN_DEV_CPU))
        return kn_fail(e, KN_ERR_SHAPE, "t5: attention_mask %s does not match input_ids",
                       kn_tensor_desc(mask, d, sizeof d));
    int64_t B = ids->ne[0], L = ids->ne[1];
    KN_TRY(kn_arena_tensor(arena, hidden, KN_F32, 3, (int64_t[]){B, L, m->dim}, e));
    size_t mark = kn_arena_mark(arena);
    kn_tensor x, bias, km;
    int rc = kn_arena_tensor(arena, &x, KN_F32, 3, hidden->ne, e);
    if (!rc && (rc = kn_embedding(&m->embed, ids, &x, e))) kn_err_wrap(e, "t5: input_ids");
    if (!rc) rc = position_bias(ctx, m, arena, L, &bias);
    if (!rc && mask) { /* ComfyUI: -finfo(float32).max on masked keys, added to the bias */
        rc = kn_arena_tensor(arena, &km, KN_F32, 2, mask->ne, e);
        if (!rc) {
            float *v = km.data;
            kn_to_f32(v, mask->data, mask->dtype, (size_t)(B * L), 1.0f);
            for (int64_t i = 0; i < B * L; i++) v[i] = v[i] == 1.0f ? 0.0f : -FLT_MAX;
        }
    }
    const kn_attn_args args = {.key_mask = mask ? &km : NULL, .bias = &bias, .scale = 1.0f}; /* no 1/sqrt(d_kv) */
    for (int64_t l = 0; !rc && l < m->layers; l++) {
        size_t lm = kn_arena_mark(ctx->scratch);
        if ((rc = block_forward(ctx, m, &m->block[l], &x, &args))) kn_err_wrap(e, "t5: block %lld", (long long)l);
        kn_arena_reset(ctx->scratch, lm);
    }
    if (!rc) rc = kn_rmsnorm(ctx, hidden, &x, &m->final_norm, m->consts.eps);
    kn_arena_reset(arena, mark);
    return rc;
}
