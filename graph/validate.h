/* kn_validate: check an API-format prompt against the node registry exactly as
 * ComfyUI's execution.validate_prompt does, and order its execution as
 * comfy_execution/graph.py's ExecutionList would.
 *
 * Contract:
 *  - kn_validate_prompt(prompt, targets, lister, out, err):
 *      returns KN_OK when at least one output node validated (ComfyUI queues
 *      the prompt: HTTP 200); out->outputs lists those outputs, out->order every
 *      node that will run (the outputs and their linked ancestors) in
 *      dependency order, and out->node_errors may still name failing outputs.
 *      Returns KN_ERR_INVALID when ComfyUI would answer 400: out->error is the
 *      top-level error ({type, message, details, extra_info}; types
 *      missing_node_type, prompt_no_outputs, prompt_outputs_failed_validation,
 *      invalid_prompt for a prompt that is not an object of objects) and
 *      out->node_errors maps node ids to {errors, dependent_outputs,
 *      class_type}; err->msg summarises the first error. KN_ERR_NOMEM and
 *      lister failures return with err set and out empty.
 *  - Like ComfyUI, validation rewrites constant inputs of the prompt in place:
 *    {"__value__": v} is unwrapped and INT/FLOAT/STRING/BOOLEAN values are
 *    converted as Python's int()/float()/str()/bool() would, so the executor
 *    reads typed values. Inputs a class does not declare are ignored.
 *  - targets: NULL, or a JSON array of output node ids to restrict the run to
 *    (POST /prompt's partial_execution_targets).
 *  - lister: lists model folders for file-name choices; NULL skips those
 *    checks (and LoadImage's file check) but checks every fixed choice list.
 *  - Kiln is stricter than ComfyUI in four places, each reported with a
 *    ComfyUI error shape: a constant given to a socket input
 *    (invalid_input_type), non-finite floats and integers beyond 64 bits
 *    (invalid_input_type; Python would accept them), negative output
 *    indexes in links (IndexError, where Python counts from the end), and
 *    dependency cycles, reported as exception_during_inner_validation
 *    ("Dependency cycle detected") where ComfyUI overflows its recursion
 *    limit. Link chains deeper than KN_VALIDATE_MAX_DEPTH fail the way
 *    Python's recursion limit makes ComfyUI fail ("maximum recursion depth
 *    exceeded").
 *  - Links of inputs a class does not declare are ignored for the execution
 *    order too (ComfyUI would schedule, unvalidated, whatever they point to). 
 *  - kn_validation_free releases everything in *out (safe on a zeroed struct). */
#ifndef KN_GRAPH_VALIDATE_H
#define KN_GRAPH_VALIDATE_H

#include <jansson.h>

#include "kernels/error.h"
#include "nodes/registry.h"

#define KN_VALIDATE_MAX_DEPTH 1000 /* Python's default recursion limit */

typedef struct kn_validation {
    json_t *error;       /* NULL when the prompt is accepted */
    json_t *node_errors; /* object */
    json_t *outputs;     /* array of output node ids that will run */
    json_t *order;       /* array of node ids, execution order */
} kn_validation;

int kn_validate_prompt(json_t *prompt, const json_t *targets, const kn_folder_lister *lister,
                       kn_validation *out, kn_err *err);
void kn_validation_free(kn_validation *v);

/* The 400 body {"error": ..., "node_errors": ...} of a rejected prompt (new reference). */
json_t *kn_validation_body(const kn_validation *v);

/* A body with a top-level error and no node errors; extra_info is stolen
 * (NULL = {}). Returns NULL when out of memory. */
json_t *kn_prompt_error_body(const char *type, const char *message, const char *details, json_t *extra_info);

#endif
