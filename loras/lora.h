/* kn_lora: LoRA-family files mapped onto a loaded model, and hot-swapping
 * them without ever touching the base weights.
 *
 * Design (why; loras/README.md has the measurements):
 *  - The base weights are kn_tensor views into a read-only mmap of the model
 *    file. They must never drift, so a LoRA is never merged in place and
 *    never "unmerged" by subtraction (in bf16 that leaves 7-18 % of the
 *    elements wrong after a few swaps; shared/notes/lora-hotswap.md §5).
 *  - A kn_lora_model is the model's weight table: every patchable tensor by
 *    checkpoint key, with the live slot the forward reads and a copy of the
 *    original file view. Applying a LoRA stack writes, per patched tensor, a
 *    separate buffer computed in f32 from the original view plus every patch
 *    in stack order, rounded once to the stored dtype (f32/f16/bf16; fp8 and
 *    other bases keep the f32 result), and points the slot at it. Removing a
 *    LoRA points the slot back at the original view: bit-identical to the
 *    file by construction, with no arithmetic.
 *  - Each tensor remembers which (LoRA, strength) list its buffer holds, so a
 *    new stack recomputes only tensors whose list changed; the others keep
 *    their buffer or their file view. The model file is never re-read or
 *    re-mapped: the mapping stays open for the life of the model.
 *  - That merge (option B of the notes, from a pristine base) handles every
 *    format ComfyUI does (LoRA, DoRA, LoHa, LoKr, OFT, diff, set) with zero
 *    per-step cost, but its swap costs as much as the weights a LoRA touches
 *    (10-45x a model load for a LoRA on every linear; README).
 *  - So plain LoRAs (up/down[/alpha], no DoRA) take the runtime low-rank
 *    path instead wherever the model keeps an adapter list beside the slot
 *    (kn_lora_model_add's `run`; every DiT linear): the weight stays the
 *    file view, and applying a stack only points the slot's list at
 *    (down, up, strength * alpha / rank, first output row) entries, the
 *    factors being views into the LoRA file's mapping, that kn_linear_lora
 *    adds as scale * (x down^T) up^T on the rows up covers (widening them
 *    per call into scratch). A swap is then a LoRA file open plus pointer
 *    updates, and removal is emptying the list. Per tensor a stack splits in
 *    stack order: entries up to the last one that reads the weight (DoRA,
 *    OFT, set) and every entry with a non-plain patch merge into the
 *    buffer; the plain LoRAs after it are adapters (additive terms commute,
 *    so the result is the merge's up to one rounding of the merged part).
 *
 * Formats and key mapping follow ComfyUI (shared/notes/comfyui-lora.md and
 * the lora_* fixtures' key_mapping_rules / patch_math):
 *  - A file of a layout ComfyUI converts first (comfy/lora_convert.py: BFL
 *    Flux control LoRAs, ByteDance USO) has its keys renamed the same way;
 *    a control LoRA's img_in LoRA widens img_in (reshape_weight, also read
 *    from files as <stem>.reshape_weight): merged, and removal gives the
 *    file's view, shape included, back.
 *  - Every file tensor is split into a stem and a known suffix (.lora_up /
 *    .lora_down / .lora_A / .lora_B and their variants, .alpha, .dora_scale,
 *    .hada_*, .lokr_*, .oft_blocks, .diff, .diff_b, .w_norm, .b_norm,
 *    .set_weight, .reshape_weight); the stem is looked up in the key map
 *    the family's kn_key_alias rules build (pipelines/family.h): checkpoint
 *    keys under prefixes (Qwen-Image: diffusion_model.<k>, lora_unet_<k
 *    with . -> _>, <k>, transformer.<k>, lycoris_<k with . -> _>; any other
 *    tensor by diffusion_model.<key>), and for Flux also the diffusers
 *    module names of comfy.utils.flux_to_diffusers under transformer.,
 *    lycoris_, lora_transformer_ and bare.
 *  - A stem maps to a place: a tensor, or a row slice of a fused one
 *    (diffusers' to_q / to_k / to_v are thirds of Flux's qkv, proj_mlp the
 *    rows after them in linear1), optionally with the delta's two row halves
 *    swapped (norm_out.linear). One LoRA may patch several slices of one
 *    tensor; both paths apply a patch only to its rows (the merge adds into
 *    them, an adapter writes only those outputs).
 *  - Tensors no rule consumes are not an error: they are listed (file order)
 *    by kn_lora_unloaded, and the rest of the file applies. Bias deltas
 *    (.diff_b, .b_norm) of a slice or swapped stem are among them: ComfyUI
 *    derives no bias key for those and patches nothing.
 *  - Errors name the file and the key (and for a slice the rows it patches):
 *    unreadable or truncated files, factor shapes that do not fit the mapped
 *    weight, up/down rank mismatch, non-finite alpha, non-float factors,
 *    incomplete LoHa/LoKr factor sets, the conv-only Tucker factors
 *    (lora_mid, hada_t*, lokr_t2), OFT on swapped halves, a reshape of
 *    anything but a whole 2-D weight, and a stack patching a weight an
 *    earlier LoRA widened at its old shape (when applied).
 *
 * Ownership: a kn_lora_model borrows its slots and adapter lists (the
 * model's fields) and must be freed before the model; kn_lora_model_free
 * restores every slot and empties every list first. A kn_lora owns its
 * mapped file (which adapter lists point into); it
 * belongs to the kn_lora_model it was loaded for and must outlive every
 * stack applied with it, i.e. apply a stack without it before freeing it.
 * Not thread-safe: one thread applies stacks and runs the model. */
