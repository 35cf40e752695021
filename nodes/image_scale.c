/* kn image scaling: ComfyUI's common_upscale and the ImageScale size rules.
 * See image_scale.h for the contract.
 *
 * Where this departs from ComfyUI (PIL + torch):
 *  - Lanczos on images with C other than 3 and 4 treats every channel alike;
 *    PIL would refuse most such arrays (RGBA is premultiplied as PIL does).
 *  - Bilinear, bicubic and area are kn_resample (kernels/ops_image.h):
 *    torch's index and weight formulas in float; sums may associate
 *    differently from torch's vectorised kernels (differences of a few ulp).
 */
#include "nodes/image_scale.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kn_method_names[] = {"nearest-exact", "bilinear", "area", "bicubic", "lanczos"};
static const char *const kn_crop_names[] = {"disabled", "center"};

/* One lookup for both option lists, so their error messages agree. */
static int kn_parse_option(const char *name, const char *const *names, int n, const char *what, int *out,
                           kn_err *err) {
    for (int i = 0; i < n; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = i;
            return KN_OK;
        }
    char list[128] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s'%s'", i ? ", " : "", names[i]);
    return kn_fail(err, KN_ERR_INVALID, "%s '%s' is not one of %s", what, name ? name : "(null)", list);
}

int kn_upscale_method_parse(const char *name, kn_upscale_method *out, kn_err *err) {
    int v = 0;
    if (kn_parse_option(name, kn_method_names, 5, "upscale_method", &v, err)) return err->code;
    *out = (kn_upscale_method)v;
    return KN_OK;
}

int kn_upscale_crop_parse(const char *name, kn_upscale_crop *out, kn_err *err) {
    int v = 0;
    if (kn_parse_option(name, kn_crop_names, 2, "crop", &v, err)) return err->code;
    *out = (kn_upscale_crop)v;
    return KN_OK;
}

/* Python's round() on a double: half to even, as rint does in the default
 * rounding mode. */
static int64_t kn_py_round(double x) { return (int64_t)rint(x); }

void kn_image_scale_dims(int64_t in_w, int64_t in_h, int64_t *width, int64_t *height) {
    if (*width == 0 && *height == 0) return;
    if (*width == 0) {
        int64_t w = kn_py_round((double)(in_w * *height) / (double)in_h);
        *width = w > 1 ? w : 1;
    } else if (*height == 0) {
        int64_t h = kn_py_round((double)(in_h * *width) / (double)in_w);
        *height = h > 1 ? h : 1;
    }
}

int kn_image_total_pixels_dims(int64_t in_w, int64_t in_h, double megapixels, int64_t steps, int64_t *width,
                               int64_t *height, kn_err *err) {
    if (in_w < 1 || in_h < 1 || !(megapixels > 0) || steps < 1)
        return kn_fail(err, KN_ERR_INVALID, "ImageScaleToTotalPixels: bad arguments (%lldx%lld, %g MP, steps %lld)",
                       (long long)in_w, (long long)in_h, megapixels, (long long)steps);
    double k = sqrt(megapixels * 1024 * 1024 / (double)(in_w * in_h));
    *width = kn_py_round((double)in_w * k / (double)steps) * steps;
    *height = kn_py_round((double)in_h * k / (double)steps) * steps;
    if (*width < 1 || *height < 1)
        return kn_fail(err, KN_ERR_INVALID,
                       "ImageScaleToTotalPixels: %lldx%lld at %g MP in steps of %lld gives an empty %lldx%lld image",
                       (long long)in_w, (long long)in_h, megapixels, (long long)steps, (long long)*width,
                       (long long)*height);
    return KN_OK;
}

/* ---- PIL's LANCZOS (libImaging/Resample.c, 8 bits per channel) ----------- */

#define KN_PIL_PRECISION_BITS (32 - 8 - 2)

static double kn_sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double kn_lanczos3(double x) { return -3.0 <= x && x < 3.0 ? kn_sinc(x) * kn_sinc(x / 3.0) : 0.0; }

/* precompute_coeffs + normalize_coeffs_8bpc: per output index the first
 * source index, the tap count and fixed-point weights. */
