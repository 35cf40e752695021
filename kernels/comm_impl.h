/* What a transport implements behind kernels/comm.h (internal to kernels/).
 * comm.c checks arguments, keeps the stats and the broken flag, and calls
 * these; an op returns KN_OK or fails with err set (KN_ERR_COMM marks the
 * communicator broken). */
#ifndef KN_COMM_IMPL_H
#define KN_COMM_IMPL_H

/* The NCCL transport (kernels/cuda/comm_nccl.cu) is C++: the core's C
 * headers are declared with C linkage there too. */
#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/comm.h"

typedef struct kn_comm_ops {
    const char *kind;
    int (*broadcast)(kn_comm *c, void *buf, size_t bytes, int root, kn_err *err);
    int (*all_to_all)(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err);
    int (*all_gather)(kn_comm *c, const void *send, void *recv, size_t bytes, kn_err *err);
    int (*sendrecv)(kn_comm *c, const void *send, int dst, void *recv, int src, size_t bytes, kn_err *err);
    int (*barrier)(kn_comm *c, kn_err *err);
    int (*split)(kn_comm *c, int color, int key, kn_comm **out, kn_err *err);
    void (*abort)(kn_comm *c, int code);
    void (*free)(kn_comm *c); /* the transport's state (impl); comm.c frees c */
} kn_comm_ops;

struct kn_comm {
    const kn_comm_ops *ops;
    int rank, size;
    double timeout_s;
    int broken;
    kn_comm_stats stats;
    void *impl;
};

/* A communicator for ops/impl (calloc'ed; NULL when out of memory). */
kn_comm *kn_comm_new(const kn_comm_ops *ops, int rank, int size, void *impl);

#ifdef KN_HAVE_MPI
int kn_comm_mpi_world(kn_comm **out, kn_err *err);
#endif
#ifdef KN_HAVE_NCCL
/* kn_comm_nccl once comm.c has checked bootstrap (usable, not NCCL itself). */
int kn_comm_nccl_create(kn_comm **out, kn_comm *bootstrap, int device, kn_err *err);
#endif

#ifdef __cplusplus
}
#endif

#endif
