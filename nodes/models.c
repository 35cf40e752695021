/* Loader and model-sampling nodes: CheckpointLoaderSimple, UNETLoader,
 * CLIPLoader, DualCLIPLoader, VAELoader, ModelSamplingAuraFlow / SD3 / Flux.
 *
 * Loaders detect the file's family (pipelines/family.h) and load through it;
 * nothing here names a family. Loaded files go to the kn_models store keyed
 * by what was loaded and the resolved path, so a file is mapped and bound
 * once per process however many prompts and workflow files use it. MODEL
 * objects are cheap wrappers (weights + model sampling) made per node run.
 * A checkpoint's text encoders and VAE are views of its file
 * (kernels/safetensors.h kn_st_view) at the places its DiT family's layout
 * names, so they load through the same families as the separate files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nodes/changed.h"
#include "nodes/model_store.h"
#include "nodes/node.h"

/* The file a loader input names, resolved inside its model folder. */
static int resolve(kn_node_call *c, const char *input, const char *folder, char **path) {
    const char *name;
    if (kn_in_string(c, input, &name)) return c->err->code;
    kn_err e;
    kn_err_clear(&e);
    if (kn_models_resolve(c->env->models, folder, name, path, &e)) return kn_node_fail(c, input, e.code, "%s", e.msg);
    return KN_OK;
}

/* The store key of `path` loaded as `kind`, stamped before the file is opened. */
static int store_key(kn_node_call *c, const char *input, const char *kind, const char *path, kn_model_key *key) {
    kn_err e;
    kn_err_clear(&e);
    if (kn_model_key_of(key, kind, path, &e)) return kn_node_fail(c, input, e.code, "%s", e.msg);
    return KN_OK;
}

static int open_file(kn_node_call *c, const char *input, const char *path, kn_st_file **f) {
    kn_err e;
    kn_err_clear(&e);
    if (kn_st_open(f, path, &e)) return kn_node_fail(c, input, e.code, "%s", e.msg);
    return KN_OK;
}

/* Weights about to be loaded hold no NaN or inf (read once per load; validation reads headers only).
 * The message names the file below the models root: clients see it. */
static int check_finite(kn_node_call *c, const char *input, const kn_st_file *f) {
    kn_err e;
    kn_err_clear(&e);
    if (!kn_st_check_finite(f, &e)) return KN_OK;
    return kn_node_fail(c, input, e.code, "%s", kn_models_relative(c->env->models, e.msg));
}

/* The part of `path` under `prefix` (NULL: the whole file) as a file of its own;
 * the view keeps the file open. */
static int open_part(kn_node_call *c, const char *input, const char *path, const char *prefix, kn_st_file **out) {
    kn_st_file *f = NULL;
    *out = NULL;
    if (open_file(c, input, path, &f)) return c->err->code;
    if (!prefix) {
        *out = f;
        return KN_OK;
    }
    kn_err e;
    kn_err_clear(&e);
    int rc = kn_st_view(out, f, prefix, &e) ? kn_node_fail(c, input, e.code, "%s", e.msg) : KN_OK;
    kn_st_close(f);
    return rc;
}

/* ---- residency (nodes/model_store.h) ---------------------------------------------- */

/* The bytes of files[0..n); those of misaligned files' heap copies are also added to *kept. */
static uint64_t files_bytes(kn_st_file *const *files, int n, uint64_t *kept) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        int mapped;
        uint64_t b = kn_st_span_bytes(files[i], &mapped);
        total += b;
        if (!mapped) *kept += b;
    }
    return total;
}

static void files_release(kn_st_file *const *files, int n) {
    for (int i = 0; i < n; i++) kn_st_release(files[i]);
}

/* A DiT: its file, the weights weight_dtype stored anew (kept) and the LoRA-patched copies (rebuilt on use). */
static uint64_t dit_bytes(const kn_object *o, uint64_t *kept) {
    const kn_dit_weights *w = (const kn_dit_weights *)o;
    *kept = w->dit->weights->converted_bytes;
    return files_bytes(&w->file, 1, kept) + w->dit->weights->converted_bytes +
           (w->lora_table ? kn_lora_model_patched_bytes(w->lora_table) : 0);
}

