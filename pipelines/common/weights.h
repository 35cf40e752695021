/* kn_weights: binding a model's weights from a safetensors file by a table of
 * keys and shape rules, and the weight table every model exports.
 *
 * A model describes its weights as arrays of kn_weight_spec: a key relative
 * to a prefix, the field it fills (an offset into the struct being bound), and
 * its shape in the model's symbolic sizes (ids into a sizes[] array the model
 * fills from a few weights' shapes and its family constants). kn_weights_bind
 * binds one spec array onto one struct (the model, or one of its layers)
 * under a prefix, checks every shape (errors name the key, the shape found and
 * the shape expected) and appends one slot per tensor to the model's table.
 *
 * The table is what code outside a model sees of its weights (LoRA patching,
 * sequence-parallel setup, tools): each slot has the checkpoint key without
 * the file's prefix ("transformer_blocks.0.attn.to_q.weight"), the live
 * kn_tensor the forward reads (a merged LoRA repoints it, loras/lora.h), and
 * for the weight of a linear layer an adapter list the forward applies
 * (runtime LoRA). A linear layer is a kn_lin: weight, optional bias, and the
 * slot id of its weight, so the forward finds its adapters by index.
 *
 * Ownership: weights are views into the file's mapping (the file must outlive
 * the model); the table owns its slot array and keys. A table is complete
 * when the model's load returns; slots never move after that, so pointers to
 * them stay valid for the model's life. */
#ifndef KN_PIPELINES_WEIGHTS_H
#define KN_PIPELINES_WEIGHTS_H

#include <stddef.h>

#include "kernels/ops.h"
#include "kernels/safetensors.h"

typedef struct kn_weight_slot {
    char *key;               /* owned */
    kn_tensor *t;            /* the model's field */
    int linear;              /* the weight of a linear layer: `run` applies */
    kn_adapter_list run;     /* runtime LoRA adapters (empty after load) */
} kn_weight_slot;

typedef struct kn_weight_table {
    kn_weight_slot *slot;
    int n, cap;
    void *converted; /* the weights kn_weight_table_convert stored anew (owned) */
    size_t converted_bytes;
} kn_weight_table;

void kn_weight_table_free(kn_weight_table *t); /* keeps nothing; the struct is zeroed */
/* Stores the model's weights in `dtype` (UNETLoader's fp8 weight_dtype): every
 * slot not already of that dtype gets a copy whose elements are its values
 * (stored * scale, widened exactly) rounded to nearest-even by kn_from_f32,
 * scale 1, and the model's field points at it. As ComfyUI does: it builds the
 * model with dtype=fp8 on every layer and load_state_dict copies each
 * parameter (linear weights and biases, norm scales, embeddings) into it.
 * The copies live in one buffer the table owns, filled one tensor at a time
 * from the file views (never a second full-width copy); the file is not
 * written. Call it once, right after the model's load and before a LoRA
 * table is made over t (loras/lora.h keeps the slots' tensors then as the
 * originals its merges start from and removal returns to). On failure
 * (dtype not a float type, a slot not a contiguous CPU tensor, out of memory)
 * t is unchanged. */
int kn_weight_table_convert(kn_weight_table *t, kn_dtype dtype, kn_err *err);
/* The slot of `key` (no file prefix), or NULL. Linear search: for tools and LoRA loading, not per step. */
kn_weight_slot *kn_weight_table_find(const kn_weight_table *t, const char *key);

/* A linear layer: y = x w^T (+ b) + the adapters of slot `slot`. */
typedef struct kn_lin {
    kn_tensor w, b; /* b.data NULL: no bias */
    int slot;       /* w's slot in the model's table */
} kn_lin;

int kn_lin_forward(kn_ctx *ctx, const kn_weight_table *t, kn_tensor *y, const kn_tensor *x, const kn_lin *l);

/* out [.., D] F32 = rows ids[..] of an embedding table [vocab, D] of any float
 * dtype, widened exactly (ComfyUI looks embeddings up in float32). An id
 * outside [0, vocab) fails naming its position. */
int kn_embedding(const kn_tensor *table, const kn_tensor *ids, kn_tensor *out, kn_err *err);

/* ---- binding ------------------------------------------------------------------- */

typedef enum kn_weight_kind {
    KN_W_TENSOR, /* one tensor "<key>" of `ndim` dims into a kn_tensor field */
    KN_W_LINEAR, /* "<key>.weight" [dims[0], dims[1]] and "<key>.bias" [dims[0]] into a kn_lin field */
} kn_weight_kind;

enum {
    KN_W_NO_BIAS = 1 << 0,  /* KN_W_LINEAR without "<key>.bias" */
    KN_W_OPTIONAL = 1 << 1, /* absent from the file: the field stays zeroed (data NULL) */
};

typedef struct kn_weight_spec {
    const char *key;
    size_t offset; /* of the kn_tensor / kn_lin field in the bound struct */
    kn_weight_kind kind;
    int flags;
    int ndim;    /* KN_W_TENSOR: 1..5 */
    int dims[5]; /* ids into the binder's sizes[] */
} kn_weight_spec;

#define KN_WSPEC_LIN(type, field, key, rows, cols, flags) \
    {(key), offsetof(type, field), KN_W_LINEAR, (flags), 2, {(rows), (cols), 0, 0}}
#define KN_WSPEC_T1(type, field, key, d0, flags) {(key), offsetof(type, field), KN_W_TENSOR, (flags), 1, {(d0), 0, 0, 0}}
#define KN_WSPEC_T2(type, field, key, d0, d1, flags) \
    {(key), offsetof(type, field), KN_W_TENSOR, (flags), 2, {(d0), (d1), 0, 0}}

typedef struct kn_weight_binder {
    const kn_st_file *f;
    const char *prefix;    /* of every key in the file ("model.diffusion_model." or "") */
    const int64_t *sizes;  /* symbolic sizes, indexed by the specs' dims */
    const char *what;      /* the model, for messages ("qwen_image_dit") */
    kn_weight_table *table;
    kn_err *err;
} kn_weight_binder;

/* Bind specs[0..n) onto the struct at `base`, keys under prefix + sub
 * ("transformer_blocks.3." or ""). Float weights only. */
int kn_weights_bind(kn_weight_binder *b, void *base, const char *sub, const kn_weight_spec *specs, int n);

/* ---- reading sizes off a file ------------------------------------------------------ */

/* "<prefix>" present as the start of any key. */
int kn_weights_has_prefix(const kn_st_file *f, const char *prefix);
/* Dimension d of tensor prefix + key, or an error naming it. */
int kn_weights_dim(const kn_st_file *f, const char *prefix, const char *key, int d, int64_t *out, kn_err *err);
/* 1 + the largest N among keys "<prefix><stem>N.*"; 0 when there are none.
 * An index that cannot belong to a real layer (not a number, or more than
 * the file's tensor count) is an error, so a corrupt name cannot size an
 * allocation. */
int kn_weights_count(const kn_st_file *f, const char *prefix, const char *stem, int64_t *out, kn_err *err);

#endif
