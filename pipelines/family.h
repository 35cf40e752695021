/* kn_family: the one interface between the node layer and the models, and the
 * tables that detect which model a file holds.
 *
 * A model file is one of three components, each detected from its tensor
 * keys and shapes as ComfyUI's model_detection.py / sd.py do (never from the
 * file name), then loaded and run through the family's functions:
 *  - a diffusion model (kn_dit_family): load, forward, latent format and
 *    layout, the model sampling ComfyUI gives it by default, the key aliases
 *    LoRA files use for its weights;
 *  - a text encoder (kn_clip_family: ComfyUI's CLIP target, i.e. the encoder
 *    architecture, its tokenizer and prompt template, and what the diffusion
 *    model conditions on): load from one or more files, encode a prompt, and
 *    where the loaded encoder sees images (Qwen2.5-VL with its vision tower)
 *    a prompt with images (kn_clip.encode_images);
 *  - a VAE (kn_vae_family): encode images, decode latents.
 * The nodes hold {family, model} pairs and never name a family.
 *
 * Detection knows more families than Kiln runs: a file of a known but
 * unimplemented family fails with KN_ERR_UNSUPPORTED and a message such as
 * "detected Flux.1 diffusion model; Kiln runs: Qwen-Image", so validation can
 * refuse it before anything is loaded. Adding a family: one folder in
 * pipelines/ with its model code and a `const kn_*_family`, and one row in a
 * detection table in pipelines/family.c (README "Layout").
 *
 * Every loaded model starts with its interface struct (kn_dit, kn_clip,
 * kn_vae), so the family casts back to its own type. Models borrow their
 * kn_st_file (weights stay mapped, in their stored dtype): the caller keeps
 * the file open until the model is freed. */
#ifndef KN_PIPELINES_FAMILY_H
#define KN_PIPELINES_FAMILY_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/common/seqpar.h"
#include "pipelines/common/weights.h"
#include "pipelines/sampling/samplers.h"

/* ---- diffusion models ------------------------------------------------------------ */

typedef struct kn_dit_family kn_dit_family;

typedef struct kn_dit {
    const kn_dit_family *family;
    kn_weight_table *weights; /* the model's (LoRA patches it, loras/lora.h) */
    int64_t channels;         /* latent channels the model takes and returns */
    int ref_method;           /* the file's default for reference latents (family-defined) */
    int64_t context_dim;      /* width of the conditioning it reads */
    int64_t pooled_dim;       /* width of the pooled vector it reads, 0: none */
    /* Sizes the sampler's memory estimate reads (nodes/sampling.c): */
    int64_t dim;              /* hidden width of its tokens */
    int64_t mlp_hidden;       /* hidden width of its feed-forward layers */
    int64_t patch;            /* latent pixels per token side */
} kn_dit;

typedef struct kn_dit_input {
    const kn_tensor *x;            /* model-space latent, the family's layout (latent_ndim) */
    const kn_tensor *timestep;     /* [B]: model_sampling.timestep(sigma) */
    const kn_tensor *context;      /* [B, Lt, context_dim] */
    const kn_tensor *context_mask; /* [B, Lt] or NULL */
    const kn_tensor *pooled;       /* [B, pooled_dim] or NULL */
    const kn_tensor *guidance;     /* [B] or NULL */
    const kn_tensor *const *refs;  /* model-space reference latents (edit models), or NULL */
    int n_refs;
    int ref_method;
    /* sequence parallel group: every rank of it calls with the same inputs
     * and gets the whole output (NULL: this process alone) */
    const kn_sp *sp;
} kn_dit_input;

/* Intermediates for debugging (names as in the fixtures: "img_in", "block0_img", ...). */
typedef int (*kn_debug_fn)(void *user, const char *name, const kn_tensor *t);

/* A module name LoRA files use for (a row slice of) checkpoint weight `to`
 * when it is not the checkpoint's own name (ComfyUI's flux_to_diffusers and
 * the like): '#' in both stands for a block index, so one row covers every
 * block the model has. The patch lands on rows [start*H, (start+size)*H) of
 * `to` (size 0: all rows), H being the row count of the set's unit_key
 * (ComfyUI's hidden_size): diffusers' separate to_q/to_k/to_v are thirds of
 * a fused qkv. swap_halves: the delta's two row halves are exchanged first
 * (ComfyUI's swap_scale_shift: diffusers orders AdaLN (scale, shift)). */
typedef struct kn_key_rename {
    const char *from, *to;
    int start, size;
    int swap_halves;
} kn_key_rename;

typedef struct kn_key_renames {
    const char *unit_key; /* a weight whose dim 0 is H ("img_in.weight") */
    const kn_key_rename *r;
    int n;
} kn_key_renames;