typedef struct kn_pil_coeffs {
    int64_t ksize;
    int64_t *bounds; /* [out * 2]: xmin, count */
    int32_t *kk;     /* [out * ksize] */
} kn_pil_coeffs;

static int kn_pil_coeffs_build(kn_pil_coeffs *c, int64_t in, int64_t out, kn_err *err) {
    double scale = (double)in / (double)out, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * filterscale;
    /* PIL sizes rows as 2 * ceil(support) + 1, but no output uses more than
     * `in` taps; the cap keeps huge reductions from allocating unused rows. */
    int64_t ksize = (int64_t)ceil(support) * 2 + 1;
    if (ksize > in) ksize = in;
    c->ksize = ksize;
    size_t nk;
    double *k = NULL;
    c->bounds = malloc((size_t)out * 2 * sizeof *c->bounds);
    if (kn_mul_size((size_t)out, (size_t)ksize, &nk) || !c->bounds || !(k = malloc(ksize * sizeof *k)) ||
        !(c->kk = calloc(nk, sizeof *c->kk))) {
        free(k);
        return kn_fail(err, KN_ERR_NOMEM, "lanczos: out of memory for %lldx%lld coefficients", (long long)out,
                       (long long)ksize);
    }
    for (int64_t xx = 0; xx < out; xx++) {
        double center = ((double)xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int64_t xmin = (int64_t)(center - support + 0.5), xmax = (int64_t)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        xmax -= xmin;
        for (int64_t x = 0; x < xmax; x++) {
            k[x] = kn_lanczos3(((double)(x + xmin) - center + 0.5) * ss);
            ww += k[x];
        }
        int32_t *kk = c->kk + xx * ksize;
        for (int64_t x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? k[x] / ww : k[x];
            kk[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << KN_PIL_PRECISION_BITS) : 0.5 + v * (1 << KN_PIL_PRECISION_BITS));
        }
        c->bounds[xx * 2] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    free(k);
    return KN_OK;
}

static void kn_pil_coeffs_free(kn_pil_coeffs *c) {
    free(c->bounds);
    free(c->kk);
}

static uint8_t kn_pil_clip8(int64_t v) {
    if (v >= (int64_t)1 << KN_PIL_PRECISION_BITS << 8) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> KN_PIL_PRECISION_BITS);
}

/* One fixed-point tap sum: `n` samples `stride` apart. PIL accumulates in
 * int32 where the sum provably fits; int64 gives the same values. */
static uint8_t kn_pil_tap(const uint8_t *src, int64_t stride, const int32_t *k, int64_t n) {
    int64_t ss = (int64_t)1 << (KN_PIL_PRECISION_BITS - 1);
    for (int64_t i = 0; i < n; i++) ss += (int64_t)src[i * stride] * k[i];
    return kn_pil_clip8(ss);
}

/* Resize one quantised plane as ImagingResampleInner: a horizontal pass over
 * just the rows the vertical pass reads, rounded to 8 bits, then the
 * vertical pass. `tmp` holds in_h x out_w bytes. */
static void kn_pil_resample(const uint8_t *in, int64_t ih, int64_t iw, uint8_t *out, int64_t oh, int64_t ow,
                            uint8_t *tmp, const kn_pil_coeffs *cy, const kn_pil_coeffs *cx) {
    int64_t y_first = cy->bounds[0], y_last = cy->bounds[oh * 2 - 2] + cy->bounds[oh * 2 - 1];
    const uint8_t *rows = in; /* row y of the vertical pass's input is rows[(y - row0) * rw] */
    int64_t row0 = 0, rw = iw;
    if (ow != iw) {
        for (int64_t y = y_first; y < y_last; y++)
            for (int64_t xx = 0; xx < ow; xx++)
                tmp[(y - y_first) * ow + xx] = kn_pil_tap(in + y * iw + cx->bounds[xx * 2], 1, cx->kk + xx * cx->ksize,
                                                          cx->bounds[xx * 2 + 1]);
        rows = tmp;
        row0 = y_first;
        rw = ow;
    }
    if (oh != ih) {
        for (int64_t yy = 0; yy < oh; yy++)
            for (int64_t xx = 0; xx < ow; xx++)
                out[yy * ow + xx] = kn_pil_tap(rows + (cy->bounds[yy * 2] - row0) * rw + xx, rw,
                                               cy->kk + yy * cy->ksize, cy->bounds[yy * 2 + 1]);
    } else {
        for (int64_t y = 0; y < oh; y++) memcpy(out + y * ow, rows + (y - row0) * rw, (size_t)ow);
    }
}

