/* ComfyUI's flow model sampling and sigma schedulers.
 *
 * kn_model_sampling is ComfyUI's model_sampling object for the rectified-flow
 * (CONST prediction) families Kiln runs: ModelSamplingDiscreteFlow (Z-Image,
 * Flux-schnell, SD3; the ModelSamplingAuraFlow and ModelSamplingSD3 nodes) and
 * ModelSamplingFlux (Flux-dev, Qwen-Image by default; the ModelSamplingFlux
 * node). Its sigma table is built with torch's float32 operations, bit for bit;
 * the schedules that only pick table entries (simple, ddim_uniform, beta) are
 * therefore exact, the others are computed in double and rounded to float
 * (within a float32 ulp or two of torch's float32 arithmetic).
 *
 * Schedulers go by ComfyUI's names (SCHEDULER_NAMES): normal, karras,
 * exponential, sgm_uniform, simple, ddim_uniform, beta, linear_quadratic,
 * kl_optimal. A schedule is descending and normally ends in 0 with steps + 1
 * values, but ddim_uniform and beta may return other lengths, and kl_optimal
 * with one step returns [NaN, 0], all as ComfyUI does. */
#ifndef KN_SAMPLING_SCHEDULERS_H
#define KN_SAMPLING_SCHEDULERS_H

#include <stdint.h>

#include "kernels/error.h"

typedef enum kn_ms_kind {
    KN_MS_DISCRETE_FLOW, /* sigma(t) = time_snr_shift(shift, t / multiplier), timestep = sigma * multiplier */
    KN_MS_FLUX,          /* sigma(t) = e^mu / (e^mu + 1/t - 1), timestep = sigma; shift holds mu */
} kn_ms_kind;

typedef struct kn_model_sampling {
    kn_ms_kind kind;
    double shift;      /* time_snr_shift factor, or Flux's mu */
    double multiplier; /* DISCRETE_FLOW's timestep scale (1 for AuraFlow/Z-Image, 1000 for SD3); 1 for FLUX */
    int n;             /* table entries: 1000, or 10000 for FLUX */
    float *sigmas;     /* ascending: sigmas[0] = sigma_min, sigmas[n - 1] = sigma_max */
} kn_model_sampling;

/* ModelSamplingDiscreteFlow with set_parameters(shift, multiplier). */
int kn_model_sampling_flow(kn_model_sampling *ms, double shift, double multiplier, kn_err *err);
/* ModelSamplingFlux with set_parameters(shift = mu). */
int kn_model_sampling_flux(kn_model_sampling *ms, double mu, kn_err *err);
void kn_model_sampling_free(kn_model_sampling *ms);
/* dst = a copy of src with its own table (model clones). */
int kn_model_sampling_copy(kn_model_sampling *dst, const kn_model_sampling *src, kn_err *err);
/* The ModelSamplingFlux node's resolution-dependent mu (1024x1024 with 1.15/0.5 gives 1.15). */
double kn_flux_mu(double max_shift, double base_shift, int width, int height);

static inline float kn_ms_sigma_min(const kn_model_sampling *ms) { return ms->sigmas[0]; }
static inline float kn_ms_sigma_max(const kn_model_sampling *ms) { return ms->sigmas[ms->n - 1]; }
/* What the diffusion model receives for a sigma, and back. */
double kn_ms_timestep(const kn_model_sampling *ms, double sigma);
double kn_ms_sigma(const kn_model_sampling *ms, double timestep);
/* 1 at p <= 0, 0 at p >= 1 (start/end_percent, and dpmpp_2m_sde's first-sigma offset). */
double kn_ms_percent_to_sigma(const kn_model_sampling *ms, double percent);

/* The CONST (rectified flow) prediction, elementwise over n values; in place allowed:
 *   noise_scaling:         out = sigma * noise + (1 - sigma) * latent (latent NULL: zeros)
 *   inverse_noise_scaling: x = x / (1 - sigma)
 *   calculate_denoised:    out = x - model_output * sigma
 * (calculate_input is the identity for CONST models.) */
void kn_ms_noise_scaling(float sigma, const float *noise, const float *latent, float *out, int64_t n);
void kn_ms_inverse_noise_scaling(float sigma, float *x, int64_t n);
void kn_ms_calculate_denoised(float sigma, const float *model_output, const float *x, float *out, int64_t n);

/* comfy.samplers.calculate_sigmas(ms, name, steps) into a malloc'd array
 * (*sigmas, free() it) of *n values. steps >= 1. */
int kn_scheduler_sigmas(const kn_model_sampling *ms, const char *name, int steps, float **sigmas, int *n,
                        kn_err *err);

#endif
