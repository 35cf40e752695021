/* Sequence parallelism: shard plans, Ulysses / ring / USP attention
 * (seqpar.h; the exchanges follow shared/notes/sequence-parallel.md §2-5). */
#include "pipelines/common/seqpar.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The communicators of one U x R grid (U: Ulysses degree). */
typedef struct sp_grid {
    int U;
    kn_comm *ulysses; /* U consecutive ranks; the world when U == P; NULL when U == 1 */
    kn_comm *ring;    /* the ranks at my position of every group; the world when U == 1; NULL when R == 1 */
} sp_grid;

#define MAX_GRIDS 8

struct kn_sp {
    kn_comm *world;
    kn_sp_mode mode;
    int ulysses; /* requested degree for AUTO, 0: largest fitting */
    sp_grid grid[MAX_GRIDS];
    int n_grids;
};

int kn_sp_new(kn_sp **out, kn_comm *comm, kn_sp_mode mode, int ulysses, kn_err *err) {
    int P = kn_comm_size(comm);
    if (ulysses < 0 || (ulysses && P % ulysses))
        return kn_fail(err, KN_ERR_INVALID, "sequence parallel: a Ulysses degree of %d does not divide %d ranks",
                       ulysses, P);
    kn_sp *sp = calloc(1, sizeof *sp);
    if (!sp) return kn_fail(err, KN_ERR_NOMEM, "sequence parallel: out of memory");
    sp->world = comm;
    sp->mode = mode;
    sp->ulysses = ulysses;
    *out = sp;
    return KN_OK;
}

void kn_sp_free(kn_sp *sp) {
    if (!sp) return;
    for (int i = 0; i < sp->n_grids; i++) {
        if (sp->grid[i].ulysses != sp->world) kn_comm_free(sp->grid[i].ulysses);
        if (sp->grid[i].ring != sp->world) kn_comm_free(sp->grid[i].ring);
    }
    free(sp);
}

int kn_sp_size(const kn_sp *sp) { return sp ? kn_comm_size(sp->world) : 1; }
int kn_sp_rank(const kn_sp *sp) { return sp ? kn_comm_rank(sp->world) : 0; }
kn_comm *kn_sp_comm(const kn_sp *sp) { return sp ? sp->world : NULL; }

static const char *const mode_names[] = {"auto", "ulysses", "ring"};

int kn_sp_mode_parse(const char *s, kn_sp_mode *out) {
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, mode_names[i]) == 0) {
            *out = (kn_sp_mode)i;
            return KN_OK;
        }
    return KN_ERR_INVALID;
}

const char *kn_sp_mode_name(kn_sp_mode m) { return (unsigned)m < 3 ? mode_names[m] : "?"; }

/* The grid for `heads` (collective the first time: every rank asks with the same heads). */
static int grid_for(kn_sp *sp, int64_t heads, const sp_grid **out, kn_err *err) {
    int P = kn_comm_size(sp->world), U = 1;
    if (sp->mode == KN_SP_ULYSSES) {
        if (heads % P)
            return kn_fail(err, KN_ERR_INVALID,
                           "sequence parallel: Ulysses needs the %lld heads to divide by %d ranks (use ring or auto)",
                           (long long)heads, P);
        U = P;
    } else if (sp->mode == KN_SP_AUTO && sp->ulysses) {
        if (heads % sp->ulysses)
            return kn_fail(err, KN_ERR_INVALID, "sequence parallel: a Ulysses degree of %d does not divide %lld heads",
                           sp->ulysses, (long long)heads);
        U = sp->ulysses;
    } else if (sp->mode == KN_SP_AUTO) {
        for (int d = P; d >= 1; d--)
            if (P % d == 0 && heads % d == 0) {
                U = d;
                break;
            }
    }
    for (int i = 0; i < sp->n_grids; i++)
        if (sp->grid[i].U == U) {
            *out = &sp->grid[i];
            return KN_OK;
        }
    if (sp->n_grids == MAX_GRIDS) return kn_fail(err, KN_ERR_INVALID, "sequence parallel: too many grids");
    sp_grid g = {U, NULL, NULL};
    int rank = kn_comm_rank(sp->world), R = P / U;
    if (U == P) g.ulysses = sp->world;
    else if (U > 1) KN_TRY(kn_comm_split(sp->world, rank / U, rank % U, &g.ulysses, err));
    if (U == 1) g.ring = sp->world;
    else if (R > 1 && kn_comm_split(sp->world, rank % U, rank / U, &g.ring, err)) {
        kn_comm_free(g.ulysses);
        return err->code;
    }
    sp->grid[sp->n_grids] = g;
    *out = &sp->grid[sp->n_grids++];
    return KN_OK;
}

