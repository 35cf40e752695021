/* kn_vae_blocks: the layers ComfyUI's convolutional image VAEs are built
 * from, shared by the KL autoencoder (kl.h: comfy/ldm/modules/diffusionmodules
 * /model.py, Flux's ae) and the Wan 2.1 VAE on single frames (wan21.h), with
 * the loading helpers and the per-call memory discipline that runs them.
 *
 * Contract
 *  - A coder (encoder or decoder) is a list of layers run in order, each named
 *    by its checkpoint prefix ("decoder.mid.block_1"), which errors and the
 *    debug hook use:
 *     CONV        y = conv(x), or conv(silu(x)) when `silu` is set (a head's conv);
 *     NORM        y = norm(x) (a head's norm, before the SiLU);
 *     RESIDUAL    y = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))),
 *                 shortcut a 1x1 conv when the width changes, else identity;
 *     ATTENTION   y = x + proj(attn(q, k, v of norm(x))), one head over the H*W
 *                 positions, scale 1/sqrt(C);
 *     DOWNSAMPLE  zero pad right and bottom by 1, 3x3 stride-2 conv (n -> n / 2);
 *     UPSAMPLE    nearest 2x then a 3x3 conv (fused: the 4x input is never built).
 *  - Norms are torch GroupNorm (groups > 0, weight and bias) or Wan's channel
 *    RMS norm (groups 0, gamma only). Convs with 4-D weights are conv2d with
 *    `pad` on every side; 5-D weights (Wan's CausalConv3d) run on the feature
 *    map as a single frame (pad_front 2 * pad), i.e. with their last temporal tap.
 *  - Feature maps are [B, C, H, W] F32 on the CPU. Weights are views into the
 *    file's mapping: the kn_st_file outlives the model.
 *  - kn_vae_run (one per encode/decode call): activations ping-pong between
 *    two arenas, a layer's temporaries live in a third, op temporaries in
 *    ctx->scratch. Each arena keeps a first chunk as big as its largest request,
 *    so feature maps of hundreds of MB are mapped a few times per call, not once
 *    per layer; the peak is about three of the call's largest feature maps.
 *  - Errors go to ctx->err (loading: to the loader's err), prefixed with
 *    "<what> <layer name>" ("flux_vae decoder.up.2.block.0"). */
#ifndef KN_PIPELINES_VAE_BLOCKS_H
#define KN_PIPELINES_VAE_BLOCKS_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/family.h"

#define KN_VAE_MAX_LAYERS 40 /* Wan's decoder, the longest coder, has 22 */

typedef struct kn_vae_conv {
    kn_tensor w, b; /* w [out, in, (kt,) k, k], b [out] */
    int pad;
} kn_vae_conv;

typedef struct kn_vae_norm {
    kn_tensor w, b; /* GroupNorm weight and bias [C]; RMS norm: w = gamma (C elements), b unused */
    int groups;     /* 0: channel RMS norm */
    float eps;
} kn_vae_norm;

typedef enum kn_vae_layer_kind {
    KN_VAE_CONV,
    KN_VAE_NORM,
    KN_VAE_RESIDUAL,
    KN_VAE_ATTENTION,
    KN_VAE_DOWNSAMPLE,
    KN_VAE_UPSAMPLE,
} kn_vae_layer_kind;

typedef struct kn_vae_residual {
    kn_vae_norm norm1, norm2;
    kn_vae_conv conv1, conv2, shortcut; /* shortcut.w.data NULL: identity */
} kn_vae_residual;

/* q, k, v and proj are 1x1 convs, held as [C, C] linears over the positions. */
typedef struct kn_vae_attention {
    kn_vae_norm norm;
    kn_tensor q_w, q_b, k_w, k_b, v_w, v_b, proj_w, proj_b;
} kn_vae_attention;

typedef struct kn_vae_layer {
    kn_vae_layer_kind kind;
    char name[48];
    int silu; /* CONV: SiLU on the input first */
    union {
        kn_vae_conv conv; /* CONV, DOWNSAMPLE, UPSAMPLE */
        kn_vae_norm norm;
        kn_vae_residual res;
        kn_vae_attention attn;
    };
} kn_vae_layer;

typedef struct kn_vae_coder {
    kn_vae_layer layers[KN_VAE_MAX_LAYERS];
    int n_layers;
} kn_vae_coder;

/* ---- loading ----------------------------------------------------------------------- */

typedef struct kn_vae_loader {
    const kn_st_file *f;
    kn_err *err;
} kn_vae_loader;

/* The tensor named by fmt, checked to be `ndim` dims of sizes ne (-1: any). */
int kn_vae_load_tensor(const kn_vae_loader *ld, kn_tensor *t, int ndim, const int64_t *ne, const char *fmt, ...)
    KN_PRINTF(5, 6);
/* <prefix>.weight [out, in, (k,) k, k] (5-D when dims3) and <prefix>.bias [out]. */
int kn_vae_load_conv(const kn_vae_loader *ld, kn_vae_conv *c, const char *prefix, int64_t out, int64_t in, int64_t k,
                     int dims3, int pad);
/* <prefix>.weight [out, in, 1, 1] as a linear [out, in], and <prefix>.bias [out]. */
int kn_vae_load_1x1(const kn_vae_loader *ld, kn_tensor *w, kn_tensor *b, const char *prefix, int64_t out, int64_t in);
/* <prefix>.weight and <prefix>.bias [c] of a GroupNorm of `groups` groups (which must divide c). */
int kn_vae_load_group_norm(const kn_vae_loader *ld, kn_vae_norm *n, const char *prefix, int64_t c, int groups,
                           float eps);
/* Appends a layer of `kind` named by fmt (zeroed but for kind and name). */
int kn_vae_add_layer(kn_vae_coder *c, kn_vae_layer_kind kind, kn_vae_layer **out, kn_err *err, const char *fmt, ...)
    KN_PRINTF(5, 6);

/* ---- running ----------------------------------------------------------------------- */

enum { KN_VAE_ACT0, KN_VAE_ACT1, KN_VAE_TMP, KN_VAE_ARENAS };

typedef struct kn_vae_run {
    kn_ctx *ctx;
    const char *what;                 /* model name for errors ("flux_vae") */
    kn_arena *arena[KN_VAE_ARENAS];
    size_t capacity[KN_VAE_ARENAS];   /* bytes of each arena's first chunk */
    int next;                         /* activation arena for the next output */
    kn_tensor x;                      /* current activation [B, C, H, W] */
    kn_debug_fn debug;                /* called with each layer's name and output, or NULL */
    void *debug_user;
} kn_vae_run;

/* Starts a run on input [B, C, H, W] (read, never written). */
void kn_vae_run_begin(kn_vae_run *r, kn_ctx *ctx, const char *what, const kn_tensor *input);
void kn_vae_run_end(kn_vae_run *r);
/* Runs the coder's layers on r->x; the result is r->x (valid until kn_vae_run_end). */
int kn_vae_coder_forward(kn_vae_run *r, const kn_vae_coder *c);

#endif
