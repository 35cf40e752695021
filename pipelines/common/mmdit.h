/* kn_mmdit: the double-stream (MMDiT) transformer block that Qwen-Image's
 * blocks and Flux's double blocks both are.
 *
 * Per stream s (text, image): (shift1, scale1, gate1, shift2, scale2, gate2)
 * = s.mod(silu(vec)) in six chunks; h = LN(x) * (1 + scale1) + shift1;
 * q, k, v = s.attn(h) (split or fused, per-head q/k RMSNorm); joint attention
 * over [text, image] with interleaved RoPE; x += gate1 * s.attn.out(o_s);
 * x += gate2 * s.mlp(LN(x) * (1 + scale2) + shift2).
 * Image tokens from n_main on (reference latents of edit models) may be
 * modulated with a second vector (timestep 0: Qwen-Image-Edit-2511, Flux
 * Kontext's index_timestep_zero). Under sequence parallelism every length
 * above is this rank's (n_main too: its rows before the references). */
#ifndef KN_PIPELINES_MMDIT_H
#define KN_PIPELINES_MMDIT_H

#include "pipelines/common/attention.h"
#include "pipelines/common/mlp.h"

typedef struct kn_mmdit_stream {
    kn_lin mod; /* [6D, D] */
    kn_attn attn;
    kn_mlp mlp;
} kn_mmdit_stream;

typedef struct kn_mmdit_block {
    kn_mmdit_stream txt, img;
} kn_mmdit_block;

typedef struct kn_mmdit_args {
    kn_attn_shape shape;
    kn_act act;                 /* of the MLPs */
    float ln_eps;
    const kn_tensor *vec;       /* silu(vec) [B, D]: what the modulations read */
    const kn_tensor *vec0;      /* the same for image tokens n_main.., or NULL */
    int64_t n_main;
    const kn_tensor *cos, *sin; /* [Lt + Li, head_dim / 2] */
    const kn_tensor *key_mask;  /* [B, Lt + Li] additive, or NULL */
    const kn_sp *sp;            /* sequence parallel: img and txt are this rank's rows of seq */
    const kn_sp_seq *seq;       /* {Lt, Li} globally */
} kn_mmdit_args;

/* img [B, Li, D] and txt [B, Lt, D] updated in place. */
int kn_mmdit_block_forward(kn_ctx *ctx, const kn_weight_table *tab, const kn_mmdit_block *w, kn_tensor *img,
                           kn_tensor *txt, const kn_mmdit_args *a);

#endif
