/* The 8-bit KV cache's arithmetic (`mistralrs.kernels.kv_u8` is its layout and torch reference).
 *
 * A cached row x (one head's keys or values of one token) is stored as uint8 codes
 * round(x / s) + 128 with s = max|x| / 127, s a float32 kept apart (in its block's tail). The
 * attention then works on integers, as llama.cpp's q8_0 cache does for the keys: a query row is
 * quantized the same way (to int8, once per work item), so that a score is one int8 dot product
 * (AVX-512 VNNI: 64 multiply-adds an instruction where float32 does 16), and the softmax weights
 * of a run of rows (one block's), times each value row's scale, become 15-bit integers for an
 * int16 dot product over pairs of value rows. Half the memory of a float16 cache; on the Zen 4
 * VM the 16-stream decode attention takes ~30% less time than over float16. */
#ifndef MRS_KV_U8_H
#define MRS_KV_U8_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"
#include "reduce16.h"

#define U8_BIAS 128
#define U8_WEIGHT_ONE 32767.0f /* the largest softmax weight of a run of rows, as an int16 */
#define U8_MAX_ROWS 128         /* value rows a call sums in int32 without overflow */

/* x[0..n) -> codes round(x / s) + bias (bias 128: uint8 codes; 0: int8); returns s, and the sum
 * of round(x / s) into *sum unless it is NULL. */
static float quantize_row(uint8_t *codes, const float *x, int n, int bias, int *sum) {
    float absmax = 0.0f;
    int i = 0;
#if MRS_AVX512
    __m512 m = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    absmax = _mm512_reduce_max_ps(m);
#endif
    for (; i < n; i++) absmax = fabsf(x[i]) > absmax ? fabsf(x[i]) : absmax;
    const float s = absmax / 127.0f;
    int total = 0;
    i = 0;
#if MRS_AVX512
    __m512i total16 = _mm512_setzero_si512();
    if (s > 0.0f)
        for (; i < n; i += 16) {
            const __mmask16 keep = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
            __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(keep, x + i),
                                                          _mm512_set1_ps(s)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
            const __m512i whole = _mm512_cvtps_epi32(q); /* 0 past n */
            total16 = _mm512_add_epi32(total16, whole);
            _mm512_mask_cvtepi32_storeu_epi8(codes + i, keep, _mm512_add_epi32(whole, _mm512_set1_epi32(bias)));
        }
    total = _mm512_reduce_add_epi32(total16);
#endif
    for (; i < n; i++) {
        float q = s > 0.0f ? nearbyintf(x[i] / s) : 0.0f;
        q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
        codes[i] = (uint8_t)((int)q + bias);
        total += (int)q;
    }
    if (sum) *sum = total;
    return s;
}

/* scores[j] = (q . (k_j - 128)) * q_scale * k_scales[j] for n (<= 16) uint8 key rows k_j at
 * rows + j * stride: q int8, q_sum = sum of q (its dot product with the bias). */
static inline __attribute__((always_inline)) void u8_dots(
    const int8_t *q, int q_sum, float q_scale, const uint8_t *rows, long long stride,
    const float *k_scales, int n, int dim, float *scores) {
#if MRS_VNNI
    __m512i acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_si512();
    for (int i = 0; i < dim; i += 64) {
        const __mmask64 keep = dim - i >= 64 ? ~0ull : (1ull << (dim - i)) - 1;
        const __m512i qv = _mm512_maskz_loadu_epi8(keep, q + i);
        if (n == 16)
            for (int r = 0; r < 16; r++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_maskz_loadu_epi8(keep, rows + r * stride + i), qv);
        else
            for (int r = 0; r < n; r++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_maskz_loadu_epi8(keep, rows + r * stride + i), qv);
    }
    __m512 as_ps[16];
    for (int r = 0; r < 16; r++) as_ps[r] = _mm512_castsi512_ps(acc[r]);
    const __m512i dot = _mm512_sub_epi32(_mm512_castps_si512(reduce16_add_epi32(as_ps)),
                                         _mm512_set1_epi32(U8_BIAS * q_sum));
    const __mmask16 valid = (__mmask16)((1u << n) - 1);
    const __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(q_scale));
    _mm512_mask_storeu_ps(scores, valid, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(valid, k_scales)));
#else
    for (int r = 0; r < n; r++) {
        int dot = 0;
        for (int i = 0; i < dim; i++) dot += q[i] * rows[r * stride + i];
        /* (the bias taken out after, as above: with q[i] * (row - 128) in the loop, gcc 12's
         * vectorizer for AVX-VNNI without AVX-512 fed the signed row - 128 to vpdpbusd's
         * unsigned operand: wrong scores on a Zen 5) */
        scores[r] = (float)(dot - U8_BIAS * q_sum) * q_scale * k_scales[r];
    }
#endif
}

#if MRS_VNNI
/* t[i] = the i-th 4 bytes of 16 rows of 64 bytes (lane r: row r's bytes 4i..4i+3), so that one
 * instruction multiplies 4 bytes of 16 keys by the same 4 bytes of a query (a 16 x 16 transpose
 * of 32-bit words: 64 shuffles, shared by the heads of a group, instead of a transposing
 * reduction of the 16 rows' dot products for each head). */
