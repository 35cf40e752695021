#include "kernels/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/device.h"

kn_tensor kn_tensor_make(kn_dtype dtype, kn_device dev, void *data, int ndim, const int64_t *ne) {
    kn_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.device = dev;
    t.ndim = ndim;
    t.data = data;
    t.scale = 1.0f;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.ne[i] = ne[i];
        t.st[i] = s;
        s *= ne[i];
    }
    return t;
}

static int checked_nbytes(kn_dtype dtype, int ndim, const int64_t *ne, size_t *out) {
    size_t n = kn_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (ne[i] < 0 || kn_mul_size(n, (size_t)ne[i], &n)) return 1;
    }
    *out = n;
    return 0;
}

int kn_tensor_new(kn_tensor *t, kn_dtype dtype, kn_device dev, int ndim, const int64_t *ne, kn_err *err) {
    size_t bytes;
    if (ndim < 0 || ndim > KN_MAX_DIMS || checked_nbytes(dtype, ndim, ne, &bytes))
        return kn_fail(err, KN_ERR_NOMEM, "tensor size overflows (ndim %d)", ndim);
    void *p = kn_device_alloc(dev, bytes ? bytes : 1, err);
    if (!p) return err->code;
    *t = kn_tensor_make(dtype, dev, p, ndim, ne);
    return KN_OK;
}

void kn_tensor_free(kn_tensor *t) {
    if (!t || !t->data) return;
    kn_device_free(t->device, t->data);
    t->data = NULL;
}

int64_t kn_tensor_numel(const kn_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

size_t kn_tensor_nbytes(const kn_tensor *t) { return (size_t)kn_tensor_numel(t) * kn_dtype_size(t->dtype); }

int kn_tensor_is_contiguous(const kn_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->ne[i] != 1 && t->st[i] != s) return 0;
        s *= t->ne[i];
    }
    return 1;
}

int64_t kn_tensor_rows(const kn_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++) n *= t->ne[i];
    return n;
}

int kn_tensor_reshape(kn_tensor *out, const kn_tensor *t, int ndim, const int64_t *ne, kn_err *err) {
    char a[96];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    if (ndim > KN_MAX_DIMS || n != kn_tensor_numel(t) || !kn_tensor_is_contiguous(t))
        return kn_fail(err, KN_ERR_SHAPE, "cannot reshape %s %s to %d dims of %lld elements",
                       t->name ? t->name : "tensor", kn_tensor_desc(t, a, sizeof a), ndim, (long long)n);
    kn_tensor r = kn_tensor_make(t->dtype, t->device, t->data, ndim, ne);
    r.scale = t->scale;
    r.name = t->name;
    *out = r;
    return KN_OK;
}

int kn_tensor_slice(kn_tensor *out, const kn_tensor *t, int dim, int64_t start, int64_t len, kn_err *err) {
    char a[96];
    if (dim < 0 || dim >= t->ndim || start < 0 || len < 0 || start + len > t->ne[dim])
        return kn_fail(err, KN_ERR_SHAPE, "slice [%lld, %lld) of dim %d is outside %s %s", (long long)start,
                       (long long)(start + len), dim, t->name ? t->name : "tensor",
                       kn_tensor_desc(t, a, sizeof a));
    kn_tensor r = *t;
    r.ne[dim] = len;
    r.data = (char *)t->data + (size_t)(start * t->st[dim]) * kn_dtype_size(t->dtype);
    *out = r;
    return KN_OK;
}

/* The largest element offset t reaches (strides taken as given), or -1 when
 * t has no elements. */
static int64_t last_offset(const kn_tensor *t) {
    int64_t last = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->ne[i] == 0) return -1;
        last += (t->ne[i] - 1) * (t->st[i] > 0 ? t->st[i] : 0);
    }
    return last;
}

