/* libFuzzer target for the body of POST /prompt (web/prompt_request.h) and
 * the validation the server runs on what it gives (graph/validate.h), with
 * the path scrubbing of replies (web/http.h).
 *
 * Any input is either refused with a message and, unless memory ran out, a
 * ComfyUI-shaped 400 body, or gives a prompt id of 1..256 bytes, an
 * extra_data object with a create_time, and a prompt that validation answers
 * (accepted with an execution order, or rejected with an error body). Reply
 * bodies print as JSON that reads back as the same value, and scrubbing
 * never lengthens a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "tests/fuzz/fuzz_json.h"
#include "graph/validate.h"
#include "web/http.h"
#include "web/prompt_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int list_folder(void *user, const char *folder, json_t *names, kn_err *err) {
    (void)user, (void)folder, (void)err;
    return json_array_append_new(names, json_string("ae.safetensors")) ? KN_ERR_NOMEM : KN_OK;
}

static const kn_folder_lister lister = {.list = list_folder};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kn_prompt_request req;
    kn_err err;
    kn_err_clear(&err);
    json_t *reply = NULL;
    int st = kn_prompt_request_parse((const char *)data, size, &lister, &req, &reply, &err);
    size_t msg_len = strlen(err.msg);
    kn_http_scrub(err.msg);
    if (strlen(err.msg) > msg_len) abort();
    if (st != KN_OK) {
        if (err.msg[0] == '\0' || (st != KN_ERR_NOMEM && !reply)) abort();
        if (reply) kn_fuzz_check_prints(kn_http_scrub_json(reply));
    } else {
        size_t id_len = strlen(req.id);
        if (reply || !req.prompt || id_len == 0 || id_len > KN_PROMPT_ID_MAX) abort();
        if (!json_is_object(req.extra) || !json_is_integer(json_object_get(req.extra, "create_time"))) abort();
        kn_validation v;
        st = kn_validate_prompt(req.prompt, req.targets, &lister, NULL, &v, &err);
        if (st == KN_OK && (v.error || json_array_size(v.order) == 0)) abort();
        if (st == KN_ERR_INVALID && !v.error) abort();
        if (st == KN_OK || st == KN_ERR_INVALID) {
            json_t *body = kn_validation_body(&v);
            if (body) kn_fuzz_check_prints(kn_http_scrub_json(body));
            json_decref(body);
            kn_validation_free(&v);
        }
    }
    json_decref(reply);
    kn_prompt_request_free(&req);
    return 0;
}
