/* Internals the loras/ files share; the API and the design are in lora.h.
 *
 *   lora.c       the weight table and applying a stack (which patches merge,
 *                which stay runtime adapters)
 *   lora_keys.c  the key map: every stem a LoRA file may use for this model,
 *                and where its patch lands (a tensor, a row slice of it, the
 *                delta's halves swapped)
 *   lora_file.c  reading a file: ComfyUI's whole-file conversions, suffix
 *                roles, validation into patches, the unloaded keys
 *   lora_math.c  one patch on an f32 weight (ComfyUI's calculate_weight)
 *
 * Where a patch lands (a "place"): rows [row0, row0 + rows) of the target,
 * all of them for a stem that names the whole tensor. A fused tensor can
 * carry several patches of one LoRA, one per slice (diffusers' to_q, to_k,
 * to_v on Flux's qkv). With swap the delta's two row halves are exchanged
 * before they are added (ComfyUI's swap_scale_shift), which is the same as
 * adding it in two segments; both paths work per segment: the merge adds
 * delta rows [src, src + n) to weight rows [dst, dst + n), a runtime adapter
 * is up's rows [src, src + n) at output row dst. */
#ifndef KN_LORA_IMPL_H
#define KN_LORA_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "loras/lora.h"

typedef struct applied {
    uint64_t serial; /* kn_lora identity (never reused, unlike an address) */
    double strength;
} applied;

typedef struct target {
    char *key;
    kn_tensor *slot; /* borrowed: what the model reads */
    kn_tensor orig;  /* the file's view */
    void *buf;       /* patched copy (owned), NULL while the slot is the original */
    size_t buf_bytes;
    applied *sig; /* the LoRAs buf holds */
    int n_sig;
    kn_adapter_list *run; /* borrowed: the adapter list the model reads beside slot, NULL: merge only */
    kn_lora_adapter *ad;  /* what run points at (owned; the factors are the kn_loras') */
    int n_ad;
    applied *rsig; /* the LoRAs ad holds */
    int n_rsig;
} target;

typedef struct place {
    int target;
    int64_t row0, rows;
    int swap;
} place;

typedef struct segment {
    int64_t dst, src, n;
} segment;

/* p's segments into seg (one, or two with swap); returns how many. */
int kn_lora_segments(const place *p, segment seg[2]);

typedef struct stem {
    char *name;
    place at;
    int order; /* registration order: of two equal names the last one wins */
} stem;

struct kn_lora_model {
    const kn_key_alias *aliases; /* the family's (static) */
    int n_aliases;
    int runtime; /* plain LoRAs on slots with an adapter list stay unmerged */
    target *t;
    int n, cap;
    stem *stems; /* sorted by name; rebuilt after kn_lora_model_add */
    int n_stems, stems_dirty;
};

/* ---- the key map (lora_keys.c) ---- */

int kn_lora_find_target(const kn_lora_model *m, const char *key); /* -1 when absent */
int kn_lora_keys_build(kn_lora_model *m, kn_err *err);
void kn_lora_keys_free(kn_lora_model *m);
/* The stem equal to name[0, len), or -1. */
int kn_lora_keys_find(const kn_lora_model *m, const char *name, size_t len);

/* ---- patches (lora_file.c builds them, lora_math.c applies them) ---- */

typedef enum patch_kind { P_LORA, P_LOHA, P_LOKR, P_OFT, P_DIFF, P_SET } patch_kind;

/* One patch of one place. f[] by kind:
 *   LORA: up [rows, r], down [r, I]
 *   LOHA: w1a [rows, r1], w1b [r1, I], w2a [rows, r2], w2b [r2, I]
 *   LOKR: w1, w1a, w1b, w2, w2a, w2b (w1 or w1a/w1b; w2 likewise)
 *   OFT:  blocks [k, b, b];   DIFF, SET: the tensor */
typedef struct patch {
    place at;
    patch_kind kind;
    const kn_tensor *f[6];
    const kn_tensor *dora; /* [rows, 1] (output axis) or [1, I], or NULL */
    double scale;          /* alpha / rank (1 without alpha); OFT: the constraint (0: none) */
    int64_t shape[2];      /* the weight it patches, [O, I] (1-D: [O, 1]); wider with reshape_weight */
    kn_tensor up_rows[2];  /* LORA: up's rows of each segment, what runtime adapters read */
} patch;

struct kn_lora {
    kn_st_file *file;
    char *name;
    const kn_lora_model *model;
    uint64_t serial;
    patch *p; /* grouped by target, in load order within a target */
    int n;
    int *first;          /* per model target: its first patch in p, or -1 */
    int n_targets;       /* model tensors it patches */
    char **renamed;      /* a whole-file conversion's key names (owned), or NULL */
    const char **unloaded;
    int n_unloaded;
};

/* l's patches of target ti: p[*from, *to). */
void kn_lora_patches_of(const kn_lora *l, int ti, int *from, int *to);

/* ---- patch math (lora_math.c) ---- */

/* A tensor widened to a new f32 array (free()). */
float *kn_lora_widen(const kn_tensor *t, kn_err *err);
/* w[i, :] += coef * sum_k a[a_row0 + i, k] b[k, :] for `rows` rows of w (a [., r], b [r, I]). */
void kn_lora_lowrank_axpy(float *w, const float *a, const float *b, int64_t r, int64_t a_row0, int64_t rows,
                          int64_t I, float coef);

/* Scratch reused by the patches of one application. */
typedef struct kn_lora_work {
    float *panel, *w0, *dv;
    double *norm;
    size_t panel_n, w0_n, dv_n, norm_n;
} kn_lora_work;
void kn_lora_work_free(kn_lora_work *wk);
/* *p holds at least `need` elements of `elem` bytes afterwards (realloc; *have counts them). */
int kn_lora_grow(void **p, size_t *have, size_t need, size_t elem, kn_err *err);

/* One patch at strength s on w, the whole weight as f32 [O, I] row-major. */
int kn_lora_apply_patch(kn_lora_work *wk, const patch *p, float *w, int64_t I, double s, kn_err *err);

#endif
