/* CPU GEMM: the one matrix-product entry point of the CPU backend.
 *
 * Kiln's own packed GEMM (gemm_kernel.h) for every product. On the 2-core
 * AVX2 (Zen 3) machine it reaches ~88% of the FMA peak on the DiT's shapes when
 * left alone, where oneDNN 2.6's sgemm reached ~75% (bench/run.sh), and
 * packing B is where weights of any dtype are widened (and fp8 scales
 * applied), so no widened copy of a weight is ever made.
 *  - FP32 precision: f32 activations x weights widened while packing.
 *  - Linears of up to 320 rows (text encoders, DiT text streams) take a
 *    skinny path that widens each weight block straight into L1; every row
 *    gets the same bits either way.
 *  - BF16 precision: activations and weights rounded to bf16, products
 *    accumulated in f32. On CPUs with AVX512_BF16 the same driver runs a
 *    vdpbf16ps micro-kernel on bf16 pairs (as fast as oneDNN 2.6's bf16
 *    matmul in a DiT block on Zen 5, bench/run.sh, so oneDNN is no longer
 *    needed); elsewhere the same products (bf16 x bf16 is exact in f32) go
 *    through the f32 kernel. */
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>
#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/gemm_kernel.h"
#include "kernels/device.h"

#define MR KN_GEMM_MR
#define NR KN_GEMM_NR
#define VL KN_GEMM_VLEN

/* Blocking (Goto): a B panel (KC x NR, 16 KB with AVX2) stays in L1 while it
 * meets every A panel of an MC x KC block (~150 KB) kept in L2; each thread's
 * packed KC x NC block of B (up to 4 MB) streams from L3. */
#define KC 256
#define MC 144 /* multiple of MR */
#define NC 4096 /* multiple of NR */

/* ---- micro-kernel ------------------------------------------------------- */

