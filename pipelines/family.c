/* The detection tables: which family a model file belongs to, from its keys
 * and shapes, in ComfyUI's order (comfy/model_detection.py detect_unet_config,
 * comfy/sd.py detect_te_model and VAE.__init__). A row whose family is NULL
 * is a model Kiln recognises but does not run: loading it fails with a
 * message naming it. A DiT row also says where a single-file checkpoint of
 * its family keeps the text encoders and VAE (kn_ckpt_layout). See family.h;
 * adding a family is one row here. */
#include "pipelines/family.h"

#include <stdio.h>
#include <string.h>

#include "pipelines/flux/dit.h"
#include "pipelines/flux/text.h"
#include "pipelines/qwen_image/dit.h"
#include "pipelines/qwen_image/text.h"
#include "pipelines/vae/kl.h"
#include "pipelines/vae/wan21.h"
#include "pipelines/z_image/dit.h"
#include "pipelines/z_image/text.h"

/* ---- helpers ----------------------------------------------------------------------- */

/* The tensor prefix + key, or NULL. */
static const kn_tensor *find(const kn_st_file *f, const char *prefix, const char *key) {
    char name[512];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    return kn_st_find(f, name);
}

/* ne[d] of prefix + key, or -1 when absent or of fewer dims. */
static int64_t dim(const kn_st_file *f, const char *prefix, const char *key, int d) {
    const kn_tensor *t = find(f, prefix, key);
    return t && d < t->ndim ? t->ne[d] : -1;
}

/* "A, B and C" of the titles of implemented rows, into buf. */
#define SUPPORTED(table, n, buf)                                                                             \
    do {                                                                                                     \
        if (!(buf)[0])                                                                                       \
            for (size_t i_ = 0, k_ = 0; i_ < (n); i_++)                                                      \
                if ((table)[i_].family)                                                                      \
                    k_ += (size_t)snprintf((buf) + k_, sizeof(buf) - k_, "%s%s", k_ ? ", " : "",             \
                                           (table)[i_].family->title);                                      \
    } while (0)

/* ---- diffusion models ------------------------------------------------------------------- */

typedef struct dit_rule {
    const char *title;                                        /* what ComfyUI would call it */
    const char *key;                                          /* present under the prefix */
    int (*also)(const kn_st_file *f, const char *prefix);     /* NULL or a further test */
    const kn_dit_family *family;                              /* NULL: recognised, not implemented */
    const kn_ckpt_layout *ckpt;                               /* its checkpoints (supported_models.py) */
} dit_rule;

/* clip_target of supported_models.Flux, QwenImage, ZImage; vae_key_prefix "vae." for all three */
static const kn_ckpt_layout flux_ckpt = {{"text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."},
                                         2, "flux", "vae."};
static const kn_ckpt_layout qwen_image_ckpt = {{"text_encoders.qwen25_7b.transformer."}, 1, "qwen_image", "vae."};
static const kn_ckpt_layout z_image_ckpt = {{"text_encoders.qwen3_4b.transformer."}, 1, "lumina2", "vae."};

static int flux_guidance(const kn_st_file *f, const char *p) { return find(f, p, "guidance_in.in_layer.weight") != NULL; }
static int flux_fill(const kn_st_file *f, const char *p) { return dim(f, p, "img_in.weight", 1) == 384; }
/* ComfyUI keys Z-Image on a width of 3840; narrower files with Z-Image's 128-wide heads
 * (Lumina 2's are 96 wide at 2304) are tiny Z-Images */
static int z_image(const kn_st_file *f, const char *p) {
    int64_t w = dim(f, p, "cap_embedder.1.weight", 0);
    return w == 3840 || (w != 2304 && dim(f, p, "layers.0.attention.q_norm.weight", 0) == 128);
}
static int qwen_layered(const kn_st_file *f, const char *p) {
    return find(f, p, "time_text_embed.addition_t_embedding.weight") != NULL;
}

