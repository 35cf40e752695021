/* Tests for nodes/image_io.h: PNG round trips with tEXt chunks, loading every
 * PNG flavour (generated here with libpng), hostile files, and the scaling
 * methods against values worked out by hand from torch's and PIL's formulas. */
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nodes/image_io.h"
#include "nodes/image_scale.h"
#include "check.h"
#include "lanczos_golden.h"

static char tmpdir[512];

static const char *tmp_path(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* ---- PNG generation ------------------------------------------------------ */

typedef struct membuf {
    uint8_t *p;
    size_t n, cap;
} membuf;

static void mem_write(png_structp png, png_bytep d, size_t n) {
    membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}

static void mem_flush(png_structp png) { (void)png; }

typedef struct png_spec {
    int w, h, type, depth, interlace;
    const uint8_t *rows; /* packed rows as stored in the file */
    const png_color *palette;
    int npalette;
    const uint8_t *trns;
    int ntrns;
    const uint8_t *exif;
    int nexif;
} png_spec;

/* Encodes spec with libpng; returns the file bytes (free them) or NULL. */
static uint8_t *make_png(const png_spec *s, size_t *len) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(m.p);
        return NULL;
    }
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, s->w, s->h, s->depth, s->type, s->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (s->palette) png_set_PLTE(png, info, s->palette, s->npalette);
    if (s->trns) png_set_tRNS(png, info, s->trns, s->ntrns, NULL);
    if (s->exif) png_set_eXIf_1(png, info, s->nexif, (png_bytep)s->exif);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    png_bytep *rows = malloc(sizeof *rows * s->h);
    for (int y = 0; y < s->h; y++) rows[y] = (png_bytep)s->rows + y * rowbytes;
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *len = m.n;
    return m.p;
}

static float px(const kn_tensor *t, int64_t b, int64_t y, int64_t x, int64_t c) {
    return ((const float *)t->data)[((b * t->ne[1] + y) * t->ne[2] + x) * t->ne[3] + c];
}

static float mk(const kn_tensor *t, int64_t b, int64_t y, int64_t x) {
    return ((const float *)t->data)[(b * t->ne[1] + y) * t->ne[2] + x];
}

/* Loads spec from memory and checks shape, pixels (8-bit expectations
 * `rgb`, 3 per pixel) and mask (`alpha` per pixel, NULL = no alpha). */
static void check_load(const char *what, const png_spec *s, int ow, int oh, const uint8_t *rgb,
                       const uint8_t *alpha) {
    size_t len;
    uint8_t *file = make_png(s, &len);
    CHECK(file != NULL, "%s: test PNG not encoded", what);
    if (!file) return;
    kn_tensor img, mask;
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_image_load_mem(file, len, what, &img, &mask, &err);
    CHECK(rc == KN_OK, "%s: %s", what, err.msg);
    if (rc == KN_OK) {
        CHECK(img.ndim == 4 && img.ne[0] == 1 && img.ne[1] == oh && img.ne[2] == ow && img.ne[3] == 3,
              "%s: image shape", what);
        CHECK(mask.ndim == 3 && mask.ne[0] == 1 && mask.ne[1] == oh && mask.ne[2] == ow, "%s: mask shape", what);
        int bad = 0;
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                for (int c = 0; c < 3; c++)
                    if (px(&img, 0, y, x, c) != (float)rgb[(y * ow + x) * 3 + c] / 255.0f) bad++;
                float m = alpha ? 1.0f - (float)alpha[y * ow + x] / 255.0f : 0.0f;
                if (mk(&mask, 0, y, x) != m) bad++;
            }
        CHECK(bad == 0, "%s: %d wrong values", what, bad);
    }
    kn_tensor_free(&img);
    kn_tensor_free(&mask);
    free(file);
}

/* ---- PNG write / text round trip ------------------------------------------ */

