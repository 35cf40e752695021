/* UI -> API conversion as ComfyUI_frontend does it: LGraph.computeExecutionOrder
 * for the root graph, ExecutableNodeDTO flattening of subgraph instances
 * (SubgraphNode.getInnerNodes), PrimitiveNode.applyToGraph, then graphToPrompt
 * (src/utils/executionUtil.ts) with ExecutableNodeDTO.resolveInput /
 * resolveOutput for links through bypassed, virtual and subgraph nodes. */
#include "graph/workflow.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/json.h"
#include "graph/validate.h"

/* Inside a subgraph definition, links from its inputs start at this node id
 * and links to its outputs end at the other. */
#define KN_SUBGRAPH_INPUT_NODE (-10)
#define KN_SUBGRAPH_OUTPUT_NODE (-20)

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

static int nomem(conv *cv) { return kn_fail(cv->err, KN_ERR_NOMEM, "converting the workflow: out of memory"); }

/* A conversion failure at a node (exec id or UI id) and, when known, an input. */
static int fail_at(conv *cv, const char *node, const char *input, const char *fmt, ...) KN_PRINTF(4, 5);
static int fail_at(conv *cv, const char *node, const char *input, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(cv->fail_node, sizeof cv->fail_node, "%s", node ? node : "");
    snprintf(cv->fail_input, sizeof cv->fail_input, "%s", input ? input : "");
    if (node && input) return kn_fail(cv->err, KN_ERR_INVALID, "node %s, input '%s': %s", node, input, msg);
    if (node) return kn_fail(cv->err, KN_ERR_INVALID, "node %s: %s", node, msg);
    return kn_fail(cv->err, KN_ERR_INVALID, "%s", msg);
}

/* A node id as a map key (String(id) in the front end); -1 if it is neither
 * an integer nor a string that fits. */
static int id_key(const json_t *v, char *buf, size_t len) {
    int n;
    if (json_is_integer(v)) n = snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_string(v)) n = snprintf(buf, len, "%s", json_string_value(v));
    else return -1;
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static ui_node *find_node(const ui_graph *g, const json_t *id) {
    char key[64];
    if (id_key(id, key, sizeof key) != 0) return NULL;
    json_t *pos = json_object_get(g->node_index, key);
    return pos ? &g->nodes[json_integer_value(pos)] : NULL;
}

static const ui_link *find_link(const ui_graph *g, const json_t *id) {
    char key[32];
    if (!json_is_integer(id)) return NULL;
    snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
    json_t *pos = json_object_get(g->link_index, key);
    return pos ? &g->links[json_integer_value(pos)] : NULL;
}

static const char *str_field(const json_t *obj, const char *key) { return json_string_value(json_object_get(obj, key)); }

static int is_io_node(const json_t *id, json_int_t which) { return json_is_integer(id) && json_integer_value(id) == which; }

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
    if (!json_is_array(links)) return fail_at(cv, NULL, NULL, "%s: \"links\" is not an array", where);
    size_t n = json_array_size(links);
    g->links = calloc(n + 1, sizeof *g->links);
    if (!g->links) return nomem(cv);
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
            return fail_at(cv, NULL, NULL, "%s: link #%zu is malformed", where, i);
        out->origin_slot = json_integer_value(os);
        out->target_slot = json_integer_value(ts);
        snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
        if (json_object_set_new(g->link_index, key, json_integer((json_int_t)g->n_links)) != 0) return nomem(cv);
        g->n_links++;
    }
    return KN_OK;
}

static ui_graph *find_subgraph(conv *cv, const char *type) {
    for (size_t i = 0; i < cv->n_subs; i++)
        if (strcmp(str_field(cv->subs[i].def, "id"), type) == 0) return &cv->subs[i];
    return NULL;
}

