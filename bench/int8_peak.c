/* The int8 multiply-add throughput of one core, for the instruction the matmul kernels are
 * built on (`-march=native`): AVX-512 VNNI's vpdpbusd on 512 bits (64 multiply-adds), else
 * AVX2's vpmaddubsw on 256 bits (32). 12 independent accumulators, so that the loop is bound
 * by throughput, not latency. Prints multiply-adds per second. Built and run by cpu_matmul.py.
 * Built with -DFLOAT32: the float32 fused multiply-add instead (16 or 8 lanes), the
 * instruction of the CPU attention kernels, to hold their timings against. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const long rounds = 20000000;
#if defined(FLOAT32) && defined(__AVX512F__)
    __m512 acc[CHAINS];
    const __m512 w = _mm512_set1_ps(0.5f), x = _mm512_set1_ps(0.5f); /* converges to 1 */
    const int macs = 16;
#define STEP(a) _mm512_fmadd_ps(a, w, x)
#define ZERO _mm512_setzero_ps()
#elif defined(FLOAT32)
    __m256 acc[CHAINS];
    const __m256 w = _mm256_set1_ps(0.5f), x = _mm256_set1_ps(0.5f);
    const int macs = 8;
#define STEP(a) _mm256_fmadd_ps(a, w, x)
#define ZERO _mm256_setzero_ps()
#elif defined(__AVX512VNNI__)
    __m512i acc[CHAINS];
    const __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
    const int macs = 64;
#define STEP(a) _mm512_dpbusd_epi32(a, w, x)
#define ZERO _mm512_setzero_si512()
#else
    __m256i acc[CHAINS];
    const __m256i x = _mm256_set1_epi8(5);
    const int macs = 32;
#define STEP(a) _mm256_maddubs_epi16(a, x) /* codes x activations, pair sums */
#define ZERO _mm256_setzero_si256()
#endif
    for (int i = 0; i < CHAINS; i++) acc[i] = ZERO;
    const double start = now();
    for (long n = 0; n < rounds; n++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) {
            acc[i] = STEP(acc[i]);
            /* keep every step; unrolled, and acc[i] an input only: otherwise gcc kept acc[] in
             * memory, and the loop measured its loads and stores (~40% of the peak) */
            __asm__ volatile("" : : "v"(acc[i]));
        }
    const double seconds = now() - start;
    printf("%.6g\n", (double)rounds * CHAINS * macs / seconds);
    return 0;
}
