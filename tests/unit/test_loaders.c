/* Tests for CheckpointLoaderSimple and UNETLoader's fp8 weight_dtype
 * (nodes/models.c), on the tiny Flux.1 dev model set of
 * tests/fixtures/e2e/e2e_flux_dev, through the executor as `kiln run` runs it:
 *  - the split files bundled into one checkpoint with ComfyUI's prefixes
 *    render the split workflow's pixels exactly;
 *  - a checkpoint without text encoders: CLIP is None, the node taking it
 *    fails naming its input and why, and a prompt taking CLIP from
 *    DualCLIPLoader renders; checkpoints of a family or with parts Kiln does
 *    not run are refused at validation naming what was detected;
 *  - weight_dtype fp8_e4m3fn / _fast / fp8_e5m2 render exactly what the
 *    model whose file stores every tensor rounded to that dtype renders (and
 *    not the default's pixels: the store keys the dtype);
 *  - on the converted weight table (Flux and Qwen-Image): every slot holds
 *    its rounded value, a second conversion is refused, and a LoRA (runtime
 *    adapter + merged .diff) applies from the fp8 copies and removes
 *    bit-exactly.
 * Model files are written into $KN_TEST_TMP. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "graph/executor.h"
#include "graph/workflow.h"
#include "loras/lora.h"
#include "nodes/image_io.h"

#define FIX KN_SOURCE_DIR "/tests/fixtures/e2e/e2e_flux_dev"
#define DIT FIX "/models/diffusion_models/flux1-dev.safetensors"

static char work[1024], root[1100], out_dir[1100];

/* ---- model files ------------------------------------------------------------ */

/* Tensors gathered from open files under new names (for kn_st_write). */
typedef struct bundle {
    kn_tensor t[512];
    char *name[512];
    int n;
} bundle;

static void bundle_add(bundle *b, const kn_st_file *f, const char *prefix) {
    for (int i = 0; i < kn_st_count(f) && b->n < 512; i++) {
        const kn_tensor *s = kn_st_at(f, i);
        size_t len = strlen(prefix) + strlen(s->name) + 1;
        b->name[b->n] = malloc(len);
        snprintf(b->name[b->n], len, "%s%s", prefix, s->name);
        b->t[b->n] = *s;
        b->t[b->n].name = b->name[b->n];
        b->n++;
    }
}

static void bundle_free(bundle *b) {
    for (int i = 0; i < b->n; i++) free(b->name[i]);
}

/* Writes `ckpt_name` into checkpoints/ from the fixture files given as
 * {file, prefix} pairs (NULL-terminated), plus `extra` when not NULL. */
static int write_checkpoint(const char *ckpt_name, const char *const *parts, const kn_tensor *extra) {
    bundle b = {.n = 0};
    kn_st_file *f[8] = {NULL};
    kn_err err;
    int n = 0, rc = KN_OK;
    for (; parts[2 * n] && !rc; n++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/models/%s", FIX, parts[2 * n]);
        rc = kn_st_open(&f[n], path, &err);
        if (!rc) bundle_add(&b, f[n], parts[2 * n + 1]);
    }
    if (extra) b.t[b.n++] = *extra; /* its name is not the bundle's to free: dropped before bundle_free */
    char path[1300];
    snprintf(path, sizeof path, "%s/checkpoints/%s", root, ckpt_name);
    if (!rc) rc = kn_st_write(path, b.t, b.n, &err);
    b.n -= extra != NULL;
    CHECK(rc == KN_OK, "writing %s: %s", ckpt_name, err.msg);
    for (int i = 0; i < n; i++) kn_st_close(f[i]);
    bundle_free(&b);
    return rc;
}

/* The fixture DiT with every float tensor rounded to `dtype` (what a file
 * saved from ComfyUI's fp8 model holds), into diffusion_models/. */
