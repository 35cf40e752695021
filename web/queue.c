/* Prompt queue, worker and history: see web/queue.h. */
#include "web/queue.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "web/http.h"
#include "web/preview.h"

typedef struct q_item {
    double number;
    bool number_real; /* the client sent "number": echoed as a float, as ComfyUI's float(number) */
    unsigned long seq;
    char *prompt_id;
    json_t *prompt, *extra_data;
    kn_validation v;
} q_item;

struct kn_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    q_item **pending;
    size_t n_pending, cap_pending;
    q_item *running;
    json_t *history; /* prompt id -> entry, completion order (jansson keeps insertion order) */
    long counter;
    unsigned long seq;
    bool stop, joined;
    pthread_t worker;
    kn_executor *ex;
    kn_ws_hub *hub;
    kn_preview_method preview;   /* --preview-method; a prompt's extra_data may override it */
    bool unload_models, free_memory; /* /free, done by the worker between prompts */
};

/* What the worker's event callback needs during one run. */
typedef struct run_ctx {
    kn_queue *q;
    const q_item *it;
    const char *sid;  /* the prompt's client_id, NULL when it has none */
    json_t *messages; /* history status.messages */
    json_t *states;   /* progress_state "nodes": every node that left "pending" */
    char running[256];   /* the node in state "running", "" when none */
    struct timespec step_t0; /* when the running node's sampling started, for progress text */
} run_ctx;

static json_int_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void item_free(q_item *it) {
    if (!it) return;
    free(it->prompt_id);
    json_decref(it->prompt);
    json_decref(it->extra_data);
    kn_validation_free(&it->v);
    free(it);
}

/* [number, prompt_id, prompt, extra_data, outputs_to_execute] */
static json_t *item_tuple(const q_item *it) {
    json_t *num = it->number_real ? json_real(it->number) : json_integer((json_int_t)it->number);
    return json_pack("[o, s, O, O, O]", num, it->prompt_id, it->prompt, it->extra_data, it->v.outputs);
}

static json_t *status_data(int remaining) {
    return json_pack("{s:{s:{s:i}}}", "status", "exec_info", "queue_remaining", remaining);
}

/* Caller holds q->mu. */
static int remaining_locked(const kn_queue *q) { return (int)q->n_pending + (q->running ? 1 : 0); }

int kn_queue_remaining(kn_queue *q) {
    pthread_mutex_lock(&q->mu);
    int n = remaining_locked(q);
    pthread_mutex_unlock(&q->mu);
    return n;
}

static void broadcast_status(kn_queue *q) { kn_ws_send(q->hub, NULL, "status", status_data(kn_queue_remaining(q))); }

/* ---- the worker ------------------------------------------------------------------ */

/* Sends one run message, to the prompt's client, or when it has none to
 * everybody for the kinds ComfyUI broadcasts (§4.1), else nowhere. */
static void run_send(const run_ctx *r, const char *type, json_t *data, bool broadcast_without_client) {
    if (r->sid || broadcast_without_client) kn_ws_send(r->q->hub, r->sid, type, data);
    else json_decref(data);
}

/* Records [type, data] in the history messages and sends it; data is stolen. */
static void run_record(run_ctx *r, const char *type, json_t *data, bool broadcast_without_client) {
    if (!data) return;
    json_array_append_new(r->messages, json_pack("[s, O]", type, data));
    run_send(r, type, data, broadcast_without_client);
}

/* Binary frames go where progress goes: the client, else everybody. */
static void run_send_binary(const run_ctx *r, unsigned char *frame, size_t len) {
    if (frame) kn_ws_send_binary(r->q->hub, r->sid, frame, len);
    free(frame);
}

/* Sets node id's progress_state entry and sends the whole state (§4.2). */
static void send_state(run_ctx *r, const char *id, const char *state, double value, double max) {
    const char *pid = r->it->prompt_id;
    if (id) {
        json_t *e = json_pack("{s:f, s:f, s:s, s:s, s:s, s:s, s:n, s:s}", "value", value, "max", max, "state", state,
                              "node_id", id, "prompt_id", pid, "display_node_id", id, "parent_node_id",
                              "real_node_id", id);
        if (e) json_object_set_new(r->states, id, e);
    }
    run_send(r, "progress_state", json_pack("{s:s, s:O}", "prompt_id", pid, "nodes", r->states), true);
}

/* The running node is done: "finished", or "error" when the run failed there. */
static void finish_running(run_ctx *r, const char *state) {
    if (!r->running[0]) return;
    json_t *e = json_object_get(r->states, r->running);
    json_object_set_new(e, "state", json_string(state));
    if (!strcmp(state, "finished")) json_object_set(e, "value", json_object_get(e, "max"));
    r->running[0] = '\0';
}

