/* CPU backend: the kernels behind kernels/ops.h.
 *
 * kn_cpu_<op> take the same arguments as kn_<op>, already checked by ops.c
 * (shapes agree, activations F32 and contiguous unless the op allows views),
 * so they only compute.
 * The raw GEMM is shared by every op that reduces to a matrix product
 * (linear layers, attention tiles, convolutions via im2col).
 * Naive reference twins (kn_ref_*) are the readable math; tests compare
 * the fast kernels against them. */
#ifndef KN_CPU_OPS_H
#define KN_CPU_OPS_H

#include "kernels/ops.h"

/* C[M,N] = A[M,K] . op(B) + beta * C, row-major, F32. op(B) = B[K,N] when
 * !trans_b, B[N,K]^T when trans_b. Threads internally (call from one thread),
 * or single-threaded when called inside an OpenMP parallel region. */
int kn_cpu_gemm_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int trans_b,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc, kn_err *err);
/* A GEMM whose A is packed once and met by many B (a convolution's weight
 * panel and its pixel tiles): C[M,N] = A[M,K] . B[K,N] + beta * C with B
 * row-major F32 (rows ldb apart). With bf16, A and B are rounded to bf16 and
 * the products accumulated in f32 (bf16 pairs on vdpbf16ps where the build
 * has AVX512_BF16, the f32 kernel on the rounded values elsewhere). Threads
 * as kn_cpu_gemm_f32. */
size_t kn_cpu_gemm_packed_a_floats(int64_t M, int64_t K, int bf16);
void kn_cpu_gemm_pack_a(float *dst, const float *A, int64_t lda, int64_t M, int64_t K, int bf16);
int kn_cpu_gemm_packed(int64_t M, int64_t N, int64_t K, const float *Apacked, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc, int bf16, kn_err *err);

/* w widened to an F32 tensor in ctx->scratch (the backend's twin of
 * kn_weight_f32: callers have checked that w is contiguous CPU floats). */
int kn_cpu_weight_f32(kn_ctx *ctx, kn_tensor *out, const kn_tensor *w);

int kn_cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias);
/* y[M, row0_i : row0_i + n_i] += scale_i (x[M, K] @ down_i^T) @ up_i^T: the
 * adapter terms of kn_linear_lora (y already holds x @ w^T + bias). */
int kn_cpu_lora_accumulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_lora_adapter *ad, int n);
int kn_cpu_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int kn_cpu_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b,
                     float eps);
int kn_cpu_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode);
int kn_cpu_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                     const kn_attention_args *a);
int kn_cpu_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order);
int kn_cpu_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order);
int kn_cpu_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
int kn_cpu_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int kn_cpu_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op);
int kn_cpu_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t);
int kn_cpu_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift, const kn_tensor *scale);
int kn_cpu_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate);

/* Naive references (single-threaded, obviously correct). */
void kn_ref_linear(float *y, const float *x, const float *w, const float *bias, int64_t M, int64_t N, int64_t K);
/* Attention in double, same arguments as kn_cpu_attention (F32 CPU tensors,
 * q/k/v read through their strides); fills a->lse when given. */
void kn_ref_attention(kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                      const kn_attention_args *a);

#endif
