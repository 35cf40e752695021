/* Feed-forward blocks: see mlp.h. */
#include "pipelines/common/mlp.h"

static int mlp(kn_ctx *ctx, const kn_weight_table *tab, const kn_mlp *m, kn_act act, const kn_tensor *x,
               kn_tensor *y) {
    int64_t ne[KN_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) ne[d] = x->ne[d];
    ne[x->ndim - 1] = m->up.w.ne[0];
    kn_tensor h, u;
    KN_TRY(kn_arena_tensor(ctx->scratch, &h, KN_F32, x->ndim, ne, &ctx->err));
    KN_TRY(kn_lin_forward(ctx, tab, &h, x, m->gate.w.data ? &m->gate : &m->up));
    KN_TRY(kn_activation(ctx, &h, &h, act));
    if (m->gate.w.data) {
        KN_TRY(kn_arena_tensor(ctx->scratch, &u, KN_F32, x->ndim, ne, &ctx->err));
        KN_TRY(kn_lin_forward(ctx, tab, &u, x, &m->up));
        KN_TRY(kn_binary(ctx, &h, &h, &u, KN_MUL));
    }
    return kn_lin_forward(ctx, tab, y, &h, &m->down);
}

int kn_mlp_forward(kn_ctx *ctx, const kn_weight_table *tab, const kn_mlp *m, kn_act act, const kn_tensor *x,
                   kn_tensor *y) {
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = mlp(ctx, tab, m, act, x, y);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
