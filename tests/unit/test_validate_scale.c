/* Validation stays linear in the prompt (issue 16, fault 1; graph/validate.h).
 *
 * A prompt of 100,000 SaveImage outputs that all fail (no images input) took
 * minutes and GBs when every failing output was appended to every failed
 * node's dependent_outputs and the details were joined with strcat: it must
 * validate, and its 400 body be printed, in under 2 s of CPU and 200 MB.
 * CPU time, not wall time, so a loaded CI machine does not fail it. Under
 * the sanitizers (KN_SANITIZE: several times slower, and ASan's shadow and
 * quarantine inflate memory) the time bound is 10x and memory is not
 * measured: the quadratic code took minutes there, so the bound still
 * catches it. Also: dependent_outputs names only the outputs that depend on
 * a node, at most KN_VALIDATE_MAX_DEPENDENTS; 100,000 partial-execution
 * targets are a set, not a scan per node; 100,000 valid outputs are put in
 * ComfyUI's execution order in linear time too (it took 25 s). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "graph/validate.h"
#include "kernels/json.h"
#include "check.h"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define N_OUTPUTS 100000

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The process's peak resident memory so far, in MB. */
static double peak_mb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_maxrss / 1024.0;
}

static json_t *save_image(const char *images_from) {
    json_t *n = json_pack("{s:s, s:{s:s}}", "class_type", "SaveImage", "inputs", "filename_prefix", "x");
    if (images_from) json_object_set_new(json_object_get(n, "inputs"), "images", json_pack("[s, i]", images_from, 0));
    return n;
}

/* Validates and prints the 400 body; returns the body's length. */
static size_t validate_and_print(json_t *prompt, const json_t *targets, kn_validation *v) {
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_validate_prompt(prompt, targets, NULL, NULL, v, &err);
    CHECK(rc == KN_ERR_INVALID, "rc %d (%s)", rc, err.msg);
    json_t *body = kn_validation_body(v);
    char *text = body ? kn_json_dumps(body, 0) : NULL;
    size_t len = text ? strlen(text) : 0;
    CHECK(len > 0, "no 400 body");
    free(text);
    json_decref(body);
    return len;
}

static void test_many_failing_outputs(void) {
    json_t *prompt = json_object();
    char id[32];
    for (int k = 0; k < N_OUTPUTS; k++) {
        snprintf(id, sizeof id, "%d", k);
        json_object_set_new(prompt, id, save_image(NULL));
    }
    kn_validation v;
    double peak0 = peak_mb(), t0 = cpu_seconds();
    size_t len = validate_and_print(prompt, NULL, &v);
    double secs = cpu_seconds() - t0, mb = peak_mb() - peak0;
    printf("%d failing outputs: %.2f s CPU, peak resident +%.0f MB, 400 body %zu bytes%s\n", N_OUTPUTS, secs, mb, len,
           SANITIZED ? " (sanitized build)" : "");
    CHECK(secs < (SANITIZED ? 20.0 : 2.0), "validation took %.2f s of CPU", secs);
    CHECK(SANITIZED || mb < 200.0, "validation took %.0f MB", mb);
    CHECK(json_object_size(v.node_errors) == N_OUTPUTS, "%zu node errors", json_object_size(v.node_errors));
    json_t *deps = json_object_get(json_object_get(v.node_errors, "77"), "dependent_outputs");
    CHECK(json_array_size(deps) == 1 && strcmp(json_string_value(json_array_get(deps, 0)), "77") == 0,
          "node 77 lists %zu dependent outputs", json_array_size(deps));
    const char *details = json_string_value(json_object_get(v.error, "details"));
    CHECK(details && strlen(details) == N_OUTPUTS * strlen("Required input is missing: images\n") - 1,
          "details of %zu bytes", details ? strlen(details) : 0);
    kn_validation_free(&v);

    /* the same outputs as partial-execution targets */
    json_t *targets = json_array();
    for (int k = 0; k < N_OUTPUTS; k += 2) {
        snprintf(id, sizeof id, "%d", k);
        json_array_append_new(targets, json_string(id));
    }
    t0 = cpu_seconds();
    validate_and_print(prompt, targets, &v);
    secs = cpu_seconds() - t0;
    printf("%d targets: %.2f s CPU\n", N_OUTPUTS / 2, secs);
    CHECK(secs < (SANITIZED ? 20.0 : 2.0), "validation with targets took %.2f s of CPU", secs);
    CHECK(json_object_size(v.node_errors) == N_OUTPUTS / 2, "%zu node errors", json_object_size(v.node_errors));
    kn_validation_free(&v);
    json_decref(targets);
    json_decref(prompt);
}

