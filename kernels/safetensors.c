#include "kernels/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct kn_st_file {
    int refs;               /* this handle and its views (kn_st_view) */
    kn_st_file *parent;     /* a view's file: map, data, header and metadata are its */
    char *path;
    const uint8_t *map;     /* whole file (or caller's buffer) */
    size_t map_len;
    int owns_map;
    int fd;                 /* the mapped file, kept open for kn_st_release's page-cache advice; -1: none */
    const uint8_t *data;    /* start of the data region */
    void *aligned_copy;     /* the data region, copied when the file leaves it misaligned */
    size_t data_len;
    json_t *metadata;       /* "__metadata__" object or NULL */
    kn_tensor *tensors;     /* file order */
    char **names;
    int *by_name;           /* tensor indices sorted by name, for kn_st_find */
    int count;
    json_t *header;         /* keeps the parsed JSON alive */
};

typedef struct span {
    size_t begin, end;
    int index;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

/* A JSON integer in [0, 2^63) as size_t; 0 on success. */
static int json_size(const json_t *v, size_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 1;
    *out = (size_t)json_integer_value(v);
    return 0;
}

static int parse_tensor(kn_st_file *f, const char *name, const json_t *entry, span *sp, kn_err *err) {
    const char *path = f->path;
    if (!json_is_object(entry))
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", path, name);
    const json_t *jd = json_object_get(entry, "dtype");
    const json_t *js = json_object_get(entry, "shape");
    const json_t *jo = json_object_get(entry, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': needs string dtype, shape array, data_offsets array",
                       path, name);
    kn_dtype dt;
    if (kn_dtype_from_st(json_string_value(jd), &dt))
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(jd));
    size_t ndim = json_array_size(js);
    if (ndim > KN_MAX_DIMS)
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': %zu dims (at most %d supported)", path, name, ndim,
                       KN_MAX_DIMS);
    int64_t ne[KN_MAX_DIMS];
    size_t bytes = kn_dtype_size(dt), dense = 1; /* product of the nonzero dims: bounds every stride */
    for (size_t i = 0; i < ndim; i++) {
        size_t d;
        if (json_size(json_array_get(js, i), &d) || d > (size_t)INT64_MAX)
            return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                           name, i);
        if (kn_mul_size(bytes, d, &bytes) || (d && kn_mul_size(dense, d, &dense)) || dense > (size_t)INT64_MAX)
            return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': shape size overflows", path, name);
        ne[i] = (int64_t)d;
    }
    size_t begin, end;
    if (json_array_size(jo) != 2 || json_size(json_array_get(jo, 0), &begin) ||
        json_size(json_array_get(jo, 1), &end))
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers", path,
                       name);
    if (begin > end || end > f->data_len)
        return kn_fail(err, KN_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%zu, %zu] outside the %zu-byte data region (truncated file?)",
                       path, name, begin, end, f->data_len);
    if (end - begin != bytes)
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s': %s shape needs %zu bytes but data_offsets span %zu",
                       path, name, kn_dtype_name(dt), bytes, end - begin);
    kn_tensor *t = &f->tensors[sp->index];
    *t = kn_tensor_make(dt, KN_DEV_CPU, (void *)(f->data + begin), (int)ndim, ne);
    sp->begin = begin;
    sp->end = end;
    return KN_OK;
}

