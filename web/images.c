/* /view re-encoding and /upload/mask: see web/images.h. */
#include "web/images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <civetweb.h>
#include <jansson.h>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include "nodes/image_io.h"
#include "web/files.h"
#include "web/multipart.h"

typedef struct growbuf {
    unsigned char *p;
    size_t n, cap;
    int failed;
} growbuf;

static void grow_write(void *ctx, void *data, int size) {
    growbuf *b = ctx;
    if (b->failed || size <= 0) return;
    if (b->n + (size_t)size > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 65536) + (size_t)size;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, (size_t)size);
    b->n += (size_t)size;
}

int kn_jpeg_encode(const unsigned char *rgb, int w, int h, int quality, unsigned char **out, size_t *len) {
    growbuf b = {0};
    if (!stbi_write_jpg_to_func(grow_write, &b, w, h, 3, rgb, quality) || b.failed) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.n;
    return 0;
}

/* RGBA pixels of an encoded image, or NULL (too large, not an image). */
static unsigned char *decode_rgba(const unsigned char *data, size_t len, int *w, int *h, int *channels) {
    if (len > (size_t)0x7fffffff || !stbi_info_from_memory(data, (int)len, w, h, channels)) return NULL;
    if ((int64_t)*w * *h > KN_IMAGE_MAX_PIXELS) return NULL;
    return stbi_load_from_memory(data, (int)len, w, h, channels, 4);
}

