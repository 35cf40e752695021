/* Tests for the node registry (nodes/registry.h), UI->API workflow conversion
 * (graph/workflow.h), ComfyUI validation and execution order
 * (graph/validate.h) and the JSON helpers behind their output (graph/json.h).
 *
 * Ground truth is tests/fixtures/workflows/ (a copy of shared/workflows):
 * every *.ui.json must convert to its *.api.json twin, every API twin must
 * validate against the schemas (classes Kiln cannot run included), the
 * registry must reproduce object_info.json for every class it lists there,
 * GET /object_info must list exactly the classes Kiln runs, each as in
 * object_info.json, and the execution order must match the sequences the notes
 * derived from ComfyUI's ExecutionList. Broken prompts must yield ComfyUI's
 * error types naming the node and input; thousands of mutated workflows must
 * yield either a prompt or a shaped error, never a crash (run this under the
 * KN_SANITIZE build). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "graph/validate.h"
#include "graph/workflow.h"
#include "nodes/node.h"
#include "nodes/registry.h"
#include "check.h"

#define FIXTURES KN_SOURCE_DIR "/tests/fixtures/workflows/"

static const char *const workflows[] = {
    "qwen_image_t2i", "qwen_image_lora", "qwen_image_edit", "qwen_image_edit_2509", "flux_dev_t2i",
    "flux_schnell_t2i", "flux_lora", "z_image_turbo_t2i", "z_image_turbo_subgraph",
};
#define N_WORKFLOWS (sizeof workflows / sizeof workflows[0])

static json_t *load_json(const char *name, size_t flags) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    json_error_t e;
    json_t *j = json_load_file(path, flags, &e);
    if (!j) {
        fprintf(stderr, "cannot load %s: %s\n", path, e.text);
        exit(1);
    }
    return j;
}

static char *read_text(const char *name, size_t *len) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0) {
        perror(path);
        exit(1);
    }
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        exit(1);
    }
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static void show(const char *label, const json_t *v) {
    char *s = kn_json_dumps(v, 0);
    fprintf(stderr, "  %s: %.3000s\n", label, s ? s : "(null)");
    free(s);
}

/* ---- a model-folder lister serving the file lists object_info.json shows ---- */

static json_t *folders; /* folder -> array of file names */

static int list_folder(void *user, const char *folder, json_t *names, kn_err *err) {
    (void)err;
    json_t *files = json_object_get(user, folder);
    return files ? json_array_extend(names, files) == 0 ? KN_OK : KN_ERR_NOMEM : KN_OK;
}

static void build_folders(const json_t *info) {
    static const struct {
        const char *folder, *cls, *input;
    } src[] = {
        {"diffusion_models", "UNETLoader", "unet_name"}, {"text_encoders", "CLIPLoader", "clip_name"},
        {"vae", "VAELoader", "vae_name"},                {"loras", "LoraLoader", "lora_name"},
        {"checkpoints", "CheckpointLoaderSimple", "ckpt_name"}, {"input", "LoadImage", "image"},
    };
    folders = json_pack("{s:[s, s]}", "input_latents", "a.latent", "b.latent");
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
        json_t *spec = json_object_get(json_object_get(json_object_get(json_object_get(info, src[i].cls), "input"),
                                                       "required"),
                                       src[i].input);
        json_t *files = json_deep_copy(json_array_get(spec, 0));
        /* VAELoader appends "pixel_space" itself: the folder holds the rest. */
        for (size_t k = json_array_size(files); k-- > 0;)
            if (strcmp(json_string_value(json_array_get(files, k)), "pixel_space") == 0) json_array_remove(files, k);
        json_object_set_new(folders, src[i].folder, files);
    }
}

static kn_folder_lister lister = {.list = list_folder};

/* ---- JSON comparison: numbers by value (object_info holds 2^64 - 1, which
 * jansson can only read as a real), object keys in the same order ---------- */

static int same_json(const json_t *a, const json_t *b, int key_order) {
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if (json_typeof(a) != json_typeof(b)) return 0;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same_json(json_array_get(a, i), json_array_get(b, i), key_order)) return 0;
        return 1;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b)) return 0;
        void *ib = json_object_iter((json_t *)b);
        const char *key;
        json_t *va;
        json_object_foreach((json_t *)a, key, va) {
            if (key_order && strcmp(key, json_object_iter_key(ib)) != 0) return 0;
            json_t *vb = json_object_get(b, key);
            if (!vb || !same_json(va, vb, key_order)) return 0;
            ib = json_object_iter_next((json_t *)b, ib);
        }
        return 1;
    }
    return json_equal(a, b);
}

/* ---- registry ------------------------------------------------------------------ */

/* ComfyUI's GET /object_info entries for the classes object_info.json lacks,
 * written out from the anchor's source (comfy/nodes/base_nodes.py SaveLatent
 * and LoadLatent, comfy/cmd/server.py node_info, at 87606c5f) with the test
 * lister's two .latent files: no display names (the class name is shown),
 * SEARCH_ALIASES, the prompt and extra_pnginfo hidden inputs; and
 * ReferenceLatent (comfy_extras/nodes_edit_model.py, an io.ComfyNode: the V3
 * layout, every key present). */
