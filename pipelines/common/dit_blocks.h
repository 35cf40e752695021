/* DiT building blocks shared by the diffusion transformers (Qwen-Image,
 * Flux, Z-Image): timestep embedding, adaLN modulation, the final layer,
 * and RoPE position ids of latent grids.
 *
 * Modulation vectors are rows of a [B, k*D] tensor (a Linear over silu(temb))
 * read as k chunks of D: chunk i is columns [i*D, (i+1)*D). A kn_mod names
 * such a tensor and, for models that modulate some tokens differently
 * (Qwen-Image-Edit-2511 reference tokens use temb(0)), a second one for
 * tokens from n_main on. */
#ifndef KN_PIPELINES_DIT_BLOCKS_H
#define KN_PIPELINES_DIT_BLOCKS_H

#include "pipelines/common/seqpar.h"
#include "pipelines/common/weights.h"

/* emb[0..ch) = [cos(args), sin(args)], args_k = scale * t * max_period^(-k / (ch/2)):
 * ComfyUI's timestep_embedding (Flux, Z-Image) and diffusers' Timesteps with
 * flip_sin_to_cos (Qwen-Image). Angles in double, rounded once. */
void kn_dit_sinusoid(float *emb, int64_t ch, double t, double scale, double max_period);

/* out [B, D] = l2(silu(l1(sinusoid(t[b])))) with the sinusoid l1 expects
 * (its input width). */
int kn_dit_time_embed(kn_ctx *ctx, const kn_weight_table *tab, const kn_lin *l1, const kn_lin *l2, const float *t,
                      double scale, double max_period, kn_tensor *out);

typedef struct kn_mod {
    const kn_tensor *mod;  /* [B, k*D] */
    const kn_tensor *mod0; /* NULL, or [B, k*D] for tokens n_main.. */
    int64_t n_main;
} kn_mod;

/* x [B, L, D] = x * (1 + chunk(scale)) + chunk(shift), in place; shift < 0:
 * no shift (Z-Image modulates by scale alone). */
int kn_mod_modulate(kn_ctx *ctx, kn_tensor *x, const kn_mod *m, int shift, int scale);
/* x += chunk(gate) * delta. */
int kn_mod_gate(kn_ctx *ctx, kn_tensor *x, const kn_tensor *delta, const kn_mod *m, int gate);

/* The final adaLN layer: x = LN(x) * (1 + scale) + shift, in place, with
 * [a, b] = lin(vec) ([B, 2D]): (scale, shift) = (a, b) for diffusers-style
 * models (Qwen-Image), (b, a) when shift_first (Flux). */
int kn_dit_final_norm(kn_ctx *ctx, const kn_weight_table *tab, const kn_lin *lin, const kn_tensor *vec, kn_tensor *x,
                      int shift_first, float eps);

/* The patch grid of a latent [B, C, (1,) H, W]: ceil(H / p) x ceil(W / p). */
typedef struct kn_dit_grid {
    int64_t H, W, hl, wl;
} kn_dit_grid;

kn_dit_grid kn_dit_grid_of(const kn_tensor *x, int p);

/* The image tokens of a DiT: x's patches then each reference latent's, in
 * one [B, N, C*p*p] tensor (kn_patchify: circular padding, raster order). */
int kn_dit_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, const kn_tensor *const *refs, int n_refs,
                    int p, kn_patch_order order);
/* out = the first (x's) patches of n tokens [B, n, C*p*p], cropped to out's
 * size. Under sequence parallelism tokens holds this rank's rows of them
 * (contiguous, kn_sp_local(sp, n)), gathered from every rank first. */
int kn_dit_unpatchify(kn_ctx *ctx, kn_tensor *out, const kn_tensor *tokens, const kn_sp *sp, int64_t n, int p,
                      kn_patch_order order);

/* RoPE ids of an hl x wl patch grid in raster order: pos[3t..3t+2] =
 * (frame, row0 + i, col0 + j) for token t = i * wl + j. */
void kn_dit_grid_ids(double *pos, int64_t hl, int64_t wl, double frame, double row0, double col0);

#endif
