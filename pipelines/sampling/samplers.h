/* ComfyUI's samplers, CFG and KSampler pipeline for rectified-flow models.
 *
 * Samplers go by ComfyUI's names and follow comfy/k_diffusion/sampling.py and
 * comfy/extra_samplers/uni_pc.py step for step: euler, euler_ancestral, heun,
 * dpmpp_2m, dpmpp_2m_sde, dpmpp_2m_sde_heun, res_multistep,
 * res_multistep_ancestral, lcm, ddim, uni_pc, uni_pc_bh2. Every Kiln family is
 * a CONST (rectified flow) model, so the flow variants are the ones taken
 * (euler_ancestral is ComfyUI's sample_euler_ancestral_RF, the SDE samplers use
 * the flow half-logSNR). Scalar coefficients are computed in double and each
 * elementwise update in double, rounded once to the float32 state.
 *
 * The model plugs in as a kn_denoise_fn returning the denoised prediction D(x,
 * sigma) (ComfyUI's guided model: calculate_denoised after CFG); kn_cfg_guider
 * builds one from a per-conditioning model callback. Latents and every buffer
 * here are contiguous F32 CPU tensors. */
#ifndef KN_SAMPLING_SAMPLERS_H
#define KN_SAMPLING_SAMPLERS_H

#include <stdatomic.h>

#include "kernels/tensor.h"
#include "pipelines/sampling/noise.h"
#include "pipelines/sampling/schedulers.h"

/* denoised = D(x, sigma), same shape as x. */
typedef int (*kn_denoise_fn)(void *user, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err);

/* At step `step` of `total`: x is the sampler state and denoised the
 * prediction of that step (ComfyUI's sampler callback: x before the step's
 * update, except uni_pc which reports it after). A non-zero return (with err
 * set) aborts sampling with that error. */
typedef int (*kn_progress_fn)(void *user, int step, int total, const kn_tensor *x, const kn_tensor *denoised,
                              kn_err *err);

/* ---- CFG ---------------------------------------------------------------------------- */

/* One conditioning's denoised prediction: negative = 0 for the positive
 * prompt, 1 for the negative one. */
typedef int (*kn_cond_denoise_fn)(void *user, const kn_tensor *x, float sigma, int negative, kn_tensor *denoised,
                                  kn_err *err);

/* math.isclose(cfg, 1.0): ComfyUI then skips the negative pass entirely. */
int kn_cfg_skips_uncond(double cfg);
/* out = uncond + (cond - uncond) * cfg (ComfyUI cfg_function); in place allowed. */
void kn_cfg_combine(float *out, const float *cond, const float *uncond, double cfg, int64_t n);

/* A post-CFG hook (ComfyUI's sampler_post_cfg_function): rewrites the guided
 * prediction `denoised` in place from it and the conditional and
 * unconditional predictions (uncond NULL where CFG 1 skipped that pass;
 * ComfyUI's zeros). Hooks run in order, each on the previous one's output. */
typedef struct kn_post_cfg kn_post_cfg;
struct kn_post_cfg {
    int (*fn)(const kn_post_cfg *h, const kn_tensor *cond, const kn_tensor *uncond, kn_tensor *denoised,
              kn_err *err);
    double strength;
};

/* CFGNorm (comfy_extras/nodes_cfg.py): per latent pixel, over the channel
 * dim 1 of [B, C, ...], denoised *= clamp(|cond| / (|denoised| + 1e-8), 0, 1)
 * * strength: the guided prediction shrunk to the conditional one's norm,
 * never enlarged. */
int kn_cfg_norm(const kn_post_cfg *h, const kn_tensor *cond, const kn_tensor *uncond, kn_tensor *denoised,
                kn_err *err);

/* ComfyUI's CFGGuider as a kn_denoise_fn: pass kn_cfg_denoise with the guider
 * as user. Holds the predictions' buffers; kn_cfg_guider_free it. */
typedef struct kn_cfg_guider {
    kn_cond_denoise_fn model;
    void *user;
    double cfg;
    kn_tensor uncond, cond;  /* allocated on first use (cond only with hooks) */
    const kn_post_cfg *post; /* n_post hooks after CFG */
    int n_post;
} kn_cfg_guider;

