/* Qwen-Image DiT: see dit.h for the math and conventions. */
#include "pipelines/qwen_image/dit.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/common/dit_blocks.h"

const kn_dit_consts kn_qwen_image_consts = {{16, 56, 56}, 10000.0, 2};

#define LN_EPS 1e-6f
#define QK_NORM_EPS 1e-6f
#define TXT_NORM_EPS 1e-6f
#define TIME_SCALE 1000.0 /* ComfyUI passes sigma; the embedding multiplies by 1000 */
#define TIME_MAX_PERIOD 10000.0

/* ---- loading ------------------------------------------------------------ */

enum { S_D, S_6D, S_2D, S_HD, S_F, S_JOINT, S_IN, S_OUT, S_T, N_SIZES };

/* diffusers names: one attention module holds both streams' projections */
#define BLIN(field, key, r, c) KN_WSPEC_LIN(kn_mmdit_block, field, key, r, c, 0)
#define BVEC(field, key, d) KN_WSPEC_T1(kn_mmdit_block, field, key, d, 0)
static const kn_weight_spec block_specs[] = {
    BLIN(img.mod, "img_mod.1", S_6D, S_D),
    BLIN(txt.mod, "txt_mod.1", S_6D, S_D),
    BLIN(img.attn.q, "attn.to_q", S_D, S_D),
    BLIN(img.attn.k, "attn.to_k", S_D, S_D),
    BLIN(img.attn.v, "attn.to_v", S_D, S_D),
    BLIN(img.attn.out, "attn.to_out.0", S_D, S_D),
    BLIN(txt.attn.q, "attn.add_q_proj", S_D, S_D),
    BLIN(txt.attn.k, "attn.add_k_proj", S_D, S_D),
    BLIN(txt.attn.v, "attn.add_v_proj", S_D, S_D),
    BLIN(txt.attn.out, "attn.to_add_out", S_D, S_D),
    BVEC(img.attn.norm_q, "attn.norm_q.weight", S_HD),
    BVEC(img.attn.norm_k, "attn.norm_k.weight", S_HD),
    BVEC(txt.attn.norm_q, "attn.norm_added_q.weight", S_HD),
    BVEC(txt.attn.norm_k, "attn.norm_added_k.weight", S_HD),
    BLIN(img.mlp.up, "img_mlp.net.0.proj", S_F, S_D),
    BLIN(img.mlp.down, "img_mlp.net.2", S_D, S_F),
    BLIN(txt.mlp.up, "txt_mlp.net.0.proj", S_F, S_D),
    BLIN(txt.mlp.down, "txt_mlp.net.2", S_D, S_F),
};

#define MLIN(field, key, r, c) KN_WSPEC_LIN(kn_qwen_dit, field, key, r, c, 0)
static const kn_weight_spec model_specs[] = {
    MLIN(img_in, "img_in", S_D, S_IN),
    MLIN(txt_in, "txt_in", S_D, S_JOINT),
    KN_WSPEC_T1(kn_qwen_dit, txt_norm, "txt_norm.weight", S_JOINT, 0),
    MLIN(t_lin1, "time_text_embed.timestep_embedder.linear_1", S_D, S_T),
    MLIN(t_lin2, "time_text_embed.timestep_embedder.linear_2", S_D, S_D),
    MLIN(norm_out, "norm_out.linear", S_2D, S_D),
    MLIN(proj_out, "proj_out", S_OUT, S_D),
};

#define N_SPECS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Sizes from the weights, checked against the constants. */
static int derive_config(kn_qwen_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *k,
                         int64_t *time_ch, kn_err *err) {
    kn_qwen_dit_config *c = &m->cfg;
    int64_t patch_ch = 0;
    c->consts = *k;
    KN_TRY(kn_weights_dim(f, prefix, "img_in.weight", 0, &c->dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "img_in.weight", 1, &c->in_channels, err));
    KN_TRY(kn_weights_dim(f, prefix, "txt_in.weight", 1, &c->joint_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "transformer_blocks.0.attn.norm_q.weight", 0, &c->head_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "transformer_blocks.0.img_mlp.net.0.proj.weight", 0, &c->mlp_hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "time_text_embed.timestep_embedder.linear_1.weight", 1, time_ch, err));
    KN_TRY(kn_weights_dim(f, prefix, "proj_out.weight", 0, &patch_ch, err));
    KN_TRY(kn_weights_count(f, prefix, "transformer_blocks.", &c->layers, err));
    int64_t p2 = (int64_t)k->patch * k->patch;
    int axes = k->axes_dims[0] + k->axes_dims[1] + k->axes_dims[2];
    if (k->patch < 1 || c->head_dim <= 0 || c->dim % c->head_dim || patch_ch % p2 || *time_ch % 2 ||
        axes != c->head_dim || k->axes_dims[0] % 2 || k->axes_dims[1] % 2 || k->axes_dims[2] % 2 ||
        c->in_channels % p2)
        return kn_fail(err, KN_ERR_SHAPE,
                       "%s: inconsistent Qwen-Image DiT: dim %lld, head_dim %lld, RoPE axes %d+%d+%d, proj_out %lld",
                       kn_st_path(f), (long long)c->dim, (long long)c->head_dim, k->axes_dims[0], k->axes_dims[1],
                       k->axes_dims[2], (long long)patch_ch);
    c->heads = c->dim / c->head_dim;
    c->out_channels = patch_ch / p2;
    return KN_OK;
}

