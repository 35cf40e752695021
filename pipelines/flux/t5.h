/* kn_t5: the T5 v1.1 encoder (T5-XXL as Flux conditions on it), as ComfyUI
 * runs it (comfy/text_encoders/t5.py).
 *
 *   x = shared[ids]                                   (no positional embedding)
 *   bias[h, i, j] = rel_bias[bucket(j - i), h]         (block 0's table, used by every block)
 *   per block: x += o(attn(q, k, v) with scores q k^T + bias, no 1/sqrt(d_kv)) on RMS(x)
 *              x += wo(gelu_tanh(wi_0(h)) * wi_1(h)), h = RMS(x)
 *   hidden = final_layer_norm(x)                       (T5LayerNorm: RMS, weight, no bias)
 * The bucket is bidirectional: 16 per sign (+16 for keys after the query),
 * exact below 8, logarithmic to a distance of 128 (computed in float32 as
 * ComfyUI does). Flux passes no attention mask: the pads take part.
 *
 * Weights: "shared.weight", "encoder.*" as in t5xxl_fp16.safetensors, any
 * float dtype incl. fp8 (scaled). Sizes come from the weights (the head count
 * from the relative-bias table's columns, so d_kv = attention width / heads,
 * 64 in T5-XXL); the bucket count, distance and eps are constants. */
#ifndef KN_FLUX_T5_H
#define KN_FLUX_T5_H

#include "pipelines/common/attention.h"
#include "pipelines/common/mlp.h"

typedef struct kn_t5_consts {
    int buckets, max_distance;
    float eps;
} kn_t5_consts;

extern const kn_t5_consts kn_t5_xxl_consts; /* 32 buckets, distance 128, eps 1e-6 */

typedef struct kn_t5_block {
    kn_tensor ln_attn, ln_ff;
    kn_attn attn;
    kn_mlp ff;
} kn_t5_block;

typedef struct kn_t5 {
    int64_t vocab, dim, inner, heads, head_dim, layers;
    kn_t5_consts consts;
    kn_tensor embed, rel_bias, final_norm; /* rel_bias [buckets, heads] */
    kn_t5_block *block;
    kn_weight_table weights;
} kn_t5;

int kn_t5_load(kn_t5 *m, const kn_st_file *f, const kn_t5_consts *consts, kn_err *err);
void kn_t5_free(kn_t5 *m);

/* The bucket of relative position r = key - query. */
int kn_t5_bucket(const kn_t5_consts *k, int64_t r);

/* ids I64 [B, L]; mask NULL or [B, L] (1 keep, masked keys get -FLT_MAX);
 * hidden: F32 [B, L, dim] allocated in `arena`. Errors in ctx->err. */
int kn_t5_forward(kn_ctx *ctx, const kn_t5 *m, kn_arena *arena, const kn_tensor *ids, const kn_tensor *mask,
                  kn_tensor *hidden);

#endif
