/* Prompt execution with ComfyUI's classic output cache. */
#include "graph/executor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __GLIBC__ /* defined by the headers above */
#include <malloc.h>
#endif

#include "kernels/json.h"

typedef struct cache_entry {
    char *key;
    kn_value *out; /* n_out values, owned */
    int n_out;
    json_t *ui; /* UI output, or NULL */
} cache_entry;

struct kn_executor {
    kn_executor_config cfg;
    kn_ctx ctx;
    atomic_int cancel;
    kn_exec_event_fn on_event;
    void *event_user;
    cache_entry *cache;
    int n_cache, cap_cache;
    long runs;
    long unrepeatable; /* numbers the keys of nodes whose changed hook failed */
    int previews;      /* make PREVIEW events */
    /* the node running now, for sampler progress events */
    const char *prompt_id, *cur_id, *cur_type;
};

int kn_executor_new(kn_executor **out, const kn_executor_config *cfg, kn_err *err) {
    *out = NULL;
    kn_executor *ex = calloc(1, sizeof *ex);
    if (!ex) return kn_fail(err, KN_ERR_NOMEM, "executor: out of memory");
    ex->cfg = *cfg;
    if (kn_ctx_init(&ex->ctx, KN_DEV_CPU, cfg->precision) != KN_OK) {
        free(ex);
        return kn_fail(err, KN_ERR_NOMEM, "executor: cannot create the compute context");
    }
    atomic_init(&ex->cancel, 0);
    *out = ex;
    return KN_OK;
}

static void entry_free(cache_entry *e) {
    for (int i = 0; i < e->n_out; i++) kn_value_clear(&e->out[i]);
    free(e->out);
    free(e->key);
    json_decref(e->ui);
}

void kn_executor_free(kn_executor *ex) {
    if (!ex) return;
    for (int i = 0; i < ex->n_cache; i++) entry_free(&ex->cache[i]);
    free(ex->cache);
    kn_ctx_free(&ex->ctx);
    free(ex);
}

void kn_executor_set_events(kn_executor *ex, kn_exec_event_fn fn, void *user) {
    ex->on_event = fn;
    ex->event_user = user;
}

void kn_executor_interrupt(kn_executor *ex) { atomic_store(&ex->cancel, 1); }

void kn_executor_set_previews(kn_executor *ex, int on) { ex->previews = on; }

void kn_executor_free_memory(kn_executor *ex, int unload_models, int free_memory) {
    if (unload_models || free_memory) {
        for (int i = 0; i < ex->n_cache; i++) entry_free(&ex->cache[i]);
        ex->n_cache = 0;
    }
    if (unload_models) kn_models_unload(ex->cfg.models);
    if (unload_models || free_memory) kn_arena_release(ex->ctx.scratch);
#ifdef __GLIBC__
    malloc_trim(0); /* glibc keeps freed heap below its top (the cache's latents and images) otherwise */
#endif
}

long kn_executor_runs(const kn_executor *ex) { return ex->runs; }

kn_node_env kn_executor_env(const kn_executor *ex) {
    return (kn_node_env){.models = ex->cfg.models,
                         .output_dir = ex->cfg.output_dir,
                         .temp_dir = ex->cfg.temp_dir,
                         .input_dir = ex->cfg.input_dir};
}

void kn_exec_result_free(kn_exec_result *res) {
    json_decref(res->outputs);
    json_decref(res->executed);
    json_decref(res->cached);
    json_decref(res->error);
    memset(res, 0, sizeof *res);
}

static void emit(kn_executor *ex, kn_exec_event_kind kind, const char *id, const char *type, int step, int total,
                 const json_t *data) {
    if (!ex->on_event) return;
    kn_exec_event ev = {kind, ex->prompt_id, id, type, step, total, data, NULL, NULL};
    ex->on_event(ex->event_user, &ev);
}

static cache_entry *cache_find(kn_executor *ex, const char *key) {
    for (int i = 0; i < ex->n_cache; i++)
        if (strcmp(ex->cache[i].key, key) == 0) return &ex->cache[i];
    return NULL;
}

/* ---- cache keys ---------------------------------------------------------------- */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int cmp_inputs(const void *a, const void *b) {
    return strcmp((*(const kn_input_spec *const *)a)->name, (*(const kn_input_spec *const *)b)->name);
}

