/* Fixture runner for ComfyUI's sampling math (component "sampling", one sub-folder each):
 *   sampling/noise      prepare_noise on both torch CPU kernels, bit for bit
 *   sampling/schedules  KSampler sigmas for every scheduler, model sampling, steps, denoise
 *   sampling/model_io   model-sampling conversions and latent formats
 *   sampling/samplers   whole KSampler runs with the fixture's linear toy model */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/sampling/samplers.h"
#include "pipelines/fixture.h"

/* ---- inputs ------------------------------------------------------------------------------------ */

/* in.<name> as a new contiguous F32 CPU tensor (the file's bytes carry no alignment promise). */
static int input_f32(const kn_fixture_case *c, const char *name, kn_tensor *out, kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_fixture_input(c, name, &t, err));
    KN_TRY(kn_tensor_new(out, KN_F32, KN_DEV_CPU, t.ndim, t.ne, err));
    int rc = kn_tensor_copy(out, &t, err);
    if (rc) kn_tensor_free(out);
    return rc;
}

/* in.<name> as int64 values; *n = how many (at most max). */
static int input_i64(const kn_fixture_case *c, const char *name, int64_t *vals, int max, int *n, kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_fixture_input(c, name, &t, err));
    int64_t count = kn_tensor_numel(&t);
    if (t.dtype != KN_I64 || count > max)
        return kn_fail(err, KN_ERR_FORMAT, "in.%s: expected at most %d I64 values", name, max);
    memcpy(vals, t.data, (size_t)count * sizeof *vals);
    *n = (int)count;
    return KN_OK;
}

static int emit_values(kn_fixture_results *res, const char *name, float *v, int64_t n, kn_err *err) {
    kn_tensor t = kn_tensor_make(KN_F32, KN_DEV_CPU, v, 1, &n);
    return kn_fixture_emit(res, name, &t, err);
}

