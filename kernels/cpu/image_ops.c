#include "kernels/cpu/cpu_image_ops.h"

#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/device.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Scratch of n floats from the op's arena (the caller restores the mark). */
static float *scratch_floats(kn_ctx *ctx, int64_t n) {
    size_t bytes;
    if (kn_mul_size((size_t)n, sizeof(float), &bytes)) {
        kn_fail(&ctx->err, KN_ERR_NOMEM, "scratch of %lld floats overflows", (long long)n);
        return NULL;
    }
    return kn_arena_alloc(ctx->scratch, bytes, &ctx->err);
}

/* F32 data of a small weight (norm gammas, biases) or NULL for no tensor. */
static int widen_small(kn_ctx *ctx, const kn_tensor *w, const float **out) {
    kn_tensor f;
    *out = NULL;
    if (!w) return KN_OK;
    if (kn_cpu_weight_f32(ctx, &f, w)) return ctx->err.code;
    *out = f.data;
    return KN_OK;
}

/* ---- convolution: im2col tiles + GEMM -------------------------------------- */

/* Per-thread im2col tile and output-channel weight panel budgets. Tiles are
 * wide enough (a few hundred pixels for K = 9 * 384) that the GEMM's packing
 * of the weights is amortised, and small enough to stay in L3 next to the
 * other thread's; a panel bounds the widened weights of any layer. */
#define CONV_COL_BYTES ((int64_t)4 << 20)
#define CONV_PANEL_BYTES ((int64_t)16 << 20)
#define CONV_MIN_TILE 64
#define CONV_MAX_TILE 4096
#define CONV_MAX_TAPS 16

typedef struct conv_geom {
    int64_t b, cin, t, h, w;   /* input */
    int64_t cout, to, ho, wo;  /* output */
    int64_t kt, kh, kw;
    int64_t k;                 /* GEMM depth of one temporal tap: cin * kh * kw */
    int64_t pixels;            /* ho * wo */
    int64_t x_cs, y_cs;        /* channel strides: t*h*w, to*pixels */
    kn_conv_params p;
} conv_geom;

static conv_geom conv_geom_of(const kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_conv_params *p) {
    conv_geom g;
    g.b = x->ne[0], g.cin = x->ne[1], g.t = x->ne[2], g.h = x->ne[3], g.w = x->ne[4];
    g.cout = y->ne[1], g.to = y->ne[2], g.ho = y->ne[3], g.wo = y->ne[4];
    g.kt = w->ne[2], g.kh = w->ne[3], g.kw = w->ne[4];
    g.k = g.cin * g.kh * g.kw;
    g.pixels = g.ho * g.wo;
    g.x_cs = g.t * g.h * g.w;
    g.y_cs = g.to * g.pixels;
    g.p = *p;
    return g;
}

/* Input frame read by output frame `to` through temporal tap `k`, or -1 on padding. */
static int64_t conv_input_frame(const conv_geom *g, int64_t to, int64_t k) {
    int64_t ti = to * g->p.stride_t + k - g->p.pad_front;
    return ti >= 0 && ti < g->t ? ti : -1;
}

/* A 1x1 kernel without stride, padding or upsampling reads x as the GEMM's B
 * operand directly ([cin, pixels] with row stride x_cs): no im2col. */
static int conv_is_pointwise(const conv_geom *g) {
    const kn_conv_params *p = &g->p;
    return g->kh == 1 && g->kw == 1 && p->stride_h == 1 && p->stride_w == 1 && p->upsample == 1 && !p->pad_top &&
           !p->pad_bottom && !p->pad_left && !p->pad_right;
}

/* dst[j] = x row value under output column ox0 + j for kernel column kx (0 on padding). */
static void gather_row(float *dst, const float *src, int64_t ox0, int64_t n, int64_t kx, const conv_geom *g) {
    const int64_t sw = g->p.stride_w, up = g->p.upsample, wu = g->w * up;
    const int64_t ix0 = ox0 * sw - g->p.pad_left + kx; /* in upsampled columns */
    /* dst[j] reads column ix0 + j*sw, inside the row for j in [lo, hi) */
    const int64_t lo = ix0 < 0 ? min64(n, (-ix0 + sw - 1) / sw) : 0;
    const int64_t hi = ix0 < wu ? max64(lo, min64(n, (wu - ix0 + sw - 1) / sw)) : lo;
    memset(dst, 0, (size_t)lo * sizeof *dst);
    memset(dst + hi, 0, (size_t)(n - hi) * sizeof *dst);
    if (sw == 1 && up == 1) {
        if (hi > lo) memcpy(dst + lo, src + ix0 + lo, (size_t)(hi - lo) * sizeof *dst);
    } else if (up == 1) {
        for (int64_t j = lo; j < hi; j++) dst[j] = src[ix0 + j * sw];
    } else if (sw == 1 && up == 2) { /* decoder upsampling: a shift instead of a division per element */
        for (int64_t j = lo; j < hi; j++) dst[j] = src[(ix0 + j) >> 1];
    } else {
        for (int64_t j = lo; j < hi; j++) dst[j] = src[(ix0 + j * sw) / up];
    }
}

