#include "kernels/dtype.h"

#include <math.h>
#include <string.h>

#ifdef __F16C__
#include <immintrin.h>
#endif

static const struct { const char *name; size_t size; } dtype_info[KN_DTYPE_COUNT] = {
    [KN_F32] = {"F32", 4},     [KN_F16] = {"F16", 2},       [KN_BF16] = {"BF16", 2},
    [KN_F8_E4M3] = {"F8_E4M3", 1}, [KN_F8_E5M2] = {"F8_E5M2", 1}, [KN_F64] = {"F64", 8},
    [KN_I64] = {"I64", 8},     [KN_I32] = {"I32", 4},       [KN_I16] = {"I16", 2},
    [KN_I8] = {"I8", 1},       [KN_U8] = {"U8", 1},         [KN_BOOL] = {"BOOL", 1},
};

size_t kn_dtype_size(kn_dtype t) { return (unsigned)t < KN_DTYPE_COUNT ? dtype_info[t].size : 0; }
const char *kn_dtype_name(kn_dtype t) { return (unsigned)t < KN_DTYPE_COUNT ? dtype_info[t].name : "?"; }

int kn_dtype_from_st(const char *name, kn_dtype *out) {
    for (int i = 0; i < KN_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (kn_dtype)i;
            return 0;
        }
    }
    return -1;
}

int kn_dtype_is_float(kn_dtype t) {
    return t == KN_F32 || t == KN_F16 || t == KN_BF16 || t == KN_F8_E4M3 || t == KN_F8_E5M2 ||
           t == KN_F64;
}

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t kn_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float kn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 is exact in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Generic round-to-nearest-even narrowing of a finite f32 to a small float format
 * with `mbits` mantissa bits and exponent bias `bias`. Returns the magnitude code
 * (no sign) or a value above max_code on overflow. Subnormals handled exactly. */
static uint32_t narrow_mag(float a, int mbits, int bias) {
    if (a == 0.0f) return 0;
    int e;
    float m = frexpf(a, &e);   /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1 + bias;    /* biased exponent for 1.xxx form */
    if (exp <= 0) {            /* subnormal: value / 2^(1-bias-mbits) */
        /* subnormal step is 2^(1 - bias - mbits); rounding up into the first
         * normal yields the right code too */
        return (uint32_t)nearbyintf(ldexpf(a, mbits + bias - 1));
    }
    float frac = ldexpf(m * 2.0f - 1.0f, mbits); /* mantissa bits as a real number */
    uint32_t man = (uint32_t)nearbyintf(frac);
    if (man == (1u << mbits)) { man = 0; exp++; }
    return ((uint32_t)exp << mbits) | man;
}

uint16_t kn_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if (isnan(f)) return sign | 0x7e00u;
    float a = fabsf(f);
    if (isinf(a)) return sign | 0x7c00u;
    uint32_t mag = narrow_mag(a, 10, 15);
    if (mag >= 0x7c00u) return sign | 0x7c00u; /* overflow to inf, as IEEE */
    return sign | (uint16_t)mag;
}

float kn_f8e4m3_to_f32(uint8_t x) {
    float sign = (x & 0x80) ? -1.0f : 1.0f;
    int exp = (x >> 3) & 0xf, man = x & 7;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) return sign * ldexpf((float)man, -9);
    return sign * ldexpf(1.0f + man / 8.0f, exp - 7);
}

float kn_f8e5m2_to_f32(uint8_t x) { return kn_f16_to_f32((uint16_t)((uint16_t)x << 8)); }

uint8_t kn_f32_to_f8e4m3(float f) {
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f)) return 0x7f | sign;
    uint32_t mag = isinf(f) ? 0x7e : narrow_mag(fabsf(f), 3, 7);
    if (mag > 0x7e) mag = 0x7e; /* saturate to 448 */
    return sign | (uint8_t)mag;
}

uint8_t kn_f32_to_f8e5m2(float f) {
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f)) return 0x7e | sign;
    if (isinf(f)) return 0x7c | sign;
    uint32_t mag = narrow_mag(fabsf(f), 2, 15);
    if (mag > 0x7b) mag = 0x7b; /* saturate to 57344 */
    return sign | (uint8_t)mag;
}

void kn_to_f32(float *dst, const void *src, kn_dtype t, size_t n, float scale) {
    switch (t) {
    case KN_F32: {
        const float *s = src;
        if (scale == 1.0f) memcpy(dst, s, n * sizeof(float));
        else for (size_t i = 0; i < n; i++) dst[i] = s[i] * scale;
        return;
    }
    case KN_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = kn_bf16_to_f32(s[i]) * scale;
        return;
    }
    case KN_F16: {
        const uint16_t *s = src;
        size_t i = 0;
#ifdef __F16C__ /* fp16 checkpoints widen every weight through here: eight at a time */
        for (const __m256 vscale = _mm256_set1_ps(scale); i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))), vscale));
