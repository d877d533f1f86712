/* GGUF string arrays (vocabularies: hundreds of thousands of strings, each a little-endian
 * uint64 length and that many bytes) read in one pass; in Python that costs tens of
 * milliseconds at every load. */
#include <stdint.h>
#include <string.h>

/* The `count` strings at buffer[pos..size), each followed by a NUL, into `out`, and where each
 * starts into starts[0..count] (starts[count]: the bytes written); both NULL: only measure.
 * Returns the bytes written (the strings' bytes plus `count`) and sets *end to the position
 * after the last string; -1 where a length runs past `size` (the caller then reads them one by
 * one, with its own errors). */
long long mrs_gguf_strings(const uint8_t *buffer, long long pos, long long size, long long count,
                           uint8_t *out, long long *starts, long long *end) {
    long long written = 0;
    for (long long i = 0; i < count; i++) {
        uint64_t length;
        if (size - pos < 8) return -1;
        memcpy(&length, buffer + pos, 8);
        pos += 8;
        if (length > (uint64_t)(size - pos)) return -1;
        const uint8_t *text = buffer + pos;
        if (out) {
            starts[i] = written;
            memcpy(out + written, text, length);
            out[written + length] = 0;
        }
        written += (long long)length + 1;
        pos += (long long)length;
    }
    if (starts) starts[count] = written;
    *end = pos;
    return written;
}
