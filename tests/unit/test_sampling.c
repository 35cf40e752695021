/* Tests for the sampling math (pipelines/sampling) beyond what the shared
 * fixtures pin: properties every sampler must have, the generator against the
 * C++ standard's MT19937 check value, batch_index noise, schedule edge cases
 * (ddim_uniform against ComfyUI's loop for every step count),
 * CFG's pass counting, cancellation and the errors of bad requests. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/sampling/samplers.h"
#include "check.h"

#define N_LATENT (2 * 16 * 4 * 6)
static const int64_t latent_shape[4] = {2, 16, 4, 6};

/* A perfect model of one clean latent: D(x, sigma) = x0 for every x, sigma. */
typedef struct oracle {
    const float *x0;
    int calls[2]; /* per conditioning: positive, negative */
} oracle;

static int oracle_cond(void *user, const kn_tensor *x, float sigma, int negative, kn_tensor *den, kn_err *err) {
    oracle *o = user;
    o->calls[negative]++;
    for (int64_t i = 0; i < kn_tensor_numel(x); i++) ((float *)den->data)[i] = o->x0[i] + (negative ? 1.0f : 0.0f);
    (void)sigma, (void)err;
    return KN_OK;
}

static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static void test_mt19937(void) {
    kn_torch_rng g;
    kn_torch_rng_seed(&g, 5489); /* std::mt19937's default seed */
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) v = kn_torch_rng_u32(&g);
    CHECK(v == 4123659995u, "10000th output %u", v); /* the C++ standard's check value */
}

