/* tokenizer.c: GLM-4 byte-level BPE (tiktoken format). See tokenizer.h.
 *
 * Layout: every regular token's bytes sit in one blob (off[id]..off[id+1]);
 * an open-addressing table maps byte strings to ids; the pre-tokenizer regex
 * is compiled (and JIT-compiled when possible) once at load. Encoding splits
 * the input with the regex, looks each piece up whole, and only runs the
 * merge loop on pieces that are not tokens themselves. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <errno.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Constants ==== */

/* Spec §4.4, in id order after the last regular token. */
static const char *const SPECIALS[] = {
    "<|endoftext|>", "[MASK]",     "[gMASK]",          "[sMASK]",          "<sop>",
    "<eop>",         "<|system|>", "<|user|>",         "<|assistant|>",    "<|observation|>",
    "<|begin_of_image|>",          "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
};
#define N_SPECIAL ((int)(sizeof SPECIALS / sizeof SPECIALS[0]))

/* Spec §4.2 (cl100k_base), with the character classes made to agree with
 * tiktoken's regex engine (Rust regex-syntax 0.8.11 in tiktoken 0.14: Unicode
 * 16.0) rather than with the system PCRE2's Unicode tables:
 * - \s and \S are spelled out as the Unicode White_Space set. PCRE2's \s
 *   under UCP also matches U+180E (MONGOLIAN VOWEL SEPARATOR, no longer a
 *   space since Unicode 6.3); tiktoken does not.
 * - \p{L} and \p{N} get the letters and numbers added in Unicode 15.0-16.0
 *   (PCRE2 10.42 has Unicode 14.0). Adding characters PCRE2 already knows is
 *   harmless, so a newer PCRE2 changes nothing.
 * tests/test_tokenizer.c checks every code point's class against tiktoken's
 * (golden "classes"), so a drift either way shows up there.
 *
 * The pattern backtracks at most linearly (\s*[\r\n]+ steps back through a
 * whitespace run to its last newline), so PCRE2's match limits, which guard
 * against exponential patterns, are lifted (see tok_load): with the default
 * limit of 10 million steps, a run of ~10 million spaces would fail. */
#define WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define L_NEW                                                                                                        \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}\\x{10D4A}-\\x{10D65}"              \
    "\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}"        \
    "\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}"         \
    "\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                  \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"                   \
    "\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define N_NEW                                                                                                        \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}"       \
    "\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"
#define CLS_L "\\p{L}" L_NEW
#define CLS_N "\\p{N}" N_NEW
static const char PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)"             /* contractions */
    "|[^\\r\\n" CLS_L CLS_N "]?[" CLS_L "]+"    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    "|[" CLS_N "]{1,3}"                        /* \p{N}{1,3} */
    "| ?[^" WS CLS_L CLS_N "]+[\\r\\n]*"        /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    "|[" WS "]*[\\r\\n]+"                      /* \s*[\r\n]+ */
    "|[" WS "]+(?![^" WS "])"                  /* \s+(?!\S) */
    "|[" WS "]+";                              /* \s+ */
#undef CLS_L
#undef CLS_N

/* Pieces up to this many bytes use the simple O(n^2) merge (like tiktoken,
 * whose cut-over is 100): it beats a heap on the short pieces real text has. */
#define SMALL_PIECE 128
#define NO_RANK UINT32_MAX

/* ==== Tokenizer ==== */

/* A hash table slot. Tokens of up to 8 bytes are compared in place (key8),
 * so most hits never touch the blob. lenid == 0 marks an empty slot. */
typedef struct slot {
    uint64_t key8;  /* first min(len, 8) bytes, zero-padded (load8) */
    uint32_t tag;   /* high 32 bits of the hash */
    uint32_t lenid; /* min(len, 255) << 24 | (id + 1) */
} slot;

