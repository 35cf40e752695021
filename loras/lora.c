/* The weight table and applying a LoRA stack to it (merge or runtime
 * adapters, per tensor and entry): see lora.h for the design. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loras/lora_impl.h"

/* Elements per parallel chunk of the widen / round passes. */
#define CHUNK ((int64_t)1 << 16)

/* ---- the weight table ------------------------------------------------------------ */

int kn_lora_model_new(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_err *err) {
    if (!(*out = calloc(1, sizeof **out))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    (*out)->aliases = aliases;
    (*out)->n_aliases = n_aliases;
    (*out)->runtime = 1;
    return KN_OK;
}

int kn_lora_model_add(kn_lora_model *m, const char *key, kn_tensor *slot, kn_adapter_list *run, kn_err *err) {
    if (!kn_tensor_is_contiguous(slot) || slot->device != KN_DEV_CPU || !kn_dtype_is_float(slot->dtype))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "lora: weight '%s' is not a contiguous CPU float tensor", key);
    if (run && (slot->ndim != 2 || run->n))
        return kn_fail(err, KN_ERR_INVALID, "lora: '%s' takes runtime adapters but is not a 2-D weight with an empty list",
                       key);
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 256;
        target *t = realloc(m->t, (size_t)cap * sizeof *t);
        if (!t) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
        m->t = t;
        m->cap = cap;
    }
    target *t = &m->t[m->n];
    memset(t, 0, sizeof *t);
    if (!(t->key = strdup(key))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    t->slot = slot;
    t->orig = *slot;
    t->run = run;
    m->n++;
    m->stems_dirty = 1;
    return KN_OK;
}

int kn_lora_model_from_table(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_weight_table *table,
                             kn_err *err) {
    KN_TRY(kn_lora_model_new(out, aliases, n_aliases, err));
    for (int i = 0; i < table->n; i++) {
        kn_weight_slot *s = &table->slot[i];
        if (kn_lora_model_add(*out, s->key, s->t, s->linear ? &s->run : NULL, err)) {
            kn_lora_model_free(*out);
            *out = NULL;
            return err->code;
        }
    }
    return KN_OK;
}

static void target_restore(target *t) {
    *t->slot = t->orig;
    free(t->buf);
    t->buf = NULL;
    t->buf_bytes = 0;
    free(t->sig);
    t->sig = NULL;
    t->n_sig = 0;
}

/* Empties the slot's adapter list: the model reads the weight alone again. */
static void target_detach(target *t) {
    if (t->run) {
        t->run->ad = NULL;
        t->run->n = 0;
    }
    free(t->ad);
    t->ad = NULL;
    t->n_ad = 0;
    free(t->rsig);
    t->rsig = NULL;
    t->n_rsig = 0;
}

void kn_lora_model_free(kn_lora_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        target_restore(&m->t[i]);
        target_detach(&m->t[i]);
        free(m->t[i].key);
    }
    free(m->t);
    kn_lora_keys_free(m);
    free(m);
}

void kn_lora_model_restore(kn_lora_model *m) {
    for (int i = 0; i < m->n; i++) {
        target_restore(&m->t[i]);
        target_detach(&m->t[i]);
    }
}

size_t kn_lora_model_patched_bytes(const kn_lora_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n; i++) n += m->t[i].buf_bytes;
    return n;
}

void kn_lora_model_set_runtime(kn_lora_model *m, int on) {
    if (m->runtime == !!on) return;
    kn_lora_model_restore(m); /* the next apply rebuilds the stack in the new mode */
    m->runtime = !!on;
}

const kn_tensor *kn_lora_model_slot(const kn_lora_model *m, const char *key) {
    int i = kn_lora_find_target(m, key);
    return i < 0 ? NULL : m->t[i].slot;
}

/* ---- applying a stack ----------------------------------------------------------------- */