static int parse_header(kn_st_file *f, kn_err *err) {
    const char *path = f->path;
    if (f->map_len < 8)
        return kn_fail(err, KN_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", path, f->map_len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen > KN_ST_MAX_HEADER)
        return kn_fail(err, KN_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit", path,
                       (unsigned long long)hlen, (unsigned long long)KN_ST_MAX_HEADER);
    if (hlen > f->map_len - 8)
        return kn_fail(err, KN_ERR_FORMAT, "%s: header length %llu runs past the end of the %zu-byte file", path,
                       (unsigned long long)hlen, f->map_len);
    f->data = f->map + 8 + hlen;
    f->data_len = f->map_len - 8 - (size_t)hlen;
    if ((uintptr_t)f->data % 8 && f->data_len) {
        /* A header length that is not a multiple of 8 (older writers) leaves
         * elements misaligned; kernels read them as float/uint16_t, so copy. */
        f->aligned_copy = aligned_alloc(64, (f->data_len + 63) & ~(size_t)63);
        if (!f->aligned_copy)
            return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory copying the misaligned data region", path);
        memcpy(f->aligned_copy, f->data, f->data_len);
        f->data = f->aligned_copy;
    }

    json_error_t jerr;
    f->header = json_loadb((const char *)f->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header)
        return kn_fail(err, KN_ERR_FORMAT, "%s: header is not valid JSON: %s (at byte %d)", path, jerr.text,
                       jerr.position);
    if (!json_is_object(f->header)) return kn_fail(err, KN_ERR_FORMAT, "%s: header is not a JSON object", path);

    size_t n = json_object_size(f->header);
    f->metadata = json_object_get(f->header, "__metadata__");
    if (f->metadata) {
        if (!json_is_object(f->metadata))
            return kn_fail(err, KN_ERR_FORMAT, "%s: __metadata__ is not an object", path);
        const char *k;
        json_t *v;
        json_object_foreach(f->metadata, k, v) {
            if (!json_is_string(v))
                return kn_fail(err, KN_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string", path, k);
        }
        n--;
    }
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->names = calloc(n ? n : 1, sizeof *f->names);
    span *spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !f->names || !spans) {
        free(spans);
        return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory for %zu tensors", path, n);
    }
    int rc = KN_OK;
    const char *name;
    json_t *entry;
    int i = 0;
    json_object_foreach(f->header, name, entry) {
        if (strcmp(name, "__metadata__") == 0) continue;
        f->names[i] = (char *)name; /* owned by f->header */
        spans[i].index = i;
        rc = parse_tensor(f, name, entry, &spans[i], err);
        if (rc) break;
        f->tensors[i].name = name;
        i++;
    }
    f->count = i;
    if (rc == KN_OK) {
        /* Sorted by begin, a tensor overlaps an earlier one iff it starts before the
         * furthest end so far; empty tensors hold no bytes, so they neither overlap
         * nor move that end (comparing neighbours only misses A=[0,16] E=[4,4] B=[8,12]). */
        qsort(spans, (size_t)f->count, sizeof *spans, cmp_span);
        int last = -1; /* the span with the furthest end so far */
        for (int j = 0; j < f->count; j++) {
            if (spans[j].begin == spans[j].end) continue;
            if (last >= 0 && spans[j].begin < spans[last].end) {
                rc = kn_fail(err, KN_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data region", path,
                             f->names[spans[last].index], f->names[spans[j].index]);
                break;
            }
            if (last < 0 || spans[j].end > spans[last].end) last = j;
        }
    }
    free(spans);
    return rc;
}

static int cmp_by_name(const void *a, const void *b, void *file) {
    char **names = ((kn_st_file *)file)->names;
    return strcmp(names[*(const int *)a], names[*(const int *)b]);
}

static int st_open(kn_st_file **out, kn_st_file *f, kn_err *err) {
    int rc = parse_header(f, err);
    if (rc == KN_OK && !(f->by_name = malloc(sizeof(int) * (size_t)(f->count ? f->count : 1))))
        rc = kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", f->path);
    if (rc) {
        kn_st_close(f);
        return rc;
    }
    for (int i = 0; i < f->count; i++) f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)f->count, sizeof(int), cmp_by_name, f);
    *out = f;
    return KN_OK;
}

/* A file object holding its first reference, named `path` (copied); NULL when out of memory. */
static kn_st_file *st_new(const char *path) {
    kn_st_file *f = calloc(1, sizeof *f);
    if (f) f->refs = 1;
    if (f) f->fd = -1;
    if (f && !(f->path = strdup(path))) {
        free(f);
        f = NULL;
    }
    return f;
}

