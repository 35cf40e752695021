/* EasyCache / LazyCache (pipelines/sampling/stepcache.h): ComfyUI's decision
 * rule on toy models whose numbers can be followed by hand. Inputs are
 * constant tensors x = n (call n), so every mean is exact:
 *   input_change = |x - x_prev|, k = |out - out_prev| / input_change,
 *   cumulative += k * input_change / |out_prev|, skip while < threshold. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipelines/sampling/stepcache.h"

#define SIDE 16 /* sub(x) = the 2x2 values at rows/cols 0 and 8 */
#define MAX_CALLS 16

/* A model with one output per slot, out = a[s] * x + b[s], run for slots
 * n-1 .. 0 (Kiln runs the uncond first); counts the calls it computed. */
typedef struct toy {
    kn_step_cache *c;
    int n_slots;
    float a[2], b[2];
    kn_tensor out[2];
    int computed;
} toy;

static void affine(kn_tensor *out, const kn_tensor *x, float a, float b) {
    const float *px = x->data;
    float *po = out->data;
    for (int64_t i = 0; i < kn_tensor_numel(x); i++) po[i] = a * px[i] + b;
}

/* LazyCache's inner: the guided prediction is slot 0's output. */
static int toy_guided(void *user, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err) {
    (void)sigma, (void)err;
    toy *t = user;
    affine(denoised, x, t->a[0], t->b[0]);
    t->computed++;
    return KN_OK;
}

/* EasyCache's inner: every slot's forward bracketed by reuse / store. */
static int toy_forwards(void *user, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err) {
    (void)sigma;
    toy *t = user;
    int any = 0;
    for (int s = t->n_slots - 1; s >= 0; s--) {
        int reused;
        KN_TRY(kn_easycache_reuse(t->c, s, x, &t->out[s], &reused, err));
        if (reused) continue;
        affine(&t->out[s], x, t->a[s], t->b[s]);
        KN_TRY(kn_easycache_store(t->c, s, x, &t->out[s], err));
        any = 1;
    }
    memcpy(denoised->data, t->out[0].data, kn_tensor_nbytes(denoised));
    t->computed += any;
    return KN_OK;
}

/* Runs the calls x = 1, 2, ... at the given sigmas; pattern gets 'C' per
 * computed call and 'S' per skipped one; out0[n] = slot 0's value at call n. */