static const char extra_object_info[] =
    "{\"LoadLatent\": {\"input\": {\"required\": {\"latent\": [[\"a.latent\", \"b.latent\"]]}},"
    " \"input_order\": {\"required\": [\"latent\"]}, \"is_input_list\": false, \"output\": [\"LATENT\"],"
    " \"output_is_list\": [false], \"output_name\": [\"LATENT\"], \"name\": \"LoadLatent\","
    " \"display_name\": \"LoadLatent\", \"description\": \"\", \"python_module\": \"nodes\","
    " \"category\": \"_for_testing\", \"output_node\": false, \"search_aliases\": [\"import latent\", \"open latent\"]},"
    " \"SaveLatent\": {\"input\": {\"required\": {\"samples\": [\"LATENT\"],"
    " \"filename_prefix\": [\"STRING\", {\"default\": \"latents/ComfyUI\"}]},"
    " \"hidden\": {\"prompt\": \"PROMPT\", \"extra_pnginfo\": \"EXTRA_PNGINFO\"}},"
    " \"input_order\": {\"required\": [\"samples\", \"filename_prefix\"], \"hidden\": [\"prompt\", \"extra_pnginfo\"]},"
    " \"is_input_list\": false, \"output\": [], \"output_is_list\": [], \"output_name\": [], \"name\": \"SaveLatent\","
    " \"display_name\": \"SaveLatent\", \"description\": \"\", \"python_module\": \"nodes\","
    " \"category\": \"_for_testing\", \"output_node\": true, \"search_aliases\": [\"export latent\"]},"
    " \"ReferenceLatent\": {\"input\": {\"required\": {\"conditioning\": [\"CONDITIONING\", {}]},"
    " \"optional\": {\"latent\": [\"LATENT\", {}]}}, \"input_order\": {\"required\": [\"conditioning\"],"
    " \"optional\": [\"latent\"]}, \"is_input_list\": false, \"output\": [\"CONDITIONING\"],"
    " \"output_is_list\": [false], \"output_name\": [\"CONDITIONING\"], \"output_tooltips\": [null],"
    " \"output_matchtypes\": null, \"name\": \"ReferenceLatent\", \"display_name\": null, \"description\":"
    " \"This node sets the guiding latent for an edit model. If the model supports it you can chain multiple to"
    " set multiple reference images.\", \"python_module\": \"comfy_extras.nodes_edit_model\", \"category\":"
    " \"advanced/conditioning/edit_models\", \"output_node\": false, \"deprecated\": false, \"experimental\":"
    " false, \"dev_only\": false, \"api_node\": false, \"price_badge\": null, \"search_aliases\": null}}";

/* EasyCache and LazyCache (comfy_extras/nodes_easycache.py, io.ComfyNodes with
 * advanced inputs: the V3 layout, each input's tooltip and "advanced" before
 * its widget keys), written out from the source. */
static const char step_cache_object_info[] =
    "{\"EasyCache\": {\"input\": {\"required\": {\"model\": [\"MODEL\", {\"tooltip\": \"The model to add EasyCache to.\"}], "
    "\"reuse_threshold\": [\"FLOAT\", {\"tooltip\": \"The threshold for reusing cached steps.\", \"advanced\": true, "
    "\"default\": 0.2, \"min\": 0.0, \"max\": 3.0, \"step\": 0.01}], \"start_percent\": [\"FLOAT\", "
    "{\"tooltip\": \"The relative sampling step to begin use of EasyCache.\", \"advanced\": true, \"default\": 0.15, "
    "\"min\": 0.0, \"max\": 1.0, \"step\": 0.01}], \"end_percent\": [\"FLOAT\", "
    "{\"tooltip\": \"The relative sampling step to end use of EasyCache.\", \"advanced\": true, \"default\": 0.95, "
    "\"min\": 0.0, \"max\": 1.0, \"step\": 0.01}], \"verbose\": [\"BOOLEAN\", "
    "{\"tooltip\": \"Whether to log verbose information.\", \"advanced\": true, \"default\": false}]}}, "
    "\"input_order\": {\"required\": [\"model\", \"reuse_threshold\", \"start_percent\", \"end_percent\", \"verbose\"]}, "
    "\"is_input_list\": false, \"output\": [\"MODEL\"], \"output_is_list\": [false], \"output_name\": [\"MODEL\"], "
    "\"output_tooltips\": [\"The model with EasyCache.\"], \"output_matchtypes\": null, \"name\": \"EasyCache\", "
    "\"display_name\": \"EasyCache\", \"description\": \"Native EasyCache implementation.\", "
    "\"python_module\": \"comfy_extras.nodes_easycache\", \"category\": \"advanced/debug\", \"output_node\": false, "
    "\"deprecated\": false, \"experimental\": true, \"dev_only\": false, \"api_node\": false, \"price_badge\": null, "
    "\"search_aliases\": null}, \"LazyCache\": {\"input\": {\"required\": {\"model\": [\"MODEL\", "
    "{\"tooltip\": \"The model to add LazyCache to.\"}], \"reuse_threshold\": [\"FLOAT\", "
    "{\"tooltip\": \"The threshold for reusing cached steps.\", \"advanced\": true, \"default\": 0.2, \"min\": 0.0, "
    "\"max\": 3.0, \"step\": 0.01}], \"start_percent\": [\"FLOAT\", "
    "{\"tooltip\": \"The relative sampling step to begin use of LazyCache.\", \"advanced\": true, \"default\": 0.15, "
    "\"min\": 0.0, \"max\": 1.0, \"step\": 0.01}], \"end_percent\": [\"FLOAT\", "
    "{\"tooltip\": \"The relative sampling step to end use of LazyCache.\", \"advanced\": true, \"default\": 0.95, "
    "\"min\": 0.0, \"max\": 1.0, \"step\": 0.01}], \"verbose\": [\"BOOLEAN\", "
    "{\"tooltip\": \"Whether to log verbose information.\", \"advanced\": true, \"default\": false}]}}, "
    "\"input_order\": {\"required\": [\"model\", \"reuse_threshold\", \"start_percent\", \"end_percent\", \"verbose\"]}, "
    "\"is_input_list\": false, \"output\": [\"MODEL\"], \"output_is_list\": [false], \"output_name\": [\"MODEL\"], "
    "\"output_tooltips\": [\"The model with LazyCache.\"], \"output_matchtypes\": null, \"name\": \"LazyCache\", "
    "\"display_name\": \"LazyCache\", "
    "\"description\": \"A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works worse than EasyCache, "
    "but better in some rare cases AND universal compatibility with everything in ComfyUI.\", "
    "\"python_module\": \"comfy_extras.nodes_easycache\", \"category\": \"advanced/debug\", \"output_node\": false, "
    "\"deprecated\": false, \"experimental\": true, \"dev_only\": false, \"api_node\": false, \"price_badge\": null, "
    "\"search_aliases\": null}}";

/* Compares each class of info with the registry's object_info; returns how many were found. */
static int compare_object_info(const json_t *info) {
    kn_err err;
    const char *name;
    json_t *expected;
    int listed = 0;
    json_object_foreach((json_t *)info, name, expected) {
        const kn_node_class *cls = kn_registry_find(name);
        CHECK(cls != NULL, "object_info class %s is not registered", name);
        if (!cls) continue;
        listed++;
        kn_err_clear(&err);
        json_t *got = kn_registry_object_info(cls, &lister, &err);
        CHECK(got && same_json(got, expected, 1), "%s: object_info differs", name);
        if (got && !same_json(got, expected, 1)) {
            show("kiln", got);
            show("comfy", expected);
        }
        json_decref(got);
    }
    return listed;
}