struct tokenizer {
    int n_regular;
    unsigned char *blob; /* token bytes, back to back */
    uint32_t *off;       /* (n_regular + 1): token id's bytes are blob[off[id]..off[id+1]) */
    slot *slots;         /* (mask + 1) open-addressing table, linear probing */
    uint64_t mask;
    uint32_t *pair_rank; /* (65536): rank of the 2-byte string b0 b1 at [b0 << 8 | b1], or NO_RANK */
    uint32_t byte_rank[256];
    size_t max_len;      /* longest token (regular or special) */
    size_t special_len[N_SPECIAL];
    pcre2_code *re;
    pcre2_match_context *mctx; /* limits lifted; read-only, shared by all threads */
    int jit;                   /* 1 when re is JIT-compiled */
};

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

/* Hash of a short byte string (8 bytes at a time, native byte order: it only
 * needs to be consistent within a process). */
static inline uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    switch (n) {
    case 7: v |= (uint64_t)p[6] << 48; /* fall through */
    case 6: v |= (uint64_t)p[5] << 40; /* fall through */
    case 5: v |= (uint64_t)p[4] << 32; /* fall through */
    case 4: v |= (uint64_t)p[3] << 24; /* fall through */
    case 3: v |= (uint64_t)p[2] << 16; /* fall through */
    case 2: v |= (uint64_t)p[1] << 8;  /* fall through */
    case 1: v |= (uint64_t)p[0]; break;
    default: break;
    }
    return mix64((h ^ v) * 0x94d049bb133111ebull);
}

/* The first min(n, 8) bytes of p, zero-padded, as one word. */
static inline uint64_t load8(const unsigned char *p, size_t n) {
    uint64_t v = 0;
    memcpy(&v, p, n < 8 ? n : 8);
    return v;
}

static inline uint32_t slot_lenid(size_t n, uint32_t id) { return (uint32_t)(n < 255 ? n : 255) << 24 | (id + 1); }

/* Rank (= id) of the byte string p[0..n), or NO_RANK. */
static inline uint32_t lookup(const tokenizer *t, const unsigned char *p, size_t n) {
    uint64_t h = hash_bytes(p, n);
    uint32_t tag = (uint32_t)(h >> 32);
    uint64_t k8 = load8(p, n);
    uint32_t ln = (uint32_t)(n < 255 ? n : 255) << 24;
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        const slot *s = &t->slots[i];
        if (!s->lenid) return NO_RANK;
        if (s->tag == tag && (s->lenid & 0xFF000000u) == ln && s->key8 == k8) {
            uint32_t id = (s->lenid & 0xFFFFFFu) - 1;
            if (n <= 8) return id;
            uint32_t a = t->off[id];
            if (t->off[id + 1] - a == n && memcmp(t->blob + a + 8, p + 8, n - 8) == 0) return id;
        }
    }
}

/* Inserts id; returns the id already holding the same bytes, or -1. */
static int insert(tokenizer *t, uint32_t id) {
    const unsigned char *p = t->blob + t->off[id];
    size_t n = t->off[id + 1] - t->off[id];
    uint32_t dup = lookup(t, p, n);
    if (dup != NO_RANK) return (int)dup;
    uint64_t h = hash_bytes(p, n);
    uint64_t i = h & t->mask;
    while (t->slots[i].lenid) i = (i + 1) & t->mask;
    t->slots[i] = (slot){load8(p, n), (uint32_t)(h >> 32), slot_lenid(n, id)};
    return -1;
}

/* ==== Loading ==== */

static int b64val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 (padded). Writes at most 3*n/4 bytes to out;
 * returns the decoded length or -1. */
static long b64decode(const unsigned char *s, size_t n, unsigned char *out) {
    if (n == 0 || n % 4) return -1;
    size_t pad = 0;
    if (s[n - 1] == '=') pad = s[n - 2] == '=' ? 2 : 1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (size_t k = 0; k < 4; k++) {
            if (i + k >= n - pad) v[k] = 0;
            else if ((v[k] = b64val(s[i + k])) < 0) return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t keep = i + 4 < n ? 3 : 3 - pad;
        if (keep >= 1) out[o++] = (unsigned char)(w >> 16);
        if (keep >= 2) out[o++] = (unsigned char)(w >> 8);
        if (keep >= 3) out[o++] = (unsigned char)w;
    }
    return (long)o;
}

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static unsigned char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open tokenizer file: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 22, n = 0;
    unsigned char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        unsigned char *nb = realloc(buf, (cap *= 2) + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        snprintf(err, errlen, "%s: %s", path, bad ? "read error" : "out of memory");
        return NULL;
    }
    *len = n;
    return buf;
}

