/* Family checks across links: see families.h. */
#include "nodes/families.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64 /* bounds the walk on prompts with cycles (validation reports those) */

typedef struct traced {
    kn_family_ref ref;
    const char *node; /* the loader's id */
} traced;

/* The family hook of node `id` on its constant inputs. 1: found (*out set), 0: no hook. */
static int loader_family(const json_t *node, const char *id, const kn_node_class *cls, int slot,
                         const kn_node_env *env, kn_family_ref *out, kn_err *err) {
    const kn_node_hooks *hooks = kn_node_hooks_find(cls->name);
    if (!hooks || !hooks->family) return 0;
    kn_value *in = calloc((size_t)cls->n_inputs + 1, sizeof *in);
    if (!in) return kn_fail(err, KN_ERR_NOMEM, "out of memory"), -1;
    int bad = -1;
    kn_node_call call = {id, cls, in, NULL, NULL, env, err, NULL};
    int rc = kn_node_constants(cls, json_object_get(node, "inputs"), in, &bad, err);
    if (!rc) rc = hooks->family(&call, slot, out);
    kn_values_clear(in, cls->n_inputs);
    free(in);
    return rc ? -1 : 1;
}

/* The first linked input of `type` of a node, or NULL. */
static const json_t *linked_input(const json_t *node, const kn_node_class *cls, const char *type) {
    for (int k = 0; k < cls->n_inputs; k++) {
        const kn_input_spec *in = &cls->inputs[k];
        const json_t *v = json_object_get(json_object_get(node, "inputs"), in->name);
        if (in->kind == KN_INPUT_LINK && strcmp(in->type, type) == 0 && json_is_array(v)) return v;
    }
    return NULL;
}

/* Follows link (a ["id", slot] of `type`) to its loader. 1: traced into *out,
 * 0: not traceable, -1: error (err set). */
static int trace(const json_t *prompt, const json_t *link, const char *type, const kn_node_env *env, int depth,
                 traced *out, kn_err *err) {
    const char *id = json_string_value(json_array_get(link, 0));
    const json_t *slot_v = json_array_get(link, 1);
    const json_t *node = id ? json_object_get(prompt, id) : NULL;
    const kn_node_class *cls = kn_registry_find(json_string_value(json_object_get(node, "class_type")));
    int slot = json_is_integer(slot_v) ? (int)json_integer_value(slot_v) : -1;
    if (depth > MAX_DEPTH || !cls || slot < 0 || slot >= cls->n_outputs || strcmp(cls->outputs[slot].type, type) != 0)
        return 0;
    int found = loader_family(node, id, cls, slot, env, &out->ref, err);
    if (found) {
        out->node = id;
        return found;
    }
    /* a text encode: the conditioning's family is its CLIP's */
    const json_t *next = strcmp(type, "CONDITIONING") == 0 ? linked_input(node, cls, "CLIP") : NULL;
    if (next) return trace(prompt, next, "CLIP", env, depth + 1, out, err);
    next = linked_input(node, cls, type);
    return next ? trace(prompt, next, type, env, depth + 1, out, err) : 0;
}

int kn_check_families(const json_t *prompt, const char *id, const kn_node_env *env, const char **input, kn_err *err) {
    const json_t *node = json_object_get(prompt, id);
    const kn_node_class *cls = kn_registry_find(json_string_value(json_object_get(node, "class_type")));
    const json_t *model_link = cls ? linked_input(node, cls, "MODEL") : NULL;
    if (!model_link) return KN_OK;
    traced model;
    int rc = trace(prompt, model_link, "MODEL", env, 0, &model, err);
    if (rc <= 0 || !model.ref.takes) return rc < 0 ? err->code : KN_OK;
    for (int k = 0; k < cls->n_inputs; k++) {
        const kn_input_spec *in = &cls->inputs[k];
        const json_t *v = json_object_get(json_object_get(node, "inputs"), in->name);
        if (in->kind != KN_INPUT_LINK || strcmp(in->type, "CONDITIONING") != 0 || !json_is_array(v)) continue;
        traced text;
        rc = trace(prompt, v, "CONDITIONING", env, 0, &text, err);
        if (rc < 0) return err->code;
        if (rc == 0 || strcmp(text.ref.name, model.ref.takes) == 0) continue;
        *input = in->name;
        return kn_fail(err, KN_ERR_INVALID,
                       "the %s diffusion model (node %s) cannot read conditioning from the %s text encoder (node %s)",
                       model.ref.title, model.node, text.ref.title, text.node);
    }
    return KN_OK;
}
