/* test_tokenizer: coordinator/text/tokenizer.c against tiktoken golden data.
 *   test_tokenizer VOCAB_FILE GOLDEN_JSON
 * GOLDEN_JSON is tests/tokenizer/golden.json (written by make_golden.py with
 * tiktoken). Checks: every golden case's ids exactly; decode(encode(x)) == x;
 * streaming decode at every split point equals one-shot decode; U+FFFD rules
 * of Python's errors="replace"; special tokens; every code point's regex
 * class (per-block hashes); malformed vocabulary files fail with file:line.
 * Prints one line per check, then "N passed, M failed"; exits 1 on failure. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../coordinator/text/tokenizer.h"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d ", ok ? "ok  " : "FAIL", n_pass + n_fail + 1);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

/* ==== Helpers ==== */

static unsigned char *b64dec(const char *s, size_t *len) {
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 4);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *p = strchr(A, s[i]);
        if (!p) continue;
        acc = acc << 6 | (uint32_t)(p - A);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    *len = o;
    return out;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        int l = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!l || i + (size_t)l > n) return 0;
        for (int k = 1; k < l; k++) {
            unsigned char lo = 0x80, hi = 0xBF, b = s[i + (size_t)k];
            if (k == 1 && c == 0xE0) lo = 0xA0;
            if (k == 1 && c == 0xED) hi = 0x9F;
            if (k == 1 && c == 0xF0) lo = 0x90;
            if (k == 1 && c == 0xF4) hi = 0x8F;
            if (b < lo || b > hi) return 0;
        }
        i += (size_t)l;
    }
    return 1;
}

static int put_utf8(unsigned char *o, uint32_t c) {
    if (c < 0x80) return o[0] = (unsigned char)c, 1;
    if (c < 0x800) return o[0] = (unsigned char)(0xC0 | c >> 6), o[1] = (unsigned char)(0x80 | (c & 63)), 2;
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | c >> 12);
        o[1] = (unsigned char)(0x80 | (c >> 6 & 63));
        o[2] = (unsigned char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | c >> 18);
    o[1] = (unsigned char)(0x80 | (c >> 12 & 63));
    o[2] = (unsigned char)(0x80 | (c >> 6 & 63));
    o[3] = (unsigned char)(0x80 | (c & 63));
    return 4;
}

static uint64_t fnv1a64(const int *ids, int n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) h = (h ^ ((uint32_t)ids[i] >> (8 * k) & 0xFF)) * 0x100000001b3ull;
    return h;
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

/* Case bytes: "text" or "bytes_b64". Caller frees. */
static unsigned char *case_bytes(const cJSON *c, size_t *len) {
    const cJSON *t = cJSON_GetObjectItem(c, "text");
    if (cJSON_IsString(t)) {
        *len = strlen(t->valuestring);
        unsigned char *b = malloc(*len + 1);
        memcpy(b, t->valuestring, *len + 1);
        return b;
    }
    return b64dec(cJSON_GetObjectItem(c, "bytes_b64")->valuestring, len);
}

static int *json_ids(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int *v = malloc(sizeof(int) * (size_t)(*n + 1));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = e->valueint;
    return v;
}

/* Streams ids through one decoder, one push per id, with a buffer of
 * exactly the size each push needs (probing that a too-small buffer fails
 * without side effects). Returns a malloc'ed string and its length. */
static char *stream_decode(const tokenizer *t, const int *ids, int n, size_t *len, int *bad_cap) {
    size_t cap = 64, total = 0;
    char *out = malloc(cap);
    tok_decoder d = {{0}, 0};
    size_t big = 3 * (tok_max_token_len(t) + 4);
    char *tmp = malloc(big);
    for (int i = 0; i < n; i++) {
        tok_decoder before = d;
        size_t w = tok_decode_push(t, &d, ids[i], tmp, big);
        if (w > 0) { /* the same push into w-1 bytes must fail and leave d alone */
            tok_decoder probe = before;
            if (tok_decode_push(t, &probe, ids[i], tmp, w - 1) != (size_t)-1 ||
                memcmp(&probe, &before, sizeof probe) != 0)
                (*bad_cap)++;
        }
        if (total + w + 4 > cap) out = realloc(out, cap = 2 * (total + w + 4));
        memcpy(out + total, tmp, w);
        total += w;
    }
    total += tok_decode_flush(&d, out + total, 3);
    if (d.n_pending) (*bad_cap)++;
    out[total] = 0;
    *len = total;
    free(tmp);
    return out;
}

