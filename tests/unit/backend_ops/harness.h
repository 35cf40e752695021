/* The harness of test_backend_ops (see the comment at the top of
 * tests/unit/test_backend_ops.c): random inputs, per-backend environments
 * that put host data on a device and read it back, and run_check, which runs
 * one op on the CPU against a reference and on every available device
 * against the CPU. The op cases live in test_backend_ops.c and in this
 * folder (attention.c, patch.c); every file of the folder is linked into the
 * test_backend_ops executable. */
#ifndef KN_TEST_BACKEND_OPS_HARNESS_H
#define KN_TEST_BACKEND_OPS_HARNESS_H

#include <stdint.h>

#include "kernels/ops.h"

/* ---- host data ---- */

void *xmalloc(size_t n);            /* exits: the test cannot go on without its inputs */
float frand(void);                  /* splitmix64 in [-1, 1), fixed seed */
float *rand_vec(int64_t n, float amp);
int64_t numel_of(int ndim, const int64_t *ne);
void round_to(float *v, int64_t n, kn_dtype dt); /* v rounded to dtype dt */
const char *shape_str(char *buf, size_t len, int ndim, const int64_t *ne);

/* A weight stored as dt with `scale`: raw bytes, and the f32 values it stands for. */
typedef struct weight {
    kn_dtype dt;
    float scale;
    int64_t n;
    void *raw;
    float *deq;
} weight;
weight weight_rand(kn_dtype dt, float scale, int64_t n, float amp);
void weight_free(weight *w);

/* ---- one run of an op on one backend ---- */

#define ENV_TENSORS 12

/* Tensors made for one run. After the first failure (rc != 0, message in
 * ctx.err) helpers do nothing, so run functions read straight through. */
typedef struct env {
    kn_ctx ctx;
    kn_dtype act; /* activation dtype; a CPU run stores F32 holding values rounded to it */
    kn_tensor owned[ENV_TENSORS];
    int n_owned;
    int rc;
} env;

kn_tensor *env_new(env *e, kn_dtype dt, int ndim, const int64_t *ne);
/* A tensor holding raw bytes of dtype dt (weights, F32 masks and tables). */
kn_tensor *put_raw(env *e, kn_dtype dt, float scale, const void *raw, int ndim, const int64_t *ne);
kn_tensor *put_f32(env *e, const float *v, int ndim, const int64_t *ne);
kn_tensor *put_weight(env *e, const weight *w, int ndim, const int64_t *ne);
/* An activation: v rounded to e->act, stored in the backend's activation dtype. */
kn_tensor *put_act(env *e, const float *v, int ndim, const int64_t *ne);
kn_tensor *new_act(env *e, int ndim, const int64_t *ne);
/* t's values (t contiguous) as f32 into out; returns the run's status. */
int get(env *e, const kn_tensor *t, float *out);

/* ---- checks ---- */

typedef int (*run_fn)(const void *params, env *e, float *out);

typedef struct check {
    const char *op;
    char what[160];      /* shapes and options */
    run_fn run;
    const void *params;
    kn_precision prec;
    int64_t n;           /* output elements */
    const float *ref;    /* naive reference for the CPU's f32 run, or NULL */
    double ref_tol;      /* CPU vs reference */
    double dev_tol;      /* device vs CPU, F32 activations */
} check;

/* max |got - want| / max |want| over finite wants; equal values (infinities
 * included) agree; NaN or a mismatched infinity counts as infinite. */
double max_err(const float *got, const float *want, int64_t n);
void run_check(const check *c);
/* One pass/fail line for a check that is not a comparison (an expected error). */
void report_bool(const char *op, const char *what, int ok, const char *detail);

/* Probes the device backends (printing a SKIP line for each unavailable one). */
void backends_init(void);
/* Prints the totals; returns the exit status. */
int checks_summary(void);

/* The op cases kept in this folder. */
void test_attention_all(void);
void test_patch_all(void);

#endif
