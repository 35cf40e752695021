/* LoRA nodes: LoraLoader, LoraLoaderModelOnly, and the MODEL -> patched DiT
 * step every DiT forward goes through (kn_model_dit).
 *
 * As in ComfyUI, a LoRA node computes nothing: its MODEL is the input's
 * weights plus a longer patch list (a LORA_STACK object, shared by the
 * MODELs derived from it). The weights are patched when a sampler asks for
 * the DiT: kn_model_dit brings the shared weight table to that MODEL's stack:
 * plain LoRAs become the linears' runtime adapters (pointer updates), the
 * other kinds recompute only the tensors whose patch list changed, and the
 * rest point back at the mmap'd file (loras/lora.h). Mapped LoRA files are kept in
 * the model store per (base weights, file), so re-running with another
 * strength reads nothing from disk.
 *
 * The text-encoder side is not implemented (the Qwen-Image LoRA fixtures
 * cover the DiT only): LoraLoader passes CLIP through unchanged, and a file's
 * text-encoder keys are among the "not loaded" keys it reports. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loras/lora.h"
#include "nodes/changed.h"
#include "nodes/model_store.h"
#include "nodes/node.h"

/* A LoRA file mapped onto one base model's weight table (store object). */
typedef struct lora_file {
    kn_object base;          /* "LORA" */
    kn_dit_weights *weights; /* retained: its table must outlive the mapping */
    kn_lora *lora;
    char *path;              /* owned */
} lora_file;

/* The patch list a MODEL carries, in graph order (immutable). */
typedef struct lora_stack {
    kn_object base;     /* "LORA_STACK" */
    lora_file **files;  /* retained */
    kn_lora_use *use;
    int n;
} lora_stack;

static void free_lora_file(kn_object *o) {
    lora_file *f = (lora_file *)o;
    kn_lora_free(f->lora);
    kn_object_release(&f->weights->base);
    free(f->path);
    free(f);
}

static void free_stack(kn_object *o) {
    lora_stack *s = (lora_stack *)o;
    for (int i = 0; i < s->n; i++) kn_object_release(&s->files[i]->base);
    free(s->files);
    free(s->use);
    free(s);
}

/* The weights' LoRA table, made on first use. */
static int weight_table(kn_dit_weights *w, kn_err *err) {
    if (w->lora_table) return KN_OK;
    const kn_dit_family *f = w->dit->family;
    return kn_lora_model_from_table(&w->lora_table, f->lora_keys, f->n_lora_keys, w->dit->weights, err);
}

int kn_model_dit(const kn_model_obj *m, const kn_dit **dit, kn_err *err) {
    kn_dit_weights *w = m->weights;
    const lora_stack *s = (const lora_stack *)m->loras;
    *dit = w->dit;
    if (!s && !w->lora_table) return KN_OK; /* no LoRA was ever applied to these weights */
    if (weight_table(w, err)) return err->code;
    return kn_lora_model_apply(w->lora_table, s ? s->use : NULL, s ? s->n : 0, NULL, err);
}

int kn_model_lora_count(const kn_model_obj *m) { return m->loras ? ((const lora_stack *)m->loras)->n : 0; }

void kn_model_lora_at(const kn_model_obj *m, int i, const char **path, double *strength) {
    const lora_stack *s = (const lora_stack *)m->loras;
    *path = s->files[i]->path;
    *strength = s->use[i].strength;
}

int kn_model_use(const kn_model_obj *m, kn_models *models, kn_err *err) {
    const lora_stack *s = (const lora_stack *)m->loras;
    int n = 1 + (s ? s->n : 0);
    kn_object **objs = malloc((size_t)n * sizeof *objs);
    if (!objs) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    objs[0] = &m->weights->base;
    for (int i = 1; i < n; i++) objs[i] = &s->files[i - 1]->base;
    kn_models_use(models, objs, n);
    free(objs);
    return KN_OK;
}

/* A LoRA file's mapping; its factors hold no heap copy. */
static uint64_t lora_bytes(const kn_object *o, uint64_t *kept) {
    int mapped;
    uint64_t n = kn_st_span_bytes(kn_lora_file(((const lora_file *)o)->lora), &mapped);
    *kept = mapped ? 0 : n;
    return n;
}

static void lora_release(kn_object *o) { kn_st_release(kn_lora_file(((lora_file *)o)->lora)); }

static const kn_resident_ops lora_resident = {lora_bytes, lora_release};