/* ==== Golden cases ==== */

static void test_cases(const tokenizer *t, const cJSON *cases) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        size_t len;
        unsigned char *b = case_bytes(c, &len);
        int ne, ng, *exp = json_ids(cJSON_GetObjectItem(c, "ids"), &ne), *got = NULL;
        int rc = tok_encode(t, (const char *)b, len, &got, &ng);
        int first = -1;
        for (int i = 0; i < (ne < ng ? ne : ng) && first < 0; i++)
            if (exp[i] != got[i]) first = i;
        if (first < 0 && ne != ng) first = ne < ng ? ne : ng;
        if (rc || first >= 0)
            check(0, "encode %s: %zu bytes, %d ids expected, %d got, first difference at %d (expected %d, got %d)",
                  name, len, ne, ng, first, first < ne ? exp[first] : -1, first < ng ? got[first] : -1);
        else
            check(1, "encode %s: %zu bytes -> %d ids", name, len, ng);

        /* Round trip: the ids' bytes are the input (any bytes), and decoding
         * gives the input back when it is valid UTF-8. */
        size_t cat = 0, dl;
        int same = 1;
        for (int i = 0; i < ng && same; i++) {
            size_t l;
            const unsigned char *tb = tok_bytes(t, got[i], &l);
            same = tb && cat + l <= len && memcmp(b + cat, tb, l) == 0;
            cat += l;
        }
        char *dec = tok_decode_len(t, got, ng, &dl);
        if (utf8_valid(b, len))
            check(same && cat == len && dec && dl == len && memcmp(dec, b, len) == 0, "roundtrip %s: decode(encode(x)) == x", name);
        else
            check(same && cat == len && dec && utf8_valid((unsigned char *)dec, dl),
                  "roundtrip %s (invalid UTF-8): token bytes == input, decode is valid UTF-8", name);
        free(dec);
        free(b);
        free(exp);
        free(got);
    }
}

/* After every prefix of k tokens, the streamed output plus a flush equals
 * the one-shot decode of those k tokens, and the whole stream equals the
 * one-shot decode. */
static void test_stream_splits(const tokenizer *t, const cJSON *cases, const char *name) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        if (strcmp(cJSON_GetObjectItem(c, "name")->valuestring, name) != 0) continue;
        int n, *ids = json_ids(cJSON_GetObjectItem(c, "ids"), &n);
        size_t big = 3 * (tok_max_token_len(t) + 4), total = 0, cap = 1024;
        char *tmp = malloc(big), *acc = malloc(cap);
        tok_decoder d = {{0}, 0};
        int bad = -1;
        for (int k = 0; k <= n && bad < 0; k++) {
            tok_decoder copy = d;
            char fl[4];
            size_t f = tok_decode_flush(&copy, fl, sizeof fl);
            size_t one;
            char *ref = tok_decode_len(t, ids, k, &one);
            if (!ref || one != total + f || memcmp(ref, acc, total) || memcmp(ref + total, fl, f)) bad = k;
            free(ref);
            if (k == n) break;
            size_t w = tok_decode_push(t, &d, ids[k], tmp, big);
            if (total + w > cap) acc = realloc(acc, cap = 2 * (total + w));
            memcpy(acc + total, tmp, w);
            total += w;
        }
        check(bad < 0, "stream %s: %d split points, prefix stream + flush == one-shot decode%s", name, n + 1,
              bad < 0 ? "" : " (differs)");
        /* Byte by byte: the input's bytes as single-byte tokens. */
        size_t len;
        unsigned char *b = case_bytes(c, &len);
        int *bid = malloc(sizeof(int) * (len + 1));
        for (size_t i = 0; i < len; i++) {
            int *one, m;
            tok_encode(t, (const char *)b + i, 1, &one, &m);
            bid[i] = one[0];
            free(one);
        }
        size_t sl, ol;
        int bad_cap = 0;
        char *s = stream_decode(t, bid, (int)len, &sl, &bad_cap);
        char *o = tok_decode_len(t, bid, (int)len, &ol);
        check(sl == ol && memcmp(s, o, sl) == 0 && bad_cap == 0 && (!utf8_valid(b, len) || (sl == len && !memcmp(s, b, len))),
              "stream %s: byte-by-byte (%zu single-byte tokens) == one-shot, small buffers refused cleanly", name, len);
        free(s);
        free(o);
        free(b);
        free(bid);
        free(tmp);
        free(acc);
        free(ids);
        return;
    }
    check(0, "stream %s: no such golden case", name);
}

