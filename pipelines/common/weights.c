/* Weight binding and weight tables: see weights.h. */
#include "pipelines/common/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kn_weight_table_free(kn_weight_table *t) {
    for (int i = 0; i < t->n; i++) free(t->slot[i].key);
    free(t->slot);
    free(t->converted);
    memset(t, 0, sizeof *t);
}

#define CONVERT_ALIGN 64   /* each copy starts on a cache line, as the GEMM's panels expect */
#define CONVERT_CHUNK 4096 /* elements widened at a time, per thread */

/* A slot needs a copy: its tensor is of another dtype and not empty. */
static int needs_copy(const kn_weight_slot *s, kn_dtype dtype) {
    return s->t->dtype != dtype && kn_tensor_numel(s->t) > 0;
}

int kn_weight_table_convert(kn_weight_table *t, kn_dtype dtype, kn_err *err) {
    if (!kn_dtype_is_float(dtype) || t->converted)
        return kn_fail(err, KN_ERR_INVALID, "weights can be stored anew once, in a float dtype (asked: %s)",
                       kn_dtype_name(dtype));
    size_t total = 0;
    for (int i = 0; i < t->n; i++) {
        const kn_tensor *w = t->slot[i].t;
        if (!needs_copy(&t->slot[i], dtype)) continue;
        if (w->device != KN_DEV_CPU || !kn_tensor_is_contiguous(w) || !kn_dtype_is_float(w->dtype))
            return kn_fail(err, KN_ERR_INVALID, "weight %s: only contiguous float CPU weights can be stored as %s",
                           t->slot[i].key, kn_dtype_name(dtype));
        size_t bytes;
        if (kn_mul_size((size_t)kn_tensor_numel(w), kn_dtype_size(dtype), &bytes) ||
            kn_add_size(bytes, CONVERT_ALIGN - 1, &bytes) || kn_add_size(total, bytes & ~(size_t)(CONVERT_ALIGN - 1), &total))
            return kn_fail(err, KN_ERR_NOMEM, "weights stored as %s overflow the address space", kn_dtype_name(dtype));
    }
    if (!total) return KN_OK;
    char *buf = aligned_alloc(CONVERT_ALIGN, total);
    if (!buf) return kn_fail(err, KN_ERR_NOMEM, "out of memory storing %zu bytes of weights as %s", total,
                             kn_dtype_name(dtype));
    size_t off = 0, esize = kn_dtype_size(dtype);
    for (int i = 0; i < t->n; i++) {
        kn_tensor *w = t->slot[i].t;
        if (!needs_copy(&t->slot[i], dtype)) continue;
        size_t n = (size_t)kn_tensor_numel(w), src_size = kn_dtype_size(w->dtype);
        const char *src = w->data;
        char *dst = buf + off;
#pragma omp parallel for schedule(static)
        for (size_t chunk = 0; chunk < (n + CONVERT_CHUNK - 1) / CONVERT_CHUNK; chunk++) {
            float wide[CONVERT_CHUNK];
            size_t at = chunk * CONVERT_CHUNK, len = n - at < CONVERT_CHUNK ? n - at : CONVERT_CHUNK;
            kn_to_f32(wide, src + at * src_size, w->dtype, len, w->scale);
            kn_from_f32(dst + at * esize, dtype, wide, len);
        }
        kn_tensor copy = kn_tensor_make(dtype, KN_DEV_CPU, dst, w->ndim, w->ne);
        copy.name = w->name;
        *w = copy;
        off += (n * esize + CONVERT_ALIGN - 1) & ~(size_t)(CONVERT_ALIGN - 1);
    }
    t->converted = buf;
    t->converted_bytes = total;
    return KN_OK;
}

kn_weight_slot *kn_weight_table_find(const kn_weight_table *t, const char *key) {
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->slot[i].key, key) == 0) return &t->slot[i];
    return NULL;
}

int kn_lin_forward(kn_ctx *ctx, const kn_weight_table *t, kn_tensor *y, const kn_tensor *x, const kn_lin *l) {
    const kn_adapter_list *run = &t->slot[l->slot].run;
    return kn_linear_lora(ctx, y, x, &l->w, l->b.data ? &l->b : NULL, run->ad, run->n);
}

int kn_embedding(const kn_tensor *table, const kn_tensor *ids, kn_tensor *out, kn_err *err) {
    const int64_t *id = ids->data;
    const int64_t vocab = table->ne[0], D = table->ne[1], n = kn_tensor_numel(ids);
    const char *rows = table->data;
    const size_t row_bytes = (size_t)table->st[0] * kn_dtype_size(table->dtype);
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) {
        if (id[i] < 0 || id[i] >= vocab)
            return kn_fail(err, KN_ERR_INVALID, "token id %lld at position %lld is outside the vocabulary [0, %lld)",
                           (long long)id[i], (long long)i, (long long)vocab);
        kn_to_f32(o + i * D, rows + (size_t)id[i] * row_bytes, table->dtype, (size_t)D, table->scale);
    }
    return KN_OK;
}

