/* kn_tensor: a typed, shaped view of memory on one device.
 *
 * Shapes are in PyTorch order (outermost first): a linear weight is [out, in],
 * an activation [B, L, D]. Strides are in elements. A kn_tensor never owns its
 * memory implicitly: kn_tensor_new() memory is released with kn_tensor_free(),
 * arena tensors with their arena, and safetensors tensors with their file.
 *
 * `scale` is the dequantisation multiplier of fp8 "scaled" checkpoints
 * (ComfyUI's scale_weight): the real value is stored * scale. It is 1 for
 * everything else, and every op that reads weights honours it. */
#ifndef KN_TENSOR_H
#define KN_TENSOR_H

#include <stdint.h>

#include "kernels/dtype.h"
#include "kernels/error.h"

#define KN_MAX_DIMS 6

typedef enum kn_device { KN_DEV_CPU = 0, KN_DEV_CUDA = 1 } kn_device;

typedef struct kn_tensor {
    kn_dtype dtype;
    kn_device device;
    int ndim;
    int64_t ne[KN_MAX_DIMS]; /* sizes, outermost first */
    int64_t st[KN_MAX_DIMS]; /* strides in elements */
    void *data;
    float scale;
    const char *name;        /* for messages; may be NULL */
} kn_tensor;

/* A contiguous descriptor over `data` (not allocated). */
kn_tensor kn_tensor_make(kn_dtype dtype, kn_device dev, void *data, int ndim, const int64_t *ne);
/* Allocate a contiguous tensor; free with kn_tensor_free. */
int kn_tensor_new(kn_tensor *t, kn_dtype dtype, kn_device dev, int ndim, const int64_t *ne,
                  kn_err *err);
void kn_tensor_free(kn_tensor *t);

int64_t kn_tensor_numel(const kn_tensor *t);
size_t kn_tensor_nbytes(const kn_tensor *t);
int kn_tensor_is_contiguous(const kn_tensor *t);
/* Product of all dims but the last (rows of a row-major matrix view). */
int64_t kn_tensor_rows(const kn_tensor *t);
/* Same data, new contiguous shape with equal numel; returns 0 or sets err. */
int kn_tensor_reshape(kn_tensor *out, const kn_tensor *t, int ndim, const int64_t *ne, kn_err *err);
/* View of t with dim `dim` narrowed to [start, start + len); strides kept. */
int kn_tensor_slice(kn_tensor *out, const kn_tensor *t, int dim, int64_t start, int64_t len, kn_err *err);
/* A strided view of t's memory: sizes ne, strides st (elements, >= 0), first
 * element offset elements past t->data; dtype, device, scale and name kept.
 * Every element the view can reach must be one t reaches. E.g. q, k, v of a
 * fused projection qkv [B, L, 3*H*D] as [B, L, H, D] views, strides
 * {L*3*H*D, 3*H*D, D, 1} at offsets 0, H*D and 2*H*D. */
int kn_tensor_view(kn_tensor *out, const kn_tensor *t, int ndim, const int64_t *ne, const int64_t *st,
                   int64_t offset, kn_err *err);
/* "[2, 16, 64] BF16" into buf; returns buf. */
const char *kn_tensor_desc(const kn_tensor *t, char *buf, size_t len);
/* Checks ndim and each size (-1 = any); error names the tensor. */
int kn_tensor_expect(const kn_tensor *t, const char *what, int ndim, const int64_t *ne, kn_err *err);
/* Copy between tensors of equal shape: strided views of one dtype on any
 * devices, or contiguous tensors converted between dtypes on the CPU. */
int kn_tensor_copy(kn_tensor *dst, const kn_tensor *src, kn_err *err);

/* Arena: bump allocation for per-run scratch, 64-byte aligned, freed at once. */
typedef struct kn_arena kn_arena;
int kn_arena_create(kn_arena **out, kn_device dev, kn_err *err);
void kn_arena_destroy(kn_arena *a);
void *kn_arena_alloc(kn_arena *a, size_t bytes, kn_err *err);
size_t kn_arena_mark(const kn_arena *a);
/* Frees everything allocated after mark; the largest chunk that held it
 * stays mapped as a spare for later allocations until kn_arena_trim (or
 * release). */
void kn_arena_reset(kn_arena *a, size_t mark);
/* Unmaps the spare chunk: the executor trims after every node, so one
 * node's scratch high-water mark does not stay resident under the next. */
void kn_arena_trim(kn_arena *a);
/* Frees every chunk, the one a reset keeps too (/free: nothing may be allocated from it). */
void kn_arena_release(kn_arena *a);
int kn_arena_tensor(kn_arena *a, kn_tensor *t, kn_dtype dtype, int ndim, const int64_t *ne, kn_err *err);

#endif
