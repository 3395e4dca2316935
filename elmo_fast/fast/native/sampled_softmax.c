/*
 * Sampled softmax rows (elmo_fast.fast.sampled_softmax): the passes over the (N, S) logits in one kernel each way.
 *
 * Forward, per row i (one thread owns a row, so its sums do not depend on the thread count):
 *   l[j] = logits[i, j] + shift[j]    (logits float32, or bfloat16 widened exactly; one float32 add, as logits.add_)
 *   l[hit[i]] = -FLT_MAX              (the accidental hit of row i, if any: torch.finfo(float32).min)
 *   m = max(max_j l[j], t[i])         (t: the true logits; a NaN anywhere makes m NaN, as torch.amax/maximum)
 *   out[i, j] = exp(l[j] - m), row_max[i] = m, true_exp[i] = exp(t[i] - m), total[i] = sum_j out[i, j] + true_exp[i]
 * The row is written once (widened + shifted) and then rewritten in place while it is still in cache, instead of
 * the four passes of the torch ops (add, max, subtract-and-exp, sum). exp is fastmath.h's, flushed to 0 below
 * -87.3 (the float32 range where exp is subnormal: 0 instead of < 1.2e-38, so no subnormal reaches the products).
 *
 * Backward (parallel over column blocks, so each column sum runs over the rows in order whatever the threads):
 *   d[i, j] = e[i, j] * scale[i] (in place), optionally also rounded to bfloat16 (nearest even, as torch's
 *   conversion) into d16, and colsum[j] = sum_i d[i, j] (the bias gradient of the sampled columns).
 */
#include <float.h>
#include <stdint.h>

#include "fastmath.h"

static inline float bf16_widen(uint16_t b) {
    union { uint32_t i; float f; } u;
    u.i = (uint32_t)b << 16;
    return u.f;
}

static inline uint16_t bf16_round(float f) {
    union { float f; uint32_t i; } u;
    u.f = f;
    uint32_t rounded = (u.i + (((u.i >> 16) & 1u) + 0x7FFFu)) >> 16;
    return f != f ? (uint16_t)0x7FC0 : (uint16_t)rounded;
}

/* exp for softmax terms (x <= 0 up to rounding): 0 below -87.3 instead of fastmath's clamped 2^-126-ish value */
static inline float softmax_exp(float x) {
    float e = exp_f32(x);
    return x < -87.3f ? 0.0f : e;
}

/*
 * desc (11 int64): N, S, logits pointer, logits row stride (elements), logits dtype (0 float32, 1 bfloat16),
 * shift (S,) float32, t (N,) float32, hit (N,) int64 column or -1 (pointer 0: no hits), out pointer (float32,
 * may be the float32 logits themselves), out row stride, then one pointer to three (N,) float32 outputs:
 * row_max, true_exp, total, one after the other.
 */
int sampled_softmax_forward(const int64_t *desc, int threads) {
    int64_t N = desc[0], S = desc[1], ls = desc[3], os = desc[9];
    const void *logits = (const void *)(intptr_t)desc[2];
    int bf16 = (int)desc[4];
    const float *shift = (const float *)(intptr_t)desc[5], *t = (const float *)(intptr_t)desc[6];
    const int64_t *hit = (const int64_t *)(intptr_t)desc[7];
    float *out = (float *)(intptr_t)desc[8];
    float *row_max = (float *)(intptr_t)desc[10], *true_exp = row_max + N, *total = row_max + 2 * N;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && N * S >= 65536)
    for (int64_t i = 0; i < N; ++i) {
        float *o = out + i * os;
        if (bf16) {
            const uint16_t *l = (const uint16_t *)logits + i * ls;
#pragma omp simd
            for (int64_t j = 0; j < S; ++j) o[j] = bf16_widen(l[j]) + shift[j];
        } else {
            const float *l = (const float *)logits + i * ls;
#pragma omp simd
            for (int64_t j = 0; j < S; ++j) o[j] = l[j] + shift[j];
        }
        if (hit && hit[i] >= 0 && hit[i] < S) o[hit[i]] = -FLT_MAX;
        float m = t[i];
        int nan = m != m;
#pragma omp simd reduction(max : m) reduction(| : nan)
        for (int64_t j = 0; j < S; ++j) {
            float v = o[j];
            m = v > m ? v : m;
            nan |= v != v;
        }
        if (nan) m = __builtin_nanf("");
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < S; ++j) {
            float e = softmax_exp(o[j] - m);
            o[j] = e;
            sum += e;
        }
        float te = softmax_exp(t[i] - m);
        row_max[i] = m;
        true_exp[i] = te;
        total[i] = sum + te;
    }
    return 0;
}

#define COLUMN_BLOCK 512

/*
 * desc (8 int64): N, S, e pointer (float32, scaled in place), e row stride, scale (N,) float32, d16 pointer
 * (bfloat16 copy out; 0: none), d16 row stride, colsum (S,) float32 out (0: none).
 */
int sampled_softmax_backward(const int64_t *desc, int threads) {
    int64_t N = desc[0], S = desc[1], es = desc[3], ds = desc[6];
    float *e = (float *)(intptr_t)desc[2];
    const float *scale = (const float *)(intptr_t)desc[4];
    uint16_t *d16 = (uint16_t *)(intptr_t)desc[5];
    float *colsum = (float *)(intptr_t)desc[7];
    int64_t blocks = (S + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && N * S >= 65536)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t j0 = b * COLUMN_BLOCK, w = S - j0 < COLUMN_BLOCK ? S - j0 : COLUMN_BLOCK;
        float acc[COLUMN_BLOCK];
        for (int64_t j = 0; j < w; ++j) acc[j] = 0.0f;
        for (int64_t i = 0; i < N; ++i) {
            float s = scale[i];
            float *row = e + i * es + j0;
            if (d16) {
                uint16_t *r16 = d16 + i * ds + j0;
#pragma omp simd
                for (int64_t j = 0; j < w; ++j) {
                    float d = row[j] * s;
                    row[j] = d;
                    r16[j] = bf16_round(d);
                    acc[j] += d;
                }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < w; ++j) {
                    float d = row[j] * s;
                    row[j] = d;
                    acc[j] += d;
                }
            }
        }
        if (colsum)
            for (int64_t j = 0; j < w; ++j) colsum[j0 + j] = acc[j];
    }
    return 0;
}
