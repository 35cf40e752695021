/* Conditioning nodes: CLIPTextEncode, CLIPTextEncodeFlux, FluxGuidance and
 * ConditioningZeroOut. Prompts go through the CLIP's family (tokenizer,
 * template, encoder, the family's rule for what the diffusion model
 * conditions on: pipelines/family.h). */
#include <stdlib.h>
#include <string.h>

#include "nodes/node.h"

/* The conditioning of texts[0..n) through the CLIP; input names the text for errors. */
static int encode(kn_node_call *c, const kn_object *clip, const char *const *texts, int n, const char *input,
                  kn_cond_obj **out) {
    const kn_clip *cl = ((const kn_clip_obj *)clip)->clip;
    if (!(*out = kn_cond_new())) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (cl->family->encode(c->env->ctx, cl, texts, n, &(*out)->t, c->err)) {
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
    out->guidance = guidance;
    out->has_guidance = 1;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* A copy of a conditioning's tensors and values (ComfyUI's conditioning_set_values starts from one). */
static int cond_copy(kn_node_call *c, const kn_cond_obj *src, kn_cond_obj **out) {
    if (!(*out = kn_cond_new())) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    const kn_tensor *from[3] = {&src->t.cond, &src->t.mask, &src->t.pooled};
    kn_tensor *to[3] = {&(*out)->t.cond, &(*out)->t.mask, &(*out)->t.pooled};
    int rc = KN_OK;
    for (int i = 0; !rc && i < 3; i++)
        if (from[i]->data) rc = kn_tensor_dup(to[i], from[i], c->err);
    (*out)->guidance = src->guidance;
    (*out)->has_guidance = src->has_guidance;
    if (rc) kn_object_release(&(*out)->base);
    return rc;
}

static int flux_guidance(kn_node_call *c) {
    kn_object *in;
    double guidance;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || kn_in_float(c, "guidance", &guidance) ||
        cond_copy(c, (const kn_cond_obj *)in, &out))
        return c->err->code;
    out->guidance = guidance;
    out->has_guidance = 1;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* zeros_like(cond) and zeros_like(pooled_output); the attention mask (like
 * every other key) is kept. */
static int conditioning_zero_out(kn_node_call *c) {
    kn_object *in;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in)) return c->err->code;
    const kn_text_cond *src = &((const kn_cond_obj *)in)->t;
    kn_cond_obj *out = kn_cond_new();
    if (!out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int rc = kn_tensor_zeros(&out->t.cond, src->cond.dtype, src->cond.ndim, src->cond.ne, c->err);
    if (!rc && src->pooled.data)
        rc = kn_tensor_zeros(&out->t.pooled, src->pooled.dtype, src->pooled.ndim, src->pooled.ne, c->err);
    if (!rc && src->mask.data) rc = kn_tensor_dup(&out->t.mask, &src->mask, c->err);
    out->guidance = ((const kn_cond_obj *)in)->guidance;
    out->has_guidance = ((const kn_cond_obj *)in)->has_guidance;
    if (rc) {
        kn_object_release(&out->base);
        return rc;
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

const kn_node_def kn_nodes_conditioning[] = {
    {"CLIPTextEncode", clip_text_encode},
    {"CLIPTextEncodeFlux", clip_text_encode_flux},
    {"FluxGuidance", flux_guidance},
    {"ConditioningZeroOut", conditioning_zero_out},
    {NULL, NULL},
};
