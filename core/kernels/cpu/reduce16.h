/* Transposing reductions of 16 AVX-512 vectors: lane r of the result = op over the 16 lanes of
 * a[r], ~3 instructions a vector instead of ~10 for one horizontal reduction each (a tree of
 * lane pairs: unpack, then 64-bit and 128-bit shuffles). */
#ifndef MRS_REDUCE16_H
#define MRS_REDUCE16_H

#include "isa.h"

#if MRS_AVX512
#define MRS_REDUCE16(name, op)                                                                 \
    static inline __m512 name(const __m512 a[16]) {                                            \
        __m512 b[8], c4[4];                                                                    \
        for (int i = 0; i < 8; i++)                                                            \
            b[i] = op(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),                              \
                      _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));                             \
        for (int i = 0; i < 4; i++)                                                            \
            c4[i] = op(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),                        \
                       _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));                       \
        const __m512 u01 = op(_mm512_shuffle_f32x4(c4[0], c4[1], 0x44),                        \
                              _mm512_shuffle_f32x4(c4[0], c4[1], 0xEE));                       \
        const __m512 u23 = op(_mm512_shuffle_f32x4(c4[2], c4[3], 0x44),                        \
                              _mm512_shuffle_f32x4(c4[2], c4[3], 0xEE));                       \
        return op(_mm512_shuffle_f32x4(u01, u23, 0x88), _mm512_shuffle_f32x4(u01, u23, 0xDD)); \
    }
MRS_REDUCE16(reduce16_add, _mm512_add_ps)
MRS_REDUCE16(reduce16_max, _mm512_max_ps)
/* on int32 lanes (the vectors' bits as they are) */
static inline __m512 add_epi32_bits(__m512 a, __m512 b) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
MRS_REDUCE16(reduce16_add_epi32, add_epi32_bits)
#undef MRS_REDUCE16
#endif

#endif
