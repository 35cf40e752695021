/* Sequence-parallel attention against one rank (shared/notes/sequence-parallel.md §10.1-3).
 *
 * Run alone (one rank: the shard plan and the pass-through) and by ctest
 * under `mpirun -np 2/3/4`: every rank builds the same full q, k, v, keeps
 * its shard, runs Ulysses, ring and USP, gathers, and compares with the
 * full attention it computes itself. Token counts do not divide by the ranks;
 * pad rows are filled with NaN and 1e30 first, so an unmasked pad fails. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/comm.h"
#include "kernels/dtype.h"
#include "pipelines/common/seqpar.h"

static kn_ctx ctx;
static int rank, size;

static uint32_t rng = 12345;
static float urand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static void fill(kn_tensor *t, float amp) {
    float *d = t->data;
    for (int64_t i = 0; i < kn_tensor_numel(t); i++) d[i] = amp * urand();
}

/* Corrupts this rank's pad rows of a sharded [B, L, H, D] tensor. */
static void poison_pads(kn_tensor *t, const kn_sp *sp, const kn_sp_seq *seq, float value) {
    int64_t row = t->ne[2] * t->ne[3], L = t->ne[1], l0 = 0;
    for (int s = 0; s < seq->n; s++) {
        int64_t loc = kn_sp_local(sp, seq->len[s]), real = seq->len[s] - (int64_t)rank * loc;
        real = real < 0 ? 0 : real > loc ? loc : real;
        for (int64_t b = 0; b < t->ne[0]; b++)
            for (int64_t l = real; l < loc; l++)
                for (int64_t i = 0; i < row; i++) ((float *)t->data)[(b * L + l0 + l) * row + i] = value;
        l0 += loc;
    }
}

/* out_full [B, N, H, D] from every rank's local rows of each stream. */
static int gather_streams(const kn_sp *sp, const kn_sp_seq *seq, const kn_tensor *local, kn_tensor *full) {
    int64_t B = local->ne[0], H = local->ne[2], D = local->ne[3], l0 = 0, g0 = 0;
    for (int s = 0; s < seq->n; s++) {
        int64_t loc = kn_sp_local(sp, seq->len[s]);
        kn_tensor part, whole;
        if (kn_tensor_new(&part, KN_F32, KN_DEV_CPU, 4, (int64_t[]){B, loc, H, D}, &ctx.err)) return ctx.err.code;
        if (kn_tensor_new(&whole, KN_F32, KN_DEV_CPU, 4, (int64_t[]){B, seq->len[s], H, D}, &ctx.err)) {
            kn_tensor_free(&part);
            return ctx.err.code;
        }
        for (int64_t b = 0; b < B; b++)
            memcpy((float *)part.data + b * loc * H * D, (const float *)local->data + (b * local->ne[1] + l0) * H * D,
                   (size_t)(loc * H * D) * sizeof(float));
        int rc = kn_sp_gather(&ctx, sp, seq->len[s], &part, 1, &whole);
        for (int64_t b = 0; !rc && b < B; b++)
            memcpy((float *)full->data + (b * full->ne[1] + g0) * H * D,
                   (const float *)whole.data + b * seq->len[s] * H * D, (size_t)(seq->len[s] * H * D) * sizeof(float));
        kn_tensor_free(&part);
        kn_tensor_free(&whole);
        if (rc) return rc;
        l0 += loc;
        g0 += seq->len[s];
    }
    return KN_OK;
}