static void test_registry(const json_t *info) {
    kn_err err;
    json_t *extra = json_loads(extra_object_info, 0, NULL), *caches = json_loads(step_cache_object_info, 0, NULL);
    CHECK(extra != NULL && caches != NULL, "extra_object_info and step_cache_object_info parse");
    int listed = compare_object_info(info) + compare_object_info(extra) + compare_object_info(caches);
    /* ImageScale: the one class the brief needs beyond those ComfyUI's entries above cover. */
    CHECK(kn_registry_count() == listed + 1, "registry has %d classes, object_info %d", kn_registry_count(), listed);
    const kn_node_class *scale = kn_registry_find("ImageScale"), *ref = kn_registry_find("ReferenceLatent");
    CHECK(scale && scale->n_inputs == 5 && strcmp(scale->inputs[4].name, "crop") == 0, "ImageScale schema");
    CHECK(ref && ref->n_inputs == 2 && ref->inputs[1].section == KN_SECTION_OPTIONAL, "ReferenceLatent schema");
    for (int i = 0; i < kn_registry_count(); i++) {
        const kn_node_class *c = kn_registry_at(i);
        for (int k = 1; k < c->n_inputs; k++)
            CHECK(c->inputs[k].section >= c->inputs[k - 1].section, "%s: optional input before a required one", c->name);
        CHECK(c->impl == NULL, "%s: impl set before the executor exists", c->name);
    }
    CHECK(kn_registry_find("Nope") == NULL && kn_registry_find(NULL) == NULL, "unknown classes");

    /* GET /object_info lists exactly the classes Kiln runs, each as ComfyUI does. */
    json_t *served = kn_node_object_info(NULL, &lister, &err), *got, *expected;
    const char *name;
    int runs = 0, absent = 0;
    for (int i = 0; i < kn_registry_count(); i++) runs += kn_node_exec_find(kn_registry_at(i)->name) != NULL;
    CHECK(served && (int)json_object_size(served) == runs, "object_info lists the %d classes that run", runs);
    json_object_foreach(served, name, got) {
        json_t *want = json_object_get(info, name);
        if (!want) want = json_object_get(extra, name);
        if (!want) want = json_object_get(caches, name);
        CHECK(kn_node_exec_find(name) != NULL, "%s is listed but cannot run", name);
        /* ImageScale is the one class beyond the entries above */
        CHECK(want ? same_json(got, want, 1) : strcmp(name, "ImageScale") == 0, "%s: served object_info differs", name);
    }
    const char *unrunnable = NULL;
    json_object_foreach((json_t *)info, name, expected) {
        if (kn_node_exec_find(name)) continue;
        absent++;
        unrunnable = name;
        CHECK(!json_object_get(served, name), "%s cannot run but is listed", name);
    }
    CHECK(json_object_get(served, "CFGNorm") && json_object_get(served, "KSampler") &&
              json_object_get(served, "LoadImage") && json_object_get(served, "EasyCache") &&
              json_object_get(served, "LazyCache"),
          "the fixture's classes Kiln runs are listed (%d it cannot run are left out)", absent);
    json_decref(served);
    json_decref(extra);
    json_decref(caches);
    /* a class Kiln cannot run gets {} (as long as there is one left) */
    json_t *one = unrunnable ? kn_node_object_info(unrunnable, &lister, &err) : NULL;
    CHECK(!unrunnable || (one && json_object_size(one) == 0), "object_info/%s: {}", unrunnable);
    json_decref(one);
    one = kn_node_object_info("KSampler", &lister, &err);
    CHECK(one && json_object_size(one) == 1 && same_json(json_object_get(one, "KSampler"), json_object_get(info, "KSampler"), 1),
          "object_info/KSampler");
    json_decref(one);

    /* Without a lister, file-name choices are simply absent. */
    json_t *bare = kn_registry_object_info(kn_registry_find("VAELoader"), NULL, &err);
    json_t *vae = json_array_get(json_object_get(json_object_get(json_object_get(bare, "input"), "required"), "vae_name"), 0);
    CHECK(json_array_size(vae) == 1 && strcmp(json_string_value(json_array_get(vae, 0)), "pixel_space") == 0,
          "VAELoader choices without a lister");
    json_decref(bare);
}

/* ---- conversion of every fixture pair -------------------------------------------- */

static json_t *convert_file(const char *file, json_t **error, kn_err *err) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "%s", file);
    json_t *prompt = NULL;
    kn_err_clear(err);
    kn_workflow_load_file(path, &lister, &prompt, error, err);
    return prompt;
}

static void test_fixture_pairs(void) {
    for (size_t i = 0; i < N_WORKFLOWS; i++) {
        char ui_name[128], api_name[128];
        snprintf(ui_name, sizeof ui_name, "%s.ui.json", workflows[i]);
        snprintf(api_name, sizeof api_name, "%s.api.json", workflows[i]);
        kn_err err;
        json_t *error = NULL;
        json_t *got = convert_file(ui_name, &error, &err);
        json_t *want = load_json(api_name, 0);
        CHECK(got != NULL && error == NULL, "%s: conversion failed: %s", ui_name, err.msg);
        CHECK(got && json_equal(got, want), "%s: converted prompt differs from %s", ui_name, api_name);
        if (got && !json_equal(got, want)) {
            show("kiln", got);
            show("comfy", want);
        }
        json_t *api = convert_file(api_name, &error, &err);
        CHECK(api && json_equal(api, want), "%s: API file must load unchanged", api_name);
        json_decref(api);
        json_decref(got);
        json_decref(want);
        json_decref(error);
    }
}

/* ---- validation of every API twin and execution order ---------------------------- */

static int order_is(const json_t *order, const char *const *ids, size_t n) {
    if (json_array_size(order) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(json_string_value(json_array_get(order, i)), ids[i]) != 0) return 0;
    return 1;
}

