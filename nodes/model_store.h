/* kn_models: the models root as ComfyUI finds models, and the store of
 * loaded models shared by every run of a process.
 *
 * Contract:
 *  - A root holds ComfyUI's folders: diffusion_models (also unet),
 *    text_encoders (also clip), vae, loras, checkpoints. The input directory
 *    is given at creation; its folders are "input" (LoadImage) and
 *    "input_latents" (LoadLatent).
 *  - kn_models_list appends a folder's files, recursively, as relative paths
 *    with '/' separators, sorted by code point as ComfyUI sorts them; model
 *    folders list ComfyUI's model extensions (.safetensors, .sft, .ckpt, .pt,
 *    .pt2, .pth, .bin, .pkl), "input" lists image files at the input
 *    directory's top level and "input_latents" the .latent files there.
 *    kn_models_lister wraps it for validation (graph/validate.h).
 *  - kn_models_resolve maps a name from a workflow to a path: the name must be
 *    one of the folder's enumerated files; names are never joined into a
 *    path unchecked, so "../x", absolute names and files that are not there
 *    fail (KN_ERR_INVALID / KN_ERR_NOT_FOUND) with a message naming the
 *    folder and the name. *path is malloc'd.
 *  - The store keeps loaded objects by kn_model_key: what was loaded (kind),
 *    the resolved path and the file's stamp taken before loading (size,
 *    mtime in ns, device and inode), so a file replaced under the same name
 *    is a new entry and is loaded anew instead of served stale. Loaders take
 *    the key (kn_model_key_of) before opening the file: a replacement racing
 *    the load then only costs a second load, never a stale hit.
 *    kn_models_get returns a new reference or NULL; kn_models_put adds one of
 *    its own and releases the entry of an older stamp of the same kind and
 *    path (its users keep their references). kn_models_free releases all.
 *    Only the executor's worker uses the store.
 *  - Residency: every entry has a size (kn_resident_ops.bytes: the bytes of
 *    its mapped files plus the heap it holds) and the time of its last load
 *    or use. Loaders call kn_models_reserve before loading a file the store
 *    misses, nodes that run a model call kn_models_use with what they run
 *    (kn_model_use for a MODEL: its weights and LoRA files). When the
 *    resident entries would then exceed the budget, the least recently used
 *    ones the caller does not run are released (kn_resident_ops.release),
 *    each with one line on stderr: "released text_encoders/x.safetensors
 *    (8.1 GiB) for diffusion_models/y.safetensors". Released is not freed:
 *    the object stays valid for every holder (the executor's cache, MODELs
 *    made from it): its file pages are dropped (kn_st_release) and fault back
 *    in when it runs again, and heap it can rebuild (LoRA-patched copies) is
 *    freed and rebuilt on its next use. Heap it cannot rebuild (weights
 *    stored anew by UNETLoader's weight_dtype, a misaligned file's copy)
 *    stays and stays counted. What the caller runs is never released, so a
 *    model larger than the whole budget still runs, everything else released.
 *    Sizes are what an entry occupies once used, not what is paged in now:
 *    a checkpoint's DiT counts its whole file and its parts again. An entry
 *    put without ops (NULL) is never counted nor released.
 *  - The memory budget (kn_models_budget) is what one node may plan to
 *    allocate: nodes estimate their peak from their inputs at validation
 *    and refuse above it, as a node error naming the input (nodes/latent.c).
 *    Default: KN_MEMORY_BUDGET_PERCENT of physical memory; `--memory-budget`
 *    of kiln run / serve sets it (kn_models_set_budget; 0: the default).
 *    The same budget bounds the loaded models' residency (above).
 *  - The tokenizer folder (one sub-folder per tokenizer, "qwen25/", ...) is not a ComfyUI model
 *    folder (ComfyUI ships it with its code); it is $KILN_TOKENIZERS or the
 *    build's copy. */
#ifndef KN_NODES_MODEL_STORE_H
#define KN_NODES_MODEL_STORE_H

#include <stdint.h>

#include <jansson.h>

#include "kernels/error.h"
#include "nodes/node.h"
#include "nodes/registry.h"

