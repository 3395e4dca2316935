/*
 * Fused CPU LSTM cell (docs/numerics.md#bilstm): the per-step elementwise work of elmo_fast.fast.lstm in one pass.
 *
 * Built on first use by elmo_fast/fast/native/__init__.py (cc -O3 -fopenmp -ffp-contract=off and the flags of one
 * instruction-set level: the same bits at every level, since every element is computed alone);
 * called through ctypes with raw float32 pointers. Layout of every array: D direction blocks (stride sd elements)
 * of n rows (stride sr elements), the last axis contiguous. Gate order (i, f, o, j) along 4C.
 *
 * Rounding is the op sequence's of the PyTorch path: c = i*j + f*c_prev (two rounded products, no FMA: built
 * with -ffp-contract=off), clip, tanh, times o. Only sigmoid and tanh differ: here they are computed from one
 * exponential (fastmath.h, |error| <= ~2 float32 ulp of exp; see the Python tests for the bounds checked).
 * NaN propagates: the clip keeps a NaN (comparisons with NaN are false), and the mask is multiplied (NaN * 0 = NaN),
 * as torch.clamp and torch.mul do.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"

typedef struct {
    float *p;
    int64_t sd, sr;
} arr_t;

#define ROW(a, d, r) ((a).p + (int64_t)(d) * (a).sd + (int64_t)(r) * (a).sr)

/* one row of C cells; every pointer is a distinct array (outputs that the caller does not keep point to scratch) */
static void forward_row(int64_t C, float *restrict gi, float *restrict gf, float *restrict go, float *restrict gj,
                        const float *restrict cp, float *restrict cr, float *restrict cc, float *restrict tt,
                        float *restrict h, float lo, float hi) {
#pragma omp simd
    for (int64_t k = 0; k < C; ++k) {
        float i = sigmoid_f32(gi[k]), f = sigmoid_f32(gf[k]), o = sigmoid_f32(go[k]), j = tanh_f32(gj[k]);
        float ij = i * j, fc = f * cp[k];
        float v = ij + fc;
        float vc = clip_f32(v, lo, hi);
        float t = tanh_f32(vc);
        gi[k] = i; gf[k] = f; go[k] = o; gj[k] = j;
        cr[k] = v;
        cc[k] = vc;
        tt[k] = t;
        h[k] = t * o;
    }
}

static inline arr_t arr_at(const int64_t *q) {
    arr_t a = {(float *)(intptr_t)q[0], q[1], q[2]};
    return a;
}

/*
 * Forward of one step, D x n rows of C cells. desc (21 int64): D, n, C, then (pointer, direction stride, row stride)
 * in elements for each of:
 *   g:      (D, n, 4C) pre-activation gates in, activated gates out (the backward needs them)
 *   c_prev: (D, n, C); c_raw: unclipped cells out (pointer 0: not kept); c: clipped cells out
 *   tc:     tanh(c) out (pointer 0: not kept); hc: o * tanh(c) out
 * lo, hi: cell clip bounds (-inf, inf: none). Returns nonzero if a scratch row could not be allocated.
 */
int lstm_cell_forward(const int64_t *desc, float lo, float hi, int threads) {
    int64_t D = desc[0], n = desc[1], C = desc[2];
    arr_t g = arr_at(desc + 3), c_prev = arr_at(desc + 6), c_raw = arr_at(desc + 9), c = arr_at(desc + 12),
          tc = arr_at(desc + 15), hc = arr_at(desc + 18);
    int64_t rows = D * n;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && rows * C >= 16384)
    {
        float *scratch = (c_raw.p && tc.p) ? 0 : (float *)malloc(sizeof(float) * 2 * (size_t)C);
        if (!(c_raw.p && tc.p) && !scratch) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t q = 0; q < rows; ++q) {
                int64_t d = q / n, r = q % n;
                float *gi = ROW(g, d, r);
                float *cr = c_raw.p ? ROW(c_raw, d, r) : scratch;
                float *tt = tc.p ? ROW(tc, d, r) : scratch + C;
                forward_row(C, gi, gi + C, gi + 2 * C, gi + 3 * C, ROW(c_prev, d, r), cr, ROW(c, d, r), tt,
                            ROW(hc, d, r), lo, hi);
            }
        }
        free(scratch);
    }
    return failed;
}

