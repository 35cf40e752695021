/* CUDA scaled dot-product attention: flash-style, with an online softmax.
 *
 * A block of KN_CU_ATT_WARPS warps serves that many consecutive query rows of
 * one (batch, query head); each warp owns one row. Keys and values stream
 * through shared memory in tiles of 32 (as f32, rows padded to D + 1 so the
 * per-lane key reads hit distinct banks). Per tile, lane j scores key j, the
 * warp takes the tile max and rescales its running sum and accumulator, then
 * adds p_j * v_j; the accumulator lives in registers, lane owning dims
 * lane + 32c. Nothing of size Lq x Lk is ever stored.
 *
 * Masked keys (causal, or a key-mask or bias value of -inf) score -inf and
 * contribute exactly 0; a row whose keys are all masked outputs 0 rather than
 * NaN, and lse -inf. q, k and v are read through their strides (the head dim
 * is contiguous) as they are staged, so fused-qkv views cost no copy. */
#include "kernels/cuda/cuda_common.cuh"

#define KN_CU_ATT_WARPS 8
#define KN_CU_ATT_TILE 32 /* keys per tile: one per lane */
#define KN_CU_ATT_MAX_D 256

typedef struct kn_cu_att_args {
    const void *q, *k, *v;
    void *out;
    const float *mask; /* [B, Lk] or NULL */
    const float *bias; /* [Bb, Hq, Lq, Lk] or NULL */
    float *lse;        /* [B, Hq, Lq] or NULL */
    int64_t qst[3], kst[3], vst[3]; /* element strides of batch, position and head */
    int64_t bias_bst;               /* 0 when one bias serves every batch */
    int64_t Lq, Lk;
    int Hq, Hkv, D, causal;
    float scale;
} kn_cu_att_args;

/* NPL: accumulator dims per lane, ceil(D / 32) rounded up to a power of two. */
template <typename T, int NPL>
__global__ void __launch_bounds__(KN_CU_ATT_WARPS * 32) kn_cu_attention_kernel(kn_cu_att_args a) {
    extern __shared__ float sm[];
    const int D = a.D, ks = D + 1;
    float *kt = sm, *vt = kt + KN_CU_ATT_TILE * ks, *qs = vt + KN_CU_ATT_TILE * ks;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t b = blockIdx.z, row0 = (int64_t)blockIdx.x * KN_CU_ATT_WARPS, i = row0 + warp;
    const int h = blockIdx.y, hk = h / (a.Hq / a.Hkv);
    const bool active = i < a.Lq;
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;

    float *qrow = qs + warp * D; /* scaled once here instead of per score */
    const T *qi = q + b * a.qst[0] + i * a.qst[1] + h * a.qst[2];
    if (active)
        for (int d = lane; d < D; d += 32) qrow[d] = kn_cu_f32(qi[d]) * a.scale;

    float acc[NPL];
    for (int c = 0; c < NPL; c++) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    /* causal: no query of this block sees keys past its last row */
    int64_t kend = a.causal ? min(a.Lk, row0 + KN_CU_ATT_WARPS) : a.Lk;

    for (int64_t k0 = 0; k0 < kend; k0 += KN_CU_ATT_TILE) {
        __syncthreads(); /* previous tile consumed; on the first pass, qrow written */
        for (int idx = threadIdx.x; idx < KN_CU_ATT_TILE * D; idx += blockDim.x) {
            int j = idx / D, d = idx % D;
            int64_t key = k0 + j;
            bool in = key < kend;
            kt[j * ks + d] = in ? kn_cu_f32(k[b * a.kst[0] + key * a.kst[1] + hk * a.kst[2] + d]) : 0.0f;
            vt[j * ks + d] = in ? kn_cu_f32(v[b * a.vst[0] + key * a.vst[1] + hk * a.vst[2] + d]) : 0.0f;
        }
        __syncthreads();
        if (!active) continue; /* padding rows still take part in the barriers */

        int64_t key = k0 + lane;
        float s = -INFINITY;
        if (key < kend && (!a.causal || key <= i)) {
            const float *kr = kt + lane * ks;
            s = 0.0f;
            for (int d = 0; d < D; d++) s += qrow[d] * kr[d];
            if (a.mask) s += a.mask[b * a.Lk + key];
            if (a.bias) s += a.bias[b * a.bias_bst + ((int64_t)h * a.Lq + i) * a.Lk + key];
        }
        float mnew = fmaxf(m, kn_cu_warp_reduce(s, kn_cu_max()));
        /* -inf guards: exp(-inf - -inf) would be NaN */
        float p = s == -INFINITY ? 0.0f : expf(s - mnew);
        float corr = m == -INFINITY ? 0.0f : expf(m - mnew);
        l = l * corr + kn_cu_warp_reduce(p, kn_cu_sum());
        m = mnew;
        for (int c = 0; c < NPL; c++) acc[c] *= corr;
        int jn = (int)min((int64_t)KN_CU_ATT_TILE, kend - k0);
        for (int j = 0; j < jn; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            const float *vr = vt + j * ks;
            for (int c = 0; c < NPL; c++) {
                int d = lane + 32 * c;
                if (d < D) acc[c] += pj * vr[d];
            }
        }
    }
    if (!active) return;
    /* l > 0 exactly when some key scored above -inf (the max contributes 1) */
    if (a.lse && lane == 0) a.lse[(b * a.Hq + h) * a.Lq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
    T *out = (T *)a.out + ((b * a.Lq + i) * a.Hq + h) * D;
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int c = 0; c < NPL; c++) {
        int d = lane + 32 * c;
        if (d < D) out[d] = kn_cu_to<T>(acc[c] * inv);
    }
}

