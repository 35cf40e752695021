/* The UI graph a conversion reads (graph/workflow_impl.h): a workflow's
 * nodes and links and its subgraph definitions parsed and indexed, then
 * flattened as ComfyUI_frontend executes them: LGraph.computeExecutionOrder
 * for the root graph, ExecutableNodeDTO flattening of subgraph instances
 * (SubgraphNode.getInnerNodes). */
#include "graph/workflow_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A node id as a map key (String(id) in the front end); -1 if it is neither
 * an integer nor a string that fits. */
static int id_key(const json_t *v, char *buf, size_t len) {
    int n;
    if (json_is_integer(v)) n = snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_string(v)) n = snprintf(buf, len, "%s", json_string_value(v));
    else return -1;
    return n > 0 && (size_t)n < len ? 0 : -1;
}

ui_node *kn_wf_find_node(const ui_graph *g, const json_t *id) {
    char key[64];
    if (id_key(id, key, sizeof key) != 0) return NULL;
    json_t *pos = json_object_get(g->node_index, key);
    return pos ? &g->nodes[json_integer_value(pos)] : NULL;
}

const ui_link *kn_wf_find_link(const ui_graph *g, const json_t *id) {
    char key[32];
    if (!json_is_integer(id)) return NULL;
    snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
    json_t *pos = json_object_get(g->link_index, key);
    return pos ? &g->links[json_integer_value(pos)] : NULL;
}

const char *kn_wf_str_field(const json_t *obj, const char *key) { return json_string_value(json_object_get(obj, key)); }

/* ---- parsing --------------------------------------------------------------------- */

/* A node's inputs or outputs: an array of slot objects; absent = none. */
static const json_t *slot_array(conv *cv, const json_t *v) {
    if (!v || json_is_null(v)) return cv->empty;
    if (!json_is_array(v)) return NULL;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_object(json_array_get(v, i))) return NULL;
    return v;
}

static int parse_links(conv *cv, ui_graph *g, const json_t *links, const char *where) {
    if (!links || json_is_null(links)) return KN_OK;
    if (!json_is_array(links)) return kn_wf_fail_at(cv, NULL, NULL, "%s: \"links\" is not an array", where);
    size_t n = json_array_size(links);
    g->links = calloc(n + 1, sizeof *g->links);
    if (!g->links) return kn_wf_nomem(cv);
    for (size_t i = 0; i < n; i++) {
        const json_t *l = json_array_get(links, i), *id, *os, *ts;
        ui_link *out = &g->links[g->n_links];
        if (json_is_null(l)) continue; /* LiteGraph leaves holes where links were removed */
        if (json_is_array(l)) { /* [id, origin_id, origin_slot, target_id, target_slot, type] */
            id = json_array_get(l, 0);
            out->origin = json_array_get(l, 1);
            os = json_array_get(l, 2);
            out->target = json_array_get(l, 3);
            ts = json_array_get(l, 4);
        } else { /* schema 1: {id, origin_id, origin_slot, target_id, target_slot, type} */
            id = json_object_get(l, "id");
            out->origin = json_object_get(l, "origin_id");
            os = json_object_get(l, "origin_slot");
            out->target = json_object_get(l, "target_id");
            ts = json_object_get(l, "target_slot");
        }
        char key[32];
        if (!json_is_integer(id) || !json_is_integer(os) || !json_is_integer(ts) ||
            (!json_is_integer(out->origin) && !json_is_string(out->origin)) ||
            (!json_is_integer(out->target) && !json_is_string(out->target)))
            return kn_wf_fail_at(cv, NULL, NULL, "%s: link #%zu is malformed", where, i);
        out->origin_slot = json_integer_value(os);
        out->target_slot = json_integer_value(ts);
        snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
        if (json_object_set_new(g->link_index, key, json_integer((json_int_t)g->n_links)) != 0) return kn_wf_nomem(cv);
        g->n_links++;
    }
    return KN_OK;
}