/* col[(ci*kh + ky)*kw + kx][j] = input under output pixel p0 + j, frame xf. */
static void im2col_tile(float *col, const float *xf, const conv_geom *g, int64_t p0, int64_t np) {
    const int64_t hu = g->h * g->p.upsample;
    for (int64_t ci = 0; ci < g->cin; ci++) {
        const float *xc = xf + ci * g->x_cs;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            for (int64_t kx = 0; kx < g->kw; kx++) {
                float *row = col + ((ci * g->kh + ky) * g->kw + kx) * np;
                int64_t oy = p0 / g->wo, ox = p0 % g->wo;
                for (int64_t j = 0; j < np; oy++, ox = 0) {
                    int64_t run = min64(g->wo - ox, np - j);
                    int64_t iy = oy * g->p.stride_h - g->p.pad_top + ky;
                    if (iy < 0 || iy >= hu) memset(row + j, 0, (size_t)run * sizeof *row);
                    else gather_row(row + j, xc + (iy / g->p.upsample) * g->w, ox, run, kx, g);
                    j += run;
                }
            }
        }
    }
}

typedef struct conv_job {
    conv_geom g;
    const float *x;
    float *y;
    const float *bias;   /* [cout] or NULL */
    const float *panel;  /* [taps][panel_rows][k]: widened weights of channels co0.. */
    const float *packed; /* [taps][packed_floats]: the panel packed once for the GEMM */
    size_t packed_floats;
    int64_t panel_rows;  /* allocated rows per tap */
    int tap_slot[CONV_MAX_TAPS]; /* panel slot of each temporal tap, -1 when no frame reads it */
    int64_t co0, pc;     /* output channels of this panel */
    int64_t tile, ntiles;
    int pointwise;
    int bf16;            /* BF16 precision: weights and inputs rounded to bf16 in the GEMM */
} conv_job;

/* panel[slot(k)][c][:] = w[co0 + c, :, k, :, :] as F32, for the taps some output frame reads. */
static void widen_panel(float *panel, const conv_job *j, const kn_tensor *w) {
    const conv_geom *g = &j->g;
    const size_t esz = kn_dtype_size(w->dtype);
    const int64_t khw = g->kh * g->kw;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t c = 0; c < j->pc; c++) {
        for (int64_t ci = 0; ci < g->cin; ci++) {
            for (int64_t k = 0; k < g->kt; k++) {
                if (j->tap_slot[k] < 0) continue;
                int64_t src = (((j->co0 + c) * g->cin + ci) * g->kt + k) * khw;
                kn_to_f32(panel + (j->tap_slot[k] * j->panel_rows + c) * g->k + ci * khw,
                          (const char *)w->data + (size_t)src * esz, w->dtype, (size_t)khw, w->scale);
            }
        }
    }
}

/* One task: output frame `to` of batch `b`, pixels [p0, p0 + np), channels of the panel. */
static int conv_task(const conv_job *j, int64_t task, float *col, kn_err *err) {
    const conv_geom *g = &j->g;
    const int64_t tile_idx = task % j->ntiles, frame = task / j->ntiles;
    const int64_t to = frame % g->to, b = frame / g->to;
    const int64_t p0 = tile_idx * j->tile, np = min64(j->tile, g->pixels - p0);
    float *yc = j->y + (b * g->cout + j->co0) * g->y_cs + to * g->pixels + p0;
    float beta = 0.0f;
    for (int64_t k = 0; k < g->kt; k++) {
        int64_t ti = conv_input_frame(g, to, k);
        if (ti < 0) continue;
        const float *xf = j->x + b * g->cin * g->x_cs + ti * g->h * g->w;
        const float *bm = xf + p0;
        int64_t ldb = g->x_cs;
        if (!j->pointwise) {
            im2col_tile(col, xf, g, p0, np);
            bm = col;
            ldb = np;
        }
        const float *wk = j->packed + (size_t)j->tap_slot[k] * j->packed_floats;
        int rc = kn_cpu_gemm_packed(j->pc, np, g->k, wk, bm, ldb, beta, yc, g->y_cs, j->bf16, err);
        if (rc) return rc;
        beta = 1.0f;
    }
    for (int64_t c = 0; c < j->pc; c++) {
        float *row = yc + c * g->y_cs;
        const float add = j->bias ? j->bias[j->co0 + c] : 0.0f;
        if (beta == 0.0f) { /* every tap fell on padding frames */
            for (int64_t i = 0; i < np; i++) row[i] = add;
        } else if (j->bias) {
            for (int64_t i = 0; i < np; i++) row[i] += add;
        }
    }
    return KN_OK;
}