static void test_roundtrip(void) {
    const int64_t ne[4] = {2, 3, 5, 3};
    kn_tensor t;
    kn_err err;
    kn_err_clear(&err);
    CHECK(kn_tensor_new(&t, KN_F32, KN_DEV_CPU, 4, ne, &err) == KN_OK, "%s", err.msg);
    float *d = t.data;
    for (int64_t i = 0; i < kn_tensor_numel(&t); i++) d[i] = (float)((i * 37) % 101) / 100.0f;
    /* ComfyUI's quantisation: clip then truncate; NaN -> 0. */
    float special[] = {-0.5f, 1.5f, 0.999f, 0.5f, NAN, 1.0f / 255.0f};
    uint8_t special_u8[] = {0, 255, 254, 127, 0, 1};
    int64_t base = 1 * 3 * 5 * 3; /* image 1 */
    memcpy(d + base, special, sizeof special);

    const kn_png_text texts[] = {{"prompt", "{\"3\": {\"class_type\": \"KSampler\"}}"},
                                 {"workflow", "{\"nodes\": [], \"links\": []}"}};
    const char *path = tmp_path("image_io_roundtrip.png");
    int rc = kn_png_write(path, &t, 1, texts, 2, KN_PNG_COMPRESS_SAVE, &err);
    CHECK(rc == KN_OK, "write: %s", err.msg);

    kn_png_text *rt = NULL;
    int n = 0;
    rc = kn_png_read_text(path, &rt, &n, &err);
    CHECK(rc == KN_OK && n == 2, "read text: rc %d n %d %s", rc, n, err.msg);
    if (rc == KN_OK && n == 2) {
        CHECK(strcmp(rt[0].key, "prompt") == 0 && strcmp(rt[0].value, texts[0].value) == 0, "prompt chunk");
        CHECK(strcmp(rt[1].key, "workflow") == 0 && strcmp(rt[1].value, texts[1].value) == 0, "workflow chunk");
        CHECK(kn_png_text_get(rt, n, "workflow") == rt[1].value, "text_get");
        CHECK(kn_png_text_get(rt, n, "missing") == NULL, "text_get missing");
    }
    free(rt);

    kn_tensor img, mask;
    rc = kn_image_load(path, &img, &mask, &err);
    CHECK(rc == KN_OK, "load: %s", err.msg);
    if (rc == KN_OK) {
        CHECK(img.ne[0] == 1 && img.ne[1] == 3 && img.ne[2] == 5 && img.ne[3] == 3, "round trip shape");
        int bad = 0;
        for (int64_t i = 0; i < 45; i++) {
            float src = d[base + i];
            uint8_t q = i < 6 ? special_u8[i] : (uint8_t)(255.0f * src);
            if (((float *)img.data)[i] != (float)q / 255.0f) bad++;
        }
        CHECK(bad == 0, "round trip: %d pixels differ", bad);
        CHECK(mask.ne[1] == 3 && mask.ne[2] == 5 && ((float *)mask.data)[0] == 0.0f, "no alpha: zero mask");
    }
    kn_tensor_free(&img);
    kn_tensor_free(&mask);

    /* A PNG without text chunks. */
    uint8_t *buf;
    size_t len;
    CHECK(kn_png_encode(&t, 0, NULL, 0, KN_PNG_COMPRESS_PREVIEW, &buf, &len, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_png_read_text_mem(buf, len, "plain", &rt, &n, &err) == KN_OK && n == 0 && rt == NULL, "no text");
    free(buf);

    /* Bad arguments are refused with a message. */
    CHECK(kn_png_encode(&t, 2, NULL, 0, 4, &buf, &len, &err) == KN_ERR_INVALID, "index out of range");
    const kn_png_text badkey[] = {{"", "x"}};
    CHECK(kn_png_encode(&t, 0, badkey, 1, 4, &buf, &len, &err) == KN_ERR_INVALID, "empty key");
    CHECK(kn_png_write("/nonexistent-dir/x.png", &t, 0, NULL, 0, 4, &err) == KN_ERR_IO &&
              strstr(err.msg, "/nonexistent-dir/x.png"),
          "unwritable path: %s", err.msg);
    kn_tensor_free(&t);
}

/* ---- Loading PNG flavours -------------------------------------------------- */

static void test_load_variants(void) {
    /* 8-bit gray 3x2: replicated to RGB, zero mask. */
    const uint8_t g8[] = {0, 100, 255, 7, 8, 9};
    uint8_t g8_rgb[18];
    for (int i = 0; i < 6; i++) g8_rgb[3 * i] = g8_rgb[3 * i + 1] = g8_rgb[3 * i + 2] = g8[i];
    check_load("gray8", &(png_spec){.w = 3, .h = 2, .type = PNG_COLOR_TYPE_GRAY, .depth = 8, .rows = g8}, 3, 2, g8_rgb, NULL);

    /* The same, Adam7-interlaced. */
    check_load("gray8-interlaced", &(png_spec){.w = 3, .h = 2, .type = PNG_COLOR_TYPE_GRAY, .depth = 8, .interlace = PNG_INTERLACE_ADAM7, .rows = g8}, 3, 2, g8_rgb,
               NULL);

    /* 1-bit gray 3x1 (bits 1 0 1): 255, 0, 255. */
    const uint8_t g1[] = {0xa0};
    const uint8_t g1_rgb[] = {255, 255, 255, 0, 0, 0, 255, 255, 255};
    check_load("gray1", &(png_spec){.w = 3, .h = 1, .type = PNG_COLOR_TYPE_GRAY, .depth = 1, .rows = g1}, 3, 1, g1_rgb, NULL);

    /* 16-bit gray: LoadImage's mode "I" rule, min(255, trunc(v * (1/255))). */
    const uint8_t g16[] = {0x00, 0xff, 0x01, 0x00, 0x80, 0x00, 0xff, 0xff}; /* 255, 256, 32768, 65535 */
    const uint8_t g16_v[] = {1, 1, 128, 255}; /* 32768 / 255 = 128.5, 65535 / 255 = 257 */
    uint8_t g16_rgb[12];
    for (int i = 0; i < 4; i++) g16_rgb[3 * i] = g16_rgb[3 * i + 1] = g16_rgb[3 * i + 2] = g16_v[i];
    check_load("gray16", &(png_spec){.w = 4, .h = 1, .type = PNG_COLOR_TYPE_GRAY, .depth = 16, .rows = g16}, 4, 1, g16_rgb, NULL);

    /* 16-bit RGB: high bytes, as PIL's "RGB;16B". */
    const uint8_t rgb16[] = {0x12, 0xff, 0x34, 0x00, 0xfe, 0x80, 0x00, 0x01, 0xff, 0xff, 0x7f, 0x7f};
    const uint8_t rgb16_v[] = {0x12, 0x34, 0xfe, 0x00, 0xff, 0x7f};
    check_load("rgb16", &(png_spec){.w = 2, .h = 1, .type = PNG_COLOR_TYPE_RGB, .depth = 16, .rows = rgb16}, 2, 1, rgb16_v, NULL);

    /* 16-bit RGBA: high bytes and mask = 1 - alpha. */
    const uint8_t rgba16[] = {0x10, 0x00, 0x20, 0x00, 0x30, 0x00, 0x40, 0xff};
    const uint8_t rgba16_v[] = {0x10, 0x20, 0x30}, rgba16_a[] = {0x40};
    check_load("rgba16", &(png_spec){.w = 1, .h = 1, .type = PNG_COLOR_TYPE_RGBA, .depth = 16, .rows = rgba16}, 1, 1, rgba16_v, rgba16_a);

    /* Gray + alpha 8-bit. */
    const uint8_t ga[] = {10, 0, 20, 128, 30, 255};
    const uint8_t ga_rgb[] = {10, 10, 10, 20, 20, 20, 30, 30, 30}, ga_a[] = {0, 128, 255};
    check_load("gray-alpha", &(png_spec){.w = 3, .h = 1, .type = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 8, .rows = ga}, 3, 1, ga_rgb, ga_a);

    /* Palette with transparency: colours, and a mask from tRNS (entries past
     * the tRNS list are opaque). */
    const png_color pal[] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    const uint8_t trns[] = {0, 200};
    const uint8_t pidx[] = {0, 1, 2, 1};
    const uint8_t p_rgb[] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 255, 0}, p_a[] = {0, 200, 255, 200};
    check_load("palette-trns", &(png_spec){.w = 2, .h = 2, .type = PNG_COLOR_TYPE_PALETTE, .depth = 8, .rows = pidx, .palette = pal, .npalette = 3, .trns = trns, .ntrns = 2}, 2, 2, p_rgb,
               p_a);
    /* 4-bit palette, no transparency: zero mask. */
    const uint8_t p4[] = {0x01, 0x20};
    const uint8_t p4_rgb[] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 0, 0};
    check_load("palette4", &(png_spec){.w = 2, .h = 2, .type = PNG_COLOR_TYPE_PALETTE, .depth = 4, .rows = p4, .palette = pal, .npalette = 3}, 2, 2, p4_rgb, NULL);

    /* tRNS on an RGB image is not an alpha band in PIL: zero mask. */
    const uint8_t rgb8[] = {1, 2, 3, 4, 5, 6};
    const uint8_t rgb_trns[] = {0, 1, 0, 2, 0, 3};
    check_load("rgb-trns", &(png_spec){.w = 2, .h = 1, .type = PNG_COLOR_TYPE_RGB, .depth = 8, .rows = rgb8, .palette = NULL, .npalette = 0, .trns = rgb_trns, .ntrns = 1}, 2, 1, rgb8,
               NULL);

    /* EXIF orientation 6 (rotate 90 degrees clockwise): a 3x2 image becomes
     * 2x3; output (x, y) reads input (y, H - 1 - x). */
    const uint8_t exif6[] = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t o_in[] = {1, 2, 3, 4, 5, 6}; /* gray, rows {1 2 3}, {4 5 6} */
    const uint8_t o_out[] = {4, 1, 5, 2, 6, 3}; /* rows {4 1}, {5 2}, {6 3} */
    uint8_t o_rgb[18];
    for (int i = 0; i < 6; i++) o_rgb[3 * i] = o_rgb[3 * i + 1] = o_rgb[3 * i + 2] = o_out[i];
    check_load("exif-rotate",
               &(png_spec){.w = 3, .h = 2, .type = PNG_COLOR_TYPE_GRAY, .depth = 8, .rows = o_in, .palette = NULL, .npalette = 0, .trns = NULL, .ntrns = 0, .exif = exif6, .nexif = (int)sizeof exif6}, 2, 3,
               o_rgb, NULL);
}

