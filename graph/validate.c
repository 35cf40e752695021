/* ComfyUI's prompt validation (comfy/cmd/execution.py _validate_prompt at
 * 87606c5f, upstream execution.py) and execution order
 * (comfy_execution/graph.py ExecutionList with ux_friendly_pick_node), over
 * the node registry; one node's validate_inputs is validate_node.c. Error
 * types, messages, details and extra_info keys are ComfyUI's, with its
 * Python formatting of values (graph/pyconv.h). */
#include "graph/validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/pyconv.h"
#include "graph/validate_impl.h"
#include "kernels/json.h"

static int ivec_push(ivec *a, int x) {
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 16;
        int *p = cap > a->cap ? realloc(a->v, (size_t)cap * sizeof *p) : NULL; /* cap > a->cap: no int overflow */
        if (!p) return -1;
        a->v = p;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

/* ---- execution order ----------------------------------------------------------- */

/* ExecutionList.add_strong_link: the first link from one node to another
 * blocks the target once. Links arrive grouped by target (a node's inputs
 * together, each node once), so a repeat is the last one added. */
static int add_blocking(vctx *c, int from, int to) {
    ivec *b = &c->nodes[from].blocking;
    if (b->n > 0 && b->v[b->n - 1] == to) return 0;
    if (ivec_push(b, to) != 0) return -1;
    c->nodes[to].block_count++;
    return 0;
}

static int is_output(const vctx *c, int i) { return c->nodes[i].cls->output_node; }

/* ux_friendly_pick_node's preference for a ready node: 0 an output, 1 a
 * node feeding an output, 2 one two links away from an output, else 3. It
 * is fixed once the links are applied, so the ready nodes wait in one heap
 * per tier, first added first: the pick is the top of the first non-empty
 * heap, what ComfyUI's scan over the ready list finds, in O(log n). */
static int pick_tier(const vctx *c, int u) {
    if (is_output(c, u)) return 0;
    const ivec *b = &c->nodes[u].blocking;
    for (int j = 0; j < b->n; j++)
        if (is_output(c, b->v[j])) return 1;
    for (int j = 0; j < b->n; j++) {
        const ivec *b1 = &c->nodes[b->v[j]].blocking;
        for (int j1 = 0; j1 < b1->n; j1++)
            if (is_output(c, b1->v[j1])) return 2;
    }
    return 3;
}

/* A min-heap of nodes by pending_pos. */
static int heap_push(const vctx *c, ivec *h, int u) {
    if (ivec_push(h, u) != 0) return -1;
    for (int k = h->n - 1; k > 0;) {
        int parent = (k - 1) / 2;
        if (c->nodes[h->v[parent]].pending_pos <= c->nodes[h->v[k]].pending_pos) break;
        int t = h->v[parent];
        h->v[parent] = h->v[k];
        h->v[k] = t;
        k = parent;
    }
    return 0;
}

static int heap_pop(const vctx *c, ivec *h) {
    int top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (int k = 0;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < h->n && c->nodes[h->v[l]].pending_pos < c->nodes[h->v[m]].pending_pos) m = l;
        if (r < h->n && c->nodes[h->v[r]].pending_pos < c->nodes[h->v[m]].pending_pos) m = r;
        if (m == k) break;
        int t = h->v[m];
        h->v[m] = h->v[k];
        h->v[k] = t;
        k = m;
    }
    return top;
}

/* The node a declared input links from, or -1 (validated links only). */
static int link_source(const vctx *c, const vnode *n, const kn_input_spec *in) {
    json_t *v = json_object_get(json_object_get(n->node, "inputs"), in->name);
    if (!json_is_array(v) || json_array_size(v) != 2) return -1;
    json_t *pos = json_object_get(c->index, json_string_value(json_array_get(v, 0)));
    return pos ? (int)json_integer_value(pos) : -1;
}

/* ExecutionList without a cache: TopologicalSort.add_node for each output (a
 * stack walk over linked inputs, links applied afterwards), then nodes are
 * staged one at a time from the ready ones, in the order they were added. */