static int add_slot(kn_weight_binder *b, const char *key, kn_tensor *t, int linear, int *id) {
    kn_weight_table *tab = b->table;
    if (tab->n == tab->cap) {
        int cap = tab->cap ? 2 * tab->cap : 64;
        kn_weight_slot *s = realloc(tab->slot, (size_t)cap * sizeof *s);
        if (!s) return kn_fail(b->err, KN_ERR_NOMEM, "%s: out of memory for the weight table", b->what);
        tab->slot = s;
        tab->cap = cap;
    }
    char *k = strdup(key);
    if (!k) return kn_fail(b->err, KN_ERR_NOMEM, "%s: out of memory for the weight table", b->what);
    tab->slot[tab->n] = (kn_weight_slot){k, t, linear, {NULL, 0}};
    if (id) *id = tab->n;
    tab->n++;
    return KN_OK;
}

/* Binds prefix + key into *t with the expected shape; absent + optional leaves *t zeroed. */
static int bind_tensor(kn_weight_binder *b, const char *key, int ndim, const int *dims, int optional, kn_tensor *t,
                       int linear, int *id) {
    char name[512];
    if ((size_t)snprintf(name, sizeof name, "%s%s", b->prefix, key) >= sizeof name)
        return kn_fail(b->err, KN_ERR_INVALID, "%s: weight name '%s%s' is too long", b->what, b->prefix, key);
    memset(t, 0, sizeof *t);
    if (optional && !kn_st_find(b->f, name)) return KN_OK;
    KN_TRY(kn_st_get(b->f, name, t, b->err));
    if (!kn_dtype_is_float(t->dtype))
        return kn_fail(b->err, KN_ERR_SHAPE, "%s: %s: weight %s is %s, expected a float dtype", kn_st_path(b->f),
                       b->what, name, kn_dtype_name(t->dtype));
    int64_t ne[5];
    for (int d = 0; d < ndim; d++) ne[d] = b->sizes[dims[d]];
    if (kn_tensor_expect(t, name, ndim, ne, b->err)) return kn_err_wrap(b->err, "%s: %s", kn_st_path(b->f), b->what);
    return add_slot(b, key, t, linear, id);
}

int kn_weights_bind(kn_weight_binder *b, void *base, const char *sub, const kn_weight_spec *specs, int n) {
    char key[512];
    for (int i = 0; i < n; i++) {
        const kn_weight_spec *s = &specs[i];
        int optional = (s->flags & KN_W_OPTIONAL) != 0;
        void *field = (char *)base + s->offset;
        if (s->kind == KN_W_TENSOR) {
            snprintf(key, sizeof key, "%s%s", sub, s->key);
            KN_TRY(bind_tensor(b, key, s->ndim, s->dims, optional, field, 0, NULL));
            continue;
        }
        kn_lin *l = field;
        snprintf(key, sizeof key, "%s%s.weight", sub, s->key);
        KN_TRY(bind_tensor(b, key, 2, s->dims, optional, &l->w, 1, &l->slot));
        memset(&l->b, 0, sizeof l->b);
        if (!(s->flags & KN_W_NO_BIAS) && l->w.data) {
            snprintf(key, sizeof key, "%s%s.bias", sub, s->key);
            KN_TRY(bind_tensor(b, key, 1, s->dims, 0, &l->b, 0, NULL));
        }
    }
    return KN_OK;
}

int kn_weights_has_prefix(const kn_st_file *f, const char *prefix) {
    size_t len = strlen(prefix);
    for (int i = 0; i < kn_st_count(f); i++)
        if (strncmp(kn_st_at(f, i)->name, prefix, len) == 0) return 1;
    return 0;
}

int kn_weights_dim(const kn_st_file *f, const char *prefix, const char *key, int d, int64_t *out, kn_err *err) {
    char name[512];
    kn_tensor t;
    snprintf(name, sizeof name, "%s%s", prefix, key);
    KN_TRY(kn_st_get(f, name, &t, err));
    if (d >= t.ndim) return kn_fail(err, KN_ERR_SHAPE, "%s: '%s' has %d dims", kn_st_path(f), name, t.ndim);
    *out = t.ne[d];
    return KN_OK;
}

int kn_weights_count(const kn_st_file *f, const char *prefix, const char *stem, int64_t *out, kn_err *err) {
    char full[512];
    int len = snprintf(full, sizeof full, "%s%s", prefix, stem);
    if (len >= (int)sizeof full) return kn_fail(err, KN_ERR_INVALID, "layer stem '%s%s' is too long", prefix, stem);
    int64_t n = 0;
    for (int i = 0; i < kn_st_count(f); i++) {
        const char *name = kn_st_at(f, i)->name;
        if (strncmp(name, full, (size_t)len) != 0) continue;
        char *end;
        long long idx = strtoll(name + len, &end, 10);
        if (end == name + len || *end != '.' || idx < 0 || idx >= kn_st_count(f))
            return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s' has no valid layer index", kn_st_path(f), name);
        if (idx + 1 > n) n = idx + 1;
    }
    *out = n;
    return KN_OK;
}
