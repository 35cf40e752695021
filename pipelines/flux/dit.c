/* Flux.1 DiT: see dit.h for the math and conventions. */
#include "pipelines/flux/dit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/common/dit_blocks.h"

static const kn_dit_consts flux_consts = {{16, 56, 56}, 10000.0, 2};

#define LN_EPS 1e-6f
#define QK_NORM_EPS 1e-6f
#define TIME_SCALE 1000.0
#define TIME_MAX_PERIOD 10000.0
#define DEFAULT_GUIDANCE 3.5f /* model_base.Flux.extra_conds when no FluxGuidance ran */

/* ---- loading ------------------------------------------------------------ */

enum { S_D, S_3D, S_6D, S_2D, S_HD, S_F, S_QKVF, S_DF, S_CTX, S_VEC, S_IN, S_OUT, S_T, N_SIZES };

#define DLIN(field, key, r, c, fl) KN_WSPEC_LIN(kn_mmdit_block, field, key, r, c, fl)
#define DVEC(field, key) KN_WSPEC_T1(kn_mmdit_block, field, key, S_HD, 0)
/* qkv biases are optional: Flux.1 has them (qkv_bias), some derivatives do not */
static const kn_weight_spec double_specs[] = {
    DLIN(img.mod, "img_mod.lin", S_6D, S_D, 0),
    DLIN(img.attn.qkv, "img_attn.qkv", S_3D, S_D, 0),
    DVEC(img.attn.norm_q, "img_attn.norm.query_norm.scale"),
    DVEC(img.attn.norm_k, "img_attn.norm.key_norm.scale"),
    DLIN(img.attn.out, "img_attn.proj", S_D, S_D, 0),
    DLIN(img.mlp.up, "img_mlp.0", S_F, S_D, 0),
    DLIN(img.mlp.down, "img_mlp.2", S_D, S_F, 0),
    DLIN(txt.mod, "txt_mod.lin", S_6D, S_D, 0),
    DLIN(txt.attn.qkv, "txt_attn.qkv", S_3D, S_D, 0),
    DVEC(txt.attn.norm_q, "txt_attn.norm.query_norm.scale"),
    DVEC(txt.attn.norm_k, "txt_attn.norm.key_norm.scale"),
    DLIN(txt.attn.out, "txt_attn.proj", S_D, S_D, 0),
    DLIN(txt.mlp.up, "txt_mlp.0", S_F, S_D, 0),
    DLIN(txt.mlp.down, "txt_mlp.2", S_D, S_F, 0),
};

static const kn_weight_spec single_specs[] = {
    KN_WSPEC_LIN(kn_flux_single, mod, "modulation.lin", S_3D, S_D, 0),
    KN_WSPEC_LIN(kn_flux_single, linear1, "linear1", S_QKVF, S_D, 0),
    KN_WSPEC_LIN(kn_flux_single, linear2, "linear2", S_D, S_DF, 0),
    KN_WSPEC_T1(kn_flux_single, attn.norm_q, "norm.query_norm.scale", S_HD, 0),
    KN_WSPEC_T1(kn_flux_single, attn.norm_k, "norm.key_norm.scale", S_HD, 0),
};

#define MLIN(field, key, r, c, fl) KN_WSPEC_LIN(kn_flux_dit, field, key, r, c, fl)
static const kn_weight_spec model_specs[] = {
    MLIN(img_in, "img_in", S_D, S_IN, 0),
    MLIN(txt_in, "txt_in", S_D, S_CTX, 0),
    MLIN(time_in.up, "time_in.in_layer", S_D, S_T, 0),
    MLIN(time_in.down, "time_in.out_layer", S_D, S_D, 0),
    MLIN(vector_in.up, "vector_in.in_layer", S_D, S_VEC, 0),
    MLIN(vector_in.down, "vector_in.out_layer", S_D, S_D, 0),
    MLIN(guidance_in.up, "guidance_in.in_layer", S_D, S_T, KN_W_OPTIONAL),
    MLIN(guidance_in.down, "guidance_in.out_layer", S_D, S_D, KN_W_OPTIONAL),
    MLIN(final_mod, "final_layer.adaLN_modulation.1", S_2D, S_D, 0),
    MLIN(final_linear, "final_layer.linear", S_OUT, S_D, 0),
};