/* Pixels per task: the im2col tile fits CONV_COL_BYTES, and there are enough
 * tasks to keep every thread busy on small maps. */
static int64_t conv_tile_pixels(const conv_geom *g, int threads) {
    int64_t tile = CONV_COL_BYTES / (g->k * (int64_t)sizeof(float));
    tile = min64(max64(tile, CONV_MIN_TILE), CONV_MAX_TILE);
    const int64_t frames = g->b * g->to;
    while (tile > CONV_MIN_TILE && frames * ((g->pixels + tile - 1) / tile) < 4 * (int64_t)threads) tile /= 2;
    return min64(tile, g->pixels);
}

static int conv_run(kn_ctx *ctx, conv_job *j, const kn_tensor *w, const kn_tensor *bias) {
    const conv_geom *g = &j->g;
    const int threads = kn_cpu_threads();
    int taps = 0;
    if (g->kt > CONV_MAX_TAPS)
        return kn_fail(&ctx->err, KN_ERR_UNSUPPORTED, "conv3d: temporal kernel of %lld taps (at most %d)",
                       (long long)g->kt, CONV_MAX_TAPS);
    for (int64_t k = 0; k < g->kt; k++) {
        int used = 0;
        for (int64_t to = 0; to < g->to && !used; to++) used = conv_input_frame(g, to, k) >= 0;
        j->tap_slot[k] = used ? taps++ : -1;
    }
    if (widen_small(ctx, bias, &j->bias)) return ctx->err.code;
    j->pointwise = conv_is_pointwise(g);
    j->bf16 = ctx->precision == KN_PREC_BF16;
    j->tile = conv_tile_pixels(g, threads);
    j->ntiles = (g->pixels + j->tile - 1) / j->tile;
    j->panel_rows = min64(g->cout, max64(1, CONV_PANEL_BYTES / (max64(taps, 1) * g->k * (int64_t)sizeof(float))));
    float *panel = scratch_floats(ctx, max64(taps, 1) * j->panel_rows * g->k);
    j->packed_floats = kn_cpu_gemm_packed_a_floats(j->panel_rows, g->k, j->bf16);
    float *packed = scratch_floats(ctx, max64(taps, 1) * (int64_t)j->packed_floats);
    float *cols = j->pointwise ? NULL : scratch_floats(ctx, (int64_t)threads * g->k * j->tile);
    if (!panel || !packed || (!j->pointwise && !cols)) return ctx->err.code;
    j->panel = panel;
    j->packed = packed;
    const int64_t ntasks = g->b * g->to * j->ntiles;
    int status = KN_OK;
    for (j->co0 = 0; j->co0 < g->cout && !status; j->co0 += j->panel_rows) {
        j->pc = min64(j->panel_rows, g->cout - j->co0);
        widen_panel(panel, j, w);
        /* packed once here, not again by every pixel tile's GEMM */
        for (int k = 0; k < taps; k++)
            kn_cpu_gemm_pack_a(packed + (size_t)k * j->packed_floats, panel + k * j->panel_rows * g->k, g->k, j->pc,
                               g->k, j->bf16);
        #pragma omp parallel for schedule(dynamic)
        for (int64_t task = 0; task < ntasks; task++) {
            kn_err task_err;
            if (kn_ctx_cancelled(ctx)) continue; /* a big convolution stops within a tile */
            float *col = cols ? cols + (int64_t)thread_index() * g->k * j->tile : NULL;
            if (conv_task(j, task, col, &task_err) == KN_OK) continue;
            #pragma omp critical(kn_conv_error)
            if (status == KN_OK) {
                status = task_err.code;
                ctx->err = task_err;
            }
        }
        if (status == KN_OK) status = kn_ctx_check_cancel(ctx, "conv3d");
    }
    return status;
}

