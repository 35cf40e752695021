/* kn_node: what flows between ComfyUI nodes in Kiln and how a node runs.
 *
 * Contract:
 *  - Values are ComfyUI's: constants (INT, FLOAT, STRING, BOOLEAN) and
 *    objects (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, SAMPLER,
 *    SIGMAS, NOISE, GUIDER). Objects are immutable once a node returns them
 *    and reference counted: the executor's cache, the model store and every
 *    consumer hold their own reference, so a cached LATENT or a loaded MODEL
 *    lives exactly as long as somebody uses it. kn_object_release on the last
 *    reference calls the object's destroy.
 *  - A node is a kn_node_exec_fn. It reads its inputs through the kn_in_*
 *    getters (which fail naming the input), writes one new reference per
 *    output into call->out, may add UI output ("images": [...]) to call->ui,
 *    and on failure returns a status with call->err set; the executor turns
 *    that into ComfyUI's execution_error naming the node; getters and
 *    kn_node_fail start the message with the input it concerns ("input 'x': ").
 *    Outputs already written when a node fails are released by the executor.
 *  - kn_node_exec_find is the one name -> implementation table; the registry
 *    (nodes/registry.h) keeps the schemas (of more classes than Kiln runs:
 *    the UI->API converter needs them all).
 *  - Beside exec, a class may have two hooks (kn_node_hooks_find), ComfyUI's
 *    IS_CHANGED (kn_node_changed_fn) and VALIDATE_INPUTS
 *    (kn_node_validate_fn). Both get a kn_node_call whose `in` holds only the
 *    node's constant inputs (linked ones KN_VALUE_NONE, as ComfyUI passes
 *    None), `out` and `ui` NULL, and an env with models and the folders only
 *    (prompt, extra_pnginfo, ctx, cancel, step NULL). They read inputs with
 *    the kn_in_* getters, fail with kn_node_fail naming the input, never use
 *    the loaded-model store (they may run on a server thread while a prompt
 *    executes) and never load a model: resolving names (kn_models_resolve)
 *    and reading or stat'ing files is what they are for. */
#ifndef KN_NODES_NODE_H
#define KN_NODES_NODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "loras/lora.h"
#include "nodes/registry.h"
#include "pipelines/family.h"
#include "pipelines/sampling/schedulers.h"
#include "pipelines/sampling/stepcache.h"

/* ---- objects ----------------------------------------------------------------- */

typedef struct kn_object kn_object;
struct kn_object {
    const char *type; /* ComfyUI type name, static */
    int refs;
    void (*destroy)(kn_object *obj); /* frees the object itself too */
};

void kn_object_init(kn_object *obj, const char *type, void (*destroy)(kn_object *));
kn_object *kn_object_retain(kn_object *obj); /* NULL-safe; returns obj */
void kn_object_release(kn_object *obj);      /* NULL-safe */

/* A diffusion model file with its model bound to the mapping (what the model
 * store caches per file; MODEL objects share it). The family is the model's. */
typedef struct kn_dit_weights {
    kn_object base; /* "DIT_WEIGHTS" */
    kn_st_file *file;
    kn_dit *dit;
    kn_dtype dtype;            /* the dtype its weights were converted to, KN_DTYPE_COUNT: as stored */
    kn_lora_model *lora_table; /* owned; made by the first LoRA node, NULL until then (nodes/lora.c) */
} kn_dit_weights;

#define KN_MAX_POST_CFG 8

/* MODEL: weights plus the model sampling that ModelSampling* nodes replace,
 * the post-CFG hooks (ComfyUI's sampler_post_cfg_function model option:
 * CFGNorm) run in order after CFG, and the step cache (EasyCache, LazyCache:
 * ComfyUI's transformer_options["easycache"], the last node's wins). */
typedef struct kn_model_obj {
    kn_object base;
    kn_dit_weights *weights; /* retained */
    kn_model_sampling ms;    /* owned */
    kn_object *loras;        /* retained LoRA patch list (nodes/lora.c), NULL: the plain weights */
    kn_post_cfg post_cfg[KN_MAX_POST_CFG];
    int n_post_cfg;
    kn_step_cache_opts step_cache; /* kind KN_STEP_CACHE_OFF: none */
} kn_model_obj;

/* The DiT to run for m: brings the shared weights to m's LoRA patch list
 * (only tensors whose list changed are recomputed) and returns them. Call it
 * before each forward; the result is valid until another MODEL's call. */