int tok_load(tokenizer **out, const char *path, char *err, size_t errlen) {
    *out = NULL;
    size_t len = 0;
    unsigned char *text = read_file(path, &len, err, errlen);
    if (!text) return -1;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(text);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    size_t nlines = 0;
    for (size_t i = 0; i < len; i++) nlines += text[i] == '\n';
    nlines++;
    /* Base64 never grows when decoded, so the blob fits in len bytes. */
    t->blob = malloc(len + 1);
    t->off = malloc(sizeof(uint32_t) * (nlines + 1));
    int line = 0;
    if (!t->blob || !t->off) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto err;
    }
    if (len > UINT32_MAX) {
        snprintf(err, errlen, "%s: file too large", path);
        goto err;
    }
    uint32_t n = 0, used = 0;
    size_t pos = 0;
    while (pos < len) {
        line++;
        size_t eol = pos;
        while (eol < len && text[eol] != '\n') eol++;
        size_t a = pos, b = eol;
        pos = eol + 1;
        while (a < b && is_space(text[a])) a++;
        while (b > a && is_space(text[b - 1])) b--;
        size_t f1 = a;
        while (f1 < b && !is_space(text[f1])) f1++;
        size_t f2 = f1;
        while (f2 < b && is_space(text[f2])) f2++;
        size_t f3 = f2;
        while (f3 < b && !is_space(text[f3])) f3++;
        if (a == b) {
            snprintf(err, errlen, "%s:%d: empty line (expected '<base64> <rank>')", path, line);
            goto err;
        }
        if (f2 == b) {
            snprintf(err, errlen, "%s:%d: missing rank (expected '<base64> <rank>')", path, line);
            goto err;
        }
        if (f3 != b) {
            snprintf(err, errlen, "%s:%d: more than two fields (expected '<base64> <rank>')", path, line);
            goto err;
        }
        long blen = b64decode(text + a, f1 - a, t->blob + used);
        if (blen <= 0) {
            snprintf(err, errlen, "%s:%d: bad base64 '%.*s'", path, line,
                     (int)(f1 - a > 40 ? 40 : f1 - a), (const char *)(text + a));
            goto err;
        }
        uint64_t rank = 0;
        for (size_t i = f2; i < f3; i++) {
            if (text[i] < '0' || text[i] > '9' || rank > 100000000) {
                snprintf(err, errlen, "%s:%d: bad rank '%.*s'", path, line,
                         (int)(f3 - f2 > 20 ? 20 : f3 - f2), (const char *)(text + f2));
                goto err;
            }
            rank = rank * 10 + (uint64_t)(text[i] - '0');
        }
        if (rank != n) {
            snprintf(err, errlen, "%s:%d: rank %llu out of order or duplicate (expected %u: ranks must be 0, 1, 2, ...)",
                     path, line, (unsigned long long)rank, n);
            goto err;
        }
        if (n >= 0xFFFFFE) { /* ids are stored in 24 bits (slot.lenid) */
            snprintf(err, errlen, "%s:%d: too many tokens (at most %d)", path, line, 0xFFFFFE);
            goto err;
        }
        t->off[n] = used;
        used += (uint32_t)blen;
        if ((size_t)blen > t->max_len) t->max_len = (size_t)blen;
        n++;
    }
    if (n == 0) {
        snprintf(err, errlen, "%s:1: empty file (expected '<base64> <rank>' lines)", path);
        goto err;
    }
    t->off[n] = used;
    t->n_regular = (int)n;
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n) cap <<= 1; /* load factor <= 1/2 */
    t->mask = cap - 1;
    t->slots = calloc(cap, sizeof(slot));
    if (!t->slots) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto err;
    }
    /* Every line holds one token, so token id's line is id + 1. */
    for (uint32_t id = 0; id < n; id++) {
        int dup = insert(t, id);
        if (dup >= 0) {
            snprintf(err, errlen, "%s:%u: duplicate token bytes (same as line %d)", path, id + 1, dup + 1);
            goto err;
        }
    }
    for (int c = 0; c < 256; c++) {
        unsigned char byte = (unsigned char)c;
        if ((t->byte_rank[c] = lookup(t, &byte, 1)) == NO_RANK) {
            snprintf(err, errlen, "%s: no token for the single byte 0x%02x (every byte must be a token)", path, c);
            goto err;
        }
    }
    /* Every merge starts from byte pairs: a direct table saves the hashing. */
    t->pair_rank = malloc(65536 * sizeof(uint32_t));
    if (!t->pair_rank) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto err;
    }
    for (int i = 0; i < 65536; i++) {
        unsigned char two[2] = {(unsigned char)(i >> 8), (unsigned char)i};
        t->pair_rank[i] = lookup(t, two, 2);
    }
    for (int i = 0; i < N_SPECIAL; i++) {
        t->special_len[i] = strlen(SPECIALS[i]);
        if (t->special_len[i] > t->max_len) t->max_len = t->special_len[i];
    }
    int ecode;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)PATTERN, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ecode, &eoff, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        snprintf(err, errlen, "%s: pre-tokenizer regex: %s at offset %zu", path, (const char *)msg, (size_t)eoff);
        goto err;
    }
    /* JIT is several times faster; without it (no JIT support on this
     * platform, or GLMTP_TOK_NO_JIT=1 set to test that path) the interpreter
     * gives the same matches. */
    t->mctx = pcre2_match_context_create(NULL);
    if (!t->mctx) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto err;
    }
    pcre2_set_match_limit(t->mctx, UINT32_MAX);
    pcre2_set_depth_limit(t->mctx, UINT32_MAX);
    pcre2_set_heap_limit(t->mctx, UINT32_MAX);
    const char *nojit = getenv("GLMTP_TOK_NO_JIT");
    t->jit = !(nojit && *nojit && strcmp(nojit, "0") != 0) && pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    free(text);
    *out = t;
    return 0;
