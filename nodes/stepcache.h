/* The step caches as the sampler nodes run them (nodes/sampling.c): the
 * EasyCache and LazyCache nodes (nodes/stepcache.c) put kn_step_cache_opts
 * on a MODEL; a sampler whose MODEL carries them starts a kn_step_cache
 * around its guided model and closes it with ComfyUI's log lines.
 *
 * Contract:
 *  - kn_sampling_cache_start: for m's cache kind (OFF: *active 0, nothing
 *    to free), inits c around inner and, for EasyCache, lays out the step's
 *    forwards as ComfyUI batches them: slots 0..n_pos-1 are the positive
 *    entries, then the negative ones (neg NULL when CFG skips them); the
 *    entries whose conditioning shapes match entry 0's form the first
 *    batch, and its last one leads. Prints ComfyUI's opening line.
 *  - kn_sampling_cache_finish prints the closing line (skipped steps of
 *    total_steps) and frees c. */
#ifndef KN_NODES_STEPCACHE_H
#define KN_NODES_STEPCACHE_H

#include "nodes/node.h"

int kn_sampling_cache_start(kn_step_cache *c, const kn_model_obj *m, const kn_cond_obj *pos, const kn_cond_obj *neg,
                            kn_denoise_fn inner, void *inner_user, int *active, kn_err *err);
void kn_sampling_cache_finish(kn_step_cache *c, int total_steps);

#endif
