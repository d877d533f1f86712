/* Quantized matmul for the CPU: y = x @ W.T with W in GGUF blocks and x in float32.
 *
 * The weights are repacked once (at load) into records of 16 rows x 32 columns, so that one
 * AVX-512 register holds 4 consecutive quants of each of the 16 rows: a VNNI dot-product
 * instruction then advances 16 output rows by 4 columns at once, the output rows land in the
 * lanes (no horizontal sums), and the per-block float scaling is one multiply-add per 16 rows.
 * AVX2 builds take each record as two halves of 8 lanes (`tile_avx2`).
 * The activations are quantized per 32 columns to int8 (scale = max|x| / 127), as llama.cpp
 * does, so every dot product of 32 is exact in int32 before one float scaling.
 *
 * Every supported type is stored as unsigned codes u (0 <= u < 2^bits) with, per sub-block of
 * `sub` (16 or 32) columns, a scale d and either an integer offset c or a float min m:
 *     w = d * (u + c)      or      w = d * u + m
 * which reproduces gguf-py's float arithmetic exactly (d and m are products of the file's own
 * fields, formed in float32 in the same order).
 *
 * A record (one group g of 16 rows, one block b of 32 columns) holds, in order:
 *   codes:  bits == 8: 512 bytes, chunk c (columns 4c..4c+3) of lane j at byte 64c + 4j + i;
 *           4 <= bits < 8: 256 bytes of nibbles, byte 64p + 4j + i = chunk p (low nibble) and
 *           chunk p + 4 (high nibble), i.e. columns 4p + i and 16 + 4p + i;
 *           bits < 4: none.
 *   planes: the code bits above the nibble (or all bits, for bits < 4), one 64-bit mask per
 *           chunk and plane: bit 4j + i of mask [c][p] is that bit of column 4c + i of lane j.
 *           Builds without VNNI store the hb = bits - 4 bits above the nibble of 5- to 7-bit
 *           codes as fields instead (`high_fields`), which shifts put in place for 8 lanes at
 *           a time (AVX-512 adds planes under a mask in one instruction; AVX2 has no masks):
 *           byte 64 (c % hb) + 4j + i holds them for column 4c + i of lane j at bit (c / hb) hb.
 *   scales: per sub-block h, 16 lanes of d (fp16 for the legacy types, whose fields are fp16,
 *           fp32 for the K-quants, whose d is a product), then as many of m when the type has one.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fp16.h"
#include "isa.h"
#include "reduce16.h"
#include "threads.h"

#define LANES 16
#define BLOCK 32

/* GGML type ids. */
enum {
    T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15,
};

typedef struct {
    int bits, sub, has_min, f16, offset;
    int block_bytes, block_elems; /* of the GGUF type */
} layout_t;

/* Every type the kernels take: X(type id, name, then its layout_t fields). One list, expanded
 * into the lookup table and into the loops that need the layout as a compile-time constant
 * (repacking, the VNNI tiles). */
#define MRS_TYPES(X)                                   \
    X(T_Q4_0, q4_0, 4, 32, 0, 1, -8, 18, 32)           \
    X(T_Q4_1, q4_1, 4, 32, 1, 1, 0, 20, 32)            \
    X(T_Q5_0, q5_0, 5, 32, 0, 1, -16, 22, 32)          \
    X(T_Q5_1, q5_1, 5, 32, 1, 1, 0, 24, 32)            \
    X(T_Q8_0, q8_0, 8, 32, 0, 1, -128, 34, 32)         \
    X(T_Q2_K, q2_k, 2, 16, 1, 0, 0, 84, 256)           \
    X(T_Q3_K, q3_k, 3, 16, 0, 0, -4, 110, 256)         \
    X(T_Q4_K, q4_k, 4, 32, 1, 0, 0, 144, 256)          \
    X(T_Q5_K, q5_k, 5, 32, 1, 0, 0, 176, 256)          \
    X(T_Q6_K, q6_k, 6, 16, 0, 0, -32, 210, 256)        \
    X(T_Q8_K, q8_k, 8, 32, 0, 0, -128, 292, 256)

#define OFFSET_IS_MINUS_POWER_OF_TWO(T, name, bits, sub, has_min, f16, offset, ...) \
    _Static_assert((offset) == 0 || ((-(offset)) & (-(offset) - 1)) == 0,        \
                   #name ": tile_vnni takes the offset as -2^s");
MRS_TYPES(OFFSET_IS_MINUS_POWER_OF_TWO)
#undef OFFSET_IS_MINUS_POWER_OF_TWO

static int layout_of(int qtype, layout_t *l) {
#define LAYOUT_ROW(T, name, ...) {T, {__VA_ARGS__}},
    static const struct { int qtype; layout_t l; } table[] = {MRS_TYPES(LAYOUT_ROW)};
#undef LAYOUT_ROW
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].qtype == qtype) { *l = table[i].l; return 1; }
    return 0;
}

static int code_bytes(const layout_t *l) { return l->bits == 8 ? 512 : (l->bits >= 4 ? 256 : 0); }
static int num_planes(const layout_t *l) { return l->bits == 8 ? 0 : (l->bits >= 4 ? l->bits - 4 : l->bits); }
static int scale_bytes(const layout_t *l) {
    return (BLOCK / l->sub) * LANES * (l->f16 ? 2 : 4) * (1 + l->has_min);
}
/* Bits above the nibble kept as fields (see the layout above), 0 where planes hold them. */
static inline int high_fields(const layout_t *l) {
    return !MRS_VNNI && l->bits > 4 && l->bits < 8 ? l->bits - 4 : 0;
}
static int record_bytes(const layout_t *l) {
    return code_bytes(l) + 64 * num_planes(l) + scale_bytes(l);
}

