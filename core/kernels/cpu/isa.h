/* Which vector instructions the kernels are compiled for (by -march=native, or the flags of a
 * test build): MRS_AVX512 (F, BW, VL), MRS_VNNI (that and the int8 dot-product instruction),
 * MRS_AVX2 (AVX2 with FMA and F16C: the x86-64 CPUs without AVX-512, e.g. AMD Zen 1-3). Code
 * under `#if MRS_AVX512 ... #elif MRS_AVX2` takes the widest; every kernel also has portable C. */
#ifndef MRS_ISA_H
#define MRS_ISA_H

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MRS_AVX512 1
#else
#define MRS_AVX512 0
#endif

#if MRS_AVX512 && defined(__AVX512VNNI__)
#define MRS_VNNI 1
#else
#define MRS_VNNI 0
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MRS_AVX2 1
#else
#define MRS_AVX2 0
#endif

#if MRS_AVX512 || MRS_AVX2
#include <immintrin.h>
#endif

/* `stmt` with H the compile-time constant that `heads` (1..4; more counts as 4) is: an
 * always-inline body with per-head accumulators, given a constant head count, keeps them in
 * registers (with a count known only at run time gcc kept them on the stack, and the 8-bit
 * cache's attention took 25% longer). */
#define MRS_CONSTANT_HEADS(heads, stmt)            \
    switch (heads) {                               \
    case 1: { enum { H = 1 }; stmt; } break;       \
    case 2: { enum { H = 2 }; stmt; } break;       \
    case 3: { enum { H = 3 }; stmt; } break;       \
    default: { enum { H = 4 }; stmt; } break;      \
    }

#endif
