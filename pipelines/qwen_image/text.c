/* Qwen-Image's text encoder and conditioning: see text.h. */
#include "pipelines/qwen_image/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/common/llm_clip.h"
#include "pipelines/qwen_image/vision.h"

const kn_llm_consts kn_qwen25vl_7b = {28, 128, 1e6, 1e-6f, 1, 0};


int64_t kn_qwen_image_template_end(const int64_t *ids, int64_t n) {
    int64_t end = -1;
    int seen = 0;
    for (int64_t i = 0; i < n && seen < 2; i++) {
        if (ids[i] == KN_QWEN_IM_START) {
            end = i;
            seen++;
        }
    }
    if (n > end + 3 && ids[end + 1] == KN_QWEN_TOK_USER && ids[end + 2] == KN_QWEN_TOK_NL) end += 3;
    return end < 0 ? n - 1 : end;
}

/* out = t[:, s:] as a new contiguous tensor in `a`; t is contiguous [B, L, ...]. */
static int copy_tail(kn_arena *a, const kn_tensor *t, int64_t s, kn_tensor *out, kn_err *err) {
    int64_t ne[KN_MAX_DIMS];
    memcpy(ne, t->ne, sizeof ne);
    ne[1] = t->ne[1] - s;
    int rc = kn_arena_tensor(a, out, t->dtype, t->ndim, ne, err);
    if (rc) return rc;
    const size_t pos_bytes = (size_t)t->st[1] * kn_dtype_size(t->dtype);
    for (int64_t b = 0; b < t->ne[0]; b++)
        memcpy((char *)out->data + (size_t)(b * ne[1]) * pos_bytes,
               (const char *)t->data + (size_t)(b * t->ne[1] + s) * pos_bytes, (size_t)ne[1] * pos_bytes);
    return KN_OK;
}

static int all_ones(const kn_tensor *mask) {
    const size_t es = kn_dtype_size(mask->dtype), n = (size_t)kn_tensor_numel(mask);
    for (size_t i = 0; i < n; i++) {
        float v;
        kn_to_f32(&v, (const char *)mask->data + i * es, mask->dtype, 1, 1.0f);
        if (v != 1.0f) return 0;
    }
    return 1;
}

int kn_qwen_image_conditioning(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden,
                               const kn_tensor *mask, kn_tensor *cond, kn_tensor *cond_mask, kn_err *err) {
    char a[96], b[96], c[96];
    int ok = ids->dtype == KN_I64 && ids->ndim == 2 && ids->ne[1] >= 1 && kn_tensor_is_contiguous(ids) &&
             hidden->dtype == KN_F32 && hidden->ndim == 3 && hidden->ne[0] == ids->ne[0] &&
             hidden->ne[1] >= ids->ne[1] && kn_tensor_is_contiguous(hidden);
    if (ok && mask)
        ok = mask->ndim == 2 && mask->ne[0] == ids->ne[0] && mask->ne[1] == hidden->ne[1] &&
             kn_tensor_is_contiguous(mask);
    if (!ok)
        return kn_fail(err, KN_ERR_SHAPE,
                       "qwen_image conditioning: input_ids %s, hidden %s, attention_mask %s: expected I64 [B, L >= 1], "
                       "F32 [B, L' >= L, D], [B, L'], contiguous",
                       kn_tensor_desc(ids, a, sizeof a), kn_tensor_desc(hidden, b, sizeof b),
                       mask ? kn_tensor_desc(mask, c, sizeof c) : "none");
    const int64_t s = kn_qwen_image_template_end(ids->data, ids->ne[1]);
    memset(cond_mask, 0, sizeof *cond_mask);
    int rc = copy_tail(arena, hidden, s, cond, err);
    if (rc || !mask) return rc;
    if ((rc = copy_tail(arena, mask, s, cond_mask, err))) return rc;
    /* an all-ones mask changes nothing downstream, so ComfyUI drops it */
    if (all_ones(cond_mask)) memset(cond_mask, 0, sizeof *cond_mask);
    return KN_OK;
}

/* ---- the CLIP family --------------------------------------------------------- */

/* The template drop without a mask (ComfyUI encodes one prompt: its mask is all ones). */
static int condition(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden, kn_tensor *cond, kn_tensor *mask,
                     kn_err *err) {
    return kn_qwen_image_conditioning(arena, ids, hidden, NULL, cond, mask, err);
}

/* ComfyUI's Qwen-Image path: template tokens -> Qwen2.5-VL last hidden state
 * (final norm applied) -> template drop. */
static const kn_llm_clip_spec spec = {&kn_qwen_image_clip, &kn_qwen25vl_7b, "qwen25", KN_QWEN_IMAGE, 0, condition};

/* Qwen25_7BVLI with images: the vision tower beside the text model, the Edit
 * template, <|image_pad|> placeholders, mrope_section 16, 24, 24. */
static const kn_llm_clip_images images = {&kn_qwen25vl_vision_encoder, KN_QWEN_IMAGE_EDIT, KN_QWEN_IMAGE_PAD,
                                          {16, 24, 24}};

static int clip_load(kn_clip **out, const kn_st_file *const *files, const char *tokenizer_dir, kn_err *err) {
    return kn_llm_clip_load_images(out, &spec, &images, files[0], tokenizer_dir, err);
}

const kn_clip_family kn_qwen_image_clip = {"qwen_image", "Qwen-Image (Qwen2.5-VL-7B)", 1, clip_load, kn_llm_clip_free,
                                           kn_llm_clip_encode};
