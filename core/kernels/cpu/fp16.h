/* IEEE half precision <-> float, in software (exact, ties to even), for the portable paths and
 * for single values; the AVX-512 paths convert 16 at a time with vcvtph2ps / vcvtps2ph. */
#ifndef MRS_FP16_H
#define MRS_FP16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) bits = sign;
    else { /* subnormal: normalize */
        exp = 113;
        while (!(man & 1024)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 1023) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u; /* NaN */
    if (x >= 0x477ff000u) return sign | 0x7c00u; /* rounds to infinity */
    if (x < 0x38800000u) { /* below 2^-14: a subnormal half, in units of 2^-24 */
        float a;
        memcpy(&a, &x, 4);
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    }
    x += 0x0fffu + ((x >> 13) & 1u);
    return sign | (uint16_t)((x - 0x38000000u) >> 13);
}

/* f rounded to the nearest fp16 value, as a float. */
static inline float round_fp16(float f) { return fp16_to_fp32(fp32_to_fp16(f)); }

#endif
