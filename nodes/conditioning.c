/* Conditioning nodes: CLIPTextEncode and ConditioningZeroOut. The prompt
 * goes through the CLIP's family (tokenizer, template, encoder, the family's
 * rule for what the diffusion model conditions on: pipelines/family.h). */
#include <stdlib.h>
#include <string.h>

#include "nodes/node.h"

static int clip_text_encode(kn_node_call *c) {
    const char *text;
    kn_object *clip;
    if (kn_in_string(c, "text", &text) || kn_in_object(c, "clip", "CLIP", &clip)) return c->err->code;
    const kn_clip *cl = ((const kn_clip_obj *)clip)->clip;
    kn_cond_obj *out = kn_cond_new();
    if (!out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (cl->family->encode(c->env->ctx, cl, text, &out->t, c->err)) {
        kn_object_release(&out->base);
        return kn_node_fail(c, "text", c->err->code, "%s", c->err->msg);
    }
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
    if (rc) {
        kn_object_release(&out->base);
        return rc;
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

const kn_node_def kn_nodes_conditioning[] = {
    {"CLIPTextEncode", clip_text_encode},
    {"ConditioningZeroOut", conditioning_zero_out},
    {NULL, NULL},
};
