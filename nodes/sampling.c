/* Sampler nodes: KSampler, KSamplerAdvanced, SamplerCustomAdvanced and the
 * pieces it takes (RandomNoise, DisableNoise, KSamplerSelect, BasicScheduler,
 * BasicGuider, CFGGuider), and CFGNorm (a post-CFG hook on the MODEL), over
 * pipelines/sampling and the MODEL's diffusion model through its family
 * (latent format and layout, forward). Every entry of a CONDITIONING is run
 * with its own extras (reference latents) and the predictions averaged.
 * Before allocating, a sampler estimates one forward's peak from the token
 * count and the model's widths and refuses it above the memory budget
 * (nodes/model_store.h), naming its latent input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nodes/model_store.h"
#include "nodes/node.h"
#include "nodes/ranks.h"
#include "nodes/stepcache.h"
#include "pipelines/sampling/noise.h"
#include "pipelines/sampling/samplers.h"

/* ---- the model as the sampler sees it ----------------------------------------------- */

/* What the model reads of one conditioning entry, at the latent's batch size:
 * owned copies, made on the first step. */
typedef struct entry_input {
    kn_tensor context, pooled, guidance;
    kn_tensor *refs;              /* n_refs model-space reference latents */
    const kn_tensor **ref_ptrs;   /* refs[i] or their batch-repeated copies */
    kn_tensor *ref_copies;
    int n_refs, ready;
} entry_input;

/* A conditioning's prediction D(x, sigma) = x - v(x, t(sigma), cond) * sigma,
 * each entry run on its own and averaged (ComfyUI's calc_cond_batch). */
typedef struct dit_guide {
    const kn_node_env *env;
    const kn_model_obj *model;
    const kn_cond_obj *cond[2]; /* positive, negative */
    entry_input *in[2];         /* one per entry */
    kn_step_cache *cache;       /* EasyCache around each forward, NULL: none */
    kn_tensor t, v, one;        /* timestep [B], model output, one entry's prediction */
} dit_guide;

static void entry_input_free(entry_input *ci) {
    kn_tensor_free(&ci->context);
    kn_tensor_free(&ci->pooled);
    kn_tensor_free(&ci->guidance);
    for (int r = 0; r < ci->n_refs; r++) {
        if (ci->refs) kn_tensor_free(&ci->refs[r]);
        if (ci->ref_copies) kn_tensor_free(&ci->ref_copies[r]);
    }
    free(ci->refs);
    free(ci->ref_copies);
    free(ci->ref_ptrs);
}

static void dit_guide_free(dit_guide *g) {
    for (int i = 0; i < 2; i++) {
        for (int e = 0; g->in[i] && e < g->cond[i]->n; e++) entry_input_free(&g->in[i][e]);
        free(g->in[i]);
    }
    kn_tensor_free(&g->t);
    kn_tensor_free(&g->v);
    kn_tensor_free(&g->one);
}

/* src at the latent's batch: as it is, or a batch-1 tensor repeated (ComfyUI
 * repeats a batch-1 conditioning); the repeat is made once into *copy. */
static int batched(const kn_tensor *src, int64_t batch, const char *what, kn_tensor *copy, const kn_tensor **out,
                   kn_err *err) {
    *out = src;
    if (src->ne[0] == batch) return KN_OK;
    if (src->ne[0] != 1)
        return kn_fail(err, KN_ERR_SHAPE, "%s batch %lld does not match the latent batch %lld", what,
                       (long long)src->ne[0], (long long)batch);
    if (!copy->data) {
        int64_t ne[KN_MAX_DIMS];
        memcpy(ne, src->ne, sizeof ne);
        ne[0] = batch;
        KN_TRY(kn_tensor_new(copy, src->dtype, KN_DEV_CPU, src->ndim, ne, err));
        size_t row = kn_tensor_nbytes(src);
        for (int64_t b = 0; b < batch; b++) memcpy((char *)copy->data + b * row, src->data, row);
    }
    *out = copy;
    return KN_OK;
}

/* The entry's reference latents in model space (the family's process_in, as
 * Qwen-Image's extra_conds), repeated to the batch. */
