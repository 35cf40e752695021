/* Z-Image's text encoder constants: see text.h. */
#include "pipelines/z_image/text.h"

const kn_llm_consts kn_qwen3_4b = {32, 128, 1e6, 1e-6f, 0, 1};