static void dit_release(kn_object *o) {
    kn_dit_weights *w = (kn_dit_weights *)o;
    if (w->lora_table) kn_lora_model_restore(w->lora_table); /* kn_model_dit re-applies a MODEL's stack */
    files_release(&w->file, 1);
}

static const kn_resident_ops dit_resident = {dit_bytes, dit_release};

static uint64_t clip_bytes(const kn_object *o, uint64_t *kept) {
    const kn_clip_obj *cl = (const kn_clip_obj *)o;
    *kept = 0;
    return files_bytes(cl->files, cl->n_files, kept);
}

static void clip_release(kn_object *o) {
    kn_clip_obj *cl = (kn_clip_obj *)o;
    files_release(cl->files, cl->n_files);
}

static const kn_resident_ops clip_resident = {clip_bytes, clip_release};

static uint64_t vae_bytes(const kn_object *o, uint64_t *kept) {
    *kept = 0;
    return files_bytes(&((const kn_vae_obj *)o)->file, 1, kept);
}

static void vae_release(kn_object *o) { files_release(&((kn_vae_obj *)o)->file, 1); }

static const kn_resident_ops vae_resident = {vae_bytes, vae_release};

/* ---- diffusion models ---------------------------------------------------------- */

/* KN_DTYPE_COUNT: the weights stay in the file's dtypes. */
#define AS_STORED KN_DTYPE_COUNT

/* UNETLoader's weight_dtype: what the DiT's weights are stored as. fp8_e4m3fn_fast
 * stores e4m3 too; ComfyUI then also multiplies in fp8 on GPUs with fp8 matrix
 * units, and elsewhere (CPU) runs it as fp8_e4m3fn, as Kiln does everywhere.
 * Also UNETLoader's validate hook, so a bad value is refused before the prompt queues. */
static int weight_dtype(kn_node_call *c, kn_dtype *out) {
    static const struct {
        const char *name;
        kn_dtype dtype;
    } map[] = {{"default", AS_STORED}, {"fp8_e4m3fn", KN_F8_E4M3}, {"fp8_e4m3fn_fast", KN_F8_E4M3},
               {"fp8_e5m2", KN_F8_E5M2}};
    const char *name;
    *out = AS_STORED;
    if (kn_in_string(c, "weight_dtype", &name)) return c->err->code;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].name) == 0) {
            *out = map[i].dtype;
            return KN_OK;
        }
    return kn_node_fail(c, "weight_dtype", KN_ERR_UNSUPPORTED, "'%s' is not a weight dtype Kiln stores", name);
}

static void free_dit_weights(kn_object *o) {
    kn_dit_weights *w = (kn_dit_weights *)o;
    kn_lora_model_free(w->lora_table); /* puts the file views back first */
    kn_dit_free(w->dit);
    kn_st_close(w->file);
    free(w);
}

/* The DiT of `path` with its weights stored as `dtype` (AS_STORED: as in the file). */
static int load_dit(kn_node_call *c, const char *input, const char *path, kn_dtype dtype, kn_dit_weights **out) {
    kn_model_key key;
    char kind[32] = "dit"; /* the same file stored another way is another model */
    if (dtype != AS_STORED) snprintf(kind, sizeof kind, "dit:%s", kn_dtype_name(dtype));
    if (store_key(c, input, kind, path, &key)) return c->err->code;
    if ((*out = (kn_dit_weights *)kn_models_get(c->env->models, &key))) return KN_OK;
    kn_models_reserve(c->env->models, &key);
    kn_dit_weights *w = calloc(1, sizeof *w);
    if (!w) return kn_node_fail(c, input, KN_ERR_NOMEM, "out of memory");
    kn_object_init(&w->base, "DIT_WEIGHTS", free_dit_weights);
    w->dtype = dtype;
    int rc = open_file(c, input, path, &w->file);
    if (!rc) rc = check_finite(c, input, w->file);
    if (!rc && kn_dit_load(&w->dit, w->file, c->err)) rc = kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    /* before any LoRA table exists over the weights, so LoRAs patch the stored copies */
    if (!rc && dtype != AS_STORED && kn_weight_table_convert(w->dit->weights, dtype, c->err))
        rc = kn_node_fail(c, "weight_dtype", c->err->code, "%s", c->err->msg);
    if (!rc) rc = kn_models_put(c->env->models, &key, &w->base, &dit_resident, c->err);
    if (rc) {
        if (!w->file) free(w);
        else kn_object_release(&w->base);
        return rc;
    }
    *out = w;
    return KN_OK;
}