/* ---- reading one GGUF block of 32 columns: codes u[32], and per sub-block d, m ---------- */

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static void scale_min_k4(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Block b (32 columns) of a row. d16/m16: the raw fp16 fields (legacy types); d/m: float per
 * sub-block (K-quants). */
static inline __attribute__((always_inline)) void read_block(int qtype, const uint8_t *row, int b, uint8_t u[BLOCK],
                       uint16_t *d16, uint16_t *m16, float d[2], float m[2]) {
    const uint8_t *x;
    int i;
    switch (qtype) {
    case T_Q4_0:
    case T_Q4_1: {
        int head = qtype == T_Q4_0 ? 2 : 4;
        x = row + (size_t)b * (head + 16);
        *d16 = rd16(x);
        if (qtype == T_Q4_1) *m16 = rd16(x + 2);
        for (i = 0; i < 16; i++) { u[i] = x[head + i] & 15; u[i + 16] = x[head + i] >> 4; }
        return;
    }
    case T_Q5_0:
    case T_Q5_1: {
        int head = qtype == T_Q5_0 ? 2 : 4;
        x = row + (size_t)b * (head + 20);
        *d16 = rd16(x);
        if (qtype == T_Q5_1) *m16 = rd16(x + 2);
        uint32_t qh = rd32(x + head);
        const uint8_t *qs = x + head + 4;
        for (i = 0; i < 16; i++) {
            u[i] = (qs[i] & 15) | (((qh >> i) & 1) << 4);
            u[i + 16] = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
        }
        return;
    }
    case T_Q8_0:
        x = row + (size_t)b * 34;
        *d16 = rd16(x);
        for (i = 0; i < 32; i++) u[i] = x[2 + i] ^ 0x80;
        return;
    case T_Q8_K:
        x = row + (size_t)(b / 8) * 292;
        memcpy(&d[0], x, 4);
        for (i = 0; i < 32; i++) u[i] = x[4 + (b % 8) * 32 + i] ^ 0x80;
        return;
    case T_Q4_K:
    case T_Q5_K: {
        int j = b % 8, sc, mn;
        x = row + (size_t)(b / 8) * (qtype == T_Q4_K ? 144 : 176);
        float dall = fp16_to_fp32(rd16(x)), dmin = fp16_to_fp32(rd16(x + 2));
        scale_min_k4(j, x + 4, &sc, &mn);
        d[0] = dall * (float)sc;
        m[0] = -(dmin * (float)mn);
        const uint8_t *qs = x + (qtype == T_Q4_K ? 16 : 48) + 32 * (j / 2);
        for (i = 0; i < 32; i++) {
            u[i] = (j & 1) ? qs[i] >> 4 : qs[i] & 15;
            if (qtype == T_Q5_K) u[i] |= ((x[16 + i] >> j) & 1) << 4;
        }
        return;
    }
    case T_Q6_K: {
        int n = (b % 8) / 4, r = b % 4;
        x = row + (size_t)(b / 8) * 210;
        float dall = fp16_to_fp32(rd16(x + 208));
        const int8_t *sc = (const int8_t *)(x + 192) + 8 * n + 2 * r;
        d[0] = dall * (float)sc[0];
        d[1] = dall * (float)sc[1];
        const uint8_t *ql = x + 64 * n + 32 * (r & 1), *qh = x + 128 + 32 * n;
        for (i = 0; i < 32; i++)
            u[i] = ((r < 2 ? ql[i] & 15 : ql[i] >> 4)) | (((qh[i] >> (2 * r)) & 3) << 4);
        return;
    }
    case T_Q2_K: {
        int n = (b % 8) / 4, j = b % 4;
        x = row + (size_t)(b / 8) * 84;
        float dall = fp16_to_fp32(rd16(x + 80)), dmin = fp16_to_fp32(rd16(x + 82));
        for (int h = 0; h < 2; h++) {
            int s = x[8 * n + 2 * j + h];
            d[h] = dall * (float)(s & 15);
            m[h] = -(dmin * (float)(s >> 4));
        }
        for (i = 0; i < 32; i++) u[i] = (x[16 + 32 * n + i] >> (2 * j)) & 3;
        return;
    }
    case T_Q3_K: {
        int n = (b % 8) / 4, j = b % 4;
        x = row + (size_t)(b / 8) * 110;
        float dall = fp16_to_fp32(rd16(x + 108));
        const uint8_t *s = x + 96;
        for (int h = 0; h < 2; h++) {
            int k = 8 * n + 2 * j + h;
            int low = k < 8 ? s[k] & 15 : s[k - 8] >> 4;
            int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
            d[h] = dall * (float)((low | (high << 4)) - 32);
        }
        for (i = 0; i < 32; i++)
            u[i] = ((x[32 + 32 * n + i] >> (2 * j)) & 3) | (((x[i] >> (b % 8)) & 1) << 2);
        return;
    }
    }
}

/* ---- repacking ------------------------------------------------------------------------ */

long long mrs_repacked_bytes(int qtype, long long n, long long k) {
    layout_t l;
    if (!layout_of(qtype, &l) || k % l.block_elems) return -1;
    return ((n + LANES - 1) / LANES) * (k / BLOCK) * record_bytes(&l);
}

/* Inlined into one loop per type (`repack_part`), so that the type's layout is constant. */
static inline __attribute__((always_inline)) void repack_record(
    int qtype, const layout_t *l, const uint8_t *src, long long row_bytes, long long n, int g,
    int b, uint8_t *rec) {
    int np = num_planes(l), nsub = BLOCK / l->sub, es = l->f16 ? 2 : 4;
    uint8_t *codes = rec, *planes = rec + code_bytes(l), *scales = planes + 64 * np;
    uint64_t pl[8][4];
    memset(rec, 0, record_bytes(l));
    memset(pl, 0, sizeof pl);
    for (int j = 0; j < LANES; j++) {
        long long r = (long long)g * LANES + j;
        if (r >= n) break; /* padding rows: zero codes and scales */
        if (l->block_elems == BLOCK) { /* legacy types: their bytes already pair the columns */
            const uint8_t *x = src + r * row_bytes + (long long)b * l->block_bytes;
            const int head = l->has_min ? 4 : 2;
            const uint8_t *qs = x + head + (l->bits == 5 ? 4 : 0);
            for (int c = 0; c < (l->bits == 8 ? 8 : 4); c++) {
                uint32_t w;
                memcpy(&w, qs + 4 * c, 4);
                if (l->bits == 8) w ^= 0x80808080u;
                memcpy(codes + 64 * c + 4 * j, &w, 4);
            }
            if (l->bits == 5) {
                const uint32_t qh = rd32(x + head);
                for (int c = 0; c < 8; c++) {
                    if (high_fields(l))
                        for (int i = 0; i < 4; i++) planes[4 * j + i] |= (uint8_t)(((qh >> (4 * c + i)) & 1) << c);
                    else
                        pl[c][0] |= (uint64_t)((qh >> (4 * c)) & 15) << (4 * j);
                }
            }
            memcpy(scales + 2 * j, x, 2);
            if (l->has_min) memcpy(scales + 2 * LANES + 2 * j, x + 2, 2);
            continue;
        }
        uint8_t u[BLOCK];
        uint16_t d16 = 0, m16 = 0;
        float d[2] = {0, 0}, m[2] = {0, 0};
        read_block(qtype, src + r * row_bytes, b, u, &d16, &m16, d, m);
        for (int c = 0; c < 8; c++)
            for (int i = 0; i < 4; i++) {
                int col = 4 * c + i, v = u[col];
                if (l->bits == 8) codes[64 * c + 4 * j + i] = (uint8_t)v;
                else if (l->bits >= 4) {
                    codes[64 * (c % 4) + 4 * j + i] |= (uint8_t)((v & 15) << (c < 4 ? 0 : 4));
                    v >>= 4;
                }
                const int hb = high_fields(l);
                if (hb)
                    planes[64 * (c % hb) + 4 * j + i] |= (uint8_t)(v << (c / hb * hb));
                else if (l->bits != 8)
                    for (int p = 0; p < np; p++) pl[c][p] |= (uint64_t)((v >> p) & 1) << (4 * j + i);
            }
        for (int h = 0; h < nsub; h++) {
            uint8_t *ds = scales + h * LANES * es, *ms = scales + (nsub + h) * LANES * es;
            if (l->f16) {
                memcpy(ds + 2 * j, &d16, 2);
                if (l->has_min) memcpy(ms + 2 * j, &m16, 2);
            } else {
                float dv = l->sub == 32 ? d[0] : d[h], mv = l->sub == 32 ? m[0] : m[h];
                memcpy(ds + 4 * j, &dv, 4);
                if (l->has_min) memcpy(ms + 4 * j, &mv, 4);
            }
        }
    }
    if (!high_fields(l))
        for (int c = 0; c < 8; c++)
            for (int p = 0; p < np; p++) memcpy(planes + 8 * (c * np + p), &pl[c][p], 8);
}

typedef struct {
    int qtype;
    layout_t l;
    const uint8_t *src;
    long long row_bytes, n, record;
    int groups, blocks;
    uint8_t *dst;
} repack_ctx;

#define REPACK_CASE(T, name, ...)                                                             \
    case T: {                                                                                  \
        const layout_t l = {__VA_ARGS__};                                                      \
        for (int g = first; g < last; g++)                                                     \
            for (int b = 0; b < c->blocks; b++)                                                \
                repack_record(T, &l, c->src, c->row_bytes, c->n, g, b,                         \
                              c->dst + ((long long)g * c->blocks + b) * c->record);            \
        return;                                                                                \
    }

static void repack_part(void *arg, int part, int parts) {
    const repack_ctx *c = arg;
    const int first = (int)((long long)c->groups * part / parts);
    const int last = (int)((long long)c->groups * (part + 1) / parts);
    switch (c->qtype) { MRS_TYPES(REPACK_CASE) }
}

/* src: n rows of GGUF blocks, row_bytes each; dst: mrs_repacked_bytes(...) bytes. */
int mrs_repack(int qtype, const uint8_t *src, long long n, long long k, uint8_t *dst, int nthreads) {
    repack_ctx c = {qtype, {0}, src, 0, n, 0, 0, 0, dst};
    if (!layout_of(qtype, &c.l) || k % c.l.block_elems) return -1;
    c.row_bytes = k / c.l.block_elems * c.l.block_bytes;
    c.record = record_bytes(&c.l);
    c.groups = (int)((n + LANES - 1) / LANES);
    c.blocks = (int)(k / BLOCK);
    mrs_parallel(repack_part, &c, nthreads);
    return 0;
}

/* ---- repacking on the background thread (threads.c) ---------------------------------- */

typedef struct {
    int qtype, release;
    const uint8_t *src;
    long long n, k, src_bytes;
    uint8_t *dst;
} repack_job;

static void run_repack_job(void *arg) {
    const repack_job *j = arg;
    mrs_repack(j->qtype, j->src, j->n, j->k, j->dst, 1);
    if (!j->release) return;
    /* the whole pages of the source, a read-only file mapping (read from the file again if
     * anything touches them later) */
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t first = ((uintptr_t)j->src + page - 1) / page * page;
    const uintptr_t last = ((uintptr_t)j->src + (uintptr_t)j->src_bytes) / page * page;
    if (last > first) madvise((void *)first, last - first, MADV_DONTNEED);
}

/* mrs_repack(qtype, src, n, k, dst, 1) on the background thread; with `release`, the source's
 * pages are then dropped from memory. Returns 0, or -1 (nothing queued: repack here instead).
 * src and dst must stay valid until mrs_background_wait() returns. */
int mrs_repack_background(int qtype, const uint8_t *src, long long n, long long k, uint8_t *dst,
                          int release) {
    layout_t l;
    if (!layout_of(qtype, &l) || k % l.block_elems) return -1;
    repack_job *job = malloc(sizeof *job);
    if (!job) return -1;
    *job = (repack_job){qtype, release, src, n, k, n * (k / l.block_elems * l.block_bytes), dst};
    if (mrs_background(run_repack_job, job) != 0) {
        free(job);
        return -1;
    }
    return 0;
}

/* Code of column `col` (0..31) of lane j in a record. */
static int record_code(const layout_t *l, const uint8_t *rec, int j, int col) {
    const int c = col / 4, i = col % 4, np = num_planes(l);
    const uint8_t *planes = rec + code_bytes(l);
    int v = 0;
    if (l->bits == 8) v = rec[64 * c + 4 * j + i];
    else if (l->bits >= 4) v = (rec[64 * (c % 4) + 4 * j + i] >> (c < 4 ? 0 : 4)) & 15;
    const int hb = high_fields(l);
    if (hb) return v | ((planes[64 * (c % hb) + 4 * j + i] >> (c / hb * hb)) & ((1 << hb) - 1)) << 4;
    for (int p = 0; p < np; p++) {
        uint64_t mask;
        memcpy(&mask, planes + 8 * (c * np + p), 8);
        v |= (int)((mask >> (4 * j + i)) & 1) << (p + (l->bits >= 4 ? 4 : 0));
    }
    return v;
}

/* Scale d and min m (0 for types without one) of sub-block h of lane j in a record. */
static void record_scales(const layout_t *l, const uint8_t *rec, int j, int h, float *d, float *m) {
    const int nsub = BLOCK / l->sub, es = l->f16 ? 2 : 4;
    const uint8_t *scales = rec + code_bytes(l) + 64 * num_planes(l);
    const uint8_t *ds = scales + h * LANES * es, *ms = scales + (nsub + h) * LANES * es;
    *m = 0.0f;
    if (l->f16) {
        *d = fp16_to_fp32(rd16(ds + 2 * j));
        if (l->has_min) *m = fp16_to_fp32(rd16(ms + 2 * j));
    } else {
        memcpy(d, ds + 4 * j, 4);
        if (l->has_min) memcpy(m, ms + 4 * j, 4);
    }
}

/* Ask for the records of row `row`'s group (a row's codes and scales are spread over all of
 * their lines). */
static void prefetch_row_records(const layout_t *l, const uint8_t *w, int blocks, long long row) {
    const long long bytes = blocks * record_bytes(l);
    const uint8_t *group = w + row / LANES * bytes;
    for (long long at = 0; at < bytes; at += 64) __builtin_prefetch(group + at, 0, 2);
}

/* Row `row` of a repacked matrix (`blocks` records per group) times `scale` into out [k]. */
static void repacked_row(const layout_t *l, const uint8_t *w, int blocks, long long row,
                         float scale, float *out) {
    const int g = (int)(row / LANES), j = (int)(row % LANES);
    const long long rb = record_bytes(l);
    for (int b = 0; b < blocks; b++) {
        const uint8_t *rec = w + ((long long)g * blocks + b) * rb;
        float d = 0.0f, m = 0.0f;
        for (int col = 0; col < BLOCK; col++) {
            if (col % l->sub == 0) record_scales(l, rec, j, col / l->sub, &d, &m);
            const int v = record_code(l, rec, j, col);
            const float value = l->has_min ? d * (float)v + m : d * (float)(v + l->offset);
            out[(long long)b * BLOCK + col] = scale != 1.0f ? value * scale : value;
        }
    }
}

/* The weights a repacked matrix stands for, float32 [n, k] (the tests' view of a repack). */
int mrs_dequantize_repacked(int qtype, const uint8_t *w, long long n, long long k, float *out) {
    layout_t l;
    if (!layout_of(qtype, &l) || k % l.block_elems) return -1;
    for (long long r = 0; r < n; r++) repacked_row(&l, w, (int)(k / BLOCK), r, 1.0f, out + r * k);
    return 0;
}

/* Row `src_row` of a GGUF matrix (k columns) times `scale` into out [k]. */
static void gguf_row(int qtype, const layout_t *l, const uint8_t *src_row, long long k, float scale,
                     float *out) {
    for (int b = 0; b < k / BLOCK; b++) {
        uint8_t u[BLOCK];
        uint16_t d16 = 0, m16 = 0;
        float d[2] = {0, 0}, m[2] = {0, 0};
        read_block(qtype, src_row, b, u, &d16, &m16, d, m);
        if (l->f16) {
            d[0] = d[1] = fp16_to_fp32(d16);
            m[0] = m[1] = fp16_to_fp32(m16);
        } else if (l->sub == 32) {
            d[1] = d[0];
            m[1] = m[0];
        }
        float *o = out + (long long)b * BLOCK;
        for (int i = 0; i < BLOCK; i++) {
            const int h = i / 16;
            o[i] = l->has_min ? d[h] * (float)u[i] + m[h] : d[h] * (float)(u[i] + l->offset);
            if (scale != 1.0f) o[i] *= scale;
        }
    }
}

/* Embedding lookups: rows ids[i] of a table (repacked records, or a GGUF matrix's rows). */
typedef struct {
    int qtype, repacked;
    layout_t l;
    const uint8_t *table;
    const int64_t *ids;
    long long n_ids, k;
    float scale;
    float *out;
} lookup_ctx;

static void lookup_part(void *arg, int part, int parts) {
    const lookup_ctx *c = arg;
    const int blocks = (int)(c->k / BLOCK);
    const long long first = c->n_ids * part / parts, last = c->n_ids * (part + 1) / parts;
    const long long gguf_row_bytes = c->k / c->l.block_elems * c->l.block_bytes;
    /* the rows come from memory, and are few: ask for all of them first */
    for (long long r = first; r < last && c->repacked; r++)
        prefetch_row_records(&c->l, c->table, blocks, c->ids[r]);
    for (long long r = first; r < last; r++) {
        float *out = c->out + r * c->k;
        if (c->repacked) repacked_row(&c->l, c->table, blocks, c->ids[r], c->scale, out);
        else gguf_row(c->qtype, &c->l, c->table + c->ids[r] * gguf_row_bytes, c->k, c->scale, out);
    }
}

/* Rows ids[i] of a [n, k] table of `qtype` times `scale`, as float32 [n_ids, k], the rows
 * split between threads. Returns -1 for a type or k the kernels do not take, -2 (writing
 * nothing) for an id outside 0..n-1, else 0. */
static int lookup_rows(int qtype, int repacked, const uint8_t *table, long long n, long long k,
                       const int64_t *ids, long long n_ids, float scale, float *out, int nthreads) {
    lookup_ctx c = {.qtype = qtype, .repacked = repacked, .table = table, .ids = ids,
                    .n_ids = n_ids, .k = k, .scale = scale, .out = out};
    if (!layout_of(qtype, &c.l) || k % c.l.block_elems) return -1;
    for (long long r = 0; r < n_ids; r++)
        if (ids[r] < 0 || ids[r] >= n) return -2;
    mrs_parallel(lookup_part, &c, n_ids > 1 ? nthreads : 1);
    return 0;
}

/* The rows of a table tied to an output layer, from its repacked records. */
int mrs_dequantize_repacked_rows(int qtype, const uint8_t *w, long long n, long long k,
                                 const int64_t *ids, long long n_ids, float scale, float *out,
                                 int nthreads) {
    return lookup_rows(qtype, 1, w, n, k, ids, n_ids, scale, out, nthreads);
}

/* The rows of a GGUF matrix [n_rows, k]. */
int mrs_dequantize_rows(int qtype, const uint8_t *src, long long n_rows, long long k,
                        const int64_t *ids, long long n_ids, float scale, float *out,
                        int nthreads) {
    return lookup_rows(qtype, 0, src, n_rows, k, ids, n_ids, scale, out, nthreads);
}

/* ---- activations ---------------------------------------------------------------------- */
/* One row of k columns quantized as llama.cpp quantizes the activations each weight type is
 * multiplied with: the legacy types take Q8_0/Q8_1 (groups of 32, scale max|x| / 127 stored as
 * fp16), the K-quants Q8_K (groups of 256, float32 scale). Stored: q int8 [k]; per block of 32
 * the scale d and d * the block's code sum (fp16-rounded, as Q8_1's); per half block of 16 the
 * code sum and d * it. */

typedef struct {
    int8_t *q;
    float *d, *dsum32;
    int32_t *sum16;
    float *dsum16;
} act_row_t;

static long long act_row_bytes(long long k) { return k + (k / BLOCK) * 8 + (k / 16) * 8; }

static act_row_t act_row(uint8_t *base, long long k, long long r) {
    uint8_t *p = base + r * act_row_bytes(k);
    const long long nb = k / BLOCK;
    act_row_t a = {(int8_t *)p, (float *)(p + k), (float *)(p + k + 4 * nb),
                   (int32_t *)(p + k + 8 * nb), (float *)(p + k + 8 * nb + 8 * nb)};
    return a;
}

/* The largest |x[i]| of x[0..n) (n a multiple of 16). */
static float abs_max(const float *x, int n) {
    int i = 0;
    float amax = 0.0f;
#if MRS_AVX512
    __m512 m = _mm512_setzero_ps();
    for (; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    amax = _mm512_reduce_max_ps(m);
#elif MRS_AVX2
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (; i < n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), magnitude));
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    for (int j = 0; j < 8; j++) amax = lanes[j] > amax ? lanes[j] : amax;
#endif
    for (; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    return amax;
}

/* q[i] = min(round(x[i] * id), 127) for i < 16 (rounding half to even, as nearbyintf in the
 * default mode); returns their sum. */
static int32_t quantize16(const float *x, float id, int8_t *q) {
#if MRS_AVX512
    const __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(id)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i codes = _mm512_cvtps_epi32(_mm512_min_ps(v, _mm512_set1_ps(127.0f)));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(codes));
    return _mm512_reduce_add_epi32(codes);
#elif MRS_AVX2
    __m256i codes[2];
    for (int h = 0; h < 2; h++) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * h), _mm256_set1_ps(id)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        codes[h] = _mm256_cvtps_epi32(_mm256_min_ps(v, _mm256_set1_ps(127.0f)));
    }
    /* int32 -> int16 -> int8, each pack interleaving 128-bit lanes: permute them back */
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(codes[0], codes[1]), 0xD8);
    _mm_storeu_si128((__m128i *)q, _mm_packs_epi16(_mm256_castsi256_si128(words),
                                                   _mm256_extracti128_si256(words, 1)));
    const __m256i sum = _mm256_add_epi32(codes[0], codes[1]);
    int32_t lanes[8], total = 0;
    _mm256_storeu_si256((__m256i *)lanes, sum);
    for (int j = 0; j < 8; j++) total += lanes[j];
    return total;