/* ---- Hostile input ----------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Loading must fail with `code`, a message naming the buffer, and empty
 * tensors. */
static void expect_load_error(const char *what, const void *data, size_t len, int code) {
    kn_tensor img, mask;
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_image_load_mem(data, len, what, &img, &mask, &err);
    CHECK(rc == code, "%s: rc %d (%s), want %d", what, rc, err.msg, code);
    CHECK(strstr(err.msg, what) != NULL, "%s: message does not name the input: %s", what, err.msg);
    CHECK(img.data == NULL && mask.data == NULL, "%s: tensors left allocated", what);
    kn_tensor_free(&img);
    kn_tensor_free(&mask);
}

static void test_hostile(void) {
    uint8_t rows[16 * 16 * 3];
    for (size_t i = 0; i < sizeof rows; i++) rows[i] = (uint8_t)(i * 7);
    size_t len;
    uint8_t *good = make_png(&(png_spec){.w = 16, .h = 16, .type = PNG_COLOR_TYPE_RGB, .depth = 8, .rows = rows}, &len);

    expect_load_error("truncated.png", good, len / 2, KN_ERR_FORMAT);
    expect_load_error("signature-only.png", good, 8, KN_ERR_FORMAT);

    /* IHDR is bytes 8..32: length, type, 13 bytes of data, CRC. */
    uint8_t *bad = malloc(len);
    memcpy(bad, good, len);
    bad[29] ^= 0x55; /* CRC of IHDR */
    expect_load_error("bad-crc.png", bad, len, KN_ERR_FORMAT);

    /* A header claiming 100000 x 100000 pixels, with a valid CRC. */
    memcpy(bad, good, len);
    put_be32(bad + 16, 100000);
    put_be32(bad + 20, 100000);
    put_be32(bad + 29, (uint32_t)crc32(0, bad + 12, 17));
    expect_load_error("huge.png", bad, len, KN_ERR_FORMAT);

    memcpy(bad, good, len);
    put_be32(bad + 16, 0);
    put_be32(bad + 29, (uint32_t)crc32(0, bad + 12, 17));
    expect_load_error("zero-width.png", bad, len, KN_ERR_FORMAT);

    /* The text reader walks the same file: truncation and CRC errors too. */
    kn_png_text *t;
    int n;
    kn_err err;
    CHECK(kn_png_read_text_mem(good, len / 2, "cut.png", &t, &n, &err) == KN_ERR_FORMAT && strstr(err.msg, "cut.png"),
          "text of truncated PNG: %s", err.msg);
    memcpy(bad, good, len);
    bad[29] ^= 1;
    CHECK(kn_png_read_text_mem(bad, len, "crc.png", &t, &n, &err) == KN_ERR_FORMAT && strstr(err.msg, "CRC"),
          "text with bad CRC: %s", err.msg);
    free(bad);
    free(good);

    uint8_t garbage[256];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (uint8_t)(i * 131 + 17);
    expect_load_error("garbage.bin", garbage, sizeof garbage, KN_ERR_UNSUPPORTED);
    expect_load_error("empty.png", "", 0, KN_ERR_FORMAT);
    /* A JPEG that stops after its SOI marker. */
    const uint8_t jpeg_head[] = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0};
    expect_load_error("short.jpg", jpeg_head, sizeof jpeg_head, KN_ERR_FORMAT);
    /* A GIF header claiming 65535 x 65535. */
    const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0x2c, 0, 0, 0, 0, 0xff, 0xff,
                           0xff, 0xff, 0, 2, 2, 0x4c, 0x01, 0, 0x3b};
    expect_load_error("huge.gif", gif, sizeof gif, KN_ERR_FORMAT);

    kn_tensor img, mask;
    CHECK(kn_image_load(tmp_path("does-not-exist.png"), &img, &mask, &err) == KN_ERR_IO &&
              strstr(err.msg, "does-not-exist.png"),
          "missing file: %s", err.msg);
}

