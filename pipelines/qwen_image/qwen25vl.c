#include "pipelines/qwen_image/qwen25vl.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const kn_qwen25vl_family kn_qwen25vl_7b = {28, 128, 1e6, 1e-6f};

/* ComfyUI fills masked scores with finfo(float32).min / 4: finite, so a query
 * whose visible keys are all padding averages them instead of producing NaN. */
#define KN_QWEN25VL_MASKED (-FLT_MAX / 4)

/* ---- loading ---------------------------------------------------------------- */

/* The float tensor "<prefix><name>" with the expected shape (-1 = any). */
static int get_weight(const kn_st_file *f, const char *prefix, const char *name, int ndim, const int64_t *ne,
                      kn_tensor *out, kn_err *err) {
    char key[512];
    if (snprintf(key, sizeof key, "%s%s", prefix, name) >= (int)sizeof key)
        return kn_fail(err, KN_ERR_INVALID, "qwen25vl: tensor name '%s%s' is too long", prefix, name);
    int rc = kn_st_get(f, key, out, err);
    if (rc) return rc;
    if (!kn_dtype_is_float(out->dtype))
        return kn_fail(err, KN_ERR_SHAPE, "qwen25vl: weight %s is %s, expected a float dtype", key,
                       kn_dtype_name(out->dtype));
    return kn_tensor_expect(out, "qwen25vl: weight", ndim, ne, err);
}

static int get_layer_weight(const kn_st_file *f, const char *prefix, int64_t i, const char *name, int ndim,
                            const int64_t *ne, kn_tensor *out, kn_err *err) {
    char sub[256];
    snprintf(sub, sizeof sub, "layers.%lld.%s", (long long)i, name);
    return get_weight(f, prefix, sub, ndim, ne, out, err);
}

/* Layers = 1 + the largest N among "<prefix>layers.N.*" names. */
static int count_layers(const kn_st_file *f, const char *prefix, int64_t *layers, kn_err *err) {
    char stem[256];
    int stem_len = snprintf(stem, sizeof stem, "%slayers.", prefix);
    if (stem_len >= (int)sizeof stem) return kn_fail(err, KN_ERR_INVALID, "qwen25vl: prefix '%s' is too long", prefix);
    int64_t n = 0;
    for (int i = 0; i < kn_st_count(f); i++) {
        const char *name = kn_st_at(f, i)->name;
        if (strncmp(name, stem, (size_t)stem_len) != 0) continue;
        char *end;
        long long idx = strtoll(name + stem_len, &end, 10);
        /* a layer index beyond the tensor count cannot have all its weights:
         * rejecting it here keeps a corrupt name from sizing the allocation */
        if (end == name + stem_len || *end != '.' || idx < 0 || idx >= kn_st_count(f))
            return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s' has no valid layer index", kn_st_path(f), name);
        if (idx + 1 > n) n = idx + 1;
    }
    if (n == 0) return kn_fail(err, KN_ERR_NOT_FOUND, "%s: no '%s*' tensors", kn_st_path(f), stem);
    *layers = n;
    return KN_OK;
}

static int load_layer(const kn_st_file *f, const char *prefix, const kn_qwen25vl_config *c, int64_t i,
                      kn_qwen25vl_layer *ly, kn_err *err) {
    const int64_t D = c->hidden, I = c->intermediate;
    const int64_t QD = c->family.heads * c->family.head_dim, KD = c->kv_heads * c->family.head_dim;
    const int64_t d[] = {D}, q[] = {QD, D}, qb[] = {QD}, k[] = {KD, D}, kb[] = {KD}, o[] = {D, QD};
    const int64_t gu[] = {I, D}, dn[] = {D, I};
    const struct {
        const char *name;
        int ndim;
        const int64_t *ne;
        kn_tensor *out;
    } w[] = {
        {"input_layernorm.weight", 1, d, &ly->input_norm},
        {"post_attention_layernorm.weight", 1, d, &ly->post_norm},
        {"self_attn.q_proj.weight", 2, q, &ly->q_w},
        {"self_attn.q_proj.bias", 1, qb, &ly->q_b},
        {"self_attn.k_proj.weight", 2, k, &ly->k_w},
        {"self_attn.k_proj.bias", 1, kb, &ly->k_b},
        {"self_attn.v_proj.weight", 2, k, &ly->v_w},
        {"self_attn.v_proj.bias", 1, kb, &ly->v_b},
        {"self_attn.o_proj.weight", 2, o, &ly->o_w},
        {"mlp.gate_proj.weight", 2, gu, &ly->gate_w},
        {"mlp.up_proj.weight", 2, gu, &ly->up_w},
        {"mlp.down_proj.weight", 2, dn, &ly->down_w},
    };
    for (size_t j = 0; j < sizeof w / sizeof w[0]; j++) {
        int rc = get_layer_weight(f, prefix, i, w[j].name, w[j].ndim, w[j].ne, w[j].out, err);
        if (rc) return rc;
    }
    return KN_OK;
}

