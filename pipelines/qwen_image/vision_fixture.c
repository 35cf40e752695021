/* Fixture runners for "qwen25_vl_vision" (Qwen2.5-VL's vision tower) and
 * "qwen_image_edit_text" (the Qwen-Image-Edit text encoder: images and
 * tokens to conditioning), against ComfyUI's.
 *
 * qwen25_vl_vision: the case's in.image goes through Kiln's own
 * preprocessing (its patch grid must be in.grid_thw;
 * tests/unit/test_qwen_vision.c compares the rows with in.pixel_values),
 * then the tower.
 * qwen_image_edit_text: each image input is area-resized to the size the
 * node chose (the case's vl_resize_wh; tests/unit/test_qwen_edit.c checks
 * the nodes' size rules against these sizes), then in.input_ids (ComfyUI's
 * tokens; the templates are checked by the same unit test) go through
 * kn_llm_vl_forward and the template drop.
 * The tiny models' head counts, eps, theta, window and M-RoPE sections come
 * from meta.json "config" ("text" and "vision" for the encoder); the sizes
 * derived from the weights are checked against the same config. */
#include <jansson.h>
#include <string.h>

#include "kernels/ops_image.h"
#include "pipelines/common/llm_fixture.h"
#include "pipelines/fixture.h"
#include "pipelines/qwen_image/text.h"
#include "pipelines/qwen_image/vision.h"

static double num(const json_t *cfg, const char *key, double dflt) {
    const json_t *v = json_object_get(cfg, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static int vision_load(const json_t *cfg, const kn_st_file *f, kn_qwen_vision *m, kn_err *err) {
    kn_qwen_vision_consts k = kn_qwen25vl_vision;
    k.heads = (int64_t)num(cfg, "num_heads", (double)k.heads);
    k.eps = (float)num(cfg, "rms_norm_eps", k.eps);
    k.rope_theta = num(cfg, "rope_theta", k.rope_theta);
    k.window = (int64_t)num(cfg, "window_size", (double)k.window);
    KN_TRY(kn_qwen_vision_load(m, f, "visual.", &k, err));
    const struct {
        const char *key;
        int64_t got;
    } v[] = {{"hidden_size", m->hidden},
             {"intermediate_size", m->intermediate},
             {"depth", m->depth},
             {"out_hidden_size", m->out_dim}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        double want = num(cfg, v[i].key, (double)v[i].got);
        if (want != (double)v[i].got) {
            kn_qwen_vision_free(m);
            return kn_fail(err, KN_ERR_SHAPE, "vision tower: derived %s = %lld but meta.json config says %g",
                           v[i].key, (long long)v[i].got, want);
        }
    }
    return KN_OK;
}

static int check_grid(const kn_fixture_case *c, int64_t gh, int64_t gw, kn_err *err) {
    kn_tensor g;
    KN_TRY(kn_fixture_input(c, "grid_thw", &g, err));
    const int64_t *v = g.data;
    if (g.dtype != KN_I64 || kn_tensor_numel(&g) != 3 || v[0] != 1 || v[1] != gh || v[2] != gw)
        return kn_fail(err, KN_ERR_SHAPE, "preprocessing gives a %lldx%lld patch grid; in.grid_thw differs",
                       (long long)gh, (long long)gw);
    return KN_OK;
}

int kn_qwen_vision_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_st_file *f = NULL;
    kn_qwen_vision m;
    kn_arena *arena = NULL;
    kn_tensor image, rows, out;
    int64_t gh = 0, gw = 0;
    memset(&m, 0, sizeof m);
    int rc = kn_fixture_open_weights(c, &f, err);
    if (!rc) rc = vision_load(json_object_get(c->meta, "config"), f, &m, err);
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    if (!rc) rc = kn_fixture_input(c, "image", &image, err);
    if (!rc) rc = kn_qwen_vision_rows(arena, &image, &rows, &gh, &gw, err);
    if (!rc) rc = check_grid(c, gh, gw, err);
    if (!rc) rc = kn_arena_tensor(arena, &out, KN_F32, 2, (int64_t[]){gh * gw / 4, m.out_dim}, err);
    kn_fixture_debug_sink sink = {res, err};
    if (!rc && kn_qwen_vision_forward(c->ctx, &m, arena, &rows, gh, gw, &out, kn_fixture_emit_debug, &sink)) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.image_embeds", &out, err);
    if (rc) kn_err_wrap(err, "qwen25_vl_vision fixture");
    kn_arena_destroy(arena);
    kn_qwen_vision_free(&m);
    kn_st_close(f);
    return rc;
}

/* ---- qwen_image_edit_text ------------------------------------------------------------ */

/* "position_ids" is an output of the case; the rest are intermediates. */
static int emit_edit(void *user, const char *name, const kn_tensor *t) {
    kn_fixture_debug_sink *s = user;
    if (strcmp(name, "position_ids") == 0) return kn_fixture_emit(s->res, "out.position_ids", t, s->err);
    return kn_fixture_emit_debug(s, name, t);
}

/* The case's images as the node handed them to the tokenizer: in.<slot> area-resized to vl_resize_wh. */
static int node_images(const kn_fixture_case *c, kn_arena *a, kn_tensor *img, int max, int *n, kn_err *err) {
    const json_t *list = json_object_get(c->info, "images");
    *n = 0;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *e = json_array_get(list, i), *wh = json_object_get(e, "vl_resize_wh");
        const char *slot = json_string_value(json_object_get(e, "slot"));
        if (*n == max || !slot || json_array_size(wh) != 2)
            return kn_fail(err, KN_ERR_FORMAT, "meta.json: image %zu: expected a slot and vl_resize_wh (at most %d)",
                           i, max);
        int64_t w = json_integer_value(json_array_get(wh, 0)), h = json_integer_value(json_array_get(wh, 1));
        kn_tensor src, from, to;
        KN_TRY(kn_fixture_input(c, slot, &src, err));
        const int64_t H = src.ne[1], W = src.ne[2], C = src.ne[3];
        KN_TRY(kn_arena_tensor(a, &img[*n], KN_F32, 4, (int64_t[]){1, h, w, C}, err));
        KN_TRY(kn_tensor_view(&from, &src, 4, (int64_t[]){1, C, H, W}, (int64_t[]){H * W * C, 1, W * C, C}, 0, err));
        KN_TRY(kn_tensor_view(&to, &img[*n], 4, (int64_t[]){1, C, h, w}, (int64_t[]){h * w * C, 1, w * C, C}, 0, err));
        KN_TRY(kn_resample(&to, &from, KN_RESAMPLE_AREA, err));
        (*n)++;
    }
    return KN_OK;
}

