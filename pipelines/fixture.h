/* kn_fixture: the harness that runs model fixtures in the shared format.
 *
 * A fixture folder holds meta.json, model weights and case<N>.safetensors with
 * in.<name> inputs and out.<name> expected outputs (debug.<name>
 * intermediates where present). meta.json's "component" picks a runner; the
 * runner reads the inputs, computes, and hands each output to
 * kn_fixture_emit under the expected name ("out.x" or "debug.x"). The harness
 * prints every case's error against the meta.json tolerance (relative L2 by
 * default; bit-exact or per-value bounds where meta.json asks for them);
 * out.* tensors decide pass/fail, debug.* ones are printed to help find bugs.
 * A folder whose meta.json lists "folders" instead of "cases" runs each
 * sub-folder; a sub-folder's component "a/b" runs under the runner of "a".
 *
 * Strictness: a case passes only when it has at least one out.* tensor and
 * every out.* tensor was produced and is within its tolerance. Tolerances are
 * looked up by name, never guessed: a per-tensor "bit-exact" entry; the case's
 * "tolerance_rel_l2"; "rel_l2_weights" / "rel_l2_outputs" for the LoRA
 * fixtures' patched_weights / dit_output cases; "rel_l2_bf16_case" for cases
 * on bf16 weights; "rel_l2_fp32"; "rel_fp32" (with "abs_floor": per value).
 * A case no entry covers fails with a message naming the keys it has.
 *
 * The harness lives with the pipelines so that each one's runner can use it;
 * the table of runners is the caller's (runtime/fixture.c). */
#ifndef KN_PIPELINES_FIXTURE_H
#define KN_PIPELINES_FIXTURE_H

#include <jansson.h>

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/family.h"

typedef struct kn_fixture_case {
    const char *dir;        /* fixture folder */
    const json_t *meta;     /* whole meta.json */
    const json_t *info;     /* this case's object in meta["cases"] */
    const kn_st_file *data; /* the case's safetensors (in.*, out.*, debug.*) */
    kn_ctx *ctx;            /* CPU context with FP32 precision */
    const kn_sp *sp;        /* NULL, or the ranks a DiT runner shards its forward over */
} kn_fixture_case;

typedef struct kn_fixture_results kn_fixture_results;

typedef int (*kn_fixture_fn)(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);

/* Record a computed tensor (any float dtype, CPU; copied) under `name`. */
int kn_fixture_emit(kn_fixture_results *res, const char *name, const kn_tensor *t, kn_err *err);

/* A kn_debug_fn (pipelines/family.h) recording each intermediate as
 * "debug.<name>": pass a kn_fixture_debug_sink as its user. */
typedef struct kn_fixture_debug_sink {
    kn_fixture_results *res;
    kn_err *err;
} kn_fixture_debug_sink;
int kn_fixture_emit_debug(void *sink, const char *name, const kn_tensor *t);

/* Helpers for runners. */
int kn_fixture_input(const kn_fixture_case *c, const char *name, kn_tensor *out, kn_err *err); /* "in.<name>" */
/* The weights file of the case: info["weights"], else the first key of meta["weights"]. */
int kn_fixture_weights_path(const kn_fixture_case *c, char *path, size_t len, kn_err *err);
/* The weights file of the case, opened: also "<file> rounded to bfloat16
 * (RNE)" (a bf16 copy of <file>'s float tensors, in a temporary file). */
int kn_fixture_open_weights(const kn_fixture_case *c, kn_st_file **out, kn_err *err);
/* meta["config"][key] as a number/int list; 0 and a default when absent. */
double kn_fixture_config_num(const kn_fixture_case *c, const char *key, double dflt);
int kn_fixture_config_ints(const kn_fixture_case *c, const char *key, int *vals, int max);
/* The DiT constants a tiny config changes: axes_dims_rope (or axes_dim),
 * rope_theta (or theta) and patch_size of `config` (meta["config"] when NULL). */
void kn_fixture_dit_overrides(const kn_fixture_case *c, const json_t *config, kn_dit_consts *o);
/* The DiT family of a case's weights f and the prefix its keys carry: the
 * family meta["family"] names (tiny files no width rule tells apart, such as
 * a Z-Image narrower than 3840), else the one detected from f. */
int kn_fixture_dit_family(const kn_fixture_case *c, const kn_st_file *f, const kn_dit_family **fam,
                          const char **prefix, kn_err *err);

/* A component name and its runner; tables end with {NULL, NULL}. */
typedef struct kn_fixture_runner {
    const char *component;
    kn_fixture_fn run;
} kn_fixture_runner;

/* Run every case of a folder with the runner `runners` has for its
 * component; prints one line per compared tensor. Returns KN_OK when all
 * cases pass; *failed counts failing cases. sp (NULL: one process): every
 * rank of it runs the same folders; DiT runners shard their forward. */
int kn_fixture_run_dir(const char *dir, const kn_fixture_runner *runners, const kn_sp *sp, int *failed,
                       kn_err *err);

#endif
