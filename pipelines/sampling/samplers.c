/* ComfyUI's samplers (comfy/k_diffusion/sampling.py, comfy/extra_samplers/uni_pc.py),
 * CFG (comfy/samplers.py cfg_function) and KSampler pipeline for flow models. */
#include "pipelines/sampling/samplers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_latent(const kn_tensor *t, const char *what, kn_err *err) {
    char d[96];
    if (t->dtype != KN_F32 || t->device != KN_DEV_CPU || !kn_tensor_is_contiguous(t) || t->ndim < 2)
        return kn_fail(err, KN_ERR_SHAPE, "%s must be a contiguous F32 CPU tensor [B, C, ...], got %s", what,
                       kn_tensor_desc(t, d, sizeof d));
    return KN_OK;
}

static int same_shape(const kn_tensor *a, const kn_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->ne[d] != b->ne[d]) return 0;
    return 1;
}

static int expect_like(const kn_tensor *t, const kn_tensor *like, const char *what, kn_err *err) {
    KN_TRY(check_latent(t, what, err));
    char a[96], b[96];
    if (!same_shape(t, like))
        return kn_fail(err, KN_ERR_SHAPE, "%s is %s, expected the latent's %s", what, kn_tensor_desc(t, a, sizeof a),
                       kn_tensor_desc(like, b, sizeof b));
    return KN_OK;
}

/* ---- CFG --------------------------------------------------------------------------------- */

int kn_cfg_skips_uncond(double cfg) {
    return fabs(cfg - 1.0) <= 1e-9 * fmax(fabs(cfg), 1.0); /* math.isclose(cfg, 1.0) */
}

void kn_cfg_combine(float *out, const float *cond, const float *uncond, double cfg, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)(uncond[i] + ((double)cond[i] - uncond[i]) * cfg);
}

/* buf shaped like x, (re)allocated as needed. */
static int like(kn_tensor *buf, const kn_tensor *x, kn_err *err) {
    if (buf->data && !same_shape(buf, x)) kn_tensor_free(buf);
    if (!buf->data) KN_TRY(kn_tensor_new(buf, KN_F32, KN_DEV_CPU, x->ndim, x->ne, err));
    return KN_OK;
}

int kn_cfg_denoise(void *guider, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err) {
    kn_cfg_guider *g = guider;
    /* the hooks read the conditional prediction after CFG replaced it */
    kn_tensor *cond = denoised;
    if (g->n_post > 0) KN_TRY(like(cond = &g->cond, x, err));
    int skip = kn_cfg_skips_uncond(g->cfg);
    if (skip) {
        /* the uncond accumulator stays 0 and 0 + (cond - 0) * cfg is cond exactly */
        KN_TRY(g->model(g->user, x, sigma, 0, cond, err));
        if (cond != denoised) memcpy(denoised->data, cond->data, kn_tensor_nbytes(cond));
    } else {
        KN_TRY(like(&g->uncond, x, err));
        /* ComfyUI batches [uncond, cond]: run them in that order */
        KN_TRY(g->model(g->user, x, sigma, 1, &g->uncond, err));
        KN_TRY(g->model(g->user, x, sigma, 0, cond, err));
        kn_cfg_combine(denoised->data, cond->data, g->uncond.data, g->cfg, kn_tensor_numel(x));
    }
    for (int i = 0; i < g->n_post; i++)
        if (g->post[i].fn(&g->post[i], cond, skip ? NULL : &g->uncond, denoised, err))
            return kn_err_wrap(err, "post-CFG hook %d", i + 1);
    return KN_OK;
}

int kn_cfg_norm(const kn_post_cfg *h, const kn_tensor *cond, const kn_tensor *uncond, kn_tensor *denoised,
                kn_err *err) {
    (void)uncond;
    KN_TRY(check_latent(denoised, "CFGNorm: denoised", err));
    KN_TRY(expect_like(cond, denoised, "CFGNorm: cond", err));
    const int64_t B = denoised->ne[0], C = denoised->ne[1], plane = kn_tensor_numel(denoised) / (B * C);
    const float strength = (float)h->strength;
    const float *c = cond->data;
    float *d = denoised->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < plane; p++) {
            const int64_t o = b * C * plane + p;
            double nc = 0.0, nd = 0.0;
            for (int64_t ch = 0; ch < C; ch++) {
                nc += (double)c[o + ch * plane] * c[o + ch * plane];
                nd += (double)d[o + ch * plane] * d[o + ch * plane];
            }
            /* torch in float32: norms, (n_c / (n_g + 1e-8)).clamp(0, 1), then * scale * strength */
            float scale = (float)sqrt(nc) / ((float)sqrt(nd) + 1e-8f);
            scale = scale < 0.0f ? 0.0f : scale > 1.0f ? 1.0f : scale;
            for (int64_t ch = 0; ch < C; ch++) d[o + ch * plane] = d[o + ch * plane] * scale * strength;
        }
    return KN_OK;
}

