/* Image nodes: SaveImage, PreviewImage, LoadImage, ImageScale,
 * ImageScaleToTotalPixels, FluxKontextImageScale. Thin wrappers over
 * nodes/image_io.h; this file holds ComfyUI's node rules (%batch_num%,
 * metadata chunks, size rules; the folder and counter come from
 * nodes/save_path.h). The scaling nodes refuse an output whose scaling would
 * exceed the memory budget (nodes/model_store.h) before allocating, naming
 * the input that asks for the size; ImageScale's constant size already at
 * validation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/json.h"
#include "nodes/changed.h"
#include "nodes/image_io.h"
#include "nodes/image_scale.h"
#include "nodes/model_store.h"
#include "nodes/node.h"
#include "nodes/save_path.h"

/* ---- saving ----------------------------------------------------------------------- */

/* Replaces every %batch_num% of name with the batch index. */
static void batch_name(const char *name, int64_t b, char *out, size_t cap) {
    size_t o = 0;
    while (*name && o + 1 < cap) {
        if (strncmp(name, "%batch_num%", 11) == 0) {
            int w = snprintf(out + o, cap - o, "%lld", (long long)b);
            o = w < 0 || (size_t)w >= cap - o ? cap - 1 : o + (size_t)w;
            name += 11;
        } else {
            out[o++] = *name++;
        }
    }
    out[o] = 0;
}

/* SaveImage / PreviewImage: every image of the batch as
 * <dir>/<subfolder>/<filename>_<counter:05>_.png with the "prompt" chunk and
 * one chunk per extra_pnginfo key, listed in ui.images. */
static int save_images(kn_node_call *c, const char *prefix, const char *dir, const char *type, int level) {
    kn_object *obj;
    if (kn_in_object(c, "images", "IMAGE", &obj)) return c->err->code;
    const kn_tensor *im = &((const kn_image_obj *)obj)->t;
    kn_save_path sp;
    if (kn_save_path_get(c, dir, prefix, im->ne[2], im->ne[1], &sp)) return c->err->code;

    const json_t *extra = c->env->extra_pnginfo;
    int ntexts = 1 + (int)json_object_size(extra);
    kn_png_text *texts = calloc((size_t)ntexts, sizeof *texts);
    json_t *images = json_array();
    int rc = texts && images ? KN_OK : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int t = 0;
    if (!rc) texts[t++] = (kn_png_text){"prompt", kn_py_json_dumps(c->env->prompt)};
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)extra, k, v) if (!rc) texts[t++] = (kn_png_text){k, kn_py_json_dumps(v)};
    for (int i = 0; !rc && i < t; i++)
        if (!texts[i].value) rc = kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");

    long counter = sp.counter;
    for (int64_t b = 0; !rc && b < im->ne[0]; b++, counter++) {
        char name[1100], file[4096 + 1200];
        batch_name(sp.filename, b, name, sizeof name);
        char base[1200];
        snprintf(base, sizeof base, "%s_%05ld_.png", name, counter);
        snprintf(file, sizeof file, "%s/%s", sp.folder, base);
        if (kn_png_write(file, im, b, texts, t, level, c->err)) rc = kn_node_fail(c, "images", c->err->code, "%s", c->err->msg);
        if (!rc && json_array_append_new(images, json_pack("{s:s, s:s, s:s}", "filename", base, "subfolder",
                                                           sp.subfolder, "type", type)))
            rc = kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    }
    if (!rc) json_object_set(c->ui, "images", images);
    for (int i = 0; texts && i < t; i++) free((char *)texts[i].value);
    free(texts);
    json_decref(images);
    return rc;
}

static int save_image(kn_node_call *c) {
    const char *prefix;
    if (kn_in_string(c, "filename_prefix", &prefix)) return c->err->code;
    return save_images(c, prefix, c->env->output_dir, "output", KN_PNG_COMPRESS_SAVE);
}

