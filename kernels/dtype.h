/* kn_dtype: element types and exact conversions.
 *
 * Weights keep the dtype they were stored in (safetensors names in
 * kn_dtype_from_st). Widening to f32 is exact for every float type; narrowing
 * from f32 rounds to nearest-even and, for fp8, saturates to the largest finite
 * value (e4m3fn has no infinity) the way torch's .to(float8_*) does for
 * finite inputs. */
#ifndef KN_DTYPE_H
#define KN_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum kn_dtype {
    KN_F32 = 0,
    KN_F16,
    KN_BF16,
    KN_F8_E4M3, /* float8_e4m3fn: bias 7, no inf, 0x7f/0xff are NaN */
    KN_F8_E5M2, /* float8_e5m2: bias 15, IEEE-like with inf */
    KN_F64,
    KN_I64,
    KN_I32,
    KN_I16,
    KN_I8,
    KN_U8,
    KN_BOOL,
    KN_DTYPE_COUNT
} kn_dtype;

size_t kn_dtype_size(kn_dtype t);
const char *kn_dtype_name(kn_dtype t);     /* "F32", "BF16", ... (safetensors spelling) */
int kn_dtype_from_st(const char *name, kn_dtype *out); /* 0 on success */
int kn_dtype_is_float(kn_dtype t);

float kn_f16_to_f32(uint16_t h);
uint16_t kn_f32_to_f16(float f);
static inline float kn_bf16_to_f32(uint16_t b) {
    union { uint32_t u; float f; } v = { (uint32_t)b << 16 };
    return v.f;
}
uint16_t kn_f32_to_bf16(float f);
float kn_f8e4m3_to_f32(uint8_t x);
float kn_f8e5m2_to_f32(uint8_t x);
uint8_t kn_f32_to_f8e4m3(float f);
uint8_t kn_f32_to_f8e5m2(float f);

/* dst[i] = (float)src[i] * scale for n elements of a float or integer dtype. */
void kn_to_f32(float *dst, const void *src, kn_dtype src_type, size_t n, float scale);
/* dst[i] = src[i] rounded to dst_type (float dtypes only). */
void kn_from_f32(void *dst, kn_dtype dst_type, const float *src, size_t n);
/* The index of the first NaN or infinity among n elements, -1 when all are
 * finite (and for integer dtypes). Bit tests, blockwise, so a model's
 * weights are checked at load for about the cost of reading them. */
int64_t kn_first_nonfinite(const void *src, kn_dtype type, size_t n);

#endif