#else
    int32_t total = 0;
    for (int i = 0; i < 16; i++) {
        int v = (int)nearbyintf(x[i] * id);
        q[i] = (int8_t)(v > 127 ? 127 : v);
        total += q[i];
    }
    return total;
#endif
}

#if MRS_AVX512
/* quantize_row's Q8_0 arithmetic for blocks b0 .. b0 + nb - 1 (nb <= 16) of a row at once, with
 * the horizontal reductions done across blocks (reduce16): lane i of one vector is the scale of
 * block b0 + i, lane j of another the code sum of half block j (summed as floats, exact for
 * integers this small). The per-block path spends a horizontal reduction on each. Bit for bit
 * the same results. */
static void quantize_q8_0_blocks(const float *x, long long b0, int nb, act_row_t a) {
    const __m512 zero = _mm512_setzero_ps();
    const int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512 v[16];
    for (int i = 0; i < 16; i++) {
        const float *p = x + (b0 + i) * BLOCK;
        v[i] = i < nb ? _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(p)),
                                      _mm512_abs_ps(_mm512_loadu_ps(p + 16)))
                      : zero;
    }
    const __m512 d = _mm512_div_ps(reduce16_max(v), _mm512_set1_ps(127.0f));
    const __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, zero, _CMP_NEQ_OQ),
                                          _mm512_set1_ps(1.0f), d);
    _mm512_mask_storeu_ps(a.d + b0, (__mmask16)((1u << nb) - 1),
                          _mm512_cvtph_ps(_mm512_cvtps_ph(d, rne)));
    const __m512i pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int eighth = 0; 8 * eighth < nb; eighth++) { /* blocks 8 eighth .. + 7: 16 half blocks */
        const int first = 8 * eighth, count = nb - first < 8 ? nb - first : 8;
        for (int i = 0; i < 8; i++)
            for (int h = 0; h < 2; h++) {
                if (i >= count) { v[2 * i + h] = zero; continue; }
                const long long at = (b0 + first + i) * BLOCK + 16 * h;
                const __m512 scale = _mm512_permutexvar_ps(_mm512_set1_epi32(first + i), id);
                v[2 * i + h] = _mm512_min_ps(
                    _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + at), scale), rne),
                    _mm512_set1_ps(127.0f));
                _mm_storeu_si128((__m128i *)(a.q + at), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v[2 * i + h])));
            }
        const __m512 sums = reduce16_add(v); /* lane j: half block j */
        const __m512 dh = _mm512_permutexvar_ps(_mm512_add_epi32(pairs, _mm512_set1_epi32(first)), d);
        const __mmask16 halves = (__mmask16)((1u << 2 * count) - 1);
        _mm512_mask_storeu_epi32(a.sum16 + 2 * (b0 + first), halves, _mm512_cvtps_epi32(sums));
        _mm512_mask_storeu_ps(a.dsum16 + 2 * (b0 + first), halves, _mm512_mul_ps(dh, sums));
        const __m512 block_sums = _mm512_add_ps(_mm512_permutexvar_ps(even, sums),
            _mm512_permutexvar_ps(_mm512_add_epi32(even, _mm512_set1_epi32(1)), sums));
        const __m512 db = _mm512_permutexvar_ps(_mm512_add_epi32(_mm512_setr_epi32(
            0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0), _mm512_set1_epi32(first)), d);
        _mm512_mask_storeu_ps(a.dsum32 + b0 + first, (__mmask16)((1u << count) - 1),
                              _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_mul_ps(db, block_sums), rne)));
    }
}
#endif