/* Sizes from the weights; the family supplies what the file cannot. */
static int derive_config(const kn_st_file *f, const char *prefix, const kn_qwen25vl_family *fam,
                         kn_qwen25vl *m, kn_err *err) {
    kn_qwen25vl_config *c = &m->cfg;
    const int64_t any2[] = {-1, -1};
    kn_tensor k, gate;
    int rc;
    if (fam->heads <= 0 || fam->head_dim <= 0 || fam->head_dim % 2 || !(fam->rope_theta > 0) || !(fam->eps >= 0))
        return kn_fail(err, KN_ERR_INVALID,
                       "qwen25vl: bad family constants (heads %lld, head_dim %lld (must be even), theta %g, eps %g)",
                       (long long)fam->heads, (long long)fam->head_dim, fam->rope_theta, (double)fam->eps);
    c->family = *fam;
    if ((rc = get_weight(f, prefix, "embed_tokens.weight", 2, any2, &m->embed, err)) ||
        (rc = count_layers(f, prefix, &c->layers, err)) ||
        (rc = get_layer_weight(f, prefix, 0, "self_attn.k_proj.weight", 2, any2, &k, err)) ||
        (rc = get_layer_weight(f, prefix, 0, "mlp.gate_proj.weight", 2, any2, &gate, err)))
        return rc;
    c->vocab = m->embed.ne[0];
    c->hidden = m->embed.ne[1];
    c->intermediate = gate.ne[0];
    if (k.ne[0] % fam->head_dim || k.ne[0] == 0 || fam->heads % (k.ne[0] / fam->head_dim))
        return kn_fail(err, KN_ERR_SHAPE,
                       "qwen25vl: %s has %lld rows: not a whole number of %lld-wide kv heads dividing %lld heads",
                       k.name, (long long)k.ne[0], (long long)fam->head_dim, (long long)fam->heads);
    c->kv_heads = k.ne[0] / fam->head_dim;
    const int64_t d[] = {c->hidden};
    return get_weight(f, prefix, "norm.weight", 1, d, &m->norm, err);
}

int kn_qwen25vl_load(kn_qwen25vl *m, const kn_st_file *f, const char *prefix, const kn_qwen25vl_family *family,
                     kn_err *err) {
    memset(m, 0, sizeof *m);
    int rc = derive_config(f, prefix, family, m, err);
    if (rc) return rc;
    m->layer = calloc((size_t)m->cfg.layers, sizeof *m->layer);
    if (!m->layer)
        return kn_fail(err, KN_ERR_NOMEM, "qwen25vl: out of memory for %lld layers", (long long)m->cfg.layers);
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        if ((rc = load_layer(f, prefix, &m->cfg, i, &m->layer[i], err))) {
            kn_qwen25vl_free(m);
            return rc;
        }
    }
    return KN_OK;
}

void kn_qwen25vl_free(kn_qwen25vl *m) {
    if (!m) return;
    free(m->layer);
    m->layer = NULL;
}

/* ---- forward ---------------------------------------------------------------- */

static int scratch(kn_arena *a, kn_tensor *t, int ndim, const int64_t *ne, kn_err *err) {
    return kn_arena_tensor(a, t, KN_F32, ndim, ne, err);
}