/* The mapped LoRA `path` for these weights, from the store or loaded now. */
static int get_lora(kn_node_call *c, kn_dit_weights *w, const char *path, lora_file **out) {
    char kind[64]; /* mapped onto these weights' table */
    snprintf(kind, sizeof kind, "lora:%p", (void *)w);
    kn_model_key key;
    kn_err e;
    kn_err_clear(&e);
    if (kn_model_key_of(&key, kind, path, &e)) return kn_node_fail(c, "lora_name", e.code, "%s", e.msg);
    if ((*out = (lora_file *)kn_models_get(c->env->models, &key))) return KN_OK;
    kn_models_reserve(c->env->models, &key);
    lora_file *f = calloc(1, sizeof *f);
    if (!f) return kn_node_fail(c, "lora_name", KN_ERR_NOMEM, "out of memory");
    kn_object_init(&f->base, "LORA", free_lora_file);
    f->weights = (kn_dit_weights *)kn_object_retain(&w->base);
    int rc = (f->path = strdup(path)) ? weight_table(w, &e) : kn_fail(&e, KN_ERR_NOMEM, "out of memory");
    if (!rc) rc = kn_lora_load(&f->lora, path, w->lora_table, &e);
    if (!rc) {
        char warn[4096];
        if (kn_lora_unloaded_count(f->lora)) fprintf(stderr, "%s\n", kn_lora_warning(f->lora, warn, sizeof warn));
        if ((rc = kn_models_put(c->env->models, &key, &f->base, &lora_resident, &e))) kn_object_release(&f->base);
    } else {
        kn_object_release(&f->base);
    }
    if (rc) return kn_node_fail(c, "lora_name", rc, "%s", kn_models_relative(c->env->models, e.msg));
    *out = f;
    return KN_OK;
}

/* A MODEL like `in` whose patch list ends with (f, strength). Takes f's reference. */
static int patched_model(kn_node_call *c, const kn_model_obj *in, lora_file *f, double strength, kn_model_obj **out) {
    const lora_stack *prev = (const lora_stack *)in->loras;
    int n = prev ? prev->n : 0;
    lora_stack *s = calloc(1, sizeof *s);
    kn_model_obj *m = kn_model_new(in->weights);
    if (s) kn_object_init(&s->base, "LORA_STACK", free_stack);
    if (!s || !m || !(s->files = calloc((size_t)n + 1, sizeof *s->files)) ||
        !(s->use = calloc((size_t)n + 1, sizeof *s->use)) || kn_model_sampling_copy(&m->ms, &in->ms, c->err)) {
        if (s) kn_object_release(&s->base);
        if (m) kn_object_release(&m->base);
        kn_object_release(&f->base);
        return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        s->files[i] = (lora_file *)kn_object_retain(&prev->files[i]->base);
        s->use[i] = prev->use[i];
    }
    s->files[n] = f;
    s->use[n] = (kn_lora_use){f->lora, strength};
    s->n = n + 1;
    m->loras = &s->base;
    kn_model_copy_options(m, in);
    *out = m;
    return KN_OK;
}

/* The MODEL output of both nodes: `model` itself at strength 0 (ComfyUI returns it unchanged). */
static int model_with_lora(kn_node_call *c, double strength, int slot) {
    kn_object *in;
    if (kn_in_object(c, "model", "MODEL", &in)) return c->err->code;
    kn_model_obj *model = (kn_model_obj *)in;
    if (strength == 0.0) {
        kn_out_object(c, slot, kn_object_retain(in));
        return KN_OK;
    }
    const char *name;
    char *path = NULL;
    kn_err e;
    kn_err_clear(&e);
    if (kn_in_string(c, "lora_name", &name)) return c->err->code;
    if (kn_models_resolve(c->env->models, "loras", name, &path, &e))
        return kn_node_fail(c, "lora_name", e.code, "%s", e.msg);
    lora_file *f = NULL;
    kn_model_obj *m = NULL;
    int rc = get_lora(c, model->weights, path, &f);
    free(path);
    if (!rc) rc = patched_model(c, model, f, strength, &m);
    if (!rc) kn_out_object(c, slot, &m->base);
    return rc;
}

static int lora_loader_model_only(kn_node_call *c) {
    double strength;
    if (kn_in_float(c, "strength_model", &strength)) return c->err->code;
    return model_with_lora(c, strength, 0);
}

static int lora_loader(kn_node_call *c) {
    double sm, sc;
    kn_object *clip;
    if (kn_in_float(c, "strength_model", &sm) || kn_in_float(c, "strength_clip", &sc) ||
        kn_in_object(c, "clip", "CLIP", &clip))
        return c->err->code;
    /* strength_clip has nothing to patch yet (see the top of this file) */
    if (model_with_lora(c, sm, 0)) return c->err->code;
    kn_out_object(c, 1, kn_object_retain(clip));
    return KN_OK;
}

const kn_node_def kn_nodes_lora[] = {
    {"LoraLoader", lora_loader},
    {"LoraLoaderModelOnly", lora_loader_model_only},
    {NULL, NULL},
};

const kn_node_hooks kn_hooks_lora[] = {
    {"LoraLoader", kn_changed_file_stamps, NULL, NULL},
    {"LoraLoaderModelOnly", kn_changed_file_stamps, NULL, NULL},
    {0},
};