/* The long document decoded in random-sized chunks of ids. */
static void test_stream_chunks(const tokenizer *t, const cJSON *cases) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        if (strcmp(cJSON_GetObjectItem(c, "name")->valuestring, "long_document") != 0) continue;
        int n, *ids = json_ids(cJSON_GetObjectItem(c, "ids"), &n);
        size_t ol;
        char *one = tok_decode_len(t, ids, n, &ol);
        size_t cap = ol + 64, total = 0;
        char *acc = malloc(cap);
        tok_decoder d = {{0}, 0};
        uint32_t rng = 12345;
        int i = 0, chunks = 0, ok = 1;
        while (i < n) {
            rng = rng * 1664525u + 1013904223u;
            int m = 1 + (int)(rng >> 24) % 37;
            for (int k = 0; k < m && i < n; k++, i++) {
                size_t w = tok_decode_push(t, &d, ids[i], acc + total, cap - total);
                if (w == (size_t)-1) ok = 0;
                else total += w;
            }
            chunks++;
            /* The output so far is a prefix of the one-shot text and never
             * ends inside a character. */
            if (total > ol || memcmp(acc, one, total) || !utf8_valid((unsigned char *)acc, total)) ok = 0;
        }
        total += tok_decode_flush(&d, acc + total, cap - total);
        check(ok && total == ol && memcmp(acc, one, ol) == 0,
              "stream long_document: %d ids in %d random chunks == one-shot decode", n, chunks);
        size_t len;
        unsigned char *b = case_bytes(c, &len);
        check(ol == len && memcmp(one, b, len) == 0, "decode long_document == its text (%zu bytes)", len);
        free(b);
        free(one);
        free(acc);
        free(ids);
        return;
    }
    check(0, "stream long_document: no such golden case");
}

static void test_decode_cases(const tokenizer *t, const cJSON *dcases) {
    int n_cases = 0, bad_one = 0, bad_stream = 0, first_bad = -1;
    const cJSON *c;
    cJSON_ArrayForEach(c, dcases) {
        int n, *ids = json_ids(cJSON_GetObjectItem(c, "ids"), &n);
        size_t el, gl, sl;
        unsigned char *exp = b64dec(cJSON_GetObjectItem(c, "text_b64")->valuestring, &el);
        char *got = tok_decode_len(t, ids, n, &gl);
        int bad_cap = 0;
        char *s = stream_decode(t, ids, n, &sl, &bad_cap);
        if (!got || gl != el || memcmp(got, exp, el)) {
            bad_one++;
            if (first_bad < 0) first_bad = n_cases;
        }
        if (sl != el || memcmp(s, exp, el) || bad_cap) {
            bad_stream++;
            if (first_bad < 0) first_bad = n_cases;
        }
        n_cases++;
        free(ids);
        free(exp);
        free(got);
        free(s);
    }
    check(n_cases > 0 && bad_one == 0, "decode invalid byte sequences == Python errors='replace' (%d cases, %d wrong, first %d)",
          n_cases, bad_one, first_bad);
    check(n_cases > 0 && bad_stream == 0, "stream-decode invalid byte sequences == Python errors='replace' (%d cases, %d wrong)",
          n_cases, bad_stream);
}