int kn_cfg_denoise(void *guider, const kn_tensor *x, float sigma, kn_tensor *denoised, kn_err *err);
void kn_cfg_guider_free(kn_cfg_guider *g);

/* ---- latent formats ------------------------------------------------------------------ */

/* comfy/latent_formats.py for the VAE latents of Kiln's families:
 *   process_in(z)  = (z - shift[c]) * scale / std[c]   VAE latent -> model space
 *   process_out(z) = z * std[c] / scale + shift[c]     model space -> VAE latent
 * over channel dim 1 of [B, C, ...]. */
typedef struct kn_latent_format {
    const char *name;
    int channels;
    float scale;        /* scale_factor */
    const float *shift; /* per channel */
    const float *std;   /* per channel */
} kn_latent_format;

extern const kn_latent_format kn_latent_flux;  /* Flux, Z-Image: (z - 0.1159) * 0.3611 */
extern const kn_latent_format kn_latent_wan21; /* Qwen-Image (Wan 2.1 VAE): (z - mean[c]) / std[c] */

/* In place allowed. */
int kn_latent_process_in(const kn_latent_format *f, const kn_tensor *z, kn_tensor *out, kn_err *err);
int kn_latent_process_out(const kn_latent_format *f, const kn_tensor *z, kn_tensor *out, kn_err *err);

/* ---- samplers ------------------------------------------------------------------------- */

typedef struct kn_sample_params {
    const char *sampler;         /* ComfyUI sampler name */
    const kn_model_sampling *ms; /* the (patched) model sampling of the model */
    const float *sigmas;         /* the schedule, n_sigmas values */
    int n_sigmas;
    kn_denoise_fn denoise;
    void *denoise_user;
    uint64_t seed;              /* KSampler / RandomNoise seed: ancestral and SDE noise derive from it */
    kn_randn_path randn_path;   /* torch CPU kernel the sampler noise reproduces */
    kn_noise_source *noise;     /* NULL: ComfyUI's default source for the sampler */
    kn_progress_fn progress;    /* optional */
    void *progress_user;
    const atomic_int *cancel;   /* optional; checked between steps */
} kn_sample_params;

/* 1 for samplers ComfyUI's KSampler gives a schedule with the second-to-last sigma dropped. */
int kn_sampler_discards_penultimate(const char *sampler);

/* The noise source ComfyUI makes for a sampler that draws noise (*out NULL
 * for the others): default_noise_sampler, or a BrownianTree spanning the
 * positive sigmas. x_numel: values in the latent. */
int kn_sampler_default_noise(const kn_sample_params *p, int64_t x_numel, kn_noise_source **out, kn_err *err);

/* KSampler(model, steps, sampler, scheduler, denoise).sigmas: the scheduler's
 * schedule (one step longer with the penultimate sigma dropped for the
 * samplers above); denoise in (0, 0.9999] computes int(steps / denoise) steps
 * and keeps the last steps + 1 sigmas, denoise <= 0 gives none. */
int kn_ksampler_sigmas(const kn_model_sampling *ms, const char *scheduler, const char *sampler, int steps,
                       double denoise, float **sigmas, int *n, kn_err *err);

/* The last sigma as ComfyUI's inverse_noise_scaling sees it: uni_pc overwrites
 * a final 0 with 0.001 in the caller's tensor, so its result ends up / 0.999. */
float kn_sampler_last_sigma(const kn_sample_params *p);

/* KSAMPLER.sample after the noise scaling: runs the sampler on x (in: the
 * noise-scaled start; out: the result after inverse_noise_scaling). */
int kn_sampler_run(const kn_sample_params *p, kn_tensor *x, kn_err *err);

/* CFGGuider.inner_sample + KSAMPLER.sample: latent_in = process_in(latent)
 * unless the latent is all zeros; x = noise_scaling(sigmas[0], noise,
 * latent_in); kn_sampler_run; samples = process_out(x). format NULL: no latent
 * format (model-space latents). x_final (optional) receives the result before
 * process_out. No sigmas: samples = latent unchanged. */
int kn_sample(const kn_sample_params *p, const kn_latent_format *format, const kn_tensor *noise,
              const kn_tensor *latent, kn_tensor *samples, kn_tensor *x_final, kn_err *err);

#endif