static double rel_l2(const kn_tensor *a, const kn_tensor *b) {
    double num = 0, den = 0;
    const float *x = a->data, *y = b->data;
    for (int64_t i = 0; i < kn_tensor_numel(a); i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

typedef struct sp_case {
    const char *name;
    int64_t B, H, D;
    kn_sp_seq seq;
    int masked; /* a text key mask as ComfyUI makes it ((m - 1) * FLT_MAX) */
} sp_case;

static void run_case(kn_comm *world, const sp_case *c, kn_sp_mode mode, int ulysses) {
    int64_t N = 0;
    for (int s = 0; s < c->seq.n; s++) N += c->seq.len[s];
    int P = size;
    /* the grid this mode picks */
    int U = mode == KN_SP_RING ? 1 : mode == KN_SP_ULYSSES ? P : ulysses;
    if (mode == KN_SP_ULYSSES && c->H % P) return;
    if (mode == KN_SP_AUTO && !ulysses)
        for (U = P; U > 1 && (P % U || c->H % U); U--) {}
    kn_tensor q, k, v, ref, out_full, mask_full;
    int64_t ne[4] = {c->B, N, c->H, c->D};
    kn_tensor_new(&q, KN_F32, KN_DEV_CPU, 4, ne, &ctx.err);
    kn_tensor_new(&k, KN_F32, KN_DEV_CPU, 4, ne, &ctx.err);
    kn_tensor_new(&v, KN_F32, KN_DEV_CPU, 4, ne, &ctx.err);
    kn_tensor_new(&ref, KN_F32, KN_DEV_CPU, 4, ne, &ctx.err);
    kn_tensor_new(&out_full, KN_F32, KN_DEV_CPU, 4, ne, &ctx.err);
    kn_tensor_new(&mask_full, KN_F32, KN_DEV_CPU, 2, (int64_t[]){c->B, N}, &ctx.err);
    rng = 777;
    fill(&q, 2.0f);
    fill(&k, 2.0f);
    fill(&v, 1.0f);
    float *m = mask_full.data;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t j = 0; j < N; j++) /* the last few text tokens of batch 1 masked */
            m[b * N + j] = b == 1 && j >= c->seq.len[0] - 3 && j < c->seq.len[0] ? -3.4028235e38f : 0.0f;
    float scale = 1.0f / sqrtf((float)c->D);
    const kn_attention_args full_args = {c->masked ? &mask_full : NULL, NULL, 0, scale, NULL};
    int rc = kn_attention_ex(&ctx, &ref, &q, &k, &v, &full_args);
    CHECK(rc == KN_OK, "%s: reference: %s", c->name, ctx.err.msg);

    kn_sp *sp = NULL;
    rc = kn_sp_new(&sp, world, mode, mode == KN_SP_AUTO ? ulysses : 0, &ctx.err);
    CHECK(rc == KN_OK, "%s: %s", c->name, ctx.err.msg);
    size_t mark = kn_arena_mark(ctx.scratch);
    kn_tensor ql, kl, vl, ml, ol;
    rc = rc ? rc : kn_sp_shard(&ctx, sp, &c->seq, &q, 1, &ql);
    rc = rc ? rc : kn_sp_shard(&ctx, sp, &c->seq, &k, 1, &kl);
    rc = rc ? rc : kn_sp_shard(&ctx, sp, &c->seq, &v, 1, &vl);
    rc = rc ? rc : kn_sp_shard(&ctx, sp, &c->seq, &mask_full, 1, &ml);
    if (!rc && P > 1) {
        poison_pads(&ql, sp, &c->seq, NAN);
        poison_pads(&kl, sp, &c->seq, 1e30f);
        poison_pads(&vl, sp, &c->seq, NAN);
    }
    rc = rc ? rc : kn_arena_tensor(ctx.scratch, &ol, KN_F32, 4, ql.ne, &ctx.err);
    rc = rc ? rc : kn_sp_attention(&ctx, sp, &c->seq, &ol, &ql, &kl, &vl, c->masked ? &ml : NULL, scale);
    rc = rc ? rc : gather_streams(sp, &c->seq, &ol, &out_full);
    CHECK(rc == KN_OK, "%s %s U=%d: %s", c->name, kn_sp_mode_name(mode), U, ctx.err.msg);
    if (!rc) {
        double err = rel_l2(&out_full, &ref);
        int same = memcmp(out_full.data, ref.data, kn_tensor_nbytes(&ref)) == 0;
        if (U == P) /* pure Ulysses: the one-rank order, bit for bit */
            CHECK(same, "%s ulysses P=%d: not bit-identical to one rank (rel L2 %.3g)", c->name, P, err);
        else
            CHECK(err <= 1e-6, "%s %s P=%d U=%d R=%d: rel L2 %.3g > 1e-6", c->name, kn_sp_mode_name(mode), P, U, P / U,
                  err);
        if (rank == 0)
            printf("%-10s %-7s P=%d U=%d R=%d rel L2 %.2e%s\n", c->name, kn_sp_mode_name(mode), P, U, P / U, err,
                   same ? " (bit-identical)" : "");
    }
    kn_arena_reset(ctx.scratch, mark);
    kn_sp_free(sp);
    kn_tensor *all[] = {&q, &k, &v, &ref, &out_full, &mask_full};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
}

/* A linear's row does not depend on how many rows come with it (skinny and
 * blocked paths, edge tiles, K blocks): what lets a Ulysses shard match one
 * rank bit for bit. 330 rows take the blocked path, at most 320 the skinny
 * one (kernels/cpu/gemm.c). */
static void test_linear_rows(void) {
    const int64_t K = 600, N = 70, R = 330; /* K crosses a KC block, N ends in an edge panel */
    const kn_dtype types[] = {KN_F32, KN_BF16};
    /* row ranges {first, count}: every range within the first 13 rows, then long ones */
    int64_t ranges[13 * 14 / 2 + 3][2], nr = 0;
    for (int64_t m0 = 0; m0 < 13; m0++)
        for (int64_t m = 1; m0 + m <= 13; m++) ranges[nr][0] = m0, ranges[nr++][1] = m;
    const int64_t longer[3][2] = {{0, 320}, {10, 320}, {7, 53}};
    for (int i = 0; i < 3; i++) ranges[nr][0] = longer[i][0], ranges[nr++][1] = longer[i][1];
    for (size_t t = 0; t < 2; t++) {
        kn_tensor w, wf, b, x, y_all, y_part;
        kn_tensor_new(&wf, KN_F32, KN_DEV_CPU, 2, (int64_t[]){N, K}, &ctx.err);
        kn_tensor_new(&w, types[t], KN_DEV_CPU, 2, (int64_t[]){N, K}, &ctx.err);
        kn_tensor_new(&b, KN_F32, KN_DEV_CPU, 1, (int64_t[]){N}, &ctx.err);
        kn_tensor_new(&x, KN_F32, KN_DEV_CPU, 2, (int64_t[]){R, K}, &ctx.err);
        kn_tensor_new(&y_all, KN_F32, KN_DEV_CPU, 2, (int64_t[]){R, N}, &ctx.err);
        kn_tensor_new(&y_part, KN_F32, KN_DEV_CPU, 2, (int64_t[]){R, N}, &ctx.err);
        fill(&wf, 0.1f);
        fill(&b, 1.0f);
        fill(&x, 1.0f);
        kn_from_f32(w.data, types[t], wf.data, (size_t)(N * K));
        CHECK(kn_linear(&ctx, &y_all, &x, &w, &b) == KN_OK, "%s", ctx.err.msg);
        for (int64_t i = 0; i < nr; i++) {
            int64_t m0 = ranges[i][0], m = ranges[i][1];
            kn_tensor xs, ys;
            kn_tensor_slice(&xs, &x, 0, m0, m, &ctx.err);
            kn_tensor_slice(&ys, &y_part, 0, m0, m, &ctx.err);
            int rc = kn_linear(&ctx, &ys, &xs, &w, &b);
            CHECK(rc == KN_OK && memcmp(ys.data, (float *)y_all.data + m0 * N, (size_t)(m * N) * 4) == 0,
                  "%s linear: rows %lld..%lld alone differ from the same rows among %lld", kn_dtype_name(types[t]),
                  (long long)m0, (long long)(m0 + m), (long long)R);
        }
        kn_tensor *all[] = {&w, &wf, &b, &x, &y_all, &y_part};
        for (size_t i = 0; i < 6; i++) kn_tensor_free(all[i]);
    }
}

/* Shard then gather is the identity; pads are zero on entry. */
static void test_plan(kn_comm *world) {
    kn_sp *sp = NULL;
    CHECK(kn_sp_new(&sp, world, KN_SP_AUTO, 0, &ctx.err) == KN_OK, "%s", ctx.err.msg);
    const kn_sp_seq seq = {2, {5, 11}};
    kn_tensor full, back, local;
    kn_tensor_new(&full, KN_F32, KN_DEV_CPU, 3, (int64_t[]){2, 16, 3}, &ctx.err);
    kn_tensor_new(&back, KN_F32, KN_DEV_CPU, 3, (int64_t[]){2, 11, 3}, &ctx.err);
    fill(&full, 1.0f);
    size_t mark = kn_arena_mark(ctx.scratch);
    int rc = kn_sp_shard(&ctx, sp, &seq, &full, 1, &local);
    CHECK(rc == KN_OK && local.ne[1] == kn_sp_local_rows(sp, &seq), "shard: %s", ctx.err.msg);
    /* the image stream's rows gathered back */
    kn_tensor img;
    int64_t loc5 = kn_sp_local(sp, 5), loc11 = kn_sp_local(sp, 11);
    kn_tensor_new(&img, KN_F32, KN_DEV_CPU, 3, (int64_t[]){2, loc11, 3}, &ctx.err);
    for (int64_t b = 0; !rc && b < 2; b++)
        memcpy((float *)img.data + b * loc11 * 3, (float *)local.data + (b * local.ne[1] + loc5) * 3,
               (size_t)(loc11 * 3) * sizeof(float));
    rc = rc ? rc : kn_sp_gather(&ctx, sp, 11, &img, 1, &back);
    int same = !rc;
    for (int64_t b = 0; same && b < 2; b++)
        same = memcmp((float *)back.data + b * 33, (float *)full.data + (b * 16 + 5) * 3, 33 * sizeof(float)) == 0;
    CHECK(same, "shard + gather of the second stream is the identity: %s", rc ? ctx.err.msg : "differs");
    kn_arena_reset(ctx.scratch, mark);
    kn_tensor_free(&img);
    kn_tensor_free(&full);
    kn_tensor_free(&back);
    kn_sp_free(sp);
}

int main(void) {
    kn_comm *world = NULL;
    if (kn_comm_world(&world, &ctx.err)) {
        fprintf(stderr, "test_seqpar: %s\n", ctx.err.msg);
        return 1;
    }
    rank = kn_comm_rank(world);
    size = kn_comm_size(world);
    kn_comm_set_timeout(world, 60);
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32)) return 1;
    test_plan(world);
    if (rank == 0) test_linear_rows();
    const sp_case cases[] = {
        {"joint", 1, 6, 16, {2, {13, 50}}, 0},     /* text + image, neither divisible by 2, 3, 4 */
        {"masked", 2, 6, 16, {2, {9, 37}}, 1},     /* batch 2, text key mask */
        {"z_heads", 1, 30, 8, {2, {40, 21}}, 0},   /* Z-Image's 30 heads: U = 2 or 3 with ring */
        {"tiny", 1, 4, 8, {3, {1, 2, 3}}, 0},      /* streams shorter than the ranks: whole pad chunks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_case(world, &cases[i], KN_SP_ULYSSES, 0);
        run_case(world, &cases[i], KN_SP_RING, 0);
        run_case(world, &cases[i], KN_SP_AUTO, 0);
        if (size == 4) run_case(world, &cases[i], KN_SP_AUTO, 2); /* USP 2 x 2 */
    }
    int failed = failures;
    kn_ctx_free(&ctx);
    if (rank == 0 || failed) printf("test_seqpar rank %d of %d: %d checks, %d failed\n", rank, size, checks, failed);
    kn_comm_free(world);
    return failed ? 1 : 0;
}