#define N_SPECS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int derive_config(kn_flux_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *k,
                         int64_t *time_ch, kn_err *err) {
    kn_flux_config *c = &m->cfg;
    int64_t out_rows = 0;
    c->consts = *k;
    c->head_dim = k->axes_dims[0] + k->axes_dims[1] + k->axes_dims[2];
    KN_TRY(kn_weights_dim(f, prefix, "img_in.weight", 0, &c->dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "img_in.weight", 1, &c->in_channels, err));
    KN_TRY(kn_weights_dim(f, prefix, "txt_in.weight", 1, &c->context_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "vector_in.in_layer.weight", 1, &c->vec_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "time_in.in_layer.weight", 1, time_ch, err));
    KN_TRY(kn_weights_dim(f, prefix, "double_blocks.0.img_mlp.0.weight", 0, &c->mlp_hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "final_layer.linear.weight", 0, &out_rows, err));
    KN_TRY(kn_weights_count(f, prefix, "double_blocks.", &c->depth, err));
    KN_TRY(kn_weights_count(f, prefix, "single_blocks.", &c->depth_single, err));
    char name[512];
    snprintf(name, sizeof name, "%sguidance_in.in_layer.weight", prefix);
    c->guidance = kn_st_find(f, name) != NULL;
    int64_t p2 = (int64_t)k->patch * k->patch;
    if (k->patch < 1 || c->head_dim <= 0 || c->dim % c->head_dim || out_rows % p2 || c->in_channels % p2 ||
        *time_ch % 2 || k->axes_dims[0] % 2 || k->axes_dims[1] % 2 || k->axes_dims[2] % 2)
        return kn_fail(err, KN_ERR_SHAPE, "%s: inconsistent Flux DiT: dim %lld, RoPE axes %d+%d+%d, final layer %lld",
                       kn_st_path(f), (long long)c->dim, k->axes_dims[0], k->axes_dims[1], k->axes_dims[2],
                       (long long)out_rows);
    c->heads = c->dim / c->head_dim;
    c->out_channels = out_rows / p2;
    return KN_OK;
}

static int bind_all(kn_flux_dit *m, const kn_st_file *f, const char *prefix, int64_t time_ch, kn_err *err) {
    const kn_flux_config *c = &m->cfg;
    int64_t D = c->dim, F = c->mlp_hidden, p2 = (int64_t)c->consts.patch * c->consts.patch;
    const int64_t sizes[N_SIZES] = {[S_D] = D,           [S_3D] = 3 * D,          [S_6D] = 6 * D,
                                    [S_2D] = 2 * D,      [S_HD] = c->head_dim,    [S_F] = F,
                                    [S_QKVF] = 3 * D + F, [S_DF] = D + F,         [S_CTX] = c->context_dim,
                                    [S_VEC] = c->vec_dim, [S_IN] = c->in_channels, [S_OUT] = c->out_channels * p2,
                                    [S_T] = time_ch};
    kn_weight_binder b = {f, prefix, sizes, "flux_dit", &m->weights, err};
    KN_TRY(kn_weights_bind(&b, m, "", model_specs, N_SPECS(model_specs)));
    m->dbl = calloc((size_t)(c->depth ? c->depth : 1), sizeof *m->dbl);
    m->single = calloc((size_t)(c->depth_single ? c->depth_single : 1), sizeof *m->single);
    if (!m->dbl || !m->single) return kn_fail(err, KN_ERR_NOMEM, "flux_dit: out of memory");
    char sub[64];
    for (int64_t l = 0; l < c->depth; l++) {
        snprintf(sub, sizeof sub, "double_blocks.%lld.", (long long)l);
        KN_TRY(kn_weights_bind(&b, &m->dbl[l], sub, double_specs, N_SPECS(double_specs)));
    }
    for (int64_t l = 0; l < c->depth_single; l++) {
        snprintf(sub, sizeof sub, "single_blocks.%lld.", (long long)l);
        KN_TRY(kn_weights_bind(&b, &m->single[l], sub, single_specs, N_SPECS(single_specs)));
    }
    return KN_OK;
}