static ui_graph *find_subgraph(conv *cv, const char *type) {
    for (size_t i = 0; i < cv->n_subs; i++)
        if (strcmp(kn_wf_str_field(cv->subs[i].def, "id"), type) == 0) return &cv->subs[i];
    return NULL;
}

static int parse_nodes(conv *cv, ui_graph *g, const json_t *nodes, const char *where) {
    static const struct {
        const char *type;
        ui_kind kind;
    } ui_only[] = {{"Note", UI_VIRTUAL}, {"MarkdownNote", UI_VIRTUAL}, {"PrimitiveNode", UI_PRIMITIVE},
                   {"Reroute", UI_REROUTE}};
    if (!json_is_array(nodes)) return kn_wf_fail_at(cv, NULL, NULL, "%s: \"nodes\" is not an array", where);
    size_t n = json_array_size(nodes);
    g->nodes = calloc(n + 1, sizeof *g->nodes);
    if (!g->nodes) return kn_wf_nomem(cv);
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(nodes, i);
        ui_node *u = &g->nodes[i];
        if (!json_is_object(j) || id_key(json_object_get(j, "id"), u->id, sizeof u->id) != 0)
            return kn_wf_fail_at(cv, NULL, NULL, "%s: node #%zu has no usable id", where, i);
        if (!(u->type = kn_wf_str_field(j, "type")))
            return kn_wf_fail_at(cv, u->id, NULL, "%s: node has no type", where);
        if (json_object_get(g->node_index, u->id))
            return kn_wf_fail_at(cv, u->id, NULL, "%s: duplicate node id", where);
        json_t *mode = json_object_get(j, "mode");
        u->mode = json_is_integer(mode) ? (int)json_integer_value(mode) : 0;
        u->inputs = slot_array(cv, json_object_get(j, "inputs"));
        u->outputs = slot_array(cv, json_object_get(j, "outputs"));
        if (!u->inputs || !u->outputs)
            return kn_wf_fail_at(cv, u->id, NULL, "%s: \"inputs\"/\"outputs\" must be arrays of slot objects", where);
        json_t *wv = json_object_get(j, "widgets_values");
        u->widgets_values = json_is_array(wv) ? wv : NULL; /* custom nodes may save an object: not ours */
        json_t *props = json_object_get(j, "properties");
        u->properties = json_is_object(props) ? props : NULL;
        u->title = kn_wf_str_field(j, "title");
        u->kind = UI_NODE;
        for (size_t k = 0; k < sizeof ui_only / sizeof ui_only[0]; k++)
            if (strcmp(u->type, ui_only[k].type) == 0) u->kind = ui_only[k].kind;
        if (u->kind == UI_NODE && (u->sub = find_subgraph(cv, u->type))) u->kind = UI_SUBGRAPH;
        if (u->kind == UI_NODE) u->cls = kn_registry_find(u->type);
        if (json_object_set_new(g->node_index, u->id, json_integer((json_int_t)i)) != 0) return kn_wf_nomem(cv);
        g->n_nodes++;
    }
    return KN_OK;
}

int kn_wf_graph_init(conv *cv, ui_graph *g) {
    g->node_index = json_object();
    g->link_index = json_object();
    return g->node_index && g->link_index ? KN_OK : kn_wf_nomem(cv);
}

void kn_wf_graph_free(ui_graph *g) {
    for (size_t i = 0; i < g->n_nodes; i++) json_decref(g->nodes[i].pushed);
    free(g->nodes);
    free(g->links);
    json_decref(g->node_index);
    json_decref(g->link_index);
}

/* definitions.subgraphs: every definition first (instances name them by id),
 * then their nodes and links. */
