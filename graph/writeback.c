/* kn_workflow_write_back: see graph/workflow.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/workflow.h"

/* A link in an API prompt: ["id", slot]. */
static int is_link(const json_t *v) {
    return json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
           json_is_number(json_array_get(v, 1));
}

int kn_workflow_write_back(json_t *ui, const json_t *prompt, kn_err *err) {
    size_t i;
    json_t *node;
    json_array_foreach(json_object_get(ui, "nodes"), i, node) {
        const json_t *jid = json_object_get(node, "id");
        char id[64];
        if (json_is_integer(jid)) snprintf(id, sizeof id, "%lld", (long long)json_integer_value(jid));
        else if (json_is_string(jid)) snprintf(id, sizeof id, "%s", json_string_value(jid));
        else continue;
        const json_t *api = json_object_get(prompt, id);
        const char *type = json_string_value(json_object_get(node, "type"));
        const char *cls_name = json_string_value(json_object_get(api, "class_type"));
        json_t *values = json_object_get(node, "widgets_values");
        const kn_node_class *cls = type ? kn_registry_find(type) : NULL;
        if (!cls || !cls_name || strcmp(type, cls_name) != 0 || !json_is_array(values)) continue;
        const kn_input_spec **w = malloc((2 * (size_t)cls->n_inputs + 1) * sizeof *w);
        if (!w) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
        int nw = kn_workflow_widget_list(cls, w);
        const json_t *inputs = json_object_get(api, "inputs");
        for (int k = 0; k < nw && (size_t)k < json_array_size(values); k++) {
            const json_t *v = w[k] ? json_object_get(inputs, w[k]->name) : NULL;
            if (!v || is_link(v)) continue;
            const json_t *wrapped = json_object_get(v, "__value__"); /* a list constant, as sent */
            if (json_is_object(v) && wrapped) v = wrapped;
            if (json_array_set_new(values, (size_t)k, json_deep_copy(v)) != 0) {
                free(w);
                return kn_fail(err, KN_ERR_NOMEM, "out of memory");
            }
        }
        free(w);
    }
    return KN_OK;
}
