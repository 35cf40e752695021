/* CUDA linear: y[M, N] = x[M, K] @ (w[N, K] * w.scale)^T (+ bias[N]) with cuBLASLt.
 *
 * The GEMM runs on one input type chosen by ctx->precision (F32 without
 * TF32, BF16 or F16), always accumulating in f32 (CUBLAS_COMPUTE_32F):
 *  - x is converted into scratch when its dtype differs from that type;
 *  - w is read in place when it already has it, otherwise converted panel by
 *    panel (KN_CU_PANEL_BYTES of rows at a time) into scratch, never as a
 *    whole; fp8 values are exact in every compute type;
 *  - w.scale is the GEMM's alpha, so panels are plain conversions;
 *  - cuBLASLt writes y directly when y is F32 or the compute type (the D
 *    types it supports for those inputs), otherwise an f32 buffer that the
 *    finishing kernel rounds into y. That kernel also adds the bias (any float
 *    dtype, widened to f32), in place on y when no buffer is needed.
 * Row-major y = x w^T, read column-major, is y^T = w x^T: cuBLASLt sees A = w
 * stored K x N (used transposed), B = x stored K x M and D = y stored N x M. */
#include "kernels/cuda/cuda_common.cuh"

#define KN_CU_PANEL_BYTES ((size_t)32 << 20)
#define KN_CU_LT_WORKSPACE ((size_t)32 << 20)

static cudaDataType_t kn_cu_data_type(kn_dtype t) {
    return t == KN_F32 ? CUDA_R_32F : t == KN_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* The largest power of two dividing p, up to cuBLASLt's default assumption of 256. */
static uint32_t kn_cu_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    a &= ~a + 1;
    return a == 0 || a > 256 ? 256 : (uint32_t)a;
}

typedef struct kn_cu_gemm {
    cudaDataType_t ab, d; /* A and B share a type; D's may differ */
    const void *A, *B;
    void *D;
    int64_t m, n, k, ldd;
    float alpha;
    void *ws;
    size_t ws_size;
} kn_cu_gemm;

/* D[m, n] = alpha * A^T B (column-major, A stored k x m). */
static int kn_cu_lt_matmul(kn_cu_backend *be, kn_err *err, const char *op, const kn_cu_gemm *g) {
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    cublasOperation_t trans = CUBLAS_OP_T;
    uint64_t ws_size = g->ws_size;
    uint32_t align_a = kn_cu_alignment(g->A), align_b = kn_cu_alignment(g->B), align_d = kn_cu_alignment(g->D);
    float beta = 0.0f;
    int found = 0, rc = KN_OK;
#define KN_CU_LT(call)                                                                                      \
    do {                                                                                                    \
        if ((rc = kn_cu_check_blas((call), err, op, #call))) goto done;                                     \
    } while (0)
    KN_CU_LT(kn_lt.cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    KN_CU_LT(kn_lt.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
    KN_CU_LT(kn_lt.cublasLtMatrixLayoutCreate(&la, g->ab, (uint64_t)g->k, (uint64_t)g->m, g->k));
    KN_CU_LT(kn_lt.cublasLtMatrixLayoutCreate(&lb, g->ab, (uint64_t)g->k, (uint64_t)g->n, g->k));
    KN_CU_LT(kn_lt.cublasLtMatrixLayoutCreate(&ld, g->d, (uint64_t)g->m, (uint64_t)g->n, g->ldd));
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceCreate(&pref));
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size,
                                                  sizeof ws_size));
    /* panels and odd shapes give pointers below the 256 bytes cuBLASLt assumes */
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                  sizeof align_a));
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                  sizeof align_b));
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                  sizeof align_d));
    KN_CU_LT(kn_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                  sizeof align_d));
    KN_CU_LT(kn_lt.cublasLtMatmulAlgoGetHeuristic(be->lt, desc, la, lb, ld, ld, pref, 1, &heur, &found));
    if (!found) {
        rc = kn_fail(err, KN_ERR_BACKEND, "%s: cuBLASLt has no algorithm for m=%lld n=%lld k=%lld", op,
                     (long long)g->m, (long long)g->n, (long long)g->k);
        goto done;
    }
    KN_CU_LT(kn_lt.cublasLtMatmul(be->lt, desc, &g->alpha, g->A, la, g->B, lb, &beta, g->D, ld, g->D, ld, &heur.algo,
                            g->ws, g->ws_size, be->stream));
#undef KN_CU_LT
done:;
    /* Releases are checked too, reporting only when nothing failed before them. */
#define KN_CU_LT_FREE(call)                                                                                 \
    do {                                                                                                    \
        int r_ = kn_cu_check_blas((call), rc ? NULL : err, op, #call);                                      \
        if (!rc) rc = r_;                                                                                   \
    } while (0)
    if (pref) KN_CU_LT_FREE(kn_lt.cublasLtMatmulPreferenceDestroy(pref));
    if (ld) KN_CU_LT_FREE(kn_lt.cublasLtMatrixLayoutDestroy(ld));
    if (lb) KN_CU_LT_FREE(kn_lt.cublasLtMatrixLayoutDestroy(lb));
    if (la) KN_CU_LT_FREE(kn_lt.cublasLtMatrixLayoutDestroy(la));
    if (desc) KN_CU_LT_FREE(kn_lt.cublasLtMatmulDescDestroy(desc));
#undef KN_CU_LT_FREE
    return rc;
}