/* ---- Scaling ------------------------------------------------------------------ */

/* A one-channel IMAGE [1, h, w, 1] from values. */
static kn_tensor make_image(int64_t h, int64_t w, const float *v) {
    const int64_t ne[4] = {1, h, w, 1};
    kn_tensor t;
    kn_err err;
    if (kn_tensor_new(&t, KN_F32, KN_DEV_CPU, 4, ne, &err) != KN_OK) return t;
    memcpy(t.data, v, (size_t)(h * w) * sizeof(float));
    return t;
}

static void check_scale(const char *what, int64_t h, int64_t w, const float *in, int64_t oh, int64_t ow,
                        kn_upscale_method m, kn_upscale_crop crop, const float *want, float tol) {
    kn_tensor x = make_image(h, w, in), y;
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_image_upscale(&y, &x, ow, oh, m, crop, &err);
    CHECK(rc == KN_OK, "%s: %s", what, err.msg);
    if (rc == KN_OK) {
        CHECK(y.ne[0] == 1 && y.ne[1] == oh && y.ne[2] == ow && y.ne[3] == 1, "%s: shape", what);
        for (int64_t i = 0; i < oh * ow; i++) {
            float got = ((float *)y.data)[i];
            CHECK(fabsf(got - want[i]) <= tol, "%s: [%lld] = %.9g, want %.9g", what, (long long)i, got, want[i]);
        }
    }
    kn_tensor_free(&x);
    kn_tensor_free(&y);
}

