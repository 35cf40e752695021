/* libFuzzer target for workflow loading, UI->API conversion and validation
 * (graph/workflow.h, graph/validate.h).
 *
 * Any input must either be refused with a message (and, unless memory ran
 * out, a ComfyUI-shaped error body) or give an API prompt that validation
 * answers, accepting it with an execution order or rejecting it with a
 * top-level error. Whatever prompt results must print as JSON that reads back
 * as the same value (the printer's shortest-round-trip numbers included). A
 * small fixed folder lister lets file-name choices be checked too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "tests/fuzz/fuzz_json.h"
#include "graph/validate.h"
#include "graph/workflow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int list_folder(void *user, const char *folder, json_t *names, kn_err *err) {
    (void)user, (void)err;
    /* One name every folder shares, one that only some fixtures use. */
    int bad = json_array_append_new(names, json_string("ae.safetensors"));
    if (strcmp(folder, "input") == 0) bad |= json_array_append_new(names, json_string("example.png"));
    return bad ? KN_ERR_NOMEM : KN_OK;
}

static const kn_folder_lister lister = {.list = list_folder};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kn_err err;
    kn_err_clear(&err);
    json_t *prompt = NULL, *error = NULL;
    int st = kn_workflow_load_memory(data, size, &lister, &prompt, &error, &err);
    if (st != KN_OK) {
        if (prompt || err.msg[0] == '\0' || (st != KN_ERR_NOMEM && !error)) abort();
        kn_fuzz_check_prints(error);
        json_decref(error);
        return 0;
    }
    if (!prompt || error) abort();
    kn_fuzz_check_prints(prompt);
    kn_validation v;
    st = kn_validate_prompt(prompt, NULL, &lister, NULL, &v, &err);
    if (st == KN_OK && (v.error || json_array_size(v.outputs) == 0 || json_array_size(v.order) == 0)) abort();
    if (st == KN_ERR_INVALID && (!v.error || err.msg[0] == '\0')) abort();
    if (st == KN_OK || st == KN_ERR_INVALID) {
        json_t *body = kn_validation_body(&v);
        if (body) kn_fuzz_check_prints(body);
        json_decref(body);
        kn_validation_free(&v);
    }
    json_decref(prompt);
    return 0;
}
