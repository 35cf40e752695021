/* The registry's JSON views (nodes/registry.h): a COMBO's current choices, an
 * input's INPUT_TYPES spec (validation errors' input_config) and a class's
 * GET /object_info entry, in ComfyUI's V1 or V3 layout, key for key.
 * tests/unit/test_workflow.c compares every class against
 * tests/fixtures/workflows/object_info.json. */
#include "nodes/registry.h"

static const char *const kind_names[] = {
    [KN_INPUT_INT] = "INT", [KN_INPUT_FLOAT] = "FLOAT", [KN_INPUT_STRING] = "STRING",
    [KN_INPUT_BOOLEAN] = "BOOLEAN", [KN_INPUT_COMBO] = "COMBO",
};

/* ComfyUI reports INT options as integers; the seed limit does not fit one. */
static json_t *number(const kn_input_spec *in, double v) {
    if (in->kind == KN_INPUT_INT && v < 9223372036854775808.0) return json_integer((json_int_t)v);
    return json_real(v);
}

static json_t *string_list(const char *const *list) {
    json_t *a = json_array();
    for (; a && list && *list; list++)
        if (json_array_append_new(a, json_string(*list)) != 0) {
            json_decref(a);
            a = NULL;
        }
    return a;
}

json_t *kn_registry_combo_options(const kn_input_spec *in, const kn_folder_lister *lister,
                                  bool *complete, kn_err *err) {
    *complete = true;
    json_t *a = json_array();
    if (!a) {
        kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", in->name);
        return NULL;
    }
    if (in->folder) {
        if (lister && lister->list) {
            if (lister->list(lister->user, in->folder, a, err) != KN_OK) {
                json_decref(a);
                kn_err_wrap(err, "listing %s for %s", in->folder, in->name);
                return NULL;
            }
        } else {
            *complete = false;
        }
    }
    for (const char *const *o = in->options; o && *o; o++)
        if (json_array_append_new(a, json_string(*o)) != 0) {
            json_decref(a);
            kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", in->name);
            return NULL;
        }
    return a;
}

/* [type, options] as INPUT_TYPES holds it; `always_options` keeps an empty
 * options dict, which V1 object_info leaves out and validation errors keep. */
static json_t *input_spec(const kn_node_class *cls, const kn_input_spec *in, const kn_folder_lister *lister,
                          bool always_options, kn_err *err) {
    bool v3 = cls->style == KN_SCHEMA_V3, complete;
    json_t *choices = NULL;
    if (in->kind == KN_INPUT_COMBO && !(choices = kn_registry_combo_options(in, lister, &complete, err)))
        return NULL;
    json_t *spec = json_array(), *opt = json_object();
    int bad = !spec || !opt;
    if (in->kind == KN_INPUT_COMBO && !v3) {
        bad |= json_array_append(spec, choices); /* old-style combo: the list is the type */
    } else {
        const char *type = in->kind == KN_INPUT_LINK ? in->type : kind_names[in->kind];
        bad |= json_array_append_new(spec, json_string(type));
    }
    /* V3 (io.Input.as_dict) writes the base keys before the widget's own; V1 has them last */
    const bool v3_advanced = v3 && (in->flags & KN_INPUT_ADVANCED);
    if (v3 && in->tooltip) bad |= json_object_set_new(opt, "tooltip", json_string(in->tooltip));
    if (v3_advanced) bad |= json_object_set_new(opt, "advanced", json_true());
    if (in->kind == KN_INPUT_COMBO && v3) {
        bad |= json_object_set_new(opt, "multiselect", json_false());
        bad |= json_object_set(opt, "options", choices);
    }
    if (in->kind == KN_INPUT_STRING && (v3 || (in->flags & KN_INPUT_MULTILINE)))
        bad |= json_object_set_new(opt, "multiline", json_boolean(in->flags & KN_INPUT_MULTILINE));
    if (in->flags & KN_INPUT_DYNAMIC_PROMPTS) bad |= json_object_set_new(opt, "dynamicPrompts", json_true());
    if (in->kind == KN_INPUT_STRING && in->def_str) bad |= json_object_set_new(opt, "default", json_string(in->def_str));
    if (in->kind == KN_INPUT_BOOLEAN) bad |= json_object_set_new(opt, "default", json_boolean(in->def != 0));
    if (in->kind == KN_INPUT_INT || in->kind == KN_INPUT_FLOAT) {
        bad |= json_object_set_new(opt, "default", number(in, in->def));
        bad |= json_object_set_new(opt, "min", number(in, in->min));
        bad |= json_object_set_new(opt, "max", number(in, in->max));
        if (in->step != 0) bad |= json_object_set_new(opt, "step", number(in, in->step));
        if (in->round != 0) bad |= json_object_set_new(opt, "round", number(in, in->round));
    }
    static const struct {
        unsigned flag;
        const char *key;
    } flag_keys[] = {
        {KN_INPUT_CONTROL_AFTER_GENERATE, "control_after_generate"},
        {KN_INPUT_IMAGE_UPLOAD, "image_upload"},
        {KN_INPUT_ADVANCED, "advanced"},
    };
    for (size_t i = 0; i < sizeof flag_keys / sizeof flag_keys[0]; i++)
        if ((in->flags & flag_keys[i].flag) && !(v3_advanced && flag_keys[i].flag == KN_INPUT_ADVANCED))
            bad |= json_object_set_new(opt, flag_keys[i].key, json_true());
    if (!v3 && in->tooltip) bad |= json_object_set_new(opt, "tooltip", json_string(in->tooltip));
    json_decref(choices);
    if (!bad && (always_options || v3 || json_object_size(opt) > 0)) bad = json_array_append(spec, opt) != 0;
    json_decref(opt);
    if (bad) {
        json_decref(spec);
        kn_fail(err, KN_ERR_NOMEM, "%s.%s: out of memory", cls->name, in->name);
        return NULL;
    }
    return spec;
}

