/* GGUF string arrays read in one pass: a vocabulary is hundreds of thousands of strings, each a
 * little-endian uint64 length and that many bytes, and walking them in Python costs tens of
 * milliseconds at every load. */
#include <stdint.h>
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
