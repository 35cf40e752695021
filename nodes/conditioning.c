/* Conditioning nodes: CLIPTextEncode, CLIPTextEncodeFlux, FluxGuidance,
 * ConditioningZeroOut and ConditioningCombine. Prompts go through the CLIP's
 * family (tokenizer, template, encoder, the family's rule for what the
 * diffusion model conditions on: pipelines/family.h). A CONDITIONING is a
 * list of entries (nodes/node.h); the nodes that change one change every
 * entry, as ComfyUI's conditioning_set_values does. */
#include <stdlib.h>
#include <string.h>

#include "nodes/node.h"

/* A new one-entry conditioning of texts[0..n) through the CLIP; input names the text for errors. */
static int encode(kn_node_call *c, const kn_object *clip, const char *const *texts, int n, const char *input,
                  kn_cond_obj **out) {
    const kn_clip *cl = ((const kn_clip_obj *)clip)->clip;
    if (!(*out = kn_cond_new(1))) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
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

/* Copies of src's entries into dst->e[at..]: the tensors, zeroed instead
 * (ConditioningZeroOut's zeros_like of cond and pooled_output; the mask is
 * kept, like every other key) when `zeroed`. */
static int copy_entries(kn_cond_obj *dst, int at, const kn_cond_obj *src, bool zeroed, kn_err *err) {
    for (int i = 0; i < src->n; i++) {
        const kn_cond_entry *from = &src->e[i];
        kn_cond_entry *to = &dst->e[at + i];
        const kn_tensor *t[3] = {&from->t.cond, &from->t.pooled, &from->t.mask};
        kn_tensor *o[3] = {&to->t.cond, &to->t.pooled, &to->t.mask};
        for (int k = 0; k < 3; k++) {
            if (!t[k]->data) continue;
            KN_TRY(zeroed && k < 2 ? kn_tensor_zeros(o[k], t[k]->dtype, t[k]->ndim, t[k]->ne, err)
                                   : kn_tensor_dup(o[k], t[k], err));
        }
        to->guidance = from->guidance;
        to->has_guidance = from->has_guidance;
    }
    return KN_OK;
}

/* A new conditioning of the entries of a, then b's (b NULL: a's only). */
static int cond_join(kn_node_call *c, const kn_cond_obj *a, const kn_cond_obj *b, bool zeroed, kn_cond_obj **out) {
    if (!(*out = kn_cond_new(a->n + (b ? b->n : 0)))) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (copy_entries(*out, 0, a, zeroed, c->err) || (b && copy_entries(*out, a->n, b, zeroed, c->err))) {
        kn_object_release(&(*out)->base);
        return c->err->code;
    }
    return KN_OK;
}

static int flux_guidance(kn_node_call *c) {
    kn_object *in;
    double guidance;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || kn_in_float(c, "guidance", &guidance) ||
        cond_join(c, (const kn_cond_obj *)in, NULL, false, &out))
        return c->err->code;
    for (int i = 0; i < out->n; i++) {
        out->e[i].guidance = guidance;
        out->e[i].has_guidance = 1;
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

static int conditioning_zero_out(kn_node_call *c) {
    kn_object *in;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in) || cond_join(c, (const kn_cond_obj *)in, NULL, true, &out))
        return c->err->code;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* conditioning_1 + conditioning_2: the entries of both lists, each unchanged. */
static int conditioning_combine(kn_node_call *c) {
    kn_object *a, *b;
    kn_cond_obj *out;
    if (kn_in_object(c, "conditioning_1", "CONDITIONING", &a) ||
        kn_in_object(c, "conditioning_2", "CONDITIONING", &b) ||
        cond_join(c, (const kn_cond_obj *)a, (const kn_cond_obj *)b, false, &out))
        return c->err->code;
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

const kn_node_def kn_nodes_conditioning[] = {
    {"CLIPTextEncode", clip_text_encode},
    {"CLIPTextEncodeFlux", clip_text_encode_flux},
    {"FluxGuidance", flux_guidance},
    {"ConditioningZeroOut", conditioning_zero_out},
    {"ConditioningCombine", conditioning_combine},
    {NULL, NULL},
};