json_t *kn_registry_input_config(const kn_node_class *cls, const kn_input_spec *in,
                                 const kn_folder_lister *lister, kn_err *err) {
    return input_spec(cls, in, lister, true, err);
}

/* The "input" and "input_order" entries: one section per kn_input_section,
 * then the hidden inputs. */
static int put_inputs(json_t *info, const kn_node_class *cls, const kn_folder_lister *lister, kn_err *err) {
    static const char *const section_names[] = {[KN_SECTION_REQUIRED] = "required",
                                                 [KN_SECTION_OPTIONAL] = "optional"};
    json_t *input = json_object(), *order = json_object();
    int bad = json_object_set_new(info, "input", input) | json_object_set_new(info, "input_order", order);
    for (int s = KN_SECTION_REQUIRED; !bad && s <= KN_SECTION_OPTIONAL; s++) {
        json_t *specs = json_object(), *names = json_array();
        for (int i = 0; specs && names && i < cls->n_inputs; i++) {
            const kn_input_spec *in = &cls->inputs[i];
            if ((int)in->section != s) continue;
            json_t *spec = input_spec(cls, in, lister, false, err);
            if (!spec) {
                json_decref(specs);
                json_decref(names);
                return err->code;
            }
            bad |= json_object_set_new(specs, in->name, spec) | json_array_append_new(names, json_string(in->name));
        }
        if (s == KN_SECTION_REQUIRED || json_array_size(names) > 0) {
            bad |= json_object_set_new(input, section_names[s], specs) |
                   json_object_set_new(order, section_names[s], names);
        } else {
            json_decref(specs);
            json_decref(names);
        }
    }
    if (!bad && cls->hidden) {
        json_t *specs = json_object(), *names = json_array();
        for (const char *const *h = cls->hidden; specs && names && h[0] && h[1]; h += 2)
            bad |= json_object_set_new(specs, h[0], json_string(h[1])) | json_array_append_new(names, json_string(h[0]));
        bad |= json_object_set_new(input, "hidden", specs) | json_object_set_new(order, "hidden", names);
    }
    return bad ? kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", cls->name) : KN_OK;
}

/* output, output_is_list, output_name and, for V3, output_tooltips. */
static int put_outputs(json_t *info, const kn_node_class *cls) {
    json_t *types = json_array(), *lists = json_array(), *names = json_array();
    int bad = json_object_set_new(info, "output", types) | json_object_set_new(info, "output_is_list", lists) |
              json_object_set_new(info, "output_name", names);
    for (int i = 0; !bad && i < cls->n_outputs; i++)
        bad |= json_array_append_new(types, json_string(cls->outputs[i].type)) |
               json_array_append_new(lists, json_false()) |
               json_array_append_new(names, json_string(kn_output_name(&cls->outputs[i])));
    if (!bad && cls->style == KN_SCHEMA_V3) {
        json_t *tips = json_array(); /* one per output, null where unset */
        bad |= json_object_set_new(info, "output_tooltips", tips);
        for (int i = 0, end = 0; !bad && i < cls->n_outputs; i++) {
            end |= !cls->output_tooltips || !cls->output_tooltips[i];
            bad |= json_array_append_new(tips, end ? json_null() : json_string(cls->output_tooltips[i]));
        }
        bad |= json_object_set_new(info, "output_matchtypes", json_null());
    }
    return bad;
}

json_t *kn_registry_object_info(const kn_node_class *cls, const kn_folder_lister *lister, kn_err *err) {
    bool v3 = cls->style == KN_SCHEMA_V3;
    json_t *info = json_object();
    if (!info) {
        kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", cls->name);
        return NULL;
    }
    if (put_inputs(info, cls, lister, err) != KN_OK) {
        json_decref(info);
        return NULL;
    }
    int bad = json_object_set_new(info, "is_input_list", json_false()) | put_outputs(info, cls);
    bad |= json_object_set_new(info, "name", json_string(cls->name));
    bad |= json_object_set_new(info, "display_name", cls->display_name ? json_string(cls->display_name) : json_null());
    bad |= json_object_set_new(info, "description", json_string(cls->description ? cls->description : ""));
    bad |= json_object_set_new(info, "python_module", json_string(cls->python_module));
    bad |= json_object_set_new(info, "category", json_string(cls->category));
    bad |= json_object_set_new(info, "output_node", json_boolean(cls->output_node));
    if (v3) {
        bad |= json_object_set_new(info, "deprecated", json_false());
        bad |= json_object_set_new(info, "experimental", json_boolean(cls->experimental));
        bad |= json_object_set_new(info, "dev_only", json_false());
        bad |= json_object_set_new(info, "api_node", json_false());
        bad |= json_object_set_new(info, "price_badge", json_null());
    } else if (cls->output_tooltips) {
        bad |= json_object_set_new(info, "output_tooltips", string_list(cls->output_tooltips));
    }
    bad |= json_object_set_new(info, "search_aliases",
                               cls->search_aliases ? string_list(cls->search_aliases) : json_null());
    if (bad) {
        json_decref(info);
        kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", cls->name);
        return NULL;
    }
    return info;
}