int kn_tensor_view(kn_tensor *out, const kn_tensor *t, int ndim, const int64_t *ne, const int64_t *st,
                   int64_t offset, kn_err *err) {
    char a[96];
    if (ndim < 0 || ndim > KN_MAX_DIMS)
        return kn_fail(err, KN_ERR_SHAPE, "view of %d dims of %s %s", ndim, t->name ? t->name : "tensor",
                       kn_tensor_desc(t, a, sizeof a));
    int ok = offset >= 0, empty = 0;
    for (int i = 0; ok && i < ndim; i++) {
        ok = ne[i] >= 0 && st[i] >= 0;
        empty |= ne[i] == 0;
    }
    /* a view with elements must end at or before t's last element; each
     * term is compared with the room left before it is added: no overflow */
    int64_t span = last_offset(t), last = offset;
    ok = ok && (empty || last <= span);
    for (int i = 0; ok && !empty && i < ndim; i++) {
        if (ne[i] < 2 || st[i] == 0) continue;
        ok = ne[i] - 1 <= (span - last) / st[i];
        last += (ne[i] - 1) * st[i];
    }
    kn_tensor r = *t;
    r.ndim = ndim;
    memset(r.ne, 0, sizeof r.ne);
    memset(r.st, 0, sizeof r.st);
    for (int i = 0; i < ndim; i++) {
        r.ne[i] = ne[i];
        r.st[i] = st[i];
    }
    if (!ok) {
        char b[96];
        return kn_fail(err, KN_ERR_SHAPE, "view %s at offset %lld is not inside %s %s", kn_tensor_desc(&r, b, sizeof b),
                       (long long)offset, t->name ? t->name : "tensor", kn_tensor_desc(t, a, sizeof a));
    }
    r.data = (char *)t->data + (size_t)offset * kn_dtype_size(t->dtype);
    *out = r;
    return KN_OK;
}

const char *kn_tensor_desc(const kn_tensor *t, char *buf, size_t len) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)t->ne[i]);
    if (o < len) snprintf(buf + o, len - o, "] %s", kn_dtype_name(t->dtype));
    return buf;
}

int kn_tensor_expect(const kn_tensor *t, const char *what, int ndim, const int64_t *ne, kn_err *err) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = ne[i] < 0 || ne[i] == t->ne[i];
    if (ok) return KN_OK;
    char got[96], want[96];
    size_t o = (size_t)snprintf(want, sizeof want, "[");
    for (int i = 0; i < ndim && o < sizeof want; i++) {
        if (ne[i] < 0) o += (size_t)snprintf(want + o, sizeof want - o, i ? ", *" : "*");
        else o += (size_t)snprintf(want + o, sizeof want - o, i ? ", %lld" : "%lld", (long long)ne[i]);
    }
    if (o < sizeof want) snprintf(want + o, sizeof want - o, "]");
    return kn_fail(err, KN_ERR_SHAPE, "%s%s%s has shape %s, expected %s", what,
                   t->name ? " " : "", t->name ? t->name : "", kn_tensor_desc(t, got, sizeof got), want);
}

/* Same-dtype copy between strided views: the longest suffix of dims that is
 * contiguous in both tensors moves as one block. */
static int copy_strided(kn_tensor *dst, const kn_tensor *src, kn_err *err) {
    int inner = src->ndim;
    int64_t run = 1;
    while (inner > 0 && src->st[inner - 1] == run && dst->st[inner - 1] == run) run *= src->ne[--inner];
    int64_t outer = 1;
    for (int d = 0; d < inner; d++) outer *= src->ne[d];
    size_t esz = kn_dtype_size(src->dtype);
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, so = 0, doff = 0;
        for (int d = inner - 1; d >= 0; d--) {
            int64_t i = rem % src->ne[d];
            rem /= src->ne[d];
            so += i * src->st[d];
            doff += i * dst->st[d];
        }
        int rc = kn_device_memcpy(dst->device, (char *)dst->data + (size_t)doff * esz, src->device,
                                  (const char *)src->data + (size_t)so * esz, (size_t)run * esz, err);
        if (rc) return rc;
    }
    return KN_OK;
}

int kn_tensor_copy(kn_tensor *dst, const kn_tensor *src, kn_err *err) {
    char a[96], b[96];
    int same_shape = dst->ndim == src->ndim;
    for (int d = 0; same_shape && d < src->ndim; d++) same_shape = dst->ne[d] == src->ne[d];
    if (dst->dtype == src->dtype && src->scale == 1.0f && same_shape) return copy_strided(dst, src, err);
    if (kn_tensor_numel(dst) != kn_tensor_numel(src) || !kn_tensor_is_contiguous(dst) ||
        !kn_tensor_is_contiguous(src))
        return kn_fail(err, KN_ERR_SHAPE, "copy %s -> %s: sizes differ or not contiguous",
                       kn_tensor_desc(src, a, sizeof a), kn_tensor_desc(dst, b, sizeof b));
    size_t n = (size_t)kn_tensor_numel(src);
    if (dst->dtype == src->dtype && src->scale == 1.0f)
        return kn_device_memcpy(dst->device, dst->data, src->device, src->data, kn_tensor_nbytes(src), err);
    if (dst->device != KN_DEV_CPU || src->device != KN_DEV_CPU)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "dtype-converting copy %s -> %s needs both on CPU",
                       kn_tensor_desc(src, a, sizeof a), kn_tensor_desc(dst, b, sizeof b));
    if (dst->dtype == KN_F32) {
        kn_to_f32(dst->data, src->data, src->dtype, n, src->scale);
        return KN_OK;
    }
    if (src->dtype == KN_F32 && src->scale == 1.0f && kn_dtype_is_float(dst->dtype)) {
        kn_from_f32(dst->data, dst->dtype, src->data, n);
        return KN_OK;
    }
    return kn_fail(err, KN_ERR_UNSUPPORTED, "copy %s -> %s: convert through F32",
                   kn_tensor_desc(src, a, sizeof a), kn_tensor_desc(dst, b, sizeof b));
}