/* x[b, l] = embed[ids[b, l]] widened to f32 (ComfyUI looks up in float32). */
static int embed_lookup(const kn_qwen25vl *m, const kn_tensor *ids, kn_tensor *x, kn_err *err) {
    const int64_t *id = ids->data;
    const int64_t L = ids->ne[1], D = m->cfg.hidden, n = kn_tensor_numel(ids);
    const char *rows = m->embed.data;
    const size_t row_bytes = (size_t)m->embed.st[0] * kn_dtype_size(m->embed.dtype);
    float *out = x->data;
    for (int64_t i = 0; i < n; i++) {
        if (id[i] < 0 || id[i] >= m->cfg.vocab)
            return kn_fail(err, KN_ERR_INVALID,
                           "qwen25vl: input_ids[%lld, %lld] = %lld is outside the vocabulary [0, %lld)",
                           (long long)(i / L), (long long)(i % L), (long long)id[i], (long long)m->cfg.vocab);
        kn_to_f32(out + i * D, rows + (size_t)id[i] * row_bytes, m->embed.dtype, (size_t)D, m->embed.scale);
    }
    return KN_OK;
}

/* Additive per-key mask for kn_attention: 0 where mask == 1, else masked. */
static int key_mask_from(kn_arena *a, const kn_tensor *mask, kn_tensor *km, kn_err *err) {
    int rc = scratch(a, km, 2, mask->ne, err);
    if (rc) return rc;
    float *v = km->data;
    size_t n = (size_t)kn_tensor_numel(mask);
    kn_to_f32(v, mask->data, mask->dtype, n, 1.0f);
    for (size_t i = 0; i < n; i++) v[i] = v[i] == 1.0f ? 0.0f : KN_QWEN25VL_MASKED;
    return KN_OK;
}

/* 1-D RoPE at positions 0..L-1 over the whole head. */
static int rope_tables(kn_ctx *ctx, kn_arena *a, int64_t L, const kn_qwen25vl_family *fam, kn_tensor *cos_t,
                       kn_tensor *sin_t) {
    const int64_t ne[] = {L, fam->head_dim / 2};
    int rc;
    double *pos = kn_arena_alloc(a, (size_t)L * sizeof(double), &ctx->err);
    if (!pos) return ctx->err.code;
    if ((rc = scratch(a, cos_t, 2, ne, &ctx->err)) || (rc = scratch(a, sin_t, 2, ne, &ctx->err))) return rc;
    for (int64_t p = 0; p < L; p++) pos[p] = (double)p;
    int dims[1] = {(int)fam->head_dim};
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 1, dims, fam->rope_theta);
}

/* One decoder layer, updating the residual stream x [B, L, hidden] in place. */
static int layer_forward(kn_ctx *ctx, const kn_qwen25vl_config *c, const kn_qwen25vl_layer *ly, kn_arena *a,
                         kn_tensor *x, const kn_tensor *cos_t, const kn_tensor *sin_t, const kn_tensor *key_mask) {
    kn_err *err = &ctx->err;
    const int64_t B = x->ne[0], L = x->ne[1], D = c->hidden, I = c->intermediate;
    const int64_t H = c->family.heads, KV = c->kv_heads, HD = c->family.head_dim;
    const int64_t ne_d[] = {B, L, D}, ne_q[] = {B, L, H, HD}, ne_kv[] = {B, L, KV, HD}, ne_i[] = {B, L, I};
    const int64_t ne_q3[] = {B, L, H * HD}, ne_kv3[] = {B, L, KV * HD};
    const size_t mark = kn_arena_mark(a);
    kn_tensor h, q, k, v, att, gate, up;
    /* the projections write [B, L, heads*head_dim] rows that RoPE and
     * attention read as [B, L, heads, head_dim]: same memory, two views */
    kn_tensor q3, k3, v3, att3;
    int rc;
    if ((rc = scratch(a, &h, 3, ne_d, err)) || (rc = scratch(a, &q, 4, ne_q, err)) ||
        (rc = scratch(a, &k, 4, ne_kv, err)) || (rc = scratch(a, &v, 4, ne_kv, err)) ||
        (rc = scratch(a, &att, 4, ne_q, err)) || (rc = scratch(a, &gate, 3, ne_i, err)) ||
        (rc = scratch(a, &up, 3, ne_i, err)) || (rc = kn_tensor_reshape(&q3, &q, 3, ne_q3, err)) ||
        (rc = kn_tensor_reshape(&k3, &k, 3, ne_kv3, err)) || (rc = kn_tensor_reshape(&v3, &v, 3, ne_kv3, err)) ||
        (rc = kn_tensor_reshape(&att3, &att, 3, ne_q3, err)))
        goto out;

    /* attention block: x += o_proj(attn(rope(q), rope(k), v)) */
    if ((rc = kn_rmsnorm(ctx, &h, x, &ly->input_norm, c->family.eps)) ||
        (rc = kn_linear(ctx, &q3, &h, &ly->q_w, &ly->q_b)) || (rc = kn_linear(ctx, &k3, &h, &ly->k_w, &ly->k_b)) ||
        (rc = kn_linear(ctx, &v3, &h, &ly->v_w, &ly->v_b)) ||
        (rc = kn_rope(ctx, &q, cos_t, sin_t, KN_ROPE_HALF)) || (rc = kn_rope(ctx, &k, cos_t, sin_t, KN_ROPE_HALF)) ||
        (rc = kn_attention(ctx, &att, &q, &k, &v, key_mask, 1, (float)(1.0 / sqrt((double)HD)))) ||
        (rc = kn_linear(ctx, &h, &att3, &ly->o_w, NULL)) || (rc = kn_binary(ctx, x, x, &h, KN_ADD)))
        goto out;

    /* MLP block: x += down(silu(gate(n)) * up(n)), n = post_attention_layernorm(x) */
    if ((rc = kn_rmsnorm(ctx, &h, x, &ly->post_norm, c->family.eps)) ||
        (rc = kn_linear(ctx, &gate, &h, &ly->gate_w, NULL)) || (rc = kn_linear(ctx, &up, &h, &ly->up_w, NULL)) ||
        (rc = kn_activation(ctx, &gate, &gate, KN_ACT_SILU)) || (rc = kn_binary(ctx, &gate, &gate, &up, KN_MUL)) ||
        (rc = kn_linear(ctx, &h, &gate, &ly->down_w, NULL)))
        goto out;
    rc = kn_binary(ctx, x, x, &h, KN_ADD);
out:
    kn_arena_reset(a, mark);
    return rc;
}