/* A linked input: ["id", slot] (the validator has checked the shape). */
static int is_link(const json_t *v) { return json_is_array(v) && json_array_size(v) == 2; }

/* What the class's changed hook says of the node (nodes/node.h): its
 * fingerprint, null for a class without a hook, or after a failure a value
 * no other key holds, the failure kept in hook_errors[id] for the node's
 * turn. New reference, NULL when out of memory. */
static json_t *fingerprint(kn_executor *ex, const char *id, const json_t *node, const kn_node_class *cls,
                           json_t *hook_errors) {
    const kn_node_hooks *hooks = kn_node_hooks_find(cls->name);
    if (!hooks || !hooks->changed) return json_null();
    kn_value *in = calloc((size_t)cls->n_inputs + 1, sizeof *in);
    char *fp = malloc(KN_CHANGED_MAX);
    if (!in || !fp) {
        free(in);
        free(fp);
        return NULL;
    }
    kn_err e;
    kn_err_clear(&e);
    int bad;
    kn_node_env env = kn_executor_env(ex);
    kn_node_call call = {id, cls, in, NULL, NULL, &env, &e, NULL};
    int rc = kn_node_constants(cls, json_object_get(node, "inputs"), in, &bad, &e);
    if (!rc) rc = hooks->changed(&call, fp);
    json_t *result = NULL;
    if (!rc)
        result = json_string(fp);
    else if (!json_object_set_new(hook_errors, id, json_pack("{s:i, s:s}", "code", rc, "message", e.msg)))
        result = json_pack("{s:I}", "unrepeatable", (json_int_t)++ex->unrepeatable);
    kn_values_clear(in, cls->n_inputs);
    free(in);
    free(fp);
    return result;
}

/* The node's key (see the header), built from its fingerprint and the keys
 * of its linked nodes, which the dependency order has computed before.
 * Upstream keys enter as a 64-bit hash so keys stay short on long chains.
 * malloc'd, NULL when out of memory. */
static char *node_key(const json_t *node, const kn_node_class *cls, const json_t *fp, const json_t *keys) {
    const json_t *inputs = json_object_get(node, "inputs");
    const kn_input_spec *sorted[64]; /* registry classes have a few inputs each */
    if (cls->n_inputs > 64) return NULL;
    int n = cls->n_inputs;
    for (int i = 0; i < n; i++) sorted[i] = &cls->inputs[i];
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_inputs);
    json_t *parts = json_array();
    if (!parts || json_array_append_new(parts, json_string(cls->name)) || json_array_append(parts, (json_t *)fp)) {
        json_decref(parts);
        return NULL;
    }
    int bad = 0;
    for (int i = 0; i < n && !bad; i++) {
        const json_t *v = json_object_get(inputs, sorted[i]->name);
        if (!v) continue;
        json_t *part;
        if (is_link(v)) {
            const char *up = json_string_value(json_object_get(keys, json_string_value(json_array_get(v, 0))));
            part = json_pack("[s, s, I, I]", sorted[i]->name, "ANCESTOR", (json_int_t)(up ? fnv1a(up) >> 1 : 0),
                             json_integer_value(json_array_get(v, 1)));
        } else {
            part = json_pack("[s, O]", sorted[i]->name, v);
        }
        bad = !part || json_array_append_new(parts, part);
    }
    char *key = bad ? NULL : kn_json_dumps(parts, 0);
    json_decref(parts);
    return key;
}

/* Drops the entries a prompt cannot use (ComfyUI's classic cache). */
static void cache_prune(kn_executor *ex, const json_t *keys) {
    int k = 0;
    for (int i = 0; i < ex->n_cache; i++) {
        int used = 0;
        const char *id;
        const json_t *key;
        json_object_foreach((json_t *)keys, id, key) used |= strcmp(json_string_value(key), ex->cache[i].key) == 0;
        if (used)
            ex->cache[k++] = ex->cache[i];
        else
            entry_free(&ex->cache[i]);
    }
    ex->n_cache = k;
}