static void test_fixture_validation(void) {
    for (size_t i = 0; i < N_WORKFLOWS; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.api.json", workflows[i]);
        json_t *prompt = load_json(name, 0);
        for (int with_lister = 0; with_lister < 2; with_lister++) {
            json_t *copy = json_deep_copy(prompt);
            kn_validation v;
            kn_err err;
            kn_err_clear(&err);
            int st = kn_validate_prompt(copy, NULL, with_lister ? &lister : NULL, NULL, &v, &err);
            CHECK(st == KN_OK && v.error == NULL && json_object_size(v.node_errors) == 0, "%s: validation: %s", name,
                  err.msg);
            if (st == KN_ERR_INVALID) {
                json_t *body = kn_validation_body(&v);
                show("body", body);
                json_decref(body);
            }
            CHECK(json_array_size(v.outputs) == 1, "%s: one output (SaveImage)", name);
            /* every node of these prompts feeds the SaveImage */
            CHECK(json_array_size(v.order) == json_object_size(prompt), "%s: %zu of %zu nodes ordered", name,
                  json_array_size(v.order), json_object_size(prompt));
            if (strcmp(workflows[i], "qwen_image_t2i") == 0) {
                static const char *const want[] = {"39", "58", "38", "7", "6", "37", "66", "3", "8", "60"};
                CHECK(order_is(v.order, want, 10), "qwen_image_t2i execution order (notes §7)");
            }
            if (strcmp(workflows[i], "flux_dev_t2i") == 0) {
                static const char *const want[] = {"10", "27", "12", "30", "17", "16", "11",
                                                   "6",  "26", "22", "25", "13", "8",  "9"};
                CHECK(order_is(v.order, want, 14), "flux_dev_t2i execution order (notes §7)");
            }
            kn_validation_free(&v);
            json_decref(copy);
        }
        json_decref(prompt);
    }
}

/* ---- broken prompts ------------------------------------------------------------------- */

/* Validates and returns the body (NULL when accepted); *status gets the code. */
static json_t *validate_body(json_t *prompt, const json_t *targets, int *status, json_t **order) {
    kn_validation v;
    kn_err err;
    kn_err_clear(&err);
    *status = kn_validate_prompt(prompt, targets, &lister, NULL, &v, &err);
    CHECK(*status == KN_OK || err.msg[0], "a rejection must say why");
    json_t *body = *status == KN_OK && json_object_size(v.node_errors) == 0 ? NULL : kn_validation_body(&v);
    if (order) *order = json_incref(v.order);
    if (*status == KN_OK || *status == KN_ERR_INVALID) kn_validation_free(&v);
    return body;
}

static const json_t *first_node_error(const json_t *body, const char *node) {
    return json_array_get(json_object_get(json_object_get(json_object_get(body, "node_errors"), node), "errors"), 0);
}

static const char *jstr(const json_t *v, const char *key) {
    const char *s = json_string_value(json_object_get(v, key));
    return s ? s : "(none)";
}

/* Expects prompt_outputs_failed_validation with node's first error of `type` on `input`. */
static void expect_node_error(json_t *prompt, const char *node, const char *type, const char *input,
                              const char *details, const char *message) {
    int st;
    json_t *body = validate_body(prompt, NULL, &st, NULL);
    const json_t *e = first_node_error(body, node);
    CHECK(st == KN_ERR_INVALID, "%s on %s: status %d", type, node, st);
    CHECK(strcmp(jstr(json_object_get(body, "error"), "type"), "prompt_outputs_failed_validation") == 0,
          "%s: top-level type %s", type, jstr(json_object_get(body, "error"), "type"));
    CHECK(strcmp(jstr(e, "type"), type) == 0, "node %s: error type %s, want %s", node, jstr(e, "type"), type);
    if (input)
        CHECK(strcmp(jstr(json_object_get(e, "extra_info"), "input_name"), input) == 0, "%s: input %s, want %s", type,
              jstr(json_object_get(e, "extra_info"), "input_name"), input);
    if (details) CHECK(strcmp(jstr(e, "details"), details) == 0, "%s: details '%s', want '%s'", type, jstr(e, "details"), details);
    if (message) CHECK(strcmp(jstr(e, "message"), message) == 0, "%s: message '%s', want '%s'", type, jstr(e, "message"), message);
    if (!e) show("body", body);
    json_decref(body);
}

static void set_input(json_t *prompt, const char *node, const char *input, json_t *value) {
    json_object_set_new(json_object_get(json_object_get(prompt, node), "inputs"), input, value);
}

