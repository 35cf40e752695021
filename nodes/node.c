/* Objects, values, input getters and the class -> implementation table. */
#include "nodes/node.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"

/* ---- objects ----------------------------------------------------------------- */

void kn_object_init(kn_object *obj, const char *type, void (*destroy)(kn_object *)) {
    obj->type = type;
    obj->refs = 1;
    obj->destroy = destroy;
}

kn_object *kn_object_retain(kn_object *obj) {
    if (obj) obj->refs++;
    return obj;
}

void kn_object_release(kn_object *obj) {
    if (obj && --obj->refs == 0) obj->destroy(obj);
}

static void free_plain(kn_object *o) { free(o); }

static void entry_clear(kn_cond_entry *e) {
    kn_text_cond_free(&e->t);
    for (int i = 0; i < e->n_refs; i++) kn_object_release(&e->refs[i]->base);
    free(e->refs);
    memset(e, 0, sizeof *e);
}

static void free_cond(kn_object *o) {
    kn_cond_obj *c = (kn_cond_obj *)o;
    for (int i = 0; i < c->n; i++) entry_clear(&c->e[i]);
    free(c->e);
    free(c);
}

static void free_latent(kn_object *o) {
    kn_latent_obj *l = (kn_latent_obj *)o;
    kn_tensor_free(&l->samples);
    free(l);
}

static void free_image(kn_object *o) {
    kn_image_obj *im = (kn_image_obj *)o;
    kn_tensor_free(&im->t);
    free(im);
}

static void free_model(kn_object *o) {
    kn_model_obj *m = (kn_model_obj *)o;
    kn_model_sampling_free(&m->ms);
    kn_object_release(m->loras);
    kn_object_release(&m->weights->base);
    free(m);
}

static void free_sigmas(kn_object *o) {
    free(((kn_sigmas_obj *)o)->sigmas);
    free(o);
}

static void free_guider(kn_object *o) {
    kn_guider_obj *g = (kn_guider_obj *)o;
    kn_object_release(&g->model->base);
    kn_object_release(&g->positive->base);
    if (g->negative) kn_object_release(&g->negative->base);
    free(g);
}

static void *object_new(size_t size, const char *type, void (*destroy)(kn_object *)) {
    kn_object *o = calloc(1, size);
    if (o) kn_object_init(o, type, destroy);
    return o;
}

kn_cond_obj *kn_cond_new(int entries) {
    kn_cond_obj *c = object_new(sizeof(kn_cond_obj), "CONDITIONING", free_cond);
    if (c && entries > 0 && !(c->e = calloc((size_t)entries, sizeof *c->e))) {
        free(c);
        return NULL;
    }
    if (c) c->n = entries;
    return c;
}

int kn_cond_entry_add_ref(kn_cond_entry *e, kn_latent_obj *lat, kn_err *err) {
    kn_latent_obj **r = realloc(e->refs, (size_t)(e->n_refs + 1) * sizeof *r);
    if (!r) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    e->refs = r;
    e->refs[e->n_refs++] = (kn_latent_obj *)kn_object_retain(&lat->base);
    return KN_OK;
}

int kn_cond_entry_copy(kn_cond_entry *dst, const kn_cond_entry *src, kn_err *err) {
    memset(dst, 0, sizeof *dst);
    const kn_tensor *from[3] = {&src->t.cond, &src->t.mask, &src->t.pooled};
    kn_tensor *to[3] = {&dst->t.cond, &dst->t.mask, &dst->t.pooled};
    int rc = KN_OK;
    for (int i = 0; !rc && i < 3; i++)
        if (from[i]->data) rc = kn_tensor_dup(to[i], from[i], err);
    for (int i = 0; !rc && i < src->n_refs; i++) rc = kn_cond_entry_add_ref(dst, src->refs[i], err);
    dst->guidance = src->guidance;
    dst->has_guidance = src->has_guidance;
    if (rc) entry_clear(dst);
    return rc;
}
kn_latent_obj *kn_latent_new(void) { return object_new(sizeof(kn_latent_obj), "LATENT", free_latent); }
kn_image_obj *kn_image_new(const char *type) { return object_new(sizeof(kn_image_obj), type, free_image); }

kn_model_obj *kn_model_new(kn_dit_weights *weights) {
    kn_model_obj *m = object_new(sizeof(kn_model_obj), "MODEL", free_model);
    if (m) m->weights = (kn_dit_weights *)kn_object_retain(&weights->base);
    return m;
}

void kn_model_copy_options(kn_model_obj *dst, const kn_model_obj *src) {
    memcpy(dst->post_cfg, src->post_cfg, sizeof dst->post_cfg);
    dst->n_post_cfg = src->n_post_cfg;
    dst->step_cache = src->step_cache;
}

