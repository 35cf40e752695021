/* Fixture runner for LoRA patching (components "lora_qwen_image",
 * "lora_flux", "lora_zimage": the base model's family is the one meta.json
 * names, else detected from its weights).
 *
 * patched_weights cases: the base DiT with one LoRA at a strength; emits
 * every tensor the case lists ("out.weight.<key>") from the patched weight
 * table, and fails when the set of patched tensors or the file's unloaded keys
 * differ from ComfyUI's. dit_output cases: the DiT forward with a LoRA
 * stack (inputs in.x, in.timestep, in.context, and in.y, in.guidance where
 * the family takes them); an "after_unpatch_of" case applies that stack, removes it, and
 * requires the output to be bit-identical to the unpatched model's. */
#include <stdio.h>
#include <string.h>

#include "loras/lora.h"
#include "pipelines/fixture.h"

#define MAX_STACK 8

typedef struct base {
    kn_st_file *file;
    kn_dit *dit;
    kn_lora_model *table;
    kn_lora *loras[MAX_STACK];
    int n_loras;
} base;

static void base_free(base *b) {
    for (int i = 0; i < b->n_loras; i++) kn_lora_free(b->loras[i]);
    kn_lora_model_free(b->table); /* restores the views before the DiT goes */
    kn_dit_free(b->dit);
    kn_st_close(b->file);
}

/* meta["base_model"]: the weights (relative to the folder) and the tiny config. */
static int base_open(const kn_fixture_case *c, base *b, kn_err *err) {
    memset(b, 0, sizeof *b);
    const json_t *bm = json_object_get(c->meta, "base_model");
    const char *rel = json_string_value(json_object_get(bm, "weights"));
    if (!rel) return kn_fail(err, KN_ERR_FORMAT, "%s/meta.json: base_model.weights missing", c->dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", c->dir, rel);
    kn_dit_consts o;
    const kn_dit_family *fam;
    const char *prefix;
    kn_fixture_dit_overrides(c, json_object_get(bm, "config"), &o);
    int rc = kn_st_open(&b->file, path, err);
    if (!rc) rc = kn_fixture_dit_family(c, b->file, &fam, &prefix, err);
    if (!rc) rc = fam->load(&b->dit, b->file, prefix, &o, err);
    if (!rc) rc = kn_lora_model_from_table(&b->table, fam->lora_keys, fam->n_lora_keys, b->dit->weights, err);
    if (rc) base_free(b);
    return rc;
}

static int load_lora(const kn_fixture_case *c, base *b, const char *file, kn_lora **out, kn_err *err) {
    if (b->n_loras == MAX_STACK) return kn_fail(err, KN_ERR_INVALID, "lora fixture: more than %d LoRAs", MAX_STACK);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", c->dir, file);
    if (kn_lora_load(out, path, b->table, err)) return err->code;
    b->loras[b->n_loras++] = *out;
    return KN_OK;
}

/* A [[file, strength], ...] list into a stack. */
static int stack_of(const kn_fixture_case *c, base *b, const json_t *list, kn_lora_use *st, int *n, kn_err *err) {
    *n = 0;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *e = json_array_get(list, i);
        kn_lora *l;
        if (*n == MAX_STACK) return kn_fail(err, KN_ERR_INVALID, "lora fixture: stack too deep");
        if (load_lora(c, b, json_string_value(json_array_get(e, 0)), &l, err)) return err->code;
        st[(*n)++] = (kn_lora_use){l, json_number_value(json_array_get(e, 1))};
    }
    return KN_OK;
}

/* The file's unloaded keys must be meta["unmapped_keys"][file] (none when absent). */
static int check_unloaded(const kn_fixture_case *c, const kn_lora *l, const char *file, kn_err *err) {
    const json_t *want = json_object_get(json_object_get(c->meta, "unmapped_keys"), file);
    int n = kn_lora_unloaded_count(l), ok = (size_t)n == json_array_size(want);
    for (int i = 0; ok && i < n; i++) ok = strcmp(kn_lora_unloaded(l, i), json_string_value(json_array_get(want, (size_t)i))) == 0;
    if (ok) return KN_OK;
    char w[2048];
    return kn_fail(err, KN_ERR_INVALID, "%s: unloaded keys differ from ComfyUI's (%zu expected): %s", file,
                   json_array_size(want), kn_lora_warning(l, w, sizeof w));
}