static void quantize_row(const float *x, long long k, int group, act_row_t a) {
#if MRS_AVX512
    if (group == BLOCK) {
        for (long long b0 = 0; b0 < k / BLOCK; b0 += 16)
            quantize_q8_0_blocks(x, b0, (int)(k / BLOCK - b0 < 16 ? k / BLOCK - b0 : 16), a);
        return;
    }
#endif
    for (long long g0 = 0; g0 < k; g0 += group) {
        const float amax = abs_max(x + g0, group);
        float d, id;
        if (group == BLOCK) { /* Q8_0 */
            d = amax / 127.0f;
            id = d != 0.0f ? 1.0f / d : 0.0f;
        } else { /* Q8_K: the scale takes the sign of the first x of the largest magnitude */
            float max = 0.0f;
            for (int i = 0; i < group && amax > 0.0f; i++)
                if (fabsf(x[g0 + i]) == amax) { max = x[g0 + i]; break; }
            id = amax != 0.0f ? -127.0f / max : 0.0f;
            d = amax != 0.0f ? 1.0f / id : 0.0f;
        }
        for (long long b = g0 / BLOCK; b < (g0 + group) / BLOCK; b++) {
            int32_t s32 = 0;
            for (int h = 0; h < 2; h++) {
                const int32_t s = quantize16(x + b * BLOCK + 16 * h, id, a.q + b * BLOCK + 16 * h);
                a.sum16[2 * b + h] = s;
                a.dsum16[2 * b + h] = d * (float)s;
                s32 += s;
            }
            a.d[b] = group == BLOCK ? round_fp16(d) : d;
            a.dsum32[b] = group == BLOCK ? round_fp16(d * (float)s32) : d * (float)s32;
        }
    }
}

