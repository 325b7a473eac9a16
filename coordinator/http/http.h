/* http.h: the OpenAI-compatible HTTP front of `glmtp serve` (issue 18), on
 * rank 0 beside the protobuf channel, feeding the same engine loop (loop.c)
 * through the same inbox (queue.h: SRV_GEN items with a srv_sink). Parts:
 *   http.c     the libmicrohttpd daemon (one thread per connection), routing,
 *              the API key, the body limit, error bodies, /health, /v1/models,
 *              /tokenize, /detokenize;
 *   openai.c   /v1/chat/completions and /v1/completions: request JSON ->
 *              ready requests (validation, chat template, tool calls, a
 *              GLM-4V image decoded on the connection's thread: openai_map.h),
 *              engine output -> response JSON or server-sent events (openai.h);
 *   metrics.c  /metrics in the Prometheus text format (vLLM's names).
 * libmicrohttpd (Debian libmicrohttpd-dev): a small C HTTP/1.1 server library
 * from GNU, kept up to date in Debian, that parses requests (chunked bodies,
 * keep-alive, limits) so that we do not; its thread-per-connection mode lets a
 * request wait for the engine by blocking, with no event loop of our own. */
#ifndef GLMTP_HTTP_H
#define GLMTP_HTTP_H

#include <stddef.h>

#include "../fronts/requests.h"
#include "../serve/queue.h"

typedef struct http_options {
    const char *addr;       /* HOST:PORT (IPv4 or [IPv6]) */
    const char *api_key;    /* NULL: none needed (loopback only) */
    const char *model_name; /* --served-model-name */
    size_t max_request_bytes;
    int max_model_len;
} http_options;

typedef struct http_server http_server;

/* Starts the daemon on o->addr; s and ctx must outlive it (strings in o are
 * copied). Returns NULL with err naming the problem (bad address, a non-loopback
 * address without a key, the port in use). */
http_server *http_start(server *s, const req_context *ctx, const http_options *o, char *err, size_t errlen);

/* Stops accepting and waits for the connections' threads (call once the engine
 * loop has answered every request). Accepts NULL. */
void http_stop(http_server *h);

/* Whether addr (HOST:PORT) names a loopback address; -1 when it does not parse. */
int http_addr_is_loopback(const char *addr);

#endif
