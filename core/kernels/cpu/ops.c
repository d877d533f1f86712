/* The small float32 operations of a decoder step on the CPU, each one call instead of the
 * handful of torch ops it would take (a decode step is bound by per-call overhead, not by
 * arithmetic): RMSNorm with the residual add folded in, rotary embedding in place, the gated
 * activation of an MLP, and attention of one query row per sequence over the paged KV cache
 * (float32, float16, or 8 bits: kv_u8.h). Strides are in elements; every function computes what
 * its torch reference in `mistralrs.kernels.cpu.ops` (`mistralrs.kernels.kv_u8` for the 8-bit
 * cache's quantization) computes, up to float summation order.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fp16.h"
#include "isa.h"
#include "kv_u8.h"
#include "reduce16.h"
#include "threads.h"

#define MRS_DECODE_MAX_SPLITS 8

#if MRS_AVX512
/* exp(x) for 16 lanes: Cephes' expf (range reduction by ln 2 in two parts, degree-5
 * polynomial, 2^n by scalef), within a few ulp of libm; arguments clamped to [-87.3, 88.7]. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, k);
}
#endif

#if !MRS_AVX512 && MRS_AVX2
/* exp16's arithmetic for 8 lanes; 2^n is built in the exponent bits (no scalef), so the
 * arguments are clamped to [-87.3, 88.3], where n stays within the normal range. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

/* p[j] = exp(s[j] - shift) for j < n, and their sum. */
static float exp_shifted(const float *s, float shift, float *p, int n) {
    int j = 0;
    float total = 0.0f;
#if MRS_AVX512
    __m512 sum = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16) {
        const __m512 y = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(shift)));
        _mm512_storeu_ps(p + j, y);
        sum = _mm512_add_ps(sum, y);
    }
    total = _mm512_reduce_add_ps(sum);
#elif MRS_AVX2
    __m256 sum = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(shift)));
        _mm256_storeu_ps(p + j, y);
        sum = _mm256_add_ps(sum, y);
    }
    total = hsum8(sum);
#endif
    for (; j < n; j++) total += p[j] = expf(s[j] - shift);
    return total;
}

/* Rows [first, last) of part `part` of `parts`. */
#define PART_RANGE(n, part, parts, first, last) \
    const long long first = (long long)(n) * (part) / (parts), last = (long long)(n) * ((part) + 1) / (parts)

/* Row r of x sits at x + (r / inner) * x_outer + (r % inner) * x_inner (rows of [T, H, D] views
 * as well as of [T, D]). out[r] = x / sqrt(mean(x^2) + eps) * (w or 1 + w), out contiguous;
 * with add_to_out, out[r] += that instead. */
typedef struct {
    const float *x;
    long long x_outer, x_inner;
    int inner;
    const float *w;
    int unit_offset;
    float *out;
    int add_to_out;
    long long rows;
    int dim;
    float eps;
} rms_norm_ctx;

static void rms_norm_part(void *arg, int part, int parts) {
    const rms_norm_ctx *c = arg;
    const int dim = c->dim;
    PART_RANGE(c->rows, part, parts, first, last);
    for (long long r = first; r < last; r++) {
        const float *xr = c->x + (r / c->inner) * c->x_outer + (r % c->inner) * c->x_inner;
        float *o = c->out + r * dim;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(ss / (float)dim + c->eps);
        if (c->add_to_out) {
#pragma omp simd
            for (int i = 0; i < dim; i++) o[i] += xr[i] * inv * (c->unit_offset ? c->w[i] + 1.0f : c->w[i]);
        } else {
#pragma omp simd
            for (int i = 0; i < dim; i++) o[i] = xr[i] * inv * (c->unit_offset ? c->w[i] + 1.0f : c->w[i]);
        }
    }
}

void mrs_rms_norm(const float *x, long long x_outer, long long x_inner, int inner,
                  const float *w, int unit_offset, float *out, int add_to_out, long long rows,
                  int dim, float eps, int nthreads) {
    rms_norm_ctx c = {x, x_outer, x_inner, inner, w, unit_offset, out, add_to_out, rows, dim, eps};
    mrs_parallel(rms_norm_part, &c, rows * dim > (1 << 12) ? nthreads : 1);
}

/* Rotate-half rotary embedding of the first `rotary_dim` features of every head, in place, for
 * q [T, Hq, D] and k [T, Hk, D] (strides per token and per head); cos, sin [T, rotary_dim / 2]. */
static void rotate_heads(float *x, long long h_stride, int heads, int half, const float *c,
                         const float *s) {
    for (int h = 0; h < heads; h++) {
        float *x1 = x + h * h_stride, *x2 = x1 + half;
#pragma omp simd
        for (int i = 0; i < half; i++) {
            const float a = x1[i], b = x2[i];
            x1[i] = a * c[i] - b * s[i];
            x2[i] = b * c[i] + a * s[i];
        }
    }
}

