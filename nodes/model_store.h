/* kn_models: the models root as ComfyUI finds models, and the store of
 * loaded models shared by every run of a process.
 *
 * Contract:
 *  - A root holds ComfyUI's folders: diffusion_models (also unet),
 *    text_encoders (also clip), vae, loras, checkpoints. The input directory
 *    is given at creation; its folders are "input" (LoadImage) and
 *    "input_latents" (LoadLatent).
 *  - kn_models_list appends a folder's files, recursively, as relative paths
 *    with '/' separators, sorted by code point as ComfyUI sorts them; model
 *    folders list ComfyUI's model extensions (.safetensors, .sft, .ckpt, .pt,
 *    .pt2, .pth, .bin, .pkl), "input" lists image files at the input
 *    directory's top level and "input_latents" the .latent files there.
 *    kn_models_lister wraps it for validation (graph/validate.h).
 *  - kn_models_resolve maps a name from a workflow to a path: the name must be
 *    one of the folder's enumerated files; names are never joined into a
 *    path unchecked, so "../x", absolute names and files that are not there
 *    fail (KN_ERR_INVALID / KN_ERR_NOT_FOUND) with a message naming the
 *    folder and the name. *path is malloc'd.
 *  - The store keeps loaded objects by key (the resolved path plus what was
 *    loaded) for the lifetime of the kn_models: kn_models_get returns a new
 *    reference or NULL, kn_models_put adds one of its own. kn_models_free
 *    releases them all.
 *  - The tokenizer folder (one sub-folder per tokenizer, "qwen25/", ...) is not a ComfyUI model
 *    folder (ComfyUI ships it with its code); it is $KILN_TOKENIZERS or the
 *    build's copy. */
#ifndef KN_NODES_MODEL_STORE_H
#define KN_NODES_MODEL_STORE_H

#include <jansson.h>

#include "kernels/error.h"
#include "nodes/node.h"
#include "nodes/registry.h"

int kn_models_new(kn_models **out, const char *root, const char *input_dir, kn_err *err);
void kn_models_free(kn_models *m);

const char *kn_models_root(const kn_models *m);
const char *kn_models_tokenizer_dir(const kn_models *m);

int kn_models_list(kn_models *m, const char *folder, json_t *names, kn_err *err);
kn_folder_lister kn_models_lister(kn_models *m);

int kn_models_resolve(kn_models *m, const char *folder, const char *name, char **path, kn_err *err);

kn_object *kn_models_get(kn_models *m, const char *key);
int kn_models_put(kn_models *m, const char *key, kn_object *obj, kn_err *err);

#endif