#if VL == 16
typedef __m512 vec;
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VBCAST(p) _mm512_set1_ps(*(p))
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#elif VL == 8
typedef __m256 vec;
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VBCAST(p) _mm256_broadcast_ss(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#else
typedef float vec;
#define VZERO() 0.0f
#define VLOAD(p) (*(p))
#define VSTORE(p, v) (*(p) = (v))
#define VBCAST(p) (*(p))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VADD(a, b) ((a) + (b))
#endif

/* The MR = 6 rows, spelled out so every accumulator is its own register
 * variable (GCC spills arrays of vectors to the stack every iteration); the
 * kernel of fewer rows (few-row linears) is the same code on a shorter list,
 * so each of its outputs is the same chain of FMAs. */
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define ROWS1(X) X(0)
#define ROWS2(X) X(0) X(1)
#define ROWS3(X) X(0) X(1) X(2)
#define ROWS4(X) X(0) X(1) X(2) X(3)
_Static_assert(MR == 6, "ROWS() lists MR rows");

/* c[i, 0:NR] for the rows i of R: acc ? c * cscale + sum : sum + bias, sum
 * the products of a's row i and b over kc packed elements, STEP(i) adding one
 * element's products to row i's accumulators. */
#define MICRO_KERNEL(name, R, STEP)                                                                           \
    static inline void name(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c, \
                            int64_t ldc, int acc, const float *cscale, const float *bias) {                  \
        R(DECL)                                                                                               \
        _Pragma("GCC unroll 4") for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {                          \
            vec b0 = VLOAD(b), b1 = VLOAD(b + VL), ai;                                                        \
            R(STEP)                                                                                           \
        }                                                                                                     \
        vec add0 = bias ? VLOAD(bias) : VZERO(), add1 = bias ? VLOAD(bias + VL) : VZERO();                    \
        vec one = VBCAST(&(const float){1.0f});                                                               \
        vec mul0 = cscale ? VLOAD(cscale) : one, mul1 = cscale ? VLOAD(cscale + VL) : one;                    \
        R(STORE)                                                                                              \
    }
#define DECL(i)                                                                                             \
    vec c##i##0 = VZERO(), c##i##1 = VZERO();                                                               \
    __builtin_prefetch(c + i * ldc, 1);                                                                      \
    __builtin_prefetch(c + i * ldc + NR - 1, 1);
#define STEP_F32(i)                                                                                         \
    ai = VBCAST(a + i);                                                                                     \
    c##i##0 = VFMA(ai, b0, c##i##0);                                                                        \
    c##i##1 = VFMA(ai, b1, c##i##1);
#define STORE(i)                                                                                            \
    {                                                                                                       \
        float *r = c + i * ldc;                                                                             \
        VSTORE(r, acc ? VFMA(VLOAD(r), mul0, c##i##0) : VADD(c##i##0, add0));                               \
        VSTORE(r + VL, acc ? VFMA(VLOAD(r + VL), mul1, c##i##1) : VADD(c##i##1, add1));                     \
    }
MICRO_KERNEL(micro_full, ROWS, STEP_F32)
MICRO_KERNEL(micro_rows1, ROWS1, STEP_F32)
MICRO_KERNEL(micro_rows2, ROWS2, STEP_F32)
MICRO_KERNEL(micro_rows3, ROWS3, STEP_F32)
MICRO_KERNEL(micro_rows4, ROWS4, STEP_F32)

/* The kernels of one arithmetic: rows[r] computes r rows (1-4 and MR). */
typedef void (*micro_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc,
                         const float *cscale, const float *bias);
typedef struct micro_set {
    micro_fn rows[MR + 1];
} micro_set;
static const micro_set micro_f32 = {{NULL, micro_rows1, micro_rows2, micro_rows3, micro_rows4, NULL, micro_full}};

#if KN_GEMM_BF16
/* BF16 pairs: each packed element holds two bf16 values of consecutive k
 * (the lower k in the low half), and vdpbf16ps adds both products of a pair
 * to f32 accumulators: twice the fp32 FMA's work per instruction. The
 * products of bf16 values are exact in f32; only the order of the sums
 * differs from the f32 kernel on bf16-rounded inputs. */
#define STEP_BF16(i)                                                                                        \
    ai = VBCAST(a + i);                                                                                     \
    c##i##0 = _mm512_dpbf16_ps(c##i##0, (__m512bh)ai, (__m512bh)b0);                                       \
    c##i##1 = _mm512_dpbf16_ps(c##i##1, (__m512bh)ai, (__m512bh)b1);
MICRO_KERNEL(micro_bf16_full, ROWS, STEP_BF16)
MICRO_KERNEL(micro_bf16_rows1, ROWS1, STEP_BF16)
MICRO_KERNEL(micro_bf16_rows2, ROWS2, STEP_BF16)
MICRO_KERNEL(micro_bf16_rows3, ROWS3, STEP_BF16)
MICRO_KERNEL(micro_bf16_rows4, ROWS4, STEP_BF16)
static const micro_set micro_bf16 = {
    {NULL, micro_bf16_rows1, micro_bf16_rows2, micro_bf16_rows3, micro_bf16_rows4, NULL, micro_bf16_full}};
#undef STEP_BF16
#endif
#undef DECL
#undef STEP_F32
#undef STORE

/* One mr x nr (<= MR x NR) tile, as kn_gemm_micro, with the kernels of `set`.
 * Up to FEW_ROWS rows without cscale run a kernel of just those rows: the
 * products the full kernel would give them, without the padding rows. */
#define FEW_ROWS 4
static void micro_tile(const micro_set *set, int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                       int acc, const float *cscale, const float *bias, int mr, int nr) {
    int few = mr <= FEW_ROWS && !cscale;
    micro_fn f = set->rows[few ? mr : MR];
    if (nr == NR && (few || mr == MR)) {
        f(kc, a, b, c, ldc, acc, cscale, bias);
        return;
    }
    /* Edge tile: the padded panels give a full tile; keep its valid corner. */
    float t[MR * NR];
    f(kc, a, b, t, NR, 0, NULL, NULL);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            c[i * ldc + j] = t[i * NR + j] + (acc    ? c[i * ldc + j] * (cscale ? cscale[j] : 1.0f)
                                              : bias ? bias[j]
                                                     : 0.0f);
}

void kn_gemm_micro(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc, const float *cscale,
                   const float *bias, int mr, int nr) {
    micro_tile(&micro_f32, kc, a, b, c, ldc, acc, cscale, bias, mr, nr);
}

/* ---- packing ------------------------------------------------------------ */

/* Packing reads short pieces (kc values) of rows far apart, a pattern the
 * hardware prefetchers do not follow (3x slower packing without this): each
 * piece is requested ahead of its use, the next panel's rows for A and
 * PREFETCH_ROWS rows ahead for B, so the loads overlap instead of each waiting
 * on memory. */
#define PREFETCH_ROWS 4

static void prefetch_span(const void *p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + off);
}

void kn_gemm_pack_a(float *dst, const float *a, int64_t lda, int trans, int64_t rows, int64_t kc) {
    for (int64_t p = 0; p < rows; p += MR, dst += MR * kc) {
        int64_t n = rows - p < MR ? rows - p : MR;
        if (trans) {
            for (int64_t k = 0; k < kc; k++)
                for (int64_t i = 0; i < MR; i++) dst[k * MR + i] = i < n ? a[k * lda + p + i] : 0.0f;
        } else if (n == MR) { /* rows walked together: contiguous stores, MR sequential read streams */
            for (int64_t i = 0; p + MR + i < rows && i < MR; i++)
                prefetch_span(a + (p + MR + i) * lda, (size_t)kc * sizeof(float)); /* the next panel's rows */
            for (int64_t k = 0; k < kc; k++)
                for (int64_t i = 0; i < MR; i++) dst[k * MR + i] = a[(p + i) * lda + k];
        } else {
            for (int64_t i = 0; i < MR; i++)
                for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = i < n ? a[(p + i) * lda + k] : 0.0f;
        }
    }
}

/* dst[j][i] = r[i][j] for a VL x VL block held in registers (dst rows ldd
 * apart): the in-register transposes of 16x16 (AVX-512) and 8x8 (AVX2) floats. */
#if VL > 1
static inline void transpose_store(vec r[VL], float *dst, int64_t ldd) {
#if VL == 16
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { /* interleave row pairs */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* then pairs of pairs: r[i + c] = rows i..i+3 of column 4l + c */
        for (int h = 0; h < 2; h++) {
            __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + h + 2]);
            r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }
    /* r[4q + c] now holds, in 128-bit lane l, row group q's column 4l + c:
     * gather the lanes across the four groups */
    for (int c = 0; c < 4; c++) {
        __m512 a0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), a1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 b0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), b1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a0, b0, 0x88);      /* column c */
        t[4 + c] = _mm512_shuffle_f32x4(a1, b1, 0x88);  /* column 4 + c */
        t[8 + c] = _mm512_shuffle_f32x4(a0, b0, 0xdd);  /* column 8 + c */
        t[12 + c] = _mm512_shuffle_f32x4(a1, b1, 0xdd); /* column 12 + c */
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, t[i]);
#else
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) {
        _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[4 + c], 0x20));
        _mm256_storeu_ps(dst + (4 + c) * ldd, _mm256_permute2f128_ps(r[c], r[4 + c], 0x31));
    }
