/* ComfyUI's prompt validation (comfy/cmd/execution.py validate_inputs and
 * _validate_prompt at 87606c5f, upstream execution.py) and execution order
 * (comfy_execution/graph.py ExecutionList with ux_friendly_pick_node), over
 * the node registry. Error types, messages, details and extra_info keys are
 * ComfyUI's, with its Python formatting of values (graph/json.h). */
#include "graph/validate.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/pyconv.h"
#include "kernels/json.h"
#include "nodes/families.h"
#include "nodes/node.h"

enum { NODE_NEW, NODE_BUSY, NODE_DONE };
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

static int nomem(vctx *c) {
    kn_fail(c->err, KN_ERR_NOMEM, "validating the prompt: out of memory");
    return RES_FATAL;
}

static int py_raise(vctx *c, const char *type, const char *fmt, ...) KN_PRINTF(3, 4);
static int py_raise(vctx *c, const char *type, const char *fmt, ...) {
    snprintf(c->exc_type, sizeof c->exc_type, "%s", type);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->exc_msg, sizeof c->exc_msg, fmt, ap);
    va_end(ap);
    return RES_RAISED;
}

/* One shared string per distinct text (borrowed; NULL when out of memory):
 * a prompt of 100,000 failing nodes repeats a few types and messages. */
static json_t *interned(vctx *c, const char *text) {
    json_t *v = json_object_get(c->strings, text);
    if (!v && (!(v = json_string(text)) || json_object_set_new(c->strings, text, v) != 0)) return NULL;
    return v;
}

/* A new reference to the extra_info {"input_name": name}, one per name (errors
 * are never modified once made); NULL when out of memory. */
static json_t *input_only(vctx *c, const char *name) {
    json_t *v = json_object_get(c->input_infos, name);
    if (!v && (!(v = json_pack("{s:s}", "input_name", name)) || json_object_set_new(c->input_infos, name, v) != 0))
        return NULL;
    return json_incref(v);
}

/* {type, message, details, extra_info}; takes extra, NULL when out of memory
 * (including a NULL extra left by a failed json_pack). */
static json_t *error_entry(vctx *c, const char *type, const char *message, const char *details, json_t *extra) {
    json_t *t = interned(c, type), *m = interned(c, message);
    if (!t || !m) {
        json_decref(extra);
        return NULL;
    }
    return extra ? json_pack("{s:O, s:O, s:s, s:o}", "type", t, "message", m, "details", details, "extra_info", extra)
                 : NULL;
}

/* Appends an error to node n; takes ownership of extra. */
static int push_error(vctx *c, vnode *n, const char *type, const char *message, const char *details,
                      json_t *extra) {
    json_t *e = error_entry(c, type, message, details, extra);
    if (!e || json_array_append_new(n->errors, e) != 0) return nomem(c);
    return RES_OK;
}

/* Marks node n failed with exactly one error (what ComfyUI stores in
 * validated[id] when an exception escapes it). */
static int set_failed(vctx *c, vnode *n, json_t *entry) {
    json_t *errors = entry ? json_array() : NULL;
    if (!errors) json_decref(entry);
    if (!errors || json_array_append_new(errors, entry) != 0) {
        json_decref(errors);
        return nomem(c);
    }
    json_decref(n->errors);
    n->errors = errors;
    n->state = NODE_DONE;
    n->valid = 0;
    return RES_OK;
}

static json_t *input_config(vctx *c, const vnode *n, const kn_input_spec *in) {
    return kn_registry_input_config(n->cls, in, c->lister, c->err);
}

/* str(value) as ComfyUI's messages print it; an INT kept as a real (beyond
 * 64 bits) prints as the whole number Python's int would. */
static char *value_text(const kn_input_spec *in, const json_t *v) {
    if (in->kind == KN_INPUT_INT && json_is_real(v)) {
        char buf[400];
        snprintf(buf, sizeof buf, "%.0f", json_real_value(v));
        return strdup(buf);
    }
    return kn_py_str(v);
}

