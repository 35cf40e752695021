/* Loader and model-sampling nodes: UNETLoader, CLIPLoader, VAELoader,
 * ModelSamplingAuraFlow / SD3 / Flux.
 *
 * Loaders detect the file's family (pipelines/family.h) and load through it;
 * nothing here names a family. Loaded files go to the kn_models store keyed
 * by what was loaded and the resolved path, so a file is mapped and bound
 * once per process however many prompts and workflow files use it. MODEL
 * objects are cheap wrappers (weights + model sampling) made per node run. */
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

/* ---- diffusion models ---------------------------------------------------------- */

static void free_dit_weights(kn_object *o) {
    kn_dit_weights *w = (kn_dit_weights *)o;
    kn_lora_model_free(w->lora_table); /* puts the file views back first */
    kn_dit_free(w->dit);
    kn_st_close(w->file);
    free(w);
}

static int load_dit(kn_node_call *c, const char *input, const char *path, kn_dit_weights **out) {
    kn_model_key key;
    if (store_key(c, input, "dit", path, &key)) return c->err->code;
    if ((*out = (kn_dit_weights *)kn_models_get(c->env->models, &key))) return KN_OK;
    kn_dit_weights *w = calloc(1, sizeof *w);
    if (!w) return kn_node_fail(c, input, KN_ERR_NOMEM, "out of memory");
    kn_object_init(&w->base, "DIT_WEIGHTS", free_dit_weights);
    int rc = open_file(c, input, path, &w->file);
    if (!rc && kn_dit_load(&w->dit, w->file, c->err)) rc = kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    if (!rc) rc = kn_models_put(c->env->models, &key, &w->base, c->err);
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

/* A new MODEL over `weights` keeping the LoRA patch list of `from` (NULL:
 * none), as ComfyUI's model.clone() does; the caller sets its model sampling. */
static int make_model(kn_node_call *c, kn_dit_weights *weights, const kn_model_obj *from, kn_model_obj **out) {
    *out = kn_model_new(weights);
    if (!*out) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (from) (*out)->loras = kn_object_retain(from->loras);
    return KN_OK;
}

/* Also UNETLoader's validate hook, so the prompt is refused before it queues. */
static int check_weight_dtype(kn_node_call *c) {
    const char *dtype;
    if (kn_in_string(c, "weight_dtype", &dtype)) return c->err->code;
    /* Weights are used in their stored dtype; recasting to fp8 is not done here. */
    if (strcmp(dtype, "default") != 0)
        return kn_node_fail(c, "weight_dtype", KN_ERR_UNSUPPORTED, "'%s' is not supported; use 'default'", dtype);
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
    if (check_weight_dtype(c)) return c->err->code;
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

static int unet_loader(kn_node_call *c) {
    char *path = NULL;
    if (check_weight_dtype(c)) return c->err->code;
    if (resolve(c, "unet_name", "diffusion_models", &path)) return c->err->code;
    kn_dit_weights *w = NULL;
    kn_model_obj *m = NULL;
    int rc = load_dit(c, "unet_name", path, &w);
    if (!rc) rc = make_model(c, w, NULL, &m);
    if (!rc && default_sampling(&m->ms, w->dit->family, c->err)) rc = c->err->code;
    if (!rc) kn_out_object(c, 0, &m->base);
    else if (m) kn_object_release(&m->base);
    if (w) kn_object_release(&w->base);
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
    if (!rc && !*out && !(cl = calloc(1, sizeof *cl))) rc = kn_node_fail(c, inputs[0], KN_ERR_NOMEM, "out of memory");
    if (cl) kn_object_init(&cl->base, "CLIP", free_clip);
    for (int i = 0; cl && !rc && i < n; i++) {
        rc = open_file(c, inputs[i], path[i], &cl->files[i]);
        cl->n_files += !rc;
    }
    const kn_clip_family *fam = NULL;
    if (cl && !rc && kn_clip_detect((const kn_st_file **)cl->files, n, type, &fam, c->err))
        rc = kn_node_fail(c, inputs[0], c->err->code, "%s", c->err->msg);
    if (cl && !rc && fam->load(&cl->clip, (const kn_st_file *const *)cl->files, kn_models_tokenizer_dir(c->env->models),
                               c->err))
        rc = kn_node_fail(c, inputs[0], c->err->code, "%s", c->err->msg);
    if (cl && !rc) rc = kn_models_put(c->env->models, &key, &cl->base, c->err);
    if (cl && rc) kn_object_release(&cl->base);
    else if (cl) *out = cl;
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

static int vae_loader(kn_node_call *c) {
    const char *name;
    char *path = NULL;
    if (kn_in_string(c, "vae_name", &name)) return c->err->code;
    if (strcmp(name, "pixel_space") == 0)
        return kn_node_fail(c, "vae_name", KN_ERR_UNSUPPORTED, "pixel_space is not supported");
    if (resolve(c, "vae_name", "vae", &path)) return c->err->code;
    kn_model_key key;
    int rc = store_key(c, "vae_name", "vae", path, &key);
    kn_vae_obj *v = rc ? NULL : (kn_vae_obj *)kn_models_get(c->env->models, &key);
    if (!rc && !v) {
        if (!(v = calloc(1, sizeof *v))) rc = kn_node_fail(c, "vae_name", KN_ERR_NOMEM, "out of memory");
        else kn_object_init(&v->base, "VAE", free_vae);
        if (!rc) rc = open_file(c, "vae_name", path, &v->file);
        if (!rc && kn_vae_load(&v->vae, v->file, c->err))
            rc = kn_node_fail(c, "vae_name", c->err->code, "%s", c->err->msg);
        if (!rc) rc = kn_models_put(c->env->models, &key, &v->base, c->err);
        if (rc && v) {
            if (v->file) kn_object_release(&v->base);
            else free(v);
            v = NULL;
        }
    }
    if (!rc) kn_out_object(c, 0, &v->base);
    free(path);
    return rc;
}

const kn_node_def kn_nodes_models[] = {
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
    {"UNETLoader", kn_changed_file_stamps, validate_unet, family_unet},
    {"CLIPLoader", kn_changed_file_stamps, validate_clip, family_clip},
    {"DualCLIPLoader", kn_changed_file_stamps, validate_dual_clip, family_dual_clip},
    {"VAELoader", kn_changed_file_stamps, validate_vae, NULL},
    {0},
};
