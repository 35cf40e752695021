/* kn_comm over MPI (OpenMPI from Debian): CPU buffers, processes on one
 * machine (shared memory) or several (TCP).
 *
 * Every operation is MPI's non-blocking form completed by polling
 * MPI_Testall against the communicator's deadline, so a rank that died,
 * stopped or runs another workflow costs the others a clear KN_ERR_COMM
 * after the timeout instead of a hang. Polling backs off from spinning to
 * short sleeps: ranks sharing cores (mpirun --oversubscribe) leave the CPU
 * to the rank still computing, and after a second of waiting (a follower
 * between renders) to 10 ms sleeps. Errors are returned (MPI_ERRORS_RETURN), not
 * fatal. Payloads over INT_MAX bytes travel as a contiguous type of a block
 * size dividing them. */
#ifdef KN_HAVE_MPI

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/comm_impl.h"

typedef struct mpi_comm {
    MPI_Comm comm;
    int world; /* owns MPI itself: finalised with it */
} mpi_comm;

#define MPI_OF(c) (((mpi_comm *)(c)->impl)->comm)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int mpi_fail(kn_comm *c, int mpi_rc, const char *op, size_t bytes, kn_err *err) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(mpi_rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", mpi_rc);
    return kn_fail(err, KN_ERR_COMM, "rank %d of %d: %s of %zu bytes failed: %s", c->rank, c->size, op, bytes, s);
}

/* A (count, type) pair for `bytes`: MPI counts are int. */
typedef struct span {
    int count;
    MPI_Datatype type;
    int owned;
} span;

static int span_of(kn_comm *c, size_t bytes, const char *op, span *s, kn_err *err) {
    *s = (span){(int)bytes, MPI_BYTE, 0};
    if (bytes <= INT_MAX) return KN_OK;
    for (size_t block = (size_t)1 << 20; block >= 2; block >>= 1)
        if (bytes % block == 0 && bytes / block <= INT_MAX) {
            int rc = MPI_Type_contiguous((int)block, MPI_BYTE, &s->type);
            if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&s->type);
            if (rc != MPI_SUCCESS) return mpi_fail(c, rc, op, bytes, err);
            s->count = (int)(bytes / block);
            s->owned = 1;
            return KN_OK;
        }
    return kn_fail(err, KN_ERR_INVALID, "%s: %zu bytes is more than MPI can send in one message", op, bytes);
}

static void span_free(span *s) {
    if (s->owned) MPI_Type_free(&s->type);
}

/* Completes reqs[0..n) or fails at the deadline. */
static int wait_all(kn_comm *c, MPI_Request *reqs, int n, const char *op, size_t bytes, kn_err *err) {
    double t0 = now_s();
    long sleep_ns = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(c, rc, op, bytes, err);
        if (done) return KN_OK;
        double waited = now_s() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s)
            return kn_fail(err, KN_ERR_COMM,
                           "rank %d of %d: %s of %zu bytes not complete after %.0f s: another rank stopped answering "
                           "(it died, hangs, or runs another model or workflow)",
                           c->rank, c->size, op, bytes, waited);
        if (waited > 50e-6) { /* a long wait (an idle follower) polls less often */
            long cap = waited > 1.0 ? 10000000 : 200000;
            sleep_ns = sleep_ns ? (sleep_ns * 2 > cap ? cap : sleep_ns * 2) : 5000;
            nanosleep(&(struct timespec){0, sleep_ns}, NULL);
        }
    }
}

static int mpi_broadcast(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err) {
    span s;
    KN_TRY(span_of(c, bytes, "broadcast", &s, err));
    MPI_Request r;
    int rc = MPI_Ibcast(buf, s.count, s.type, root, MPI_OF(c), &r);
    rc = rc != MPI_SUCCESS ? mpi_fail(c, rc, "broadcast", bytes, err) : wait_all(c, &r, 1, "broadcast", bytes, err);
    span_free(&s);
    return rc;
}