#define KN_MEMORY_BUDGET_PERCENT 75

int kn_models_new(kn_models **out, const char *root, const char *input_dir, kn_err *err);
uint64_t kn_models_budget(const kn_models *m);
/* A node's estimated peak against the budget: KN_OK when `bytes` fit (or the
 * env has no models), else a node error on `input`: "<what> needs about X GiB,
 * above the memory budget of Y GiB (--memory-budget)". Nodes call it with
 * their inputs' sizes before allocating (validation, or the start of a run
 * for linked inputs). */
int kn_models_check_peak(kn_node_call *c, const char *input, double bytes, const char *what);
void kn_models_set_budget(kn_models *m, uint64_t bytes);
void kn_models_free(kn_models *m);
/* Releases every loaded model (ComfyUI's /free unload_models): their pages
 * are dropped (kn_resident_ops.release) and the store's references go; users
 * that still hold one keep a valid object until they release it. Executor
 * thread only. */
void kn_models_unload(kn_models *m);

const char *kn_models_root(const kn_models *m);
/* text past "<root>/" when it starts with it (a message about a model file,
 * for clients: the server's folders are not theirs to see), else text. */
const char *kn_models_relative(const kn_models *m, const char *text);
const char *kn_models_tokenizer_dir(const kn_models *m);

int kn_models_list(kn_models *m, const char *folder, json_t *names, kn_err *err);
kn_folder_lister kn_models_lister(kn_models *m);

int kn_models_resolve(kn_models *m, const char *folder, const char *name, char **path, kn_err *err);

/* What identifies a file's contents without reading them: a replaced or
 * rewritten file differs in one of these. */
typedef struct kn_file_stamp {
    int64_t size, mtime_ns;
    uint64_t dev, ino;
} kn_file_stamp;

/* Stats `path` (following links); KN_ERR_NOT_FOUND / KN_ERR_IO naming it. */
int kn_file_stamp_of(const char *path, kn_file_stamp *st, kn_err *err);

#define KN_MODEL_KEY_FILES 2

typedef struct kn_model_key {
    const char *kind;                      /* what was loaded, e.g. "dit", "clip:flux" */
    const char *path[KN_MODEL_KEY_FILES];  /* resolved (kn_models_resolve) */
    kn_file_stamp stamp[KN_MODEL_KEY_FILES];
    int n;                                 /* files: 2 for a text encoder loaded from two */
} kn_model_key;

/* The key of `path` loaded as `kind` (both borrowed) as the file is now. */
int kn_model_key_of(kn_model_key *key, const char *kind, const char *path, kn_err *err);
/* Adds a second file the object was loaded from (DualCLIPLoader). */
int kn_model_key_add(kn_model_key *key, const char *path, kn_err *err);
kn_object *kn_models_get(kn_models *m, const kn_model_key *key);

/* How the store sizes a stored object and gives its memory back (above). */
typedef struct kn_resident_ops {
    /* What obj occupies in use: mapped file bytes plus heap; *kept: the part release leaves. */
    uint64_t (*bytes)(const kn_object *obj, uint64_t *kept);
    /* Drops its file pages and the heap it rebuilds on demand; obj stays valid. */
    void (*release)(kn_object *obj);
} kn_resident_ops;

/* Stores obj (ops: its residency, NULL: none) as resident and just used,
 * then releases what the budget needs released for it. */
int kn_models_put(kn_models *m, const kn_model_key *key, kn_object *obj, const kn_resident_ops *ops, kn_err *err);
/* A loader is about to load key's files (a miss): releases what the budget
 * needs released for their size. */
void kn_models_reserve(kn_models *m, const kn_model_key *key);
/* A node is about to run objs[0..n) (stored objects; others are ignored):
 * they become resident and most recently used, and what the budget needs
 * released of the rest is released. m NULL: nothing. */
void kn_models_use(kn_models *m, kn_object *const *objs, int n);
/* The bytes the entries count against the budget now (tests, logs). */
uint64_t kn_models_resident_bytes(const kn_models *m);

#endif