#endif
}

/* VL bf16 values widened to floats (bf16 is the top half of an f32). */
static inline vec load_bf16(const uint16_t *p) {
#if VL == 16
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16));
#else
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)p)), 16));
#endif
}
#endif

/* dst[j][i] = src[i][j] for a VL x VL block of floats (row strides lds, ldd). */
static inline void transpose_block(const float *src, int64_t lds, float *dst, int64_t ldd) {
#if VL > 1
    vec r[VL];
    for (int i = 0; i < VL; i++) r[i] = VLOAD(src + i * lds);
    transpose_store(r, dst, ldd);
#else
    dst[0] = src[0];
#endif
}

#define PACK_CHUNK 256 /* k values widened at a time per weight row */

/* Row k of a row-major B into every panel: B is read in its own order (im2col
 * columns are too big for L2, and sequential reads are the ones the hardware
 * prefetches). */
static void pack_b_row(float *dst, const char *row, kn_dtype dtype, float scale, int64_t kc, int64_t cols) {
    for (int64_t p = 0; p < cols; p += NR, dst += NR * kc) {
        int64_t nc = cols - p < NR ? cols - p : NR;
        if (dtype == KN_F32 && scale == 1.0f) /* activations: a plain copy */
            for (int64_t j = 0; j < nc; j++) dst[j] = ((const float *)row)[p + j];
        else
            kn_to_f32(dst, row + (size_t)p * kn_dtype_size(dtype), dtype, (size_t)nc, scale);
        for (int64_t j = nc; j < NR; j++) dst[j] = 0.0f;
    }
}

void kn_gemm_pack_b(float *dst, const void *b, kn_dtype dtype, float scale, int64_t ldb, int trans, int64_t kc,
                    int64_t cols) {
    size_t esz = kn_dtype_size(dtype);
    const char *src = b;
    if (!trans) {
        for (int64_t k = 0; k < kc; k++)
            pack_b_row(dst + k * NR, src + (size_t)k * (size_t)ldb * esz, dtype, scale, kc, cols);
        return;
    }
    /* column j of a panel is row p + j of a [N, K] weight: TB values of each
     * row are widened into a small tile, which is then written out k-major
     * with contiguous stores (writing each row down the panel's columns, a
     * cache line per value, was the whole cost of a few-row linear) */
    enum { TB = 128 };
    float tile[NR][TB];
    for (int64_t p = 0; p < cols; p += NR, dst += NR * kc) {
        int64_t nc = cols - p < NR ? cols - p : NR;
#if VL > 1
        if (dtype == KN_BF16 && scale == 1.0f && nc == NR && kc % VL == 0) {
            /* bf16 weights (the usual case): widened in registers on their way
             * through the transpose, no tile between */
            const uint16_t *w = (const uint16_t *)src + (size_t)p * (size_t)ldb;
            for (int64_t j = NR; j < 2 * NR && p + j < cols; j++) /* the next panel's rows */
                prefetch_span(w + (size_t)j * (size_t)ldb, (size_t)kc * 2);
            for (int64_t k = 0; k < kc; k += VL)
                for (int j = 0; j < NR; j += VL) {
                    vec r[VL];
                    for (int i = 0; i < VL; i++) r[i] = load_bf16(w + (size_t)(j + i) * (size_t)ldb + (size_t)k);
                    transpose_store(r, dst + k * NR + j, NR);
                }
            continue;
        }
#endif
        for (int64_t k0 = 0; k0 < kc; k0 += TB) {
            int64_t n = kc - k0 < TB ? kc - k0 : TB;
            for (int64_t j = 0; j < nc; j++) {
                const char *row = src + ((size_t)(p + j) * (size_t)ldb + (size_t)k0) * esz;
                if (k0 == 0 && p + j + PREFETCH_ROWS < cols)
                    prefetch_span(src + (size_t)(p + j + PREFETCH_ROWS) * (size_t)ldb * esz, (size_t)kc * esz);
                kn_to_f32(tile[j], row, dtype, (size_t)n, scale);
            }
            for (int64_t j = nc; j < NR; j++) memset(tile[j], 0, sizeof tile[j]);
            int64_t k = 0;
            for (; k + VL <= n; k += VL)
                for (int j = 0; j < NR; j += VL) transpose_block(&tile[j][k], TB, dst + (k0 + k) * NR + j, NR);
            for (; k < n; k++)
                for (int64_t j = 0; j < NR; j++) dst[(k0 + k) * NR + j] = tile[j][k];
        }
    }
}

