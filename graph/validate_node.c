/* ComfyUI's validate_inputs (comfy/cmd/execution.py at 87606c5f, upstream
 * execution.py) for one node of a prompt: its links (recursing into the
 * nodes they come from), constants and choices; for running, the class's
 * validate hook and family check. Error types, messages, details and
 * extra_info keys are ComfyUI's, with its Python formatting of values
 * (graph/pyconv.h). */
#include "graph/validate_impl.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/pyconv.h"
#include "kernels/json.h"
#include "nodes/families.h"
#include "nodes/node.h"

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
json_t *kn_validate_interned(vctx *c, const char *text) {
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
json_t *kn_validate_error_entry(vctx *c, const char *type, const char *message, const char *details,
                                json_t *extra) {
    json_t *t = kn_validate_interned(c, type), *m = kn_validate_interned(c, message);
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
    json_t *e = kn_validate_error_entry(c, type, message, details, extra);
    if (!e || json_array_append_new(n->errors, e) != 0) return nomem(c);
    return RES_OK;
}

/* Marks node n failed with exactly one error (what ComfyUI stores in
 * validated[id] when an exception escapes it). */
int kn_validate_set_failed(vctx *c, vnode *n, json_t *entry) {
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

/* The reason recorded on a linked node that could not be validated; NULL
 * with err set on failure. */
static json_t *inner_exception(vctx *c, const vnode *n, const kn_input_spec *in, const json_t *link) {
    json_t *config = input_config(c, n, in);
    if (!config) return NULL;
    json_t *extra = json_pack("{s:s, s:o, s:s, s:s, s:[], s:O}", "input_name", in->name, "input_config", config,
                              "exception_message", c->exc_msg, "exception_type", c->exc_type, "traceback",
                              "linked_node", link);
    json_t *e = extra ? kn_validate_error_entry(c, "exception_during_inner_validation",
                                                "Exception when validating inner node", c->exc_msg, extra)
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
        r = kn_validate_node(c, (int)(src - c->nodes), depth + 1);
    if (r == RES_FATAL) return r;
    if (r == RES_RAISED) {
        json_t *e = inner_exception(c, n, in, link);
        if (!e || kn_validate_set_failed(c, src, e) != RES_OK) return RES_FATAL;
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
int kn_validate_node(vctx *c, int i, int depth) {
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