static inline __attribute__((always_inline)) void transpose16_epi32(const uint8_t *rows,
                                                                    long long stride, __m512i t[16]) {
    __m512i a[16], b[16];
    for (int r = 0; r < 16; r++) a[r] = _mm512_loadu_si512(rows + r * stride);
    for (int i = 0; i < 8; i++) { /* in 128-bit lane l: rows 2i, 2i+1 interleaved by word */
        b[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* a[4i + e], lane l: word 4l + e of rows 4i..4i+3 */
        a[4 * i] = _mm512_unpacklo_epi64(b[4 * i], b[4 * i + 2]);
        a[4 * i + 1] = _mm512_unpackhi_epi64(b[4 * i], b[4 * i + 2]);
        a[4 * i + 2] = _mm512_unpacklo_epi64(b[4 * i + 1], b[4 * i + 3]);
        a[4 * i + 3] = _mm512_unpackhi_epi64(b[4 * i + 1], b[4 * i + 3]);
    }
    for (int e = 0; e < 4; e++) { /* a 4 x 4 transpose of 128-bit lanes for each e */
        const __m512i u0 = _mm512_shuffle_i32x4(a[e], a[4 + e], 0x44);
        const __m512i u1 = _mm512_shuffle_i32x4(a[e], a[4 + e], 0xEE);
        const __m512i u2 = _mm512_shuffle_i32x4(a[8 + e], a[12 + e], 0x44);
        const __m512i u3 = _mm512_shuffle_i32x4(a[8 + e], a[12 + e], 0xEE);
        t[e] = _mm512_shuffle_i32x4(u0, u2, 0x88);
        t[4 + e] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
        t[8 + e] = _mm512_shuffle_i32x4(u1, u3, 0x88);
        t[12 + e] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
    }
}

/* u8_dots of 16 rows for `heads` (<= 4) query heads q[g] (dim a multiple of 64): the rows
 * transposed once (transpose16_epi32), each head's 16 scores then one vector. */
static inline __attribute__((always_inline)) void u8_dots16_heads_n(
    const int32_t *const *q, const int *q_sum, const float *q_scale, int heads,
    const uint8_t *rows, long long stride, const float *k_scales, int dim, float *const *scores) {
    __m512i acc[4][2];
    for (int g = 0; g < 4; g++) acc[g][0] = acc[g][1] = _mm512_setzero_si512();
    for (int i = 0; i < dim; i += 64) {
        __m512i t[16];
        transpose16_epi32(rows + i, stride, t);
        for (int w = 0; w < 16; w += 2)
            for (int g = 0; g < heads; g++) { /* (q as int32 words: broadcasts from memory) */
                acc[g][0] = _mm512_dpbusd_epi32(acc[g][0], t[w], _mm512_set1_epi32(q[g][i / 4 + w]));
                acc[g][1] = _mm512_dpbusd_epi32(acc[g][1], t[w + 1], _mm512_set1_epi32(q[g][i / 4 + w + 1]));
            }
    }
    const __m512 k = _mm512_loadu_ps(k_scales);
    for (int g = 0; g < heads; g++) {
        const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(acc[g][0], acc[g][1]),
                                             _mm512_set1_epi32(U8_BIAS * q_sum[g]));
        _mm512_storeu_ps(scores[g], _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot),
                                                                _mm512_set1_ps(q_scale[g])), k));
    }
}

/* u8_dots16_heads_n with `heads` a constant inside (MRS_CONSTANT_HEADS). */
static void u8_dots16_heads(const int32_t *const *q, const int *q_sum, const float *q_scale, int heads,
                            const uint8_t *rows, long long stride, const float *k_scales, int dim,
                            float *const *scores) {
    MRS_CONSTANT_HEADS(heads, u8_dots16_heads_n(q, q_sum, q_scale, H, rows, stride, k_scales, dim, scores))
}
#endif

/* o_g[d] += sum_j p_g[j] * v_scales[j] * (v_j[d] - 128) for the `heads` (<= 4) heads g of
 * one kv head, over n (<= U8_MAX_ROWS) uint8 value rows v_j at rows + j * stride: each head's
 * weights p * scale become int16 (the largest 32767), summed against the rows in int32 (at most
 * 128 * 32767 * 255 < 2^31), then scaled back. */
