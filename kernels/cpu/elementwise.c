/* CPU elementwise ops: activations, softmax, broadcast binary ops, DiT modulation. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/vmath.h"

int kn_cpu_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act) {
    int64_t n = kn_tensor_numel(x);
    const float *xd = x->data;
    float *yd = y->data;
    switch (act) {
    case KN_ACT_SILU:
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) yd[i] = xd[i] / (1.0f + kn_expf(-xd[i]));
        break;
    case KN_ACT_GELU_TANH:
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float v = xd[i];
            float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
            yd[i] = 0.5f * v * (1.0f + kn_tanhf(u));
        }
        break;
    case KN_ACT_GELU_ERF:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) yd[i] = 0.5f * xd[i] * (1.0f + erff(xd[i] * 0.7071067811865476f));
        break;
    case KN_ACT_QUICK_GELU:
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) yd[i] = xd[i] / (1.0f + kn_expf(-1.702f * xd[i]));
        break;
    case KN_ACT_TANH:
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) yd[i] = kn_tanhf(xd[i]);
        break;
    }
    return KN_OK;
}

int kn_cpu_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    int64_t rows = kn_tensor_rows(x), D = x->ne[x->ndim - 1];
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        float m = -INFINITY, s = 0.0f;
        for (int64_t i = 0; i < D; i++) m = xr[i] > m ? xr[i] : m;
        for (int64_t i = 0; i < D; i++) s += (yr[i] = kn_expf(xr[i] - m));
        for (int64_t i = 0; i < D; i++) yr[i] /= s;
    }
    return KN_OK;
}

static inline float binop(float a, float b, kn_binop op) {
    return op == KN_ADD ? a + b : op == KN_SUB ? a - b : op == KN_MUL ? a * b : a / b;
}

int kn_cpu_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op) {
    /* Right-align b's shape against a's; b's strides become 0 on broadcast dims. */
    int nd = a->ndim;
    int64_t bst[KN_MAX_DIMS] = {0};
    for (int i = 0; i < b->ndim; i++) {
        int da = nd - b->ndim + i;
        bst[da] = b->ne[i] == 1 ? 0 : b->st[i];
    }
    int64_t D = nd ? a->ne[nd - 1] : 1, rows = kn_tensor_rows(a);
    int64_t inner_st = nd ? bst[nd - 1] : 0;
    const float *ad = a->data, *bd = b->data;
    float *yd = y->data;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, boff = 0;
        for (int d = nd - 2; d >= 0; d--) {
            boff += (rem % a->ne[d]) * bst[d];
            rem /= a->ne[d];
        }
        const float *ar = ad + r * D, *br = bd + boff;
        float *yr = yd + r * D;
        if (inner_st)
            for (int64_t i = 0; i < D; i++) yr[i] = binop(ar[i], br[i], op);
        else
            for (int64_t i = 0; i < D; i++) yr[i] = binop(ar[i], br[0], op);
    }
    return KN_OK;
}

int kn_cpu_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t) {
    int64_t n = kn_tensor_numel(x);
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) yd[i] = xd[i] * s + t;
    return KN_OK;
}

int kn_cpu_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift, const kn_tensor *scale) {
    int64_t B = x->ne[0], L = x->ne[1], D = x->ne[2];
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t l = 0; l < L; l++) {
            const float *sh = (const float *)shift->data + b * shift->st[0];
            const float *sc = (const float *)scale->data + b * scale->st[0];
            const float *xr = xd + (b * L + l) * D;
            float *yr = yd + (b * L + l) * D;
            for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * (1.0f + sc[i]) + sh[i];
        }
    }
    return KN_OK;
}

int kn_cpu_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate) {
    int64_t B = x->ne[0], L = x->ne[1], D = x->ne[2];
    const float *xd = x->data;
    float *ad = acc->data;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t l = 0; l < L; l++) {
            const float *g = (const float *)gate->data + b * gate->st[0];
            const float *xr = xd + (b * L + l) * D;
            float *ar = ad + (b * L + l) * D;
            for (int64_t i = 0; i < D; i++) ar[i] += g[i] * xr[i];
        }
    }
    return KN_OK;
}