/* Another name a LoRA file may use for a weight (ComfyUI's
 * model_lora_keys_unet): prefix + name, '.' -> '_' in name when underscored.
 * Without renames, name is the checkpoint key k without ".weight", and
 * any_key also maps tensors that are not ".weight" (biases and norm scales,
 * for .diff / .set_weight patches) by their full key. With renames, name is
 * each rename's `from`, for the weight (slice) it stands for. */
typedef struct kn_key_alias {
    const char *prefix;
    int underscored, any_key;
    const kn_key_renames *renames; /* NULL: the checkpoint's own keys */
} kn_key_alias;

/* What no weight of a DiT records: its 3-axis RoPE split (frame, row, col;
 * sum = head_dim), RoPE theta and patch size. Families hold theirs; a test may
 * pass overrides (the fixtures' tiny models use other splits), whose zero
 * fields keep the family's value. */
typedef struct kn_dit_consts {
    int axes_dims[3]; /* all three or none */
    double rope_theta;
    int patch;
} kn_dit_consts;

/* base with the non-zero fields of o (NULL: none) applied. */
kn_dit_consts kn_dit_consts_with(const kn_dit_consts *base, const kn_dit_consts *o);

struct kn_dit_family {
    const char *name;  /* "qwen_image" */
    const char *title; /* "Qwen-Image" */
    /* overrides: NULL for real models */
    int (*load)(kn_dit **out, const kn_st_file *f, const char *prefix, const kn_dit_consts *overrides,
                kn_err *err);
    void (*free)(kn_dit *m); /* NULL-safe */
    /* Called through kn_dit_forward, which owns the scratch. */
    int (*forward)(kn_ctx *ctx, const kn_dit *m, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *debug_user);
    const kn_latent_format *latent;
    int latent_ndim; /* 5: [B, C, 1, h, w] (video VAEs), 4: [B, C, h, w] */
    kn_ms_kind sampling;        /* ComfyUI's default model sampling: FLUX (shift = mu) or DISCRETE_FLOW */
    double shift, multiplier;
    const kn_key_alias *lora_keys;
    int n_lora_keys;
    const char *const *ref_methods; /* ComfyUI's reference_latents_method names; index = ref_method */
    int n_ref_methods;
    const char *text; /* the kn_clip_family.name whose conditioning it takes */
    const char *const *aliases; /* NULL-terminated other spellings of name (fixtures' "zimage"), or NULL */
};

/* The ref_method of a ComfyUI method name, or -1. */
int kn_dit_ref_method(const kn_dit_family *f, const char *name);

/* The family of a diffusion-model file and the prefix its keys carry
 * ("model.diffusion_model." or ""). Unknown or unimplemented families fail
 * (KN_ERR_UNSUPPORTED) with a message naming what was detected. */
int kn_dit_detect(const kn_st_file *f, const kn_dit_family **family, const char **prefix, kn_err *err);
/* The prefix a diffusion-model file's keys carry: ComfyUI's checkpoint prefix
 * "model.diffusion_model." when the file has it (UNETLoader strips it), else "". */
const char *kn_dit_prefix(const kn_st_file *f);
/* The family Kiln runs under `name` (kn_dit_family.name or one of its
 * aliases), or NULL: for tools and fixtures whose tiny files no size rule can
 * detect. */
const kn_dit_family *kn_dit_family_named(const char *name);
/* Detect and load. */
int kn_dit_load(kn_dit **out, const kn_st_file *f, kn_err *err);
void kn_dit_free(kn_dit *m);
/* One forward of the model: out F32 in x's shape with m->channels channels
 * (caller-allocated); the family's scratch is released before returning.
 * debug may be NULL. Errors in ctx->err. */
int kn_dit_forward(kn_ctx *ctx, const kn_dit *m, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *debug_user);
/* "Qwen-Image, ..." of the families Kiln runs, for messages. */
const char *kn_dit_supported(void);

/* Where a single-file checkpoint (CheckpointLoaderSimple) holding a DiT of a
 * family keeps the rest, as ComfyUI's supported_models config of the family
 * says: the diffusion model under "model.diffusion_model." (kn_dit_detect
 * strips it), the text encoders under te_prefix[] (text_encoder_key_prefix
 * "text_encoders." + clip_target's "<name>.transformer."), in load order, for
 * the CLIP family kn_clip_detect picks with clip_type, and the VAE under
 * vae_prefix (vae_key_prefix). */
#define KN_CKPT_MAX_TE 2
typedef struct kn_ckpt_layout {
    const char *te_prefix[KN_CKPT_MAX_TE];
    int n_te;
    const char *clip_type;
    const char *vae_prefix;
} kn_ckpt_layout;

