/* ComfyUI's step caches (comfy_extras/nodes_easycache.py): fewer model
 * forwards, on every family and device, by reusing the model's last change
 * of its input where the input has barely moved since.
 *
 * Both caches follow ComfyUI's decision rule, scalar for scalar in float32:
 * with sub(t) = t[..., ::8, ::8] and |.| the mean absolute value,
 *   input_change = |sub(x) - sub(x_prev)|          x_prev: input of the last computed call
 *   k            = |sub(out) - sub(out_prev)| / input_change   (set after each computed call)
 *   cumulative  += k * input_change / |out_prev|
 * and a call is skipped, its output being x + (out_prev - x_prev), while
 * cumulative < reuse_threshold; a computed call resets cumulative to 0. The
 * rule applies only at sigmas <= sigma(start_percent); at sigmas <=
 * sigma(end_percent) every call is computed and the state left alone. So a
 * skip needs two computed calls in the window first (EasyCache), or one
 * before it and one in it (LazyCache); reuse_threshold 0 never skips and
 * the result is the uncached one bit for bit.
 *
 * EasyCache wraps each diffusion-model forward (out = the model's raw
 * output, x its input), one cached change per conditioning entry (ComfyUI's
 * uuid). ComfyUI runs the entries whose conditioning shapes match in one
 * batch, ordered last entry first; the first entry of the first batch (the
 * "lead") is the one whose input and output are measured, |out_prev| is the
 * mean over that whole batch, and its decision holds for every entry of the
 * step. The caller states that layout (kn_easycache_layout), runs its model
 * through kn_step_cache_denoise (which marks the steps) and brackets every
 * forward with kn_easycache_reuse / kn_easycache_store.
 * LazyCache wraps the guided prediction as a whole (out = denoised after CFG
 * and its hooks): kn_step_cache_denoise does everything.
 *
 * Tensors are contiguous F32 CPU [B, C, ..., h, w], all of one shape. */
#ifndef KN_SAMPLING_STEPCACHE_H
#define KN_SAMPLING_STEPCACHE_H

#include <stdio.h>

#include "kernels/tensor.h"
#include "pipelines/sampling/samplers.h"
#include "pipelines/sampling/schedulers.h"

typedef enum kn_step_cache_kind {
    KN_STEP_CACHE_OFF = 0,
    KN_STEP_CACHE_EASY, /* EasyCache: per diffusion-model forward */
    KN_STEP_CACHE_LAZY, /* LazyCache: per guided prediction */
} kn_step_cache_kind;

/* What the EasyCache / LazyCache node puts on a MODEL. */
typedef struct kn_step_cache_opts {
    kn_step_cache_kind kind;
    double reuse_threshold, start_percent, end_percent;
    int verbose; /* log each decision */
} kn_step_cache_opts;

/* One sampling run's cache (ComfyUI clones the holder per run). */
typedef struct kn_step_cache {
    kn_step_cache_opts o;
    float start_t, end_t;     /* sigmas of start_percent and end_percent */
    kn_denoise_fn inner;      /* the guided model it wraps */
    void *inner_user;
    FILE *log;                /* verbose lines go here (NULL: none) */
    /* EasyCache's layout: the entries of a step */
    int n_slots, lead;
    unsigned char *lead_batch; /* per slot: runs in the lead's batch */
    kn_tensor *diff;           /* per slot (LazyCache: one): out - x of its last computed call */
    /* decision state */
    int started;               /* the lead has been seen in the window (ComfyUI's first_cond_uuid set) */
    int past_end, skip, have_input_change; /* this step's */
    int have_prev, have_rate, have_norm;
    float input_change, rate, cumulative, prev_norm;
    kn_tensor x_prev, out_prev; /* subsampled */
    double norm_sum;            /* this step's lead batch: sum of mean |out| */
    int norm_n;
    int skipped; /* steps skipped so far (ComfyUI's total_steps_skipped) */
} kn_step_cache;

/* c for a run of a model with model sampling ms: inner (with inner_user)
 * is the guided model kn_step_cache_denoise wraps. */
void kn_step_cache_init(kn_step_cache *c, const kn_step_cache_opts *o, const kn_model_sampling *ms,
                        kn_denoise_fn inner, void *inner_user);
void kn_step_cache_free(kn_step_cache *c);

/* EasyCache: the step's n_slots forwards (the caller's numbering), the
 * lead's slot, and per slot whether it runs in the lead's batch. Call once
 * before sampling. */
int kn_easycache_layout(kn_step_cache *c, int n_slots, int lead, const unsigned char *lead_batch, kn_err *err);

/* A kn_denoise_fn (user: the cache): one guided prediction through inner,
 * cached as the kind says. */
int kn_step_cache_denoise(void *cache, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err);

/* EasyCache, before slot's forward on input x: *reused = 1 when the step is
 * skipped, out then holding x + the slot's cached change. */
int kn_easycache_reuse(kn_step_cache *c, int slot, const kn_tensor *x, kn_tensor *out, int *reused, kn_err *err);
/* EasyCache, after slot's computed forward out = model(x). */
int kn_easycache_store(kn_step_cache *c, int slot, const kn_tensor *x, const kn_tensor *out, kn_err *err);

/* ComfyUI's closing line, "EasyCache - skipped 3/10 steps (1.43x speedup).",
 * for a schedule of total_steps steps. */
void kn_step_cache_summary(const kn_step_cache *c, int total_steps, char *buf, size_t len);
/* Its opening line, "EasyCache enabled - threshold: 0.2, start_percent: 0.15, end_percent: 0.95". */
void kn_step_cache_banner(const kn_step_cache_opts *o, char *buf, size_t len);
const char *kn_step_cache_name(kn_step_cache_kind kind);

#endif
