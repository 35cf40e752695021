/* kn_ranks: one render's DiT across the ranks of an MPI launch
 * (`mpirun -np N kiln run|serve ...`).
 *
 * Rank 0 (the leader) parses, validates, runs the graph, serves and writes
 * images; text encoders and VAEs run there only. The other ranks (followers)
 * hold a copy of the diffusion model, mapped from the same file path (so one
 * machine's page cache holds it once) and patched with the same LoRAs, and
 * run every DiT forward with the leader, split by sequence (kn_sp). Each
 * forward of the leader's sampler is a command to them:
 *   MODEL   the DiT file (checked to be the same file on every rank), its
 *           weight dtype and LoRA stack, sent when it changes; every rank
 *           answers with its status;
 *   FORWARD the forward's inputs (broadcast), then the sharded forward, then
 *           every rank's status;
 *   QUIT    the leader is done.
 *
 * Failure: a follower that dies, hangs or answers wrongly fails the
 * leader's collective after the communicator's timeout with KN_ERR_COMM;
 * the forward returns that error (naming the rank when known) and the
 * leader goes on alone for the rest of the launch (kn_ranks_lost). */
#ifndef KN_NODES_RANKS_H
#define KN_NODES_RANKS_H

#include "nodes/node.h"
#include "pipelines/common/seqpar.h"

/* world: borrowed (the launch's; size > 1). mode, ulysses: kn_sp_new's. */
int kn_ranks_new(kn_ranks **out, kn_comm *world, kn_sp_mode mode, int ulysses, kn_err *err);
void kn_ranks_free(kn_ranks *r);
int kn_ranks_size(const kn_ranks *r);
int kn_ranks_is_leader(const kn_ranks *r);
/* 1 once a failure left the leader alone. */
int kn_ranks_lost(const kn_ranks *r);

/* Every rank at start-up: the ranks' launch descriptions (what each was
 * started to do: command, workflow digest, models folder) must be equal;
 * else KN_ERR_INVALID on every rank naming the first rank that differs and
 * both descriptions. */
int kn_ranks_hello(kn_ranks *r, const char *launch, kn_err *err);

/* Followers: serve the leader's commands until QUIT (KN_OK) or a failure. */
int kn_ranks_follow(kn_ranks *r, kn_ctx *ctx, kn_err *err);

/* Leader: one forward of `model`'s DiT (dit: from kn_model_dit) across the
 * ranks, out as kn_dit_forward's; alone (plain kn_dit_forward) once lost. */
int kn_ranks_forward(kn_ranks *r, kn_ctx *ctx, const kn_model_obj *model, const kn_dit *dit, const kn_dit_input *in,
                     kn_tensor *out, kn_err *err);

/* Leader: tells the followers to stop (nothing once lost). */
void kn_ranks_quit(kn_ranks *r);

#endif