static int parse_nodes(conv *cv, ui_graph *g, const json_t *nodes, const char *where) {
    static const struct {
        const char *type;
        ui_kind kind;
    } ui_only[] = {{"Note", UI_VIRTUAL}, {"MarkdownNote", UI_VIRTUAL}, {"PrimitiveNode", UI_PRIMITIVE},
                   {"Reroute", UI_REROUTE}};
    if (!json_is_array(nodes)) return fail_at(cv, NULL, NULL, "%s: \"nodes\" is not an array", where);
    size_t n = json_array_size(nodes);
    g->nodes = calloc(n + 1, sizeof *g->nodes);
    if (!g->nodes) return nomem(cv);
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(nodes, i);
        ui_node *u = &g->nodes[i];
        if (!json_is_object(j) || id_key(json_object_get(j, "id"), u->id, sizeof u->id) != 0)
            return fail_at(cv, NULL, NULL, "%s: node #%zu has no usable id", where, i);
        if (!(u->type = str_field(j, "type"))) return fail_at(cv, u->id, NULL, "%s: node has no type", where);
        if (json_object_get(g->node_index, u->id)) return fail_at(cv, u->id, NULL, "%s: duplicate node id", where);
        json_t *mode = json_object_get(j, "mode");
        u->mode = json_is_integer(mode) ? (int)json_integer_value(mode) : 0;
        u->inputs = slot_array(cv, json_object_get(j, "inputs"));
        u->outputs = slot_array(cv, json_object_get(j, "outputs"));
        if (!u->inputs || !u->outputs)
            return fail_at(cv, u->id, NULL, "%s: \"inputs\"/\"outputs\" must be arrays of slot objects", where);
        json_t *wv = json_object_get(j, "widgets_values");
        u->widgets_values = json_is_array(wv) ? wv : NULL; /* custom nodes may save an object: not ours */
        json_t *props = json_object_get(j, "properties");
        u->properties = json_is_object(props) ? props : NULL;
        u->title = str_field(j, "title");
        u->kind = UI_NODE;
        for (size_t k = 0; k < sizeof ui_only / sizeof ui_only[0]; k++)
            if (strcmp(u->type, ui_only[k].type) == 0) u->kind = ui_only[k].kind;
        if (u->kind == UI_NODE && (u->sub = find_subgraph(cv, u->type))) u->kind = UI_SUBGRAPH;
        if (u->kind == UI_NODE) u->cls = kn_registry_find(u->type);
        if (json_object_set_new(g->node_index, u->id, json_integer((json_int_t)i)) != 0) return nomem(cv);
        g->n_nodes++;
    }
    return KN_OK;
}

static int init_graph(conv *cv, ui_graph *g) {
    g->node_index = json_object();
    g->link_index = json_object();
    return g->node_index && g->link_index ? KN_OK : nomem(cv);
}

