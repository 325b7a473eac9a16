/* capacity.h: the longest sequence a front admits (--max-model-len) against the
 * KV pool engine_open made, checked once at start-up so that a request that
 * could never fit is refused at admission with the numbers, never failed
 * mid-request.
 *
 * Every rank calls it with the same arguments and pool, so every rank reaches
 * the same verdict without a collective; rank 0 alone prints. */
#ifndef GLMTP_CAPACITY_H
#define GLMTP_CAPACITY_H

#include "engine.h"

/* The maximum model length to use, or -1 (the caller exits non-zero).
 * asked: --max-model-len (0: not given, the config's seq_length). what: the
 * command, for messages ("serve").
 *   asked > seq_length                     -> -1, naming both
 *   limit <= the pool's tokens             -> limit, nothing printed
 *   asked explicitly, pool smaller         -> -1, one error line: the tokens
 *       asked and their KV bytes per rank, the pool's tokens and bytes, and
 *       the ways out (more ranks, fp8 KV, a shorter --max-model-len, a larger
 *       pool)
 *   seq_length by default, pool smaller    -> the pool's tokens, the same
 *       line as a warning: requests needing more are refused at admission */
int engine_max_model_len(const engine *e, int asked, const char *what);

/* The same line for figures given directly (unit tests, and the caller above):
 * tokens wanted, the pool's tokens, KV bytes per token on one rank, ranks, KV
 * groups of the model. Writes a message into msg. */
void engine_capacity_message(char *msg, size_t len, long long want, long long pool, double kv_token_bytes, int tp,
                             int kv_groups);

#endif
