/* kn_comm over NCCL (contract in kernels/comm.h, kn_comm_nccl): one GPU per
 * rank, device buffers, every op queued on the CUDA backend's stream so it
 * orders with the kernels around it.
 *
 * Deadlines. NCCL collectives run inside GPU kernels that spin until the peers
 * arrive, so a dead or stopped rank would hang the others with the GPU busy
 * and no error. After queueing an op the host therefore polls the stream
 * (cudaStreamQuery) and NCCL's asynchronous error (ncclCommGetAsyncError)
 * against the communicator's timeout; on timeout or an NCCL error it calls
 * ncclCommAbort, which also stops the spinning kernels, and the op fails with
 * KN_ERR_COMM. Communicators are created non-blocking (NCCL >= 2.14) so the
 * host calls themselves (init, the lazy peer connection inside a group, split,
 * finalize) return ncclInProgress instead of blocking, and are polled the same
 * way. With an older NCCL those host calls block, and only the GPU side of an
 * op has a deadline.
 *
 * Waiting for every op keeps the transport's semantics those of the MPI one
 * (an op is complete when it returns, stats and errors belong to it) at the
 * cost of overlap between communication and the next kernels.
 *
 * Payloads travel as bytes (ncclUint8): the layout contract is comm.h's. */
#ifdef KN_HAVE_NCCL

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/comm_impl.h"
#include "kernels/cuda/cuda_common.cuh"

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define KN_NCCL_NONBLOCKING 1
#define KN_NCCL_PENDING(r) ((r) == ncclInProgress)
#else
#define KN_NCCL_PENDING(r) 0
#endif
#define KN_NCCL_OK(r) ((r) == ncclSuccess || KN_NCCL_PENDING(r))

typedef struct nccl_comm {
    ncclComm_t comm;     /* NULL once aborted */
    kn_comm *bootstrap;  /* borrowed: the launch's world, for kn_comm_abort */
    cudaStream_t stream; /* the backend's */
    int *flag;           /* one int on the device: the barrier's all-reduce */
} nccl_comm;

#define NC(c) ((nccl_comm *)(c)->impl)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The backoff of comm_mpi.c: spin for 50 us, then sleep 5 us doubling to
 * 200 us, leaving the CPU to ranks that share it. */
static void backoff(double waited, long *sleep_ns) {
    if (waited <= 50e-6) return;
    *sleep_ns = *sleep_ns ? (*sleep_ns * 2 > 200000 ? 200000 : *sleep_ns * 2) : 5000;
    struct timespec ts = {0, *sleep_ns};
    nanosleep(&ts, NULL);
}

static void nccl_abort_comm(nccl_comm *n) {
    /* Its status is dropped: the communicator is gone either way, and the
     * failure being reported is the one that made us abort. */
    if (n->comm) (void)ncclCommAbort(n->comm);
    n->comm = NULL;
}

/* "<result>: <NCCL's last error>" for messages. */
static const char *nccl_reason(ncclComm_t comm, ncclResult_t r, char *buf, size_t len) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
    const char *last = ncclGetLastError(comm);
    if (last && last[0]) {
        snprintf(buf, len, "%s: %s", ncclGetErrorString(r), last);
        return buf;
    }
#endif
    snprintf(buf, len, "%s", ncclGetErrorString(r));
    return buf;
}

static int nccl_failed(kn_comm *c, ncclComm_t comm, ncclResult_t r, const char *op, size_t bytes, kn_err *err) {
    char why[512];
    return kn_fail(err, KN_ERR_COMM, "rank %d of %d: NCCL %s of %zu bytes failed: %s", c->rank, c->size, op, bytes,
                   nccl_reason(comm, r, why, sizeof why));
}

/* Waits until `comm` has left ncclInProgress and, with `stream` set, the
 * backend's stream has drained; KN_ERR_COMM on an NCCL or CUDA error or once
 * timeout_s has passed since t0. Aborting is the caller's. */
static int nccl_wait(kn_comm *c, ncclComm_t comm, int stream, double t0, const char *op, size_t bytes, kn_err *err) {
    long sleep_ns = 0;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &state);
        if (r != ncclSuccess) state = r;
        if (!KN_NCCL_OK(state)) return nccl_failed(c, comm, state, op, bytes, err);
        int done = state == ncclSuccess;
        if (done && stream) {
            cudaError_t e = cudaStreamQuery(NC(c)->stream);
            if (e == cudaErrorNotReady) {
                done = 0;
                /* not an error: keep it from surfacing at the next launch check */
                if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
            } else if (e != cudaSuccess) {
                return kn_fail(err, KN_ERR_COMM, "rank %d of %d: NCCL %s of %zu bytes failed: the stream reports %s: %s",
                               c->rank, c->size, op, bytes, cudaGetErrorName(e), cudaGetErrorString(e));
            }
        }
        if (done) return KN_OK;
        double waited = now_s() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s)
            return kn_fail(err, KN_ERR_COMM,
                           "rank %d of %d: NCCL %s of %zu bytes not complete after %.0f s: another rank stopped "
                           "answering (it died, hangs, or runs another model or workflow)",
                           c->rank, c->size, op, bytes, waited);
        backoff(waited, &sleep_ns);
    }
}