static void test_bad_prompts(void) {
    json_t *base = load_json("qwen_image_t2i.api.json", 0);
    json_t *p;
#define FRESH() (json_decref(p), p = json_deep_copy(base))
    p = json_deep_copy(base);

    json_object_del(json_object_get(json_object_get(p, "3"), "inputs"), "model");
    expect_node_error(p, "3", "required_input_missing", "model", "model", "Required input is missing");
    FRESH();
    set_input(p, "3", "model", json_pack("[s, i]", "39", 0)); /* a VAE into a MODEL input */
    expect_node_error(p, "3", "return_type_mismatch", "model", "model, VAE != MODEL", NULL);
    FRESH();
    set_input(p, "3", "steps", json_string("many"));
    expect_node_error(p, "3", "invalid_input_type", "steps",
                      "steps, many, invalid literal for int() with base 10: 'many'",
                      "Failed to convert an input value to a INT value");
    FRESH();
    set_input(p, "3", "steps", json_integer(0));
    expect_node_error(p, "3", "value_smaller_than_min", "steps", "steps", "Value 0 smaller than min of 1");
    FRESH();
    set_input(p, "3", "cfg", json_integer(101));
    expect_node_error(p, "3", "value_bigger_than_max", "cfg", "cfg", "Value 101.0 bigger than max of 100.0");
    FRESH();
    set_input(p, "3", "seed", json_integer(-1));
    expect_node_error(p, "3", "value_smaller_than_min", "seed", "seed", "Value -1 smaller than min of 0");
    FRESH();
    set_input(p, "3", "seed", json_real(2e19));
    expect_node_error(p, "3", "value_bigger_than_max", "seed", "seed",
                      "Value 20000000000000000000 bigger than max of 18446744073709551615");
    FRESH();
    set_input(p, "3", "scheduler", json_string("nope"));
    expect_node_error(p, "3", "value_not_in_list", "scheduler",
                      "scheduler: 'nope' not in ['normal', 'karras', 'exponential', 'sgm_uniform', 'simple', "
                      "'ddim_uniform', 'beta', 'linear_quadratic', 'kl_optimal']",
                      "Value not in list");
    FRESH();
    set_input(p, "3", "sampler_name", json_string("nope")); /* 44 choices: ComfyUI shortens the list */
    expect_node_error(p, "3", "value_not_in_list", "sampler_name", "sampler_name: 'nope' not in (list of length 44)",
                      NULL);
    FRESH();
    set_input(p, "37", "unet_name", json_string("missing.safetensors"));
    expect_node_error(p, "37", "value_not_in_list", "unet_name", NULL, NULL);
    FRESH();
    set_input(p, "3", "model", json_pack("[s]", "37"));
    expect_node_error(p, "3", "bad_linked_input", "model", "model", NULL);
    FRESH();
    set_input(p, "3", "model", json_integer(5)); /* Kiln: a socket needs a link */
    expect_node_error(p, "3", "invalid_input_type", "model", NULL, "Failed to convert an input value to a MODEL value");
    FRESH();
    /* A cycle: ModelSamplingAuraFlow fed by itself. */
    set_input(p, "66", "model", json_pack("[s, i]", "66", 0));
    expect_node_error(p, "66", "exception_during_inner_validation", "model", "Dependency cycle detected", NULL);
    FRESH();
    /* A dangling link: the KeyError surfaces on the linking node, reported by its consumer. */
    set_input(p, "3", "model", json_pack("[s, i]", "99", 0));
    expect_node_error(p, "3", "exception_during_inner_validation", "samples", "'99'", NULL);
    FRESH();
    set_input(p, "8", "vae", json_pack("[s, i]", "39", 7)); /* output index out of range */
    expect_node_error(p, "8", "exception_during_inner_validation", "images", "tuple index out of range", NULL);
    FRESH();
    set_input(p, "60", "images", json_pack("[s, i]", "404", 0)); /* on the output itself */
    expect_node_error(p, "60", "exception_during_validation", NULL, "'404'", "Exception when validating node");

    /* Coercions ComfyUI applies in place. */
    FRESH();
    set_input(p, "3", "steps", json_string(" 2_0 "));
    set_input(p, "3", "cfg", json_integer(3));
    set_input(p, "3", "denoise", json_pack("{s:f}", "__value__", 0.5));
    int st;
    json_t *body = validate_body(p, NULL, &st, NULL);
    json_t *ks = json_object_get(json_object_get(p, "3"), "inputs");
    CHECK(st == KN_OK && body == NULL, "coercible values validate");
    CHECK(json_integer_value(json_object_get(ks, "steps")) == 20, "steps ' 2_0 ' -> 20");
    CHECK(json_is_real(json_object_get(ks, "cfg")) && json_real_value(json_object_get(ks, "cfg")) == 3.0, "cfg 3 -> 3.0");
    CHECK(json_real_value(json_object_get(ks, "denoise")) == 0.5, "__value__ unwrapped");
    json_decref(body);

    /* Top-level errors. */
    FRESH();
    json_object_set_new(json_object_get(p, "3"), "class_type", json_string("KSamplerPlusPlus"));
    body = validate_body(p, NULL, &st, NULL);
    json_t *e = json_object_get(body, "error");
    CHECK(st == KN_ERR_INVALID && strcmp(jstr(e, "type"), "missing_node_type") == 0, "unknown class");
    CHECK(strcmp(jstr(e, "message"), "Node 'KSampler' not found. The custom node may not be installed.") == 0 &&
              strcmp(jstr(e, "details"), "Node ID '#3'") == 0 &&
              strcmp(jstr(json_object_get(e, "extra_info"), "class_type"), "KSamplerPlusPlus") == 0,
          "unknown class message: %s", jstr(e, "message"));
    json_decref(body);
    FRESH();
    json_object_del(json_object_get(p, "8"), "class_type");
    json_object_del(json_object_get(p, "8"), "_meta");
    body = validate_body(p, NULL, &st, NULL);
    CHECK(strcmp(jstr(json_object_get(body, "error"), "message"),
                 "Node 'ID #8' has no class_type. The workflow may be corrupted or a custom node is missing.") == 0,
          "missing class_type: %s", jstr(json_object_get(body, "error"), "message"));
    json_decref(body);
    FRESH();
    json_object_del(p, "60");
    body = validate_body(p, NULL, &st, NULL);
    CHECK(st == KN_ERR_INVALID && strcmp(jstr(json_object_get(body, "error"), "type"), "prompt_no_outputs") == 0,
          "no outputs");
    json_decref(body);
    json_t *not_object = json_pack("[i]", 1);
    body = validate_body(not_object, NULL, &st, NULL);
    CHECK(st == KN_ERR_INVALID && strcmp(jstr(json_object_get(body, "error"), "type"), "invalid_prompt") == 0,
          "prompt not an object");
    json_decref(body);
    json_decref(not_object);

    /* Two outputs, one broken: the prompt runs with the other, node_errors says why. */
    FRESH();
    json_object_set_new(p, "61", json_pack("{s:s, s:{s:[s,i]}}", "class_type", "PreviewImage", "inputs", "images", "404", 0));
    json_t *order = NULL;
    body = validate_body(p, NULL, &st, &order);
    CHECK(st == KN_OK && body && json_object_get(json_object_get(body, "node_errors"), "61"), "partial failure runs");
    CHECK(json_array_size(order) == 10, "the valid output's nodes run");
    json_decref(body);
    json_decref(order);
    /* partial_execution_targets */
    json_t *targets = json_pack("[s]", "61");
    body = validate_body(p, targets, &st, NULL);
    CHECK(st == KN_ERR_INVALID, "only the broken output targeted");
    json_decref(body);
    json_decref(targets);
#undef FRESH
    json_decref(p);
    json_decref(base);
}

/* ---- conversion details on small hand-written graphs ------------------------------- */

static json_t *convert_text(const char *text, json_t **error, kn_err *err) {
    json_t *prompt = NULL;
    kn_err_clear(err);
    if (error) *error = NULL;
    kn_workflow_load_memory(text, strlen(text), NULL, &prompt, error, err);
    return prompt;
}