int kn_flux_dit_load(kn_flux_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *consts,
                     kn_err *err) {
    memset(m, 0, sizeof *m);
    int64_t time_ch = 0;
    int rc = derive_config(m, f, prefix, consts, &time_ch, err);
    if (!rc) rc = bind_all(m, f, prefix, time_ch, err);
    if (rc) {
        kn_flux_dit_free(m);
        return rc;
    }
    m->base = (kn_dit){m->cfg.guidance ? &kn_flux_dev_dit : &kn_flux_schnell_dit,
                       &m->weights,
                       m->cfg.out_channels,
                       KN_FLUX_REF_OFFSET,
                       m->cfg.context_dim,
                       m->cfg.vec_dim,
                       m->cfg.dim,
                       m->cfg.mlp_hidden,
                       m->cfg.consts.patch};
    return KN_OK;
}

void kn_flux_dit_free(kn_flux_dit *m) {
    free(m->dbl);
    free(m->single);
    m->dbl = NULL;
    m->single = NULL;
    kn_weight_table_free(&m->weights);
}

/* ---- single block -------------------------------------------------------- */

/* x [B, L, D] in place; attn: the RoPE tables and (under sequence
 * parallelism) the rows' streams. */
static int single_block(kn_ctx *ctx, const kn_flux_dit *m, const kn_flux_single *w, kn_tensor *x, const kn_tensor *vec,
                        const kn_attn_args *attn) {
    const kn_flux_config *c = &m->cfg;
    const kn_weight_table *tab = &m->weights;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int64_t B = x->ne[0], L = x->ne[1], D = c->dim, F = c->mlp_hidden;
    const kn_attn_shape shape = {c->heads, c->heads, c->head_dim, QK_NORM_EPS};
    kn_tensor mod, h, y, q, k, v, o, cat, out, part, dst;
    KN_TRY(kn_arena_tensor(a, &mod, KN_F32, 2, (int64_t[]){B, 3 * D}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &mod, vec, &w->mod));
    const kn_mod md = {&mod, NULL, L};
    KN_TRY(kn_arena_tensor(a, &h, KN_F32, 3, (int64_t[]){B, L, D}, e));
    KN_TRY(kn_layernorm(ctx, &h, x, NULL, NULL, LN_EPS));
    KN_TRY(kn_mod_modulate(ctx, &h, &md, 0, 1));
    /* linear1's rows are [q; k; v; mlp]: one GEMM, then contiguous copies of the parts */
    KN_TRY(kn_arena_tensor(a, &y, KN_F32, 3, (int64_t[]){B, L, 3 * D + F}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &y, &h, &w->linear1));
    kn_tensor *qkv[3] = {&q, &k, &v};
    for (int i = 0; i < 3; i++) {
        KN_TRY(kn_arena_tensor(a, qkv[i], KN_F32, 3, (int64_t[]){B, L, D}, e));
        KN_TRY(kn_tensor_slice(&part, &y, 2, i * D, D, e));
        KN_TRY(kn_tensor_copy(qkv[i], &part, e));
    }
    KN_TRY(kn_attn_qk_norm(ctx, &w->attn, &shape, &q, &k));
    KN_TRY(kn_arena_tensor(a, &o, KN_F32, 3, (int64_t[]){B, L, D}, e));
    KN_TRY(kn_attn_joint(ctx, &shape, &q, &k, &v, &o, attn));
    /* linear2 reads [attn, gelu_tanh(mlp)] */
    KN_TRY(kn_arena_tensor(a, &cat, KN_F32, 3, (int64_t[]){B, L, D + F}, e));
    KN_TRY(kn_tensor_slice(&dst, &cat, 2, 0, D, e));
    KN_TRY(kn_tensor_copy(&dst, &o, e));
    kn_tensor act;
    KN_TRY(kn_arena_tensor(a, &act, KN_F32, 3, (int64_t[]){B, L, F}, e));
    KN_TRY(kn_tensor_slice(&part, &y, 2, 3 * D, F, e));
    KN_TRY(kn_tensor_copy(&act, &part, e));
    KN_TRY(kn_activation(ctx, &act, &act, KN_ACT_GELU_TANH));
    KN_TRY(kn_tensor_slice(&dst, &cat, 2, D, F, e));
    KN_TRY(kn_tensor_copy(&dst, &act, e));
    KN_TRY(kn_arena_tensor(a, &out, KN_F32, 3, (int64_t[]){B, L, D}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &out, &cat, &w->linear2));
    return kn_mod_gate(ctx, x, &out, &md, 2);
}