#if KN_GEMM_BF16
/* ---- bf16 pairs --------------------------------------------------------- */

/* 32 floats rounded to bf16 (to nearest even), as 16 pairs of consecutive
 * values; the float lanes only carry the pairs' bits. */
static inline __m512 pairs_of(const float *p) {
    return (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
}

/* d[t] = pair(r[2t], r[2t + 1]) for a row of K floats; an odd K's last pair
 * is padded with zero. */
static void row_to_pairs(float *d, const float *r, int64_t K) {
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) _mm512_storeu_ps(d + k / 2, pairs_of(r + k));
    if (k < K) {
        float t[32] = {0};
        memcpy(t, r + k, (size_t)(K - k) * sizeof(float));
        _mm512_mask_storeu_ps(d + k / 2, (__mmask16)((1u << ((K - k + 1) / 2)) - 1), pairs_of(t));
    }
}

/* M rows of K floats as rows of (K + 1) / 2 pairs. */
static void rows_to_pairs(float *dst, const float *x, int64_t M, int64_t K) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) row_to_pairs(dst + m * ((K + 1) / 2), x + m * K, K);
}

/* 16 pairs (lo[i], hi[i]) rounded to bf16. */
static inline __m512 pairs16(__m512 lo, __m512 hi) {
    __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_castsi512_ps(_mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
}

void kn_gemm_pack_a_pairs(float *dst, const float *a, int64_t lda, int trans, int64_t rows, int64_t kn) {
    int64_t kcp = (kn + 1) / 2;
    for (int64_t p = 0; p < rows; p += MR, dst += MR * kcp) {
        int n = rows - p < MR ? (int)(rows - p) : MR;
        if (trans) { /* A(i, k) = a[k*lda + i]: a pair is two rows of a, the panel's rows side by side */
            __mmask16 m = (__mmask16)((1u << n) - 1);
            for (int64_t t = 0; t < kcp; t++) {
                __m512 lo = _mm512_maskz_loadu_ps(m, a + 2 * t * lda + p);
                __m512 hi = 2 * t + 1 < kn ? _mm512_maskz_loadu_ps(m, a + (2 * t + 1) * lda + p) : _mm512_setzero_ps();
                _mm512_mask_storeu_ps(dst + t * MR, (__mmask16)((1u << MR) - 1), pairs16(lo, hi));
            }
            continue;
        }
        /* A(i, k) = a[i*lda + k]: 16 pairs of each row, then written down the panel */
        float tmp[MR][16];
        for (int64_t t0 = 0; t0 < kcp; t0 += 16) {
            int64_t c = kn - 2 * t0 < 32 ? kn - 2 * t0 : 32; /* values of this chunk */
            __mmask16 m0 = (__mmask16)(c >= 16 ? 0xffffu : (1u << c) - 1);
            __mmask16 m1 = (__mmask16)(c >= 32 ? 0xffffu : c > 16 ? (1u << (c - 16)) - 1 : 0);
            for (int i = 0; i < MR; i++) {
                const float *r = a + (p + i) * lda + 2 * t0;
                __m512 lo = i < n ? _mm512_maskz_loadu_ps(m0, r) : _mm512_setzero_ps();
                __m512 hi = i < n ? _mm512_maskz_loadu_ps(m1, r + 16) : _mm512_setzero_ps();
                _mm512_storeu_ps(tmp[i], (__m512)_mm512_cvtne2ps_pbh(hi, lo));
            }
            for (int64_t e = 0; e < 16 && t0 + e < kcp; e++)
                for (int i = 0; i < MR; i++) dst[(t0 + e) * MR + i] = tmp[i][e];
        }
    }
}

/* B panels of pairs from a row-major B [K, N] (rows ldb apart), b at the
 * block's first row: dst[p][t][j] = pair(B(2t, p*NR + j), B(2t + 1, ..)) for
 * kcp pairs, zero past kn rows and cols columns. */
static void pack_b_pairs_rows(float *dst, const float *b, int64_t ldb, int64_t kcp, int64_t kn, int64_t cols) {
    for (int64_t p = 0; p < cols; p += NR, dst += NR * kcp)
        for (int j = 0; j < NR; j += VL) {
            int64_t n = cols - p - j < VL ? cols - p - j : VL;
            __mmask16 m = (__mmask16)(n <= 0 ? 0 : n >= VL ? 0xffffu : (1u << n) - 1);
            for (int64_t t = 0; t < kcp; t++) {
                const float *r = b + 2 * t * ldb + p + j;
                __m512 lo = 2 * t < kn ? _mm512_maskz_loadu_ps(m, r) : _mm512_setzero_ps();
                __m512 hi = 2 * t + 1 < kn ? _mm512_maskz_loadu_ps(m, r + ldb) : _mm512_setzero_ps();
                _mm512_storeu_ps(dst + t * NR + j, pairs16(lo, hi));
            }
        }
}

void kn_gemm_panel_pairs(float *dst, const float *s, int64_t rows) {
    pack_b_pairs_rows(dst, s, NR, (rows + 1) / 2, rows, NR);
}

void kn_gemm_micro_bf16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int acc,
                        const float *cscale, const float *bias, int mr, int nr) {
    micro_tile(&micro_bf16, kc, a, b, c, ldc, acc, cscale, bias, mr, nr);
}