/* The model sampling ComfyUI gives a freshly loaded model of this family. */
static int default_sampling(kn_model_sampling *ms, const kn_dit_family *f, kn_err *err) {
    if (f->sampling == KN_MS_FLUX) return kn_model_sampling_flux(ms, f->shift, err);
    return kn_model_sampling_flow(ms, f->shift, f->multiplier, err);
}

/* A new MODEL over `weights` keeping the LoRA patch list and model options of
 * `from` (NULL: none), as ComfyUI's model.clone() does; the caller sets its
 * model sampling. */
static int make_model(kn_node_call *c, kn_dit_weights *weights, const kn_model_obj *from, kn_model_obj **out) {
    *out = kn_model_new(weights);
    if (!*out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (from) (*out)->loras = kn_object_retain(from->loras);
    if (from) kn_model_copy_options(*out, from);
    return KN_OK;
}

/* Validate hooks: the files' families are detected from their headers (the
 * mapping is only read where the tensor table is), so a prompt naming a model
 * Kiln does not run is refused before it queues, naming what was found. */

/* Detects the file `input` names in `folder` with `detect` (an adapter over
 * the family tables), filling *ref when it is not NULL. */
static int detect_file(kn_node_call *c, const char *input, const char *folder,
                       int (*detect)(const kn_st_file *f, kn_family_ref *ref, kn_err *err), kn_family_ref *ref) {
    char *path = NULL;
    const char *name;
    kn_st_file *f = NULL;
    kn_family_ref unused;
    int rc = kn_in_string(c, input, &name) ? c->err->code : resolve(c, input, folder, &path);
    if (!rc) rc = open_file(c, input, path, &f);
    if (!rc && detect(f, ref ? ref : &unused, c->err)) rc = kn_node_fail(c, input, c->err->code, "%s: %s", name, c->err->msg);
    kn_st_close(f);
    free(path);
    return rc;
}

static int detect_dit(const kn_st_file *f, kn_family_ref *ref, kn_err *err) {
    const kn_dit_family *fam = NULL;
    const char *prefix;
    KN_TRY(kn_dit_detect(f, &fam, &prefix, err));
    *ref = (kn_family_ref){fam->name, fam->title, fam->text};
    return KN_OK;
}

static int detect_vae(const kn_st_file *f, kn_family_ref *ref, kn_err *err) {
    const kn_vae_family *fam = NULL;
    KN_TRY(kn_vae_detect(f, &fam, err));
    *ref = (kn_family_ref){fam->name, fam->title, NULL};
    return KN_OK;
}

static int validate_unet(kn_node_call *c) {
    kn_dtype dtype;
    if (weight_dtype(c, &dtype)) return c->err->code;
    return detect_file(c, "unet_name", "diffusion_models", detect_dit, NULL);
}

static int family_unet(kn_node_call *c, int output, kn_family_ref *out) {
    (void)output;
    return detect_file(c, "unet_name", "diffusion_models", detect_dit, out);
}

static int validate_vae(kn_node_call *c) {
    const char *name;
    if (kn_in_string(c, "vae_name", &name)) return c->err->code;
    if (strcmp(name, "pixel_space") == 0)
        return kn_node_fail(c, "vae_name", KN_ERR_UNSUPPORTED, "pixel_space is not supported");
    return detect_file(c, "vae_name", "vae", detect_vae, NULL);
}

/* The text-encoder files of inputs[0..n) with the loader's type; *ref (when not NULL) their family. */
static int detect_clip_files(kn_node_call *c, const char *const *inputs, int n, kn_family_ref *ref) {
    const char *type;
    char *path[2] = {NULL, NULL};
    kn_st_file *f[2] = {NULL, NULL};
    const kn_clip_family *fam = NULL;
    int rc = kn_in_string(c, "type", &type) ? c->err->code : KN_OK;
    for (int i = 0; !rc && i < n; i++) rc = resolve(c, inputs[i], "text_encoders", &path[i]);
    for (int i = 0; !rc && i < n; i++) rc = open_file(c, inputs[i], path[i], &f[i]);
    const char *name;
    if (!rc && kn_clip_detect((const kn_st_file **)f, n, type, &fam, c->err))
        rc = kn_node_fail(c, inputs[0], c->err->code, "%s: %s",
                          kn_in_string(c, inputs[0], &name) ? inputs[0] : name, c->err->msg);
    if (!rc && ref) *ref = (kn_family_ref){fam->name, fam->title, NULL};
    for (int i = 0; i < n; i++) {
        kn_st_close(f[i]);
        free(path[i]);
    }
    return rc;
}

static const char *const clip_inputs[] = {"clip_name"}, *const dual_clip_inputs[] = {"clip_name1", "clip_name2"};

static int validate_clip(kn_node_call *c) { return detect_clip_files(c, clip_inputs, 1, NULL); }
static int validate_dual_clip(kn_node_call *c) { return detect_clip_files(c, dual_clip_inputs, 2, NULL); }

static int family_clip(kn_node_call *c, int output, kn_family_ref *out) {
    (void)output;
    return detect_clip_files(c, clip_inputs, 1, out);
}

static int family_dual_clip(kn_node_call *c, int output, kn_family_ref *out) {
    (void)output;
    return detect_clip_files(c, dual_clip_inputs, 2, out);
}

/* A MODEL of the DiT of `path` (stored as `dtype`) with its family's default model sampling. */
static int load_model(kn_node_call *c, const char *input, const char *path, kn_dtype dtype, kn_model_obj **out) {
    kn_dit_weights *w = NULL;
    *out = NULL;
    int rc = load_dit(c, input, path, dtype, &w);
    if (!rc) rc = make_model(c, w, NULL, out);
    if (!rc && default_sampling(&(*out)->ms, w->dit->family, c->err)) rc = c->err->code;
    if (rc && *out) {
        kn_object_release(&(*out)->base);
        *out = NULL;
    }
    if (w) kn_object_release(&w->base);
    return rc;
}

static int unet_loader(kn_node_call *c) {
    char *path = NULL;
    kn_dtype dtype;
    kn_model_obj *m = NULL;
    if (weight_dtype(c, &dtype) || resolve(c, "unet_name", "diffusion_models", &path)) return c->err->code;
    int rc = load_model(c, "unet_name", path, dtype, &m);
    if (!rc) kn_out_object(c, 0, &m->base);
    free(path);
    return rc;
}

/* ModelSamplingAuraFlow (multiplier 1), ModelSamplingSD3 (1000): a MODEL
 * sharing the weights with ModelSamplingDiscreteFlow(shift, multiplier). */
static int model_sampling_flow(kn_node_call *c, double multiplier) {
    kn_object *in;
    double shift;
    if (kn_in_object(c, "model", "MODEL", &in) || kn_in_float(c, "shift", &shift)) return c->err->code;
    kn_model_obj *m = NULL;
    if (make_model(c, ((kn_model_obj *)in)->weights, (kn_model_obj *)in, &m)) return c->err->code;
    if (kn_model_sampling_flow(&m->ms, shift, multiplier, c->err)) {
        kn_object_release(&m->base);
        return kn_node_fail(c, "shift", c->err->code, "%s", c->err->msg);
    }
    kn_out_object(c, 0, &m->base);
    return KN_OK;
}

static int model_sampling_aura_flow(kn_node_call *c) { return model_sampling_flow(c, 1.0); }
static int model_sampling_sd3(kn_node_call *c) { return model_sampling_flow(c, 1000.0); }

static int model_sampling_flux(kn_node_call *c) {
    kn_object *in;
    double max_shift, base_shift;
    int64_t width, height;
    if (kn_in_object(c, "model", "MODEL", &in) || kn_in_float(c, "max_shift", &max_shift) ||
        kn_in_float(c, "base_shift", &base_shift) || kn_in_int(c, "width", &width) || kn_in_int(c, "height", &height))
        return c->err->code;
    kn_model_obj *m = NULL;
    if (make_model(c, ((kn_model_obj *)in)->weights, (kn_model_obj *)in, &m)) return c->err->code;
    if (kn_model_sampling_flux(&m->ms, kn_flux_mu(max_shift, base_shift, (int)width, (int)height), c->err)) {
        kn_object_release(&m->base);
        return c->err->code;
    }
    kn_out_object(c, 0, &m->base);
    return KN_OK;
}

/* ---- text encoders --------------------------------------------------------------- */

static void free_clip(kn_object *o) {
    kn_clip_obj *cl = (kn_clip_obj *)o;
    kn_clip_free(cl->clip);
    for (int i = 0; i < cl->n_files; i++) kn_st_close(cl->files[i]);
    free(cl);
}

static kn_clip_obj *clip_new(kn_node_call *c, const char *input) {
    kn_clip_obj *cl = calloc(1, sizeof *cl);
    if (!cl) kn_node_fail(c, input, KN_ERR_NOMEM, "out of memory");
    else kn_object_init(&cl->base, "CLIP", free_clip);
    return cl;
}

/* Detects the family of cl's open files for a loader `type`, loads it and
 * stores cl under key; cl is released on failure. */
static int clip_finish(kn_node_call *c, const char *input, const char *type, const kn_model_key *key, kn_clip_obj *cl,
                       kn_clip_obj **out) {
    const kn_clip_family *fam = NULL;
    int rc = KN_OK;
    if (kn_clip_detect((const kn_st_file **)cl->files, cl->n_files, type, &fam, c->err) ||
        fam->load(&cl->clip, (const kn_st_file *const *)cl->files, kn_models_tokenizer_dir(c->env->models), c->err))
        rc = kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    if (!rc) rc = kn_models_put(c->env->models, key, &cl->base, &clip_resident, c->err);
    if (rc) kn_object_release(&cl->base);
    else *out = cl;
    return rc;
}

/* The CLIP of the files named by inputs[0..n) for a loader `type`, from the store or loaded now. */
static int load_clip(kn_node_call *c, const char *const *inputs, int n, const char *type, kn_clip_obj **out) {
    char *path[2] = {NULL, NULL}, kind[64];
    kn_model_key key;
    kn_err e;
    int rc = KN_OK;
    /* the type picks between models sharing the same files, so it is part of what was loaded */
    snprintf(kind, sizeof kind, "clip:%s", type);
    for (int i = 0; !rc && i < n; i++) rc = resolve(c, inputs[i], "text_encoders", &path[i]);
    for (int i = 0; !rc && i < n; i++) {
        kn_err_clear(&e);
        if (i ? kn_model_key_add(&key, path[i], &e) : kn_model_key_of(&key, kind, path[i], &e))
            rc = kn_node_fail(c, inputs[i], e.code, "%s", e.msg);
    }
    if (!rc) *out = (kn_clip_obj *)kn_models_get(c->env->models, &key);
    kn_clip_obj *cl = NULL;
    if (!rc && !*out) kn_models_reserve(c->env->models, &key);
    if (!rc && !*out && !(cl = clip_new(c, inputs[0]))) rc = c->err->code;
    for (int i = 0; cl && !rc && i < n; i++) {
        rc = open_file(c, inputs[i], path[i], &cl->files[i]);
        cl->n_files += !rc;
        if (!rc) rc = check_finite(c, inputs[i], cl->files[i]);
    }
    if (cl && rc) kn_object_release(&cl->base);
    else if (cl) rc = clip_finish(c, inputs[0], type, &key, cl, out);
    for (int i = 0; i < n; i++) free(path[i]);
    return rc;
}

static int clip_loader(kn_node_call *c) {
    const char *type;
    kn_clip_obj *cl = NULL;
    if (kn_in_string(c, "type", &type) || load_clip(c, clip_inputs, 1, type, &cl)) return c->err->code;
    kn_out_object(c, 0, &cl->base);
    return KN_OK;
}

static int dual_clip_loader(kn_node_call *c) {
    const char *type;
    kn_clip_obj *cl = NULL;
    if (kn_in_string(c, "type", &type) || load_clip(c, dual_clip_inputs, 2, type, &cl)) return c->err->code;
    kn_out_object(c, 0, &cl->base);
    return KN_OK;
}

/* ---- VAE ---------------------------------------------------------------------------- */

static void free_vae(kn_object *o) {
    kn_vae_obj *v = (kn_vae_obj *)o;
    kn_vae_free(v->vae);
    kn_st_close(v->file);
    free(v);
}

/* The VAE of `path`, or of its part under `prefix` (a checkpoint's), from the
 * store or loaded now; *out NULL when that part holds no tensor. */
static int load_vae(kn_node_call *c, const char *input, const char *path, const char *prefix, kn_vae_obj **out) {
    kn_model_key key;
    char kind[80] = "vae";
    if (prefix) snprintf(kind, sizeof kind, "vae:%s", prefix);
    *out = NULL;
    if (store_key(c, input, kind, path, &key)) return c->err->code;
    if ((*out = (kn_vae_obj *)kn_models_get(c->env->models, &key))) return KN_OK;
    kn_models_reserve(c->env->models, &key);
    kn_st_file *f = NULL;
    if (open_part(c, input, path, prefix, &f)) return c->err->code;
    if (check_finite(c, input, f)) {
        kn_st_close(f);
        return c->err->code;
    }
    if (prefix && !kn_st_count(f)) {
        kn_st_close(f);
        return KN_OK;
    }
    kn_vae_obj *v = calloc(1, sizeof *v);
    if (!v) {
        kn_st_close(f);
        return kn_node_fail(c, input, KN_ERR_NOMEM, "out of memory");
    }
    kn_object_init(&v->base, "VAE", free_vae);
    v->file = f;
    int rc = kn_vae_load(&v->vae, v->file, c->err) ? kn_node_fail(c, input, c->err->code, "%s", c->err->msg) : KN_OK;
    if (!rc) rc = kn_models_put(c->env->models, &key, &v->base, &vae_resident, c->err);
    if (rc) kn_object_release(&v->base);
    else *out = v;
    return rc;
}

static int vae_loader(kn_node_call *c) {
    const char *name;
    char *path = NULL;
    if (kn_in_string(c, "vae_name", &name)) return c->err->code;
    if (strcmp(name, "pixel_space") == 0)
        return kn_node_fail(c, "vae_name", KN_ERR_UNSUPPORTED, "pixel_space is not supported");
    if (resolve(c, "vae_name", "vae", &path)) return c->err->code;
    kn_vae_obj *v = NULL;
    int rc = load_vae(c, "vae_name", path, NULL, &v);
    if (!rc) kn_out_object(c, 0, &v->base);
    free(path);
    return rc;
}

/* ---- checkpoints ------------------------------------------------------------------ */

_Static_assert(KN_CKPT_MAX_TE <= sizeof ((kn_clip_obj *)0)->files / sizeof(kn_st_file *),
               "a CLIP object holds every text encoder of a checkpoint");

/* The parts of checkpoint f that `layout` puts its text encoders in and that
 * hold tensors, in load order, into views[] (*n of them; close each). */
static int te_views(kn_node_call *c, kn_st_file *f, const kn_ckpt_layout *layout, kn_st_file **views, int *n) {
    kn_err e;
    *n = 0;
    for (int i = 0; i < layout->n_te; i++) {
        kn_err_clear(&e);
        if (kn_st_view(&views[*n], f, layout->te_prefix[i], &e)) return kn_node_fail(c, "ckpt_name", e.code, "%s", e.msg);
        if (kn_st_count(views[*n])) (*n)++;
        else kn_st_close(views[*n]);
    }
    return KN_OK;
}

/* The DiT family of checkpoint f and where its layout keeps the other parts. */
static int ckpt_layout(kn_node_call *c, const char *name, const kn_st_file *f, const kn_ckpt_layout **layout) {
    const kn_dit_family *fam = NULL;
    const char *prefix;
    if (kn_dit_detect(f, &fam, &prefix, c->err) || kn_dit_ckpt_layout(fam, layout, c->err))
        return kn_node_fail(c, "ckpt_name", c->err->code, "%s: %s", name, c->err->msg);
    return KN_OK;
}

/* The text encoders of checkpoint `path`, from the store or loaded now; *out
 * NULL when the checkpoint has none. */
static int load_ckpt_clip(kn_node_call *c, const char *path, const kn_ckpt_layout *layout, kn_clip_obj **out) {
    kn_model_key key;
    kn_st_file *f = NULL;
    kn_clip_obj *cl = NULL;
    *out = NULL;
    if (store_key(c, "ckpt_name", "clip:checkpoint", path, &key)) return c->err->code;
    if ((*out = (kn_clip_obj *)kn_models_get(c->env->models, &key))) return KN_OK;
    kn_models_reserve(c->env->models, &key);
    int rc = open_file(c, "ckpt_name", path, &f);
    if (!rc && !(cl = clip_new(c, "ckpt_name"))) rc = c->err->code;
    if (!rc) rc = te_views(c, f, layout, cl->files, &cl->n_files);
    for (int i = 0; !rc && i < cl->n_files; i++) rc = check_finite(c, "ckpt_name", cl->files[i]);
    kn_st_close(f); /* the views keep it */
    if (cl && (rc || !cl->n_files)) kn_object_release(&cl->base);
    else if (cl) rc = clip_finish(c, "ckpt_name", layout->clip_type, &key, cl, out);
    return rc;
}

/* A part the checkpoint lacks (no tensor under any of prefixes[0..n)): its
 * output is None, with ComfyUI's warning; a node taking it fails saying so. */
static void missing_part(kn_node_call *c, const char *name, int slot, const char *part, const char *const *prefixes,
                         int n) {
    char where[256] = "";
    for (int i = 0, k = 0; i < n && k < (int)sizeof where; i++)
        k += snprintf(where + k, sizeof where - (size_t)k, "%s%s*", i ? " or " : "", prefixes[i]);
    fprintf(stderr, "checkpoint %s holds no %s (no %s weights): output %s is None\n", name, part, where,
            c->cls->outputs[slot].type);
}

static int checkpoint_loader(kn_node_call *c) {
    const char *name;
    char *path = NULL;
    kn_model_obj *m = NULL;
    kn_clip_obj *cl = NULL;
    kn_vae_obj *v = NULL;
    const kn_ckpt_layout *layout = NULL;
    if (kn_in_string(c, "ckpt_name", &name) || resolve(c, "ckpt_name", "checkpoints", &path)) return c->err->code;
    int rc = load_model(c, "ckpt_name", path, AS_STORED, &m);
    if (!rc) rc = ckpt_layout(c, name, m->weights->file, &layout);
    if (!rc) rc = load_ckpt_clip(c, path, layout, &cl);
    if (!rc && !cl) missing_part(c, name, 1, "text encoder", layout->te_prefix, layout->n_te);
    if (!rc) rc = load_vae(c, "ckpt_name", path, layout->vae_prefix, &v);
    if (!rc && !v) missing_part(c, name, 2, "VAE", &layout->vae_prefix, 1);
    if (!rc) {
        kn_out_object(c, 0, &m->base);
        if (cl) kn_out_object(c, 1, &cl->base);
        if (v) kn_out_object(c, 2, &v->base);
    } else {
        if (m) kn_object_release(&m->base);
        if (cl) kn_object_release(&cl->base);
        if (v) kn_object_release(&v->base);
    }
    free(path);
    return rc;
}

/* The checkpoint's DiT, text encoders and VAE detected from its header
 * (validate hook); *dit and *clip, when not NULL, get the families of
 * outputs 0 and 1 (clip->name NULL when the file has no text encoders). */
static int detect_checkpoint(kn_node_call *c, kn_family_ref *dit, kn_family_ref *clip_ref) {
    const char *name;
    char *path = NULL;
    kn_st_file *f = NULL, *te[KN_CKPT_MAX_TE], *vae = NULL;
    const kn_ckpt_layout *layout = NULL;
    const kn_clip_family *clip = NULL;
    const kn_vae_family *vfam = NULL;
    kn_err e;
    int n = 0;
    int rc = kn_in_string(c, "ckpt_name", &name) ? c->err->code : resolve(c, "ckpt_name", "checkpoints", &path);
    if (!rc) rc = open_file(c, "ckpt_name", path, &f);
    if (!rc) rc = ckpt_layout(c, name, f, &layout);
    if (!rc && dit && detect_dit(f, dit, c->err)) rc = kn_node_fail(c, "ckpt_name", c->err->code, "%s: %s", name, c->err->msg);
    if (!rc) rc = te_views(c, f, layout, te, &n);
    if (!rc && n && kn_clip_detect((const kn_st_file **)te, n, layout->clip_type, &clip, c->err))
        rc = kn_node_fail(c, "ckpt_name", c->err->code, "%s: its text encoders: %s", name, c->err->msg);
    if (!rc && clip_ref) *clip_ref = (kn_family_ref){clip ? clip->name : NULL, clip ? clip->title : NULL, NULL};
    kn_err_clear(&e);
    if (!rc && kn_st_view(&vae, f, layout->vae_prefix, &e)) rc = kn_node_fail(c, "ckpt_name", e.code, "%s", e.msg);
    if (!rc && kn_st_count(vae) && kn_vae_detect(vae, &vfam, c->err))
        rc = kn_node_fail(c, "ckpt_name", c->err->code, "%s: its VAE: %s", name, c->err->msg);
    for (int i = 0; i < n; i++) kn_st_close(te[i]);
    kn_st_close(vae);
    kn_st_close(f);
    free(path);
    return rc;
}

static int validate_checkpoint(kn_node_call *c) { return detect_checkpoint(c, NULL, NULL); }

static int family_checkpoint(kn_node_call *c, int output, kn_family_ref *out) {
    kn_family_ref dit, clip;
    KN_TRY(detect_checkpoint(c, &dit, &clip));
    if (output == 0) *out = dit;
    else if (output == 1 && clip.name) *out = clip;
    else return kn_node_fail(c, "ckpt_name", KN_ERR_INVALID, "the checkpoint holds no text encoders: its CLIP is None");
    return KN_OK;
}

const kn_node_def kn_nodes_models[] = {
    {"CheckpointLoaderSimple", checkpoint_loader},
    {"UNETLoader", unet_loader},
    {"CLIPLoader", clip_loader},
    {"DualCLIPLoader", dual_clip_loader},
    {"VAELoader", vae_loader},
    {"ModelSamplingAuraFlow", model_sampling_aura_flow},
    {"ModelSamplingSD3", model_sampling_sd3},
    {"ModelSamplingFlux", model_sampling_flux},
    {NULL, NULL},
};

/* A loaded file replaced on disk re-runs its loader (nodes/changed.h). */
const kn_node_hooks kn_hooks_models[] = {
    {"CheckpointLoaderSimple", kn_changed_file_stamps, validate_checkpoint, family_checkpoint},
    {"UNETLoader", kn_changed_file_stamps, validate_unet, family_unet},
    {"CLIPLoader", kn_changed_file_stamps, validate_clip, family_clip},
    {"DualCLIPLoader", kn_changed_file_stamps, validate_dual_clip, family_dual_clip},
    {"VAELoader", kn_changed_file_stamps, validate_vae, NULL},
    {0},
};