/* Boundary checks of forward's inputs; messages name the tensor and shape. */
static int check_inputs(const kn_ctx *ctx, const kn_tensor *ids, const kn_tensor *mask, kn_err *err) {
    char a[96], b[96];
    if (ctx->device != KN_DEV_CPU)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "qwen25vl: forward runs on the CPU only so far");
    if (ids->dtype != KN_I64 || ids->device != KN_DEV_CPU || ids->ndim != 2 || ids->ne[0] < 1 || ids->ne[1] < 1 ||
        !kn_tensor_is_contiguous(ids))
        return kn_fail(err, KN_ERR_SHAPE, "qwen25vl: input_ids %s: expected contiguous CPU I64 [B >= 1, L >= 1]",
                       kn_tensor_desc(ids, a, sizeof a));
    if (mask && (mask->device != KN_DEV_CPU || mask->ndim != 2 || mask->ne[0] != ids->ne[0] ||
                 mask->ne[1] != ids->ne[1] || !kn_tensor_is_contiguous(mask)))
        return kn_fail(err, KN_ERR_SHAPE, "qwen25vl: attention_mask %s does not match input_ids %s",
                       kn_tensor_desc(mask, a, sizeof a), kn_tensor_desc(ids, b, sizeof b));
    return KN_OK;
}

int kn_qwen25vl_forward(kn_ctx *ctx, const kn_qwen25vl *m, kn_arena *arena, const kn_tensor *ids,
                        const kn_tensor *mask, kn_tensor *hidden, kn_tensor *prenorm) {
    kn_err *err = &ctx->err;
    int rc = check_inputs(ctx, ids, mask, err);
    if (rc) return rc;
    const int64_t B = ids->ne[0], L = ids->ne[1], ne[] = {B, L, m->cfg.hidden};
    if ((rc = scratch(arena, hidden, 3, ne, err)) || (prenorm && (rc = scratch(arena, prenorm, 3, ne, err))))
        return rc;
    const size_t mark = kn_arena_mark(arena);
    /* the residual stream runs in *prenorm when the caller wants it */
    kn_tensor x, cos_t, sin_t, km;
    if (prenorm) x = *prenorm;
    else if ((rc = scratch(arena, &x, 3, ne, err))) goto out;
    if ((rc = embed_lookup(m, ids, &x, err)) || (rc = rope_tables(ctx, arena, L, &m->cfg.family, &cos_t, &sin_t)) ||
        (mask && (rc = key_mask_from(arena, mask, &km, err))))
        goto out;
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        if ((rc = layer_forward(ctx, &m->cfg, &m->layer[i], arena, &x, &cos_t, &sin_t, mask ? &km : NULL))) {
            kn_err_wrap(err, "qwen25vl: layer %lld", (long long)i);
            goto out;
        }
    }
    rc = kn_rmsnorm(ctx, hidden, &x, &m->norm, m->cfg.family.eps);
