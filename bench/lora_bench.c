/* lora_bench: LoRA hot-swap time against the base model's load time.
 *
 *   lora_bench [BASE.safetensors]
 *
 * BASE defaults to $KN_BENCH_DIR/qi_dit_2.safetensors (KN_BENCH_DIR default
 * /tmp/kiln-bench): the full-width Qwen-Image DiT with 2 blocks, bf16,
 * written by shared/bench/make_model.py when absent ($KN_SHARED, default the
 * shared folder beside the checkout; $KN_BENCH_PYTHON). Measured, in one run:
 *  - load: kn_st_open (open + mmap + header), kn_dit_load (detect the family, bind every
 *    weight), and one checksum pass reading every byte of every tensor (what
 *    a first render pays to fault the weights in). The page cache is warm
 *    (the file was just written or read); a cold disk read only adds to it.
 *    Median of KN_BENCH_REPS (default 3).
 *  - swap: from the current stack to a new one through the code a sampler
 *    runs (LoraLoader's kn_lora_load, then kn_model_dit's
 *    kn_lora_model_apply): open + mmap + key mapping + validation + widening
 *    the factors to f32, then
 *      runtime path (the default for plain LoRAs): pointing each linear's
 *        adapter list at the factors; the base is not touched;
 *      merge path (kn_lora_model_set_runtime(m, 0), what DoRA/LoHa/LoKr/OFT
 *        take): every patched tensor recomputed from the mmap'd base in f32
 *        and rounded to bf16.
 *    LoRAs of rank 16 and 64 on every attention and MLP linear (12 per
 *    block, peft names "transformer_blocks.N.attn.to_q.lora_A.weight"),
 *    random bf16 factors written next to BASE on first use.
 *  - per step: what the runtime path adds to one linear (img_mlp fc1,
 *    3072 -> 12288, on STEP_TOKENS tokens): kn_linear against
 *    kn_linear_lora with the rank-16 / rank-64 adapters attached, median of
 *    KN_BENCH_REPS. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench/timer.h"
#include "kernels/dtype.h"
#include "kernels/safetensors.h"
#include "kernels/ops.h"
#include "loras/lora.h"
#include "pipelines/qwen_image/dit.h"

static const char *const linears[] = {
    "attn.to_q",         "attn.to_k",         "attn.to_v",         "attn.to_out.0",
    "attn.add_q_proj",   "attn.add_k_proj",   "attn.add_v_proj",   "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2",    "txt_mlp.net.0.proj", "txt_mlp.net.2",
};
#define N_LINEARS ((int)(sizeof linears / sizeof linears[0]))

static int reps = 3;

/* Image tokens of the per-step measurement (a 512x512 image is 1024). */
#define STEP_TOKENS 256

static int exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0;
}

/* Sum of every tensor's bytes as 64-bit words: faults in the whole mapping. */
static uint64_t checksum(const kn_st_file *f) {
    uint64_t sum = 0;
    for (int i = 0; i < kn_st_count(f); i++) {
        const kn_tensor *t = kn_st_at(f, i);
        size_t n = kn_tensor_nbytes(t);
        const unsigned char *p = t->data;
        size_t k = 0;
        for (; k + 8 <= n; k += 8) {
            uint64_t w;
            memcpy(&w, p + k, 8);
            sum += w;
        }
        for (; k < n; k++) sum += p[k];
    }
    return sum;
}

typedef struct base {
    kn_st_file *f;
    kn_dit *model;    /* through the family interface, as the nodes load it */
    kn_qwen_dit *dit; /* the same model, for its config and block weights */
} base;

static int load_base(const char *path, base *b, uint64_t *sum, kn_err *err) {
    if (kn_st_open(&b->f, path, err)) return err->code;
    if (kn_dit_load(&b->model, b->f, err) || b->model->family != &kn_qwen_image_dit) {
        if (b->model) kn_fail(err, KN_ERR_UNSUPPORTED, "%s: not a Qwen-Image DiT", path);
        kn_dit_free(b->model);
        kn_st_close(b->f);
        return err->code;
    }
    b->dit = (kn_qwen_dit *)b->model;
    *sum = checksum(b->f);
    return KN_OK;
}