static kn_dtype patched_dtype(kn_dtype base) {
    return base == KN_F32 || base == KN_F16 || base == KN_BF16 ? base : KN_F32;
}

/* w [cur0, cur1] zero-padded in place to [to0, to1] (w holds to0 * to1). */
static void pad(float *w, const int64_t cur[2], const int64_t to[2]) {
    for (int64_t r = cur[0] - 1; r >= 0; r--) {
        memmove(w + r * to[1], w + r * cur[1], (size_t)cur[1] * sizeof *w);
        memset(w + r * to[1] + cur[1], 0, (size_t)(to[1] - cur[1]) * sizeof *w);
    }
    memset(w + cur[0] * to[1], 0, (size_t)((to[0] - cur[0]) * to[1]) * sizeof *w);
}

/* Recompute target ti from its original view plus the patches of the listed
 * stack entries, in order. A reshape_weight patch widens the weight first,
 * so the buffer takes the widest shape of the list. */
static int recompute(kn_lora_work *wk, kn_lora_model *m, int ti, const kn_lora_use *stack, const int *which,
                     int n_which, float **f32, size_t *f32_n, kn_err *err) {
    target *t = &m->t[ti];
    kn_dtype dt = patched_dtype(t->orig.dtype);
    int64_t cur[2] = {t->orig.ne[0], t->orig.ndim == 2 ? t->orig.ne[1] : 1}, full[2] = {cur[0], cur[1]};
    for (int k = 0; k < n_which; k++) {
        int from, to;
        kn_lora_patches_of(stack[which[k]].lora, ti, &from, &to);
        for (int j = from; j < to; j++)
            for (int d = 0; d < 2; d++)
                if (stack[which[k]].lora->p[j].shape[d] > full[d]) full[d] = stack[which[k]].lora->p[j].shape[d];
    }
    int64_t n = full[0] * full[1];
    size_t bytes = (size_t)n * kn_dtype_size(dt);
    /* the slot goes back to the file view first: a failure below leaves it there */
    *t->slot = t->orig;
    if (t->buf_bytes != bytes) {
        free(t->buf);
        t->buf_bytes = 0;
        if (!(t->buf = malloc(bytes ? bytes : 1))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory for '%s'", t->key);
        t->buf_bytes = bytes;
    }
    float *w = (float *)t->buf;
    if (dt != KN_F32) {
        KN_TRY(kn_lora_grow((void **)f32, f32_n, (size_t)n, sizeof(float), err));
        w = *f32;
    }
    int64_t n0 = cur[0] * cur[1];
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n0; c += CHUNK)
        kn_to_f32(w + c, (const char *)t->orig.data + c * (int64_t)kn_dtype_size(t->orig.dtype), t->orig.dtype,
                  (size_t)(n0 - c < CHUNK ? n0 - c : CHUNK), t->orig.scale);
    for (int k = 0; k < n_which; k++) {
        const kn_lora *l = stack[which[k]].lora;
        int from, to;
        kn_lora_patches_of(l, ti, &from, &to);
        for (int j = from; j < to; j++) {
            const patch *p = &l->p[j];
            if (p->shape[0] < cur[0] || p->shape[1] < cur[1])
                return kn_fail(err, KN_ERR_SHAPE,
                               "lora '%s' patches '%s' as [%lld, %lld], but a LoRA before it widened it to "
                               "[%lld, %lld]",
                               l->name, t->key, (long long)p->shape[0], (long long)p->shape[1], (long long)cur[0],
                               (long long)cur[1]);
            if (p->shape[0] > cur[0] || p->shape[1] > cur[1]) {
                pad(w, cur, p->shape);
                memcpy(cur, p->shape, sizeof cur);
            }
            if (kn_lora_apply_patch(wk, p, w, cur[1], stack[which[k]].strength, err))
                return kn_err_wrap(err, "lora '%s' on '%s'", l->name, t->key);
        }
    }
    if (dt != KN_F32) {
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < n; c += CHUNK)
            kn_from_f32((char *)t->buf + c * (int64_t)kn_dtype_size(dt), dt, w + c,
                        (size_t)(n - c < CHUNK ? n - c : CHUNK));
    }
    kn_tensor v = kn_tensor_make(dt, KN_DEV_CPU, t->buf, t->orig.ndim, t->orig.ndim == 2 ? cur : t->orig.ne);
    v.name = t->orig.name;
    *t->slot = v;
    return KN_OK;
}