static int entry_refs(const kn_dit *dit, const kn_cond_entry *e, int64_t b, entry_input *ci, kn_err *err) {
    ci->n_refs = e->n_refs;
    if (!e->n_refs) return KN_OK;
    ci->refs = calloc((size_t)e->n_refs, sizeof *ci->refs);
    ci->ref_copies = calloc((size_t)e->n_refs, sizeof *ci->ref_copies);
    ci->ref_ptrs = calloc((size_t)e->n_refs, sizeof *ci->ref_ptrs);
    if (!ci->refs || !ci->ref_copies || !ci->ref_ptrs) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    for (int r = 0; r < e->n_refs; r++) {
        const kn_tensor *raw = &e->refs[r]->samples;
        KN_TRY(kn_tensor_new(&ci->refs[r], KN_F32, KN_DEV_CPU, raw->ndim, raw->ne, err));
        if (kn_latent_process_in(dit->family->latent, raw, &ci->refs[r], err))
            return kn_err_wrap(err, "reference latent %d", r + 1);
        KN_TRY(batched(&ci->refs[r], b, "reference latent", &ci->ref_copies[r], &ci->ref_ptrs[r], err));
    }
    return KN_OK;
}

/* The diffusion model's output for in into g->v, on this process or across the ranks. */
static int dit_run(dit_guide *g, const kn_dit *dit, const kn_dit_input *in, kn_err *err) {
    kn_ctx *ctx = g->env->ctx;
    if (g->env->ranks) return kn_ranks_forward(g->env->ranks, ctx, g->model, dit, in, &g->v, err);
    if (kn_dit_forward(ctx, dit, in, &g->v, NULL, NULL)) {
        *err = ctx->err;
        return err->code;
    }
    return KN_OK;
}

/* One entry's prediction into denoised; slot: its number in the step (the
 * positive entries, then the negative ones). */
static int entry_denoise(dit_guide *g, const kn_cond_entry *e, entry_input *ci, int slot, const kn_tensor *x,
                         float sigma, kn_tensor *denoised, kn_err *err) {
    int64_t b = x->ne[0];
    const kn_tensor *context, *pooled = NULL;
    const kn_dit *dit;
    if (kn_model_dit(g->model, &dit, err)) return err->code;
    KN_TRY(batched(&e->t.cond, b, "conditioning", &ci->context, &context, err));
    if (e->t.pooled.data) KN_TRY(batched(&e->t.pooled, b, "pooled output", &ci->pooled, &pooled, err));
    if (e->has_guidance && !ci->guidance.data) {
        KN_TRY(kn_tensor_new(&ci->guidance, KN_F32, KN_DEV_CPU, 1, &b, err));
        for (int64_t i = 0; i < b; i++) ((float *)ci->guidance.data)[i] = (float)e->guidance;
    }
    if (!ci->ready) KN_TRY(entry_refs(dit, e, b, ci, err));
    ci->ready = 1;
    if (!g->t.data && kn_tensor_new(&g->t, KN_F32, KN_DEV_CPU, 1, &b, err)) return err->code;
    if (!g->v.data && kn_tensor_new(&g->v, KN_F32, KN_DEV_CPU, x->ndim, x->ne, err)) return err->code;
    float t = (float)kn_ms_timestep(&g->model->ms, sigma);
    for (int64_t i = 0; i < b; i++) ((float *)g->t.data)[i] = t;
    kn_dit_input in = {x,           &g->t,         context,           e->t.mask.data ? &e->t.mask : NULL,
                       pooled,      ci->guidance.data ? &ci->guidance : NULL,
                       ci->ref_ptrs, ci->n_refs,  dit->ref_method, NULL};
    int reused = 0;
    if (g->cache) KN_TRY(kn_easycache_reuse(g->cache, slot, x, &g->v, &reused, err));
    if (!reused) {
        KN_TRY(dit_run(g, dit, &in, err));
        if (g->cache) KN_TRY(kn_easycache_store(g->cache, slot, x, &g->v, err));
    }
    kn_ms_calculate_denoised(sigma, g->v.data, x->data, denoised->data, kn_tensor_numel(x));
    return KN_OK;
}

