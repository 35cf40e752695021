/* kn_fixture: runs model fixtures in the shared format against Kiln.
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
 * sub-folder; a sub-folder's component "a/b" runs under the runner of "a". */
#ifndef KN_FIXTURE_H
#define KN_FIXTURE_H

#include <jansson.h>

#include "kernels/ops.h"
#include "kernels/safetensors.h"

typedef struct kn_fixture_case {
    const char *dir;        /* fixture folder */
    const json_t *meta;     /* whole meta.json */
    const json_t *info;     /* this case's object in meta["cases"] */
    const kn_st_file *data; /* the case's safetensors (in.*, out.*, debug.*) */
    kn_ctx *ctx;            /* CPU context with FP32 precision */
} kn_fixture_case;

typedef struct kn_fixture_results kn_fixture_results;

typedef int (*kn_fixture_fn)(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);

/* Record a computed tensor (any float dtype, CPU; copied) under `name`. */
int kn_fixture_emit(kn_fixture_results *res, const char *name, const kn_tensor *t, kn_err *err);

/* Helpers for runners. */
int kn_fixture_input(const kn_fixture_case *c, const char *name, kn_tensor *out, kn_err *err); /* "in.<name>" */
/* The weights file of the case: info["weights"], else the first key of meta["weights"]. */
int kn_fixture_weights_path(const kn_fixture_case *c, char *path, size_t len, kn_err *err);
/* meta["config"][key] as a number/int list; 0 and a default when absent. */
double kn_fixture_config_num(const kn_fixture_case *c, const char *key, double dflt);
int kn_fixture_config_ints(const kn_fixture_case *c, const char *key, int *vals, int max);

/* Run every case of a folder; prints one line per compared tensor.
 * Returns KN_OK when all cases pass; *failed counts failing cases. */
int kn_fixture_run_dir(const char *dir, int verbose, int *failed, kn_err *err);

/* Component runners (one per pipeline). */
int kn_qwen_image_dit_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_wan_vae_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_qwen25vl_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_sampling_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_lora_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);

#endif