static void test_conversion_details(void) {
    kn_err err;
    json_t *error;
    /* Fewer widget values than widgets (saved before resolution_steps
     * existed): defaults fill in; 1.0 goes out as 1; a list is wrapped. */
    json_t *p = convert_text(
        "{\"nodes\": ["
        "{\"id\": 1, \"type\": \"ImageScaleToTotalPixels\", \"mode\": 0, \"inputs\": [{\"name\": \"image\", \"type\": \"IMAGE\", \"link\": null}],"
        " \"outputs\": [], \"widgets_values\": [\"lanczos\", 1.0]},"
        "{\"id\": 2, \"type\": \"CLIPTextEncode\", \"inputs\": [], \"widgets_values\": [[\"a\", \"b\"]]},"
        "{\"id\": 3, \"type\": \"KSampler\", \"inputs\": [], \"widgets_values\": [9007199254740993, \"fixed\"]}"
        "], \"links\": []}",
        &error, &err);
    json_t *in1 = json_object_get(json_object_get(p, "1"), "inputs");
    CHECK(p && json_integer_value(json_object_get(in1, "megapixels")) == 1 && json_is_integer(json_object_get(in1, "megapixels")),
          "1.0 is sent as 1");
    CHECK(json_integer_value(json_object_get(in1, "resolution_steps")) == 1, "missing widget value -> default");
    json_t *in3 = json_object_get(json_object_get(p, "3"), "inputs");
    CHECK(json_integer_value(json_object_get(in3, "seed")) == 9007199254740992LL, "seeds past 2^53 round as in JS");
    CHECK(json_integer_value(json_object_get(in3, "steps")) == 20 && json_integer_value(json_object_get(in3, "cfg")) == 8,
          "KSampler defaults, 8.0 sent as 8");
    json_t *text = json_object_get(json_object_get(json_object_get(p, "2"), "inputs"), "text");
    CHECK(json_is_array(json_object_get(text, "__value__")), "array widget values are wrapped");
    /* Validation unwraps it and str()s it as Python would, even when the
     * node fails for another reason. */
    json_t *save = json_pack("{s:{s:s, s:{s:O}}}", "5", "class_type", "SaveImage", "inputs", "filename_prefix", text);
    int st;
    json_t *body = validate_body(save, NULL, &st, NULL);
    CHECK(strcmp(jstr(first_node_error(body, "5"), "type"), "required_input_missing") == 0, "images missing");
    CHECK(strcmp(jstr(json_object_get(json_object_get(save, "5"), "inputs"), "filename_prefix"), "['a', 'b']") == 0,
          "str(list)");
    json_decref(body);
    json_decref(save);
    json_decref(p);

    /* A PrimitiveNode through a Reroute, a muted node, a bypassed LoraLoader
     * passing MODEL and CLIP by type. */
    p = convert_text(
        "{\"nodes\": ["
        "{\"id\": 1, \"type\": \"CheckpointLoaderSimple\", \"outputs\": [{\"name\": \"MODEL\", \"type\": \"MODEL\", \"links\": [1]},"
        "  {\"name\": \"CLIP\", \"type\": \"CLIP\", \"links\": [2]}, {\"name\": \"VAE\", \"type\": \"VAE\", \"links\": []}],"
        "  \"widgets_values\": [\"m.safetensors\"]},"
        "{\"id\": 2, \"type\": \"LoraLoader\", \"mode\": 4, \"inputs\": [{\"name\": \"model\", \"type\": \"MODEL\", \"link\": 1},"
        "  {\"name\": \"clip\", \"type\": \"CLIP\", \"link\": 2}], \"outputs\": [{\"name\": \"MODEL\", \"type\": \"MODEL\", \"links\": [3]},"
        "  {\"name\": \"CLIP\", \"type\": \"CLIP\", \"links\": [4]}], \"widgets_values\": [\"l.safetensors\", 1, 1]},"
        "{\"id\": 3, \"type\": \"ModelSamplingSD3\", \"inputs\": [{\"name\": \"model\", \"type\": \"MODEL\", \"link\": 3}],"
        "  \"widgets_values\": [3]},"
        "{\"id\": 4, \"type\": \"CLIPTextEncode\", \"inputs\": [{\"name\": \"clip\", \"type\": \"CLIP\", \"link\": 4},"
        "  {\"name\": \"text\", \"type\": \"STRING\", \"widget\": {\"name\": \"text\"}, \"link\": 6}], \"widgets_values\": [\"stale\"]},"
        "{\"id\": 5, \"type\": \"PrimitiveNode\", \"outputs\": [{\"name\": \"STRING\", \"type\": \"STRING\", \"links\": [5],"
        "  \"widget\": {\"name\": \"text\"}}], \"widgets_values\": [\"fresh\"]},"
        "{\"id\": 6, \"type\": \"Reroute\", \"inputs\": [{\"name\": \"\", \"type\": \"*\", \"link\": 5}],"
        "  \"outputs\": [{\"name\": \"\", \"type\": \"STRING\", \"links\": [6]}]},"
        "{\"id\": 7, \"type\": \"ConditioningZeroOut\", \"mode\": 2, \"inputs\": [], \"outputs\": [{\"name\": \"C\", \"type\": \"CONDITIONING\", \"links\": [7]}]},"
        "{\"id\": 8, \"type\": \"FluxGuidance\", \"inputs\": [{\"name\": \"conditioning\", \"type\": \"CONDITIONING\", \"link\": 7}],"
        "  \"widgets_values\": [2], \"title\": \"My guidance\"}"
        "], \"links\": [[1, 1, 0, 2, 0, \"MODEL\"], [2, 1, 1, 2, 1, \"CLIP\"], [3, 2, 0, 3, 0, \"MODEL\"],"
        " [4, 2, 1, 4, 0, \"CLIP\"], [5, 5, 0, 6, 0, \"STRING\"], [6, 6, 0, 4, 1, \"STRING\"], [7, 7, 0, 8, 0, \"CONDITIONING\"]]}",
        &error, &err);
    CHECK(p != NULL, "hand graph converts: %s", err.msg);
    json_t *want = json_pack(
        "{s:{s:{s:s}, s:s, s:{s:s}}, s:{s:{s:i, s:[s,i]}, s:s, s:{s:s}}, s:{s:{s:s, s:[s,i]}, s:s, s:{s:s}},"
        " s:{s:{s:i}, s:s, s:{s:s}}}",
        "1", "inputs", "ckpt_name", "m.safetensors", "class_type", "CheckpointLoaderSimple", "_meta", "title",
        "Load Checkpoint", "3", "inputs", "shift", 3, "model", "1", 0, "class_type", "ModelSamplingSD3", "_meta",
        "title", "ModelSamplingSD3", "4", "inputs", "text", "fresh", "clip", "1", 1, "class_type", "CLIPTextEncode",
        "_meta", "title", "CLIP Text Encode (Prompt)", "8", "inputs", "guidance", 2, "class_type", "FluxGuidance",
        "_meta", "title", "My guidance");
    CHECK(p && json_equal(p, want), "bypass, primitive, reroute, mute");
    if (p && !json_equal(p, want)) {
        show("kiln", p);
        show("want", want);
    }
    json_decref(want);
    json_decref(p);
}

