/*
 * In-place sigmoid / tanh over rows (elmo_fast.fast.token_encoder: the highway gate, the char-CNN's tanh).
 *
 * torch's CPU sigmoid and tanh compute the vectorised part of each thread's range with one exp and the scalar
 * remainder with another, so an element's bits depend on where the thread ranges split: with 1 and 2 threads the
 * same input gave different results for ~1 row count in 3 (e.g. the fixture model's 281 x 124 highway gate). Here
 * every element goes through fastmath.h's branch-free code, the same operations in the vector body and in the
 * scalar remainder (no FMA contraction), so the result does not depend on the thread count or the vector width.
 */
#include <stdint.h>

#include "fastmath.h"

/* desc (4 int64): pointer (float32), rows, columns, row stride (elements; the columns contiguous).
 * kind: 0 sigmoid, 1 tanh. */
int activation_inplace(const int64_t *desc, int kind, int threads) {
    float *p = (float *)(intptr_t)desc[0];
    int64_t rows = desc[1], cols = desc[2], rs = desc[3];
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * cols >= 32768)
    for (int64_t r = 0; r < rows; ++r) {
        float *x = p + r * rs;
        if (kind == 0) {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) x[j] = sigmoid_f32(x[j]);
        } else {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) x[j] = tanh_f32(x[j]);
        }
    }
    return 0;
}