static void test_batch_index(void) {
    float whole[N_LATENT], item[N_LATENT / 2];
    kn_err err;
    kn_tensor t = kn_tensor_make(KN_F32, KN_DEV_CPU, whole, 4, latent_shape);
    int64_t one[4] = {1, 16, 4, 6};
    kn_tensor t1 = kn_tensor_make(KN_F32, KN_DEV_CPU, item, 4, one);
    /* 384-value items are whole blocks of 16: drawing item by item equals one draw over the batch */
    CHECK(kn_prepare_noise(&t, 7, NULL, 0, KN_RANDN_AVX2, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_prepare_noise(&t1, 7, (int64_t[]){1}, 1, KN_RANDN_AVX2, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(memcmp(item, whole + N_LATENT / 2, sizeof item) == 0, "batch_index [1] is not the second draw");
    CHECK(kn_prepare_noise(&t, 7, (int64_t[]){0, -1}, 2, KN_RANDN_AVX2, NULL, &err) == KN_ERR_INVALID,
          "negative index");
    CHECK(kn_prepare_noise(&t, 7, (int64_t[]){0, INT64_MAX}, 2, KN_RANDN_AVX2, NULL, &err) == KN_ERR_INVALID,
          "huge index");
    CHECK(kn_prepare_noise(&t, 7, (int64_t[]){0}, 1, KN_RANDN_AVX2, NULL, &err) == KN_ERR_SHAPE, "index count");
}

/* The initial noise of a huge latent looks at the interrupt flag every 2^20 values: a set flag stops
 * it (KN_ERR_CANCELLED) before the next chunk, and drawing in chunks changes no value. */
static void test_noise_cancel(void) {
    enum { CHUNK = 1 << 20 };
    const int64_t big[2] = {1, 3 * CHUNK + 8}, part[2] = {1, 2 * CHUNK};
    float *a = malloc((size_t)big[1] * sizeof *a), *b = malloc((size_t)part[1] * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    kn_err err;
    kn_tensor ta = kn_tensor_make(KN_F32, KN_DEV_CPU, a, 2, big), tb = kn_tensor_make(KN_F32, KN_DEV_CPU, b, 2, part);
    atomic_int cancel = 0;
    CHECK(kn_prepare_noise(&ta, 11, NULL, 0, KN_RANDN_AVX2, &cancel, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_prepare_noise(&tb, 11, NULL, 0, KN_RANDN_AVX2, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(memcmp(a, b, (size_t)part[1] * sizeof *a) == 0, "a draw across chunks equals the shorter draw it starts with");
    for (int64_t i = 0; i < big[1]; i++) a[i] = -1e30f;
    atomic_store(&cancel, 1);
    int rc = kn_prepare_noise(&ta, 11, NULL, 0, KN_RANDN_AVX2, &cancel, &err);
    CHECK(rc == KN_ERR_CANCELLED && strstr(err.msg, "interrupted"), "a set flag stops the noise: %d %s", rc, err.msg);
    CHECK(a[0] == -1e30f && a[big[1] - 1] == -1e30f, "before it draws the first chunk");
    rc = kn_prepare_noise(&ta, 11, (int64_t[]){0}, 1, KN_RANDN_AVX2, &cancel, &err);
    CHECK(rc == KN_ERR_CANCELLED, "also with a batch_index (%d)", rc);
    free(a);
    free(b);
}

static void test_schedules(void) {
    kn_model_sampling ms;
    kn_err err;
    float *s = NULL;
    int n = -1;
    CHECK(kn_model_sampling_flow(&ms, 3.0, 1.0, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_ksampler_sigmas(&ms, "simple", "euler", 8, 0.0, &s, &n, &err) == KN_OK && n == 0, "denoise 0: %d", n);
    free(s);
    CHECK(kn_ksampler_sigmas(&ms, "karras", "uni_pc", 8, 1.0, &s, &n, &err) == KN_OK && n == 9 && s[8] == 0.0f,
          "uni_pc schedule: %d values", n);
    free(s);
    CHECK(kn_ksampler_sigmas(&ms, "kl_optimal", "euler", 1, 1.0, &s, &n, &err) == KN_OK && n == 2 && isnan(s[0]),
          "kl_optimal 1 step is [NaN, 0] in ComfyUI");
    free(s);
    CHECK(kn_ksampler_sigmas(&ms, "simple", "euler", 10, 0.5, &s, &n, &err) == KN_OK && n == 11 &&
              s[0] == ms.sigmas[ms.n - 1 - (int)(10 * 1000.0 / 20)],
          "denoise 0.5 keeps the low end of a 20-step schedule");
    free(s);
    CHECK(kn_ksampler_sigmas(&ms, "nope", "euler", 4, 1.0, &s, &n, &err) == KN_ERR_NOT_FOUND, "unknown scheduler");
    CHECK(kn_ksampler_sigmas(&ms, "simple", "euler", 0, 1.0, &s, &n, &err) == KN_ERR_INVALID, "0 steps");
    kn_model_sampling_free(&ms);
}

/* comfy/samplers.py ddim_scheduler as its loop reads, into out (room for len + 1):
 *     x = 1; sigs = [] if isclose(sigmas[1], 0, abs_tol=1e-5) (and steps += 1) else [0.0]
 *     ss = max(len(sigmas) // steps, 1)
 *     while x < len(sigmas): sigs += [sigmas[x]]; x += ss
 *     return sigs[::-1] */
static int ddim_loop(const float *sigmas, int len, int steps, float *out) {
    float sigs[20001];
    int n = 0, x = 1;
    if (fabs((double)sigmas[x]) <= 1e-5)
        steps += 1;
    else
        sigs[n++] = 0.0f;
    int ss = len / steps;
    if (ss < 1) ss = 1;
    while (x < len) {
        sigs[n++] = sigmas[x];
        x += ss;
    }
    for (int i = 0; i < n; i++) out[i] = sigs[n - 1 - i];
    return n;
}

/* ddim_uniform is steps + 1 values only when len(sigmas) // steps happens to fit:
 * every step count 1..200 and the large ones against the loop, on the flow
 * (1000) and Flux (10000) tables and on a table whose second sigma is 0. */
static void test_ddim_uniform(void) {
    kn_model_sampling tables[3];
    kn_err err;
    CHECK(kn_model_sampling_flow(&tables[0], 3.1, 1.0, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_model_sampling_flux(&tables[1], 1.15, &err) == KN_OK, "%s", err.msg);
    static float zero_second[64];
    for (int i = 2; i < 64; i++) zero_second[i] = (float)i / 63.0f;
    tables[2] = (kn_model_sampling){KN_MS_DISCRETE_FLOW, 1.0, 1.0, 64, zero_second};
    static const int large[] = {333, 499, 500, 501, 999, 1000, 1001, 1500, 4999, 9999, 10000, 10001, 20000};
    static float want[20001];
    for (int t = 0; t < 3; t++) {
        const kn_model_sampling *ms = &tables[t];
        int bad = 0;
        for (int k = 0; k < 200 + (int)(sizeof large / sizeof large[0]); k++) {
            int steps = k < 200 ? k + 1 : large[k - 200];
            float *s = NULL;
            int n = 0, nw = ddim_loop(ms->sigmas, ms->n, steps, want);
            if (kn_scheduler_sigmas(ms, "ddim_uniform", steps, &s, &n, &err) != KN_OK || n != nw ||
                memcmp(s, want, (size_t)nw * sizeof *s) != 0) {
                if (bad++ < 3)
                    CHECK(0, "table of %d, %d steps: %d values, the loop gives %d (%s)", ms->n, steps, n, nw,
                          n == nw ? "values differ" : "lengths differ");
            }
            free(s);
        }
        CHECK(bad == 0, "table of %d: %d step counts differ from ComfyUI's loop", ms->n, bad);
    }
    /* lengths worked out by hand on the 1000-entry table: ss = 1000 // steps, x = 1, 1 + ss, ... < 1000, plus 0 */
    static const struct {
        int steps, n;
    } lengths[] = {{1, 2}, {4, 5}, {7, 9}, {200, 201}, {300, 334}, {999, 1000}, {1000, 1000}, {1500, 1000}};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        float *s = NULL;
        int n = 0, ss = 1000 / lengths[i].steps > 1 ? 1000 / lengths[i].steps : 1;
        int rc = kn_scheduler_sigmas(&tables[0], "ddim_uniform", lengths[i].steps, &s, &n, &err);
        CHECK(rc == KN_OK && n == lengths[i].n && s[0] == tables[0].sigmas[1 + (n - 2) * ss] && s[n - 1] == 0.0f,
              "%d steps: %d values, want %d from sigmas[%d] down to 0", lengths[i].steps, n, lengths[i].n,
              1 + (lengths[i].n - 2) * ss);
        free(s);
    }
    kn_model_sampling_free(&tables[0]);
    kn_model_sampling_free(&tables[1]);
}

/* Given the clean latent exactly, every sampler must end on it (uni_pc within its
 * 0.001 final sigma), whatever noise it adds on the way; CFG runs the negative
 * pass only when cfg is not 1. */
static void test_samplers(void) {
    static const char *names[] = {"euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun",
                                  "lcm", "res_multistep", "res_multistep_ancestral", "ddim", "uni_pc", "uni_pc_bh2"};
    float x0[N_LATENT], noise[N_LATENT], zeros[N_LATENT] = {0}, out[N_LATENT];
    kn_tensor tn = kn_tensor_make(KN_F32, KN_DEV_CPU, noise, 4, latent_shape);
    kn_tensor tx0 = kn_tensor_make(KN_F32, KN_DEV_CPU, x0, 4, latent_shape);
    kn_tensor tz = kn_tensor_make(KN_F32, KN_DEV_CPU, zeros, 4, latent_shape);
    kn_tensor to = kn_tensor_make(KN_F32, KN_DEV_CPU, out, 4, latent_shape);
    kn_err err;
    kn_model_sampling ms;
    CHECK(kn_model_sampling_flux(&ms, 1.15, &err) == KN_OK, "%s", err.msg);
    kn_prepare_noise(&tx0, 1, NULL, 0, KN_RANDN_AVX2, NULL, &err);
    kn_prepare_noise(&tn, 2, NULL, 0, KN_RANDN_AVX2, NULL, &err);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int guided = 0; guided < 2; guided++) {
            float *s;
            int n;
            CHECK(kn_ksampler_sigmas(&ms, "simple", names[i], 8, 1.0, &s, &n, &err) == KN_OK, "%s", err.msg);
            oracle o = {x0, {0, 0}};
            kn_cfg_guider g = {.model = oracle_cond, .user = &o, .cfg = guided ? 4.0 : 1.0};
            kn_sample_params p = {.sampler = names[i], .ms = &ms, .sigmas = s, .n_sigmas = n,
                                  .denoise = kn_cfg_denoise, .denoise_user = &g, .seed = 3};
            int rc = kn_sample(&p, NULL, &tn, &tz, &to, NULL, &err);
            CHECK(rc == KN_OK, "%s: %s", names[i], err.msg);
            /* cfg 4 against a negative prediction of x0 + 1 aims at x0 - 3 */
            for (int k = 0; guided && k < N_LATENT; k++) x0[k] -= 3.0f;
            double e = rel_err(out, x0, N_LATENT), tol = strncmp(names[i], "uni_pc", 6) == 0 ? 3e-3 : 1e-5;
            CHECK(e <= tol, "%s cfg %g: rel error %.3g to the clean latent", names[i], g.cfg, e);
            for (int k = 0; guided && k < N_LATENT; k++) x0[k] += 3.0f;
            CHECK(o.calls[1] == (guided ? o.calls[0] : 0), "%s: %d negative passes for %d positive", names[i],
                  o.calls[1], o.calls[0]);
            kn_cfg_guider_free(&g);
            free(s);
        }
    }
    kn_model_sampling_free(&ms);
}

static int count_steps(void *user, int step, int total, const kn_tensor *x, const kn_tensor *den, kn_err *err) {
    (*(int *)user)++;
    (void)step, (void)total, (void)x, (void)den, (void)err;
    return KN_OK;
}

static void test_cancel_and_errors(void) {
    float x[N_LATENT] = {0}, x0[N_LATENT] = {0};
    kn_tensor tx = kn_tensor_make(KN_F32, KN_DEV_CPU, x, 4, latent_shape);
    kn_err err;
    kn_model_sampling ms;
    kn_model_sampling_flow(&ms, 3.0, 1.0, &err);
    float s[5] = {1.0f, 0.75f, 0.5f, 0.25f, 0.0f};
    oracle o = {x0, {0, 0}};
    kn_cfg_guider g = {.model = oracle_cond, .user = &o, .cfg = 1.0};
    atomic_int cancel = 1;
    int steps = 0;
    kn_sample_params p = {.sampler = "euler", .ms = &ms, .sigmas = s, .n_sigmas = 5, .denoise = kn_cfg_denoise,
                          .denoise_user = &g, .progress = count_steps, .progress_user = &steps, .cancel = &cancel};
    CHECK(kn_sampler_run(&p, &tx, &err) != KN_OK && strstr(err.msg, "cancelled"), "cancel: %s", err.msg);
    CHECK(o.calls[0] == 1 && steps == 1, "cancel after the first step: %d calls, %d steps", o.calls[0], steps);
    p.cancel = NULL;
    p.sampler = "dpm_adaptive";
    CHECK(kn_sampler_run(&p, &tx, &err) == KN_ERR_UNSUPPORTED && strstr(err.msg, "dpm_adaptive"), "%s", err.msg);
    kn_model_sampling_free(&ms);
}

/* What the recording post-CFG hook was handed last (element 0 of each). */
static struct {
    float cond0, uncond0, denoised0;
    int had_uncond, calls;
} seen;

/* A post-CFG hook that records what it is handed and doubles the prediction. */
static int record(const kn_post_cfg *h, const kn_tensor *cond, const kn_tensor *uncond, kn_tensor *denoised,
                  kn_err *err) {
    seen.cond0 = ((const float *)cond->data)[0];
    seen.uncond0 = uncond ? ((const float *)uncond->data)[0] : NAN;
    seen.had_uncond = uncond != NULL;
    seen.denoised0 = ((float *)denoised->data)[0];
    seen.calls++;
    for (int64_t i = 0; i < kn_tensor_numel(denoised); i++) ((float *)denoised->data)[i] *= 2.0f;
    (void)h, (void)err;
    return KN_OK;
}

/* CFGNorm (ComfyUI's nodes_cfg.py) on the guider: the guided prediction x0 - 3 (cfg 4 against a
 * negative of x0 + 1) shrunk per latent pixel to the channel norm of x0, times the strength; hooks
 * run in order on each other's output and see the conditional and unconditional predictions
 * (none when cfg 1 skips the negative pass). */
static void test_post_cfg(void) {
    float x0[N_LATENT], x[N_LATENT] = {0}, out[N_LATENT];
    kn_tensor tx0 = kn_tensor_make(KN_F32, KN_DEV_CPU, x0, 4, latent_shape);
    kn_tensor tx = kn_tensor_make(KN_F32, KN_DEV_CPU, x, 4, latent_shape);
    kn_tensor to = kn_tensor_make(KN_F32, KN_DEV_CPU, out, 4, latent_shape);
    kn_err err;
    kn_prepare_noise(&tx0, 5, NULL, 0, KN_RANDN_AVX2, NULL, &err);
    for (int k = 0; k < N_LATENT; k++) x0[k] *= 0.5f; /* |x0 - 3| > |x0| almost everywhere: the clamp bites */
    for (int c = 0; c < 16; c++) x0[c * 24] = 60.0f; /* and not at pixel 0: norm 240 against 228 */
    kn_post_cfg hooks[2] = {{kn_cfg_norm, 0.8}, {record, 0.0}};
    oracle o = {x0, {0, 0}};
    kn_cfg_guider g = {.model = oracle_cond, .user = &o, .cfg = 4.0, .post = hooks, .n_post = 1};
    CHECK(kn_cfg_denoise(&g, &tx, 0.5f, &to, &err) == KN_OK, "%s", err.msg);
    const int64_t C = 16, plane = 4 * 6;
    double num = 0, den = 0;
    int clamped = 0, shrunk = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t p = 0; p < plane; p++) {
            double nc = 0, ng = 0;
            for (int64_t c = 0; c < C; c++) {
                double v = x0[(b * C + c) * plane + p];
                nc += v * v;
                ng += (v - 3) * (v - 3);
            }
            double scale = fmin(sqrt(nc) / (sqrt(ng) + 1e-8), 1.0);
            clamped += scale == 1.0;
            shrunk += scale < 1.0;
            for (int64_t c = 0; c < C; c++) {
                int64_t k = (b * C + c) * plane + p;
                double want = ((double)x0[k] - 3) * scale * 0.8;
                num += (out[k] - want) * (out[k] - want);
                den += want * want;
            }
        }
    CHECK(sqrt(num / den) < 1e-6 && clamped > 0 && shrunk > 0,
          "CFGNorm 0.8: rel error %.2g to the formula (%d pixels clamped at 1, %d shrunk)", sqrt(num / den), clamped,
          shrunk);
    /* a second hook sees the conditional and unconditional predictions and CFGNorm's output */
    g.n_post = 2;
    CHECK(kn_cfg_denoise(&g, &tx, 0.5f, &to, &err) == KN_OK, "%s", err.msg);
    CHECK(seen.calls == 1 && seen.had_uncond && seen.cond0 == x0[0] && seen.uncond0 == x0[0] + 1.0f,
          "the second hook gets cond %g and uncond %g", seen.cond0, seen.uncond0);
    CHECK(out[0] == 2.0f * seen.denoised0, "hooks chain: the second doubles CFGNorm's output");
    /* cfg 1: no negative pass, the hook gets no unconditional prediction; CFGNorm keeps cond (scale 1) */
    g.cfg = 1.0;
    o.calls[1] = 0;
    CHECK(kn_cfg_denoise(&g, &tx, 0.5f, &to, &err) == KN_OK, "%s", err.msg);
    CHECK(o.calls[1] == 0 && seen.calls == 2 && !seen.had_uncond && fabsf(out[5] - 2.0f * 0.8f * x0[5]) <= 1e-6f * fabsf(x0[5]),
          "cfg 1: no negative pass, no uncond for the hooks, CFGNorm scales cond by its strength");
    kn_cfg_guider_free(&g);
}

int main(void) {
    test_mt19937();
    test_batch_index();
    test_noise_cancel();
    test_schedules();
    test_ddim_uniform();
    test_samplers();
    test_cancel_and_errors();
    test_post_cfg();
    printf("test_sampling: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