static void free_base(base *b) {
    kn_dit_free(b->model);
    kn_st_close(b->f);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float rnd(float a) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return a * ((float)((rng * 0x2545f4914f6cdd1dull) >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
}

/* A rank-r LoRA on every attention and MLP linear of the base, bf16 factors. */
static int write_lora(const char *path, kn_qwen_dit *dit, int64_t r, kn_err *err) {
    int n = (int)dit->cfg.layers * N_LINEARS * 2, k = 0, rc = KN_OK;
    kn_tensor *t = calloc((size_t)n, sizeof *t);
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    if (!t || !names) rc = kn_fail(err, KN_ERR_NOMEM, "out of memory");
    for (int64_t l = 0; !rc && l < dit->cfg.layers; l++)
        for (int j = 0; !rc && j < N_LINEARS; j++) {
            char key[128];
            snprintf(key, sizeof key, "transformer_blocks.%lld.%s.weight", (long long)l, linears[j]);
            const kn_tensor *w = kn_weight_table_find(&dit->weights, key)->t;
            int64_t shapes[2][2] = {{r, w->ne[1]}, {w->ne[0], r}}; /* lora_A [r, in], lora_B [out, r] */
            for (int h = 0; !rc && h < 2; h++, k++) {
                snprintf(names[k], sizeof names[k], "transformer_blocks.%lld.%s.lora_%c.weight", (long long)l,
                         linears[j], h ? 'B' : 'A');
                if ((rc = kn_tensor_new(&t[k], KN_BF16, KN_DEV_CPU, 2, shapes[h], err))) break;
                t[k].name = names[k];
                uint16_t *d = t[k].data;
                for (int64_t i = 0; i < kn_tensor_numel(&t[k]); i++) d[i] = kn_f32_to_bf16(rnd(0.02f));
            }
        }
    if (!rc) rc = kn_st_write(path, t, n, err);
    for (int i = 0; i < k; i++) kn_tensor_free(&t[i]);
    free(t);
    free(names);
    return rc;
}

/* Swap the model to {lora at strength} (path NULL: no LoRA; reuse: the held
 * LoRA at a new strength, as a node re-run with its file cached); seconds, or -1. */
static double swap(kn_lora_model *m, const char *path, int reuse, double strength, kn_lora **held,
                   kn_lora_apply_stats *st, kn_err *err) {
    double t0 = bench_now();
    kn_lora *l = reuse ? *held : NULL;
    if (path && !reuse && kn_lora_load(&l, path, m, err)) return -1.0;
    kn_lora_use u = {l, strength};
    if (kn_lora_model_apply(m, &u, l ? 1 : 0, st, err)) {
        if (!reuse) kn_lora_free(l);
        return -1.0;
    }
    double dt = bench_now() - t0;
    if (!reuse) {
        kn_lora_free(*held); /* the previous LoRA is no longer applied */
        *held = l;
    }
    return dt;
}

/* The swap sequence below on m in its current mode; swap_r: none -> r16 and none -> r64. */
static int swap_sequence(kn_lora_model *m, char lpath[2][4300], double t_load, double swap_r[2], kn_err *err) {
    static const struct {
        const char *what;
        int lora; /* index into lpath, -1: none */
        double strength;
    } steps[] = {
        {"swap none -> r16 @1.0", 0, 1.0}, {"swap r16 -> r64 @1.0", 1, 1.0}, {"strength r64 1.0 -> 0.7", 1, 0.7},
        {"swap r64 -> none   ", -1, 0.0},  {"swap none -> r64 @1.0", 1, 1.0}, {"swap r64 -> r16 @1.0", 0, 1.0},
        {"swap r16 -> none   ", -1, 0.0},
    };
    kn_lora *held = NULL;
    kn_lora_apply_stats st;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        int reuse = i > 0 && steps[i].lora >= 0 && steps[i].lora == steps[i - 1].lora;
        double dt = swap(m, steps[i].lora >= 0 ? lpath[steps[i].lora] : NULL, reuse, steps[i].strength, &held, &st, err);
        if (dt < 0) {
            kn_lora_free(held);
            return err->code;
        }
        if (i == 0 || i == 4) swap_r[i == 4] = dt;
        printf("  %-24s (%3d recomputed, %3d restored, %3d attached, %3d detached): %9.2f ms = %.4f x load\n",
               steps[i].what, st.recomputed, st.restored, st.attached, st.detached, 1e3 * dt, dt / t_load);
    }
    kn_lora_free(held); /* the last step removed it */
    return KN_OK;
}

/* Median seconds of the fc1 linear of block 0 with its adapter list (attached: n > 0) or without. */
static int time_linear(kn_ctx *ctx, const kn_qwen_dit *dit, const kn_adapter_list *run, const kn_tensor *x,
                       kn_tensor *y, double *out) {
    const kn_mmdit_block *w = &dit->block[0];
    double t[16];
    for (int i = 0; i < reps; i++) {
        double t0 = bench_now();
        if (kn_linear_lora(ctx, y, x, &w->img.mlp.up.w, &w->img.mlp.up.b, run->ad, run->n)) return ctx->err.code;
        t[i] = bench_now() - t0;
    }
    *out = bench_median(t, reps);
    return KN_OK;
}

/* The per-step cost of the adapters on one large linear (runtime mode). */
static int step_overhead(kn_lora_model *m, kn_qwen_dit *dit, char lpath[2][4300], const int *ranks, kn_err *err) {
    const char *key = "transformer_blocks.0.img_mlp.net.0.proj.weight";
    kn_adapter_list *run = &kn_weight_table_find(&dit->weights, key)->run;
    kn_ctx ctx;
    kn_tensor x = {0}, y = {0};
    int64_t K = dit->block[0].img.mlp.up.w.ne[1], N = dit->block[0].img.mlp.up.w.ne[0];
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32);
    if (!rc) rc = kn_tensor_new(&x, KN_F32, KN_DEV_CPU, 2, (int64_t[]){STEP_TOKENS, K}, err);
    if (!rc) rc = kn_tensor_new(&y, KN_F32, KN_DEV_CPU, 2, (int64_t[]){STEP_TOKENS, N}, err);
    for (int64_t i = 0; !rc && i < STEP_TOKENS * K; i++) ((float *)x.data)[i] = rnd(1.0f);
    double base = 0.0;
    if (!rc && (rc = time_linear(&ctx, dit, run, &x, &y, &base))) *err = ctx.err;
    if (!rc)
        printf("per step, %s on %d tokens: plain %.1f ms\n", key, STEP_TOKENS, 1e3 * base);
    for (int i = 0; !rc && i < 2; i++) {
        kn_lora *l = NULL;
        kn_lora_use u;
        double dt = 0.0;
        if ((rc = kn_lora_load(&l, lpath[i], m, err))) break;
        u = (kn_lora_use){l, 1.0};
        rc = kn_lora_model_apply(m, &u, 1, NULL, err);
        if (!rc && (rc = time_linear(&ctx, dit, run, &x, &y, &dt))) *err = ctx.err;
        if (!rc) printf("  with the rank-%d adapter: %.1f ms (+%.1f %%)\n", ranks[i], 1e3 * dt, 100.0 * (dt / base - 1.0));
        int rc2 = kn_lora_model_apply(m, NULL, 0, NULL, err); /* detach before freeing the LoRA */
        kn_lora_free(l);
        if (!rc) rc = rc2;
    }
    kn_tensor_free(&x), kn_tensor_free(&y);
    kn_ctx_free(&ctx);
    return rc;
}

