/* kiln_bench: Kiln's CPU speed against the machine's peak and OpenBLAS.
 *
 *   kiln_bench [QWEN_IMAGE_DIT_1BLOCK.safetensors]
 *
 * a. fp32 FMA (and bf16 dot-product) peak from tiny kernels (peak.c);
 * b. OpenBLAS sgemm on the DiT's GEMM shapes;
 * c. Kiln's GEMM through kn_linear on the same shapes: bf16 weights in FP32
 *    and BF16 precision, f32 weights in FP32;
 * d. with a model file: one full-width Qwen-Image DiT block at 1024x1024
 *    (4096 image + 256 text tokens) and its attention alone, both precisions,
 *    on separate q/k/v and on views into one fused [L, 3 * dim] qkv buffer.
 * Every time is the median of KN_BENCH_REPS runs (default 3) after one
 * warm-up run. See README.md. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/peak.h"
#include "bench/timer.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/qwen_image/dit.h"

#define IMG_TOKENS 4096 /* 1024x1024 image: 128x128 latent, 2x2 patches */
#define TXT_TOKENS 256

static int reps = 3;
static double peak_fp32, peak_bf16;
static const char *bf16_peak_name = "peak-bf16";

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-a, a): xorshift64*, reproducible run to run. */
static float rnd(float a) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return a * ((float)(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
}

static void fill(float *p, size_t n, float a) {
    for (size_t i = 0; i < n; i++) p[i] = rnd(a);
}

static void *xmalloc(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) {
        fprintf(stderr, "kiln_bench: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* One timed run: returns KN_OK and its seconds, or an error code. */
typedef int (*run_fn)(void *user, double *seconds);

typedef struct timing {
    double median, best; /* seconds */
    double cpu_share;    /* CPU time the process got / (wall time x threads), over the timed runs */
} timing;

/* Median and best of `reps` runs after a warm-up (first touch, page faults,
 * generation, OpenBLAS thread start-up). The best shows what the code does
 * when the rest of a shared machine leaves it alone. */
static int time_runs(run_fn run, void *user, timing *out) {
    double t[64];
    int n = reps < 64 ? reps : 64, rc = run(user, &t[0]);
    double w0 = bench_now(), c0 = bench_cpu_seconds();
    for (int i = 0; rc == KN_OK && i < n; i++) rc = run(user, &t[i]);
    if (rc) return rc;
    out->cpu_share = (bench_cpu_seconds() - c0) / ((bench_now() - w0) * kn_cpu_threads());
    out->median = bench_median(t, n);
    out->best = t[0]; /* sorted */
    return KN_OK;
}

/* A mark for a line timed while other programs held some of the CPUs (the
 * kernels keep every thread busy, so a low share means they were waiting). */
static const char *busy_note(const timing *t) {
    static char buf[64];
    if (t->cpu_share >= 0.85) return "";
    snprintf(buf, sizeof buf, "  [busy machine: %.0f%% of the CPUs]", 100.0 * t->cpu_share);
    return buf;
}

static void print_cpu(void) {
    char line[256], model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(model, sizeof model, "%s", colon + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    }
    if (f) fclose(f);
    const char *bt = getenv("OPENBLAS_CORETYPE");
    printf("cpu: %s, %d threads; OPENBLAS_CORETYPE=%s\n", model, kn_cpu_threads(), bt ? bt : "(unset)");
}

/* ---- a. peak ------------------------------------------------------------ */

#define PEAK_TRIES 5

/* Peak of kernel k on `threads` threads, measured again a second later while
 * other programs hold some of the CPUs (a contended peak would flatter every
 * percentage below); *busy is set when every try was contended. */
static double quiet_peak(peak_kind k, int threads, int *busy) {
    double best = 0.0;
    for (int t = 0; t < PEAK_TRIES; t++) {
        double w0 = bench_now(), c0 = bench_cpu_seconds();
        double g = peak_gflops(k, threads);
        if ((bench_cpu_seconds() - c0) / ((bench_now() - w0) * threads) >= 0.9) {
            *busy = 0;
            return g;
        }
        best = g > best ? g : best;
        sleep(1);
    }
    *busy = 1;
    return best;
}

static void bench_peak(void) {
    int threads = kn_cpu_threads();
    printf("\n== a. machine peak (independent FMA chains, best of 5) ==\n");
    for (int k = 0; k < PEAK_KINDS; k++) {
        if (!peak_supported((peak_kind)k)) {
            printf("%-40s not supported by this CPU/OS\n", peak_name((peak_kind)k));
            continue;
        }
        int busy1, busy;
        double g1 = quiet_peak((peak_kind)k, 1, &busy1), gn = quiet_peak((peak_kind)k, threads, &busy);
        if (busy && !busy1 && g1 * threads > gn) gn = g1 * threads; /* the better estimate */
        printf("%-40s %7.1f GFLOP/s on 1 thread, %7.1f on %d%s\n", peak_name((peak_kind)k), g1, gn, threads,
               busy ? (busy1 ? "  [busy machine: too low]" : " (= 1 thread x threads: the machine stayed busy)") : "");
        if (k == PEAK_DP_BF16) peak_bf16 = gn;
        else if (gn > peak_fp32) peak_fp32 = gn;
    }
    printf("peak-fp32 = %.1f GFLOP/s\n", peak_fp32);
    if (peak_bf16 > 0.0) {
        printf("peak-bf16 = %.1f GFLOP/s (%.2fx peak-fp32)\n", peak_bf16, peak_bf16 / peak_fp32);
    } else {
        /* No bf16 arithmetic: BF16 precision runs on the fp32 FMA units. */
        peak_bf16 = peak_fp32;
        bf16_peak_name = "peak-fp32";
        printf("peak-bf16: no bf16 dot product on this CPU; BF16 precision is held to peak-fp32\n");
    }
}

/* ---- b, c. GEMM --------------------------------------------------------- */

typedef struct gemm_shape {
    int64_t M, N, K;
} gemm_shape;

static const int64_t token_counts[] = {IMG_TOKENS, IMG_TOKENS + TXT_TOKENS};
static const int64_t weight_shapes[][2] = {{3072, 3072}, {12288, 3072}, {3072, 12288}}; /* [N, K] */
#define N_SHAPES (sizeof token_counts / sizeof token_counts[0] * sizeof weight_shapes / sizeof weight_shapes[0])

static gemm_shape shape_at(size_t i) {
    size_t nw = sizeof weight_shapes / sizeof weight_shapes[0];
    gemm_shape s = {token_counts[i / nw], weight_shapes[i % nw][0], weight_shapes[i % nw][1]};
    return s;
}

static double gemm_gflops(gemm_shape s, double seconds) {
    return 2.0 * (double)s.M * (double)s.N * (double)s.K / seconds * 1e-9;
}

typedef struct gemm_job {
    gemm_shape s;
    float *x, *y, *w_f32;
    kn_tensor xt, yt, wt; /* kiln views: wt is bf16 or f32 */
    kn_ctx *ctx;
} gemm_job;

static int run_openblas(void *user, double *seconds) {
    gemm_job *j = user;
    double t0 = bench_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->s.M, (int)j->s.N, (int)j->s.K, 1.0f, j->x,
                (int)j->s.K, j->w_f32, (int)j->s.K, 0.0f, j->y, (int)j->s.N);
    *seconds = bench_now() - t0;
    return KN_OK;
}

static int run_kiln_linear(void *user, double *seconds) {
    gemm_job *j = user;
    double t0 = bench_now();
    int rc = kn_linear(j->ctx, &j->yt, &j->xt, &j->wt, NULL);
    *seconds = bench_now() - t0;
    return rc;
}

typedef struct gemm_variant {
    const char *label;
    kn_precision prec;
    kn_dtype wtype;
} gemm_variant;

static const gemm_variant variants[] = {
    {"fp32 w=bf16", KN_PREC_FP32, KN_BF16},
    {"bf16 w=bf16", KN_PREC_BF16, KN_BF16},
    {"fp32 w=f32 ", KN_PREC_FP32, KN_F32},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

/* Medians (GFLOP/s) for the summary; 0 when not measured. */
static struct {
    double gemm[N_VARIANTS], openblas; /* means over the shapes */
    double block[2];                   /* FP32, BF16 precision */
} results;

static int bench_gemm(void) {
    gemm_shape big = {0, 0, 0};
    for (size_t i = 0; i < N_SHAPES; i++) {
        gemm_shape s = shape_at(i);
        big.M = s.M > big.M ? s.M : big.M;
        big.N = s.N > big.N ? s.N : big.N;
        big.K = s.K > big.K ? s.K : big.K;
    }
    size_t xs = (size_t)(big.M * big.K), ys = (size_t)(big.M * big.N), ws = (size_t)(big.N * big.K);
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.x = xmalloc(xs * 4);
    j.y = xmalloc(ys * 4);
    j.w_f32 = xmalloc(ws * 4);
    uint16_t *w_bf16 = xmalloc(ws * 2);
    fill(j.x, xs, 1.7f);
    fill(j.w_f32, ws, 1.7f / sqrtf((float)big.K));
    /* The same weights in both dtypes: the f32 copy holds the bf16 values. */
    kn_from_f32(w_bf16, KN_BF16, j.w_f32, ws);
    kn_to_f32(j.w_f32, w_bf16, KN_BF16, ws, 1.0f);

    double blas[N_SHAPES], kiln[N_SHAPES][N_VARIANTS];
    timing tm = {0.0, 0.0, 0.0};
    int rc = KN_OK;
    printf("\n== b. OpenBLAS sgemm (y = x w^T, MxNxK = tokens x out x in) ==\n");
    for (size_t i = 0; rc == KN_OK && i < N_SHAPES; i++) {
        j.s = shape_at(i);
        rc = time_runs(run_openblas, &j, &tm);
        blas[i] = gemm_gflops(j.s, tm.median);
        printf("openblas sgemm %5lldx%5lldx%5lld: %6.1f GFLOP/s (best %6.1f) = %5.1f%% peak-fp32%s\n",
               (long long)j.s.M, (long long)j.s.N, (long long)j.s.K, blas[i], gemm_gflops(j.s, tm.best),
               100.0 * blas[i] / peak_fp32, busy_note(&tm));
    }
    printf("\n== c. kiln gemm through kn_linear (precision, stored weight dtype) ==\n");
    for (size_t v = 0; rc == KN_OK && v < N_VARIANTS; v++) {
        kn_ctx ctx;
        rc = kn_ctx_init(&ctx, KN_DEV_CPU, variants[v].prec);
        j.ctx = &ctx;
        for (size_t i = 0; rc == KN_OK && i < N_SHAPES; i++) {
            j.s = shape_at(i);
            j.xt = kn_tensor_make(KN_F32, KN_DEV_CPU, j.x, 2, (int64_t[]){j.s.M, j.s.K});
            j.yt = kn_tensor_make(KN_F32, KN_DEV_CPU, j.y, 2, (int64_t[]){j.s.M, j.s.N});
            j.wt = kn_tensor_make(variants[v].wtype, KN_DEV_CPU, variants[v].wtype == KN_F32 ? (void *)j.w_f32
                                                                                              : (void *)w_bf16,
                                  2, (int64_t[]){j.s.N, j.s.K});
            rc = time_runs(run_kiln_linear, &j, &tm);
            if (rc) {
                fprintf(stderr, "kiln_bench: %s\n", ctx.err.msg);
                break;
            }
            double g = kiln[i][v] = gemm_gflops(j.s, tm.median);
            int bf = variants[v].prec == KN_PREC_BF16;
            printf("kiln gemm %s %5lldx%5lldx%5lld: %6.1f GFLOP/s (best %6.1f) = %5.1f%% %s, %.2fx openblas%s\n",
                   variants[v].label, (long long)j.s.M, (long long)j.s.N, (long long)j.s.K, g,
                   gemm_gflops(j.s, tm.best), 100.0 * g / (bf ? peak_bf16 : peak_fp32),
                   bf ? bf16_peak_name : "peak-fp32", g / blas[i], busy_note(&tm));
        }
        kn_ctx_free(&ctx);
    }
    for (size_t i = 0; rc == KN_OK && i < N_SHAPES; i++) {
        for (size_t v = 0; v < N_VARIANTS; v++) results.gemm[v] += kiln[i][v] / (double)N_SHAPES;
        results.openblas += blas[i] / (double)N_SHAPES;
    }
    free(j.x);
    free(j.y);
    free(j.w_f32);
    free(w_bf16);
    return rc;
}

/* ---- d. DiT block ------------------------------------------------------- */

typedef struct block_job {
    kn_ctx *ctx;
    const kn_qwen_dit *m;
    kn_tensor img, txt, tvec, cos, sin;
    float *img0, *txt0; /* the streams' starting values, restored before each run */
} block_job;

static int run_block(void *user, double *seconds) {
    block_job *j = user;
    memcpy(j->img.data, j->img0, kn_tensor_nbytes(&j->img));
    memcpy(j->txt.data, j->txt0, kn_tensor_nbytes(&j->txt));
    double t0 = bench_now();
    int rc = kn_qwen_dit_block_forward(j->ctx, j->m, 0, &j->img, &j->txt, &j->tvec, NULL, IMG_TOKENS, &j->cos,
                                       &j->sin, NULL, NULL, NULL);
    *seconds = bench_now() - t0;
    return rc;
}

typedef struct attn_job {
    kn_ctx *ctx;
    kn_tensor q, k, v, o;
    float scale;
} attn_job;

static int run_attention(void *user, double *seconds) {
    attn_job *j = user;
    double t0 = bench_now();
    int rc = kn_attention(j->ctx, &j->o, &j->q, &j->k, &j->v, NULL, 0, j->scale);
    *seconds = bench_now() - t0;
    return rc;
}

/* FLOPs of one block, batch 1: every linear (2 per multiply-add) including
 * both modulation projections of the time vector, and attention's
 * QK^T + PV = 4 L^2 (heads x head_dim). Norms, RoPE, GELU, gating and the
 * softmax are not counted. */
static void block_flops(const kn_qwen_dit_config *c, double *linear, double *attention) {
    double D = (double)c->dim, F = (double)c->mlp_hidden, L = IMG_TOKENS + TXT_TOKENS;
    double mod = 2.0 * 2.0 * (6.0 * D) * D;               /* img_mod, txt_mod on one token */
    double per_token = 2.0 * (4.0 * D * D + 2.0 * D * F); /* q, k, v, out; fc1, fc2 */
    *linear = mod + L * per_token;
    *attention = 4.0 * L * L * (double)(c->heads * c->head_dim);
}

static const char *prec_name(kn_precision p) { return p == KN_PREC_BF16 ? "bf16" : "fp32"; }

static int bench_block(const char *path) {
    kn_err err;
    kn_err_clear(&err);
    kn_st_file *f = NULL;
    kn_qwen_dit m;
    const kn_dit_family *fam;
    const char *prefix;
    /* the block benchmark runs one Qwen-Image block directly, not through the family's forward */
    if (kn_st_open(&f, path, &err) || kn_dit_detect(f, &fam, &prefix, &err) ||
        kn_qwen_dit_load(&m, f, prefix, &kn_qwen_image_consts, &err)) {
        fprintf(stderr, "kiln_bench: %s\n", err.msg);
        kn_st_close(f);
        return err.code;
    }
    const kn_qwen_dit_config *c = &m.cfg;
    int64_t D = c->dim, L = IMG_TOKENS + TXT_TOKENS, P = c->head_dim / 2;
    double lin, att;
    block_flops(c, &lin, &att);
    printf("\n== d. Qwen-Image DiT block, 1024x1024: %d image + %d text tokens, dim %lld, %lld heads x %lld ==\n",
           IMG_TOKENS, TXT_TOKENS, (long long)D, (long long)c->heads, (long long)c->head_dim);
    printf("weights %s (%s); %.1f GFLOP a block: linears %.1f (incl. modulation), attention %.1f\n", path,
           kn_dtype_name(m.block[0].img.attn.q.w.dtype), (lin + att) * 1e-9, lin * 1e-9, att * 1e-9);

    block_job b;
    memset(&b, 0, sizeof b);
    b.m = &m;
    b.img = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc((size_t)(IMG_TOKENS * D) * 4), 3,
                           (int64_t[]){1, IMG_TOKENS, D});
    b.txt = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc((size_t)(TXT_TOKENS * D) * 4), 3,
                           (int64_t[]){1, TXT_TOKENS, D});
    b.tvec = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc((size_t)D * 4), 2, (int64_t[]){1, D});
    b.cos = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc((size_t)(L * P) * 4), 2, (int64_t[]){L, P});
    b.sin = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc((size_t)(L * P) * 4), 2, (int64_t[]){L, P});
    b.img0 = xmalloc(kn_tensor_nbytes(&b.img));
    b.txt0 = xmalloc(kn_tensor_nbytes(&b.txt));
    fill(b.img0, (size_t)(IMG_TOKENS * D), 1.7f);
    fill(b.txt0, (size_t)(TXT_TOKENS * D), 1.7f);
    float *tv = b.tvec.data, *cs = b.cos.data, *sn = b.sin.data;
    for (int64_t i = 0; i < D; i++) {
        float t = rnd(3.0f);
        tv[i] = t / (1.0f + expf(-t)); /* silu, as the model feeds it */
    }
    for (int64_t i = 0; i < L * P; i++) {
        float a = rnd(3.14159265f);
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }

    /* attention alone on the block's joint sequence */
    attn_job a;
    int64_t ne4[4] = {1, L, c->heads, c->head_dim};
    size_t qkv = (size_t)(L * D);
    a.q = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(qkv * 4), 4, ne4);
    a.k = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(qkv * 4), 4, ne4);
    a.v = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(qkv * 4), 4, ne4);
    a.o = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(qkv * 4), 4, ne4);
    fill(a.q.data, qkv, 1.7f);
    fill(a.k.data, qkv, 1.7f);
    fill(a.v.data, qkv, 1.7f);
    a.scale = 1.0f / sqrtf((float)c->head_dim);
    /* the same attention reading q, k, v in place from a fused projection output */
    attn_job af = a;
    kn_tensor fused = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(3 * qkv * 4), 3, (int64_t[]){1, L, 3 * D});
    fill(fused.data, 3 * qkv, 1.7f);
    af.o = kn_tensor_make(KN_F32, KN_DEV_CPU, xmalloc(qkv * 4), 4, ne4);
    const int64_t fst[4] = {L * 3 * D, 3 * D, c->head_dim, 1};
    int rc = kn_tensor_view(&af.q, &fused, 4, ne4, fst, 0, &err);
    if (rc == KN_OK) rc = kn_tensor_view(&af.k, &fused, 4, ne4, fst, D, &err);
    if (rc == KN_OK) rc = kn_tensor_view(&af.v, &fused, 4, ne4, fst, 2 * D, &err);
    if (rc) fprintf(stderr, "kiln_bench: %s\n", err.msg);

    static const kn_precision precs[] = {KN_PREC_FP32, KN_PREC_BF16};
    for (size_t p = 0; rc == KN_OK && p < sizeof precs / sizeof precs[0]; p++) {
        kn_ctx ctx;
        rc = kn_ctx_init(&ctx, KN_DEV_CPU, precs[p]);
        b.ctx = a.ctx = af.ctx = &ctx;
        int bf = precs[p] == KN_PREC_BF16;
        double pk = bf ? peak_bf16 : peak_fp32;
        const char *pkn = bf ? bf16_peak_name : "peak-fp32";
        timing ta = {0.0, 0.0, 0.0}, tf = {0.0, 0.0, 0.0}, tb = {0.0, 0.0, 0.0};
        if (rc == KN_OK) rc = time_runs(run_attention, &a, &ta);
        if (rc == KN_OK) rc = time_runs(run_attention, &af, &tf);
        if (rc == KN_OK) rc = time_runs(run_block, &b, &tb);
        if (rc == KN_OK) {
            printf("attention %s %lld tokens: %7.3f s (best %7.3f), %6.1f GFLOP/s = %5.1f%% %s%s\n",
                   prec_name(precs[p]), (long long)L, ta.median, ta.best, att / ta.median * 1e-9,
                   100.0 * att / ta.median * 1e-9 / pk, pkn, busy_note(&ta));
            printf("attention %s fused qkv:   %7.3f s (best %7.3f), %6.1f GFLOP/s = %5.1f%% %s%s\n",
                   prec_name(precs[p]), tf.median, tf.best, att / tf.median * 1e-9,
                   100.0 * att / tf.median * 1e-9 / pk, pkn, busy_note(&tf));
            results.block[p] = (lin + att) / tb.median * 1e-9;
            printf("dit block %s:           %7.3f s (best %7.3f), %6.1f GFLOP/s = %5.1f%% %s%s\n",
                   prec_name(precs[p]), tb.median, tb.best, results.block[p], 100.0 * results.block[p] / pk, pkn,
                   busy_note(&tb));
        } else {
            fprintf(stderr, "kiln_bench: %s\n", ctx.err.msg);
        }
        kn_ctx_free(&ctx);
    }
    void *bufs[] = {b.img.data, b.txt.data, b.tvec.data, b.cos.data, b.sin.data, b.img0, b.txt0,
                    a.q.data,   a.k.data,   a.v.data,    a.o.data, fused.data, af.o.data};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    kn_qwen_dit_free(&m);
    kn_st_close(f);
    return rc;
}