err:
    free(text);
    tok_free(t);
    return -1;
}

void tok_free(tokenizer *t) {
    if (!t) return;
    pcre2_code_free(t->re);
    pcre2_match_context_free(t->mctx);
    free(t->blob);
    free(t->off);
    free(t->slots);
    free(t->pair_rank);
    free(t);
}

int tok_n_regular(const tokenizer *t) { return t->n_regular; }
int tok_n_total(const tokenizer *t) { return t->n_regular + N_SPECIAL; }
size_t tok_max_token_len(const tokenizer *t) { return t->max_len; }

int tok_special_id(const tokenizer *t, const char *text) {
    for (int i = 0; i < N_SPECIAL; i++)
        if (strcmp(text, SPECIALS[i]) == 0) return t->n_regular + i;
    return -1;
}

const unsigned char *tok_bytes(const tokenizer *t, int id, size_t *len) {
    if (id >= 0 && id < t->n_regular) {
        *len = t->off[id + 1] - t->off[id];
        return t->blob + t->off[id];
    }
    if (id >= t->n_regular && id < t->n_regular + N_SPECIAL) {
        *len = t->special_len[id - t->n_regular];
        return (const unsigned char *)SPECIALS[id - t->n_regular];
    }
    *len = 0;
    return NULL;
}

/* ==== Encoding ==== */

typedef struct idvec {
    int *v;
    size_t n, cap;
} idvec;