/* The activation group (32 or 256) the kernels use with a weight type. */
int mrs_activation_group(int qtype) {
    layout_t l;
    return layout_of(qtype, &l) ? (l.block_elems == 256 ? 256 : BLOCK) : -1;
}

/* For the tests: the quantized rows as floats (q * d). */
void mrs_quantize_dequantize_rows(const float *x, long long m, long long k, int group, float *out,
                                  uint8_t *scratch) {
    for (long long r = 0; r < m; r++) {
        act_row_t a = act_row(scratch, k, r);
        quantize_row(x + r * k, k, group, a);
        for (long long c = 0; c < k; c++) out[r * k + c] = (float)a.q[c] * a.d[c / BLOCK];
    }
}

long long mrs_activation_bytes(long long m, long long k) { return m * act_row_bytes(k); }

/* ---- the kernels: rows [m0, m0 + mt) of x against group g of one weight ---------------- */

typedef struct {
    int qtype;
    int n;                /* output features (rows of W) */
    const uint8_t *w;     /* repacked */
    float *out;           /* y[:, n] for this weight: out[r * out_stride + col] */
    long long out_stride;
    int accumulate;       /* 1: out += x @ W.T (a residual add folded into the matmul) */
} mrs_job;

#define MT 4 /* rows of x per kernel call */

