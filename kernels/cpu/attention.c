/* CPU attention: tiled, online-softmax ("flash") form.
 *
 * Each (batch, head, block of BQ queries) is one task. Keys are visited in
 * blocks of BK: S = Q K^T for the block (a GEMM), running max/sum rescaling,
 * then O += P V (a GEMM). Memory per thread is BQ x BK scores and a BQ x D
 * accumulator, whatever the sequence length. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/device.h"
#include "kernels/cpu/vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BQ 128
#define BK 256

typedef struct attn_scratch {
    float *s;    /* [BQ, BK] scores, then probabilities */
    float *o;    /* [BQ, D] unnormalised output */
    float *m, *l; /* [BQ] running max and sum */
} attn_scratch;

/* Softmax update of one block row; returns the row's probability sum. */
static float block_row_softmax(float *row, int64_t nk, float *m_io, float *alpha) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; j++) mx = row[j] > mx ? row[j] : mx;
    float m_new = mx > *m_io ? mx : *m_io;
    if (m_new == -INFINITY) { /* every key so far fully masked */
        for (int64_t j = 0; j < nk; j++) row[j] = 0.0f;
        *alpha = 1.0f;
        return 0.0f;
    }
    *alpha = kn_expf(*m_io - m_new);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < nk; j++) {
        row[j] = kn_expf(row[j] - m_new);
        sum += row[j];
    }
    *m_io = m_new;
    return sum;
}

static int attend_block(const attn_scratch *w, float *out, const float *q, const float *k, const float *v,
                        const float *mask, int causal, float scale, int64_t q0, int64_t nq, int64_t Lk,
                        int64_t ldq, int64_t ldkv, int64_t D, kn_err *err) {
    for (int64_t i = 0; i < nq; i++) {
        w->m[i] = -INFINITY;
        w->l[i] = 0.0f;
    }
    for (int64_t i = 0; i < nq * D; i++) w->o[i] = 0.0f;
    int64_t kend = causal ? (q0 + nq < Lk ? q0 + nq : Lk) : Lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        int64_t nk = kend - k0 < BK ? kend - k0 : BK;
        int rc = kn_cpu_gemm_f32(nq, nk, D, q, ldq, 1, k + k0 * ldkv, ldkv, 0.0f, w->s, BK, err);
        if (rc) return rc;
        for (int64_t i = 0; i < nq; i++) {
            float *row = w->s + i * BK;
            for (int64_t j = 0; j < nk; j++) {
                float s = row[j] * scale;
                if (mask) s += mask[k0 + j];
                if (causal && k0 + j > q0 + i) s = -INFINITY;
                row[j] = s;
            }
            float alpha;
            float sum = block_row_softmax(row, nk, &w->m[i], &alpha);
            w->l[i] = w->l[i] * alpha + sum;
            if (alpha != 1.0f)
                for (int64_t d = 0; d < D; d++) w->o[i * D + d] *= alpha;
        }
        rc = kn_cpu_gemm_f32(nq, D, nk, w->s, BK, 0, v + k0 * ldkv, ldkv, 1.0f, w->o, D, err);
        if (rc) return rc;
    }
    for (int64_t i = 0; i < nq; i++) {
        float inv = w->l[i] > 0.0f ? 1.0f / w->l[i] : 0.0f;
        for (int64_t d = 0; d < D; d++) out[i * ldq + d] = w->o[i * D + d] * inv;
    }
    return KN_OK;
}

int kn_cpu_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                     const kn_tensor *key_mask, int causal, float scale) {
    int64_t B = q->ne[0], Lq = q->ne[1], Hq = q->ne[2], D = q->ne[3];
    int64_t Lk = k->ne[1], Hkv = k->ne[2], group = Hq / Hkv;
    int64_t nqb = (Lq + BQ - 1) / BQ;
    int nthreads = kn_cpu_threads();
    size_t per_thread = (size_t)(BQ * BK + BQ * D + 2 * BQ);
    size_t mark = kn_arena_mark(ctx->scratch);
    float *buf = kn_arena_alloc(ctx->scratch, per_thread * sizeof(float) * (size_t)nthreads, &ctx->err);
    if (!buf) return ctx->err.code;
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    const float *md = key_mask ? key_mask->data : NULL;
    float *od = out->data;
    int rc = KN_OK;
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num();
#else
        int tid = 0;
#endif
        float *base = buf + per_thread * (size_t)tid;
        attn_scratch w = {base, base + BQ * BK, base + BQ * BK + BQ * D, base + BQ * BK + BQ * D + BQ};
        kn_err local;
        kn_err_clear(&local);
#pragma omp for collapse(3) schedule(dynamic)
        for (int64_t b = 0; b < B; b++) {
            for (int64_t h = 0; h < Hq; h++) {
                for (int64_t qb = 0; qb < nqb; qb++) {
                    int64_t q0 = qb * BQ, nq = Lq - q0 < BQ ? Lq - q0 : BQ;
                    int64_t kvh = h / group;
                    const float *qp = qd + ((b * Lq + q0) * Hq + h) * D;
                    const float *kp = kd + (b * Lk * Hkv + kvh) * D;
                    const float *vp = vd + (b * Lk * Hkv + kvh) * D;
                    float *op = od + ((b * Lq + q0) * Hq + h) * D;
                    if (attend_block(&w, op, qp, kp, vp, md ? md + b * Lk : NULL, causal, scale, q0, nq, Lk,
                                     Hq * D, Hkv * D, D, &local)) {
#pragma omp critical
                        {
                            rc = local.code;
                            ctx->err = local;
                        }
                    }
                }
            }
        }
    }
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

void kn_ref_attention(float *out, const float *q, const float *k, const float *v, const float *key_mask,
                      int causal, float scale, int64_t B, int64_t Lq, int64_t Lk, int64_t Hq, int64_t Hkv,
                      int64_t D) {
    double p[Lk > 0 ? Lk : 1];
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                int64_t kvh = h / (Hq / Hkv);
                const float *qi = q + ((b * Lq + i) * Hq + h) * D;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < Lk; j++) {
                    const float *kj = k + ((b * Lk + j) * Hkv + kvh) * D;
                    double s = 0.0;
                    for (int64_t d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                    s = s * scale + (key_mask ? key_mask[b * Lk + j] : 0.0);
                    if (causal && j > i) s = -INFINITY;
                    p[j] = s;
                    if (s > mx) mx = s;
                }
                for (int64_t j = 0; j < Lk; j++) sum += (p[j] = mx == -INFINITY ? 0.0 : exp(p[j] - mx));
                float *oi = out + ((b * Lq + i) * Hq + h) * D;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < Lk; j++) acc += p[j] * v[((b * Lk + j) * Hkv + kvh) * D + d];
                    oi[d] = sum > 0.0 ? (float)(acc / sum) : 0.0f;
                }
            }
}