static const dit_rule dit_rules[] = {
    {"Flux.2", "double_stream_modulation_img.lin.weight", NULL, NULL, NULL},
    {"Flux.1 Fill", "double_blocks.0.img_attn.norm.key_norm.scale", flux_fill, NULL, &flux_ckpt},
    {"Flux.1 dev", "double_blocks.0.img_attn.norm.key_norm.scale", flux_guidance, &kn_flux_dev_dit, &flux_ckpt},
    {"Flux.1 schnell", "double_blocks.0.img_attn.norm.key_norm.scale", NULL, &kn_flux_schnell_dit, &flux_ckpt},
    {"Z-Image", "cap_embedder.1.weight", z_image, &kn_z_image_dit, &z_image_ckpt},
    {"Lumina 2", "cap_embedder.1.weight", NULL, NULL, NULL},
    {"Qwen-Image-Layered", "txt_norm.weight", qwen_layered, NULL, &qwen_image_ckpt},
    {"Qwen-Image", "txt_norm.weight", NULL, &kn_qwen_image_dit, &qwen_image_ckpt},
    {"SD3", "joint_blocks.0.context_block.attn.qkv.weight", NULL, NULL, NULL},
    {"Wan", "blocks.0.self_attn.norm_q.weight", NULL, NULL, NULL},
    {"Stable Diffusion (UNet)", "input_blocks.0.0.weight", NULL, NULL, NULL},
};
#define N_DIT_RULES (sizeof dit_rules / sizeof dit_rules[0])

const char *kn_dit_supported(void) {
    static char buf[256];
    SUPPORTED(dit_rules, N_DIT_RULES, buf);
    return buf;
}

int kn_dit_detect(const kn_st_file *f, const kn_dit_family **family, const char **prefix, kn_err *err) {
    *prefix = kn_dit_prefix(f);
    for (size_t i = 0; i < N_DIT_RULES; i++) {
        const dit_rule *r = &dit_rules[i];
        if (!find(f, *prefix, r->key) || (r->also && !r->also(f, *prefix))) continue;
        if (!r->family)
            return kn_fail(err, KN_ERR_UNSUPPORTED, "detected a %s diffusion model; Kiln runs: %s", r->title,
                           kn_dit_supported());
        *family = r->family;
        return KN_OK;
    }
    return kn_fail(err, KN_ERR_UNSUPPORTED, "not a diffusion model Kiln recognises; Kiln runs: %s", kn_dit_supported());
}

static int dit_named(const kn_dit_family *f, const char *name) {
    if (strcmp(f->name, name) == 0) return 1;
    for (const char *const *a = f->aliases; a && *a; a++)
        if (strcmp(*a, name) == 0) return 1;
    return 0;
}

const kn_dit_family *kn_dit_family_named(const char *name) {
    for (size_t i = 0; name && i < N_DIT_RULES; i++)
        if (dit_rules[i].family && dit_named(dit_rules[i].family, name)) return dit_rules[i].family;
    return NULL;
}

const char *kn_dit_prefix(const kn_st_file *f) {
    return kn_weights_has_prefix(f, "model.diffusion_model.") ? "model.diffusion_model." : "";
}

int kn_dit_ckpt_layout(const kn_dit_family *f, const kn_ckpt_layout **out, kn_err *err) {
    for (size_t i = 0; i < N_DIT_RULES; i++)
        if (dit_rules[i].family == f && dit_rules[i].ckpt) {
            *out = dit_rules[i].ckpt;
            return KN_OK;
        }
    return kn_fail(err, KN_ERR_UNSUPPORTED, "Kiln does not know how a %s checkpoint stores its text encoders and VAE",
                   f->title);
}

int kn_dit_load(kn_dit **out, const kn_st_file *f, kn_err *err) {
    const kn_dit_family *fam = NULL;
    const char *prefix;
    KN_TRY(kn_dit_detect(f, &fam, &prefix, err));
    return fam->load(out, f, prefix, NULL, err);
}

kn_dit_consts kn_dit_consts_with(const kn_dit_consts *base, const kn_dit_consts *o) {
    kn_dit_consts k = *base;
    if (o && o->axes_dims[0]) memcpy(k.axes_dims, o->axes_dims, sizeof k.axes_dims);
    if (o && o->rope_theta) k.rope_theta = o->rope_theta;
    if (o && o->patch) k.patch = o->patch;
    return k;
}