/* ---- shard plans ------------------------------------------------------------------- */

int64_t kn_sp_local(const kn_sp *sp, int64_t n) {
    int64_t P = kn_sp_size(sp);
    return (n + P - 1) / P;
}

int64_t kn_sp_local_rows(const kn_sp *sp, const kn_sp_seq *seq) {
    int64_t rows = 0;
    for (int s = 0; s < seq->n; s++) rows += kn_sp_local(sp, seq->len[s]);
    return rows;
}

/* Real rows of stream `len` on rank r: [r * loc, r * loc + count). */
static int64_t real_rows(int64_t len, int64_t loc, int64_t r) {
    int64_t n = len - r * loc;
    return n < 0 ? 0 : n > loc ? loc : n;
}

/* t viewed as [outer, rows, inner] along dim. */
static void split_dims(const kn_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= t->ne[d];
    for (int d = dim + 1; d < t->ndim; d++) *inner *= t->ne[d];
}

static int check_f32(kn_ctx *ctx, const kn_tensor *t, const char *what, int dim) {
    if (t->dtype != KN_F32 || !kn_tensor_is_contiguous(t) || dim < 0 || dim >= t->ndim)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "sequence parallel: %s must be contiguous F32 with a dim %d", what, dim);
    return KN_OK;
}

int kn_sp_shard(kn_ctx *ctx, const kn_sp *sp, const kn_sp_seq *seq, const kn_tensor *full, int dim, kn_tensor *local) {
    KN_TRY(check_f32(ctx, full, "a sharded tensor", dim));
    int64_t total = 0;
    for (int s = 0; s < seq->n; s++) total += seq->len[s];
    if (full->ne[dim] != total)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "sequence parallel: %lld rows to shard, streams hold %lld",
                       (long long)full->ne[dim], (long long)total);
    if (kn_sp_size(sp) == 1) {
        *local = *full;
        return KN_OK;
    }
    int64_t ne[KN_MAX_DIMS], outer, inner, r = kn_sp_rank(sp), rows = kn_sp_local_rows(sp, seq);
    memcpy(ne, full->ne, sizeof ne);
    ne[dim] = rows;
    KN_TRY(kn_arena_tensor(ctx->scratch, local, KN_F32, full->ndim, ne, &ctx->err));
    split_dims(full, dim, &outer, &inner);
    const float *src = full->data;
    float *dst = local->data;
    memset(dst, 0, (size_t)(outer * rows * inner) * sizeof(float));
    for (int64_t o = 0; o < outer; o++) {
        int64_t g0 = 0, l0 = 0;
        for (int s = 0; s < seq->n; s++) {
            int64_t loc = kn_sp_local(sp, seq->len[s]), n = real_rows(seq->len[s], loc, r);
            memcpy(dst + (o * rows + l0) * inner, src + (o * total + g0 + r * loc) * inner,
                   (size_t)(n * inner) * sizeof(float));
            g0 += seq->len[s];
            l0 += loc;
        }
    }
    return KN_OK;
}

int kn_sp_gather(kn_ctx *ctx, const kn_sp *sp, int64_t n, const kn_tensor *local, int dim, kn_tensor *full) {
    KN_TRY(check_f32(ctx, local, "a gathered tensor", dim));
    KN_TRY(check_f32(ctx, full, "a gather's output", dim));
    int64_t P = kn_sp_size(sp), loc = kn_sp_local(sp, n), outer, inner;
    if (local->ne[dim] != loc || full->ne[dim] != n || kn_tensor_numel(full) / n != kn_tensor_numel(local) / loc)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "sequence parallel: gathering %lld rows of %lld into %lld",
                       (long long)local->ne[dim], (long long)n, (long long)full->ne[dim]);
    if (P == 1) return kn_tensor_copy(full, local, &ctx->err);
    split_dims(local, dim, &outer, &inner);
    size_t mark = kn_arena_mark(ctx->scratch), bytes = (size_t)kn_tensor_nbytes(local);
    float *all = kn_arena_alloc(ctx->scratch, bytes * (size_t)P, &ctx->err);
    int rc = all ? kn_comm_all_gather(sp->world, local->data, all, bytes, &ctx->err) : ctx->err.code;
    float *dst = full->data;
    for (int64_t j = 0; !rc && j < P; j++)
        for (int64_t o = 0; o < outer; o++)
            memcpy(dst + (o * n + j * loc) * inner, all + ((j * outer + o) * loc) * inner,
                   (size_t)(real_rows(n, loc, j) * inner) * sizeof(float));
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

