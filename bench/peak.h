/* Machine peak: tiny kernels that do nothing but independent FMA chains, so
 * the measured rate is what the FMA (or bf16 dot-product) units can issue.
 * Each kernel is compiled for its ISA with a target attribute and only run
 * when the CPU and OS enable that ISA, so the bench works on any x86-64. */
#ifndef KN_BENCH_PEAK_H
#define KN_BENCH_PEAK_H

typedef enum peak_kind {
    PEAK_FMA_AVX2,   /* vfmadd231ps ymm: 16 flops per instruction */
    PEAK_FMA_AVX512, /* vfmadd231ps zmm: 32 flops per instruction */
    PEAK_DP_BF16,    /* vdpbf16ps zmm: 32 bf16 pairs, 64 flops per instruction */
    PEAK_KINDS
} peak_kind;

const char *peak_name(peak_kind k);
/* 1 when this CPU can run the kernel. */
int peak_supported(peak_kind k);
/* Best-of-a-few GFLOP/s of the kernel run by `threads` OpenMP threads at once. */
double peak_gflops(peak_kind k, int threads);

#endif