int kn_dit_forward(kn_ctx *ctx, const kn_dit *m, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *debug_user) {
    size_t mark = kn_arena_mark(ctx->scratch);
    if (kn_sp_size(in->sp) > 1) debug = NULL; /* intermediates would be one rank's rows */
    int rc = m->family->forward(ctx, m, in, out, debug, debug_user);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

int kn_dit_ref_method(const kn_dit_family *f, const char *name) {
    for (int i = 0; i < f->n_ref_methods; i++)
        if (strcmp(f->ref_methods[i], name) == 0) return i;
    return -1;
}

void kn_dit_free(kn_dit *m) {
    if (m) m->family->free(m);
}

/* ---- text encoders ---------------------------------------------------------------------- */

/* What one text-encoder file holds (comfy/sd.py detect_te_model). */
typedef enum te_kind { TE_UNKNOWN, TE_CLIP_L, TE_CLIP_G, TE_CLIP_H, TE_T5, TE_QWEN25_7B, TE_QWEN25_3B, TE_QWEN3_4B,
                       TE_QWEN3, TE_GEMMA, TE_LLAMA, TE_KINDS } te_kind;

static const char *const te_titles[TE_KINDS] = {
    "an unknown model", "CLIP-L",        "CLIP-G",         "CLIP-H",       "a T5 encoder", "Qwen2.5-VL-7B",
    "Qwen2.5-3B",       "Qwen3-4B",      "a Qwen3 model",  "a Gemma model", "a Llama model",
};

static te_kind te_detect(const kn_st_file *f) {
    if (find(f, "", "text_model.encoder.layers.30.mlp.fc1.weight")) return TE_CLIP_G;
    if (find(f, "", "text_model.encoder.layers.22.mlp.fc1.weight")) return TE_CLIP_H;
    if (find(f, "", "text_model.encoder.layers.0.mlp.fc1.weight")) return TE_CLIP_L;
    /* ComfyUI tells T5-XXL from T5-XL by block 23's width, but DualCLIPLoader's flux
     * type takes the file without CLIP keys as its T5 whatever its size (tiny files too) */
    if (find(f, "", "encoder.block.0.layer.0.SelfAttention.k.weight")) return TE_T5;
    if (find(f, "", "model.layers.0.post_feedforward_layernorm.weight")) return TE_GEMMA;
    int64_t kb = dim(f, "", "model.layers.0.self_attn.k_proj.bias", 0);
    if (kb == 512) return TE_QWEN25_7B;
    if (kb == 256) return TE_QWEN25_3B;
    if (find(f, "", "model.layers.0.post_attention_layernorm.weight")) {
        if (!find(f, "", "model.layers.0.self_attn.q_norm.weight")) return TE_LLAMA;
        /* ComfyUI tells the Qwen3 sizes by width (2560: 4B; 1024, 2048, 4096: the others); a
         * narrower file with 4B's heads (32 x 128 queries, 8 x 128 keys) is a tiny 4B */
        int64_t w = dim(f, "", "model.layers.0.post_attention_layernorm.weight", 0);
        if (w == 2560) return TE_QWEN3_4B;
        if (w == 1024 || w == 2048 || w == 4096) return TE_QWEN3;
        return dim(f, "", "model.layers.0.self_attn.q_proj.weight", 0) == 4096 &&
                       dim(f, "", "model.layers.0.self_attn.k_proj.weight", 0) == 1024
                   ? TE_QWEN3_4B
                   : TE_QWEN3;
    }
    return TE_UNKNOWN;
}

typedef struct clip_rule {
    const char *title;
    te_kind kinds[2];   /* the files' kinds, in load order (TE_UNKNOWN: no second file) */
    const char *types;  /* "a,b": only for these loader types; NULL: any type no earlier row claimed */
    const kn_clip_family *family;
} clip_rule;

/* ComfyUI picks between models sharing the same files by the loader's type. */
static const clip_rule clip_rules[] = {
    {"HunyuanImage", {TE_QWEN25_7B, TE_UNKNOWN}, "hunyuan_image", NULL},
    {"Qwen-Image (Qwen2.5-VL-7B)", {TE_QWEN25_7B, TE_UNKNOWN}, NULL, &kn_qwen_image_clip},
    {"Flux.2-Klein (Qwen3-4B)", {TE_QWEN3_4B, TE_UNKNOWN}, "flux,flux2", NULL},
    {"Z-Image (Qwen3-4B)", {TE_QWEN3_4B, TE_UNKNOWN}, NULL, &kn_z_image_clip},
    {"Flux.1 (CLIP-L + T5-XXL)", {TE_CLIP_L, TE_T5}, "flux", &kn_flux_clip},
    {"SD3 (CLIP-L + T5-XXL)", {TE_CLIP_L, TE_T5}, NULL, NULL},
};
#define N_CLIP_RULES (sizeof clip_rules / sizeof clip_rules[0])

static int type_listed(const char *types, const char *type) {
    size_t n = strlen(type);
    for (const char *p = types; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, type, n) == 0) return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

static int clip_matches(const clip_rule *r, const te_kind *kinds, int n, const char *type) {
    if ((r->kinds[1] == TE_UNKNOWN ? 1 : 2) != n) return 0;
    for (int i = 0; i < n; i++)
        if (kinds[i] != r->kinds[i]) return 0;
    return !r->types || (type && type_listed(r->types, type));
}

static const char *clip_supported(void) {
    static char buf[256];
    SUPPORTED(clip_rules, N_CLIP_RULES, buf);
    return buf;
}

int kn_clip_detect(const kn_st_file **files, int n, const char *type, const kn_clip_family **family, kn_err *err) {
    te_kind kinds[2];
    if (n < 1 || n > 2) return kn_fail(err, KN_ERR_INVALID, "%d text-encoder files: 1 or 2 are loaded together", n);
    for (int i = 0; i < n; i++) kinds[i] = te_detect(files[i]);
    for (int order = 0; order < n; order++) {
        if (order) { /* the same pair given the other way round */
            te_kind k = kinds[0];
            kinds[0] = kinds[1];
            kinds[1] = k;
        }
        for (size_t i = 0; i < N_CLIP_RULES; i++) {
            const clip_rule *r = &clip_rules[i];
            if (!clip_matches(r, kinds, n, type)) continue;
            if (!r->family)
                return kn_fail(err, KN_ERR_UNSUPPORTED, "detected the %s text encoder; Kiln runs: %s", r->title,
                               clip_supported());
            if (order) {
                const kn_st_file *t = files[0];
                files[0] = files[1];
                files[1] = t;
            }
            *family = r->family;
            return KN_OK;
        }
    }
    /* after the swap above kinds[] is in the order the files were not given in */
    if (n == 1)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "holds %s, not a text encoder Kiln runs with type '%s'; Kiln runs: %s",
                       te_titles[kinds[0]], type ? type : "", clip_supported());
    return kn_fail(err, KN_ERR_UNSUPPORTED, "%s and %s are not a text-encoder pair Kiln runs; Kiln runs: %s",
                   te_titles[kinds[1]], te_titles[kinds[0]], clip_supported());
}