static int write_rounded_dit(const char *name, kn_dtype dtype) {
    kn_st_file *f = NULL;
    kn_err err;
    bundle b = {.n = 0};
    int rc = kn_st_open(&f, DIT, &err);
    if (!rc) bundle_add(&b, f, "");
    for (int i = 0; !rc && i < b.n; i++) {
        size_t n = (size_t)kn_tensor_numel(&b.t[i]);
        float *wide = malloc(n * sizeof *wide + 1);
        void *narrow = malloc(n * kn_dtype_size(dtype) + 1);
        kn_to_f32(wide, b.t[i].data, b.t[i].dtype, n, b.t[i].scale);
        kn_from_f32(narrow, dtype, wide, n);
        free(wide);
        kn_tensor t = kn_tensor_make(dtype, KN_DEV_CPU, narrow, b.t[i].ndim, b.t[i].ne);
        t.name = b.t[i].name;
        b.t[i] = t;
    }
    char path[1300];
    snprintf(path, sizeof path, "%s/diffusion_models/%s", root, name);
    if (!rc) rc = kn_st_write(path, b.t, b.n, &err);
    CHECK(rc == KN_OK, "writing %s: %s", name, err.msg);
    for (int i = 0; f && i < b.n; i++) free(b.t[i].data);
    bundle_free(&b);
    kn_st_close(f);
    return rc;
}

static int make_root(void) {
    const char *base = getenv("KN_TEST_TMP");
    snprintf(work, sizeof work, "%s/test_loaders_work", base ? base : ".");
    snprintf(root, sizeof root, "%s/models", work);
    snprintf(out_dir, sizeof out_dir, "%s/output", work);
    char cmd[8000];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && mkdir -p '%s/checkpoints' '%s/diffusion_models' '%s' && "
             "ln -s '%s/models/text_encoders' '%s/models/vae' '%s/' && ln -s '%s' '%s/diffusion_models/'",
             work, root, root, out_dir, FIX, FIX, root, DIT, root);
    if (system(cmd)) return 1;
    static const char *const full[] = {"diffusion_models/flux1-dev.safetensors", "model.diffusion_model.",
                                       "text_encoders/clip_l.safetensors", "text_encoders.clip_l.transformer.",
                                       "text_encoders/t5xxl_fp16.safetensors", "text_encoders.t5xxl.transformer.",
                                       "vae/ae.safetensors", "vae.", NULL};
    static const char *const no_te[] = {"diffusion_models/flux1-dev.safetensors", "model.diffusion_model.",
                                        "vae/ae.safetensors", "vae.", NULL};
    /* T5 where CLIP-L belongs: detection names what it found */
    static const char *const swapped[] = {"diffusion_models/flux1-dev.safetensors", "model.diffusion_model.",
                                          "text_encoders/t5xxl_fp16.safetensors", "text_encoders.clip_l.transformer.",
                                          NULL};
    /* the VAE of Stable Diffusion (4 latent channels) under vae. */
    static const char *const dit_only[] = {"diffusion_models/flux1-dev.safetensors", "model.diffusion_model.", NULL};
    static float conv[8 * 4 * 3 * 3];
    const int64_t ne[4] = {8, 4, 3, 3};
    kn_tensor sd_vae = kn_tensor_make(KN_F32, KN_DEV_CPU, conv, 4, ne);
    sd_vae.name = "vae.decoder.conv_in.weight";
    return write_checkpoint("flux1-dev-full.safetensors", full, NULL) ||
           write_checkpoint("flux1-dev-no-te.safetensors", no_te, NULL) ||
           write_checkpoint("flux1-dev-swapped.safetensors", swapped, NULL) ||
           write_checkpoint("flux1-dev-sd-vae.safetensors", dit_only, &sd_vae) ||
           write_rounded_dit("flux1-dev-e4m3.safetensors", KN_F8_E4M3) ||
           write_rounded_dit("flux1-dev-e5m2.safetensors", KN_F8_E5M2);
}

/* A checkpoint of a family Kiln does not run: a Flux.2 key. */
static int write_flux2_checkpoint(void) {
    static float w[16 * 2];
    const int64_t ne[2] = {16, 2};
    kn_tensor t = kn_tensor_make(KN_F32, KN_DEV_CPU, w, 2, ne);
    t.name = "model.diffusion_model.double_stream_modulation_img.lin.weight";
    char path[1300];
    kn_err err;
    snprintf(path, sizeof path, "%s/checkpoints/flux2.safetensors", root);
    int rc = kn_st_write(path, &t, 1, &err);
    CHECK(rc == KN_OK, "%s", err.msg);
    return rc;
}

/* ---- running prompts ------------------------------------------------------- */

static json_t *base_prompt(void) {
    json_error_t e;
    json_t *p = json_load_file(FIX "/workflow.api.json", 0, &e);
    if (!p) fprintf(stderr, "%s\n", e.text);
    return p;
}

static json_t *inputs(json_t *p, const char *id) { return json_object_get(json_object_get(p, id), "inputs"); }