void kn_cfg_guider_free(kn_cfg_guider *g) {
    kn_tensor_free(&g->uncond);
    kn_tensor_free(&g->cond);
}

/* ---- latent formats ------------------------------------------------------------------------ */

#define C16(v) {v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}
static const float flux_shift[16] = C16(0.1159f), ones16[16] = C16(1.0f);
static const float wan21_mean[16] = {-0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
                                     0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f};
static const float wan21_std[16] = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                                    3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

const kn_latent_format kn_latent_flux = {"Flux", 16, 0.3611f, flux_shift, ones16};
const kn_latent_format kn_latent_wan21 = {"Wan21", 16, 1.0f, wan21_mean, wan21_std};

static int latent_affine(const kn_latent_format *f, const kn_tensor *z, kn_tensor *out, int to_model, kn_err *err) {
    KN_TRY(check_latent(z, "latent", err));
    KN_TRY(expect_like(out, z, "latent output", err));
    if (z->ne[1] != f->channels)
        return kn_fail(err, KN_ERR_SHAPE, "latent format %s: %lld channels, expected %d", f->name,
                       (long long)z->ne[1], f->channels);
    int64_t plane = kn_tensor_numel(z) / (z->ne[0] * z->ne[1]);
    const float *src = z->data;
    float *dst = out->data;
    for (int64_t b = 0; b < z->ne[0]; b++)
        for (int c = 0; c < f->channels; c++) {
            int64_t o = (b * f->channels + c) * plane;
            /* float32 operations in torch's order: (z - mean) * scale / std and back */
            float shift = f->shift[c], std = f->std[c], scale = f->scale;
            for (int64_t i = o; i < o + plane; i++)
                dst[i] = to_model ? (src[i] - shift) * scale / std : src[i] * std / scale + shift;
        }
    return KN_OK;
}

int kn_latent_process_in(const kn_latent_format *f, const kn_tensor *z, kn_tensor *out, kn_err *err) {
    return latent_affine(f, z, out, 1, err);
}

int kn_latent_process_out(const kn_latent_format *f, const kn_tensor *z, kn_tensor *out, kn_err *err) {
    return latent_affine(f, z, out, 0, err);
}

/* ---- sampler machinery ------------------------------------------------------------------------ */

#define MAX_BUFS 8

typedef struct sampler_def sampler_def;

typedef struct run {
    const kn_sample_params *p;
    const sampler_def *def;
    kn_tensor *x; /* the state */
    int64_t n;    /* values in x */
    float *s;     /* the sigmas, a copy the sampler may change as ComfyUI does */
    int ns;
    kn_noise_source *noise;
    kn_tensor buf[MAX_BUFS]; /* scratch like x, allocated on first use */
} run;

typedef enum { NOISE_NONE, NOISE_DEFAULT, NOISE_BROWNIAN } noise_kind;

struct sampler_def {
    const char *name;
    int (*run)(run *r, kn_err *err);
    noise_kind noise;
    double eta; /* ComfyUI's default for the sampler */
    int variant; /* dpmpp_2m_sde: 1 = heun solver; uni_pc: 1 = bh2 */
};

static kn_tensor *buf(run *r, int k, kn_err *err) {
    if (!r->buf[k].data && kn_tensor_new(&r->buf[k], KN_F32, KN_DEV_CPU, r->x->ndim, r->x->ne, err)) return NULL;
    return &r->buf[k];
}

static int model(run *r, const kn_tensor *x, float sigma, kn_tensor *out, kn_err *err) {
    int rc = r->p->denoise(r->p->denoise_user, x, sigma, out, err);
    return rc ? kn_err_wrap(err, "%s: model at sigma %g", r->def->name, sigma) : KN_OK;
}

/* The sampler callback point of ComfyUI, and where cancellation is honoured. */
static int report(run *r, int step, const kn_tensor *x, const kn_tensor *denoised, kn_err *err) {
    int rc = r->p->progress ? r->p->progress(r->p->progress_user, step, r->ns - 1, x, denoised, err) : KN_OK;
    if (rc) {
        if (err->code != rc) kn_fail(err, rc, "the callback returned %d", rc);
        return kn_err_wrap(err, "%s: progress at step %d of %d", r->def->name, step + 1, r->ns - 1);
    }
    if (r->p->cancel && atomic_load(r->p->cancel))
        return kn_fail(err, KN_ERR_CANCELLED, "%s: cancelled at step %d of %d", r->def->name, step + 1, r->ns - 1);
    return KN_OK;
}

