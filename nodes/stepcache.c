/* EasyCache and LazyCache (comfy_extras/nodes_easycache.py): MODEL options
 * the samplers read, for every family (pipelines/sampling/stepcache.h). */
#include "nodes/stepcache.h"

#include <stdlib.h>
#include <string.h>

static int same_shape(const kn_tensor *a, const kn_tensor *b) {
    if (!a->data || !b->data) return !a->data && !b->data;
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->ne[d] != b->ne[d]) return 0;
    return 1;
}

/* ComfyUI's can_concat_cond for Kiln's entries: the same conditioning keys
 * with the same shapes (the guidance value is a [B] tensor either way). */
static int concatable(const kn_cond_entry *a, const kn_cond_entry *b) {
    if (!same_shape(&a->t.cond, &b->t.cond) || !same_shape(&a->t.mask, &b->t.mask) ||
        !same_shape(&a->t.pooled, &b->t.pooled) || a->n_refs != b->n_refs)
        return 0;
    for (int r = 0; r < a->n_refs; r++)
        if (!same_shape(&a->refs[r]->samples, &b->refs[r]->samples)) return 0;
    return 1;
}

int kn_sampling_cache_start(kn_step_cache *c, const kn_model_obj *m, const kn_cond_obj *pos, const kn_cond_obj *neg,
                            kn_denoise_fn inner, void *inner_user, int *active, kn_err *err) {
    *active = m->step_cache.kind != KN_STEP_CACHE_OFF;
    if (!*active) return KN_OK;
    kn_step_cache_init(c, &m->step_cache, &m->ms, inner, inner_user);
    c->log = stderr;
    char line[160];
    kn_step_cache_banner(&m->step_cache, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    if (m->step_cache.kind != KN_STEP_CACHE_EASY) return KN_OK;
    const int n_pos = pos->n, n = pos->n + (neg ? neg->n : 0);
    unsigned char *batch = malloc((size_t)n);
    if (!batch) {
        kn_step_cache_free(c);
        *active = 0;
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    int lead = 0;
    for (int s = 0; s < n; s++) {
        const kn_cond_entry *e = s < n_pos ? &pos->e[s] : &neg->e[s - n_pos];
        batch[s] = (unsigned char)concatable(e, &pos->e[0]);
        if (batch[s]) lead = s; /* the batch runs in reverse order: its last entry comes first */
    }
    int rc = kn_easycache_layout(c, n, lead, batch, err);
    free(batch);
    if (rc) {
        kn_step_cache_free(c);
        *active = 0;
    }
    return rc;
}

void kn_sampling_cache_finish(kn_step_cache *c, int total_steps) {
    char line[160];
    kn_step_cache_summary(c, total_steps, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    kn_step_cache_free(c);
}

/* ---- the nodes ----------------------------------------------------------------------------- */

static int step_cache_node(kn_node_call *c, kn_step_cache_kind kind) {
    kn_object *in;
    kn_step_cache_opts o = {.kind = kind};
    bool verbose;
    if (kn_in_object(c, "model", "MODEL", &in) || kn_in_float(c, "reuse_threshold", &o.reuse_threshold) ||
        kn_in_float(c, "start_percent", &o.start_percent) || kn_in_float(c, "end_percent", &o.end_percent) ||
        kn_in_bool(c, "verbose", &verbose))
        return c->err->code;
    o.verbose = verbose;
    kn_model_obj *m = kn_model_clone((const kn_model_obj *)in, c->err);
    if (!m) return kn_node_fail(c, NULL, c->err->code, "%s", c->err->msg);
    m->step_cache = o;
    kn_out_object(c, 0, &m->base);
    return KN_OK;
}

static int easy_cache(kn_node_call *c) { return step_cache_node(c, KN_STEP_CACHE_EASY); }
static int lazy_cache(kn_node_call *c) { return step_cache_node(c, KN_STEP_CACHE_LAZY); }

const kn_node_def kn_nodes_stepcache[] = {
    {"EasyCache", easy_cache},
    {"LazyCache", lazy_cache},
    {NULL, NULL},
};