static void test_scaling(void) {
    /* torch: F.interpolate([[0, 1], [2, 3]], size=(4, 4), mode="bilinear"). */
    const float b_in[] = {0, 1, 2, 3};
    const float b_out[] = {0, .25f, .75f, 1, .5f, .75f, 1.25f, 1.5f, 1.5f, 1.75f, 2.25f, 2.5f, 2, 2.25f, 2.75f, 3};
    check_scale("bilinear 2x2->4x4", 2, 2, b_in, 4, 4, KN_UPSCALE_BILINEAR, KN_CROP_DISABLED, b_out, 0);

    /* nearest-exact: src = min(floor((o + 0.5) * in / out), in - 1).
     * 3 -> 5: 0 0 1 2 2; 5 -> 2: 1 3. */
    const float n_in[] = {10, 20, 30};
    const float n_out[] = {10, 10, 20, 30, 30};
    check_scale("nearest-exact 3->5", 1, 3, n_in, 1, 5, KN_UPSCALE_NEAREST_EXACT, KN_CROP_DISABLED, n_out, 0);
    const float n5[] = {0, 1, 2, 3, 4}, n2[] = {1, 3};
    check_scale("nearest-exact 5->2", 1, 5, n5, 1, 2, KN_UPSCALE_NEAREST_EXACT, KN_CROP_DISABLED, n2, 0);

    /* area = adaptive average pooling: 4 -> 2 averages pairs; 3 -> 2 uses the
     * overlapping windows [0, 2) and [1, 3). */
    const float a4[] = {1, 3, 5, 9}, a4o[] = {2, 7};
    check_scale("area 4->2", 1, 4, a4, 1, 2, KN_UPSCALE_AREA, KN_CROP_DISABLED, a4o, 0);
    const float a3[] = {1, 2, 6}, a3o[] = {1.5f, 4};
    check_scale("area 3->2", 3, 1, a3, 2, 1, KN_UPSCALE_AREA, KN_CROP_DISABLED, a3o, 0);
    const float a22[] = {1, 2, 3, 4}, a11[] = {2.5f};
    check_scale("area 2x2->1x1", 2, 2, a22, 1, 1, KN_UPSCALE_AREA, KN_CROP_DISABLED, a11, 0);

    /* bicubic (A = -0.75, align_corners=False) 1x2 -> 1x4 on [0, 1]:
     * position -0.25 has weights (-0.03515625, 0.26171875, 0.87890625,
     * -0.10546875) on clamped taps (0, 0, 0, 1) -> -0.10546875; position 0.25
     * -> 0.2265625; the rest by symmetry. */
    const float c_in[] = {0, 1};
    const float c_out[] = {-0.10546875f, 0.2265625f, 0.7734375f, 1.10546875f};
    check_scale("bicubic 2->4", 1, 2, c_in, 1, 4, KN_UPSCALE_BICUBIC, KN_CROP_DISABLED, c_out, 1e-6f);

    /* PIL LANCZOS of uint8 [0, 255] from 2 to 4 columns: normalised weights
     * at centre 0.25 are (1.1755, -0.1755) -> 0; at 0.75 (0.7671, 0.2329)
     * -> 59.38 -> 59; then 196 and 255 by symmetry. */
    const float l_in[] = {0, 1};
    const float l_out[] = {0, 59 / 255.0f, 196 / 255.0f, 1};
    check_scale("lanczos 2->4", 1, 2, l_in, 1, 4, KN_UPSCALE_LANCZOS, KN_CROP_DISABLED, l_out, 0);
    /* Same size: only the uint8 quantisation (truncation) remains. */
    const float q_in[] = {0.5f, 0.999f}, q_out[] = {127 / 255.0f, 254 / 255.0f};
    check_scale("lanczos identity", 1, 2, q_in, 1, 2, KN_UPSCALE_LANCZOS, KN_CROP_DISABLED, q_out, 0);

    /* crop "center": 4x2 (aspect 2) to 2x2 keeps columns 1..2 (x0 = 1). */
    const float cr_in[] = {0, 1, 2, 3, 4, 5, 6, 7}, cr_out[] = {1, 2, 5, 6};
    check_scale("center crop", 2, 4, cr_in, 2, 2, KN_UPSCALE_NEAREST_EXACT, KN_CROP_CENTER, cr_out, 0);

    /* Channels-first common_upscale agrees with the IMAGE layout. */
    const int64_t ne_hwc[4] = {2, 5, 7, 3}, ne_chw[4] = {2, 3, 5, 7};
    kn_tensor hwc, chw, o1, o2;
    kn_err err;
    kn_tensor_new(&hwc, KN_F32, KN_DEV_CPU, 4, ne_hwc, &err);
    kn_tensor_new(&chw, KN_F32, KN_DEV_CPU, 4, ne_chw, &err);
    for (int b = 0; b < 2; b++)
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 7; x++)
                for (int c = 0; c < 3; c++) {
                    float v = (float)((b * 31 + y * 7 + x * 3 + c * 11) % 17) / 16.0f;
                    ((float *)hwc.data)[((b * 5 + y) * 7 + x) * 3 + c] = v;
                    ((float *)chw.data)[((b * 3 + c) * 5 + y) * 7 + x] = v;
                }
    for (int m = KN_UPSCALE_NEAREST_EXACT; m <= KN_UPSCALE_LANCZOS; m++) {
        int rc1 = kn_image_upscale(&o1, &hwc, 4, 9, (kn_upscale_method)m, KN_CROP_CENTER, &err);
        int rc2 = kn_common_upscale(&o2, &chw, 4, 9, (kn_upscale_method)m, KN_CROP_CENTER, &err);
        CHECK(rc1 == KN_OK && rc2 == KN_OK, "layouts, method %d: %s", m, err.msg);
        int bad = 0;
        for (int b = 0; rc1 == KN_OK && rc2 == KN_OK && b < 2; b++)
            for (int y = 0; y < 9; y++)
                for (int x = 0; x < 4; x++)
                    for (int c = 0; c < 3; c++)
                        if (((float *)o1.data)[((b * 9 + y) * 4 + x) * 3 + c] !=
                            ((float *)o2.data)[((b * 3 + c) * 9 + y) * 4 + x])
                            bad++;
        CHECK(bad == 0, "layouts differ for method %d: %d values", m, bad);
        kn_tensor_free(&o1);
        kn_tensor_free(&o2);
    }
    CHECK(kn_image_upscale(&o1, &hwc, 0, 9, KN_UPSCALE_AREA, KN_CROP_DISABLED, &err) == KN_ERR_INVALID,
          "zero width refused");
    CHECK(kn_image_upscale(&o1, &hwc, 1 << 20, 1 << 20, KN_UPSCALE_AREA, KN_CROP_DISABLED, &err) == KN_ERR_INVALID,
          "huge target refused");
    kn_tensor_free(&hwc);
    kn_tensor_free(&chw);

    kn_upscale_method m;
    kn_upscale_crop cr;
    CHECK(kn_upscale_method_parse("lanczos", &m, &err) == KN_OK && m == KN_UPSCALE_LANCZOS, "parse lanczos");
    CHECK(kn_upscale_method_parse("bislerp", &m, &err) == KN_ERR_INVALID && strstr(err.msg, "bislerp"),
          "parse bislerp: %s", err.msg);
    CHECK(kn_upscale_crop_parse("center", &cr, &err) == KN_OK && cr == KN_CROP_CENTER, "parse center");
}