int kn_cpu_conv3d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                  const kn_conv_params *p) {
    conv_job j;
    memset(&j, 0, sizeof j);
    j.g = conv_geom_of(y, x, w, p);
    j.x = x->data;
    j.y = y->data;
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = conv_run(ctx, &j, w, bias);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

void kn_ref_conv3d(kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                   const kn_conv_params *p) {
    const conv_geom g = conv_geom_of(y, x, w, p);
    const float *xd = x->data, *wd = w->data, *bd = bias ? bias->data : NULL;
    float *yd = y->data;
    const int64_t hu = g.h * p->upsample, wu = g.w * p->upsample;
    for (int64_t b = 0; b < g.b; b++)
        for (int64_t co = 0; co < g.cout; co++)
            for (int64_t to = 0; to < g.to; to++)
                for (int64_t oy = 0; oy < g.ho; oy++)
                    for (int64_t ox = 0; ox < g.wo; ox++) {
                        double acc = bd ? bd[co] : 0.0;
                        for (int64_t ci = 0; ci < g.cin; ci++)
                            for (int64_t k = 0; k < g.kt; k++) {
                                int64_t ti = conv_input_frame(&g, to, k);
                                for (int64_t ky = 0; ky < g.kh && ti >= 0; ky++)
                                    for (int64_t kx = 0; kx < g.kw; kx++) {
                                        int64_t iy = oy * p->stride_h - p->pad_top + ky;
                                        int64_t ix = ox * p->stride_w - p->pad_left + kx;
                                        if (iy < 0 || iy >= hu || ix < 0 || ix >= wu) continue;
                                        float xv = xd[(((b * g.cin + ci) * g.t + ti) * g.h + iy / p->upsample) * g.w +
                                                      ix / p->upsample];
                                        float wv = wd[(((co * g.cin + ci) * g.kt + k) * g.kh + ky) * g.kw + kx];
                                        acc += (double)xv * wv;
                                    }
                            }
                        yd[(((b * g.cout + co) * g.to + to) * g.ho + oy) * g.wo + ox] = (float)acc;
                    }
}

/* ---- norms ------------------------------------------------------------------- */

/* Positions normalised together: per-position sums stay in a stack array
 * while channels stream through with unit stride. */
#define NORM_BLOCK 256

int kn_cpu_channel_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *gamma,
                           const kn_tensor *bias, float eps) {
    const int64_t batch = x->ne[0], c = x->ne[1], s = kn_tensor_numel(x) / (batch * c);
    const int64_t blocks = (s + NORM_BLOCK - 1) / NORM_BLOCK;
    const float root_c = sqrtf((float)c);
    const float *xd = x->data, *g, *bb;
    float *yd = y->data;
    size_t mark = kn_arena_mark(ctx->scratch);
    if (widen_small(ctx, gamma, &g) || widen_small(ctx, bias, &bb)) {
        kn_arena_reset(ctx->scratch, mark);
        return ctx->err.code;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < batch * blocks; task++) {
        const int64_t s0 = (task % blocks) * NORM_BLOCK, n = min64(NORM_BLOCK, s - s0);
        const float *xb = xd + (task / blocks) * c * s + s0;
        float *yb = yd + (task / blocks) * c * s + s0;
        float scale[NORM_BLOCK] = {0};
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t i = 0; i < n; i++) scale[i] += xb[ch * s + i] * xb[ch * s + i];
        for (int64_t i = 0; i < n; i++) scale[i] = root_c / fmaxf(sqrtf(scale[i]), eps);
        for (int64_t ch = 0; ch < c; ch++) {
            const float gc = g[ch], bc = bb ? bb[ch] : 0.0f;
            for (int64_t i = 0; i < n; i++) yb[ch * s + i] = xb[ch * s + i] * scale[i] * gc + bc;
        }
    }
    kn_arena_reset(ctx->scratch, mark);
    return KN_OK;
}

int kn_cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int groups, const kn_tensor *w,
                      const kn_tensor *b, float eps) {
    const int64_t batch = x->ne[0], c = x->ne[1], s = kn_tensor_numel(x) / (batch * c);
    const int64_t cg = c / groups, n = cg * s;
    const float *xd = x->data, *wf, *bf;
    float *yd = y->data;
    size_t mark = kn_arena_mark(ctx->scratch);
    if (widen_small(ctx, w, &wf) || widen_small(ctx, b, &bf)) {
        kn_arena_reset(ctx->scratch, mark);
        return ctx->err.code;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < batch * groups; task++) {
        const float *xg = xd + task * n; /* a group's channels are adjacent */
        float *yg = yd + task * n;
        double sum = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; i++) sum += xg[i];
        const double mean = sum / (double)n;
        for (int64_t i = 0; i < n; i++) sq += (xg[i] - mean) * (xg[i] - mean);
        const float m = (float)mean, rstd = (float)(1.0 / sqrt(sq / (double)n + eps));
        for (int64_t ch = 0; ch < cg; ch++) {
            const int64_t cc = (task % groups) * cg + ch;
            const float scale = wf ? rstd * wf[cc] : rstd, shift = bf ? bf[cc] : 0.0f;
            for (int64_t i = ch * s; i < (ch + 1) * s; i++) yg[i] = (xg[i] - m) * scale + shift;
        }
    }
    kn_arena_reset(ctx->scratch, mark);
    return KN_OK;
}

