/* Row-wise CUDA ops over the last dim: rmsnorm, layernorm, softmax.
 * One 256-thread block per row (grid-stride over rows), f32 block reductions.
 * Every pass re-reads the row from global memory (L2-resident for any
 * realistic D), which keeps the kernels independent of D and makes in place
 * safe: each element is written by the thread that read it, after the last
 * reduction over the row. */
#include "kernels/cuda/cuda_common.cuh"

#define KN_CU_ROW_THREADS 256
#define KN_CU_ROW_BLOCKS 65535

/* RMSNorm is LayerNorm without centring: y = (x - mean) / sqrt(var + eps) * w + b
 * with mean = 0 (and b = 0) when !center, so both share one kernel. */
template <typename T>
__global__ void __launch_bounds__(KN_CU_ROW_THREADS)
kn_cu_norm_kernel(const T *x, T *y, const float *w, const float *b, int64_t rows, int64_t D, float eps,
                  int center) {
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        float mean = 0.0f;
        if (center) {
            float s = 0.0f;
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += kn_cu_f32(xr[d]);
            mean = kn_cu_block_reduce(s, kn_cu_sum(), sh) / (float)D;
        }
        float ss = 0.0f;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            float v = kn_cu_f32(xr[d]) - mean;
            ss += v * v;
        }
        float inv = 1.0f / sqrtf(kn_cu_block_reduce(ss, kn_cu_sum(), sh) / (float)D + eps);
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            float v = (kn_cu_f32(xr[d]) - mean) * inv;
            if (w) v *= w[d];
            if (b) v += b[d];
            yr[d] = kn_cu_to<T>(v);
        }
    }
}

static int kn_cu_norm(kn_ctx *ctx, const char *op, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                      const kn_tensor *b, float eps, int center) {
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, y, x)) return ctx->err.code;
    int64_t D = x->ndim ? x->ne[x->ndim - 1] : 1, rows = kn_tensor_rows(x);
    if (rows == 0 || D == 0) return KN_OK;
    /* norm weights arrive in any float dtype; the kernel reads them as f32 */
    size_t end = 0, w_at = kn_cu_take(&end, (size_t)D * sizeof(float)), b_at = kn_cu_take(&end, (size_t)D * sizeof(float));
    char *s = (char *)kn_cu_scratch(be, end, &ctx->err, op);
    if (!s) return ctx->err.code;
    float *wf = w ? (float *)(s + w_at) : NULL, *bf = b ? (float *)(s + b_at) : NULL;
    if (w && kn_cu_vec_f32(be, &ctx->err, op, wf, w)) return ctx->err.code;
    if (b && kn_cu_vec_f32(be, &ctx->err, op, bf, b)) return ctx->err.code;
    unsigned blocks = (unsigned)(rows < KN_CU_ROW_BLOCKS ? rows : KN_CU_ROW_BLOCKS);
    return kn_cu_act_type(&ctx->err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_norm_kernel<T><<<blocks, KN_CU_ROW_THREADS, 0, be->stream>>>((const T *)x->data, (T *)y->data, wf,
                                                                           bf, rows, D, eps, center);
        return kn_cu_launched(be, &ctx->err, op);
    });
}

int kn_cuda_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps) {
    return kn_cu_norm(ctx, "cuda rmsnorm", y, x, w, NULL, eps, 0);
}

int kn_cuda_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b,
                      float eps) {
    return kn_cu_norm(ctx, "cuda layernorm", y, x, w, b, eps, 1);
}

template <typename T>
__global__ void __launch_bounds__(KN_CU_ROW_THREADS)
kn_cu_softmax_kernel(const T *x, T *y, int64_t rows, int64_t D) {
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        float m = -INFINITY;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) m = fmaxf(m, kn_cu_f32(xr[d]));
        m = kn_cu_block_reduce(m, kn_cu_max(), sh);
        float s = 0.0f;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += expf(kn_cu_f32(xr[d]) - m);
        float inv = 1.0f / kn_cu_block_reduce(s, kn_cu_sum(), sh);
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = kn_cu_to<T>(expf(kn_cu_f32(xr[d]) - m) * inv);
    }
}

int kn_cuda_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    const char *op = "cuda softmax";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, y, x)) return ctx->err.code;
    int64_t D = x->ndim ? x->ne[x->ndim - 1] : 1, rows = kn_tensor_rows(x);
    if (rows == 0 || D == 0) return KN_OK;
    unsigned blocks = (unsigned)(rows < KN_CU_ROW_BLOCKS ? rows : KN_CU_ROW_BLOCKS);
    return kn_cu_act_type(&ctx->err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_softmax_kernel<T><<<blocks, KN_CU_ROW_THREADS, 0, be->stream>>>((const T *)x->data, (T *)y->data,
                                                                              rows, D);
        return kn_cu_launched(be, &ctx->err, op);
    });
}