static int cache_add(kn_executor *ex, const char *key, kn_value *out, int n_out, json_t *ui, kn_err *err) {
    if (ex->n_cache == ex->cap_cache) {
        int cap = ex->cap_cache ? ex->cap_cache * 2 : 16;
        cache_entry *c = realloc(ex->cache, (size_t)cap * sizeof *c);
        if (!c) return kn_fail(err, KN_ERR_NOMEM, "executor: out of memory");
        ex->cache = c;
        ex->cap_cache = cap;
    }
    char *k = strdup(key);
    if (!k) return kn_fail(err, KN_ERR_NOMEM, "executor: out of memory");
    ex->cache[ex->n_cache++] = (cache_entry){k, out, n_out, json_incref(ui)};
    return KN_OK;
}

/* ---- errors -------------------------------------------------------------------- */

/* Python exception names for Kiln's status codes, so clients that key off
 * exception_type see familiar ones. */
static const char *exception_type(int code) {
    switch (code) {
    case KN_ERR_NOMEM: return "MemoryError";
    case KN_ERR_IO:
    case KN_ERR_NOT_FOUND: return "FileNotFoundError";
    case KN_ERR_INVALID: return "ValueError";
    case KN_ERR_UNSUPPORTED: return "NotImplementedError";
    default: return "RuntimeError";
    }
}

/* ComfyUI's format_value for current_inputs. */
static json_t *format_value(const kn_value *v) {
    char buf[96];
    switch (v->kind) {
    case KN_VALUE_INT: return json_integer(v->i);
    case KN_VALUE_FLOAT: return json_real(v->f);
    case KN_VALUE_BOOL: return json_boolean(v->b);
    case KN_VALUE_STRING: return json_string(v->s);
    case KN_VALUE_OBJECT: snprintf(buf, sizeof buf, "<class 'kiln.%s'>", v->obj->type); return json_string(buf);
    case KN_VALUE_NONE: break;
    }
    return json_null();
}

