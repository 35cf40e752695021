/* CPU attention: tiled, online-softmax ("flash") form on the GEMM micro-kernel.
 *
 * Computed transposed, so the softmax runs down columns of contiguous queries
 * and nothing is ever transposed between the two products:
 *   S^T [keys x queries] = K . Q^T     (A = K, B = Q^T)
 *   O^T [dims x queries] += V^T . P^T  (A = V^T, B = P^T)
 * The micro-kernel writes S^T in B-panel layout (NR queries a row), which is
 * exactly the packed P^T the second product reads: the softmax rewrites the
 * scores into probabilities in place.
 *
 * K and V^T of every (batch, kv head) are packed once up front; each task is
 * one (batch, head, block of BQ queries) and visits keys in blocks of BK with
 * running max / sum rescaling. Per thread: Q^T, S^T and O^T of one block
 * (~200 KB, L2), whatever the sequence length.
 *
 * q, k and v are read through their strides only while packing (Q^T per
 * block, K and V^T per head), so views into a fused qkv buffer cost nothing
 * in the inner loops. An additive bias [Bb, Hq, Lq, Lk] is added to each
 * score panel before the softmax; the log-sum-exp of a row is m + log(l)
 * from the running max and sum.
 *
 * BF16 precision rounds Q^T (after scaling), K, V^T and the probabilities
 * to bf16 as they are packed; with AVX512_BF16 both products then run on
 * bf16 pairs (kn_gemm_micro_bf16, ~1.65x the f32 products on Zen 5), and
 * elsewhere the f32 kernel multiplies the same rounded values. */
#include <math.h>
#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/gemm_kernel.h"
#include "kernels/cpu/vmath.h"
#include "kernels/device.h"

/* The softmax's exp polynomial may fuse its multiply-adds (ISO C mode keeps
 * them apart otherwise): half the instructions, and well within tolerance. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define MR KN_GEMM_MR
#define NR KN_GEMM_NR
#define BQ 128      /* queries a task: a multiple of NR */
#define BK (20 * MR) /* keys a block: whole K panels, and even (whole pairs) */

typedef struct attn_geom {
    int64_t B, Lq, Lk, Hq, Hkv, D, Dp; /* Dp: D rounded up to MR (rows of V^T panels) */
    int pairs;                         /* BF16 precision on bf16 units: both products on bf16 pairs */
    int round;                         /* BF16 precision without them: f32 products of the same values */
    int64_t dk, lk;                    /* packed depths: of K and Q^T (D), of V^T (Lk); halved for pairs */
    int64_t k_floats, v_floats;        /* packed K and V^T of one (batch, kv head) */
    int64_t qst[3], kst[3], vst[3];    /* element strides of batch, position and head */
    int64_t bias_bst;                  /* bias batch stride: 0 when one bias serves every batch */
    const float *q, *k, *v, *mask, *bias;
    float *out, *lse;
    int causal;
    float scale;
    float *kpack, *vpack; /* [B * Hkv][k_floats], [B * Hkv][v_floats] */
} attn_geom;

typedef struct attn_scratch {
    float *qt; /* Q^T of the block, B panels: [BQ / NR][D][NR] */
    float *st; /* S^T then P^T, B panels: [BQ / NR][BK][NR] */
    float *pt; /* P^T of one panel as pairs: [BK / 2][NR] */
    float *ot; /* O^T: [Dp][BQ] */
    float *m, *l, *alpha; /* [BQ]: running max, running sum, rescale of this key block */
} attn_scratch;

/* Scores of one query panel for keys [k0, k0 + nk) (already scaled: Q was
 * packed times the scale) become probabilities; m, l, alpha are the panel's
 * NR columns. Query column c is query qi0 + c; bias (or NULL) is the bias row
 * of query qi0, the next query's row Lk floats on, for the panel's nc real
 * queries. */
