/*
 * Sampled softmax rows (elmo_fast.fast.sampled_softmax): the passes over the (N, S) logits in one kernel each way.
 *
 * Forward, per row i (one thread owns a row, and its max and sum run in a fixed lane order: the bits depend neither
 * on the thread count nor on the instruction set the library was built for):
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
 * Reductions in a fixed order, so that every build (SSE2, AVX2, AVX-512, NEON; any vector width the compiler
 * picks) gives the same bits: LANES independent partial results, element j going to lane j % LANES, combined by
 * the same pairwise tree. The compiler maps the LANES-wide inner loop onto whatever registers it has (one 512-bit,
 * two 256-bit or four 128-bit vectors) without changing which element meets which.
 */
#define LANES 16
/* elements per block of the sum: each lane adds at most SUM_BLOCK / LANES terms before the block is folded into
 * the row total, which keeps the rounding error bound small (see exp_shifted_sum) */
#define SUM_BLOCK 1024

static inline void fold_lanes_max(float *v) {
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) v[l] = v[l + w] > v[l] ? v[l + w] : v[l];
}

static inline float fold_lanes_sum(float *v) {
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) v[l] = v[l] + v[l + w];
    return v[0];
}

/* max over x[0..n) (-inf for n = 0); NaN if any element is NaN */
static float row_maximum(const float *x, int64_t n) {
    float mx[LANES];
    int nan[LANES];
    for (int l = 0; l < LANES; ++l) {
        mx[l] = -__builtin_inff();
        nan[l] = 0;
    }
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) {
#pragma omp simd
        for (int l = 0; l < LANES; ++l) {
            float v = x[j + l];
            mx[l] = v > mx[l] ? v : mx[l];
            nan[l] |= v != v;
        }
    }
    for (int l = 0; j + l < n; ++l) {
        float v = x[j + l];
        mx[l] = v > mx[l] ? v : mx[l];
        nan[l] |= v != v;
    }
    int any_nan = 0;
    for (int l = 0; l < LANES; ++l) any_nan |= nan[l];
    fold_lanes_max(mx);
    return any_nan ? __builtin_nanf("") : mx[0];
}

/*
 * x[j] = exp(x[j] - m) in place; returns their sum. Per block of SUM_BLOCK elements, lane l adds the block's
 * elements j = l (mod LANES) in order, the lanes are folded by the tree, and the block totals are added in order.
 * For these non-negative terms the relative error of the result is at most (SUM_BLOCK / LANES + log2(LANES) +
 * ceil(n / SUM_BLOCK)) float32 roundings (the number of additions any one term goes through).
 */
static float exp_shifted_sum(float *x, int64_t n, float m) {
    float total = 0.0f;
    for (int64_t b0 = 0; b0 < n; b0 += SUM_BLOCK) {
        int64_t b1 = n - b0 < SUM_BLOCK ? n : b0 + SUM_BLOCK;
        float acc[LANES];
        for (int l = 0; l < LANES; ++l) acc[l] = 0.0f;
        int64_t j = b0;
        for (; j + LANES <= b1; j += LANES) {
#pragma omp simd
            for (int l = 0; l < LANES; ++l) {
                float e = softmax_exp(x[j + l] - m);
                x[j + l] = e;
                acc[l] += e;
            }
        }
        for (int l = 0; j + l < b1; ++l) {
            float e = softmax_exp(x[j + l] - m);
            x[j + l] = e;
            acc[l] += e;
        }
        total += fold_lanes_sum(acc);
    }
    return total;
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
        float m = row_maximum(o, S);
        m = t[i] > m ? t[i] : m;
        if (t[i] != t[i]) m = t[i];
        float sum = exp_shifted_sum(o, S, m);
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