static int dit_denoise(void *user, const kn_tensor *x, float sigma, int negative, kn_tensor *denoised, kn_err *err) {
    dit_guide *g = user;
    const kn_cond_obj *co = g->cond[negative];
    if (!co) return kn_fail(err, KN_ERR_INVALID, "no negative conditioning");
    if (!g->in[negative] && !(g->in[negative] = calloc((size_t)co->n, sizeof *g->in[negative])))
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    const int first_slot = negative ? g->cond[0]->n : 0;
    if (co->n == 1) return entry_denoise(g, &co->e[0], &g->in[negative][0], first_slot, x, sigma, denoised, err);
    /* out = sum_i pred_i * 1 / (1e-37 + sum_i 1), in float32 as ComfyUI accumulates it */
    const int64_t n = kn_tensor_numel(x);
    float *acc = denoised->data;
    if (!g->one.data && kn_tensor_new(&g->one, KN_F32, KN_DEV_CPU, x->ndim, x->ne, err)) return err->code;
    memset(acc, 0, (size_t)n * sizeof *acc);
    float count = 1e-37f;
    for (int i = 0; i < co->n; i++) {
        if (entry_denoise(g, &co->e[i], &g->in[negative][i], first_slot + i, x, sigma, &g->one, err))
            return kn_err_wrap(err, "conditioning entry %d", i + 1);
        const float *p = g->one.data;
        for (int64_t k = 0; k < n; k++) acc[k] += p[k];
        count += 1.0f;
    }
    for (int64_t k = 0; k < n; k++) acc[k] /= count;
    return KN_OK;
}

/* Sampler steps -> the run's progress events; keeps the last prediction for
 * SamplerCustomAdvanced's denoised_output. */
typedef struct progress {
    const kn_node_env *env;
    kn_tensor *x0; /* NULL, or where to copy each step's denoised */
    const kn_latent_format *format; /* of the model's latents, for previews */
} progress;

static int on_progress(void *user, int step, int total, const kn_tensor *x, const kn_tensor *denoised, kn_err *err) {
    progress *p = user;
    if (p->x0) memcpy(p->x0->data, denoised->data, kn_tensor_nbytes(denoised));
    KN_TRY(p->env->step(p->env, step + 1, total, err));
    /* after the progress event, as ComfyUI sends its preview after "progress" */
    if (p->env->preview && p->format) p->env->preview(p->env, denoised, p->format);
    return KN_OK;
}

/* ---- the shared sampling path ------------------------------------------------------------ */

typedef struct sample_job {
    const kn_model_obj *model;
    const kn_cond_obj *positive, *negative; /* negative NULL: positive only */
    double cfg;
    const char *sampler;
    const float *sigmas;
    int n_sigmas;
    uint64_t seed;
    bool add_noise;
    const kn_latent_obj *latent;
    const char *latent_input; /* the node's latent input name, for errors */
    const char *cond_input[2]; /* the inputs positive and negative came from */
} sample_job;

/* fix_empty_latent_channels and the model's latent layout: [B, C, h, w], or
 * [B, C, 1, h, w] for families whose latents carry a frame axis. */
static int model_latent(kn_node_call *c, const kn_dit *dit, const kn_latent_obj *l, const char *input, kn_tensor *out) {
    const kn_tensor *s = &l->samples;
    int64_t n = kn_tensor_numel(s), nz = 0;
    for (const float *v = s->data; nz < n && v[nz] == 0.0f; nz++) {
    }
    bool empty = nz == n;
    if (s->ndim != 4 && !(s->ndim == 5 && s->ne[2] == 1))
        return kn_node_fail(c, input, KN_ERR_SHAPE, "%s needs a [B, C, h, w] or [B, C, 1, h, w] latent",
                            dit->family->title);
    if (!empty && s->ne[1] != dit->channels)
        return kn_node_fail(c, input, KN_ERR_SHAPE, "latent has %lld channels, %s needs %lld", (long long)s->ne[1],
                            dit->family->title, (long long)dit->channels);
    int64_t h = s->ne[s->ndim - 2], w = s->ne[s->ndim - 1];
    int64_t ne5[5] = {s->ne[0], dit->channels, 1, h, w}, ne4[4] = {s->ne[0], dit->channels, h, w};
    int five = dit->family->latent_ndim == 5;
    if (kn_tensor_zeros(out, KN_F32, five ? 5 : 4, five ? ne5 : ne4, c->err)) return c->err->code;
    if (!empty) memcpy(out->data, s->data, kn_tensor_nbytes(out));
    return KN_OK;
}

/* Every entry is as wide as the model reads (another family's text encoder
 * gives other widths: validation catches the graphs it can trace). */