/* ---- one input ---------------------------------------------------------------- */

static const char *kind_type_name(kn_input_kind k) {
    switch (k) {
    case KN_INPUT_INT: return "INT";
    case KN_INPUT_FLOAT: return "FLOAT";
    case KN_INPUT_STRING: return "STRING";
    case KN_INPUT_BOOLEAN: return "BOOLEAN";
    default: return "COMBO";
    }
}

/* comfy_execution/validation.py validate_node_input for two type strings. */
static int types_compatible(const char *received, const char *expected) {
    if (strcmp(received, expected) == 0) return 1;
    static const char *const any[] = {"*", "COMFY_MATCHTYPE_V3"};
    for (int i = 0; i < 2; i++)
        if (strcmp(received, any[i]) == 0 || strcmp(expected, any[i]) == 0) return 1;
    /* Comma-separated unions match when they share a (trimmed) member or one holds "*". */
    char a[256], b[256];
    snprintf(a, sizeof a, "%s", received);
    snprintf(b, sizeof b, "%s", expected);
    char *sa, *sb;
    for (char *ta = strtok_r(a, ",", &sa); ta; ta = strtok_r(NULL, ",", &sa)) {
        while (isspace((unsigned char)*ta)) ta++;
        size_t la = strlen(ta);
        while (la && isspace((unsigned char)ta[la - 1])) ta[--la] = '\0';
        if (strcmp(ta, "*") == 0) return 1;
        char bb[256];
        memcpy(bb, b, sizeof bb);
        for (char *tb = strtok_r(bb, ",", &sb); tb; tb = strtok_r(NULL, ",", &sb)) {
            while (isspace((unsigned char)*tb)) tb++;
            size_t lb = strlen(tb);
            while (lb && isspace((unsigned char)tb[lb - 1])) tb[--lb] = '\0';
            if (strcmp(tb, "*") == 0 || strcmp(ta, tb) == 0) return 1;
        }
    }
    return 0;
}

static int validate_node(vctx *c, int i, int depth);

/* The reason recorded on a linked node that could not be validated; NULL
 * with err set on failure. */
static json_t *inner_exception(vctx *c, const vnode *n, const kn_input_spec *in, const json_t *link) {
    json_t *config = input_config(c, n, in);
    if (!config) return NULL;
    json_t *extra = json_pack("{s:s, s:o, s:s, s:s, s:[], s:O}", "input_name", in->name, "input_config", config,
                              "exception_message", c->exc_msg, "exception_type", c->exc_type, "traceback",
                              "linked_node", link);
    json_t *e = extra ? error_entry(c, "exception_during_inner_validation", "Exception when validating inner node",
                                    c->exc_msg, extra)
                      : NULL;
    if (!e) nomem(c);
    return e;
}

/* A linked input: [node_id, output_index]. Clears *valid when the link or
 * the node it comes from is invalid. */
