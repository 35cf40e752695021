/* CPU low-rank adapter terms of kn_linear_lora: two thin GEMMs per adapter.
 * With rank r << K, N the first product x @ down^T is [M, r] and the second
 * accumulates straight into y through the GEMM's beta, so y is read and
 * written once per adapter and nothing of size N x K is ever formed.
 * The factors are widened to F32 here, per call, into the reused scratch
 * arena: keeping F32 copies per LoRA instead made every swap pay first-touch
 * page faults on fresh memory (~60 ms for a rank-64 LoRA on 24 linears,
 * loras/README.md), while widening r(K+N) values per call is noise next to
 * the M N K GEMM it accompanies. */
#include "kernels/cpu/cpu_ops.h"

int kn_cpu_lora_accumulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_lora_adapter *ad, int n) {
    int64_t M = kn_tensor_rows(x), K = x->ne[x->ndim - 1], N = y->ne[y->ndim - 1];
    int rc = KN_OK;
    for (int i = 0; !rc && i < n; i++) {
        int64_t r = ad[i].down->ne[0];
        size_t mark = kn_arena_mark(ctx->scratch);
        kn_tensor down, up;
        float *t = NULL;
        rc = kn_cpu_weight_f32(ctx, &down, ad[i].down);
        if (!rc) rc = kn_cpu_weight_f32(ctx, &up, ad[i].up);
        if (!rc && !(t = kn_arena_alloc(ctx->scratch, (size_t)(M * r) * sizeof *t, &ctx->err))) rc = ctx->err.code;
        if (!rc) rc = kn_cpu_gemm_f32(M, r, K, x->data, K, 1, down.data, K, 0.0f, t, r, &ctx->err);
        if (!rc) {
            /* the scale goes on the thin [M, r] product, not on y */
            for (int64_t k = 0; k < M * r; k++) t[k] *= ad[i].scale;
            /* a slice adapter writes its rows of y in place: the same GEMM on a column offset */
            rc = kn_cpu_gemm_f32(M, up.ne[0], r, t, r, 1, up.data, r, 1.0f, (float *)y->data + ad[i].row0, N,
                                 &ctx->err);
        }
        kn_arena_reset(ctx->scratch, mark);
    }
    return rc;
}