void mrs_rotary(float *q, long long q_t, long long q_h, int q_heads, float *k, long long k_t,
                long long k_h, int k_heads, long long tokens, int rotary_dim, const float *cos,
                const float *sin) {
    const int half = rotary_dim / 2;
    for (long long t = 0; t < tokens; t++) {
        rotate_heads(q + t * q_t, q_h, q_heads, half, cos + t * half, sin + t * half);
        rotate_heads(k + t * k_t, k_h, k_heads, half, cos + t * half, sin + t * half);
    }
}

/* cos, sin [T, half] of positions[t] * inv_freq[i], times `scale` (a rope's attention factor). */
void mrs_rope_cos_sin(const int64_t *positions, long long tokens, const float *inv_freq, int half,
                      float scale, float *cos_out, float *sin_out) {
    for (long long t = 0; t < tokens; t++)
        for (int i = 0; i < half; i++) {
            const float angle = (float)positions[t] * inv_freq[i];
            cos_out[t * half + i] = cosf(angle) * scale;
            sin_out[t * half + i] = sinf(angle) * scale;
        }
}

enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU = 2 };

static float activate(float x, int act) {
    switch (act) {
    case ACT_SILU: return x / (1.0f + expf(-x));
    case ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    }
}

/* out [rows, inter] = act(gate) * up, gate and up [rows, inter] with one row stride. */
typedef struct {
    const float *gate, *up;
    long long in_stride, rows;
    int inter, act;
    float *out;
} gated_ctx;

static void gated_part(void *arg, int part, int parts) {
    const gated_ctx *c = arg;
    PART_RANGE(c->rows, part, parts, first, last);
    for (long long r = first; r < last; r++) {
        const float *g = c->gate + r * c->in_stride, *u = c->up + r * c->in_stride;
        float *o = c->out + r * c->inter;
        int i = 0;
#if MRS_AVX512
        if (c->act == ACT_SILU || c->act == ACT_GELU_TANH) {
            const __m512 one = _mm512_set1_ps(1.0f);
            for (; i + 16 <= c->inter; i += 16) {
                const __m512 x = _mm512_loadu_ps(g + i);
                __m512 y;
                if (c->act == ACT_SILU) { /* x / (1 + e^-x) */
                    y = _mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
                } else { /* 0.5 x (1 + tanh(z)) = x - x / (e^2z + 1) */
                    const __m512 z = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                                   _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x),
                                                                   _mm512_mul_ps(x, x), x));
                    y = _mm512_sub_ps(x, _mm512_div_ps(x, _mm512_add_ps(exp16(_mm512_add_ps(z, z)), one)));
                }
                _mm512_storeu_ps(o + i, _mm512_mul_ps(y, _mm512_loadu_ps(u + i)));
            }
        }
#elif MRS_AVX2
        if (c->act == ACT_SILU || c->act == ACT_GELU_TANH) {
            const __m256 one = _mm256_set1_ps(1.0f);
            for (; i + 8 <= c->inter; i += 8) {
                const __m256 x = _mm256_loadu_ps(g + i);
                __m256 y;
                if (c->act == ACT_SILU) {
                    y = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
                } else {
                    const __m256 z = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                                   _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x),
                                                                   _mm256_mul_ps(x, x), x));
                    y = _mm256_sub_ps(x, _mm256_div_ps(x, _mm256_add_ps(exp8(_mm256_add_ps(z, z)), one)));
                }
                _mm256_storeu_ps(o + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
            }
        }
#endif
        for (; i < c->inter; i++) o[i] = activate(g[i], c->act) * u[i];
    }
}

void mrs_gated_activation(const float *gate, const float *up, long long in_stride,
                          long long rows, int inter, int act, float *out, int nthreads) {
    gated_ctx c = {gate, up, in_stride, rows, inter, act, out};
    mrs_parallel(gated_part, &c, rows * inter > (1 << 12) ? nthreads : 1);
}

/* Attention of one query row per sequence over the paged cache: q [B, Hq, Dk] (strides q_b,
 * q_h); k_cache [blocks, block_size, Hkv, .] and v_cache likewise, float32, float16 or uint8
 * (`kv_format`: KV_F32, KV_F16, KV_U8, see kv_u8.h; a uint8 block's kv_heads * block_size rows
 * are followed by their float32 scales [head, slot]), with strides (cache_block, cache_slot,
 * cache_head) in elements each (v may be a view into k, except for uint8); sequence b attends
 * to positions [first, context_lens[b]) with first = context - window when a window is set;
 * scores are q.k * scale, soft-capped when softcap > 0. out [B, Hq, Dv] (contiguous, float32).
 *
 * Work items are (sequence, kv head, slice of the positions): one item serves every query head
 * of its kv head (each key and value row is read once for the group), and long contexts are
 * split into slices so that a single sequence keeps every thread busy. Each item keeps an
 * online softmax (running max, sum and weighted values); the slices are merged at the end (an
 * item that is a whole context normalizes its own output, on its thread). Rows are read a
 * chunk at a time, the next chunk's asked for first (prefetch_chunk): 64-row chunks took 7-10%
 * less than 128-row ones (16 streams, 8-bit cache; ~4% over float16). */