/* Pillow's MULDIV255: a * b / 255, rounded as its RGBA -> RGBa conversion does. */
static uint8_t kn_muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

/* Pillow resizes RGBA with premultiplied alpha (RGBA -> RGBa, resize, back):
 * planes [4][n] in place, to = 1 premultiplies, 0 divides back (alpha 0 and
 * 255 leave the colour as it is). */
static void kn_pil_premultiply(uint8_t *planes, size_t n, int to) {
    const uint8_t *alpha = planes + 3 * n;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            uint8_t *v = planes + c * n + i;
            unsigned a = alpha[i], q = a ? 255u * *v / a : 0;
            if (to) *v = kn_muldiv255(*v, a);
            else if (a != 0 && a != 255) *v = (uint8_t)(q > 255 ? 255 : q);
        }
}

/* comfy.utils.lanczos on each image of the [N, C, H, W] views: every channel
 * to uint8 (truncating), PIL resize (RGBA premultiplied, as Image.resize
 * does unless the size is unchanged), / 255. */
static int kn_resample_lanczos(const kn_tensor *src, const kn_tensor *dst, kn_err *err) {
    int64_t C = src->ne[1], ih = src->ne[2], iw = src->ne[3], oh = dst->ne[2], ow = dst->ne[3];
    int premultiplied = C == 4 && (ih != oh || iw != ow);
    kn_pil_coeffs cy = {0}, cx = {0};
    uint8_t *in = malloc((size_t)(C * ih * iw)), *tmp = malloc((size_t)(ih * ow)), *out = malloc((size_t)(C * oh * ow));
    int rc = !in || !tmp || !out ? kn_fail(err, KN_ERR_NOMEM, "lanczos: out of memory") : KN_OK;
    if (rc == KN_OK) rc = kn_pil_coeffs_build(&cy, ih, oh, err);
    if (rc == KN_OK) rc = kn_pil_coeffs_build(&cx, iw, ow, err);
    for (int64_t n = 0; rc == KN_OK && n < src->ne[0]; n++) {
        for (int64_t c = 0; c < C; c++) {
            const float *sp = (const float *)src->data + n * src->st[0] + c * src->st[1];
            for (int64_t y = 0; y < ih; y++)
                for (int64_t x = 0; x < iw; x++)
                    in[(c * ih + y) * iw + x] = kn_image_quantise(sp[y * src->st[2] + x * src->st[3]]);
        }
        if (premultiplied) kn_pil_premultiply(in, (size_t)(ih * iw), 1);
        for (int64_t c = 0; c < C; c++)
            kn_pil_resample(in + c * ih * iw, ih, iw, out + c * oh * ow, oh, ow, tmp, &cy, &cx);
        if (premultiplied) kn_pil_premultiply(out, (size_t)(oh * ow), 0);
        for (int64_t c = 0; c < C; c++) {
            float *dp = (float *)dst->data + n * dst->st[0] + c * dst->st[1];
            for (int64_t y = 0; y < oh; y++)
                for (int64_t x = 0; x < ow; x++)
                    dp[y * dst->st[2] + x * dst->st[3]] = (float)out[(c * oh + y) * ow + x] / 255.0f;
        }
    }
    kn_pil_coeffs_free(&cy);
    kn_pil_coeffs_free(&cx);
    free(in);
    free(tmp);
    free(out);
    return rc;
}

/* ---- common_upscale -------------------------------------------------------- */

/* t [B, H, W, C] (channels_last) or [B, C, H, W] as an [B, C, h, w] view of
 * rows y0.. and columns x0.. */
