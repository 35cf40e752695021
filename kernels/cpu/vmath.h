/* Vectorisable float math for the CPU kernels: branch-free forms GCC turns
 * into AVX-512 code inside `omp simd` loops (libm's expf/tanhf stay scalar).
 * kn_expf: Cody-Waite reduction + Cephes polynomial, ~1 ulp, 0 below -87.3.
 * kn_tanhf: from kn_expf; absolute error ~1e-7. */
#ifndef KN_VMATH_H
#define KN_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float kn_expf(float x) {
    int underflow = x < -87.3f;
    x = x > 88.3f ? 88.3f : (x < -87.3f ? -87.3f : x);
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln2 split: hi exact in float */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* n is in [-126, 127] unless x is NaN; a NaN converted to int is undefined
     * (UBSan stops on the shift of the result), and p is NaN then anyway. */
    int32_t bits = ((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return underflow ? 0.0f : p * s;
}

static inline float kn_tanhf(float x) {
    float e = kn_expf(-2.0f * fabsf(x));
    float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

#endif
