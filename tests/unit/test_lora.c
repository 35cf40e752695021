/* Tests for LoRA hot-swap (loras/lora.h) on the tiny Qwen-Image DiT.
 * The merge path, on the model stored bf16 so patched weights are really
 * rounded:
 *  - the base file is opened once, then unlinked: applying A, B, none, A
 *    again and 200 strength changes must never need it again (a re-read
 *    would fail), and after removal every weight is the file's view with its
 *    original bytes (bit-identical by construction);
 *  - unchanged tensors are not recomputed (stats), a swap order does not
 *    change the result (A directly == A after B and none);
 *  - kn_linear_lora against the naive sum with bf16 factors, and its shape errors;
 *  - the runtime low-rank path, on the f32 model so the merge is an exact
 *    reference: swapping A -> B -> none never changes a base weight's
 *    address or bytes, attaches/detaches only adapter lists, gives the merge
 *    path's DiT outputs (1e-5 rel L2, also for stacks mixing DoRA with plain
 *    LoRAs in both orders) and its materialised weights bit for bit, and
 *    the output after removal is the base output bit for bit;
 *  - Flux (tiny f32 DiT, lora_flux's files): diffusers LoRAs whose stems
 *    are row slices of the fused qkv / linear1 and the swapped-halves
 *    norm_out.linear run as runtime adapters with output-row offsets (no
 *    base weight written), give the merge path's outputs and weights, and
 *    removal restores the base bit for bit; a BFL control LoRA that widens
 *    img_in is merged and its removal gives back the file's view and shape;
 *  - kn_linear_lora with an adapter on a row slice of the output;
 *  - bad LoRA files fail with messages naming the file and the key (for a
 *    slice: the rows it patches); unmapped keys are listed, not fatal;
 *  - a ByteDance USO LoRA is renamed as ComfyUI converts it.
 * Bad files are written into $KN_TEST_TMP. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "loras/lora.h"
#include "pipelines/flux/dit.h"
#include "pipelines/qwen_image/dit.h"

#ifndef KN_SOURCE_DIR
#define KN_SOURCE_DIR "."
#endif
#define FIX KN_SOURCE_DIR "/tests/fixtures/"

typedef struct snapshot {
    int n;
    const char **key;
    void **bytes;   /* copies of the original bytes */
    const void **at; /* the file views' addresses */
} snapshot;

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[1 << 16];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b)) ok = 0;
    return ok ? 0 : -1;
}

static void take(snapshot *s, const kn_lora_model *m, const kn_st_file *f) {
    int n = kn_st_count(f);
    s->key = calloc((size_t)n, sizeof *s->key);
    s->bytes = calloc((size_t)n, sizeof *s->bytes);
    s->at = calloc((size_t)n, sizeof *s->at);
    s->n = 0;
    for (int i = 0; i < n; i++) {
        const kn_tensor *t = kn_lora_model_slot(m, kn_st_at(f, i)->name);
        if (!t) continue;
        s->key[s->n] = kn_st_at(f, i)->name;
        s->at[s->n] = t->data;
        s->bytes[s->n] = malloc(kn_tensor_nbytes(t));
        memcpy(s->bytes[s->n], t->data, kn_tensor_nbytes(t));
        s->n++;
    }
}

/* Tensors that are not the original view with the original bytes. */
static int drifted(const snapshot *s, const kn_lora_model *m) {
    int bad = 0;
    for (int i = 0; i < s->n; i++) {
        const kn_tensor *t = kn_lora_model_slot(m, s->key[i]);
        bad += t->data != s->at[i] || memcmp(t->data, s->bytes[i], kn_tensor_nbytes(t)) != 0;
    }
    return bad;
}

static void drop(snapshot *s) {
    for (int i = 0; i < s->n; i++) free(s->bytes[i]);
    free(s->bytes), free(s->at), free(s->key);
}

/* One tensor's current bytes, copied (free()). */
/* The tiny DiT of `path` (the fixtures' RoPE split: head_dim 16) through its
 * family, and the LoRA table over its weights. */
static int open_base(const char *path, kn_st_file **f, kn_dit **dit, kn_lora_model **m) {
    kn_err err;
    const kn_dit_family *fam;
    const char *prefix;
    const kn_dit_consts o = {{4, 6, 6}, 0.0, 0};
    *dit = NULL;
    *m = NULL;
    CHECK(kn_st_open(f, path, &err) == KN_OK, "%s", err.msg);
    if (!*f) return 1;
    CHECK(kn_dit_detect(*f, &fam, &prefix, &err) == KN_OK && fam->load(dit, *f, prefix, &o, &err) == KN_OK, "%s",
          err.msg);
    if (!*dit) return 1;
    CHECK(kn_lora_model_from_table(m, fam->lora_keys, fam->n_lora_keys, (*dit)->weights, &err) == KN_OK, "%s",
          err.msg);
    return *m == NULL;
}

static void close_base(kn_st_file *f, kn_dit *dit, kn_lora_model *m) {
    kn_lora_model_free(m); /* restores the views before the model goes */
    kn_dit_free(dit);
    kn_st_close(f);
}