static int idvec_grow(idvec *o, size_t need) {
    if (o->n + need <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 64;
    while (cap < o->n + need) cap *= 2;
    int *nv = realloc(o->v, cap * sizeof(int));
    if (!nv) return -1;
    o->v = nv;
    o->cap = cap;
    return 0;
}

/* tiktoken's _byte_pair_merge: repeatedly merge the adjacent pair whose
 * concatenation has the lowest rank (leftmost on ties). n >= 2, n <= SMALL_PIECE.
 * rank[k] is the rank of parts k and k+1 together; id[k] is part k's own rank
 * (a merged part's rank is the pair rank that merged it). */
static int merge_small(const tokenizer *t, const unsigned char *p, size_t n, idvec *o) {
    uint32_t start[SMALL_PIECE + 1], rank[SMALL_PIECE + 1], id[SMALL_PIECE + 1];
    size_t m = n + 1; /* parts: start[0..m), start[m-1] == n is the end marker */
    uint32_t best = NO_RANK;
    size_t bi = 0;
    for (size_t i = 0; i < n; i++) {
        start[i] = (uint32_t)i;
        id[i] = t->byte_rank[p[i]];
        rank[i] = i + 1 < n ? t->pair_rank[p[i] << 8 | p[i + 1]] : NO_RANK;
        if (rank[i] < best) best = rank[i], bi = i;
    }
    start[n] = (uint32_t)n;
    rank[n] = NO_RANK;
    while (best != NO_RANK) {
        size_t i = bi;
        /* Merge parts i and i+1; new pairs (i-1, i) and (i, i+2). */
        id[i] = best;
        if (i > 0)
            rank[i - 1] = i + 2 < m ? lookup(t, p + start[i - 1], start[i + 2] - start[i - 1]) : NO_RANK;
        rank[i] = i + 3 < m ? lookup(t, p + start[i], start[i + 3] - start[i]) : NO_RANK;
        memmove(start + i + 1, start + i + 2, (m - i - 2) * sizeof start[0]);
        memmove(rank + i + 1, rank + i + 2, (m - i - 2) * sizeof rank[0]);
        memmove(id + i + 1, id + i + 2, (m - i - 2) * sizeof id[0]);
        m--;
        best = NO_RANK;
        for (size_t k = 0; k + 1 < m; k++)
            if (rank[k] < best) best = rank[k], bi = k;
    }
    if (idvec_grow(o, m - 1)) return -1;
    for (size_t k = 0; k + 1 < m; k++) o->v[o->n++] = (int)id[k];
    return 0;
}

/* tiktoken's _byte_pair_merge_large: the same merge order with a binary heap
 * of candidate merges keyed (rank, start) and lazy invalidation, O(n log n). */
typedef struct mcand {
    uint32_t rank, start;
} mcand;

static inline int mless(mcand a, mcand b) { return a.rank < b.rank || (a.rank == b.rank && a.start < b.start); }

static void heap_push(mcand *h, size_t *hn, mcand x) {
    size_t i = (*hn)++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!mless(x, h[up])) break;
        h[i] = h[up];
        i = up;
    }
    h[i] = x;
}

static mcand heap_pop(mcand *h, size_t *hn) {
    mcand top = h[0], x = h[--*hn];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && mless(h[c + 1], h[c])) c++;
        if (!mless(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = x;
    return top;
}

static int merge_large(const tokenizer *t, const unsigned char *p, size_t n, idvec *o) {
    /* For a part starting at byte s: end[s] = its end, prev[s] = the start of
     * the part before it, next_rank[s] = rank of (part s + following part). */
    uint32_t *end = malloc(n * sizeof(uint32_t)), *prev = malloc(n * sizeof(uint32_t));
    uint32_t *next_rank = malloc(n * sizeof(uint32_t));
    mcand *heap = malloc(3 * n * sizeof(mcand)); /* <= n-1 initial + 2 per merge */
    int rc = -1;
    if (!end || !prev || !next_rank || !heap || n >= UINT32_MAX) goto done;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        end[i] = (uint32_t)i + 1;
        prev[i] = i ? (uint32_t)i - 1 : UINT32_MAX;
        next_rank[i] = i + 1 < n ? t->pair_rank[p[i] << 8 | p[i + 1]] : NO_RANK;
        if (next_rank[i] != NO_RANK) heap_push(heap, &hn, (mcand){next_rank[i], (uint32_t)i});
    }
    while (hn) {
        mcand c = heap_pop(heap, &hn);
        uint32_t s = c.start;
        if (c.rank != next_rank[s]) continue; /* stale */
        uint32_t r = end[s];     /* right part start */
        uint32_t re_ = end[r];   /* right part end */
        end[s] = re_;
        next_rank[r] = NO_RANK;  /* part r no longer exists */
        next_rank[s] = re_ < n ? lookup(t, p + s, end[re_] - s) : NO_RANK;
        if (next_rank[s] != NO_RANK) heap_push(heap, &hn, (mcand){next_rank[s], s});
        if (re_ < n) prev[re_] = s;
        if (s > 0) {
            uint32_t ps = prev[s];
            next_rank[ps] = lookup(t, p + ps, re_ - ps);
            if (next_rank[ps] != NO_RANK) heap_push(heap, &hn, (mcand){next_rank[ps], ps});
        }
    }
    size_t cnt = 0;
    for (size_t i = 0; i < n; i = end[i]) cnt++;
    if (idvec_grow(o, cnt)) goto done;
    for (size_t i = 0; i < n; i = end[i]) o->v[o->n++] = (int)lookup(t, p + i, end[i] - i);
    rc = 0;
done:
    free(end);
    free(prev);
    free(next_rank);
    free(heap);
    return rc;
}

