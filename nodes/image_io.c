/* kn image I/O: PNG writing and tEXt reading, and image loading. See
 * image_io.h for the contract.
 *
 * Where this departs from ComfyUI (PIL + torch):
 *  - Truncated or corrupt files are errors. ComfyUI's node_helpers.pillow
 *    retries with ImageFile.LOAD_TRUNCATED_IMAGES, which fills the missing
 *    part of a truncated image with black.
 *  - 16-bit grayscale PNGs follow LoadImage's mode "I" branch (value * (1/255),
 *    clipped to 255), which is what Pillow before 10.x produced. Newer Pillow
 *    opens them as "I;16", which LoadImage converts by clipping every value
 *    above 255 to white.
 *  - Non-PNG formats go through stb_image: JPEG (baseline and progressive, no
 *    arithmetic coding, no 12-bit), BMP, GIF, TGA, PSD, HDR and PNM. WebP,
 *    TIFF and APNG animation (only the default image is read) are not
 *    supported. GIF frames are stb's composited canvases; PIL's frames
 *    after the first are the same pixels, so the batch matches.
 *  - EXIF orientation is applied from JPEG APP1 and PNG eXIf chunks; PIL also
 *    reads it from TIFF and WebP, which are not decoded here.
 */
#include "nodes/image_io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <stb/stb_image.h>

static const uint8_t kn_png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* Compressed files beyond this are refused before reading: stb_image takes
 * an int length, and no legitimate input is near it. */
#define KN_IMAGE_MAX_FILE_BYTES ((size_t)INT_MAX)

/* ---- Shared helpers ------------------------------------------------------ */

/* ComfyUI's np.clip(255. * x, 0, 255).astype(np.uint8): float32 product,
 * truncated; NaN (undefined in numpy) becomes 0. */
uint8_t kn_image_quantise(float x) {
    float v = 255.0f * x;
    if (!(v > 0.0f)) return 0;
    if (v >= 255.0f) return 255;
    return (uint8_t)v;
}

int kn_image_check_f32_4d(const kn_tensor *t, const char *what, kn_err *err) {
    if (t->dtype != KN_F32 || t->device != KN_DEV_CPU || t->ndim != 4 || !kn_tensor_is_contiguous(t)) {
        char d[96];
        return kn_fail(err, KN_ERR_SHAPE, "%s must be a contiguous 4-D F32 CPU tensor, got %s", what,
                       kn_tensor_desc(t, d, sizeof d));
    }
    for (int i = 0; i < 4; i++)
        if (t->ne[i] < 1) return kn_fail(err, KN_ERR_SHAPE, "%s has an empty dimension %d", what, i);
    return KN_OK;
}

/* Refuses images above KN_IMAGE_MAX_PIXELS before anything is allocated. */
static int kn_check_pixels(int64_t w, int64_t h, int64_t frames, const char *name, kn_err *err) {
    int64_t px;
    if (w < 1 || h < 1 || frames < 1)
        return kn_fail(err, KN_ERR_FORMAT, "%s: invalid image size %lldx%lld (%lld frames)", name,
                       (long long)w, (long long)h, (long long)frames);
    if (__builtin_mul_overflow(w, h, &px) || __builtin_mul_overflow(px, frames, &px) ||
        px > KN_IMAGE_MAX_PIXELS)
        return kn_fail(err, KN_ERR_FORMAT,
                       "%s: image of %lldx%lld x %lld frames exceeds the limit of %lld pixels", name,
                       (long long)w, (long long)h, (long long)frames, (long long)KN_IMAGE_MAX_PIXELS);
    return KN_OK;
}