/* ---- arena ---------------------------------------------------------------- */

/* Chunks are kept in a list; offsets are global so a mark is a single number. */
typedef struct arena_chunk {
    struct arena_chunk *prev;
    char *base;
    size_t start; /* global offset of base */
    size_t size;
} arena_chunk;

struct kn_arena {
    kn_device dev;
    arena_chunk *top;
    size_t used;        /* global offset of the next free byte */
    arena_chunk *spare; /* the largest chunk a reset popped, kept mapped until kn_arena_trim */
};

int kn_arena_create(kn_arena **out, kn_device dev, kn_err *err) {
    kn_arena *a = calloc(1, sizeof *a);
    if (!a) return kn_fail(err, KN_ERR_NOMEM, "arena: out of memory");
    a->dev = dev;
    *out = a;
    return KN_OK;
}

static void chunk_free(kn_arena *a, arena_chunk *c) {
    if (!c) return;
    kn_device_free(a->dev, c->base);
    free(c);
}

static void arena_pop(kn_arena *a) {
    arena_chunk *c = a->top;
    a->top = c->prev;
    chunk_free(a, c);
}

void kn_arena_trim(kn_arena *a) {
    chunk_free(a, a->spare);
    a->spare = NULL;
}

void kn_arena_destroy(kn_arena *a) {
    if (!a) return;
    while (a->top) arena_pop(a);
    kn_arena_trim(a);
    free(a);
}

void *kn_arena_alloc(kn_arena *a, size_t bytes, kn_err *err) {
    size_t need;
    if (kn_add_size(bytes, 63, &need)) goto overflow;
    need &= ~(size_t)63;
    arena_chunk *c = a->top;
    if (c && a->used + need <= c->start + c->size) {
        void *p = c->base + (a->used - c->start);
        a->used += need;
        return p;
    }
    /* the spare when it is big enough (faulting fresh pages in for every
     * op's scratch cost a DiT step ~10%), else it goes before a new chunk
     * comes, so memory never holds both */
    arena_chunk *n = a->spare;
    a->spare = NULL;
    if (n && n->size < need) {
        chunk_free(a, n);
        n = NULL;
    }
    if (!n) {
        size_t size = need > ((size_t)64 << 20) ? need : ((size_t)64 << 20);
        n = calloc(1, sizeof *n);
        if (!n) goto oom;
        n->base = kn_device_alloc(a->dev, size, err);
        if (!n->base) {
            free(n);
            return NULL;
        }
        n->size = size;
    }
    n->prev = c;
    n->start = a->used;
    a->top = n;
    a->used += need;
    return n->base;
overflow:
    kn_fail(err, KN_ERR_NOMEM, "arena: allocation of %zu bytes overflows", bytes);
    return NULL;
oom:
    kn_fail(err, KN_ERR_NOMEM, "arena: out of memory");
    return NULL;
}

size_t kn_arena_mark(const kn_arena *a) { return a->used; }

void kn_arena_reset(kn_arena *a, size_t mark) {
    /* the bottom chunk stays in place and the largest other one becomes
     * the spare, so a reset-and-reuse loop does not map (and fault in)
     * memory again */
    while (a->top && a->top->prev && a->top->start >= mark) {
        arena_chunk *c = a->top;
        a->top = c->prev;
        if (a->spare && a->spare->size >= c->size) {
            chunk_free(a, c);
        } else {
            chunk_free(a, a->spare);
            a->spare = c;
        }
    }
    a->used = mark;
}

void kn_arena_release(kn_arena *a) {
    while (a->top) arena_pop(a);
    kn_arena_trim(a);
    a->used = 0;
}

int kn_arena_tensor(kn_arena *a, kn_tensor *t, kn_dtype dtype, int ndim, const int64_t *ne, kn_err *err) {
    size_t bytes;
    if (ndim < 0 || ndim > KN_MAX_DIMS || checked_nbytes(dtype, ndim, ne, &bytes))
        return kn_fail(err, KN_ERR_NOMEM, "arena tensor size overflows");
    void *p = kn_arena_alloc(a, bytes, err);
    if (!p) return err->code;
    *t = kn_tensor_make(dtype, a->dev, p, ndim, ne);
    return KN_OK;
}