#ifndef KN_LORA_H
#define KN_LORA_H

#include <stdint.h>

#include "kernels/safetensors.h"
#include "pipelines/common/weights.h"
#include "pipelines/family.h"

typedef struct kn_lora_model kn_lora_model;
typedef struct kn_lora kn_lora;

/* ---- the model's weight table ------------------------------------------------ */

/* An empty table whose keys LoRA files may also spell as `aliases` (the
 * model family's kn_key_alias rules and rename tables, static data borrowed
 * for the table's life). */
int kn_lora_model_new(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_err *err);
/* Register a patchable tensor: `key` is the checkpoint key without the
 * "diffusion_model." prefix ("transformer_blocks.0.attn.to_q.weight"),
 * `slot` the view the model reads (borrowed; its current value is kept as
 * the original). `run` (borrowed, empty, or NULL) is the adapter list the
 * model's linear reads beside a 2-D slot: plain LoRAs attach there instead
 * of merging. NULL: every patch of this tensor merges. */
int kn_lora_model_add(kn_lora_model *m, const char *key, kn_tensor *slot, kn_adapter_list *run, kn_err *err);
/* Every slot of a model's weight table (pipelines/common/weights.h), the
 * weights of linear layers with their adapter lists. */
int kn_lora_model_from_table(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_weight_table *table,
                             kn_err *err);
void kn_lora_model_free(kn_lora_model *m); /* NULL-safe; restores every slot */

/* The registered slot for `key`, or NULL. With runtime adapters this is the
 * (untouched) weight the linear reads, not base + LoRA; a weight a
 * reshape_weight widened has the wider shape until the LoRA is removed. */
const kn_tensor *kn_lora_model_slot(const kn_lora_model *m, const char *key);

/* The effective weight for `key`: the slot plus its runtime adapters summed
 * in f32 and rounded once to the dtype a merge would store, into a new
 * tensor (out owns it: kn_tensor_free). For tests and tools comparing
 * patched weights; the forward never forms it. */
int kn_lora_model_weight(const kn_lora_model *m, const char *key, kn_tensor *out, kn_err *err);

/* On (the default): plain LoRAs on slots with an adapter list run as
 * adapters. Off: every patch merges (the reference the runtime path is
 * tested against). Changing it puts every tensor back to its file view with
 * no adapters; the next kn_lora_model_apply rebuilds the stack. */
void kn_lora_model_set_runtime(kn_lora_model *m, int on);

/* ---- LoRA files ---------------------------------------------------------------- */

/* Map and validate a LoRA file against m (errors name the file and key).
 * Builds m's key map on first use after kn_lora_model_add. */
int kn_lora_load(kn_lora **out, const char *path, kn_lora_model *m, kn_err *err);
void kn_lora_free(kn_lora *l); /* NULL-safe */

const char *kn_lora_name(const kn_lora *l);  /* the file's base name */
const kn_st_file *kn_lora_file(const kn_lora *l); /* its mapping (the model store releases its pages) */
int kn_lora_patch_count(const kn_lora *l);   /* model tensors it patches (a fused one once) */
int kn_lora_tensor_count(const kn_lora *l);  /* tensors in the file */
/* Tensors of the file no rule consumed, in file order (the ComfyUI warning
 * "[name] lora keys not loaded (n / total): [...]"). */
int kn_lora_unloaded_count(const kn_lora *l);
const char *kn_lora_unloaded(const kn_lora *l, int i);
/* That warning as one line into buf (empty when every key loaded); returns buf. */
const char *kn_lora_warning(const kn_lora *l, char *buf, size_t len);

/* ---- applying a stack ------------------------------------------------------------ */

typedef struct kn_lora_use {
    const kn_lora *lora;
    double strength; /* LoraLoader's strength_model */
} kn_lora_use;

typedef struct kn_lora_apply_stats {
    int recomputed; /* tensors (re)patched from their original view */
    int restored;   /* tensors pointed back at their original view */
    int kept;       /* patched tensors whose patch lists did not change */
    int attached;   /* tensors whose runtime adapter list was (re)set to a non-empty one */
    int detached;   /* tensors whose runtime adapter list was emptied */
} kn_lora_apply_stats;

/* Make every slot equal to base + the stack (in order, ComfyUI's
 * calculate_weight), plain LoRAs as runtime adapters where the split above
 * allows: tensors no entry patches get their original view and an empty
 * adapter list back.
 * An empty stack (n == 0) restores the base. stats may be NULL. On failure
 * the tensors not yet recomputed keep their previous state and the failing
 * tensor its original view, so the model is never half-written. */
int kn_lora_model_apply(kn_lora_model *m, const kn_lora_use *stack, int n, kn_lora_apply_stats *stats,
                        kn_err *err);
/* The bytes of the patched copies m holds (what kn_lora_model_restore frees). */
size_t kn_lora_model_patched_bytes(const kn_lora_model *m);
/* Every tensor back to its original view with no adapters, the copies freed;
 * the next kn_lora_model_apply rebuilds the stack (the model store's release
 * under its memory budget). */
void kn_lora_model_restore(kn_lora_model *m);

#endif