static int kn_nchw_view(kn_tensor *v, const kn_tensor *t, int channels_last, int64_t y0, int64_t x0, int64_t h,
                        int64_t w, kn_err *err) {
    int64_t b = t->ne[0], c = channels_last ? t->ne[3] : t->ne[1];
    int64_t H = channels_last ? t->ne[1] : t->ne[2], W = channels_last ? t->ne[2] : t->ne[3];
    int64_t sy = channels_last ? W * c : W, sx = channels_last ? c : 1, sc = channels_last ? 1 : H * W;
    return kn_tensor_view(v, t, 4, (int64_t[]){b, c, h, w}, (int64_t[]){H * W * c, sc, sy, sx}, y0 * sy + x0 * sx, err);
}

static int kn_upscale(kn_tensor *out, const kn_tensor *x, int channels_last, int64_t width, int64_t height,
                      kn_upscale_method method, kn_upscale_crop crop, kn_err *err) {
    const char *what = channels_last ? "upscale: image" : "upscale: samples";
    memset(out, 0, sizeof *out);
    if (kn_image_check_f32_4d(x, what, err)) return err->code;
    if ((unsigned)method > KN_UPSCALE_LANCZOS || (unsigned)crop > KN_CROP_CENTER)
        return kn_fail(err, KN_ERR_INVALID, "upscale: bad method %d or crop %d", (int)method, (int)crop);
    if (width < 1 || height < 1 || width > KN_IMAGE_MAX_PIXELS / height)
        return kn_fail(err, KN_ERR_INVALID, "upscale: target size %lldx%lld is empty or above %lld pixels",
                       (long long)width, (long long)height, (long long)KN_IMAGE_MAX_PIXELS);
    int64_t b = x->ne[0], c = channels_last ? x->ne[3] : x->ne[1];
    int64_t h = channels_last ? x->ne[1] : x->ne[2], w = channels_last ? x->ne[2] : x->ne[3];

    int64_t x0 = 0, y0 = 0;
    if (crop == KN_CROP_CENTER) {
        double old_aspect = (double)w / (double)h, new_aspect = (double)width / (double)height;
        if (old_aspect > new_aspect)
            x0 = kn_py_round(((double)w - (double)w * (new_aspect / old_aspect)) / 2);
        else if (old_aspect < new_aspect)
            y0 = kn_py_round(((double)h - (double)h * (old_aspect / new_aspect)) / 2);
    }
    if (h - 2 * y0 < 1 || w - 2 * x0 < 1)
        return kn_fail(err, KN_ERR_INVALID, "upscale: center crop of %lldx%lld to the aspect of %lldx%lld leaves nothing",
                       (long long)w, (long long)h, (long long)width, (long long)height);
    int64_t ne[4] = {b, channels_last ? height : c, channels_last ? width : height, channels_last ? c : width};
    kn_tensor src, dst;
    if (kn_tensor_new(out, KN_F32, KN_DEV_CPU, 4, ne, err)) return err->code;
    int rc = kn_nchw_view(&src, x, channels_last, y0, x0, h - 2 * y0, w - 2 * x0, err);
    if (!rc) rc = kn_nchw_view(&dst, out, channels_last, 0, 0, height, width, err);
    if (!rc) rc = method == KN_UPSCALE_LANCZOS ? kn_resample_lanczos(&src, &dst, err)
                                               : kn_resample(&dst, &src, (kn_resample_mode)method, err);
    if (rc != KN_OK) kn_tensor_free(out);
    return rc;
}

int kn_image_upscale(kn_tensor *out, const kn_tensor *image, int64_t width, int64_t height,
                     kn_upscale_method method, kn_upscale_crop crop, kn_err *err) {
    return kn_upscale(out, image, 1, width, height, method, crop, err);
}

int kn_common_upscale(kn_tensor *out, const kn_tensor *samples, int64_t width, int64_t height,
                      kn_upscale_method method, kn_upscale_crop crop, kn_err *err) {
    return kn_upscale(out, samples, 0, width, height, method, crop, err);
}