/* ---- attention ------------------------------------------------------------------------ */

/* One attention call's geometry. Rows of the group sequence: the U chunks of
 * my Ulysses group (rank order), each chunk laid out as a rank lays its rows. */
typedef struct sp_call {
    const kn_sp *sp;
    const kn_sp_seq *seq;
    const sp_grid *grid;
    int64_t B, H, D, Hu, Lloc, Lg; /* Lg = U * Lloc */
    int P, U, R, g, u;             /* g: my group (ring position), u: my place in it */
    const float *user_mask;        /* [P][B][Lloc] every rank's user key mask, or NULL */
    int64_t *row_of;               /* [U * Lloc]: group row of (chunk, local row) */
    float *pad_mask;               /* [R][B][Lg]: each group's rows' key mask */
} sp_call;

/* Whether local row l of world rank r is padding. */
static int is_pad(const sp_call *c, int r, int64_t l) {
    for (int s = 0; s < c->seq->n; s++) {
        int64_t loc = kn_sp_local(c->sp, c->seq->len[s]);
        if (l < loc) return l >= real_rows(c->seq->len[s], loc, r);
        l -= loc;
    }
    return 1;
}

/* row_of: identity, or with R == 1 the one-rank order (each stream's real
 * rows in global order, then every pad): bit-identical to one rank. */
static void plan_rows(sp_call *c) {
    int64_t n = (int64_t)c->U * c->Lloc;
    if (c->R > 1) {
        for (int64_t i = 0; i < n; i++) c->row_of[i] = i;
        return;
    }
    int64_t total = 0, pad = 0;
    for (int s = 0; s < c->seq->n; s++) total += c->seq->len[s];
    for (int u = 0; u < c->U; u++) {
        int64_t l = 0, g0 = 0;
        for (int s = 0; s < c->seq->n; s++) {
            int64_t loc = kn_sp_local(c->sp, c->seq->len[s]), real = real_rows(c->seq->len[s], loc, u);
            for (int64_t i = 0; i < loc; i++, l++)
                c->row_of[u * c->Lloc + l] = i < real ? g0 + u * loc + i : total + pad++;
            g0 += c->seq->len[s];
        }
    }
}

/* pad_mask[grp][b][row]: -inf for pad rows, else the user's mask (0 without one). */
static void plan_masks(sp_call *c) {
    for (int grp = 0; grp < c->R; grp++)
        for (int u = 0; u < c->U; u++) {
            int r = grp * c->U + u;
            for (int64_t b = 0; b < c->B; b++)
                for (int64_t l = 0; l < c->Lloc; l++) {
                    float m = is_pad(c, r, l)  ? -INFINITY
                              : c->user_mask ? c->user_mask[((int64_t)r * c->B + b) * c->Lloc + l]
                                             : 0.0f;
                    c->pad_mask[((int64_t)grp * c->B + b) * c->Lg + c->row_of[u * c->Lloc + l]] = m;
                }
        }
}

/* Copies heads [h0, h0 + Hu) of rows [B, Lloc] of t (a [B, Lloc, H, D] view) to dst [B][Lloc][Hu*D]. */
static void pack_heads(const sp_call *c, const kn_tensor *t, int64_t h0, float *dst) {
    const float *src = t->data;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t l = 0; l < c->Lloc; l++)
            for (int64_t h = 0; h < c->Hu; h++)
                memcpy(dst + ((b * c->Lloc + l) * c->Hu + h) * c->D,
                       src + b * t->st[0] + l * t->st[1] + (h0 + h) * t->st[2], (size_t)c->D * sizeof(float));
}

/* Zeroes the pad rows of my group's q (qg [B][Lg][Hu*D]) and kv
 * ([2][B][Lg][Hu*D]): they hold whatever the blocks made of zero rows, and
 * a pad key's value must not reach 0 * v, nor a pad query make NaNs. */