int kn_st_open(kn_st_file **out, const char *path, kn_err *err) {
    *out = NULL;
    kn_st_file *f = st_new(path);
    if (!f) return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kn_st_close(f);
        return kn_fail(err, e == ENOENT ? KN_ERR_NOT_FOUND : KN_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        kn_st_close(f);
        return kn_fail(err, KN_ERR_IO, "%s: not a regular file", path);
    }
    f->map_len = (size_t)sb.st_size;
    if (f->map_len > 0) {
        void *m = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            kn_st_close(f);
            return kn_fail(err, KN_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
        }
        f->map = m;
        f->owns_map = 1;
        f->fd = fd;
    } else {
        close(fd);
    }
    return st_open(out, f, err);
}

int kn_st_open_memory(kn_st_file **out, const void *buf, size_t len, const char *label, kn_err *err) {
    *out = NULL;
    kn_st_file *f = st_new(label ? label : "<memory>");
    if (!f) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    f->map = buf;
    f->map_len = len;
    return st_open(out, f, err);
}

int kn_st_view(kn_st_file **out, kn_st_file *f, const char *prefix, kn_err *err) {
    *out = NULL;
    size_t plen = strlen(prefix);
    char label[4096];
    if (plen) snprintf(label, sizeof label, "%s (%s*)", f->path, prefix);
    kn_st_file *v = st_new(plen ? label : f->path);
    size_t cap = (size_t)(f->count ? f->count : 1); /* a view has at most f's tensors */
    int *pos = malloc(cap * sizeof *pos);           /* f's index -> the view's, -1: not in it */
    if (v) {
        v->tensors = calloc(cap, sizeof *v->tensors);
        v->names = calloc(cap, sizeof *v->names);
        v->by_name = calloc(cap, sizeof *v->by_name);
    }
    if (!v || !pos || !v->tensors || !v->names || !v->by_name) {
        free(pos);
        kn_st_close(v);
        return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory for a view of %d tensors", f->path, f->count);
    }
    for (int i = 0; i < f->count; i++) {
        pos[i] = -1;
        if (strncmp(f->names[i], prefix, plen) != 0) continue;
        pos[i] = v->count;
        v->names[v->count] = f->names[i] + plen; /* in f's header, which the view keeps alive */
        v->tensors[v->count] = f->tensors[i];
        v->tensors[v->count].name = v->names[v->count];
        v->count++;
    }
    /* f's name order restricted to the view is the view's: stripping a common prefix keeps it */
    for (int i = 0, k = 0; i < f->count; i++)
        if (pos[f->by_name[i]] >= 0) v->by_name[k++] = pos[f->by_name[i]];
    free(pos);
    v->parent = f;
    f->refs++;
    v->map = f->map;
    v->map_len = f->map_len;
    v->data = f->data;
    v->data_len = f->data_len;
    v->metadata = f->metadata;
    *out = v;
    return KN_OK;
}

void kn_st_close(kn_st_file *f) {
    if (!f || --f->refs > 0) return;
    if (!f->parent) { /* a view borrows these from its file */
        if (f->owns_map && f->map) munmap((void *)f->map, f->map_len);
        if (f->fd >= 0) close(f->fd);
        json_decref(f->header);
        free(f->aligned_copy);
    }
    free(f->tensors);
    free(f->names);
    free(f->by_name);
    free(f->path);
    kn_st_close(f->parent);
    free(f);
}

/* The file a view belongs to (a file is its own). */
static const kn_st_file *root_of(const kn_st_file *f) {
    while (f->parent) f = f->parent;
    return f;
}

/* Whether f's tensors live in a file mapping of its own (not a buffer given
 * to kn_st_open_memory, nor an aligned heap copy). */
static int tensors_mapped(const kn_st_file *f) {
    const kn_st_file *root = root_of(f);
    return root->owns_map && !root->aligned_copy;
}