template <typename T, int NPL>
static int kn_cu_attention_launch(kn_cu_backend *be, kn_err *err, const char *op, const kn_cu_att_args &a,
                                  int64_t B) {
    size_t smem = ((size_t)2 * KN_CU_ATT_TILE * (a.D + 1) + (size_t)KN_CU_ATT_WARPS * a.D) * sizeof(float);
    /* above the default 48 KiB (D > 169) the kernel must opt in; sm_80+ allow it up to D = 256 */
    if (smem > 48 * 1024)
        KN_CU_TRY(err, op, cudaFuncSetAttribute(kn_cu_attention_kernel<T, NPL>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)((a.Lq + KN_CU_ATT_WARPS - 1) / KN_CU_ATT_WARPS), (unsigned)a.Hq, (unsigned)B);
    kn_cu_attention_kernel<T, NPL><<<grid, KN_CU_ATT_WARPS * 32, smem, be->stream>>>(a);
    return kn_cu_launched(be, err, op);
}

int kn_cuda_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                      const kn_attention_args *args) {
    const char *op = "cuda attention";
    kn_err *err = &ctx->err;
    kn_cu_backend *be = kn_cu_get(err, op);
    if (!be) return err->code;
    if (kn_cu_same_dtype(err, op, out, q) || kn_cu_same_dtype(err, op, out, k) || kn_cu_same_dtype(err, op, out, v))
        return err->code;
    int64_t B = q->ne[0], Lq = q->ne[1], Hq = q->ne[2], D = q->ne[3];
    if (D > KN_CU_ATT_MAX_D || Hq > 65535 || B > 65535 || (Lq + KN_CU_ATT_WARPS - 1) / KN_CU_ATT_WARPS > INT32_MAX)
        return kn_fail(err, KN_ERR_UNSUPPORTED,
                       "%s: head dim %lld (max %d), %lld heads or batch %lld (max 65535) or %lld queries too large",
                       op, (long long)D, KN_CU_ATT_MAX_D, (long long)Hq, (long long)B, (long long)Lq);
    if (B == 0 || Lq == 0 || Hq == 0 || D == 0) return KN_OK;
    kn_cu_att_args a = {q->data,
                        k->data,
                        v->data,
                        out->data,
                        args->key_mask ? (const float *)args->key_mask->data : NULL,
                        args->bias ? (const float *)args->bias->data : NULL,
                        args->lse ? (float *)args->lse->data : NULL,
                        {q->st[0], q->st[1], q->st[2]},
                        {k->st[0], k->st[1], k->st[2]},
                        {v->st[0], v->st[1], v->st[2]},
                        args->bias && args->bias->ne[0] > 1 ? args->bias->st[0] : 0,
                        Lq,
                        k->ne[1],
                        (int)Hq,
                        (int)k->ne[2],
                        (int)D,
                        args->causal,
                        args->scale};
    return kn_cu_act_type(err, op, out->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        if (D <= 32) return kn_cu_attention_launch<T, 1>(be, err, op, a, B);
        if (D <= 64) return kn_cu_attention_launch<T, 2>(be, err, op, a, B);
        if (D <= 128) return kn_cu_attention_launch<T, 4>(be, err, op, a, B);
        return kn_cu_attention_launch<T, 8>(be, err, op, a, B);
    });
}