static int draw(run *r, float sigma, float sigma_next, kn_tensor *out, kn_err *err) {
    if (!r->noise) return kn_fail(err, KN_ERR_INVALID, "%s: no noise source", r->def->name);
    int rc = r->noise->draw(r->noise, sigma, sigma_next, out, err);
    return rc ? kn_err_wrap(err, "%s: noise", r->def->name) : KN_OK;
}

/* get_ancestral_step: how far down to step and how much noise to add back. */
static void ancestral_step(double from, double to, double eta, double *down, double *up) {
    if (eta == 0.0) {
        *down = to;
        *up = 0.0;
        return;
    }
    double u = eta * sqrt(to * to * (from * from - to * to) / (from * from));
    *up = u < to ? u : to;
    *down = sqrt(to * to - *up * *up);
}

/* ---- the samplers ---------------------------------------------------------------------------- */

/* euler (and ddim, which is euler plus a random inpaint noise Kiln does not use):
 * x += (x - D) / sigma * (sigma_next - sigma). */
static int run_euler(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err);
    if (!den) return err->code;
    float *x = r->x->data, *d = den->data;
    for (int i = 0; i < r->ns - 1; i++) {
        double s = r->s[i], dt = (double)r->s[i + 1] - s;
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] + (x[k] - d[k]) / s * dt);
    }
    return KN_OK;
}

/* sample_euler_ancestral_RF: step down to sigma_down on the straight path to D, then
 * rescale and renoise to sigma_next. */
static int run_euler_ancestral(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *noise = den ? buf(r, 1, err) : NULL;
    if (!noise) return err->code;
    float *x = r->x->data, *d = den->data, *e = noise->data;
    double eta = r->def->eta, s_noise = 1.0;
    for (int i = 0; i < r->ns - 1; i++) {
        double s = r->s[i], sn = r->s[i + 1];
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        if (sn == 0.0) {
            memcpy(x, d, (size_t)r->n * sizeof *x);
            continue;
        }
        double sd = sn * (1.0 + (sn / s - 1.0) * eta), a1 = 1.0 - sn, ad = 1.0 - sd;
        double renoise = sqrt(sn * sn - sd * sd * a1 * a1 / (ad * ad)), ratio = sd / s;
        if (eta > 0.0) KN_TRY(draw(r, r->s[i], r->s[i + 1], noise, err));
        for (int64_t k = 0; k < r->n; k++) {
            double v = ratio * x[k] + (1.0 - ratio) * d[k];
            if (eta > 0.0) v = a1 / ad * v + e[k] * s_noise * renoise;
            x[k] = (float)v;
        }
    }
    return KN_OK;
}

/* heun: Euler to sigma_next, then the average of both slopes (Euler on the last step). */
static int run_heun(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *x2 = den ? buf(r, 1, err) : NULL, *den2 = x2 ? buf(r, 2, err) : NULL;
    if (!den2) return err->code;
    float *x = r->x->data, *d = den->data, *y = x2->data, *d2 = den2->data;
    for (int i = 0; i < r->ns - 1; i++) {
        double s = r->s[i], sn = r->s[i + 1], dt = sn - s;
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        if (sn == 0.0) {
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] + (x[k] - d[k]) / s * dt);
            continue;
        }
        for (int64_t k = 0; k < r->n; k++) y[k] = (float)(x[k] + (x[k] - d[k]) / s * dt);
        KN_TRY(model(r, x2, r->s[i + 1], den2, err));
        for (int64_t k = 0; k < r->n; k++) {
            double slope = (x[k] - d[k]) / s, slope2 = (y[k] - d2[k]) / sn;
            x[k] = (float)(x[k] + (slope + slope2) / 2.0 * dt);
        }
    }
    return KN_OK;
}

