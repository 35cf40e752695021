/* kn_device: memory on the CPU or a CUDA device, behind one interface.
 *
 * CPU memory is 64-byte aligned (a cache line, an AVX-512 vector). CUDA
 * memory exists only in builds with KN_HAVE_CUDA and a visible GPU;
 * otherwise CUDA requests fail with KN_ERR_UNSUPPORTED and a reason. */
#ifndef KN_DEVICE_H
#define KN_DEVICE_H

#include <stddef.h>

#include "kernels/error.h"
#include "kernels/tensor.h"

void *kn_device_alloc(kn_device dev, size_t bytes, kn_err *err);
void kn_device_free(kn_device dev, void *p);
int kn_device_memcpy(kn_device dst_dev, void *dst, kn_device src_dev, const void *src, size_t bytes,
                     kn_err *err);
/* 1 when a CUDA device can be used; otherwise 0 and `why` says why. */
int kn_cuda_available(char *why, size_t why_len);
/* The GPUs CUDA sees, without starting the CUDA backend: for choosing each
 * rank's device before kn_comm_nccl. 0 and `why` when none. */
int kn_cuda_gpu_count(char *why, size_t why_len);
/* Number of CPU threads kernels use (OpenMP). */
int kn_cpu_threads(void);

#endif
