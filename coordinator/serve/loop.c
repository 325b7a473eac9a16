/* The engine loop of `glmtp serve` (rank 0's main thread; see server.h): the
 * scheduler of sched.h, fed from the socket threads' queue. Requests arriving
 * between steps join the next one; cancelled and disconnected ones leave it,
 * dropping their block references (blocks shared with others stay theirs;
 * cached ones stay in the prefix cache). Deltas stream after each step; a
 * streamed prompt longer than one step's budget gets Progress messages while
 * it is prefilled (send_progress). */
#include <errno.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "../engine/sched.h"
#include "serve.h"
#include "validate.h"

typedef struct sreq {
    sched_req s; /* first: the scheduler's hooks get &s */
    gen_request g;
    char *id;
    int conn, stream, sent_ids, cancel, conn_gone;
    size_t sent_text;
    int *stop_ids;
    double t_first, t_progress; /* start of its first prefill chunk, last Progress sent (util_now) */
    const srv_sink *sink;       /* NULL: a protobuf request of conn; else its output goes here */
    void *sink_user;
    double t_arrival, t_token;  /* intake, last token (util_now; for the metrics) */
} sreq;

typedef struct srv_loop {
    server *s;
    sched q;
    const req_context *ctx;
    int step_tokens, progress_ms;
    srv_metrics m;
} srv_loop;

/* ---- metrics (srv_metrics, published with the stats) ---- */

static void hist_init(srv_hist *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->n = n < SRV_HIST_MAX ? n : SRV_HIST_MAX;
    memcpy(h->le, le, sizeof(double) * (size_t)h->n);
}

static void hist_add(srv_hist *h, double v) {
    int b = 0;
    while (b < h->n && v > h->le[b]) b++;
    h->bucket[b]++, h->count++, h->sum += v;
}

