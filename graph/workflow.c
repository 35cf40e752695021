/* UI -> API conversion as ComfyUI_frontend does it: the graph read and
 * flattened (workflow_graph.c: LGraph.computeExecutionOrder, ExecutableNodeDTO
 * flattening of subgraph instances), then PrimitiveNode.applyToGraph and
 * graphToPrompt (src/utils/executionUtil.ts) with
 * ExecutableNodeDTO.resolveInput / resolveOutput for links through bypassed,
 * virtual and subgraph nodes; loading workflow files. */
#include "graph/workflow.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/json.h"
#include "graph/validate.h"
#include "graph/workflow_impl.h"

/* Inside a subgraph definition, links from its inputs start at this node id
 * and links to its outputs end at the other. */
#define KN_SUBGRAPH_INPUT_NODE (-10)
#define KN_SUBGRAPH_OUTPUT_NODE (-20)

int kn_wf_nomem(conv *cv) { return kn_fail(cv->err, KN_ERR_NOMEM, "converting the workflow: out of memory"); }

/* A conversion failure at a node (exec id or UI id) and, when known, an input. */
int kn_wf_fail_at(conv *cv, const char *node, const char *input, const char *fmt, ...) {
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

static int is_io_node(const json_t *id, json_int_t which) { return json_is_integer(id) && json_integer_value(id) == which; }

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
    return *out ? KN_OK : kn_wf_nomem(cv);
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
    int st = seen && work ? KN_OK : kn_wf_nomem(cv);
    for (size_t k = 0; st == KN_OK && k < json_array_size(links); k++) work[top++] = json_array_get(links, k);
    while (st == KN_OK && top > 0) {
        const ui_link *l = kn_wf_find_link(g, work[--top]);
        if (!l || seen[l - g->links]) continue;
        seen[l - g->links] = 1;
        ui_node *t = kn_wf_find_node(g, l->target);
        const json_t *input = t ? json_array_get(t->inputs, (size_t)l->target_slot) : NULL;
        if (!input || l->target_slot < 0) continue;
        if (t->kind == UI_REROUTE) {
            const json_t *next = json_object_get(json_array_get(t->outputs, 0), "links");
            for (size_t k = 0; k < json_array_size(next) && top < g->n_links + json_array_size(links); k++)
                work[top++] = json_array_get(next, k);
            continue;
        }
        const char *name = kn_wf_str_field(json_object_get(input, "widget"), "name");
        if (!name || !has_widget(t->cls, name)) continue;
        if (!t->pushed && !(t->pushed = json_object())) st = kn_wf_nomem(cv);
        else if (json_object_set(t->pushed, name, (json_t *)value) != 0) st = kn_wf_nomem(cv);
    }
    free(seen);
    free(work);
    return st;
}

/* ---- link resolution --------------------------------------------------------- */

/* isValidConnection's view of a slot type: NULL (absent, "", "*" or not a
 * string) matches anything. */
