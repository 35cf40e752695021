/* Latent nodes:
 *  - EmptyLatentImage (4 channels) and EmptySD3LatentImage (16): zeros
 *    [B, C, H/8, W/8] with downscale_ratio_spacial 8. Samplers widen an
 *    all-zero latent to the model's channels and add a frame axis for
 *    families whose latents have one, as ComfyUI's fix_empty_latent_channels does.
 *  - SaveLatent: <prefix>_<counter:05>_.latent in the output folder, a
 *    safetensors file holding "latent_tensor" (the samples as they are, e.g.
 *    [B, 16, 1, h, w] after a Qwen-Image sampler) and the empty F32 marker
 *    "latent_format_version_0", with metadata "prompt" (json.dumps of the
 *    prompt) and one entry per extra_pnginfo key; UI output "latents".
 *  - LoadLatent: such a file from the input folder as F32 samples; a file
 *    without the marker is an old SD1 one, scaled by 1 / 0.18215 as ComfyUI
 *    scales it.
 *  - The empty latents' validate hook refuses a size whose render would
 *    need more than the memory budget (nodes/model_store.h), naming the
 *    input that makes it so: batch_size when one image fits, else the
 *    larger side. The estimate is per output pixel (KN_PEAK_BYTES_PER_PIXEL),
 *    so 16384x16384 at batch 64 is refused before anything is allocated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "kernels/safetensors.h"
#include "nodes/model_store.h"
#include "nodes/node.h"
#include "nodes/save_path.h"

static int empty_latent(kn_node_call *c, int64_t channels) {
    int64_t width, height, batch;
    if (kn_in_int(c, "width", &width) || kn_in_int(c, "height", &height) || kn_in_int(c, "batch_size", &batch))
        return c->err->code;
    kn_latent_obj *l = kn_latent_new();
    if (!l) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int64_t ne[4] = {batch, channels, height / 8, width / 8};
    if (kn_tensor_zeros(&l->samples, KN_F32, 4, ne, c->err)) {
        kn_object_release(&l->base);
        return kn_node_fail(c, "batch_size", c->err->code, "latent [%lld, %lld, %lld, %lld]: %s", (long long)ne[0],
                            (long long)ne[1], (long long)ne[2], (long long)ne[3], c->err->msg);
    }
    l->downscale_ratio = 8;
    kn_out_object(c, 0, &l->base);
    return KN_OK;
}

/* What sampling and decoding one output pixel keeps live at the peak, at
 * least, with the real models: the VAE decoder's full-resolution
 * activations (96 to 128 channels of f32 in two or more buffers) and the
 * DiT's per-token ones (3072 wide, ~10 buffers, per 16x16 pixels). The tiny
 * set needs ~150 bytes (1536x1536: +300 MB over 512x512). */
#define KN_PEAK_BYTES_PER_PIXEL 1024

static int empty_latent_validate(kn_node_call *c) {
    int64_t width, height, batch;
    if (kn_in_int_opt(c, "width", 0, &width) || kn_in_int_opt(c, "height", 0, &height) ||
        kn_in_int_opt(c, "batch_size", 0, &batch))
        return c->err->code;
    if (width <= 0 || height <= 0 || batch <= 0) return KN_OK; /* linked: not known before the run */
    double one = (double)width * (double)height * KN_PEAK_BYTES_PER_PIXEL, need = one * (double)batch;
    double budget = (double)kn_models_budget(c->env->models);
    if (need <= budget) return KN_OK;
    const char *input = one <= budget ? "batch_size" : width >= height ? "width" : "height";
    return kn_node_fail(c, input, KN_ERR_INVALID,
                        "%lldx%lld at batch %lld needs about %.1f GiB to sample and decode (%d bytes per pixel), above "
                        "the memory budget of %.1f GiB (--memory-budget)",
                        (long long)width, (long long)height, (long long)batch, need / 1073741824.0,
                        KN_PEAK_BYTES_PER_PIXEL, budget / 1073741824.0);
}

static int empty_latent_image(kn_node_call *c) { return empty_latent(c, 4); }
static int empty_sd3_latent_image(kn_node_call *c) { return empty_latent(c, 16); }

