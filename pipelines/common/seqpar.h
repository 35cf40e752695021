/* kn_sp: one DiT forward split across the ranks of a communicator by
 * sequence (shared/notes/sequence-parallel.md).
 *
 * Only attention mixes tokens, so every other op of a block runs unchanged
 * on a rank's rows. A forward's token streams (text, image, ...) are each cut
 * into P equal contiguous chunks: with local = ceil(N / P), rank r holds
 * global rows [r*local, (r+1)*local) of every stream, in stream order, and
 * rows past N are padding (zero on entry, garbage later, never read by a
 * real token: their keys are masked with -inf and their q, k and v zeroed before
 * every attention, and kn_sp_gather drops them). Positions stay global: a
 * family shards its RoPE table and key mask with the same plan.
 *
 * Attention over the sharded joint sequence, per the group's grid P = U * R:
 *  - Ulysses (U ranks): one all-to-all of q, k, v over heads gives each rank
 *    H/U heads of the U chunks; plain attention; the inverse all-to-all. With
 *    R = 1 the gathered rows are put in the one-rank order (real rows of each
 *    stream, pads last), so the result is bit-identical to one rank;
 *  - ring (R groups): the K/V of each group's rows visit every group in
 *    R - 1 hops; partial outputs merge by their log-sum-exp in fp32;
 *  - USP: Ulysses inside groups of U consecutive ranks, ring across them.
 * KN_SP_AUTO takes the largest U dividing both P and the heads (pure
 * Ulysses when the heads divide by P, ring for the factor they do not).
 *
 * Every rank must call with the same streams, heads and masks' presence
 * (all derived from replicated inputs): the collectives must match. */
#ifndef KN_PIPELINES_SEQPAR_H
#define KN_PIPELINES_SEQPAR_H

#include "kernels/comm.h"
#include "kernels/ops.h"

typedef enum kn_sp_mode {
    KN_SP_AUTO = 0,
    KN_SP_ULYSSES, /* U = P: the heads must divide by P */
    KN_SP_RING,    /* U = 1 */
} kn_sp_mode;

typedef struct kn_sp kn_sp;

/* A group over comm (borrowed: it must outlive the group). ulysses: the
 * Ulysses degree for KN_SP_AUTO (0: the largest that divides the heads). */
int kn_sp_new(kn_sp **out, kn_comm *comm, kn_sp_mode mode, int ulysses, kn_err *err);
void kn_sp_free(kn_sp *sp);
/* 1 for a NULL group. */
int kn_sp_size(const kn_sp *sp);
int kn_sp_rank(const kn_sp *sp);
kn_comm *kn_sp_comm(const kn_sp *sp);
/* "auto", "ulysses", "ring" -> mode. */
int kn_sp_mode_parse(const char *s, kn_sp_mode *out);
const char *kn_sp_mode_name(kn_sp_mode m);

/* The streams of one sharded sequence, in the order a rank lays its rows out. */
#define KN_SP_MAX_STREAMS 4
typedef struct kn_sp_seq {
    int n;
    int64_t len[KN_SP_MAX_STREAMS]; /* global tokens of each stream */
} kn_sp_seq;

/* Rows a rank holds of a stream of n tokens: ceil(n / P). */
int64_t kn_sp_local(const kn_sp *sp, int64_t n);
/* Rows a rank holds of the whole sequence (sum over the streams). */
int64_t kn_sp_local_rows(const kn_sp *sp, const kn_sp_seq *seq);
/* This rank's rows of `full` along dim (its size: the streams' total) into
 * *local. One rank: *local = *full (a view, no copy); else a contiguous F32
 * tensor from ctx->scratch, pad rows zero. full: contiguous F32. */
int kn_sp_shard(kn_ctx *ctx, const kn_sp *sp, const kn_sp_seq *seq, const kn_tensor *full, int dim, kn_tensor *local);
/* The inverse for one stream of n tokens: every rank's rows of local
 * (contiguous F32, kn_sp_local(n) along dim) gathered into full (n along
 * dim, caller-allocated), pads dropped. One rank: a copy. */
int kn_sp_gather(kn_ctx *ctx, const kn_sp *sp, int64_t n, const kn_tensor *local, int dim, kn_tensor *full);

/* Attention over the sharded joint sequence `seq`: q [B, Lloc, H, D], k, v
 * the same (no GQA: DiTs have none), views allowed with the head dim
 * contiguous; out [B, Lloc, H, D] contiguous; Lloc = kn_sp_local_rows.
 * key_mask: NULL or F32 [B, Lloc] this rank's rows of the one-rank mask.
 * scale as kn_attention_ex. Bias and causal masks are not supported here. */
int kn_sp_attention(kn_ctx *ctx, const kn_sp *sp, const kn_sp_seq *seq, kn_tensor *out, const kn_tensor *q,
                    const kn_tensor *k, const kn_tensor *v, const kn_tensor *key_mask, float scale);

#endif
