/* client_load.h: glmtp-client --load, a serving load generator like vLLM's
 * benchmark_serving: n requests of in_len random token ids, each asking for
 * out_len new tokens, sent on their own connections at Poisson arrival times of
 * `rate` requests/s (rate <= 0: all at once). Reports time to first token,
 * time per output token and inter-token latency (p50/p90/p99) and throughput,
 * as a table and optionally JSON. */
#ifndef GLMTP_CLIENT_LOAD_H
#define GLMTP_CLIENT_LOAD_H

#include <stdint.h>

typedef struct load_opts {
    const char *addr, *token_file, *json;
    double rate;
    int requests, in_len, out_len, vocab;
    uint64_t seed;
} load_opts;

/* 0 when every request completed, 1 when some failed (still reported), 2 on usage errors. */
int client_load(const load_opts *o);

#endif