/* ---- model-level layout ------------------------------------------------- */

static int check_inputs(kn_ctx *ctx, const kn_flux_dit *m, const kn_dit_input *in, const kn_tensor *out) {
    const kn_flux_config *c = &m->cfg;
    kn_err *e = &ctx->err;
    int p = c->consts.patch;
    int64_t C = c->in_channels / (p * p);
    const kn_tensor *x = in->x;
    KN_TRY(kn_tensor_expect(x, "flux_dit input latent", 4, (int64_t[]){-1, C, -1, -1}, e));
    int64_t B = x->ne[0];
    KN_TRY(kn_tensor_expect(in->timestep, "flux_dit timestep", 1, (int64_t[]){B}, e));
    KN_TRY(kn_tensor_expect(in->context, "flux_dit context", 3, (int64_t[]){B, -1, c->context_dim}, e));
    if (in->pooled) KN_TRY(kn_tensor_expect(in->pooled, "flux_dit pooled vector", 2, (int64_t[]){B, -1}, e));
    if (in->pooled && in->pooled->ne[1] < c->vec_dim)
        return kn_fail(e, KN_ERR_SHAPE, "flux_dit: pooled vector has %lld values, the model reads %lld",
                       (long long)in->pooled->ne[1], (long long)c->vec_dim);
    if (in->guidance) KN_TRY(kn_tensor_expect(in->guidance, "flux_dit guidance", 1, (int64_t[]){B}, e));
    for (int r = 0; r < in->n_refs; r++)
        KN_TRY(kn_tensor_expect(in->refs[r], "flux_dit reference latent", 4, (int64_t[]){B, C, -1, -1}, e));
    KN_TRY(kn_tensor_expect(out, "flux_dit output", 4, (int64_t[]){B, c->out_channels, x->ne[2], x->ne[3]}, e));
    if (x->ne[2] < 1 || x->ne[3] < 1 || in->context->ne[1] < 1)
        return kn_fail(e, KN_ERR_SHAPE, "flux_dit: empty latent or context");
    if (in->context_mask) return kn_fail(e, KN_ERR_UNSUPPORTED, "flux_dit: Flux takes no text attention mask");
    if (in->ref_method != KN_FLUX_REF_OFFSET && in->ref_method != KN_FLUX_REF_INDEX)
        return kn_fail(e, KN_ERR_INVALID, "flux_dit: unknown reference method %d", in->ref_method);
    const kn_tensor *all[] = {x, in->timestep, in->context, out, in->pooled, in->guidance};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i] && (all[i]->dtype != KN_F32 || !kn_tensor_is_contiguous(all[i]) || all[i]->device != KN_DEV_CPU))
            return kn_fail(e, KN_ERR_SHAPE, "flux_dit: inputs and output must be contiguous F32 on the CPU");
    for (int r = 0; r < in->n_refs; r++)
        if (in->refs[r]->dtype != KN_F32 || !kn_tensor_is_contiguous(in->refs[r]) || in->refs[r]->device != KN_DEV_CPU)
            return kn_fail(e, KN_ERR_SHAPE, "flux_dit: reference latents must be contiguous F32 on the CPU");
    return KN_OK;
}

/* RoPE ids: text (0, 0, 0); image (0, i, j); reference r by the method:
 * "offset" puts every reference at index 1 and stacks them right or below
 * the ones before (in latent pixels, rounded to patches), "index" puts
 * reference r at index r + 1 (ComfyUI Flux._forward / process_img). */