#define CHUNK 64
_Static_assert(CHUNK <= U8_MAX_ROWS, "a chunk of uint8 value rows must fit int32 sums");
enum { KV_F32, KV_F16, KV_U8 };
typedef struct {
    const float *q;
    long long q_b, q_h;
    const char *k_cache;
    long long kb, ks, kh;
    const char *v_cache;
    long long vb, vs, vh;
    int kv_format;
    const int32_t *context_lens, *block_tables;
    long long table_stride;
    int kv_heads, group, dk, dv, block_size, window, splits;
    float scale, softcap;
    float *partial; /* [B * Hkv][splits][group][2 + dv]: max, sum, weighted values */
    long long items;
    float *out;     /* [B, Hq, dv] */
} decode_ctx;

static inline float load1(const void *row, int i, int f16) {
    return f16 ? fp16_to_fp32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

#if MRS_AVX512
static inline __m512 load16(const void *row, int i, int f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)))
               : _mm512_loadu_ps((const float *)row + i);
}

static inline __m512 load16_masked(const void *row, int i, __mmask16 keep, int f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(keep, (const uint16_t *)row + i))
               : _mm512_maskz_loadu_ps(keep, (const float *)row + i);
}

#elif MRS_AVX2
static inline __m256 load8(const void *row, int i, int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)))
               : _mm256_loadu_ps((const float *)row + i);
}
#endif

/* Ask for the rows of a cache block (`rows` slots `slot_bytes` apart, `row_bytes` each)
 * before they are read: a decode step reads the whole context from memory, and the hardware
 * prefetcher does not follow the block table. */
static inline void prefetch_rows(const char *first_row, long long slot_bytes, int rows,
                                 int row_bytes) {
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < row_bytes; i += 64) __builtin_prefetch(first_row + r * slot_bytes + i, 0, 1);
}

static float *partial_of(const decode_ctx *c, long long task, int split, int g) {
    return c->partial + ((task * c->splits + split) * c->group + g) * (2 + c->dv);
}

/* The rows (one head's features) of positions [start, start + n) of a sequence's cache. */
static void cache_rows(const char *head, const int32_t *table, long long block_bytes,
                       long long slot_bytes, int block_size, int start, int n, int row_bytes,
                       const void **rows) {
    for (int j = 0, blk = start / block_size, off = start % block_size; j < n; j++) {
        const char *row = head + table[blk] * block_bytes + off * slot_bytes;
        if (off == 0 || j == 0) prefetch_rows(row, slot_bytes, block_size - off, row_bytes);
        rows[j] = row;
        if (++off == block_size) { off = 0; blk++; }
    }
}

/* scores[j] = q . rows[j] for j < n (n <= 16); the full 16 rows without a branch per row. */
static inline __attribute__((always_inline)) void dots(const float *q, const void **rows, int n,
                                                       int dim, float *scores, const int f16) {
#if MRS_AVX512
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    int i = 0;
    if (n == 16) {
        for (; i + 16 <= dim; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int r = 0; r < 16; r++) acc[r] = _mm512_fmadd_ps(qv, load16(rows[r], i, f16), acc[r]);
        }
    } else {
        for (; i + 16 <= dim; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int r = 0; r < n; r++) acc[r] = _mm512_fmadd_ps(qv, load16(rows[r], i, f16), acc[r]);
        }
    }
    if (i < dim) {
        const __mmask16 tail = (__mmask16)((1u << (dim - i)) - 1);
        const __m512 qv = _mm512_maskz_loadu_ps(tail, q + i);
        for (int r = 0; r < n; r++)
            acc[r] = _mm512_fmadd_ps(qv, load16_masked(rows[r], i, tail, f16), acc[r]);
    }
    _mm512_mask_storeu_ps(scores, (__mmask16)((1u << n) - 1), reduce16_add(acc));
#elif MRS_AVX2
    const int vector_dim = dim - dim % 8;
    for (int r0 = 0; r0 < n; r0 += 8) { /* 8 rows at a time: independent chains, one reduction */
        const void *r8[8];
        for (int r = 0; r < 8; r++) r8[r] = rows[r0 + r < n ? r0 + r : r0];
        __m256 acc[8];
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < vector_dim; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(qv, load8(r8[r], i, f16), acc[r]);
        }
        const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
        float sums[8];
        _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                             _mm256_permute2f128_ps(u0, u1, 0x31)));
        for (int r = 0; r < 8 && r0 + r < n; r++) {
            for (int i = vector_dim; i < dim; i++) sums[r] += q[i] * load1(r8[r], i, f16);
            scores[r0 + r] = sums[r];
        }
    }
#else
    for (int r = 0; r < n; r++) {
        float s = 0.0f;
        for (int i = 0; i < dim; i++) s += q[i] * load1(rows[r], i, f16);
        scores[r] = s;
    }
#endif
}

#if MRS_AVX512
/* dots for 16 rows `stride` bytes apart from `first` (16 positions inside one cache block): one
 * base pointer instead of 16, so that the 16 accumulators, q and the addresses fit the
 * registers. */