static inline __attribute__((always_inline)) void u8_accumulate_values_n(
    float *const *o, const float *const *p, int heads, const uint8_t *rows, long long stride,
    const float *v_scales, int n, int dim) {
    int16_t w[4][U8_MAX_ROWS + 2]; /* rows 2m and 2m + 1's weights: the int32 at w[g] + 2m */
    int32_t weight_sum[4];
    float unit[4];
    for (int g = 0; g < heads; g++) {
        float top = 0.0f;
        int j = 0;
#if MRS_AVX512
        __m512 top16 = _mm512_setzero_ps();
        for (; j + 16 <= n; j += 16)
            top16 = _mm512_max_ps(top16, _mm512_mul_ps(_mm512_loadu_ps(p[g] + j), _mm512_loadu_ps(v_scales + j)));
        top = _mm512_reduce_max_ps(top16);
#endif
        for (; j < n; j++) top = p[g][j] * v_scales[j] > top ? p[g][j] * v_scales[j] : top;
        unit[g] = top / U8_WEIGHT_ONE;
        const float inverse = top > 0.0f ? U8_WEIGHT_ONE / top : 0.0f;
        weight_sum[g] = 0;
        j = 0;
#if MRS_AVX512
        __m512i sum16 = _mm512_setzero_si512();
        for (; j + 16 <= n; j += 16) {
            const __m512 x = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(p[g] + j), _mm512_loadu_ps(v_scales + j)),
                                           _mm512_set1_ps(inverse));
            const __m512i wj = _mm512_cvtps_epi32(x); /* rounded to nearest */
            sum16 = _mm512_add_epi32(sum16, wj);
            _mm256_storeu_si256((__m256i *)(w[g] + j), _mm512_cvtepi32_epi16(wj));
        }
        weight_sum[g] = _mm512_reduce_add_epi32(sum16);
#endif
        for (; j < n; j++) {
            w[g][j] = (int16_t)nearbyintf(p[g][j] * v_scales[j] * inverse);
            weight_sum[g] += w[g][j];
        }
        w[g][n] = 0;
    }
    for (int i = 0; i < dim; i += 64) {
        const int width = dim - i < 64 ? dim - i : 64;
#if MRS_VNNI
        const __mmask32 keep0 = width >= 32 ? ~0u : (1u << width) - 1;
        const __mmask32 keep1 = width >= 64 ? ~0u : width <= 32 ? 0u : (1u << (width - 32)) - 1;
        __m512i acc[4][4];
        for (int g = 0; g < 4; g++)
            for (int t = 0; t < 4; t++) acc[g][t] = _mm512_setzero_si512();
        for (int j = 0; j < n; j += 2) {
            const uint8_t *r0 = rows + j * stride, *r1 = j + 1 < n ? r0 + stride : r0; /* weight 0 */
            const __m512i a0 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(keep0, r0 + i));
            const __m512i b0 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(keep0, r1 + i));
            const __m512i a1 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(keep1, r0 + i + 32));
            const __m512i b1 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(keep1, r1 + i + 32));
            const __m512i v[4] = {_mm512_unpacklo_epi16(a0, b0), _mm512_unpackhi_epi16(a0, b0),
                                  _mm512_unpacklo_epi16(a1, b1), _mm512_unpackhi_epi16(a1, b1)};
            for (int g = 0; g < heads; g++) {
                int32_t pair;
                memcpy(&pair, w[g] + j, sizeof pair);
                const __m512i wv = _mm512_set1_epi32(pair);
                for (int t = 0; t < 4; t++) acc[g][t] = _mm512_dpwssd_epi32(acc[g][t], v[t], wv);
            }
        }
        for (int g = 0; g < heads; g++)
            for (int half = 0; half < 2; half++) {
                /* lo, hi of a 32-feature half hold, in 128-bit lane l, features 8l..8l+3 and
                 * 8l+4..8l+7 (the order of the 16-bit unpacks): interleave their lanes */
                const __m512i lo = acc[g][2 * half], hi = acc[g][2 * half + 1];
                const __m512i first = _mm512_shuffle_i32x4(lo, hi, 0x44), second = _mm512_shuffle_i32x4(lo, hi, 0xEE);
                const __m512i sums[2] = {_mm512_shuffle_i32x4(first, first, 0xD8),
                                         _mm512_shuffle_i32x4(second, second, 0xD8)};
                for (int t = 0; t < 2; t++) {
                    const int at = 32 * half + 16 * t;
                    if (at >= width) break;
                    const __mmask16 keep = width - at >= 16 ? 0xffff : (__mmask16)((1u << (width - at)) - 1);
                    const __m512 x = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[t], _mm512_set1_epi32(U8_BIAS * weight_sum[g])));
                    float *out = o[g] + i + at;
                    _mm512_mask_storeu_ps(out, keep, _mm512_fmadd_ps(x, _mm512_set1_ps(unit[g]),
                                                                     _mm512_maskz_loadu_ps(keep, out)));
                }
            }
#else
        for (int g = 0; g < heads; g++)
            for (int d = 0; d < width; d++) {
                int32_t sum = 0;
                for (int j = 0; j < n; j++) sum += w[g][j] * rows[j * stride + i + d];
                o[g][i + d] += (float)(sum - U8_BIAS * weight_sum[g]) * unit[g];
            }
#endif
    }
}

/* u8_accumulate_values_n with `heads` a constant inside (MRS_CONSTANT_HEADS). */
static void u8_accumulate_values(float *const *o, const float *const *p, int heads,
                                 const uint8_t *rows, long long stride, const float *v_scales,
                                 int n, int dim) {
    MRS_CONSTANT_HEADS(heads, u8_accumulate_values_n(o, p, H, rows, stride, v_scales, n, dim))
}

#endif
