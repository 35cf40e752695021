/* CUDA patchify / unpatchify (kernels/ops.h): one thread per element written,
 * each a plain copy, so the result is bit-identical to the CPU's. The latent
 * is contiguous [B, C, H, W] (a [B, C, 1, H, W] video has the same layout);
 * tokens are [B, hl*wl, F] rows with batch and token strides tst0, tst1. */
#include "kernels/cuda/cuda_common.cuh"

struct kn_cu_patch_geom {
    int64_t C, H, W, hl, wl, F, tst0, tst1;
    int p, c_first; /* c_first: KN_PATCH_C_PY_PX */
    /* where channel c of patch pixel (py, px) sits in a token */
    __device__ int64_t feature(int64_t c, int64_t py, int64_t px) const {
        return c_first ? (c * p + py) * p + px : (py * p + px) * C + c;
    }
};

template <typename T> struct kn_cu_patchify_f {
    const T *x;
    T *tok;
    kn_cu_patch_geom g;
    __device__ void operator()(int64_t n) const {
        int64_t f = n % g.F, t = (n / g.F) % (g.hl * g.wl), b = n / (g.F * g.hl * g.wl);
        int64_t c = g.c_first ? f / (g.p * g.p) : f % g.C, pp = g.c_first ? f % (g.p * g.p) : f / g.C;
        /* circular padding: rows and columns past the edge wrap to the start */
        int64_t y = ((t / g.wl) * g.p + pp / g.p) % g.H, xx = ((t % g.wl) * g.p + pp % g.p) % g.W;
        tok[b * g.tst0 + t * g.tst1 + f] = x[((b * g.C + c) * g.H + y) * g.W + xx];
    }
};

template <typename T> struct kn_cu_unpatchify_f {
    const T *tok;
    T *x;
    kn_cu_patch_geom g;
    __device__ void operator()(int64_t n) const {
        int64_t xx = n % g.W, y = (n / g.W) % g.H, c = (n / (g.W * g.H)) % g.C, b = n / (g.W * g.H * g.C);
        int64_t t = (y / g.p) * g.wl + xx / g.p;
        x[n] = tok[b * g.tst0 + t * g.tst1 + g.feature(c, y % g.p, xx % g.p)];
    }
};

static kn_cu_patch_geom patch_geom(const kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order) {
    int nd = x->ndim;
    kn_cu_patch_geom g;
    g.C = x->ne[1];
    g.H = x->ne[nd - 2];
    g.W = x->ne[nd - 1];
    g.hl = (g.H + p - 1) / p;
    g.wl = (g.W + p - 1) / p;
    g.F = tokens->ne[2];
    g.tst0 = tokens->st[0];
    g.tst1 = tokens->st[1];
    g.p = p;
    g.c_first = order == KN_PATCH_C_PY_PX;
    return g;
}

int kn_cuda_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order) {
    const char *op = "cuda patchify";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    kn_cu_patch_geom g = patch_geom(tokens, x, p, order);
    return kn_cu_act_type(&ctx->err, op, x->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_patchify_f<T> f = {(const T *)x->data, (T *)tokens->data, g};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(tokens), f);
    });
}

int kn_cuda_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order) {
    const char *op = "cuda unpatchify";
    kn_cu_backend *be = kn_cu_get(&ctx->err, op);
    if (!be) return ctx->err.code;
    kn_cu_patch_geom g = patch_geom(tokens, x, p, order);
    return kn_cu_act_type(&ctx->err, op, x->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        kn_cu_unpatchify_f<T> f = {(const T *)tokens->data, (T *)x->data, g};
        return kn_cu_map(be, &ctx->err, op, kn_tensor_numel(x), f);
    });
}
