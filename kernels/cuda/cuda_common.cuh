/* Internal to the CUDA backend (the .cu files of kernels/cuda): shared state, error
 * reporting, device scratch, element types and dtype dispatch.
 *
 * Contract
 *  - One process-wide backend (kn_cu_get) on one device (0 unless
 *    kn_cuda_use_device chose another before the first use), one non-blocking
 *    stream and one cuBLASLt handle, created lazily on first use. Every op and
 *    copy is issued on that stream in host call order, from one host thread at
 *    a time (any thread: kn_cu_get makes the backend's device current on it).
 *  - Scratch (kn_cu_scratch): one grow-only device buffer; an op carves its
 *    temporaries from it and may not keep them past its return. Reuse by the
 *    next op is safe because both run on the same stream; growing frees the
 *    old buffer with cudaFree, which waits for the device first. ctx->scratch
 *    is not used: ops dispatch on the output's device, so the context's arena
 *    may well be a CPU arena.
 *  - Errors: every CUDA and cuBLAS call is checked and becomes KN_ERR_BACKEND
 *    "<op>: <call>: <error name>: <description>". Launches are checked with
 *    cudaGetLastError; with KN_CUDA_SYNC=1 in the environment each op also
 *    synchronises, so an asynchronous fault is reported by the op that caused
 *    it (the mode for checking ops one by one against the CPU backend).
 *  - Activations are F32, BF16 or F16; kernels are templated on the element
 *    type and accumulate in f32. Weights may also be F8_E4M3/F8_E5M2 (and F64
 *    for small vectors). */
#ifndef KN_CUDA_COMMON_CUH
#define KN_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/cuda_ops.h"

/* cuBLASLt is opened with dlopen on first use instead of being linked: its
 * ~94 KB of thread-local storage would otherwise join the static TLS of every
 * thread in the process, and threads with small fixed stacks (civetweb's
 * 100 KiB workers in `kiln serve`) could no longer be created. kn_lt holds the
 * entry points the backend calls; kn_cu_get loads them. */
#define KN_LT_FUNCS(X)                                                                                  \
    X(cublasLtCreate) X(cublasLtGetStatusName) X(cublasLtGetStatusString) X(cublasLtMatmulDescCreate)  \
    X(cublasLtMatmulDescSetAttribute) X(cublasLtMatmulDescDestroy) X(cublasLtMatrixLayoutCreate)        \
    X(cublasLtMatrixLayoutDestroy) X(cublasLtMatmulPreferenceCreate)                                    \
    X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulPreferenceDestroy)                          \
    X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmul)

struct kn_lt_api {
#define KN_LT_FIELD(f) decltype(&::f) f;
    KN_LT_FUNCS(KN_LT_FIELD)
#undef KN_LT_FIELD
};
extern kn_lt_api kn_lt;

typedef struct kn_cu_backend {
    int device; /* the GPU everything below lives on */
    cudaStream_t stream;
    cublasLtHandle_t lt;
    int device_count;
    int sync_each_op; /* KN_CUDA_SYNC=1 */
    void *scratch;
    size_t scratch_size;
} kn_cu_backend;

/* The initialised backend, or NULL with err set to
 * "<op>: no CUDA device: <reason>" (the reason is computed once). */
kn_cu_backend *kn_cu_get(kn_err *err, const char *op);

