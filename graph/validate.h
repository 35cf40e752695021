/* kn_validate: check an API-format prompt against the node registry exactly as
 * ComfyUI's execution.validate_prompt does, and order its execution as
 * comfy_execution/graph.py's ExecutionList would.
 *
 * Contract:
 *  - kn_validate_prompt(prompt, targets, lister, run, out, err):
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
 *  - run: NULL validates against the schemas only (what `kiln convert`
 *    needs: the registry knows more classes than Kiln runs). Given the env
 *    the prompt is to run in (kn_executor_env), validation is for running:
 *     - a reachable node whose class Kiln does not implement
 *       (kn_node_exec_find is NULL) gets the error {"type":
 *       "missing_node_type", "message": "Node '<title>' (<class>) is not
 *       implemented by Kiln.", "details": "Kiln runs: <classes>",
 *       "extra_info": {node_id, class_type, node_title}}: ComfyUI's
 *       missing_node_type (the class does not exist on this server), moved
 *       from the top level into node_errors because the class is known and
 *       the rest of the prompt is checked as usual (its inputs too), so every
 *       such node of the prompt is named at once and the other outputs still
 *       run, as for any invalid output;
 *     - the class's validate hook (nodes/node.h, ComfyUI's VALIDATE_INPUTS)
 *       runs on the node's constant inputs once they passed their schema
 *       checks; its failure is custom_validation_failed on the input it
 *       names, details "<input> - <message>". Hooks may run on any thread.
 *    Unknown classes stay the top-level missing_node_type in both modes.
 *  - A STRING constant longer than KN_VALIDATE_TEXT_MAX bytes (64 KiB, some
 *    16,000 tokens: far beyond any encoder's useful context) is refused as
 *    value_bigger_than_max on its input: ComfyUI truncates nothing, and a
 *    1 MB prompt would keep a text encoder busy for hours.
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
 *  - A failed node's dependent_outputs lists the failing outputs that link
 *    to it (directly or through other nodes), in validation order, at most
 *    KN_VALIDATE_MAX_DEPENDENTS of them. ComfyUI appends every failing
 *    output to every node that failed before it, related or not: quadratic
 *    in the prompt (a 10 MB prompt of failing outputs took minutes and GBs).
 *    Validation is linear in the prompt's size.
 *  - Links of inputs a class does not declare are ignored for the execution
 *    order too (ComfyUI would schedule, unvalidated, whatever they point to). 
 *  - kn_validation_free releases everything in *out (safe on a zeroed struct). */
#ifndef KN_GRAPH_VALIDATE_H
#define KN_GRAPH_VALIDATE_H

#include <jansson.h>

#include "kernels/error.h"
#include "nodes/registry.h"

typedef struct kn_node_env kn_node_env; /* nodes/node.h */

#define KN_VALIDATE_MAX_DEPTH 1000 /* Python's default recursion limit */
#define KN_VALIDATE_MAX_DEPENDENTS 16 /* dependent_outputs listed per failed node */
#define KN_VALIDATE_TEXT_MAX 65536     /* bytes of a STRING input (prompt text) */

typedef struct kn_validation {
    json_t *error;       /* NULL when the prompt is accepted */
    json_t *node_errors; /* object */
    json_t *outputs;     /* array of output node ids that will run */
    json_t *order;       /* array of node ids, execution order */
} kn_validation;

int kn_validate_prompt(json_t *prompt, const json_t *targets, const kn_folder_lister *lister, const kn_node_env *run,
                       kn_validation *out, kn_err *err);
void kn_validation_free(kn_validation *v);

/* The 400 body {"error": ..., "node_errors": ...} of a rejected prompt (new reference). */
json_t *kn_validation_body(const kn_validation *v);

/* A body with a top-level error and no node errors; extra_info is stolen
 * (NULL = {}). Returns NULL when out of memory. */
json_t *kn_prompt_error_body(const char *type, const char *message, const char *details, json_t *extra_info);

#endif
