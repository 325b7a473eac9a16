/* serve.h: `glmtp serve`, the protobuf socket server, in parts:
 *   serve.c         options, engine setup, signals, the threads' lifetimes;
 *   queue.c         the inbox and outbox between the two threads (queue.h);
 *   net.c           the network thread (rank 0): poll() over the listening
 *                   socket, the clients and a wake pipe; frames, auth, envelope
 *                   checks, the bounded queue, Health/Stats replies;
 *   loop.c          the engine loop (rank 0's main thread): the scheduler of
 *                   sched.h (continuous batching, chunked prefill, preemption
 *                   by recompute) fed from the inbox; cancel/disconnect,
 *                   streaming;
 *   validate.c      a GenerateRequest checked and made an engine request
 *                   (validate.h), without sockets or threads.
 * The two threads meet only in queue.h. */
#ifndef GLMTP_SERVE_H
#define GLMTP_SERVE_H

#include "../engine/engine.h"
#include "../fronts/requests.h"
#include "../text/tokenizer.h"
#include "queue.h"

/* The network thread's body (arg: server *). */
void *srv_net_main(void *arg);

typedef struct srv_sched_options {
    int step_tokens;
    int idle_keepalive_s;
    int progress_ms; /* Progress of a streamed long prompt at most this often (0: every chunk) */
} srv_sched_options;
/* Runs the engine loop until stopping and every request is answered. */
void srv_sched_run(server *s, engine *e, const tokenizer *tok, const req_context *ctx,
                   const srv_sched_options *o);

#endif