static int check_link(vctx *c, vnode *n, const kn_input_spec *in, json_t *link, int depth, int *valid) {
    if (json_array_size(link) != 2) {
        json_t *config = input_config(c, n, in);
        if (!config) return RES_FATAL;
        return push_error(c, n, "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          in->name,
                          json_pack("{s:s, s:o, s:O}", "input_name", in->name, "input_config", config,
                                    "received_value", link));
    }
    /* ComfyUI looks the source up as prompt[id] and RETURN_TYPES[slot]; a
     * failure there is an exception that escapes this node. */
    const json_t *oid = json_array_get(link, 0), *slot = json_array_get(link, 1);
    if (json_is_array(oid) || json_is_object(oid))
        return py_raise(c, "TypeError", "unhashable type: '%s'", kn_py_type_name(oid));
    json_t *pos = json_is_string(oid) ? json_object_get(c->index, json_string_value(oid)) : NULL;
    if (!pos) {
        char *r = kn_py_repr(oid);
        if (!r) return nomem(c);
        int res = py_raise(c, "KeyError", "%s", r);
        free(r);
        return res;
    }
    vnode *src = &c->nodes[json_integer_value(pos)];
    if (!json_is_integer(slot))
        return py_raise(c, "TypeError", "tuple indices must be integers or slices, not %s", kn_py_type_name(slot));
    /* Python would also accept a negative index (counted from the end); Kiln
     * keeps slots plain so the executor can index outputs directly. */
    json_int_t s = json_integer_value(slot);
    if (s < 0 || s >= src->cls->n_outputs) return py_raise(c, "IndexError", "tuple index out of range");
    const char *received = src->cls->outputs[s].type;

    /* An old-style combo's type is its choice list, which only the "any"
     * types match. */
    int list_type = in->kind == KN_INPUT_COMBO && n->cls->style == KN_SCHEMA_V1;
    const char *expected = in->kind == KN_INPUT_LINK ? in->type : kind_type_name(in->kind);
    int ok = list_type ? strcmp(received, "*") == 0 || strcmp(received, "COMFY_MATCHTYPE_V3") == 0
                       : types_compatible(received, expected);
    if (!ok) {
        json_t *config = input_config(c, n, in);
        if (!config) return RES_FATAL;
        char *shown = list_type ? kn_py_repr(json_array_get(config, 0)) : strdup(expected);
        if (!shown) {
            json_decref(config);
            return nomem(c);
        }
        char details[1024];
        snprintf(details, sizeof details, "%s, %s != %s", in->name, received, shown);
        free(shown);
        return push_error(c, n, "return_type_mismatch", "Return type mismatch between linked nodes", details,
                          json_pack("{s:s, s:o, s:s, s:O}", "input_name", in->name, "input_config", config,
                                    "received_type", received, "linked_node", link));
    }

    if (src->state == NODE_BUSY) {
        /* A dependency cycle: ComfyUI recurses into Python's recursion limit;
         * Kiln names it on the node the cycle re-enters. */
        snprintf(c->exc_type, sizeof c->exc_type, "graph.DependencyCycleError");
        snprintf(c->exc_msg, sizeof c->exc_msg, "Dependency cycle detected");
        json_t *e = inner_exception(c, n, in, link);
        if (!e) return RES_FATAL;
        if (json_array_append_new(src->errors, e) != 0) return nomem(c);
        *valid = 0;
        return RES_OK;
    }
    int r;
    if (src->state != NODE_DONE && depth + 1 > KN_VALIDATE_MAX_DEPTH)
        r = py_raise(c, "RecursionError", "maximum recursion depth exceeded");
    else
        r = validate_node(c, (int)(src - c->nodes), depth + 1);
    if (r == RES_FATAL) return r;
    if (r == RES_RAISED) {
        json_t *e = inner_exception(c, n, in, link);
        if (!e || set_failed(c, src, e) != RES_OK) return RES_FATAL;
    }
    if (r != RES_OK) *valid = 0;
    return RES_OK;
}

static int check_choice(vctx *c, vnode *n, const kn_input_spec *in, const json_t *val) {
    bool complete;
    json_t *choices = kn_registry_combo_options(in, c->lister, &complete, c->err);
    if (!choices) return RES_FATAL;
    int found = 0;
    for (size_t k = 0; k < json_array_size(choices) && !found; k++) found = json_equal(json_array_get(choices, k), val);
    if (!complete || found) {
        json_decref(choices);
        return RES_OK;
    }
    char *text = kn_py_str(val);
    size_t count = json_array_size(choices);
    /* ComfyUI spares clients huge folder listings. */
    char *list = count > 20 ? NULL : kn_py_repr(choices);
    json_decref(choices);
    if (!text || (count <= 20 && !list)) {
        free(text);
        free(list);
        return nomem(c);
    }
    char details[2048];
    int res;
    if (in->flags & KN_INPUT_FILE_EXISTS) {
        /* LoadImage's and LoadLatent's VALIDATE_INPUTS messages */
        const char *kind = strcmp(in->folder, "input_latents") == 0 ? "latent" : "image";
        snprintf(details, sizeof details, "%s - Invalid %s file: %s", in->name, kind, text);
        res = push_error(c, n, "custom_validation_failed", "Custom validation failed for node", details,
                         input_only(c, in->name));
    } else {
        char many[64];
        snprintf(many, sizeof many, "(list of length %zu)", count);
        snprintf(details, sizeof details, "%s: '%s' not in %s", in->name, text, list ? list : many);
        json_t *config = count > 20 ? json_null() : input_config(c, n, in);
        res = !config ? RES_FATAL
                      : push_error(c, n, "value_not_in_list", "Value not in list", details,
                                   json_pack("{s:s, s:o, s:O}", "input_name", in->name, "input_config", config,
                                             "received_value", val));
    }
    free(text);
    free(list);
    return res;
}

