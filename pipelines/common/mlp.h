/* kn_mlp: the feed-forward blocks of Kiln's transformers.
 *
 *   plain:  y = down(act(up(x)))                 DiT MLPs (GELU-tanh), CLIP (quick GELU)
 *   gated:  y = down(act(gate(x)) * up(x))       SwiGLU (LLMs, Z-Image), gated GELU (T5)
 *
 * gate.w.data NULL selects the plain form. x [..., width], y [..., width_out]
 * contiguous F32; the hidden activations come from ctx->scratch. */
#ifndef KN_PIPELINES_MLP_H
#define KN_PIPELINES_MLP_H

#include "pipelines/common/weights.h"

typedef struct kn_mlp {
    kn_lin up, gate, down;
} kn_mlp;

int kn_mlp_forward(kn_ctx *ctx, const kn_weight_table *tab, const kn_mlp *m, kn_act act, const kn_tensor *x,
                   kn_tensor *y);

#endif