static inline __attribute__((always_inline)) void dots16_strided(
    const float *q, const char *first, long long stride, int dim, float *scores, const int f16) {
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    for (int i = 0; i + 16 <= dim; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
        const char *row = first;
        for (int r = 0; r < 16; r++, row += stride) acc[r] = _mm512_fmadd_ps(qv, load16(row, i, f16), acc[r]);
    }
    _mm512_storeu_ps(scores, reduce16_add(acc));
}
#endif

#if !MRS_AVX512 && MRS_AVX2
/* accumulate_values' AVX2 loop over 16-feature slices (8 accumulators for 4 heads); returns the
 * features it did. */
static inline __attribute__((always_inline)) int accumulate_values_avx2(
    float *const *o, const float *const *p, const int heads, const void **rows, int n, int dim,
    const int f16) {
    int i = 0;
    for (; i + 16 <= dim; i += 16) { /* 16-feature slices: 8 accumulators for 4 heads */
        __m256 acc[4][2];
        for (int g = 0; g < heads; g++)
            for (int t = 0; t < 2; t++) acc[g][t] = _mm256_loadu_ps(o[g] + i + 8 * t);
        for (int j = 0; j < n; j++) {
            const __m256 v0 = load8(rows[j], i, f16), v1 = load8(rows[j], i + 8, f16);
            for (int g = 0; g < heads; g++) {
                const __m256 w = _mm256_set1_ps(p[g][j]);
                acc[g][0] = _mm256_fmadd_ps(w, v0, acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(w, v1, acc[g][1]);
            }
        }
        for (int g = 0; g < heads; g++)
            for (int t = 0; t < 2; t++) _mm256_storeu_ps(o[g] + i + 8 * t, acc[g][t]);
    }
    return i;
}
#endif

/* o_g[i] += sum_j p_g[j] * rows[j][i] for the `heads` (<= 4) heads g of one kv head: with
 * AVX-512 each 64-feature slice of the heads' outputs stays in registers over all n rows. */
#if MRS_AVX512
/* accumulate_values' AVX-512 loop over 64-feature slices; returns the features it did. */
static inline __attribute__((always_inline)) int accumulate_values_avx512(
    float *const *o, const float *const *p, const int heads, const void **rows, int n, int dim,
    const int f16) {
    int i = 0;
    for (; i + 64 <= dim; i += 64) {
        __m512 acc[4][4];
        for (int g = 0; g < heads; g++)
            for (int t = 0; t < 4; t++) acc[g][t] = _mm512_loadu_ps(o[g] + i + 16 * t);
        for (int j = 0; j < n; j++) {
            const __m512 v0 = load16(rows[j], i, f16), v1 = load16(rows[j], i + 16, f16);
            const __m512 v2 = load16(rows[j], i + 32, f16), v3 = load16(rows[j], i + 48, f16);
            for (int g = 0; g < heads; g++) {
                const __m512 w = _mm512_set1_ps(p[g][j]);
                acc[g][0] = _mm512_fmadd_ps(w, v0, acc[g][0]);
                acc[g][1] = _mm512_fmadd_ps(w, v1, acc[g][1]);
                acc[g][2] = _mm512_fmadd_ps(w, v2, acc[g][2]);
                acc[g][3] = _mm512_fmadd_ps(w, v3, acc[g][3]);
            }
        }
        for (int g = 0; g < heads; g++)
            for (int t = 0; t < 4; t++) _mm512_storeu_ps(o[g] + i + 16 * t, acc[g][t]);
    }
    return i;
}
#endif

static inline __attribute__((always_inline)) void accumulate_values(
    float *const *o, const float *const *p, int heads, const void **rows, int n, int dim,
    const int f16) {
    int i = 0;
#if MRS_AVX512
#define ACCUMULATE_SLICES accumulate_values_avx512
#elif MRS_AVX2
#define ACCUMULATE_SLICES accumulate_values_avx2
#endif
#ifdef ACCUMULATE_SLICES
    MRS_CONSTANT_HEADS(heads, i = ACCUMULATE_SLICES(o, p, H, rows, n, dim, f16))
#undef ACCUMULATE_SLICES
#endif
    for (; i < dim; i++)
        for (int g = 0; g < heads; g++) {
            float s = o[g][i];
            for (int j = 0; j < n; j++) s += p[g][j] * load1(rows[j], i, f16);
            o[g][i] = s;
        }
}

/* The positions [lo, hi) of its sequence that work item `item` attends to. */
static void item_positions(const decode_ctx *c, long long item, int *lo, int *hi) {
    const long long task = item / c->splits;
    const int split = (int)(item % c->splits);
    const int context = c->context_lens[task / c->kv_heads];
    const int first = c->window > 0 && context > c->window ? context - c->window : 0;
    *lo = first + (int)((long long)(context - first) * split / c->splits);
    *hi = first + (int)((long long)(context - first) * (split + 1) / c->splits);
}

/* The positions [at, at + *run) of a sequence (run as far as `end` in at's block): their block,
 * at's offset in it. */
static inline long long block_run(const int32_t *table, int block_size, int at, int end, int *off,
                                  int *run) {
    *off = at % block_size;
    *run = block_size - *off < end - at ? block_size - *off : end - at;
    return table[at / block_size];
}

/* Where the float32 scales of kv head `kvh`'s uint8 rows (of `dim` codes) in a block start:
 * after the block's kv_heads * block_size rows. */
static inline const char *u8_scales(const char *cache, long long block, long long block_bytes,
                                    int kv_heads, int block_size, int dim, int kvh) {
    return cache + block * block_bytes + (long long)kv_heads * block_size * dim
           + (long long)kvh * block_size * sizeof(float);
}

/* Ask for the key and value rows of the chunk at `start` of work item `item` (start < 0: its
 * first chunk), one chunk before they are read: with the prefetch of each block as its rows
 * are first used (cache_rows) alone, the reads wait on memory at every chunk. cache_rows still
 * asks again right before the reads: a chunk is more lines than can be in flight at once, and
 * without the second request the 16-stream attention took 7.8-9.9 ms instead of 5.1-6.0.
 * (Not so for uint8 caches, whose blocks keep a head's rows together: the hardware prefetcher
 * follows them, and asking again cost 5-10%.) */
static void prefetch_chunk(const decode_ctx *c, long long item, int start, const int es) {
    const int bs = c->block_size;
    const long long task = item / c->splits;
    const int b = (int)(task / c->kv_heads), kvh = (int)(task % c->kv_heads);
    int lo, hi;
    item_positions(c, item, &lo, &hi);
    if (start < 0) start = lo;
    const int end = hi - start < CHUNK ? hi : start + CHUNK;
    const int32_t *table = c->block_tables + b * c->table_stride;
    for (int p = start; p < end;) {
        const int rows = bs - p % bs < end - p ? bs - p % bs : end - p;
        const long long block = table[p / bs], slot = p % bs;
        prefetch_rows(c->k_cache + (kvh * c->kh + block * c->kb + slot * c->ks) * es, c->ks * es,
                      rows, c->dk * es);
        prefetch_rows(c->v_cache + (kvh * c->vh + block * c->vb + slot * c->vs) * es, c->vs * es,
                      rows, c->dv * es);
        if (c->kv_format == KV_U8) {
            const int bytes = rows * (int)sizeof(float);
            prefetch_rows(u8_scales(c->k_cache, block, c->kb, c->kv_heads, bs, c->dk, kvh) + slot * 4,
                          0, 1, bytes);
            prefetch_rows(u8_scales(c->v_cache, block, c->vb, c->kv_heads, bs, c->dv, kvh) + slot * 4,
                          0, 1, bytes);
        }
        p += rows;
    }
}

/* s[j] *= scale, then soft-capped (softcap > 0: softcap * tanh(s / softcap)), for j < n;
 * returns their maximum (NaN scores left out). */
static float scale_scores(float *s, int n, float scale, float softcap) {
    int j = 0;
    float max = -INFINITY;
#if MRS_AVX512
    if (softcap <= 0.0f) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        for (; j + 16 <= n; j += 16) {
            const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(scale));
            _mm512_storeu_ps(s + j, v);
            m = _mm512_max_ps(v, m); /* m where v is NaN */
        }
        max = _mm512_reduce_max_ps(m);
    }
