/* POST /prompt's body: see web/prompt_request.h. */
#include "web/prompt_request.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "graph/executor.h"
#include "graph/workflow.h"

static bool truthy(const json_t *v) {
    return json_is_true(v) || (json_is_number(v) && json_number_value(v) != 0) ||
           (json_is_string(v) && json_string_length(v) > 0);
}

/* extra_data as queued: the client's object (copied), client_id, no secrets, create_time. */
static json_t *queued_extra_data(const json_t *body) {
    const json_t *given = json_object_get(body, "extra_data");
    json_t *extra = json_is_object(given) ? json_deep_copy(given) : json_object();
    const json_t *cid = json_object_get(body, "client_id");
    if (!extra) return NULL;
    if (json_is_string(cid)) json_object_set(extra, "client_id", (json_t *)cid);
    /* ComfyUI moves these into its never-shown "sensitive" slot; Kiln has no API nodes to pass them to. */
    json_object_del(extra, "auth_token_comfy_org");
    json_object_del(extra, "api_key_comfy_org");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    json_object_set_new(extra, "create_time", json_integer((json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000));
    return extra;
}

/* ComfyUI's 400 body for a request it could not take. */
static int refuse(json_t **reply, kn_err *err, const char *details) {
    *reply = kn_prompt_error_body("invalid_prompt", "Invalid prompt", details, NULL);
    return kn_fail(err, *reply ? KN_ERR_INVALID : KN_ERR_NOMEM, "%s", details);
}

/* The fields ComfyUI checks before the prompt itself. */
static int check_fields(kn_prompt_request *req, json_t **reply, kn_err *err) {
    const json_t *body = req->body, *jid = json_object_get(body, "prompt_id");
    if (!json_is_object(body)) return refuse(reply, err, "the request body must be a JSON object");
    if (req->number && !json_is_number(req->number)) return refuse(reply, err, "'number' must be a number");
    if (!json_object_get(body, "prompt")) {
        *reply = kn_prompt_error_body("no_prompt", "No prompt provided", "No prompt provided", NULL);
        return kn_fail(err, *reply ? KN_ERR_INVALID : KN_ERR_NOMEM, "No prompt provided");
    }
    if (jid && !json_is_string(jid) && !json_is_integer(jid))
        return refuse(reply, err, "'prompt_id' must be a string or an integer");
    if (json_is_string(jid) && (json_string_length(jid) == 0 || json_string_length(jid) > KN_PROMPT_ID_MAX))
        return refuse(reply, err, "'prompt_id' must be 1 to 256 characters");
    if (json_is_string(jid)) snprintf(req->id, sizeof req->id, "%s", json_string_value(jid));
    else if (jid) snprintf(req->id, sizeof req->id, "%lld", (long long)json_integer_value(jid));
    else kn_uuid4(req->id, 1);
    return KN_OK;
}

int kn_prompt_request_parse(const char *text, size_t len, const kn_folder_lister *lister, kn_prompt_request *req,
                            json_t **reply, kn_err *err) {
    memset(req, 0, sizeof *req);
    *reply = NULL;
    json_error_t jerr;
    req->body = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!req->body) {
        char details[256];
        snprintf(details, sizeof details, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        return refuse(reply, err, details);
    }
    req->number = json_object_get(req->body, "number");
    req->targets = json_object_get(req->body, "partial_execution_targets");
    req->front = truthy(json_object_get(req->body, "front"));
    int rc = check_fields(req, reply, err);
    if (rc) return rc;
    req->extra = queued_extra_data(req->body);
    req->prompt = json_incref(json_object_get(req->body, "prompt"));
    if (!req->extra) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    /* Kiln extra: a UI-format graph is converted as the front end would before queueing. */
    if (json_is_object(req->prompt) && kn_workflow_detect(req->prompt) == KN_WORKFLOW_UI) {
        json_t *api = NULL, *error = NULL;
        if ((rc = kn_workflow_to_api(req->prompt, lister, &api, &error, err))) {
            if (error) *reply = error;
            else if (rc != KN_ERR_NOMEM) return refuse(reply, err, err->msg);
            return *reply ? KN_ERR_INVALID : rc;
        }
        json_t *pnginfo = json_object_get(req->extra, "extra_pnginfo");
        if (!pnginfo) json_object_set_new(req->extra, "extra_pnginfo", pnginfo = json_object());
        if (json_is_object(pnginfo) && !json_object_get(pnginfo, "workflow"))
            json_object_set(pnginfo, "workflow", req->prompt);
        json_decref(req->prompt);
        req->prompt = api;
    }
    return KN_OK;
}

void kn_prompt_request_free(kn_prompt_request *req) {
    json_decref(req->prompt);
    json_decref(req->extra);
    json_decref(req->body);
    memset(req, 0, sizeof *req);
}