static void zero_pads(const sp_call *c, float *qg, float *kv) {
    size_t row = (size_t)(c->Hu * c->D), half = (size_t)(c->B * c->Lg) * row;
    for (int u = 0; u < c->U; u++)
        for (int64_t l = 0; l < c->Lloc; l++) {
            if (!is_pad(c, c->g * c->U + u, l)) continue;
            for (int64_t b = 0; b < c->B; b++) {
                size_t at = (size_t)(b * c->Lg + c->row_of[u * c->Lloc + l]) * row;
                memset(qg + at, 0, row * sizeof(float));
                memset(kv + at, 0, row * sizeof(float));
                memset(kv + half + at, 0, row * sizeof(float));
            }
        }
}

/* acc (o [B, Lg, Hu, D], lse [B, Hu, Lg]) merged with a partial result over other keys, in fp32. */
static void merge(const sp_call *c, float *acc_o, float *acc_lse, const float *o, const float *lse) {
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hu; h++)
            for (int64_t i = 0; i < c->Lg; i++) {
                int64_t li = (b * c->Hu + h) * c->Lg + i;
                float a = acc_lse[li], p = lse[li], m = a > p ? a : p;
                if (m == -INFINITY) continue; /* no key seen yet in either: stays 0 */
                float wa = expf(a - m), wp = expf(p - m), sum = wa + wp;
                float *dst = acc_o + ((b * c->Lg + i) * c->Hu + h) * c->D;
                const float *src = o + ((b * c->Lg + i) * c->Hu + h) * c->D;
                for (int64_t d = 0; d < c->D; d++) dst[d] = (dst[d] * wa + src[d] * wp) / sum;
                acc_lse[li] = m + logf(sum);
            }
}

static kn_tensor view4(float *data, int64_t B, int64_t L, int64_t H, int64_t D) {
    return kn_tensor_make(KN_F32, KN_DEV_CPU, data, 4, (int64_t[]){B, L, H, D});
}

/* Ring attention over the R groups: og = attention of qg over every group's kv. */
static int ring(kn_ctx *ctx, const sp_call *c, float *qg, float *kv, float *og, float scale) {
    kn_err *e = &ctx->err;
    size_t n_kv = (size_t)(2 * c->B * c->Lg * c->Hu * c->D), n_lse = (size_t)(c->B * c->Hu * c->Lg);
    float *next = kn_arena_alloc(ctx->scratch, n_kv * sizeof(float), e);
    float *part = kn_arena_alloc(ctx->scratch, n_kv / 2 * sizeof(float), e);
    float *acc_lse = kn_arena_alloc(ctx->scratch, n_lse * sizeof(float), e);
    float *part_lse = kn_arena_alloc(ctx->scratch, n_lse * sizeof(float), e);
    if (!next || !part || !acc_lse || !part_lse) return e->code;
    kn_tensor q4 = view4(qg, c->B, c->Lg, c->Hu, c->D);
    for (int step = 0; step < c->R; step++) {
        int src = (c->g - step + c->R) % c->R;
        size_t half = n_kv / 2;
        kn_tensor k4 = view4(kv, c->B, c->Lg, c->Hu, c->D), v4 = view4(kv + half, c->B, c->Lg, c->Hu, c->D);
        kn_tensor mask = kn_tensor_make(KN_F32, KN_DEV_CPU, c->pad_mask + (size_t)src * (size_t)(c->B * c->Lg), 2,
                                        (int64_t[]){c->B, c->Lg});
        kn_tensor o4 = view4(step ? part : og, c->B, c->Lg, c->Hu, c->D);
        kn_tensor lse = kn_tensor_make(KN_F32, KN_DEV_CPU, step ? part_lse : acc_lse, 3,
                                       (int64_t[]){c->B, c->Hu, c->Lg});
        const kn_attention_args args = {&mask, NULL, 0, scale, &lse};
        KN_TRY(kn_attention_ex(ctx, &o4, &q4, &k4, &v4, &args));
        if (step) merge(c, og, acc_lse, part, part_lse);
        if (step == c->R - 1) break;
        KN_TRY(kn_comm_sendrecv(c->grid->ring, kv, (c->g + 1) % c->R, next, (c->g - 1 + c->R) % c->R,
                                n_kv * sizeof(float), e));
        float *t = kv;
        kv = next;
        next = t;
    }
    return KN_OK;
}

