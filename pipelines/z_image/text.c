/* Z-Image's text encoder constants: see text.h. */
#include "pipelines/z_image/text.h"

#include "pipelines/common/llm_clip.h"

const kn_llm_consts kn_qwen3_4b = {32, 128, 1e6, 1e-6f, 0, 1};

/* Layer -2 without the final norm, the whole templated sequence. */
static const kn_llm_clip_spec spec = {&kn_z_image_clip, &kn_qwen3_4b, "qwen3", KN_QWEN_Z_IMAGE, KN_Z_IMAGE_TEXT_LAYER, NULL};

static int clip_load(kn_clip **out, const kn_st_file *const *files, const char *tokenizer_dir, kn_err *err) {
    return kn_llm_clip_load(out, &spec, files[0], tokenizer_dir, err);
}

const kn_clip_family kn_z_image_clip = {"z_image", "Z-Image (Qwen3-4B)", 1, clip_load, kn_llm_clip_free,
                                        kn_llm_clip_encode};
