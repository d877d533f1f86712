/* GGUF vocabularies held by the native kernels: the token texts stay in the caller's buffer (one
 * UTF-8 buffer and the start of each text), and open-addressing tables index them: text -> token
 * id, and for byte-level BPE (left id, right id) -> (merge rank, joined id). For SmolLM2's 49k
 * tokens and 49k merges that is ~2.5 MiB where Python's dictionaries of strings and ints take
 * ~15 MiB, and a text merges without a Python object per step.
 *
 * Both GGUF tokenizers merge a piece of text the same way: start from its characters, then
 * repeatedly join the adjacent pair that ranks first, the leftmost on equal ranks, until no pair
 * ranks. Byte-level BPE (`mrs_bpe_encode`, as Hugging Face's `tokenizers` and llama.cpp): the
 * characters are tokens (characters that are not are dropped) and a pair ranks by its merge.
 * SentencePiece (`mrs_spm_encode`, as llama.cpp runs it): a pair ranks by the score of the token
 * its concatenation is, highest first; a piece that is no token is spelled in byte tokens. A
 * heap of candidate pairs over a linked list of symbols keeps long pieces O(n log n). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(uint64_t h, const char *text, long long length) {
    for (long long i = 0; i < length; i++) h = (h ^ (uint8_t)text[i]) * 0x100000001b3ull;
    return h;
}
#define FNV_START 0xcbf29ce484222325ull

/* Bytes of the UTF-8 character that starts with `lead` (1 for a stray continuation byte). */
static int char_bytes(uint8_t lead) {
    return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
}

typedef struct {
    uint64_t key; /* (left id + 1) << 32 | (right id + 1); 0: an empty slot */
    int32_t rank, joined;
} merge_slot;

typedef struct {
    const char *texts; /* the caller's: token t is texts[starts[t]..starts[t] + lengths[t]) */
    const long long *starts;
    const long long *lengths;
    int32_t *tokens; /* token slots: an id, or -1 */
    uint64_t token_mask;
    merge_slot *merges;
    uint64_t merge_mask;
} vocab;

static uint64_t table_size(long long entries) {
    uint64_t size = 16;
    while (size < 2 * (uint64_t)entries) size <<= 1;
    return size;
}

/* The id of the token whose text is left[0..left_length) followed by right[0..right_length)
 * (right_length 0: left alone), or -1. */
static int32_t lookup_pair(const vocab *v, const char *left, long long left_length,
                           const char *right, long long right_length) {
    const uint64_t h = fnv1a(fnv1a(FNV_START, left, left_length), right, right_length);
    for (uint64_t i = h & v->token_mask;; i = (i + 1) & v->token_mask) {
        const int32_t t = v->tokens[i];
        if (t < 0) return -1;
        const char *text = v->texts + v->starts[t];
        if (v->lengths[t] == left_length + right_length && !memcmp(text, left, left_length)
            && !memcmp(text + left_length, right, right_length))
            return t;
    }
}

static int32_t lookup(const vocab *v, const char *text, long long length) {
    return lookup_pair(v, text, length, text + length, 0);
}

static uint64_t mix(uint64_t key) { /* splitmix64's finalizer */
    key = (key ^ (key >> 30)) * 0xbf58476d1ce4e5b9ull;
    key = (key ^ (key >> 27)) * 0x94d049bb133111ebull;
    return key ^ (key >> 31);
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t)(left + 1) << 32 | (uint32_t)(right + 1);
}

static const merge_slot *find_merge(const vocab *v, int32_t left, int32_t right) {
    const uint64_t key = pair_key(left, right);
    for (uint64_t i = mix(key) & v->merge_mask;; i = (i + 1) & v->merge_mask) {
        const merge_slot *s = &v->merges[i];
        if (s->key == key) return s;
        if (!s->key) return 0;
    }
}

void mrs_vocab_free(vocab *v) {
    if (!v) return;
    free((void *)v->lengths);
    free(v->tokens);
    free(v->merges);
    free(v);
}

