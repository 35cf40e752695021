/* ComfyUI's EasyCache and LazyCache (comfy_extras/nodes_easycache.py). */
#include "pipelines/sampling/stepcache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SUBSAMPLE 8 /* ComfyUI's subsample_factor */

const char *kn_step_cache_name(kn_step_cache_kind kind) {
    return kind == KN_STEP_CACHE_LAZY ? "LazyCache" : "EasyCache";
}

void kn_step_cache_init(kn_step_cache *c, const kn_step_cache_opts *o, const kn_model_sampling *ms,
                        kn_denoise_fn inner, void *inner_user) {
    memset(c, 0, sizeof *c);
    c->o = *o;
    c->start_t = (float)kn_ms_percent_to_sigma(ms, o->start_percent);
    c->end_t = (float)kn_ms_percent_to_sigma(ms, o->end_percent);
    c->inner = inner;
    c->inner_user = inner_user;
    c->lead = -1;
}

void kn_step_cache_free(kn_step_cache *c) {
    int n = c->o.kind == KN_STEP_CACHE_LAZY ? 1 : c->n_slots;
    for (int i = 0; c->diff && i < n; i++) kn_tensor_free(&c->diff[i]);
    free(c->diff);
    free(c->lead_batch);
    kn_tensor_free(&c->x_prev);
    kn_tensor_free(&c->out_prev);
    memset(c, 0, sizeof *c);
}

int kn_easycache_layout(kn_step_cache *c, int n_slots, int lead, const unsigned char *lead_batch, kn_err *err) {
    if (n_slots < 1 || lead < 0 || lead >= n_slots || !lead_batch[lead])
        return kn_fail(err, KN_ERR_INVALID, "EasyCache: lead %d of %d entries is not in its own batch", lead, n_slots);
    c->diff = calloc((size_t)n_slots, sizeof *c->diff);
    c->lead_batch = malloc((size_t)n_slots);
    if (!c->diff || !c->lead_batch) return kn_fail(err, KN_ERR_NOMEM, "EasyCache: out of memory");
    memcpy(c->lead_batch, lead_batch, (size_t)n_slots);
    c->n_slots = n_slots;
    c->lead = lead;
    return KN_OK;
}

/* ---- the measurements: t[..., ::8, ::8] and mean absolute values ------------------------ */

static int64_t sub_len(int64_t n) { return (n + SUBSAMPLE - 1) / SUBSAMPLE; }

/* Runs body for each value v of t[..., ::8, ::8], i counting them in order. */
#define FOR_SUB(t, i, v, body)                                                                          \
    do {                                                                                                \
        const int64_t h_ = (t)->ne[(t)->ndim - 2], w_ = (t)->ne[(t)->ndim - 1];                         \
        const int64_t outer_ = kn_tensor_numel(t) / (h_ * w_);                                          \
        const float *d_ = (t)->data;                                                                    \
        int64_t i = 0;                                                                                  \
        for (int64_t o_ = 0; o_ < outer_; o_++)                                                         \
            for (int64_t y_ = 0; y_ < h_; y_ += SUBSAMPLE)                                              \
                for (int64_t x_ = 0; x_ < w_; x_ += SUBSAMPLE, i++) {                                   \
                    const float v = d_[(o_ * h_ + y_) * w_ + x_];                                       \
                    body;                                                                               \
                }                                                                                       \
    } while (0)

static int sub_store(kn_tensor *dst, const kn_tensor *t, kn_err *err) {
    if (!dst->data) {
        int64_t n = kn_tensor_numel(t) / (t->ne[t->ndim - 2] * t->ne[t->ndim - 1]);
        n *= sub_len(t->ne[t->ndim - 2]) * sub_len(t->ne[t->ndim - 1]);
        KN_TRY(kn_tensor_new(dst, KN_F32, KN_DEV_CPU, 1, &n, err));
    }
    float *s = dst->data;
    FOR_SUB(t, i, v, s[i] = v);
    return KN_OK;
}

/* (sub(t) - prev).abs().mean(): the mean in double, rounded once (torch's float32 mean). */
static float sub_change(const kn_tensor *t, const kn_tensor *prev) {
    const float *p = prev->data;
    double acc = 0.0;
    FOR_SUB(t, i, v, acc += fabsf(v - p[i]));
    return (float)(acc / (double)kn_tensor_numel(prev));
}

static double mean_abs(const kn_tensor *t) {
    const float *d = t->data;
    const int64_t n = kn_tensor_numel(t);
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) acc += fabsf(d[i]);
    return acc / (double)n;
}

/* dst = a - b, or a + b, into dst (allocated like a on first use). */
static int combine(kn_tensor *dst, const kn_tensor *a, const kn_tensor *b, float sign, kn_err *err) {
    if (!dst->data) KN_TRY(kn_tensor_new(dst, KN_F32, KN_DEV_CPU, a->ndim, a->ne, err));
    float *o = dst->data;
    const float *pa = a->data, *pb = b->data;
    const int64_t n = kn_tensor_numel(a);
    for (int64_t i = 0; i < n; i++) o[i] = pa[i] + sign * pb[i];
    return KN_OK;
}

/* ---- the decision ------------------------------------------------------------------------ */

static void say(const kn_step_cache *c, const char *what) {
    if (c->o.verbose && c->log)
        fprintf(c->log, "%s [verbose] - %s; cumulative_change_rate: %g, reuse_threshold: %g\n",
                kn_step_cache_name(c->o.kind), what, (double)c->cumulative, c->o.reuse_threshold);
}