static const char *verdict(int ok) { return ok ? "met" : "MISSED"; }

/* The targets, from the medians above. */
static void print_summary(void) {
    printf("\n== summary (medians; targets: fp32 gemm >= 85%% peak-fp32, bf16 gemm >= 600 GFLOP/s, "
           "dit block >= 70%% of its precision's peak) ==\n");
    for (size_t v = 0; v < N_VARIANTS; v++) {
        int bf = variants[v].prec == KN_PREC_BF16;
        double g = results.gemm[v], pk = bf ? peak_bf16 : peak_fp32;
        printf("kiln gemm %s (mean of %zu shapes): %6.1f GFLOP/s = %5.1f%% %s = %.2fx peak-fp32, %.2fx openblas: "
               "target %s\n",
               variants[v].label, N_SHAPES, g, 100.0 * g / pk, bf ? bf16_peak_name : "peak-fp32", g / peak_fp32,
               g / results.openblas, verdict(bf ? g >= 600.0 : g >= 0.85 * pk));
    }
    for (int p = 0; p < 2 && results.block[p] > 0.0; p++) {
        double pk = p ? peak_bf16 : peak_fp32;
        printf("dit block %s: %6.1f GFLOP/s = %5.1f%% %s: target %s\n", p ? "bf16" : "fp32", results.block[p],
               100.0 * results.block[p] / pk, p ? bf16_peak_name : "peak-fp32", verdict(results.block[p] >= 0.7 * pk));
    }
}

int main(int argc, char **argv) {
    if (argc > 2 || (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fprintf(stderr, "usage: kiln_bench [QWEN_IMAGE_DIT_1BLOCK.safetensors]  (env KN_BENCH_REPS, default 3)\n");
        return 2;
    }
    const char *r = getenv("KN_BENCH_REPS");
    if (r && atoi(r) > 0) reps = atoi(r);
    setvbuf(stdout, NULL, _IOLBF, 0);
    print_cpu();
    printf("each time: median of %d runs after a warm-up\n", reps);
    bench_peak();
    int rc = bench_gemm();
    if (rc == KN_OK && argc == 2) rc = bench_block(argv[1]);
    else if (rc == KN_OK) printf("\n(d. skipped: no model file given)\n");
    if (rc == KN_OK) print_summary();
    return rc == KN_OK ? 0 : 1;
}