/* "ComfyUI_temp_" + 5 letters from ComfyUI's alphabet (which really has no 'w'). */
static int preview_image(kn_node_call *c) {
    static const char letters[] = "abcdefghijklmnopqrstupvxyz";
    char prefix[32] = "ComfyUI_temp_";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned s = (unsigned)ts.tv_nsec ^ (unsigned)ts.tv_sec;
    for (int i = 0; i < 5; i++) {
        s = s * 1103515245u + 12345u;
        prefix[13 + i] = letters[(s >> 16) % (sizeof letters - 1)];
    }
    return save_images(c, prefix, c->env->temp_dir, "temp", KN_PNG_COMPRESS_PREVIEW);
}

/* ---- loading and scaling ------------------------------------------------------------ */

static int load_image(kn_node_call *c) {
    const char *name;
    char *path = NULL;
    if (kn_in_string(c, "image", &name)) return c->err->code;
    kn_err e;
    kn_err_clear(&e);
    if (kn_models_resolve(c->env->models, "input", name, &path, &e)) return kn_node_fail(c, "image", e.code, "%s", e.msg);
    kn_image_obj *img = kn_image_new("IMAGE"), *mask = kn_image_new("MASK");
    int rc = img && mask ? kn_image_load(path, &img->t, &mask->t, c->err)
                         : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (rc && img && mask) rc = kn_node_fail(c, "image", c->err->code, "%s", c->err->msg);
    free(path);
    if (rc) {
        if (img) kn_object_release(&img->base);
        if (mask) kn_object_release(&mask->base);
        return rc;
    }
    kn_out_object(c, 0, &img->base);
    kn_out_object(c, 1, &mask->base);
    return KN_OK;
}

/* What scaling B images of C channels from in_w x in_h to width x height keeps
 * live, at least: the output, the filter's intermediate passes and channel
 * planes (~3 outputs) and two copies of the input, f32; above the memory
 * budget it is refused on `input` (the one that asks for that size). */
static int check_scale_peak(kn_node_call *c, const char *input, int64_t B, int64_t C, int64_t in_w, int64_t in_h,
                            int64_t width, int64_t height) {
    char what[160];
    snprintf(what, sizeof what, "scaling to %lldx%lld at batch %lld", (long long)width, (long long)height,
             (long long)B);
    double out = (double)width * (double)height, in = (double)in_w * (double)in_h;
    return kn_models_check_peak(c, input, 4.0 * (double)B * (double)C * (3.0 * out + 2.0 * in), what);
}

/* common_upscale of the input image to width x height (0 x 0: unchanged);
 * size_input: the input a size above the memory budget is refused on. */
