/* Fuzz target: the GLM-4 tokenizer with the real vocabulary.
 *  - bytes -> ids -> bytes: tok_encode of the input, whose tokens' bytes must
 *    concatenate back to the input exactly (tokenizer.h: lossless on any bytes),
 *    and tok_split's pieces must end inside the input, in order;
 *  - ids -> text: the input read as little-endian u32 ids (mod the vocabulary,
 *    so both regular and special ids occur; one in 64 kept out of range),
 *    decoded at once and token by token: both must agree, and an out-of-range
 *    id must be refused by both. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tokenizer();
    return 0;
}

static void check_encode(const tokenizer *t, const uint8_t *data, size_t size) {
    int *ids = NULL, n = 0;
    FUZZ_CHECK(tok_encode(t, (const char *)data, size, &ids, &n) == 0, "encode succeeds on any bytes");
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t len;
        const unsigned char *b = tok_bytes(t, ids[i], &len);
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < tok_n_regular(t) && b, "encode gives regular ids only");
        FUZZ_CHECK(len > 0 && at + len <= size && memcmp(data + at, b, len) == 0, "tokens' bytes spell the input");
        at += len;
    }
    FUZZ_CHECK(at == size, "tokens' bytes cover the whole input");
    size_t dlen = 0;
    char *text = tok_decode_len(t, ids, n, &dlen);
    FUZZ_CHECK(text != NULL, "decoding encoded ids succeeds");
    free(text);
    free(ids);

    size_t ends[64];
    int np = tok_split(t, (const char *)data, size, ends, 64);
    FUZZ_CHECK(np >= 0, "split succeeds");
    for (int i = 0; i < np && i < 64; i++)
        FUZZ_CHECK(ends[i] <= size && (i == 0 || ends[i] > ends[i - 1]), "pieces end in order inside the input");
}

static void check_decode(const tokenizer *t, const uint8_t *data, size_t size) {
    int n = (int)(size / 4), bad = 0;
    int *ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
    if (!ids) abort();
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 | (uint32_t)data[4 * i + 2] << 16 |
                     (uint32_t)data[4 * i + 3] << 24;
        ids[i] = (v & 63) == 63 ? (int)(v >> 6) - (1 << 25) : (int)(v % (uint32_t)tok_n_total(t));
        bad |= ids[i] < 0 || ids[i] >= tok_n_total(t);
    }
    size_t whole_len = 0;
    char *whole = tok_decode_len(t, ids, n, &whole_len);
    FUZZ_CHECK(bad ? whole == NULL : whole != NULL, "decode refuses exactly the out-of-range ids");
    size_t cap = 3 * (tok_max_token_len(t) + 4), len = 0;
    char *stream = malloc(cap * (size_t)(n + 1)), piece[4];
    if (!stream) abort();
    tok_decoder d = {0};
    for (int i = 0; i < n; i++) {
        size_t k = tok_decode_push(t, &d, ids[i], stream + len, cap);
        if (ids[i] < 0 || ids[i] >= tok_n_total(t)) {
            FUZZ_CHECK(k == (size_t)-1, "push refuses an out-of-range id");
            continue;
        }
        FUZZ_CHECK(k != (size_t)-1 && k <= cap, "push of a valid id fits the documented capacity");
        len += k;
    }
    size_t k = tok_decode_flush(&d, piece, sizeof piece);
    FUZZ_CHECK(k == 0 || k == 3, "flush writes nothing or one U+FFFD");
    memcpy(stream + len, piece, k);
    len += k;
    if (whole) FUZZ_CHECK(len == whole_len && memcmp(stream, whole, len) == 0, "streamed decode equals decode");
    free(stream);
    free(whole);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tokenizer *t = fuzz_tokenizer();
    check_encode(t, data, size);
    check_decode(t, data, size);
    return 0;
}