out:
    kn_arena_reset(arena, mark);
    return rc;
}

/* ---- Qwen-Image conditioning ------------------------------------------------- */

int64_t kn_qwen_image_template_end(const int64_t *ids, int64_t n) {
    int64_t end = -1;
    int seen = 0;
    for (int64_t i = 0; i < n && seen < 2; i++) {
        if (ids[i] == KN_QWEN_IM_START) {
            end = i;
            seen++;
        }
    }
    if (n > end + 3 && ids[end + 1] == KN_QWEN_TOK_USER && ids[end + 2] == KN_QWEN_TOK_NL) end += 3;
    return end < 0 ? n - 1 : end;
}

/* out = t[:, s:] as a new contiguous tensor in `a`; t is contiguous [B, L, ...]. */
static int copy_tail(kn_arena *a, const kn_tensor *t, int64_t s, kn_tensor *out, kn_err *err) {
    int64_t ne[KN_MAX_DIMS];
    memcpy(ne, t->ne, sizeof ne);
    ne[1] = t->ne[1] - s;
    int rc = kn_arena_tensor(a, out, t->dtype, t->ndim, ne, err);
    if (rc) return rc;
    const size_t pos_bytes = (size_t)t->st[1] * kn_dtype_size(t->dtype);
    for (int64_t b = 0; b < t->ne[0]; b++)
        memcpy((char *)out->data + (size_t)(b * ne[1]) * pos_bytes,
               (const char *)t->data + (size_t)(b * t->ne[1] + s) * pos_bytes, (size_t)ne[1] * pos_bytes);
    return KN_OK;
}

static int all_ones(const kn_tensor *mask) {
    const size_t es = kn_dtype_size(mask->dtype), n = (size_t)kn_tensor_numel(mask);
    for (size_t i = 0; i < n; i++) {
        float v;
        kn_to_f32(&v, (const char *)mask->data + i * es, mask->dtype, 1, 1.0f);
        if (v != 1.0f) return 0;
    }
    return 1;
}

int kn_qwen_image_conditioning(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden,
                               const kn_tensor *mask, kn_tensor *cond, kn_tensor *cond_mask, kn_err *err) {
    char a[96], b[96], c[96];
    int ok = ids->dtype == KN_I64 && ids->ndim == 2 && ids->ne[1] >= 1 && kn_tensor_is_contiguous(ids) &&
             hidden->dtype == KN_F32 && hidden->ndim == 3 && hidden->ne[0] == ids->ne[0] &&
             hidden->ne[1] == ids->ne[1] && kn_tensor_is_contiguous(hidden);
    if (ok && mask)
        ok = mask->ndim == 2 && mask->ne[0] == ids->ne[0] && mask->ne[1] == ids->ne[1] &&
             kn_tensor_is_contiguous(mask);
    if (!ok)
        return kn_fail(err, KN_ERR_SHAPE,
                       "qwen_image conditioning: input_ids %s, hidden %s, attention_mask %s: expected I64 [B, L >= 1], "
                       "F32 [B, L, D], [B, L], contiguous",
                       kn_tensor_desc(ids, a, sizeof a), kn_tensor_desc(hidden, b, sizeof b),
                       mask ? kn_tensor_desc(mask, c, sizeof c) : "none");
    const int64_t s = kn_qwen_image_template_end(ids->data, ids->ne[1]);
    memset(cond_mask, 0, sizeof *cond_mask);
    int rc = copy_tail(arena, hidden, s, cond, err);
    if (rc || !mask) return rc;
    if ((rc = copy_tail(arena, mask, s, cond_mask, err))) return rc;
    /* an all-ones mask changes nothing downstream, so ComfyUI drops it */
    if (all_ones(cond_mask)) memset(cond_mask, 0, sizeof *cond_mask);
    return KN_OK;
}