static int execution_order(vctx *c, const json_t *outputs, json_t *order) {
    ivec pending = {0}, stack = {0}, links = {0}, ready[4] = {{0}};
    int bad = 0;
    for (size_t o = 0; !bad && o < json_array_size(outputs); o++) {
        json_t *pos = json_object_get(c->index, json_string_value(json_array_get(outputs, o)));
        bad = ivec_push(&stack, (int)json_integer_value(pos));
        while (!bad && stack.n > 0) {
            int u = stack.v[--stack.n];
            vnode *n = &c->nodes[u];
            if (n->pending) continue;
            n->pending = 1;
            n->pending_pos = pending.n;
            bad = ivec_push(&pending, u);
            for (int k = 0; !bad && k < n->cls->n_inputs; k++) {
                int from = link_source(c, n, &n->cls->inputs[k]);
                if (from >= 0) bad = ivec_push(&stack, from) || ivec_push(&links, from) || ivec_push(&links, u);
            }
        }
    }
    for (int k = 0; !bad && k < links.n; k += 2) bad = add_blocking(c, links.v[k], links.v[k + 1]);
    for (int k = 0; !bad && k < pending.n; k++)
        if (c->nodes[pending.v[k]].block_count == 0)
            bad = heap_push(c, &ready[pick_tier(c, pending.v[k])], pending.v[k]);
    int status = bad ? kn_fail(c->err, KN_ERR_NOMEM, "execution order: out of memory") : KN_OK;
    for (int left = pending.n; status == KN_OK && left > 0; left--) {
        int tier = 0;
        while (tier < 4 && ready[tier].n == 0) tier++;
        if (tier == 4) { /* unreachable after validation, which rejects cycles */
            status = kn_fail(c->err, KN_ERR_INVALID, "execution order: dependency cycle detected");
            break;
        }
        vnode *u = &c->nodes[heap_pop(c, &ready[tier])];
        u->pending = 0;
        for (int j = 0; !bad && j < u->blocking.n; j++) {
            int v = u->blocking.v[j];
            if (--c->nodes[v].block_count == 0) bad = heap_push(c, &ready[pick_tier(c, v)], v);
        }
        if (bad || json_array_append_new(order, json_string(u->id)) != 0)
            status = kn_fail(c->err, KN_ERR_NOMEM, "execution order: out of memory");
    }
    free(pending.v);
    free(stack.v);
    free(links.v);
    for (int t = 0; t < 4; t++) free(ready[t].v);
    return status;
}

/* ---- the prompt ------------------------------------------------------------------ */

json_t *kn_prompt_error_body(const char *type, const char *message, const char *details, json_t *extra_info) {
    return json_pack("{s:{s:s, s:s, s:s, s:o}, s:{}}", "error", "type", type, "message", message, "details",
                     details, "extra_info", extra_info ? extra_info : json_object(), "node_errors");
}

json_t *kn_validation_body(const kn_validation *v) {
    return json_pack("{s:O?, s:O?}", "error", v->error, "node_errors", v->node_errors);
}

void kn_validation_free(kn_validation *v) {
    json_decref(v->error);
    json_decref(v->node_errors);
    json_decref(v->outputs);
    json_decref(v->order);
    v->error = v->node_errors = v->outputs = v->order = NULL;
}

/* Rejects the prompt with a top-level error; err gets "<type>: <message>". */
static int reject(kn_validation *out, kn_err *err, const char *type, const char *message, const char *details,
                  json_t *extra) {
    json_t *e = json_pack("{s:s, s:s, s:s, s:o}", "type", type, "message", message, "details", details, "extra_info",
                          extra ? extra : json_object());
    if (!e) return kn_fail(err, KN_ERR_NOMEM, "validating the prompt: out of memory");
    json_decref(out->error);
    out->error = e;
    return kn_fail(err, KN_ERR_INVALID, "%s: %s (%s)", type, message, details);
}

/* Finds every node's class; ComfyUI stops at the first node without one. */
static int index_nodes(vctx *c, json_t *prompt, kn_validation *out) {
    const char *id;
    json_t *node;
    c->prompt = prompt;
    json_object_foreach(prompt, id, node) {
        char details[512];
        snprintf(details, sizeof details, "Node ID '#%s'", id);
        if (!json_is_object(node))
            return reject(out, c->err, "invalid_prompt", "Prompt node is not a JSON object", details,
                          json_pack("{s:s}", "node_id", id));
        json_t *meta = json_object_get(node, "_meta");
        json_t *title = json_is_object(meta) ? json_object_get(meta, "title") : NULL;
        json_t *class_type = json_object_get(node, "class_type");
        const kn_node_class *cls = json_is_string(class_type) ? kn_registry_find(json_string_value(class_type)) : NULL;
        if (!cls) {
            /* Python: a node without class_type is named `title or "ID #<id>"`,
             * an unknown class `meta.get("title", class_type)`. */
            json_t *named = class_type ? (title ? title : class_type) : (title && kn_py_truthy(title) ? title : NULL);
            char *shown = named ? kn_py_str(named) : NULL;
            if (named && !shown) return kn_fail(c->err, KN_ERR_NOMEM, "validating the prompt: out of memory");
            char message[1024];
            if (!class_type)
                snprintf(message, sizeof message,
                         "Node '%s%s' has no class_type. The workflow may be corrupted or a custom node is missing.",
                         shown ? "" : "ID #", shown ? shown : id);
            else
                snprintf(message, sizeof message, "Node '%s' not found. The custom node may not be installed.", shown);
            free(shown);
            return reject(out, c->err, "missing_node_type", message, details,
                          json_pack("{s:s, s:O?, s:O?}", "node_id", id, "class_type", class_type, "node_title",
                                    class_type ? named : title));
        }
        vnode *n = &c->nodes[c->n];
        memset(n, 0, sizeof *n);
        n->id = id;
        n->node = node;
        n->cls = cls;
        if (json_object_set_new(c->index, id, json_integer(c->n)) != 0)
            return kn_fail(c->err, KN_ERR_NOMEM, "validating the prompt: out of memory");
        c->n++;
    }
    return KN_OK;
}

