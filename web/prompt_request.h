/* kn_prompt_request: the body of POST /prompt as ComfyUI reads it, turned
 * into what the queue takes (web/server.c hands it to validation and
 * kn_queue_push). Kept apart from the HTTP plumbing so that it can be
 * fuzzed (tests/fuzz/fuzz_prompt_body.c).
 *
 * Contract:
 *  - kn_prompt_request_parse reads a JSON body {"prompt", "client_id",
 *    "prompt_id", "number", "front", "extra_data",
 *    "partial_execution_targets"}. On KN_OK, req holds the prompt in API
 *    format (a UI-format graph is converted as the front end would, and kept
 *    as extra_pnginfo.workflow unless the client sent one), the prompt id
 *    (the client's string or integer, else a new uuid4), extra_data as
 *    queued (the client's object, client_id, create_time; no API keys), the
 *    client's number and partial_execution_targets (borrowed from
 *    req->body) and front.
 *  - Otherwise *reply is the 400 body to answer in ComfyUI's shapes
 *    ("invalid_prompt", "no_prompt", or the converter's error) and the
 *    status is KN_ERR_INVALID; KN_ERR_NOMEM leaves *reply NULL. err->msg
 *    says why in both cases. req is always safe to free.
 *  - No server state: any thread. */
#ifndef KN_WEB_PROMPT_REQUEST_H
#define KN_WEB_PROMPT_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "graph/validate.h"
#include "kernels/error.h"

#define KN_PROMPT_ID_MAX 256

typedef struct kn_prompt_request {
    char id[KN_PROMPT_ID_MAX + 1];
    json_t *body;   /* the parsed body: owns number and targets */
    json_t *prompt; /* API format */
    json_t *extra;  /* extra_data as queued */
    const json_t *number, *targets;
    bool front;
} kn_prompt_request;

int kn_prompt_request_parse(const char *text, size_t len, const kn_folder_lister *lister, kn_prompt_request *req,
                            json_t **reply, kn_err *err);
void kn_prompt_request_free(kn_prompt_request *req);

#endif
