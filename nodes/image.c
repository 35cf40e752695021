/* Image nodes: SaveImage, PreviewImage, LoadImage, ImageScale,
 * ImageScaleToTotalPixels. Thin wrappers over nodes/image_io.h; this file
 * holds ComfyUI's node rules (file naming, metadata chunks, size rules). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kernels/json.h"
#include "nodes/changed.h"
#include "nodes/image_io.h"
#include "nodes/model_store.h"
#include "nodes/node.h"

/* ---- saving ----------------------------------------------------------------------- */

/* Python's json.dumps(v) (ensure_ascii): kn_json_dumps with every non-ASCII
 * character written as \uXXXX (a surrogate pair above U+FFFF). Only strings
 * hold non-ASCII, and inside them the escape is what Python writes. */
static char *py_json_dumps(const json_t *v) {
    char *s = kn_json_dumps(v, 0);
    if (!s) return NULL;
    size_t n = strlen(s), extra = 0;
    for (size_t i = 0; i < n; i++) extra += ((unsigned char)s[i] & 0xC0) == 0x80 ? 0 : (unsigned char)s[i] >= 0x80 ? 12 : 0;
    char *out = malloc(n + extra + 1), *d = out;
    for (size_t i = 0; out && i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            *d++ = s[i++];
            continue;
        }
        int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2; /* kn_json_dumps only emits valid UTF-8 */
        uint32_t cp = c & (0xFF >> (len + 1));
        for (int k = 1; k < len && i + k < n; k++) cp = cp << 6 | ((unsigned char)s[i + k] & 0x3F);
        i += (size_t)len;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            d += sprintf(d, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            d += sprintf(d, "\\u%04x", cp);
        }
    }
    if (out) *d = 0;
    free(s);
    return out;
}

/* filename_prefix's %width%, %height% (image 0) and %year% ... %second% (local time). */
static void expand_prefix(const char *prefix, int64_t width, int64_t height, char *out, size_t cap) {
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    struct {
        const char *key;
        long long v;
        int digits;
    } subs[] = {{"%width%", width, 0},       {"%height%", height, 0},    {"%year%", tm.tm_year + 1900, 0},
                {"%month%", tm.tm_mon + 1, 2}, {"%day%", tm.tm_mday, 2},   {"%hour%", tm.tm_hour, 2},
                {"%minute%", tm.tm_min, 2},    {"%second%", tm.tm_sec, 2}};
    size_t o = 0;
    while (*prefix && o + 1 < cap) {
        size_t k = 0, nsubs = sizeof subs / sizeof subs[0];
        while (k < nsubs && strncmp(prefix, subs[k].key, strlen(subs[k].key)) != 0) k++;
        if (k == nsubs) {
            out[o++] = *prefix++;
            continue;
        }
        int w = snprintf(out + o, cap - o, "%0*lld", subs[k].digits, subs[k].v);
        o = w < 0 || (size_t)w >= cap - o ? cap - 1 : o + (size_t)w;
        prefix += strlen(subs[k].key);
    }
    out[o] = 0;
}

/* Splits a prefix as os.path.normpath + dirname/basename would, refusing
 * anything that leaves the output folder. */
static int split_prefix(kn_node_call *c, const char *prefix, char *subfolder, char *filename, size_t cap) {
    if (prefix[0] == '/') goto outside;
    char parts[64][256];
    int n = 0;
    for (const char *p = prefix; *p;) {
        size_t len = strcspn(p, "/");
        if (len >= sizeof parts[0] || n == 64)
            return kn_node_fail(c, "filename_prefix", KN_ERR_INVALID, "prefix is too long");
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (n == 0) goto outside;
            n--;
        } else if (len && !(len == 1 && p[0] == '.')) {
            memcpy(parts[n], p, len);
            parts[n++][len] = 0;
        }
        p += len;
        if (*p) p++;
    }
    if (n == 0) goto outside;
    subfolder[0] = 0;
    for (int i = 0; i < n - 1; i++) {
        size_t l = strlen(subfolder);
        snprintf(subfolder + l, cap - l, "%s%s", i ? "/" : "", parts[i]);
    }
    snprintf(filename, cap, "%s", parts[n - 1]);
    return KN_OK;
