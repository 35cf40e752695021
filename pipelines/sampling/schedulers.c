/* ComfyUI's flow model sampling (comfy/model_sampling.py) and schedulers (comfy/samplers.py). */
#include "pipelines/sampling/schedulers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- model sampling ---------------------------------------------------------------- */

/* time_snr_shift(alpha, t), in Python's double arithmetic. */
static double time_snr_shift(double alpha, double t) {
    return alpha == 1.0 ? t : alpha * t / (1.0 + (alpha - 1.0) * t);
}

/* flux_time_shift(mu, 1, t): e^mu / (e^mu + (1/t - 1)). */
static double flux_time_shift(double mu, double t) {
    return exp(mu) / (exp(mu) + (1.0 / t - 1.0));
}

static int table_alloc(kn_model_sampling *ms, kn_ms_kind kind, double shift, double multiplier, int n, kn_err *err) {
    *ms = (kn_model_sampling){kind, shift, multiplier, n, malloc((size_t)n * sizeof(float))};
    if (!ms->sigmas) return kn_fail(err, KN_ERR_NOMEM, "model sampling: out of memory");
    return KN_OK;
}

/* The sigma tables follow torch's float32 tensor arithmetic step by step: Python
 * scalars become float32 operands, int tensors divided by ints become float32
 * quotients, and `scalar / tensor` is reciprocal(tensor) * scalar. */
int kn_model_sampling_flow(kn_model_sampling *ms, double shift, double multiplier, kn_err *err) {
    if (!(multiplier > 0.0) || !isfinite(shift))
        return kn_fail(err, KN_ERR_INVALID, "model sampling: bad shift %g / multiplier %g", shift, multiplier);
    int rc = table_alloc(ms, KN_MS_DISCRETE_FLOW, shift, multiplier, 1000, err);
    if (rc) return rc;
    float mult = (float)multiplier, alpha = (float)shift, alpha_m1 = (float)(shift - 1.0);
    for (int i = 0; i < ms->n; i++) {
        float ts = (float)(i + 1) / (float)ms->n; /* arange(1, 1001) / 1000 */
        ts = ts * mult;
        float t = ts / mult;
        if (shift == 1.0) {
            ms->sigmas[i] = t;
            continue;
        }
        float num = alpha * t;
        float den = alpha_m1 * t;
        den = 1.0f + den;
        ms->sigmas[i] = num / den;
    }
    return KN_OK;
}

int kn_model_sampling_flux(kn_model_sampling *ms, double mu, kn_err *err) {
    if (!isfinite(mu) || !isfinite(exp(mu))) return kn_fail(err, KN_ERR_INVALID, "model sampling: bad Flux mu %g", mu);
    int rc = table_alloc(ms, KN_MS_FLUX, mu, 1.0, 10000, err);
    if (rc) return rc;
    float e_mu = (float)exp(mu);
    for (int i = 0; i < ms->n; i++) {
        float t = (float)(i + 1) / (float)ms->n;
        float r = 1.0f / t;
        r = r - 1.0f;
        float den = e_mu + r;
        float inv = 1.0f / den;
        ms->sigmas[i] = inv * e_mu;
    }
    return KN_OK;
}

void kn_model_sampling_free(kn_model_sampling *ms) {
    free(ms->sigmas);
    ms->sigmas = NULL;
}

int kn_model_sampling_copy(kn_model_sampling *dst, const kn_model_sampling *src, kn_err *err) {
    *dst = *src;
    if (!(dst->sigmas = malloc((size_t)src->n * sizeof *dst->sigmas)))
        return kn_fail(err, KN_ERR_NOMEM, "model sampling: out of memory");
    memcpy(dst->sigmas, src->sigmas, (size_t)src->n * sizeof *dst->sigmas);
    return KN_OK;
}

double kn_flux_mu(double max_shift, double base_shift, int width, int height) {
    const double x1 = 256, x2 = 4096; /* image tokens (2x2 patches of 8x-downscaled latents) */
    double m = (max_shift - base_shift) / (x2 - x1), b = base_shift - m * x1;
    return ((double)width * height / (8 * 8 * 2 * 2)) * m + b;
}

double kn_ms_timestep(const kn_model_sampling *ms, double sigma) {
    return ms->kind == KN_MS_FLUX ? sigma : sigma * ms->multiplier;
}

double kn_ms_sigma(const kn_model_sampling *ms, double timestep) {
    if (ms->kind == KN_MS_FLUX) return flux_time_shift(ms->shift, timestep);
    return time_snr_shift(ms->shift, timestep / ms->multiplier);
}

double kn_ms_percent_to_sigma(const kn_model_sampling *ms, double percent) {
    if (percent <= 0.0) return 1.0;
    if (percent >= 1.0) return 0.0;
    if (ms->kind == KN_MS_FLUX) return flux_time_shift(ms->shift, 1.0 - percent);
    return time_snr_shift(ms->shift, 1.0 - percent);
}

