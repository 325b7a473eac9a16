/* openai.h: the OpenAI request and response mapping of the HTTP front (see
 * http.h), shared by http.c, openai.c and metrics.c. */
#ifndef GLMTP_HTTP_OPENAI_H
#define GLMTP_HTTP_OPENAI_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "../fronts/openai_map.h"
#include "../fronts/requests.h"
#include "../serve/queue.h"

/* What the handlers share (read-only once the daemon runs, but for serial). */
typedef struct oai_ctx {
    server *s;
    const req_context *ctx;
    char *model_name;
    int max_model_len;
    char *canned; /* NULL, or (tests only) the text every request answers: GLMTP_HTTP_DEBUG_OUTPUT */
    pthread_mutex_t mu; /* serial */
    unsigned long long serial;
} oai_ctx;

/* POST /v1/chat/completions (chat = 1) or /v1/completions (chat = 0). body: the
 * parsed JSON. fd: the client's socket (a hang-up cancels the request). Fills
 * *r: an error, a whole response (waits for the engine), or a stream. */
void oai_generate(oai_ctx *h, int chat, const cJSON *body, int fd, oai_reply *r /* OUT */);

/* The stream's next bytes (libmicrohttpd's content reader: blocks until there
 * are some). Returns bytes copied, -1 at the end, -2 when the client is gone. */
long oai_stream_read(struct oai_call *c, char *buf, size_t max);
/* The HTTP side is done with the stream (finished or the client went away). */
void oai_stream_free(struct oai_call *c);

/* POST /tokenize and /detokenize (vLLM's forms). */
void oai_tokenize(oai_ctx *h, const cJSON *body, oai_reply *r /* OUT */);
void oai_detokenize(oai_ctx *h, const cJSON *body, oai_reply *r /* OUT */);

/* GET /metrics: the Prometheus text (malloc'ed, *len bytes). */
char *oai_metrics_text(oai_ctx *h, size_t *len /* OUT */);

#endif
