/* model_bench: any model Kiln runs, timed through the family interface on a
 * full-width (usually reduced-depth) random-weight file from shared/bench.
 *
 *   model_bench dit FILE [SIZE [TEXT_TOKENS]]      one DiT forward at SIZE x SIZE pixels (default 1024, 256)
 *   model_bench text TYPE FILE [FILE2]             one CLIPTextEncode of a fixed prompt (TYPE as CLIPLoader's)
 *   model_bench vae FILE [SIZE]                    one VAE decode of a SIZE x SIZE image (default 1024)
 *   model_bench vision FILE [W H]                  Qwen2.5-VL's vision tower ("visual.*") on one W x H image
 *                                                  (default 1182 x 887: what TextEncodeQwenImageEdit makes
 *                                                  of a 4:3 picture, 5376 patches), preprocessing included
 *   model_bench linear M N K                       one kn_linear: M rows x a bf16 [N, K] weight (the
 *                                                  text encoders' skinny GEMMs)
 *   model_bench peak                               only the fp32 FMA peak (bench/compare_sdcpp.sh)
 *
 * Under mpirun the DiT forward runs split across the ranks (KN_BENCH_SP:
 * auto, ulysses or ring; bench/sp.sh) and rank 0 also prints the bytes each
 * rank sent per step.
 *
 * KN_BENCH_PRECISION=bf16 runs everything in BF16 compute precision (bf16
 * pairs on CPUs with AVX512_BF16; FP32 by default); the peak printed stays
 * the fp32 FMA peak.
 *
 * Prints the median and best of KN_BENCH_REPS runs (default 3) after one
 * warm-up, the GEMM and attention work the ops counted (ctx->flops), its
 * rate, and that rate as a fraction of this machine's fp32 FMA peak measured
 * in the same run (bench/peak.c). Per-block figures come from two files of
 * different depths: time(N2) - time(N1) over N2 - N1 (bench/run.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/peak.h"
#include "bench/timer.h"
#include "kernels/comm.h"
#include "kernels/device.h"
#include "pipelines/family.h"
#include "pipelines/qwen_image/vision.h"

#define PROMPT "a red fox sitting in fresh snow, watercolor, soft morning light, pine trees in the background"

static int reps = 3;
static kn_precision precision = KN_PREC_FP32; /* KN_BENCH_PRECISION: fp32 or bf16 */

typedef int (*run_fn)(void *job, kn_ctx *ctx);

/* Median and best seconds of `reps` runs after a warm-up, and the flops of one run. */
static int timed(run_fn run, void *job, kn_ctx *ctx, double *median, double *best, double *flops) {
    double t[32];
    for (int i = -1; i < reps; i++) {
        ctx->flops = 0.0;
        double t0 = bench_now();
        if (run(job, ctx)) return 1;
        if (i >= 0) t[i] = bench_now() - t0;
    }
    *flops = ctx->flops;
    *median = bench_median(t, reps);
    *best = t[0]; /* sorted */
    return 0;
}

static double machine_peak(void) {
    peak_kind k = peak_supported(PEAK_FMA_AVX512) ? PEAK_FMA_AVX512 : PEAK_FMA_AVX2;
    double p = peak_gflops(k, kn_cpu_threads());
    printf("peak-fp32 (%s, %d threads) = %.1f GFLOP/s\n", peak_name(k), kn_cpu_threads(), p);
    return p;
}

static void report(const char *what, double median, double best, double flops, double peak) {
    double rate = flops / median * 1e-9;
    printf("%s: %.3f s (best %.3f), %.1f GFLOP, %.1f GFLOP/s = %.1f%% of peak-fp32\n", what, median, best,
           flops * 1e-9, rate, 100.0 * rate / peak);
}