/* The base prompt with the three loaders replaced by CheckpointLoaderSimple
 * "4"; `clip_from_ckpt` 0 keeps DualCLIPLoader "11" for the CLIP. */
static json_t *ckpt_prompt(const char *ckpt, int clip_from_ckpt) {
    json_t *p = base_prompt();
    if (!p) return NULL;
    json_object_del(p, "12");
    json_object_del(p, "10");
    json_object_set_new(p, "4", json_pack("{s:s, s:{s:s}}", "class_type", "CheckpointLoaderSimple", "inputs",
                                          "ckpt_name", ckpt));
    json_object_set_new(inputs(p, "30"), "model", json_pack("[s,i]", "4", 0));
    json_object_set_new(inputs(p, "8"), "vae", json_pack("[s,i]", "4", 2));
    if (clip_from_ckpt) {
        json_object_del(p, "11");
        json_object_set_new(inputs(p, "6"), "clip", json_pack("[s,i]", "4", 1));
    }
    return p;
}

static json_t *unet_prompt(const char *unet, const char *weight_dtype) {
    json_t *p = base_prompt();
    if (!p) return NULL;
    json_object_set_new(inputs(p, "12"), "unet_name", json_string(unet));
    json_object_set_new(inputs(p, "12"), "weight_dtype", json_string(weight_dtype));
    return p;
}

/* Validates prompt p; returns the validation error body, NULL when it passed (*v filled). */
static json_t *validate(kn_executor *ex, kn_models *m, json_t *p, kn_validation *v) {
    kn_folder_lister lister = kn_models_lister(m);
    kn_node_env env = kn_executor_env(ex);
    kn_err err;
    memset(v, 0, sizeof *v);
    int st = kn_validate_prompt(p, NULL, &lister, &env, v, &err);
    if (st == KN_OK) return NULL;
    json_t *body = st == KN_ERR_INVALID ? kn_validation_body(v) : json_pack("{s:s}", "error", err.msg);
    kn_validation_free(v);
    return body;
}

/* Runs p (consumed) and loads SaveImage "9"'s picture into image; *error
 * gets the execution error (or validation body) when it fails. */
static int render(kn_executor *ex, kn_models *m, json_t *p, kn_tensor *image, json_t **error) {
    kn_validation v;
    kn_exec_result res = {0};
    kn_err err;
    memset(image, 0, sizeof *image);
    *error = NULL;
    if (!p) return 1;
    if ((*error = validate(ex, m, p, &v))) {
        json_decref(p);
        return 1;
    }
    int rc = kn_executor_run(ex, p, &v, NULL, NULL, &res, &err);
    if (rc) *error = res.error ? json_incref(res.error) : json_pack("{s:s}", "error", err.msg);
    const json_t *img = json_array_get(json_object_get(json_object_get(res.outputs, "9"), "images"), 0);
    if (!rc && img) {
        char path[2400];
        snprintf(path, sizeof path, "%s/%s/%s", out_dir, json_string_value(json_object_get(img, "subfolder")),
                 json_string_value(json_object_get(img, "filename")));
        kn_tensor mask = {0};
        rc = kn_image_load(path, image, &mask, &err);
        CHECK(rc == KN_OK, "%s", err.msg);
        kn_tensor_free(&mask);
    }
    kn_exec_result_free(&res);
    kn_validation_free(&v);
    json_decref(p);
    return rc;
}

static int same_pixels(const kn_tensor *a, const kn_tensor *b) {
    return a->data && b->data && kn_tensor_nbytes(a) == kn_tensor_nbytes(b) &&
           memcmp(a->data, b->data, kn_tensor_nbytes(a)) == 0;
}

static char *text_of(const json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    return s ? s : strdup("(none)");
}

/* ---- CheckpointLoaderSimple -------------------------------------------------- */