/* Every code point in the golden template, per block, hashed like make_golden.py. */
static void test_codepoints(const tokenizer *t, const cJSON *cb) {
    const char *tpl = cJSON_GetObjectItem(cb, "template")->valuestring;
    int block = cJSON_GetObjectItem(cb, "block")->valueint;
    size_t tl = strlen(tpl);
    unsigned char *text = malloc((size_t)block * tl * 4 + 16);
    int n_blocks = 0, n_bad = 0;
    char bad[512] = "";
    const cJSON *b;
    cJSON_ArrayForEach(b, cJSON_GetObjectItem(cb, "blocks")) {
        uint32_t first = (uint32_t)cJSON_GetObjectItem(b, "first")->valuedouble;
        size_t n = 0;
        for (uint32_t cp = first; cp < first + (uint32_t)block; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            for (size_t i = 0; i < tl; i++) {
                if (strncmp(tpl + i, "{c}", 3) == 0) {
                    n += (size_t)put_utf8(text + n, cp);
                    i += 2;
                } else {
                    text[n++] = (unsigned char)tpl[i];
                }
            }
        }
        int *ids, m;
        char hex[17];
        int rc = tok_encode(t, (const char *)text, n, &ids, &m);
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(ids, m));
        if (rc || m != cJSON_GetObjectItem(b, "n_ids")->valueint ||
            strcmp(hex, cJSON_GetObjectItem(b, "fnv1a64")->valuestring) != 0) {
            n_bad++;
            size_t l = strlen(bad);
            if (l < sizeof bad - 16) snprintf(bad + l, sizeof bad - l, " U+%04X", first);
        }
        free(ids);
        n_blocks++;
    }
    check(n_blocks == 0x110000 / block && n_bad == 0,
          "every code point (template \"x{c}1{c} {c}.{c}'{c}\\n\"), %d blocks of %d: ids hash equal%s%s", n_blocks, block,
          n_bad ? "; wrong blocks:" : "", bad);
    free(text);
}

/* Every code point's regex class, read off the pre-tokenizer's pieces:
 *   "a{c}a" is one piece iff c is a letter (\p{L}+),
 *   "1{c}1" is one piece iff c is a number (\p{N}{1,3}),
 *   "!{c}!" is one piece iff c is none of letter, number, space;
 * so c is \s iff none of the three holds. Compared with tiktoken's classes. */
static void set_ranges(unsigned char *bits, const cJSON *ranges) {
    const cJSON *r;
    cJSON_ArrayForEach(r, ranges) {
        uint32_t lo = (uint32_t)cJSON_GetArrayItem(r, 0)->valuedouble, hi = (uint32_t)cJSON_GetArrayItem(r, 1)->valuedouble;
        for (uint32_t c = lo; c <= hi && c < 0x110000; c++) bits[c] = 1;
    }
}

static void test_classes(const tokenizer *t, const cJSON *classes) {
    static const char *names[] = {"L", "N", "S"}, *labels[] = {"\\p{L}", "\\p{N}", "\\s"};
    unsigned char *want[3];
    for (int k = 0; k < 3; k++) {
        want[k] = calloc(0x110000, 1);
        set_ranges(want[k], cJSON_GetObjectItem(classes, names[k]));
    }
    int wrong[3] = {0, 0, 0}, n = 0;
    char first[3][64] = {"", "", ""};
    size_t ends[8];
    for (uint32_t c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c <= 0xDFFF) continue;
        unsigned char u[4], text[12];
        int ul = put_utf8(u, c);
        int pieces[3];
        const char ctx[3] = {'a', '1', '!'};
        for (int k = 0; k < 3; k++) {
            text[0] = (unsigned char)ctx[k];
            memcpy(text + 1, u, (size_t)ul);
            text[1 + ul] = (unsigned char)ctx[k];
            pieces[k] = tok_split(t, (const char *)text, (size_t)ul + 2, ends, 8);
        }
        int got[3] = {pieces[0] == 1, pieces[1] == 1, pieces[0] != 1 && pieces[1] != 1 && pieces[2] != 1};
        for (int k = 0; k < 3; k++)
            if (got[k] != want[k][c]) {
                if (!wrong[k]++) snprintf(first[k], sizeof first[k], " first U+%04X (want %d)", c, want[k][c]);
            }
        n++;
    }
    for (int k = 0; k < 3; k++) {
        check(wrong[k] == 0, "class %s of all %d code points == tiktoken's: %d differ%s", labels[k], n, wrong[k],
              first[k]);
        free(want[k]);
    }
}