/* input_change against the last computed input, and whether to skip
 * (can_apply: a cached change exists for everything the step runs). */
static int decide(kn_step_cache *c, const kn_tensor *x, int can_apply) {
    c->have_input_change = c->have_prev;
    if (!c->have_prev) return 0;
    c->input_change = sub_change(x, &c->x_prev);
    if (!c->have_norm || !c->have_rate) return 0;
    /* float32 tensors in ComfyUI, the threshold compared as float32 */
    float approx = c->rate * c->input_change / c->prev_norm;
    c->cumulative = c->cumulative + approx;
    if (c->cumulative < (float)c->o.reuse_threshold && can_apply) {
        say(c, "skipping step");
        c->skipped++;
        return 1;
    }
    say(c, "NOT skipping step");
    c->cumulative = 0.0f;
    return 0;
}

/* After a computed call with output out (measured: the lead's) on input x. */
static int measure(kn_step_cache *c, const kn_tensor *x, const kn_tensor *out, kn_err *err) {
    if (c->have_norm && c->have_input_change) c->rate = sub_change(out, &c->out_prev) / c->input_change;
    if (c->have_norm && c->have_input_change) c->have_rate = 1;
    KN_TRY(sub_store(&c->x_prev, x, err));
    KN_TRY(sub_store(&c->out_prev, out, err));
    c->have_prev = 1;
    return KN_OK;
}

/* ---- LazyCache: the guided prediction ------------------------------------------------------ */

static int lazy_denoise(kn_step_cache *c, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err) {
    if (!(sigma > c->end_t)) return c->inner(c->inner_user, x, sigma, denoised, err);
    c->have_input_change = 0;
    if (sigma <= c->start_t && decide(c, x, 1)) return combine(denoised, x, &c->diff[0], 1.0f, err);
    KN_TRY(c->inner(c->inner_user, x, sigma, denoised, err));
    KN_TRY(measure(c, x, denoised, err));
    KN_TRY(combine(&c->diff[0], denoised, x, -1.0f, err));
    c->prev_norm = (float)mean_abs(denoised);
    c->have_norm = 1;
    return KN_OK;
}

/* ---- EasyCache: the forwards of a step ------------------------------------------------------ */

int kn_easycache_reuse(kn_step_cache *c, int slot, const kn_tensor *x, kn_tensor *out, int *reused, kn_err *err) {
    *reused = 0;
    if (c->past_end || !c->skip || !c->diff[slot].data) return KN_OK;
    KN_TRY(combine(out, x, &c->diff[slot], 1.0f, err));
    *reused = 1;
    return KN_OK;
}

int kn_easycache_store(kn_step_cache *c, int slot, const kn_tensor *x, const kn_tensor *out, kn_err *err) {
    if (c->past_end) return KN_OK;
    KN_TRY(combine(&c->diff[slot], out, x, -1.0f, err));
    if (!c->started || !c->lead_batch[slot]) return KN_OK;
    if (slot == c->lead) KN_TRY(measure(c, x, out, err));
    /* the lead's batch is one tensor in ComfyUI: its mean over every entry */
    c->norm_sum += mean_abs(out);
    c->norm_n++;
    return KN_OK;
}

/* The step's decision, made where ComfyUI's lead forward makes it (the
 * lead's batch runs first and every entry reads the same x). */
static void easy_step(kn_step_cache *c, const kn_tensor *x, float sigma) {
    c->skip = 0;
    c->have_input_change = 0;
    c->norm_sum = 0.0;
    c->norm_n = 0;
    c->past_end = !(sigma > c->end_t);
    if (c->past_end || !(sigma <= c->start_t)) return;
    c->started = 1;
    int can_apply = 1;
    for (int s = 0; s < c->n_slots; s++)
        if (c->lead_batch[s] && !c->diff[s].data) can_apply = 0;
    c->skip = decide(c, x, can_apply);
}

int kn_step_cache_denoise(void *cache, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err) {
    kn_step_cache *c = cache;
    if (c->o.kind == KN_STEP_CACHE_LAZY) {
        if (!c->diff && !(c->diff = calloc(1, sizeof *c->diff)))
            return kn_fail(err, KN_ERR_NOMEM, "LazyCache: out of memory");
        return lazy_denoise(c, x, sigma, denoised, err);
    }
    if (c->o.kind != KN_STEP_CACHE_EASY || !c->diff)
        return kn_fail(err, KN_ERR_INVALID, "EasyCache: no layout given");
    easy_step(c, x, sigma);
    KN_TRY(c->inner(c->inner_user, x, sigma, denoised, err));
    if (c->norm_n > 0) {
        c->prev_norm = (float)(c->norm_sum / c->norm_n);
        c->have_norm = 1;
    }
    return KN_OK;
}

void kn_step_cache_summary(const kn_step_cache *c, int total_steps, char *buf, size_t len) {
    int left = total_steps - c->skipped;
    double speedup = left > 0 ? (double)total_steps / left : 1.0;
    snprintf(buf, len, "%s - skipped %d/%d steps (%.2fx speedup).", kn_step_cache_name(c->o.kind), c->skipped,
             total_steps, speedup);
}

void kn_step_cache_banner(const kn_step_cache_opts *o, char *buf, size_t len) {
    snprintf(buf, len, "%s enabled - threshold: %g, start_percent: %g, end_percent: %g", kn_step_cache_name(o->kind),
             o->reuse_threshold, o->start_percent, o->end_percent);
}