/* Ask for record b of the group `ahead` (the next one, NULL for none) while working on record b
 * of this one: the weights come from memory (a model's are several times the L3), and the
 * hardware prefetcher does not fetch the next group's records in time. One record at a time
 * rather than the whole group at once, which asks for more lines than can be in flight. */
static inline void prefetch_record(const uint8_t *ahead, int b, long long rb) {
    if (!ahead) return;
    for (long long at = 0; at < rb; at += 64) __builtin_prefetch(ahead + b * rb + at, 0, 2);
}

#if MRS_VNNI
static inline __attribute__((always_inline)) void tile_vnni(
    const uint8_t *wg, int blocks, const layout_t *lp, const uint8_t *acts, long long k,
    long long m0, int mt, float *out, long long out_stride, int cols, int accumulate,
    const uint8_t *ahead) {
    const layout_t l = *lp;
    const int np = num_planes(&l), nsub = BLOCK / l.sub, es = l.f16 ? 2 : 4;
    const long long rb = record_bytes(&l);
    act_row_t a[MT];
    __m512 acc[MT];
    for (int r = 0; r < mt; r++) { a[r] = act_row((uint8_t *)acts, k, m0 + r); acc[r] = _mm512_setzero_ps(); }
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int b = 0; b < blocks; b++) {
        const uint8_t *rec = wg + (long long)b * rb;
        prefetch_record(ahead, b, rb);
        const uint8_t *planes = rec + code_bytes(&l), *scales = planes + 64 * np;
        __m512i w[8];
        if (l.bits == 8) {
            for (int c = 0; c < 8; c++) w[c] = _mm512_loadu_si512(rec + 64 * c);
        } else if (l.bits >= 4) {
            for (int p = 0; p < 4; p++) {
                __m512i v = _mm512_loadu_si512(rec + 64 * p);
                w[p] = _mm512_and_si512(v, low4);
                w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            }
        } else {
            for (int c = 0; c < 8; c++) w[c] = _mm512_setzero_si512();
        }
        for (int c = 0; c < 8; c++)
            for (int p = 0; p < np; p++) {
                __mmask64 bit;
                memcpy(&bit, planes + 8 * (c * np + p), 8);
                w[c] = _mm512_mask_add_epi8(w[c], bit, w[c],
                                            _mm512_set1_epi8((char)(1 << (p + (l.bits >= 4 ? 4 : 0)))));
            }
        __m512 d[2], mn[2];
        for (int h = 0; h < nsub; h++) {
            const uint8_t *ds = scales + h * LANES * es, *ms = scales + (nsub + h) * LANES * es;
            if (l.f16) {
                d[h] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)ds));
                if (l.has_min) mn[h] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)ms));
            } else {
                d[h] = _mm512_loadu_ps((const float *)ds);
                if (l.has_min) mn[h] = _mm512_loadu_ps((const float *)ms);
            }
        }
        for (int r = 0; r < mt; r++) {
            const int8_t *xq = a[r].q + (long long)b * BLOCK;
            __m512i half[2];
            for (int h = 0; h < 2; h++) {
                half[h] = _mm512_setzero_si512();
                for (int c = 4 * h; c < 4 * h + 4; c++) {
                    int32_t x4;
                    memcpy(&x4, xq + 4 * c, 4);
                    half[h] = _mm512_dpbusd_epi32(half[h], w[c], _mm512_set1_epi32(x4));
                }
            }
            /* + offset * (the sum of the x codes), offset = -2^s: the sums broadcast from memory,
             * shifted and subtracted. (offset * sum broadcast from a general register took
             * slots of the pipes the dot products run on: 6-10% of the Q8_0, Q4_0, Q5_0 time.)
             * With one scale for both halves (sub 32) their sums are added first: one shift and
             * one subtraction instead of two each, 5% of the Q8_0 time. */
            for (int h = 0; l.offset && h < (l.sub == 32 ? 1 : 2); h++) {
                const __m512i sum = l.sub == 32
                    ? _mm512_add_epi32(_mm512_set1_epi32(a[r].sum16[2 * b]), _mm512_set1_epi32(a[r].sum16[2 * b + 1]))
                    : _mm512_set1_epi32(a[r].sum16[2 * b + h]);
                half[h] = _mm512_sub_epi32(half[h], _mm512_slli_epi32(sum, __builtin_ctz((unsigned)-l.offset)));
            }
            const __m512 da = _mm512_set1_ps(a[r].d[b]);
            if (l.sub == 32) {
                __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(half[0], half[1]));
                acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d[0], da), acc[r]);
                if (l.has_min)
                    acc[r] = _mm512_fmadd_ps(mn[0], _mm512_set1_ps(a[r].dsum32[b]), acc[r]);
            } else {
                for (int h = 0; h < 2; h++) {
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(half[h]), _mm512_mul_ps(d[h], da), acc[r]);
                    if (l.has_min)
                        acc[r] = _mm512_fmadd_ps(mn[h], _mm512_set1_ps(a[r].dsum16[2 * b + h]), acc[r]);
                }
            }
        }
    }
    const __mmask16 keep = cols >= LANES ? 0xffff : (__mmask16)((1u << cols) - 1);
    for (int r = 0; r < mt; r++) {
        float *o = out + (m0 + r) * out_stride;
        if (accumulate) acc[r] = _mm512_add_ps(acc[r], _mm512_maskz_loadu_ps(keep, o));
        _mm512_mask_storeu_ps(o, keep, acc[r]);
    }
}
#endif

#if !MRS_VNNI && MRS_AVX2
/* byte k = 0xff where bit k of m is set, else 0 */
static inline __m256i mask_bytes(uint32_t m) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)m), spread), bit);
    return _mm256_cmpeq_epi8(v, bit);
}

/* Per 32-bit lane, the sum over chunks w[0..n-1] of the 4 products of unsigned codes and
 * signed activations xq (what VNNI's vpdpbusd adds). vpmaddubsw's int16 pair sums (at most
 * 2 * (2^bits - 1) * 127) are added in int16 while that cannot overflow, so that few of them
 * need widening to int32 (vpmaddwd). 8-bit codes come as signed values s = code - 128 in w
 * and |s| in w_abs, multiplied as |s| * sign(x, s), which leaves out their offset. */