/* A constant input: unwrap, convert, range- and choice-check, as ComfyUI does. */
static int check_constant(vctx *c, vnode *n, const kn_input_spec *in, json_t *inputs, json_t *val) {
    json_t *wrapped = json_is_object(val) ? json_object_get(val, "__value__") : NULL;
    if (wrapped) {
        /* the wrapper owns the value: hold it while the wrapper is replaced */
        if (json_object_set_new(inputs, in->name, json_incref(wrapped)) != 0) return nomem(c);
        val = wrapped;
    }
    char exc[512] = "";
    json_t *conv = NULL;
    int failed = 0;
    switch (in->kind) {
    case KN_INPUT_LINK:
        /* Kiln's own check: ComfyUI lets this through to fail inside the node. */
        snprintf(exc, sizeof exc, "expected a link [node_id, output_index]");
        failed = 1;
        break;
    case KN_INPUT_INT: failed = kn_py_to_int(val, &conv, exc, sizeof exc); break;
    case KN_INPUT_FLOAT: failed = kn_py_to_float(val, &conv, exc, sizeof exc); break;
    case KN_INPUT_STRING: {
        char *s = kn_py_str(val);
        conv = s ? json_string(s) : NULL;
        free(s);
        break;
    }
    case KN_INPUT_BOOLEAN: conv = json_boolean(kn_py_truthy(val)); break;
    case KN_INPUT_COMBO: return check_choice(c, n, in, val);
    }
    if (failed) {
        const char *type = in->kind == KN_INPUT_LINK ? in->type : kind_type_name(in->kind);
        char message[256], details[1024];
        char *text = kn_py_str(val);
        if (!text) return nomem(c);
        snprintf(message, sizeof message, "Failed to convert an input value to a %s value", type);
        snprintf(details, sizeof details, "%s, %s, %s", in->name, text, exc);
        free(text);
        json_t *config = input_config(c, n, in);
        if (!config) return RES_FATAL;
        return push_error(c, n, "invalid_input_type", message, details,
                          json_pack("{s:s, s:o, s:O, s:s}", "input_name", in->name, "input_config", config,
                                    "received_value", val, "exception_message", exc));
    }
    if (!conv || json_object_set_new(inputs, in->name, conv) != 0) return nomem(c);
    if (in->kind == KN_INPUT_STRING && json_string_length(conv) > KN_VALIDATE_TEXT_MAX) {
        char message[200];
        snprintf(message, sizeof message, "Text of %zu bytes is longer than the max of %d bytes",
                 json_string_length(conv), KN_VALIDATE_TEXT_MAX);
        json_t *config = input_config(c, n, in);
        if (!config) return RES_FATAL;
        return push_error(c, n, "value_bigger_than_max", message, in->name,
                          json_pack("{s:s, s:o, s:I}", "input_name", in->name, "input_config", config, "received_length",
                                    (json_int_t)json_string_length(conv)));
    }
    if (in->kind != KN_INPUT_INT && in->kind != KN_INPUT_FLOAT) return RES_OK;

    uint64_t big = 0;
    int is_u64 = kn_json_u64_value(conv, &big);
    double v = json_is_integer(conv) ? (double)json_integer_value(conv) : is_u64 ? (double)big : json_real_value(conv);
    /* (double)(2^64 - 1) rounds to 2^64: a u64 is within the seeds' max exactly */
    int below = v < in->min;
    int above = !below && (is_u64 ? in->max < KN_SEED_MAX && v > in->max : kn_input_max_exceeded(in, v));
    if (!below && !above) return RES_OK;
    char bound[64], message[640];
    kn_input_format_bound(in, below ? in->min : in->max, bound, sizeof bound);
    char *text = value_text(in, conv);
    if (!text) return nomem(c);
    snprintf(message, sizeof message, below ? "Value %s smaller than min of %s" : "Value %s bigger than max of %s",
             text, bound);
    free(text);
    json_t *config = input_config(c, n, in);
    if (!config) return RES_FATAL;
    return push_error(c, n, below ? "value_smaller_than_min" : "value_bigger_than_max", message, in->name,
                      json_pack("{s:s, s:o, s:O}", "input_name", in->name, "input_config", config, "received_value",
                                conv));
}