kn_model_obj *kn_model_clone(const kn_model_obj *from, kn_err *err) {
    kn_model_obj *m = kn_model_new(from->weights);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "out of memory"), NULL;
    m->loras = kn_object_retain(from->loras);
    kn_model_copy_options(m, from);
    if (kn_model_sampling_copy(&m->ms, &from->ms, err)) {
        kn_object_release(&m->base);
        return NULL;
    }
    return m;
}

kn_object *kn_simple_new(const char *type, size_t size) {
    void (*destroy)(kn_object *) = free_plain;
    if (strcmp(type, "SIGMAS") == 0) destroy = free_sigmas;
    if (strcmp(type, "GUIDER") == 0) destroy = free_guider;
    return object_new(size, type, destroy);
}

int kn_tensor_dup(kn_tensor *dst, const kn_tensor *src, kn_err *err) {
    if (kn_tensor_new(dst, src->dtype, KN_DEV_CPU, src->ndim, src->ne, err)) return err->code;
    if (kn_tensor_copy(dst, src, err)) {
        kn_tensor_free(dst);
        return err->code;
    }
    return KN_OK;
}

int kn_tensor_zeros(kn_tensor *t, kn_dtype dtype, int ndim, const int64_t *ne, kn_err *err) {
    if (kn_tensor_new(t, dtype, KN_DEV_CPU, ndim, ne, err)) return err->code;
    memset(t->data, 0, kn_tensor_nbytes(t));
    return KN_OK;
}

/* ---- values ------------------------------------------------------------------ */

int kn_value_from_json(kn_value *v, kn_input_kind kind, const json_t *j, kn_err *err) {
    memset(v, 0, sizeof *v);
    switch (kind) {
    case KN_INPUT_INT:
        v->kind = KN_VALUE_INT;
        uint64_t big;
        if (json_is_integer(j)) {
            v->i = json_integer_value(j);
        } else if (kn_json_u64_value(j, &big)) {
            v->i = (int64_t)big; /* seeds: the u64's bits */
        } else if (json_is_real(j) && json_real_value(j) >= 0 && json_real_value(j) < 18446744073709551616.0) {
            /* validation leaves integers above 2^63 (seeds) as reals */
            v->i = (int64_t)(uint64_t)json_real_value(j);
        } else {
            return kn_fail(err, KN_ERR_INVALID, "expected an integer");
        }
        return KN_OK;
    case KN_INPUT_FLOAT:
        if (!json_is_number(j)) return kn_fail(err, KN_ERR_INVALID, "expected a number");
        v->kind = KN_VALUE_FLOAT;
        v->f = json_number_value(j);
        return KN_OK;
    case KN_INPUT_BOOLEAN:
        if (!json_is_boolean(j)) return kn_fail(err, KN_ERR_INVALID, "expected a boolean");
        v->kind = KN_VALUE_BOOL;
        v->b = json_is_true(j);
        return KN_OK;
    case KN_INPUT_STRING:
    case KN_INPUT_COMBO:
        if (!json_is_string(j)) return kn_fail(err, KN_ERR_INVALID, "expected a string");
        v->kind = KN_VALUE_STRING;
        v->s = strdup(json_string_value(j));
        return v->s ? KN_OK : kn_fail(err, KN_ERR_NOMEM, "out of memory");
    case KN_INPUT_LINK: break;
    }
    return kn_fail(err, KN_ERR_INVALID, "a constant given to a socket input");
}

