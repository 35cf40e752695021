/* The pieces of Qwen-Image-Edit's conditioning the fixture runners take as
 * given, checked against ComfyUI's numbers in the fixtures' data:
 * - the Edit nodes' image sizes (ImageScaleToTotalPixels' rule, as the nodes
 *   call it) against each qwen_image_edit_text case's vl_resize_wh,
 *   vae_resize_wh and VAE crop;
 * - the Qwen tokenizer with the Edit and Plus templates (the template texts
 *   against meta.json's) on each case's text against its in.input_ids;
 * - M-RoPE with three equal streams is the 1-D RoPE bit for bit;
 * - the vision preprocessing (pipelines/qwen_image/vision.h) against
 *   ComfyUI's process_qwen2vl_images: for every case of the qwen25_vl_vision
 * fixture the patch rows Kiln cuts from in.image match in.pixel_values on the
 * same grid. The fixture resized in float64; torch (and Kiln) compute the
 * bilinear source positions in float32, which moves the rows by ~1e-5 rel L2
 * (a float32 emulation of torch's formulas lands at 8.1e-6 on case 0, Kiln
 * at 8.1e-6), so the bound is 2e-5: a wrong tap or weight costs > 1e-2;
 * smart sizes of the rounding, upscaling and downscaling branches; bad
 * images are refused naming the shape. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "check.h"
#include "nodes/image_io.h"
#include "nodes/image_scale.h"
#include "pipelines/qwen_image/vision.h"
#include "pipelines/tokenizers/prompt.h"

#define FIXTURE KN_SOURCE_DIR "/tests/fixtures/qwen25_vl_vision"
#define EDIT_FIXTURE KN_SOURCE_DIR "/tests/fixtures/qwen_image_edit_text"
#define TOKENIZERS KN_SOURCE_DIR "/pipelines/tokenizers/data"

static void fixture_rows(int c) {
    char path[512];
    snprintf(path, sizeof path, FIXTURE "/case%d.safetensors", c);
    kn_err err;
    kn_st_file *f = NULL;
    kn_arena *a = NULL;
    kn_tensor image, want, grid, rows;
    int64_t gh = 0, gw = 0;
    int rc = kn_st_open(&f, path, &err);
    if (!rc) rc = kn_st_get(f, "in.image", &image, &err);
    if (!rc) rc = kn_st_get(f, "in.pixel_values", &want, &err);
    if (!rc) rc = kn_st_get(f, "in.grid_thw", &grid, &err);
    if (!rc) rc = kn_arena_create(&a, KN_DEV_CPU, &err);
    if (!rc) rc = kn_qwen_vision_rows(a, &image, &rows, &gh, &gw, &err);
    CHECK(rc == KN_OK, "case %d: %s", c, err.msg);
    if (!rc) {
        const int64_t *g = grid.data;
        CHECK(gh == g[1] && gw == g[2], "case %d: grid %lldx%lld, ComfyUI %lldx%lld", c, (long long)gh,
              (long long)gw, (long long)g[1], (long long)g[2]);
        CHECK(rows.ne[0] == want.ne[0] && rows.ne[1] == want.ne[1], "case %d: rows shape", c);
        double e = rows.ne[0] == want.ne[0] ? check_rel_l2(rows.data, want.data, kn_tensor_numel(&want))
                                            : INFINITY;
        printf("case %d: %lldx%lld patches, rows rel_l2 %.3e\n", c, (long long)gh, (long long)gw, e);
        CHECK(e < 2e-5, "case %d: rows differ from pixel_values by rel_l2 %g", c, e);
    }
    kn_arena_destroy(a);
    kn_st_close(f);
}

static void smart_sizes(void) {
    static const int64_t cases[][4] = {
        {150, 260, 140, 252},       /* rounding: 150/28 = 5.36 -> 5, 260/28 = 9.29 -> 9 */
        {20, 36, 56, 84},           /* 28x28 < 3136: scaled up by sqrt(3136 / 720), ceil */
        {887, 1182, 896, 1176},     /* the Edit node's ~1 Mpx image (fixture qwen_image_edit_text case 0) */
        {42, 70, 56, 56},           /* 1.5 -> 2 and 2.5 -> 2: Python's half-to-even */
        {4000, 4000, 3584, 3584},   /* 4004^2 > 12845056: sqrt(16e6 / 12845056) = 1.116, floor */
    };
    kn_err err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t h = 0, w = 0;
        int rc = kn_qwen_vision_smart_size(cases[i][0], cases[i][1], &h, &w, &err);
        CHECK(rc == KN_OK && h == cases[i][2] && w == cases[i][3], "%lldx%lld -> %lldx%lld, want %lldx%lld",
              (long long)cases[i][0], (long long)cases[i][1], (long long)h, (long long)w, (long long)cases[i][2],
              (long long)cases[i][3]);
    }
    int64_t h, w;
    CHECK(kn_qwen_vision_smart_size(10, 3000, &h, &w, &err) == KN_ERR_SHAPE && strstr(err.msg, "aspect ratio"),
          "an aspect ratio of 300 is refused: %s", err.msg);
    CHECK(kn_qwen_vision_smart_size(0, 30, &h, &w, &err) == KN_ERR_SHAPE, "an empty image is refused");
}