static double seconds_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void on_event(void *user, const kn_exec_event *ev) {
    run_ctx *r = user;
    const char *pid = r->it->prompt_id;
    switch (ev->kind) {
    case KN_EVENT_START:
        run_record(r, "execution_start", json_pack("{s:s, s:I}", "prompt_id", pid, "timestamp", now_ms()), false);
        run_record(r, "execution_cached",
                   json_pack("{s:O, s:s, s:I}", "nodes", ev->data, "prompt_id", pid, "timestamp", now_ms()), false);
        break;
    case KN_EVENT_EXECUTING:
        finish_running(r, "finished");
        send_state(r, ev->node_id, "running", 0.0, 1.0);
        snprintf(r->running, sizeof r->running, "%s", ev->node_id);
        clock_gettime(CLOCK_MONOTONIC, &r->step_t0);
        run_send(r, "executing", json_pack("{s:s, s:s, s:s}", "node", ev->node_id, "display_node", ev->node_id,
                                           "prompt_id", pid), false);
        break;
    case KN_EVENT_PROGRESS: {
        run_send(r, "progress", json_pack("{s:i, s:i, s:s, s:s}", "value", ev->step, "max", ev->total, "prompt_id",
                                          pid, "node", ev->node_id), true);
        send_state(r, ev->node_id, "running", ev->step, ev->total);
        /* the progress text ComfyUI nodes show under themselves: steps and speed */
        char text[128];
        double s = seconds_since(&r->step_t0) / (ev->step > 0 ? ev->step : 1);
        snprintf(text, sizeof text, "step %d/%d, %.2f s/it", ev->step, ev->total, s);
        unsigned char *frame = NULL;
        size_t len = 0;
        kn_err err;
        if (!kn_progress_text_frame(ev->node_id, text, &frame, &len, &err)) run_send_binary(r, frame, len);
        break;
    }
    case KN_EVENT_PREVIEW: {
        unsigned char *frame = NULL;
        size_t len = 0;
        kn_err err;
        if (!kn_preview_frame(ev->latent, ev->format, KN_PREVIEW_MAX_SIZE, &frame, &len, &err)) run_send_binary(r, frame, len);
        break;
    }
    case KN_EVENT_EXECUTED:
        run_send(r, "executed", json_pack("{s:s, s:s, s:O, s:s}", "node", ev->node_id, "display_node", ev->node_id,
                                          "output", ev->data, "prompt_id", pid), false);
        break;
    }
}

static json_t *history_meta(const json_t *outputs) {
    json_t *meta = json_object();
    const char *id;
    json_t *unused;
    json_object_foreach((json_t *)outputs, id, unused) {
        json_object_set_new(meta, id, json_pack("{s:s, s:s, s:n, s:s}", "node_id", id, "display_node", id,
                                                "parent_node", "real_node_id", id));
    }
    return meta;
}

/* Runs one item and returns its history entry (NULL when out of memory). */
static json_t *run_item(kn_queue *q, const q_item *it) {
    run_ctx r = {q, it, json_string_value(json_object_get(it->extra_data, "client_id")), json_array(), json_object(),
                 "", {0, 0}};
    kn_exec_result res = {0};
    kn_err err;
    kn_err_clear(&err);
    kn_preview_method method = q->preview;
    const char *asked = json_string_value(json_object_get(it->extra_data, "preview_method"));
    if (asked && kn_preview_method_parse(asked, &method)) method = q->preview; /* unknown: the server's */
    kn_executor_set_previews(q->ex, method != KN_PREVIEW_NONE);
    kn_executor_set_events(q->ex, on_event, &r);
    const json_t *pnginfo = json_object_get(it->extra_data, "extra_pnginfo");
    int rc = kn_executor_run(q->ex, it->prompt, &it->v, json_is_object(pnginfo) ? pnginfo : NULL, it->prompt_id, &res,
                             &err);
    kn_executor_set_events(q->ex, NULL, NULL);
    finish_running(&r, rc == KN_OK ? "finished" : "error");
    if (json_object_size(r.states)) send_state(&r, NULL, NULL, 0, 0);
    json_decref(r.states);
    if (rc == KN_OK) {
        run_record(&r, "execution_success", json_pack("{s:s, s:I}", "prompt_id", it->prompt_id, "timestamp", now_ms()),
                   false);
    } else {
        const char *type = json_string_value(json_object_get(res.error, "type"));
        json_t *data = json_incref(json_object_get(res.error, "data"));
        if (!type || !data) { /* the executor failed before reaching a node */
            json_decref(data);
            type = "execution_error";
            char msg[sizeof err.msg + 2];
            snprintf(msg, sizeof msg, "%s\n", err.msg);
            data = json_pack("{s:s, s:s, s:s, s:[], s:s, s:s, s:[], s:{}, s:[], s:I}", "prompt_id", it->prompt_id,
                             "node_id", "", "node_type", "", "executed", "exception_message", msg, "exception_type",
                             kn_status_name(err.code), "traceback", "current_inputs", "current_outputs", "timestamp",
                             now_ms());
        }
        kn_http_scrub_json(data); /* node errors name model files by their full paths */
        run_record(&r, type, data, strcmp(type, "execution_interrupted") == 0); /* takes data */
    }
    json_t *outputs = res.outputs ? json_incref(res.outputs) : json_object();
    json_t *entry = json_pack("{s:o, s:o, s:{s:s, s:b, s:o}, s:o}", "prompt", item_tuple(it), "outputs", outputs,
                              "status", "status_str", rc == KN_OK ? "success" : "error", "completed", rc == KN_OK,
                              "messages", r.messages, "meta", history_meta(outputs));
    kn_exec_result_free(&res);
    return entry;
}

