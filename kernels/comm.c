/* kn_comm dispatch (argument checks, stats, the broken flag) and the
 * single-rank transport. */
#include "kernels/comm_impl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_TIMEOUT_S 120.0

kn_comm *kn_comm_new(const kn_comm_ops *ops, int rank, int size, void *impl) {
    kn_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = (kn_comm){ops, rank, size, DEFAULT_TIMEOUT_S, 0, {0, 0, 0}, impl};
    return c;
}

/* ---- single rank -------------------------------------------------------------- */

static int single_broadcast(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err) { return KN_OK; }
static int single_copy(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    memcpy(recv, send, bytes);
    return KN_OK;
}
static int single_sendrecv(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err) {
    memmove(recv, send, bytes);
    return KN_OK;
}
static int single_barrier(kn_comm *c, kn_err *err) { return KN_OK; }
static int single_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err) {
    return kn_comm_single(out, err);
}
static void single_abort(kn_comm *c, int code) {}
static void single_free(kn_comm *c) {}

static const kn_comm_ops single_ops = {"single",       single_broadcast, single_copy,  single_copy,
                                       single_sendrecv, single_barrier,  single_split, single_abort,
                                       single_free};

int kn_comm_single(kn_comm **out, kn_err *err) {
    *out = kn_comm_new(&single_ops, 0, 1, NULL);
    return *out ? KN_OK : kn_fail(err, KN_ERR_NOMEM, "communicator: out of memory");
}

static int launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1) return 1;
    }
    return 0;
}

int kn_comm_world(kn_comm **out, kn_err *err) {
    *out = NULL;
    if (!launched_by_mpi()) return kn_comm_single(out, err);
#ifdef KN_HAVE_MPI
    return kn_comm_mpi_world(out, err);
#else
    return kn_fail(err, KN_ERR_UNSUPPORTED, "started by an MPI launcher, but this kiln was built without MPI "
                                            "(install libopenmpi-dev and rebuild)");
#endif
}

int kn_comm_nccl(kn_comm **out, kn_comm *bootstrap, int device, kn_err *err) {
    *out = NULL;
#ifdef KN_HAVE_NCCL
    if (!bootstrap) return kn_fail(err, KN_ERR_INVALID, "NCCL communicator: no bootstrap communicator");
    if (bootstrap->broken)
        return kn_fail(err, KN_ERR_COMM, "NCCL communicator: the bootstrap communicator is broken (rank %d of %d)",
                       bootstrap->rank, bootstrap->size);
    /* the unique id travels in host memory */
    if (strcmp(bootstrap->ops->kind, "nccl") == 0)
        return kn_fail(err, KN_ERR_INVALID, "NCCL communicator: the bootstrap must be an MPI or single-rank one");
    return kn_comm_nccl_create(out, bootstrap, device, err);
#elif defined(KN_HAVE_CUDA)
    return kn_fail(err, KN_ERR_UNSUPPORTED,
                   "NCCL communicator: this kiln was built without NCCL (install NCCL's nccl.h and libnccl.so, e.g. "
                   "the libnccl-dev package from NVIDIA's CUDA repository, and rebuild)");
#else
    return kn_fail(err, KN_ERR_UNSUPPORTED,
                   "NCCL communicator: this kiln was built without CUDA (install the CUDA toolkit and NCCL, "
                   "libnccl-dev, and rebuild)");
#endif
}

/* ---- dispatch ------------------------------------------------------------------ */

void kn_comm_free(kn_comm *c) {
    if (!c) return;
    c->ops->free(c);
    free(c);
}

int kn_comm_rank(const kn_comm *c) { return c->rank; }
int kn_comm_size(const kn_comm *c) { return c->size; }
const char *kn_comm_kind(const kn_comm *c) { return c->ops->kind; }
void kn_comm_set_timeout(kn_comm *c, double seconds) { c->timeout_s = seconds; }
double kn_comm_timeout(const kn_comm *c) { return c->timeout_s; }
int kn_comm_broken(const kn_comm *c) { return c->broken; }
const kn_comm_stats *kn_comm_get_stats(const kn_comm *c) { return &c->stats; }
void kn_comm_reset_stats(kn_comm *c) { memset(&c->stats, 0, sizeof c->stats); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int check_usable(kn_comm *c, const char *op, kn_err *err) {
    if (c->broken)
        return kn_fail(err, KN_ERR_COMM, "%s: the communicator is broken by an earlier failure (rank %d of %d)", op,
                       c->rank, c->size);
    return KN_OK;
}

/* Runs after every op: the time, the count, and a failure that breaks c. */
static int finish(kn_comm *c, int rc, double t0, uint64_t sent) {
    c->stats.wait_s += now_s() - t0;
    c->stats.calls++;
    if (rc == KN_ERR_COMM) c->broken = 1;
    if (!rc) c->stats.bytes_sent += sent;
    return rc;
}

int kn_comm_broadcast(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err) {
    KN_TRY(check_usable(c, "broadcast", err));
    if (root < 0 || root >= c->size) return kn_fail(err, KN_ERR_INVALID, "broadcast: root %d of %d", root, c->size);
    double t0 = now_s();
    int rc = bytes ? c->ops->broadcast(c, buf, bytes, root, err) : KN_OK;
    return finish(c, rc, t0, c->rank == root ? (uint64_t)bytes * (uint64_t)(c->size - 1) : 0);
}

int kn_comm_all_to_all(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    KN_TRY(check_usable(c, "all_to_all", err));
    double t0 = now_s();
    int rc = bytes ? c->ops->all_to_all(c, send, recv, bytes, err) : KN_OK;
    return finish(c, rc, t0, (uint64_t)bytes * (uint64_t)(c->size - 1));
}

int kn_comm_all_gather(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err) {
    KN_TRY(check_usable(c, "all_gather", err));
    double t0 = now_s();
    int rc = bytes ? c->ops->all_gather(c, send, recv, bytes, err) : KN_OK;
    return finish(c, rc, t0, (uint64_t)bytes * (uint64_t)(c->size - 1));
}

int kn_comm_sendrecv(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err) {
    KN_TRY(check_usable(c, "sendrecv", err));
    if (dst < 0 || dst >= c->size || src < 0 || src >= c->size)
        return kn_fail(err, KN_ERR_INVALID, "sendrecv: ranks %d/%d of %d", dst, src, c->size);
    double t0 = now_s();
    int rc = bytes ? c->ops->sendrecv(c, send, dst, recv, src, bytes, err) : KN_OK;
    return finish(c, rc, t0, dst == c->rank ? 0 : (uint64_t)bytes);
}

int kn_comm_barrier(kn_comm *c, kn_err *err) {
    KN_TRY(check_usable(c, "barrier", err));
    double t0 = now_s();
    return finish(c, c->ops->barrier(c, err), t0, 0);
}

int kn_comm_split(kn_comm *c, int color, int key, kn_comm **out, kn_err *err) {
    *out = NULL;
    KN_TRY(check_usable(c, "split", err));
    int rc = c->ops->split(c, color, key, out, err);
    if (!rc) (*out)->timeout_s = c->timeout_s;
    if (rc == KN_ERR_COMM) c->broken = 1;
    return rc;
}

void kn_comm_abort(kn_comm *c, int code) {
    if (c) c->ops->abort(c, code);
}