/* DPM-Solver++(2M): second order from the previous step's D, in t = -log(sigma). */
static int run_dpmpp_2m(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *old = den ? buf(r, 1, err) : NULL;
    if (!old) return err->code;
    float *x = r->x->data;
    for (int i = 0; i < r->ns - 1; i++) {
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        double t = -log(r->s[i]), tn = -log(r->s[i + 1]), h = tn - t; /* sigma_next 0: tn = inf, x = D */
        double ratio = exp(-tn) / exp(-t), e = expm1(-h);
        const float *d = den->data, *o = old->data;
        if (i == 0 || r->s[i + 1] == 0.0f) {
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(ratio * x[k] - e * d[k]);
        } else {
            double rr = (t + log(r->s[i - 1])) / h; /* h_last / h */
            double c_d = 1.0 + 1.0 / (2.0 * rr), c_old = 1.0 / (2.0 * rr);
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(ratio * x[k] - e * (c_d * d[k] - c_old * o[k]));
        }
        kn_tensor t_swap = *den; /* this step's D becomes old_denoised */
        *den = *old;
        *old = t_swap;
    }
    return KN_OK;
}

/* DPM-Solver++(2M) SDE in the flow half-logSNR lambda = log((1 - sigma) / sigma). */
static int run_dpmpp_2m_sde(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *old = den ? buf(r, 1, err) : NULL, *noise = old ? buf(r, 2, err) : NULL;
    if (!noise) return err->code;
    if (r->s[0] >= 1.0f) /* offset_first_sigma_for_snr: lambda(1) is -inf; also the first model call */
        r->s[0] = (float)kn_ms_percent_to_sigma(r->p->ms, 1e-4);
    float *x = r->x->data, *e = noise->data;
    double eta = r->def->eta, s_noise = 1.0, h_last = 0.0;
    int have_old = 0;
    for (int i = 0; i < r->ns - 1; i++) {
        double s = r->s[i], sn = r->s[i + 1];
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        const float *d = den->data, *o = old->data;
        if (sn == 0.0) {
            memcpy(x, d, (size_t)r->n * sizeof *x);
        } else {
            double ls = -log(s / (1.0 - s)), lt = -log(sn / (1.0 - sn)), h = lt - ls, h_eta = h * (eta + 1.0);
            double alpha_t = sn * exp(lt), c_x = sn / s * exp(-h * eta), c_d = alpha_t * -expm1(-h_eta), c_o = 0.0;
            if (have_old) {
                double rr = h_last / h;
                c_o = r->def->variant ? alpha_t * (-expm1(-h_eta) / -h_eta + 1.0) * (1.0 / rr)
                                      : 0.5 * alpha_t * -expm1(-h_eta) * (1.0 / rr);
            }
            double c_e = sn * sqrt(-expm1(-2.0 * h * eta)) * s_noise;
            int noisy = eta > 0.0 && s_noise > 0.0;
            if (noisy) KN_TRY(draw(r, r->s[i], r->s[i + 1], noise, err));
            for (int64_t k = 0; k < r->n; k++) {
                double v = c_x * x[k] + c_d * d[k];
                if (have_old) v = v + c_o * ((double)d[k] - o[k]);
                if (noisy) v = v + e[k] * c_e;
                x[k] = (float)v;
            }
            h_last = h;
        }
        kn_tensor t_swap = *den;
        *den = *old;
        *old = t_swap;
        have_old = 1;
    }
    return KN_OK;
}

/* lcm: jump to D, then renoise to sigma_next with fresh noise. */
static int run_lcm(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *noise = den ? buf(r, 1, err) : NULL;
    if (!noise) return err->code;
    for (int i = 0; i < r->ns - 1; i++) {
        KN_TRY(model(r, r->x, r->s[i], den, err));
        KN_TRY(report(r, i, r->x, den, err));
        if (r->s[i + 1] > 0.0f) {
            KN_TRY(draw(r, r->s[i], r->s[i + 1], noise, err));
            kn_ms_noise_scaling(r->s[i + 1], noise->data, den->data, r->x->data, r->n);
        } else {
            memcpy(r->x->data, den->data, (size_t)r->n * sizeof(float));
        }
    }
    return KN_OK;
}

static double nan_to_num(double v) { /* torch.nan_to_num(nan=0.0) */
    return isnan(v) ? 0.0 : isinf(v) ? copysign(1.7976931348623157e308, v) : v;
}

/* res_multistep (arXiv 2308.02157): exponential-integrator multistep in t = -log(sigma),
 * eta 0; the _ancestral variant steps to sigma_down and adds noise * sigma_up. */