/* The end of every op: r is what queueing returned. Waits for completion; a
 * failure aborts the communicator (comm.c marks it broken). */
static int nccl_finish(kn_comm *c, ncclResult_t r, double t0, const char *op, size_t bytes, kn_err *err) {
    nccl_comm *n = NC(c);
    int rc = KN_NCCL_OK(r) ? nccl_wait(c, n->comm, 1, t0, op, bytes, err) : nccl_failed(c, n->comm, r, op, bytes, err);
    if (rc) nccl_abort_comm(n);
    return rc;
}

/* A comm that an earlier failure on this rank aborted (comm.c refuses a broken
 * one first; this covers a failed abort path such as a refused split). */
static int nccl_usable(kn_comm *c, const char *op, kn_err *err) {
    if (NC(c)->comm) return KN_OK;
    return kn_fail(err, KN_ERR_COMM, "rank %d of %d: NCCL %s: the communicator was aborted", c->rank, c->size, op);
}

static int nccl_broadcast(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err) {
    KN_TRY(nccl_usable(c, "broadcast", err));
    double t0 = now_s();
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, NC(c)->comm, NC(c)->stream);
    return nccl_finish(c, r, t0, "broadcast", bytes, err);
}

/* Closes a group whatever happened inside it: a call that failed in the
 * group is the failure to report, else ncclGroupEnd's result. */
static ncclResult_t group_end(ncclResult_t r) {
    ncclResult_t e = ncclGroupEnd();
    return KN_NCCL_OK(r) ? e : r;
}

/* The documented all-to-all since NCCL 2.7: one send and one receive per
 * peer, this rank included, in one group. */
static int nccl_all_to_all(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    KN_TRY(nccl_usable(c, "all_to_all", err));
    nccl_comm *n = NC(c);
    double t0 = now_s();
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) {
        for (int p = 0; p < c->size && KN_NCCL_OK(r); p++) {
            r = ncclSend((const char *)send + (size_t)p * bytes, bytes, ncclUint8, p, n->comm, n->stream);
            if (KN_NCCL_OK(r)) r = ncclRecv((char *)recv + (size_t)p * bytes, bytes, ncclUint8, p, n->comm, n->stream);
        }
        r = group_end(r);
    }
    return nccl_finish(c, r, t0, "all_to_all", bytes, err);
}

static int nccl_all_gather(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    KN_TRY(nccl_usable(c, "all_gather", err));
    double t0 = now_s();
    ncclResult_t r = ncclAllGather(send, recv, bytes, ncclUint8, NC(c)->comm, NC(c)->stream);
    return nccl_finish(c, r, t0, "all_gather", bytes, err);
}

static int nccl_sendrecv(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err) {
    KN_TRY(nccl_usable(c, "sendrecv", err));
    nccl_comm *n = NC(c);
    double t0 = now_s();
    if (dst == c->rank && src == c->rank) {
        /* a hop to itself (one-rank ring): a copy on the stream, ordered like the rest */
        cudaError_t e = send == recv ? cudaSuccess
                                     : cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, n->stream);
        if (e != cudaSuccess)
            return kn_fail(err, KN_ERR_BACKEND, "rank %d of %d: NCCL sendrecv of %zu bytes: cudaMemcpyAsync: %s: %s",
                           c->rank, c->size, bytes, cudaGetErrorName(e), cudaGetErrorString(e));
        return nccl_finish(c, ncclSuccess, t0, "sendrecv", bytes, err);
    }
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) {
        r = ncclSend(send, bytes, ncclUint8, dst, n->comm, n->stream);
        if (KN_NCCL_OK(r)) r = ncclRecv(recv, bytes, ncclUint8, src, n->comm, n->stream);
        r = group_end(r);
    }
    return nccl_finish(c, r, t0, "sendrecv", bytes, err);
}

/* NCCL has no barrier: a one-int all-reduce (max, so the value never grows)
 * completes on a rank only once every rank has joined. */
static int nccl_barrier(kn_comm *c, kn_err *err) {
    KN_TRY(nccl_usable(c, "barrier", err));
    nccl_comm *n = NC(c);
    double t0 = now_s();
    ncclResult_t r = ncclAllReduce(n->flag, n->flag, 1, ncclInt32, ncclMax, n->comm, n->stream);
    return nccl_finish(c, r, t0, "barrier", 0, err);
}

