/* Fixture runner for the Qwen-Image DiT (component "qwen_image_dit"). */
#include <stdio.h>
#include <string.h>

#include "pipelines/qwen_image/dit.h"
#include "pipelines/fixture.h"

#define MAX_REFS 8

typedef struct debug_sink {
    kn_fixture_results *res;
    kn_err *err;
} debug_sink;

static int emit_debug(void *user, const char *name, const kn_tensor *t) {
    debug_sink *s = user;
    char full[128];
    snprintf(full, sizeof full, "debug.%s", name);
    return kn_fixture_emit(s->res, full, t, s->err);
}

/* The family constants, with what the fixture's tiny config changes. */
static kn_qwen_dit_family fixture_family(const kn_fixture_case *c) {
    kn_qwen_dit_family fam = kn_qwen_image_family;
    int axes[3];
    if (kn_fixture_config_ints(c, "axes_dims_rope", axes, 3) == 3) memcpy(fam.axes_dims, axes, sizeof axes);
    fam.rope_theta = kn_fixture_config_num(c, "rope_theta", fam.rope_theta);
    fam.patch = (int)kn_fixture_config_num(c, "patch_size", fam.patch);
    return fam;
}

int kn_qwen_image_dit_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (rc) return rc;
    kn_st_file *f = NULL;
    if ((rc = kn_st_open(&f, path, err))) return rc;
    kn_qwen_dit m;
    kn_qwen_dit_family fam = fixture_family(c);
    if ((rc = kn_qwen_dit_load(&m, f, &fam, err))) {
        kn_st_close(f);
        return rc;
    }
    kn_tensor x, sigma, context, mask, refs[MAX_REFS], out = {0};
    const kn_tensor *ref_ptrs[MAX_REFS];
    kn_qwen_dit_input in = {&x, &sigma, &context, NULL, ref_ptrs, 0, m.cfg.default_ref_method};
    kn_err_clear(err);
    if (!(rc = kn_fixture_input(c, "x", &x, err)) && !(rc = kn_fixture_input(c, "timestep", &sigma, err)))
        rc = kn_fixture_input(c, "context", &context, err);
    if (!rc && kn_fixture_input(c, "attention_mask", &mask, err) == KN_OK) in.context_mask = &mask;
    for (; !rc && in.n_refs < MAX_REFS; in.n_refs++) {
        char name[32];
        snprintf(name, sizeof name, "ref_latent%d", in.n_refs);
        if (kn_fixture_input(c, name, &refs[in.n_refs], err) != KN_OK) break;
        ref_ptrs[in.n_refs] = &refs[in.n_refs];
    }
    kn_err_clear(err);
    const char *method = json_string_value(json_object_get(c->info, "ref_latents_method"));
    if (method) in.ref_method = strcmp(method, "index_timestep_zero") == 0 ? KN_QWEN_REF_INDEX_TIMESTEP_ZERO
                                                                            : KN_QWEN_REF_INDEX;
    if (!rc) rc = kn_tensor_new(&out, KN_F32, KN_DEV_CPU, 5,
                                (int64_t[]){x.ne[0], m.cfg.out_channels, 1, x.ne[3], x.ne[4]}, err);
    if (!rc) {
        debug_sink sink = {res, err};
        rc = kn_qwen_dit_forward(c->ctx, &m, &in, &out, emit_debug, &sink);
        if (rc && err->code == KN_OK) *err = c->ctx->err;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.model_output", &out, err);
    kn_tensor_free(&out);
    kn_qwen_dit_free(&m);
    kn_st_close(f);
    return rc;
}