static int run_res_multistep(run *r, kn_err *err) {
    kn_tensor *den = buf(r, 0, err), *old = den ? buf(r, 1, err) : NULL, *noise;
    if (!old) return err->code;
    float *x = r->x->data;
    double eta = r->def->eta, s_noise = 1.0, old_down = 0.0;
    for (int i = 0; i < r->ns - 1; i++) {
        double s = r->s[i], sn = r->s[i + 1], down, up;
        KN_TRY(model(r, r->x, r->s[i], den, err));
        ancestral_step(s, sn, eta, &down, &up);
        KN_TRY(report(r, i, r->x, den, err));
        const float *d = den->data, *o = old->data;
        if (down == 0.0 || i == 0) {
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] + (x[k] - d[k]) / s * (down - s));
        } else {
            double t = -log(s), t_old = -log(old_down), t_next = -log(down), t_prev = -log(r->s[i - 1]);
            double h = t_next - t, c2 = (t_prev - t_old) / h;
            double phi1 = expm1(-h) / -h, phi2 = (phi1 - 1.0) / -h;
            double b1 = nan_to_num(phi1 - phi2 / c2), b2 = nan_to_num(phi2 / c2), decay = exp(-h);
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(decay * x[k] + h * (b1 * d[k] + b2 * o[k]));
        }
        /* ComfyUI draws noise here even when sigma_up is 0 (eta 0); adding it times 0
         * changes nothing and the draws feed nothing else, so skip them */
        if (sn > 0.0 && up != 0.0) {
            if (!(noise = buf(r, 2, err))) return err->code;
            KN_TRY(draw(r, r->s[i], r->s[i + 1], noise, err));
            const float *e = noise->data;
            for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] + e[k] * s_noise * up);
        }
        kn_tensor t_swap = *den;
        *den = *old;
        *old = t_swap;
        old_down = down;
    }
    return KN_OK;
}

/* ---- UniPC (comfy/extra_samplers/uni_pc.py) ---------------------------------------------------- */
/* ComfyUI treats sigma as a VP noise level: alpha = 1/sqrt(1 + sigma^2), std = sigma * alpha,
 * lambda = log(alpha / std); the state is x / sqrt(1 + sigma^2) and the model is turned into a
 * data (x0) predictor through eps = (x s - D(x s, sigma)) / sigma, s = sqrt(1 + sigma^2). */

static double vp_log_alpha(double t) {
    return 0.5 * log(1.0 / (t * t + 1.0));
}
static double vp_std(double t) {
    return sqrt(1.0 - exp(2.0 * vp_log_alpha(t)));
}
static double vp_lambda(double t) {
    return vp_log_alpha(t) - 0.5 * log(1.0 - exp(2.0 * vp_log_alpha(t)));
}

/* model_fn / data_prediction_fn: x0 prediction of state x at sigma t into out. */
static int unipc_x0(run *r, const kn_tensor *x, float t, kn_tensor *out, kn_err *err) {
    kn_tensor *in = buf(r, 0, err), *den = in ? buf(r, 1, err) : NULL;
    if (!den) return err->code;
    const float *xv = x->data;
    float *iv = in->data, *dv = den->data, *ov = out->data;
    double scale = sqrt((double)t * t + 1.0), alpha = exp(vp_log_alpha(t)), std = vp_std(t);
    for (int64_t k = 0; k < r->n; k++) iv[k] = (float)(xv[k] * scale);
    KN_TRY(model(r, in, t, den, err));
    for (int64_t k = 0; k < r->n; k++) {
        double eps = ((double)iv[k] - dv[k]) / t;
        ov[k] = (float)((xv[k] - std * eps) / alpha);
    }
    return KN_OK;
}

/* Solves a (n <= 3) by Gaussian elimination with partial pivoting (torch.linalg.solve). */
static void solve_small(double a[3][3], double *b, int n) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int i = c + 1; i < n; i++)
            if (fabs(a[i][c]) > fabs(a[p][c])) p = i;
        for (int j = 0; j < n; j++) {
            double t = a[c][j];
            a[c][j] = a[p][j];
            a[p][j] = t;
        }
        double t = b[c];
        b[c] = b[p];
        b[p] = t;
        for (int i = c + 1; i < n; i++) {
            double f = a[i][c] / a[c][c];
            for (int j = c; j < n; j++) a[i][j] -= f * a[c][j];
            b[i] -= f * b[c];
        }
    }
    for (int c = n - 1; c >= 0; c--) {
        for (int j = c + 1; j < n; j++) b[c] -= a[c][j] * b[j];
        b[c] /= a[c][c];
    }
}

/* multistep_uni_pc_bh_update with predict_x0: mp[0..count) are the previous x0 predictions at
 * sigmas tp[], newest last. Updates r->x to sigma t; with the corrector, *model_t (evaluated at
 * the predictor's x) receives the model's x0 there. */