/* Flushes and destroys a healthy communicator within the deadline; anything
 * else is aborted (ncclCommDestroy waits for peers that may be gone). */
static void nccl_close(kn_comm *c, nccl_comm *n) {
    if (!n->comm) return;
    if (c->broken) {
        nccl_abort_comm(n);
        return;
    }
#ifdef KN_NCCL_NONBLOCKING
    kn_err ignored;
    ncclResult_t r = ncclCommFinalize(n->comm);
    if (!KN_NCCL_OK(r) || nccl_wait(c, n->comm, 0, now_s(), "finalize", 0, &ignored)) {
        nccl_abort_comm(n);
        return;
    }
#endif
    if (ncclCommDestroy(n->comm) != ncclSuccess) nccl_abort_comm(n);
    n->comm = NULL;
}

static void nccl_free(kn_comm *c) {
    nccl_comm *n = NC(c);
    if (!n) return;
    nccl_close(c, n);
    kn_cuda_free(n->flag);
    free(n);
}

static void nccl_abort(kn_comm *c, int code) {
    nccl_abort_comm(NC(c));
    kn_comm_abort(NC(c)->bootstrap, code);
}

static int nccl_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err);

static const kn_comm_ops nccl_ops = {"nccl",       nccl_broadcast, nccl_all_to_all, nccl_all_gather, nccl_sendrecv,
                                     nccl_barrier, nccl_split,     nccl_abort,      nccl_free};

/* A kn_comm for this rank (its NCCL communicator still to be made) with its
 * barrier flag on the backend's device. */
static int nccl_new(kn_comm **out, kn_comm *bootstrap, int rank, int size, double timeout_s, kn_err *err) {
    *out = NULL;
    kn_cu_backend *be = kn_cu_get(err, "NCCL communicator");
    if (!be) return err->code;
    nccl_comm *n = (nccl_comm *)calloc(1, sizeof *n);
    kn_comm *c = n ? kn_comm_new(&nccl_ops, rank, size, n) : NULL;
    if (!c) {
        free(n);
        return kn_fail(err, KN_ERR_NOMEM, "NCCL communicator: out of memory");
    }
    n->bootstrap = bootstrap;
    n->stream = be->stream;
    n->flag = (int *)kn_cuda_malloc(sizeof(int), err);
    c->timeout_s = timeout_s;
    if (!n->flag || kn_cu_check(cudaMemsetAsync(n->flag, 0, sizeof(int), n->stream), err, "NCCL communicator",
                                "cudaMemsetAsync(barrier flag)")) {
        kn_comm_free(c);
        return err->code;
    }
    *out = c;
    return KN_OK;
}

#ifdef KN_NCCL_NONBLOCKING
static ncclConfig_t nonblocking_config(void) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    return config;
}
#endif

static int nccl_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
    KN_TRY(nccl_usable(c, "split", err));
    /* NCCL_SPLIT_NOCOLOR (-1) would leave this rank out: kn_comm_split has no such case */
    if (color < 0) return kn_fail(err, KN_ERR_INVALID, "NCCL split: color %d (colors are >= 0)", color);
    nccl_comm *n = NC(c);
    double t0 = now_s();
    ncclConfig_t config = nonblocking_config();
    ncclComm_t sub = NULL;
    ncclResult_t r = ncclCommSplit(n->comm, color, key, &sub, &config);
    int rc = KN_NCCL_OK(r) ? KN_OK : nccl_failed(c, n->comm, r, "split", 0, err);
    /* both leave ncclInProgress when every rank of the parent has joined */
    if (!rc) rc = nccl_wait(c, sub, 0, t0, "split", 0, err);
    if (!rc) rc = nccl_wait(c, n->comm, 0, t0, "split", 0, err);
    int sub_rank = 0, sub_size = 0;
    if (!rc && ((r = ncclCommUserRank(sub, &sub_rank)) != ncclSuccess || (r = ncclCommCount(sub, &sub_size)) != ncclSuccess))
        rc = nccl_failed(c, sub, r, "split", 0, err);
    if (rc) {
        if (sub) (void)ncclCommAbort(sub);
        nccl_abort_comm(n); /* the parent's ranks disagree about where they are */
        return KN_ERR_COMM;
    }
    kn_comm *child = NULL;
    rc = nccl_new(&child, n->bootstrap, sub_rank, sub_size, c->timeout_s, err);
    if (rc) {
        /* Only this rank failed (memory): its peers in sub hold a healthy
         * communicator and will time out on their first op with it. */
        (void)ncclCommAbort(sub);
        return rc;
    }
    NC(child)->comm = sub;
    *out = child;
    return KN_OK;
