/* kn_comm: the collectives sequence parallelism needs, one interface over
 * three transports. The code that shards a DiT never knows which it runs on:
 *  - single: one rank (N = 1); every collective is a copy;
 *  - MPI: processes on one machine or several (OpenMPI: shared memory, TCP),
 *    CPU buffers;
 *  - NCCL: one GPU per rank, device buffers, ops enqueued on the backend's
 *    stream (kernels/cuda/comm_nccl.cu; bootstrapped over an MPI world).
 *
 * Contract (as MPI's): every rank of a communicator calls the same
 * collectives in the same order with the same sizes; a rank-dependent branch
 * around a collective deadlocks the others. Sizes are in bytes, buffers
 * hold [size][bytes] for all_to_all (destination-major: block j goes to rank
 * j, block j of recv came from rank j) and all_gather (block j from rank j).
 *
 * Failure: a collective that does not complete within the communicator's
 * timeout fails with KN_ERR_COMM naming the operation, its size and the
 * ranks that did not answer. From then on the communicator is broken: every
 * call fails at once (its ranks' state is unknown), and the owner decides
 * whether to go on alone or end the launch (kn_comm_abort).
 *
 * Ownership: a communicator from kn_comm_world / kn_comm_split /
 * kn_comm_nccl is freed by kn_comm_free (the world last: it finalises MPI).
 * Communicators are used from one thread. */
#ifndef KN_COMM_H
#define KN_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"

typedef struct kn_comm kn_comm;

typedef struct kn_comm_stats {
    uint64_t bytes_sent; /* payload this rank sent to other ranks (own block of a collective excluded) */
    uint64_t calls;      /* collectives issued */
    double wait_s;       /* wall time inside collectives */
} kn_comm_stats;

/* The world of this launch: MPI's when the process was started by an MPI
 * launcher with more than one rank (mpirun sets OMPI_COMM_WORLD_SIZE or
 * PMI_SIZE), else a single rank. KN_ERR_UNSUPPORTED when launched by mpirun
 * but built without MPI. */
int kn_comm_world(kn_comm **out, kn_err *err);
/* A one-rank communicator (tests, N = 1). */
int kn_comm_single(kn_comm **out, kn_err *err);
/* An NCCL communicator over the ranks of `bootstrap` (same ranks, same size),
 * one GPU per rank: `device` is this rank's (typically its rank on the node
 * modulo the GPU count; two ranks on one GPU are refused by NCCL). Rank 0's
 * ncclUniqueId travels by kn_comm_broadcast on bootstrap, which must stay
 * alive until the NCCL communicator is freed (kn_comm_abort ends the launch
 * through it). Every rank must call it; a rank that cannot take part (no GPU,
 * bad device) makes all of them fail, with its reason on that rank. It picks
 * the CUDA backend's device (kn_cuda_use_device): call it before the first
 * CUDA op, or with the device the backend already runs on.
 * Buffers of its collectives are device pointers. An op is queued on the CUDA
 * backend's stream, after the kernels queued before it, and returns once the
 * stream has drained (so its deadline also covers that earlier work); on
 * timeout or an NCCL error the NCCL communicator is aborted and the op fails
 * with KN_ERR_COMM. Split needs NCCL >= 2.18 (else KN_ERR_UNSUPPORTED).
 * The timeout starts as bootstrap's. KN_ERR_UNSUPPORTED in builds without
 * CUDA or NCCL, naming what to install. */
int kn_comm_nccl(kn_comm **out, kn_comm *bootstrap, int device, kn_err *err);
/* Ranks of c with the same color form a new communicator, ordered by key. */
int kn_comm_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err);
void kn_comm_free(kn_comm *c);

int kn_comm_rank(const kn_comm *c);
int kn_comm_size(const kn_comm *c);
/* "mpi", "nccl" or "single". */
const char *kn_comm_kind(const kn_comm *c);
/* Seconds a collective may wait for other ranks (default 120; <= 0: forever). */
void kn_comm_set_timeout(kn_comm *c, double seconds);
double kn_comm_timeout(const kn_comm *c);
int kn_comm_broken(const kn_comm *c);
const kn_comm_stats *kn_comm_get_stats(const kn_comm *c);
void kn_comm_reset_stats(kn_comm *c);

int kn_comm_broadcast(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err);
/* send [size][bytes_per_rank] -> recv [size][bytes_per_rank] (not aliased). */
int kn_comm_all_to_all(kn_comm *c, const void *send, void *recv, size_t bytes_per_rank, kn_err *err);
/* send [bytes] -> recv [size][bytes] (not aliased). */
int kn_comm_all_gather(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err);
/* One ring hop: send to rank dst while receiving from rank src (both may be
 * this rank's neighbours in either direction; dst == src allowed). */
int kn_comm_sendrecv(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err);
int kn_comm_barrier(kn_comm *c, kn_err *err);
/* Ends every rank of the launch (MPI_Abort): for a broken world whose other
 * ranks cannot be told to stop. A single rank just returns. An NCCL
 * communicator aborts itself first, then its bootstrap. */
void kn_comm_abort(kn_comm *c, int code);

#endif