static int save_latent(kn_node_call *c) {
    kn_object *obj;
    const char *prefix;
    if (kn_in_object(c, "samples", "LATENT", &obj) || kn_in_string(c, "filename_prefix", &prefix)) return c->err->code;
    kn_save_path sp;
    if (kn_save_path_get(c, c->env->output_dir, prefix, 0, 0, &sp)) return c->err->code;
    char base[1100], file[4096 + 1200];
    snprintf(base, sizeof base, "%s_%05ld_.latent", sp.filename, sp.counter);
    snprintf(file, sizeof file, "%s/%s", sp.folder, base);

    const json_t *extra = c->env->extra_pnginfo;
    int n_meta = 1 + (int)json_object_size(extra);
    kn_st_meta *meta = calloc((size_t)n_meta, sizeof *meta);
    int rc = meta ? KN_OK : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int m = 0;
    if (!rc) meta[m++] = (kn_st_meta){"prompt", c->env->prompt ? kn_py_json_dumps(c->env->prompt) : strdup("")};
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)extra, k, v) if (!rc) meta[m++] = (kn_st_meta){k, kn_py_json_dumps(v)};
    for (int i = 0; !rc && i < m; i++)
        if (!meta[i].value) rc = kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");

    /* The marker first: the reference writer orders same-dtype tensors by name. */
    const int64_t zero = 0;
    kn_tensor t[2] = {kn_tensor_make(KN_F32, KN_DEV_CPU, NULL, 1, &zero), {0}};
    t[0].name = "latent_format_version_0";
    if (!rc && kn_tensor_dup(&t[1], &((const kn_latent_obj *)obj)->samples, c->err)) /* contiguous, on the CPU */
        rc = kn_node_fail(c, "samples", c->err->code, "%s", c->err->msg);
    t[1].name = "latent_tensor";
    if (!rc && kn_st_write_meta(file, t, 2, meta, m, c->err))
        rc = kn_node_fail(c, "samples", c->err->code, "%s", c->err->msg);
    kn_tensor_free(&t[1]);
    for (int i = 0; meta && i < m; i++) free((char *)meta[i].value);
    free(meta);
    if (rc) return rc;
    json_t *latents = json_pack("[{s:s, s:s, s:s}]", "filename", base, "subfolder", sp.subfolder, "type", "output");
    if (!latents || json_object_set_new(c->ui, "latents", latents))
        return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    return KN_OK;
}

static int load_latent(kn_node_call *c) {
    const char *name;
    if (kn_in_string(c, "latent", &name)) return c->err->code;
    char *path = NULL;
    kn_st_file *f = NULL;
    kn_latent_obj *l = NULL;
    kn_err e;
    kn_err_clear(&e);
    int rc = kn_models_resolve(c->env->models, "input_latents", name, &path, &e) || kn_st_open(&f, path, &e)
                 ? kn_node_fail(c, "latent", e.code, "%s", e.msg)
                 : KN_OK;
    const kn_tensor *src = rc ? NULL : kn_st_find(f, "latent_tensor");
    if (!rc && !src) rc = kn_node_fail(c, "latent", KN_ERR_INVALID, "%s holds no 'latent_tensor'", name);
    if (!rc && !(l = kn_latent_new())) rc = kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (!rc && (kn_tensor_new(&l->samples, KN_F32, KN_DEV_CPU, src->ndim, src->ne, c->err) ||
                kn_tensor_copy(&l->samples, src, c->err)))
        rc = kn_node_fail(c, "latent", c->err->code, "%s: %s", name, c->err->msg);
    if (!rc && !kn_st_find(f, "latent_format_version_0")) {
        float *x = l->samples.data;
        for (int64_t i = 0, n = kn_tensor_numel(&l->samples); i < n; i++) x[i] *= (float)(1.0 / 0.18215);
    }
    kn_st_close(f);
    free(path);
    if (rc) {
        if (l) kn_object_release(&l->base);
        return rc;
    }
    kn_out_object(c, 0, &l->base);
    return KN_OK;
}

const kn_node_def kn_nodes_latent[] = {
    {"EmptyLatentImage", empty_latent_image},
    {"EmptySD3LatentImage", empty_sd3_latent_image},
    {"SaveLatent", save_latent},
    {"LoadLatent", load_latent},
    {NULL, NULL},
};

const kn_node_hooks kn_hooks_latent[] = {
    {"EmptyLatentImage", NULL, empty_latent_validate, NULL},
    {"EmptySD3LatentImage", NULL, empty_latent_validate, NULL},
    {0},
};