int kn_value_copy(kn_value *dst, const kn_value *src, kn_err *err) {
    *dst = *src;
    if (src->kind == KN_VALUE_STRING && !(dst->s = strdup(src->s))) {
        dst->kind = KN_VALUE_NONE;
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    if (src->kind == KN_VALUE_OBJECT) kn_object_retain(src->obj);
    return KN_OK;
}

void kn_value_clear(kn_value *v) {
    if (v->kind == KN_VALUE_STRING) free(v->s);
    if (v->kind == KN_VALUE_OBJECT) kn_object_release(v->obj);
    memset(v, 0, sizeof *v);
}

/* ---- getters ----------------------------------------------------------------- */

int kn_node_fail(kn_node_call *c, const char *input, int code, const char *fmt, ...) {
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->err_input = input;
    if (input) return kn_fail(c->err, code, "input '%s': %s", input, msg);
    return kn_fail(c->err, code, "%s", msg);
}

static const kn_value *input(kn_node_call *c, const char *name, kn_value_kind kind, bool optional) {
    for (int i = 0; i < c->cls->n_inputs; i++) {
        if (strcmp(c->cls->inputs[i].name, name) != 0) continue;
        const kn_value *v = &c->in[i];
        if (v->kind == kind || (optional && v->kind == KN_VALUE_NONE)) return v;
        break;
    }
    kn_node_fail(c, name, KN_ERR_INVALID, "missing or of the wrong kind");
    return NULL;
}

int kn_in_int(kn_node_call *c, const char *name, int64_t *v) {
    const kn_value *x = input(c, name, KN_VALUE_INT, false);
    if (!x) return c->err->code;
    *v = x->i;
    return KN_OK;
}

int kn_in_int_opt(kn_node_call *c, const char *name, int64_t def, int64_t *v) {
    const kn_value *x = input(c, name, KN_VALUE_INT, true);
    if (!x) return c->err->code;
    *v = x->kind == KN_VALUE_INT ? x->i : def;
    return KN_OK;
}

int kn_in_float(kn_node_call *c, const char *name, double *v) {
    const kn_value *x = input(c, name, KN_VALUE_FLOAT, false);
    if (!x) return c->err->code;
    *v = x->f;
    return KN_OK;
}

int kn_in_bool(kn_node_call *c, const char *name, bool *v) {
    const kn_value *x = input(c, name, KN_VALUE_BOOL, false);
    if (!x) return c->err->code;
    *v = x->b;
    return KN_OK;
}

int kn_in_string(kn_node_call *c, const char *name, const char **v) {
    const kn_value *x = input(c, name, KN_VALUE_STRING, false);
    if (!x) return c->err->code;
    *v = x->s;
    return KN_OK;
}

static int get_object(kn_node_call *c, const char *name, const char *type, kn_object **obj, bool optional) {
    const kn_value *x = input(c, name, KN_VALUE_OBJECT, true);
    if (!x) return c->err->code;
    /* validation saw the link, so the node it comes from returned None (ComfyUI's
     * CheckpointLoaderSimple does for a part its file lacks) */
    if (x->kind != KN_VALUE_OBJECT && !optional)
        return kn_node_fail(c, name, KN_ERR_INVALID, "expected %s, got None: the output linked here holds no %s "
                            "(a checkpoint without one gives None)", type, type);
    *obj = x->kind == KN_VALUE_OBJECT ? x->obj : NULL;
    if (*obj && strcmp((*obj)->type, type) != 0)
        return kn_node_fail(c, name, KN_ERR_INVALID, "expected %s, got %s", type, (*obj)->type);
    return KN_OK;
}

int kn_in_object(kn_node_call *c, const char *name, const char *type, kn_object **obj) {
    return get_object(c, name, type, obj, false);
}

int kn_in_object_opt(kn_node_call *c, const char *name, const char *type, kn_object **obj) {
    return get_object(c, name, type, obj, true);
}

void kn_out_object(kn_node_call *c, int i, kn_object *obj) {
    kn_value_clear(&c->out[i]);
    c->out[i].kind = KN_VALUE_OBJECT;
    c->out[i].obj = obj;
}

/* ---- table ------------------------------------------------------------------- */

kn_node_exec_fn kn_node_exec_find(const char *class_type) {
    static const kn_node_def *const tables[] = {kn_nodes_models, kn_nodes_conditioning, kn_nodes_latent,
                                                kn_nodes_sampling, kn_nodes_vae,          kn_nodes_image,
                                                kn_nodes_lora, kn_nodes_stepcache};
    if (!class_type) return NULL;
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++)
        for (const kn_node_def *d = tables[t]; d->class_type; d++)
            if (strcmp(d->class_type, class_type) == 0) return d->exec;
    return NULL;
}

const kn_node_hooks *kn_node_hooks_find(const char *class_type) {
    static const kn_node_hooks *const tables[] = {kn_hooks_models, kn_hooks_image, kn_hooks_lora, kn_hooks_latent};
    if (!class_type) return NULL;
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++)
        for (const kn_node_hooks *h = tables[t]; h->class_type; h++)
            if (strcmp(h->class_type, class_type) == 0) return h;
    return NULL;
}

int kn_node_constants(const kn_node_class *cls, const json_t *inputs, kn_value *in, int *bad, kn_err *err) {
    for (int i = 0; i < cls->n_inputs; i++) {
        const json_t *v = json_object_get(inputs, cls->inputs[i].name);
        if (!v || json_is_array(v)) continue; /* absent, or a link ["id", slot] */
        if (kn_value_from_json(&in[i], cls->inputs[i].kind, v, err)) {
            *bad = i;
            return kn_err_wrap(err, "input '%s'", cls->inputs[i].name);
        }
    }
    return KN_OK;
}

void kn_values_clear(kn_value *v, int n) {
    for (int i = 0; v && i < n; i++) kn_value_clear(&v[i]);
}

json_t *kn_node_object_info(const char *class_type, const kn_folder_lister *lister, kn_err *err) {
    json_t *all = json_object();
    if (!all) {
        kn_fail(err, KN_ERR_NOMEM, "out of memory");
        return NULL;
    }
    for (int i = 0; i < kn_registry_count(); i++) {
        const kn_node_class *cls = kn_registry_at(i);
        if ((class_type && strcmp(class_type, cls->name) != 0) || !kn_node_exec_find(cls->name)) continue;
        json_t *info = kn_registry_object_info(cls, lister, err);
        if (!info || json_object_set_new(all, cls->name, info) != 0) {
            if (info) kn_fail(err, KN_ERR_NOMEM, "out of memory");
            json_decref(all);
            return NULL;
        }
    }
    return all;
}