/* vLLM's buckets for the same histograms. */
static void metrics_init(srv_metrics *m) {
    static const double ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                  1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
    static const double itl[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
    static const double e2e[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                                 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
    memset(m, 0, sizeof *m);
    hist_init(&m->ttft, ttft, (int)(sizeof ttft / sizeof ttft[0]));
    hist_init(&m->itl, itl, (int)(sizeof itl / sizeof itl[0]));
    hist_init(&m->e2e, e2e, (int)(sizeof e2e / sizeof e2e[0]));
}

/* r accepted a token now. */
static void metrics_token(srv_loop *l, sreq *r) {
    double now = util_now();
    if (r->t_token == 0) hist_add(&l->m.ttft, now - r->t_arrival);
    else hist_add(&l->m.itl, now - r->t_token);
    r->t_token = now;
}

static void metrics_final(srv_loop *l, sreq *r, const char *reason) {
    if (r->t_token == 0 && r->g.n_out > 0) metrics_token(l, r); /* its only token ended it */
    hist_add(&l->m.e2e, util_now() - r->t_arrival);
    if (strcmp(reason, "stop") == 0) l->m.finished_stop++;
    else if (strcmp(reason, "length") == 0) l->m.finished_length++;
    else l->m.finished_abort++;
    l->m.prompt_tokens += r->g.n_prompt;
}

static void push_frame(srv_loop *l, int conn, const Glmtp__ServerMessage *m) { srv_push_out(l->s, srv_frame(conn, m)); }

static void send_response(srv_loop *l, int conn, Glmtp__GenerateResponse *r) {
    Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
    m.msg_case = GLMTP__SERVER_MESSAGE__MSG_RESPONSE, m.response = r;
    push_frame(l, conn, &m);
}

static void send_error(srv_loop *l, int conn, const char *id, Glmtp__Error__Code code, const char *msg) {
    Glmtp__Error e = GLMTP__ERROR__INIT;
    e.has_code = 1, e.code = code, e.message = (char *)msg;
    Glmtp__GenerateResponse r = GLMTP__GENERATE_RESPONSE__INIT;
    r.request_id = (char *)(id ? id : "");
    r.body_case = GLMTP__GENERATE_RESPONSE__BODY_ERROR, r.error = &e;
    send_response(l, conn, &r);
}

/* Streams what r has produced since the last delta (text and ids). Until r
 * is finished the text's last (longest stop string - 1) bytes are held back,
 * so that a stop string spanning tokens is never streamed, and the cut is
 * moved to a UTF-8 character boundary. */
static void send_delta(srv_loop *l, sreq *r, int final) {
    size_t upto = r->g.text_len, hold = 0;
    for (int i = 0; !final && i < r->g.n_stop; i++)
        if (strlen(r->g.stop[i]) > hold + 1) hold = strlen(r->g.stop[i]) - 1;
    upto = upto > r->sent_text + hold ? upto - hold : r->sent_text;
    while (!final && upto > r->sent_text && ((unsigned char)r->g.text[upto] & 0xC0) == 0x80) upto--;
    if (r->conn_gone || (upto <= r->sent_text && r->g.n_out <= r->sent_ids)) return;
    if (r->sink) {
        r->sink->on_delta(r->sink_user, &r->g, r->sent_ids, r->g.n_out - r->sent_ids,
                          r->g.text ? r->g.text + r->sent_text : "", upto - r->sent_text);
        r->sent_text = upto, r->sent_ids = r->g.n_out;
        return;
    }
    Glmtp__Delta d = GLMTP__DELTA__INIT;
    char save = 0, *t = r->g.text ? r->g.text + r->sent_text : "";
    if (r->g.text) save = r->g.text[upto], r->g.text[upto] = 0;
    d.text = t;
    d.n_token_ids = (size_t)(r->g.n_out - r->sent_ids), d.token_ids = r->g.out + r->sent_ids;
    Glmtp__GenerateResponse g = GLMTP__GENERATE_RESPONSE__INIT;
    g.request_id = r->id, g.body_case = GLMTP__GENERATE_RESPONSE__BODY_DELTA, g.delta = &d;
    send_response(l, r->conn, &g);
    if (r->g.text) r->g.text[upto] = save;
    r->sent_text = upto, r->sent_ids = r->g.n_out;
}

static void send_final(srv_loop *l, sreq *r, const char *reason) {
    metrics_final(l, r, reason);
    if (r->sink) { /* always told, gone or not: it holds a reference until then */
        if (l->q.tok) gen_flush_text(&r->g);
        if (r->stream) send_delta(l, r, 1);
        r->sink->on_final(r->sink_user, &r->g, reason, r->s.n_cached, NULL);
        return;
    }
    if (r->conn_gone) return;
    if (l->q.tok) gen_flush_text(&r->g);
    if (r->stream) send_delta(l, r, 1);
    Glmtp__Usage u = GLMTP__USAGE__INIT;
    u.has_prompt_tokens = u.has_completion_tokens = u.has_cached_tokens = 1;
    u.prompt_tokens = r->g.n_prompt, u.completion_tokens = r->g.n_out, u.cached_tokens = r->s.n_cached;
    Glmtp__Final f = GLMTP__FINAL__INIT;
    f.finish_reason = (char *)reason, f.usage = &u;
    if (!r->stream) {
        f.text = r->g.text ? r->g.text : "";
        f.n_token_ids = (size_t)r->g.n_out, f.token_ids = r->g.out;
    }
    Glmtp__GenerateResponse g = GLMTP__GENERATE_RESPONSE__INIT;
    g.request_id = r->id, g.body_case = GLMTP__GENERATE_RESPONSE__BODY_FINAL, g.final = &f;
    send_response(l, r->conn, &g);
}

static void sreq_free(sreq *r) {
    free(r->g.kv.table);
    gen_request_free(&r->g);
    free(r->id);
    free(r->stop_ids);
    free(r);
}

/* ---- intake: a GenerateRequest becomes a request (validate.h: through the JSONL parser) ---- */

/* The scheduler's requests, running then waiting, are sreqs (sched_req first). */
static sreq *find_id(srv_loop *l, const char *id) {
    for (int i = 0; i < l->q.n_run; i++)
        if (strcmp(((sreq *)l->q.run[i])->id, id) == 0) return (sreq *)l->q.run[i];
    for (int i = 0; i < l->q.n_wait; i++)
        if (strcmp(((sreq *)l->q.wait[i])->id, id) == 0) return (sreq *)l->q.wait[i];
    return NULL;
}

/* Queues the request the network thread validated (it: takes it->pre);
 * answers the client itself on error. */
static void intake(srv_loop *l, int conn, srv_item *it) {
    const Glmtp__GenerateRequest *pr = it->req;
    const char *id = pr->request_id ? pr->request_id : "";
    char msg[1600];
    if (!id[0]) {
        send_error(l, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, "field 'request_id': missing or empty");
        return;
    }
    if (find_id(l, id)) {
        snprintf(msg, sizeof msg, "request '%s': field 'request_id': already in use", id);
        send_error(l, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        return;
    }
    if (it->pre_err) {
        snprintf(msg, sizeof msg, "request '%s': %s", id, it->pre_err);
        send_error(l, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        return;
    }
    gen_request g = it->pre;
    memset(&it->pre, 0, sizeof it->pre);
    if (!gen_fits(l->q.e, g.n_prompt, g.max_new)) {
        snprintf(msg, sizeof msg, "request '%s': prompt of %d tokens plus max_new_tokens %d needs more KV blocks "
                 "than the server has (%d of %d tokens; --kv-tokens)", id, g.n_prompt, g.max_new,
                 l->q.e->blocks.n_blocks, l->q.e->blocks.block_size);
        send_error(l, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        gen_request_free(&g);
        return;
    }
    sreq *r = calloc(1, sizeof *r);
    if (!r || !(r->id = strdup(id))) abort();
    r->g = g;
    r->g.rng = r->g.seed;
    r->conn = conn, r->stream = pr->has_stream && pr->stream;
    r->t_arrival = util_now();
    if (pr->n_stop_ids) {
        r->stop_ids = malloc(sizeof(int) * pr->n_stop_ids);
        if (!r->stop_ids) abort();
        for (size_t i = 0; i < pr->n_stop_ids; i++) r->stop_ids[i] = pr->stop_ids[i];
    }
    r->s = (sched_req){.g = &r->g, .name = r->id, .stop_ids = r->stop_ids, .n_stop_ids = (int)pr->n_stop_ids};
    sched_add(&l->q, &r->s);
}

/* Queues a ready request of another front (takes gen); a request that can
 * never fit the KV pool ends at once with reason "error". */
static void intake_gen(srv_loop *l, srv_gen *gen) {
    if (!gen_fits(l->q.e, gen->g.n_prompt, gen->g.max_new)) {
        char msg[400];
        snprintf(msg, sizeof msg, "prompt of %d tokens plus max_tokens %d needs more KV blocks than the server has "
                 "(%d of %d tokens; --kv-tokens)", gen->g.n_prompt, gen->g.max_new, l->q.e->blocks.n_blocks,
                 l->q.e->blocks.block_size);
        gen->sink->on_final(gen->user, &gen->g, "error", 0, msg);
        srv_gen_free(gen);
        return;
    }
    sreq *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->g = gen->g, r->id = gen->id, r->stop_ids = gen->stop_ids;
    r->g.rng = r->g.seed;
    r->conn = -1, r->stream = gen->stream, r->sink = gen->sink, r->sink_user = gen->user;
    r->t_arrival = util_now();
    r->s = (sched_req){.g = &r->g, .name = r->id, .stop_ids = r->stop_ids, .n_stop_ids = gen->n_stop_ids};
    free(gen);
    sched_add(&l->q, &r->s);
}

static void on_items(srv_loop *l, srv_item *items) {
    for (srv_item *it = items, *nx; it; it = nx) {
        nx = it->next;
        if (it->kind == SRV_NEW) {
            intake(l, it->conn, it);
        } else if (it->kind == SRV_GEN) {
            intake_gen(l, it->gen);
            it->gen = NULL;
        } else if (it->kind == SRV_CANCEL) {
            sreq *r = find_id(l, it->id);
            if (r) r->cancel = 1;
            Glmtp__CancelReply c = GLMTP__CANCEL_REPLY__INIT;
            c.request_id = it->id, c.has_found = 1, c.found = r != NULL;
            Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
            m.msg_case = GLMTP__SERVER_MESSAGE__MSG_CANCEL, m.cancel = &c;
            push_frame(l, it->conn, &m);
        } else if (it->kind == SRV_GONE) {
            sched_req **lists[2] = {l->q.run, l->q.wait};
            int ns[2] = {l->q.n_run, l->q.n_wait};
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < ns[w]; i++) {
                    sreq *r = (sreq *)lists[w][i];
                    if (r->conn == it->conn) r->cancel = 1, r->conn_gone = 1;
                }
        }
        srv_item_free(it);
    }
}

/* Ends every request marked cancelled (all of them with reason when all != 0). */
static void reap(srv_loop *l, int all, const char *reason) {
    for (int waiting = 0; waiting < 2; waiting++) { /* running, then waiting */
        for (int i = (waiting ? l->q.n_wait : l->q.n_run) - 1; i >= 0; i--) {
            sreq *r = (sreq *)(waiting ? l->q.wait : l->q.run)[i];
            if (r->sink && !r->cancel && r->sink->is_gone(r->sink_user)) r->cancel = 1;
            if (!all && !r->cancel) continue;
            sched_remove(&l->q, &r->s);
            send_final(l, r, all ? reason : "cancelled");
            sreq_free(r);
        }
    }
}

static void publish(srv_loop *l) {
    server *s = l->s;
    const sched *q = &l->q;
    pthread_mutex_lock(&s->mu);
    s->stats.queue_depth = q->n_wait, s->stats.running = q->n_run;
    pcache_stats ps;
    pcache_get_stats(q->e->pc, &ps);
    s->stats.kv_free = ps.available, s->stats.kv_used = ps.used, s->stats.kv_cached = ps.cached_free;
    s->stats.prefix_cache = pcache_enabled(q->e->pc), s->stats.evicted = ps.evictions;
    s->stats.prompt_tokens = ps.prompt_tokens, s->stats.cached_tokens = ps.cached_tokens;
    s->stats.tokens_per_s = q->tps, s->stats.steps = q->steps, s->stats.preemptions = q->preemptions;
    s->stats.generated = q->generated, s->stats.n_ranks = q->e->comm->size;
    s->metrics = l->m;
    pthread_mutex_unlock(&s->mu);
}

/* The stall watch (srv_stall_age): a step or keepalive begins (busy 1) or ends. */
static void mark_busy(server *s, int busy) {
    double now = util_now();
    pthread_mutex_lock(&s->mu);
    if (busy) s->stats.t_busy = now;
    else s->stats.t_busy = 0, s->stats.t_step_done = now;
    pthread_mutex_unlock(&s->mu);
}

/* ---- the scheduler's hooks ---- */

/* One JSON line: step number, its wall time, tokens, and per request
 * [id, tokens in this step, tokens in its KV after it, "p"refill or "d"ecode,
 * tokens it took from the prefix cache at admission]. */
static void log_step(void *user, const sched_plan *p, double dt) {
    srv_loop *l = user;
    FILE *f = l->s->step_log;
    if (!f) return;
    fprintf(f, "{\"step\":%ld,\"ms\":%.3f,\"tokens\":%d,\"seqs\":[", l->q.steps, dt * 1e3, p->tokens);
    for (int i = 0; i < p->n; i++)
        fprintf(f, "%s[\"%s\",%d,%d,\"%s\",%d]", i ? "," : "", p->req[i]->name, p->chunk[i], p->req[i]->n_fed,
                p->req[i]->n_fed - p->chunk[i] >= p->req[i]->g->n_prompt ? "d" : "p", p->req[i]->n_cached);
    fprintf(f, "]}\n");
    fflush(f);
}

/* Prefill progress of r after a step that fed it chunk tokens of its prompt
 * (see Progress in glmtp.proto): only for streamed requests whose prompt
 * needs more than one step, at most every progress_ms, and always once the
 * prompt is in. step_start: when the step began (the first chunk's start). */
static void send_progress(srv_loop *l, sreq *r, int chunk, double step_start) {
    int total = r->g.n_prompt, done = r->s.n_fed < total ? r->s.n_fed : total;
    if (!r->stream || r->sink || r->conn_gone || r->g.n_out > 0 || r->s.n_fed - chunk >= total) return;
    if (r->t_first == 0) r->t_first = step_start;
    if (total - r->s.n_cached <= l->step_tokens) return; /* one step: nothing to wait for */
    double now = util_now();
    if (done < total && (now - r->t_progress) * 1e3 < l->progress_ms) return;
    r->t_progress = now;
    Glmtp__Progress pg = GLMTP__PROGRESS__INIT;
    double el = now - r->t_first;
    pg.has_tokens_done = pg.has_tokens_total = pg.has_tokens_per_s = pg.has_cached_tokens = pg.has_elapsed_s = 1;
    pg.tokens_done = done, pg.tokens_total = total, pg.cached_tokens = r->s.n_cached, pg.elapsed_s = el;
    pg.tokens_per_s = el > 0 ? (done - r->s.n_cached) / el : 0.0;
    Glmtp__GenerateResponse g = GLMTP__GENERATE_RESPONSE__INIT;
    g.request_id = r->id, g.body_case = GLMTP__GENERATE_RESPONSE__BODY_PROGRESS, g.progress = &pg;
    send_response(l, r->conn, &g);
}

static void on_step(void *user, const sched_plan *p, double dt) {
    srv_loop *l = user;
    log_step(user, p, dt);
    double start = util_now() - dt;
    for (int i = 0; i < p->n; i++) send_progress(l, (sreq *)p->req[i], p->chunk[i], start);
}

static void on_token(void *user, sched_req *s) {
    sreq *r = (sreq *)s;
    metrics_token(user, r);
    if (r->stream) send_delta(user, r, 0);
}

static void on_finish(void *user, sched_req *s) {
    sreq *r = (sreq *)s;
    send_final(user, r, r->g.finish);
    sreq_free(r);
}

void srv_sched_run(server *s, engine *e, const tokenizer *tok, const req_context *ctx, const srv_sched_options *o) {
    srv_loop l = {.s = s, .ctx = ctx, .step_tokens = o->step_tokens, .progress_ms = o->progress_ms};
    gen_options go = {0};
    sched_hooks h = {on_token, on_finish, on_step, &l};
    sched_init(&l.q, e, tok, &go, &h);
    metrics_init(&l.m);
    publish(&l);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (!s->in_head && !s->stopping && l.q.n_run + l.q.n_wait == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += o->idle_keepalive_s;
            int w = pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            if (w == ETIMEDOUT && !s->in_head && !s->stopping) {
                pthread_mutex_unlock(&s->mu);
                mark_busy(s, 1); /* a stopped follower hangs the keepalive too */
                engine_keepalive(e);
                mark_busy(s, 0);
                continue;
            }
        }
        srv_item *items = s->in_head;
        s->in_head = s->in_tail = NULL;
        s->n_in = 0;
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        on_items(&l, items);
        if (stopping) {
            reap(&l, 1, "shutdown");
            publish(&l);
            break;
        }
        reap(&l, 0, NULL);
        mark_busy(s, 1);
        sched_step(&l.q, o->step_tokens);
        mark_busy(s, 0);
        publish(&l);
    }
    pthread_mutex_lock(&s->mu);
    s->sched_done = 1;
    pthread_mutex_unlock(&s->mu);
    if (write(s->wake[1], "x", 1) < 0) { /* the pipe is non-blocking: full means already woken */
    }
    sched_free(&l.q);
}