/* Caller holds q->mu; n_pending > 0. */
static q_item *pop_locked(kn_queue *q) {
    size_t best = 0;
    for (size_t i = 1; i < q->n_pending; i++) {
        const q_item *a = q->pending[i], *b = q->pending[best];
        if (a->number < b->number || (a->number == b->number && a->seq < b->seq)) best = i;
    }
    q_item *it = q->pending[best];
    memmove(&q->pending[best], &q->pending[best + 1], (q->n_pending - best - 1) * sizeof *q->pending);
    q->n_pending--;
    return it;
}

static void *worker_main(void *arg) {
    kn_queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->stop && q->n_pending == 0 && !q->unload_models && !q->free_memory) pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop) break;
        if (q->unload_models || q->free_memory) { /* the executor is this thread's: no prompt runs now */
            bool unload = q->unload_models, mem = q->free_memory;
            q->unload_models = q->free_memory = false;
            pthread_mutex_unlock(&q->mu);
            kn_executor_free_memory(q->ex, unload, mem);
            pthread_mutex_lock(&q->mu);
            continue;
        }
        q_item *it = q->running = pop_locked(q);
        pthread_mutex_unlock(&q->mu);
        broadcast_status(q);

        json_t *entry = run_item(q, it);

        pthread_mutex_lock(&q->mu);
        if (entry) {
            json_object_del(q->history, it->prompt_id); /* a re-used id moves to the end */
            json_object_set_new(q->history, it->prompt_id, entry);
            while (json_object_size(q->history) > KN_QUEUE_MAX_HISTORY)
                json_object_del(q->history, json_object_iter_key(json_object_iter(q->history)));
        }
        q->running = NULL;
        pthread_mutex_unlock(&q->mu);
        /* After the history entry exists: clients fetch /history/{id} on this marker. */
        const char *sid = json_string_value(json_object_get(it->extra_data, "client_id"));
        if (sid) kn_ws_send(q->hub, sid, "executing", json_pack("{s:n, s:s}", "node", "prompt_id", it->prompt_id));
        broadcast_status(q);
        item_free(it);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* ---- API --------------------------------------------------------------------------- */

int kn_queue_new(kn_queue **out, kn_executor *ex, kn_ws_hub *hub, kn_err *err) {
    *out = NULL;
    kn_queue *q = calloc(1, sizeof *q);
    if (!q || !(q->history = json_object())) {
        free(q);
        return kn_fail(err, KN_ERR_NOMEM, "queue: out of memory");
    }
    q->ex = ex;
    q->hub = hub;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (pthread_create(&q->worker, NULL, worker_main, q) != 0) {
        json_decref(q->history);
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        free(q);
        return kn_fail(err, KN_ERR_BACKEND, "queue: cannot start the worker thread");
    }
    *out = q;
    return KN_OK;
}

void kn_queue_stop(kn_queue *q) {
    pthread_mutex_lock(&q->mu);
    bool joined = q->joined;
    q->stop = q->joined = true;
    if (q->running) kn_executor_interrupt(q->ex);
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (!joined) pthread_join(q->worker, NULL);
}

