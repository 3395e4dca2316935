/*
 * Elementwise float32 math shared by the native kernels (lstm_cell.c, sampled_softmax.c): branch-free, so the loops
 * that call it vectorize; every element is computed alone, so results depend neither on the thread count nor on
 * where a row starts.
 */
#ifndef ELMO_FAST_FASTMATH_H
#define ELMO_FAST_FASTMATH_H
#include <stdint.h>

/* Shared range reduction of exp and expm1: x = k ln2 + r with |r| <= ln2/2 (k by the 1.5 * 2^23 shift, exact
 * for |x log2 e| < 2^22; ln2 split in a 16-bit head, so k * head is exact); returns e^r - 1 from its Taylor
 * polynomial to r^8 (truncation < 1e-9 relative on |r| <= 0.35) and sets *scale = 2^k. Inputs are limited to
 * [-87.3, 88] first (2^k stays a normal float; sigmoid and tanh saturate long before), with comparisons that
 * leave a NaN a NaN. Branch-free, so the loops below vectorize. */
static inline float reduce_f32(float x, float *scale) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.3f ? -87.3f : x;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - k * 0.693145751953125f;
    r = r - k * 1.42860682030941723212e-6f;
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * (r * r) + r;                             /* e^r - 1, accurate relative to itself for small r */
    union { float f; int32_t i; } s;
    s.i = ((int32_t)k + 127) << 23;
    *scale = s.f;
    return p;
}

static inline float exp_f32(float x) {
    float s, q = reduce_f32(x, &s);
    return s * q + s;                                /* 2^k (e^r - 1) + 2^k */
}

/* e^x - 1: 2^k (e^r - 1) + (2^k - 1); exact e^r - 1 when k = 0, so small |x| keeps its relative accuracy */
static inline float expm1_f32(float x) {
    float s, q = reduce_f32(x, &s);
    return s * q + (s - 1.0f);
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

/* tanh(x) = sign(x) * -u / (2 + u), u = expm1(-2|x|) in (-1, 0]: relative accuracy also near 0 */
static inline float tanh_f32(float x) {
    float a = x < 0.0f ? -x : x;
    float u = expm1_f32(-2.0f * a);
    float t = -u / (2.0f + u);
    t = x < 0.0f ? -t : t;
    return x != x ? x : t;
}

/* NaN stays NaN (both comparisons are false), as torch.clamp; lo = -inf, hi = inf: no clip */
static inline float clip_f32(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

#endif