/* Elementwise in double, rounded once: the nearest float to what the float64
 * reference computes (ComfyUI's own float32 ops land within an ulp or two). */
void kn_ms_noise_scaling(float sigma, const float *noise, const float *latent, float *out, int64_t n) {
    double s = sigma;
    for (int64_t i = 0; i < n; i++) out[i] = (float)(s * noise[i] + (1.0 - s) * (latent ? latent[i] : 0.0f));
}

void kn_ms_inverse_noise_scaling(float sigma, float *x, int64_t n) {
    double d = 1.0 - (double)sigma;
    for (int64_t i = 0; i < n; i++) x[i] = (float)(x[i] / d);
}

void kn_ms_calculate_denoised(float sigma, const float *model_output, const float *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)((double)x[i] - (double)model_output[i] * sigma);
}

/* ---- schedulers --------------------------------------------------------------------- */
/* Each writes its schedule to out (room for max(steps, ms->n) + 2 values) and returns the count. */

/* torch.linspace(start, end, n)[i]: the symmetric form torch uses, so the last value is end. */
static double linspace_at(double start, double end, int n, int i) {
    if (n == 1) return start;
    double step = (end - start) / (n - 1);
    return i < n / 2 ? start + step * i : end - step * (n - 1 - i);
}

static int sched_simple(const kn_model_sampling *ms, int steps, float *out) {
    double ss = (double)ms->n / steps;
    for (int x = 0; x < steps; x++) out[x] = ms->sigmas[ms->n - 1 - (int)(x * ss)];
    out[steps] = 0.0f;
    return steps + 1;
}

static int sched_ddim_uniform(const kn_model_sampling *ms, int steps, float *out) {
    int count = 0;
    if (fabs(ms->sigmas[1]) <= 1e-5) /* a table reaching 0: no extra trailing zero */
        steps += 1;
    else
        out[count++] = 0.0f;
    int ss = ms->n / steps > 1 ? ms->n / steps : 1;
    for (int x = 1; x < ms->n; x += ss) out[count++] = ms->sigmas[x];
    for (int i = 0, j = count - 1; i < j; i++, j--) { /* ascending -> descending */
        float t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
    return count;
}

/* normal_scheduler: timesteps spaced evenly between timestep(sigma_max) and timestep(sigma_min). */
static int timestep_spaced(const kn_model_sampling *ms, int steps, int sgm, float *out) {
    double start = kn_ms_timestep(ms, kn_ms_sigma_max(ms)), end = kn_ms_timestep(ms, kn_ms_sigma_min(ms));
    int points = steps, zero = 1;
    if (sgm) {
        points = steps + 1; /* the last point is dropped */
    } else if (fabs(kn_ms_sigma(ms, end)) <= 1e-5) {
        points = steps + 1;
        zero = 0;
    }
    int count = sgm ? steps : points;
    for (int i = 0; i < count; i++) out[i] = (float)kn_ms_sigma(ms, linspace_at(start, end, points, i));
    if (zero) out[count++] = 0.0f;
    return count;
}

static int sched_normal(const kn_model_sampling *ms, int steps, float *out) {
    return timestep_spaced(ms, steps, 0, out);
}

static int sched_sgm_uniform(const kn_model_sampling *ms, int steps, float *out) {
    return timestep_spaced(ms, steps, 1, out);
}

static int sched_karras(const kn_model_sampling *ms, int steps, float *out) {
    const double rho = 7.0;
    double min_inv = pow(kn_ms_sigma_min(ms), 1.0 / rho), max_inv = pow(kn_ms_sigma_max(ms), 1.0 / rho);
    for (int i = 0; i < steps; i++)
        out[i] = (float)pow(max_inv + linspace_at(0.0, 1.0, steps, i) * (min_inv - max_inv), rho);
    out[steps] = 0.0f;
    return steps + 1;
}

static int sched_exponential(const kn_model_sampling *ms, int steps, float *out) {
    double hi = log(kn_ms_sigma_max(ms)), lo = log(kn_ms_sigma_min(ms));
    for (int i = 0; i < steps; i++) out[i] = (float)exp(linspace_at(hi, lo, steps, i));
    out[steps] = 0.0f;
    return steps + 1;
}

/* Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz). */
static double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / (fabs(d) < tiny ? tiny : d);
    double h = d;
    for (int m = 1; m <= 500; m++) {
        double aa = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m));
        for (int half = 0; half < 2; half++) {
            d = 1.0 + aa * d;
            c = 1.0 + aa / c;
            d = 1.0 / (fabs(d) < tiny ? tiny : d);
            c = fabs(c) < tiny ? tiny : c;
            h *= d * c;
            aa = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m));
        }
        if (fabs(d * c - 1.0) < 1e-16) break;
    }
    return h;
}