void kn_queue_free(kn_queue *q) {
    if (!q) return;
    kn_queue_stop(q);
    for (size_t i = 0; i < q->n_pending; i++) item_free(q->pending[i]);
    free(q->pending);
    json_decref(q->history);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int kn_queue_push(kn_queue *q, const char *prompt_id, json_t *prompt, kn_validation *v, json_t *extra_data,
                  const json_t *number, bool front, json_t **reply, kn_err *err) {
    *reply = NULL;
    q_item *it = calloc(1, sizeof *it);
    if (!it || !(it->prompt_id = strdup(prompt_id))) {
        free(it);
        return kn_fail(err, KN_ERR_NOMEM, "queue: out of memory");
    }
    pthread_mutex_lock(&q->mu);
    int rc = KN_OK;
    if (q->n_pending >= KN_QUEUE_MAX_PENDING) {
        rc = kn_fail(err, KN_ERR_INVALID, "the queue is full (%d prompts pending)", KN_QUEUE_MAX_PENDING);
    } else if (q->n_pending == q->cap_pending) {
        size_t cap = q->cap_pending ? q->cap_pending * 2 : 16;
        q_item **p = realloc(q->pending, cap * sizeof *p);
        if (!p) rc = kn_fail(err, KN_ERR_NOMEM, "queue: out of memory");
        else q->pending = p, q->cap_pending = cap;
    }
    if (!rc) {
        if (number) {
            it->number = json_number_value(number);
            it->number_real = true;
        } else {
            it->number = (double)(front ? -q->counter : q->counter);
            q->counter++;
        }
        it->seq = q->seq++;
        json_t *num = it->number_real ? json_real(it->number) : json_integer((json_int_t)it->number);
        *reply = json_pack("{s:s, s:o, s:O}", "prompt_id", prompt_id, "number", num, "node_errors", v->node_errors);
        if (!*reply) rc = kn_fail(err, KN_ERR_NOMEM, "queue: out of memory");
    }
    if (!rc) {
        it->prompt = prompt;
        it->extra_data = extra_data;
        it->v = *v;
        memset(v, 0, sizeof *v);
        q->pending[q->n_pending++] = it;
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc) {
        free(it->prompt_id);
        free(it);
        return rc;
    }
    broadcast_status(q);
    return KN_OK;
}

json_t *kn_queue_state(kn_queue *q) {
    json_t *running = json_array(), *pending = json_array();
    pthread_mutex_lock(&q->mu);
    if (q->running) json_array_append_new(running, item_tuple(q->running));
    for (size_t i = 0; i < q->n_pending; i++) json_array_append_new(pending, item_tuple(q->pending[i]));
    pthread_mutex_unlock(&q->mu);
    return json_pack("{s:o, s:o}", "queue_running", running, "queue_pending", pending);
}

static bool id_listed(const json_t *ids, const char *id) {
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0) return true;
    }
    return false;
}

void kn_queue_drop(kn_queue *q, bool clear, const json_t *ids) {
    pthread_mutex_lock(&q->mu);
    size_t w = 0, before = q->n_pending;
    for (size_t i = 0; i < q->n_pending; i++) {
        q_item *it = q->pending[i];
        if (clear || id_listed(ids, it->prompt_id)) item_free(it);
        else q->pending[w++] = it;
    }
    q->n_pending = w;
    pthread_mutex_unlock(&q->mu);
    if (w != before) broadcast_status(q);
}

void kn_queue_set_preview(kn_queue *q, kn_preview_method method) {
    pthread_mutex_lock(&q->mu);
    q->preview = method;
    pthread_mutex_unlock(&q->mu);
}

void kn_queue_free_memory(kn_queue *q, bool unload_models, bool free_memory) {
    pthread_mutex_lock(&q->mu);
    q->unload_models |= unload_models;
    q->free_memory |= free_memory;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void kn_queue_interrupt(kn_queue *q, const char *prompt_id) {
    pthread_mutex_lock(&q->mu);
    if (!prompt_id || (q->running && strcmp(q->running->prompt_id, prompt_id) == 0)) kn_executor_interrupt(q->ex);
    pthread_mutex_unlock(&q->mu);
}

json_t *kn_queue_history(kn_queue *q, const char *prompt_id, long max_items, long offset) {
    json_t *out = json_object();
    pthread_mutex_lock(&q->mu);
    if (prompt_id) {
        json_t *e = json_object_get(q->history, prompt_id);
        if (e) json_object_set(out, prompt_id, e);
    } else {
        long n = (long)json_object_size(q->history);
        if (offset < 0) offset = max_items >= 0 ? n - max_items : 0; /* max_items alone: the last N */
        if (offset < 0) offset = 0;
        long i = 0;
        const char *id;
        json_t *e;
        json_object_foreach(q->history, id, e) {
            if (max_items >= 0 && (long)json_object_size(out) >= max_items) break;
            if (i++ >= offset) json_object_set(out, id, e);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return out;
}

void kn_queue_history_drop(kn_queue *q, bool clear, const json_t *ids) {
    pthread_mutex_lock(&q->mu);
    if (clear) {
        json_object_clear(q->history);
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v) {
            if (json_is_string(v)) json_object_del(q->history, json_string_value(v));
        }
    }
    pthread_mutex_unlock(&q->mu);
}