static int rope_tables(kn_ctx *ctx, const kn_flux_dit *m, const kn_dit_input *in, int64_t Lt, int64_t L,
                       kn_tensor *cos_t, kn_tensor *sin_t) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int p = m->cfg.consts.patch;
    KN_TRY(kn_arena_tensor(a, cos_t, KN_F32, 2, (int64_t[]){L, m->cfg.head_dim / 2}, e));
    KN_TRY(kn_arena_tensor(a, sin_t, KN_F32, 2, (int64_t[]){L, m->cfg.head_dim / 2}, e));
    double *pos = kn_arena_alloc(a, (size_t)L * 3 * sizeof(double), e);
    if (!pos) return e->code;
    memset(pos, 0, (size_t)Lt * 3 * sizeof(double));
    double *img_pos = pos + 3 * Lt;
    kn_dit_grid g = kn_dit_grid_of(in->x, p);
    kn_dit_grid_ids(img_pos, g.hl, g.wl, 0.0, 0.0, 0.0);
    img_pos += 3 * g.hl * g.wl;
    int64_t h = 0, w = 0;
    for (int r = 0; r < in->n_refs; r++) {
        const kn_tensor *ref = in->refs[r];
        int64_t rh = ref->ne[2], rw = ref->ne[3], h_off = 0, w_off = 0;
        double index = (double)(r + 1);
        if (in->ref_method == KN_FLUX_REF_OFFSET) {
            index = 1.0;
            if (rh + h > rw + w) w_off = w;
            else h_off = h;
            h = h > rh + h_off ? h : rh + h_off;
            w = w > rw + w_off ? w : rw + w_off;
        }
        kn_dit_grid gr = kn_dit_grid_of(ref, p);
        kn_dit_grid_ids(img_pos, gr.hl, gr.wl, index, (double)((h_off + p / 2) / p), (double)((w_off + p / 2) / p));
        img_pos += 3 * gr.hl * gr.wl;
    }
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 3, m->cfg.consts.axes_dims, m->cfg.consts.rope_theta);
}

