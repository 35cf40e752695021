/* kn_launch: this process's place in an MPI launch of `kiln run` or
 * `kiln serve` (`mpirun -np N kiln ...`; one process: nothing to do).
 *
 * Options every such command takes (consumed by kn_launch_option):
 *   --sp auto|ulysses|ring   how DiT attention is split (nodes/ranks.h, seqpar.h)
 *   --sp-ulysses U           the Ulysses degree of a Ulysses x ring grid
 *   --sp-timeout S           seconds a rank waits for the others (default 120)
 *
 * kn_launch_start joins the launch and checks every rank was started the
 * same way (`launch`: what the command was asked to do). Rank 0 then goes on
 * as the command; every other rank calls kn_launch_follow, which serves rank
 * 0's DiT forwards until it quits. kn_launch_end ends a launch: rank 0 tells
 * the others to stop, or ends them all when it lost them (kn_comm_abort:
 * they may be stuck in a collective). */
#ifndef KN_RUNTIME_LAUNCH_H
#define KN_RUNTIME_LAUNCH_H

#include "kernels/comm.h"
#include "nodes/ranks.h"

typedef struct kn_launch {
    kn_sp_mode mode;
    int ulysses;
    double timeout_s;
    kn_comm *world;  /* owned; NULL before start */
    kn_ranks *ranks; /* owned; NULL for one process */
    int rank, size;
} kn_launch;

/* Defaults (no communicator yet). */
void kn_launch_init(kn_launch *l);
/* argv[*i] is one of the options above: consumes it (and its value) and
 * returns 1; 0 when it is not; -1 on a bad value (message on stderr). */
int kn_launch_option(kn_launch *l, int argc, char **argv, int *i);
/* Joins the launch; with more than one rank checks `launch` is the same everywhere. */
int kn_launch_start(kn_launch *l, const char *launch, kn_err *err);
/* Ranks > 0: serve rank 0 until it quits. The process's exit status. */
int kn_launch_follow(kn_launch *l, kn_precision precision);
/* Ends the launch (every rank); status: the command's exit status. */
int kn_launch_end(kn_launch *l, int status);

/* A --memory-budget value: bytes, or a number with K, M, G or T (powers of
 * 1024; "16G", "1.5T"). 0 and *bytes set, or -1 for anything else. */
int kn_parse_size(const char *text, uint64_t *bytes);

#endif