/* ---- broken UI workflows ------------------------------------------------------------ */

static void expect_ui_error(const char *text, const char *node, const char *input, const char *what) {
    kn_err err;
    json_t *error = NULL;
    json_t *p = convert_text(text, &error, &err);
    json_t *e = json_object_get(error, "error");
    CHECK(p == NULL && error != NULL, "%s: must fail", what);
    CHECK(strcmp(jstr(e, "type"), "invalid_prompt") == 0, "%s: type %s", what, jstr(e, "type"));
    if (node) CHECK(strcmp(jstr(json_object_get(e, "extra_info"), "node_id"), node) == 0, "%s: node %s", what,
                    jstr(json_object_get(e, "extra_info"), "node_id"));
    if (input) CHECK(strcmp(jstr(json_object_get(e, "extra_info"), "input_name"), input) == 0, "%s: input %s", what,
                     jstr(json_object_get(e, "extra_info"), "input_name"));
    CHECK(err.msg[0] != '\0', "%s: message", what);
    json_decref(p);
    json_decref(error);
}

static void test_bad_workflows(void) {
    expect_ui_error("{\"nodes\": [", NULL, NULL, "malformed JSON");
    expect_ui_error("[1, 2]", NULL, NULL, "not an object");
    expect_ui_error("{\"nodes\": [{\"id\": 3, \"type\": \"VAEDecode\", \"inputs\": [{\"name\": \"vae\", \"type\": \"VAE\","
                    " \"link\": 99}]}], \"links\": []}",
                    "3", "vae", "link id that does not exist");
    expect_ui_error("{\"nodes\": [{\"id\": 3, \"type\": \"VAEDecode\", \"inputs\": [{\"name\": \"vae\", \"type\": \"VAE\","
                    " \"link\": 1}]}], \"links\": [[1, 42, 0, 3, 0, \"VAE\"]]}",
                    "3", "vae", "link from a node that does not exist");
    expect_ui_error("{\"nodes\": [{\"id\": 3, \"type\": \"VAEDecode\", \"inputs\": [{\"name\": \"vae\", \"type\": \"VAE\", \"link\": 1}]},"
                    " {\"id\": 4, \"type\": \"Reroute\", \"inputs\": [{\"name\": \"\", \"type\": \"*\", \"link\": 2}],"
                    "  \"outputs\": [{\"name\": \"\", \"type\": \"VAE\", \"links\": [1, 3]}]},"
                    " {\"id\": 5, \"type\": \"Reroute\", \"inputs\": [{\"name\": \"\", \"type\": \"*\", \"link\": 3}],"
                    "  \"outputs\": [{\"name\": \"\", \"type\": \"VAE\", \"links\": [2]}]}],"
                    " \"links\": [[1, 4, 0, 3, 1, \"VAE\"], [2, 5, 0, 4, 0, \"VAE\"], [3, 4, 0, 5, 0, \"VAE\"]]}",
                    "3", "vae", "circular reroutes");
    expect_ui_error("{\"nodes\": [{\"id\": 1}], \"links\": []}", "1", NULL, "node without a type");
    expect_ui_error("{\"nodes\": [{\"id\": 1, \"type\": \"VAEDecode\", \"inputs\": 5}], \"links\": []}", "1", NULL,
                    "inputs not an array");
    expect_ui_error("{\"nodes\": [], \"links\": [[\"a\"]]}", NULL, NULL, "malformed link");
    expect_ui_error("{\"nodes\": [{\"id\": 1, \"type\": \"s\"}], \"links\": [], \"definitions\": {\"subgraphs\": ["
                    "{\"id\": \"s\", \"inputs\": [], \"outputs\": [], \"nodes\": [{\"id\": 1, \"type\": \"s\"}], \"links\": []}]}}",
                    NULL, NULL, "subgraph containing itself");

    /* An unknown class converts and then fails validation, named. */
    kn_err err;
    json_t *error;
    json_t *p = convert_text("{\"nodes\": [{\"id\": 7, \"type\": \"FancyCustomNode\", \"title\": \"Fancy\", \"widgets_values\": [1]},"
                             " {\"id\": 9, \"type\": \"SaveImage\", \"inputs\": [{\"name\": \"images\", \"type\": \"IMAGE\", \"link\": 1}],"
                             "  \"widgets_values\": [\"ComfyUI\"]}],"
                             " \"links\": [[1, 7, 0, 9, 0, \"IMAGE\"]]}",
                             &error, &err);
    int st;
    json_t *body = p ? validate_body(p, NULL, &st, NULL) : NULL;
    json_t *e = json_object_get(body, "error");
    CHECK(p && strcmp(jstr(e, "type"), "missing_node_type") == 0 &&
              strcmp(jstr(e, "message"), "Node 'Fancy' not found. The custom node may not be installed.") == 0,
          "unknown class in a UI workflow: %s", jstr(e, "message"));
    json_decref(body);
    json_decref(p);
}

/* ---- JSON helpers ------------------------------------------------------------------------ */