/* Ulysses in: my q, k, v rows (heads split U ways) -> every chunk of my group for my heads. */
static int ulysses_in(kn_ctx *ctx, const sp_call *c, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                      float *qg, float *kv) {
    size_t chunk = (size_t)(c->B * c->Lloc * c->Hu * c->D), row = (size_t)(c->Hu * c->D);
    const kn_tensor *in[3] = {q, k, v};
    if (c->U == 1) { /* rows stay where they are (R = P > 1: row_of is the identity) */
        for (int i = 0; i < 3; i++) pack_heads(c, in[i], 0, i ? kv + (size_t)(i - 1) * chunk : qg);
        return KN_OK;
    }
    float *send = kn_arena_alloc(ctx->scratch, 3 * chunk * (size_t)c->U * sizeof(float), &ctx->err);
    float *recv = kn_arena_alloc(ctx->scratch, 3 * chunk * (size_t)c->U * sizeof(float), &ctx->err);
    if (!send || !recv) return ctx->err.code;
    for (int j = 0; j < c->U; j++)
        for (int i = 0; i < 3; i++) pack_heads(c, in[i], (int64_t)j * c->Hu, send + ((size_t)j * 3 + (size_t)i) * chunk);
    KN_TRY(kn_comm_all_to_all(c->grid->ulysses, send, recv, 3 * chunk * sizeof(float), &ctx->err));
    size_t kv_half = (size_t)(c->B * c->Lg) * row;
    for (int j = 0; j < c->U; j++)
        for (int i = 0; i < 3; i++) {
            const float *src = recv + ((size_t)j * 3 + (size_t)i) * chunk;
            float *dst = i == 0 ? qg : kv + (size_t)(i - 1) * kv_half;
            for (int64_t b = 0; b < c->B; b++)
                for (int64_t l = 0; l < c->Lloc; l++)
                    memcpy(dst + ((size_t)(b * c->Lg + c->row_of[j * c->Lloc + l])) * row,
                           src + (size_t)(b * c->Lloc + l) * row, row * sizeof(float));
        }
    return KN_OK;
}

/* Ulysses out: og (my heads, the group's rows) -> out (all heads, my rows). */
static int ulysses_out(kn_ctx *ctx, const sp_call *c, const float *og, kn_tensor *out) {
    size_t chunk = (size_t)(c->B * c->Lloc * c->Hu * c->D), row = (size_t)(c->Hu * c->D);
    float *dst = out->data;
    if (c->U == 1) {
        memcpy(dst, og, chunk * sizeof(float));
        return KN_OK;
    }
    float *send = kn_arena_alloc(ctx->scratch, chunk * (size_t)c->U * sizeof(float), &ctx->err);
    float *recv = kn_arena_alloc(ctx->scratch, chunk * (size_t)c->U * sizeof(float), &ctx->err);
    if (!send || !recv) return ctx->err.code;
    for (int j = 0; j < c->U; j++)
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t l = 0; l < c->Lloc; l++)
                memcpy(send + (size_t)j * chunk + (size_t)(b * c->Lloc + l) * row,
                       og + (size_t)(b * c->Lg + c->row_of[j * c->Lloc + l]) * row, row * sizeof(float));
    KN_TRY(kn_comm_all_to_all(c->grid->ulysses, send, recv, chunk * sizeof(float), &ctx->err));
    for (int j = 0; j < c->U; j++)
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t l = 0; l < c->Lloc; l++)
                memcpy(dst + ((size_t)(b * c->Lloc + l) * (size_t)c->H + (size_t)j * (size_t)c->Hu) * (size_t)c->D,
                       recv + (size_t)j * chunk + (size_t)(b * c->Lloc + l) * row, row * sizeof(float));
    return KN_OK;
}

static int check_attention(kn_ctx *ctx, const kn_sp *sp, const kn_sp_seq *seq, const kn_tensor *out,
                           const kn_tensor *q, const kn_tensor *k, const kn_tensor *v, const kn_tensor *key_mask) {
    kn_err *e = &ctx->err;
    int64_t L = kn_sp_local_rows(sp, seq);
    const int64_t want[4] = {q->ne[0], L, q->ne[2], q->ne[3]};
    const kn_tensor *all[4] = {q, k, v, out};
    for (int i = 0; i < 4; i++)
        if (all[i]->ndim != 4 || memcmp(all[i]->ne, want, sizeof want) || all[i]->dtype != KN_F32 ||
            all[i]->st[3] != 1)
            return kn_fail(e, KN_ERR_SHAPE, "sequence parallel attention: %s must be F32 [B, %lld, H, D] "
                                            "(this rank's rows of the streams), head dim contiguous",
                           i < 3 ? "q, k, v" : "out", (long long)L);
    if (!kn_tensor_is_contiguous(out)) return kn_fail(e, KN_ERR_SHAPE, "sequence parallel attention: out not contiguous");
    if (key_mask && (key_mask->ndim != 2 || key_mask->ne[0] != q->ne[0] || key_mask->ne[1] != L ||
                     key_mask->dtype != KN_F32 || !kn_tensor_is_contiguous(key_mask)))
        return kn_fail(e, KN_ERR_SHAPE, "sequence parallel attention: key mask must be F32 [B, %lld]", (long long)L);
    return KN_OK;
}