/* log_beta = ln B(a, b). */
static double beta_cdf(double x, double a, double b, double log_beta) {
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    double front = exp(a * log(x) + b * log1p(-x) - log_beta);
    if (x < (a + 1.0) / (a + b + 2.0)) return front * beta_cf(a, b, x) / a;
    return 1.0 - front * beta_cf(b, a, 1.0 - x) / b;
}

/* scipy.stats.beta.ppf(p, a, b) by bisection to the last bit. */
static double beta_ppf(double p, double a, double b) {
    if (p <= 0.0) return 0.0;
    if (p >= 1.0) return 1.0;
    if (a == b && p == 0.5) return 0.5; /* exact by symmetry; rint then rounds the tie to even */
    double lo = 0.0, hi = 1.0, log_beta = lgamma(a) + lgamma(b) - lgamma(a + b);
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (beta_cdf(mid, a, b, log_beta) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

static int sched_beta(const kn_model_sampling *ms, int steps, float *out) {
    const double alpha = 0.6, beta = 0.6;
    int count = 0;
    double last = -1.0, total = ms->n - 1;
    for (int i = 0; i < steps; i++) {
        double ts = 1.0 - i * (1.0 / steps); /* 1 - numpy.linspace(0, 1, steps, endpoint=False) */
        double t = nearbyint(beta_ppf(ts, alpha, beta) * total);
        if (t != last) out[count++] = ms->sigmas[(int)t];
        last = t;
    }
    out[count++] = 0.0f;
    return count;
}

static int sched_linear_quadratic(const kn_model_sampling *ms, int steps, float *out) {
    const double threshold = 0.025;
    float sigma_max = kn_ms_sigma_max(ms);
    if (steps == 1) {
        out[0] = 1.0f * sigma_max;
        out[1] = 0.0f;
        return 2;
    }
    int lin = steps / 2, quad = steps - lin;
    double diff = lin - threshold * steps;
    double quad_coef = diff / (lin * (double)quad * quad);
    double lin_coef = threshold / lin - 2.0 * diff / ((double)quad * quad);
    double c = quad_coef * ((double)lin * lin);
    for (int i = 0; i < steps; i++) {
        double s = i < lin ? i * threshold / lin : quad_coef * ((double)i * i) + lin_coef * i + c;
        out[i] = (float)(1.0 - s) * sigma_max; /* a FloatTensor times the float32 sigma_max */
    }
    out[steps] = 0.0f * sigma_max;
    return steps + 1;
}

static int sched_kl_optimal(const kn_model_sampling *ms, int steps, float *out) {
    double a_min = atan(kn_ms_sigma_min(ms)), a_max = atan(kn_ms_sigma_max(ms));
    for (int i = 0; i < steps; i++) {
        double adj = i / (double)(steps - 1); /* one step: 0/0 = NaN, as in ComfyUI */
        out[i] = (float)tan(adj * a_min + (1.0 - adj) * a_max);
    }
    out[steps] = 0.0f;
    return steps + 1;
}

static const struct {
    const char *name;
    int (*fn)(const kn_model_sampling *ms, int steps, float *out);
} schedulers[] = {
    {"normal", sched_normal},
    {"karras", sched_karras},
    {"exponential", sched_exponential},
    {"sgm_uniform", sched_sgm_uniform},
    {"simple", sched_simple},
    {"ddim_uniform", sched_ddim_uniform},
    {"beta", sched_beta},
    {"linear_quadratic", sched_linear_quadratic},
    {"kl_optimal", sched_kl_optimal},
};

int kn_scheduler_sigmas(const kn_model_sampling *ms, const char *name, int steps, float **sigmas, int *n,
                        kn_err *err) {
    *sigmas = NULL;
    *n = 0;
    for (size_t i = 0; i < sizeof schedulers / sizeof schedulers[0]; i++) {
        if (strcmp(schedulers[i].name, name) != 0) continue;
        if (steps < 1 || steps > (1 << 24))
            return kn_fail(err, KN_ERR_INVALID, "scheduler %s: %d steps (need 1 or more)", name, steps);
        if (!ms->sigmas || ms->n < 2) return kn_fail(err, KN_ERR_INVALID, "scheduler %s: no sigma table", name);
        size_t room = (size_t)(steps > ms->n ? steps : ms->n) + 2;
        float *out = malloc(room * sizeof *out);
        if (!out) return kn_fail(err, KN_ERR_NOMEM, "scheduler %s: out of memory for %d steps", name, steps);
        *n = schedulers[i].fn(ms, steps, out);
        *sigmas = out;
        return KN_OK;
    }
    return kn_fail(err, KN_ERR_NOT_FOUND, "unknown scheduler '%s'", name);
}