static void test_json_helpers(void) {
    static const struct {
        double d;
        const char *py;
    } floats[] = {{0.1, "0.1"},     {8.0, "8.0"},     {1e-05, "1e-05"},   {0.0001, "0.0001"}, {1e16, "1e+16"},
                  {-0.0, "-0.0"},   {1.73, "1.73"},   {123.456, "123.456"}, {3.1000000000000005, "3.1000000000000005"},
                  {1e22, "1e+22"},  {2.5e-7, "2.5e-07"}, {1234567890123456.0, "1234567890123456.0"}};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        char buf[64];
        kn_py_float(floats[i].d, buf, sizeof buf);
        CHECK(strcmp(buf, floats[i].py) == 0, "repr(%.17g) = %s, want %s", floats[i].d, buf, floats[i].py);
    }
    json_t *v = json_pack("{s:f, s:[s, s, n, b], s:{}}", "a", 0.1, "b", "it's", "say \"hi\"\n", 1, "c");
    char *s = kn_json_dumps(v, 0), *r = kn_py_repr(v);
    CHECK(s && strcmp(s, "{\"a\": 0.1, \"b\": [\"it's\", \"say \\\"hi\\\"\\n\", null, true], \"c\": {}}") == 0, "dumps: %s", s);
    CHECK(r && strcmp(r, "{'a': 0.1, 'b': [\"it's\", 'say \"hi\"\\n', None, True], 'c': {}}") == 0, "repr: %s", r);
    free(s);
    free(r);
    json_decref(v);
    /* json.dumps as ComfyUI embeds prompts: ensure_ascii (expected text from CPython 3). */
    v = json_pack("{s:s, s:f, s:[i, n]}", "t", "\xc3\xa9\xf0\x9f\x98\x80\x7f\x01~", "n", 0.1, "k\xc3\xbc", 1);
    s = kn_py_json_dumps(v);
    CHECK(s && strcmp(s, "{\"t\": \"\\u00e9\\ud83d\\ude00\\u007f\\u0001~\", \"n\": 0.1, \"k\\u00fc\": [1, null]}") == 0,
          "py json.dumps: %s", s);
    free(s);
    json_decref(v);
    /* The converted qwen prompt keeps the template's binary artefact. */
    kn_err err;
    json_t *p = convert_file("qwen_image_t2i.ui.json", NULL, &err);
    s = p ? kn_json_dumps(p, 2) : NULL;
    CHECK(s && strstr(s, "\"shift\": 3.1000000000000005"), "shift printed exactly");
    free(s);
    json_decref(p);
}

/* ---- never a crash: mutated workflows ---------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Every container slot of a document, to replace one value at random. */
typedef struct {
    json_t *parent;
    const char *key; /* NULL: array index */
    size_t index;
} slot;

static void collect(json_t *v, slot *slots, size_t *n, size_t cap) {
    if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach(v, key, item) {
            if (*n < cap) slots[(*n)++] = (slot){v, key, 0};
            collect(item, slots, n, cap);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (*n < cap) slots[(*n)++] = (slot){v, NULL, i};
            collect(json_array_get(v, i), slots, n, cap);
        }
    }
}

static json_t *random_value(void) {
    switch (next_rand() % 14) {
    case 0: return json_null();
    case 1: return json_integer(-1);
    case 2: return json_integer((json_int_t)(next_rand() % 100));
    case 3: return json_real(1e308);
    case 4: return json_string("");
    case 5: return json_string("*");
    case 6: return json_array();
    case 7: return json_object();
    case 8: return json_pack("[s, i]", "3", (int)(next_rand() % 3));
    case 9: return json_pack("[i, i]", 3, 0);
    case 10: return json_integer(INT64_MAX);
    case 11: return json_string("-10");
    case 12: return json_integer(-10);
    default: return json_true();
    }
}

/* Either a prompt or a shaped error with a message; a prompt must then
 * validate to an answer of its own. */
static void run_untrusted(const char *text, size_t len) {
    kn_err err;
    kn_err_clear(&err);
    json_t *prompt = NULL, *error = NULL;
    int st = kn_workflow_load_memory(text, len, &lister, &prompt, &error, &err);
    CHECK((st == KN_OK) == (prompt != NULL), "status and prompt agree");
    if (st != KN_OK) {
        CHECK(err.msg[0] && json_is_string(json_object_get(json_object_get(error, "error"), "type")),
              "a failure must be shaped and explained");
    } else {
        kn_validation v;
        st = kn_validate_prompt(prompt, NULL, &lister, NULL, &v, &err);
        CHECK(st == KN_OK || (st == KN_ERR_INVALID && v.error && err.msg[0]), "validation answers: %d %s", st, err.msg);
        char *s = kn_json_dumps(prompt, 0);
        CHECK(s != NULL, "prompt prints");
        free(s);
        if (st == KN_OK || st == KN_ERR_INVALID) kn_validation_free(&v);
    }
    json_decref(prompt);
    json_decref(error);
}

static void test_mutations(void) {
    enum { ROUNDS = 150 };
    for (size_t w = 0; w < N_WORKFLOWS; w++) {
        for (int api = 0; api < 2; api++) {
            char name[128];
            snprintf(name, sizeof name, "%s.%s.json", workflows[w], api ? "api" : "ui");
            size_t len;
            char *text = read_text(name, &len);
            json_t *doc = load_json(name, 0);
            slot *slots = malloc(20000 * sizeof *slots);
            for (int r = 0; r < ROUNDS; r++) {
                /* Byte damage: flips, cuts. */
                char *copy = malloc(len + 1);
                memcpy(copy, text, len + 1);
                size_t cut = r % 10 == 0 ? next_rand() % (len + 1) : len;
                for (int k = 0; k < 3; k++) copy[next_rand() % len] = "{}[]\",:0-9a "[next_rand() % 12];
                run_untrusted(copy, cut);
                free(copy);
                /* Structural damage: one to three values replaced. */
                json_t *m = json_deep_copy(doc);
                for (int k = 0; k < 1 + r % 3; k++) {
                    size_t n = 0;
                    collect(m, slots, &n, 20000);
                    if (!n) break;
                    slot s = slots[next_rand() % n];
                    if (s.key) json_object_set_new(s.parent, s.key, random_value());
                    else json_array_set_new(s.parent, s.index, random_value());
                }
                char *mt = kn_json_dumps(m, 0);
                run_untrusted(mt, strlen(mt));
                free(mt);
                json_decref(m);
            }
            free(slots);
            json_decref(doc);
            free(text);
        }
    }
    /* a stray byte jansson quotes in its message (fuzz_workflow's crash) */
    static const char stray[] = "{\"nodes\": [{\"id\": 1, \"type\": \"\\\xc3\xa9\"}]}";
    run_untrusted(stray, sizeof stray - 1);
}

int main(void) {
    json_t *info = load_json("object_info.json", JSON_DECODE_INT_AS_REAL);
    build_folders(info);
    lister.user = folders;
    test_json_helpers();
    test_registry(info);
    test_fixture_pairs();
    test_fixture_validation();
    test_bad_prompts();
    test_conversion_details();
    test_bad_workflows();
    test_mutations();
    json_decref(info);
    json_decref(folders);
    printf("test_workflow: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