static void panel_softmax(float *s, int64_t nk, int64_t k0, int64_t qi0, const attn_geom *g, const float *mask,
                          const float *bias, int nc, float *m, float *l, float *alpha) {
    float mx[NR], mu[NR], sum[NR];
    for (int c = 0; c < NR; c++) mx[c] = -INFINITY;
    /* bias rows run along keys, the panel's columns are queries: a scatter
     * into the panel, which is in L1 */
    for (int c = 0; bias && c < nc; c++)
        for (int64_t j = 0; j < nk; j++) s[j * NR + c] += bias[c * g->Lk + k0 + j];
    for (int64_t j = 0; j < nk; j++) {
        float *row = s + j * NR;
        if (mask || g->causal) {
            float add = mask ? mask[k0 + j] : 0.0f;
            int64_t first_col = g->causal ? k0 + j - qi0 : 0; /* the columns that see key k0 + j */
#pragma omp simd
            for (int c = 0; c < NR; c++) row[c] = c < first_col ? -INFINITY : row[c] + add;
        }
#pragma omp simd
        for (int c = 0; c < NR; c++) mx[c] = row[c] > mx[c] ? row[c] : mx[c];
    }
    for (int c = 0; c < NR; c++) {
        float m_new = mx[c] > m[c] ? mx[c] : m[c];
        mu[c] = m_new == -INFINITY ? 0.0f : m_new; /* every key so far masked: p = 0, not NaN */
        alpha[c] = kn_expf(m[c] - mu[c]);
        m[c] = m_new;
        sum[c] = 0.0f;
    }
    for (int64_t j = 0; j < nk; j++) {
        float *row = s + j * NR;
#pragma omp simd
        for (int c = 0; c < NR; c++) {
            float p = kn_expf(row[c] - mu[c]);
            row[c] = p;
            sum[c] += p;
        }
    }
    for (int c = 0; c < NR; c++) l[c] = l[c] * alpha[c] + sum[c];
}

/* Queries [q0, q0 + nq) of head h in batch b. */
static void attend_block(const attn_geom *g, const attn_scratch *w, int64_t b, int64_t h, int64_t q0, int64_t nq) {
    int64_t D = g->D, ldo = g->Hq * D, kvh = h / (g->Hq / g->Hkv), nqp = (nq + NR - 1) / NR;
    const float *kp = g->kpack + (b * g->Hkv + kvh) * g->k_floats;
    const float *vp = g->vpack + (b * g->Hkv + kvh) * g->v_floats;
    const float *mask = g->mask ? g->mask + b * g->Lk : NULL;
    const float *bias = g->bias ? g->bias + b * g->bias_bst + (h * g->Lq + q0) * g->Lk : NULL;
    void (*micro)(int64_t, const float *, const float *, float *, int64_t, int, const float *, const float *, int,
                  int) = kn_gemm_micro;
#if KN_GEMM_BF16
    if (g->pairs) micro = kn_gemm_micro_bf16;
#endif
    const float *q = g->q + b * g->qst[0] + q0 * g->qst[1] + h * g->qst[2];
    int64_t dk = g->dk;
#if KN_GEMM_BF16
    if (g->pairs) kn_gemm_pack_b_pairs(w->qt, q, KN_F32, g->scale, g->qst[1], dk, D, nq);
    else
#endif
        kn_gemm_pack_b(w->qt, q, KN_F32, g->scale, g->qst[1], 1, D, nq);
    if (g->round) kn_gemm_round_bf16(w->qt, nqp * D * NR);
    for (int64_t i = 0; i < nqp * NR; i++) {
        w->m[i] = -INFINITY;
        w->l[i] = 0.0f;
    }
    int64_t kend = g->causal ? (q0 + nq < g->Lk ? q0 + nq : g->Lk) : g->Lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        int64_t nk = kend - k0 < BK ? kend - k0 : BK, nkp = (nk + MR - 1) / MR;
        for (int64_t p = 0; p < nqp; p++) {
            float *st = w->st + p * BK * NR;
            for (int64_t r = 0; r < nkp; r++)
                micro(dk, kp + (k0 + r * MR) * dk, w->qt + p * dk * NR, st + r * MR * NR, NR, 0, NULL, NULL, MR, NR);
            int nc = nq - p * NR < NR ? (int)(nq - p * NR) : NR;
            panel_softmax(st, nk, k0, q0 + p * NR, g, mask, bias ? bias + p * NR * g->Lk : NULL, nc, w->m + p * NR,
                          w->l + p * NR, w->alpha + p * NR);
            if (g->round) kn_gemm_round_bf16(st, nk * NR);
            const float *pt = st;
            int64_t depth = nk, kv0 = k0; /* BK is even: a block starts on a whole pair */
#if KN_GEMM_BF16
            if (g->pairs) {
                kn_gemm_panel_pairs(w->pt, st, nk);
                pt = w->pt;
                depth = (nk + 1) / 2;
                kv0 = k0 / 2;
            }
#endif
            /* the first block writes O^T; later ones rescale it by alpha as they add */
            for (int64_t r = 0; r < g->Dp / MR; r++)
                micro(depth, vp + r * MR * g->lk + kv0 * MR, pt, w->ot + r * MR * BQ + p * NR, BQ, k0 > 0,
                      w->alpha + p * NR, NULL, MR, NR);
        }
    }
    /* l > 0 exactly when some key scored above -inf (the max contributes 1) */
    if (g->lse) {
        float *lse = g->lse + (b * g->Hq + h) * g->Lq + q0;
        for (int64_t i = 0; i < nq; i++) lse[i] = w->l[i] > 0.0f ? w->m[i] + logf(w->l[i]) : -INFINITY;
    }
    /* out = O / l (0 for a query that saw no key), transposed back one cache
     * line of out (16 dims) at a time */
    for (int64_t i = 0; i < nq; i++) w->l[i] = w->l[i] > 0.0f && kend > 0 ? 1.0f / w->l[i] : 0.0f;
    float *o = g->out + ((b * g->Lq + q0) * g->Hq + h) * D;
    for (int64_t d0 = 0; d0 < D; d0 += 16)
        for (int64_t i = 0; i < nq; i++)
            for (int64_t d = d0; d < D && d < d0 + 16; d++)
                o[i * ldo + d] = w->l[i] != 0.0f ? w->ot[d * BQ + i] * w->l[i] : 0.0f;
}

