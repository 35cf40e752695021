/* Patch math: one patch on an f32 weight, as ComfyUI's calculate_weight
 * computes it (comfy/lora.py, comfy/weight_adapter), segment by segment
 * (lora_impl.h: a row slice of a fused weight, halves swapped). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loras/lora_impl.h"

/* Rows of a LoHa/LoKr delta computed at once: bounds the scratch to 4 MB of f32. */
#define PANEL_FLOATS ((int64_t)1 << 20)

int kn_lora_segments(const place *p, segment seg[2]) {
    if (!p->swap) {
        seg[0] = (segment){p->row0, 0, p->rows};
        return 1;
    }
    int64_t h = p->rows / 2;
    seg[0] = (segment){p->row0, h, h};
    seg[1] = (segment){p->row0 + h, 0, h};
    return 2;
}

float *kn_lora_widen(const kn_tensor *t, kn_err *err) {
    size_t n = (size_t)kn_tensor_numel(t);
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        kn_fail(err, KN_ERR_NOMEM, "lora: out of memory widening '%s'", t->name ? t->name : "?");
        return NULL;
    }
    kn_to_f32(p, t->data, t->dtype, n, t->scale);
    return p;
}

/* Row by row rather than a GEMM call: with r << I the work is
 * r AXPYs over a row that stays in L1 against a b that stays in L2, in one
 * parallel region per patch (GEMM calls per panel spent 2/3 of the time in
 * thread barriers at rank 16-64). */
void kn_lora_lowrank_axpy(float *w, const float *a, const float *b, int64_t r, int64_t a_row0, int64_t rows,
                          int64_t I, float coef) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *wi = w + i * I;
        for (int64_t k = 0; k < r; k++) {
            const float c = coef * a[(a_row0 + i) * r + k], *bk = b + k * I;
            for (int64_t j = 0; j < I; j++) wi[j] += c * bk[j];
        }
    }
}

/* C[m, n] = A[m, k] @ B[k, n]: the small LoKr factor products. */
static void small_matmul(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0.0;
            for (int64_t q = 0; q < k; q++) s += (double)a[i * k + q] * b[q * n + j];
            c[i * n + j] = (float)s;
        }
}

/* The additive patches' factors, widened once per application. */
typedef struct prep {
    float *a1, *b1, *a2, *b2; /* LORA: up, down; LOHA: w1a, w1b, w2a, w2b */
    float *k1, *k2;             /* LOKR: the composed factors */
    int64_t r1, r2, k1r, k1c, k2r, k2c;
    float *panel2; /* LOHA: the second factor's rows */
} prep;

static void prep_free(prep *q) {
    free(q->a1);
    free(q->b1);
    free(q->a2);
    free(q->b2);
    free(q->k1);
    free(q->k2);
    free(q->panel2);
}

/* A LoKr factor: the full tensor f[0], or f[1] @ f[2]. */
static float *lokr_factor(const kn_tensor *const *f, int64_t *rows, int64_t *cols, kn_err *err) {
    if (f[0]) {
        *rows = f[0]->ne[0];
        *cols = f[0]->ne[1];
        return kn_lora_widen(f[0], err);
    }
    *rows = f[1]->ne[0];
    *cols = f[2]->ne[1];
    float *a = kn_lora_widen(f[1], err), *b = a ? kn_lora_widen(f[2], err) : NULL;
    float *c = b ? malloc((size_t)(*rows * *cols) * sizeof *c + 1) : NULL;
    if (b && !c) kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    if (c) small_matmul(a, b, c, *rows, f[1]->ne[1], *cols);
    free(a);
    free(b);
    return c;
}

static int prep_init(prep *q, const patch *p, int64_t panel_rows, int64_t I, kn_err *err) {
    memset(q, 0, sizeof *q);
    switch (p->kind) {
    case P_LOHA:
        q->r2 = p->f[3]->ne[0];
        if (!(q->a2 = kn_lora_widen(p->f[2], err)) || !(q->b2 = kn_lora_widen(p->f[3], err))) return err->code;
        if (!(q->panel2 = malloc((size_t)(panel_rows * I) * sizeof(float))))
            return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
        /* fall through - the first factor pair is LoRA's */
    case P_LORA:
        q->r1 = p->f[1]->ne[0];
        if (!(q->a1 = kn_lora_widen(p->f[0], err)) || !(q->b1 = kn_lora_widen(p->f[1], err))) return err->code;
        return KN_OK;
    case P_LOKR:
        if (!(q->k1 = lokr_factor(&p->f[0], &q->k1r, &q->k1c, err)) ||
            !(q->k2 = lokr_factor(&p->f[3], &q->k2r, &q->k2c, err)))
            return err->code;
        return KN_OK;
    default: return KN_OK;
    }
}