/* ==== API details ==== */

static void test_api(const tokenizer *t) {
    check(tok_n_regular(t) == 151329 && tok_n_total(t) == 151343, "n_regular 151329, n_total 151343 (got %d, %d)",
          tok_n_regular(t), tok_n_total(t));
    static const char *names[] = {"<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                                  "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>",
                                  "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"};
    int ok = 1;
    for (int i = 0; i < 14; i++) {
        int id = 151329 + i;
        char *s = tok_decode(t, &id, 1);
        size_t l;
        const unsigned char *b = tok_bytes(t, id, &l);
        if (tok_special_id(t, names[i]) != id || !s || strcmp(s, names[i]) || !b || l != strlen(names[i]) ||
            memcmp(b, names[i], l))
            ok = 0;
        free(s);
    }
    check(ok, "special ids 151329..151342: tok_special_id, tok_bytes and tok_decode give their text");
    check(tok_special_id(t, "<|user|>") == 151336 && tok_special_id(t, "[gMASK]") == 151331 &&
              tok_special_id(t, "<sop>") == 151333,
          "tok_special_id <|user|> 151336, [gMASK] 151331, <sop> 151333");
    check(tok_special_id(t, "<|user|> ") == -1 && tok_special_id(t, "") == -1 && tok_special_id(t, "user") == -1 &&
              tok_special_id(t, "<|USER|>") == -1,
          "tok_special_id of non-special text is -1");
    int mix[] = {151331, 151333, 151336, 198, 9703, 151337};
    char *s = tok_decode(t, mix, 6);
    check(s && strcmp(s, "[gMASK]<sop><|user|>\nHello<|assistant|>") == 0,
          "decode [gMASK] <sop> <|user|> \\n Hello <|assistant|> == \"[gMASK]<sop><|user|>\\nHello<|assistant|>\"");
    free(s);
    size_t l;
    const unsigned char *b0 = tok_bytes(t, 0, &l);
    int ok0 = b0 && l == 1 && b0[0] == '!';
    const unsigned char *b198 = tok_bytes(t, 198, &l);
    check(ok0 && b198 && l == 1 && b198[0] == '\n', "tok_bytes: id 0 is '!', id 198 is '\\n' (spec §4.1)");
    check(!tok_bytes(t, -1, &l) && !tok_bytes(t, 151343, &l) && !tok_bytes(t, 151552, &l),
          "tok_bytes of -1, 151343, 151552 is NULL");
    int bad = 151343;
    char out[64];
    tok_decoder d = {{0}, 0};
    check(!tok_decode(t, &bad, 1) && tok_decode_push(t, &d, bad, out, sizeof out) == (size_t)-1,
          "decode of an out-of-range id fails");
    int *ids = (int *)1, n = 7;
    int rc = tok_encode(t, "", 0, &ids, &n);
    check(rc == 0 && n == 0 && ids == NULL, "encode of empty input: 0 ids");
    /* Special-token text in plain text is ordinary text. */
    const char *txt = "<|user|>[gMASK]<sop><|endoftext|>";
    rc = tok_encode(t, txt, strlen(txt), &ids, &n);
    int all_regular = rc == 0 && n > 4;
    for (int i = 0; i < n; i++) all_regular &= ids[i] < 151329;
    check(all_regular, "special-token text inside plain text encodes to %d regular ids", n);
    free(ids);
    /* Pending bytes: an incomplete character stays pending until completed. */
    int e4, b8, ad;
    {
        int *x, m;
        tok_encode(t, "\xe4", 1, &x, &m), e4 = x[0], free(x);
        tok_encode(t, "\xb8", 1, &x, &m), b8 = x[0], free(x);
        tok_encode(t, "\xad", 1, &x, &m), ad = x[0], free(x);
    }
    size_t w1 = tok_decode_push(t, &d, e4, out, sizeof out);
    size_t w2 = tok_decode_push(t, &d, b8, out, sizeof out);
    int pend = d.n_pending;
    size_t w3 = tok_decode_push(t, &d, ad, out, sizeof out);
    check(w1 == 0 && w2 == 0 && pend == 2 && w3 == 3 && memcmp(out, "\xe4\xb8\xad", 3) == 0 && d.n_pending == 0,
          "stream: E4, B8 held back, AD completes U+4E2D");
    tok_decode_push(t, &d, e4, out, sizeof out);
    size_t wf = tok_decode_flush(&d, out, sizeof out);
    check(wf == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0 && d.n_pending == 0, "flush of a pending E4 gives U+FFFD");
}

