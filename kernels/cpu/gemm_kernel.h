/* The CPU GEMM's building blocks, for kernels that drive them directly.
 *
 * Kiln's GEMM is the classic packed form (Goto/BLIS): A is copied into panels
 * of MR rows and B into panels of NR columns, k-major, so that the micro-kernel
 * reads both with unit stride and keeps an MR x NR block of C in registers.
 * gemm.c blocks and threads it for whole matrices; attention.c packs K and V
 * once per head and calls the micro-kernel on each tile, so no tile is packed
 * twice.
 *
 * NR is two vectors of the widest float vector the build targets (AVX-512 or
 * AVX2; a scalar build keeps the same code with 1-float "vectors"). */
#ifndef KN_GEMM_KERNEL_H
#define KN_GEMM_KERNEL_H

#include <stdint.h>

#include "kernels/dtype.h"

#if defined(__AVX512F__)
#define KN_GEMM_VLEN 16
#elif defined(__AVX2__) && defined(__FMA__)
#define KN_GEMM_VLEN 8
#else
#define KN_GEMM_VLEN 1
#endif
#define KN_GEMM_MR 6
/* BF16 precision multiplies bf16 pairs with vdpbf16ps where the build targets it. */
#if defined(__AVX512BF16__) && KN_GEMM_VLEN == 16
#define KN_GEMM_BF16 1
#else
#define KN_GEMM_BF16 0
#endif
#define KN_GEMM_NR (2 * KN_GEMM_VLEN)

/* Floats of the packed form of `rows` x kc (A) or kc x `cols` (B): partial
 * panels are padded with zeros to full MR rows / NR columns. */
static inline int64_t kn_gemm_packed_a_size(int64_t rows, int64_t kc) {
    return (rows + KN_GEMM_MR - 1) / KN_GEMM_MR * KN_GEMM_MR * kc;
}
static inline int64_t kn_gemm_packed_b_size(int64_t kc, int64_t cols) {
    return (cols + KN_GEMM_NR - 1) / KN_GEMM_NR * KN_GEMM_NR * kc;
}

/* A panels: dst[p][k][i] = A(p*MR + i, k) for `rows` rows and kc columns, where
 * A(i, k) = a[k*lda + i] when trans, else a[i*lda + k]. */
void kn_gemm_pack_a(float *dst, const float *a, int64_t lda, int trans, int64_t rows, int64_t kc);

/* B panels: dst[p][k][j] = B(k, p*NR + j) for kc rows and `cols` columns, where
 * B(k, n) = b[n*ldb + k] when trans (a [N, K] weight), else b[k*ldb + n];
 * elements of `dtype` are widened to f32 and multiplied by `scale`. */
void kn_gemm_pack_b(float *dst, const void *b, kn_dtype dtype, float scale, int64_t ldb, int trans, int64_t kc,
                    int64_t cols);

/* The mr x nr (<= MR x NR) corner of C (rows ldc apart) gets, for one A panel
 * and one B panel of depth kc,
 *   acc ? C * cscale[j] + A.B : bias[j] + A.B
 * (cscale NULL: 1; bias NULL: 0). cscale lets attention rescale its running
 * output in the same pass that adds to it. */
void kn_gemm_micro(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc, const float *cscale,
                   const float *bias, int mr, int nr);

/* x rounded to bf16 values in place: BF16 precision without bf16 units
 * packs f32 panels of the same values the pair kernels would multiply. */
void kn_gemm_round_bf16(float *x, int64_t n);

#if KN_GEMM_BF16
/* BF16 pairs (vdpbf16ps): each packed 32-bit element holds two bf16 values
 * of consecutive k, the lower k in the low half, so panels of depth kcp pairs
 * cover 2 kcp values of k (an odd count padded with zero). Rounding is to
 * nearest even. */

/* As kn_gemm_pack_a, over kn values of k from f32 rows. */
void kn_gemm_pack_a_pairs(float *dst, const float *a, int64_t lda, int trans, int64_t rows, int64_t kn);

/* As kn_gemm_pack_b for a transposed B (a [N, K] weight, b at the block's
 * first k, rows ldb elements apart), kcp pairs deep, zero past kn values. */
void kn_gemm_pack_b_pairs(float *dst, const void *b, kn_dtype dtype, float scale, int64_t ldb, int64_t kcp,
                          int64_t kn, int64_t cols);

/* A B panel of f32 rows (NR floats each, `rows` of them, as the micro-kernel
 * writes them) as (rows + 1) / 2 rows of pairs. */
void kn_gemm_panel_pairs(float *dst, const float *s, int64_t rows);

/* kn_gemm_micro on pair panels, kc pairs deep. */
void kn_gemm_micro_bf16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc,
                        const float *cscale, const float *bias, int mr, int nr);
#endif

#endif