static void test_checkpoint(kn_executor *ex, kn_models *m, const kn_tensor *split) {
    kn_tensor img;
    json_t *error;
    CHECK(render(ex, m, ckpt_prompt("flux1-dev-full.safetensors", 1), &img, &error) == KN_OK && same_pixels(&img, split),
          "the bundled checkpoint renders the split files' pixels");
    kn_tensor_free(&img);
    json_decref(error);

    /* no text encoders: the CLIP output is None */
    CHECK(render(ex, m, ckpt_prompt("flux1-dev-no-te.safetensors", 0), &img, &error) == KN_OK && same_pixels(&img, split),
          "MODEL and VAE of a checkpoint without text encoders, CLIP from DualCLIPLoader");
    kn_tensor_free(&img);
    json_decref(error);
    CHECK(render(ex, m, ckpt_prompt("flux1-dev-no-te.safetensors", 1), &img, &error) != KN_OK, "taking its CLIP fails");
    const json_t *data = json_object_get(error, "data");
    const char *msg = json_string_value(json_object_get(data, "exception_message"));
    CHECK(msg && strcmp(json_string_value(json_object_get(data, "node_id")), "6") == 0 && strstr(msg, "'clip'") &&
              strstr(msg, "got None") && strstr(msg, "checkpoint"),
          "the node taking it fails, naming the input and why: %s", msg ? msg : "(none)");
    kn_tensor_free(&img);
    json_decref(error);

    /* validation names what it detected */
    static const struct {
        const char *ckpt, *says;
    } refused[] = {{"flux2.safetensors", "detected a Flux.2 diffusion model"},
                   {"flux1-dev-swapped.safetensors", "its text encoders: holds a T5 encoder"},
                   {"flux1-dev-sd-vae.safetensors", "its VAE: detected a Stable Diffusion VAE"}};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        kn_validation v;
        json_t *p = ckpt_prompt(refused[i].ckpt, 1), *body = validate(ex, m, p, &v);
        json_decref(p);
        const json_t *e = json_array_get(json_object_get(json_object_get(json_object_get(body, "node_errors"), "4"),
                                                         "errors"), 0);
        const char *details = json_string_value(json_object_get(e, "details"));
        char *s = text_of(body);
        CHECK(details && strncmp(details, "ckpt_name - ", 12) == 0 && strstr(details, refused[i].ckpt) &&
                  strstr(details, refused[i].says),
              "%s refused naming %s: %s", refused[i].ckpt, refused[i].says, s);
        free(s);
        if (!body) kn_validation_free(&v);
        json_decref(body);
    }
}

/* ---- UNETLoader weight_dtype -------------------------------------------------- */

