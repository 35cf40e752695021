/* The diffusion-model fixture runner (components "qwen_image_dit", ...):
 * the family meta.json names, else the one detected from the case's weights
 * (kn_fixture_dit_family), loaded with the tiny config's constants, run
 * once through the family interface on the case's inputs: in.x,
 * in.timestep, in.context, and where present in.attention_mask, in.y (the
 * pooled vector), in.guidance, in.ref_latent0.. (with the case's
 * "ref_latents_method"). Given ranks (kiln fixture under mpirun), the
 * forward also runs sharded across them and must match the one-process
 * output within 1e-5 relative L2. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pipelines/fixture.h"

#define MAX_REFS 8

/* An input the case may lack. */
static const kn_tensor *optional(const kn_fixture_case *c, const char *name) {
    char full[64];
    snprintf(full, sizeof full, "in.%s", name);
    return kn_st_find(c->data, full);
}

/* Under sequence parallelism the output of the sharded forward must match
 * the one-process forward within 1e-5 relative L2 (the bar); it is
 * what the harness then compares with ComfyUI's. */
#define SP_MAX_REL_L2 1e-5

static double rel_l2(const kn_tensor *a, const kn_tensor *b) {
    const float *x = a->data, *y = b->data;
    double num = 0, den = 0;
    for (int64_t i = 0; i < kn_tensor_numel(a); i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int run_sharded(const kn_fixture_case *c, const kn_dit *m, kn_dit_input *in, const kn_tensor *single,
                       kn_tensor *out, kn_err *err) {
    in->sp = c->sp;
    int rc = kn_dit_forward(c->ctx, m, in, out, NULL, NULL);
    in->sp = NULL;
    if (rc) return kn_fail(err, rc, "sharded over %d ranks: %s", kn_sp_size(c->sp), c->ctx->err.msg);
    double e = rel_l2(out, single);
    int same = memcmp(out->data, single->data, kn_tensor_nbytes(out)) == 0;
    printf("  sharded over %d ranks: rel_l2 vs one process %.3e%s\n", kn_sp_size(c->sp), e,
           same ? " (bit-identical)" : "");
    if (!(e <= SP_MAX_REL_L2))
        return kn_fail(err, KN_ERR_INVALID, "sharded over %d ranks: rel L2 %.3e from one process (bar %.0e)",
                       kn_sp_size(c->sp), e, SP_MAX_REL_L2);
    return KN_OK;
}

static int run(const kn_fixture_case *c, const kn_dit *m, kn_fixture_results *res, kn_err *err) {
    kn_tensor x, t, context, out = {0}, sharded = {0};
    const kn_tensor *refs[MAX_REFS];
    kn_dit_input in = {&x,   &t, &context, optional(c, "attention_mask"), optional(c, "y"), optional(c, "guidance"),
                       refs, 0,  m->ref_method, NULL};
    KN_TRY(kn_fixture_input(c, "x", &x, err));
    KN_TRY(kn_fixture_input(c, "timestep", &t, err));
    KN_TRY(kn_fixture_input(c, "context", &context, err));
    for (char name[32]; in.n_refs < MAX_REFS; in.n_refs++) {
        snprintf(name, sizeof name, "ref_latent%d", in.n_refs);
        if (!(refs[in.n_refs] = optional(c, name))) break;
    }
    const char *method = json_string_value(json_object_get(c->info, "ref_latents_method"));
    if (method && (in.ref_method = kn_dit_ref_method(m->family, method)) < 0)
        return kn_fail(err, KN_ERR_FORMAT, "%s: unknown ref_latents_method '%s'", m->family->name, method);
    int64_t ne[KN_MAX_DIMS];
    memcpy(ne, x.ne, sizeof ne);
    ne[1] = m->channels;
    KN_TRY(kn_tensor_new(&out, KN_F32, KN_DEV_CPU, x.ndim, ne, err));
    kn_fixture_debug_sink sink = {res, err};
    int rc = kn_dit_forward(c->ctx, m, &in, &out, kn_fixture_emit_debug, &sink);
    if (rc && err->code == KN_OK) *err = c->ctx->err;
    if (!rc && kn_sp_size(c->sp) > 1) {
        rc = kn_tensor_new(&sharded, KN_F32, KN_DEV_CPU, x.ndim, ne, err);
        if (!rc) rc = run_sharded(c, m, &in, &out, &sharded, err);
    }
    if (!rc) rc = kn_fixture_emit(res, "out.model_output", sharded.data ? &sharded : &out, err);
    kn_tensor_free(&out);
    kn_tensor_free(&sharded);
    return rc;
}

int kn_dit_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_st_file *f = NULL;
    kn_dit *m = NULL;
    const kn_dit_family *fam = NULL;
    const char *prefix = "";
    kn_dit_consts o;
    kn_fixture_dit_overrides(c, NULL, &o);
    int rc = kn_fixture_open_weights(c, &f, err);
    if (!rc) rc = kn_fixture_dit_family(c, f, &fam, &prefix, err);
    if (!rc) rc = fam->load(&m, f, prefix, &o, err);
    if (!rc) rc = run(c, m, res, err);
    kn_dit_free(m);
    kn_st_close(f);
    return rc;
}