static void fill(kn_tensor *t, float amp, uint64_t *seed) {
    float *d = t->data;
    for (int64_t i = 0; i < kn_tensor_numel(t); i++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        d[i] = amp * ((float)(*seed >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

/* ---- DiT ------------------------------------------------------------------------ */

typedef struct dit_job {
    const kn_dit *m;
    kn_dit_input in;
    kn_tensor out;
} dit_job;

static int run_dit(void *user, kn_ctx *ctx) {
    dit_job *j = user;
    return kn_dit_forward(ctx, j->m, &j->in, &j->out, NULL, NULL);
}

static int bench_dit(const char *path, int size, int64_t text, const kn_sp *sp, double peak, kn_err *err) {
    kn_st_file *f = NULL;
    kn_dit *m = NULL;
    kn_ctx ctx;
    dit_job j = {0};
    kn_tensor x = {0}, t = {0}, context = {0}, pooled = {0};
    uint64_t seed = 1;
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, precision);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_dit_load(&m, f, err);
    if (rc) goto out;
    int64_t h = size / 8, five[5] = {1, m->channels, 1, h, h}, four[4] = {1, m->channels, h, h};
    int nd = m->family->latent_ndim;
    rc = kn_tensor_new(&x, KN_F32, KN_DEV_CPU, nd, nd == 5 ? five : four, err);
    if (!rc) rc = kn_tensor_new(&j.out, KN_F32, KN_DEV_CPU, nd, x.ne, err);
    if (!rc) rc = kn_tensor_new(&t, KN_F32, KN_DEV_CPU, 1, (int64_t[]){1}, err);
    if (!rc) rc = kn_tensor_new(&context, KN_F32, KN_DEV_CPU, 3, (int64_t[]){1, text, m->context_dim}, err);
    if (!rc && m->pooled_dim) rc = kn_tensor_new(&pooled, KN_F32, KN_DEV_CPU, 2, (int64_t[]){1, m->pooled_dim}, err);
    if (rc) goto out;
    fill(&x, 1.0f, &seed);
    fill(&context, 1.0f, &seed);
    if (pooled.data) fill(&pooled, 1.0f, &seed);
    ((float *)t.data)[0] = 0.6f;
    j.m = m;
    j.in = (kn_dit_input){&x, &t, &context, NULL, pooled.data ? &pooled : NULL, NULL, NULL, 0, m->ref_method, sp};
    printf("%s: %s, %lld weights in its table\n", path, m->family->title, (long long)m->weights->n);
    double med, best, flops;
    kn_comm *comm = kn_sp_comm(sp);
    if (comm) kn_comm_reset_stats(comm);
    if (timed(run_dit, &j, &ctx, &med, &best, &flops)) {
        *err = ctx.err;
        rc = err->code;
        goto out;
    }
    char what[160];
    snprintf(what, sizeof what, "dit step %dx%d (%lld text tokens)%s", size, size, (long long)text,
             kn_sp_size(sp) > 1 ? " on this rank's rows" : "");
    report(what, med, best, flops, peak);
    if (comm) {
        const kn_comm_stats *st = kn_comm_get_stats(comm);
        printf("sequence parallel over %d ranks: %.3f MB sent per rank per step (%.1f collectives, %.3f s in them)\n",
               kn_sp_size(sp), (double)st->bytes_sent / (reps + 1) * 1e-6, (double)st->calls / (reps + 1),
               st->wait_s / (reps + 1));
    }
out:
    kn_tensor *all[] = {&x, &t, &context, &pooled, &j.out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
    kn_dit_free(m);
    kn_st_close(f);
    kn_ctx_free(&ctx);
    return rc;
}

/* ---- one linear --------------------------------------------------------------------- */

typedef struct linear_job {
    kn_tensor x, w, y;
} linear_job;

static int run_linear(void *user, kn_ctx *ctx) {
    linear_job *j = user;
    return kn_linear(ctx, &j->y, &j->x, &j->w, NULL);
}

static int bench_linear(int64_t M, int64_t N, int64_t K, double peak, kn_err *err) {
    kn_ctx ctx;
    linear_job j = {0};
    kn_tensor wf = {0};
    uint64_t seed = 3;
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, precision);
    if (!rc) rc = kn_tensor_new(&j.x, KN_F32, KN_DEV_CPU, 2, (int64_t[]){M, K}, err);
    if (!rc) rc = kn_tensor_new(&wf, KN_F32, KN_DEV_CPU, 2, (int64_t[]){N, K}, err);
    if (!rc) rc = kn_tensor_new(&j.w, KN_BF16, KN_DEV_CPU, 2, (int64_t[]){N, K}, err);
    if (!rc) rc = kn_tensor_new(&j.y, KN_F32, KN_DEV_CPU, 2, (int64_t[]){M, N}, err);
    if (!rc) {
        fill(&j.x, 1.0f, &seed);
        fill(&wf, 0.05f, &seed);
        kn_from_f32(j.w.data, KN_BF16, wf.data, (size_t)(N * K));
        double med, best, flops;
        if (timed(run_linear, &j, &ctx, &med, &best, &flops)) {
            *err = ctx.err;
            rc = err->code;
        } else {
            char what[96];
            snprintf(what, sizeof what, "linear %lld x [%lld, %lld] bf16", (long long)M, (long long)N, (long long)K);
            report(what, med, best, flops, peak);
        }
    }
    kn_tensor *all[] = {&j.x, &wf, &j.w, &j.y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
    kn_ctx_free(&ctx);
    return rc;
}

/* ---- text encoders ------------------------------------------------------------- */

typedef struct text_job {
    const kn_clip *c;
    kn_err *err;
} text_job;

static int run_text(void *user, kn_ctx *ctx) {
    text_job *j = user;
    const char *texts[1] = {PROMPT};
    kn_text_cond out;
    int rc = j->c->family->encode(ctx, j->c, texts, 1, &out, j->err);
    kn_text_cond_free(&out);
    return rc;
}

static int bench_text(const char *type, const char *const *paths, int n, const char *tokenizers, double peak,
                      kn_err *err) {
    kn_st_file *f[2] = {NULL, NULL};
    kn_clip *c = NULL;
    kn_ctx ctx;
    const kn_clip_family *fam = NULL;
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, precision);
    for (int i = 0; !rc && i < n; i++) rc = kn_st_open(&f[i], paths[i], err);
    if (!rc) rc = kn_clip_detect((const kn_st_file **)f, n, type, &fam, err);
    if (!rc) rc = fam->load(&c, (const kn_st_file *const *)f, tokenizers, err);
    if (!rc) {
        text_job j = {c, err};
        double med, best, flops;
        printf("%s: %s\n", paths[0], fam->title);
        if (!(rc = timed(run_text, &j, &ctx, &med, &best, &flops))) report("text encode", med, best, flops, peak);
    }
    kn_clip_free(c);
    for (int i = 0; i < n; i++) kn_st_close(f[i]);
    kn_ctx_free(&ctx);
    return rc;
}

/* ---- VAE decode ------------------------------------------------------------------ */

typedef struct vae_job {
    const kn_vae *v;
    kn_tensor z, y;
} vae_job;

static int run_vae(void *user, kn_ctx *ctx) {
    vae_job *j = user;
    return j->v->family->decode(ctx, j->v, &j->y, &j->z);
}

static int bench_vae(const char *path, int size, double peak, kn_err *err) {
    kn_st_file *f = NULL;
    kn_vae *v = NULL;
    kn_ctx ctx;
    vae_job j = {0};
    uint64_t seed = 2;
    int64_t ne[4];
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, precision);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_vae_load(&v, f, err);
    if (!rc) rc = kn_tensor_new(&j.z, KN_F32, KN_DEV_CPU, 4, (int64_t[]){1, v->latent_channels, size / 8, size / 8}, err);
    if (!rc) rc = v->family->image_shape(v, &j.z, ne, err);
    if (!rc) rc = kn_tensor_new(&j.y, KN_F32, KN_DEV_CPU, 4, ne, err);
    if (!rc) {
        fill(&j.z, 1.0f, &seed);
        j.v = v;
        double med, best, flops;
        printf("%s: %s\n", path, v->family->title);
        char what[64];
        snprintf(what, sizeof what, "vae decode %dx%d", size, size);
        if (timed(run_vae, &j, &ctx, &med, &best, &flops)) {
            *err = ctx.err;
            rc = err->code;
        } else {
            report(what, med, best, flops, peak);
        }
    }
    kn_tensor_free(&j.z);
    kn_tensor_free(&j.y);
    kn_vae_free(v);
    kn_st_close(f);
    kn_ctx_free(&ctx);
    return rc;
}

/* ---- vision tower --------------------------------------------------------------- */

typedef struct vision_job {
    const kn_qwen_vision *m;
    kn_tensor image;
    kn_arena *arena;
    int64_t tokens;
} vision_job;

static int run_vision(void *user, kn_ctx *ctx) {
    vision_job *j = user;
    kn_tensor rows, out;
    int64_t gh, gw;
    size_t mark = kn_arena_mark(j->arena);
    int rc = kn_qwen_vision_rows(j->arena, &j->image, &rows, &gh, &gw, &ctx->err);
    if (!rc) rc = kn_arena_tensor(j->arena, &out, KN_F32, 2, (int64_t[]){gh * gw / 4, j->m->out_dim}, &ctx->err);
    if (!rc) rc = kn_qwen_vision_forward(ctx, j->m, j->arena, &rows, gh, gw, &out, NULL, NULL);
    j->tokens = gh * gw / 4;
    kn_arena_reset(j->arena, mark);
    return rc;
}

static int bench_vision(const char *path, int64_t w, int64_t h, double peak, kn_err *err) {
    kn_st_file *f = NULL;
    kn_qwen_vision m = {0};
    kn_ctx ctx;
    vision_job j = {&m, {0}, NULL, 0};
    uint64_t seed = 3;
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, precision);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_qwen_vision_load(&m, f, "visual.", &kn_qwen25vl_vision, err);
    if (!rc) rc = kn_arena_create(&j.arena, KN_DEV_CPU, err);
    if (!rc) rc = kn_tensor_new(&j.image, KN_F32, KN_DEV_CPU, 4, (int64_t[]){1, h, w, 3}, err);
    if (!rc) {
        fill(&j.image, 0.5f, &seed);
        for (int64_t i = 0; i < kn_tensor_numel(&j.image); i++) ((float *)j.image.data)[i] += 0.5f;
        printf("%s: Qwen2.5-VL vision tower, width %lld, %lld blocks\n", path, (long long)m.hidden, (long long)m.depth);
        double med, best, flops;
        if (timed(run_vision, &j, &ctx, &med, &best, &flops)) {
            *err = ctx.err;
            rc = err->code;
        } else {
            char what[128];
            snprintf(what, sizeof what, "vision tower %lldx%lld (%lld patches, %lld tokens)", (long long)w, (long long)h,
                     (long long)j.tokens * 4, (long long)j.tokens);
            report(what, med, best, flops, peak);
        }
    }
    kn_tensor_free(&j.image);
    kn_arena_destroy(j.arena);
    kn_qwen_vision_free(&m);
    kn_st_close(f);
    kn_ctx_free(&ctx);
    return rc;
}

static int usage(void) {
    fprintf(stderr, "usage: model_bench dit FILE [SIZE [TEXT_TOKENS]]\n"
                    "       model_bench text TYPE FILE [FILE2]\n"
                    "       model_bench vae FILE [SIZE]\n"
                    "       model_bench vision FILE [W H]\n"
                    "       model_bench linear M N K\n"
                    "       model_bench peak\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "peak") == 0) return machine_peak() > 0 ? 0 : 1;
    if (argc < 3) return usage();
    const char *r = getenv("KN_BENCH_REPS");
    if (r && atoi(r) > 0 && atoi(r) <= 32) reps = atoi(r);
    const char *pr = getenv("KN_BENCH_PRECISION");
    if (pr && strcmp(pr, "bf16") == 0) precision = KN_PREC_BF16;
    else if (pr && strcmp(pr, "fp32") != 0) return usage();
    printf("precision: %s\n", precision == KN_PREC_BF16 ? "bf16" : "fp32");
    kn_err err;
    kn_err_clear(&err);
    int rc;
    if (strcmp(argv[1], "dit") == 0) {
        kn_comm *world = NULL;
        kn_sp *sp = NULL;
        kn_sp_mode mode = KN_SP_AUTO;
        const char *m = getenv("KN_BENCH_SP");
        if (m && kn_sp_mode_parse(m, &mode)) return usage();
        rc = kn_comm_world(&world, &err);
        if (!rc && kn_comm_size(world) > 1) rc = kn_sp_new(&sp, world, mode, 0, &err);
        if (!rc && kn_comm_rank(world) > 0 && !freopen("/dev/null", "w", stdout)) rc = KN_ERR_IO;
        if (!rc)
            rc = bench_dit(argv[2], argc > 3 ? atoi(argv[3]) : 1024, argc > 4 ? atoll(argv[4]) : 256, sp,
                           machine_peak(), &err);
        kn_sp_free(sp);
        kn_comm_free(world);
    } else if (strcmp(argv[1], "text") == 0 && argc >= 4) {
        const char *tok = getenv("KILN_TOKENIZERS") ? getenv("KILN_TOKENIZERS") : KN_TOKENIZER_DIR;
        rc = bench_text(argv[2], (const char *const *)argv + 3, argc > 4 ? 2 : 1, tok, machine_peak(), &err);
    } else if (strcmp(argv[1], "linear") == 0 && argc == 5 && atoll(argv[2]) > 0 && atoll(argv[3]) > 0 &&
               atoll(argv[4]) > 0) {
        rc = bench_linear(atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), machine_peak(), &err);
    } else if (strcmp(argv[1], "vae") == 0) {
        rc = bench_vae(argv[2], argc > 3 ? atoi(argv[3]) : 1024, machine_peak(), &err);
    } else if (strcmp(argv[1], "vision") == 0) {
        rc = bench_vision(argv[2], argc > 4 ? atoll(argv[3]) : 1182, argc > 4 ? atoll(argv[4]) : 887, machine_peak(),
                          &err);
    } else {
        return usage();
    }
    if (rc) fprintf(stderr, "model_bench: %s\n", err.msg);
    return rc ? 1 : 0;
}