/* Drops the whole pages inside t's bytes (a neighbour's pages are not t's). */
static void drop_tensor_pages(const kn_tensor *t) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)t->data + page - 1) & ~(page - 1), e = ((uintptr_t)t->data + kn_tensor_nbytes(t)) & ~(page - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

void kn_st_drop_pages(const kn_st_file *f) {
    if (!tensors_mapped(f)) return;
    for (int i = 0; i < f->count; i++) drop_tensor_pages(&f->tensors[i]);
}

int kn_st_check_finite(const kn_st_file *f, kn_err *err) {
    int first = f->count; /* the first tensor with a non-finite value, tensors scanned in parallel */
    const int drop = tensors_mapped(f); /* each tensor's pages as soon as it is scanned: RSS stays low */
#pragma omp parallel for schedule(dynamic) reduction(min : first)
    for (int i = 0; i < f->count; i++) {
        if (kn_first_nonfinite(f->tensors[i].data, f->tensors[i].dtype, (size_t)kn_tensor_numel(&f->tensors[i])) >= 0)
            first = i < first ? i : first;
        if (drop) drop_tensor_pages(&f->tensors[i]);
    }
    if (first < f->count) {
        const kn_tensor *t = &f->tensors[first];
        int64_t bad = kn_first_nonfinite(t->data, t->dtype, (size_t)kn_tensor_numel(t));
        float v;
        kn_to_f32(&v, (const char *)t->data + (size_t)bad * kn_dtype_size(t->dtype), t->dtype, 1, 1.0f);
        return kn_fail(err, KN_ERR_FORMAT, "%s: tensor '%s' holds %s at element %lld: weights must be finite", f->path,
                       t->name, isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf", (long long)bad);
    }
    return KN_OK;
}

const char *kn_st_path(const kn_st_file *f) { return f->path; }
int kn_st_count(const kn_st_file *f) { return f->count; }
const kn_tensor *kn_st_at(const kn_st_file *f, int i) { return i >= 0 && i < f->count ? &f->tensors[i] : NULL; }

const kn_tensor *kn_st_find(const kn_st_file *f, const char *name) {
    int lo = 0, hi = f->count - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->names[f->by_name[mid]]);
        if (c == 0) return &f->tensors[f->by_name[mid]];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

int kn_st_get(const kn_st_file *f, const char *name, kn_tensor *out, kn_err *err) {
    const kn_tensor *t = kn_st_find(f, name);
    if (!t) return kn_fail(err, KN_ERR_NOT_FOUND, "%s: tensor '%s' not found", f->path, name);
    *out = *t;
    size_t n = strlen(name);
    if ((t->dtype == KN_F8_E4M3 || t->dtype == KN_F8_E5M2) && n > 7 && strcmp(name + n - 7, ".weight") == 0) {
        char sname[1024];
        snprintf(sname, sizeof sname, "%.*sscale_weight", (int)(n - 6), name);
        const kn_tensor *s = kn_st_find(f, sname);
        if (s) {
            if (kn_tensor_numel(s) != 1 || !kn_dtype_is_float(s->dtype))
                return kn_fail(err, KN_ERR_FORMAT, "%s: '%s' must be a single float", f->path, sname);
            double v; /* the scale may sit at any offset; kn_to_f32 expects aligned elements */
            memcpy(&v, s->data, kn_dtype_size(s->dtype));
            kn_to_f32(&out->scale, &v, s->dtype, 1, 1.0f);
        }
    }
    return KN_OK;
}

const void *kn_st_data(const kn_st_file *f, size_t *len) {
    *len = f->data_len;
    return f->data;
}

/* The bytes [*lo, *hi) of the data region f's tensors occupy: all of it for a file. */
static void data_span(const kn_st_file *f, size_t *lo, size_t *hi) {
    *lo = 0;
    *hi = f->data_len;
    if (!f->parent) return;
    *lo = f->data_len;
    *hi = 0;
    for (int i = 0; i < f->count; i++) {
        size_t b = (size_t)((const uint8_t *)f->tensors[i].data - f->data), e = b + kn_tensor_nbytes(&f->tensors[i]);
        if (b < *lo) *lo = b;
        if (e > *hi) *hi = e;
    }
    if (*lo > *hi) *lo = *hi = 0;
}

size_t kn_st_span_bytes(const kn_st_file *f, int *mapped) {
    size_t lo, hi;
    data_span(f, &lo, &hi);
    *mapped = tensors_mapped(f);
    return hi - lo;
}

void kn_st_release(const kn_st_file *f) {
    const kn_st_file *root = root_of(f);
    if (!root->owns_map || !root->map) return;
    size_t lo = 0, hi = root->map_len; /* an aligned copy: every page the copy was read from */
    if (!root->aligned_copy) {
        data_span(f, &lo, &hi);
        size_t base = (size_t)(f->data - root->map);
        lo += base;
        hi += base;
    }
    /* madvise takes a page-aligned start; a neighbour's page dropped with it faults back in */
    lo &= ~((size_t)sysconf(_SC_PAGESIZE) - 1);
    if (hi <= lo) return;
    madvise((void *)(root->map + lo), hi - lo, MADV_DONTNEED);
    if (root->fd >= 0) posix_fadvise(root->fd, (off_t)lo, (off_t)(hi - lo), POSIX_FADV_DONTNEED);
}

const char *kn_st_metadata(const kn_st_file *f, const char *key) {
    return f->metadata ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}

int kn_st_write(const char *path, const kn_tensor *t, int n, kn_err *err) {
    return kn_st_write_meta(path, t, n, NULL, 0, err);
}

int kn_st_write_meta(const char *path, const kn_tensor *t, int n, const kn_st_meta *meta, int n_meta, kn_err *err) {
    json_t *h = json_object();
    if (!h) return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", path);
    if (n_meta > 0) {
        json_t *m = json_object();
        if (json_object_set_new(h, "__metadata__", m)) {
            json_decref(h);
            return kn_fail(err, KN_ERR_NOMEM, "%s: out of memory", path);
        }
        for (int i = 0; i < n_meta; i++)
            if (!meta[i].key || !meta[i].value || json_object_get(m, meta[i].key) ||
                json_object_set_new(m, meta[i].key, json_string(meta[i].value))) {
                json_decref(h);
                return kn_fail(err, KN_ERR_INVALID, "%s: metadata entry %d ('%s') is missing, repeated or not UTF-8",
                               path, i, meta[i].key ? meta[i].key : "");
            }
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        /* Checked first: json_object_set_new would silently replace a duplicate name,
         * leaving the first tensor's bytes as an unlisted hole. */
        if (!t[i].name || json_object_get(h, t[i].name) || strcmp(t[i].name, "__metadata__") == 0 || t[i].device != KN_DEV_CPU ||
            !kn_tensor_is_contiguous(&t[i])) {
            json_decref(h);
            return kn_fail(err, KN_ERR_INVALID, "%s: tensor %d ('%s') needs a unique name and contiguous CPU data",
                           path, i, t[i].name ? t[i].name : "");
        }
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].ne[d]));
        size_t bytes = kn_tensor_nbytes(&t[i]);
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", kn_dtype_name(t[i].dtype), "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + bytes));
        if (!e || json_object_set_new(h, t[i].name, e)) { /* set_new consumes e even when it fails */
            json_decref(h);
            return kn_fail(err, KN_ERR_INVALID, "%s: tensor '%s' cannot go into the header (name not UTF-8?)", path,
                           t[i].name);
        }
        off += bytes;
    }
    char *js = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!js) return kn_fail(err, KN_ERR_NOMEM, "%s: cannot serialise header", path);
    size_t hlen = strlen(js);
    size_t padded = (hlen + 7) & ~(size_t)7; /* 8-byte aligned data, padded with spaces */
    /* O_NOFOLLOW: a symlink planted under the name is not written through */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !fp) close(fd);
    int rc = KN_OK;
    if (!fp) {
        rc = kn_fail(err, KN_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(js, 1, hlen, fp) == hlen;
        for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', fp) != EOF;
        for (int i = 0; ok && i < n; i++) {
            size_t b = kn_tensor_nbytes(&t[i]);
            ok = b == 0 || fwrite(t[i].data, 1, b, fp) == b; /* an empty tensor may have no data pointer */
        }
        if (fclose(fp) != 0 || !ok) rc = kn_fail(err, KN_ERR_IO, "%s: write failed", path);
    }
    free(js);
    return rc;
}