/* How stack entry l patches target ti: *plain when every patch can stay a
 * runtime term y += s B(A x) (a plain LoRA on the weight as stored: no DoRA,
 * no reshape), *reads when one depends on the weight it is applied to
 * (DoRA, OFT, set), so a plain LoRA before it must be merged. */
static void entry_kind(const kn_lora *l, int ti, int *plain, int *reads) {
    const target *t = &l->model->t[ti];
    int from, to;
    kn_lora_patches_of(l, ti, &from, &to);
    *plain = 1;
    *reads = 0;
    for (int j = from; j < to; j++) {
        const patch *p = &l->p[j];
        *plain &= p->kind == P_LORA && !p->dora && p->shape[0] == t->orig.ne[0] && p->shape[1] == t->orig.ne[1];
        *reads |= p->dora || p->kind == P_OFT || p->kind == P_SET;
    }
}

/* Points target ti's adapter list at the listed plain LoRAs (none: detach):
 * one adapter per patch and segment. */
static int attach(target *t, int ti, const kn_lora_use *stack, const int *which, const applied *sig, int n,
                  kn_err *err) {
    target_detach(t);
    if (!n) return KN_OK;
    int n_ad = 0;
    segment seg[2];
    for (int k = 0; k < n; k++) {
        const kn_lora *l = stack[which[k]].lora;
        int from, to;
        kn_lora_patches_of(l, ti, &from, &to);
        for (int j = from; j < to; j++) n_ad += kn_lora_segments(&l->p[j].at, seg);
    }
    if (!(t->ad = malloc((size_t)n_ad * sizeof *t->ad)) || !(t->rsig = malloc((size_t)n * sizeof *t->rsig))) {
        target_detach(t);
        return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    }
    for (int k = 0; k < n; k++) {
        const kn_lora *l = stack[which[k]].lora;
        int from, to;
        kn_lora_patches_of(l, ti, &from, &to);
        for (int j = from; j < to; j++) {
            const patch *p = &l->p[j];
            float scale = (float)(stack[which[k]].strength * p->scale);
            int ns = kn_lora_segments(&p->at, seg);
            for (int s = 0; s < ns; s++)
                t->ad[t->n_ad++] = (kn_lora_adapter){p->f[1], &p->up_rows[s], scale, seg[s].dst};
        }
    }
    memcpy(t->rsig, sig, (size_t)n * sizeof *sig);
    t->n_rsig = n;
    t->run->ad = t->ad;
    t->run->n = t->n_ad;
    return KN_OK;
}

