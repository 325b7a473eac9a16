/* The HTTP daemon of `glmtp serve --http` (see http.h): routing, the API key,
 * the body limit, and the small endpoints. libmicrohttpd runs one thread per
 * connection, so a handler may wait for the engine by blocking (openai.c). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../../worker/util.h"
#include "http.h"
#include "openai.h"

struct http_server {
    struct MHD_Daemon *d;
    oai_ctx oc;
    char *api_key;
    size_t max_body;
};

/* One request's state across the handler's calls: the body as it arrives. */
typedef struct http_conn {
    char *body;
    size_t len, cap;
    int too_big;
} http_conn;

/* Splits HOST:PORT ([v6]:PORT) into a socket address. Returns 0 or -1. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *sl) {
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host) return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM, hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, colon + 1, &hints, &res) || !res) return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sl = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int http_addr_is_loopback(const char *addr) {
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_addr(addr, &ss, &sl)) return -1;
    if (ss.ss_family == AF_INET) return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) return IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
    return 0;
}

/* Queues r on the connection (frees r's body). */
static enum MHD_Result send_reply(struct MHD_Connection *c, oai_reply *r) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(r->body);
        return MHD_NO;
    }
    if (r->ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
    if (r->status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    long n = oai_stream_read(cls, buf, max);
    return n >= 0 ? (ssize_t)n : n == -1 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_done(void *cls) { oai_stream_free(cls); }

static enum MHD_Result send_stream(struct MHD_Connection *c, oai_reply *r) {
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r->stream, stream_done);
    if (!resp) {
        oai_stream_free(r->stream);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, cJSON *o) {
    oai_reply r = {status, cJSON_PrintUnformatted(o), 0, "application/json", NULL};
    cJSON_Delete(o);
    if (!r.body) abort();
    r.len = strlen(r.body);
    return send_reply(c, &r);
}

static enum MHD_Result models(http_server *h, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "id", h->oc.model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "glmtp");
    cJSON_AddStringToObject(m, "root", h->oc.model_name);
    cJSON_AddNumberToObject(m, "max_model_len", h->oc.max_model_len);
    cJSON_AddItemToArray(a, m);
    return send_json(c, 200, o);
}

/* The routes: which need the key, which take a JSON body. */
enum route { R_NONE, R_HEALTH, R_MODELS, R_METRICS, R_CHAT, R_TEXT, R_TOKENIZE, R_DETOKENIZE };

static enum route route_of(const char *url, const char *method, int *method_ok) {
    static const struct { const char *url, *method; enum route r; } t[] = {
        {"/health", "GET", R_HEALTH},        {"/v1/models", "GET", R_MODELS},
        {"/metrics", "GET", R_METRICS},      {"/v1/chat/completions", "POST", R_CHAT},
        {"/v1/completions", "POST", R_TEXT}, {"/tokenize", "POST", R_TOKENIZE},
        {"/detokenize", "POST", R_DETOKENIZE},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(url, t[i].url) == 0) {
            *method_ok = strcmp(method, t[i].method) == 0 || (t[i].method[0] == 'G' && !strcmp(method, "HEAD"));
            return t[i].r;
        }
    return R_NONE;
}

/* The key guards what vLLM's --api-key guards: /v1/ and the tokenizer; /health
 * and /metrics stay open (probes, scrapers). Compared in constant time. */
static int authorized(http_server *h, struct MHD_Connection *c, enum route rt) {
    if (!h->api_key || rt == R_HEALTH || rt == R_METRICS) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncmp(a, "Bearer ", 7) != 0) return 0;
    return util_secret_equal(a + 7, h->api_key);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    http_server *h = cls;
    (void)version;
    oai_reply r;
    int method_ok = 0;
    enum route rt = route_of(url, method, &method_ok);
    http_conn *hc = *con_cls;
    if (!hc) { /* headers only: refuse early what needs no body */
        if (!(hc = calloc(1, sizeof *hc))) return MHD_NO;
        *con_cls = hc;
        if (rt == R_NONE) {
            oai_error(&r, 404, "invalid_request_error", NULL, "not_found", "no route %s %s (routes: POST "
                      "/v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics, POST "
                      "/tokenize, POST /detokenize)", method, url);
            return send_reply(c, &r);
        }
        if (!method_ok) {
            oai_error(&r, 405, "invalid_request_error", NULL, "method_not_allowed", "%s is not allowed on %s", method,
                      url);
            return send_reply(c, &r);
        }
        if (!authorized(h, c, rt)) {
            oai_error(&r, 401, "invalid_request_error", NULL, "invalid_api_key",
                      "missing or incorrect API key (send 'Authorization: Bearer KEY')");
            return send_reply(c, &r);
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > h->max_body) {
            oai_error(&r, 413, "invalid_request_error", NULL, "request_too_large",
                      "request body of %s bytes is over the limit of %zu (--max-request-bytes)", cl, h->max_body);
            return send_reply(c, &r);
        }
        return MHD_YES;
    }
    if (*upload_size) { /* a piece of the body */
        if (hc->len + *upload_size > h->max_body) hc->too_big = 1;
        if (!hc->too_big) {
            if (hc->len + *upload_size + 1 > hc->cap) {
                size_t cap = (hc->len + *upload_size + 1) * 2;
                char *p = realloc(hc->body, cap);
                if (!p) return MHD_NO;
                hc->body = p, hc->cap = cap;
            }
            memcpy(hc->body + hc->len, upload, *upload_size);
            hc->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (hc->too_big) {
        oai_error(&r, 413, "invalid_request_error", NULL, "request_too_large",
                  "request body over the limit of %zu bytes (--max-request-bytes)", h->max_body);
        return send_reply(c, &r);
    }
    switch (rt) {
    case R_HEALTH: {
        int ok; /* 503 while draining or stalled (queue.h srv_health), the state as the body */
        pthread_mutex_lock(&h->oc.s->mu);
        const char *state = srv_health(h->oc.s, util_now(), &ok);
        pthread_mutex_unlock(&h->oc.s->mu);
        r = (oai_reply){ok ? 200 : 503, NULL, 0, "text/plain", NULL};
        if (!(r.body = strdup(ok ? "" : state))) abort();
        r.len = strlen(r.body);
        return send_reply(c, &r);
    }
    case R_MODELS:
        return models(h, c);
    case R_METRICS:
        r = (oai_reply){200, NULL, 0, "text/plain; version=0.0.4; charset=utf-8", NULL};
        r.body = oai_metrics_text(&h->oc, &r.len);
        return send_reply(c, &r);
    default:
        break;
    }
    cJSON *b = hc->body ? cJSON_ParseWithLength(hc->body, hc->len) : NULL;
    if (!b || !cJSON_IsObject(b)) {
        const char *at = cJSON_GetErrorPtr();
        long off = b || !at || !hc->body || at < hc->body || at > hc->body + hc->len ? -1 : (long)(at - hc->body);
        cJSON_Delete(b);
        if (!hc->body) oai_error(&r, 400, "invalid_request_error", NULL, NULL, "empty body: expected a JSON object");
        else if (off >= 0)
            oai_error(&r, 400, "invalid_request_error", NULL, NULL, "body is not valid JSON (near byte %ld)", off);
        else oai_error(&r, 400, "invalid_request_error", NULL, NULL, "body must be a JSON object");
        return send_reply(c, &r);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(b, "model");
    if (model && !cJSON_IsNull(model) && (!cJSON_IsString(model) || strcmp(model->valuestring, h->oc.model_name))) {
        oai_error(&r, 404, "invalid_request_error", "model", "model_not_found", "The model '%s' does not exist "
                  "(served: '%s')", cJSON_IsString(model) ? model->valuestring : "(not a string)", h->oc.model_name);
        cJSON_Delete(b);
        return send_reply(c, &r);
    }
    if (rt == R_TOKENIZE) oai_tokenize(&h->oc, b, &r);
    else if (rt == R_DETOKENIZE) oai_detokenize(&h->oc, b, &r);
    else {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        oai_generate(&h->oc, rt == R_CHAT, b, ci ? ci->connect_fd : -1, &r);
    }
    cJSON_Delete(b);
    return r.stream ? send_stream(c, &r) : send_reply(c, &r);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    http_conn *hc = *con_cls;
    if (hc) free(hc->body), free(hc);
    *con_cls = NULL;
}

http_server *http_start(server *s, const req_context *ctx, const http_options *o, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t sl;
    int lo = http_addr_is_loopback(o->addr);
    if (lo < 0 || parse_addr(o->addr, &ss, &sl)) {
        snprintf(err, errlen, "serve: --http %s: expected HOST:PORT (e.g. 127.0.0.1:8000)", o->addr);
        return NULL;
    }
    if (!lo && !o->api_key) {
        snprintf(err, errlen, "serve: --http %s is not a loopback address: give --api-key-file FILE", o->addr);
        return NULL;
    }
    http_server *h = calloc(1, sizeof *h);
    if (!h || pthread_mutex_init(&h->oc.mu, NULL)) abort();
    h->oc.s = s, h->oc.ctx = ctx, h->oc.max_model_len = o->max_model_len, h->max_body = o->max_request_bytes;
    if (!(h->oc.model_name = strdup(o->model_name)) || (o->api_key && !(h->api_key = strdup(o->api_key)))) abort();
    /* Tests only: the server's mapping of model output (tool calls) needs text
     * that a random-weight model does not write; the engine still runs. */
    const char *canned = getenv("GLMTP_HTTP_DEBUG_OUTPUT");
    if (canned && canned[0]) {
        if (!(h->oc.canned = strdup(canned))) abort();
        fprintf(stderr, "glmtp: serve: GLMTP_HTTP_DEBUG_OUTPUT is set: every HTTP request answers its text (tests "
                "only)\n");
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                     MHD_USE_POLL;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    uint16_t port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    h->d = MHD_start_daemon(flags, port, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)600, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "serve: --http %s: could not listen (address in use, or not this machine's)", o->addr);
        http_stop(h);
        return NULL;
    }
    return h;
}

void http_stop(http_server *h) {
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->oc.mu);
    free(h->oc.model_name);
    free(h->oc.canned);
    free(h->api_key);
    free(h);
}