static int unipc_update(run *r, kn_tensor **mp, const float *tp, int count, float t, int order, kn_tensor *model_t,
                        kn_err *err) {
    kn_tensor *xp = buf(r, 2, err);
    if (!xp) return err->code;
    double t0 = tp[count - 1], l0 = vp_lambda(t0), lt = vp_lambda(t), h = lt - l0;
    double rks[3], rhos_p[3] = {0.5}, rhos_c[3] = {0.5}, R[3][3], b[3];
    for (int i = 1; i < order; i++) rks[i - 1] = (vp_lambda(tp[count - 1 - i]) - l0) / h;
    rks[order - 1] = 1.0;
    double hh = -h, h_phi_1 = expm1(hh), h_phi_k = h_phi_1 / hh - 1.0, fact = 1.0;
    double b_h = r->def->variant ? expm1(hh) : hh;
    for (int i = 1; i <= order; i++) {
        for (int j = 0; j < order; j++) R[i - 1][j] = pow(rks[j], i - 1);
        b[i - 1] = h_phi_k * fact / b_h;
        fact *= i + 1;
        h_phi_k = h_phi_k / hh - 1.0 / fact;
    }
    if (order > 2) { /* order 2 uses rhos_p = 0.5 */
        double a[3][3];
        memcpy(a, R, sizeof a);
        memcpy(rhos_p, b, sizeof b);
        solve_small(a, rhos_p, order - 1);
    }
    if (order > 1 && model_t) { /* order 1 uses rhos_c = 0.5 */
        memcpy(rhos_c, b, sizeof b);
        solve_small(R, rhos_c, order);
    }
    double c_x = vp_std(t) / vp_std(t0), alpha_t = exp(vp_log_alpha(t)), c_m = alpha_t * h_phi_1, c_b = alpha_t * b_h;
    float *x = r->x->data, *y = xp->data;
    const float *m[3]; /* m[0] newest: model_prev_0, m[i] = model_prev_i */
    for (int i = 0; i < order; i++) m[i] = mp[count - 1 - i]->data;
    for (int64_t k = 0; k < r->n; k++) { /* the predictor */
        double pred = 0.0;
        for (int i = 1; i < order; i++) pred += rhos_p[i - 1] * ((double)m[i][k] - m[0][k]) / rks[i - 1];
        y[k] = (float)(c_x * x[k] - c_m * m[0][k] - c_b * pred);
    }
    if (!model_t) {
        memcpy(x, y, (size_t)r->n * sizeof *x);
        return KN_OK;
    }
    KN_TRY(unipc_x0(r, xp, t, model_t, err));
    const float *mt = model_t->data;
    for (int64_t k = 0; k < r->n; k++) { /* the corrector, with the model at the predicted x */
        double corr = 0.0;
        for (int i = 1; i < order; i++) corr += rhos_c[i - 1] * ((double)m[i][k] - m[0][k]) / rks[i - 1];
        x[k] = (float)(c_x * x[k] - c_m * m[0][k] - c_b * (corr + rhos_c[order - 1] * ((double)mt[k] - m[0][k])));
    }
    return KN_OK;
}

/* UniPC.sample(method="multistep", order=min(3, len - 2), lower_order_final=True). */
static int run_unipc(run *r, kn_err *err) {
    int steps = r->ns - 1, order = r->ns - 2 < 3 ? r->ns - 2 : 3;
    r->s[steps] = kn_sampler_last_sigma(r->p); /* a final 0 becomes 0.001 */
    kn_tensor *mp[4], *spare;
    for (int i = 0; i < 4; i++)
        if (!(mp[i] = buf(r, 3 + i, err))) return err->code;
    spare = mp[3];
    float tp[3];
    int count = 0;
    double s0 = r->s[0];
    float *x = r->x->data;
    for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] / sqrt(1.0 + s0 * s0));
    for (int step_index = 0; step_index < steps; step_index++) {
        if (step_index == 0) {
            KN_TRY(unipc_x0(r, r->x, r->s[0], mp[0], err));
            tp[0] = r->s[0];
            count = 1;
        } else if (step_index < order) { /* warm up with lower orders */
            KN_TRY(unipc_update(r, mp, tp, count, r->s[step_index], step_index, spare, err));
            kn_tensor *t_swap = mp[count];
            mp[count] = spare;
            spare = t_swap;
            tp[count++] = r->s[step_index];
        } else {
            int last = step_index == steps - 1 ? step_index + 1 : step_index; /* the final step also goes to 0.001 */
            for (int step = step_index; step <= last; step++) {
                int step_order = order < steps + 1 - step ? order : steps + 1 - step;
                int corrector = step != steps;
                KN_TRY(unipc_update(r, mp, tp, count, r->s[step], step_order, corrector ? spare : NULL, err));
                kn_tensor *dropped = mp[0];
                for (int i = 0; i < order - 1; i++) {
                    mp[i] = mp[i + 1];
                    tp[i] = tp[i + 1];
                }
                tp[order - 1] = r->s[step];
                if (corrector) { /* without it (the final step) the newest value stays, as in ComfyUI */
                    mp[order - 1] = spare;
                    spare = dropped;
                }
            }
        }
        KN_TRY(report(r, step_index, r->x, mp[count - 1], err));
    }
    double lt = r->s[steps];
    for (int64_t k = 0; k < r->n; k++) x[k] = (float)(x[k] / exp(vp_log_alpha(lt)));
    return KN_OK;
}