static json_t *timestamp_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return json_integer((json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static json_t *error_message(kn_executor *ex, int interrupted, const char *id, const char *type,
                             const json_t *executed, const json_t *current_outputs, const kn_node_class *cls,
                             const kn_value *in, const kn_err *err) {
    json_t *data = json_pack("{s:s?, s:s, s:s, s:O}", "prompt_id", ex->prompt_id, "node_id", id, "node_type", type,
                             "executed", executed);
    if (!data) return NULL;
    if (!interrupted) {
        char msg[sizeof err->msg + 2];
        snprintf(msg, sizeof msg, "%s\n", err->msg); /* str(ex) + "\n" + tips */
        json_t *cur = json_object();
        for (int i = 0; in && cur && i < cls->n_inputs; i++)
            if (in[i].kind != KN_VALUE_NONE)
                json_object_set_new(cur, cls->inputs[i].name, json_pack("[o]", format_value(&in[i])));
        json_object_set_new(data, "exception_message", json_string(msg));
        json_object_set_new(data, "exception_type", json_string(exception_type(err->code)));
        json_object_set_new(data, "traceback", json_array());
        json_object_set_new(data, "current_inputs", cur ? cur : json_object());
        json_object_set_new(data, "current_outputs", json_deep_copy(current_outputs));
    }
    json_object_set_new(data, "timestamp", timestamp_ms());
    return json_pack("{s:s, s:o}", "type", interrupted ? "execution_interrupted" : "execution_error", "data", data);
}

/* ---- running --------------------------------------------------------------------- */

static void on_preview(const kn_node_env *env, const kn_tensor *denoised, const struct kn_latent_format *format) {
    kn_executor *ex = env->step_user;
    if (!ex->on_event) return;
    kn_exec_event ev = {KN_EVENT_PREVIEW, ex->prompt_id, ex->cur_id, ex->cur_type, 0, 0, NULL, denoised, format};
    ex->on_event(ex->event_user, &ev);
}

static int on_step(const kn_node_env *env, int step, int total, kn_err *err) {
    kn_executor *ex = env->step_user;
    emit(ex, KN_EVENT_PROGRESS, ex->cur_id, ex->cur_type, step, total, NULL);
    if (atomic_load(&ex->cancel)) return kn_fail(err, KN_ERR_INVALID, "Processing interrupted");
    return KN_OK;
}

/* The node's inputs in class order: constants converted, links copied from
 * the cached outputs of their nodes. */
static int resolve_inputs(kn_executor *ex, const json_t *node, const kn_node_class *cls, const json_t *keys,
                          kn_value *in, kn_err *err) {
    const json_t *inputs = json_object_get(node, "inputs");
    int bad;
    KN_TRY(kn_node_constants(cls, inputs, in, &bad, err));
    for (int i = 0; i < cls->n_inputs; i++) {
        const kn_input_spec *spec = &cls->inputs[i];
        const json_t *v = json_object_get(inputs, spec->name);
        if (!v) {
            if (spec->section == KN_SECTION_REQUIRED)
                return kn_fail(err, KN_ERR_INVALID, "input '%s': required input is missing", spec->name);
            continue;
        }
        if (!is_link(v)) continue;
        const char *up = json_string_value(json_array_get(v, 0));
        const cache_entry *e = cache_find(ex, json_string_value(json_object_get(keys, up ? up : "")));
        json_int_t slot = json_integer_value(json_array_get(v, 1));
        if (!e || slot < 0 || slot >= e->n_out)
            return kn_fail(err, KN_ERR_INVALID, "input '%s': node %s output %lld is not available", spec->name,
                           up ? up : "?", (long long)slot);
        if (kn_value_copy(&in[i], &e->out[slot], err)) return kn_err_wrap(err, "input '%s'", spec->name);
    }
    return KN_OK;
}

/* Runs one node and caches its outputs; hook_error: its changed hook's
 * failure, which it fails with instead of executing. On failure *error is set. */
static int run_node(kn_executor *ex, const json_t *prompt, const char *id, const char *key,
                    const json_t *keys, const json_t *extra_pnginfo, const json_t *hook_error, kn_exec_result *res,
                    const json_t *current_outputs, kn_err *err) {
    const json_t *node = json_object_get(prompt, id);
    const char *type = json_string_value(json_object_get(node, "class_type"));
    const kn_node_class *cls = kn_registry_find(type);
    kn_node_exec_fn exec = kn_node_exec_find(type);
    kn_value *in = calloc((size_t)(cls ? cls->n_inputs : 0) + 1, sizeof *in);
    kn_value *out = calloc((size_t)(cls ? cls->n_outputs : 0) + 1, sizeof *out);
    json_t *ui = json_object();
    int rc = KN_OK;
    if (!in || !out || !ui) rc = kn_fail(err, KN_ERR_NOMEM, "out of memory");
    else if (!cls || !exec) rc = kn_fail(err, KN_ERR_UNSUPPORTED, "node class '%s' has no Kiln implementation", type);
    else if (atomic_load(&ex->cancel)) rc = kn_fail(err, KN_ERR_INVALID, "Processing interrupted");
    else rc = resolve_inputs(ex, node, cls, keys, in, err);

    if (!rc) {
        ex->cur_id = id;
        ex->cur_type = type;
        emit(ex, KN_EVENT_EXECUTING, id, type, 0, 0, NULL);
        kn_node_env env = kn_executor_env(ex);
        env.prompt = prompt;
        env.extra_pnginfo = extra_pnginfo;
        env.ctx = &ex->ctx;
        ex->ctx.cancel = &ex->cancel; /* ops stop within one op of an interrupt (kernels/ops.h) */
        env.ranks = ex->cfg.ranks;
        env.cancel = &ex->cancel;
        env.step = on_step;
        env.step_user = ex;
        env.preview = ex->previews ? on_preview : NULL;
        kn_node_call call = {id, cls, in, out, ui, &env, err, NULL};
        kn_err_clear(err);
        rc = hook_error ? kn_fail(err, (int)json_integer_value(json_object_get(hook_error, "code")), "%s",
                                  json_string_value(json_object_get(hook_error, "message")))
                        : exec(&call);
        ex->runs++;
        kn_arena_trim(ex->ctx.scratch);
        if (!rc) json_array_append_new(res->executed, json_string(id));
    }
    if (!rc) {
        json_t *shown = json_object_size(ui) ? ui : NULL;
        rc = cache_add(ex, key, out, cls->n_outputs, shown, err);
        if (!rc) {
            out = NULL; /* the cache owns them now */
            if (shown) {
                json_object_set(res->outputs, id, shown);
                emit(ex, KN_EVENT_EXECUTED, id, type, 0, 0, shown);
            }
        }
    }
    if (rc) {
        int interrupted = atomic_load(&ex->cancel) != 0;
        res->error = error_message(ex, interrupted, id, type ? type : "", res->executed, current_outputs, cls, in, err);
        kn_err_wrap(err, "node %s (%s)", id, type ? type : "?");
    }
    for (int i = 0; cls && in && i < cls->n_inputs; i++) kn_value_clear(&in[i]);
    for (int i = 0; cls && out && i < cls->n_outputs; i++) kn_value_clear(&out[i]);
    free(in);
    free(out);
    json_decref(ui);
    return rc;
}

int kn_executor_run(kn_executor *ex, const json_t *prompt, const kn_validation *v, const json_t *extra_pnginfo,
                    const char *prompt_id, kn_exec_result *res, kn_err *err) {
    memset(res, 0, sizeof *res);
    res->outputs = json_object();
    res->executed = json_array();
    res->cached = json_array();
    json_t *keys = json_object(), *hook_errors = json_object();
    int rc = KN_OK;
    if (!res->outputs || !res->executed || !res->cached || !keys || !hook_errors)
        rc = kn_fail(err, KN_ERR_NOMEM, "executor: out of memory");
    if (!rc && (v->error || !json_is_array(v->order)))
        rc = kn_fail(err, KN_ERR_INVALID, "executor: the prompt was not accepted by validation");
    atomic_store(&ex->cancel, 0);
    ex->prompt_id = prompt_id;

    size_t i;
    json_t *jid;
    json_array_foreach(rc ? NULL : v->order, i, jid) {
        const char *id = json_string_value(jid);
        const json_t *node = json_object_get(prompt, id);
        const kn_node_class *cls = kn_registry_find(json_string_value(json_object_get(node, "class_type")));
        json_t *fp = cls ? fingerprint(ex, id, node, cls, hook_errors) : NULL;
        char *key = fp ? node_key(node, cls, fp, keys) : NULL;
        if (!key || json_object_set_new(keys, id, json_string(key))) rc = kn_fail(err, KN_ERR_NOMEM, "executor: out of memory");
        free(key);
        json_decref(fp);
        if (rc) break;
    }
    if (!rc) {
        cache_prune(ex, keys);
        json_array_foreach(v->order, i, jid) {
            if (cache_find(ex, json_string_value(json_object_get(keys, json_string_value(jid)))))
                json_array_append(res->cached, jid);
        }
        emit(ex, KN_EVENT_START, NULL, NULL, 0, 0, res->cached);
    }
    json_t *current_outputs = rc ? NULL : json_deep_copy(res->cached);
    json_array_foreach(rc ? NULL : v->order, i, jid) {
        const char *id = json_string_value(jid);
        const char *key = json_string_value(json_object_get(keys, id));
        const cache_entry *hit = cache_find(ex, key);
        if (hit) { /* cached at start, or an identical node earlier in this prompt */
            if (hit->ui) {
                json_object_set(res->outputs, id, hit->ui);
                emit(ex, KN_EVENT_EXECUTED, id, json_string_value(json_object_get(json_object_get(prompt, id), "class_type")),
                     0, 0, hit->ui);
            }
            continue;
        }
        if ((rc = run_node(ex, prompt, id, key, keys, extra_pnginfo, json_object_get(hook_errors, id), res,
                           current_outputs, err)))
            break;
    }
    json_decref(current_outputs);
    json_decref(keys);
    json_decref(hook_errors);
    ex->cur_id = ex->cur_type = ex->prompt_id = NULL;
    return rc;
}

void kn_uuid4(char *buf, int dashes) {
    unsigned char r[16];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(r, 1, sizeof r, f) : 0;
    if (f) fclose(f);
    if (got != sizeof r) { /* ids only need to differ, not to be secret */
        static unsigned long counter;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long mix = (unsigned long)ts.tv_nsec ^ ((unsigned long)ts.tv_sec << 20) ^ __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
        for (size_t i = 0; i < sizeof r; i++) r[i] = (unsigned char)(mix >> (i % 8 * 8)) ^ (unsigned char)(i * 37);
    }
    r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);
    char *p = buf;
    for (int i = 0; i < 16; i++) {
        if (dashes && (i == 4 || i == 6 || i == 8 || i == 10)) *p++ = '-';
        p += sprintf(p, "%02x", r[i]);
    }
}
