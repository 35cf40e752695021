/* Elementwise CUDA ops: rope, activation, binary, affine, modulate, gate_add.
 * Each is a functor run by kn_cu_map over its output elements (or, for rope,
 * rotation pairs); every thread reads what it writes, so in place is safe. */
#include "kernels/cuda/cuda_common.cuh"

/* ---- rope ---------------------------------------------------------------------- */

template <typename T> struct kn_cu_rope_f {
    T *x;
    const float *cos, *sin;
    int64_t cos_st0, cos_st1, sin_st0, sin_st1;
    int64_t L, H, half;
    int interleaved;
    __device__ void operator()(int64_t p) const {
        int64_t i = p % half, row = p / half; /* row = (b * L + l) * H + h */
        int64_t l = (row / H) % L;
        T *r = x + row * 2 * half;
        int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        float a = kn_cu_f32(r[ia]), b = kn_cu_f32(r[ib]);
        float c = cos[l * cos_st0 + i * cos_st1], s = sin[l * sin_st0 + i * sin_st1];
        r[ia] = kn_cu_to<T>(a * c - b * s);
        r[ib] = kn_cu_to<T>(a * s + b * c);
    }
};

int kn_cuda_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode) {
    const char *op = "cuda rope";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    return kn_cu_act_type(&ctx->err, op, x->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_rope_f<T> f = {(T *)x->data, (const float *)cos->data, (const float *)sin->data,
                             cos->st[0], cos->st[1], sin->st[0], sin->st[1], x->ne[1], x->ne[2], x->ne[3] / 2,
                             mode == KN_ROPE_INTERLEAVED};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(x) / 2, f);
    });
}

/* ---- activation ------------------------------------------------------------------ */

template <typename T> struct kn_cu_act_f {
    const T *x;
    T *y;
    kn_act act;
    __device__ void operator()(int64_t i) const {
        float v = kn_cu_f32(x[i]), r;
        switch (act) {
        case KN_ACT_SILU: r = v / (1.0f + expf(-v)); break;
        case KN_ACT_GELU_TANH: r = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); break;
        case KN_ACT_GELU_ERF: r = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f)); break;
        case KN_ACT_TANH: r = tanhf(v); break;
        default: r = v / (1.0f + expf(-1.702f * v)); break; /* KN_ACT_QUICK_GELU */
        }
        y[i] = kn_cu_to<T>(r);
    }
};

int kn_cuda_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act) {
    const char *op = "cuda activation";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, y, x)) return ctx->err.code;
    return kn_cu_act_type(&ctx->err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_act_f<T> f = {(const T *)x->data, (T *)y->data, act};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(y), f);
    });
}

/* ---- binary ------------------------------------------------------------------------ */

/* a's shape and, per dim of a, b's stride (0 where b broadcasts). */
typedef struct kn_cu_bcast {
    int ndim;
    int64_t ne[KN_MAX_DIMS];
    int64_t b_st[KN_MAX_DIMS];
} kn_cu_bcast;

template <typename T, typename TB> struct kn_cu_binary_f {
    const T *a;
    const TB *b;
    T *y;
    kn_binop op;
    kn_cu_bcast bc;
    __device__ void operator()(int64_t i) const {
        int64_t rest = i, boff = 0;
        for (int d = bc.ndim - 1; d >= 0; d--) {
            boff += (rest % bc.ne[d]) * bc.b_st[d];
            rest /= bc.ne[d];
        }
        float u = kn_cu_f32(a[i]), v = kn_cu_f32(b[boff]);
        y[i] = kn_cu_to<T>(op == KN_ADD ? u + v : op == KN_SUB ? u - v : op == KN_MUL ? u * v : u / v);
    }
};

int kn_cuda_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op) {
    const char *name = "cuda binary";
    kn_cu_backend *be = kn_cu_get(&ctx->err, name);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, name, y, a)) return ctx->err.code;
    kn_cu_bcast bc;
    bc.ndim = a->ndim;
    for (int d = 0; d < a->ndim; d++) {
        int db = d - (a->ndim - b->ndim); /* b's dims align with a's from the right */
        bc.ne[d] = a->ne[d];
        bc.b_st[d] = db < 0 || b->ne[db] == 1 ? 0 : b->st[db];
    }
    /* b may be a different activation type than a (e.g. an F32 bias on BF16). */
    return kn_cu_act_type(&ctx->err, name, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        return kn_cu_act_type(&ctx->err, name, b->dtype, [&](auto btag) {
            typedef typename decltype(btag)::type TB;
            kn_cu_binary_f<T, TB> f = {(const T *)a->data, (const TB *)b->data, (T *)y->data, op, bc};
            return kn_cu_map(be, &ctx->err, name, kn_tensor_numel(y), f);
        });
    });
}

/* ---- affine ------------------------------------------------------------------------ */

template <typename T> struct kn_cu_affine_f {
    const T *x;
    T *y;
    float s, t;
    __device__ void operator()(int64_t i) const { y[i] = kn_cu_to<T>(kn_cu_f32(x[i]) * s + t); }
};

int kn_cuda_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t) {
    const char *op = "cuda affine";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, y, x)) return ctx->err.code;
    return kn_cu_act_type(&ctx->err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_affine_f<T> f = {(const T *)x->data, (T *)y->data, s, t};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(y), f);
    });
}

/* ---- modulate, gate_add -------------------------------------------------------------- */

/* Element i of x [B, L, D] reads row b of a [B, D] modulation vector whose
 * rows are `st` elements apart. */
struct kn_cu_mod_index {
    int64_t LD, D;
    __device__ int64_t at(int64_t i, int64_t st) const { return (i / LD) * st + i % D; }
};

template <typename T> struct kn_cu_modulate_f {
    const T *x, *shift, *scale;
    T *y;
    int64_t shift_st, scale_st;
    kn_cu_mod_index ix;
    __device__ void operator()(int64_t i) const {
        float sc = kn_cu_f32(scale[ix.at(i, scale_st)]), sh = kn_cu_f32(shift[ix.at(i, shift_st)]);
        y[i] = kn_cu_to<T>(kn_cu_f32(x[i]) * (1.0f + sc) + sh);
    }
};

template <typename T> struct kn_cu_gate_add_f {
    const T *x, *gate;
    T *acc;
    int64_t gate_st;
    kn_cu_mod_index ix;
    __device__ void operator()(int64_t i) const {
        acc[i] = kn_cu_to<T>(kn_cu_f32(acc[i]) + kn_cu_f32(gate[ix.at(i, gate_st)]) * kn_cu_f32(x[i]));
    }
};

int kn_cuda_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift, const kn_tensor *scale) {
    const char *op = "cuda modulate";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, y, x)) return ctx->err.code;
    kn_cu_mod_index ix = {x->ne[1] * x->ne[2], x->ne[2]};
    return kn_cu_act_type(&ctx->err, op, y->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_modulate_f<T> f = {(const T *)x->data, (const T *)shift->data, (const T *)scale->data, (T *)y->data,
                                 shift->st[0], scale->st[0], ix};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(y), f);
    });
}

int kn_cuda_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate) {
    const char *op = "cuda gate_add";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    if (kn_cu_same_dtype(&ctx->err, op, acc, x)) return ctx->err.code;
    kn_cu_mod_index ix = {x->ne[1] * x->ne[2], x->ne[2]};
    return kn_cu_act_type(&ctx->err, op, acc->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_gate_add_f<T> f = {(const T *)x->data, (const T *)gate->data, (T *)acc->data, gate->st[0], ix};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(acc), f);
    });
}