/* The string ids of targets as a set (one lookup per output node, not a scan). */
static int target_set(vctx *c, const json_t *targets) {
    if (!targets) return KN_OK;
    if (!(c->targets = json_object())) return KN_ERR_NOMEM;
    for (size_t k = 0; k < json_array_size(targets); k++) {
        const json_t *t = json_array_get(targets, k);
        if (json_is_string(t) && json_object_set_new(c->targets, json_string_value(t), json_true()) != 0)
            return KN_ERR_NOMEM;
    }
    return KN_OK;
}

static int in_targets(const vctx *c, const char *id) { return !c->targets || json_object_get(c->targets, id); }

static int by_position(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* After output o (position oi, the walk's stamp) failed: the failed nodes it
 * reaches through its links join node_errors (new ones in prompt order, as
 * ComfyUI's walk over validated nodes adds them) and list o among their
 * dependent_outputs, at most KN_VALIDATE_MAX_DEPENDENTS of them. The walk
 * stops at valid nodes (their ancestors are valid) and at nodes that
 * KN_VALIDATE_MAX_DEPENDENTS walks passed already (so did they through all
 * of its ancestors): each node is entered a bounded number of times. */
static int collect_node_errors(vctx *c, int oi, ivec *stack, ivec *found, json_t *node_errors) {
    const char *o = c->nodes[oi].id;
    json_t *name = json_string(o);
    if (!name) return -1;
    int bad = 0;
    stack->n = found->n = 0;
    c->nodes[oi].walk_stamp = oi + 1;
    bad = ivec_push(stack, oi);
    while (!bad && stack->n > 0) {
        vnode *n = &c->nodes[stack->v[--stack->n]];
        if (n->walks++ >= KN_VALIDATE_MAX_DEPENDENTS) continue;
        if (n->state == NODE_DONE && !n->valid && json_array_size(n->errors) > 0)
            bad = ivec_push(found, (int)(n - c->nodes));
        for (int k = 0; !bad && n->state == NODE_DONE && !n->valid && k < n->cls->n_inputs; k++) {
            int from = link_source(c, n, &n->cls->inputs[k]);
            if (from >= 0 && c->nodes[from].walk_stamp != oi + 1) {
                c->nodes[from].walk_stamp = oi + 1;
                bad = ivec_push(stack, from);
            }
        }
    }
    if (!bad) qsort(found->v, (size_t)found->n, sizeof *found->v, by_position);
    for (int k = 0; !bad && k < found->n; k++) {
        vnode *n = &c->nodes[found->v[k]];
        json_t *entry = json_object_get(node_errors, n->id);
        if (!entry) {
            json_t *cls = kn_validate_interned(c, n->cls->name);
            entry = cls ? json_pack("{s:O, s:[], s:O}", "errors", n->errors, "dependent_outputs", "class_type", cls)
                        : NULL;
            bad = !entry || json_object_set_new(node_errors, n->id, entry) != 0;
        }
        if (!bad) bad = json_array_append(json_object_get(entry, "dependent_outputs"), name) != 0;
    }
    json_decref(name);
    return bad ? -1 : 0;
}

/* A growable text (the top-level details, appended once per failing output). */
typedef struct text {
    char *s;
    size_t n, cap;
} text;

/* Appends "<sep><a>: <b>"; -1 when out of memory. */
static int text_put(text *t, const char *sep, const char *a, const char *b) {
    size_t la = strlen(sep) + strlen(a), lb = strlen(b), need = t->n + la + 2 + lb + 1;
    if (need > t->cap) {
        size_t cap = need > 2 * t->cap ? need : 2 * t->cap;
        char *p = realloc(t->s, cap);
        if (!p) return -1;
        t->s = p;
        t->cap = cap;
    }
    t->n += (size_t)sprintf(t->s + t->n, "%s%s: %s", sep, a, b);
    return 0;
}

static int validate_outputs(vctx *c, const json_t *targets, kn_validation *out) {
    ivec outputs = {0}, stack = {0}, found = {0};
    text details = {0};
    int status = target_set(c, targets);
    for (int k = 0; status == KN_OK && k < c->n; k++)
        if (c->nodes[k].cls->output_node && in_targets(c, c->nodes[k].id) && ivec_push(&outputs, k) != 0)
            status = KN_ERR_NOMEM;
    if (status == KN_OK && outputs.n == 0) {
        free(outputs.v);
        return reject(out, c->err, "prompt_no_outputs", "Prompt has no outputs", "", NULL);
    }
    for (int k = 0; status == KN_OK && k < outputs.n; k++) {
        vnode *o = &c->nodes[outputs.v[k]];
        int r = kn_validate_node(c, outputs.v[k], 1);
        if (r == RES_FATAL) {
            status = c->err->code ? c->err->code : KN_ERR_NOMEM;
            break;
        }
        if (r == RES_RAISED &&
            kn_validate_set_failed(c, o,
                                   kn_validate_error_entry(c, "exception_during_validation",
                                                           "Exception when validating node", c->exc_msg,
                                                           json_pack("{s:s, s:[]}", "exception_type", c->exc_type,
                                                                     "traceback"))) != RES_OK) {
            status = KN_ERR_NOMEM;
            break;
        }
        if (r == RES_OK) {
            if (json_array_append_new(out->outputs, json_string(o->id)) != 0) status = KN_ERR_NOMEM;
            continue;
        }
        /* The top-level details list only the output's own errors, one per line. */
        for (size_t e = 0; status == KN_OK && e < json_array_size(o->errors); e++) {
            json_t *err = json_array_get(o->errors, e);
            if (text_put(&details, details.n ? "\n" : "", json_string_value(json_object_get(err, "message")),
                         json_string_value(json_object_get(err, "details"))) != 0)
                status = KN_ERR_NOMEM;
        }
        if (status == KN_OK && collect_node_errors(c, outputs.v[k], &stack, &found, out->node_errors) != 0)
            status = KN_ERR_NOMEM;
    }
    if (status == KN_OK && json_array_size(out->outputs) == 0) {
        status = reject(out, c->err, "prompt_outputs_failed_validation", "Prompt outputs failed validation",
                        details.s ? details.s : "", NULL);
        /* Name the first failing input: the top-level details are often empty. */
        const char *nid;
        json_t *ne;
        json_object_foreach(out->node_errors, nid, ne) {
            json_t *first = json_array_get(json_object_get(ne, "errors"), 0);
            kn_fail(c->err, KN_ERR_INVALID, "prompt outputs failed validation: node %s (%s): %s: %s", nid,
                    json_string_value(json_object_get(ne, "class_type")),
                    json_string_value(json_object_get(first, "message")),
                    json_string_value(json_object_get(first, "details")));
            break;
        }
    }
    free(outputs.v);
    free(stack.v);
    free(found.v);
    free(details.s);
    if (status == KN_ERR_NOMEM) return kn_fail(c->err, status, "validating the prompt: out of memory");
    return status;
}

int kn_validate_prompt(json_t *prompt, const json_t *targets, const kn_folder_lister *lister, const kn_node_env *run,
                       kn_validation *out, kn_err *err) {
    memset(out, 0, sizeof *out);
    vctx c = {.lister = lister, .run = run, .err = err};
    out->node_errors = json_object();
    out->outputs = json_array();
    out->order = json_array();
    c.index = json_object();
    c.strings = json_object();
    c.input_infos = json_object();
    int status = KN_OK;
    if (!out->node_errors || !out->outputs || !out->order || !c.index || !c.strings || !c.input_infos) {
        status = kn_fail(err, KN_ERR_NOMEM, "validating the prompt: out of memory");
    } else if (!json_is_object(prompt)) {
        status = reject(out, err, "invalid_prompt", "Prompt is not a JSON object", "", NULL);
    } else {
        size_t count = json_object_size(prompt);
        c.nodes = calloc(count + 1, sizeof *c.nodes);
        if (!c.nodes) status = kn_fail(err, KN_ERR_NOMEM, "validating the prompt: out of memory");
    }
    if (status == KN_OK) status = index_nodes(&c, prompt, out);
    if (status == KN_OK) status = validate_outputs(&c, targets, out);
    if (status == KN_OK) status = execution_order(&c, out->outputs, out->order);
    for (int k = 0; k < c.n; k++) {
        json_decref(c.nodes[k].errors);
        free(c.nodes[k].blocking.v);
    }
    free(c.nodes);
    json_decref(c.index);
    json_decref(c.targets);
    json_decref(c.strings);
    json_decref(c.input_infos);
    if (status != KN_OK && status != KN_ERR_INVALID) kn_validation_free(out);
    return status;
}