/* The vocabulary of `n_tokens` texts (token t: texts[starts[t]..starts[t+1]-1), each followed by
 * one separator byte) and `n_merges` BPE merges (likewise in merge_texts/merge_starts, each
 * "left right", split at the first space after its first character; none for SentencePiece).
 * The buffers `texts` and `starts` must outlive the vocabulary. *problem is 0, or where the
 * file is wrong 1 + the first token that repeats an earlier one, or -(1 + the first merge that
 * is not two tokens whose concatenation is a token) (the caller names it); then, or without
 * memory, NULL. The first of two merges of one pair keeps its rank, as in llama.cpp. */
vocab *mrs_vocab_new(const char *texts, const long long *starts, long long n_tokens,
                     const char *merge_texts, const long long *merge_starts, long long n_merges,
                     long long *problem) {
    *problem = 0;
    vocab *v = calloc(1, sizeof *v);
    if (!v) return 0;
    const uint64_t token_slots = table_size(n_tokens), merge_slots = table_size(n_merges);
    long long *lengths = malloc((n_tokens ? n_tokens : 1) * sizeof *lengths);
    v->tokens = malloc(token_slots * sizeof *v->tokens);
    v->merges = calloc(merge_slots, sizeof *v->merges);
    v->lengths = lengths;
    if (!lengths || !v->tokens || !v->merges) {
        mrs_vocab_free(v);
        return 0;
    }
    v->texts = texts;
    v->starts = starts;
    v->token_mask = token_slots - 1;
    v->merge_mask = merge_slots - 1;
    memset(v->tokens, 0xff, token_slots * sizeof *v->tokens);
    for (long long t = 0; t < n_tokens && !*problem; t++) {
        lengths[t] = starts[t + 1] - starts[t] - 1;
        const char *text = texts + starts[t];
        uint64_t i = fnv1a(FNV_START, text, lengths[t]) & v->token_mask;
        for (; v->tokens[i] >= 0; i = (i + 1) & v->token_mask) {
            const int32_t u = v->tokens[i];
            if (lengths[u] == lengths[t] && !memcmp(texts + starts[u], text, lengths[t])) {
                *problem = 1 + t;
                break;
            }
        }
        v->tokens[i] = (int32_t)t;
    }
    for (long long m = 0; m < n_merges && !*problem; m++) {
        const char *merge = merge_texts + merge_starts[m];
        const long long length = merge_starts[m + 1] - merge_starts[m] - 1;
        const long long first = length ? char_bytes((uint8_t)merge[0]) : 0;
        const char *space = first < length ? memchr(merge + first, ' ', length - first) : 0;
        const long long left_length = space ? space - merge : 0;
        const long long right_length = space ? length - left_length - 1 : 0;
        const int32_t left = space ? lookup(v, merge, left_length) : -1;
        const int32_t right = right_length ? lookup(v, space + 1, right_length) : -1;
        const int32_t joined = left >= 0 && right >= 0
            ? lookup_pair(v, merge, left_length, space + 1, right_length) : -1;
        if (joined < 0) {
            *problem = -(1 + m);
            break;
        }
        const uint64_t key = pair_key(left, right);
        uint64_t i = mix(key) & v->merge_mask;
        while (v->merges[i].key && v->merges[i].key != key) i = (i + 1) & v->merge_mask;
        if (!v->merges[i].key) v->merges[i] = (merge_slot){key, (int32_t)m, joined};
    }
    if (*problem) {
        mrs_vocab_free(v);
        return 0;
    }
    return v;
}

/* The id of the token text[0..length), or -1. */
long long mrs_vocab_token_id(const vocab *v, const char *text, long long length) {
    return lookup(v, text, length);
}

typedef struct {
    int32_t rank, left;          /* ordered by rank, then position */
    int32_t left_was, right_was; /* the two symbols when offered (BPE: ids; SPM: lengths) */
} candidate;