static int mpi_all_to_all(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    span s;
    KN_TRY(span_of(c, bytes, "all_to_all", &s, err));
    MPI_Request r;
    int rc = MPI_Ialltoall(send, s.count, s.type, recv, s.count, s.type, MPI_OF(c), &r);
    rc = rc != MPI_SUCCESS ? mpi_fail(c, rc, "all_to_all", bytes, err) : wait_all(c, &r, 1, "all_to_all", bytes, err);
    span_free(&s);
    return rc;
}

static int mpi_all_gather(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    span s;
    KN_TRY(span_of(c, bytes, "all_gather", &s, err));
    MPI_Request r;
    int rc = MPI_Iallgather(send, s.count, s.type, recv, s.count, s.type, MPI_OF(c), &r);
    rc = rc != MPI_SUCCESS ? mpi_fail(c, rc, "all_gather", bytes, err) : wait_all(c, &r, 1, "all_gather", bytes, err);
    span_free(&s);
    return rc;
}

#define HOP_TAG 4242

static int mpi_sendrecv(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err) {
    span s;
    KN_TRY(span_of(c, bytes, "sendrecv", &s, err));
    MPI_Request r[2];
    int rc = MPI_Irecv(recv, s.count, s.type, src, HOP_TAG, MPI_OF(c), &r[0]);
    if (rc == MPI_SUCCESS) {
        rc = MPI_Isend(send, s.count, s.type, dst, HOP_TAG, MPI_OF(c), &r[1]);
        if (rc != MPI_SUCCESS) {
            MPI_Cancel(&r[0]);
            MPI_Request_free(&r[0]);
        }
    }
    rc = rc != MPI_SUCCESS ? mpi_fail(c, rc, "sendrecv", bytes, err) : wait_all(c, r, 2, "sendrecv", bytes, err);
    span_free(&s);
    return rc;
}

static int mpi_barrier(kn_comm *c, kn_err *err) {
    MPI_Request r;
    int rc = MPI_Ibarrier(MPI_OF(c), &r);
    return rc != MPI_SUCCESS ? mpi_fail(c, rc, "barrier", 0, err) : wait_all(c, &r, 1, "barrier", 0, err);
}

static int wrap(kn_comm **out, MPI_Comm comm, int world, kn_err *err);

static int mpi_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err) {
    MPI_Comm sub;
    int rc = MPI_Comm_split(MPI_OF(c), color, key, &sub);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "split", 0, err);
    return wrap(out, sub, 0, err);
}

static void mpi_abort(kn_comm *c, int code) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_OF(c), code);
}

static void mpi_free(kn_comm *c) {
    mpi_comm *m = c->impl;
    if (!m) return;
    /* a broken communicator may have requests in flight: MPI_Finalize could wait on them */
    if (!m->world) MPI_Comm_free(&m->comm);
    else if (!c->broken) MPI_Finalize();
    free(m);
}

static const kn_comm_ops mpi_ops = {"mpi",        mpi_broadcast, mpi_all_to_all, mpi_all_gather, mpi_sendrecv,
                                    mpi_barrier, mpi_split,     mpi_abort,      mpi_free};

static int wrap(kn_comm **out, MPI_Comm comm, int world, kn_err *err) {
    int rank = 0, size = 1;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mpi_comm *m = malloc(sizeof *m);
    if (m) *m = (mpi_comm){comm, world};
    *out = m ? kn_comm_new(&mpi_ops, rank, size, m) : NULL;
    if (!*out) {
        free(m);
        if (!world) MPI_Comm_free(&comm);
        return kn_fail(err, KN_ERR_NOMEM, "communicator: out of memory");
    }
    return KN_OK;
}

int kn_comm_mpi_world(kn_comm **out, kn_err *err) {
    int provided = 0;
    /* collectives run on whichever thread executes prompts (the server's
     * worker), one at a time: SERIALIZED */
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) return kn_fail(err, KN_ERR_COMM, "MPI_Init_thread failed (%d)", rc);
    if (provided < MPI_THREAD_SERIALIZED) {
        MPI_Finalize();
        return kn_fail(err, KN_ERR_UNSUPPORTED, "this MPI does not allow calls from several threads");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    rc = wrap(out, MPI_COMM_WORLD, 1, err);
    if (rc) MPI_Finalize();
    return rc;
}

#endif
