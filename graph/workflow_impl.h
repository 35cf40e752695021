/* Internals the graph/workflow*.c files share (UI -> API conversion); the
 * API and the contract are in workflow.h. Private to those files: nothing
 * else includes this header.
 *
 *   workflow_graph.c  reading the UI graph: nodes, links and subgraph
 *                     definitions parsed and indexed (ui_graph), then
 *                     flattened into execution order (conv.dtos)
 *   workflow.c        PrimitiveNode values, link resolution, graphToPrompt,
 *                     loading files
 *
 * A conv lives for one kn_workflow_to_api call, which frees it; its graphs
 * and nodes borrow the workflow's JSON. Functions returning int return KN_OK
 * or fail with cv->err set (kn_wf_fail_at also records the node and input
 * for the error body). */
#ifndef KN_GRAPH_WORKFLOW_IMPL_H
#define KN_GRAPH_WORKFLOW_IMPL_H

#include <stddef.h>

#include <jansson.h>

#include "graph/workflow.h"

enum { MODE_NEVER = 2, MODE_BYPASS = 4 }; /* LGraphEventMode values that change the prompt */

typedef enum { UI_NODE, UI_VIRTUAL, UI_PRIMITIVE, UI_REROUTE, UI_SUBGRAPH } ui_kind;

typedef struct ui_link {
    const json_t *origin, *target; /* node ids as written: integer or string */
    json_int_t origin_slot, target_slot;
} ui_link;

typedef struct ui_graph ui_graph;

typedef struct ui_node {
    char id[64];
    const char *type;
    int mode;
    const json_t *inputs, *outputs; /* arrays of objects (an empty array when absent) */
    const json_t *widgets_values;   /* array, or NULL */
    const json_t *properties;       /* object, or NULL */
    const char *title;              /* NULL: the class's default title */
    ui_kind kind;
    const kn_node_class *cls; /* NULL for UI-only, subgraph and unknown types */
    ui_graph *sub;            /* UI_SUBGRAPH: its definition */
    json_t *pushed;           /* widget name -> value written by PrimitiveNodes */
    int primitive_applied;
} ui_node;

struct ui_graph {
    const json_t *def; /* a subgraph definition (inputs, outputs); NULL for the root graph */
    ui_node *nodes;
    size_t n_nodes;
    json_t *node_index; /* node id -> position */
    ui_link *links;
    size_t n_links;
    json_t *link_index; /* link id -> position */
};

/* One node as the front end executes it (ExecutableNodeDTO). */
typedef struct dto {
    ui_graph *g;
    ui_node *node;
    char *exec_id; /* "3", or "57:3" inside subgraph instance 57 */
    int parent;    /* the subgraph instance holding it, -1 at the root */
    int dropped;   /* inside a muted or bypassed subgraph instance */
} dto;

typedef struct conv {
    const kn_folder_lister *lister;
    kn_err *err;
    json_t *empty; /* stands in for absent inputs/outputs arrays */
    ui_graph root;
    ui_graph *subs;
    size_t n_subs;
    dto *dtos;
    size_t n_dtos, cap_dtos;
    json_t *dto_index; /* exec id -> position */
    size_t max_hops;   /* resolution steps before a revisit is certain */
    /* where the conversion failed, for the error body */
    char fail_node[256];
    char fail_input[128];
} conv;

/* workflow.c */
int kn_wf_nomem(conv *cv);
int kn_wf_fail_at(conv *cv, const char *node, const char *input, const char *fmt, ...) KN_PRINTF(4, 5);

/* workflow_graph.c */
ui_node *kn_wf_find_node(const ui_graph *g, const json_t *id);    /* NULL if none */
const ui_link *kn_wf_find_link(const ui_graph *g, const json_t *id); /* NULL if none */
const char *kn_wf_str_field(const json_t *obj, const char *key);   /* NULL unless a string */
int kn_wf_graph_init(conv *cv, ui_graph *g);
void kn_wf_graph_free(ui_graph *g);
/* Parses the workflow's subgraph definitions, nodes and links into cv and
 * fills cv->dtos: the root graph's nodes in execution order, each subgraph
 * instance followed by its inner nodes. */
int kn_wf_flatten(conv *cv, const json_t *ui);

#endif
