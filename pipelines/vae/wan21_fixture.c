/* Fixture runner for the Wan 2.1 VAE (component "qwen_image_vae"): each
 * case's "op" is "decode" (in.latent -> out.image, out.image_01) or "encode"
 * (in.image -> out.latent_mean). */
#include <string.h>

#include "kernels/ops_image.h"
#include "pipelines/vae/wan21.h"
#include "pipelines/fixture.h"

static int run_decode(const kn_fixture_case *c, const kn_wan_vae *vae, kn_fixture_results *res, kn_err *err) {
    kn_ctx *ctx = c->ctx;
    kn_tensor latent, image = {0}, unit = {0};
    int64_t ne[5];
    int rc = kn_fixture_input(c, "latent", &latent, err);
    if (!rc) rc = kn_wan_vae_image_shape(vae, &latent, ne, err);
    if (!rc) rc = kn_tensor_new(&image, KN_F32, KN_DEV_CPU, 5, ne, err);
    if (!rc) rc = kn_tensor_new(&unit, KN_F32, KN_DEV_CPU, 5, ne, err);
    if (!rc && (kn_wan_vae_decode(ctx, vae, &image, &latent) || kn_image_to_unit(ctx, &unit, &image))) {
        *err = ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.image", &image, err);
    if (!rc) rc = kn_fixture_emit(res, "out.image_01", &unit, err);
    kn_tensor_free(&image);
    kn_tensor_free(&unit);
    return rc;
}

static int run_encode(const kn_fixture_case *c, const kn_wan_vae *vae, kn_fixture_results *res, kn_err *err) {
    kn_ctx *ctx = c->ctx;
    kn_tensor image, mean = {0};
    int64_t ne[5];
    int rc = kn_fixture_input(c, "image", &image, err);
    if (!rc) rc = kn_wan_vae_latent_shape(vae, &image, ne, err);
    if (!rc) rc = kn_tensor_new(&mean, KN_F32, KN_DEV_CPU, 5, ne, err);
    if (!rc && kn_wan_vae_encode(ctx, vae, &mean, &image)) {
        *err = ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.latent_mean", &mean, err);
    kn_tensor_free(&mean);
    return rc;
}

int kn_wan_vae_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    kn_st_file *f = NULL;
    kn_wan_vae *vae = NULL;
    const char *op = json_string_value(json_object_get(c->info, "op"));
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_wan_vae_load(&vae, f, err);
    if (!rc) {
        if (op && strcmp(op, "decode") == 0) rc = run_decode(c, vae, res, err);
        else if (op && strcmp(op, "encode") == 0) rc = run_encode(c, vae, res, err);
        else rc = kn_fail(err, KN_ERR_FORMAT, "%s: case op '%s' is neither decode nor encode", c->dir, op ? op : "");
    }
    kn_wan_vae_free(vae);
    kn_st_close(f);
    return rc;
}
