#include "kernels/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef KN_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

void *kn_device_alloc(kn_device dev, size_t bytes, kn_err *err) {
    if (dev == KN_DEV_CPU) {
        size_t rounded;
        if (kn_add_size(bytes, 63, &rounded)) {
            kn_fail(err, KN_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
            return NULL;
        }
        void *p = aligned_alloc(64, rounded & ~(size_t)63);
        if (!p) kn_fail(err, KN_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return p;
    }
#ifdef KN_HAVE_CUDA
    return kn_cuda_malloc(bytes, err);
#else
    kn_fail(err, KN_ERR_UNSUPPORTED, "this build has no CUDA backend");
    return NULL;
#endif
}

void kn_device_free(kn_device dev, void *p) {
    if (!p) return;
    if (dev == KN_DEV_CPU) {
        free(p);
        return;
    }
#ifdef KN_HAVE_CUDA
    kn_cuda_free(p);
#endif
}

int kn_device_memcpy(kn_device dst_dev, void *dst, kn_device src_dev, const void *src, size_t bytes,
                     kn_err *err) {
    if (dst_dev == KN_DEV_CPU && src_dev == KN_DEV_CPU) {
        memcpy(dst, src, bytes);
        return KN_OK;
    }
#ifdef KN_HAVE_CUDA
    return kn_cuda_memcpy(dst, dst_dev == KN_DEV_CUDA, src, src_dev == KN_DEV_CUDA, bytes, err);
#else
    return kn_fail(err, KN_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
}

int kn_cuda_available(char *why, size_t why_len) {
#ifdef KN_HAVE_CUDA
    return kn_cuda_device_count(why, why_len) > 0;
#else
    snprintf(why, why_len, "built without CUDA (nvcc was not found at configure time)");
    return 0;
#endif
}

int kn_cuda_gpu_count(char *why, size_t why_len) {
#ifdef KN_HAVE_CUDA
    return kn_cuda_probe_devices(why, why_len);
#else
    snprintf(why, why_len, "built without CUDA (nvcc was not found at configure time)");
    return 0;
#endif
}

int kn_cpu_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