static int check_conditioning(kn_node_call *c, const kn_dit *dit, const kn_cond_obj *cond, const char *input) {
    for (int i = 0; i < cond->n; i++) {
        const kn_tensor *t = &cond->e[i].t.cond;
        int64_t width = t->ne[t->ndim - 1];
        if (width != dit->context_dim)
            return kn_node_fail(c, input, KN_ERR_SHAPE,
                                "the conditioning is %lld wide; the %s diffusion model reads %lld-wide conditioning "
                                "(a text encoder of another family?)",
                                (long long)width, dit->family->title, (long long)dit->context_dim);
    }
    return KN_OK;
}

/* Tokens of one forward for entry e of a [.., h, w] latent: the image's, its reference latents' and the text's. */
static double entry_tokens(const kn_dit *dit, const kn_cond_entry *e, int64_t h, int64_t w) {
    const int64_t p = dit->patch > 0 ? dit->patch : 1;
    double tokens = (double)((h + p - 1) / p) * (double)((w + p - 1) / p) + (double)e->t.cond.ne[1];
    for (int r = 0; r < e->n_refs; r++) {
        const kn_tensor *ref = &e->refs[r]->samples;
        tokens += (double)((ref->ne[ref->ndim - 2] + p - 1) / p) * (double)((ref->ne[ref->ndim - 1] + p - 1) / p);
    }
    return tokens;
}

/* The peak of one forward, at least, against the memory budget: per token of
 * its longest entry, the block's hidden-wide rows (the stream, its norm, q, k,
 * v, the attention output, packed K and V, the modulated copies: ~10) and 3
 * feed-forward-wide ones, f32, for each image of the batch; beside them the
 * sampler's copies of the latent (noise, x, output, predictions: ~8). Attention
 * runs in query blocks (kernels/cpu/attention.c): no token x token buffer. */
static int check_peak(kn_node_call *c, const kn_dit *dit, const sample_job *j) {
    const kn_tensor *s = &j->latent->samples;
    const int64_t B = s->ne[0], h = s->ne[s->ndim - 2], w = s->ne[s->ndim - 1];
    const kn_cond_obj *conds[2] = {j->positive, j->negative};
    double tokens = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; conds[k] && i < conds[k]->n; i++) {
            double t = entry_tokens(dit, &conds[k]->e[i], h, w);
            if (t > tokens) tokens = t;
        }
    double need = 4.0 * (double)B * (tokens * (double)(10 * dit->dim + 3 * dit->mlp_hidden) +
                                     8.0 * (double)dit->channels * (double)h * (double)w);
    char what[256];
    snprintf(what, sizeof what, "sampling a %lldx%lld latent at batch %lld (%.0f tokens per forward) with the %s "
             "diffusion model", (long long)w, (long long)h, (long long)B, tokens, dit->family->title);
    return kn_models_check_peak(c, j->latent_input, need, what);
}

/* Samples job into *out (and the last prediction, process_out'd, into
 * *denoised_out when it is not NULL). */