#endif
    for (; j < n; j++) {
        s[j] *= scale;
        if (softcap > 0.0f) s[j] = softcap * tanhf(s[j] / softcap);
        max = s[j] > max ? s[j] : max;
    }
    return max;
}

static inline __attribute__((always_inline)) void decode_items(const decode_ctx *c, int part,
                                                               int parts, const int format) {
    const int f16 = format == KV_F16, u8 = format == KV_U8;
    const int dk = c->dk, dv = c->dv, bs = c->block_size, group = c->group;
    const int es = f16 ? 2 : u8 ? 1 : 4;
    float scores[group][CHUNK];
    /* uint8 caches: the queries quantized (int8 codes, read as int32 words of 4) */
    int32_t q8[u8 ? group : 1][u8 ? (dk + 3) / 4 : 1];
    float q8_scale[group];
    int q8_sum[group];
#if MRS_AVX512
    float keys[16 * dk];
#endif
    const void *krows[CHUNK], *vrows[CHUNK];
    PART_RANGE(c->items, part, parts, first_item, last_item);
    for (long long item = first_item; item < last_item; item++) {
        const long long task = item / c->splits;
        const int split = (int)(item % c->splits);
        const int b = (int)(task / c->kv_heads), kvh = (int)(task % c->kv_heads);
        int lo, hi;
        item_positions(c, item, &lo, &hi);
        const int32_t *table = c->block_tables + b * c->table_stride;
        const char *k_head = c->k_cache + kvh * c->kh * es, *v_head = c->v_cache + kvh * c->vh * es;
        const float *q0 = c->q + b * c->q_b + (long long)kvh * group * c->q_h;
        for (int g = 0; g < group; g++) {
            float *st = partial_of(c, task, split, g);
            st[0] = -INFINITY;
            st[1] = 0.0f;
            memset(st + 2, 0, sizeof(float) * dv);
            if (u8) {
                q8_scale[g] = quantize_row((uint8_t *)q8[g], q0 + g * c->q_h, dk, 0, q8_sum + g);
            }
        }
        for (int start = lo; start < hi; start += CHUNK) {
            const int n = hi - start < CHUNK ? hi - start : CHUNK;
            if (start + CHUNK < hi) prefetch_chunk(c, item, start + CHUNK, es);
            else if (item + 1 < last_item) prefetch_chunk(c, item + 1, -1, es);
            if (u8) { /* a block's rows of one head follow each other: read them run by run */
                for (int at = start, off, run; at < start + n; at += run) {
                    const long long block = block_run(table, bs, at, start + n, &off, &run);
                    const uint8_t *rows = (const uint8_t *)k_head + block * c->kb + off * c->ks;
                    const float *row_scales =
                        (const float *)u8_scales(c->k_cache, block, c->kb, c->kv_heads, bs, dk, kvh) + off;
                    for (int r = 0; r < run; r += 16) {
#if MRS_VNNI
                        if (run - r >= 16 && dk % 64 == 0) {
                            for (int g0 = 0; g0 < group; g0 += 4) {
                                const int heads = group - g0 < 4 ? group - g0 : 4;
                                const int32_t *qs[4];
                                float *out[4];
                                for (int g = 0; g < heads; g++) {
                                    qs[g] = q8[g0 + g];
                                    out[g] = scores[g0 + g] + (at - start) + r;
                                }
                                u8_dots16_heads(qs, q8_sum + g0, q8_scale + g0, heads, rows + r * c->ks,
                                                c->ks, row_scales + r, dk, out);
                            }
                            continue;
                        }
#endif
                        for (int g = 0; g < group; g++)
                            u8_dots((const int8_t *)q8[g], q8_sum[g], q8_scale[g], rows + r * c->ks,
                                    c->ks, row_scales + r, run - r < 16 ? run - r : 16, dk,
                                    scores[g] + (at - start) + r);
                    }
                }
            } else {
                cache_rows(k_head, table, c->kb * es, c->ks * es, bs, start, n, dk * es, krows);
                cache_rows(v_head, table, c->vb * es, c->vs * es, bs, start, n, dv * es, vrows);
            }
            for (int j = 0; j < n && !u8; j += 16) {
#if MRS_AVX512
                if (j + 16 <= n && dk % 16 == 0 && (start + j) / bs == (start + j + 15) / bs) {
                    /* 16 rows of one block; float16 ones converted once for all the heads */
                    if (f16 && group > 1) {
                        for (int r = 0; r < 16; r++)
                            for (int i = 0; i < dk; i += 16)
                                _mm512_storeu_ps(keys + r * dk + i, load16(krows[j + r], i, 1));
                        for (int g = 0; g < group; g++)
                            dots16_strided(q0 + g * c->q_h, (const char *)keys, dk * 4, dk, scores[g] + j, 0);
                    } else {
                        for (int g = 0; g < group; g++)
                            dots16_strided(q0 + g * c->q_h, krows[j], c->ks * es, dk, scores[g] + j, f16);
                    }
                    continue;
                }
#endif
                for (int g = 0; g < group; g++)
                    dots(q0 + g * c->q_h, krows + j, n - j < 16 ? n - j : 16, dk, scores[g] + j, f16);
            }
            for (int g = 0; g < group; g++) {
                float *sc = scores[g];
                float *st = partial_of(c, task, split, g), *o = st + 2;
                const float chunk_max = scale_scores(sc, n, c->scale, c->softcap);
                const float new_max = chunk_max > st[0] ? chunk_max : st[0];
                const float rescale = new_max == st[0] ? 1.0f : expf(st[0] - new_max);
                if (rescale != 1.0f)
                    for (int i = 0; i < dv; i++) o[i] *= rescale;
                st[1] = st[1] * rescale + exp_shifted(sc, new_max, sc, n);
                st[0] = new_max;
            }
            for (int g0 = 0; g0 < group; g0 += 4) {
                const int heads = group - g0 < 4 ? group - g0 : 4;
                float *o[4];
                const float *p[4];
                for (int g = 0; g < heads; g++) {
                    o[g] = partial_of(c, task, split, g0 + g) + 2;
                    p[g] = scores[g0 + g];
                }
                if (!u8) {
                    accumulate_values(o, p, heads, vrows, n, dv, f16);
                    continue;
                }
                for (int at = start, off, run; at < start + n; at += run) {
                    const long long block = block_run(table, bs, at, start + n, &off, &run);
                    const float *weights[4];
                    for (int g = 0; g < heads; g++) weights[g] = p[g] + (at - start);
                    u8_accumulate_values(
                        o, weights, heads, (const uint8_t *)v_head + block * c->vb + off * c->vs, c->vs,
                        (const float *)u8_scales(c->v_cache, block, c->vb, c->kv_heads, bs, dv, kvh) + off,
                        run, dv);
                }
            }
        }
        if (c->splits == 1) /* the item is the whole context: normalize here, on its thread */
            for (int g = 0; g < group; g++) {
                const float *st = partial_of(c, task, 0, g);
                const float inv = st[1] > 0.0f ? 1.0f / st[1] : 0.0f;
                float *o = c->out + (task * group + g) * dv;
                for (int i = 0; i < dv; i++) o[i] = st[2 + i] * inv;
            }
    }
}

