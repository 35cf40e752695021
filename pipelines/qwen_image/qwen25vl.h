/* kn_qwen25vl: the Qwen2.5-VL-7B language model as Qwen-Image's text encoder.
 *
 * Text-only input, as ComfyUI runs it (comfy/text_encoders/llama.py,
 * Qwen25_7BVLI): token embeddings, N pre-norm decoder layers (RMSNorm ->
 * GQA self-attention with q/k/v biases, rotate_half RoPE at positions 0..L-1,
 * causal + padding mask, o_proj without bias -> residual; RMSNorm ->
 * down(silu(gate(x)) * up(x)) -> residual), then the final RMSNorm.
 * Multimodal RoPE reduces to 1-D RoPE for text (its three position streams are
 * equal), so the vision tower and M-RoPE sections are not needed here.
 *
 * Weights: tensors "<prefix>embed_tokens.weight", "<prefix>layers.N.*",
 * "<prefix>norm.weight" of an open safetensors file (prefix "model." in the
 * released single-file checkpoint), kept in their stored dtype and read
 * through the shared ops. The file must outlive the model. Sizes come from
 * the weights; the head count, head width, RoPE theta and norm eps are not in
 * the file and come from a kn_qwen25vl_family (kn_qwen25vl_7b for the real
 * model). num_heads * head_dim need not equal hidden.
 *
 * Memory: forward allocates its outputs in the caller's arena (they live until
 * the caller resets it) and releases all of its scratch before returning.
 * CPU only for now: the embedding lookup and mask are built on the host. */
#ifndef KN_QWEN25VL_H
#define KN_QWEN25VL_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"

/* Qwen-Image's chat-template token ids used by the conditioning drop rule. */
#define KN_QWEN_IM_START 151644 /* <|im_start|> */
#define KN_QWEN_TOK_USER 872    /* "user" */
#define KN_QWEN_TOK_NL 198      /* "\n" */

/* Constants of a model family that the checkpoint does not record. */
typedef struct kn_qwen25vl_family {
    int64_t heads;    /* query heads */
    int64_t head_dim; /* width of one head */
    double rope_theta;
    float eps;        /* RMSNorm epsilon */
} kn_qwen25vl_family;

extern const kn_qwen25vl_family kn_qwen25vl_7b; /* 28 heads x 128, theta 1e6, eps 1e-6 */

typedef struct kn_qwen25vl_config {
    int64_t vocab, hidden, intermediate, layers; /* from the weights */
    int64_t kv_heads;                            /* k_proj rows / head_dim */
    kn_qwen25vl_family family;
} kn_qwen25vl_config;

typedef struct kn_qwen25vl_layer {
    kn_tensor input_norm, post_norm;     /* [hidden] */
    kn_tensor q_w, q_b, k_w, k_b, v_w, v_b; /* [heads*head_dim | kv*head_dim, hidden], [..] */
    kn_tensor o_w;                       /* [hidden, heads*head_dim] */
    kn_tensor gate_w, up_w;              /* [intermediate, hidden] */
    kn_tensor down_w;                    /* [hidden, intermediate] */
} kn_qwen25vl_layer;

typedef struct kn_qwen25vl {
    kn_qwen25vl_config cfg;
    kn_tensor embed; /* [vocab, hidden] */
    kn_tensor norm;  /* [hidden] */
    kn_qwen25vl_layer *layer; /* cfg.layers entries, owned */
} kn_qwen25vl;

/* Bind the weights under `prefix` and derive the config; every tensor's shape
 * is checked against it (errors name the tensor). Free with kn_qwen25vl_free. */
int kn_qwen25vl_load(kn_qwen25vl *m, const kn_st_file *f, const char *prefix, const kn_qwen25vl_family *family,
                     kn_err *err);
void kn_qwen25vl_free(kn_qwen25vl *m);

/* ids: I64 [B, L], L >= 1, each in [0, vocab). mask: NULL or [B, L] of any
 * numeric dtype, 1 = keep and anything else = padding (ComfyUI's rule); padded
 * query rows are still computed. Outputs F32 [B, L, hidden] in `arena`:
 * *hidden after the final norm, *prenorm (if not NULL) before it.
 * Errors go to ctx->err. */
int kn_qwen25vl_forward(kn_ctx *ctx, const kn_qwen25vl *m, kn_arena *arena, const kn_tensor *ids,
                        const kn_tensor *mask, kn_tensor *hidden, kn_tensor *prenorm);

/* Where Qwen-Image's conditioning starts in n >= 1 template token ids
 * (ComfyUI QwenImageTEModel): the 2nd <|im_start|> (the 1st when there is one),
 * +3 when followed by "user" "\n" and more tokens. Without any <|im_start|>
 * ComfyUI's index is -1 (+3 as above), which as a Python slice keeps only the
 * last token; that is returned as n - 1. Result is in [0, n). */
int64_t kn_qwen_image_template_end(const int64_t *ids, int64_t n);

/* Qwen-Image conditioning from the encoder output: cond = hidden[:, s:] with
 * s = kn_qwen_image_template_end of ids row 0 (ComfyUI encodes one template,
 * shared by the batch), copied contiguous into `arena`. cond_mask = mask[:, s:]
 * in mask's dtype, or data NULL when mask is NULL or the slice is all ones.
 * ids I64 [B, L], hidden F32 [B, L, D], mask NULL or [B, L]. */
int kn_qwen_image_conditioning(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden,
                               const kn_tensor *mask, kn_tensor *cond, kn_tensor *cond_mask, kn_err *err);

#endif
