/* kn_llm: the decoder-only language models Kiln's families condition on
 * (Qwen2.5-VL-7B's text model for Qwen-Image, Qwen3-4B for Z-Image), as
 * ComfyUI runs them (comfy/text_encoders/llama.py): one code path, configs
 * from the weights plus a few constants.
 *
 *   x = embed_tokens[ids]                          (looked up in float32)
 *   per layer: x += o_proj(attn(rope(norm_q(q)), rope(norm_k(k)), v))   on RMSNorm(x)
 *              x += down(silu(gate(h)) * up(h)),  h = RMSNorm(x)
 *   hidden = RMSNorm(x)                            (the final norm)
 * q/k/v biases (Qwen2.5) and per-head q/k RMSNorm (Qwen3) are constants of
 * the config; GQA; rotate_half RoPE at positions 0..L-1, or, for a sequence
 * with image rows spliced in (kn_llm_run), Qwen2.5-VL's M-RoPE over three
 * position streams (t, h, w) taking the rotary pairs in sections (for text
 * the streams are equal and M-RoPE is the 1-D RoPE exactly); causal
 * attention plus a padding mask.
 *
 * Weights: "<prefix>embed_tokens.weight", "<prefix>layers.N.*",
 * "<prefix>norm.weight" ("model." in the released files), in their stored
 * dtype; the file must outlive the model. Forward allocates its outputs in
 * the caller's arena and releases its own scratch before returning. CPU only
 * for now: the embedding lookup and the mask are built on the host. */
#ifndef KN_PIPELINES_LLM_H
#define KN_PIPELINES_LLM_H

#include "pipelines/common/attention.h"
#include "pipelines/common/mlp.h"

/* What the checkpoint does not record. */
typedef struct kn_llm_consts {
    int64_t heads;    /* query heads */
    int64_t head_dim; /* width of one head */
    double rope_theta;
    float eps;        /* RMSNorm epsilon */
    int qkv_bias;     /* q/k/v projections have biases (Qwen2.5) */
    int qk_norm;      /* per-head RMSNorm on q and k before RoPE (Qwen3) */
} kn_llm_consts;

typedef struct kn_llm_config {
    int64_t vocab, hidden, intermediate, layers; /* from the weights */
    int64_t kv_heads;                            /* k_proj rows / head_dim */
    kn_llm_consts consts;
} kn_llm_config;

typedef struct kn_llm_layer {
    kn_tensor input_norm, post_norm; /* [hidden] */
    kn_attn attn;
    kn_mlp mlp;
} kn_llm_layer;

typedef struct kn_llm {
    kn_llm_config cfg;
    kn_tensor embed, norm;
    kn_llm_layer *layer; /* cfg.layers entries, owned */
    kn_weight_table weights;
} kn_llm;

/* Bind the weights under `prefix`, derive the config, check every shape
 * (errors name the tensor). Free with kn_llm_free. */
int kn_llm_load(kn_llm *m, const kn_st_file *f, const char *prefix, const kn_llm_consts *consts, kn_err *err);
void kn_llm_free(kn_llm *m);

/* Which hidden states a forward returns (each NULL when not wanted), F32
 * [B, L, hidden] in the caller's arena. Layers after the last one asked for
 * are not run. */
typedef struct kn_llm_outputs {
    kn_tensor *hidden;   /* the last layer after the final norm */
    kn_tensor *prenorm;  /* the last layer before it */
    kn_tensor *layer;    /* the output of layer `layer_index` (0-based), no norm */
    int64_t layer_index; /* negative counts from the end, as ComfyUI's layer_idx (-2: second to last) */
} kn_llm_outputs;

/* ids: I64 [B, L], L >= 1, each in [0, vocab). mask: NULL or [B, L] of any
 * numeric dtype, 1 = keep and anything else = padding (ComfyUI's rule); padded
 * query rows are still computed. Errors go to ctx->err. */
int kn_llm_forward(kn_ctx *ctx, const kn_llm *m, kn_arena *arena, const kn_tensor *ids, const kn_tensor *mask,
                   const kn_llm_outputs *out);

/* The general input: token ids (looked up) or input rows, and optionally
 * the three M-RoPE position streams of the sequence (shared by the batch).
 * kn_llm_forward is {ids, NULL, mask, NULL, NULL}. */
typedef struct kn_llm_input {
    const kn_tensor *ids;    /* I64 [B, L], or NULL with embeds */
    const kn_tensor *embeds; /* F32 [B, L, hidden] input rows (e.g. token embeddings with image rows
                              * spliced in), used when ids is NULL */
    const kn_tensor *mask;   /* as in kn_llm_forward */
    const double *pos;       /* [L][3] t, h, w positions, or NULL: 0..L-1 */
    const int *mrope;        /* with pos: the rotary pairs streams t, h, w take in turn (Qwen2.5-VL's
                              * mrope_section: 16, 24, 24), summing to head_dim / 2 */
} kn_llm_input;

int kn_llm_run(kn_ctx *ctx, const kn_llm *m, kn_arena *arena, const kn_llm_input *in, const kn_llm_outputs *out);

#endif