static void test_dims(void) {
    int64_t w = 0, h = 333;
    kn_image_scale_dims(1000, 500, &w, &h);
    CHECK(w == 666 && h == 333, "width from height: %lld", (long long)w);
    w = 0, h = 1; /* 3 * 1 / 2 = 1.5 rounds to 2; 5 * 1 / 2 = 2.5 rounds to 2 */
    kn_image_scale_dims(3, 2, &w, &h);
    CHECK(w == 2, "round half to even (1.5): %lld", (long long)w);
    w = 0, h = 1;
    kn_image_scale_dims(5, 2, &w, &h);
    CHECK(w == 2, "round half to even (2.5): %lld", (long long)w);
    w = 640, h = 0;
    kn_image_scale_dims(100000, 1, &w, &h);
    CHECK(h == 1, "height floor of 1: %lld", (long long)h);
    w = 0, h = 0;
    kn_image_scale_dims(10, 10, &w, &h);
    CHECK(w == 0 && h == 0, "both zero: unchanged");

    kn_err err;
    CHECK(kn_image_total_pixels_dims(512, 512, 1.0, 1, &w, &h, &err) == KN_OK && w == 1024 && h == 1024,
          "1 MP from 512^2: %lldx%lld", (long long)w, (long long)h);
    CHECK(kn_image_total_pixels_dims(1000, 600, 1.0, 1, &w, &h, &err) == KN_OK && w == 1322 && h == 793,
          "1 MP from 1000x600: %lldx%lld", (long long)w, (long long)h);
    CHECK(kn_image_total_pixels_dims(1920, 1080, 0.5, 64, &w, &h, &err) == KN_OK && w == 960 && h == 512,
          "0.5 MP steps 64: %lldx%lld", (long long)w, (long long)h);
    CHECK(kn_image_total_pixels_dims(10000, 10, 0.01, 256, &w, &h, &err) == KN_ERR_INVALID, "empty result refused");
}