/* Rows [r0, r0 + rows) of a LoHa or LoKr patch's unscaled delta. */
static void delta_rows(const patch *p, prep *q, int64_t r0, int64_t rows, int64_t I, float *out) {
    switch (p->kind) {
    case P_LOHA:
        memset(out, 0, (size_t)(rows * I) * sizeof *out);
        memset(q->panel2, 0, (size_t)(rows * I) * sizeof *out);
        kn_lora_lowrank_axpy(out, q->a1, q->b1, q->r1, r0, rows, I, 1.0f);
        kn_lora_lowrank_axpy(q->panel2, q->a2, q->b2, q->r2, r0, rows, I, 1.0f);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows * I; i++) out[i] *= q->panel2[i];
        return;
    case P_LOKR:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            int64_t row = r0 + i;
            const float *k1 = q->k1 + (row / q->k2r) * q->k1c, *k2 = q->k2 + (row % q->k2r) * q->k2c;
            for (int64_t j = 0; j < I; j++) out[i * I + j] = k1[j / q->k2c] * k2[j % q->k2c];
        }
        return;
    default: return;
    }
}

/* weight_decompose: w holds W1 = W0 + scale * delta; w0 is W0. */
static void dora_finish(float *w, const float *w0, const kn_tensor *dora, int64_t O, int64_t I, double s, float *dv,
                        double *norm) {
    int out_axis = dora->ne[0] == O;
    kn_to_f32(dv, dora->data, dora->dtype, (size_t)(out_axis ? O : I), dora->scale);
    if (out_axis) { /* ComfyUI norms the original W on this branch */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < O; i++) {
            double acc = 0.0;
            for (int64_t j = 0; j < I; j++) acc += (double)w0[i * I + j] * w0[i * I + j];
            norm[i] = sqrt(acc);
        }
    } else {
        for (int64_t j = 0; j < I; j++) norm[j] = 0.0;
        for (int64_t i = 0; i < O; i++)
            for (int64_t j = 0; j < I; j++) norm[j] += (double)w[i * I + j] * w[i * I + j];
        for (int64_t j = 0; j < I; j++) norm[j] = sqrt(norm[j]);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < O; i++)
        for (int64_t j = 0; j < I; j++) {
            int64_t k = out_axis ? i : j;
            float w2 = w[i * I + j] * (float)(dv[k] / (norm[k] + FLT_EPSILON));
            w[i * I + j] = s == 1.0 ? w2 : (float)(w0[i * I + j] + s * (w2 - w0[i * I + j]));
        }
}

/* Invert the n x n matrix a in place (Gauss-Jordan, partial pivoting). */
static int invert(double *a, int64_t n, double *inv) {
    for (int64_t i = 0; i < n * n; i++) inv[i] = (i / n == i % n);
    for (int64_t c = 0; c < n; c++) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[piv * n + c])) piv = r;
        if (a[piv * n + c] == 0.0) return -1;
        for (int64_t k = 0; k < n; k++) {
            double t = a[c * n + k];
            a[c * n + k] = a[piv * n + k];
            a[piv * n + k] = t;
            t = inv[c * n + k];
            inv[c * n + k] = inv[piv * n + k];
            inv[piv * n + k] = t;
        }
        double d = a[c * n + c];
        for (int64_t k = 0; k < n; k++) a[c * n + k] /= d, inv[c * n + k] /= d;
        for (int64_t r = 0; r < n; r++) {
            if (r == c || a[r * n + c] == 0.0) continue;
            double f = a[r * n + c];
            for (int64_t k = 0; k < n; k++) a[r * n + k] -= f * a[c * n + k], inv[r * n + k] -= f * inv[c * n + k];
        }
    }
    return 0;
}

/* LyCORIS OFT as ComfyUI applies it: W_k += s^2 (R_k - I)^T W_k, R = (I + Q)(I - Q)^-1. */
static int apply_oft(const patch *p, float *w, int64_t I, double s, kn_err *err) {
    const kn_tensor *bt = p->f[0];
    int64_t K = bt->ne[0], b = bt->ne[1];
    float *blk = kn_lora_widen(bt, err);
    double *q = malloc((size_t)(4 * b * b) * sizeof *q), *tmp = malloc((size_t)b * sizeof *tmp);
    if (!blk || !q || !tmp) {
        free(blk), free(q), free(tmp);
        return err->code ? err->code : kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    }
    double norm = 0.0;
    for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                double v = (double)blk[(k * b + i) * b + j] - blk[(k * b + j) * b + i];
                norm += v * v;
            }
    norm = sqrt(norm) + 1e-8;
    double lim = p->scale > 0.0 && norm > p->scale ? p->scale / norm : 1.0;
    double *qm = q, *ipq = q + b * b, *imq = q + 2 * b * b, *inv = q + 3 * b * b;
    int rc = KN_OK;
    for (int64_t k = 0; k < K && !rc; k++) {
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                qm[i * b + j] = lim * ((double)blk[(k * b + i) * b + j] - blk[(k * b + j) * b + i]);
                ipq[i * b + j] = (i == j) + qm[i * b + j];
                imq[i * b + j] = (i == j) - qm[i * b + j];
            }
        if (invert(imq, b, inv)) {
            rc = kn_fail(err, KN_ERR_FORMAT, "lora: '%s' block %lld: I - Q is singular", bt->name, (long long)k);
            break;
        }
        /* qm <- R - I */
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                double acc = 0.0;
                for (int64_t t = 0; t < b; t++) acc += ipq[i * b + t] * inv[t * b + j];
                qm[i * b + j] = acc - (i == j);
            }
        float *wk = w + k * b * I;
        for (int64_t c = 0; c < I; c++) {
            for (int64_t m = 0; m < b; m++) {
                double acc = 0.0;
                for (int64_t n = 0; n < b; n++) acc += qm[n * b + m] * wk[n * I + c];
                tmp[m] = acc;
            }
            for (int64_t m = 0; m < b; m++) wk[m * I + c] = (float)(wk[m * I + c] + s * s * tmp[m]);
        }
    }
    free(blk), free(q), free(tmp);
    return rc;
}