static double param(const json_t *obj, const char *key, double dflt) {
    const json_t *v = json_object_get(obj, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* The model sampling a case's ModelSampling* node patches in. */
static int node_model_sampling(const kn_fixture_case *c, kn_model_sampling *ms, kn_err *err) {
    const char *node = json_string_value(json_object_get(c->info, "node"));
    const json_t *p = json_object_get(c->info, "node_params");
    if (node && strcmp(node, "ModelSamplingFlux") == 0)
        return kn_model_sampling_flux(ms,
                                      kn_flux_mu(param(p, "max_shift", 1.15), param(p, "base_shift", 0.5),
                                                 (int)param(p, "width", 1024), (int)param(p, "height", 1024)),
                                      err);
    if (node && strcmp(node, "ModelSamplingAuraFlow") == 0)
        return kn_model_sampling_flow(ms, param(p, "shift", 1.73), 1.0, err);
    if (node && strcmp(node, "ModelSamplingSD3") == 0) return kn_model_sampling_flow(ms, param(p, "shift", 3.0), 1000.0, err);
    return kn_fail(err, KN_ERR_UNSUPPORTED, "model sampling node '%s'", node ? node : "(none)");
}

/* ---- sampling/noise ---------------------------------------------------------------------------- */

static int run_noise(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    int64_t seed, shape[KN_MAX_DIMS], index[64];
    int n = 0, ndim = 0, n_index = 0;
    KN_TRY(input_i64(c, "seed", &seed, 1, &n, err));
    KN_TRY(input_i64(c, "shape", shape, KN_MAX_DIMS, &ndim, err));
    int has_index = kn_st_find(c->data, "in.batch_index") != NULL;
    if (has_index) KN_TRY(input_i64(c, "batch_index", index, 64, &n_index, err));
    kn_tensor noise;
    KN_TRY(kn_tensor_new(&noise, KN_F32, KN_DEV_CPU, ndim, shape, err));
    static const struct {
        const char *out;
        kn_randn_path path;
    } paths[] = {{"out.noise", KN_RANDN_AVX2}, {"out.noise_scalar", KN_RANDN_SCALAR}};
    int rc = KN_OK;
    for (size_t i = 0; !rc && i < sizeof paths / sizeof paths[0]; i++) {
        rc = kn_prepare_noise(&noise, (uint64_t)seed, has_index ? index : NULL, n_index, paths[i].path, NULL, err);
        if (!rc) rc = kn_fixture_emit(res, paths[i].out, &noise, err);
    }
    kn_tensor_free(&noise);
    return rc;
}

/* ---- sampling/schedules ------------------------------------------------------------------------- */

static int run_schedules(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_model_sampling ms;
    KN_TRY(node_model_sampling(c, &ms, err));
    float lo = kn_ms_sigma_min(&ms), hi = kn_ms_sigma_max(&ms);
    int rc = emit_values(res, "out.model_sampling_sigmas", ms.sigmas, ms.n, err);
    if (!rc) rc = emit_values(res, "out.sigma_min", &lo, 1, err);
    if (!rc) rc = emit_values(res, "out.sigma_max", &hi, 1, err);
    const char *key;
    const json_t *k;
    json_object_foreach(json_object_get(c->info, "keys"), key, k) {
        if (rc) break;
        const char *sched = json_string_value(json_object_get(k, "scheduler"));
        const char *sampler = json_string_value(json_object_get(k, "sampler"));
        float *sigmas = NULL;
        int n = 0;
        if (!sched || !sampler)
            rc = kn_fail(err, KN_ERR_FORMAT, "%s: no scheduler or sampler", key);
        else
            rc = kn_ksampler_sigmas(&ms, sched, sampler, (int)param(k, "steps", 0), param(k, "denoise", 1.0), &sigmas,
                                    &n, err);
        if (!rc) rc = emit_values(res, key, sigmas, n, err);
        free(sigmas);
    }
    kn_model_sampling_free(&ms);
    return rc;
}

/* ---- sampling/model_io --------------------------------------------------------------------------- */

static int run_conversions(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_model_sampling ms;
    KN_TRY(node_model_sampling(c, &ms, err));
    kn_tensor x = {0}, out_t = {0}, noise = {0}, latent = {0}, sig = {0}, sig2 = {0}, pct = {0}, y = {0};
    int rc = input_f32(c, "x", &x, err);
    if (!rc) rc = input_f32(c, "model_output", &out_t, err);
    if (!rc) rc = input_f32(c, "noise", &noise, err);
    if (!rc) rc = input_f32(c, "latent_image", &latent, err);
    if (!rc) rc = input_f32(c, "sigmas", &sig, err);
    if (!rc) rc = input_f32(c, "sigmas_img2img", &sig2, err);
    if (!rc) rc = input_f32(c, "percent", &pct, err);
    if (!rc) rc = kn_tensor_new(&y, KN_F32, KN_DEV_CPU, x.ndim, x.ne, err);
    int64_t n = rc ? 0 : kn_tensor_numel(&x), ns = rc ? 0 : kn_tensor_numel(&sig);
    const float *sv = sig.data;
    float *yv = y.data, vals[64];
    char name[64];
    for (int64_t i = 0; !rc && i + 1 < ns; i++) { /* every sigma the sampler evaluates the model at */
        snprintf(name, sizeof name, "out.calculate_input.%lld", (long long)i);
        rc = kn_fixture_emit(res, name, &x, err); /* CONST: the model input is x */
        kn_ms_calculate_denoised(sv[i], out_t.data, x.data, yv, n);
        snprintf(name, sizeof name, "out.calculate_denoised.%lld", (long long)i);
        if (!rc) rc = kn_fixture_emit(res, name, &y, err);
    }
    if (!rc && ns > 64) rc = kn_fail(err, KN_ERR_FORMAT, "in.sigmas: %lld values", (long long)ns);
    for (int64_t i = 0; !rc && i < ns; i++) vals[i] = (float)kn_ms_timestep(&ms, sv[i]);
    if (!rc) rc = emit_values(res, "out.timestep", vals, ns, err);
    for (int64_t i = 0; !rc && i + 1 < ns; i++) vals[i] = (float)kn_ms_sigma(&ms, kn_ms_timestep(&ms, sv[i]));
    if (!rc) rc = emit_values(res, "out.sigma_of_timestep", vals, ns - 1, err);
    if (!rc) {
        kn_ms_noise_scaling(sv[0], noise.data, NULL, yv, n); /* txt2img: the empty latent */
        rc = kn_fixture_emit(res, "out.noise_scaling_txt2img", &y, err);
    }
    if (!rc) {
        kn_ms_noise_scaling(((float *)sig2.data)[0], noise.data, latent.data, yv, n);
        rc = kn_fixture_emit(res, "out.noise_scaling_img2img", &y, err);
    }
    static const struct {
        const char *out;
        float sigma;
    } inverse[] = {{"out.inverse_noise_scaling_0", 0.0f}, {"out.inverse_noise_scaling_0.001", 0.001f}};
    for (size_t i = 0; !rc && i < sizeof inverse / sizeof inverse[0]; i++) {
        memcpy(yv, x.data, (size_t)n * sizeof *yv);
        kn_ms_inverse_noise_scaling(inverse[i].sigma, yv, n);
        rc = kn_fixture_emit(res, inverse[i].out, &y, err);
    }
    int64_t np = rc ? 0 : kn_tensor_numel(&pct);
    if (!rc && np > 64) rc = kn_fail(err, KN_ERR_FORMAT, "in.percent: %lld values", (long long)np);
    for (int64_t i = 0; !rc && i < np; i++) vals[i] = (float)kn_ms_percent_to_sigma(&ms, ((float *)pct.data)[i]);
    if (!rc) rc = emit_values(res, "out.percent_to_sigma", vals, np, err);
    kn_tensor *all[] = {&x, &out_t, &noise, &latent, &sig, &sig2, &pct, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
    kn_model_sampling_free(&ms);
    return rc;
}

static int run_latent_formats(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    static const struct {
        const kn_latent_format *f;
        const char *in, *out_in, *out_out;
    } formats[] = {{&kn_latent_flux, "latent_flux", "out.flux_process_in", "out.flux_process_out"},
                   {&kn_latent_wan21, "latent_wan21", "out.wan21_process_in", "out.wan21_process_out"}};
    int rc = KN_OK;
    for (size_t i = 0; !rc && i < sizeof formats / sizeof formats[0]; i++) {
        kn_tensor z, y = {0};
        KN_TRY(input_f32(c, formats[i].in, &z, err));
        rc = kn_tensor_new(&y, KN_F32, KN_DEV_CPU, z.ndim, z.ne, err);
        if (!rc) rc = kn_latent_process_in(formats[i].f, &z, &y, err);
        if (!rc) rc = kn_fixture_emit(res, formats[i].out_in, &y, err);
        if (!rc) rc = kn_latent_process_out(formats[i].f, &z, &y, err);
        if (!rc) rc = kn_fixture_emit(res, formats[i].out_out, &y, err);
        kn_tensor_free(&z);
        kn_tensor_free(&y);
    }
    float flux[2] = {kn_latent_flux.scale, kn_latent_flux.shift[0]};
    if (!rc) rc = emit_values(res, "out.flux_scale_shift", flux, 2, err);
    if (!rc) rc = emit_values(res, "out.wan21_latents_mean", (float *)kn_latent_wan21.shift, 16, err);
    if (!rc) rc = emit_values(res, "out.wan21_latents_std", (float *)kn_latent_wan21.std, 16, err);
    return rc;
}

static int run_model_io(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    return json_object_get(c->info, "node") ? run_conversions(c, res, err) : run_latent_formats(c, res, err);
}

/* ---- sampling/samplers ----------------------------------------------------------------------------- */

/* The fixture's toy "DiT": out[n, i] = sum_j A[i, j] x[n, j] + b[i] t / t_scale + context[i],
 * t = timestep(sigma); denoised = calculate_denoised(sigma, out, x). */
typedef struct toy_model {
    kn_tensor A, b, context[2]; /* context[negative]: [B or 1, 1, C] */
    const kn_model_sampling *ms;
    double t_scale;
} toy_model;

static int toy_denoise(void *user, const kn_tensor *x, float sigma, int negative, kn_tensor *den, kn_err *err) {
    const toy_model *m = user;
    int64_t batch = x->ne[0], ch = x->ne[1], plane = kn_tensor_numel(x) / (batch * ch);
    if (ch != m->b.ne[0] || kn_tensor_numel(&m->A) != ch * ch)
        return kn_fail(err, KN_ERR_SHAPE, "toy model: %lld latent channels for a %lld-channel model", (long long)ch,
                       (long long)m->b.ne[0]);
    const float *xv = x->data, *A = m->A.data, *b = m->b.data;
    const kn_tensor *ctx = &m->context[negative];
    float *dv = den->data;
    double t = kn_ms_timestep(m->ms, sigma) / m->t_scale;
    for (int64_t n = 0; n < batch; n++) {
        const float *cv = (const float *)ctx->data + (ctx->ne[0] > 1 ? n * ch : 0);
        for (int64_t i = 0; i < ch; i++)
            for (int64_t p = 0; p < plane; p++) {
                double out = b[i] * t + cv[i];
                for (int64_t j = 0; j < ch; j++) out += A[i * ch + j] * (double)xv[(n * ch + j) * plane + p];
                int64_t o = (n * ch + i) * plane + p;
                dv[o] = (float)(xv[o] - out * sigma);
            }
    }
    return KN_OK;
}

#define MAX_CALLS 256

/* Wraps the CFG guider to record what each model call was given. */
typedef struct call_log {
    kn_cfg_guider *guider;
    const kn_model_sampling *ms;
    float sigma[MAX_CALLS], timestep[MAX_CALLS];
    int calls;
} call_log;

static int logged_denoise(void *user, const kn_tensor *x, float sigma, kn_tensor *den, kn_err *err) {
    call_log *log = user;
    if (log->calls == MAX_CALLS) return kn_fail(err, KN_ERR_INVALID, "more than %d model calls", MAX_CALLS);
    log->sigma[log->calls] = sigma;
    log->timestep[log->calls++] = (float)kn_ms_timestep(log->ms, sigma);
    return kn_cfg_denoise(log->guider, x, sigma, den, err);
}

/* Passes the sampler's noise through, emitting each draw as debug.sampler_noise<k>. */
typedef struct noise_tap {
    kn_noise_source base;
    kn_noise_source *inner;
    kn_fixture_results *res;
    int draws;
} noise_tap;

static int tap_draw(kn_noise_source *src, float sigma, float sigma_next, kn_tensor *out, kn_err *err) {
    noise_tap *t = (noise_tap *)src;
    char name[64];
    snprintf(name, sizeof name, "debug.sampler_noise%d", t->draws++);
    KN_TRY(t->inner->draw(t->inner, sigma, sigma_next, out, err));
    return kn_fixture_emit(t->res, name, out, err);
}

static void tap_destroy(kn_noise_source *src) {
    kn_noise_source_free(((noise_tap *)src)->inner);
}

static int emit_step(void *user, int step, int total, const kn_tensor *x, const kn_tensor *den, kn_err *err) {
    kn_fixture_results *res = user;
    char name[64];
    snprintf(name, sizeof name, "debug.x_step%d", step);
    KN_TRY(kn_fixture_emit(res, name, x, err));
    snprintf(name, sizeof name, "debug.denoised_step%d", step);
    (void)total;
    return kn_fixture_emit(res, name, den, err);
}

static int run_sampler_case(const kn_fixture_case *c, kn_fixture_results *res, toy_model *toy, kn_err *err) {
    const char *sampler = json_string_value(json_object_get(c->info, "sampler"));
    const char *ms_name = json_string_value(json_object_get(c->info, "ms"));
    const char *format_name = json_string_value(json_object_get(c->info, "latent_format"));
    double shift = param(c->info, "model_sampling_shift", 1.0);
    const kn_latent_format *format = NULL;
    if (format_name && strcmp(format_name, "Flux") == 0) format = &kn_latent_flux;
    if (format_name && strcmp(format_name, "Wan21") == 0) format = &kn_latent_wan21;
    if (!sampler || !ms_name || !format)
        return kn_fail(err, KN_ERR_FORMAT, "case needs sampler, ms and a Flux or Wan21 latent_format");
    int64_t seed;
    int n;
    KN_TRY(input_i64(c, "seed", &seed, 1, &n, err));
    kn_model_sampling ms; /* "flux_*": the ModelSamplingFlux node (shift is mu); others: discrete flow */
    KN_TRY(strncmp(ms_name, "flux", 4) == 0 ? kn_model_sampling_flux(&ms, shift, err)
                                         : kn_model_sampling_flow(&ms, shift, param(c->info, "multiplier", 1.0), err));
    toy->ms = &ms;
    toy->t_scale = param(c->info, "toy_t_scale", 1.0);
    kn_cfg_guider guider = {.model = toy_denoise, .user = toy, .cfg = param(c->info, "cfg", 1.0)};
    call_log log = {&guider, &ms, {0}, {0}, 0};
    kn_tensor noise = {0}, latent = {0}, sig = {0}, samples = {0}, x_final = {0};
    int rc = input_f32(c, "noise", &noise, err);
    if (!rc) rc = input_f32(c, "latent_image", &latent, err);
    if (!rc) rc = input_f32(c, "sigmas", &sig, err);
    if (!rc) rc = kn_tensor_new(&samples, KN_F32, KN_DEV_CPU, latent.ndim, latent.ne, err);
    if (!rc) rc = kn_tensor_new(&x_final, KN_F32, KN_DEV_CPU, latent.ndim, latent.ne, err);
    kn_sample_params p = {.sampler = sampler,
                          .ms = &ms,
                          .sigmas = sig.data,
                          .n_sigmas = rc ? 0 : (int)kn_tensor_numel(&sig),
                          .denoise = logged_denoise,
                          .denoise_user = &log,
                          .seed = (uint64_t)seed,
                          .randn_path = KN_RANDN_AVX2,
                          .progress = emit_step,
                          .progress_user = res};
    noise_tap tap = {{tap_draw, tap_destroy}, NULL, res, 0};
    if (!rc) rc = kn_sampler_default_noise(&p, kn_tensor_numel(&latent), &tap.inner, err);
    if (!rc && tap.inner) p.noise = &tap.base;
    if (!rc) rc = kn_sample(&p, format, &noise, &latent, &samples, &x_final, err);
    if (!rc) rc = kn_fixture_emit(res, "out.x_final", &x_final, err);
    if (!rc) rc = kn_fixture_emit(res, "out.samples", &samples, err);
    if (!rc) rc = emit_values(res, "debug.model_sigma", log.sigma, log.calls, err);
    if (!rc) rc = emit_values(res, "debug.model_timestep", log.timestep, log.calls, err);
    if (!rc && p.n_sigmas > 0) { /* the schedule as the sampler left it */
        float *after = sig.data;
        after[p.n_sigmas - 1] = kn_sampler_last_sigma(&p);
        rc = emit_values(res, "debug.sigmas_after", after, p.n_sigmas, err);
    }
    if (rc) kn_err_wrap(err, "%s", sampler);
    kn_noise_source_free(tap.inner);
    kn_cfg_guider_free(&guider);
    kn_tensor *all[] = {&noise, &latent, &sig, &samples, &x_final};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
    kn_model_sampling_free(&ms);
    return rc;
}

static int run_samplers(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    toy_model toy = {0};
    int rc = input_f32(c, "A", &toy.A, err);
    if (!rc) rc = input_f32(c, "b", &toy.b, err);
    if (!rc) rc = input_f32(c, "cond_context", &toy.context[0], err);
    if (!rc) rc = input_f32(c, "uncond_context", &toy.context[1], err);
    if (!rc) rc = run_sampler_case(c, res, &toy, err);
    kn_tensor_free(&toy.A);
    kn_tensor_free(&toy.b);
    kn_tensor_free(&toy.context[0]);
    kn_tensor_free(&toy.context[1]);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------------------- */

int kn_sampling_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    static const struct {
        const char *component;
        kn_fixture_fn run;
    } parts[] = {{"sampling/noise", run_noise},
                 {"sampling/schedules", run_schedules},
                 {"sampling/model_io", run_model_io},
                 {"sampling/samplers", run_samplers}};
    const char *component = json_string_value(json_object_get(c->meta, "component"));
    for (size_t i = 0; component && i < sizeof parts / sizeof parts[0]; i++)
        if (strcmp(parts[i].component, component) == 0) return parts[i].run(c, res, err);
    return kn_fail(err, KN_ERR_UNSUPPORTED, "sampling fixture: unknown part '%s'", component ? component : "(none)");
}