/* vec = time_in(emb(t)) + guidance_in(emb(g)) + vector_in(y), then silu(vec) into svec. */
static int vector(kn_ctx *ctx, const kn_flux_dit *m, const kn_dit_input *in, kn_tensor *svec, kn_debug_fn debug,
                  void *user) {
    const kn_weight_table *tab = &m->weights;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int64_t B = in->x->ne[0], D = m->cfg.dim;
    kn_tensor vec, part, y;
    KN_TRY(kn_arena_tensor(a, &vec, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_arena_tensor(a, &part, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_dit_time_embed(ctx, tab, &m->time_in.up, &m->time_in.down, in->timestep->data, TIME_SCALE,
                             TIME_MAX_PERIOD, &vec));
    if (debug) KN_TRY(debug(user, "time_in", &vec));
    if (m->cfg.guidance) {
        float *g = kn_arena_alloc(a, (size_t)B * sizeof(float), e);
        if (!g) return e->code;
        for (int64_t b = 0; b < B; b++) g[b] = in->guidance ? ((const float *)in->guidance->data)[b] : DEFAULT_GUIDANCE;
        KN_TRY(kn_dit_time_embed(ctx, tab, &m->guidance_in.up, &m->guidance_in.down, g, TIME_SCALE, TIME_MAX_PERIOD,
                                 &part));
        if (debug) KN_TRY(debug(user, "guidance_in", &part));
        KN_TRY(kn_binary(ctx, &vec, &vec, &part, KN_ADD));
    }
    /* y[:, :vec_in_dim], zeros when the conditioning has no pooled output */
    KN_TRY(kn_arena_tensor(a, &y, KN_F32, 2, (int64_t[]){B, m->cfg.vec_dim}, e));
    float *yd = y.data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < m->cfg.vec_dim; i++)
            yd[b * m->cfg.vec_dim + i] = in->pooled ? ((const float *)in->pooled->data)[b * in->pooled->ne[1] + i] : 0.0f;
    KN_TRY(kn_mlp_forward(ctx, tab, &m->vector_in, KN_ACT_SILU, &y, &part));
    if (debug) KN_TRY(debug(user, "vector_in", &part));
    KN_TRY(kn_binary(ctx, &vec, &vec, &part, KN_ADD));
    return kn_activation(ctx, svec, &vec, KN_ACT_SILU);
}

/* Under sequence parallelism each rank holds its rows of the text and of the
 * image tokens (seqpar.h), laid out [txt; img] like the whole sequence; the
 * output tokens are gathered before unpatchify. */
static int forward(kn_ctx *ctx, const kn_flux_dit *m, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *user) {
    const kn_flux_config *c = &m->cfg;
    const kn_weight_table *tab = &m->weights;
    const kn_sp *sp = in->sp;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int p = c->consts.patch;
    int64_t B = in->x->ne[0], D = c->dim, Lt = in->context->ne[1];
    kn_dit_grid g = kn_dit_grid_of(in->x, p);
    int64_t n_main = g.hl * g.wl, Ni = n_main;
    for (int r = 0; r < in->n_refs; r++) {
        kn_dit_grid gr = kn_dit_grid_of(in->refs[r], p);
        Ni += gr.hl * gr.wl;
    }
    const kn_sp_seq seq = {2, {Lt, Ni}}, seq_t = {1, {Lt}}, seq_i = {1, {Ni}};
    int64_t Ltl = kn_sp_local(sp, Lt), Li = kn_sp_local(sp, Ni), L = Ltl + Li;
    kn_tensor cos_f, sin_f, cos_t, sin_t, tokens_f, tokens, context, x, svec;
    KN_TRY(rope_tables(ctx, m, in, Lt, Lt + Ni, &cos_f, &sin_f));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &cos_f, 0, &cos_t));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &sin_f, 0, &sin_t));
    KN_TRY(kn_arena_tensor(a, &svec, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(vector(ctx, m, in, &svec, debug, user));

    /* the joint stream [txt, img]: the double blocks see its two row ranges */
    KN_TRY(kn_arena_tensor(a, &x, KN_F32, 3, (int64_t[]){B, L, D}, e));
    kn_tensor txt, img;
    KN_TRY(kn_arena_tensor(a, &txt, KN_F32, 3, (int64_t[]){B, Ltl, D}, e));
    KN_TRY(kn_arena_tensor(a, &img, KN_F32, 3, (int64_t[]){B, Li, D}, e));
    KN_TRY(kn_sp_shard(ctx, sp, &seq_t, in->context, 1, &context));
    KN_TRY(kn_lin_forward(ctx, tab, &txt, &context, &m->txt_in));
    KN_TRY(kn_arena_tensor(a, &tokens_f, KN_F32, 3, (int64_t[]){B, Ni, c->in_channels}, e));
    KN_TRY(kn_dit_patchify(ctx, &tokens_f, in->x, in->refs, in->n_refs, p, KN_PATCH_C_PY_PX));
    KN_TRY(kn_sp_shard(ctx, sp, &seq_i, &tokens_f, 1, &tokens));
    KN_TRY(kn_lin_forward(ctx, tab, &img, &tokens, &m->img_in));
    if (debug) {
        KN_TRY(debug(user, "img_in", &img));
        KN_TRY(debug(user, "txt_in", &txt));
        KN_TRY(debug(user, "rope_cos", &cos_t));
        KN_TRY(debug(user, "rope_sin", &sin_t));
    }
    const kn_mmdit_args args = {{c->heads, c->heads, c->head_dim, QK_NORM_EPS},
                                KN_ACT_GELU_TANH,
                                LN_EPS,
                                &svec,
                                NULL,
                                Li,
                                &cos_t,
                                &sin_t,
                                NULL,
                                sp,
                                &seq};
    char name[64];
    for (int64_t l = 0; l < c->depth; l++) {
        KN_TRY(kn_mmdit_block_forward(ctx, tab, &m->dbl[l], &img, &txt, &args));
        if (debug) {
            snprintf(name, sizeof name, "double%lld_img", (long long)l);
            KN_TRY(debug(user, name, &img));
            snprintf(name, sizeof name, "double%lld_txt", (long long)l);
            KN_TRY(debug(user, name, &txt));
        }
    }
    kn_tensor part;
    KN_TRY(kn_tensor_slice(&part, &x, 1, 0, Ltl, e));
    KN_TRY(kn_tensor_copy(&part, &txt, e));
    KN_TRY(kn_tensor_slice(&part, &x, 1, Ltl, Li, e));
    KN_TRY(kn_tensor_copy(&part, &img, e));
    const kn_attn_args single_args = {
        .cos = &cos_t, .sin = &sin_t, .rope = KN_ROPE_INTERLEAVED, .sp = sp, .seq = &seq};
    for (int64_t l = 0; l < c->depth_single; l++) {
        size_t mark = kn_arena_mark(a);
        int rc = single_block(ctx, m, &m->single[l], &x, &svec, &single_args);
        kn_arena_reset(a, mark);
        KN_TRY(rc);
        if (debug) {
            snprintf(name, sizeof name, "single%lld", (long long)l);
            KN_TRY(debug(user, name, &x));
        }
    }
    /* the final layer on the image tokens (refs included; only the first n_main come out) */
    KN_TRY(kn_tensor_slice(&part, &x, 1, Ltl, Li, e));
    KN_TRY(kn_tensor_copy(&img, &part, e));
    KN_TRY(kn_dit_final_norm(ctx, tab, &m->final_mod, &svec, &img, 1, LN_EPS));
    int64_t F = m->final_linear.w.ne[0];
    kn_tensor proj;
    KN_TRY(kn_arena_tensor(a, &proj, KN_F32, 3, (int64_t[]){B, Li, F}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &proj, &img, &m->final_linear));
    if (debug) KN_TRY(debug(user, "final_layer", &proj));
    return kn_dit_unpatchify(ctx, out, &proj, sp, Ni, p, KN_PATCH_C_PY_PX);
}

static int family_forward(kn_ctx *ctx, const kn_dit *d, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                          void *debug_user) {
    const kn_flux_dit *m = (const kn_flux_dit *)d;
    KN_TRY(check_inputs(ctx, m, in, out));
    return forward(ctx, m, in, out, debug, debug_user);
}

/* ---- the diffusion-model families ---------------------------------------- */

static int family_load(kn_dit **out, const kn_st_file *f, const char *prefix, const kn_dit_consts *o, kn_err *err) {
    const kn_dit_consts k = kn_dit_consts_with(&flux_consts, o);
    kn_flux_dit *m = malloc(sizeof *m);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "flux_dit: out of memory");
    if (kn_flux_dit_load(m, f, prefix, &k, err)) {
        free(m);
        return err->code;
    }
    *out = &m->base;
    return KN_OK;
}