#endif
        for (; i < n; i++) dst[i] = kn_f16_to_f32(s[i]) * scale;
        return;
    }
    case KN_F8_E4M3:
    case KN_F8_E5M2: {
        /* fp8 checkpoints widen every weight through here (GEMM packing), so
         * there is no table lookup: an fp8 code is a half float's top bits
         * (e5m2: exactly; e4m3fn: shifted, the value times 2^-8), widened by
         * F16C eight at a time; the scalar path rebiases the exponent and
         * reads a subnormal code m as 1.m at the smallest normal exponent
         * minus that power of two (no f32 subnormal, slow on some CPUs).
         * e4m3fn's all-ones codes are NaN. Same values as kn_f8e4m3_to_f32 /
         * kn_f8e5m2_to_f32, times scale rounded once. */
        const uint8_t *s = src;
        const int e5 = t == KN_F8_E5M2;
        size_t i = 0;
#ifdef __F16C__
        const __m256 vscale = _mm256_set1_ps(scale), e4_unscale = _mm256_set1_ps(256.0f), vnan = _mm256_set1_ps(NAN);
        const __m128i low7 = _mm_set1_epi16(0x7f), signbit = _mm_set1_epi16(0x80);
        for (; i + 8 <= n; i += 8) {
            __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(s + i)));
            __m256 v;
            if (e5) {
                v = _mm256_cvtph_ps(_mm_slli_epi16(b, 8));
            } else {
                __m128i mag = _mm_and_si128(b, low7);
                __m128i h = _mm_or_si128(_mm_slli_epi16(mag, 7), _mm_slli_epi16(_mm_and_si128(b, signbit), 8));
                v = _mm256_mul_ps(_mm256_cvtph_ps(h), e4_unscale);
                __m256 nan = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, low7)));
                v = _mm256_blendv_ps(v, vnan, nan);
            }
            _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, vscale));
        }
#endif
        const uint32_t mbits = e5 ? 2 : 3, rebias = e5 ? 112 : 120, special = e5 ? 0x7cu : 0x7fu;
        const float min_normal = e5 ? 0x1p-14f : 0x1p-6f;
        for (; i < n; i++) {
            uint32_t b = s[i], e = (b & 0x7fu) >> mbits, m = b & ((1u << mbits) - 1);
            float v = bits_f32(((e ? e : 1u) + rebias) << 23 | m << (23 - mbits)) - (e ? 0.0f : min_normal);
            uint32_t bits = f32_bits(v) | (b & 0x80u) << 24;
            if ((b & special) == special) bits = (b & 0x80u) << 24 | 0x7f800000u | (e5 ? (b & 3u) << 21 : 0x400000u);
            dst[i] = bits_f32(bits) * scale;
        }
        return;
    }
    case KN_F64: { const double *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)(s[i] * scale); return; }
    case KN_I64: { const int64_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] * scale; return; }
    case KN_I32: { const int32_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] * scale; return; }
    case KN_I16: { const int16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] * scale; return; }
    case KN_I8: { const int8_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] * scale; return; }
    case KN_U8:
    case KN_BOOL: { const uint8_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] * scale; return; }
    case KN_DTYPE_COUNT: break;
    }
}

void kn_from_f32(void *dst, kn_dtype t, const float *src, size_t n) {
    switch (t) {
    case KN_F32: memcpy(dst, src, n * sizeof(float)); return;
    case KN_BF16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = kn_f32_to_bf16(src[i]); return; }
    case KN_F16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = kn_f32_to_f16(src[i]); return; }
    case KN_F8_E4M3: { uint8_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = kn_f32_to_f8e4m3(src[i]); return; }
    case KN_F8_E5M2: { uint8_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = kn_f32_to_f8e5m2(src[i]); return; }
    case KN_F64: { double *d = dst; for (size_t i = 0; i < n; i++) d[i] = src[i]; return; }
    default: return; /* integer targets are not produced from f32 */
    }
}

/* Elements whose exponent bits (mask) are all ones are NaN or infinite; for
 * e4m3fn only S.1111.111 is (NaN; it has no infinity). Each block is tested
 * without branches (vectorised), then searched when it holds one. */
#define NONFINITE_SCAN(T, MASK, WANT)                                                  \
    do {                                                                               \
        const T *x = (const T *)src;                                                   \
        for (size_t b = 0; b < n; b += 4096) {                                         \
            size_t e = n - b < 4096 ? n : b + 4096;                                    \
            int any = 0;                                                               \
            for (size_t i = b; i < e; i++) any |= (x[i] & (MASK)) == (WANT);           \
            for (size_t i = b; any && i < e; i++)                                      \
                if ((x[i] & (MASK)) == (WANT)) return (int64_t)i;                      \
        }                                                                              \
    } while (0)

int64_t kn_first_nonfinite(const void *src, kn_dtype type, size_t n) {
    switch (type) {
    case KN_F32: NONFINITE_SCAN(uint32_t, 0x7f800000u, 0x7f800000u); break;
    case KN_F64: NONFINITE_SCAN(uint64_t, 0x7ff0000000000000ull, 0x7ff0000000000000ull); break;
    case KN_F16: NONFINITE_SCAN(uint16_t, 0x7c00u, 0x7c00u); break;
    case KN_BF16: NONFINITE_SCAN(uint16_t, 0x7f80u, 0x7f80u); break;
    case KN_F8_E4M3: NONFINITE_SCAN(uint8_t, 0x7fu, 0x7fu); break;
    case KN_F8_E5M2: NONFINITE_SCAN(uint8_t, 0x7cu, 0x7cu); break;
    default: break;
    }
    return -1;
}