static void run(kn_step_cache_opts o, const toy *proto, int lead, const unsigned char *lead_batch,
                const float *sigmas, int n, char *pattern, float *out0) {
    kn_model_sampling ms = {0};
    kn_err err = {0};
    int64_t ne[4] = {1, 1, SIDE, SIDE};
    kn_tensor x = {0}, den = {0};
    toy t = *proto;
    kn_step_cache c;
    CHECK(kn_model_sampling_flow(&ms, 1.0, 1.0, &err) == KN_OK, "%s", err.msg); /* percent_to_sigma(p) = 1 - p */
    kn_step_cache_init(&c, &o, &ms, o.kind == KN_STEP_CACHE_LAZY ? toy_guided : toy_forwards, &t);
    t.c = &c;
    int ok = kn_tensor_new(&x, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK &&
             kn_tensor_new(&den, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK;
    for (int s = 0; s < t.n_slots; s++) ok = ok && kn_tensor_new(&t.out[s], KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK;
    if (o.kind == KN_STEP_CACHE_EASY) ok = ok && kn_easycache_layout(&c, t.n_slots, lead, lead_batch, &err) == KN_OK;
    CHECK(ok, "setup: %s", err.msg);
    memset(pattern, '-', (size_t)n);
    for (int i = 0; ok && i < n; i++) {
        for (int64_t k = 0; k < kn_tensor_numel(&x); k++) ((float *)x.data)[k] = (float)(i + 1);
        int before = t.computed;
        CHECK(kn_step_cache_denoise(&c, &x, sigmas[i], &den, &err) == KN_OK, "%s", err.msg);
        pattern[i] = t.computed > before ? 'C' : 'S';
        out0[i] = ((float *)den.data)[SIDE + 3]; /* any value: all are equal */
    }
    pattern[n] = 0;
    int skips = 0;
    for (int i = 0; i < n; i++) skips += pattern[i] == 'S';
    CHECK(c.skipped == skips, "skipped count %d, pattern %s", c.skipped, pattern);
    kn_step_cache_free(&c);
    for (int s = 0; s < t.n_slots; s++) kn_tensor_free(&t.out[s]);
    kn_tensor_free(&x);
    kn_tensor_free(&den);
    kn_model_sampling_free(&ms);
}

int main(void) {
    const float all_in[9] = {0.95f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f, 0.2f};
    char p[MAX_CALLS + 1];
    float out[MAX_CALLS];

    /* LazyCache, out = 2x + 1, window everything, threshold 0.5:
     * 1, 2 computed (k = 2 known after 2); 3: 2*1/5 = 0.4 skip, out = 3 + (5 - 2) = 6;
     * 4: + 2*2/5 = 1.2 compute; 5: 2/9 skip; 6: + 4/9 = 0.67 compute;
     * 7: 2/13 skip, out = 7 + (13 - 6); 8: + 4/13 = 0.46 skip; 9: + 6/13 = 0.92 compute. */
    toy lazy = {.n_slots = 1, .a = {2, 0}, .b = {1, 0}};
    kn_step_cache_opts o = {KN_STEP_CACHE_LAZY, 0.5, 0.0, 1.0, 0};
    run(o, &lazy, 0, NULL, all_in, 9, p, out);
    CHECK(strcmp(p, "CCSCSCSSC") == 0, "LazyCache pattern %s", p);
    CHECK(out[2] == 6.0f && out[6] == 14.0f && out[7] == 15.0f, "reused outputs %g %g %g", out[2], out[6], out[7]);
    CHECK(out[3] == 9.0f && out[8] == 19.0f, "computed outputs %g %g", out[3], out[8]);

    /* threshold 0 never skips: the outputs are the model's */
    o.reuse_threshold = 0.0;
    run(o, &lazy, 0, NULL, all_in, 9, p, out);
    CHECK(strcmp(p, "CCCCCCCCC") == 0, "LazyCache threshold 0: %s", p);

    /* The window: start 0.5 (sigma <= 0.5), end 0.9 (sigma > 0.1), threshold 3.
     * LazyCache measures before the window too: 0.5 sets k, 0.4-0.2 skip, 0.1 and 0.05 run.
     * EasyCache starts measuring in the window: 0.5 and 0.4 run, 0.3 and 0.2 skip. */
    const float window[8] = {0.9f, 0.7f, 0.5f, 0.4f, 0.3f, 0.2f, 0.1f, 0.05f};
    o = (kn_step_cache_opts){KN_STEP_CACHE_LAZY, 3.0, 0.5, 0.9, 0};
    run(o, &lazy, 0, NULL, window, 8, p, out);
    CHECK(strcmp(p, "CCCSSSCC") == 0, "LazyCache window pattern %s", p);
    o.kind = KN_STEP_CACHE_EASY;
    const unsigned char one[1] = {1};
    run(o, &lazy, 0, one, window, 8, p, out);
    CHECK(strcmp(p, "CCCCSSCC") == 0, "EasyCache window pattern %s", p);

    /* EasyCache with cond (slot 0: 2x + 1) and uncond (slot 1: 4x) in one batch,
     * ComfyUI's [uncond, cond]: the uncond leads (k = 4) and |out_prev| is the
     * mean of both, 3x + 0.5. Threshold 0.5: 3: 4/6.5 compute; 4: 4/9.5 skip
     * (cond = 4 + (7 - 3) = 8); 5: + 8/9.5 compute; 6: 4/15.5 skip. */
    toy cfg = {.n_slots = 2, .a = {2, 4}, .b = {1, 0}};
    const unsigned char both[2] = {1, 1}, cond_only[2] = {1, 0};
    o = (kn_step_cache_opts){KN_STEP_CACHE_EASY, 0.5, 0.0, 1.0, 0};
    run(o, &cfg, 1, both, all_in, 6, p, out);
    CHECK(strcmp(p, "CCCSCS") == 0, "EasyCache batched pattern %s", p);
    CHECK(out[3] == 8.0f && out[4] == 11.0f, "batched outputs %g %g", out[3], out[4]);
    /* cond and uncond in separate batches (conditioning of other lengths): the cond
     * leads alone (k = 2, |out_prev| = 2x + 1): 3: 2/5 skip; 4: + 4/5 compute; 5: 2/9 skip. */
    run(o, &cfg, 0, cond_only, all_in, 6, p, out);
    CHECK(strcmp(p, "CCSCSC") == 0, "EasyCache separate-batches pattern %s", p);
    o.reuse_threshold = 0.0;
    run(o, &cfg, 1, both, all_in, 6, p, out);
    CHECK(strcmp(p, "CCCCCC") == 0, "EasyCache threshold 0: %s", p);

    kn_step_cache c = {.o = {KN_STEP_CACHE_EASY}, .skipped = 3};
    char line[128];
    kn_step_cache_summary(&c, 10, line, sizeof line);
    CHECK(strcmp(line, "EasyCache - skipped 3/10 steps (1.43x speedup).") == 0, "%s", line);
    o = (kn_step_cache_opts){KN_STEP_CACHE_LAZY, 0.2, 0.15, 0.95, 0};
    kn_step_cache_banner(&o, line, sizeof line);
    CHECK(strcmp(line, "LazyCache enabled - threshold: 0.2, start_percent: 0.15, end_percent: 0.95") == 0, "%s", line);

    printf("test_stepcache: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