/* ---- the registry ---------------------------------------------------------------------------- */

static const sampler_def samplers[] = {
    {"euler", run_euler, NOISE_NONE, 0.0, 0},
    {"euler_ancestral", run_euler_ancestral, NOISE_DEFAULT, 1.0, 0},
    {"heun", run_heun, NOISE_NONE, 0.0, 0},
    {"dpmpp_2m", run_dpmpp_2m, NOISE_NONE, 0.0, 0},
    {"dpmpp_2m_sde", run_dpmpp_2m_sde, NOISE_BROWNIAN, 1.0, 0},
    {"dpmpp_2m_sde_heun", run_dpmpp_2m_sde, NOISE_BROWNIAN, 1.0, 1},
    {"lcm", run_lcm, NOISE_DEFAULT, 0.0, 0},
    {"res_multistep", run_res_multistep, NOISE_NONE, 0.0, 0}, /* its draws are all scaled by sigma_up = 0 */
    {"res_multistep_ancestral", run_res_multistep, NOISE_DEFAULT, 1.0, 0},
    {"ddim", run_euler, NOISE_NONE, 0.0, 0},
    {"uni_pc", run_unipc, NOISE_NONE, 0.0, 0},
    {"uni_pc_bh2", run_unipc, NOISE_NONE, 0.0, 1},
};

/* The samplers ComfyUI's KSampler drops the penultimate sigma for, implemented or not. */
static const char *const discard_penultimate[] = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"};

static const sampler_def *find_sampler(const char *name, kn_err *err) {
    size_t count = sizeof samplers / sizeof samplers[0];
    for (size_t i = 0; name && i < count; i++)
        if (strcmp(samplers[i].name, name) == 0) return &samplers[i];
    char have[512] = "";
    for (size_t i = 0, len = 0; i < count && len < sizeof have; i++, len = strlen(have))
        snprintf(have + len, sizeof have - len, "%s%s", i ? ", " : "", samplers[i].name);
    kn_fail(err, KN_ERR_UNSUPPORTED, "sampler '%s' is not implemented (have: %s)", name ? name : "(null)", have);
    return NULL;
}

int kn_sampler_discards_penultimate(const char *sampler) {
    for (size_t i = 0; i < sizeof discard_penultimate / sizeof discard_penultimate[0]; i++)
        if (strcmp(discard_penultimate[i], sampler) == 0) return 1;
    return 0;
}

int kn_sampler_default_noise(const kn_sample_params *p, int64_t x_numel, kn_noise_source **out, kn_err *err) {
    *out = NULL;
    const sampler_def *def = find_sampler(p->sampler, err);
    if (!def) return err->code;
    if (def->noise == NOISE_DEFAULT) return kn_noise_default_new(out, p->seed, p->randn_path, err);
    if (def->noise == NOISE_NONE || p->n_sigmas < 2) return KN_OK;
    float lo = INFINITY, hi = -INFINITY; /* min of the positive sigmas, max of all */
    for (int i = 0; i < p->n_sigmas; i++) {
        if (p->sigmas[i] > 0.0f && p->sigmas[i] < lo) lo = p->sigmas[i];
        if (p->sigmas[i] > hi) hi = p->sigmas[i];
    }
    if (!(lo <= hi)) return kn_fail(err, KN_ERR_INVALID, "%s: the schedule has no positive sigma", def->name);
    return kn_noise_brownian_new(out, x_numel, lo, hi, p->seed, p->randn_path, err);
}