int kn_cpu_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                     const kn_attention_args *a) {
    attn_geom g = {q->ne[0], q->ne[1], k->ne[1], q->ne[2], k->ne[2], q->ne[3], 0, 0, 0, 0, 0, 0, 0,
                   {q->st[0], q->st[1], q->st[2]}, {k->st[0], k->st[1], k->st[2]}, {v->st[0], v->st[1], v->st[2]},
                   0, q->data, k->data, v->data, a->key_mask ? a->key_mask->data : NULL,
                   a->bias ? a->bias->data : NULL, out->data, a->lse ? a->lse->data : NULL, a->causal, a->scale,
                   NULL, NULL};
    if (a->bias && a->bias->ne[0] > 1) g.bias_bst = a->bias->st[0];
    g.Dp = (g.D + MR - 1) / MR * MR;
    g.pairs = KN_GEMM_BF16 && ctx->precision == KN_PREC_BF16;
    g.round = !KN_GEMM_BF16 && ctx->precision == KN_PREC_BF16;
    g.dk = g.pairs ? (g.D + 1) / 2 : g.D;
    g.lk = g.pairs ? (g.Lk + 1) / 2 : g.Lk;
    g.k_floats = kn_gemm_packed_a_size(g.Lk, g.dk);
    g.v_floats = kn_gemm_packed_a_size(g.D, g.lk);
    int64_t nqb = (g.Lq + BQ - 1) / BQ, nkv = g.B * g.Hkv;
    int nthreads = kn_cpu_threads();
    size_t per_thread = (size_t)(kn_gemm_packed_b_size(g.D, BQ) + BK * BQ + BK / 2 * NR + g.Dp * BQ + 3 * BQ);
    size_t mark = kn_arena_mark(ctx->scratch);
    size_t floats = (size_t)(nkv * (g.k_floats + g.v_floats)) + per_thread * (size_t)nthreads;
    float *buf = kn_arena_alloc(ctx->scratch, floats * sizeof(float), &ctx->err);
    if (!buf) return ctx->err.code;
    g.kpack = buf;
    g.vpack = buf + nkv * g.k_floats;
    float *thread_buf = g.vpack + nkv * g.v_floats;
#pragma omp parallel num_threads(nthreads)
    {
        float *base = thread_buf + per_thread * (size_t)omp_get_thread_num();
        attn_scratch w;
        w.qt = base;
        w.st = w.qt + kn_gemm_packed_b_size(g.D, BQ);
        w.pt = w.st + BK * BQ;
        w.ot = w.pt + BK / 2 * NR;
        w.m = w.ot + g.Dp * BQ;
        w.l = w.m + BQ;
        w.alpha = w.l + BQ;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nkv; i++) {
            int64_t b = i / g.Hkv, hk = i % g.Hkv;
            const float *k = g.k + b * g.kst[0] + hk * g.kst[2], *v = g.v + b * g.vst[0] + hk * g.vst[2];
#if KN_GEMM_BF16
            if (g.pairs) {
                kn_gemm_pack_a_pairs(g.kpack + i * g.k_floats, k, g.kst[1], 0, g.Lk, g.D);
                kn_gemm_pack_a_pairs(g.vpack + i * g.v_floats, v, g.vst[1], 1, g.D, g.Lk);
                continue;
            }
#endif
            kn_gemm_pack_a(g.kpack + i * g.k_floats, k, g.kst[1], 0, g.Lk, g.D);
            kn_gemm_pack_a(g.vpack + i * g.v_floats, v, g.vst[1], 1, g.D, g.Lk);
            if (g.round) {
                kn_gemm_round_bf16(g.kpack + i * g.k_floats, g.k_floats);
                kn_gemm_round_bf16(g.vpack + i * g.v_floats, g.v_floats);
            }
        }
#pragma omp for collapse(3) schedule(dynamic)
        for (int64_t b = 0; b < g.B; b++)
            for (int64_t h = 0; h < g.Hq; h++)
                for (int64_t qb = 0; qb < nqb; qb++)
                    if (!kn_ctx_cancelled(ctx)) /* a long attention stops within a query block */
                        attend_block(&g, &w, b, h, qb * BQ, g.Lq - qb * BQ < BQ ? g.Lq - qb * BQ : BQ);
    }
    kn_arena_reset(ctx->scratch, mark);
    return kn_ctx_check_cancel(ctx, "attention");
}

