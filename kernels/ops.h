/* kn ops: the tensor operations every model is built from.
 *
 * One entry point per op. Each checks shapes and dtypes (errors name the
 * tensors), then dispatches on the device of its output to the CPU kernel
 * (kernels/cpu/) or the CUDA kernel (kernels/cuda/). Kernels themselves assume
 * checked input. A DiT block and an LLM layer call the same functions.
 *
 * Conventions
 *  - Activations are contiguous and row-major; on CPU they are F32. Where an
 *    op says so, inputs may be strided views (kn_modulate's rows,
 *    kn_attention_ex's q/k/v, kn_patchify's tokens).
 *  - Weights may be F32, BF16, F16, F8_E4M3 or F8_E5M2 (with tensor->scale);
 *    they are never converted as a whole: GEMM widens them panel by panel.
 *  - Outputs may alias inputs where noted ("in place allowed").
 *  - Errors go to ctx->err; every op returns KN_OK or an error code.
 *  - Interrupts: when ctx->cancel (an atomic_int, owned by the caller; NULL:
 *    none) is non-zero, kn_linear, kn_attention_ex, kn_conv2d and kn_conv3d
 *    refuse to start with KN_ERR_CANCELLED (a convolution also stops between
 *    its tiles), so a text encoder, DiT or VAE stops within about one op of
 *    /interrupt, with no check in the models.
 */
#ifndef KN_OPS_H
#define KN_OPS_H

#include "kernels/tensor.h"

typedef enum kn_precision {
    KN_PREC_FP32 = 0, /* f32 GEMM inputs: weights widened exactly, per panel */
    KN_PREC_BF16,     /* activations rounded to bf16, bf16 weights, f32 accumulation */
    KN_PREC_FP16,     /* same with fp16 (CUDA only; CPU falls back to FP32) */
} kn_precision;

typedef struct kn_ctx {
    kn_device device;
    kn_precision precision;
    kn_arena *scratch; /* op temporaries; each op restores the mark it found */
    kn_err err;
    double flops;      /* 2 x the multiply-adds of the GEMMs and attentions run so far (benchmarks read it) */
    const void *cancel; /* const atomic_int * (C11; this header is also CUDA C++'s), see Interrupts */
} kn_ctx;

/* KN_ERR_CANCELLED (ctx->err set, naming op) once ctx->cancel is set, else
 * KN_OK; kn_ctx_cancelled only reads the flag (from any thread). */
int kn_ctx_check_cancel(kn_ctx *ctx, const char *op);
int kn_ctx_cancelled(const kn_ctx *ctx);

int kn_ctx_init(kn_ctx *ctx, kn_device dev, kn_precision prec);
void kn_ctx_free(kn_ctx *ctx);
int kn_precision_parse(const char *s, kn_precision *out); /* "fp32" | "bf16" | "fp16" */

/* y[..., N] = x[..., K] @ w[N, K]^T (+ bias[N]). bias may be NULL. */
int kn_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias);

/* One low-rank adapter of a linear layer (a plain LoRA kept unmerged):
 * y[..., row0 : row0 + n] += scale * (x @ down^T) @ up^T, up having n <= N
 * rows: all of y, or the slice of a fused weight a LoRA of one projection
 * patches (Flux's q, k, v in qkv). The factors are contiguous CPU weights of
 * any float dtype (views into a LoRA file's mapping: loras/), widened per
 * call like every weight here, owned by whoever built the adapter, and must
 * outlive every call that reads them. */
typedef struct kn_lora_adapter {
    const kn_tensor *down; /* [rank, K] */
    const kn_tensor *up;   /* [n, rank] */
    float scale;           /* strength * alpha / rank */
    int64_t row0;          /* first output feature it adds to */
} kn_lora_adapter;

/* The adapters a model keeps beside one weight slot (n == 0: none). */
typedef struct kn_adapter_list {
    const kn_lora_adapter *ad;
    int n;
} kn_adapter_list;

/* kn_linear plus n low-rank adapters: y = x @ w^T + bias + sum_i (adapter i's term on its
 * output rows), without touching w. The adapter terms are computed in F32 whatever
 * ctx->precision says (r(K+N)/(KN) of the linear's FLOPs, ~1 % at rank 16
 * on Qwen-Image). n == 0 is kn_linear.
 * CPU only: adapters on a CUDA output fail with KN_ERR_UNSUPPORTED. */
int kn_linear_lora(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                   const kn_lora_adapter *ad, int n);

/* Over the last dim D. w (and b) are [D] or NULL (no affine). In place allowed. */
int kn_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int kn_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                 const kn_tensor *b, float eps);

typedef enum kn_rope_mode {
    KN_ROPE_INTERLEAVED, /* pairs (x[2i], x[2i+1]): Flux, Qwen-Image, Z-Image DiTs */
    KN_ROPE_HALF,        /* pairs (x[i], x[i+D/2]), "rotate_half": Llama/Qwen LLMs */
} kn_rope_mode;
/* In place on x [B, L, H, D]; cos and sin are F32 [L, D/2] (pair i uses column i). */
int kn_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode);
/* The cos/sin tables for kn_rope (CPU F32 [L, D/2], caller-allocated) from
 * per-token positions pos[L][n_axes]: axis a owns dims[a] channels (D =
 * sum of dims), its pair k turns by pos * theta^(-2k/dims[a]); pair blocks
 * are ordered by axis. Angles in double, rounded once (as the references). */
int kn_rope_tables(kn_ctx *ctx, kn_tensor *cos_t, kn_tensor *sin_t, const double *pos, int n_axes,
                   const int *dims, double theta);

