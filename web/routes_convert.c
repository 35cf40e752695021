/* POST /kiln/convert: see web/routes_convert.h. */
#include "web/routes_convert.h"

#include "graph/validate.h"
#include "graph/workflow.h"

int kn_route_convert(const kn_http *h, kn_models *models) {
    json_t *doc;
    int st = kn_http_read_json(h, &doc);
    if (st) return st;
    if (!json_is_object(doc)) {
        json_decref(doc);
        return kn_http_json(h, 400, kn_prompt_error_body("invalid_prompt", "Invalid prompt", "expected a workflow object", NULL));
    }
    if (kn_workflow_detect(doc) != KN_WORKFLOW_UI) return kn_http_json(h, 200, doc);
    kn_folder_lister lister = kn_models_lister(models);
    json_t *api = NULL, *error = NULL;
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_workflow_to_api(doc, &lister, &api, &error, &err);
    json_decref(doc);
    if (rc) return error ? kn_http_json(h, 400, kn_http_scrub_json(error)) : kn_http_fail(h, 400, &err);
    return kn_http_json(h, 200, api);
}
