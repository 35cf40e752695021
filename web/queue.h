/* kn_queue: the server's prompt queue, its worker thread and the history,
 * as ComfyUI's PromptQueue + prompt_worker (notes/comfyui-api.md §2-4).
 *
 * Contract:
 *  - One mutex and one condition variable, owned here, guard everything
 *    shared between the HTTP threads and the worker: pending items, the
 *    running item, the history and the priority counter. The executor is
 *    used only by the worker (kn_executor_interrupt is its thread-safe
 *    entry). WebSocket sends happen with the mutex released.
 *  - Items run lowest `number` first (ties in arrival order); numbers come
 *    from the client ("number") or a counter, negated for "front". At most
 *    KN_QUEUE_MAX_PENDING items wait; more are refused (KN_ERR_INVALID).
 *  - The worker runs one prompt at a time with the shared executor (models
 *    and node outputs stay cached between prompts), sends the run's
 *    WebSocket messages with ComfyUI's delivery rule (§4.1: the prompt's
 *    client_id, else only progress and execution_interrupted, broadcast),
 *    writes the history entry, then sends executing {node: null} and a
 *    status broadcast. A failing prompt is recorded and the queue goes on.
 *  - History keeps the last KN_QUEUE_MAX_HISTORY entries in completion order.
 *  - JSON returned by the getters are new references the caller owns. */
#ifndef KN_WEB_QUEUE_H
#define KN_WEB_QUEUE_H

#include <stdbool.h>

#include <jansson.h>

#include "graph/executor.h"
#include "graph/validate.h"
#include "web/preview.h"
#include "web/ws.h"

#define KN_QUEUE_MAX_PENDING 10000
#define KN_QUEUE_MAX_HISTORY 10000

typedef struct kn_queue kn_queue;

/* ex and hub are borrowed and must outlive the queue. Starts the worker. */
int kn_queue_new(kn_queue **out, kn_executor *ex, kn_ws_hub *hub, kn_err *err);
/* Interrupts the running prompt and joins the worker; pending items stay
 * and the other calls keep working (nothing runs any more). Idempotent. */
void kn_queue_stop(kn_queue *q);
/* kn_queue_stop, then frees everything. */
void kn_queue_free(kn_queue *q);

/* Queues a validated prompt. prompt and extra_data are stolen, *v is moved
 * (zeroed) on success and left to the caller on failure. number: the
 * client's JSON number, or NULL for the counter (front: negated). *reply is
 * the 200 body {prompt_id, number, node_errors}. */
int kn_queue_push(kn_queue *q, const char *prompt_id, json_t *prompt, kn_validation *v, json_t *extra_data,
                  const json_t *number, bool front, json_t **reply, kn_err *err);

int kn_queue_remaining(kn_queue *q);
json_t *kn_queue_state(kn_queue *q); /* GET /queue */
/* POST /queue: ids NULL or an array of prompt ids to drop from pending. */
void kn_queue_drop(kn_queue *q, bool clear, const json_t *ids);

/* The server's latent preview method (--preview-method; default none). */
void kn_queue_set_preview(kn_queue *q, kn_preview_method method);
/* ComfyUI's POST /free: done by the worker after the running prompt, or at
 * once when idle (kn_executor_free_memory). */
void kn_queue_free_memory(kn_queue *q, bool unload_models, bool free_memory);

/* prompt_id: NULL = whatever runs, else only that prompt when it runs. */
void kn_queue_interrupt(kn_queue *q, const char *prompt_id);

/* GET /history (max_items < 0: all; offset skips the oldest) and /history/{id}. */
json_t *kn_queue_history(kn_queue *q, const char *prompt_id, long max_items, long offset);
void kn_queue_history_drop(kn_queue *q, bool clear, const json_t *ids);

#endif