static int scale_to(kn_node_call *c, kn_object *image, const char *method_name, const char *crop_name, int64_t width,
                    int64_t height, const char *size_input) {
    if (width == 0 && height == 0) {
        kn_out_object(c, 0, kn_object_retain(image));
        return KN_OK;
    }
    const kn_tensor *t = &((const kn_image_obj *)image)->t;
    if (check_scale_peak(c, size_input, t->ne[0], t->ne[3], t->ne[2], t->ne[1], width, height)) return c->err->code;
    kn_upscale_method method;
    kn_upscale_crop crop;
    if (kn_upscale_method_parse(method_name, &method, c->err))
        return kn_node_fail(c, "upscale_method", c->err->code, "%s", c->err->msg);
    if (kn_upscale_crop_parse(crop_name, &crop, c->err)) return kn_node_fail(c, "crop", c->err->code, "%s", c->err->msg);
    kn_image_obj *out = kn_image_new("IMAGE");
    if (!out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (kn_image_upscale(&out->t, &((const kn_image_obj *)image)->t, width, height, method, crop, c->err)) {
        kn_object_release(&out->base);
        return kn_node_fail(c, "image", c->err->code, "%s", c->err->msg);
    }
    kn_out_object(c, 0, &out->base);
    return KN_OK;
}

static int image_scale(kn_node_call *c) {
    kn_object *image;
    const char *method, *crop;
    int64_t width, height;
    if (kn_in_object(c, "image", "IMAGE", &image) || kn_in_string(c, "upscale_method", &method) ||
        kn_in_int(c, "width", &width) || kn_in_int(c, "height", &height) || kn_in_string(c, "crop", &crop))
        return c->err->code;
    const kn_tensor *t = &((const kn_image_obj *)image)->t;
    kn_image_scale_dims(t->ne[2], t->ne[1], &width, &height);
    return scale_to(c, image, method, crop, width, height, width >= height ? "width" : "height");
}

/* ImageScale's validate hook: one 3-channel image of the constant width x height against the budget. */
static int image_scale_validate(kn_node_call *c) {
    int64_t width, height;
    if (kn_in_int_opt(c, "width", 0, &width) || kn_in_int_opt(c, "height", 0, &height)) return c->err->code;
    if (width <= 0 || height <= 0) return KN_OK; /* linked, or one side kept from the image: known at the run */
    return check_scale_peak(c, width >= height ? "width" : "height", 1, 3, 0, 0, width, height);
}

static int image_scale_to_total_pixels(kn_node_call *c) {
    kn_object *image;
    const char *method;
    double megapixels;
    int64_t steps, width, height;
    if (kn_in_object(c, "image", "IMAGE", &image) || kn_in_string(c, "upscale_method", &method) ||
        kn_in_float(c, "megapixels", &megapixels) || kn_in_int_opt(c, "resolution_steps", 1, &steps))
        return c->err->code;
    const kn_tensor *t = &((const kn_image_obj *)image)->t;
    if (kn_image_total_pixels_dims(t->ne[2], t->ne[1], megapixels, steps, &width, &height, c->err))
        return kn_node_fail(c, "megapixels", c->err->code, "%s", c->err->msg);
    return scale_to(c, image, method, "disabled", width, height, "megapixels");
}

/* FluxKontextImageScale (comfy_extras/nodes_flux.py): the preferred Kontext
 * size nearest the image's aspect (ties: the smallest width, as Python's min
 * over (difference, w, h)), centre-cropped to it and scaled by lanczos. */
static int flux_kontext_image_scale(kn_node_call *c) {
    static const int64_t sizes[][2] = {{672, 1568}, {688, 1504}, {720, 1456}, {752, 1392}, {800, 1328}, {832, 1248},
                                       {880, 1184}, {944, 1104}, {1024, 1024}, {1104, 944}, {1184, 880}, {1248, 832},
                                       {1328, 800}, {1392, 752}, {1456, 720}, {1504, 688}, {1568, 672}};
    kn_object *image;
    if (kn_in_object(c, "image", "IMAGE", &image)) return c->err->code;
    const kn_tensor *t = &((const kn_image_obj *)image)->t;
    double aspect = (double)t->ne[2] / (double)t->ne[1], best = INFINITY;
    size_t pick = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        double d = fabs(aspect - (double)sizes[i][0] / (double)sizes[i][1]);
        if (d < best) {
            best = d;
            pick = i;
        }
    }
    return scale_to(c, image, "lanczos", "center", sizes[pick][0], sizes[pick][1], "image");
}

const kn_node_def kn_nodes_image[] = {
    {"SaveImage", save_image},
    {"PreviewImage", preview_image},
    {"LoadImage", load_image},
    {"ImageScale", image_scale},
    {"ImageScaleToTotalPixels", image_scale_to_total_pixels},
    {"FluxKontextImageScale", flux_kontext_image_scale},
    {NULL, NULL},
};

/* An upload overwritten with other pixels re-runs LoadImage (nodes/changed.h). */
const kn_node_hooks kn_hooks_image[] = {
    {"LoadImage", kn_changed_file_hashes, NULL, NULL},
    {"ImageScale", NULL, image_scale_validate, NULL},
    {0},
};