static void free_graph(ui_graph *g) {
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
    if (!json_is_array(defs)) return fail_at(cv, NULL, NULL, "definitions.subgraphs is not an array");
    cv->subs = calloc(json_array_size(defs) + 1, sizeof *cv->subs);
    if (!cv->subs) return nomem(cv);
    for (size_t i = 0; i < json_array_size(defs); i++) {
        const json_t *d = json_array_get(defs, i);
        if (!json_is_object(d) || !str_field(d, "id") || !json_is_array(json_object_get(d, "inputs")) ||
            !json_is_array(json_object_get(d, "outputs")))
            return fail_at(cv, NULL, NULL, "subgraph definition #%zu lacks an id, inputs or outputs", i);
        cv->subs[i].def = d;
        cv->n_subs++;
        if (init_graph(cv, &cv->subs[i]) != KN_OK) return KN_ERR_NOMEM;
    }
    for (size_t i = 0; i < cv->n_subs; i++) {
        char where[128];
        snprintf(where, sizeof where, "subgraph %.80s", str_field(cv->subs[i].def, "id"));
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
        return nomem(cv);
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
                const ui_link *l = find_link(g, json_array_get(ids, k));
                if (!l || visited[l - g->links]) continue;
                visited[l - g->links] = 1;
                ui_node *t = find_node(g, l->target);
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
        return -fail_at(cv, u->id, NULL, "the workflow expands to more than %d nodes", KN_WORKFLOW_MAX_NODES);
    if (cv->n_dtos == cv->cap_dtos) {
        size_t cap = cv->cap_dtos ? cv->cap_dtos * 2 : 64;
        dto *p = realloc(cv->dtos, cap * sizeof *p);
        if (!p) return -nomem(cv);
        cv->dtos = p;
        cv->cap_dtos = cap;
    }
    const char *prefix = parent >= 0 ? cv->dtos[parent].exec_id : "";
    size_t len = strlen(prefix) + strlen(u->id) + 2;
    char *id = malloc(len);
    if (!id) return -nomem(cv);
    snprintf(id, len, "%s%s%s", prefix, parent >= 0 ? ":" : "", u->id);
    /* Two root nodes cannot share an id, but "1:2" could also be a UI id. */
    if (json_object_get(cv->dto_index, id)) {
        int st = fail_at(cv, id, NULL, "two nodes flatten to the same id");
        free(id);
        return -st;
    }
    if (json_object_set_new(cv->dto_index, id, json_integer((json_int_t)cv->n_dtos)) != 0) {
        free(id);
        return -nomem(cv);
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
        return fail_at(cv, cv->dtos[d].exec_id, NULL, "subgraphs nest deeper than %d (a definition containing itself?)",
                       KN_WORKFLOW_MAX_NESTING);
    /* Kiln does not run the inside of a muted or bypassed instance. */
    int inner_dropped = dropped || u->mode == MODE_NEVER || u->mode == MODE_BYPASS;
    for (size_t i = 0; i < u->sub->n_nodes; i++) {
        int st = add_with_inner(cv, u->sub, &u->sub->nodes[i], d, inner_dropped, depth + 1);
        if (st != KN_OK) return st;
    }
    return KN_OK;
}

/* ---- widgets ------------------------------------------------------------------- */

/* A node's widgets as the front end creates them from the schema; NULL
 * entries are UI-only widgets that hold a widgets_values slot but are never
 * sent: the seed control after seed/noise_seed (or any INT marked
 * control_after_generate) and LoadImage's upload button, which ends the
 * required section. `w` holds 2 * n_inputs + 1 entries. */
int kn_workflow_widget_list(const kn_node_class *cls, const kn_input_spec **w) {
    int n = 0;
    for (int s = KN_SECTION_REQUIRED; s <= KN_SECTION_OPTIONAL; s++) {
        int upload = 0;
        for (int i = 0; i < cls->n_inputs; i++) {
            const kn_input_spec *in = &cls->inputs[i];
            if ((int)in->section != s || in->kind == KN_INPUT_LINK) continue;
            w[n++] = in;
            if (in->kind == KN_INPUT_INT && ((in->flags & KN_INPUT_CONTROL_AFTER_GENERATE) ||
                                             strcmp(in->name, "seed") == 0 || strcmp(in->name, "noise_seed") == 0))
                w[n++] = NULL;
            upload |= (in->flags & KN_INPUT_IMAGE_UPLOAD) != 0;
        }
        if (upload) w[n++] = NULL;
    }
    return n;
}

static int has_widget(const kn_node_class *cls, const char *name) {
    const kn_input_spec *in = cls ? kn_node_input(cls, name) : NULL;
    return in && in->kind != KN_INPUT_LINK;
}

/* The value a widget starts with when the saved node has none for it; *out
 * stays NULL when the front end would have none either (a file list it
 * cannot know). */
static int widget_default(conv *cv, const kn_input_spec *in, json_t **out) {
    *out = NULL;
    switch (in->kind) {
    case KN_INPUT_INT:
    case KN_INPUT_FLOAT: {
        json_t *d = json_real(in->def);
        *out = d ? kn_json_js_copy(d) : NULL;
        json_decref(d);
        break;
    }
    case KN_INPUT_STRING: *out = json_string(in->def_str ? in->def_str : ""); break;
    case KN_INPUT_BOOLEAN: *out = json_boolean(in->def != 0); break;
    case KN_INPUT_COMBO: {
        bool complete;
        json_t *choices = kn_registry_combo_options(in, cv->lister, &complete, cv->err);
        if (!choices) return cv->err->code;
        if (json_array_size(choices) > 0 && (complete || !in->folder)) *out = json_incref(json_array_get(choices, 0));
        json_decref(choices);
        return KN_OK;
    }
    case KN_INPUT_LINK: return KN_OK;
    }
    return *out ? KN_OK : nomem(cv);
}

/* A value as the front end sends it: JavaScript numbers, and arrays wrapped
 * as {"__value__": [...]} since a bare array would read as a link. */
static json_t *sendable(const json_t *v) {
    json_t *c = kn_json_js_copy(v);
    if (c && json_is_array(c)) return json_pack("{s:o}", "__value__", c);
    return c;
}

/* PrimitiveNode.applyToGraph: its value replaces the widget of every input
 * its output links reach; Kiln follows Reroutes on the way as the notes
 * describe (current front ends stop there). */
static int apply_primitive(conv *cv, ui_graph *g, ui_node *p) {
    if (p->primitive_applied) return KN_OK;
    p->primitive_applied = 1;
    const json_t *links = json_object_get(json_array_get(p->outputs, 0), "links");
    const json_t *value = json_array_get(p->widgets_values, 0);
    if (!value || json_array_size(links) == 0) return KN_OK;
    /* Worklist of link ids; each link is taken at most once. */
    char *seen = calloc(g->n_links + 1, 1);
    const json_t **work = calloc(g->n_links + json_array_size(links) + 1, sizeof *work);
    size_t top = 0;
    int st = seen && work ? KN_OK : nomem(cv);
    for (size_t k = 0; st == KN_OK && k < json_array_size(links); k++) work[top++] = json_array_get(links, k);
    while (st == KN_OK && top > 0) {
        const ui_link *l = find_link(g, work[--top]);
        if (!l || seen[l - g->links]) continue;
        seen[l - g->links] = 1;
        ui_node *t = find_node(g, l->target);
        const json_t *input = t ? json_array_get(t->inputs, (size_t)l->target_slot) : NULL;
        if (!input || l->target_slot < 0) continue;
        if (t->kind == UI_REROUTE) {
            const json_t *next = json_object_get(json_array_get(t->outputs, 0), "links");
            for (size_t k = 0; k < json_array_size(next) && top < g->n_links + json_array_size(links); k++)
                work[top++] = json_array_get(next, k);
            continue;
        }
        const char *name = str_field(json_object_get(input, "widget"), "name");
        if (!name || !has_widget(t->cls, name)) continue;
        if (!t->pushed && !(t->pushed = json_object())) st = nomem(cv);
        else if (json_object_set(t->pushed, name, (json_t *)value) != 0) st = nomem(cv);
    }
    free(seen);
    free(work);
    return st;
}

/* ---- link resolution --------------------------------------------------------- */

/* isValidConnection's view of a slot type: NULL (absent, "", "*" or not a
 * string) matches anything. */
static const char *slot_type(const json_t *slot) {
    const char *t = str_field(slot, "type");
    return t && *t && strcmp(t, "*") != 0 ? t : NULL;
}

/* LiteGraph.isValidConnection: case-insensitive, comma lists match when any
 * members do, an empty member matches anything. */
static int valid_connection(const char *a, const char *b) {
    if (!a || !b || strcmp(a, b) == 0) return 1;
    if (!strchr(a, ',') && !strchr(b, ',')) return strcasecmp(a, b) == 0;
    for (const char *pa = a; pa;) {
        const char *ea = strchr(pa, ',');
        size_t la = ea ? (size_t)(ea - pa) : strlen(pa);
        for (const char *pb = b; pb;) {
            const char *eb = strchr(pb, ',');
            size_t lb = eb ? (size_t)(eb - pb) : strlen(pb);
            int any_a = la == 0 || (la == 1 && *pa == '*'), any_b = lb == 0 || (lb == 1 && *pb == '*');
            if (any_a || any_b || (la == lb && strncasecmp(pa, pb, la) == 0)) return 1;
            pb = eb ? eb + 1 : NULL;
        }
        pa = ea ? ea + 1 : NULL;
    }
    return 0;
}

/* A DTO's live input slots: a subgraph instance has its definition's
 * inputs; other nodes the saved ones. */
static const json_t *live_inputs(const dto *d) {
    return d->node->kind == UI_SUBGRAPH ? json_object_get(d->node->sub->def, "inputs") : d->node->inputs;
}

static const json_t *live_outputs(const dto *d) {
    return d->node->kind == UI_SUBGRAPH ? json_object_get(d->node->sub->def, "outputs") : d->node->outputs;
}

/* The saved slot of a subgraph instance input, matched by name: files keep
 * only linked or labelled instance inputs. */
static const json_t *instance_input(const ui_node *inst, const char *name) {
    for (size_t k = 0; name && k < json_array_size(inst->inputs); k++) {
        const json_t *in = json_array_get(inst->inputs, k);
        const char *n = str_field(in, "name");
        if (n && strcmp(n, name) == 0) return in;
    }
    return NULL;
}

/* The instance's promoted widget value for a subgraph input: widgets_values
 * follow properties.proxyWidgets, where ["-1", name] is that input's widget
 * and null marks a value kept by an inner node. */
static const json_t *promoted_value(const ui_node *inst, const char *name) {
    const json_t *proxies = json_object_get(inst->properties, "proxyWidgets");
    for (size_t k = 0; name && k < json_array_size(proxies); k++) {
        const json_t *p = json_array_get(proxies, k);
        const char *owner = json_string_value(json_array_get(p, 0)), *w = json_string_value(json_array_get(p, 1));
        if (owner && w && strcmp(owner, "-1") == 0 && strcmp(w, name) == 0) {
            const json_t *v = json_array_get(inst->widgets_values, k);
            return v && !json_is_null(v) ? v : NULL;
        }
    }
    return NULL;
}

/* ExecutableNodeDTO #getBypassSlotIndex. */
static int bypass_slot(const dto *d, json_int_t slot, const char *type) {
    const json_t *inputs = live_inputs(d);
    size_t n = json_array_size(inputs);
    const char *out_type = slot_type(json_array_get(live_outputs(d), (size_t)slot));
    if (!type) return (size_t)slot < n ? (int)slot : 0;
    const json_t *opposite = json_array_get(inputs, (size_t)slot);
    if (opposite && valid_connection(slot_type(opposite), out_type) && valid_connection(slot_type(opposite), type))
        return (int)slot;
    for (size_t k = 0; k < n; k++) {
        const char *t = str_field(json_array_get(inputs, k), "type");
        if (t && strcmp(t, type) == 0) return (int)k;
    }
    for (size_t k = 0; k < n; k++) {
        const char *t = slot_type(json_array_get(inputs, k));
        if (valid_connection(t, out_type) && valid_connection(t, type)) return (int)k;
    }
    return -1;
}

typedef struct resolved {
    enum { RESOLVED_NONE, RESOLVED_LINK, RESOLVED_VALUE } kind;
    int dto;             /* LINK: the node the link comes from */
    json_int_t slot;     /* LINK: its output */
    const json_t *value; /* VALUE: a subgraph input's promoted widget value */
} resolved;

static int dto_of(conv *cv, const dto *from, const ui_node *u) {
    char id[512];
    snprintf(id, sizeof id, "%s%s%s", from->parent >= 0 ? cv->dtos[from->parent].exec_id : "",
             from->parent >= 0 ? ":" : "", u->id);
    json_t *pos = json_object_get(cv->dto_index, id);
    return pos ? (int)json_integer_value(pos) : -1;
}

/* ExecutableNodeDTO.resolveInput(slot): where input `slot` of DTO d really
 * comes from. The front end recurses; the steps here are the same, looped,
 * and a walk longer than cv->max_hops must have revisited a slot: a cycle. */
static int resolve_input(conv *cv, int d, json_int_t slot, const char *input_name, resolved *out) {
    enum { IN, OUT } dir = IN;
    const char *type = NULL; /* the consuming input's type, once known */
    int typed = 0;
    const char *at = cv->dtos[d].exec_id;
    out->kind = RESOLVED_NONE;
    for (size_t hops = 0;; hops++) {
        if (hops > cv->max_hops)
            return fail_at(cv, at, input_name, "circular reference while resolving this input's link");
        dto *D = &cv->dtos[d];
        if (dir == OUT) {
            ui_node *u = D->node;
            if (u->mode == MODE_BYPASS) {
                if (!json_array_get(live_outputs(D), (size_t)slot) || slot < 0)
                    return fail_at(cv, D->exec_id, NULL, "bypassed node has no output %" JSON_INTEGER_FORMAT, slot);
                int k = bypass_slot(D, slot, type);
                if (k < 0) return KN_OK; /* no input of a matching type: the input stays unconnected */
                dir = IN, slot = k, type = NULL, typed = 0;
                continue;
            }
            if (u->kind == UI_SUBGRAPH) {
                if (slot < 0 || !json_array_get(live_outputs(D), (size_t)slot))
                    return fail_at(cv, D->exec_id, NULL, "subgraph has no output %" JSON_INTEGER_FORMAT, slot);
                const ui_link *inner = NULL;
                for (size_t k = 0; k < u->sub->n_links && !inner; k++)
                    if (is_io_node(u->sub->links[k].target, KN_SUBGRAPH_OUTPUT_NODE) && u->sub->links[k].target_slot == slot)
                        inner = &u->sub->links[k];
                if (!inner) return KN_OK;
                ui_node *src = find_node(u->sub, inner->origin);
                char id[512];
                snprintf(id, sizeof id, "%s:%s", D->exec_id, src ? src->id : "?");
                json_t *pos = src ? json_object_get(cv->dto_index, id) : NULL;
                if (!pos) return fail_at(cv, D->exec_id, NULL, "subgraph output %" JSON_INTEGER_FORMAT " comes from a missing node", slot);
                d = (int)json_integer_value(pos), slot = inner->origin_slot;
                continue;
            }
            if (u->kind != UI_NODE) { /* virtual: pass through the input of the same index */
                if (slot < 0 || !json_array_get(u->inputs, (size_t)slot)) return KN_OK;
                dir = IN;
                continue;
            }
            *out = (resolved){.kind = RESOLVED_LINK, .dto = d, .slot = slot};
            return KN_OK;
        }

        /* dir == IN */
        const json_t *input;
        if (D->node->kind == UI_SUBGRAPH) {
            const json_t *def_in = json_array_get(live_inputs(D), (size_t)slot);
            if (!def_in || slot < 0)
                return fail_at(cv, D->exec_id, NULL, "subgraph has no input %" JSON_INTEGER_FORMAT, slot);
            input = instance_input(D->node, str_field(def_in, "name"));
            if (!input) return KN_OK;
        } else if (!(input = slot < 0 ? NULL : json_array_get(D->node->inputs, (size_t)slot))) {
            return fail_at(cv, D->exec_id, NULL, "no input %" JSON_INTEGER_FORMAT, slot);
        }
        const json_t *link_id = json_object_get(input, "link");
        if (!link_id || json_is_null(link_id)) return KN_OK;
        const ui_link *l = find_link(D->g, link_id);
        if (!l) {
            char *shown = kn_py_repr(link_id);
            int st = fail_at(cv, D->exec_id, str_field(input, "name"), "link %s does not exist", shown ? shown : "?");
            free(shown);
            return st;
        }
        if (!typed) type = slot_type(input), typed = 1;

        if (D->parent >= 0 && is_io_node(l->origin, KN_SUBGRAPH_INPUT_NODE)) {
            /* The link enters from the subgraph instance's input l->origin_slot. */
            dto *inst = &cv->dtos[D->parent];
            const json_t *def_in = l->origin_slot < 0 ? NULL : json_array_get(live_inputs(inst), (size_t)l->origin_slot);
            if (!def_in)
                return fail_at(cv, inst->exec_id, NULL, "subgraph has no input %" JSON_INTEGER_FORMAT, l->origin_slot);
            const char *name = str_field(def_in, "name");
            const json_t *outer = instance_input(inst->node, name);
            const json_t *outer_link = json_object_get(outer, "link");
            if (!outer_link || json_is_null(outer_link)) {
                const json_t *v = promoted_value(inst->node, name);
                if (v) *out = (resolved){.kind = RESOLVED_VALUE, .value = v};
                return KN_OK;
            }
            d = D->parent, slot = l->origin_slot, type = NULL, typed = 0;
            continue;
        }
        ui_node *src = find_node(D->g, l->origin);
        int s = src ? dto_of(cv, D, src) : -1;
        if (s < 0) return fail_at(cv, D->exec_id, str_field(input, "name"), "the linked node does not exist");
        d = s, slot = l->origin_slot, dir = OUT;
    }
}

/* ---- graphToPrompt ------------------------------------------------------------------ */

static int emit_node(conv *cv, int d, json_t *prompt) {
    dto *D = &cv->dtos[d];
    ui_node *u = D->node;
    json_t *inputs = json_object();
    if (!inputs) return nomem(cv);
    int st = KN_OK;
    if (u->cls) {
        const kn_input_spec **w = malloc((2 * (size_t)u->cls->n_inputs + 1) * sizeof *w);
        int nw = w ? kn_workflow_widget_list(u->cls, w) : 0;
        if (!w) st = nomem(cv);
        for (int i = 0; st == KN_OK && i < nw; i++) {
            if (!w[i]) continue;
            const json_t *v = json_object_get(u->pushed, w[i]->name);
            if (!v) v = json_array_get(u->widgets_values, (size_t)i);
            json_t *value = NULL;
            if (v) value = sendable(v);
            else st = widget_default(cv, w[i], &value);
            if (st == KN_OK && v && !value) st = nomem(cv);
            if (st == KN_OK && value && json_object_set_new(inputs, w[i]->name, value) != 0) st = nomem(cv);
        }
        free(w);
    }
    for (size_t i = 0; st == KN_OK && i < json_array_size(u->inputs); i++) {
        const char *name = str_field(json_array_get(u->inputs, i), "name");
        if (!name) continue;
        resolved r;
        st = resolve_input(cv, d, (json_int_t)i, name, &r);
        json_t *v = NULL;
        if (st != KN_OK || r.kind == RESOLVED_NONE) continue;
        if (r.kind == RESOLVED_VALUE) v = sendable(r.value);
        else v = json_pack("[s, I]", cv->dtos[r.dto].exec_id, (json_int_t)r.slot);
        if (!v || json_object_set_new(inputs, name, v) != 0) st = nomem(cv);
    }
    const char *title = u->title ? u->title : u->cls ? kn_node_title(u->cls) : u->type;
    json_t *node = st == KN_OK ? json_pack("{s:o, s:s, s:{s:s}}", "inputs", inputs, "class_type", u->type, "_meta",
                                           "title", title)
                               : NULL;
    if (st != KN_OK) {
        json_decref(inputs);
        return st;
    }
    if (!node || json_object_set_new(prompt, D->exec_id, node) != 0) return nomem(cv);
    return KN_OK;
}

/* graphToPrompt's last pass: links to nodes that are not in the prompt
 * (muted, or dropped) are removed. */
static int drop_dangling_links(json_t *prompt) {
    const char *id;
    json_t *node;
    json_object_foreach(prompt, id, node) {
        json_t *inputs = json_object_get(node, "inputs");
        const char *name;
        json_t *v, *tmp;
        json_object_foreach_safe(inputs, tmp, name, v) {
            if (json_is_array(v) && json_array_size(v) == 2 &&
                !json_object_get(prompt, json_string_value(json_array_get(v, 0))) && json_object_del(inputs, name) != 0)
                return -1;
        }
    }
    return 0;
}

static int convert(conv *cv, const json_t *ui, json_t *prompt) {
    int st = parse_subgraphs(cv, ui);
    if (st == KN_OK) st = parse_nodes(cv, &cv->root, json_object_get(ui, "nodes"), "workflow");
    if (st == KN_OK) st = parse_links(cv, &cv->root, json_object_get(ui, "links"), "workflow");
    ui_node **order = NULL;
    if (st == KN_OK) st = root_order(cv, &order);
    for (size_t i = 0; st == KN_OK && i < cv->root.n_nodes; i++) st = add_with_inner(cv, &cv->root, order[i], -1, 0, 0);
    free(order);
    if (st != KN_OK) return st;
    /* Every slot a resolution walk can stand on, once per direction. */
    cv->max_hops = 1;
    for (size_t i = 0; i < cv->n_dtos; i++)
        cv->max_hops += json_array_size(live_inputs(&cv->dtos[i])) + json_array_size(cv->dtos[i].node->inputs) +
                        json_array_size(live_outputs(&cv->dtos[i]));
    for (size_t i = 0; st == KN_OK && i < cv->n_dtos; i++)
        if (cv->dtos[i].node->kind == UI_PRIMITIVE) st = apply_primitive(cv, cv->dtos[i].g, cv->dtos[i].node);
    for (size_t i = 0; st == KN_OK && i < cv->n_dtos; i++) {
        const dto *D = &cv->dtos[i];
        if (D->dropped || D->node->kind != UI_NODE || D->node->mode == MODE_NEVER || D->node->mode == MODE_BYPASS)
            continue;
        st = emit_node(cv, (int)i, prompt);
    }
    if (st == KN_OK && drop_dangling_links(prompt) != 0) st = nomem(cv);
    return st;
}

kn_workflow_format kn_workflow_detect(const json_t *doc) {
    return json_is_object(doc) && json_is_array(json_object_get(doc, "nodes")) ? KN_WORKFLOW_UI : KN_WORKFLOW_API;
}

static void set_error(json_t **error, json_t *body) {
    if (error) *error = body;
    else json_decref(body);
}

int kn_workflow_to_api(const json_t *ui, const kn_folder_lister *lister, json_t **prompt, json_t **error,
                       kn_err *err) {
    *prompt = NULL;
    if (error) *error = NULL;
    conv cv = {.lister = lister, .err = err};
    json_t *out = json_object();
    cv.empty = json_array();
    cv.dto_index = json_object();
    int st = out && cv.empty && cv.dto_index ? init_graph(&cv, &cv.root) : nomem(&cv);
    if (st == KN_OK && !json_is_object(ui)) st = fail_at(&cv, NULL, NULL, "the workflow is not a JSON object");
    if (st == KN_OK) st = convert(&cv, ui, out);
    if (st == KN_OK) {
        *prompt = out;
        out = NULL;
    } else if (st != KN_ERR_NOMEM) {
        char details[300];
        snprintf(details, sizeof details, cv.fail_node[0] ? "Node ID '#%s'" : "%s", cv.fail_node);
        char message[sizeof err->msg + 40];
        snprintf(message, sizeof message, "Cannot convert the workflow: %s", err->msg);
        set_error(error, kn_prompt_error_body("invalid_prompt", message, details,
                                              json_pack("{s:s?, s:s?}", "node_id", cv.fail_node[0] ? cv.fail_node : NULL,
                                                        "input_name", cv.fail_input[0] ? cv.fail_input : NULL)));
        kn_err_wrap(err, "converting the workflow");
    }
    json_decref(out);
    free_graph(&cv.root);
    for (size_t i = 0; i < cv.n_subs; i++) free_graph(&cv.subs[i]);
    free(cv.subs);
    for (size_t i = 0; i < cv.n_dtos; i++) free(cv.dtos[i].exec_id);
    free(cv.dtos);
    json_decref(cv.dto_index);
    json_decref(cv.empty);
    return st;
}

int kn_workflow_load_memory(const void *data, size_t size, const kn_folder_lister *lister, json_t **prompt,
                            json_t **error, kn_err *err) {
    *prompt = NULL;
    if (error) *error = NULL;
    json_error_t jerr;
    json_t *doc = kn_json_loadb(data, size, &jerr);
    if (!doc) {
        char details[400];
        kn_json_error_text(&jerr, details, sizeof details);
        set_error(error, kn_prompt_error_body("invalid_prompt", "Invalid JSON", details,
                                              json_pack("{s:s, s:i, s:i, s:i}", "exception_message", jerr.text, "line",
                                                        jerr.line, "column", jerr.column, "position", jerr.position)));
        return kn_fail(err, KN_ERR_FORMAT, "invalid JSON: %s", details);
    }
    int st = KN_OK;
    if (kn_workflow_detect(doc) == KN_WORKFLOW_UI) {
        st = kn_workflow_to_api(doc, lister, prompt, error, err);
    } else if (!json_is_object(doc)) {
        set_error(error, kn_prompt_error_body("invalid_prompt", "Prompt is not a JSON object", "", NULL));
        st = kn_fail(err, KN_ERR_INVALID, "the prompt is not a JSON object");
    } else {
        *prompt = json_incref(doc);
    }
    json_decref(doc);
    return st;
}

int kn_workflow_load_file(const char *path, const kn_folder_lister *lister, json_t **prompt, json_t **error,
                          kn_err *err) {
    *prompt = NULL;
    if (error) *error = NULL;
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int st = KN_OK;
    if (!f) {
        st = kn_fail(err, KN_ERR_IO, "%s: cannot open", path);
    } else {
        /* Read in chunks: the path may be a pipe. */
        size_t cap = 0;
        for (;;) {
            if (len == cap) {
                size_t next = cap ? cap * 2 : 1 << 16;
                char *p = next <= KN_WORKFLOW_MAX_FILE ? realloc(buf, next) : NULL;
                if (!p) {
                    st = next <= KN_WORKFLOW_MAX_FILE ? kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", path)
                                                      : kn_fail(err, KN_ERR_IO, "%s: larger than %u bytes", path,
                                                                KN_WORKFLOW_MAX_FILE);
                    break;
                }
                buf = p;
                cap = next;
            }
            size_t got = fread(buf + len, 1, cap - len, f);
            len += got;
            if (got == 0) {
                if (ferror(f)) st = kn_fail(err, KN_ERR_IO, "%s: read error", path);
                break;
            }
        }
        fclose(f);
    }
    if (st == KN_OK) {
        st = kn_workflow_load_memory(buf, len, lister, prompt, error, err);
        if (st != KN_OK) kn_err_wrap(err, "%s", path);
    } else if (st == KN_ERR_IO) {
        set_error(error, kn_prompt_error_body("invalid_prompt", "Cannot read the workflow", err->msg, NULL));
    }
    free(buf);
    return st;
}