/* The 13x9 RGB pattern of lanczos_golden.h as an IMAGE (values on the 1/255 grid). */
static kn_tensor lanczos_pattern(void) {
    float px[9 * 13 * 3];
    for (int y = 0; y < 9; y++)
        for (int x = 0; x < 13; x++)
            for (int c = 0; c < 3; c++)
                px[(y * 13 + x) * 3 + c] = (float)((x * 37 + y * 91 + c * 53 + (x * y) % 7 * 19) % 256) / 255.0f;
    kn_tensor t;
    kn_err err;
    if (kn_tensor_new(&t, KN_F32, KN_DEV_CPU, 4, (int64_t[]){1, 9, 13, 3}, &err)) exit(1);
    memcpy(t.data, px, sizeof px);
    return t;
}

/* lanczos against Pillow itself, bit for bit: up and down, one axis or both
 * (the horizontal pass into an 8-bit intermediate first), and the centre crop
 * FluxKontextImageScale and ImageScale's "center" apply before it. */
static void test_lanczos_pillow(void) {
    kn_tensor x = lanczos_pattern(), y;
    kn_err err;
    for (size_t i = 0; i < sizeof kn_pil_lanczos / sizeof kn_pil_lanczos[0]; i++) {
        int w = kn_pil_lanczos[i].w, h = kn_pil_lanczos[i].h, differ = 0;
        int rc = kn_image_upscale(&y, &x, w, h, KN_UPSCALE_LANCZOS, KN_CROP_DISABLED, &err);
        CHECK(rc == KN_OK, "lanczos to %dx%d: %s", w, h, err.msg);
        for (int k = 0; rc == KN_OK && k < w * h * 3; k++)
            differ += ((float *)y.data)[k] != (float)kn_pil_lanczos[i].px[k] / 255.0f;
        CHECK(rc == KN_OK && differ == 0, "lanczos 13x9 -> %dx%d: %d of %d values differ from Pillow", w, h, differ,
              w * h * 3);
        kn_tensor_free(&y);
    }
    int differ = 0, rc = kn_image_upscale(&y, &x, 6, 5, KN_UPSCALE_LANCZOS, KN_CROP_CENTER, &err);
    for (int k = 0; rc == KN_OK && k < 6 * 5 * 3; k++)
        differ += ((float *)y.data)[k] != (float)kn_pil_lanczos_crop_6x5[k] / 255.0f;
    CHECK(rc == KN_OK && differ == 0, "lanczos with centre crop to 6x5: %d values differ from Pillow", differ);
    kn_tensor_free(&y);
    kn_tensor_free(&x);

    /* RGBA: premultiplied alpha, as Image.resize converts it */
    kn_tensor rgba;
    if (kn_tensor_new(&rgba, KN_F32, KN_DEV_CPU, 4, (int64_t[]){1, 9, 13, 4}, &err)) exit(1);
    for (int py = 0; py < 9; py++)
        for (int px = 0; px < 13; px++)
            for (int c = 0; c < 4; c++) {
                int a = (px * 29 + py * 47) % 300, v = (px * 37 + py * 91 + c * 53 + (px * py) % 7 * 19) % 256;
                if (c == 3) v = a >= 280 ? 255 : a >= 256 ? 0 : a;
                ((float *)rgba.data)[(py * 13 + px) * 4 + c] = (float)v / 255.0f;
            }
    differ = 0;
    rc = kn_image_upscale(&y, &rgba, 7, 12, KN_UPSCALE_LANCZOS, KN_CROP_DISABLED, &err);
    for (int k = 0; rc == KN_OK && k < 7 * 12 * 4; k++)
        differ += ((float *)y.data)[k] != (float)kn_pil_lanczos_rgba_7x12[k] / 255.0f;
    CHECK(rc == KN_OK && differ == 0, "RGBA lanczos to 7x12: %d of %d values differ from Pillow", differ, 7 * 12 * 4);
    kn_tensor_free(&y);
    kn_tensor_free(&rgba);
}

int main(void) {
    const char *t = getenv("KN_TEST_TMP");
    snprintf(tmpdir, sizeof tmpdir, "%s", t && *t ? t : "/tmp");
    test_roundtrip();
    test_load_variants();
    test_hostile();
    test_scaling();
    test_lanczos_pillow();
    test_dims();
    printf("test_image_io: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
