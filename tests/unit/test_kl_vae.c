/* Tests for the Flux VAE (pipelines/vae/kl.h) beyond the flux_vae fixture:
 * the config read off the tiny fixture's weights, detection and the family's
 * refusals (ComfyUI's 32 GroupNorm groups on a 16-wide model, a file with
 * post_quant_conv), shapes of sizes that are not multiples of 8 (encoded as
 * the model rounds them) and inputs that cannot be used. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/vae/kl.h"
#include "check.h"

#ifndef KN_SOURCE_DIR
#define KN_SOURCE_DIR "."
#endif
#define MODEL KN_SOURCE_DIR "/tests/fixtures/flux_vae/model.safetensors"

/* The fixture's tensors plus a post_quant_conv, as an AutoencoderKL with 16 channels would have. */
static int write_with_quant_conv(const kn_st_file *f, const char *path, kn_err *err) {
    int n = kn_st_count(f);
    kn_tensor *t = calloc((size_t)n + 1, sizeof *t);
    float pq[16 * 16] = {0};
    if (!t) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) t[i] = *kn_st_at(f, i);
    t[n] = kn_tensor_make(KN_F32, KN_DEV_CPU, pq, 4, (int64_t[]){16, 16, 1, 1});
    t[n].name = "post_quant_conv.weight";
    int rc = kn_st_write(path, t, n + 1, err);
    free(t);
    return rc;
}

int main(void) {
    kn_err err;
    kn_ctx ctx;
    kn_st_file *f = NULL, *g = NULL;
    kn_kl_vae *vae = NULL;
    kn_vae *v = NULL;
    const kn_vae_family *fam = NULL;
    kn_err_clear(&err);
    CHECK(kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32) == KN_OK, "ctx");
    if (kn_st_open(&f, MODEL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    /* detection, and the family's own loader with ComfyUI's 32 groups */
    CHECK(kn_vae_detect(f, &fam, &err) == KN_OK && fam == &kn_flux_vae, "detected as %s", fam ? fam->title : err.msg);
    CHECK(kn_vae_load(&v, f, &err) == KN_ERR_SHAPE && strstr(err.msg, "32 GroupNorm groups") &&
              strstr(err.msg, "encoder.down.0.block.0.norm1"),
          "16 channels in 32 groups: %s", err.msg);

    /* the config comes from the weights */
    CHECK(kn_kl_vae_load(&vae, f, 4, &err) == KN_OK, "%s", err.msg);
    if (!vae) return 1;
    const kn_kl_vae_config *c = kn_kl_vae_get_config(vae);
    CHECK(c->ch == 16 && c->levels == 4 && c->res_blocks == 2 && c->z_channels == 16 && c->image_channels == 3 &&
              c->out_channels == 3 && c->groups == 4 && c->scale == 8,
          "config ch %d levels %d blocks %d z %d in %d out %d groups %d scale %d", c->ch, c->levels, c->res_blocks,
          c->z_channels, c->image_channels, c->out_channels, c->groups, c->scale);

    /* 70 x 45 downsamples to 35 x 22, 17 x 11, 8 x 5: encode runs at the shape latent_shape gives */
    int64_t ne[4];
    kn_tensor image, mean, moments, latent, out;
    CHECK(kn_tensor_new(&image, KN_F32, KN_DEV_CPU, 4, (int64_t[]){1, 3, 70, 45}, &err) == KN_OK, "alloc");
    memset(image.data, 0, kn_tensor_nbytes(&image));
    CHECK(kn_kl_vae_latent_shape(vae, &image, ne, &err) == KN_OK && ne[0] == 1 && ne[1] == 16 && ne[2] == 8 &&
              ne[3] == 5,
          "latent shape %lld %lld %lld %lld", (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    CHECK(kn_tensor_new(&mean, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK, "alloc");
    CHECK(kn_kl_vae_encode(&ctx, vae, &mean, NULL, &image, NULL, NULL) == KN_OK, "encode 70x45: %s", ctx.err.msg);
    ne[1] = 2 * 16 + 1;
    CHECK(kn_tensor_new(&moments, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK, "alloc");
    CHECK(kn_kl_vae_encode(&ctx, vae, &mean, &moments, &image, NULL, NULL) == KN_ERR_SHAPE, "33-channel moments taken");

    /* decode: latent [2, 16, 3, 4] to [2, 3, 24, 32]; wrong widths and tiny images refused */
    CHECK(kn_tensor_new(&latent, KN_F32, KN_DEV_CPU, 4, (int64_t[]){2, 16, 3, 4}, &err) == KN_OK, "alloc");
    memset(latent.data, 0, kn_tensor_nbytes(&latent));
    CHECK(kn_kl_vae_image_shape(vae, &latent, ne, &err) == KN_OK && ne[0] == 2 && ne[1] == 3 && ne[2] == 24 &&
              ne[3] == 32,
          "image shape %lld %lld %lld %lld", (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    CHECK(kn_tensor_new(&out, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK, "alloc");
    CHECK(kn_kl_vae_decode(&ctx, vae, &out, &latent, NULL, NULL) == KN_OK, "decode: %s", ctx.err.msg);
    CHECK(kn_kl_vae_decode(&ctx, vae, &out, &image, NULL, NULL) == KN_ERR_SHAPE, "3-channel latent decoded");
    kn_tensor small = kn_tensor_make(KN_F32, KN_DEV_CPU, image.data, 4, (int64_t[]){1, 3, 4, 16});
    CHECK(kn_kl_vae_latent_shape(vae, &small, ne, &err) == KN_ERR_SHAPE && strstr(err.msg, "smaller than 8 x 8"),
          "4x16 image: %s", err.msg);

    /* a 16-channel AutoencoderKL (quant convs) is detected as this row but refused by name */
    char path[4096];
    const char *tmp = getenv("KN_TEST_TMP");
    snprintf(path, sizeof path, "%s/kl_vae_quant_conv.safetensors", tmp ? tmp : ".");
    CHECK(write_with_quant_conv(f, path, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_st_open(&g, path, &err) == KN_OK, "%s", err.msg);
    kn_vae *q = NULL;
    CHECK(g && kn_vae_load(&q, g, &err) == KN_ERR_UNSUPPORTED && strstr(err.msg, "post_quant_conv"),
          "quant convs: %s", err.msg);
    kn_st_close(g);
    remove(path);

    kn_tensor_free(&image);
    kn_tensor_free(&mean);
    kn_tensor_free(&moments);
    kn_tensor_free(&latent);
    kn_tensor_free(&out);
    kn_kl_vae_free(vae);
    kn_st_close(f);
    kn_ctx_free(&ctx);
    printf("test_kl_vae: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