static int run_sampling(kn_node_call *c, const sample_job *j, kn_latent_obj **out, kn_latent_obj **denoised_out) {
    kn_err *err = c->err;
    kn_tensor lat = {0}, noise = {0}, x0 = {0};
    kn_latent_obj *res = kn_latent_new(), *den = denoised_out ? kn_latent_new() : NULL;
    dit_guide guide = {.env = c->env, .model = j->model, .cond = {j->positive, j->negative}};
    kn_cfg_guider cfg = {.model = dit_denoise,
                         .user = &guide,
                         .cfg = j->negative ? j->cfg : 1.0,
                         .post = j->model->post_cfg,
                         .n_post = j->model->n_post_cfg};
    progress prog = {c->env, NULL, NULL};
    kn_step_cache cache;
    int cached = 0;
    int rc = (!res || (denoised_out && !den)) ? kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory") : KN_OK;
    const kn_dit *dit = NULL;
    if (!rc) rc = check_peak(c, j->model->weights->dit, j);
    /* before kn_model_dit patches the weights: what the budget releases goes first */
    if (!rc && kn_model_use(j->model, c->env->models, err)) rc = kn_node_fail(c, NULL, err->code, "%s", err->msg);
    if (!rc && kn_model_dit(j->model, &dit, err)) rc = kn_node_fail(c, "model", err->code, "%s", err->msg);
    if (!rc) prog.format = dit->family->latent;
    if (!rc) rc = model_latent(c, dit, j->latent, j->latent_input, &lat);
    if (!rc) rc = check_conditioning(c, dit, j->positive, j->cond_input[0]);
    if (!rc && j->negative) rc = check_conditioning(c, dit, j->negative, j->cond_input[1]);
    if (!rc) rc = kn_tensor_zeros(&noise, KN_F32, lat.ndim, lat.ne, err);
    if (!rc && j->add_noise) rc = kn_prepare_noise(&noise, j->seed, NULL, 0, KN_RANDN_AVX2, c->env->cancel, err);
    if (!rc) rc = kn_tensor_new(&res->samples, KN_F32, KN_DEV_CPU, lat.ndim, lat.ne, err);
    if (!rc && den) rc = kn_tensor_dup(&x0, &lat, err);
    if (!rc && den) prog.x0 = &x0;
    const kn_cond_obj *run_negative = kn_cfg_skips_uncond(cfg.cfg) ? NULL : j->negative;
    if (!rc)
        rc = kn_sampling_cache_start(&cache, j->model, j->positive, run_negative, kn_cfg_denoise, &cfg, &cached, err);
    if (!rc && cached && cache.o.kind == KN_STEP_CACHE_EASY) guide.cache = &cache;
    if (!rc) {
        kn_sample_params p = {.sampler = j->sampler,
                              .ms = &j->model->ms,
                              .sigmas = j->sigmas,
                              .n_sigmas = j->n_sigmas,
                              .denoise = cached ? kn_step_cache_denoise : kn_cfg_denoise,
                              .denoise_user = cached ? (void *)&cache : &cfg,
                              .seed = j->seed,
                              .randn_path = KN_RANDN_AVX2,
                              .progress = on_progress,
                              .progress_user = &prog,
                              .cancel = c->env->cancel};
        rc = kn_sample(&p, dit->family->latent, &noise, &lat, &res->samples, NULL, err);
    }
    if (!rc && den) {
        /* without steps there is no prediction: ComfyUI's denoised_output is then the output */
        rc = j->n_sigmas > 1 ? kn_tensor_new(&den->samples, KN_F32, KN_DEV_CPU, x0.ndim, x0.ne, err)
                             : kn_tensor_dup(&den->samples, &res->samples, err);
        if (!rc && j->n_sigmas > 1) rc = kn_latent_process_out(dit->family->latent, &x0, &den->samples, err);
    }
    if (cached) kn_sampling_cache_finish(&cache, j->n_sigmas - 1);
    dit_guide_free(&guide);
    kn_cfg_guider_free(&cfg);
    kn_tensor_free(&lat);
    kn_tensor_free(&noise);
    kn_tensor_free(&x0);
    if (rc) {
        if (res) kn_object_release(&res->base);
        if (den) kn_object_release(&den->base);
        return rc;
    }
    *out = res;
    if (denoised_out) *denoised_out = den;
    return KN_OK;
}

/* ---- KSampler / KSamplerAdvanced ------------------------------------------------------------ */

typedef struct ksampler_args {
    kn_object *model, *positive, *negative, *latent;
    int64_t seed, steps;
    double cfg;
    const char *sampler, *scheduler;
} ksampler_args;

static int ksampler_inputs(kn_node_call *c, const char *seed_name, ksampler_args *a) {
    if (kn_in_object(c, "model", "MODEL", &a->model) || kn_in_int(c, seed_name, &a->seed) ||
        kn_in_int(c, "steps", &a->steps) || kn_in_float(c, "cfg", &a->cfg) ||
        kn_in_string(c, "sampler_name", &a->sampler) || kn_in_string(c, "scheduler", &a->scheduler) ||
        kn_in_object(c, "positive", "CONDITIONING", &a->positive) ||
        kn_in_object(c, "negative", "CONDITIONING", &a->negative) ||
        kn_in_object(c, "latent_image", "LATENT", &a->latent))
        return c->err->code;
    return KN_OK;
}

/* common_ksampler with KSampler.sample's step window: sigmas[start_step:]
 * and sigmas[:last_step + 1] (last set to 0 when force_full_denoise). */