/* ---- validation for running ----------------------------------------------------- */

/* A class Kiln has a schema for but cannot run, with the shape and extra_info
 * of ComfyUI's missing_node_type (the class does not exist on this server)
 * as one of the node's errors, naming the classes Kiln does run. */
static int not_implemented(vctx *c, vnode *n) {
    json_t *meta = json_object_get(n->node, "_meta");
    json_t *title = json_is_object(meta) ? json_object_get(meta, "title") : NULL;
    char *shown = title ? kn_py_str(title) : strdup(n->cls->name); /* Python: meta.get("title", class_type) */
    if (!shown) return nomem(c);
    char message[1024], details[4096] = "Kiln runs:";
    snprintf(message, sizeof message, "Node '%s' (%s) is not implemented by Kiln.", shown, n->cls->name);
    size_t used = strlen(details);
    for (int k = 0, listed = 0; k < kn_registry_count() && used < sizeof details; k++) {
        const char *name = kn_registry_at(k)->name;
        if (kn_node_exec_find(name))
            used += (size_t)snprintf(details + used, sizeof details - used, "%s %s", listed++ ? "," : "", name);
    }
    int r = push_error(c, n, "missing_node_type", message, details,
                       json_pack("{s:s, s:s, s:s}", "node_id", n->id, "class_type", n->cls->name, "node_title", shown));
    free(shown);
    return r;
}

/* custom_validation_failed for one input: details "<input> - <reason>". */
static int hook_error(vctx *c, vnode *n, const char *input, const char *reason) {
    char details[1400];
    snprintf(details, sizeof details, "%s - %s", input, reason);
    return push_error(c, n, "custom_validation_failed", "Custom validation failed for node", details,
                      input_only(c, input));
}

/* The class's validate hook (nodes/node.h) on the node's constant inputs. */
static int validate_hook(vctx *c, vnode *n, kn_node_validate_fn validate) {
    const kn_node_class *cls = n->cls;
    kn_value *in = calloc((size_t)cls->n_inputs + 1, sizeof *in);
    if (!in) return nomem(c);
    kn_err e;
    kn_err_clear(&e);
    int bad = -1;
    kn_node_call call = {n->id, cls, in, NULL, NULL, c->run, &e, NULL};
    int rc = kn_node_constants(cls, json_object_get(n->node, "inputs"), in, &bad, &e);
    if (rc) call.err_input = cls->inputs[bad].name;
    else rc = validate(&call);
    int res = RES_OK;
    if (rc == KN_ERR_NOMEM) {
        res = nomem(c);
    } else if (rc) {
        /* the reason without kn_node_fail's "input '<name>': " prefix, which details repeat */
        char prefix[300];
        snprintf(prefix, sizeof prefix, "input '%s': ", call.err_input ? call.err_input : "");
        const char *reason = strncmp(e.msg, prefix, strlen(prefix)) == 0 ? e.msg + strlen(prefix) : e.msg;
        if (call.err_input) res = hook_error(c, n, call.err_input, reason);
        /* naming no input: ComfyUI reports the failure on every input it passed */
        for (int k = 0; !call.err_input && res == RES_OK && k < cls->n_inputs; k++)
            if (in[k].kind != KN_VALUE_NONE) res = hook_error(c, n, cls->inputs[k].name, reason);
        if (res == RES_OK && json_array_size(n->errors) == 0) /* no constant input to name */
            res = push_error(c, n, "custom_validation_failed", "Custom validation failed for node", reason,
                             json_object());
    }
    kn_values_clear(in, cls->n_inputs);
    free(in);
    return res;
}