static int parse_subgraphs(conv *cv, const json_t *ui) {
    const json_t *defs = json_object_get(json_object_get(ui, "definitions"), "subgraphs");
    if (!defs) return KN_OK;
    if (!json_is_array(defs)) return kn_wf_fail_at(cv, NULL, NULL, "definitions.subgraphs is not an array");
    cv->subs = calloc(json_array_size(defs) + 1, sizeof *cv->subs);
    if (!cv->subs) return kn_wf_nomem(cv);
    for (size_t i = 0; i < json_array_size(defs); i++) {
        const json_t *d = json_array_get(defs, i);
        if (!json_is_object(d) || !kn_wf_str_field(d, "id") || !json_is_array(json_object_get(d, "inputs")) ||
            !json_is_array(json_object_get(d, "outputs")))
            return kn_wf_fail_at(cv, NULL, NULL, "subgraph definition #%zu lacks an id, inputs or outputs", i);
        cv->subs[i].def = d;
        cv->n_subs++;
        if (kn_wf_graph_init(cv, &cv->subs[i]) != KN_OK) return KN_ERR_NOMEM;
    }
    for (size_t i = 0; i < cv->n_subs; i++) {
        char where[128];
        snprintf(where, sizeof where, "subgraph %.80s", kn_wf_str_field(cv->subs[i].def, "id"));
        int st = parse_nodes(cv, &cv->subs[i], json_object_get(cv->subs[i].def, "nodes"), where);
        if (st == KN_OK) st = parse_links(cv, &cv->subs[i], json_object_get(cv->subs[i].def, "links"), where);
        if (st != KN_OK) return st;
    }
    return KN_OK;
}

/* ---- node order and flattening ---------------------------------------------------- */

/* JavaScript iterates object keys that are array indices (0 .. 2^32 - 2,
 * canonical decimal) first, in numeric order. */