/* One pre-tokenized piece: the whole piece if it is a token, else merged. */
static int encode_piece(const tokenizer *t, const unsigned char *p, size_t n, idvec *o) {
    uint32_t id = lookup(t, p, n);
    if (id != NO_RANK) {
        if (idvec_grow(o, 1)) return -1;
        o->v[o->n++] = (int)id;
        return 0;
    }
    return n <= SMALL_PIECE ? merge_small(t, p, n, o) : merge_large(t, p, n, o);
}

/* The next pre-tokenizer piece of s[0..len) at pos < len: a regex match, or
 * the run of invalid UTF-8 bytes before the next match (every valid
 * character starts a match, so the regex skips only invalid bytes; PCRE2's
 * MATCH_INVALID_UTF makes them barriers no match crosses). 0, or -1 on a
 * regex engine error. */
static int next_piece(const tokenizer *t, const unsigned char *s, size_t len, size_t pos, pcre2_match_data *md,
                      size_t *end /* OUT */) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    int rc;
    if (t->jit) {
        rc = pcre2_jit_match(t->re, s, len, pos, 0, md, t->mctx);
    } else {
        /* The interpreter re-validates the UTF-8 from pos to the subject's
         * end on every call (MATCH_INVALID_UTF ignores NO_UTF_CHECK), which
         * is quadratic over a long text; so match in a window, and widen it
         * when the result could depend on what lies past the window: no
         * match, or a match ending within a character (4 bytes) of its end.
         * The pattern looks ahead one character at most. */
        for (size_t win = 256;; win *= 4) {
            size_t wend = len - pos <= win ? len : pos + win;
            rc = pcre2_match(t->re, s, wend, pos, 0, md, t->mctx);
            if (wend == len || (rc >= 0 && ov[1] + 4 < wend) || (rc < 0 && rc != PCRE2_ERROR_NOMATCH)) break;
        }
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        *end = len;
        return 0;
    }
    if (rc < 0) return -1;
    if (ov[0] < pos || ov[1] <= ov[0] || ov[1] > len) return -1; /* the pattern has no empty matches */
    *end = ov[0] > pos ? ov[0] : ov[1];
    return 0;
}

int tok_encode(const tokenizer *t, const char *text, size_t len, int **ids, int *n) {
    *ids = NULL;
    *n = 0;
    idvec o = {0};
    const unsigned char *s = (const unsigned char *)text;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md || idvec_grow(&o, len / 4 + 16)) goto err;
    for (size_t pos = 0, end; pos < len; pos = end)
        if (next_piece(t, s, len, pos, md, &end) || encode_piece(t, s + pos, end - pos, &o)) goto err;
    pcre2_match_data_free(md);
    if (o.n > INT32_MAX || o.n == 0) {
        free(o.v);
        return o.n ? -1 : 0;
    }
    *ids = o.v;
    *n = (int)o.n;
    return 0;