/* ---- resampling and layout ---------------------------------------------------- */

int kn_cpu_upsample_nearest(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    const int64_t h = x->ne[x->ndim - 2], w = x->ne[x->ndim - 1];
    const int64_t oh = y->ne[y->ndim - 2], ow = y->ne[y->ndim - 1], f = oh / h;
    const int64_t rows = kn_tensor_numel(y) / ow;
    const float *xd = x->data;
    float *yd = y->data;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t plane = r / oh, oy = r % oh;
        const float *src = xd + (plane * h + oy / f) * w;
        float *dst = yd + r * ow;
        for (int64_t ox = 0; ox < ow; ox++) dst[ox] = src[ox / f];
    }
    return KN_OK;
}

int kn_cpu_pad2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int top, int left) {
    const int64_t h = x->ne[x->ndim - 2], w = x->ne[x->ndim - 1];
    const int64_t oh = y->ne[y->ndim - 2], ow = y->ne[y->ndim - 1];
    const int64_t rows = kn_tensor_numel(y) / ow;
    const float *xd = x->data;
    float *yd = y->data;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t plane = r / oh, iy = r % oh - top;
        float *dst = yd + r * ow;
        memset(dst, 0, (size_t)ow * sizeof *dst);
        if (iy >= 0 && iy < h) memcpy(dst + left, xd + (plane * h + iy) * w, (size_t)w * sizeof *dst);
    }
    return KN_OK;
}

int kn_cpu_pixel_shuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r, int unshuffle) {
    const kn_tensor *spread = unshuffle ? x : y;
    const int64_t n = spread->ne[0], c = spread->ne[1], sh = spread->ne[2], sw = spread->ne[3];
    const int64_t h = sh / r, w = sw / r;
    float *spread_d = spread->data, *packed_d = unshuffle ? y->data : x->data;
    #pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n * c * sh; row++) {
        const int64_t oy = row % sh, nc = row / sh; /* nc = n * C + c */
        for (int64_t ox = 0; ox < sw; ox++) {
            const int64_t pc = nc * r * r + (oy % r) * r + ox % r;
            float *sp = spread_d + row * sw + ox, *pk = packed_d + (pc * h + oy / r) * w + ox / r;
            if (unshuffle) *pk = *sp;
            else *sp = *pk;
        }
    }
    return KN_OK;
}

/* Square blocks keep both the reads and the writes within a few cache lines. */
#define TRANSPOSE_BLOCK 32

int kn_cpu_transpose_last2(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    const int64_t m = x->ne[x->ndim - 2], n = x->ne[x->ndim - 1];
    const int64_t planes = kn_tensor_numel(x) / (m * n);
    const int64_t mb = (m + TRANSPOSE_BLOCK - 1) / TRANSPOSE_BLOCK, nb = (n + TRANSPOSE_BLOCK - 1) / TRANSPOSE_BLOCK;
    const float *xd = x->data;
    float *yd = y->data;
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < planes * mb * nb; task++) {
        const int64_t plane = task / (mb * nb), i0 = (task / nb % mb) * TRANSPOSE_BLOCK,
                      j0 = task % nb * TRANSPOSE_BLOCK;
        const float *xp = xd + plane * m * n;
        float *yp = yd + plane * m * n;
        for (int64_t i = i0; i < min64(i0 + TRANSPOSE_BLOCK, m); i++)
            for (int64_t j = j0; j < min64(j0 + TRANSPOSE_BLOCK, n); j++) yp[j * m + i] = xp[i * n + j];
    }
    return KN_OK;
}

int kn_cpu_image_to_unit(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    const int64_t n = kn_tensor_numel(x);
    const float *xd = x->data;
    float *yd = y->data;
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) yd[i] = fminf(fmaxf((xd[i] + 1.0f) * 0.5f, 0.0f), 1.0f);
    return KN_OK;
}