int main(int argc, char **argv) {
    kn_err err;
    kn_err_clear(&err);
    if (getenv("KN_BENCH_REPS")) reps = atoi(getenv("KN_BENCH_REPS")) > 0 ? atoi(getenv("KN_BENCH_REPS")) : 1;
    const char *dir = getenv("KN_BENCH_DIR") ? getenv("KN_BENCH_DIR") : "/tmp/kiln-bench";
    /* the shared folder beside the checkout, as bench/run.sh finds it */
    const char *shared = getenv("KN_SHARED") ? getenv("KN_SHARED") : KN_SOURCE_DIR "/../shared";
    const char *python = getenv("KN_BENCH_PYTHON") ? getenv("KN_BENCH_PYTHON") : "/usr/bin/python3";
    char path[4096], cmd[16384];
    if (argc > 1) snprintf(path, sizeof path, "%s", argv[1]);
    else snprintf(path, sizeof path, "%s/qi_dit_2.safetensors", dir);
    if (!exists(path)) {
        snprintf(cmd, sizeof cmd,
                 "mkdir -p '%s' && '%s' '%s/bench/make_model.py' '%s/bench/manifests/qwen_image_dit.json' '%s' "
                 "--blocks 2 --dtype bf16 --seed 1",
                 dir, python, shared, shared, path);
        fprintf(stderr, "lora_bench: writing %s\n", path);
        if (system(cmd) != 0 || !exists(path)) {
            fprintf(stderr, "lora_bench: could not write %s\n", path);
            return 1;
        }
    }

    double load[16];
    uint64_t sum = 0;
    base b;
    if (reps > 16) reps = 16;
    for (int i = 0; i < reps; i++) {
        double t0 = bench_now();
        if (load_base(path, &b, &sum, &err)) {
            fprintf(stderr, "lora_bench: %s\n", err.msg);
            return 1;
        }
        load[i] = bench_now() - t0;
        if (i + 1 < reps) free_base(&b);
    }
    double t_load = bench_median(load, reps);
    size_t bytes = 0;
    for (int i = 0; i < kn_st_count(b.f); i++) bytes += kn_tensor_nbytes(kn_st_at(b.f, i));
    printf("base: %s, %lld blocks, dim %lld, %.2f GB (checksum %016llx)\n", path, (long long)b.dit->cfg.layers,
           (long long)b.dit->cfg.dim, (double)bytes / 1e9, (unsigned long long)sum);
    printf("load (open + mmap + bind + read every byte once, warm page cache, median of %d): %8.1f ms\n", reps,
           1e3 * t_load);

    kn_lora_model *m = NULL;
    double t0 = bench_now();
    const kn_dit_family *fam = b.model->family;
    if (kn_lora_model_from_table(&m, fam->lora_keys, fam->n_lora_keys, b.model->weights, &err)) {
        fprintf(stderr, "lora_bench: %s\n", err.msg);
        return 1;
    }
    printf("weight table (once per base model):                                   %8.1f ms\n",
           1e3 * (bench_now() - t0));

    static const int ranks[] = {16, 64};
    char lpath[2][4300];
    for (int i = 0; i < 2; i++) {
        snprintf(lpath[i], sizeof lpath[i], "%s/lora_qi_r%d_b%lld.safetensors", dir, ranks[i],
                 (long long)b.dit->cfg.layers);
        if (!exists(lpath[i]) && write_lora(lpath[i], b.dit, ranks[i], &err)) {
            fprintf(stderr, "lora_bench: %s\n", err.msg);
            return 1;
        }
    }

    double runtime_r[2], merge_r[2];
    printf("runtime low-rank path:\n");
    if (swap_sequence(m, lpath, t_load, runtime_r, &err)) goto fail;
    if (step_overhead(m, b.dit, lpath, ranks, &err)) goto fail;
    kn_lora_model_set_runtime(m, 0);
    printf("merge path:\n");
    if (swap_sequence(m, lpath, t_load, merge_r, &err)) goto fail;
    for (int i = 0; i < 2; i++)
        printf("rank %2d swap / load: runtime %.4f, merge %.3f (target <= 0.05)\n", ranks[i], runtime_r[i] / t_load,
               merge_r[i] / t_load);
    kn_lora_model_free(m);
    free_base(&b);
    return 0;
fail:
    fprintf(stderr, "lora_bench: %s\n", err.msg);
    kn_lora_model_free(m);
    free_base(&b);
    return 1;
}