static inline __m256i chunks_dot(const __m256i *w, const __m256i *w_abs, const int8_t *xq,
                                 const int n, const int bits) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int per_sum = bits == 8 ? 1 : 32767 / (2 * ((1 << bits) - 1) * 127);
    __m256i total = _mm256_setzero_si256(), sum = _mm256_setzero_si256();
    for (int c = 0; c < n; c++) {
        int32_t x4;
        memcpy(&x4, xq + 4 * c, 4);
        const __m256i x = _mm256_set1_epi32(x4);
        __m256i p;
        if (bits == 8) {
            p = _mm256_maddubs_epi16(w_abs[c], _mm256_sign_epi8(x, w[c]));
        } else {
            p = _mm256_maddubs_epi16(w[c], x);
        }
        sum = c % per_sum ? _mm256_add_epi16(sum, p) : p;
        if (c % per_sum == per_sum - 1 || c == n - 1)
            total = _mm256_add_epi32(total, _mm256_madd_epi16(sum, ones));
    }
    return total;
}

/* tile_vnni's arithmetic in 256-bit registers: each record is taken as two halves of 8 lanes
 * (bytes 32 * half .. + 31 of every 64-byte chunk), the whole row range once per half. */
static inline __attribute__((always_inline)) void tile_avx2(
    const uint8_t *wg, int blocks, const layout_t *lp, const uint8_t *acts, long long k,
    long long m0, int mt, float *out, long long out_stride, int cols, int accumulate,
    const uint8_t *ahead) {
    const layout_t l = *lp;
    const int np = num_planes(&l), nsub = BLOCK / l.sub, es = l.f16 ? 2 : 4;
    const int offset = l.bits == 8 ? 0 : l.offset;
    const long long rb = record_bytes(&l);
    act_row_t a[MT];
    for (int r = 0; r < mt; r++) a[r] = act_row((uint8_t *)acts, k, m0 + r);
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int half = 0; half < 2; half++) {
        __m256 acc[MT];
        for (int r = 0; r < mt; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            const uint8_t *record = wg + (long long)b * rb, *rec = record + 32 * half;
            if (half == 0) prefetch_record(ahead, b, rb);
            const uint8_t *high = record + code_bytes(&l), *planes = high + 4 * half;
            const uint8_t *scales = high + 64 * np;
            __m256i w[8], w_abs[8];
            if (l.bits == 8) {
                for (int c = 0; c < 8; c++) {
                    w[c] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(rec + 64 * c)),
                                            _mm256_set1_epi8((char)0x80));
                    w_abs[c] = _mm256_abs_epi8(w[c]);
                }
            } else if (l.bits >= 4) {
                for (int p = 0; p < 4; p++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(rec + 64 * p));
                    w[p] = _mm256_and_si256(v, low4);
                    w[p + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                }
            } else {
                for (int c = 0; c < 8; c++) w[c] = _mm256_setzero_si256();
            }
            const int hb = high_fields(&l);
            if (hb) { /* fields at bit (c / hb) hb of byte 64 (c % hb) + 4j + i -> bits 4.. */
                const __m256i keep = _mm256_set1_epi8((char)(((1 << hb) - 1) << 4));
                __m256i f[4];
                for (int q = 0; q < hb; q++) f[q] = _mm256_loadu_si256((const __m256i *)(high + 32 * half + 64 * q));
                for (int c = 0; c < 8; c++) {
                    const int at = c / hb * hb;
                    const __m256i v = at <= 4 ? _mm256_slli_epi16(f[c % hb], 4 - at)
                                              : _mm256_srli_epi16(f[c % hb], at - 4);
                    w[c] = _mm256_or_si256(w[c], _mm256_and_si256(v, keep));
                }
            }
            for (int c = 0; c < 8 && !hb; c++)
                for (int p = 0; p < np; p++) {
                    uint32_t bit;
                    memcpy(&bit, planes + 8 * (c * np + p), 4);
                    w[c] = _mm256_or_si256(w[c], _mm256_and_si256(mask_bytes(bit),
                        _mm256_set1_epi8((char)(1 << (p + (l.bits >= 4 ? 4 : 0))))));
                }
            __m256 d[2], mn[2];
            for (int h = 0; h < nsub; h++) {
                const uint8_t *ds = scales + h * LANES * es + 8 * es * half;
                const uint8_t *ms = scales + (nsub + h) * LANES * es + 8 * es * half;
                if (l.f16) {
                    d[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)ds));
                    if (l.has_min) mn[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)ms));
                } else {
                    d[h] = _mm256_loadu_ps((const float *)ds);
                    if (l.has_min) mn[h] = _mm256_loadu_ps((const float *)ms);
                }
            }
            for (int r = 0; r < mt; r++) {
                const int8_t *xq = a[r].q + (long long)b * BLOCK;
                const __m256 da = _mm256_set1_ps(a[r].d[b]);
                for (int h = 0; h < nsub; h++) { /* one int32 dot per sub-block */
                    __m256i dot = chunks_dot(w + 8 * h / nsub, w_abs + 8 * h / nsub, xq + l.sub * h,
                                               8 / nsub, l.bits);
                    if (offset) {
                        const int32_t sum = l.sub == 32 ? a[r].sum16[2 * b] + a[r].sum16[2 * b + 1]
                                                         : a[r].sum16[2 * b + h];
                        dot = _mm256_add_epi32(dot, _mm256_set1_epi32(offset * sum));
                    }
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d[h], da), acc[r]);
                    if (l.has_min)
                        acc[r] = _mm256_fmadd_ps(mn[h], _mm256_set1_ps(l.sub == 32 ? a[r].dsum32[b]
                                                                                   : a[r].dsum16[2 * b + h]),
                                                 acc[r]);
                }
            }
        }
        const int keep = cols - 8 * half < 8 ? cols - 8 * half : 8;
        for (int r = 0; r < mt && keep > 0; r++) {
            float *o = out + (m0 + r) * out_stride + 8 * half, v[8];
            _mm256_storeu_ps(v, acc[r]);
            for (int j = 0; j < keep; j++) o[j] = accumulate ? o[j] + v[j] : v[j];
        }
    }
}
#endif