void kn_ref_attention(kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                      const kn_attention_args *a) {
    int64_t B = q->ne[0], Lq = q->ne[1], Hq = q->ne[2], D = q->ne[3], Lk = k->ne[1], Hkv = k->ne[2];
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    const float *mask = a->key_mask ? a->key_mask->data : NULL, *bias = a->bias ? a->bias->data : NULL;
    float *od = out->data, *lse = a->lse ? a->lse->data : NULL;
    double p[Lk > 0 ? Lk : 1];
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                int64_t kvh = h / (Hq / Hkv), bb = a->bias && a->bias->ne[0] == 1 ? 0 : b;
                const float *qi = qd + b * q->st[0] + i * q->st[1] + h * q->st[2];
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < Lk; j++) {
                    const float *kj = kd + b * k->st[0] + j * k->st[1] + kvh * k->st[2];
                    double s = 0.0;
                    for (int64_t d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                    s = s * a->scale + (mask ? mask[b * Lk + j] : 0.0) +
                        (bias ? bias[((bb * Hq + h) * Lq + i) * Lk + j] : 0.0);
                    if (a->causal && j > i) s = -INFINITY;
                    p[j] = s;
                    if (s > mx) mx = s;
                }
                for (int64_t j = 0; j < Lk; j++) sum += (p[j] = mx == -INFINITY ? 0.0 : exp(p[j] - mx));
                if (lse) lse[(b * Hq + h) * Lq + i] = sum > 0.0 ? (float)(mx + log(sum)) : -INFINITY;
                float *oi = od + ((b * Lq + i) * Hq + h) * D;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < Lk; j++)
                        acc += p[j] * vd[b * v->st[0] + j * v->st[1] + kvh * v->st[2] + d];
                    oi[d] = sum > 0.0 ? (float)(acc / sum) : 0.0f;
                }
            }
}