/* Stored bf16 rows (unscaled, pairs aligned) are copied as they are: a pair
 * is a 32-bit unit of the row, so the panel is the rows' 32-bit transpose;
 * other dtypes are widened (and scaled) into a tile and rounded to pairs
 * there. */
void kn_gemm_pack_b_pairs(float *dst, const void *b, kn_dtype dtype, float scale, int64_t ldb, int64_t kcp, int64_t kn,
                          int64_t cols) {
    enum { TB = 128 }; /* k values a tile */
    size_t esz = kn_dtype_size(dtype);
    const char *src = b;
    int raw = dtype == KN_BF16 && scale == 1.0f && ldb % 2 == 0 && kn == 2 * kcp && kcp % VL == 0;
    float tile[NR][TB], pt[NR][TB / 2];
    for (int64_t p = 0; p < cols; p += NR, dst += NR * kcp) {
        int64_t nc = cols - p < NR ? cols - p : NR;
        if (raw && nc == NR) {
            const char *w = src + (size_t)p * (size_t)ldb * 2;
            for (int64_t j = NR; j < 2 * NR && p + j < cols; j++) /* the next panel's rows */
                prefetch_span(w + (size_t)j * (size_t)ldb * 2, (size_t)kn * 2);
            for (int64_t t = 0; t < kcp; t += VL)
                for (int j = 0; j < NR; j += VL) {
                    vec r[VL];
                    for (int i = 0; i < VL; i++) r[i] = _mm512_loadu_ps(w + ((size_t)(j + i) * (size_t)ldb + 2 * (size_t)t) * 2);
                    transpose_store(r, dst + t * NR + j, NR);
                }
            continue;
        }
        for (int64_t k0 = 0; k0 < 2 * kcp; k0 += TB) {
            int64_t n = kn - k0 < TB ? (kn > k0 ? kn - k0 : 0) : TB;
            int64_t np = (2 * kcp - k0 < TB ? 2 * kcp - k0 : TB) / 2; /* pairs of this tile */
            for (int64_t j = 0; j < NR; j++) {
                if (j < nc && n > 0) {
                    const char *row = src + ((size_t)(p + j) * (size_t)ldb + (size_t)k0) * esz;
                    if (k0 == 0 && p + j + PREFETCH_ROWS < cols)
                        prefetch_span(src + (size_t)(p + j + PREFETCH_ROWS) * (size_t)ldb * esz, (size_t)kn * esz);
                    kn_to_f32(tile[j], row, dtype, (size_t)n, scale);
                }
                int64_t from = j < nc ? n : 0;
                memset(tile[j] + from, 0, (size_t)(TB - from) * sizeof(float));
                for (int64_t k = 0; k < TB; k += 32) _mm512_storeu_ps(pt[j] + k / 2, pairs_of(tile[j] + k));
            }
            int64_t t = 0;
            for (; t + VL <= np; t += VL)
                for (int j = 0; j < NR; j += VL) transpose_block(&pt[j][t], TB / 2, dst + (k0 / 2 + t) * NR + j, NR);
            for (; t < np; t++)
                for (int64_t j = 0; j < NR; j++) dst[(k0 / 2 + t) * NR + j] = pt[j][t];
        }
    }
}
#endif

/* ---- blocked, threaded GEMM --------------------------------------------- */

/* C[M, N] (ldc) = beta C + A[M, K] (lda) . B + bias[N], B as in kn_gemm_pack_b. */
typedef struct gemm_job {
    int64_t M, N, K;
    const float *a;
    int64_t lda;
    const void *b;
    kn_dtype b_type;
    float b_scale;
    int64_t ldb;
    int trans_b;
    int round_b;       /* round widened B to bf16 values (BF16 precision without bf16 units) */
    float beta;        /* 0 or 1 here; other values are applied to C beforehand */
    const float *bias; /* [N] or NULL */
    float *c;
    int64_t ldc;
    float *bpack; /* per thread: KC x min(N, NC) rounded to NR, set by gemm_run */
    float *apack; /* per thread: MC x KC */
    /* bf16 pairs (KN_GEMM_BF16): a holds x as pairs and M, K, lda count
     * pairs; B keeps its own layout, kvals values a row */
    int pairs;
    int64_t kvals;
    const float *apacked; /* A packed whole (kn_cpu_gemm_pack_a), or NULL: packed per block */
} gemm_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* dst = src rounded to bf16 values (in place allowed), through a bf16 chunk:
 * both conversions are vector loops, 3x faster than rounding one by one. */
static void round_to_bf16(float *dst, const float *src, int64_t n) {
    uint16_t tmp[PACK_CHUNK];
    for (int64_t i = 0; i < n; i += PACK_CHUNK) {
        size_t len = (size_t)min64(PACK_CHUNK, n - i);
        kn_from_f32(tmp, KN_BF16, src + i, len);
        kn_to_f32(dst + i, tmp, KN_BF16, len, 1.0f);
    }
}

void kn_gemm_round_bf16(float *x, int64_t n) { round_to_bf16(x, x, n); }