int kn_sp_attention(kn_ctx *ctx, const kn_sp *sp, const kn_sp_seq *seq, kn_tensor *out, const kn_tensor *q,
                    const kn_tensor *k, const kn_tensor *v, const kn_tensor *key_mask, float scale) {
    KN_TRY(check_attention(ctx, sp, seq, out, q, k, v, key_mask));
    if (kn_sp_size(sp) == 1) {
        const kn_attention_args args = {key_mask, NULL, 0, scale, NULL};
        return kn_attention_ex(ctx, out, q, k, v, &args);
    }
    const sp_grid *grid = NULL;
    KN_TRY(grid_for((kn_sp *)sp, q->ne[2], &grid, &ctx->err));
    sp_call c = {.sp = sp, .seq = seq, .grid = grid, .B = q->ne[0], .H = q->ne[2], .D = q->ne[3],
                 .Lloc = q->ne[1], .P = kn_sp_size(sp), .U = grid->U};
    int rank = kn_sp_rank(sp);
    c.Hu = c.H / c.U;
    c.Lg = (int64_t)c.U * c.Lloc;
    c.R = c.P / c.U;
    c.g = rank / c.U;
    c.u = rank % c.U;
    kn_err *e = &ctx->err;
    size_t mark = kn_arena_mark(ctx->scratch);
    size_t n_g = (size_t)(c.B * c.Lg * c.Hu * c.D), mask_n = (size_t)(c.B * c.Lloc);
    float *user = key_mask ? kn_arena_alloc(ctx->scratch, mask_n * (size_t)c.P * sizeof(float), e) : NULL;
    c.row_of = kn_arena_alloc(ctx->scratch, (size_t)c.Lg * sizeof(int64_t), e);
    c.pad_mask = kn_arena_alloc(ctx->scratch, (size_t)(c.R * c.B * c.Lg) * sizeof(float), e);
    float *qg = kn_arena_alloc(ctx->scratch, n_g * sizeof(float), e);
    float *kv = kn_arena_alloc(ctx->scratch, 2 * n_g * sizeof(float), e);
    float *og = kn_arena_alloc(ctx->scratch, n_g * sizeof(float), e);
    int rc = (key_mask && !user) || !c.row_of || !c.pad_mask || !qg || !kv || !og ? e->code : KN_OK;
    /* masks are tiny: every rank holds all of them, so ring steps need not carry them */
    if (!rc && key_mask) rc = kn_comm_all_gather(sp->world, key_mask->data, user, mask_n * sizeof(float), e);
    c.user_mask = user;
    if (!rc) {
        plan_rows(&c);
        plan_masks(&c);
        rc = ulysses_in(ctx, &c, q, k, v, qg, kv);
    }
    if (!rc) {
        zero_pads(&c, qg, kv);
        if (c.R > 1) rc = ring(ctx, &c, qg, kv, og, scale);
        else {
            kn_tensor q4 = view4(qg, c.B, c.Lg, c.Hu, c.D), k4 = view4(kv, c.B, c.Lg, c.Hu, c.D),
                      v4 = view4(kv + n_g, c.B, c.Lg, c.Hu, c.D), o4 = view4(og, c.B, c.Lg, c.Hu, c.D);
            kn_tensor mask = kn_tensor_make(KN_F32, KN_DEV_CPU, c.pad_mask, 2, (int64_t[]){c.B, c.Lg});
            const kn_attention_args args = {&mask, NULL, 0, scale, NULL};
            rc = kn_attention_ex(ctx, &o4, &q4, &k4, &v4, &args);
        }
    }
    if (!rc) rc = ulysses_out(ctx, &c, og, out);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