#else
    int v = 0;
    (void)ncclGetVersion(&v);
    return kn_fail(err, KN_ERR_UNSUPPORTED,
                   "NCCL split needs NCCL >= 2.18 (ncclCommSplit); this kiln was built against NCCL %d.%d.%d "
                   "(library %d)",
                   NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, v);
#endif
}

/* ---- creation ------------------------------------------------------------------ */

/* Every rank learns whether every rank got through a step, so none waits in a
 * later collective for a rank that already gave up. A rank that failed keeps
 * its own error; the others report the first failing rank and its code. */
static int agree(kn_comm *boot, int rc, const char *step, kn_err *err) {
    int size = kn_comm_size(boot);
    int32_t mine = rc, *all = (int32_t *)calloc((size_t)size, sizeof *all);
    kn_err local;
    if (!all) return kn_fail(err, KN_ERR_NOMEM, "NCCL communicator: out of memory");
    int grc = kn_comm_all_gather(boot, &mine, all, sizeof mine, &local);
    int first = -1;
    for (int p = 0; !grc && p < size && first < 0; p++)
        if (all[p]) first = p;
    int code = first >= 0 ? all[first] : KN_OK;
    free(all);
    if (rc) return rc; /* err already says why */
    if (grc) {
        *err = local;
        return kn_err_wrap(err, "NCCL communicator: %s: ", step);
    }
    if (first >= 0)
        return kn_fail(err, code, "NCCL communicator: %s failed on rank %d of %d (%s; its error says why)", step,
                       first, size, kn_status_name(code));
    return KN_OK;
}

/* This rank's part before NCCL: the device, the backend on it, the barrier
 * flag. */
static int prepare(kn_comm **out, kn_comm *boot, int device, kn_err *err) {
    KN_TRY(kn_cuda_use_device(device, err));
    return nccl_new(out, boot, kn_comm_rank(boot), kn_comm_size(boot), kn_comm_timeout(boot), err);
}

/* Rank 0 makes the unique id and broadcasts it with its status, so that a
 * failure there fails every rank. Made only once every rank is ready: NCCL
 * starts a thread waiting for the ranks to connect. */
static int share_id(kn_comm *boot, ncclUniqueId *id, kn_err *err) {
    struct {
        int32_t status;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    char why[512] = "";
    if (kn_comm_rank(boot) == 0) {
        ncclResult_t r = ncclGetUniqueId(&msg.id);
        if (r != ncclSuccess) {
            msg.status = KN_ERR_BACKEND;
            nccl_reason(NULL, r, why, sizeof why);
        }
    }
    KN_TRY(kn_comm_broadcast(boot, &msg, sizeof msg, 0, err));
    if (msg.status && kn_comm_rank(boot) == 0)
        return kn_fail(err, msg.status, "NCCL communicator: ncclGetUniqueId: %s", why);
    if (msg.status)
        return kn_fail(err, msg.status, "NCCL communicator: ncclGetUniqueId failed on rank 0 (its error says why)");
    *id = msg.id;
    return KN_OK;
}

/* ncclCommInitRank within the deadline. */
static int init_rank(kn_comm *c, ncclUniqueId id, kn_err *err) {
    nccl_comm *n = NC(c);
    double t0 = now_s();
#ifdef KN_NCCL_NONBLOCKING
    ncclConfig_t config = nonblocking_config();
    ncclResult_t r = ncclCommInitRankConfig(&n->comm, c->size, id, c->rank, &config);
#else
    ncclResult_t r = ncclCommInitRank(&n->comm, c->size, id, c->rank);
#endif
    int rc = KN_NCCL_OK(r) ? nccl_wait(c, n->comm, 0, t0, "init", 0, err) : nccl_failed(c, n->comm, r, "init", 0, err);
    if (rc) nccl_abort_comm(n);
    return rc;
}

int kn_comm_nccl_create(kn_comm **out, kn_comm *boot, int device, kn_err *err) {
    *out = NULL;
    kn_comm *c = NULL;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int rc = prepare(&c, boot, device, err);
    rc = agree(boot, rc, "preparing the GPU", err);
    if (!rc) rc = share_id(boot, &id, err);
    if (rc) {
        kn_comm_free(c);
        return rc;
    }
    rc = init_rank(c, id, err);
    /* A rank whose init failed at once may reach this agreement a whole
     * timeout before the ranks that waited for it: give the bootstrap that. */
    double t = kn_comm_timeout(boot);
    kn_comm_set_timeout(boot, t > 0 ? 2 * t + 10 : t);
    rc = agree(boot, rc, "ncclCommInitRank", err);
    kn_comm_set_timeout(boot, t);
    if (rc) {
        c->broken = 1; /* abort, not finalize: the other ranks gave up */
        kn_comm_free(c);
        return rc;
    }
    *out = c;
    return KN_OK;
}

#endif