static int64_t bpack_floats(int64_t N, int64_t K) { return kn_gemm_packed_b_size(min64(K, KC), min64(N, NC)); }
static int64_t apack_floats(int64_t M, int64_t K) { return kn_gemm_packed_a_size(min64(M, MC), min64(K, KC)); }

static const char *b_at(const gemm_job *g, int64_t k, int64_t n) {
    if (g->pairs) k *= 2;
    size_t off = g->trans_b ? (size_t)n * (size_t)g->ldb + (size_t)k : (size_t)k * (size_t)g->ldb + (size_t)n;
    return (const char *)g->b + off * kn_dtype_size(g->b_type);
}

/* Panels of B's rows pc..pc+kc (packed elements) and columns n0..n0+nc. */
static void pack_b_block(const gemm_job *g, float *dst, int64_t pc, int64_t kc, int64_t n0, int64_t nc) {
#if KN_GEMM_BF16
    if (g->pairs) {
        int64_t kn = min64(2 * kc, g->kvals - 2 * pc);
        if (g->trans_b) kn_gemm_pack_b_pairs(dst, b_at(g, pc, n0), g->b_type, g->b_scale, g->ldb, kc, kn, nc);
        else pack_b_pairs_rows(dst, (const float *)b_at(g, pc, n0), g->ldb, kc, kn, nc); /* f32 B only */
        return;
    }
#endif
    kn_gemm_pack_b(dst, b_at(g, pc, n0), g->b_type, g->b_scale, g->ldb, g->trans_b, kc, nc);
    if (g->round_b) round_to_bf16(dst, dst, (nc + NR - 1) / NR * kc * NR);
}

static const micro_set *job_kernels(const gemm_job *g) {
#if KN_GEMM_BF16
    if (g->pairs) return &micro_bf16;
#endif
    (void)g;
    return &micro_f32;
}

/* Thread tid of nt computes its own block of C with its own packing buffers:
 * threads split N (each packs only its columns of B; A is cheap to pack twice)
 * unless N is too narrow to give each several panels, then M. No thread ever
 * waits for another, so one slowed by the rest of the machine delays only its
 * own block, and the same code runs alone inside someone else's parallel
 * region. */
static void gemm_thread(const gemm_job *g, int tid, int nt) {
    int64_t npan = (g->N + NR - 1) / NR, mpan = (g->M + MR - 1) / MR;
    int tn = npan >= 4 * nt ? nt : 1, tm = nt / tn, in = tid % tn, im = tid / tn;
    if (im >= tm) return;
    int64_t n0 = npan * in / tn * NR, n1 = min64(g->N, npan * (in + 1) / tn * NR);
    int64_t m0 = mpan * im / tm * MR, m1 = min64(g->M, mpan * (im + 1) / tm * MR);
    float *apack = g->apack + (size_t)tid * (size_t)apack_floats(g->M, g->K);
    float *bpack = g->bpack + (size_t)tid * (size_t)bpack_floats(g->N, g->K);
    const micro_set *ks = job_kernels(g);
    for (int64_t jc = n0; jc < n1; jc += NC) {
        int64_t nc = min64(NC, n1 - jc), ncp = (nc + NR - 1) / NR;
        for (int64_t pc = 0; pc < g->K; pc += KC) {
            int64_t kc = min64(KC, g->K - pc);
            pack_b_block(g, bpack, pc, kc, jc, nc);
            int acc = pc > 0 || g->beta != 0.0f;
            const float *bias = pc == 0 ? g->bias : NULL;
            for (int64_t ic = m0; ic < m1; ic += MC) {
                int64_t mc = min64(MC, m1 - ic);
                const float *ap = apack;
                if (g->apacked) ap = g->apacked + pc * ((g->M + MR - 1) / MR * MR) + ic * kc; /* as pack_a_all */
                else kn_gemm_pack_a(apack, g->a + ic * g->lda + pc, g->lda, 0, mc, kc);
                for (int64_t q = 0; q < ncp; q++)
                    for (int64_t ir = 0; ir < mc; ir += MR)
                        micro_tile(ks, kc, ap + ir * kc, bpack + q * kc * NR,
                                   g->c + (ic + ir) * g->ldc + jc + q * NR, g->ldc, acc, NULL,
                                   bias ? bias + jc + q * NR : NULL, (int)min64(MR, mc - ir),
                                   (int)min64(NR, nc - q * NR));
            }
        }
    }
}

/* C = beta C (+ bias) where the product adds nothing or beta is not 0 or 1. */
static void scale_c(const gemm_job *g, float beta, int with_bias) {
    for (int64_t m = 0; m < g->M; m++) {
        float *row = g->c + m * g->ldc;
        for (int64_t n = 0; n < g->N; n++)
            row[n] = (beta == 0.0f ? 0.0f : beta * row[n]) + (with_bias && g->bias ? g->bias[n] : 0.0f);
    }
}

/* The library's threads, or one inside someone else's parallel region. */
static int gemm_threads(void) { return omp_in_parallel() ? 1 : kn_cpu_threads(); }

/* Floats of packing buffers gemm_run needs for an M x N x K product. */
static size_t gemm_buffer_floats(int64_t M, int64_t N, int64_t K) {
    return (size_t)gemm_threads() * (size_t)(bpack_floats(N, K) + apack_floats(M, K));
}