static unsigned char *read_fd(int fd, size_t size) {
    unsigned char *buf = malloc(size ? size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (buf && got != size) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

int kn_view_transformed(const kn_http *h, int fd, size_t size, const char *preview, const char *channel) {
    unsigned char *file = read_fd(fd, size);
    close(fd);
    if (!file) return kn_http_error(h, 500, "cannot read the file");
    int w, ht, ch;
    unsigned char *px = decode_rgba(file, size, &w, &ht, &ch);
    if (!px) { /* not an image we decode: as stored, as ComfyUI does for other files */
        int st = kn_http_send(h, 200, "application/octet-stream", file, size, NULL);
        free(file);
        return st;
    }
    free(file);
    growbuf b = {0};
    const char *type = "image/png";
    size_t n = (size_t)w * ht;
    bool alpha_only = channel && strcmp(channel, "a") == 0, rgb = channel && strcmp(channel, "rgb") == 0;
    if (preview && preview[0] && !alpha_only) {
        const char *semi = strchr(preview, ';');
        int q = semi ? atoi(semi + 1) : 90;
        if (q < 1 || q > 100) q = 90;
        for (size_t i = 0; i < n; i++) memmove(px + 3 * i, px + 4 * i, 3); /* jpeg drops alpha */
        stbi_write_jpg_to_func(grow_write, &b, w, ht, 3, px, q);
        type = "image/jpeg";
    } else if (rgb) {
        for (size_t i = 0; i < n; i++) memmove(px + 3 * i, px + 4 * i, 3);
        stbi_write_png_to_func(grow_write, &b, w, ht, 3, px, w * 3);
    } else {
        if (alpha_only)
            for (size_t i = 0; i < n; i++) px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = 0;
        stbi_write_png_to_func(grow_write, &b, w, ht, 4, px, w * 4);
    }
    stbi_image_free(px);
    int st = b.failed || !b.n ? kn_http_error(h, 500, "cannot encode the image")
                              : kn_http_send(h, 200, type, b.p, b.n, NULL);
    free(b.p);
    return st;
}

/* ---- /upload/mask ------------------------------------------------------------- */

static bool field(const kn_multipart *mp, const char *name, char *dst, size_t len) {
    const kn_multipart_part *p = kn_multipart_get(mp, name);
    dst[0] = '\0';
    if (!p) return true;
    if (p->len >= len || memchr(p->data, '\0', p->len)) return false;
    memcpy(dst, p->data, p->len);
    dst[p->len] = '\0';
    return true;
}

static const char *dir_of(const char *type, const char *out, const char *in, const char *tmp) {
    return !strcmp(type, "output") ? out : !strcmp(type, "input") ? in : !strcmp(type, "temp") ? tmp : NULL;
}

/* The original image, its mask applied, as PNG bytes keeping its text chunks. */
static int compose(const kn_http *h, const unsigned char *orig, size_t olen, const kn_multipart_part *mask,
                   uint8_t **png, size_t *png_len) {
    int w, ht, ch, mw, mh, mch;
    unsigned char *o = decode_rgba(orig, olen, &w, &ht, &ch);
    unsigned char *m = o ? decode_rgba((const unsigned char *)mask->data, mask->len, &mw, &mh, &mch) : NULL;
    int st = 0;
    if (!o || !m) st = kn_http_error(h, 400, "the %s is not an image Kiln decodes", o ? "mask" : "original image");
    else if (mw != w || mh != ht) st = kn_http_error(h, 400, "the mask is %dx%d, the image %dx%d", mw, mh, w, ht);
    kn_tensor img = {0};
    kn_err err;
    int64_t ne[4] = {1, ht, w, 4};
    if (!st && kn_tensor_new(&img, KN_F32, KN_DEV_CPU, 4, ne, &err)) st = kn_http_error(h, 500, "out of memory");
    if (!st) {
        float *f = img.data;
        /* (v + 0.5) / 255: kn_png_encode truncates 255 * x, so this gives v back exactly */
        for (size_t i = 0; i < (size_t)w * ht; i++) {
            for (int c = 0; c < 3; c++) f[4 * i + c] = (o[4 * i + c] + 0.5f) / 255.0f;
            f[4 * i + 3] = (m[4 * i + 3] + 0.5f) / 255.0f;
        }
        kn_png_text *texts = NULL;
        int nt = 0;
        if (kn_png_read_text_mem(orig, olen, "original", &texts, &nt, &err)) nt = 0;
        if (kn_png_encode(&img, 0, texts, nt, KN_PNG_COMPRESS_SAVE, png, png_len, &err))
            st = kn_http_fail(h, 500, &err);
        free(texts);
    }
    kn_tensor_free(&img);
    if (o) stbi_image_free(o);
    if (m) stbi_image_free(m);
    return st;
}

int kn_route_upload_mask(const kn_http *h, const char *output_dir, const char *input_dir, const char *temp_dir) {
    char *body;
    size_t len;
    int st = kn_http_body(h, &body, &len);
    if (st) return kn_http_error(h, st, st == 413 ? "request body too large" : "could not read the request body");
    kn_multipart *mp = NULL;
    kn_err err;
    const char *ctype = mg_get_header(h->conn, "Content-Type");
    if (kn_multipart_parse(ctype, body, len, &mp, &err)) {
        free(body);
        return kn_http_error(h, 400, "malformed multipart body");
    }
    char ref[4096], type[64], sub[1024], ow[16];
    const kn_multipart_part *image = kn_multipart_get(mp, "image");
    bool ok = field(mp, "original_ref", ref, sizeof ref) && (ref[0] || field(mp, "originalRef", ref, sizeof ref)) &&
              field(mp, "type", type, sizeof type) && field(mp, "subfolder", sub, sizeof sub) &&
              field(mp, "overwrite", ow, sizeof ow);
    json_t *jref = ok ? json_loads(ref, 0, NULL) : NULL;
    const char *oname = json_string_value(json_object_get(jref, "filename"));
    const char *osub = json_string_value(json_object_get(jref, "subfolder"));
    const char *otype = json_string_value(json_object_get(jref, "type"));
    char oname_buf[512];
    snprintf(oname_buf, sizeof oname_buf, "%s", oname ? oname : "");
    /* "x.png [input]": the annotation names the folder, as for /view */
    static const char *const notes[] = {"output", "input", "temp"};
    for (int i = 0; i < 3; i++) {
        char suffix[16];
        size_t n = (size_t)snprintf(suffix, sizeof suffix, " [%s]", notes[i]), fl = strlen(oname_buf);
        if (fl > n && strcmp(oname_buf + fl - n, suffix) == 0) {
            oname_buf[fl - n] = '\0';
            otype = notes[i];
        }
    }
    const char *odir = dir_of(otype ? otype : "output", output_dir, input_dir, temp_dir);
    const char *ddir = dir_of(type[0] ? type : "input", output_dir, input_dir, temp_dir);
    int fd = -1;
    size_t osize = 0;
    if (!ok || !image || !image->filename || !kn_web_name_ok(image->filename) || !kn_web_subfolder_ok(sub)) {
        st = kn_http_error(h, 400, "expected the fields image and original_ref");
    } else if (!jref || !oname || !odir || !kn_web_name_ok(oname_buf) || (osub && !kn_web_subfolder_ok(osub))) {
        st = kn_http_error(h, 400, "original_ref must be {\"filename\", \"subfolder\", \"type\"} of an existing image");
    } else if (kn_web_open_file(odir, osub ? osub : "", oname_buf, &fd, &osize, &err)) {
        st = kn_http_error(h, 404, "the original image '%s' is not there", oname_buf);
    }
    unsigned char *orig = st ? NULL : read_fd(fd, osize);
    if (fd >= 0) close(fd);
    if (!st && !orig) st = kn_http_error(h, 500, "cannot read the original image");
    uint8_t *png = NULL;
    size_t png_len = 0;
    if (!st) st = compose(h, orig, osize, image, &png, &png_len);
    char stored[512];
    if (!st) {
        bool overwrite = !strcmp(ow, "true") || !strcmp(ow, "1");
        if (kn_web_store_upload(ddir ? ddir : input_dir, sub, image->filename, png, png_len, overwrite, stored,
                                sizeof stored, &err))
            st = kn_http_fail(h, 400, &err);
        else
            st = kn_http_json(h, 200, json_pack("{s:s, s:s, s:s}", "name", stored, "subfolder", sub, "type",
                                                type[0] ? type : "input"));
    }
    free(png);
    free(orig);
    json_decref(jref);
    free(mp);
    free(body);
    return st;
}