/* ==== Malformed vocabularies ==== */

static const char *tmp_path(const char *name) {
    static char p[512];
    const char *dir = getenv("TMPDIR");
    snprintf(p, sizeof p, "%s/glmtp_tok_%ld_%s", dir && *dir ? dir : "/tmp", (long)getpid(), name);
    return p;
}

static void expect_load_error(const char *what, const char *content, size_t len, const char *line_tag,
                              const char *reason) {
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path(what));
    FILE *f = fopen(path, "wb");
    fwrite(content, 1, len, f);
    fclose(f);
    tokenizer *t = (tokenizer *)1;
    char err[512] = "";
    int rc = tok_load(&t, path, err, sizeof err);
    char want[600];
    snprintf(want, sizeof want, "%s%s", path, line_tag);
    check(rc == -1 && t == NULL && strstr(err, want) && strstr(err, reason), "malformed vocab (%s) -> %s", what, err);
    remove(path);
}

/* Minimal valid file: the 256 single bytes at ranks 0..255, then extra lines. */
static char *byte_vocab(const char *extra, size_t *len) {
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t cap = 256 * 16 + strlen(extra) + 1, n = 0;
    char *s = malloc(cap);
    for (int c = 0; c < 256; c++)
        n += (size_t)snprintf(s + n, cap - n, "%c%c== %d\n", A[c >> 2], A[(c & 3) << 4], c);
    n += (size_t)snprintf(s + n, cap - n, "%s", extra);
    *len = n;
    return s;
}