static void gemm_run(gemm_job *g, float *buf) {
    if (g->M == 0 || g->N == 0) return;
    if (g->K == 0) {
        scale_c(g, g->beta, 1);
        return;
    }
    if (g->beta != 0.0f && g->beta != 1.0f) {
        scale_c(g, g->beta, 0);
        g->beta = 1.0f;
    }
    int nt = gemm_threads();
    g->bpack = buf;
    g->apack = buf + (size_t)nt * (size_t)bpack_floats(g->N, g->K);
    if (nt == 1) {
        gemm_thread(g, 0, 1);
        return;
    }
#pragma omp parallel num_threads(nt)
    gemm_thread(g, omp_get_thread_num(), omp_get_num_threads());
}

int kn_cpu_gemm_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int trans_b, const float *B,
                    int64_t ldb, float beta, float *C, int64_t ldc, kn_err *err) {
    size_t nf = gemm_buffer_floats(M, N, K);
    float *buf = aligned_alloc(64, (nf * sizeof(float) + 63) & ~(size_t)63);
    if (!buf) return kn_fail(err, KN_ERR_NOMEM, "gemm %lld x %lld x %lld: out of memory for packing", (long long)M,
                             (long long)N, (long long)K);
    gemm_job g = {M, N, K, A, lda, B, KN_F32, 1.0f, ldb, trans_b, 0, beta, NULL, C, ldc, NULL, NULL, 0, K, NULL};
    gemm_run(&g, buf);
    free(buf);
    return KN_OK;
}

size_t kn_cpu_gemm_packed_a_floats(int64_t M, int64_t K, int bf16) {
    return (size_t)kn_gemm_packed_a_size(M, bf16 && KN_GEMM_BF16 ? (K + 1) / 2 : K);
}

/* Each KC block of A's packed elements in turn, all M rows: the block at
 * (packed) depth pc starts pc x M-rounded-to-MR floats in, as gemm_thread
 * reads it. */
void kn_cpu_gemm_pack_a(float *dst, const float *A, int64_t lda, int64_t M, int64_t K, int bf16) {
    int64_t mp = (M + MR - 1) / MR * MR;
#if KN_GEMM_BF16
    if (bf16) {
        for (int64_t pc = 0; pc < (K + 1) / 2; pc += KC)
            kn_gemm_pack_a_pairs(dst + pc * mp, A + 2 * pc, lda, 0, M, min64(2 * KC, K - 2 * pc));
        return;
    }
#endif
    for (int64_t pc = 0; pc < K; pc += KC) kn_gemm_pack_a(dst + pc * mp, A + pc, lda, 0, M, min64(KC, K - pc));
    if (bf16) kn_gemm_round_bf16(dst, kn_gemm_packed_a_size(M, K));
}

int kn_cpu_gemm_packed(int64_t M, int64_t N, int64_t K, const float *Apacked, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc, int bf16, kn_err *err) {
    int pairs = bf16 && KN_GEMM_BF16;
    int64_t ke = pairs ? (K + 1) / 2 : K; /* packed depth */
    size_t nf = gemm_buffer_floats(M, N, ke);
    float *buf = aligned_alloc(64, (nf * sizeof(float) + 63) & ~(size_t)63);
    if (!buf) return kn_fail(err, KN_ERR_NOMEM, "gemm %lld x %lld x %lld: out of memory for packing", (long long)M,
                             (long long)N, (long long)K);
    gemm_job g = {M, N, ke, NULL, 0, B, KN_F32, 1.0f, ldb, 0, bf16 && !pairs, beta, NULL, C, ldc, NULL, NULL,
                  pairs, K, Apacked};
    gemm_run(&g, buf);
    free(buf);
    return KN_OK;
}

/* Up to this many rows (modulation and time embeddings; text encoders' and
 * DiT text streams' 20-300 tokens), a linear reads the weight once straight
 * into L1 instead of packing a 4 MB block of it: the packed-B round trip
 * through L3 costs more than it saves when B meets this few rows. */
#define SKINNY_ROWS 320

/* Floats of the buffer linear_skinny needs: x packed whole, one B panel per thread. */
static size_t skinny_floats(int64_t M, int64_t K) {
    return (size_t)kn_gemm_packed_a_size(M, K) + (size_t)gemm_threads() * (size_t)(KC * NR);
}

#define SKINNY_GROUP 4 /* NR-column panels a thread takes at once: their C rows stay in L2 across K */

/* y = x . w^T + bias for at most SKINNY_ROWS rows of x: threads take groups
 * of SKINNY_GROUP NR-column panels of the weight; for each KC block of x (in
 * L2), each panel's block is widened into an L1-sized buffer and met there by
 * every row panel of x. The weight is read once, and neither x (for a long K)
 * nor the packed weight goes round through L3. The products are the
 * micro-kernel's, block for block, as in gemm_run: a row's result does not
 * depend on how many rows came with it (sequence-parallel shards match one
 * rank bit for bit). */