/* Portable version of the same arithmetic (any CPU; the compiler vectorizes what it can). */
static void tile_portable(const uint8_t *wg, int blocks, const layout_t *lp, const uint8_t *acts,
                          long long k, long long m0, int mt, float *out, long long out_stride,
                          int cols, int accumulate, const uint8_t *ahead) {
    (void)ahead;
    const layout_t l = *lp;
    const int nsub = BLOCK / l.sub;
    const long long rb = record_bytes(&l);
    for (int r = 0; r < mt; r++) {
        act_row_t a = act_row((uint8_t *)acts, k, m0 + r);
        float acc[LANES] = {0};
        for (int b = 0; b < blocks; b++) {
            const uint8_t *rec = wg + (long long)b * rb;
            for (int j = 0; j < LANES; j++) {
                int32_t dot[2];
                for (int h = 0; h < 2; h++) {
                    int32_t s = l.offset * a.sum16[2 * b + h];
                    for (int col = 16 * h; col < 16 * h + 16; col++)
                        s += record_code(&l, rec, j, col) * a.q[b * BLOCK + col];
                    dot[h] = s;
                }
                for (int h = 0; h < nsub; h++) {
                    float d, m;
                    record_scales(&l, rec, j, h, &d, &m);
                    const float idot = l.sub == 32 ? (float)(dot[0] + dot[1]) : (float)dot[h];
                    const float dsum = l.sub == 32 ? a.dsum32[b] : a.dsum16[2 * b + h];
                    acc[j] += idot * (d * a.d[b]);
                    if (l.has_min) acc[j] += m * dsum;
                }
            }
        }
        for (int j = 0; j < cols; j++)
            out[(m0 + r) * out_stride + j] = accumulate ? out[(m0 + r) * out_stride + j] + acc[j] : acc[j];
    }
}

typedef void (*tile_fn)(const uint8_t *, int, const layout_t *, const uint8_t *, long long,
                        long long, int, float *, long long, int, int, const uint8_t *);

#if MRS_VNNI || MRS_AVX2
#if MRS_VNNI
#define TILE tile_vnni
#else
#define TILE tile_avx2
#endif
/* One specialization per type, so that the layout is a compile-time constant inside. */
#define TILE_FOR(T, name, ...)                                                                \
    static void tile_##name(const uint8_t *wg, int blocks, const layout_t *lp,                 \
                            const uint8_t *acts, long long k, long long m0, int mt, float *out, \
                            long long os, int cols, int acc, const uint8_t *ahead) {           \
        (void)lp;                                                                              \
        const layout_t l = {__VA_ARGS__};                                                      \
        switch (mt) {                                                                          \
        case 1: TILE(wg, blocks, &l, acts, k, m0, 1, out, os, cols, acc, ahead); return;       \
        case 2: TILE(wg, blocks, &l, acts, k, m0, 2, out, os, cols, acc, ahead); return;       \
        case 3: TILE(wg, blocks, &l, acts, k, m0, 3, out, os, cols, acc, ahead); return;       \
        case 4: TILE(wg, blocks, &l, acts, k, m0, 4, out, os, cols, acc, ahead); return;       \
        default: TILE(wg, blocks, &l, acts, k, m0, MT, out, os, cols, acc, ahead); return;     \
        }                                                                                      \
    }
MRS_TYPES(TILE_FOR)

static tile_fn tile_for(int qtype) {
#define TILE_CASE(T, name, ...) case T: return tile_##name;
    switch (qtype) { MRS_TYPES(TILE_CASE) }
#undef TILE_CASE
    return tile_portable;
}
#else
static tile_fn tile_for(int qtype) { (void)qtype; return tile_portable; }
#endif

/* The instructions this build's matmul kernels use. */
const char *mrs_matmul_isa(void) { return MRS_VNNI ? "avx512-vnni" : (MRS_AVX2 ? "avx2" : "portable"); }

typedef struct {
    const mrs_job *jobs;
    int njobs, blocks, group;
    layout_t layouts[16];
    long long first_item[17], items, tiles, m, k, x_stride;
    const float *x;
    uint8_t *scratch;
} matmul_ctx;

static void quantize_part(void *arg, int part, int parts) {
    const matmul_ctx *c = arg;
    for (long long r = c->m * part / parts; r < c->m * (part + 1) / parts; r++)
        quantize_row(c->x + r * c->x_stride, c->k, c->group, act_row(c->scratch, c->k, r));
}

static void matmul_part(void *arg, int part, int parts) {
    const matmul_ctx *c = arg;
    int j = 0;
    for (long long it = c->items * part / parts; it < c->items * (part + 1) / parts; it++) {
        while (it >= c->first_item[j + 1]) j++;
        const mrs_job *job = &c->jobs[j];
        const long long local = it - c->first_item[j];
        const int g = (int)(local / c->tiles);
        const long long m0 = (local % c->tiles) * MT;
        const int mt = (int)(c->m - m0 < MT ? c->m - m0 : MT);
        const int cols = job->n - g * LANES < LANES ? job->n - g * LANES : LANES;
        const long long group_bytes = c->blocks * record_bytes(&c->layouts[j]);
        const uint8_t *wg = job->w + (long long)g * group_bytes;
        /* the first row tile of a group fetches the next group's records as it goes */
        const uint8_t *ahead = m0 == 0 && (g + 1) * LANES < job->n ? wg + group_bytes : NULL;
        tile_for(job->qtype)(wg, c->blocks, &c->layouts[j], c->scratch, c->k, m0, mt,
                             job->out + g * LANES, job->out_stride, cols, job->accumulate, ahead);
    }
}

/* y_j = x @ W_j.T for every job j (weights of one input x [m, k], row stride x_stride, all
 * taking the same activation group; -1 otherwise): x is quantized once into `scratch`
 * (mrs_activation_bytes(m, k) bytes), then the 16-row groups of all the jobs, times the row
 * tiles of x, are split evenly over the threads. */
int mrs_quant_matmul(const mrs_job *jobs, int njobs, const float *x, long long x_stride,
                     long long m, long long k, uint8_t *scratch, int nthreads) {
    matmul_ctx c;
    if (njobs < 1 || njobs > 16 || k % BLOCK) return -1;
    c.jobs = jobs;
    c.njobs = njobs;
    c.blocks = (int)(k / BLOCK);
    c.group = mrs_activation_group(jobs[0].qtype);
    c.tiles = (m + MT - 1) / MT;
    c.m = m;
    c.k = k;
    c.x = x;
    c.x_stride = x_stride;
    c.scratch = scratch;
    c.first_item[0] = 0;
    for (int j = 0; j < njobs; j++) {
        if (!layout_of(jobs[j].qtype, &c.layouts[j]) || k % c.layouts[j].block_elems
            || mrs_activation_group(jobs[j].qtype) != c.group) return -1;
        c.first_item[j + 1] = c.first_item[j] + (long long)((jobs[j].n + LANES - 1) / LANES) * c.tiles;
    }
    c.items = c.first_item[njobs];
    /* on all threads from 4096 values (threshold was 32768: 16 rows of a 576-wide x were
     * quantized on one thread while the others waited, 6% of the 16-stream matmuls' time) */
    if (m * k >= (1 << 12)) mrs_parallel(quantize_part, &c, nthreads);
    else quantize_part(&c, 0, 1);
    mrs_parallel(matmul_part, &c, c.items > 1 ? nthreads : 1);
    return 0;
}