static void decode_part(void *arg, int part, int parts) {
    const decode_ctx *c = arg;
    switch (c->kv_format) {
    case KV_F16: decode_items(c, part, parts, KV_F16); break;
    case KV_U8: decode_items(c, part, parts, KV_U8); break;
    default: decode_items(c, part, parts, KV_F32); break;
    }
}

/* Slices a context may be split into: enough items for two a thread, at most MAX_SPLITS. */
static int max_splits(long long tasks, int nthreads) {
    int splits = 1;
    while (tasks * splits < 2 * nthreads && splits < MRS_DECODE_MAX_SPLITS) splits *= 2;
    return splits;
}

void mrs_paged_decode_attention(const float *q, long long q_b, long long q_h,
                                const void *k_cache, long long kb, long long ks, long long kh,
                                const void *v_cache, long long vb, long long vs, long long vh,
                                int kv_format, const int32_t *context_lens,
                                const int32_t *block_tables, long long table_stride, int batch,
                                int q_heads, int kv_heads, int dk, int dv, int block_size,
                                float scale, int window, float softcap, float *out,
                                float *partial, int nthreads) {
    decode_ctx c = {q, q_b, q_h, k_cache, kb, ks, kh, v_cache, vb, vs, vh, kv_format, context_lens,
                    block_tables, table_stride, kv_heads, q_heads / kv_heads, dk, dv, block_size,
                    window, 1, scale, softcap, partial, 0, out};
    const long long tasks = (long long)batch * kv_heads;
    int longest = 0;
    for (int b = 0; b < batch; b++) longest = context_lens[b] > longest ? context_lens[b] : longest;
    while (c.splits < max_splits(tasks, nthreads) && longest / (2 * c.splits) >= 64) c.splits *= 2;
    c.items = tasks * c.splits;
    mrs_parallel(decode_part, &c, c.items > 1 ? nthreads : 1);
    if (c.splits == 1) return; /* each item normalized its own output */
    for (long long task = 0; task < tasks; task++) /* the slices merged */
        for (int g = 0; g < c.group; g++) {
            float m = -INFINITY, total = 0.0f;
            for (int s = 0; s < c.splits; s++) {
                const float sm = partial_of(&c, task, s, g)[0];
                m = sm > m ? sm : m;
            }
            float *o = out + (task * c.group + g) * dv;
            memset(o, 0, sizeof(float) * dv);
            for (int s = 0; s < c.splits; s++) {
                const float *st = partial_of(&c, task, s, g);
                if (st[1] == 0.0f) continue;
                const float w = expf(st[0] - m);
                total += st[1] * w;
                for (int i = 0; i < dv; i++) o[i] += w * st[2 + i];
            }
            const float inv = total > 0.0f ? 1.0f / total : 0.0f;
            for (int i = 0; i < dv; i++) o[i] *= inv;
        }
}