/* dst[0, n) = src[0, n) converted from dtype st to activation dtype dt, unscaled. */
static int kn_cu_convert_n(kn_cu_backend *be, kn_err *err, const char *op, void *dst, kn_dtype dt, const void *src,
                           kn_dtype st, int64_t n) {
    return kn_cu_weight_type(err, op, st, [&](auto stag) {
        typedef typename decltype(stag)::type Ts;
        return kn_cu_act_type(err, op, dt, [&](auto dtag) {
            typedef typename decltype(dtag)::type Td;
            kn_cu_convert<Ts, Td> f = {(const Ts *)src, (Td *)dst, 1.0f};
            return kn_cu_map(be, err, op, n, f);
        });
    });
}

/* y[m, n] = src[m, n] + bias[n] (bias may be NULL); src is the f32 GEMM
 * buffer or y itself. */
template <typename Ts, typename Td> struct kn_cu_finish_f {
    const Ts *src;
    Td *y;
    const float *bias;
    int64_t N;
    __device__ void operator()(int64_t i) const {
        y[i] = kn_cu_to<Td>(kn_cu_f32(src[i]) + (bias ? bias[i % N] : 0.0f));
    }
};

int kn_cuda_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias) {
    const char *op = "cuda linear";
    kn_err *err = &ctx->err;
    kn_cu_backend *be = kn_cu_get(err, op);
    if (!be) return err->code;
    const int64_t M = kn_tensor_rows(x), K = w->ne[1], N = w->ne[0]; /* ops.c checked K against x */
    if (M == 0 || N == 0) return KN_OK;
    const kn_dtype ct = ctx->precision == KN_PREC_BF16 ? KN_BF16 : ctx->precision == KN_PREC_FP16 ? KN_F16 : KN_F32;
    const size_t cs = kn_dtype_size(ct);
    const int convert_x = x->dtype != ct, panel_w = w->dtype != ct;
    const int via_f32 = y->dtype != ct && y->dtype != KN_F32;
    const kn_dtype dt = via_f32 ? KN_F32 : y->dtype;

    int64_t pn = N; /* weight rows per panel */
    if (panel_w && K > 0) {
        pn = (int64_t)(KN_CU_PANEL_BYTES / ((size_t)K * cs));
        if (pn >= 64) pn &= ~(int64_t)63; /* keeps each panel's slice of y aligned */
        pn = pn < 1 ? 1 : pn > N ? N : pn;
    }
    size_t end = 0;
    size_t ws_at = kn_cu_take(&end, KN_CU_LT_WORKSPACE);
    size_t x_at = kn_cu_take(&end, convert_x ? (size_t)(M * K) * cs : 0);
    size_t w_at = kn_cu_take(&end, panel_w ? (size_t)(pn * K) * cs : 0);
    size_t d_at = kn_cu_take(&end, via_f32 ? (size_t)(M * N) * sizeof(float) : 0);
    size_t b_at = kn_cu_take(&end, bias ? (size_t)N * sizeof(float) : 0);
    char *s = (char *)kn_cu_scratch(be, end, err, op);
    if (!s) return err->code;

    const void *xin = x->data;
    if (convert_x) {
        if (kn_cu_convert_n(be, err, op, s + x_at, ct, x->data, x->dtype, M * K)) return err->code;
        xin = s + x_at;
    }
    float *bf = bias ? (float *)(s + b_at) : NULL;
    if (bias && kn_cu_vec_f32(be, err, op, bf, bias)) return err->code;
    char *d = via_f32 ? s + d_at : (char *)y->data;
    const size_t ds = kn_dtype_size(dt);

    if (K == 0) { /* an empty sum: cuBLASLt is not asked about k = 0 */
        KN_CU_TRY(err, op, cudaMemsetAsync(d, 0, (size_t)(M * N) * ds, be->stream));
    } else {
        const size_t wrow = (size_t)K * kn_dtype_size(w->dtype);
        for (int64_t n0 = 0; n0 < N; n0 += pn) {
            int64_t cur = N - n0 < pn ? N - n0 : pn;
            const void *a = (const char *)w->data + (size_t)n0 * wrow;
            if (panel_w) {
                if (kn_cu_convert_n(be, err, op, s + w_at, ct, a, w->dtype, cur * K)) return err->code;
                a = s + w_at;
            }
            kn_cu_gemm g = {kn_cu_data_type(ct), kn_cu_data_type(dt), a, xin, d + (size_t)n0 * ds,
                            cur, M, K, N, w->scale, s + ws_at, KN_CU_LT_WORKSPACE};
            if (kn_cu_lt_matmul(be, err, op, &g)) return err->code;
        }
    }
    if (!via_f32 && !bias) return KN_OK;
    return kn_cu_act_type(err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        if (via_f32) {
            kn_cu_finish_f<float, T> f = {(const float *)d, (T *)y->data, bf, N};
            return kn_cu_map(be, err, op, M * N, f);
        }
        kn_cu_finish_f<T, T> f = {(const T *)d, (T *)y->data, bf, N};
        return kn_cu_map(be, err, op, M * N, f);
    });
}