static int patched_weights(const kn_fixture_case *c, kn_fixture_results *res, base *b, kn_err *err) {
    const char *file = json_string_value(json_object_get(c->info, "lora"));
    kn_lora *l;
    if (!file) return kn_fail(err, KN_ERR_FORMAT, "case without \"lora\"");
    if (load_lora(c, b, file, &l, err) || check_unloaded(c, l, file, err)) return err->code;
    kn_lora_use use = {l, json_number_value(json_object_get(c->info, "strength"))};
    kn_lora_apply_stats st;
    if (kn_lora_model_apply(b->table, &use, 1, &st, err)) return err->code;
    const json_t *outs = json_object_get(c->info, "outputs");
    /* a tensor is patched once: merged or given adapters, never both for one LoRA */
    if ((size_t)(st.recomputed + st.attached) != json_object_size(outs))
        return kn_fail(err, KN_ERR_INVALID, "%s patched %d tensors, ComfyUI patches %zu", file,
                       st.recomputed + st.attached, json_object_size(outs));
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)outs, name, v) {
        if (strncmp(name, "weight.", 7) != 0 || !kn_lora_model_slot(b->table, name + 7))
            return kn_fail(err, KN_ERR_NOT_FOUND, "%s: no model tensor for output '%s'", file, name);
        /* runtime adapters never form base + delta: materialise it for the comparison */
        kn_tensor w = {0};
        char full[600];
        snprintf(full, sizeof full, "out.%s", name);
        int rc = kn_lora_model_weight(b->table, name + 7, &w, err);
        if (!rc) rc = kn_fixture_emit(res, full, &w, err);
        kn_tensor_free(&w);
        if (rc) return rc;
    }
    return KN_OK;
}

static int forward(const kn_fixture_case *c, base *b, kn_tensor *out, kn_err *err) {
    kn_tensor x, sigma, context;
    if (kn_fixture_input(c, "x", &x, err) || kn_fixture_input(c, "timestep", &sigma, err) ||
        kn_fixture_input(c, "context", &context, err))
        return err->code;
    /* Flux conditions on the pooled vector and the guidance too */
    kn_dit_input in = {&x, &sigma, &context, NULL, kn_st_find(c->data, "in.y"), kn_st_find(c->data, "in.guidance"),
                       NULL, 0, b->dit->ref_method, NULL};
    int64_t ne[KN_MAX_DIMS];
    memcpy(ne, x.ne, sizeof ne);
    ne[1] = b->dit->channels;
    if (!out->data && kn_tensor_new(out, KN_F32, KN_DEV_CPU, x.ndim, ne, err)) return err->code;
    if (kn_dit_forward(c->ctx, b->dit, &in, out, NULL, NULL)) {
        *err = c->ctx->err;
        return err->code;
    }
    return KN_OK;
}

static int dit_output(const kn_fixture_case *c, kn_fixture_results *res, base *b, kn_err *err) {
    kn_lora_use st[MAX_STACK];
    int n = 0, rc = KN_OK;
    kn_tensor before = {0}, out = {0};
    const json_t *undo = json_object_get(c->info, "after_unpatch_of");
    if (undo) { /* the unpatched output, then the stack on and off again */
        if (!(rc = forward(c, b, &before, err)) && !(rc = stack_of(c, b, undo, st, &n, err)) &&
            !(rc = kn_lora_model_apply(b->table, st, n, NULL, err)))
            rc = forward(c, b, &out, err);
    }
    if (!rc) rc = stack_of(c, b, json_object_get(c->info, "loras"), st, &n, err);
    if (!rc) rc = kn_lora_model_apply(b->table, st, n, NULL, err);
    if (!rc) rc = forward(c, b, &out, err);
    if (!rc && undo && memcmp(before.data, out.data, kn_tensor_nbytes(&out)) != 0)
        rc = kn_fail(err, KN_ERR_INVALID, "output after removing the LoRA stack is not bit-identical to the base");
    if (!rc) rc = kn_fixture_emit(res, "out.model_output", &out, err);
    kn_tensor_free(&before);
    kn_tensor_free(&out);
    return rc;
}

int kn_lora_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    base b;
    if (base_open(c, &b, err)) return err->code;
    const char *kind = json_string_value(json_object_get(c->info, "kind"));
    int rc;
    if (kind && strcmp(kind, "patched_weights") == 0) rc = patched_weights(c, res, &b, err);
    else if (kind && strcmp(kind, "dit_output") == 0) rc = dit_output(c, res, &b, err);
    else rc = kn_fail(err, KN_ERR_UNSUPPORTED, "lora fixture: case kind '%s'", kind ? kind : "(none)");
    base_free(&b);
    return rc;
}