static void backward_row(int64_t C, const float *restrict dh, const float *restrict gi, const float *restrict gf,
                         const float *restrict go, const float *restrict gj, float *restrict di, float *restrict df,
                         float *restrict dO, float *restrict dj, const float *restrict tc, const float *restrict cp,
                         float *restrict ds, const float *restrict dco, const uint8_t *restrict m) {
#pragma omp simd
    for (int64_t k = 0; k < C; ++k) {
        float t = tc[k], o = go[k], i = gi[k], f = gf[k], j = gj[k];
        float x = dh[k];
        float d_o = x * t;
        float v = x * o;
        v = v - v * (t * t);
        v = v + ds[k];
        v = v + dco[k];
        v = v * (float)m[k];
        float d_i = v * j, d_j = v * i, d_f = v * cp[k];
        ds[k] = v * f;
        d_i = d_i * i; d_i = d_i - d_i * i;
        d_f = d_f * f; d_f = d_f - d_f * f;
        d_o = d_o * o; d_o = d_o - d_o * o;
        d_j = d_j - d_j * (j * j);
        di[k] = d_i; df[k] = d_f; dO[k] = d_o; dj[k] = d_j;
    }
}

/*
 * Backward of one step, after dc = d loss / d(o tanh(c)) (D, n, C) came from the projection's product.
 * desc (27 int64): D, n, C, then (pointer, direction stride, row stride) in elements for each of:
 *   dc;  g: activated gates (i, f, o, j) saved by the forward;  dz: (D, n, 4C) out, d loss / d pre-activations;
 *   tc: tanh(clipped c);  c_prev: the step's previous cells;
 *   dc_state: (D, n, C) in: gradient carried from step s + 1 to this step's clipped cells; out: to c_prev;
 *   dc_out: extra gradient of the clipped cells (pointer 0: none);
 *   mask: uint8 (D, n, C), 1 where the cell clip passed the gradient (pointer 0: no clip; strides in bytes).
 * Returns nonzero if a scratch row could not be allocated.
 */
int lstm_cell_backward(const int64_t *desc, int threads) {
    int64_t D = desc[0], n = desc[1], C = desc[2];
    arr_t dc = arr_at(desc + 3), g = arr_at(desc + 6), dz = arr_at(desc + 9), tc = arr_at(desc + 12),
          c_prev = arr_at(desc + 15), dc_state = arr_at(desc + 18), dc_out = arr_at(desc + 21);
    const uint8_t *mask = (const uint8_t *)(intptr_t)desc[24];
    int64_t mask_sd = desc[25], mask_sr = desc[26];
    int64_t rows = D * n;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && rows * C >= 16384)
    {
        int need = !dc_out.p || !mask;
        void *scratch = need ? malloc((sizeof(float) + 1) * (size_t)C) : 0;
        if (need && !scratch) {
#pragma omp atomic write
            failed = 1;
        } else {
            float *zeros = (float *)scratch;
            uint8_t *ones = scratch ? (uint8_t *)(zeros + C) : 0;
            if (scratch) {
                memset(zeros, 0, sizeof(float) * (size_t)C);
                memset(ones, 1, (size_t)C);
            }
#pragma omp for schedule(static)
            for (int64_t q = 0; q < rows; ++q) {
                int64_t d = q / n, r = q % n;
                const float *gi = ROW(g, d, r);
                float *di = ROW(dz, d, r);
                backward_row(C, ROW(dc, d, r), gi, gi + C, gi + 2 * C, gi + 3 * C, di, di + C, di + 2 * C, di + 3 * C,
                             ROW(tc, d, r), ROW(c_prev, d, r), ROW(dc_state, d, r),
                             dc_out.p ? ROW(dc_out, d, r) : zeros, mask ? mask + d * mask_sd + r * mask_sr : ones);
            }
        }
        free(scratch);
    }
    return failed;
}
