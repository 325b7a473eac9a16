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

#include "glmtp.pb-c.h"

enum srv_kind { SRV_NEW, SRV_CANCEL, SRV_GONE, SRV_FRAME };

/* One queued item. NEW: req (owned) from conn; CANCEL: id from conn; GONE: conn
 * closed; FRAME (outbox): a packed, length-prefixed ServerMessage for conn. */
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
} srv_item;

typedef struct srv_stats {
    int queue_depth, running, kv_used, kv_free, n_ranks;
    double tokens_per_s;
    long steps, preemptions, generated;
    int prefix_cache, kv_cached; /* on/off; unreferenced blocks holding a cached prefix */
    long long prompt_tokens, cached_tokens, evicted;
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
    /* configuration (read-only once threads run) */
    int listen_fd, loopback;
    char *token;           /* auth token, NULL: none needed */
    uint32_t max_frame;
    int max_queue;
    double auth_timeout;   /* seconds a connection may stay unauthenticated (with a token) */
    FILE *step_log;        /* NULL or one JSON line per step */
} server;

/* Queues an item for the other side (takes ownership). */
void srv_push_in(server *s, srv_item *it);
void srv_push_out(server *s, srv_item *it);
/* Packs m into a FRAME item for conn. */
srv_item *srv_frame(int conn, const Glmtp__ServerMessage *m);
void srv_item_free(srv_item *it); /* accepts NULL */

#endif