/* KN_OK, or KN_ERR_BACKEND naming op, the call and the CUDA/cuBLAS error. */
int kn_cu_check(cudaError_t e, kn_err *err, const char *op, const char *call);
int kn_cu_check_blas(cublasStatus_t s, kn_err *err, const char *op, const char *call);
#define KN_CU_TRY(err, op, call)                                                                            \
    do {                                                                                                    \
        int kn_rc_ = kn_cu_check((call), (err), (op), #call);                                               \
        if (kn_rc_) return kn_rc_;                                                                          \
    } while (0)

/* After a kernel launch: reports launch errors (and, with KN_CUDA_SYNC,
 * execution errors) against op. */
int kn_cu_launched(kn_cu_backend *be, kn_err *err, const char *op);

/* Device memory of at least `bytes`, valid until the next kn_cu_scratch. */
void *kn_cu_scratch(kn_cu_backend *be, size_t bytes, kn_err *err, const char *op);

/* Carving the scratch: returns the offset of a 256-byte aligned piece of
 * `bytes` and advances *end past it. */
static inline size_t kn_cu_take(size_t *end, size_t bytes) {
    size_t at = (*end + 255) & ~(size_t)255;
    *end = at + bytes;
    return at;
}

/* Grid for a grid-stride loop over n items with 256-thread blocks; capped so
 * that huge tensors loop instead of overflowing grid.x. */
static inline unsigned kn_cu_blocks(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

/* ---- element types ---------------------------------------------------------- */

__device__ __forceinline__ float kn_cu_f32(float v) { return v; }
__device__ __forceinline__ float kn_cu_f32(double v) { return (float)v; }
__device__ __forceinline__ float kn_cu_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float kn_cu_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float kn_cu_f32(__nv_fp8_e4m3 v) { return (float)v; }
__device__ __forceinline__ float kn_cu_f32(__nv_fp8_e5m2 v) { return (float)v; }

/* f32 to an activation type, rounding to nearest even. */
template <typename T> __device__ __forceinline__ T kn_cu_to(float v);
template <> __device__ __forceinline__ float kn_cu_to<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 kn_cu_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half kn_cu_to<__half>(float v) { return __float2half_rn(v); }

template <typename T> struct kn_cu_tag { typedef T type; };

/* Calls f(kn_cu_tag<T>()) with T the device type of activation dtype t. */
template <typename F> int kn_cu_act_type(kn_err *err, const char *op, kn_dtype t, F &&f) {
    switch (t) {
    case KN_F32: return f(kn_cu_tag<float>());
    case KN_BF16: return f(kn_cu_tag<__nv_bfloat16>());
    case KN_F16: return f(kn_cu_tag<__half>());
    default:
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: %s activations are not supported on CUDA", op,
                       kn_dtype_name(t));
    }
}

/* Same for weight dtypes (activation types, fp8 and, for vectors, F64). */
template <typename F> int kn_cu_weight_type(kn_err *err, const char *op, kn_dtype t, F &&f) {
    switch (t) {
    case KN_F8_E4M3: return f(kn_cu_tag<__nv_fp8_e4m3>());
    case KN_F8_E5M2: return f(kn_cu_tag<__nv_fp8_e5m2>());
    case KN_F64: return f(kn_cu_tag<double>());
    default: return kn_cu_act_type(err, op, t, f);
    }
}

/* The CUDA backend computes each op in one activation type; mixing input and
 * output types is only supported by linear. */
int kn_cu_same_dtype(kn_err *err, const char *op, const kn_tensor *ref, const kn_tensor *t);

/* ---- launching ---------------------------------------------------------------- */

/* f(i) for i in [0, n): the loop shared by all elementwise ops. */
template <typename F> __global__ void kn_cu_map_kernel(int64_t n, F f) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        f(i);
}

template <typename F> int kn_cu_map(kn_cu_backend *be, kn_err *err, const char *op, int64_t n, const F &f) {
    if (n <= 0) return KN_OK;
    kn_cu_map_kernel<<<kn_cu_blocks(n), 256, 0, be->stream>>>(n, f);
    return kn_cu_launched(be, err, op);
}

/* dst[i] = (Td)(src[i] * scale): widening weights, narrowing activations. */
template <typename Ts, typename Td> struct kn_cu_convert {
    const Ts *src;
    Td *dst;
    float scale;
    __device__ void operator()(int64_t i) const { dst[i] = kn_cu_to<Td>(kn_cu_f32(src[i]) * scale); }
};

/* A [n] weight vector (norm weight, bias) of any float dtype as n f32 values
 * with its scale applied, written to dst on the device. */
int kn_cu_vec_f32(kn_cu_backend *be, kn_err *err, const char *op, float *dst, const kn_tensor *v);

/* ---- reductions --------------------------------------------------------------- */

struct kn_cu_sum {
    __device__ static float identity() { return 0.0f; }
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct kn_cu_max {
    __device__ static float identity() { return -INFINITY; }
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename R> __device__ __forceinline__ float kn_cu_warp_reduce(float v, R r) {
    for (int o = 16; o > 0; o >>= 1) v = r(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Reduce v over the block; every thread gets the result. sh holds 32 floats.
 * Each warp reduces the partials itself, so two barriers suffice and the
 * function can be called back to back with the same sh. */
template <typename R> __device__ float kn_cu_block_reduce(float v, R r, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = kn_cu_warp_reduce(v, r);
    __syncthreads(); /* the previous call's readers are done with sh */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    return kn_cu_warp_reduce(lane < nwarps ? sh[lane] : R::identity(), r);
}

#endif
