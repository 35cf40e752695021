/* Conditioning nodes: CLIPTextEncode (Qwen-Image) and ConditioningZeroOut. */
#include <stdlib.h>
#include <string.h>

#include "nodes/node.h"
#include "pipelines/tokenizers/prompt.h"

/* ComfyUI's Qwen-Image path: template tokens -> Qwen2.5-VL last hidden state
 * (final norm applied) -> template drop -> [cond, {attention_mask?}]. */
static int encode(kn_node_call *c, const kn_clip_obj *clip, const char *text, kn_cond_obj *out) {
    kn_err *err = c->err;
    kn_prompt_chunks chunks = {0};
    kn_arena *arena = NULL;
    kn_tensor ids = {0};
    int rc = kn_prompt_qwen(clip->bpe, KN_QWEN_IMAGE, NULL, text, strlen(text), &chunks, err);
    if (rc) rc = kn_node_fail(c, "text", err->code, "%s", err->msg);
    int64_t n = rc ? 0 : (int64_t)chunks.n_tokens;
    int64_t ne[2] = {1, n};
    if (!rc) rc = kn_tensor_new(&ids, KN_I64, KN_DEV_CPU, 2, ne, err);
    for (int64_t i = 0; !rc && i < n; i++) ((int64_t *)ids.data)[i] = chunks.tokens[i].id;
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    kn_tensor hidden, cond, mask;
    if (!rc && kn_qwen25vl_forward(c->env->ctx, &clip->te, arena, &ids, NULL, &hidden, NULL)) {
        *err = c->env->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_qwen_image_conditioning(arena, &ids, &hidden, NULL, &cond, &mask, err);
    if (!rc) rc = kn_tensor_dup(&out->cond, &cond, err);
    if (!rc && mask.data) rc = kn_tensor_dup(&out->mask, &mask, err);
    kn_arena_destroy(arena);
    kn_tensor_free(&ids);
    kn_prompt_chunks_free(&chunks);
    return rc;
}

static int clip_text_encode(kn_node_call *c) {
    const char *text;
    kn_object *clip;
    if (kn_in_string(c, "text", &text) || kn_in_object(c, "clip", "CLIP", &clip)) return c->err->code;
    kn_cond_obj *out = kn_cond_new();
    if (!out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (encode(c, (const kn_clip_obj *)clip, text, out)) {
        kn_object_release(&out->base);
        return c->err->code;
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

/* zeros_like(cond); the attention mask (like every other key) is kept. */
static int conditioning_zero_out(kn_node_call *c) {
    kn_object *in;
    if (kn_in_object(c, "conditioning", "CONDITIONING", &in)) return c->err->code;
    const kn_cond_obj *src = (const kn_cond_obj *)in;
    kn_cond_obj *out = kn_cond_new();
    if (!out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int rc = kn_tensor_zeros(&out->cond, src->cond.dtype, src->cond.ndim, src->cond.ne, c->err);
    if (!rc && src->mask.data) rc = kn_tensor_dup(&out->mask, &src->mask, c->err);
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
