/* kn_families: checks, before a prompt runs, that the diffusion model and the
 * conditioning that meet at a node come from families that fit together
 * (a Qwen-Image DiT cannot read Flux's T5 conditioning), naming both loaders.
 *
 * A MODEL, CLIP or CONDITIONING input is traced back through the prompt's
 * links to the loader that made it: through nodes that pass a value of the
 * same type on (ModelSampling*, LoraLoader, FluxGuidance, ...: a class with
 * an input of the output's type), from a CONDITIONING to the CLIP of the text
 * encode that made it, to a class whose family hook (nodes/node.h) names the
 * family from the files' headers. Anything untraceable is not checked. */
#ifndef KN_NODES_FAMILIES_H
#define KN_NODES_FAMILIES_H

#include <jansson.h>

#include "nodes/node.h"

/* For node `id` of `prompt`: KN_OK when its MODEL input and CONDITIONING
 * inputs fit (or cannot be traced); else an error whose message says why,
 * with *input the input it concerns. env: the models and folders (hooks
 * read files, load nothing). */
int kn_check_families(const json_t *prompt, const char *id, const kn_node_env *env, const char **input, kn_err *err);

#endif