static int common_ksampler(kn_node_call *c, const ksampler_args *a, double denoise, bool add_noise, int64_t start_step,
                           int64_t last_step, bool force_full_denoise) {
    const kn_model_obj *model = (const kn_model_obj *)a->model;
    float *sigmas = NULL;
    int n = 0;
    if (kn_ksampler_sigmas(&model->ms, a->scheduler, a->sampler, (int)a->steps, denoise, &sigmas, &n, c->err))
        return kn_node_fail(c, "scheduler", c->err->code, "%s", c->err->msg);
    if (last_step >= 0 && last_step < n - 1) {
        n = (int)last_step + 1;
        if (force_full_denoise) sigmas[n - 1] = 0.0f;
    }
    int first = 0;
    if (start_step > 0) {
        if (start_step >= n - 1) { /* nothing left to do: the latent comes back as it is */
            free(sigmas);
            kn_out_object(c, 0, kn_object_retain(a->latent));
            return KN_OK;
        }
        first = (int)start_step;
    }
    sample_job j = {model,
                    (const kn_cond_obj *)a->positive,
                    (const kn_cond_obj *)a->negative,
                    a->cfg,
                    a->sampler,
                    sigmas + first,
                    n - first,
                    (uint64_t)a->seed,
                    add_noise,
                    (const kn_latent_obj *)a->latent,
                    "latent_image",
                    {"positive", "negative"}};
    kn_latent_obj *out = NULL;
    int rc = run_sampling(c, &j, &out, NULL);
    free(sigmas);
    if (!rc) kn_out_object(c, 0, &out->base);
    return rc;
}

static int ksampler(kn_node_call *c) {
    ksampler_args a;
    double denoise;
    if (ksampler_inputs(c, "seed", &a) || kn_in_float(c, "denoise", &denoise)) return c->err->code;
    return common_ksampler(c, &a, denoise, true, -1, -1, false);
}

static int ksampler_advanced(kn_node_call *c) {
    ksampler_args a;
    const char *add_noise, *leftover;
    int64_t start, end;
    if (ksampler_inputs(c, "noise_seed", &a) || kn_in_string(c, "add_noise", &add_noise) ||
        kn_in_int(c, "start_at_step", &start) || kn_in_int(c, "end_at_step", &end) ||
        kn_in_string(c, "return_with_leftover_noise", &leftover))
        return c->err->code;
    return common_ksampler(c, &a, 1.0, strcmp(add_noise, "disable") != 0, start, end,
                           strcmp(leftover, "disable") == 0);
}

/* ---- SamplerCustomAdvanced and its parts --------------------------------------------------- */

static int sampler_custom_advanced(kn_node_call *c) {
    kn_object *noise, *guider, *sampler, *sigmas, *latent;
    if (kn_in_object(c, "noise", "NOISE", &noise) || kn_in_object(c, "guider", "GUIDER", &guider) ||
        kn_in_object(c, "sampler", "SAMPLER", &sampler) || kn_in_object(c, "sigmas", "SIGMAS", &sigmas) ||
        kn_in_object(c, "latent_image", "LATENT", &latent))
        return c->err->code;
    const kn_guider_obj *g = (const kn_guider_obj *)guider;
    const kn_sigmas_obj *s = (const kn_sigmas_obj *)sigmas;
    const kn_noise_obj *nz = (const kn_noise_obj *)noise;
    sample_job j = {g->model,   g->positive, g->negative, g->cfg, ((const kn_sampler_obj *)sampler)->name,
                    s->sigmas,  s->n,        nz->seed,    !nz->disabled, (const kn_latent_obj *)latent,
                    "latent_image", {"guider", "guider"}};
    kn_latent_obj *out = NULL, *den = NULL;
    if (run_sampling(c, &j, &out, &den)) return c->err->code;
    kn_out_object(c, 0, &out->base);
    kn_out_object(c, 1, &den->base);
    return KN_OK;
}

static int make_noise(kn_node_call *c, uint64_t seed, bool disabled) {
    kn_noise_obj *n = (kn_noise_obj *)kn_simple_new("NOISE", sizeof *n);
    if (!n) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    n->seed = seed;
    n->disabled = disabled;
    kn_out_object(c, 0, &n->base);
    return KN_OK;
}

static int random_noise(kn_node_call *c) {
    int64_t seed;
    if (kn_in_int(c, "noise_seed", &seed)) return c->err->code;
    return make_noise(c, (uint64_t)seed, false);
}

static int disable_noise(kn_node_call *c) { return make_noise(c, 0, true); }

static int ksampler_select(kn_node_call *c) {
    const char *name;
    if (kn_in_string(c, "sampler_name", &name)) return c->err->code;
    kn_sampler_obj *s = (kn_sampler_obj *)kn_simple_new("SAMPLER", sizeof *s);
    if (!s) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    snprintf(s->name, sizeof s->name, "%s", name);
    kn_out_object(c, 0, &s->base);
    return KN_OK;
}