/* One failing VAEDecode feeding 50,000 outputs, two unrelated failing outputs. */
static void test_dependents(void) {
    json_t *prompt = json_object();
    json_object_set_new(prompt, "dec", json_pack("{s:s, s:{}}", "class_type", "VAEDecode", "inputs"));
    char id[32];
    for (int k = 0; k < N_OUTPUTS / 2; k++) {
        snprintf(id, sizeof id, "s%d", k);
        json_object_set_new(prompt, id, save_image("dec"));
    }
    json_object_set_new(prompt, "lone1", save_image(NULL));
    json_object_set_new(prompt, "lone2", save_image(NULL));
    kn_validation v;
    double t0 = cpu_seconds();
    validate_and_print(prompt, NULL, &v);
    double secs = cpu_seconds() - t0;
    printf("one failed node under %d outputs: %.2f s CPU\n", N_OUTPUTS / 2, secs);
    CHECK(secs < (SANITIZED ? 20.0 : 2.0), "took %.2f s of CPU", secs);
    json_t *dec = json_object_get(v.node_errors, "dec");
    json_t *deps = json_object_get(dec, "dependent_outputs");
    CHECK(json_array_size(deps) == KN_VALIDATE_MAX_DEPENDENTS, "dec lists %zu outputs", json_array_size(deps));
    CHECK(strcmp(json_string_value(json_array_get(deps, 0)), "s0") == 0, "first dependent %s",
          json_string_value(json_array_get(deps, 0)));
    CHECK(json_array_size(json_object_get(dec, "errors")) == 2, "dec has %zu errors (samples, vae)",
          json_array_size(json_object_get(dec, "errors")));
    /* the outputs fail only through dec: no errors of their own, not in node_errors */
    CHECK(json_object_get(v.node_errors, "s5") == NULL, "s5 is listed");
    for (int k = 1; k <= 2; k++) {
        snprintf(id, sizeof id, "lone%d", k);
        deps = json_object_get(json_object_get(v.node_errors, id), "dependent_outputs");
        CHECK(json_array_size(deps) == 1 && strcmp(json_string_value(json_array_get(deps, 0)), id) == 0,
              "%s lists %zu outputs", id, json_array_size(deps));
    }
    CHECK(json_object_size(v.node_errors) == 3, "%zu node errors", json_object_size(v.node_errors));
    kn_validation_free(&v);
    json_decref(prompt);
}

/* 100,000 valid outputs of one LoadImage: the execution order stays linear too. */
static void test_many_valid_outputs(void) {
    json_t *prompt = json_object();
    json_object_set_new(prompt, "load",
                        json_pack("{s:s, s:{s:s}}", "class_type", "LoadImage", "inputs", "image", "x.png"));
    char id[32];
    for (int k = 0; k < N_OUTPUTS; k++) {
        snprintf(id, sizeof id, "%d", k);
        json_object_set_new(prompt, id, save_image("load"));
    }
    kn_validation v;
    kn_err err;
    kn_err_clear(&err);
    double t0 = cpu_seconds();
    int rc = kn_validate_prompt(prompt, NULL, NULL, NULL, &v, &err);
    double secs = cpu_seconds() - t0;
    printf("%d valid outputs: %.2f s CPU\n", N_OUTPUTS, secs);
    CHECK(rc == KN_OK && json_array_size(v.order) == N_OUTPUTS + 1, "rc %d, %zu in order (%s)", rc,
          json_array_size(v.order), err.msg);
    /* ComfyUI's order: the loader, then the outputs in prompt order */
    CHECK(strcmp(json_string_value(json_array_get(v.order, 0)), "load") == 0 &&
              strcmp(json_string_value(json_array_get(v.order, N_OUTPUTS)), "99999") == 0,
          "order %s ... %s", json_string_value(json_array_get(v.order, 0)),
          json_string_value(json_array_get(v.order, N_OUTPUTS)));
    CHECK(secs < (SANITIZED ? 20.0 : 2.0), "validation took %.2f s of CPU", secs);
    kn_validation_free(&v);
    json_decref(prompt);
}

int main(void) {
    test_many_failing_outputs(); /* first: it measures the peak memory */
    test_many_valid_outputs();
    test_dependents();
    printf("test_validate_scale: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