err:
    pcre2_match_data_free(md);
    free(o.v);
    return -1;
}

int tok_split(const tokenizer *t, const char *text, size_t len, size_t *ends, int cap) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return -1;
    int k = 0;
    for (size_t pos = 0, end; pos < len; pos = end, k++) {
        if (next_piece(t, (const unsigned char *)text, len, pos, md, &end) || k == INT32_MAX) {
            k = -1;
            break;
        }
        if (k < cap) ends[k] = end;
    }
    pcre2_match_data_free(md);
    return k;
}

/* ==== Decoding ==== */

/* Allowed range of the next byte after the lead byte c0 with k bytes seen. */
static void utf8_next_range(unsigned char c0, int k, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (k != 1) return;
    if (c0 == 0xE0) *lo = 0xA0;
    else if (c0 == 0xED) *hi = 0x9F;
    else if (c0 == 0xF0) *lo = 0x90;
    else if (c0 == 0xF4) *hi = 0x8F;
}

/* Length of the character a lead byte starts, or 0 if it cannot start one. */
static int utf8_lead_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

static const unsigned char REPL[3] = {0xEF, 0xBF, 0xBD};

typedef struct sink {
    unsigned char *out;
    size_t n, cap;
    int full;
} sink;

static inline void put(sink *k, const unsigned char *b, size_t n) {
    if (k->n + n > k->cap) {
        k->full = 1;
        return;
    }
    memcpy(k->out + k->n, b, n);
    k->n += n;
}

/* Feeds bytes through the decoder d (Python's errors="replace" rules). */
static void feed(tok_decoder *d, const unsigned char *b, size_t n, sink *k) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (d->n_pending) {
            unsigned char lo, hi;
            utf8_next_range(d->pending[0], d->n_pending, &lo, &hi);
            if (c >= lo && c <= hi) {
                d->pending[d->n_pending++] = c;
                if (d->n_pending == utf8_lead_len(d->pending[0])) {
                    put(k, d->pending, (size_t)d->n_pending);
                    d->n_pending = 0;
                }
                continue;
            }
            /* The maximal subpart so far can never complete: one U+FFFD,
             * then c starts afresh. */
            put(k, REPL, 3);
            d->n_pending = 0;
        }
        int l = utf8_lead_len(c);
        if (l == 1) put(k, &c, 1);
        else if (l == 0) put(k, REPL, 3);
        else d->pending[d->n_pending++] = c;
    }
}

size_t tok_decode_push(const tokenizer *t, tok_decoder *d, int id, char *out, size_t cap) {
    size_t len;
    const unsigned char *b = tok_bytes(t, id, &len);
    if (!b) return (size_t)-1;
    tok_decoder save = *d;
    sink k = {(unsigned char *)out, 0, cap, 0};
    feed(d, b, len, &k);
    if (k.full) {
        *d = save;
        return (size_t)-1;
    }
    return k.n;
}

size_t tok_decode_flush(tok_decoder *d, char *out, size_t cap) {
    if (!d->n_pending) return 0;
    if (cap < 3) return (size_t)-1;
    memcpy(out, REPL, 3);
    d->n_pending = 0;
    return 3;
}

char *tok_decode_len(const tokenizer *t, const int *ids, int n, size_t *len) {
    *len = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t l;
        if (!tok_bytes(t, ids[i], &l)) return NULL;
        total += l;
    }
    /* Each input byte yields at most 3 output bytes (U+FFFD). */
    size_t cap = 3 * total + 4;
    char *out = malloc(cap);
    if (!out) return NULL;
    sink k = {(unsigned char *)out, 0, cap, 0};
    tok_decoder d = {{0}, 0};
    for (int i = 0; i < n; i++) {
        size_t l;
        const unsigned char *b = tok_bytes(t, ids[i], &l);
        feed(&d, b, l, &k);
    }
    if (d.n_pending) put(&k, REPL, 3);
    out[k.n] = 0;
    *len = k.n;
    return out;
}

char *tok_decode(const tokenizer *t, const int *ids, int n) {
    size_t len;
    return tok_decode_len(t, ids, n, &len);
}