static int bind_all(kn_qwen_dit *m, const kn_st_file *f, const char *prefix, int64_t time_ch, kn_err *err) {
    const kn_qwen_dit_config *c = &m->cfg;
    int64_t p2 = (int64_t)c->consts.patch * c->consts.patch;
    const int64_t sizes[N_SIZES] = {[S_D] = c->dim,          [S_6D] = 6 * c->dim,
                                    [S_2D] = 2 * c->dim,     [S_HD] = c->head_dim,
                                    [S_F] = c->mlp_hidden,   [S_JOINT] = c->joint_dim,
                                    [S_IN] = c->in_channels, [S_OUT] = c->out_channels * p2,
                                    [S_T] = time_ch};
    kn_weight_binder b = {f, prefix, sizes, "qwen_image_dit", &m->weights, err};
    KN_TRY(kn_weights_bind(&b, m, "", model_specs, N_SPECS(model_specs)));
    m->block = calloc((size_t)(c->layers ? c->layers : 1), sizeof *m->block);
    if (!m->block) return kn_fail(err, KN_ERR_NOMEM, "qwen_image_dit: out of memory");
    for (int64_t l = 0; l < c->layers; l++) {
        char sub[64];
        snprintf(sub, sizeof sub, "transformer_blocks.%lld.", (long long)l);
        KN_TRY(kn_weights_bind(&b, &m->block[l], sub, block_specs, N_SPECS(block_specs)));
    }
    return KN_OK;
}

int kn_qwen_dit_load(kn_qwen_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *consts,
                     kn_err *err) {
    memset(m, 0, sizeof *m);
    int64_t time_ch = 0;
    int rc = derive_config(m, f, prefix, consts, &time_ch, err);
    if (!rc) rc = bind_all(m, f, prefix, time_ch, err);
    if (rc) {
        kn_qwen_dit_free(m);
        return rc;
    }
    /* Qwen-Image-Edit-2511 files carry a marker key for their reference method */
    int ref = kn_st_find(f, "__index_timestep_zero__") ? KN_QWEN_REF_INDEX_TIMESTEP_ZERO : KN_QWEN_REF_INDEX;
    m->base = (kn_dit){&kn_qwen_image_dit, &m->weights, m->cfg.out_channels, ref, m->cfg.joint_dim, 0, m->cfg.dim,
                       m->cfg.mlp_hidden, m->cfg.consts.patch};
    return KN_OK;
}

void kn_qwen_dit_free(kn_qwen_dit *m) {
    free(m->block);
    m->block = NULL;
    kn_weight_table_free(&m->weights);
}

/* ---- block -------------------------------------------------------------- */

int kn_qwen_dit_block_forward(kn_ctx *ctx, const kn_qwen_dit *m, int64_t layer, kn_tensor *img, kn_tensor *txt,
                              const kn_tensor *tvec, const kn_tensor *tvec0, int64_t n_main, const kn_tensor *cos,
                              const kn_tensor *sin, const kn_tensor *key_mask, const kn_sp *sp,
                              const kn_sp_seq *seq) {
    const kn_qwen_dit_config *c = &m->cfg;
    if (layer < 0 || layer >= c->layers)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "qwen_image_dit: block %lld of %lld", (long long)layer,
                       (long long)c->layers);
    int64_t B = img->ne[0];
    KN_TRY(kn_tensor_expect(img, "qwen_image_dit image stream", 3, (int64_t[]){-1, -1, c->dim}, &ctx->err));
    KN_TRY(kn_tensor_expect(txt, "qwen_image_dit text stream", 3, (int64_t[]){B, -1, c->dim}, &ctx->err));
    KN_TRY(kn_tensor_expect(tvec, "qwen_image_dit time vector", 2, (int64_t[]){B, c->dim}, &ctx->err));
    const kn_mmdit_args args = {{c->heads, c->heads, c->head_dim, QK_NORM_EPS},
                                KN_ACT_GELU_TANH,
                                LN_EPS,
                                tvec,
                                tvec0,
                                n_main,
                                cos,
                                sin,
                                key_mask,
                                sp,
                                seq};
    return kn_mmdit_block_forward(ctx, &m->weights, &m->block[layer], img, txt, &args);
}