static int is_index_key(const char *id) {
    if (!*id || (id[0] == '0' && id[1]) || strlen(id) > 10) return 0;
    for (const char *p = id; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return strtoull(id, NULL, 10) <= 4294967294ull;
}

/* Node ids left over by Kahn's walk, in the order a JavaScript object keyed by
 * them iterates: integer-like keys ascending, then the rest as inserted. */
static int leftover_cmp(const void *pa, const void *pb) {
    const ui_node *a = *(ui_node *const *)pa, *b = *(ui_node *const *)pb;
    int ia = is_index_key(a->id), ib = is_index_key(b->id);
    if (ia != ib) return ia ? -1 : 1;
    if (!ia) return a < b ? -1 : a > b;
    unsigned long long la = strtoull(a->id, NULL, 10), lb = strtoull(b->id, NULL, 10);
    return la < lb ? -1 : la > lb;
}

/* LGraph.computeExecutionOrder: Kahn's algorithm from the nodes with no
 * linked inputs, in node-array order; nodes in cycles go last. */
static int root_order(conv *cv, ui_node ***out) {
    ui_graph *g = &cv->root;
    size_t n = g->n_nodes;
    ui_node **order = calloc(n + 1, sizeof *order);
    long *remaining = calloc(n + 1, sizeof *remaining); /* -1: had no linked inputs */
    char *done = calloc(n + 1, 1), *visited = calloc(g->n_links + 1, 1);
    size_t head = 0, tail = 0;
    if (!order || !remaining || !done || !visited) {
        free(order), free(remaining), free(done), free(visited);
        return kn_wf_nomem(cv);
    }
    for (size_t i = 0; i < n; i++) {
        long linked = 0;
        for (size_t k = 0; k < json_array_size(g->nodes[i].inputs); k++) {
            json_t *link = json_object_get(json_array_get(g->nodes[i].inputs, k), "link");
            linked += link && !json_is_null(link);
        }
        remaining[i] = linked ? linked : -1;
        if (!linked) order[tail++] = &g->nodes[i];
    }
    while (head < tail) {
        ui_node *u = order[head++];
        done[u - g->nodes] = 1;
        for (size_t o = 0; o < json_array_size(u->outputs); o++) {
            json_t *ids = json_object_get(json_array_get(u->outputs, o), "links");
            for (size_t k = 0; k < json_array_size(ids); k++) {
                const ui_link *l = kn_wf_find_link(g, json_array_get(ids, k));
                if (!l || visited[l - g->links]) continue;
                visited[l - g->links] = 1;
                ui_node *t = kn_wf_find_node(g, l->target);
                if (t && remaining[t - g->nodes] > 0 && --remaining[t - g->nodes] == 0) order[tail++] = t;
            }
        }
    }
    size_t first_left = tail;
    for (size_t i = 0; i < n; i++)
        if (!done[i]) order[tail++] = &g->nodes[i];
    qsort(order + first_left, tail - first_left, sizeof *order, leftover_cmp);
    free(remaining), free(done), free(visited);
    *out = order;
    return KN_OK;
}

static int add_dto(conv *cv, ui_graph *g, ui_node *u, int parent, int dropped) {
    if (cv->n_dtos >= KN_WORKFLOW_MAX_NODES)
        return -kn_wf_fail_at(cv, u->id, NULL, "the workflow expands to more than %d nodes", KN_WORKFLOW_MAX_NODES);
    if (cv->n_dtos == cv->cap_dtos) {
        size_t cap = cv->cap_dtos ? cv->cap_dtos * 2 : 64;
        dto *p = realloc(cv->dtos, cap * sizeof *p);
        if (!p) return -kn_wf_nomem(cv);
        cv->dtos = p;
        cv->cap_dtos = cap;
    }
    const char *prefix = parent >= 0 ? cv->dtos[parent].exec_id : "";
    size_t len = strlen(prefix) + strlen(u->id) + 2;
    char *id = malloc(len);
    if (!id) return -kn_wf_nomem(cv);
    snprintf(id, len, "%s%s%s", prefix, parent >= 0 ? ":" : "", u->id);
    /* Two root nodes cannot share an id, but "1:2" could also be a UI id. */
    if (json_object_get(cv->dto_index, id)) {
        int st = kn_wf_fail_at(cv, id, NULL, "two nodes flatten to the same id");
        free(id);
        return -st;
    }
    if (json_object_set_new(cv->dto_index, id, json_integer((json_int_t)cv->n_dtos)) != 0) {
        free(id);
        return -kn_wf_nomem(cv);
    }
    cv->dtos[cv->n_dtos] = (dto){.g = g, .node = u, .exec_id = id, .parent = parent, .dropped = dropped};
    return (int)cv->n_dtos++;
}

/* SubgraphNode.getInnerNodes: the instance, then its definition's nodes in
 * array order, nested instances expanded in place. */
static int add_with_inner(conv *cv, ui_graph *g, ui_node *u, int parent, int dropped, int depth) {
    int d = add_dto(cv, g, u, parent, dropped);
    if (d < 0) return -d;
    if (u->kind != UI_SUBGRAPH) return KN_OK;
    if (depth >= KN_WORKFLOW_MAX_NESTING)
        return kn_wf_fail_at(cv, cv->dtos[d].exec_id, NULL,
                             "subgraphs nest deeper than %d (a definition containing itself?)",
                             KN_WORKFLOW_MAX_NESTING);
    /* Kiln does not run the inside of a muted or bypassed instance. */
    int inner_dropped = dropped || u->mode == MODE_NEVER || u->mode == MODE_BYPASS;
    for (size_t i = 0; i < u->sub->n_nodes; i++) {
        int st = add_with_inner(cv, u->sub, &u->sub->nodes[i], d, inner_dropped, depth + 1);
        if (st != KN_OK) return st;
    }
    return KN_OK;
}

int kn_wf_flatten(conv *cv, const json_t *ui) {
    int st = parse_subgraphs(cv, ui);
    if (st == KN_OK) st = parse_nodes(cv, &cv->root, json_object_get(ui, "nodes"), "workflow");
    if (st == KN_OK) st = parse_links(cv, &cv->root, json_object_get(ui, "links"), "workflow");
    ui_node **order = NULL;
    if (st == KN_OK) st = root_order(cv, &order);
    for (size_t i = 0; st == KN_OK && i < cv->root.n_nodes; i++) st = add_with_inner(cv, &cv->root, order[i], -1, 0, 0);
    free(order);
    return st;
}
