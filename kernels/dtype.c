#include "kernels/dtype.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

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

static float f8_lut[2][256];
static pthread_once_t f8_lut_once = PTHREAD_ONCE_INIT;
static void f8_lut_init(void) {
    for (int i = 0; i < 256; i++) {
        f8_lut[0][i] = kn_f8e4m3_to_f32((uint8_t)i);
        f8_lut[1][i] = kn_f8e5m2_to_f32((uint8_t)i);
    }
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
        for (size_t i = 0; i < n; i++) dst[i] = kn_f16_to_f32(s[i]) * scale;
        return;
    }
    case KN_F8_E4M3:
    case KN_F8_E5M2: {
        pthread_once(&f8_lut_once, f8_lut_init);
        const float *l = f8_lut[t == KN_F8_E5M2];
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = l[s[i]] * scale;
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