void kn_lora_work_free(kn_lora_work *wk) {
    free(wk->panel), free(wk->w0), free(wk->dv), free(wk->norm);
    memset(wk, 0, sizeof *wk);
}

int kn_lora_grow(void **p, size_t *have, size_t need, size_t elem, kn_err *err) {
    if (*have >= need) return KN_OK;
    void *q = realloc(*p, need * elem);
    if (!q) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory (%zu bytes)", need * elem);
    *p = q;
    *have = need;
    return KN_OK;
}


/* w (the patch's rows) += coef * delta, one segment at a time; LoHa and LoKr
 * deltas are formed a panel of rows at a time. */
static int add_delta(kn_lora_work *wk, const patch *p, prep *q, float *w, int64_t I, int64_t panel_rows, float coef,
                     kn_err *err) {
    segment seg[2];
    int ns = kn_lora_segments(&p->at, seg);
    if (p->kind != P_LORA)
        KN_TRY(kn_lora_grow((void **)&wk->panel, &wk->panel_n, (size_t)(panel_rows * I), sizeof(float), err));
    for (int k = 0; k < ns; k++) {
        /* offsets within the patch's rows: the segment's dst counts from the tensor's row 0 */
        float *dst = w + (seg[k].dst - p->at.row0) * I;
        if (p->kind == P_LORA) {
            kn_lora_lowrank_axpy(dst, q->a1, q->b1, q->r1, seg[k].src, seg[k].n, I, coef);
            continue;
        }
        for (int64_t r0 = 0; r0 < seg[k].n; r0 += panel_rows) {
            int64_t rows = seg[k].n - r0 < panel_rows ? seg[k].n - r0 : panel_rows;
            delta_rows(p, q, seg[k].src + r0, rows, I, wk->panel);
            float *d = dst + r0 * I;
            const float *src = wk->panel;
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < rows * I; i++) d[i] += coef * src[i];
        }
    }
    return KN_OK;
}

int kn_lora_apply_patch(kn_lora_work *wk, const patch *p, float *w, int64_t I, double s, kn_err *err) {
    int64_t O = p->at.rows, n = O * I;
    w += p->at.row0 * I; /* from here on w is the patch's rows */
    if (p->kind == P_OFT) return apply_oft(p, w, I, s, err);
    if (p->kind == P_DIFF || p->kind == P_SET) {
        float *d = kn_lora_widen(p->f[0], err);
        if (!d) return err->code;
        segment seg[2];
        int ns = kn_lora_segments(&p->at, seg);
        /* a set replaces the rows as they are: ComfyUI applies no function to it */
        if (p->kind == P_SET) memcpy(w, d, (size_t)n * sizeof *w);
        for (int k = 0; p->kind == P_DIFF && k < ns; k++) {
            float *dst = w + (seg[k].dst - p->at.row0) * I;
            const float *src = d + seg[k].src * I;
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < seg[k].n * I; i++) dst[i] += (float)s * src[i];
        }
        free(d);
        return KN_OK;
    }
    if (p->dora) {
        KN_TRY(kn_lora_grow((void **)&wk->w0, &wk->w0_n, (size_t)n, sizeof(float), err));
        KN_TRY(kn_lora_grow((void **)&wk->dv, &wk->dv_n, (size_t)(O > I ? O : I), sizeof(float), err));
        KN_TRY(kn_lora_grow((void **)&wk->norm, &wk->norm_n, (size_t)(O > I ? O : I), sizeof(double), err));
        memcpy(wk->w0, w, (size_t)n * sizeof *w);
    }
    /* DoRA scales the delta by alpha only; the strength enters in dora_finish */
    float coef = (float)(p->dora ? p->scale : s * p->scale);
    int64_t panel_rows = PANEL_FLOATS / I > 0 ? PANEL_FLOATS / I : 1;
    if (panel_rows > O) panel_rows = O;
    prep q;
    int rc = prep_init(&q, p, panel_rows, I, err);
    if (!rc) rc = add_delta(wk, p, &q, w, I, panel_rows, coef, err);
    prep_free(&q);
    if (!rc && p->dora) dora_finish(w, wk->w0, p->dora, O, I, s, wk->dv, wk->norm);
    return rc;
}
