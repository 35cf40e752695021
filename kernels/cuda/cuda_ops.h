/* CUDA backend: the kernels behind kernels/ops.h, for tensors on KN_DEV_CUDA.
 *
 * kn_cuda_<op> take the same arguments as kn_<op>, already checked by ops.c.
 * Compiled only when nvcc is found (KN_HAVE_CUDA). Without a GPU every entry
 * point fails cleanly with KN_ERR_BACKEND and the CUDA runtime's reason.
 * Ops are queued on one stream and return before the GPU finishes; copies to
 * the host wait for it. KN_CUDA_SYNC=1 in the environment makes every op wait,
 * so a fault inside a kernel is reported by that op rather than a later one. */
#ifndef KN_CUDA_OPS_H
#define KN_CUDA_OPS_H

#include <stddef.h>

/* The .cu files are C++: the core's C headers are declared with C linkage too. */
#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/ops.h"

int kn_cuda_device_count(char *why, size_t why_len);
/* The GPUs CUDA sees, without starting the backend (so that a device can still
 * be chosen); 0 and `why` when there are none. */
int kn_cuda_probe_devices(char *why, size_t why_len);
/* Makes GPU `device` the backend's (one process, one GPU: the NCCL transport
 * puts each rank on its own) and initialises the backend there. Call it before
 * the first CUDA op; once the backend runs, only the device it runs on is
 * accepted (KN_ERR_INVALID otherwise: its stream and scratch belong there).
 * KN_ERR_BACKEND without a usable GPU, KN_ERR_INVALID for a device that does
 * not exist. */
int kn_cuda_use_device(int device, kn_err *err);
void *kn_cuda_malloc(size_t bytes, kn_err *err);
void kn_cuda_free(void *p);
int kn_cuda_memcpy(void *dst, int dst_on_device, const void *src, int src_on_device, size_t bytes, kn_err *err);

int kn_cuda_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias);
int kn_cuda_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int kn_cuda_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b,
                      float eps);
int kn_cuda_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode);
int kn_cuda_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                      const kn_attention_args *a);
int kn_cuda_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order);
int kn_cuda_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order);
int kn_cuda_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
int kn_cuda_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int kn_cuda_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op);
int kn_cuda_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t);
int kn_cuda_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift, const kn_tensor *scale);
int kn_cuda_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate);

#ifdef __cplusplus
}
#endif

#endif
