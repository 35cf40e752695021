/* kn_attn: the attention block every transformer in Kiln is made of (DiT
 * joint attention, decoder LLMs, text encoders).
 *
 *   q = norm_q(x Wq + bq), k = norm_k(x Wk + bk), v = x Wv + bv   per stream
 *   o = softmax(rope(q) rope(k)^T * scale + mask) v                over the joint sequence
 *   y = o Wo + bo                                                  per stream
 *
 * Projections are split (q, k, v linears) or fused (one "qkv" linear whose
 * rows are [q; k; v], as Flux and Z-Image store them; with GQA k and v have
 * kv_heads * head_dim rows each). norm_q / norm_k are per-head RMSNorm scales
 * [head_dim] (data NULL: none). Streams that attend jointly (text and image
 * in an MMDiT) project into row ranges of shared [B, L, width] buffers, then
 * one kn_attn_joint runs over the whole sequence; sequence parallelism hooks
 * in there. All activations are contiguous F32 [B, L, heads * head_dim];
 * temporaries come from ctx->scratch and are released before returning. */
#ifndef KN_PIPELINES_ATTENTION_H
#define KN_PIPELINES_ATTENTION_H

#include "pipelines/common/seqpar.h"
#include "pipelines/common/weights.h"

typedef struct kn_attn {
    kn_lin q, k, v;           /* split projections (q.w.data NULL when fused) */
    kn_lin qkv;               /* fused projection (w.data NULL when split) */
    kn_tensor norm_q, norm_k; /* [head_dim] RMSNorm scales, or data NULL */
    kn_lin out;               /* w.data NULL: the caller projects (e.g. Flux single blocks) */
} kn_attn;

typedef struct kn_attn_shape {
    int64_t heads, kv_heads, head_dim;
    float norm_eps; /* of norm_q / norm_k */
} kn_attn_shape;

/* One stream's q, k, v into q [B, n, heads*hd], k, v [B, n, kv_heads*hd]:
 * views (row ranges of joint buffers: kn_tensor_slice along dim 1) or
 * contiguous tensors. x is [B, n, width]. */
int kn_attn_project(kn_ctx *ctx, const kn_weight_table *tab, const kn_attn *w, const kn_attn_shape *s,
                    const kn_tensor *x, kn_tensor *q, kn_tensor *k, kn_tensor *v);

/* The per-head q/k RMSNorm of w (none when its scales are absent), in place on
 * q [B, n, heads*hd] and k [B, n, kv_heads*hd] (views or contiguous): for
 * blocks that project q, k, v themselves (Flux's single blocks). */
int kn_attn_qk_norm(kn_ctx *ctx, const kn_attn *w, const kn_attn_shape *s, kn_tensor *q, kn_tensor *k);

typedef struct kn_attn_args {
    const kn_tensor *cos, *sin; /* RoPE tables [L, hd/2], or NULL: no rotation */
    kn_rope_mode rope;
    const kn_tensor *key_mask;  /* F32 [B, L] additive, or NULL */
    int causal;
    const kn_tensor *bias;      /* F32 [B or 1, heads, Lq, Lk] added to the scores (T5), or NULL */
    float scale;                /* 0: 1 / sqrt(head_dim) */
    /* sequence parallel: q, k, v, o and key_mask hold this rank's rows of
     * seq's streams (seqpar.h); sp NULL or of one rank: the whole sequence */
    const kn_sp *sp;
    const kn_sp_seq *seq;
} kn_attn_args;

/* o = attention over the joint sequence, q and k rotated in place (the
 * tables hold the rows' global positions under sequence parallelism). */
int kn_attn_joint(kn_ctx *ctx, const kn_attn_shape *s, kn_tensor *q, kn_tensor *k, const kn_tensor *v, kn_tensor *o,
                  const kn_attn_args *a);

/* y = rows [t0, t0 + n) of o projected by w->out (o [B, L, heads*hd], y [B, n, width]). */
int kn_attn_output(kn_ctx *ctx, const kn_weight_table *tab, const kn_attn *w, const kn_tensor *o, int64_t t0,
                   kn_tensor *y);

#endif