/* The layout of family f's checkpoints; KN_ERR_UNSUPPORTED naming f when Kiln knows none. */
int kn_dit_ckpt_layout(const kn_dit_family *f, const kn_ckpt_layout **out, kn_err *err);

/* ---- text encoders ----------------------------------------------------------------- */

typedef struct kn_clip_family kn_clip_family;
typedef struct kn_clip kn_clip;

/* What CLIPTextEncode returns: cond [1, L, D] F32, and when the family has
 * them an attention mask [1, L] and a pooled vector [1, P] (data NULL
 * otherwise). Tensors owned (kn_tensor_new); kn_text_cond_free frees them. */
typedef struct kn_text_cond {
    kn_tensor cond, mask, pooled;
} kn_text_cond;

void kn_text_cond_free(kn_text_cond *c);

/* A prompt with images, for text encoders that see them (ComfyUI's
 * tokenize_with_weights(text, images=..., llama_template=...): the
 * Qwen-Image-Edit nodes). The images replace the template's image
 * placeholders in order; each is an IMAGE [B, H, W, 3] of which image 0 is
 * seen. */
typedef struct kn_clip_image_prompt {
    const char *text;
    const char *llama_template;     /* "...{}..." around the text, or NULL: the family's template for
                                     * prompts with images (with none: its plain one) */
    const kn_tensor *const *images;
    int n_images;
} kn_clip_image_prompt;

/* Encodes p into out; debug (NULL: none) receives the family's intermediates. */
typedef int (*kn_clip_encode_images_fn)(kn_ctx *ctx, const kn_clip *c, const kn_clip_image_prompt *p,
                                        kn_text_cond *out, kn_debug_fn debug, void *debug_user, kn_err *err);

struct kn_clip {
    const kn_clip_family *family;
    kn_clip_encode_images_fn encode_images; /* NULL: this encoder takes no images */
};

struct kn_clip_family {
    const char *name;  /* "qwen_image" */
    const char *title; /* "Qwen-Image (Qwen2.5-VL-7B)" */
    int n_files;       /* 1: CLIPLoader, 2: DualCLIPLoader */
    /* files in the order detection found them in; tokenizer_dir holds the tokenizer data folders */
    int (*load)(kn_clip **out, const kn_st_file *const *files, const char *tokenizer_dir, kn_err *err);
    void (*free)(kn_clip *c);
    /* texts[0..n): one prompt for every encoder (n == 1, CLIPTextEncode) or one per
     * encoder in file order (CLIPTextEncodeFlux: clip_l, t5xxl); a family with fewer
     * encoders reads the first ones, as ComfyUI ignores the keys it has no encoder for. */
    int (*encode)(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out, kn_err *err);
};

/* The text-encoder family of n files for a CLIPLoader/DualCLIPLoader `type`
 * (ComfyUI's detect_te_model + CLIPType). files[] may be reordered into the
 * order the family loads them in. */
int kn_clip_detect(const kn_st_file **files, int n, const char *type, const kn_clip_family **family, kn_err *err);
void kn_clip_free(kn_clip *c);

/* ---- VAEs -------------------------------------------------------------------------- */

typedef struct kn_vae_family kn_vae_family;

typedef struct kn_vae {
    const kn_vae_family *family;
    int64_t image_channels; /* what encode takes */
    int64_t latent_channels;
    int latent_ndim;        /* layout of the latents it makes: 5 [B, C, T, h, w] or 4 */
    /* f32 values per image pixel its decoder and encoder keep live at their peak, at
     * least (a few full-resolution feature maps): VAEDecode/VAEEncode's memory estimate */
    int64_t peak_channels;
} kn_vae;

struct kn_vae_family {
    const char *name;  /* "wan21" */
    const char *title; /* "Wan 2.1 VAE" */
    int (*load)(kn_vae **out, const kn_st_file *f, kn_err *err);
    void (*free)(kn_vae *v);
    /* Shapes: latent of image [B, C, H, W], image [B, C, H, W] of latent [B, C, (1,) h, w]. */
    int (*latent_shape)(const kn_vae *v, const kn_tensor *image, int64_t *ne, int *ndim, kn_err *err);
    int (*image_shape)(const kn_vae *v, const kn_tensor *latent, int64_t ne[4], kn_err *err);
    /* image in [-1, 1]; the latent is the raw VAE latent (the posterior mean). Errors in ctx->err. */
    int (*encode)(kn_ctx *ctx, const kn_vae *v, kn_tensor *latent, const kn_tensor *image);
    int (*decode)(kn_ctx *ctx, const kn_vae *v, kn_tensor *image, const kn_tensor *latent);
};

int kn_vae_detect(const kn_st_file *f, const kn_vae_family **family, kn_err *err);
int kn_vae_load(kn_vae **out, const kn_st_file *f, kn_err *err);
void kn_vae_free(kn_vae *v);

#endif