static void *bytes_of(const kn_lora_model *m, const char *key, size_t *n) {
    const kn_tensor *t = kn_lora_model_slot(m, key);
    *n = kn_tensor_nbytes(t);
    void *p = malloc(*n);
    memcpy(p, t->data, *n);
    return p;
}

static void hot_swap(const char *tmp) {
    kn_err err;
    char base[4096];
    snprintf(base, sizeof base, "%s/lora_base.bf16.safetensors", tmp);
    CHECK(copy_file(FIX "qwen_image_dit/model.bf16.safetensors", base) == 0, "copy to %s", base);
    kn_st_file *f = NULL;
    kn_dit *dit;
    kn_lora_model *m;
    if (open_base(base, &f, &dit, &m)) {
        close_base(f, dit, m);
        return;
    }
    kn_lora_model_set_runtime(m, 0); /* the merge path; runtime_swap covers the other */
    CHECK(kn_lora_model_slot(m, "transformer_blocks.0.attn.to_q.weight")->dtype == KN_BF16, "base not bf16");
    snapshot s;
    take(&s, m, f);
    CHECK(s.n > 50, "only %d patchable tensors", s.n);
    /* from here on the base exists only as the mapping: reading it from disk again would fail */
    CHECK(unlink(base) == 0, "unlink %s", base);

    kn_lora *a = NULL, *b = NULL;
    CHECK(kn_lora_load(&a, FIX "lora_qwen_image/lora_kohya.safetensors", m, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_lora_load(&b, FIX "lora_qwen_image/lora_peft_bare.safetensors", m, &err) == KN_OK, "%s", err.msg);
    if (!a || !b) return;
    CHECK(kn_lora_patch_count(a) == 10 && kn_lora_patch_count(b) == 8, "%d, %d patches", kn_lora_patch_count(a),
          kn_lora_patch_count(b));
    const char *key = "transformer_blocks.0.attn.add_k_proj.weight"; /* patched by A only */
    kn_lora_apply_stats st;
    kn_lora_use ua = {a, 0.8}, ub = {b, 1.3}, both[2] = {{a, 0.8}, {b, 1.3}};

    CHECK(kn_lora_model_apply(m, &ua, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.recomputed == 10 && st.kept == 0, "A: %d recomputed, %d kept", st.recomputed, st.kept);
    CHECK(drifted(&s, m) == 10, "A moved %d tensors", drifted(&s, m));
    size_t na;
    void *with_a = bytes_of(m, key, &na);
    CHECK(kn_lora_model_apply(m, &ua, 1, &st, &err) == KN_OK && st.recomputed == 0 && st.kept == 10,
          "same stack again: %d recomputed", st.recomputed);
    CHECK(kn_lora_model_apply(m, both, 2, &st, &err) == KN_OK && st.recomputed == 8 && st.kept == 10 - 4,
          "A+B: %d recomputed, %d kept", st.recomputed, st.kept); /* B's 8 tensors; 4 of A's are B's too */
    CHECK(kn_lora_model_apply(m, &ub, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.recomputed == 4 && st.restored == 6, "B: %d recomputed, %d restored", st.recomputed, st.restored);
    CHECK(kn_lora_model_apply(m, NULL, 0, &st, &err) == KN_OK && st.restored == 8, "none: %d restored", st.restored);
    CHECK(drifted(&s, m) == 0, "%d tensors differ from the file after removal", drifted(&s, m));
    CHECK(kn_lora_model_apply(m, &ua, 1, &st, &err) == KN_OK, "%s", err.msg);
    size_t na2;
    void *again = bytes_of(m, key, &na2);
    CHECK(na == na2 && memcmp(with_a, again, na) == 0, "A after B and none differs from A");
    free(with_a), free(again);

    srand(7);
    for (int i = 0; i < 200; i++) {
        kn_lora_use u[2] = {{a, 0.5 + rand() / (double)RAND_MAX}, {b, -1.0 + 2.0 * rand() / (double)RAND_MAX}};
        CHECK(kn_lora_model_apply(m, u, 1 + (i % 2), NULL, &err) == KN_OK, "%s", err.msg);
    }
    CHECK(kn_lora_model_apply(m, NULL, 0, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(drifted(&s, m) == 0, "%d tensors drifted after 200 swaps", drifted(&s, m));

    kn_lora_free(a), kn_lora_free(b);
    drop(&s);
    close_base(f, dit, m);
}

static double rel_l2(const kn_tensor *a, const kn_tensor *b) {
    const float *x = a->data, *y = b->data;
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < kn_tensor_numel(a); i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return sqrt(num / (den > 0.0 ? den : 1.0));
}

/* n pseudo-random values in [-1, 1). */
static void fill(float *v, int64_t n, uint32_t *seed) {
    for (int64_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        v[i] = (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
}

/* The tiny DiT's output for fixed pseudo-random inputs into out (allocated
 * on first use): Qwen-Image's 5-D latent and context, Flux's 4-D latent,
 * context, pooled vector and guidance. */
static void dit_out(kn_ctx *ctx, const kn_dit *dit, kn_tensor *out) {
    kn_err err;
    int flux = dit->family->latent_ndim == 4;
    const kn_flux_dit *fd = (const kn_flux_dit *)dit;
    int64_t C = dit->channels, Lt = 6, ctx_dim = flux ? fd->cfg.context_dim : ((const kn_qwen_dit *)dit)->cfg.joint_dim;
    int64_t xne[5] = {1, C, 1, 4, 4}, fne[4] = {1, C, 8, 8};
    int xnd = flux ? 4 : 5;
    kn_tensor x, sigma, context, pooled = {0}, guidance = {0};
    CHECK(kn_tensor_new(&x, KN_F32, KN_DEV_CPU, xnd, flux ? fne : xne, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_tensor_new(&sigma, KN_F32, KN_DEV_CPU, 1, (int64_t[]){1}, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_tensor_new(&context, KN_F32, KN_DEV_CPU, 3, (int64_t[]){1, Lt, ctx_dim}, &err) == KN_OK, "%s", err.msg);
    uint32_t seed = 12345;
    fill(x.data, kn_tensor_numel(&x), &seed);
    fill(context.data, kn_tensor_numel(&context), &seed);
    ((float *)sigma.data)[0] = 0.6f;
    if (flux) {
        CHECK(kn_tensor_new(&pooled, KN_F32, KN_DEV_CPU, 2, (int64_t[]){1, fd->cfg.vec_dim}, &err) == KN_OK, "%s",
              err.msg);
        CHECK(kn_tensor_new(&guidance, KN_F32, KN_DEV_CPU, 1, (int64_t[]){1}, &err) == KN_OK, "%s", err.msg);
        fill(pooled.data, kn_tensor_numel(&pooled), &seed);
        ((float *)guidance.data)[0] = 3.5f;
    }
    if (!out->data) CHECK(kn_tensor_new(out, KN_F32, KN_DEV_CPU, xnd, x.ne, &err) == KN_OK, "%s", err.msg);
    kn_dit_input in = {&x,  &sigma, &context, NULL, flux ? &pooled : NULL, flux ? &guidance : NULL,
                       NULL, 0,      dit->ref_method, NULL};
    CHECK(kn_dit_forward(ctx, dit, &in, out, NULL, NULL) == KN_OK, "forward: %s", ctx->err.msg);
    kn_tensor_free(&x), kn_tensor_free(&sigma), kn_tensor_free(&context);
    kn_tensor_free(&pooled), kn_tensor_free(&guidance);
}

/* The stack's output through the runtime path must be the merge path's. */
static void same_as_merge(kn_ctx *ctx, kn_lora_model *m, const kn_dit *dit, const kn_lora_use *stack, int n,
                          const char *what) {
    kn_err err;
    kn_tensor rt = {0}, mg = {0};
    kn_lora_model_set_runtime(m, 1);
    CHECK(kn_lora_model_apply(m, stack, n, NULL, &err) == KN_OK, "%s", err.msg);
    dit_out(ctx, dit, &rt);
    kn_lora_model_set_runtime(m, 0);
    CHECK(kn_lora_model_apply(m, stack, n, NULL, &err) == KN_OK, "%s", err.msg);
    dit_out(ctx, dit, &mg);
    double d = rel_l2(&rt, &mg);
    CHECK(d < 1e-5, "%s: runtime vs merge output rel L2 %.3g", what, d);
    kn_lora_model_set_runtime(m, 1);
    kn_tensor_free(&rt), kn_tensor_free(&mg);
}

/* The op on odd sizes: y = x W^T + b + sum_i s_i (x D_i^T) U_i^T, factors bf16
 * (widened per call); the third adapter adds to output rows [5, 9) only
 * (a slice of a fused weight: its up holds 4 rows). */
static void linear_lora_op(void) {
    enum { M = 5, K = 7, N = 9, R1 = 2, R2 = 3 };
    static float x[M * K], w[N * K], b[N], d1[R1 * K], u1[N * R1], d2[R2 * K], u2[N * R2], y[M * N];
    static uint16_t d1h[R1 * K], u1h[N * R1], d2h[R2 * K], u2h[N * R2];
    float *all[] = {x, w, b, d1, u1, d2, u2};
    int sizes[] = {M * K, N * K, N, R1 * K, N * R1, R2 * K, N * R2};
    uint32_t seed = 99;
    for (int a = 0; a < 7; a++)
        for (int i = 0; i < sizes[a]; i++) {
            seed = seed * 1664525u + 1013904223u;
            all[a][i] = (float)(seed >> 8) / (float)(1u << 24) - 0.5f;
        }
    uint16_t *h[] = {d1h, u1h, d2h, u2h};
    float *f[] = {d1, u1, d2, u2};
    for (int a = 0; a < 4; a++)
        for (int i = 0; i < sizes[3 + a]; i++) {
            h[a][i] = kn_f32_to_bf16(f[a][i]);
            f[a][i] = kn_bf16_to_f32(h[a][i]); /* the reference uses what the op reads */
        }
    kn_tensor tx = kn_tensor_make(KN_F32, KN_DEV_CPU, x, 2, (int64_t[]){M, K});
    kn_tensor tw = kn_tensor_make(KN_F32, KN_DEV_CPU, w, 2, (int64_t[]){N, K});
    kn_tensor tb = kn_tensor_make(KN_F32, KN_DEV_CPU, b, 1, (int64_t[]){N});
    kn_tensor ty = kn_tensor_make(KN_F32, KN_DEV_CPU, y, 2, (int64_t[]){M, N});
    kn_tensor td1 = kn_tensor_make(KN_BF16, KN_DEV_CPU, d1h, 2, (int64_t[]){R1, K});
    kn_tensor tu1 = kn_tensor_make(KN_BF16, KN_DEV_CPU, u1h, 2, (int64_t[]){N, R1});
    kn_tensor td2 = kn_tensor_make(KN_BF16, KN_DEV_CPU, d2h, 2, (int64_t[]){R2, K});
    kn_tensor tu2 = kn_tensor_make(KN_BF16, KN_DEV_CPU, u2h, 2, (int64_t[]){N, R2});
    kn_tensor tu2s = kn_tensor_make(KN_BF16, KN_DEV_CPU, u2h, 2, (int64_t[]){4, R2});
    kn_lora_adapter ad[3] = {{&td1, &tu1, 0.75f, 0}, {&td2, &tu2, -1.5f, 0}, {&td2, &tu2s, 0.5f, 5}};
    kn_ctx ctx;
    CHECK(kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32) == KN_OK, "ctx");
    CHECK(kn_linear_lora(&ctx, &ty, &tx, &tw, &tb, ad, 3) == KN_OK, "%s", ctx.err.msg);
    double worst = 0.0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = b[n];
            for (int k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
            const float *ds[3] = {d1, d2, d2}, *us[3] = {u1, u2, u2};
            int rs[3] = {R1, R2, R2};
            for (int a = 0; a < 3; a++) {
                int64_t row = n - ad[a].row0; /* the adapter's up row for output n */
                if (row < 0 || row >= ad[a].up->ne[0]) continue;
                for (int r = 0; r < rs[a]; r++) {
                    double t = 0.0;
                    for (int k = 0; k < K; k++) t += (double)x[m * K + k] * ds[a][r * K + k];
                    acc += ad[a].scale * t * us[a][row * rs[a] + r];
                }
            }
            worst = fmax(worst, fabs(acc - y[m * N + n]));
        }
    CHECK(worst < 1e-5, "linear_lora differs from the naive sum by %g", worst);
    /* a slice that runs past the output */
    kn_lora_adapter past = {&td2, &tu2s, 1.0f, 6};
    CHECK(kn_linear_lora(&ctx, &ty, &tx, &tw, &tb, &past, 1) == KN_ERR_SHAPE && strstr(ctx.err.msg, "row 6"),
          "slice past the output: %s", ctx.err.msg);
    /* an up factor of the wrong rank names the op and the weight */
    kn_lora_adapter bad = {&td1, &tu2, 1.0f, 0};
    tw.name = "w_test";
    CHECK(kn_linear_lora(&ctx, &ty, &tx, &tw, &tb, &bad, 1) == KN_ERR_SHAPE && strstr(ctx.err.msg, "w_test"),
          "bad rank: %s", ctx.err.msg);
    kn_ctx_free(&ctx);
}

static void runtime_swap(void) {
    kn_err err;
    kn_st_file *f = NULL;
    kn_dit *dit;
    kn_lora_model *m;
    if (open_base(FIX "qwen_image_dit/model.safetensors", &f, &dit, &m)) {
        close_base(f, dit, m);
        return;
    }
    kn_ctx ctx;
    CHECK(kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32) == KN_OK, "ctx");
    snapshot s;
    take(&s, m, f);
    kn_lora *a = NULL, *b = NULL, *d = NULL;
    CHECK(kn_lora_load(&a, FIX "lora_qwen_image/lora_kohya.safetensors", m, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_lora_load(&b, FIX "lora_qwen_image/lora_peft_bare.safetensors", m, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_lora_load(&d, FIX "lora_qwen_image/lora_dora.safetensors", m, &err) == KN_OK, "%s", err.msg);
    if (!a || !b || !d) return;
    kn_tensor base = {0}, out = {0};
    dit_out(&ctx, dit, &base);
    kn_lora_apply_stats st;
    kn_lora_use ua = {a, 0.8}, ub = {b, 1.3};

    CHECK(kn_lora_model_apply(m, &ua, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.attached == 10 && st.recomputed == 0, "A: %d attached, %d recomputed", st.attached, st.recomputed);
    CHECK(drifted(&s, m) == 0, "A moved %d base tensors", drifted(&s, m));
    dit_out(&ctx, dit, &out);
    CHECK(rel_l2(&out, &base) > 1e-4, "A does not change the output (%.3g)", rel_l2(&out, &base));
    CHECK(kn_lora_model_apply(m, &ub, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.attached == 8 && st.detached == 6 && st.recomputed == 0, "B: %d attached, %d detached, %d recomputed",
          st.attached, st.detached, st.recomputed); /* 4 of A's 10 tensors are B's too */
    CHECK(drifted(&s, m) == 0, "B moved %d base tensors", drifted(&s, m));
    CHECK(kn_lora_model_apply(m, NULL, 0, &st, &err) == KN_OK && st.detached == 8, "none: %d detached", st.detached);
    CHECK(drifted(&s, m) == 0, "%d base tensors differ after removal", drifted(&s, m));
    dit_out(&ctx, dit, &out);
    CHECK(memcmp(out.data, base.data, kn_tensor_nbytes(&out)) == 0, "output after removal differs from the base");

    /* the materialised runtime weight is the merged one, bit for bit */
    const char *key = "transformer_blocks.0.attn.add_k_proj.weight";
    kn_tensor wr = {0}, wm = {0};
    CHECK(kn_lora_model_apply(m, &ua, 1, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_lora_model_weight(m, key, &wr, &err) == KN_OK, "%s", err.msg);
    kn_lora_model_set_runtime(m, 0);
    CHECK(kn_lora_model_apply(m, &ua, 1, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_lora_model_weight(m, key, &wm, &err) == KN_OK, "%s", err.msg);
    CHECK(wr.data && wm.data && memcmp(wr.data, wm.data, kn_tensor_nbytes(&wm)) == 0, "runtime weight != merged");
    kn_tensor_free(&wr), kn_tensor_free(&wm);
    kn_lora_model_set_runtime(m, 1);

    kn_lora_use both[2] = {{a, 0.8}, {b, 1.3}}, dora_first[2] = {{d, 0.7}, {a, 0.8}}, dora_last[2] = {{a, 0.8}, {d, 0.7}};
    same_as_merge(&ctx, m, dit, &ua, 1, "A");
    same_as_merge(&ctx, m, dit, &ub, 1, "B");
    same_as_merge(&ctx, m, dit, both, 2, "A+B");
    same_as_merge(&ctx, m, dit, dora_first, 2, "DoRA then A");
    same_as_merge(&ctx, m, dit, dora_last, 2, "A then DoRA");
    /* A before a DoRA on the same tensor merges there; elsewhere it stays an adapter */
    CHECK(kn_lora_model_apply(m, dora_last, 2, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.recomputed > 0 && st.attached > 0, "A then DoRA: %d recomputed, %d attached", st.recomputed, st.attached);
    CHECK(kn_lora_model_apply(m, NULL, 0, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(drifted(&s, m) == 0, "%d base tensors differ after the mixed stacks", drifted(&s, m));

    kn_tensor_free(&base), kn_tensor_free(&out);
    kn_lora_free(a), kn_lora_free(b), kn_lora_free(d);
    drop(&s);
    close_base(f, dit, m);
    kn_ctx_free(&ctx);
}

/* The runtime adapters beside `key`'s slot are n and start at the (distinct)
 * output rows want[0..n), in any order. */
static int adapter_rows(const kn_dit *dit, const char *key, const int64_t *want, int n) {
    const kn_weight_slot *sl = kn_weight_table_find(dit->weights, key);
    if (!sl || sl->run.n != n) return 0;
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (int k = 0; k < n; k++) found |= sl->run.ad[k].row0 == want[i];
        if (!found) return 0;
    }
    return 1;
}

static void flux_runtime(void) {
    kn_err err;
    kn_st_file *f = NULL;
    kn_dit *dit;
    kn_lora_model *m;
    if (open_base(FIX "flux_dit/model.safetensors", &f, &dit, &m)) {
        close_base(f, dit, m);
        return;
    }
    kn_ctx ctx;
    CHECK(kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32) == KN_OK, "ctx");
    snapshot s;
    take(&s, m, f);
    const char *names[] = {"lora_diffusers_attn", "lora_diffusers_other", "lora_kohya", "lora_lokr",
                           "lora_bfl_control"};
    kn_lora *l[5] = {NULL};
    for (int i = 0; i < 5; i++) {
        char path[512];
        snprintf(path, sizeof path, FIX "lora_flux/%s.safetensors", names[i]);
        CHECK(kn_lora_load(&l[i], path, m, &err) == KN_OK, "%s", err.msg);
        if (!l[i]) return;
    }
    kn_lora *attn = l[0], *other = l[1], *kohya = l[2], *lokr = l[3], *control = l[4];
    CHECK(kn_lora_patch_count(attn) == 5 && kn_lora_unloaded_count(attn) == 0, "diffusers: %d tensors, %d unloaded",
          kn_lora_patch_count(attn), kn_lora_unloaded_count(attn));
    kn_tensor base = {0}, out = {0};
    dit_out(&ctx, dit, &base);
    kn_lora_apply_stats st;
    kn_lora_use ua = {attn, 0.8}, uo = {other, 0.8};

    /* to_q, to_k, to_v as thirds of the fused qkv; proj_mlp as linear1's rows [3H, 7H) */
    CHECK(kn_lora_model_apply(m, &ua, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.attached == 5 && st.recomputed == 0, "diffusers: %d attached, %d recomputed", st.attached, st.recomputed);
    CHECK(drifted(&s, m) == 0, "diffusers LoRA moved %d base tensors", drifted(&s, m));
    const int64_t thirds[] = {0, 64, 128}, linear1[] = {0, 64, 128, 192}, halves[] = {0, 64};
    CHECK(adapter_rows(dit, "double_blocks.0.img_attn.qkv.weight", thirds, 3), "qkv: not 3 adapters at rows 0, H, 2H");
    CHECK(adapter_rows(dit, "single_blocks.1.linear1.weight", linear1, 4), "linear1: not 4 adapters at 0, H, 2H, 3H");
    dit_out(&ctx, dit, &out);
    CHECK(rel_l2(&out, &base) > 1e-4, "the diffusers LoRA does not change the output (%.3g)", rel_l2(&out, &base));
    /* norm_out.linear: diffusers' (scale, shift) halves land swapped, one adapter per half */
    CHECK(kn_lora_model_apply(m, &uo, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(adapter_rows(dit, "final_layer.adaLN_modulation.1.weight", halves, 2), "norm_out: not one adapter per half");
    CHECK(drifted(&s, m) == 0, "%d base tensors moved", drifted(&s, m));
    /* materialised slices and halves are the merge's, bit for bit */
    const char *keys[] = {"final_layer.adaLN_modulation.1.weight", "double_blocks.0.img_attn.qkv.weight"};
    kn_lora_use *uses[] = {&uo, &ua};
    for (int i = 0; i < 2; i++) {
        kn_tensor wr = {0}, wm = {0};
        CHECK(kn_lora_model_apply(m, uses[i], 1, NULL, &err) == KN_OK, "%s", err.msg);
        CHECK(kn_lora_model_weight(m, keys[i], &wr, &err) == KN_OK, "%s", err.msg);
        kn_lora_model_set_runtime(m, 0);
        CHECK(kn_lora_model_apply(m, uses[i], 1, NULL, &err) == KN_OK, "%s", err.msg);
        CHECK(kn_lora_model_weight(m, keys[i], &wm, &err) == KN_OK, "%s", err.msg);
        CHECK(wr.data && wm.data && memcmp(wr.data, wm.data, kn_tensor_nbytes(&wm)) == 0, "%s: runtime != merged",
              keys[i]);
        kn_tensor_free(&wr), kn_tensor_free(&wm);
        kn_lora_model_set_runtime(m, 1);
    }

    kn_lora_use stack[2] = {{attn, 0.7}, {kohya, 0.4}}, mixed[2] = {{lokr, 0.8}, {attn, 0.7}};
    same_as_merge(&ctx, m, dit, &ua, 1, "diffusers slices");
    same_as_merge(&ctx, m, dit, &uo, 1, "swapped halves");
    same_as_merge(&ctx, m, dit, stack, 2, "slices + fused kohya");
    /* a LoKr merged into qkv's to_v rows, the diffusers slices as adapters beside it */
    same_as_merge(&ctx, m, dit, mixed, 2, "LoKr slice + adapters");
    CHECK(kn_lora_model_apply(m, mixed, 2, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(st.recomputed > 0 && adapter_rows(dit, "double_blocks.0.img_attn.qkv.weight", thirds, 3),
          "LoKr + slices: %d recomputed", st.recomputed);
    CHECK(kn_lora_model_apply(m, NULL, 0, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(drifted(&s, m) == 0, "%d base tensors differ after removal", drifted(&s, m));
    dit_out(&ctx, dit, &out);
    CHECK(memcmp(out.data, base.data, kn_tensor_nbytes(&out)) == 0, "output after removal differs from the base");

    /* a BFL control LoRA widens img_in to twice the input channels; removal gives back the file's view */
    kn_lora_use uc = {control, 1.0};
    const kn_tensor *img_in = kn_lora_model_slot(m, "img_in.weight");
    int64_t cols = img_in->ne[1];
    CHECK(kn_lora_model_apply(m, &uc, 1, &st, &err) == KN_OK, "%s", err.msg);
    CHECK(img_in->ne[0] == 64 && img_in->ne[1] == 2 * cols, "control: img_in is [%lld, %lld]", (long long)img_in->ne[0],
          (long long)img_in->ne[1]);
    CHECK(kn_lora_model_apply(m, NULL, 0, NULL, &err) == KN_OK, "%s", err.msg);
    CHECK(img_in->ne[1] == cols && drifted(&s, m) == 0, "after the control LoRA: img_in [.., %lld], %d drifted",
          (long long)img_in->ne[1], drifted(&s, m));

    kn_tensor_free(&base), kn_tensor_free(&out);
    for (int i = 0; i < 5; i++) kn_lora_free(l[i]);
    drop(&s);
    close_base(f, dit, m);
    kn_ctx_free(&ctx);
}

/* A LoRA file of the given tensors; returns its path in buf. */
static const char *write_lora(const char *tmp, const char *name, kn_tensor *t, int n, char *buf, size_t len) {
    kn_err err;
    snprintf(buf, len, "%s/%s", tmp, name);
    CHECK(kn_st_write(buf, t, n, &err) == KN_OK, "%s", err.msg);
    return buf;
}

/* Loading `path` fails with `code` and a message naming the file and `key`. */
static void expect_error(kn_lora_model *m, const char *path, int code, const char *key) {
    kn_err err;
    kn_err_clear(&err);
    kn_lora *l = NULL;
    int rc = kn_lora_load(&l, path, m, &err);
    CHECK(rc == code, "%s: got %s (%s), want %s", path, kn_status_name(rc), err.msg, kn_status_name(code));
    CHECK(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    CHECK(!key || strstr(err.msg, key) != NULL, "message does not name '%s': %s", key, err.msg);
    kn_lora_free(l);
}

static void bad_files(const char *tmp) {
    kn_err err;
    kn_st_file *f = NULL;
    kn_dit *dit;
    kn_lora_model *m;
    if (open_base(FIX "qwen_image_dit/model.safetensors", &f, &dit, &m)) {
        close_base(f, dit, m);
        return;
    }

    static float down[4 * 64], up[64 * 4], bad_down[4 * 63], up3[64 * 3], alpha_nan[1];
    static int32_t ints[4 * 64];
    for (int i = 0; i < 256; i++) down[i] = up[i] = 0.01f * (float)(i % 7);
    alpha_nan[0] = NAN;
    const char *q = "transformer_blocks.0.attn.to_q";
    char kd[128], ku[128], ka[128], path[4096];
    snprintf(kd, sizeof kd, "%s.lora_A.weight", q);
    snprintf(ku, sizeof ku, "%s.lora_B.weight", q);
    snprintf(ka, sizeof ka, "%s.alpha", q);
    kn_tensor t[3];

    /* shape that does not fit the 64x64 weight */
    t[0] = kn_tensor_make(KN_F32, KN_DEV_CPU, bad_down, 2, (int64_t[]){4, 63});
    t[1] = kn_tensor_make(KN_F32, KN_DEV_CPU, up, 2, (int64_t[]){64, 4});
    t[0].name = kd, t[1].name = ku;
    expect_error(m, write_lora(tmp, "bad_shape.safetensors", t, 2, path, sizeof path), KN_ERR_SHAPE, kd);
    /* up rank 3, down rank 4 */
    t[0] = kn_tensor_make(KN_F32, KN_DEV_CPU, down, 2, (int64_t[]){4, 64});
    t[1] = kn_tensor_make(KN_F32, KN_DEV_CPU, up3, 2, (int64_t[]){64, 3});
    t[0].name = kd, t[1].name = ku;
    expect_error(m, write_lora(tmp, "bad_rank.safetensors", t, 2, path, sizeof path), KN_ERR_SHAPE, ku);
    /* NaN alpha */
    t[1] = kn_tensor_make(KN_F32, KN_DEV_CPU, up, 2, (int64_t[]){64, 4});
    t[2] = kn_tensor_make(KN_F32, KN_DEV_CPU, alpha_nan, 0, NULL);
    t[1].name = ku, t[2].name = ka;
    expect_error(m, write_lora(tmp, "bad_alpha.safetensors", t, 3, path, sizeof path), KN_ERR_FORMAT, ka);
    /* integer factor */
    t[0] = kn_tensor_make(KN_I32, KN_DEV_CPU, ints, 2, (int64_t[]){4, 64});
    t[0].name = kd;
    expect_error(m, write_lora(tmp, "bad_dtype.safetensors", t, 2, path, sizeof path), KN_ERR_FORMAT, kd);
    /* truncated file */
    t[0] = kn_tensor_make(KN_F32, KN_DEV_CPU, down, 2, (int64_t[]){4, 64});
    t[0].name = kd;
    write_lora(tmp, "truncated.safetensors", t, 2, path, sizeof path);
    CHECK(truncate(path, 600) == 0, "truncate %s", path);
    expect_error(m, path, KN_ERR_FORMAT, NULL);
    /* missing file */
    snprintf(path, sizeof path, "%s/no_such_lora.safetensors", tmp);
    expect_error(m, path, KN_ERR_NOT_FOUND, NULL);

    /* unmapped keys: listed once, the rest applies */
    kn_lora *l = NULL;
    CHECK(kn_lora_load(&l, FIX "lora_qwen_image/lora_unmapped.safetensors", m, &err) == KN_OK, "%s", err.msg);
    if (l) {
        char w[2048];
        CHECK(kn_lora_unloaded_count(l) == 8 && kn_lora_patch_count(l) == 2, "%d unloaded, %d patches",
              kn_lora_unloaded_count(l), kn_lora_patch_count(l));
        CHECK(strncmp(kn_lora_warning(l, w, sizeof w),
                      "[lora_unmapped.safetensors] lora keys not loaded (8 / 12): "
                      "['lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha', ",
                      120) == 0,
              "warning: %s", w);
        kn_lora_free(l);
    }
    close_base(f, dit, m);
}

/* Flux files written here: a diffusers to_k whose up factor has the whole
 * qkv's rows fails naming the file, the key and the slice it patches; a
 * ByteDance USO LoRA is renamed as ComfyUI's convert_uso_lora does (its
 * fused-qkv LoRA lands on linear1's first 3 H rows, its trigger keys for
 * blocks the tiny model lacks stay unloaded, under their converted names). */
static void flux_files(const char *tmp) {
    kn_err err;
    kn_st_file *f = NULL;
    kn_dit *dit;
    kn_lora_model *m;
    if (open_base(FIX "flux_dit/model.safetensors", &f, &dit, &m)) {
        close_base(f, dit, m);
        return;
    }
    static float down[4 * 64], up[192 * 4];
    for (int i = 0; i < 4 * 64; i++) down[i] = 0.01f * (float)(i % 5);
    for (int i = 0; i < 192 * 4; i++) up[i] = 0.02f * (float)(i % 3);
    kn_tensor t[6];
    t[0] = kn_tensor_make(KN_F32, KN_DEV_CPU, down, 2, (int64_t[]){4, 64});
    t[1] = kn_tensor_make(KN_F32, KN_DEV_CPU, up, 2, (int64_t[]){192, 4});
    t[0].name = "transformer.transformer_blocks.0.attn.to_k.lora_A.weight";
    t[1].name = "transformer.transformer_blocks.0.attn.to_k.lora_B.weight";
    char path[4096];
    write_lora(tmp, "bad_slice.safetensors", t, 2, path, sizeof path);
    expect_error(m, path, KN_ERR_SHAPE, "'transformer.transformer_blocks.0.attn.to_k.lora_B.weight' is [192, 4]");
    expect_error(m, path, KN_ERR_SHAPE, "rows [64, 128) of 'double_blocks.0.img_attn.qkv.weight'");

    const char *uso[] = {"single_blocks.0.processor.qkv_lora.down.weight",
                         "single_blocks.0.processor.qkv_lora.up.weight",
                         "double_blocks.0.processor.proj_lora1.down.weight",
                         "double_blocks.0.processor.proj_lora1.up.weight",
                         "single_blocks.37.processor.qkv_lora.up.weight",
                         "double_blocks.18.processor.qkv_lora2.up.weight"};
    const int64_t rows[] = {4, 192, 4, 64, 192, 192}, cols[] = {64, 4, 64, 4, 4, 4};
    for (int i = 0; i < 6; i++) {
        t[i] = kn_tensor_make(KN_F32, KN_DEV_CPU, rows[i] == 4 ? down : up, 2, (int64_t[]){rows[i], cols[i]});
        t[i].name = uso[i];
    }
    write_lora(tmp, "uso.safetensors", t, 6, path, sizeof path);
    kn_lora *l = NULL;
    CHECK(kn_lora_load(&l, path, m, &err) == KN_OK, "%s", err.msg);
    if (l) {
        int seen = 0;
        for (int i = 0; i < kn_lora_unloaded_count(l); i++) {
            const char *k = kn_lora_unloaded(l, i);
            seen += strcmp(k, "diffusion_model.single_blocks.37.linear1_qkv.lora_up.weight") == 0 ||
                    strcmp(k, "diffusion_model.double_blocks.18.txt_attn.qkv.lora_up.weight") == 0;
        }
        CHECK(kn_lora_patch_count(l) == 2 && kn_lora_unloaded_count(l) == 2 && seen == 2,
              "USO: %d tensors patched, %d unloaded (%d as converted)", kn_lora_patch_count(l),
              kn_lora_unloaded_count(l), seen);
        kn_lora_use u = {l, 1.0};
        const int64_t first[] = {0};
        CHECK(kn_lora_model_apply(m, &u, 1, NULL, &err) == KN_OK, "%s", err.msg);
        const kn_weight_slot *sl = kn_weight_table_find(dit->weights, "single_blocks.0.linear1.weight");
        CHECK(adapter_rows(dit, "single_blocks.0.linear1.weight", first, 1) && sl->run.ad[0].up->ne[0] == 192,
              "USO linear1_qkv: not one adapter on rows [0, 3H)");
        CHECK(kn_lora_model_apply(m, NULL, 0, NULL, &err) == KN_OK, "%s", err.msg);
        kn_lora_free(l);
    }
    close_base(f, dit, m);
}

int main(void) {
    const char *tmp = getenv("KN_TEST_TMP") ? getenv("KN_TEST_TMP") : "/tmp";
    hot_swap(tmp);
    linear_lora_op();
    runtime_swap();
    flux_runtime();
    bad_files(tmp);
    flux_files(tmp);
    printf("test_lora: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