/* ---- model-level layout: patches, RoPE tables, time embedding ---------- */

static int check_inputs(kn_ctx *ctx, const kn_qwen_dit *m, const kn_dit_input *in, const kn_tensor *out) {
    const kn_qwen_dit_config *c = &m->cfg;
    kn_err *e = &ctx->err;
    int p = c->consts.patch;
    int64_t C = c->in_channels / (p * p);
    const kn_tensor *x = in->x;
    KN_TRY(kn_tensor_expect(x, "qwen_image_dit input latent", 5, (int64_t[]){-1, C, 1, -1, -1}, e));
    int64_t B = x->ne[0];
    KN_TRY(kn_tensor_expect(in->timestep, "qwen_image_dit timestep", 1, (int64_t[]){B}, e));
    KN_TRY(kn_tensor_expect(in->context, "qwen_image_dit context", 3, (int64_t[]){B, -1, c->joint_dim}, e));
    if (in->context_mask)
        KN_TRY(kn_tensor_expect(in->context_mask, "qwen_image_dit context mask", 2,
                                (int64_t[]){B, in->context->ne[1]}, e));
    for (int r = 0; r < in->n_refs; r++)
        KN_TRY(kn_tensor_expect(in->refs[r], "qwen_image_dit reference latent", 5, (int64_t[]){B, C, 1, -1, -1}, e));
    KN_TRY(kn_tensor_expect(out, "qwen_image_dit output", 5,
                            (int64_t[]){B, c->out_channels, 1, x->ne[3], x->ne[4]}, e));
    if (x->ne[3] < 1 || x->ne[4] < 1 || in->context->ne[1] < 1)
        return kn_fail(e, KN_ERR_SHAPE, "qwen_image_dit: empty latent or context");
    if (in->ref_method != KN_QWEN_REF_INDEX && in->ref_method != KN_QWEN_REF_INDEX_TIMESTEP_ZERO)
        return kn_fail(e, KN_ERR_INVALID, "qwen_image_dit: unknown reference method %d", in->ref_method);
    const kn_tensor *all[] = {x, in->timestep, in->context, out, in->context_mask};
    for (size_t i = 0; i < 5; i++)
        if (all[i] && (!kn_tensor_is_contiguous(all[i]) || all[i]->device != KN_DEV_CPU ||
                       (i < 4 && all[i]->dtype != KN_F32)))
            return kn_fail(e, KN_ERR_SHAPE, "qwen_image_dit: inputs and output must be contiguous F32 on the CPU");
    for (int r = 0; r < in->n_refs; r++)
        if (in->refs[r]->dtype != KN_F32 || !kn_tensor_is_contiguous(in->refs[r]) ||
            in->refs[r]->device != KN_DEV_CPU)
            return kn_fail(e, KN_ERR_SHAPE, "qwen_image_dit: reference latents must be contiguous F32 on the CPU");
    return KN_OK;
}

/* RoPE tables: text tokens at txt_start + j on all axes, after the main
 * grid's half-extent; image tokens at (frame, row - hl/2, col - wl/2). */
static int rope_tables(kn_ctx *ctx, const kn_qwen_dit *m, const kn_dit_input *in, int64_t Lt, int64_t L,
                       kn_tensor *cos_t, kn_tensor *sin_t) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int p = m->cfg.consts.patch;
    int64_t P = m->cfg.head_dim / 2;
    KN_TRY(kn_arena_tensor(a, cos_t, KN_F32, 2, (int64_t[]){L, P}, e));
    KN_TRY(kn_arena_tensor(a, sin_t, KN_F32, 2, (int64_t[]){L, P}, e));
    double *pos = kn_arena_alloc(a, (size_t)L * 3 * sizeof(double), e);
    if (!pos) return e->code;
    kn_dit_grid g = kn_dit_grid_of(in->x, p);
    int64_t txt_start = g.hl / 2 > g.wl / 2 ? g.hl / 2 : g.wl / 2;
    for (int64_t j = 0; j < Lt; j++) pos[3 * j] = pos[3 * j + 1] = pos[3 * j + 2] = (double)(txt_start + j);
    double *img_pos = pos + 3 * Lt;
    for (int r = -1; r < in->n_refs; r++) {
        kn_dit_grid gr = kn_dit_grid_of(r < 0 ? in->x : in->refs[r], p);
        kn_dit_grid_ids(img_pos, gr.hl, gr.wl, (double)(r + 1), (double)-(gr.hl / 2), (double)-(gr.wl / 2));
        img_pos += 3 * gr.hl * gr.wl;
    }
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 3, m->cfg.consts.axes_dims, m->cfg.consts.rope_theta);
}