/* Also checks the drop index against the case's template_end. */
static int emit_conditioning(const kn_fixture_case *c, kn_fixture_results *res, kn_arena *a, const kn_tensor *ids,
                             const kn_tensor *hidden, kn_err *err) {
    kn_tensor cond, mask;
    KN_TRY(kn_qwen_image_conditioning(a, ids, hidden, NULL, &cond, &mask, err));
    const json_t *te = json_object_get(c->info, "template_end");
    int64_t got = hidden->ne[1] - cond.ne[1];
    if (!json_is_integer(te) || json_integer_value(te) != got)
        return kn_fail(err, KN_ERR_INVALID, "template_end %lld, meta.json says %lld", (long long)got,
                       (long long)json_integer_value(te));
    return kn_fixture_emit(res, "out.conditioning", &cond, err);
}

#define MAX_IMAGES 3

int kn_qwen_edit_text_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    const json_t *cfg = json_object_get(c->meta, "config"), *text = json_object_get(cfg, "text");
    kn_st_file *f = NULL;
    kn_llm llm;
    kn_qwen_vision tower;
    kn_arena *arena = NULL;
    kn_tensor ids, images[MAX_IMAGES], hidden;
    int n = 0, mrope[3] = {0};
    memset(&llm, 0, sizeof llm);
    memset(&tower, 0, sizeof tower);
    const json_t *dims = json_object_get(text, "rope_dims");
    for (size_t i = 0; i < 3 && i < json_array_size(dims); i++) mrope[i] = (int)json_integer_value(json_array_get(dims, i));
    int rc = kn_fixture_open_weights(c, &f, err);
    if (!rc) rc = kn_llm_fixture_load(text, &kn_qwen25vl_7b, f, &llm, err);
    if (!rc) rc = vision_load(json_object_get(cfg, "vision"), f, &tower, err);
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    if (!rc) rc = kn_fixture_input(c, "input_ids", &ids, err);
    if (!rc) rc = node_images(c, arena, images, MAX_IMAGES, &n, err);
    const kn_tensor *list[MAX_IMAGES] = {&images[0], &images[1], &images[2]};
    const kn_llm_vl vl = {&llm, &kn_qwen25vl_vision_encoder, &tower, KN_QWEN_IMAGE_PAD, mrope};
    kn_fixture_debug_sink sink = {res, err};
    if (!rc && kn_llm_vl_forward(c->ctx, &vl, arena, &ids, list, n, &(kn_llm_outputs){&hidden, NULL, NULL, 0},
                                 emit_edit, &sink)) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "debug.hidden_states", &hidden, err);
    if (!rc) rc = emit_conditioning(c, res, arena, &ids, &hidden, err);
    if (rc) kn_err_wrap(err, "qwen_image_edit_text fixture");
    kn_arena_destroy(arena);
    kn_qwen_vision_free(&tower);
    kn_llm_free(&llm);
    kn_st_close(f);
    return rc;
}