int kn_ksampler_sigmas(const kn_model_sampling *ms, const char *scheduler, const char *sampler, int steps,
                       double denoise, float **sigmas, int *n, kn_err *err) {
    *sigmas = NULL;
    *n = 0;
    if (steps < 1) return kn_fail(err, KN_ERR_INVALID, "KSampler: %d steps (need 1 or more)", steps);
    int total = steps;
    if (!(denoise > 0.9999)) {
        if (denoise <= 0.0) { /* nothing to sample: an empty schedule */
            *sigmas = malloc(sizeof **sigmas);
            return *sigmas ? KN_OK : kn_fail(err, KN_ERR_NOMEM, "KSampler: out of memory");
        }
        if (!(steps / denoise < 1 << 24))
            return kn_fail(err, KN_ERR_INVALID, "KSampler: denoise %g needs too many steps", denoise);
        total = (int)(steps / denoise);
    }
    int discard = kn_sampler_discards_penultimate(sampler);
    KN_TRY(kn_scheduler_sigmas(ms, scheduler, total + discard, sigmas, n, err));
    if (discard && *n >= 2) {
        (*sigmas)[*n - 2] = (*sigmas)[*n - 1];
        (*n)--;
    }
    if (*n > steps + 1) { /* denoise < 1: the low-noise end of the longer schedule */
        memmove(*sigmas, *sigmas + (*n - steps - 1), (size_t)(steps + 1) * sizeof **sigmas);
        *n = steps + 1;
    }
    return KN_OK;
}

float kn_sampler_last_sigma(const kn_sample_params *p) {
    float last = p->sigmas[p->n_sigmas - 1];
    const sampler_def *def = find_sampler(p->sampler, NULL);
    return def && def->run == run_unipc && last == 0.0f ? 0.001f : last;
}

int kn_sampler_run(const kn_sample_params *p, kn_tensor *x, kn_err *err) {
    const sampler_def *def = find_sampler(p->sampler, err);
    if (!def) return err->code;
    KN_TRY(check_latent(x, "sampler state", err));
    if (!p->ms || !p->denoise || (p->n_sigmas > 0 && !p->sigmas) || p->n_sigmas < 0)
        return kn_fail(err, KN_ERR_INVALID, "%s: missing model sampling, model or sigmas", def->name);
    if (p->n_sigmas == 0) return KN_OK;
    run r = {.p = p, .def = def, .x = x, .n = kn_tensor_numel(x), .ns = p->n_sigmas, .noise = p->noise};
    r.s = malloc((size_t)p->n_sigmas * sizeof *r.s);
    if (!r.s) return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", def->name);
    memcpy(r.s, p->sigmas, (size_t)p->n_sigmas * sizeof *r.s);
    int rc = p->noise ? KN_OK : kn_sampler_default_noise(p, r.n, &r.noise, err);
    if (!rc) rc = def->run(&r, err);
    if (!rc) kn_ms_inverse_noise_scaling(kn_sampler_last_sigma(p), x->data, r.n);
    if (!p->noise) kn_noise_source_free(r.noise);
    for (int i = 0; i < MAX_BUFS; i++) kn_tensor_free(&r.buf[i]);
    free(r.s);
    return rc;
}

int kn_sample(const kn_sample_params *p, const kn_latent_format *format, const kn_tensor *noise,
              const kn_tensor *latent, kn_tensor *samples, kn_tensor *x_final, kn_err *err) {
    KN_TRY(check_latent(latent, "latent", err));
    KN_TRY(expect_like(noise, latent, "noise", err));
    KN_TRY(expect_like(samples, latent, "samples", err));
    if (x_final) KN_TRY(expect_like(x_final, latent, "x_final", err));
    int64_t n = kn_tensor_numel(latent);
    if (p->n_sigmas == 0) { /* CFGGuider.sample returns the latent as it is */
        memcpy(samples->data, latent->data, (size_t)n * sizeof(float));
        if (x_final) memcpy(x_final->data, latent->data, (size_t)n * sizeof(float));
        return KN_OK;
    }
    kn_tensor own = {0}, *x = x_final;
    if (!x) KN_TRY(kn_tensor_new(x = &own, KN_F32, KN_DEV_CPU, latent->ndim, latent->ne, err));
    const float *lv = latent->data;
    int64_t first_nonzero = 0;
    while (first_nonzero < n && lv[first_nonzero] == 0.0f) first_nonzero++;
    int rc = KN_OK, empty = first_nonzero == n; /* an empty latent is not shifted into model space */
    if (!empty && format) rc = kn_latent_process_in(format, latent, x, err);
    if (!empty && !format) memcpy(x->data, lv, (size_t)n * sizeof(float));
    if (!rc) kn_ms_noise_scaling(p->sigmas[0], noise->data, empty ? NULL : x->data, x->data, n);
    if (!rc) rc = kn_sampler_run(p, x, err);
    if (!rc && format) rc = kn_latent_process_out(format, x, samples, err);
    if (!rc && !format) memcpy(samples->data, x->data, (size_t)n * sizeof(float));
    kn_tensor_free(&own);
    return rc;
}