int kn_model_dit(const kn_model_obj *m, const kn_dit **dit, kn_err *err);
/* The model store's kn_models_use for running m: its weights and its LoRA
 * files (nodes/model_store.h). */
typedef struct kn_models kn_models;
int kn_model_use(const kn_model_obj *m, kn_models *models, kn_err *err);
/* m's LoRA patch list, in order: the files' paths and strengths (to load the
 * same model elsewhere: nodes/ranks.h). */
int kn_model_lora_count(const kn_model_obj *m);
void kn_model_lora_at(const kn_model_obj *m, int i, const char **path, double *strength);
/* What ComfyUI's model.clone() keeps beside the patches: dst takes src's
 * model options (the post-CFG hooks, the step cache). */
void kn_model_copy_options(kn_model_obj *dst, const kn_model_obj *src);
/* model.clone(): a new MODEL sharing from's weights and LoRA patch list, with
 * copies of its model sampling and options; NULL (err set) when out of memory. */
kn_model_obj *kn_model_clone(const kn_model_obj *from, kn_err *err);

/* CLIP: a text encoder of some family (its files stay open while it lives). */
typedef struct kn_clip_obj {
    kn_object base;
    kn_st_file *files[2];
    int n_files;
    kn_clip *clip;
} kn_clip_obj;

typedef struct kn_vae_obj {
    kn_object base;
    kn_st_file *file;
    kn_vae *vae;
} kn_vae_obj;

/* LATENT {"samples": [B, C, (T,) h, w], "downscale_ratio_spacial": r (0 = absent)}. */
typedef struct kn_latent_obj {
    kn_object base;
    kn_tensor samples;
    int downscale_ratio;
} kn_latent_obj;

/* One entry of a CONDITIONING, ComfyUI's [cond, extras] pair: cond
 * [B, L, D] F32, its attention mask and pooled vector (data NULL when ComfyUI
 * would carry none), the "guidance" value FluxGuidance / CLIPTextEncodeFlux
 * set (has_guidance 0: absent, the model's default applies), and the
 * "reference_latents" (raw VAE latents; the LATENTs are retained, not
 * copied) the Edit nodes and ReferenceLatent append. */
typedef struct kn_cond_entry {
    kn_text_cond t;
    double guidance;
    int has_guidance;
    kn_latent_obj **refs; /* n_refs retained references, malloc'd */
    int n_refs;
} kn_cond_entry;

/* CONDITIONING: a list of entries (ConditioningCombine concatenates lists;
 * the sampler runs the model on every entry and averages the predictions). */
typedef struct kn_cond_obj {
    kn_object base;
    kn_cond_entry *e; /* n entries, malloc'd */
    int n;
} kn_cond_obj;

/* dst = a copy of src: tensors duplicated, reference latents retained
 * (ComfyUI's per-entry dict copy). On failure dst is left empty. */
int kn_cond_entry_copy(kn_cond_entry *dst, const kn_cond_entry *src, kn_err *err);
/* Appends lat to e's reference latents (retains it). */
int kn_cond_entry_add_ref(kn_cond_entry *e, kn_latent_obj *lat, kn_err *err);

/* IMAGE [B, H, W, C] or MASK [B, H, W], F32. */
typedef struct kn_image_obj {
    kn_object base;
    kn_tensor t;
} kn_image_obj;

typedef struct kn_sampler_obj {
    kn_object base;
    char name[48];
} kn_sampler_obj;

typedef struct kn_sigmas_obj {
    kn_object base;
    float *sigmas; /* malloc'd */
    int n;
} kn_sigmas_obj;

typedef struct kn_noise_obj {
    kn_object base;
    uint64_t seed;
    bool disabled; /* DisableNoise: zeros */
} kn_noise_obj;

/* GUIDER: CFGGuider (negative set) or BasicGuider (negative NULL, cfg 1). */
typedef struct kn_guider_obj {
    kn_object base;
    kn_model_obj *model;
    kn_cond_obj *positive, *negative; /* retained */
    double cfg;
} kn_guider_obj;

/* New objects with one reference, tensors zeroed (the creator fills them).
 * NULL when out of memory. */
kn_cond_obj *kn_cond_new(int entries); /* entries >= 1, zeroed */
kn_latent_obj *kn_latent_new(void);
kn_image_obj *kn_image_new(const char *type); /* "IMAGE" or "MASK" */
kn_model_obj *kn_model_new(kn_dit_weights *weights);  /* retains weights; ms zeroed */
kn_object *kn_simple_new(const char *type, size_t size); /* SAMPLER, SIGMAS, NOISE, GUIDER */

