/* tokenizer.h: the GLM-4 byte-level BPE tokenizer (tiktoken format), spec §4.
 *
 * This interface loads tokenizer.model (one "<base64 bytes> <rank>" per line,
 * rank = id), encodes bytes to ids exactly as tiktoken's encode_ordinary does
 * (same pre-tokenizer regex, same lowest-rank-first merge), and decodes ids
 * back to UTF-8, one token at a time if wanted.
 *
 * - Regular ids are 0..tok_n_regular()-1 (151329 for GLM-4); the 14 special
 *   tokens follow ([gMASK] = 151331, <|user|> = 151336, ...). Encoding never
 *   produces a special id and never parses special-token text out of its
 *   input: "<|user|>" in user text is encoded as ordinary text (spec §4.3).
 *   Insert special ids by number (tok_special_id).
 * - Invalid UTF-8 input: tiktoken's public API only takes valid text (a str;
 *   lone surrogates become U+FFFD). Here the bytes are kept: the regex runs on
 *   each maximal valid-UTF-8 stretch as if it were a string of its own
 *   (an invalid sequence is a barrier no regex match crosses), and each
 *   maximal run of invalid bytes is merged as one piece (tiktoken's
 *   byte_pair_encode). So valid UTF-8 encodes exactly as tiktoken, any bytes
 *   encode losslessly, and tok_bytes of the ids concatenate back to the input.
 * - Decoding follows Python's bytes.decode("utf-8", errors="replace"): each
 *   maximal subpart of an ill-formed sequence becomes one U+FFFD. Special ids
 *   decode to their text.
 *
 * A loaded tokenizer is read-only: any number of threads may encode/decode
 * with it at once. The regex runs under PCRE2's JIT when available; setting
 * GLMTP_TOK_NO_JIT=1 before tok_load forces the (slower, same-result)
 * interpreter, so tests can cover that path. */
#ifndef GLMTP_TOKENIZER_H
#define GLMTP_TOKENIZER_H

#include <stddef.h>

typedef struct tokenizer tokenizer;

/* Loads a tiktoken-format vocabulary. Every line must be
 * "<base64> <rank>" with ranks 0, 1, 2, ... in order, distinct token bytes,
 * and every single byte must be a token. On success *out owns the tokenizer
 * (free with tok_free) and 0 is returned. On failure -1 is returned, *out is
 * NULL and err holds "PATH:LINE: reason" (or "PATH: reason"). */
int tok_load(tokenizer **out /* OUT */, const char *path, char *err, size_t errlen);

/* Frees everything tok_load allocated. Accepts NULL. */
void tok_free(tokenizer *t);

/* Number of regular (BPE) tokens: ids 0..n_regular-1. */
int tok_n_regular(const tokenizer *t);
/* Regular plus special tokens: ids n_regular..n_total-1 are special. */
int tok_n_total(const tokenizer *t);

/* Id of a special token given its exact text ("<|user|>" -> 151336),
 * or -1 when text is not a special token. */
int tok_special_id(const tokenizer *t, const char *text);

/* Encodes len bytes of text (any bytes; need not be NUL-terminated or valid
 * UTF-8) as plain BPE, no special tokens. On success *ids is a malloc'ed
 * array of *n ids that the caller frees (NULL when *n is 0) and 0 is
 * returned; on failure (out of memory, regex engine error) -1 is returned
 * and *ids is NULL, *n 0. */
int tok_encode(const tokenizer *t, const char *text, size_t len,
               int **ids /* OUT */, int *n /* OUT */);

/* The pre-tokenizer alone (for tests and debugging): splits text into the
 * pieces tok_encode merges separately and writes the end offset of each of
 * the first cap pieces to ends. Returns the number of pieces (which may
 * exceed cap), or -1 on failure. */
int tok_split(const tokenizer *t, const char *text, size_t len, size_t *ends /* OUT */, int cap);

/* Raw bytes of a regular token, or the text of a special one; *len gets
 * the length. The bytes belong to t (not NUL-terminated for regular tokens).
 * NULL when id is outside 0..tok_n_total()-1. */
const unsigned char *tok_bytes(const tokenizer *t, int id, size_t *len /* OUT */);

/* Longest tok_bytes length over all ids. */
size_t tok_max_token_len(const tokenizer *t);

/* Streaming decoder state; zero-initialise it ({0}) before the first push.
 * pending holds the start of a UTF-8 character whose remaining bytes have not
 * arrived yet (at most 3 bytes). */
typedef struct tok_decoder {
    unsigned char pending[8];
    int n_pending;
} tok_decoder;

/* Appends the text of token id to out: only complete UTF-8 characters are
 * written; bytes of an incomplete trailing character stay in d until a later
 * push completes it (or shows it can never be completed: then U+FFFD).
 * Returns the number of bytes written (no NUL is added). Returns (size_t)-1,
 * writing nothing and leaving d unchanged, when id is out of range or cap is
 * too small; cap >= 3 * (tok_max_token_len(t) + 4) always suffices. */
size_t tok_decode_push(const tokenizer *t, tok_decoder *d, int id, char *out, size_t cap);

/* Ends a stream: writes U+FFFD if d holds an incomplete character and resets
 * d. Returns bytes written (0 or 3), or (size_t)-1 if cap < 3 and one is due. */
size_t tok_decode_flush(tok_decoder *d, char *out, size_t cap);

/* Decodes n ids in one go (same result as pushing each, then flushing).
 * Returns a malloc'ed NUL-terminated string the caller frees, or NULL if an
 * id is out of range or memory runs out. The text itself may contain NUL
 * bytes if a token does (id 0..255 cover every byte). */
char *tok_decode(const tokenizer *t, const int *ids, int n);

/* tok_decode that also returns the text's length in *len (for text that may
 * hold NUL bytes). Same ownership and failure as tok_decode. */
char *tok_decode_len(const tokenizer *t, const int *ids, int n, size_t *len /* OUT */);

#endif