/* Floats of scratch `partial` that mrs_paged_decode_attention needs, for any context lengths
 * (a recorded decode step is replayed as its contexts grow). */
long long mrs_decode_attention_scratch(int batch, int q_heads, int kv_heads, int dv, int nthreads) {
    return (long long)batch * q_heads * max_splits((long long)batch * kv_heads, nthreads) * (2 + dv);
}

static void to_fp16(uint16_t *dst, const float *src, int n) {
    int i = 0;
#if MRS_AVX512
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#elif MRS_AVX2
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = fp32_to_fp16(src[i]);
}

/* Write token t's key and value rows (float32) into cache slot slots[t] (skipping negative
 * slots), as float32, float16 or uint8 codes and scales (`kv_format`, see the attention). */
void mrs_store_kv(const float *k, long long k_t, long long k_h, const float *v, long long v_t,
                  long long v_h, void *k_cache, long long kb, long long ks, long long kh,
                  void *v_cache, long long vb, long long vs, long long vh, int kv_format,
                  const int64_t *slots, long long tokens, int kv_heads, int dk, int dv,
                  int block_size) {
    for (long long t = 0; t < tokens; t++) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        const long long blk = slot / block_size, off = slot % block_size;
        for (int h = 0; h < kv_heads; h++) {
            const long long k_at = blk * kb + off * ks + h * kh, v_at = blk * vb + off * vs + h * vh;
            const float *ks_row = k + t * k_t + h * k_h, *vs_row = v + t * v_t + h * v_h;
            if (kv_format == KV_F32) {
                memcpy((float *)k_cache + k_at, ks_row, sizeof(float) * dk);
                memcpy((float *)v_cache + v_at, vs_row, sizeof(float) * dv);
            } else if (kv_format == KV_F16) {
                to_fp16((uint16_t *)k_cache + k_at, ks_row, dk);
                to_fp16((uint16_t *)v_cache + v_at, vs_row, dv);
            } else {
                const float k_scale = quantize_row((uint8_t *)k_cache + k_at, ks_row, dk, U8_BIAS, NULL);
                const float v_scale = quantize_row((uint8_t *)v_cache + v_at, vs_row, dv, U8_BIAS, NULL);
                memcpy((char *)u8_scales(k_cache, blk, kb, kv_heads, block_size, dk, h)
                           + off * sizeof(float), &k_scale, sizeof(float));
                memcpy((char *)u8_scales(v_cache, blk, vb, kv_heads, block_size, dv, h)
                           + off * sizeof(float), &v_scale, sizeof(float));
            }
        }
    }
}