/* Tensors the objects own: a contiguous F32/any-dtype copy of src, and a
 * zero-filled new tensor. Free with kn_tensor_free. */
int kn_tensor_dup(kn_tensor *dst, const kn_tensor *src, kn_err *err);
int kn_tensor_zeros(kn_tensor *t, kn_dtype dtype, int ndim, const int64_t *ne, kn_err *err);

/* ---- values ------------------------------------------------------------------ */

typedef enum kn_value_kind {
    KN_VALUE_NONE = 0, /* absent optional input */
    KN_VALUE_INT,
    KN_VALUE_FLOAT,
    KN_VALUE_STRING,
    KN_VALUE_BOOL,
    KN_VALUE_OBJECT,
} kn_value_kind;

typedef struct kn_value {
    kn_value_kind kind;
    int64_t i;      /* INT; seeds above 2^63 keep their 64 bits (read them as uint64_t) */
    double f;       /* FLOAT */
    bool b;         /* BOOLEAN */
    char *s;        /* STRING, owned */
    kn_object *obj; /* OBJECT, one reference owned */
} kn_value;

/* A validated constant as the value of an input of `kind`. */
int kn_value_from_json(kn_value *v, kn_input_kind kind, const json_t *j, kn_err *err);
/* A new value holding its own reference/copy of src. */
int kn_value_copy(kn_value *dst, const kn_value *src, kn_err *err);
void kn_value_clear(kn_value *v);

/* ---- running a node ------------------------------------------------------------ */

typedef struct kn_node_env kn_node_env;
struct kn_latent_format; /* pipelines/sampling/samplers.h */
typedef struct kn_ranks kn_ranks;

/* What a run offers every node. */
struct kn_node_env {
    kn_models *models;            /* model folders and the loaded-model store */
    const char *output_dir;       /* SaveImage */
    const char *temp_dir;         /* PreviewImage */
    const char *input_dir;        /* LoadImage */
    const json_t *prompt;         /* the API prompt (PNG "prompt" chunk) */
    const json_t *extra_pnginfo;  /* object of further PNG chunks ("workflow"), or NULL */
    kn_ctx *ctx;                  /* compute context */
    kn_ranks *ranks;              /* the launch's other ranks the DiT runs across (nodes/ranks.h), NULL: none */
    const atomic_int *cancel;     /* interrupt flag, checked between sampler steps */
    /* Reports sampler step `step` of `total` for the running node; a non-zero
     * return (err set) stops sampling. */
    int (*step)(const kn_node_env *env, int step, int total, kn_err *err);
    void *step_user;
    /* Offers the sampler's current prediction (denoised, in the model's
     * latent space, laid out as the family's latents) for a latent preview;
     * NULL when nobody watches. Never fails the run. */
    void (*preview)(const kn_node_env *env, const kn_tensor *denoised, const struct kn_latent_format *format);
};

typedef struct kn_node_call {
    const char *node_id;
    const kn_node_class *cls;
    const kn_value *in; /* cls->n_inputs values, in cls->inputs order (borrowed) */
    kn_value *out;      /* cls->n_outputs values the node fills */
    json_t *ui;         /* object: the node's UI output */
    const kn_node_env *env;
    kn_err *err;
    const char *err_input; /* set by kn_node_fail: the input the failure names, NULL: the node */
} kn_node_call;

typedef int (*kn_node_exec_fn)(kn_node_call *call);

#define KN_CHANGED_MAX 256 /* a fingerprint's bytes, NUL included */

/* changed (IS_CHANGED): writes into fp (KN_CHANGED_MAX bytes, a C string) a
 * fingerprint of what the node reads beyond its inputs (a file's content
 * hash, or its size and mtime). The executor adds it to the node's cache
 * key, and so to the key of everything downstream: a changed file re-runs
 * the node and what follows, an unchanged one is served from the cache.
 * Called on the executor's thread once per prompt for every node that is to
 * run or be served, before any executes. A failure (the file vanished) is
 * not fatal to the prompt's start: the node's key is made unique (never
 * served from the cache, as ComfyUI's NaN) and when its turn comes the node
 * fails with the hook's message, an ordinary execution_error naming it. */
typedef int (*kn_node_changed_fn)(kn_node_call *call, char *fp);

/* validate (VALIDATE_INPUTS): checks of the constant inputs beyond the
 * schema's, at validation time, so a prompt that cannot run is refused with
 * HTTP 400 before it is queued. graph/validate.c calls it when the node's
 * inputs passed their schema checks; a failure becomes ComfyUI's
 * custom_validation_failed on the input kn_node_fail named (details
 * "<input> - <message>"), or on every constant input when it named none. */
