/* Fixture runner for the Flux VAE (component "flux_vae"): the weights must
 * detect as the Flux VAE family, then load with the tiny config's GroupNorm
 * group count (config.norm_num_groups: tiny widths cannot hold ComfyUI's 32).
 * Each case's "op" is "decode" (in.latent -> out.image, out.image_01) or
 * "encode" (in.image -> out.latent_mean, out.moments and out.latent_process_in,
 * the mean through the Flux latent format); layer outputs are offered as
 * debug.<name> ("decoder.up.3.upsample" -> debug.dec_up3_upsample). */
#include <stdio.h>
#include <string.h>

#include "kernels/ops_image.h"
#include "pipelines/fixture.h"
#include "pipelines/sampling/samplers.h"
#include "pipelines/vae/kl.h"

typedef struct debug_sink {
    kn_fixture_results *res;
    kn_err *err;
} debug_sink;

/* "debug.dec_mid_block_1" of "decoder.mid.block_1": coder prefix shortened,
 * dots before an index dropped, other dots to underscores. */
static int emit_debug(void *user, const char *name, const kn_tensor *t) {
    debug_sink *s = user;
    char full[128];
    size_t n = (size_t)snprintf(full, sizeof full, "debug.");
    const char *p = name;
    if (strncmp(p, "encoder.", 8) == 0 || strncmp(p, "decoder.", 8) == 0) {
        n += (size_t)snprintf(full + n, sizeof full - n, "%.3s_", p);
        p += 8;
    }
    for (; *p && n + 1 < sizeof full; p++)
        if (*p != '.') full[n++] = *p;
        else if (p[1] < '0' || p[1] > '9') full[n++] = '_';
    full[n] = '\0';
    return kn_fixture_emit(s->res, full, t, s->err);
}

static int run_decode(const kn_fixture_case *c, const kn_kl_vae *vae, kn_fixture_results *res, kn_err *err) {
    kn_ctx *ctx = c->ctx;
    kn_tensor latent, image = {0}, unit = {0};
    int64_t ne[4];
    debug_sink sink = {res, err};
    int rc = kn_fixture_input(c, "latent", &latent, err);
    if (!rc) rc = kn_kl_vae_image_shape(vae, &latent, ne, err);
    if (!rc) rc = kn_tensor_new(&image, KN_F32, KN_DEV_CPU, 4, ne, err);
    if (!rc) rc = kn_tensor_new(&unit, KN_F32, KN_DEV_CPU, 4, ne, err);
    if (!rc && (kn_kl_vae_decode(ctx, vae, &image, &latent, emit_debug, &sink) ||
                kn_image_to_unit(ctx, &unit, &image))) {
        if (err->code == KN_OK) *err = ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.image", &image, err);
    if (!rc) rc = kn_fixture_emit(res, "out.image_01", &unit, err);
    kn_tensor_free(&image);
    kn_tensor_free(&unit);
    return rc;
}

static int run_encode(const kn_fixture_case *c, const kn_kl_vae *vae, kn_fixture_results *res, kn_err *err) {
    kn_ctx *ctx = c->ctx;
    kn_tensor image, mean = {0}, moments = {0}, model_in = {0};
    int64_t ne[4];
    debug_sink sink = {res, err};
    int rc = kn_fixture_input(c, "image", &image, err);
    if (!rc) rc = kn_kl_vae_latent_shape(vae, &image, ne, err);
    if (!rc) rc = kn_tensor_new(&mean, KN_F32, KN_DEV_CPU, 4, ne, err);
    if (!rc) rc = kn_tensor_new(&model_in, KN_F32, KN_DEV_CPU, 4, ne, err);
    ne[1] *= 2;
    if (!rc) rc = kn_tensor_new(&moments, KN_F32, KN_DEV_CPU, 4, ne, err);
    if (!rc && kn_kl_vae_encode(ctx, vae, &mean, &moments, &image, emit_debug, &sink)) {
        if (err->code == KN_OK) *err = ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_latent_process_in(&kn_latent_flux, &mean, &model_in, err);
    if (!rc) rc = kn_fixture_emit(res, "out.latent_mean", &mean, err);
    if (!rc) rc = kn_fixture_emit(res, "out.moments", &moments, err);
    if (!rc) rc = kn_fixture_emit(res, "out.latent_process_in", &model_in, err);
    kn_tensor_free(&mean);
    kn_tensor_free(&moments);
    kn_tensor_free(&model_in);
    return rc;
}

int kn_kl_vae_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    kn_st_file *f = NULL;
    kn_kl_vae *vae = NULL;
    const kn_vae_family *fam = NULL;
    const char *op = json_string_value(json_object_get(c->info, "op"));
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_vae_detect(f, &fam, err);
    if (!rc && fam != &kn_flux_vae)
        rc = kn_fail(err, KN_ERR_FORMAT, "%s: detected as the %s, not the Flux VAE", path, fam->title);
    if (!rc) rc = kn_kl_vae_load(&vae, f, (int)kn_fixture_config_num(c, "norm_num_groups", 0), err);
    if (!rc) {
        if (op && strcmp(op, "decode") == 0) rc = run_decode(c, vae, res, err);
        else if (op && strcmp(op, "encode") == 0) rc = run_encode(c, vae, res, err);
        else rc = kn_fail(err, KN_ERR_FORMAT, "%s: case op '%s' is neither decode nor encode", c->dir, op ? op : "");
    }
    kn_kl_vae_free(vae);
    kn_st_close(f);
    return rc;
}