static void linear_skinny(const gemm_job *g, float *buf) {
    int64_t mp = (g->M + MR - 1) / MR * MR; /* x's rows padded to whole panels: one KC block of x is mp x KC */
    float *apack = buf, *panels = buf + kn_gemm_packed_a_size(g->M, g->K);
    const micro_set *ks = job_kernels(g);
    for (int64_t pc = 0; pc < g->K; pc += KC)
        kn_gemm_pack_a(apack + pc * mp, g->a + pc, g->lda, 0, g->M, min64(KC, g->K - pc));
    int64_t npan = (g->N + NR - 1) / NR, ngroups = (npan + SKINNY_GROUP - 1) / SKINNY_GROUP;
#pragma omp parallel for schedule(static) num_threads(gemm_threads())
    for (int64_t grp = 0; grp < ngroups; grp++) {
        float *bp = panels + (size_t)omp_get_thread_num() * (size_t)(KC * NR);
        int64_t q1 = min64(npan, (grp + 1) * SKINNY_GROUP);
        for (int64_t pc = 0; pc < g->K; pc += KC) {
            int64_t kc = min64(KC, g->K - pc);
            for (int64_t q = grp * SKINNY_GROUP; q < q1; q++) {
                int64_t n0 = q * NR, nr = min64(NR, g->N - n0);
                pack_b_block(g, bp, pc, kc, n0, nr);
                const float *bias = pc == 0 && g->bias ? g->bias + n0 : NULL;
                for (int64_t ir = 0; ir < g->M; ir += MR) {
                    int mr = (int)min64(MR, g->M - ir);
                    const float *a = apack + pc * mp + ir * kc;
                    float *c = g->c + ir * g->ldc + n0;
                    micro_tile(ks, kc, a, bp, c, g->ldc, pc > 0, NULL, bias, mr, (int)nr);
                }
            }
        }
    }
}

/* ---- linear ------------------------------------------------------------- */

int kn_cpu_weight_f32(kn_ctx *ctx, kn_tensor *out, const kn_tensor *w) {
    /* ops.c checks tensors, not the context: the scratch must be host memory */
    if (ctx->device != KN_DEV_CPU)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "weight %s: CPU kernels need a CPU context (scratch arena)",
                       w->name ? w->name : "tensor");
    KN_TRY(kn_arena_tensor(ctx->scratch, out, KN_F32, w->ndim, w->ne, &ctx->err));
    kn_to_f32(out->data, w->data, w->dtype, (size_t)kn_tensor_numel(w), w->scale);
    out->name = w->name;
    return KN_OK;
}

/* BF16 precision: with bf16 dot-product units, x becomes bf16 pairs (the
 * weights are paired as their panels are packed); without them, the same
 * products (bf16 x bf16 is exact in f32) go through the f32 GEMM on rounded
 * activations and weights (stored bf16 weights without a scale already are). */
static int bf16_inputs(kn_ctx *ctx, gemm_job *g) {
    int64_t M = g->M, K = g->K;
#if KN_GEMM_BF16
    int64_t kp = (K + 1) / 2;
    float *xp = kn_arena_alloc(ctx->scratch, (size_t)M * (size_t)kp * 4, &ctx->err);
    if (!xp) return ctx->err.code;
    rows_to_pairs(xp, g->a, M, K);
    g->a = xp;
    g->K = g->lda = kp;
    g->pairs = 1;
#else
    float *xr = kn_arena_alloc(ctx->scratch, (size_t)M * (size_t)K * 4, &ctx->err);
    if (!xr) return ctx->err.code;
    const float *xd = g->a;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) round_to_bf16(xr + m * K, xd + m * K, K);
    g->a = xr;
    g->round_b = !(g->b_type == KN_BF16 && g->b_scale == 1.0f);
#endif
    return KN_OK;
}

/* A linear's GEMM, skinny or blocked, with its buffer from the scratch arena. */
static int linear_run(kn_ctx *ctx, gemm_job *g) {
    int skinny = g->M <= SKINNY_ROWS;
    size_t nf = skinny ? skinny_floats(g->M, g->K) : gemm_buffer_floats(g->M, g->N, g->K);
    float *buf = kn_arena_alloc(ctx->scratch, nf * 4, &ctx->err);
    if (!buf) return ctx->err.code;
    if (skinny) linear_skinny(g, buf);
    else gemm_run(g, buf);
    return KN_OK;
}

int kn_cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias) {
    int64_t M = kn_tensor_rows(x), N = w->ne[0], K = w->ne[1];
    size_t mark = kn_arena_mark(ctx->scratch);
    const float *bd = NULL;
    kn_tensor bf;
    int rc = bias ? kn_cpu_weight_f32(ctx, &bf, bias) : KN_OK;
    if (rc == KN_OK && bias) bd = bf.data;
    gemm_job g = {M, N, K, x->data, K, w->data, w->dtype, w->scale, K, 1, 0, 0.0f, bd, y->data, N, NULL, NULL, 0, K,
                  NULL};
    if (rc == KN_OK && ctx->precision == KN_PREC_BF16) rc = bf16_inputs(ctx, &g);
    if (rc == KN_OK) rc = linear_run(ctx, &g);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

void kn_ref_linear(float *y, const float *x, const float *w, const float *bias, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            double s = bias ? bias[n] : 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)x[m * K + k] * w[n * K + k];
            y[m * N + n] = (float)s;
        }
    }
}
