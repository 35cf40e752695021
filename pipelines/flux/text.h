/* Flux.1's text encoder (ComfyUI's FluxClipModel, DualCLIPLoader type flux):
 * CLIP-L for the pooled vector and T5-XXL for the conditioning, each with its
 * own tokenizer and ComfyUI's prompt weighting:
 *   every chunk is encoded with an extra empty sequence when any weight is not
 *   1, and each weighted token's output becomes (z - z_empty) * w + z_empty;
 *   cond = T5's chunks concatenated [1, max(256, n + 1), 4096];
 *   pooled = CLIP-L's pooled output of the first chunk [1, 768] (not projected).
 * No attention masks (the T5 pads take part, as in ComfyUI). */
#ifndef KN_FLUX_TEXT_H
#define KN_FLUX_TEXT_H

#include "pipelines/family.h"

extern const kn_clip_family kn_flux_clip;

#endif