static int kn_read_whole_file(const char *path, uint8_t **out, size_t *len, kn_err *err) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return kn_fail(err, KN_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = KN_OK;
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = kn_fail(err, KN_ERR_IO, "%s: cannot determine the size: %s", path, strerror(errno));
    } else if ((unsigned long)n > KN_IMAGE_MAX_FILE_BYTES) {
        rc = kn_fail(err, KN_ERR_INVALID, "%s: file of %ld bytes is too large", path, n);
    } else if (!(buf = malloc(n ? (size_t)n : 1))) {
        rc = kn_fail(err, KN_ERR_NOMEM, "%s: out of memory reading %ld bytes", path, n);
    } else if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        rc = kn_fail(err, KN_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    if (rc != KN_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = (size_t)n;
    return KN_OK;
}

/* ---- libpng plumbing ----------------------------------------------------- */

/* State shared with libpng's callbacks. It lives in the caller of the
 * function that calls setjmp, so its contents are well defined after
 * libpng's longjmp (C11 7.13.2.1 only spares objects local to that function). */
typedef struct kn_png_io {
    char msg[200];
    uint8_t *buf; /* encoder output */
    size_t len, cap;
    const uint8_t *src; /* decoder input */
    size_t size, pos;
    uint8_t *pix;       /* decoder output rows */
    png_bytep *rows;
} kn_png_io;

static void kn_png_on_error(png_structp png, png_const_charp msg) {
    kn_png_io *io = png_get_error_ptr(png);
    snprintf(io->msg, sizeof io->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Warnings (an ancillary chunk with a bad CRC, an unknown sRGB profile) do
 * not affect the pixels; PIL ignores the same conditions. */
static void kn_png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void kn_png_write_cb(png_structp png, png_bytep data, size_t n) {
    kn_png_io *io = png_get_io_ptr(png);
    if (n > io->cap - io->len) {
        size_t cap = io->cap ? io->cap : 65536;
        while (n > cap - io->len) {
            if (kn_mul_size(cap, 2, &cap)) png_error(png, "output size overflows");
        }
        uint8_t *p = realloc(io->buf, cap);
        if (!p) png_error(png, "out of memory");
        io->buf = p;
        io->cap = cap;
    }
    memcpy(io->buf + io->len, data, n);
    io->len += n;
}

static void kn_png_flush_cb(png_structp png) { (void)png; }

static void kn_png_read_cb(png_structp png, png_bytep data, size_t n) {
    kn_png_io *io = png_get_io_ptr(png);
    if (n > io->size - io->pos) png_error(png, "file is truncated");
    memcpy(data, io->src + io->pos, n);
    io->pos += n;
}

/* ---- PNG writing --------------------------------------------------------- */

static int kn_png_encode_run(png_structp png, png_infop info, kn_png_io *io, const float *px, int64_t h,
                             int64_t w, int64_t c, png_text *texts, int ntexts, int level, uint8_t *row) {
    if (setjmp(png_jmpbuf(png))) return 1;
    static const int color_type[5] = {0, PNG_COLOR_TYPE_GRAY, 0, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGBA};
    png_set_write_fn(png, io, kn_png_write_cb, kn_png_flush_cb);
    png_set_compression_level(png, level);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, color_type[c], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (ntexts > 0) png_set_text(png, info, texts, ntexts);
    png_write_info(png, info);
    for (int64_t y = 0; y < h; y++) {
        const float *src = px + y * w * c;
        for (int64_t i = 0; i < w * c; i++) row[i] = kn_image_quantise(src[i]);
        png_write_row(png, row);
    }
    png_write_end(png, info);
    return 0;
}

int kn_png_encode(const kn_tensor *image, int64_t index, const kn_png_text *texts, int ntexts,
                  int compress_level, uint8_t **out, size_t *out_len, kn_err *err) {
    *out = NULL;
    *out_len = 0;
    if (kn_image_check_f32_4d(image, "png: image", err)) return err->code;
    int64_t b = image->ne[0], h = image->ne[1], w = image->ne[2], c = image->ne[3];
    if (index < 0 || index >= b)
        return kn_fail(err, KN_ERR_INVALID, "png: image index %lld outside the batch of %lld",
                       (long long)index, (long long)b);
    if (c != 1 && c != 3 && c != 4)
        return kn_fail(err, KN_ERR_SHAPE, "png: images need 1, 3 or 4 channels, got %lld", (long long)c);
    if (h > PNG_USER_HEIGHT_MAX || w > PNG_USER_WIDTH_MAX)
        return kn_fail(err, KN_ERR_INVALID, "png: %lldx%lld is larger than libpng writes", (long long)w,
                       (long long)h);
    if (compress_level < 0 || compress_level > 9)
        return kn_fail(err, KN_ERR_INVALID, "png: compress_level %d outside 0..9", compress_level);
    if (ntexts < 0 || (ntexts > 0 && !texts))
        return kn_fail(err, KN_ERR_INVALID, "png: bad text chunk list (%d entries)", ntexts);
    for (int i = 0; i < ntexts; i++) {
        size_t kl = texts[i].key ? strlen(texts[i].key) : 0;
        if (kl < 1 || kl > 79 || !texts[i].value)
            return kn_fail(err, KN_ERR_INVALID, "png: text chunk %d needs a key of 1..79 characters and a value", i);
    }

    kn_png_io io = {0};
    uint8_t *row = malloc((size_t)(w * c));
    png_text *pt = calloc(ntexts > 0 ? (size_t)ntexts : 1, sizeof *pt);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, kn_png_on_error, kn_png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int rc = KN_OK;
    if (!row || !pt || !info) {
        rc = kn_fail(err, KN_ERR_NOMEM, "png: out of memory");
    } else {
        /* ComfyUI writes every text as uncompressed tEXt (PIL's add_text). */
        for (int i = 0; i < ntexts; i++) {
            pt[i].compression = PNG_TEXT_COMPRESSION_NONE;
            pt[i].key = (png_charp)texts[i].key;
            pt[i].text = (png_charp)texts[i].value;
            pt[i].text_length = strlen(texts[i].value);
        }
        const float *px = (const float *)image->data + index * h * w * c;
        if (kn_png_encode_run(png, info, &io, px, h, w, c, pt, ntexts, compress_level, row))
            rc = kn_fail(err, KN_ERR_BACKEND, "png: encoding failed: %s", io.msg);
    }
    png_destroy_write_struct(&png, &info);
    free(row);
    free(pt);
    if (rc != KN_OK) {
        free(io.buf);
        return rc;
    }
    *out = io.buf;
    *out_len = io.len;
    return KN_OK;
}

int kn_png_write(const char *path, const kn_tensor *image, int64_t index, const kn_png_text *texts,
                 int ntexts, int compress_level, kn_err *err) {
    uint8_t *buf;
    size_t len;
    if (kn_png_encode(image, index, texts, ntexts, compress_level, &buf, &len, err))
        return kn_err_wrap(err, "%s: ", path);
    /* O_NOFOLLOW: never write through a symlink planted under the output name */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !f) close(fd);
    int rc = KN_OK;
    if (!f) {
        rc = kn_fail(err, KN_ERR_IO, "%s: %s", path, strerror(errno));
    } else {
        size_t put = fwrite(buf, 1, len, f);
        if (fclose(f) != 0 || put != len) rc = kn_fail(err, KN_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    free(buf);
    return rc;
}

/* ---- PNG tEXt reading ---------------------------------------------------- */

static uint32_t kn_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Walks the chunks of a PNG, checking lengths and CRCs, up to IEND. Without
 * `out` it only counts the tEXt chunks and the bytes their strings need;
 * with it, it fills out[] and the strings into `strings`. Sharing the walk
 * keeps the two passes in agreement about what is valid. */
static int kn_png_walk_text(const uint8_t *d, size_t len, const char *name, kn_png_text *out, char *strings,
                            int *count, size_t *bytes, kn_err *err) {
    if (len < 8 || memcmp(d, kn_png_signature, 8) != 0) return kn_fail(err, KN_ERR_FORMAT, "%s: not a PNG file", name);
    *count = 0;
    *bytes = 0;
    size_t pos = 8;
    for (;;) {
        if (len - pos < 12) return kn_fail(err, KN_ERR_FORMAT, "%s: truncated PNG (no IEND chunk)", name);
        uint32_t n = kn_be32(d + pos);
        const uint8_t *type = d + pos + 4, *data = d + pos + 8;
        if (n > 0x7fffffffu || n > len - pos - 12)
            return kn_fail(err, KN_ERR_FORMAT, "%s: truncated PNG chunk at offset %zu", name, pos);
        uLong crc = crc32(crc32(0L, Z_NULL, 0), type, n + 4);
        if (crc != kn_be32(data + n))
            return kn_fail(err, KN_ERR_FORMAT, "%s: CRC mismatch in the %.4s chunk at offset %zu", name,
                           (const char *)type, pos);
        if (memcmp(type, "IEND", 4) == 0) return KN_OK;
        if (memcmp(type, "tEXt", 4) == 0) {
            const uint8_t *nul = memchr(data, 0, n);
            size_t kl = nul ? (size_t)(nul - data) : 0;
            if (kl < 1 || kl > 79)
                return kn_fail(err, KN_ERR_FORMAT, "%s: malformed tEXt chunk at offset %zu", name, pos);
            size_t vl = n - kl - 1;
            if (out) {
                out[*count].key = memcpy(strings, data, kl);
                strings[kl] = '\0';
                out[*count].value = memcpy(strings + kl + 1, nul + 1, vl);
                strings[kl + 1 + vl] = '\0';
                strings += kl + vl + 2;
            }
            if (*count == INT_MAX) return kn_fail(err, KN_ERR_FORMAT, "%s: too many tEXt chunks", name);
            (*count)++;
            *bytes += kl + vl + 2; /* chunks lie inside the buffer, so this cannot overflow */
        }
        pos += 12 + (size_t)n;
    }
}

int kn_png_read_text_mem(const void *data, size_t len, const char *name, kn_png_text **texts, int *ntexts,
                         kn_err *err) {
    *texts = NULL;
    *ntexts = 0;
    if (!name) name = "<memory>";
    int count;
    size_t bytes, total;
    if (kn_png_walk_text(data, len, name, NULL, NULL, &count, &bytes, err)) return err->code;
    if (count == 0) return KN_OK;
    if (kn_mul_size((size_t)count, sizeof(kn_png_text), &total) || kn_add_size(total, bytes, &total))
        return kn_fail(err, KN_ERR_NOMEM, "%s: text chunks too large", name);
    kn_png_text *t = malloc(total);
    if (!t) return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory for %zu bytes of text", name, total);
    if (kn_png_walk_text(data, len, name, t, (char *)(t + count), &count, &bytes, err)) {
        free(t);
        return err->code;
    }
    *texts = t;
    *ntexts = count;
    return KN_OK;
}

int kn_png_read_text(const char *path, kn_png_text **texts, int *ntexts, kn_err *err) {
    uint8_t *buf;
    size_t len;
    *texts = NULL;
    *ntexts = 0;
    if (kn_read_whole_file(path, &buf, &len, err)) return err->code;
    int rc = kn_png_read_text_mem(buf, len, path, texts, ntexts, err);
    free(buf);
    return rc;
}

const char *kn_png_text_get(const kn_png_text *texts, int ntexts, const char *key) {
    for (int i = 0; i < ntexts; i++)
        if (strcmp(texts[i].key, key) == 0) return texts[i].value;
    return NULL;
}

/* ---- Decoding ------------------------------------------------------------ */

/* A decoded image before conversion: 8-bit interleaved samples. */
typedef struct kn_decoded {
    uint8_t *pix;               /* frames x h x w x comp */
    void (*release)(void *);    /* free or stbi_image_free */
    int64_t w, h, frames;
    int comp;                   /* 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA */
    int orientation;            /* EXIF orientation 1..8; 1 = as stored */
} kn_decoded;

/* EXIF orientation from a TIFF-structured blob (JPEG APP1 after "Exif\0\0",
 * PNG eXIf): tag 0x0112 of IFD0. Anything malformed or out of range reads as
 * 1, as PIL's exif_transpose ignores orientations it does not know. */
static int kn_exif_orientation(const uint8_t *t, size_t len) {
    if (len < 8) return 1;
    int le = memcmp(t, "II*\0", 4) == 0;
    if (!le && memcmp(t, "MM\0*", 4) != 0) return 1;
#define KN_U16(p) (le ? (uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 : (uint32_t)(p)[0] << 8 | (uint32_t)(p)[1])
#define KN_U32(p) (le ? KN_U16(p) | KN_U16((p) + 2) << 16 : KN_U16(p) << 16 | KN_U16((p) + 2))
    uint32_t ifd = KN_U32(t + 4);
    if (ifd > len - 2) return 1;
    uint32_t n = KN_U16(t + ifd);
    for (uint32_t i = 0; i < n; i++) {
        size_t e = ifd + 2 + (size_t)i * 12;
        if (e + 12 > len) break;
        if (KN_U16(t + e) == 0x0112 && KN_U16(t + e + 2) == 3) {
            uint32_t v = KN_U16(t + e + 8);
            return v >= 1 && v <= 8 ? (int)v : 1;
        }
    }
#undef KN_U32
#undef KN_U16
    return 1;
}

/* Orientation of a JPEG from its first APP1 "Exif" segment before the scan. */
static int kn_jpeg_orientation(const uint8_t *d, size_t len) {
    size_t pos = 2;
    while (pos + 4 <= len && d[pos] == 0xff) {
        uint8_t marker = d[pos + 1];
        if (marker == 0xff) { /* fill byte */
            pos++;
            continue;
        }
        if (marker == 0xda || marker == 0xd9) break; /* start of scan, end of image */
        size_t seg = (size_t)d[pos + 2] << 8 | d[pos + 3];
        if (seg < 2 || seg > len - pos - 2) break;
        if (marker == 0xe1 && seg >= 8 && memcmp(d + pos + 4, "Exif\0\0", 6) == 0)
            return kn_exif_orientation(d + pos + 10, seg - 8);
        pos += 2 + seg;
    }
    return 1;
}

static int kn_png_decode_run(png_structp png, png_infop info, kn_png_io *io, const char *name,
                             kn_decoded *d, kn_err *err) {
    if (setjmp(png_jmpbuf(png))) return kn_fail(err, KN_ERR_FORMAT, "%s: invalid PNG: %s", name, io->msg);
    png_set_read_fn(png, io, kn_png_read_cb);
    /* Text is metadata to the loader; skipping it also spares inflating
     * zTXt/iTXt payloads of untrusted files. */
    static const png_byte skip[] = "tEXt\0zTXt\0iTXt";
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skip, 3);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
    if (kn_check_pixels(w, h, 1, name, err)) return err->code;
    /* PIL: palette transparency becomes alpha (LoadImage's "P" + transparency
     * branch); tRNS on gray or RGB images is not an "A" band, so no mask. */
    if (type == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    }
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    /* PIL reads 16-bit RGB(A) and gray+alpha as 8-bit by keeping the high
     * byte; 16-bit gray is an integer mode, scaled below. */
    int gray16 = type == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (depth == 16 && !gray16) png_set_strip_16(png);
    if (png_get_interlace_type(png, info) != PNG_INTERLACE_NONE) png_set_interlace_handling(png);
    png_bytep exif;
    png_uint_32 exif_len;
    if (png_get_eXIf_1(png, info, &exif_len, &exif)) d->orientation = kn_exif_orientation(exif, exif_len);
    png_read_update_info(png, info);

    size_t rowbytes = png_get_rowbytes(png, info), total, nrows;
    if (kn_mul_size(rowbytes, h, &total) || kn_mul_size(sizeof(png_bytep), h, &nrows))
        return kn_fail(err, KN_ERR_NOMEM, "%s: image size overflows", name);
    io->pix = malloc(total);
    io->rows = malloc(nrows);
    if (!io->pix || !io->rows) return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory for %zu bytes", name, total);
    for (png_uint_32 y = 0; y < h; y++) io->rows[y] = io->pix + (size_t)y * rowbytes;
    png_read_image(png, io->rows);

    if (gray16) {
        /* LoadImage: mode "I" -> i * (1 / 255), then convert("RGB") clips to
         * 255. In place: sample k is written at k, read from 2k and 2k+1. */
        size_t n = (size_t)w * h;
        for (size_t k = 0; k < n; k++) {
            double v = (double)((uint32_t)io->pix[2 * k] << 8 | io->pix[2 * k + 1]) * (1.0 / 255.0);
            io->pix[k] = v >= 255.0 ? 255 : (uint8_t)v;
        }
    }
    d->w = w;
    d->h = h;
    d->frames = 1;
    d->comp = gray16 ? 1 : png_get_channels(png, info);
    return KN_OK;
}

static int kn_png_decode(const uint8_t *data, size_t len, const char *name, kn_decoded *d, kn_err *err) {
    kn_png_io io = {.src = data, .size = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, kn_png_on_error, kn_png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int rc = info ? kn_png_decode_run(png, info, &io, name, d, err)
                  : kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", name);
    png_destroy_read_struct(&png, &info, NULL);
    free(io.rows);
    if (rc != KN_OK) {
        free(io.pix);
        return rc;
    }
    d->pix = io.pix;
    d->release = free;
    return KN_OK;
}

/* Skips GIF data sub-blocks (length byte, bytes; a zero length ends them). */
static size_t kn_gif_skip_blocks(const uint8_t *d, size_t len, size_t pos) {
    while (pos < len && d[pos] != 0) pos += 1 + (size_t)d[pos];
    return pos + 1;
}

/* Frames of a GIF, counted from its block structure so that the pixel limit
 * holds before stb_image decodes (and allocates) all of them. */
static int64_t kn_gif_frames(const uint8_t *d, size_t len) {
    if (len < 13) return 1;
    size_t pos = 13;
    if (d[10] & 0x80) pos += 3 * ((size_t)2 << (d[10] & 7)); /* global colour table */
    int64_t frames = 0;
    while (pos < len) {
        uint8_t b = d[pos];
        if (b == 0x21) { /* extension: label, sub-blocks */
            pos = kn_gif_skip_blocks(d, len, pos + 2);
        } else if (b == 0x2c) { /* image: descriptor, local table, LZW size, sub-blocks */
            if (len - pos < 10) break;
            uint8_t flags = d[pos + 9];
            pos += 10;
            if (flags & 0x80) pos += 3 * ((size_t)2 << (flags & 7));
            pos = kn_gif_skip_blocks(d, len, pos + 1);
            frames++;
        } else {
            break; /* trailer or garbage: stb stops here too */
        }
    }
    return frames > 0 ? frames : 1;
}

static void kn_stbi_release(void *p) { stbi_image_free(p); }

static int kn_stb_decode(const uint8_t *data, size_t len, const char *name, kn_decoded *d, kn_err *err) {
    int w, h, comp;
    if (len > KN_IMAGE_MAX_FILE_BYTES) return kn_fail(err, KN_ERR_INVALID, "%s: input too large", name);
    if (!stbi_info_from_memory(data, (int)len, &w, &h, &comp)) {
        /* stb tries every format in turn and then only says "unknown image
         * type", so a broken file of a known format is told apart by its
         * signature (TGA has none). */
        static const struct {
            const char *magic, *format;
        } known[] = {{"\xff\xd8", "JPEG"}, {"GIF8", "GIF"},       {"BM", "BMP"}, {"8BPS", "PSD"},
                     {"#?RADIANCE", "HDR"}, {"#?RGBE", "HDR"}, {"P5", "PNM"}, {"P6", "PNM"}};
        for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
            size_t n = strlen(known[i].magic);
            if (len >= n && memcmp(data, known[i].magic, n) == 0)
                return kn_fail(err, KN_ERR_FORMAT, "%s: corrupt or unsupported %s image", name, known[i].format);
        }
        return kn_fail(err, KN_ERR_UNSUPPORTED,
                       "%s: not an image format Kiln decodes (PNG, JPEG, BMP, GIF, TGA, PSD, HDR, PNM)", name);
    }
    int is_gif = len >= 4 && memcmp(data, "GIF8", 4) == 0;
    if (kn_check_pixels(w, h, is_gif ? kn_gif_frames(data, len) : 1, name, err)) return err->code;
    uint8_t *pix;
    int frames = 1;
    if (is_gif) {
        /* Every frame is composited onto the RGBA canvas. */
        pix = stbi_load_gif_from_memory(data, (int)len, NULL, &w, &h, &frames, &comp, 4);
        comp = 4;
    } else {
        pix = stbi_load_from_memory(data, (int)len, &w, &h, &comp, 0);
    }
    if (!pix) {
        const char *why = stbi_failure_reason();
        return kn_fail(err, KN_ERR_FORMAT, "%s: cannot decode: %s", name, why ? why : "unknown error");
    }
    d->pix = pix;
    d->release = kn_stbi_release;
    d->w = w;
    d->h = h;
    d->frames = frames;
    d->comp = comp;
    if (len >= 2 && data[0] == 0xff && data[1] == 0xd8) d->orientation = kn_jpeg_orientation(data, len);
    return KN_OK;
}

/* PIL's exif_transpose as a source lookup: output (ox, oy) reads input
 * (fx ? W-1-a : a, fy ? H-1-b : b) with (a, b) = swap ? (oy, ox) : (ox, oy).
 * Index = orientation: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM,
 * 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90. */
static const struct {
    uint8_t swap, fx, fy;
} kn_orient[9] = {{0, 0, 0}, {0, 0, 0}, {0, 1, 0}, {0, 1, 1}, {0, 0, 1},
                  {1, 0, 0}, {1, 0, 1}, {1, 1, 1}, {1, 1, 0}};

/* LoadImage's tensors: image = u8 / 255, mask = 1 - alpha / 255 (float32). */
static int kn_decoded_to_tensors(const kn_decoded *d, const char *name, kn_tensor *image, kn_tensor *mask,
                                 kn_err *err) {
    int o = d->orientation;
    int64_t ow = kn_orient[o].swap ? d->h : d->w, oh = kn_orient[o].swap ? d->w : d->h;
    int64_t ne[4] = {d->frames, oh, ow, 3};
    if (kn_check_pixels(d->w, d->h, d->frames, name, err)) return err->code; /* stb may find more GIF frames */
    if (kn_tensor_new(image, KN_F32, KN_DEV_CPU, 4, ne, err) || kn_tensor_new(mask, KN_F32, KN_DEV_CPU, 3, ne, err)) {
        kn_tensor_free(image);
        return kn_err_wrap(err, "%s: ", name);
    }
    float *img = image->data, *msk = mask->data;
    int comp = d->comp, alpha = comp == 2 || comp == 4, color = comp >= 3;
    for (int64_t n = 0; n < d->frames; n++) {
        const uint8_t *frame = d->pix + (size_t)(n * d->h * d->w * comp);
        for (int64_t oy = 0; oy < oh; oy++) {
            for (int64_t ox = 0; ox < ow; ox++) {
                int64_t a = kn_orient[o].swap ? oy : ox, b = kn_orient[o].swap ? ox : oy;
                int64_t sx = kn_orient[o].fx ? d->w - 1 - a : a, sy = kn_orient[o].fy ? d->h - 1 - b : b;
                const uint8_t *p = frame + (size_t)((sy * d->w + sx) * comp);
                for (int c = 0; c < 3; c++) *img++ = (float)p[color ? c : 0] / 255.0f;
                *msk++ = alpha ? 1.0f - (float)p[comp - 1] / 255.0f : 0.0f;
            }
        }
    }
    return KN_OK;
}

int kn_image_load_mem(const void *data, size_t len, const char *name, kn_tensor *image, kn_tensor *mask,
                      kn_err *err) {
    memset(image, 0, sizeof *image);
    memset(mask, 0, sizeof *mask);
    if (!name) name = "<memory>";
    if (!data || len == 0) return kn_fail(err, KN_ERR_FORMAT, "%s: empty image file", name);
    kn_decoded d = {.orientation = 1};
    int rc = len >= 8 && memcmp(data, kn_png_signature, 8) == 0 ? kn_png_decode(data, len, name, &d, err)
                                                               : kn_stb_decode(data, len, name, &d, err);
    if (rc != KN_OK) return rc;
    rc = kn_decoded_to_tensors(&d, name, image, mask, err);
    d.release(d.pix);
    return rc;
}

int kn_image_load(const char *path, kn_tensor *image, kn_tensor *mask, kn_err *err) {
    uint8_t *buf;
    size_t len;
    memset(image, 0, sizeof *image);
    memset(mask, 0, sizeof *mask);
    if (kn_read_whole_file(path, &buf, &len, err)) return err->code;
    int rc = kn_image_load_mem(buf, len, path, image, mask, err);
    free(buf);
    return rc;
}