static void test_load_errors(void) {
    const char *bad_b64 = "IQ== 0\nIg== 1\nI!== 2\nJA== 3\n";
    expect_load_error("bad_base64_line3", bad_b64, strlen(bad_b64), ":3:", "base64");
    const char *no_rank = "IQ== 0\nIg==\n";
    expect_load_error("missing_rank_line2", no_rank, strlen(no_rank), ":2:", "missing rank");
    const char *order = "IQ== 0\nIg== 1\nIw== 3\n";
    expect_load_error("rank_out_of_order_line3", order, strlen(order), ":3:", "out of order");
    const char *dup_rank = "IQ== 0\nIg== 1\nIw== 1\n";
    expect_load_error("duplicate_rank_line3", dup_rank, strlen(dup_rank), ":3:", "duplicate");
    const char *bad_rank = "IQ== 0\nIg== x1\n";
    expect_load_error("bad_rank_line2", bad_rank, strlen(bad_rank), ":2:", "bad rank");
    expect_load_error("empty_file", "", 0, ":1:", "empty file");
    const char *blank = "IQ== 0\n\nIg== 1\n";
    expect_load_error("blank_line2", blank, strlen(blank), ":2:", "empty line");
    const char *three = "IQ== 0\nIg== 1 7\n";
    expect_load_error("three_fields_line2", three, strlen(three), ":2:", "fields");
    size_t len;
    char *dup = byte_vocab("YWI= 256\nYWI= 257\n", &len); /* "ab" twice */
    expect_load_error("duplicate_bytes_line258", dup, len, ":258:", "duplicate token bytes");
    free(dup);
    const char *few = "IQ== 0\nIg== 1\n";
    expect_load_error("missing_single_byte", few, strlen(few), ":", "single byte 0x00");

    tokenizer *t = (tokenizer *)1;
    char err[512] = "";
    int rc = tok_load(&t, "/nonexistent/dir/tokenizer.model", err, sizeof err);
    check(rc == -1 && t == NULL && strstr(err, "/nonexistent/dir/tokenizer.model"), "missing file -> %s", err);

    /* A small well-formed vocabulary loads, and merges follow it. */
    char *ok = byte_vocab("YWI= 256\nYWJj 257\r\n  YmM=\t258  \n", &len); /* ab, abc, bc; CRLF, spaces, tab */
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("small_ok"));
    FILE *f = fopen(path, "wb");
    fwrite(ok, 1, len, f);
    fclose(f);
    rc = tok_load(&t, path, err, sizeof err);
    int *ids = NULL, n = 0;
    if (rc == 0) tok_encode(t, "abcab", 5, &ids, &n);
    check(rc == 0 && tok_n_regular(t) == 259 && tok_special_id(t, "<|user|>") == 259 + 7 && n == 2 && ids[0] == 257 &&
              ids[1] == 256,
          "small vocab (256 bytes + ab, abc, bc) loads; 'abcab' -> [257, 256]%s%s", rc ? ": " : "", rc ? err : "");
    free(ids);
    tok_free(t);
    free(ok);
    remove(path);
    tok_free(NULL);
    check(1, "tok_free(NULL) is a no-op");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_tokenizer VOCAB_FILE GOLDEN_JSON\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    tokenizer *t;
    char err[512];
    if (tok_load(&t, argv[1], err, sizeof err)) {
        check(0, "load %s: %s", argv[1], err);
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return 1;
    }
    const char *nojit = getenv("GLMTP_TOK_NO_JIT");
    check(1, "load %s (regex: %s)", argv[1], nojit && *nojit && strcmp(nojit, "0") ? "PCRE2 interpreter, GLMTP_TOK_NO_JIT set" : "PCRE2 JIT if available");
    size_t glen;
    char *gtext = read_text(argv[2], &glen);
    cJSON *g = gtext ? cJSON_ParseWithLength(gtext, glen) : NULL;
    free(gtext);
    if (!g) {
        check(0, "read golden %s", argv[2]);
    } else {
        const cJSON *cases = cJSON_GetObjectItem(g, "cases");
        const cJSON *meta = cJSON_GetObjectItem(g, "meta");
        check(cJSON_GetArraySize(cases) > 100, "golden %s: %d cases, tiktoken %s", argv[2], cJSON_GetArraySize(cases),
              cJSON_GetObjectItem(meta, "tiktoken_version")->valuestring);
        test_cases(t, cases);
        const char *split_cases[] = {"zh_1", "emoji_1", "emoji_2", "mixed_7", "math_1", "invalid_runs",
                                     "invalid_zh_mix", "truncated_emoji_mid", "special_text_1", "ws_15"};
        for (size_t i = 0; i < sizeof split_cases / sizeof split_cases[0]; i++) test_stream_splits(t, cases, split_cases[i]);
        test_stream_chunks(t, cases);
        test_decode_cases(t, cJSON_GetObjectItem(g, "decode_cases"));
        test_codepoints(t, cJSON_GetObjectItem(g, "codepoint_blocks"));
        test_classes(t, cJSON_GetObjectItem(g, "classes"));
        cJSON_Delete(g);
    }
    test_api(t);
    tok_free(t);
    test_load_errors();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