/* The model and conditioning meeting here come from families that fit (nodes/families.h). */
static int check_families(vctx *c, vnode *n) {
    const char *input = NULL;
    kn_err e;
    kn_err_clear(&e);
    int rc = kn_check_families(c->prompt, n->id, c->run, &input, &e);
    if (rc == KN_ERR_NOMEM) return nomem(c);
    if (rc && input) return hook_error(c, n, input, e.msg);
    /* a loader that cannot be read reports itself when validated */
    return RES_OK;
}

/* validate_inputs for one node; memoised in the node's state. */
static int validate_node(vctx *c, int i, int depth) {
    vnode *n = &c->nodes[i];
    if (n->state == NODE_DONE) return n->valid ? RES_OK : RES_INVALID;
    n->state = NODE_BUSY;
    json_decref(n->errors);
    if (!(n->errors = json_array())) return nomem(c);
    json_t *inputs = json_object_get(n->node, "inputs");
    if (!inputs) return py_raise(c, "KeyError", "%s", "'inputs'");
    if (!json_is_object(inputs)) return py_raise(c, "TypeError", "argument of type '%s' is not iterable", kn_py_type_name(inputs));
    const kn_node_hooks *hooks = c->run ? kn_node_hooks_find(n->cls->name) : NULL;
    if (c->run && !kn_node_exec_find(n->cls->name) && not_implemented(c, n) != RES_OK) return RES_FATAL;
    int valid = 1;
    for (int k = 0; k < n->cls->n_inputs; k++) {
        const kn_input_spec *in = &n->cls->inputs[k];
        json_t *val = json_object_get(inputs, in->name);
        int r;
        if (!val) {
            if (in->section != KN_SECTION_REQUIRED) continue;
            r = push_error(c, n, "required_input_missing", "Required input is missing", in->name,
                           input_only(c, in->name));
        } else if (json_is_array(val)) {
            r = check_link(c, n, in, val, depth, &valid);
        } else {
            r = check_constant(c, n, in, inputs, val);
        }
        if (r != RES_OK) return r;
    }
    if (hooks && hooks->validate && json_array_size(n->errors) == 0 && validate_hook(c, n, hooks->validate) != RES_OK)
        return RES_FATAL;
    if (c->run && valid && json_array_size(n->errors) == 0 && check_families(c, n) != RES_OK) return RES_FATAL;
    n->state = NODE_DONE;
    n->valid = valid && json_array_size(n->errors) == 0;
    return n->valid ? RES_OK : RES_INVALID;
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

static int link_source(const vctx *c, const vnode *n, const kn_input_spec *in);

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
            json_t *cls = interned(c, n->cls->name);
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
        int r = validate_node(c, outputs.v[k], 1);
        if (r == RES_FATAL) {
            status = c->err->code ? c->err->code : KN_ERR_NOMEM;
            break;
        }
        if (r == RES_RAISED &&
            set_failed(c, o, error_entry(c, "exception_during_validation", "Exception when validating node", c->exc_msg,
                                         json_pack("{s:s, s:[]}", "exception_type", c->exc_type, "traceback"))) !=
                RES_OK) {
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