static void family_free(kn_dit *d) {
    if (!d) return;
    kn_flux_dit_free((kn_flux_dit *)d);
    free(d);
}

/* comfy.utils.flux_to_diffusers: diffusers module names, q/k/v (and the
 * single blocks' MLP input) as row slices of the fused weights, in units of
 * hidden_size. ComfyUI's attn.norm_q/norm_k rows name "...query_norm.weight",
 * a key Flux lacks (its norms are ".scale"), so they patch nothing and are
 * left out. */
/* rows [start*H, (start+size)*H) of a double / single block's weight (size 0: all) */
#define DB(d, c, start, size) {"transformer_blocks.#." d, "double_blocks.#." c ".weight", start, size, 0}
#define SB(d, c, start, size) {"single_transformer_blocks.#." d, "single_blocks.#." c ".weight", start, size, 0}
#define GL(d, c) {d, c ".weight", 0, 0, 0}
static const kn_key_rename diffusers_rows[] = {
    DB("attn.to_q", "img_attn.qkv", 0, 1),
    DB("attn.to_k", "img_attn.qkv", 1, 1),
    DB("attn.to_v", "img_attn.qkv", 2, 1),
    DB("attn.add_q_proj", "txt_attn.qkv", 0, 1),
    DB("attn.add_k_proj", "txt_attn.qkv", 1, 1),
    DB("attn.add_v_proj", "txt_attn.qkv", 2, 1),
    DB("attn.to_out.0", "img_attn.proj", 0, 0),
    DB("attn.to_add_out", "txt_attn.proj", 0, 0),
    DB("norm1.linear", "img_mod.lin", 0, 0),
    DB("norm1_context.linear", "txt_mod.lin", 0, 0),
    DB("ff.net.0.proj", "img_mlp.0", 0, 0),
    DB("ff.net.2", "img_mlp.2", 0, 0),
    DB("ff_context.net.0.proj", "txt_mlp.0", 0, 0),
    DB("ff_context.net.2", "txt_mlp.2", 0, 0),
    DB("ff.linear_in", "img_mlp.0", 0, 0), /* LyCORIS */
    DB("ff.linear_out", "img_mlp.2", 0, 0),
    DB("ff_context.linear_in", "txt_mlp.0", 0, 0),
    DB("ff_context.linear_out", "txt_mlp.2", 0, 0),
    SB("attn.to_q", "linear1", 0, 1),
    SB("attn.to_k", "linear1", 1, 1),
    SB("attn.to_v", "linear1", 2, 1),
    SB("proj_mlp", "linear1", 3, 4), /* ComfyUI hard-codes the MLP as 4 H rows (Flux.1's mlp_ratio) */
    SB("norm.linear", "modulation.lin", 0, 0),
    SB("proj_out", "linear2", 0, 0),
    SB("attn.to_qkv_mlp_proj", "linear1", 0, 0), /* Flux.2 names, mapped for Flux.1 too */
    SB("attn.to_out", "linear2", 0, 0),
    GL("proj_out", "final_layer.linear"),
    GL("x_embedder", "img_in"),
    GL("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
    GL("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
    GL("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
    GL("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    GL("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
    GL("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
    GL("context_embedder", "txt_in"),
    GL("controlnet_x_embedder", "pos_embed_input"),
    /* diffusers orders AdaLN (scale, shift), BFL (shift, scale): swap_scale_shift */
    {"norm_out.linear", "final_layer.adaLN_modulation.1.weight", 0, 0, 1},
};
#undef DB
#undef SB
#undef GL
static const kn_key_renames diffusers = {"img_in.weight", diffusers_rows,
                                         (int)(sizeof diffusers_rows / sizeof diffusers_rows[0])};
/* model_lora_keys_unet's USO-style fused-qkv name for the first 3 H rows of linear1 */
static const kn_key_rename linear1_qkv_rows[] = {
    {"single_blocks.#.linear1_qkv", "single_blocks.#.linear1.weight", 0, 3, 0},
};
static const kn_key_renames linear1_qkv = {"img_in.weight", linear1_qkv_rows, 1};

/* comfy.lora.model_lora_keys_unet for model_base.Flux: the checkpoint's own
 * names (ComfyUI-saved, kohya), then the diffusers names under
 * transformer. (diffusers, ai-toolkit), lycoris_ (SimpleTuner),
 * lora_transformer_ (OneTrainer) and bare (DiffSynth). */
static const kn_key_alias lora_keys[] = {
    {"diffusion_model.", 0, 1, NULL}, {"lora_unet_", 1, 0, NULL},      {"transformer.", 0, 0, &diffusers},
    {"lycoris_", 1, 0, &diffusers},   {"lora_transformer_", 1, 0, &diffusers}, {"", 0, 0, &diffusers},
    {"diffusion_model.", 0, 0, &linear1_qkv},
};
#define N_LORA_KEYS ((int)(sizeof lora_keys / sizeof lora_keys[0]))
static const char *const ref_methods[] = {[KN_FLUX_REF_OFFSET] = "offset", [KN_FLUX_REF_INDEX] = "index"};

/* ComfyUI supported_models: Flux (guidance_embed) samples with ModelSamplingFlux
 * mu 1.15, FluxSchnell with ModelSamplingDiscreteFlow shift 1; both Flux latents. */
const kn_dit_family kn_flux_dev_dit = {
    "flux", "Flux.1 dev", family_load, family_free, family_forward, &kn_latent_flux, 4, KN_MS_FLUX, 1.15, 1.0,
    lora_keys, N_LORA_KEYS, ref_methods, 2, "flux", NULL,
};
const kn_dit_family kn_flux_schnell_dit = {
    "flux_schnell", "Flux.1 schnell", family_load, family_free, family_forward, &kn_latent_flux, 4,
    KN_MS_DISCRETE_FLOW, 1.0, 1.0, lora_keys, N_LORA_KEYS, ref_methods, 2, "flux", NULL,
};
