/* Conditioning nodes: CLIPTextEncode, CLIPTextEncodeFlux, FluxGuidance,
 * ConditioningZeroOut, ConditioningCombine, ReferenceLatent and the
 * Qwen-Image-Edit encoders (TextEncodeQwenImageEdit, ...Plus). Prompts go
 * through the CLIP's family (tokenizer, template, encoder, the family's rule
 * for what the diffusion model conditions on: pipelines/family.h). A
 * CONDITIONING is a list of entries (nodes/node.h); nodes that change one
 * change every entry, on copies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nodes/image_io.h"
#include "nodes/image_scale.h"
#include "nodes/model_store.h"
#include "nodes/node.h"
#include "pipelines/tokenizers/prompt.h"

/* A new one-entry conditioning of texts[0..n) through the CLIP; input names the text for errors. */
static int encode(kn_node_call *c, const kn_object *clip, const char *const *texts, int n, const char *input,
                  kn_cond_obj **out) {
    const kn_clip *cl = ((const kn_clip_obj *)clip)->clip;
    if (!(*out = kn_cond_new(1))) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    kn_models_use(c->env->models, (kn_object *const *)&clip, 1);
    if (cl->family->encode(c->env->ctx, cl, texts, n, &(*out)->e[0].t, c->err)) {
        kn_object_release(&(*out)->base);
        return kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    }
    return KN_OK;
}

