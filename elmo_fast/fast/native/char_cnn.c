/*
 * Char-CNN backward scatter (elmo_fast.fast.token_encoder._CharConvMax): the gradient of the max over windows,
 * summed per (offset k, character s, filter f):
 *
 *   A[k, s, f] += g[u, f]   for every row u, filter f and offset k < w_max, with s = ids[u, j[u, f] + k]
 *
 * (j: the arg-max window of (u, f), uint8). The torch path forms an int64 (U, F) index per k (a gather) and runs
 * one scatter_add_ per k; here one pass over (u, f) does all offsets. Threads own column blocks of f, and each
 * A[k, s, f] receives its terms in row order u = 0, 1, ...: the result does not depend on the thread count (and
 * matches a serial scatter_add_ over u).
 */
#include <stdint.h>

#define F_BLOCK 256

/*
 * desc (10 int64): U, F, w_max, n_sym, ids pointer (int64 (U, width), row stride ids_rs), ids_rs, j pointer
 * (uint8 (U, F), contiguous), g pointer (float32 (U, F), row stride g_rs), g_rs, A pointer (float32
 * (w_max, n_sym, F), contiguous; accumulated into). Returns 1 if an id is outside [0, n_sym) (nothing is written
 * for it), else 0.
 */
int char_conv_scatter(const int64_t *desc, int threads) {
    int64_t U = desc[0], F = desc[1], w_max = desc[2], n_sym = desc[3], ids_rs = desc[5], g_rs = desc[8];
    const int64_t *ids = (const int64_t *)(intptr_t)desc[4];
    const uint8_t *j = (const uint8_t *)(intptr_t)desc[6];
    const float *g = (const float *)(intptr_t)desc[7];
    float *A = (float *)(intptr_t)desc[9];
    int64_t blocks = (F + F_BLOCK - 1) / F_BLOCK;
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : bad) \
    if (threads > 1 && U * F * w_max >= 65536)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t f0 = b * F_BLOCK, f1 = f0 + F_BLOCK < F ? f0 + F_BLOCK : F;
        for (int64_t u = 0; u < U; ++u) {
            const int64_t *row = ids + u * ids_rs;
            const uint8_t *ju = j + u * F;
            const float *gu = g + u * g_rs;
            for (int64_t k = 0; k < w_max; ++k) {
                float *Ak = A + k * n_sym * F;
                for (int64_t f = f0; f < f1; ++f) {
                    int64_t s = row[ju[f] + k];
                    if (s < 0 || s >= n_sym) {
                        bad = 1;
                        continue;
                    }
                    Ak[s * F + f] += gu[f];
                }
            }
        }
    }
    return bad;
}
