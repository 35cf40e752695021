/* Library-level checks of the run path that the CLI cannot reach: model-name
 * resolution refusing names outside their folder even without validation,
 * folder aliases, and interrupting a sampler between steps.
 * (tests/e2e/test_run.py covers `kiln run` end to end.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "graph/executor.h"
#include "graph/workflow.h"

static int failures;

#define CHECK(cond, ...)                                                                                              \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            failures++;                                                                                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                               \
            printf(__VA_ARGS__);                                                                                      \
            printf("\n");                                                                                             \
        }                                                                                                             \
    } while (0)

static void test_resolve(const char *root) {
    kn_models *m = NULL;
    kn_err err;
    kn_err_clear(&err);
    CHECK(kn_models_new(&m, root, root, &err) == KN_OK, "%s", err.msg);
    if (!m) return;
    static const char *const bad[] = {"../vae/qwen_image_vae.safetensors", "/etc/passwd", "a/../../x.safetensors",
                                      "..", "", "c:\\x.safetensors"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *path = NULL;
        CHECK(kn_models_resolve(m, "diffusion_models", bad[i], &path, &err) == KN_ERR_INVALID && !path,
              "'%s' must be refused", bad[i]);
        CHECK(strstr(err.msg, "diffusion_models") != NULL, "error names the folder: %s", err.msg);
    }
    char *path = NULL;
    CHECK(kn_models_resolve(m, "diffusion_models", "nope.safetensors", &path, &err) == KN_ERR_NOT_FOUND,
          "a missing file is not found");
    CHECK(kn_models_resolve(m, "vae", "qwen_image_vae.safetensors", &path, &err) == KN_OK && path, "%s", err.msg);
    free(path);
    static const char *const encoders[] = {"clip_l.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                           "qwen_3_4b.safetensors", "t5xxl_fp16.safetensors"};
    json_t *names = json_array();
    int listed = kn_models_list(m, "text_encoders", names, &err) == KN_OK && json_array_size(names) == 4;
    for (size_t i = 0; listed && i < 4; i++)
        listed = strcmp(json_string_value(json_array_get(names, i)), encoders[i]) == 0;
    CHECK(listed, "text_encoders lists the tiny encoders, sorted");
    json_decref(names);
    kn_models_free(m);
}

/* Interrupts the run at its first sampler step. */
typedef struct interrupt_at {
    kn_executor *ex;
    int progress_seen;
} interrupt_at;

static void on_event(void *user, const kn_exec_event *ev) {
    interrupt_at *ia = user;
    if (ev->kind == KN_EVENT_PROGRESS) {
        ia->progress_seen++;
        kn_executor_interrupt(ia->ex); /* stops before the next step */
    }
}

static void test_interrupt(const char *root, const char *workflow, const char *out_dir) {
    kn_models *m = NULL;
    kn_executor *ex = NULL;
    kn_err err;
    kn_err_clear(&err);
    if (kn_models_new(&m, root, out_dir, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    kn_executor_config cfg = {m, out_dir, out_dir, out_dir, KN_PREC_FP32, NULL};
    CHECK(kn_executor_new(&ex, &cfg, &err) == KN_OK, "%s", err.msg);
    kn_folder_lister lister = kn_models_lister(m);
    json_t *prompt = NULL, *error = NULL;
    kn_validation v = {0};
    kn_exec_result res = {0};
    CHECK(kn_workflow_load_file(workflow, &lister, &prompt, &error, &err) == KN_OK, "%s", err.msg);
    kn_node_env env = ex ? kn_executor_env(ex) : (kn_node_env){0};
    CHECK(prompt && kn_validate_prompt(prompt, NULL, &lister, &env, &v, &err) == KN_OK, "%s", err.msg);
    interrupt_at ia = {ex, 0};
    kn_executor_set_events(ex, on_event, &ia);
    if (ex && prompt && !v.error) {
        CHECK(kn_executor_run(ex, prompt, &v, NULL, "p1", &res, &err) != KN_OK, "the run must stop");
        CHECK(ia.progress_seen == 1, "one step ran before the interrupt (%d)", ia.progress_seen);
        const char *type = json_string_value(json_object_get(res.error, "type"));
        const json_t *data = json_object_get(res.error, "data");
        CHECK(type && strcmp(type, "execution_interrupted") == 0, "execution_interrupted, got %s", type ? type : "none");
        CHECK(strcmp(json_string_value(json_object_get(data, "node_id")), "3") == 0, "interrupted in node 3");
        kn_exec_result_free(&res);
        /* the interrupt is cleared by the next run, which resumes from the sampler */
        ia.progress_seen = -1000;
        kn_executor_set_events(ex, NULL, NULL);
        long before = kn_executor_runs(ex);
        CHECK(kn_executor_run(ex, prompt, &v, NULL, "p2", &res, &err) == KN_OK, "%s", err.msg);
        CHECK(kn_executor_runs(ex) - before == 3, "resumed run executes 3, 8, 60 (%ld)", kn_executor_runs(ex) - before);
        kn_exec_result_free(&res);
    }
    kn_validation_free(&v);
    json_decref(prompt);
    json_decref(error);
    kn_executor_free(ex);
    kn_models_free(m);
}

int main(void) {
    const char *tmp = getenv("KN_TEST_TMP");
    char root[4096], out[4096], workflow[4096];
    snprintf(root, sizeof root, "%s/../models", tmp ? tmp : "tests");
    snprintf(out, sizeof out, "%s/test_run_out", tmp ? tmp : ".");
    snprintf(workflow, sizeof workflow, "%s/workflows/qwen_image_t2i.api.json", KN_SOURCE_DIR);
    mkdir(out, 0755);
    test_resolve(root);
    test_interrupt(root, workflow, out);
    printf("%s: %d failure(s)\n", __FILE__, failures);
    return failures != 0;
}