static int same_sig(const applied *a, int na, const applied *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

int kn_lora_model_apply(kn_lora_model *m, const kn_lora_use *stack, int n, kn_lora_apply_stats *stats,
                        kn_err *err) {
    kn_lora_apply_stats st = {0};
    for (int k = 0; k < n; k++)
        if (!stack[k].lora || stack[k].lora->model != m || !isfinite(stack[k].strength))
            return kn_fail(err, KN_ERR_INVALID, "lora: stack entry %d is not a LoRA loaded for this model with a finite strength", k);
    kn_lora_work wk = {0};
    /* per target: the entries merged into its buffer, then those kept as runtime adapters */
    int *which = malloc(((size_t)2 * n + 1) * sizeof *which), *rwhich = which ? which + n : NULL;
    applied *sig = malloc(((size_t)2 * n + 1) * sizeof *sig), *rsig = sig ? sig + n : NULL;
    float *f32 = NULL;
    size_t f32_n = 0;
    int rc = which && sig ? KN_OK : kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    for (int i = 0; !rc && i < m->n; i++) {
        target *t = &m->t[i];
        int runtime = m->runtime && t->run, cut = -1, plain = 0, reads;
        for (int k = 0; runtime && k < n; k++) {
            if (stack[k].lora->first[i] < 0) continue;
            entry_kind(stack[k].lora, i, &plain, &reads);
            if (reads) cut = k;
        }
        int nw = 0, nr = 0;
        for (int k = 0; k < n; k++) {
            if (stack[k].lora->first[i] < 0) continue;
            applied a = {stack[k].lora->serial, stack[k].strength};
            if (runtime && k > cut) entry_kind(stack[k].lora, i, &plain, &reads);
            if (runtime && k > cut && plain) {
                rwhich[nr] = k;
                rsig[nr++] = a;
            } else {
                which[nw] = k;
                sig[nw++] = a;
            }
        }
        int same = same_sig(sig, nw, t->sig, t->n_sig), rsame = same_sig(rsig, nr, t->rsig, t->n_rsig);
        if (!rsame) {
            if ((rc = attach(t, i, stack, rwhich, rsig, nr, err))) break;
            if (nr) st.attached++;
            else st.detached++;
        }
        if (same) {
            st.kept += (nw > 0 || nr > 0) && rsame;
            continue;
        }
        if (nw == 0) {
            target_restore(t);
            st.restored++;
            continue;
        }
        applied *keep = malloc((size_t)nw * sizeof *keep);
        if (!keep) {
            rc = kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
            break;
        }
        memcpy(keep, sig, (size_t)nw * sizeof *keep);
        free(t->sig);
        t->sig = NULL;
        t->n_sig = 0;
        if ((rc = recompute(&wk, m, i, stack, which, nw, &f32, &f32_n, err))) {
            free(keep);
            target_restore(t);
            break;
        }
        t->sig = keep;
        t->n_sig = nw;
        st.recomputed++;
    }
    kn_lora_work_free(&wk);
    free(f32), free(which), free(sig);
    if (stats) *stats = st;
    return rc;
}

int kn_lora_model_weight(const kn_lora_model *m, const char *key, kn_tensor *out, kn_err *err) {
    int i = kn_lora_find_target(m, key);
    if (i < 0) return kn_fail(err, KN_ERR_NOT_FOUND, "lora: no weight '%s' in the model's table", key);
    const target *t = &m->t[i];
    const kn_tensor *s = t->slot;
    int64_t n = kn_tensor_numel(s), I = s->ndim == 2 ? s->ne[1] : 1;
    float *w = malloc((size_t)(n ? n : 1) * sizeof *w);
    if (!w) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory for '%s'", key);
    if (kn_tensor_new(out, patched_dtype(t->orig.dtype), KN_DEV_CPU, s->ndim, s->ne, err)) {
        free(w);
        return err->code;
    }
    kn_to_f32(w, s->data, s->dtype, (size_t)n, s->scale);
    /* the same f32 sum and single rounding as a merge of these adapters */
    int rc = KN_OK;
    for (int k = 0; !rc && k < t->n_ad; k++) {
        const kn_lora_adapter *a = &t->ad[k];
        float *up = kn_lora_widen(a->up, err), *down = up ? kn_lora_widen(a->down, err) : NULL;
        if (down) kn_lora_lowrank_axpy(w + a->row0 * I, up, down, a->down->ne[0], 0, a->up->ne[0], I, a->scale);
        else rc = err->code;
        free(up), free(down);
    }
    if (!rc) {
        kn_from_f32(out->data, out->dtype, w, (size_t)n);
        out->name = t->orig.name;
    } else {
        kn_tensor_free(out);
    }
    free(w);
    return rc;
}
