/* The CUDA backend's one-time state, memory, copies and error reporting
 * (contract in cuda_common.cuh). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* Initialised once; on failure `why` keeps the reason for every later call. */
static kn_cu_backend kn_cu_state;
static int kn_cu_started, kn_cu_ok;
/* The device current on this thread as far as the backend knows: CUDA's
 * current device is per thread, the backend's is per process. */
static thread_local int kn_cu_thread_device = -1;
static char kn_cu_why[512];
static pthread_once_t kn_cu_once = PTHREAD_ONCE_INIT;
kn_lt_api kn_lt;

/* Opens cuBLASLt (the toolkit's copy first, then the loader's search path)
 * and binds kn_lt; the handle stays open for the process. */
static int kn_lt_load(void) {
    static const char *const paths[] = {KN_CUBLASLT_PATH, KN_CUBLASLT_NAME, "libcublasLt.so"};
    void *h = NULL;
    for (size_t i = 0; !h && i < sizeof paths / sizeof paths[0]; i++) h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "cuBLASLt not found: %s", dlerror());
        return 0;
    }
#define KN_LT_BIND(f)                                                                                   \
    if (!(kn_lt.f = (decltype(kn_lt.f))dlsym(h, #f))) {                                                 \
        snprintf(kn_cu_why, sizeof kn_cu_why, "cuBLASLt has no %s", #f);                               \
        return 0;                                                                                       \
    }
    KN_LT_FUNCS(KN_LT_BIND)
#undef KN_LT_BIND
    return 1;
}

static void kn_cu_init(void) {
    kn_cu_started = 1;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "no CUDA device: %s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
        return;
    }
    if (count == 0) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "no CUDA device: cudaGetDeviceCount found none");
        return;
    }
    /* the calling thread's current device: 0, or what kn_cuda_use_device set */
    e = cudaGetDevice(&kn_cu_state.device);
    if (e != cudaSuccess) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "CUDA device unusable: cudaGetDevice: %s: %s", cudaGetErrorName(e),
                 cudaGetErrorString(e));
        return;
    }
    if (!kn_lt_load()) return;
    /* Non-blocking: no implicit synchronisation with other libraries' work
     * on the legacy default stream. */
    e = cudaStreamCreateWithFlags(&kn_cu_state.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "CUDA device unusable: cudaStreamCreateWithFlags: %s: %s",
                 cudaGetErrorName(e), cudaGetErrorString(e));
        return;
    }
    cublasStatus_t s = kn_lt.cublasLtCreate(&kn_cu_state.lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(kn_cu_why, sizeof kn_cu_why, "CUDA device unusable: cublasLtCreate: %s: %s",
                 kn_lt.cublasLtGetStatusName(s), kn_lt.cublasLtGetStatusString(s));
        (void)cudaStreamDestroy(kn_cu_state.stream); /* best effort: the reason reported is cuBLASLt's */
        return;
    }
    const char *sync = getenv("KN_CUDA_SYNC");
    kn_cu_state.sync_each_op = sync && strcmp(sync, "0") != 0 && sync[0];
    kn_cu_state.device_count = count;
    kn_cu_ok = 1;
}

kn_cu_backend *kn_cu_get(kn_err *err, const char *op) {
    pthread_once(&kn_cu_once, kn_cu_init);
    if (!kn_cu_ok) {
        kn_fail(err, KN_ERR_BACKEND, "%s: %s", op, kn_cu_why);
        return NULL;
    }
    /* A thread other than the one that initialised the backend (the server's
     * worker) starts on device 0; the stream lives on the backend's device. */
    if (kn_cu_thread_device != kn_cu_state.device) {
        if (kn_cu_check(cudaSetDevice(kn_cu_state.device), err, op, "cudaSetDevice")) return NULL;
        kn_cu_thread_device = kn_cu_state.device;
    }
    return &kn_cu_state;
}

int kn_cu_check(cudaError_t e, kn_err *err, const char *op, const char *call) {
    if (e == cudaSuccess) return KN_OK;
    return kn_fail(err, KN_ERR_BACKEND, "%s: %s: %s: %s", op, call, cudaGetErrorName(e), cudaGetErrorString(e));
}

int kn_cu_check_blas(cublasStatus_t s, kn_err *err, const char *op, const char *call) {
    if (s == CUBLAS_STATUS_SUCCESS) return KN_OK;
    return kn_fail(err, KN_ERR_BACKEND, "%s: %s: %s: %s", op, call, kn_lt.cublasLtGetStatusName(s),
                   kn_lt.cublasLtGetStatusString(s));
}

int kn_cu_launched(kn_cu_backend *be, kn_err *err, const char *op) {
    KN_CU_TRY(err, op, cudaGetLastError());
    if (be->sync_each_op) KN_CU_TRY(err, op, cudaStreamSynchronize(be->stream));
    return KN_OK;
}