void kn_clip_free(kn_clip *c) {
    if (c) c->family->free(c);
}

void kn_text_cond_free(kn_text_cond *c) {
    kn_tensor_free(&c->cond);
    kn_tensor_free(&c->mask);
    kn_tensor_free(&c->pooled);
}

/* ---- VAEs -------------------------------------------------------------------------------- */

typedef struct vae_rule {
    const char *title;
    const char *key;
    int (*also)(const kn_st_file *f);
    const kn_vae_family *family;
} vae_rule;

static int wan22(const kn_st_file *f) { return find(f, "", "decoder.upsamples.0.upsamples.0.residual.2.weight") != NULL; }
static int kl_16ch(const kn_st_file *f) { return dim(f, "", "decoder.conv_in.weight", 1) == 16; }

static const vae_rule vae_rules[] = {
    {"Wan 2.2 VAE", "decoder.middle.0.residual.0.gamma", wan22, NULL},
    {"Wan 2.1 VAE", "decoder.middle.0.residual.0.gamma", NULL, &kn_wan21_vae},
    {"Flux VAE (16-channel AutoencoderKL)", "decoder.conv_in.weight", kl_16ch, &kn_flux_vae},
    {"Stable Diffusion VAE (AutoencoderKL)", "decoder.conv_in.weight", NULL, NULL},
};
#define N_VAE_RULES (sizeof vae_rules / sizeof vae_rules[0])

static const char *vae_supported(void) {
    static char buf[256];
    SUPPORTED(vae_rules, N_VAE_RULES, buf);
    return buf;
}

int kn_vae_detect(const kn_st_file *f, const kn_vae_family **family, kn_err *err) {
    for (size_t i = 0; i < N_VAE_RULES; i++) {
        const vae_rule *r = &vae_rules[i];
        if (!find(f, "", r->key) || (r->also && !r->also(f))) continue;
        if (!r->family)
            return kn_fail(err, KN_ERR_UNSUPPORTED, "detected a %s; Kiln runs: %s", r->title, vae_supported());
        *family = r->family;
        return KN_OK;
    }
    return kn_fail(err, KN_ERR_UNSUPPORTED, "not a VAE Kiln recognises; Kiln runs: %s", vae_supported());
}

int kn_vae_load(kn_vae **out, const kn_st_file *f, kn_err *err) {
    const kn_vae_family *fam = NULL;
    KN_TRY(kn_vae_detect(f, &fam, err));
    return fam->load(out, f, err);
}

void kn_vae_free(kn_vae *v) {
    if (v) v->family->free(v);
}
