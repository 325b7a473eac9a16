/* server.h: `glmtp serve`, shared between its parts:
 *   server.c        options, engine setup, signals, the threads' lifetimes;
 *   server_net.c    the network thread (rank 0): poll() over the listening
 *                   socket, the clients and a wake pipe; frames, auth, envelope
 *                   checks, the bounded queue, Health/Stats replies;
 *   server_sched.c  the engine loop (rank 0's main thread): the scheduler of
 *                   sched.h (continuous batching, chunked prefill, preemption
 *                   by recompute) fed from the inbox; cancel/disconnect,
 *                   streaming.
 * The two threads meet only here: an inbox (net -> sched) and an outbox
 * (sched -> net) of items under one mutex; the scheduler sleeps on a condvar
 * when idle, the network thread is woken through a pipe. */
#ifndef GLMTP_SERVER_H
#define GLMTP_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "glmtp.pb-c.h"
#include "requests.h"
#include "tokenizer.h"

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
} srv_stats;

typedef struct server {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled when the inbox gets an item or stopping is set */
    srv_item *in_head, *in_tail;
    int n_in;              /* NEW items in the inbox */
    srv_item *out_head, *out_tail;
    int wake[2];           /* pipe: sched -> net */
    int stopping;          /* SIGTERM seen: net stops accepting, sched fails what is left */
    int sched_done;        /* sched has queued its last frames */
    srv_stats stats;       /* published by sched after each step */
    /* configuration (read-only once threads run) */
    int listen_fd, loopback;
    char *token;           /* auth token, NULL: none needed */
    uint32_t max_frame;
    int max_queue;
    FILE *step_log;        /* NULL or one JSON line per step */
} server;

/* Signal pipe: the SIGTERM/SIGINT handler writes one byte here. */
extern int srv_sig_pipe[2];

/* Queues an item for the other side (takes ownership). */
void srv_push_in(server *s, srv_item *it);
void srv_push_out(server *s, srv_item *it);
/* Packs m into a FRAME item for conn. */
srv_item *srv_frame(int conn, const Glmtp__ServerMessage *m);
void srv_item_free(srv_item *it); /* accepts NULL */

/* The network thread's body (arg: server *). */
void *srv_net_main(void *arg);

typedef struct srv_sched_options {
    int step_tokens;
    int idle_keepalive_s;
} srv_sched_options;
/* Runs the engine loop until stopping and every request is answered. */
void srv_sched_run(server *s, engine *e, const tokenizer *tok, const req_context *ctx,
                   const srv_sched_options *o);

#endif