/* For each row of x [rows, cols] (rows `stride` apart): the first index of its largest value
 * into argmax[r], and whether it holds a NaN into nan[r]; the rows split between threads. */
typedef struct {
    const float *x;
    long long rows, cols, stride;
    int64_t *argmax;
    int8_t *nan;
} argmax_ctx;

static void argmax_part(void *arg, int part, int parts) {
    const argmax_ctx *c = arg;
    const long long cols = c->cols;
    PART_RANGE(c->rows, part, parts, first, last);
    for (long long r = first; r < last; r++) {
        const float *row = c->x + r * c->stride;
        long long i = 0, best = 0;
        float best_value = cols ? row[0] : 0.0f;
        int has_nan = 0;
#if MRS_AVX512
        if (cols >= 64 && cols < (1ll << 31)) {
            /* lane-wise maxima of 4 interleaved sets of 16 columns (4 independent chains of
             * compare and select, first index per lane on ties), then the best lane */
            __m512 value[4];
            __m512i index[4];
            __mmask16 unordered = 0;
            const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            for (int t = 0; t < 4; t++) {
                value[t] = _mm512_loadu_ps(row + 16 * t);
                index[t] = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * t));
                unordered |= _mm512_cmp_ps_mask(value[t], value[t], _CMP_UNORD_Q);
            }
            __m512i at = lanes;
            for (i = 64; i + 64 <= cols; i += 64) {
                at = _mm512_add_epi32(at, _mm512_set1_epi32(64));
                for (int t = 0; t < 4; t++) {
                    const __m512 v = _mm512_loadu_ps(row + i + 16 * t);
                    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                    const __mmask16 better = _mm512_cmp_ps_mask(v, value[t], _CMP_GT_OQ);
                    value[t] = _mm512_mask_mov_ps(value[t], better, v);
                    index[t] = _mm512_mask_mov_epi32(index[t], better, _mm512_add_epi32(at, _mm512_set1_epi32(16 * t)));
                }
            }
            float values[64];
            int32_t indices[64];
            for (int t = 0; t < 4; t++) {
                _mm512_storeu_ps(values + 16 * t, value[t]);
                _mm512_storeu_si512(indices + 16 * t, index[t]);
            }
            best = indices[0];
            best_value = values[0];
            for (int lane = 1; lane < 64; lane++)
                if (values[lane] > best_value || (values[lane] == best_value && indices[lane] < best)) {
                    best_value = values[lane];
                    best = indices[lane];
                }
            has_nan = unordered != 0;
        }
#elif MRS_AVX2
        if (cols >= 8 && cols < (1ll << 31)) {
            __m256 value = _mm256_loadu_ps(row);
            __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), at = index;
            __m256 unordered = _mm256_cmp_ps(value, value, _CMP_UNORD_Q);
            for (i = 8; i + 8 <= cols; i += 8) {
                at = _mm256_add_epi32(at, _mm256_set1_epi32(8));
                const __m256 v = _mm256_loadu_ps(row + i);
                unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                const __m256 better = _mm256_cmp_ps(v, value, _CMP_GT_OQ);
                value = _mm256_blendv_ps(value, v, better);
                index = _mm256_blendv_epi8(index, at, _mm256_castps_si256(better));
            }
            float values[8];
            int32_t indices[8];
            _mm256_storeu_ps(values, value);
            _mm256_storeu_si256((__m256i *)indices, index);
            best = indices[0];
            best_value = values[0];
            for (int lane = 1; lane < 8; lane++)
                if (values[lane] > best_value || (values[lane] == best_value && indices[lane] < best)) {
                    best_value = values[lane];
                    best = indices[lane];
                }
            has_nan = _mm256_movemask_ps(unordered) != 0;
        }
#endif
        for (; i < cols; i++) {
            if (row[i] > best_value) { best_value = row[i]; best = i; }
            has_nan |= row[i] != row[i];
        }
        c->argmax[r] = best;
        c->nan[r] = (int8_t)has_nan;
    }
}

void mrs_argmax_rows(const float *x, long long rows, long long cols, long long stride,
                     int64_t *argmax, int8_t *nan, int nthreads) {
    argmax_ctx c = {x, rows, cols, stride, argmax, nan};
    mrs_parallel(argmax_part, &c, rows > 1 ? nthreads : 1);
}