/* Qwen2-VL's multimodal RoPE tables (mrope_section): pair k of D/2 turns by
 * pos * theta^(-2k/D) with pos the position of stream s(k), the streams'
 * sections[0..n_streams) covering the pairs in turn (Qwen2.5-VL: t, h, w over
 * 16, 24, 24 of 64). pos[L][n_streams]. With equal streams this is
 * kn_rope_tables with one axis of D channels, bit for bit. */
int kn_mrope_tables(kn_ctx *ctx, kn_tensor *cos_t, kn_tensor *sin_t, const double *pos, int n_streams,
                    const int *sections, double theta);

/* Scaled dot-product attention: out = softmax(scale * q k^T + key_mask + bias) v.
 *   q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D], out [B, Lq, Hq, D]; Hq % Hkv == 0
 *   (query head h reads kv head h / (Hq / Hkv)).
 *   q, k and v may be strided views: only the head dim must be contiguous
 *   (stride 1), so q/k/v can be read in place from a fused qkv projection
 *   [B, L, (Hq + 2 Hkv) D] or from head-major [B, H, L, D] buffers (see
 *   kn_tensor_view). out is contiguous.
 * The CPU kernel is tiled with an online softmax: no Lq x Lk buffer. */
typedef struct kn_attention_args {
    const kn_tensor *key_mask; /* NULL or F32 [B, Lk], added to every score of that key (0 keep, -inf/-big drop) */
    const kn_tensor *bias;     /* NULL or F32 [Bb, Hq, Lq, Lk], Bb == B or 1 (broadcast over the batch),
                                * contiguous: added to the scores (T5's relative position bias) */
    int causal;                /* query i sees keys j <= i (Lq == Lk) */
    float scale;
    kn_tensor *lse;            /* NULL or F32 [B, Hq, Lq], contiguous, out: the natural log of sum_j exp(s_ij)
                                * over the scaled, masked, biased scores s_ij that query i sees */
} kn_attention_args;
/* Rows whose keys all score -inf (every key masked, or Lk == 0) output 0 and
 * get lse = -inf: they carry no weight when partial results over disjoint key
 * ranges are merged (ring attention):
 *   lse = logaddexp(lse1, lse2), out = out1 exp(lse1 - lse) + out2 exp(lse2 - lse)
 * (a row that is -inf in both parts stays 0: guard exp(-inf - -inf)). */
int kn_attention_ex(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                    const kn_attention_args *a);
/* Shorthand for kn_attention_ex without bias or lse. */
int kn_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k,
                 const kn_tensor *v, const kn_tensor *key_mask, int causal, float scale);

/* Latents to DiT tokens and back: x [B, C, H, W] or [B, C, 1, H, W] (contiguous)
 * and tokens [B, hl*wl, F] with F = C*p*p, hl = ceil(H/p), wl = ceil(W/p).
 * Tokens are in raster order (token i*wl + j is patch row i, column j); the
 * latent is circularly padded up to whole patches first, as ComfyUI's
 * common_dit.pad_to_patch_size (padding_mode "circular"): padded row H + r
 * reads row r. tokens may be a view whose batch and token strides are any
 * (the feature dim F is contiguous; written tokens must not overlap): e.g. a
 * token range of a longer sequence where reference latents follow the main
 * image. x and tokens share a dtype (F32 on the CPU). Orders as in ComfyUI:
 * Flux (comfy/ldm/flux/model.py) and Qwen-Image (comfy/ldm/qwen_image/model.py)
 * rearrange "b c (h ph) (w pw) -> b (h w) (c ph pw)"; Lumina/Z-Image
 * (comfy/ldm/lumina/model.py, NextDiT.patchify_and_embed) take
 * img.view(C, H/p, p, W/p, p).permute(1, 3, 2, 4, 0), i.e. (py, px, c), and
 * unpatchify inverts it with .view(H/p, W/p, p, p, C).permute(4, 0, 2, 1, 3). */
typedef enum kn_patch_order {
    KN_PATCH_C_PY_PX, /* feature (c*p + py)*p + px: Flux, Qwen-Image */
    KN_PATCH_PY_PX_C, /* feature (py*p + px)*C + c: Z-Image / Lumina */
} kn_patch_order;
int kn_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order);
/* The inverse: x from tokens, the padding cropped away (x's H, W set the grid). */
int kn_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order);

typedef enum kn_act {
    KN_ACT_SILU,       /* x * sigmoid(x) */
    KN_ACT_GELU_TANH,  /* 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) */
    KN_ACT_GELU_ERF,   /* 0.5x(1 + erf(x / sqrt 2)) */
    KN_ACT_QUICK_GELU, /* x * sigmoid(1.702x) */
    KN_ACT_TANH,       /* tanh(x): Z-Image's gates */
} kn_act;
/* Elementwise, in place allowed. */
int kn_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
/* Softmax over the last dim, in place allowed. */
int kn_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

typedef enum kn_binop { KN_ADD, KN_SUB, KN_MUL, KN_DIV } kn_binop;
/* y = a op b, b broadcast over a: each dim of b equals a's or is 1 (ndims
 * aligned from the right). y has a's shape; in place (y == a) allowed. */
int kn_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op);
/* y = x * s + t (scalars), in place allowed. */
int kn_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t);

/* DiT modulation. x, y [B, L, D]; shift, scale, gate [B, D] rows of a larger
 * F32 tensor are fine (their row stride is st[0]).
 *   kn_modulate:  y = x * (1 + scale) + shift        (in place allowed)
 *   kn_gate_add:  acc += gate * x                     */
int kn_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift,
                const kn_tensor *scale);
int kn_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate);

/* Weights of any float dtype to an F32 tensor in ctx->scratch (small tensors:
 * norm weights, biases, embeddings rows). Needs a CPU context and CPU w. */
int kn_weight_f32(kn_ctx *ctx, kn_tensor *out, const kn_tensor *w);

#endif
