/* kn_extra_paths: the one models root a ComfyUI extra_model_paths.yaml
 * describes (kiln serve --extra-model-paths-config).
 *
 * Contract:
 *  - Supported subset of ComfyUI's format: top-level sections ("name:")
 *    holding "key: value" lines and "key: |" blocks of one path per line,
 *    "#" comments; base_path, is_default and the model folder keys Kiln
 *    uses (checkpoints, diffusion_models/unet, text_encoders/clip, vae,
 *    loras); other keys are skipped. Kiln reads one models root, so every
 *    folder path (joined to base_path) must be <root>/<folder> for one
 *    common root; anything else is refused with a message naming the file
 *    and line rather than half used.
 *  - kn_extra_paths_root reads f (`file` names it in messages);
 *    kn_extra_paths_root_file opens the file. *root is malloc'd, NULL on
 *    failure. Lines longer than 4095 bytes are read in pieces. */
#ifndef KN_RUNTIME_EXTRA_PATHS_H
#define KN_RUNTIME_EXTRA_PATHS_H

#include <stdio.h>

#include "kernels/error.h"

int kn_extra_paths_root(FILE *f, const char *file, char **root, kn_err *err);
int kn_extra_paths_root_file(const char *file, char **root, kn_err *err);

#endif
