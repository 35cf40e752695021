/* Internals the graph/validate*.c files share; the API and the contract are
 * in validate.h. Private to those files: nothing else includes this header.
 *
 *   validate.c       the prompt: indexing its nodes, validating its outputs,
 *                    node_errors and the top-level error, execution order
 *   validate_node.c  one node (ComfyUI's validate_inputs): its links,
 *                    constants and choices, the class's validate hook and
 *                    family check, and the error entries they record
 *
 * A vctx lives for one kn_validate_prompt call, which frees what it owns;
 * its vnodes are the prompt's nodes in prompt order (node borrowed from the
 * prompt, errors owned). */
#ifndef KN_GRAPH_VALIDATE_IMPL_H
#define KN_GRAPH_VALIDATE_IMPL_H

#include <jansson.h>

#include "graph/validate.h"

enum { NODE_NEW /* zeroed: not checked yet */, NODE_BUSY, NODE_DONE };
/* What checking a node or input yields. RES_OK: carry on (for a node: it is
 * valid). RES_RAISED mirrors a Python exception escaping validate_inputs,
 * which the caller turns into an error on that node. RES_FATAL: err is set
 * (out of memory, folder listing failed). */
enum { RES_OK, RES_INVALID, RES_RAISED, RES_FATAL };

/* A growable list of node positions. */
typedef struct ivec {
    int *v;
    int n, cap;
} ivec;

typedef struct vnode {
    const char *id;
    json_t *node;
    const kn_node_class *cls;
    int state;
    int valid;
    json_t *errors; /* this node's own errors (ComfyUI's "reasons") */
    /* ExecutionList bookkeeping */
    int pending, block_count;
    ivec blocking; /* nodes waiting on this one, in insertion order */
    /* dependent_outputs bookkeeping: the last failing output whose walk
     * visited this node, and how many such walks did */
    int walk_stamp, walks;
    int pending_pos; /* place in the order nodes were added (ExecutionList's pendingNodes) */
} vnode;

typedef struct vctx {
    const json_t *prompt;
    const kn_folder_lister *lister;
    const kn_node_env *run; /* NULL: schema only */
    kn_err *err;
    vnode *nodes;
    int n;
    json_t *index;            /* node id -> position in nodes */
    json_t *targets;          /* set of target output ids, NULL for all */
    json_t *strings;          /* error types, messages and class names, shared by all errors */
    json_t *input_infos;      /* input name -> a shared extra_info {"input_name": name} */
    char exc_type[64];        /* the exception a RES_RAISED carries */
    char exc_msg[512];
} vctx;
/* validate_node.c: the node at position i, memoised in its state (a RES_*
 * value; depth counts links followed, as Python's recursion does). */
int kn_validate_node(vctx *c, int i, int depth);
json_t *kn_validate_interned(vctx *c, const char *text);
json_t *kn_validate_error_entry(vctx *c, const char *type, const char *message, const char *details,
                                json_t *extra);
int kn_validate_set_failed(vctx *c, vnode *n, json_t *entry);

#endif