static const char *slot_type(const json_t *slot) {
    const char *t = kn_wf_str_field(slot, "type");
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
        const char *n = kn_wf_str_field(in, "name");
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
        const char *t = kn_wf_str_field(json_array_get(inputs, k), "type");
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
            return kn_wf_fail_at(cv, at, input_name, "circular reference while resolving this input's link");
        dto *D = &cv->dtos[d];
        if (dir == OUT) {
            ui_node *u = D->node;
            if (u->mode == MODE_BYPASS) {
                if (!json_array_get(live_outputs(D), (size_t)slot) || slot < 0)
                    return kn_wf_fail_at(cv, D->exec_id, NULL, "bypassed node has no output %" JSON_INTEGER_FORMAT,
                                         slot);
                int k = bypass_slot(D, slot, type);
                if (k < 0) return KN_OK; /* no input of a matching type: the input stays unconnected */
                dir = IN, slot = k, type = NULL, typed = 0;
                continue;
            }
            if (u->kind == UI_SUBGRAPH) {
                if (slot < 0 || !json_array_get(live_outputs(D), (size_t)slot))
                    return kn_wf_fail_at(cv, D->exec_id, NULL, "subgraph has no output %" JSON_INTEGER_FORMAT, slot);
                const ui_link *inner = NULL;
                for (size_t k = 0; k < u->sub->n_links && !inner; k++)
                    if (is_io_node(u->sub->links[k].target, KN_SUBGRAPH_OUTPUT_NODE) && u->sub->links[k].target_slot == slot)
                        inner = &u->sub->links[k];
                if (!inner) return KN_OK;
                ui_node *src = kn_wf_find_node(u->sub, inner->origin);
                char id[512];
                snprintf(id, sizeof id, "%s:%s", D->exec_id, src ? src->id : "?");
                json_t *pos = src ? json_object_get(cv->dto_index, id) : NULL;
                if (!pos) return kn_wf_fail_at(cv, D->exec_id, NULL, "subgraph output %" JSON_INTEGER_FORMAT " comes from a missing node", slot);
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
                return kn_wf_fail_at(cv, D->exec_id, NULL, "subgraph has no input %" JSON_INTEGER_FORMAT, slot);
            input = instance_input(D->node, kn_wf_str_field(def_in, "name"));
            if (!input) return KN_OK;
        } else if (!(input = slot < 0 ? NULL : json_array_get(D->node->inputs, (size_t)slot))) {
            return kn_wf_fail_at(cv, D->exec_id, NULL, "no input %" JSON_INTEGER_FORMAT, slot);
        }
        const json_t *link_id = json_object_get(input, "link");
        if (!link_id || json_is_null(link_id)) return KN_OK;
        const ui_link *l = kn_wf_find_link(D->g, link_id);
        if (!l) {
            char *shown = kn_py_repr(link_id);
            int st = kn_wf_fail_at(cv, D->exec_id, kn_wf_str_field(input, "name"), "link %s does not exist",
                                   shown ? shown : "?");
            free(shown);
            return st;
        }
        if (!typed) type = slot_type(input), typed = 1;

        if (D->parent >= 0 && is_io_node(l->origin, KN_SUBGRAPH_INPUT_NODE)) {
            /* The link enters from the subgraph instance's input l->origin_slot. */
            dto *inst = &cv->dtos[D->parent];
            const json_t *def_in = l->origin_slot < 0 ? NULL : json_array_get(live_inputs(inst), (size_t)l->origin_slot);
            if (!def_in)
                return kn_wf_fail_at(cv, inst->exec_id, NULL, "subgraph has no input %" JSON_INTEGER_FORMAT,
                                     l->origin_slot);
            const char *name = kn_wf_str_field(def_in, "name");
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
        ui_node *src = kn_wf_find_node(D->g, l->origin);
        int s = src ? dto_of(cv, D, src) : -1;
        if (s < 0)
            return kn_wf_fail_at(cv, D->exec_id, kn_wf_str_field(input, "name"), "the linked node does not exist");
        d = s, slot = l->origin_slot, dir = OUT;
    }
}

/* ---- graphToPrompt ------------------------------------------------------------------ */

static int emit_node(conv *cv, int d, json_t *prompt) {
    dto *D = &cv->dtos[d];
    ui_node *u = D->node;
    json_t *inputs = json_object();
    if (!inputs) return kn_wf_nomem(cv);
    int st = KN_OK;
    if (u->cls) {
        const kn_input_spec **w = malloc((2 * (size_t)u->cls->n_inputs + 1) * sizeof *w);
        int nw = w ? kn_workflow_widget_list(u->cls, w) : 0;
        if (!w) st = kn_wf_nomem(cv);
        for (int i = 0; st == KN_OK && i < nw; i++) {
            if (!w[i]) continue;
            const json_t *v = json_object_get(u->pushed, w[i]->name);
            if (!v) v = json_array_get(u->widgets_values, (size_t)i);
            json_t *value = NULL;
            if (v) value = sendable(v);
            else st = widget_default(cv, w[i], &value);
            if (st == KN_OK && v && !value) st = kn_wf_nomem(cv);
            if (st == KN_OK && value && json_object_set_new(inputs, w[i]->name, value) != 0) st = kn_wf_nomem(cv);
        }
        free(w);
    }
    for (size_t i = 0; st == KN_OK && i < json_array_size(u->inputs); i++) {
        const char *name = kn_wf_str_field(json_array_get(u->inputs, i), "name");
        if (!name) continue;
        resolved r;
        st = resolve_input(cv, d, (json_int_t)i, name, &r);
        json_t *v = NULL;
        if (st != KN_OK || r.kind == RESOLVED_NONE) continue;
        if (r.kind == RESOLVED_VALUE) v = sendable(r.value);
        else v = json_pack("[s, I]", cv->dtos[r.dto].exec_id, (json_int_t)r.slot);
        if (!v || json_object_set_new(inputs, name, v) != 0) st = kn_wf_nomem(cv);
    }
    const char *title = u->title ? u->title : u->cls ? kn_node_title(u->cls) : u->type;
    json_t *node = st == KN_OK ? json_pack("{s:o, s:s, s:{s:s}}", "inputs", inputs, "class_type", u->type, "_meta",
                                           "title", title)
                               : NULL;
    if (st != KN_OK) {
        json_decref(inputs);
        return st;
    }
    if (!node || json_object_set_new(prompt, D->exec_id, node) != 0) return kn_wf_nomem(cv);
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
    int st = kn_wf_flatten(cv, ui);
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
    if (st == KN_OK && drop_dangling_links(prompt) != 0) st = kn_wf_nomem(cv);
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
    int st = out && cv.empty && cv.dto_index ? kn_wf_graph_init(&cv, &cv.root) : kn_wf_nomem(&cv);
    if (st == KN_OK && !json_is_object(ui)) st = kn_wf_fail_at(&cv, NULL, NULL, "the workflow is not a JSON object");
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
    kn_wf_graph_free(&cv.root);
    for (size_t i = 0; i < cv.n_subs; i++) kn_wf_graph_free(&cv.subs[i]);
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