static void test_weight_dtype(kn_executor *ex, kn_models *m, const kn_tensor *split) {
    static const struct {
        const char *weight_dtype, *file;
    } cases[] = {
        {"fp8_e4m3fn", "flux1-dev-e4m3.safetensors"},
        {"fp8_e4m3fn_fast", "flux1-dev-e4m3.safetensors"},
        {"fp8_e5m2", "flux1-dev-e5m2.safetensors"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_tensor a, b;
        json_t *ea, *eb;
        int ra = render(ex, m, unet_prompt("flux1-dev.safetensors", cases[i].weight_dtype), &a, &ea);
        int rb = render(ex, m, unet_prompt(cases[i].file, "default"), &b, &eb);
        char *sa = text_of(ea), *sb = text_of(eb);
        CHECK(ra == KN_OK && rb == KN_OK, "%s: %s / %s", cases[i].weight_dtype, sa, sb);
        CHECK(same_pixels(&a, &b), "%s renders as %s does", cases[i].weight_dtype, cases[i].file);
        CHECK(a.data && !same_pixels(&a, split), "%s is not the default's render", cases[i].weight_dtype);
        free(sa), free(sb);
        json_decref(ea), json_decref(eb);
        kn_tensor_free(&a), kn_tensor_free(&b);
    }
}

/* The fp8 table under LoRA: made from the converted slots, so merges start
 * from the fp8 copies and removal returns to them bit for bit. */
static void test_fp8_lora(void) {
    kn_st_file *f = NULL, *r = NULL;
    kn_dit *dit = NULL;
    kn_lora_model *lm = NULL;
    kn_lora *lora = NULL;
    kn_err err;
    char path[1300];
    snprintf(path, sizeof path, "%s/diffusion_models/flux1-dev-e4m3.safetensors", root);
    CHECK(kn_st_open(&f, DIT, &err) == KN_OK && kn_dit_load(&dit, f, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_st_open(&r, path, &err) == KN_OK, "%s", err.msg);
    if (!dit || !r) goto done;
    kn_weight_table *t = dit->weights;
    int n_bf16 = 0;
    for (int i = 0; i < t->n; i++) n_bf16 += t->slot[i].t->dtype == KN_BF16;
    CHECK(kn_weight_table_convert(t, KN_F8_E4M3, &err) == KN_OK, "%s", err.msg);
    int bad = 0;
    for (int i = 0; i < t->n; i++) {
        const kn_tensor *w = t->slot[i].t, *want = kn_st_find(r, t->slot[i].key);
        bad += !want || w->dtype != KN_F8_E4M3 || w->scale != 1.0f || w->data == kn_st_find(f, t->slot[i].key)->data ||
               memcmp(w->data, want->data, kn_tensor_nbytes(want)) != 0;
    }
    CHECK(n_bf16 == t->n && bad == 0, "%d of %d slots (%d bf16) are not the rounded file's bytes", bad, t->n, n_bf16);
    const void *qkv = kn_weight_table_find(t, "double_blocks.0.img_attn.qkv.weight")->t->data;
    CHECK(kn_weight_table_convert(t, KN_F8_E5M2, &err) == KN_ERR_INVALID &&
              kn_weight_table_find(t, "double_blocks.0.img_attn.qkv.weight")->t->data == qkv,
          "a second conversion is refused and changes nothing");

    /* a plain LoRA on one qkv (runtime adapter) and a .diff on its bias (merged) */
    const kn_tensor *w = kn_weight_table_find(t, "double_blocks.0.img_attn.qkv.weight")->t;
    const int64_t rows = w->ne[0], cols = w->ne[1], rank = 2;
    float *up = malloc(sizeof(float) * (size_t)(rows * rank)), *down = malloc(sizeof(float) * (size_t)(rank * cols)),
          *diff = malloc(sizeof(float) * (size_t)rows);
    for (int64_t i = 0; i < rows * rank; i++) up[i] = (float)((i * 7) % 11 - 5) / 64.0f;
    for (int64_t i = 0; i < rank * cols; i++) down[i] = (float)((i * 5) % 13 - 6) / 32.0f;
    for (int64_t i = 0; i < rows; i++) diff[i] = (float)(i % 5) / 8.0f;
    const int64_t ne_up[2] = {rows, rank}, ne_down[2] = {rank, cols};
    kn_tensor lt[3] = {kn_tensor_make(KN_F32, KN_DEV_CPU, up, 2, ne_up),
                       kn_tensor_make(KN_F32, KN_DEV_CPU, down, 2, ne_down),
                       kn_tensor_make(KN_F32, KN_DEV_CPU, diff, 1, &rows)};
    lt[0].name = "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight";
    lt[1].name = "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight";
    lt[2].name = "diffusion_model.double_blocks.0.img_attn.qkv.diff_b";
    char lpath[1300];
    snprintf(lpath, sizeof lpath, "%s/lora.safetensors", work);
    CHECK(kn_st_write(lpath, lt, 3, &err) == KN_OK, "%s", err.msg);
    free(up), free(down), free(diff);

    const kn_dit_family *fam = dit->family;
    CHECK(kn_lora_model_from_table(&lm, fam->lora_keys, fam->n_lora_keys, t, &err) == KN_OK &&
              kn_lora_load(&lora, lpath, lm, &err) == KN_OK,
          "%s", err.msg);
    if (!lora) goto done;
    const char *keys[2] = {"double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_attn.qkv.bias"};
    const void *at[2];
    void *bytes[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        const kn_tensor *s = kn_lora_model_slot(lm, keys[k]);
        at[k] = s->data;
        len[k] = kn_tensor_nbytes(s);
        bytes[k] = malloc(len[k]);
        memcpy(bytes[k], s->data, len[k]);
    }
    kn_lora_use use = {lora, 1.0};
    kn_lora_apply_stats st;
    CHECK(kn_lora_model_apply(lm, &use, 1, &st, &err) == KN_OK && st.attached == 1 && st.recomputed == 1,
          "applied: %s (attached %d, recomputed %d)", err.msg, st.attached, st.recomputed);
    /* the merged bias is computed from the fp8 copy: f32(fp8 bias) + diff */
    const kn_tensor *b = kn_lora_model_slot(lm, keys[1]);
    int bias_bad = b->data == at[1];
    for (int64_t i = 0; !bias_bad && i < rows; i++) {
        float base, got;
        kn_to_f32(&base, (const uint8_t *)at[1] + i, KN_F8_E4M3, 1, 1.0f);
        kn_to_f32(&got, (const char *)b->data + (size_t)i * kn_dtype_size(b->dtype), b->dtype, 1, 1.0f);
        bias_bad = got != base + (float)(i % 5) / 8.0f;
    }
    CHECK(!bias_bad, "the .diff merged onto the fp8 bias");
    kn_tensor eff;
    CHECK(kn_lora_model_weight(lm, keys[0], &eff, &err) == KN_OK, "%s", err.msg);
    int moved = 0;
    for (int64_t i = 0; eff.data && i < rows * cols; i++) {
        float base;
        kn_to_f32(&base, (const uint8_t *)at[0] + i, KN_F8_E4M3, 1, 1.0f);
        moved += ((const float *)eff.data)[i] != base;
    }
    CHECK(eff.dtype == KN_F32 && moved > 0, "the adapter changes the fp8 weight (%d elements)", moved);
    kn_tensor_free(&eff);
    CHECK(kn_lora_model_apply(lm, NULL, 0, &st, &err) == KN_OK && st.detached == 1 && st.restored == 1, "%s", err.msg);
    for (int k = 0; k < 2; k++) {
        const kn_tensor *s = kn_lora_model_slot(lm, keys[k]);
        CHECK(s->data == at[k] && s->dtype == KN_F8_E4M3 && memcmp(s->data, bytes[k], len[k]) == 0,
              "%s is the fp8 copy again, bit for bit", keys[k]);
        free(bytes[k]);
    }
    kn_lora_model_apply(lm, NULL, 0, NULL, &err);
done:
    kn_lora_free(lora);
    kn_lora_model_free(lm);
    kn_dit_free(dit); /* frees the fp8 copies with the table */
    kn_st_close(f);
    kn_st_close(r);
}

/* Any family's table: every slot of the Qwen-Image fixture DiT (f32 and
 * bf16 files) holds its file value rounded to e5m2, in the table's copy. */
static void test_convert_qwen(void) {
    static const char *const files[] = {KN_SOURCE_DIR "/tests/fixtures/qwen_image_dit/model.safetensors",
                                        KN_SOURCE_DIR "/tests/fixtures/qwen_image_dit/model.bf16.safetensors"};
    const kn_dit_consts rope = {{4, 6, 6}, 0.0, 0}; /* the fixture's RoPE split */
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        kn_st_file *f = NULL;
        kn_dit *dit = NULL;
        const kn_dit_family *fam;
        const char *prefix;
        kn_err err;
        CHECK(kn_st_open(&f, files[k], &err) == KN_OK && kn_dit_detect(f, &fam, &prefix, &err) == KN_OK &&
                  fam->load(&dit, f, prefix, &rope, &err) == KN_OK && kn_weight_table_convert(dit->weights, KN_F8_E5M2,
                                                                                              &err) == KN_OK,
              "%s: %s", files[k], err.msg);
        int bad = 0, n = dit ? dit->weights->n : 0;
        for (int i = 0; i < n; i++) {
            const kn_weight_slot *s = &dit->weights->slot[i];
            const kn_tensor *src = kn_st_find(f, s->key);
            size_t len = (size_t)kn_tensor_numel(src);
            float *wide = malloc(len * sizeof *wide + 1);
            uint8_t *want = malloc(len + 1);
            kn_to_f32(wide, src->data, src->dtype, len, 1.0f);
            kn_from_f32(want, KN_F8_E5M2, wide, len);
            bad += s->t->dtype != KN_F8_E5M2 || memcmp(s->t->data, want, len) != 0;
            free(wide), free(want);
        }
        CHECK(n > 0 && bad == 0, "%s: %d of %d slots are not their rounded values", files[k], bad, n);
        kn_dit_free(dit);
        kn_st_close(f);
    }
}

int main(void) {
    kn_models *m = NULL;
    kn_executor *ex = NULL;
    kn_err err;
    if (make_root() || write_flux2_checkpoint()) {
        fprintf(stderr, "cannot set up %s\n", work);
        return 1;
    }
    CHECK(kn_models_new(&m, root, work, &err) == KN_OK, "%s", err.msg);
    kn_executor_config cfg = {m, out_dir, out_dir, work, KN_PREC_FP32, NULL};
    CHECK(m && kn_executor_new(&ex, &cfg, &err) == KN_OK, "%s", err.msg);
    if (ex) {
        kn_tensor split;
        json_t *error;
        int rc = render(ex, m, base_prompt(), &split, &error);
        char *s = text_of(error);
        CHECK(rc == KN_OK, "the split files render: %s", s);
        free(s);
        json_decref(error);
        if (!rc) {
            test_checkpoint(ex, m, &split);
            test_weight_dtype(ex, m, &split);
        }
        kn_tensor_free(&split);
    }
    test_fp8_lora();
    test_convert_qwen();
    kn_executor_free(ex);
    kn_models_free(m);
    printf("test_loaders: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
