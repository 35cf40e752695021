/* kn_workflow: load ComfyUI workflows in either file format and turn the UI
 * ("workflow") format into the API ("prompt") format exactly as ComfyUI's
 * front end does when it queues a graph (ComfyUI_frontend graphToPrompt,
 * ExecutableNodeDTO; notes/comfyui-workflows.md §2-3).
 *
 * Contract:
 *  - kn_workflow_detect: a JSON object with a "nodes" array is the UI
 *    format; anything else is taken as an API prompt (id -> {class_type, inputs}).
 *  - kn_workflow_to_api converts a UI graph: widget values are named by the
 *    registry's widget order (the seed-control slot after seed/noise_seed and
 *    LoadImage's upload slot are skipped, missing trailing values take the
 *    schema default), links become ["<origin id>", slot], muted (mode 2),
 *    bypassed (mode 4, rewired by type) and UI-only nodes (Note, MarkdownNote,
 *    PrimitiveNode, Reroute) are dropped, PrimitiveNode values are pushed into
 *    the widgets they feed (through Reroutes), subgraph instances are
 *    flattened to "<instance>:<inner>" ids with promoted widget values
 *    (properties.proxyWidgets), inputs linked to dropped nodes are deleted,
 *    and _meta.title is the node's title or the class's display name.
 *    Numbers come out as a JavaScript front end sends them (1.0 -> 1).
 *    Classes the registry does not know are kept with their links only, so
 *    validation names them (missing_node_type). Legacy group nodes
 *    ("workflow>Name") are not expanded and so fail validation the same way.
 *  - Where the front end would refuse to queue (a link id or node that does
 *    not exist, a slot out of range, circular links, malformed nodes or
 *    links, subgraphs nested deeper than KN_WORKFLOW_MAX_NESTING or expanding
 *    to more than KN_WORKFLOW_MAX_NODES nodes) conversion fails with
 *    KN_ERR_INVALID, err naming the node and input, and *error (when non-NULL)
 *    set to a ComfyUI-shaped body {"error": {"type": "invalid_prompt",
 *    "message", "details": "Node ID '#<id>'", "extra_info": {"node_id",
 *    "input_name"}}, "node_errors": {}}.
 *  - kn_workflow_load_memory / _file parse text (either format) and return
 *    the API prompt (a new reference; the UI format converted). Malformed
 *    JSON (KN_ERR_FORMAT), an unreadable file (KN_ERR_IO) and a top level
 *    that is not an object (KN_ERR_INVALID) also set *error, type
 *    invalid_prompt. The prompt is not validated: see graph/validate.h.
 *  - lister (may be NULL) supplies file-name choices, needed only to default
 *    a file-name widget that a UI node left without a value.
 *  - Input is untrusted: every field is type-checked before use, link
 *    following is iterative and bounded, nothing recurses on input depth
 *    beyond jansson's parser limit. */
#ifndef KN_GRAPH_WORKFLOW_H
#define KN_GRAPH_WORKFLOW_H

#include <stddef.h>

#include <jansson.h>

#include "kernels/error.h"
#include "nodes/registry.h"

#define KN_WORKFLOW_MAX_NESTING 16    /* subgraph instances inside subgraph instances */
#define KN_WORKFLOW_MAX_NODES 100000  /* nodes after flattening subgraphs */
#define KN_WORKFLOW_MAX_FILE (256u << 20)

typedef enum kn_workflow_format { KN_WORKFLOW_API = 0, KN_WORKFLOW_UI } kn_workflow_format;

kn_workflow_format kn_workflow_detect(const json_t *doc);

int kn_workflow_to_api(const json_t *ui, const kn_folder_lister *lister, json_t **prompt, json_t **error,
                       kn_err *err);

int kn_workflow_load_memory(const void *data, size_t size, const kn_folder_lister *lister, json_t **prompt,
                            json_t **error, kn_err *err);
int kn_workflow_load_file(const char *path, const kn_folder_lister *lister, json_t **prompt, json_t **error,
                          kn_err *err);

/* A class's widgets_values layout, as the front end builds it: w[i] is the
 * input whose value slot i holds, NULL for a UI-only slot (the seed control
 * after seed/noise_seed, LoadImage's upload button). w holds 2 * n_inputs + 1
 * entries; returns the count. */
int kn_workflow_widget_list(const kn_node_class *cls, const kn_input_spec **w);

/* Writes the constant inputs of an API prompt back into the UI graph it was
 * converted from, so a PNG's "workflow" chunk shows the values that were
 * rendered (kiln run's --set and --seed): each top-level node of ui whose id
 * names a prompt node of the same class gets widgets_values[i] = the
 * prompt's value for widget i (links left alone). Nodes inside subgraphs and
 * values a PrimitiveNode pushes keep the graph's own values. ui is edited in
 * place; KN_ERR_NOMEM is the only failure. */
int kn_workflow_write_back(json_t *ui, const json_t *prompt, kn_err *err);

#endif
