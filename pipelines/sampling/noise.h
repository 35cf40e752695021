/* Sampling noise exactly as ComfyUI draws it on the CPU with PyTorch.
 *
 * kn_torch_rng is torch's CPU generator (at::mt19937 plus the cached second
 * value of its double Box-Muller), kn_torch_randn is torch.randn for a float32
 * tensor of any size, and kn_prepare_noise is comfy.sample.prepare_noise: the
 * initial latent noise of KSampler and RandomNoise, bit for bit.
 *
 * torch.randn fills tensors of >= 16 values with a vectorised Box-Muller over
 * blocks of 16 whose log/sin/cos depend on the CPU build torch dispatched to:
 * KN_RANDN_AVX2 (x86 with AVX2, which torch 1.13 also uses on AVX512 CPUs; the
 * default, and what ComfyUI gives on ordinary x86 machines) or KN_RANDN_SCALAR
 * (torch's DEFAULT capability: ARM/Apple and x86 without AVX2; libm
 * logf/cosf/sinf, matching glibc's). They differ by ~1 ulp on about a third of
 * the values. Tensors of < 16 values use a double Box-Muller that is the same
 * on every build.
 *
 * kn_noise_source is what samplers draw their per-step noise from (ComfyUI's
 * noise_sampler(sigma, sigma_next)): torch's generator seeded with seed + 1
 * (default_noise_sampler on the CPU) or torchsde's BrownianTree
 * (BrownianTreeNoiseSampler, for the SDE samplers). */
#ifndef KN_SAMPLING_NOISE_H
#define KN_SAMPLING_NOISE_H

#include <stdatomic.h>
#include <stdint.h>

#include "kernels/tensor.h"

typedef enum kn_randn_path {
    KN_RANDN_AVX2 = 0, /* torch's AVX2 kernel: Cephes log/sincos polynomials with FMAs */
    KN_RANDN_SCALAR,   /* torch's DEFAULT kernel: libm logf/cosf/sinf */
} kn_randn_path;

#define KN_MT19937_N 624

typedef struct kn_torch_rng {
    uint32_t state[KN_MT19937_N];
    int next;          /* index of the next output; KN_MT19937_N: twist first */
    int has_normal;    /* a cached second value of the double Box-Muller */
    double normal;
} kn_torch_rng;

/* torch.manual_seed(seed): only the low 32 bits seed mt19937 (seeds equal
 * mod 2^32 give the same numbers); clears the cached normal. */
void kn_torch_rng_seed(kn_torch_rng *g, uint64_t seed);
/* The next raw mt19937 output. */
uint32_t kn_torch_rng_u32(kn_torch_rng *g);
/* torch.randn([n], dtype=float32, generator=g) into out[0..n). */
void kn_torch_randn(kn_torch_rng *g, float *out, int64_t n, kn_randn_path path);

/* comfy.sample.prepare_noise(latent, seed, batch_index) into `noise` (F32, CPU,
 * contiguous, the latent's shape [B, ...]). batch_index NULL: one randn over
 * the whole tensor. Otherwise n_index == B non-negative entries: one randn per
 * batch item for i = 0..max(batch_index), item k taking draw batch_index[k]
 * (draws nobody asks for are discarded, repeats allowed), as LatentFromBatch
 * and RepeatLatentBatch make ComfyUI do. cancel (NULL: none) is looked at
 * every 2^20 values, so a huge latent's noise stops within milliseconds of
 * an interrupt: KN_ERR_CANCELLED, noise partly written. */
int kn_prepare_noise(kn_tensor *noise, uint64_t seed, const int64_t *batch_index, int n_index,
                     kn_randn_path path, const atomic_int *cancel, kn_err *err);

/* Per-step sampler noise: draw() fills `out` (F32, CPU, contiguous, the shape
 * the source was made for) with the noise of the step sigma -> sigma_next. */
typedef struct kn_noise_source kn_noise_source;
struct kn_noise_source {
    int (*draw)(kn_noise_source *src, float sigma, float sigma_next, kn_tensor *out, kn_err *err);
    void (*destroy)(kn_noise_source *src);
};

/* ComfyUI default_noise_sampler(x, seed) with x on the CPU: a generator seeded
 * with seed + 1, one randn of x's size per draw. (On a GPU ComfyUI draws from
 * CUDA's Philox generator instead, which this does not reproduce.) */
int kn_noise_default_new(kn_noise_source **out, uint64_t seed, kn_randn_path path, kn_err *err);

/* ComfyUI BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True):
 * torchsde.BrownianTree(t0=sigma_min, w0=0, t1=sigma_max, entropy=seed,
 * tol=1e-6, pool_size=24) over tensors of `numel` values; a draw is
 * W(sigma -> sigma_next) / sqrt(|sigma_next - sigma|). The increments are
 * torchsde's: numpy SeedSequence seeds per tree node, torch.randn per node,
 * Brownian bridges on the dyadic tree with times rounded to 6 decimals. */
int kn_noise_brownian_new(kn_noise_source **out, int64_t numel, float sigma_min, float sigma_max,
                          uint64_t seed, kn_randn_path path, kn_err *err);

static inline void kn_noise_source_free(kn_noise_source *src) {
    if (src) src->destroy(src);
}

#endif