static void bad_images(void) {
    kn_err err;
    kn_arena *a = NULL;
    kn_tensor img, rows;
    int64_t gh, gw;
    if (kn_arena_create(&a, KN_DEV_CPU, &err) || kn_tensor_new(&img, KN_F32, KN_DEV_CPU, 4,
                                                                (int64_t[]){1, 32, 32, 4}, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    memset(img.data, 0, kn_tensor_nbytes(&img));
    CHECK(kn_qwen_vision_rows(a, &img, &rows, &gh, &gw, &err) == KN_ERR_SHAPE && strstr(err.msg, "[1, 32, 32, 4]"),
          "a 4-channel image is refused naming its shape: %s", err.msg);
    kn_tensor_free(&img);
    kn_arena_destroy(a);
}

/* Node sizes: (w, h) of ImageScaleToTotalPixels' rule with the node's parameters. */
static void check_size(const char *what, const json_t *img, const char *key, int64_t W, int64_t H, double mp,
                       int64_t steps) {
    int64_t w = 0, h = 0;
    kn_err err;
    const json_t *want = json_object_get(img, key);
    int rc = kn_image_total_pixels_dims(W, H, mp, steps, &w, &h, &err);
    CHECK(rc == KN_OK && w == json_integer_value(json_array_get(want, 0)) &&
              h == json_integer_value(json_array_get(want, 1)),
          "%s: %s of %lldx%lld is %lldx%lld, ComfyUI %lldx%lld", what, key, (long long)W, (long long)H, (long long)w,
          (long long)h, (long long)json_integer_value(json_array_get(want, 0)),
          (long long)json_integer_value(json_array_get(want, 1)));
}

static void edit_case(const json_t *meta, const json_t *info, const kn_bpe *bpe) {
    const char *node = json_string_value(json_object_get(info, "node"));
    const char *text = json_string_value(json_object_get(info, "text_passed_to_tokenizer"));
    const char *file = json_string_value(json_object_get(info, "file"));
    const json_t *images = json_object_get(info, "images");
    int plus = strcmp(node, "TextEncodeQwenImageEditPlus") == 0;
    char path[512];
    snprintf(path, sizeof path, EDIT_FIXTURE "/%s", file);
    kn_err err;
    kn_st_file *f = NULL;
    kn_tensor ids;
    if (kn_st_open(&f, path, &err) || kn_st_get(f, "in.input_ids", &ids, &err)) {
        CHECK(0, "%s: %s", file, err.msg);
        kn_st_close(f);
        return;
    }
    /* sizes: Edit sees and encodes ~1 Mpx; Plus sees ~384x384 and encodes ~1 Mpx in multiples of 8 */
    for (size_t i = 0; i < json_array_size(images); i++) {
        const json_t *img = json_array_get(images, i);
        kn_tensor t;
        char name[32];
        snprintf(name, sizeof name, "in.%s", json_string_value(json_object_get(img, "slot")));
        if (kn_st_get(f, name, &t, &err)) {
            CHECK(0, "%s: %s", file, err.msg);
            continue;
        }
        const int64_t W = t.ne[2], H = t.ne[1];
        check_size(file, img, "vl_resize_wh", W, H, plus ? 384.0 * 384.0 / (1024.0 * 1024.0) : 1.0, 1);
        check_size(file, img, "vae_resize_wh", W, H, 1.0, plus ? 8 : 1);
        const json_t *vae = json_object_get(img, "vae_resize_wh"), *crop = json_object_get(img, "vae_crop_wh");
        const json_t *off = json_object_get(img, "vae_crop_offset_xy");
        for (int d = 0; d < 2; d++) { /* VAE.encode: each side down to a multiple of 8, centred */
            int64_t n = json_integer_value(json_array_get(vae, d));
            CHECK(n / 8 * 8 == json_integer_value(json_array_get(crop, d)) &&
                      n % 8 / 2 == json_integer_value(json_array_get(off, d)),
                  "%s: VAE crop of %lld", file, (long long)n);
        }
    }
    /* tokens: Plus passes its own template; Edit the image template with an image, the plain one without */
    const json_t *templates = json_object_get(json_object_get(meta, "constants"), "templates");
    kn_qwen_family family = plus ? KN_QWEN_IMAGE_EDIT_PLUS : json_array_size(images) ? KN_QWEN_IMAGE_EDIT : KN_QWEN_IMAGE;
    kn_prompt_chunks chunks = {0};
    int rc = kn_prompt_qwen(bpe, family, NULL, text, strlen(text), &chunks, &err);
    int same = rc == KN_OK && (int64_t)chunks.n_tokens == ids.ne[1];
    for (size_t i = 0; same && i < chunks.n_tokens; i++) same = chunks.tokens[i].id == ((const int64_t *)ids.data)[i];
    CHECK(same, "%s (%s): the templated tokens are in.input_ids (%zu tokens, ComfyUI %lld) %s", file, node,
          chunks.n_tokens, (long long)ids.ne[1], rc ? err.msg : "");
    const char *key = plus ? "edit_plus_template" : json_array_size(images) ? "edit_template" : "qwen_image_template";
    const char *want = json_string_value(json_object_get(templates, key));
    CHECK(want && strcmp(kn_prompt_qwen_template_text(family), want) == 0, "%s: Kiln's %s is ComfyUI's", file, key);
    kn_prompt_chunks_free(&chunks);
    kn_st_close(f);
}

static void edit_fixture(void) {
    json_error_t je;
    json_t *meta = json_load_file(EDIT_FIXTURE "/meta.json", 0, &je);
    kn_bpe *bpe = NULL;
    kn_err err;
    CHECK(meta != NULL, "qwen_image_edit_text/meta.json: %s", je.text);
    CHECK(kn_bpe_load(&bpe, TOKENIZERS "/qwen25", &err) == KN_OK, "%s", err.msg);
    const json_t *cases = json_object_get(meta, "cases");
    for (size_t i = 0; bpe && i < json_array_size(cases); i++) edit_case(meta, json_array_get(cases, i), bpe);
    CHECK(json_array_size(cases) == 7, "7 cases");
    kn_bpe_free(bpe);
    json_decref(meta);
}

/* M-RoPE over three equal streams (text tokens) gives kn_rope_tables' 1-D tables bit for bit. */
static void mrope_text(void) {
    kn_ctx ctx;
    kn_tensor c1, s1, c3, s3;
    const int64_t L = 300, ne[2] = {L, 64};
    double pos1[300], pos3[900];
    for (int64_t l = 0; l < L; l++) pos1[l] = pos3[3 * l] = pos3[3 * l + 1] = pos3[3 * l + 2] = (double)l;
    const int dims[1] = {128}, sections[3] = {16, 24, 24};
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32) || kn_tensor_new(&c1, KN_F32, KN_DEV_CPU, 2, ne, &ctx.err) ||
        kn_tensor_new(&s1, KN_F32, KN_DEV_CPU, 2, ne, &ctx.err) ||
        kn_tensor_new(&c3, KN_F32, KN_DEV_CPU, 2, ne, &ctx.err) || kn_tensor_new(&s3, KN_F32, KN_DEV_CPU, 2, ne, &ctx.err)) {
        CHECK(0, "setup: %s", ctx.err.msg);
        return;
    }
    int rc = kn_rope_tables(&ctx, &c1, &s1, pos1, 1, dims, 1e6);
    if (!rc) rc = kn_mrope_tables(&ctx, &c3, &s3, pos3, 3, sections, 1e6);
    CHECK(rc == KN_OK && memcmp(c1.data, c3.data, kn_tensor_nbytes(&c1)) == 0 &&
              memcmp(s1.data, s3.data, kn_tensor_nbytes(&s1)) == 0,
          "M-RoPE with equal streams is the 1-D RoPE bit for bit %s", rc ? ctx.err.msg : "");
    /* a stream of its own: pair 20 (in h's section) follows stream 1 */
    pos3[3 * 5 + 1] = 42.0;
    rc = kn_mrope_tables(&ctx, &c3, &s3, pos3, 3, sections, 1e6);
    CHECK(rc == KN_OK && ((float *)c3.data)[5 * 64 + 20] == (float)cos(42.0 * pow(1e6, -40.0 / 128)) &&
              ((float *)c3.data)[5 * 64 + 15] == ((float *)c1.data)[5 * 64 + 15],
          "M-RoPE pair 20 of token 5 turns by its h position");
    kn_tensor_free(&c1);
    kn_tensor_free(&s1);
    kn_tensor_free(&c3);
    kn_tensor_free(&s3);
    kn_ctx_free(&ctx);
}

int main(void) {
    for (int c = 0; c < 3; c++) fixture_rows(c);
    smart_sizes();
    bad_images();
    edit_fixture();
    mrope_text();
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