static int clip_text_encode(kn_node_call *c) {
    const char *text;
    kn_object *clip;
    kn_cond_obj *out;
    if (kn_in_string(c, "text", &text) || kn_in_object(c, "clip", "CLIP", &clip) ||
        encode(c, clip, &text, 1, "text", &out))
        return c->err->code;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* ComfyUI's CLIPTextEncodeFlux: clip_l's text to CLIP-L, t5xxl's to T5, and the guidance value. */
static int clip_text_encode_flux(kn_node_call *c) {
    const char *texts[2];
    double guidance;
    kn_object *clip;
    kn_cond_obj *out;
    if (kn_in_object(c, "clip", "CLIP", &clip) || kn_in_string(c, "clip_l", &texts[0]) ||
        kn_in_string(c, "t5xxl", &texts[1]) || kn_in_float(c, "guidance", &guidance) ||
        encode(c, clip, texts, 2, "t5xxl", &out))
        return c->err->code;
    out->e[0].guidance = guidance;
    out->e[0].has_guidance = 1;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* A copy of a conditioning's entries, with room for `extra` more after them
 * (ComfyUI's conditioning_set_values starts from copies; ConditioningCombine
 * appends a second list). */
static int cond_copy(kn_node_call *c, const kn_cond_obj *src, int extra, kn_cond_obj **out) {
    if (!(*out = kn_cond_new(src->n + extra))) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int rc = KN_OK;
    for (int i = 0; !rc && i < src->n; i++) rc = kn_cond_entry_copy(&(*out)->e[i], &src->e[i], c->err);
    if (rc) kn_object_release(&(*out)->base);
    return rc;
}

static int flux_guidance(kn_node_call *c) {
    kn_object *in;
    double guidance;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || kn_in_float(c, "guidance", &guidance) ||
        cond_copy(c, (const kn_cond_obj *)in, 0, &out))
        return c->err->code;
    for (int i = 0; i < out->n; i++) {
        out->e[i].guidance = guidance;
        out->e[i].has_guidance = 1;
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* zeros_like(cond) and zeros_like(pooled_output) in every entry; the
 * attention mask, like every other key (reference latents included), is kept. */
static int conditioning_zero_out(kn_node_call *c) {
    kn_object *in;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || cond_copy(c, (const kn_cond_obj *)in, 0, &out))
        return c->err->code;
    for (int i = 0; i < out->n; i++) {
        kn_text_cond *t = &out->e[i].t;
        memset(t->cond.data, 0, kn_tensor_nbytes(&t->cond));
        if (t->pooled.data) memset(t->pooled.data, 0, kn_tensor_nbytes(&t->pooled));
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* conditioning_1 + conditioning_2: the two lists, entries unchanged. */
static int conditioning_combine(kn_node_call *c) {
    kn_object *a, *b;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning_1", "CONDITIONING", &a) || kn_in_object(c, "conditioning_2", "CONDITIONING", &b))
        return c->err->code;
    const kn_cond_obj *second = (const kn_cond_obj *)b;
    if (cond_copy(c, (const kn_cond_obj *)a, second->n, &out)) return c->err->code;
    for (int i = 0; i < second->n; i++)
        if (kn_cond_entry_copy(&out->e[out->n - second->n + i], &second->e[i], c->err)) {
            kn_object_release(&out->base);
            return c->err->code;
        }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* Every entry gets reference_latents = its list + [latent] (the input unchanged without a latent). */
static int reference_latent(kn_node_call *c) {
    kn_object *in, *latent;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || kn_in_object_opt(c, "latent", "LATENT", &latent))
        return c->err->code;
    if (!latent) {
        kn_out_object(c, 0, kn_object_retain(in));
        return KN_OK;
    }
    if (cond_copy(c, (const kn_cond_obj *)in, 0, &out)) return c->err->code;
    for (int i = 0; i < out->n; i++)
        if (kn_cond_entry_add_ref(&out->e[i], (kn_latent_obj *)latent, c->err)) {
            kn_object_release(&out->base);
            return c->err->code;
        }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* ---- Qwen-Image-Edit (comfy_extras/nodes_qwen.py) ----------------------------------------- */

/* ComfyUI's total-pixels area resize of an IMAGE: s = sqrt(megapixels * 2^20 / (W * H)), each side
 * round(side * s / steps) * steps, adaptive average pooling; into out (owned). */
static int scale_area(kn_node_call *c, const char *input, const kn_tensor *im, double megapixels, int64_t steps,
                      kn_tensor *out) {
    int64_t w, h;
    if (kn_image_total_pixels_dims(im->ne[2], im->ne[1], megapixels, steps, &w, &h, c->err) ||
        kn_image_upscale(out, im, w, h, KN_UPSCALE_AREA, KN_CROP_DISABLED, c->err))
        return kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    return KN_OK;
}

/* image[..., :3] into out (owned). */
static int rgb_of(kn_node_call *c, const char *input, const kn_tensor *im, kn_tensor *out) {
    kn_tensor view;
    const int64_t ne[4] = {im->ne[0], im->ne[1], im->ne[2], 3};
    if (im->ne[3] < 3)
        return kn_node_fail(c, input, KN_ERR_SHAPE, "the image has %lld channels; 3 are needed", (long long)im->ne[3]);
    if (kn_tensor_view(&view, im, 4, ne, im->st, 0, c->err) || kn_tensor_new(out, KN_F32, KN_DEV_CPU, 4, ne, c->err) ||
        kn_tensor_copy(out, &view, c->err))
        return kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    return KN_OK;
}

/* One entry: p through the CLIP's image-aware encoder, with refs[0..n_refs) as its reference_latents. */
static int encode_images(kn_node_call *c, const kn_object *clip, const kn_clip_image_prompt *p, const char *input,
                         kn_latent_obj *const *refs, int n_refs, kn_cond_obj **out) {
    const kn_clip *cl = ((const kn_clip_obj *)clip)->clip;
    if (!cl->encode_images)
        return kn_node_fail(c, "clip", KN_ERR_UNSUPPORTED, "the %s text encoder takes no images", cl->family->title);
    if (!(*out = kn_cond_new(1))) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    kn_models_use(c->env->models, (kn_object *const *)&clip, 1);
    int rc = cl->encode_images(c->env->ctx, cl, p, &(*out)->e[0].t, NULL, NULL, c->err);
    if (rc) rc = kn_node_fail(c, input, rc, "%s", c->err->msg);
    for (int i = 0; !rc && i < n_refs; i++) rc = kn_cond_entry_add_ref(&(*out)->e[0], refs[i], c->err);
    if (rc) kn_object_release(&(*out)->base);
    return rc;
}

/* TextEncodeQwenImageEdit: the image scaled to ~1 Mpx (area) is both what the
 * vision tower sees and, with a VAE, the reference latent (VAE.encode crops
 * it to multiples of 8); without an image, the plain Qwen-Image template. */
static int text_encode_qwen_image_edit(kn_node_call *c) {
    const char *prompt;
    kn_object *clip, *vae, *image;
    if (kn_in_object(c, "clip", "CLIP", &clip) || kn_in_string(c, "prompt", &prompt) ||
        kn_in_object_opt(c, "vae", "VAE", &vae) || kn_in_object_opt(c, "image", "IMAGE", &image))
        return c->err->code;
    kn_tensor scaled = {0}, rgb = {0};
    kn_latent_obj *ref = NULL;
    kn_cond_obj *out = NULL;
    const kn_tensor *seen = &rgb;
    int rc = KN_OK;
    if (image) rc = scale_area(c, "image", &((const kn_image_obj *)image)->t, 1.0, 1, &scaled);
    if (!rc && image) rc = rgb_of(c, "image", &scaled, &rgb);
    if (!rc && image && vae) rc = kn_vae_encode_pixels(c, "image", (const kn_vae_obj *)vae, &rgb, &ref);
    kn_clip_image_prompt p = {prompt, NULL, &seen, image ? 1 : 0};
    if (!rc) rc = encode_images(c, clip, &p, image ? "image" : "prompt", &ref, ref ? 1 : 0, &out);
    if (ref) kn_object_release(&ref->base);
    kn_tensor_free(&scaled);
    kn_tensor_free(&rgb);
    if (!rc) kn_out_object(c, 0, &out->base);
    return rc;
}

#define PLUS_SLOTS 3

/* TextEncodeQwenImageEditPlus: each connected imageN (slot order) is seen at
 * ~384x384 (all its channels) after a "Picture N: " placeholder, and with a
 * VAE encoded at ~1 Mpx in multiples of 8 as the next reference latent. */
static int text_encode_qwen_image_edit_plus(kn_node_call *c) {
    const char *prompt;
    kn_object *clip, *vae;
    if (kn_in_object(c, "clip", "CLIP", &clip) || kn_in_string(c, "prompt", &prompt) ||
        kn_in_object_opt(c, "vae", "VAE", &vae))
        return c->err->code;
    kn_tensor seen[PLUS_SLOTS] = {{0}}, scaled = {0}, rgb = {0};
    const kn_tensor *images[PLUS_SLOTS];
    kn_latent_obj *refs[PLUS_SLOTS];
    int n = 0, n_refs = 0, rc = KN_OK;
    size_t len = strlen(prompt);
    char *text = malloc(len + PLUS_SLOTS * 64 + 1), *end = text;
    if (!text) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    const char *input = "prompt";
    static const char *const slots[PLUS_SLOTS] = {"image1", "image2", "image3"};
    for (int slot = 1; !rc && slot <= PLUS_SLOTS; slot++) {
        const char *name = slots[slot - 1];
        kn_object *image;
        if ((rc = kn_in_object_opt(c, name, "IMAGE", &image)) || !image) continue;
        const kn_tensor *im = &((const kn_image_obj *)image)->t;
        if (n == 0) input = name;
        rc = scale_area(c, name, im, 384.0 * 384.0 / (1024.0 * 1024.0), 1, &seen[n]);
        if (!rc && vae) rc = scale_area(c, name, im, 1.0, 8, &scaled);
        if (!rc && vae) rc = rgb_of(c, name, &scaled, &rgb);
        if (!rc && vae && !(rc = kn_vae_encode_pixels(c, name, (const kn_vae_obj *)vae, &rgb, &refs[n_refs])))
            n_refs++;
        kn_tensor_free(&scaled);
        kn_tensor_free(&rgb);
        if (rc) break;
        images[n] = &seen[n];
        n++;
        end += sprintf(end, "Picture %d: <|vision_start|><|image_pad|><|vision_end|>", slot);
    }
    memcpy(end, prompt, len + 1);
    kn_cond_obj *out = NULL;
    /* the node's own template (the tokenizer module keeps ComfyUI's template texts) */
    kn_clip_image_prompt p = {text, kn_prompt_qwen_template_text(KN_QWEN_IMAGE_EDIT_PLUS), images, n};
    if (!rc) rc = encode_images(c, clip, &p, n ? input : "prompt", refs, n_refs, &out);
    for (int i = 0; i < n_refs; i++) kn_object_release(&refs[i]->base);
    for (int i = 0; i < PLUS_SLOTS; i++) kn_tensor_free(&seen[i]);
    free(text);
    if (!rc) kn_out_object(c, 0, &out->base);
    return rc;
}

const kn_node_def kn_nodes_conditioning[] = {
    {"CLIPTextEncode", clip_text_encode},
    {"CLIPTextEncodeFlux", clip_text_encode_flux},
    {"FluxGuidance", flux_guidance},
    {"ConditioningZeroOut", conditioning_zero_out},
    {"ConditioningCombine", conditioning_combine},
    {"ReferenceLatent", reference_latent},
    {"TextEncodeQwenImageEdit", text_encode_qwen_image_edit},
    {"TextEncodeQwenImageEditPlus", text_encode_qwen_image_edit_plus},
    {NULL, NULL},
};