/* Text padding: ComfyUI turns an integer mask into (m - 1) * FLT_MAX on text keys. */
static int key_mask_of(kn_ctx *ctx, const kn_tensor *mask, int64_t L, kn_tensor *out) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int64_t B = mask->ne[0], Lt = mask->ne[1];
    KN_TRY(kn_arena_tensor(a, out, KN_F32, 2, (int64_t[]){B, L}, e));
    float *md = out->data;
    float *mv = kn_arena_alloc(a, (size_t)(B * Lt) * sizeof(float), e);
    if (!mv) return e->code;
    kn_to_f32(mv, mask->data, mask->dtype, (size_t)(B * Lt), 1.0f);
    int is_float = kn_dtype_is_float(mask->dtype);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < L; j++)
            md[b * L + j] = j >= Lt ? 0.0f : is_float ? mv[b * Lt + j] : (mv[b * Lt + j] - 1.0f) * FLT_MAX;
    return KN_OK;
}

/* Under sequence parallelism each rank runs the blocks on its rows of the
 * text and of the image tokens (seqpar.h); the RoPE table and key mask are
 * sharded with them, the output tokens gathered before unpatchify. */
static int forward(kn_ctx *ctx, const kn_qwen_dit *m, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *user) {
    const kn_qwen_dit_config *c = &m->cfg;
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
    int64_t L = Lt + Ni, Li = kn_sp_local(sp, Ni), Ltl = kn_sp_local(sp, Lt);
    const kn_sp_seq seq = {2, {Lt, Ni}}, seq_t = {1, {Lt}}, seq_i = {1, {Ni}};
    /* my image rows start at global token i0: the main image's rows before the references */
    int64_t i0 = kn_sp_rank(sp) * Li, main_l = n_main - i0 < 0 ? 0 : n_main - i0 > Li ? Li : n_main - i0;
    kn_tensor cos_f, sin_f, cos_t, sin_t, mask_f, mask_t, *key_mask = NULL;
    KN_TRY(rope_tables(ctx, m, in, Lt, L, &cos_f, &sin_f));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &cos_f, 0, &cos_t));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &sin_f, 0, &sin_t));
    if (in->context_mask) {
        KN_TRY(key_mask_of(ctx, in->context_mask, L, &mask_f));
        KN_TRY(kn_sp_shard(ctx, sp, &seq, &mask_f, 1, &mask_t));
        key_mask = &mask_t;
    }

    kn_tensor tokens_f, tokens, img, context, txt_n, txt, tvec, temb, tvec0;
    KN_TRY(kn_arena_tensor(a, &tokens_f, KN_F32, 3, (int64_t[]){B, Ni, c->in_channels}, e));
    KN_TRY(kn_dit_patchify(ctx, &tokens_f, in->x, in->refs, in->n_refs, p, KN_PATCH_C_PY_PX));
    KN_TRY(kn_sp_shard(ctx, sp, &seq_i, &tokens_f, 1, &tokens));
    KN_TRY(kn_arena_tensor(a, &img, KN_F32, 3, (int64_t[]){B, Li, D}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &img, &tokens, &m->img_in));
    KN_TRY(kn_sp_shard(ctx, sp, &seq_t, in->context, 1, &context));
    KN_TRY(kn_arena_tensor(a, &txt_n, KN_F32, 3, (int64_t[]){B, Ltl, c->joint_dim}, e));
    KN_TRY(kn_arena_tensor(a, &txt, KN_F32, 3, (int64_t[]){B, Ltl, D}, e));
    KN_TRY(kn_rmsnorm(ctx, &txt_n, &context, &m->txt_norm, TXT_NORM_EPS));
    KN_TRY(kn_lin_forward(ctx, tab, &txt, &txt_n, &m->txt_in));
    /* every modulation reads silu(temb) */
    KN_TRY(kn_arena_tensor(a, &temb, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_arena_tensor(a, &tvec, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_dit_time_embed(ctx, tab, &m->t_lin1, &m->t_lin2, in->timestep->data, TIME_SCALE, TIME_MAX_PERIOD,
                             &temb));
    KN_TRY(kn_activation(ctx, &tvec, &temb, KN_ACT_SILU));
    const kn_tensor *tv0 = NULL;
    if (in->n_refs > 0 && in->ref_method == KN_QWEN_REF_INDEX_TIMESTEP_ZERO) {
        float *zeros = kn_arena_alloc(a, (size_t)B * sizeof(float), e);
        if (!zeros) return e->code;
        memset(zeros, 0, (size_t)B * sizeof(float));
        KN_TRY(kn_arena_tensor(a, &tvec0, KN_F32, 2, (int64_t[]){B, D}, e));
        KN_TRY(kn_dit_time_embed(ctx, tab, &m->t_lin1, &m->t_lin2, zeros, TIME_SCALE, TIME_MAX_PERIOD, &tvec0));
        KN_TRY(kn_activation(ctx, &tvec0, &tvec0, KN_ACT_SILU));
        tv0 = &tvec0;
    }
    if (debug) {
        KN_TRY(debug(user, "rope_cos", &cos_t));
        KN_TRY(debug(user, "rope_sin", &sin_t));
        KN_TRY(debug(user, "img_in", &img));
        KN_TRY(debug(user, "txt_in", &txt));
        KN_TRY(debug(user, "temb", &temb));
    }
    for (int64_t l = 0; l < c->layers; l++) {
        KN_TRY(kn_qwen_dit_block_forward(ctx, m, l, &img, &txt, &tvec, tv0, main_l, &cos_t, &sin_t, key_mask, sp,
                                         &seq));
        if (debug) {
            char name[64];
            snprintf(name, sizeof name, "block%lld_txt", (long long)l);
            KN_TRY(debug(user, name, &txt));
            snprintf(name, sizeof name, "block%lld_img", (long long)l);
            KN_TRY(debug(user, name, &img));
        }
    }
    KN_TRY(kn_dit_final_norm(ctx, tab, &m->norm_out, &tvec, &img, 0, LN_EPS));
    if (debug) KN_TRY(debug(user, "norm_out", &img));
    int64_t F = m->proj_out.w.ne[0];
    kn_tensor proj;
    KN_TRY(kn_arena_tensor(a, &proj, KN_F32, 3, (int64_t[]){B, Li, F}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &proj, &img, &m->proj_out));
    return kn_dit_unpatchify(ctx, out, &proj, sp, Ni, p, KN_PATCH_C_PY_PX);
}

static int family_forward(kn_ctx *ctx, const kn_dit *d, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                          void *debug_user) {
    const kn_qwen_dit *m = (const kn_qwen_dit *)d;
    KN_TRY(check_inputs(ctx, m, in, out));
    return forward(ctx, m, in, out, debug, debug_user);
}

/* ---- the diffusion-model family -------------------------------------------- */

static int family_load(kn_dit **out, const kn_st_file *f, const char *prefix, const kn_dit_consts *o, kn_err *err) {
    const kn_dit_consts k = kn_dit_consts_with(&kn_qwen_image_consts, o);
    kn_qwen_dit *m = malloc(sizeof *m);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "qwen_image_dit: out of memory");
    if (kn_qwen_dit_load(m, f, prefix, &k, err)) {
        free(m);
        return err->code;
    }
    *out = &m->base;
    return KN_OK;
}

static void family_free(kn_dit *d) {
    if (!d) return;
    kn_qwen_dit_free((kn_qwen_dit *)d);
    free(d);
}

/* comfy.lora.model_lora_keys_unet for model_base.QwenImage */
static const kn_key_alias lora_keys[] = {
    {"diffusion_model.", 0, 1, NULL}, {"lora_unet_", 1, 0, NULL},    {"", 0, 0, NULL},
    {"transformer.", 0, 0, NULL},     {"lycoris_", 1, 0, NULL},
};
static const char *const ref_methods[] = {[KN_QWEN_REF_INDEX] = "index",
                                          [KN_QWEN_REF_INDEX_TIMESTEP_ZERO] = "index_timestep_zero"};

/* ComfyUI: latent format Wan21 (5-D), ModelSamplingFlux with mu 1.15 */
const kn_dit_family kn_qwen_image_dit = {
    "qwen_image", "Qwen-Image", family_load, family_free, family_forward, &kn_latent_wan21, 5, KN_MS_FLUX, 1.15, 1.0,
    lora_keys,    5,            ref_methods, 2, "qwen_image", NULL,
};