/* BasicScheduler: int(steps / denoise) scheduler steps, keeping the last steps + 1 sigmas. */
static int basic_scheduler(kn_node_call *c) {
    kn_object *model;
    const char *scheduler;
    int64_t steps;
    double denoise;
    if (kn_in_object(c, "model", "MODEL", &model) || kn_in_string(c, "scheduler", &scheduler) ||
        kn_in_int(c, "steps", &steps) || kn_in_float(c, "denoise", &denoise))
        return c->err->code;
    kn_sigmas_obj *s = (kn_sigmas_obj *)kn_simple_new("SIGMAS", sizeof *s);
    if (!s) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (denoise > 0) {
        int64_t total = denoise < 1.0 ? (int64_t)(steps / denoise) : steps;
        if (kn_scheduler_sigmas(&((kn_model_obj *)model)->ms, scheduler, (int)total, &s->sigmas, &s->n, c->err)) {
            kn_object_release(&s->base);
            return kn_node_fail(c, "scheduler", c->err->code, "%s", c->err->msg);
        }
        int keep = s->n < steps + 1 ? s->n : (int)steps + 1;
        memmove(s->sigmas, s->sigmas + (s->n - keep), (size_t)keep * sizeof *s->sigmas);
        s->n = keep;
    }
    kn_out_object(c, 0, &s->base);
    return KN_OK;
}

static int make_guider(kn_node_call *c, kn_object *model, kn_object *positive, kn_object *negative, double cfg) {
    kn_guider_obj *g = (kn_guider_obj *)kn_simple_new("GUIDER", sizeof *g);
    if (!g) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    g->model = (kn_model_obj *)kn_object_retain(model);
    g->positive = (kn_cond_obj *)kn_object_retain(positive);
    g->negative = (kn_cond_obj *)kn_object_retain(negative);
    g->cfg = cfg;
    kn_out_object(c, 0, &g->base);
    return KN_OK;
}

static int basic_guider(kn_node_call *c) {
    kn_object *model, *cond;
    if (kn_in_object(c, "model", "MODEL", &model) || kn_in_object(c, "conditioning", "CONDITIONING", &cond))
        return c->err->code;
    return make_guider(c, model, cond, NULL, 1.0);
}

static int cfg_guider(kn_node_call *c) {
    kn_object *model, *pos, *neg;
    double cfg;
    if (kn_in_object(c, "model", "MODEL", &model) || kn_in_object(c, "positive", "CONDITIONING", &pos) ||
        kn_in_object(c, "negative", "CONDITIONING", &neg) || kn_in_float(c, "cfg", &cfg))
        return c->err->code;
    return make_guider(c, model, pos, neg, cfg);
}

/* CFGNorm: a MODEL like `model` with a post-CFG hook that shrinks the guided
 * prediction to the conditional one's channel norm (kn_cfg_norm). */
static int cfg_norm(kn_node_call *c) {
    kn_object *in;
    double strength;
    if (kn_in_object(c, "model", "MODEL", &in) || kn_in_float(c, "strength", &strength)) return c->err->code;
    const kn_model_obj *from = (const kn_model_obj *)in;
    if (from->n_post_cfg == KN_MAX_POST_CFG)
        return kn_node_fail(c, "model", KN_ERR_UNSUPPORTED, "the model already has %d post-CFG hooks",
                            KN_MAX_POST_CFG);
    kn_model_obj *m = kn_model_clone(from, c->err);
    if (!m) return kn_node_fail(c, NULL, c->err->code, "%s", c->err->msg);
    m->post_cfg[m->n_post_cfg++] = (kn_post_cfg){kn_cfg_norm, strength};
    kn_out_object(c, 0, &m->base);
    return KN_OK;
}

const kn_node_def kn_nodes_sampling[] = {
    {"KSampler", ksampler},
    {"KSamplerAdvanced", ksampler_advanced},
    {"SamplerCustomAdvanced", sampler_custom_advanced},
    {"RandomNoise", random_noise},
    {"DisableNoise", disable_noise},
    {"KSamplerSelect", ksampler_select},
    {"BasicScheduler", basic_scheduler},
    {"BasicGuider", basic_guider},
    {"CFGGuider", cfg_guider},
    {"CFGNorm", cfg_norm},
    {NULL, NULL},
};
