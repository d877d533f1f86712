/* GGUF vocabularies at C speed: string arrays read in one pass (hundreds of thousands of
 * strings, each a little-endian uint64 length and that many bytes), and a BPE vocabulary's
 * merges checked against its tokens; in Python each costs tens of milliseconds at every load. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The `count` strings at buffer[pos..size), each followed by a NUL, into `out` (NULL: only
 * measure). Returns the bytes written (the strings' bytes plus `count`) and sets *end to the
 * position after the last string; -1 where a length runs past `size` or a string holds a NUL
 * byte (the caller then reads them one by one, with its own errors). */
long long mrs_gguf_strings(const uint8_t *buffer, long long pos, long long size, long long count,
                           uint8_t *out, long long *end) {
    long long written = 0;
    for (long long i = 0; i < count; i++) {
        uint64_t length;
        if (size - pos < 8) return -1;
        memcpy(&length, buffer + pos, 8);
        pos += 8;
        if (length > (uint64_t)(size - pos)) return -1;
        const uint8_t *text = buffer + pos;
        if (memchr(text, 0, length)) return -1;
        if (out) {
            memcpy(out + written, text, length);
            out[written + length] = 0;
        }
        written += (long long)length + 1;
        pos += (long long)length;
    }
    *end = pos;
    return written;
}

/* ---- checking a BPE vocabulary's merges ------------------------------------------------ */

typedef struct {
    const char *text;
    long long length;
} piece;

static uint64_t fnv1a(uint64_t h, const char *text, long long length) {
    for (long long i = 0; i < length; i++) h = (h ^ (uint8_t)text[i]) * 0x100000001b3ull;
    return h;
}
#define FNV_START 0xcbf29ce484222325ull

/* Whether left + right (right may be empty) is one of the `mask + 1` slots' pieces. */
static int known(const piece *slots, uint64_t mask, const char *left, long long left_length,
                 const char *right, long long right_length) {
    uint64_t h = fnv1a(fnv1a(FNV_START, left, left_length), right, right_length);
    for (uint64_t i = h & mask;; i = (i + 1) & mask) {
        const piece *p = &slots[i];
        if (!p->text) return 0;
        if (p->length == left_length + right_length && !memcmp(p->text, left, left_length)
            && !memcmp(p->text + left_length, right, right_length))
            return 1;
    }
}

/* Bytes of the UTF-8 character that starts with `lead` (1 for a stray continuation byte). */
static int char_bytes(uint8_t lead) {
    return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
}

/* `tokens` and `merges`: n_tokens and n_merges NUL-terminated UTF-8 texts back to back. Each merge
 * is "left right", split at the first space after its first character. Returns 0 when every
 * merge's halves are tokens, the right one not empty, and their concatenation is a token too;
 * else 1 + the index of the first merge that is not so (the caller says what is wrong with it);
 * -1 without memory for the table. */
long long mrs_check_merges(const char *tokens, long long n_tokens, const char *merges,
                           long long n_merges) {
    uint64_t size = 1;
    while (size < 2 * (uint64_t)n_tokens) size <<= 1;
    piece *slots = calloc(size, sizeof *slots);
    if (!slots) return -1;
    const uint64_t mask = size - 1;
    for (long long t = 0; t < n_tokens; t++) {
        const long long length = (long long)strlen(tokens);
        uint64_t i = fnv1a(FNV_START, tokens, length) & mask;
        while (slots[i].text) i = (i + 1) & mask;
        slots[i] = (piece){tokens, length};
        tokens += length + 1;
    }
    long long bad = 0;
    for (long long m = 0; m < n_merges && !bad; m++) {
        const long long length = (long long)strlen(merges);
        const long long first = length ? char_bytes((uint8_t)merges[0]) : 0;
        const char *space = first < length ? memchr(merges + first, ' ', length - first) : 0;
        if (!space) bad = m + 1;
        else {
            const long long left = space - merges, right = length - left - 1;
            if (right == 0 || !known(slots, mask, merges, left, "", 0)
                || !known(slots, mask, space + 1, right, "", 0)
                || !known(slots, mask, merges, left, space + 1, right))
                bad = m + 1;
        }
        merges += length + 1;
    }
    free(slots);
    return bad;
}
