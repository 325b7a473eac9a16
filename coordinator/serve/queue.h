/* queue.h: what the two threads of `glmtp serve` share (see serve.h): an
 * inbox (net -> sched) and an outbox (sched -> net) of items under one mutex,
 * the scheduler's published figures, and the read-only configuration. The
 * scheduler sleeps on a condvar when idle; the network thread is woken through
 * a pipe. Items are owned by whoever holds them: pushing hands them over. */
#ifndef GLMTP_SERVE_QUEUE_H
#define GLMTP_SERVE_QUEUE_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "../engine/gen_request.h"
#include "glmtp.pb-c.h"

enum srv_kind { SRV_NEW, SRV_CANCEL, SRV_GONE, SRV_FRAME, SRV_GEN };

/* Where the output of a request from another front (the HTTP server) goes.
 * Every callback runs on the engine thread. */
typedef struct srv_sink {
    /* Streamed requests: the ids g->out[first, first + n) and text (len
     * bytes, maybe 0) produced since the last call (stop-string tails held
     * back as for Delta); g's logprobs arrays cover those ids when asked. */
    void (*on_delta)(void *user, const gen_request *g, int first, int n, const char *text, size_t len);
    /* Called exactly once per request: g holds the prompt and the whole output;
     * reason "stop", "length", "cancelled", "shutdown", or "error" with error
     * set (refused at intake). n_cached: prompt tokens from the prefix cache.
     * After it the engine keeps no pointer to user. */
    void (*on_final)(void *user, const gen_request *g, const char *reason, int n_cached, const char *error);
    /* Non-zero once the client has gone: the request is cancelled (checked
     * between steps). */
    int (*is_gone)(void *user);
} srv_sink;

/* A ready request (SRV_GEN): validated and tokenized by its front. */
typedef struct srv_gen {
    gen_request g;      /* owned; the engine takes it over */
    char *id;           /* unique name (step log, cancel), owned */
    int *stop_ids;      /* extra stop token ids, owned, may be NULL */
    int n_stop_ids;
    int stream;         /* 1: on_delta after each token */
    const srv_sink *sink;
    void *user;
} srv_gen;

/* One queued item. NEW: req (owned) from conn, already validated by the
 * network thread (pre, or pre_err when invalid), so that decoding a request's
 * image never holds up an engine step; GEN: gen (owned) from another front;
 * CANCEL: id from conn; GONE: conn closed; FRAME (outbox): a packed,
 * length-prefixed ServerMessage for conn. */
typedef struct srv_item {
    struct srv_item *next;
    enum srv_kind kind;
    int conn;      /* connection serial number */
    Glmtp__GenerateRequest *req;
    Glmtp__ClientMessage *env; /* what req points into (owned, freed with the item) */
    char *id;
    uint8_t *buf;
    size_t len;
    int close_after; /* FRAME: close the connection once written */
    srv_gen *gen;
    gen_request pre;   /* NEW: srv_validate_request's request (owned until the engine takes it) */
    char *pre_err;     /* NEW: its error instead ("field 'x': ..."), owned; NULL when valid */
} srv_item;

/* A latency histogram (Prometheus buckets: counts are per bucket here,
 * cumulated when printed; the last bucket is +Inf). */
#define SRV_HIST_MAX 24
typedef struct srv_hist {
    int n;                      /* finite bounds */
    double le[SRV_HIST_MAX];
    long long bucket[SRV_HIST_MAX + 1];
    long long count;
    double sum;
} srv_hist;

/* Counters and histograms for /metrics, kept by the engine loop over every
 * request of every front. */
typedef struct srv_metrics {
    long long finished_stop, finished_length, finished_abort; /* abort: cancelled, shutdown, error */
    long long prompt_tokens;     /* prompt tokens of finished requests */
    srv_hist ttft, itl, e2e;     /* seconds: arrival to first token, between tokens, arrival to end */
} srv_metrics;

typedef struct srv_stats {
    int queue_depth, running, kv_used, kv_free, n_ranks;
    double tokens_per_s;
    long steps, preemptions, generated;
    int prefix_cache, kv_cached; /* on/off; unreferenced blocks holding a cached prefix */
    long long prompt_tokens, cached_tokens, evicted;
    /* Stall watch (util_now() seconds, set by the engine loop under mu): when
     * the step or idle keepalive under way began (0: none, the loop is between
     * steps or idle), and when the last one finished. */
    double t_busy, t_step_done;
} srv_stats;

typedef struct server {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled when the inbox gets an item or stopping is set */
    srv_item *in_head, *in_tail;
    int n_in;              /* NEW items in the inbox */
    srv_item *out_head, *out_tail;
    int wake[2];           /* pipe: sched -> net */
    int sig[2];            /* pipe: the SIGTERM/SIGINT handler -> net */
    int stopping;          /* SIGTERM seen: net stops accepting, sched fails what is left */
    int sched_done;        /* sched has queued its last frames */
    srv_stats stats;       /* published by sched after each step */
    srv_metrics metrics;   /* the same */
    /* configuration (read-only once threads run) */
    int listen_fd, loopback;
    char *token;           /* auth token, NULL: none needed */
    uint32_t max_frame;
    int max_queue;
    double auth_timeout;   /* seconds a connection may stay unauthenticated (with a token) */
    double stall_s;        /* Health says "stalled" after a step has run this long (--stall-seconds) */
    FILE *step_log;        /* NULL or one JSON line per step */
    const struct req_context *ctx; /* what requests are validated against (the network thread reads it) */
} server;

/* Seconds the engine has been stalled at time now (util_now()): work pending
 * (a step or keepalive under way, which waits on every rank) and no step
 * finished for that long; 0 when it is not in a step. Call under s->mu. */
double srv_stall_age(const server *s, double now);
/* The health state under s->mu: "draining" (SIGTERM seen), "stalled"
 * (srv_stall_age >= stall_s) or "serving"; *ok is 1 only for serving. */
const char *srv_health(const server *s, double now, int *ok);

/* Queues an item for the other side (takes ownership). */
void srv_push_in(server *s, srv_item *it);
/* Queues n items at once (takes ownership): the engine loop takes them in the
 * same pass, so the n choices of one request start in the same step and a
 * seeded request meets the same batches every time. */
void srv_push_in_all(server *s, srv_item **items, int n);
void srv_push_out(server *s, srv_item *it);
/* Packs m into a FRAME item for conn. */
srv_item *srv_frame(int conn, const Glmtp__ServerMessage *m);
void srv_item_free(srv_item *it); /* accepts NULL */
/* Frees a ready request the engine never took (its sink is not called); accepts NULL. */
void srv_gen_free(srv_gen *g);

#endif