void *kn_cu_scratch(kn_cu_backend *be, size_t bytes, kn_err *err, const char *op) {
    if (bytes <= be->scratch_size) return be->scratch;
    /* cudaFree waits for the device, so no queued kernel still reads the old buffer. */
    if (kn_cu_check(cudaFree(be->scratch), err, op, "cudaFree(scratch)")) return NULL;
    be->scratch = NULL;
    be->scratch_size = 0;
    size_t grown = (bytes + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1); /* whole 2 MiB pages */
    cudaError_t e = cudaMalloc(&be->scratch, grown);
    if (e != cudaSuccess) {
        be->scratch = NULL;
        kn_fail(err, e == cudaErrorMemoryAllocation ? KN_ERR_NOMEM : KN_ERR_BACKEND,
                "%s: cudaMalloc(%zu bytes of scratch): %s: %s", op, grown, cudaGetErrorName(e), cudaGetErrorString(e));
        return NULL;
    }
    be->scratch_size = grown;
    return be->scratch;
}

int kn_cu_same_dtype(kn_err *err, const char *op, const kn_tensor *ref, const kn_tensor *t) {
    if (!t || t->dtype == ref->dtype) return KN_OK;
    return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: %s is %s but %s is %s; the CUDA backend needs one activation type",
                   op, t->name ? t->name : "an operand", kn_dtype_name(t->dtype), ref->name ? ref->name : "the output",
                   kn_dtype_name(ref->dtype));
}

int kn_cu_vec_f32(kn_cu_backend *be, kn_err *err, const char *op, float *dst, const kn_tensor *v) {
    return kn_cu_weight_type(err, op, v->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_convert<T, float> f = {(const T *)v->data, dst, v->scale};
        return kn_cu_map(be, err, op, kn_tensor_numel(v), f);
    });
}

/* ---- cuda_ops.h: devices and memory ------------------------------------------ */

int kn_cuda_device_count(char *why, size_t why_len) {
    kn_err err;
    if (kn_cu_get(&err, "cuda")) return kn_cu_state.device_count;
    snprintf(why, why_len, "%s", kn_cu_why);
    return 0;
}

int kn_cuda_probe_devices(char *why, size_t why_len) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "no CUDA device: %s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
        return 0;
    }
    if (count == 0) snprintf(why, why_len, "no CUDA device: cudaGetDeviceCount found none");
    return count;
}

int kn_cuda_use_device(int device, kn_err *err) {
    if (!kn_cu_started) {
        int count = 0;
        /* no device at all: let kn_cu_get report it in its own words */
        if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
            if (device < 0 || device >= count)
                return kn_fail(err, KN_ERR_INVALID, "cuda device %d: this machine has %d CUDA device%s", device,
                               count, count == 1 ? "" : "s");
            KN_CU_TRY(err, "cuda device", cudaSetDevice(device));
        }
    }
    kn_cu_backend *be = kn_cu_get(err, "cuda device");
    if (!be) return err->code;
    if (be->device != device)
        return kn_fail(err, KN_ERR_INVALID,
                       "cuda device %d: the CUDA backend already runs on device %d (choose the device before the "
                       "first CUDA operation)",
                       device, be->device);
    return KN_OK;
}

void *kn_cuda_malloc(size_t bytes, kn_err *err) {
    kn_cu_backend *be = kn_cu_get(err, "cuda malloc");
    if (!be) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        kn_fail(err, e == cudaErrorMemoryAllocation ? KN_ERR_NOMEM : KN_ERR_BACKEND,
                "cuda malloc: cudaMalloc(%zu bytes): %s: %s", bytes, cudaGetErrorName(e), cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

/* cudaFree synchronises with the device, so queued kernels using p finish first.
 * Its status is dropped: free has no error path, and a sticky device error
 * resurfaces at the next checked call. */
void kn_cuda_free(void *p) {
    if (p) (void)cudaFree(p);
}

int kn_cuda_memcpy(void *dst, int dst_on_device, const void *src, int src_on_device, size_t bytes, kn_err *err) {
    kn_cu_backend *be = kn_cu_get(err, "cuda memcpy");
    if (!be) return err->code;
    if (bytes == 0) return KN_OK;
    cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                        : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    /* On the ops' stream so a copy sees every op queued before it; then waited
     * for, because callers use (or free) host buffers right away. */
    KN_CU_TRY(err, "cuda memcpy", cudaMemcpyAsync(dst, src, bytes, kind, be->stream));
    KN_CU_TRY(err, "cuda memcpy", cudaStreamSynchronize(be->stream));
    return KN_OK;
}