static int before(const candidate *a, const candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void push(candidate *heap, long long *n, candidate c) {
    long long i = (*n)++;
    while (i > 0 && before(&c, &heap[(i - 1) / 2])) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = c;
}

static candidate pop(candidate *heap, long long *n) {
    const candidate top = heap[0], last = heap[--*n];
    long long i = 0;
    for (;;) {
        long long child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && before(&heap[child + 1], &heap[child])) child++;
        if (!before(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (*n) heap[i] = last;
    return top;
}

typedef struct {
    int32_t *id;    /* each symbol's token (SentencePiece: its length); -1 once joined into the
                     * one before it */
    int32_t *start; /* SentencePiece: where it starts in the text */
    int32_t *next;  /* the following live symbol, or -1 */
    int32_t *prev;
    candidate *heap;
    long long queued;
} symbols;

/* Room for pieces of up to `longest` bytes; 0 without memory. */
static int symbols_alloc(symbols *s, long long longest) {
    s->id = malloc((longest + 1) * 4 * sizeof(int32_t));
    s->heap = malloc((longest + 1) * 3 * sizeof(candidate));
    if (!s->id || !s->heap) {
        free(s->id);
        free(s->heap);
        return 0;
    }
    s->start = s->id + longest + 1;
    s->next = s->start + longest + 1;
    s->prev = s->next + longest + 1;
    return 1;
}

static void symbols_free(symbols *s) {
    free(s->id);
    free(s->heap);
}

/* Symbols 0..n-1 in a row, no pair queued. */
static void symbols_link(symbols *s, int32_t n) {
    s->queued = 0;
    for (int32_t i = 0; i < n; i++) {
        s->next[i] = i + 1 < n ? i + 1 : -1;
        s->prev[i] = i - 1;
    }
}

/* The right symbol of a popped pair, or -1 where one of the two has changed since it was
 * offered (joined to something else). */
static int32_t still_pair(const symbols *s, const candidate *c) {
    const int32_t right = s->next[c->left];
    return s->id[c->left] == c->left_was && right >= 0 && s->id[right] == c->right_was ? right : -1;
}

/* Symbol `right` joined into `left`, which becomes `joined`. */
static void join(symbols *s, int32_t left, int32_t right, int32_t joined) {
    s->id[left] = joined;
    s->id[right] = -1;
    s->next[left] = s->next[right];
    if (s->next[right] >= 0) s->prev[s->next[right]] = left;
}

static void offer(const vocab *v, symbols *s, int32_t left) {
    const int32_t right = s->next[left];
    if (right < 0) return;
    const merge_slot *m = find_merge(v, s->id[left], s->id[right]);
    if (m) push(s->heap, &s->queued, (candidate){m->rank, left, s->id[left], s->id[right]});
}

/* Merges the piece text[0..length) into out; returns the ids written. */
static long long merge_piece(const vocab *v, const char *text, long long length, int ignore_merges,
                             symbols *s, int32_t *out) {
    if (ignore_merges) {
        const int32_t whole = lookup(v, text, length);
        if (whole >= 0) {
            out[0] = whole;
            return 1;
        }
    }
    int32_t n = 0;
    for (long long at = 0; at < length;) {
        long long width = char_bytes((uint8_t)text[at]);
        if (width > length - at) width = length - at;
        const int32_t t = lookup(v, text + at, width);
        if (t >= 0) s->id[n++] = t;
        at += width;
    }
    symbols_link(s, n);
    for (int32_t i = 0; i + 1 < n; i++) offer(v, s, i);
    while (s->queued) {
        const candidate c = pop(s->heap, &s->queued);
        const int32_t right = still_pair(s, &c);
        if (right < 0) continue;
        join(s, c.left, right, find_merge(v, c.left_was, c.right_was)->joined);
        offer(v, s, c.left);
        if (s->prev[c.left] >= 0) offer(v, s, s->prev[c.left]);
    }
    long long written = 0;
    for (int32_t i = 0; i < n; i++)
        if (s->id[i] >= 0) out[written++] = s->id[i];
    return written;
}

/* The longest of the NUL-separated pieces in text[0..length). */
static long long longest_piece(const char *text, long long length) {
    long long longest = 0;
    for (long long at = 0; at < length;) {
        const char *end = memchr(text + at, 0, length - at);
        const long long piece = end ? end - (text + at) : length - at;
        if (piece > longest) longest = piece;
        at += piece + 1;
    }
    return longest;
}

/* The ids of `pieces`: pieces of text back to back, each followed by a NUL (a byte the GPT-2
 * alphabet never spells), `length` bytes in all. `out` has room for one id per byte. Returns the
 * ids written, or -1 without memory. */
long long mrs_bpe_encode(const vocab *v, const char *pieces, long long length, int ignore_merges,
                         int32_t *out) {
    symbols s;
    if (!symbols_alloc(&s, longest_piece(pieces, length))) return -1;
    long long written = 0;
    for (long long at = 0; at < length;) {
        const char *end = memchr(pieces + at, 0, length - at);
        const long long piece = end ? end - (pieces + at) : length - at;
        written += merge_piece(v, pieces + at, piece, ignore_merges, &s, out + written);
        at += piece + 1;
    }
    symbols_free(&s);
    return written;
}

/* ---- SentencePiece ------------------------------------------------------------------- */

/* An int32 that orders scores highest first, as floats order (the heap takes the lowest). */
static int32_t score_rank(float score) {
    const float negated = -score;
    uint32_t bits;
    memcpy(&bits, &negated, 4);
    return (int32_t)((bits & 0x80000000u ? ~bits : bits | 0x80000000u) ^ 0x80000000u);
}

static void spm_offer(const vocab *v, const float *scores, const char *text, symbols *s,
                      int32_t left) {
    const int32_t right = s->next[left];
    if (right < 0) return;
    const int32_t t = lookup(v, text + s->start[left], s->id[left] + s->id[right]);
    if (t >= 0)
        push(s->heap, &s->queued,
             (candidate){score_rank(scores[t]), left, s->id[left], s->id[right]});
}

/* The ids of text[0..length), merged by the scores of the tokens (float32, one a token);
 * a piece that is no token becomes byte_ids[b] for each of its bytes b (byte_ids NULL: the
 * vocabulary has no byte tokens), else `unk` (< 0: nothing). `out` has room for one id per
 * byte. Returns the ids written, or -1 without memory. */
long long mrs_spm_encode(const vocab *v, const float *scores, const int32_t *byte_ids, int unk,
                         const char *text, long long length, int32_t *out) {
    symbols s;
    if (!symbols_alloc(&s, length)) return -1;
    int32_t n = 0;
    for (long long at = 0; at < length; n++) {
        long long width = char_bytes((uint8_t)text[at]);
        if (width > length - at) width = length - at;
        s.start[n] = (int32_t)at;
        s.id[n] = (int32_t)width;
        at += width;
    }
    symbols_link(&s, n);
    for (int32_t i = 0; i + 1 < n; i++) spm_offer(v, scores, text, &s, i);
    while (s.queued) {
        const candidate c = pop(s.heap, &s.queued);
        const int32_t right = still_pair(&s, &c);
        if (right < 0) continue;
        join(&s, c.left, right, c.left_was + c.right_was);
        spm_offer(v, scores, text, &s, c.left);
        if (s.prev[c.left] >= 0) spm_offer(v, scores, text, &s, s.prev[c.left]);
    }
    long long written = 0;
    for (int32_t i = 0; i < n; i++) {
        if (s.id[i] < 0) continue;
        const char *piece = text + s.start[i];
        const int32_t t = lookup(v, piece, s.id[i]);
        if (t >= 0) out[written++] = t;
        else if (byte_ids)
            for (int32_t j = 0; j < s.id[i]; j++) out[written++] = byte_ids[(uint8_t)piece[j]];
        else if (unk >= 0) out[written++] = unk;
    }
    symbols_free(&s);
    return written;
}