outside:
    return kn_node_fail(c, "filename_prefix", KN_ERR_INVALID, "Saving image outside the output folder is not allowed.");
}

static int mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* ComfyUI's counter: 1 + the largest N of "<filename>_N..." in the folder. */
static long next_counter(const char *dir, const char *filename) {
    long best = 0;
    size_t fl = strlen(filename);
    DIR *d = opendir(dir);
    if (!d) return 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, filename, fl) != 0 || e->d_name[fl] != '_') continue;
        char *end;
        long v = strtol(e->d_name + fl + 1, &end, 10);
        if (end == e->d_name + fl + 1 || (*end && *end != '_') || v < 0) v = 0; /* int() failed */
        if (v > best) best = v;
    }
    closedir(d);
    return best + 1;
}

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
    char expanded[1024], subfolder[1024], filename[1024], folder[4096];
    expand_prefix(prefix, im->ne[2], im->ne[1], expanded, sizeof expanded);
    if (split_prefix(c, expanded, subfolder, filename, sizeof subfolder)) return c->err->code;
    snprintf(folder, sizeof folder, "%s%s%s", dir, *subfolder ? "/" : "", subfolder);
    if (mkdirs(folder) != 0)
        return kn_node_fail(c, NULL, KN_ERR_IO, "cannot create the folder %s: %s", folder, strerror(errno));

    const json_t *extra = c->env->extra_pnginfo;
    int ntexts = 1 + (int)json_object_size(extra);
    kn_png_text *texts = calloc((size_t)ntexts, sizeof *texts);
    json_t *images = json_array();
    int rc = texts && images ? KN_OK : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int t = 0;
    if (!rc) texts[t++] = (kn_png_text){"prompt", py_json_dumps(c->env->prompt)};
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)extra, k, v) if (!rc) texts[t++] = (kn_png_text){k, py_json_dumps(v)};
    for (int i = 0; !rc && i < t; i++)
        if (!texts[i].value) rc = kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");

    long counter = rc ? 0 : next_counter(folder, filename);
    for (int64_t b = 0; !rc && b < im->ne[0]; b++, counter++) {
        char name[1100], file[4096 + 1200];
        batch_name(filename, b, name, sizeof name);
        char base[1200];
        snprintf(base, sizeof base, "%s_%05ld_.png", name, counter);
        snprintf(file, sizeof file, "%s/%s", folder, base);
        if (kn_png_write(file, im, b, texts, t, level, c->err)) rc = kn_node_fail(c, "images", c->err->code, "%s", c->err->msg);
        if (!rc && json_array_append_new(images, json_pack("{s:s, s:s, s:s}", "filename", base, "subfolder", subfolder,
                                                           "type", type)))
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

/* common_upscale of the input image to width x height (0 x 0: unchanged). */
static int scale_to(kn_node_call *c, kn_object *image, const char *method_name, const char *crop_name, int64_t width,
                    int64_t height) {
    if (width == 0 && height == 0) {
        kn_out_object(c, 0, kn_object_retain(image));
        return KN_OK;
    }
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
    return scale_to(c, image, method, crop, width, height);
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
    return scale_to(c, image, method, "disabled", width, height);
}

const kn_node_def kn_nodes_image[] = {
    {"SaveImage", save_image},
    {"PreviewImage", preview_image},
    {"LoadImage", load_image},
    {"ImageScale", image_scale},
    {"ImageScaleToTotalPixels", image_scale_to_total_pixels},
    {NULL, NULL},
};

/* An upload overwritten with other pixels re-runs LoadImage (nodes/changed.h). */
const kn_node_hooks kn_hooks_image[] = {
    {"LoadImage", kn_changed_file_hashes, NULL},
    {0},
};
