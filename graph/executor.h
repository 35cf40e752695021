/* kn_executor: runs validated API prompts as ComfyUI's executor does
 * (notes/comfyui-workflows.md §4, §6, §7, §9).
 *
 * Contract:
 *  - kn_executor_run executes the nodes of a validation's `order` (the valid
 *    outputs and their linked ancestors, dependency order) one at a time.
 *  - Caching (ComfyUI's classic cache): a node's key is its class, the
 *    fingerprint its class's changed hook gives (ComfyUI's IS_CHANGED,
 *    nodes/node.h: LoadImage hashes its file, loaders stamp theirs), and,
 *    per declared input in name order, the constant value or the key of the
 *    linked node and output slot; node ids and titles are not part of it.
 *    The hooks run once per prompt, before any node executes. A node whose
 *    key is cached is not executed (a cached output node re-sends its UI);
 *    at each prompt start entries the new prompt cannot use are dropped. So
 *    re-running with only a new seed executes only the sampler and what
 *    follows, and an image overwritten under the same name, or a model file
 *    replaced, re-runs its loader and everything downstream. A failing hook
 *    fails its node when its turn comes (nodes/node.h). Loaded model files
 *    live longer, in the kn_models store.
 *  - Events (optional callback): START (data: array of cached node ids),
 *    EXECUTING (a node starts), PROGRESS (sampler step i of n), EXECUTED
 *    (data: the node's UI output object).
 *  - Interrupt: kn_executor_interrupt sets a flag (safe from another thread)
 *    checked before each node, between sampler steps and before every
 *    linear, attention and convolution (kernels/ops.h: a text encode, a DiT
 *    step or a VAE decode stops within one op); it is cleared when the next
 *    run starts.
 *  - Failure never crashes: the run stops, and res->error is ComfyUI's
 *    message {"type": "execution_error", "data": {prompt_id, node_id,
 *    node_type, executed, exception_message, exception_type, traceback,
 *    current_inputs, current_outputs, timestamp}} or {"type":
 *    "execution_interrupted", "data": {prompt_id, node_id, node_type,
 *    executed, timestamp}}; the return is the node's status (err set too).
 *    Nodes that completed before the failure stay cached.
 *  - res->outputs maps output node ids to their UI output; res->executed
 *    and res->cached list node ids. kn_exec_result_free releases them. */
#ifndef KN_GRAPH_EXECUTOR_H
#define KN_GRAPH_EXECUTOR_H

#include <jansson.h>

#include "graph/validate.h"
#include "nodes/node.h"
#include "nodes/model_store.h"

typedef struct kn_executor kn_executor;

typedef struct kn_executor_config {
    kn_models *models;      /* borrowed; must outlive the executor */
    const char *output_dir; /* SaveImage */
    const char *temp_dir;   /* PreviewImage */
    const char *input_dir;  /* LoadImage */
    kn_precision precision;
    kn_ranks *ranks;        /* borrowed: the launch's other ranks DiT forwards run across (nodes/ranks.h), or NULL */
} kn_executor_config;

typedef enum kn_exec_event_kind {
    KN_EVENT_START = 0,
    KN_EVENT_EXECUTING,
    KN_EVENT_PROGRESS,
    KN_EVENT_EXECUTED,
    KN_EVENT_PREVIEW, /* latent/format: the sampler's current prediction, after its PROGRESS */
} kn_exec_event_kind;

typedef struct kn_exec_event {
    kn_exec_event_kind kind;
    const char *prompt_id;
    const char *node_id, *node_type; /* NULL for START */
    int step, total;                 /* PROGRESS */
    const json_t *data;              /* START, EXECUTED */
    const kn_tensor *latent;         /* PREVIEW: borrowed for the call */
    const struct kn_latent_format *format;
} kn_exec_event;

typedef void (*kn_exec_event_fn)(void *user, const kn_exec_event *ev);

typedef struct kn_exec_result {
    json_t *outputs;  /* object: node id -> UI output */
    json_t *executed; /* array of node ids that ran */
    json_t *cached;   /* array of node ids served from the cache */
    json_t *error;    /* NULL, or the execution_error / execution_interrupted message */
} kn_exec_result;

int kn_executor_new(kn_executor **out, const kn_executor_config *cfg, kn_err *err);
void kn_executor_free(kn_executor *ex);
void kn_executor_set_events(kn_executor *ex, kn_exec_event_fn fn, void *user);
void kn_executor_interrupt(kn_executor *ex);
/* PREVIEW events are made only when wanted (they cost a copy per step). */
void kn_executor_set_previews(kn_executor *ex, int on);
/* ComfyUI's /free, between runs on the executor's thread: free_memory drops
 * every cached node output; unload_models also releases the loaded-model
 * store (a model a cached output still holds stays until that output goes,
 * so unloading drops the cache too). Either frees the ops' scratch and
 * gives freed heap back to the system (malloc_trim on glibc), so the
 * process's memory goes down. */
void kn_executor_free_memory(kn_executor *ex, int unload_models, int free_memory);
/* Nodes executed (not served from the cache) over the executor's life. */
long kn_executor_runs(const kn_executor *ex);
/* The env the class hooks see (nodes/node.h): the executor's models and
 * folders, nothing of a run. Safe from any thread (the config is fixed):
 * what validation for this executor passes (graph/validate.h). */
kn_node_env kn_executor_env(const kn_executor *ex);

/* prompt: validated by kn_validate_prompt into v (which must have accepted
 * it); extra_pnginfo: NULL or an object of further PNG chunks; prompt_id may
 * be NULL. */
int kn_executor_run(kn_executor *ex, const json_t *prompt, const kn_validation *v, const json_t *extra_pnginfo,
                    const char *prompt_id, kn_exec_result *res, kn_err *err);
void kn_exec_result_free(kn_exec_result *res);

/* A fresh uuid4 for prompt ids (with dashes) or a 32-hex-digit client id
 * (without); buf holds at least 37 bytes. */
void kn_uuid4(char *buf, int dashes);

#endif