typedef int (*kn_node_validate_fn)(kn_node_call *call);

/* Input getters: fail (KN_ERR_INVALID, naming the input) when the input is
 * absent or of another kind. kn_in_object also checks the object's type;
 * kn_in_object_opt gives NULL for an absent optional input. */
int kn_in_int(kn_node_call *c, const char *name, int64_t *v);
int kn_in_int_opt(kn_node_call *c, const char *name, int64_t def, int64_t *v); /* def when absent */
int kn_in_float(kn_node_call *c, const char *name, double *v);
int kn_in_bool(kn_node_call *c, const char *name, bool *v);
int kn_in_string(kn_node_call *c, const char *name, const char **v);
int kn_in_object(kn_node_call *c, const char *name, const char *type, kn_object **obj);
int kn_in_object_opt(kn_node_call *c, const char *name, const char *type, kn_object **obj);
/* Set output i to a new object (steals the reference). */
void kn_out_object(kn_node_call *c, int i, kn_object *obj);
/* Fail with a message about `input` (NULL: the node as a whole), prefixed "input '<name>': ". */
int kn_node_fail(kn_node_call *c, const char *input, int code, const char *fmt, ...) KN_PRINTF(4, 5);

/* VAE.encode of an IMAGE [B, H, W, C] as VAEEncode does it: each side
 * cropped to a multiple of 8 (centred), channels past the VAE's dropped,
 * 2x - 1; *out is a new LATENT of the raw VAE latent. Failures name `input`. */
int kn_vae_encode_pixels(kn_node_call *c, const char *input, const kn_vae_obj *vae, const kn_tensor *im,
                         kn_latent_obj **out);

/* Per-file node tables, {NULL, NULL}-terminated (merged by kn_node_exec_find). */
typedef struct kn_node_def {
    const char *class_type;
    kn_node_exec_fn exec;
} kn_node_def;

/* Per-file hook tables beside them, listing only classes with a hook,
 * {0}-terminated (merged by kn_node_hooks_find). */
/* What family a loader's output will be, read off the files its constant
 * inputs name (headers only): for a MODEL the diffusion model's family and
 * the text-encoder family it conditions on, for a CLIP its family. Same
 * call rules as the validate hook. */
typedef struct kn_family_ref {
    const char *name;  /* kn_dit_family.name / kn_clip_family.name */
    const char *title; /* for messages */
    const char *takes; /* MODEL: the kn_clip_family.name its conditioning comes from; CLIP: NULL */
} kn_family_ref;
typedef int (*kn_node_family_fn)(kn_node_call *call, int output, kn_family_ref *out);

typedef struct kn_node_hooks {
    const char *class_type;
    kn_node_changed_fn changed;   /* NULL: the node depends on its inputs only */
    kn_node_validate_fn validate; /* NULL: the schema's checks suffice */
    kn_node_family_fn family;     /* loaders of MODEL / CLIP outputs, else NULL */
} kn_node_hooks;

/* The implementation of a class, NULL when Kiln has none (it cannot run,
 * though the registry may know its schema). */
kn_node_exec_fn kn_node_exec_find(const char *class_type);
/* The hooks of a class, NULL when it has none. */
const kn_node_hooks *kn_node_hooks_find(const char *class_type);

/* The node's constant inputs (its prompt "inputs" object) as values of
 * their declared kinds, into `in` (cls->n_inputs zeroed values, cls->inputs
 * order); linked and absent inputs stay KN_VALUE_NONE. On failure err names
 * the input and *bad is its index; the caller clears `in` (kn_values_clear)
 * either way. */
int kn_node_constants(const kn_node_class *cls, const json_t *inputs, kn_value *in, int *bad, kn_err *err);
void kn_values_clear(kn_value *v, int n);

/* GET /object_info: the registry entries of the classes Kiln runs, all of
 * them (class_type NULL) or the one named ({} when Kiln does not run it). */
json_t *kn_node_object_info(const char *class_type, const kn_folder_lister *lister, kn_err *err);

extern const kn_node_def kn_nodes_models[], kn_nodes_conditioning[], kn_nodes_latent[], kn_nodes_sampling[],
    kn_nodes_vae[], kn_nodes_image[], kn_nodes_lora[], kn_nodes_stepcache[];
extern const kn_node_hooks kn_hooks_models[], kn_hooks_image[], kn_hooks_lora[], kn_hooks_latent[];

#endif
