/* The engine loop of `glmtp serve` (rank 0's main thread; see server.h).
 *
 * Continuous batching: each step carries one decode token for every running
 * request whose prompt is in the KV cache, then prompt chunks (running requests
 * first, then waiting ones in arrival order) up to --step-tokens. Block tables
 * grow per step, only as far as the step needs. When the pool runs dry the
 * newest running request not yet in this step is preempted: its blocks are
 * freed and it waits again with prompt + generated tokens as what it has to
 * feed (recompute); its sampled tokens and RNG state stay, so outputs do not
 * change. Requests arriving between steps join the next one; cancelled and
 * disconnected ones leave it, and their blocks go back to the pool. */
#include <errno.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "../worker/util.h"
#include "server.h"

typedef struct sreq {
    gen_request g; /* first: the stream callback gets &g */
    char *id;
    int conn, stream, arrival, order, n_fed, running, sent_ids, cancel, conn_gone;
    size_t sent_text;
    int *stop_ids, n_stop_ids;
} sreq;

typedef struct sched {
    server *s;
    engine *e;
    const tokenizer *tok;
    const req_context *ctx;
    sreq **run, **wait;
    int n_run, n_wait, cap, arrivals, orders;
    long steps, preemptions, generated;
    double tps;
} sched;

static void push_frame(sched *q, int conn, const Glmtp__ServerMessage *m) { srv_push_out(q->s, srv_frame(conn, m)); }

static void send_response(sched *q, int conn, Glmtp__GenerateResponse *r) {
    Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
    m.msg_case = GLMTP__SERVER_MESSAGE__MSG_RESPONSE, m.response = r;
    push_frame(q, conn, &m);
}

static void send_error(sched *q, int conn, const char *id, Glmtp__Error__Code code, const char *msg) {
    Glmtp__Error e = GLMTP__ERROR__INIT;
    e.has_code = 1, e.code = code, e.message = (char *)msg;
    Glmtp__GenerateResponse r = GLMTP__GENERATE_RESPONSE__INIT;
    r.request_id = (char *)(id ? id : "");
    r.body_case = GLMTP__GENERATE_RESPONSE__BODY_ERROR, r.error = &e;
    send_response(q, conn, &r);
}

/* Streams what r has produced since the last delta (text and ids). Until r
 * is finished the text's last (longest stop string - 1) bytes are held back,
 * so that a stop string spanning tokens is never streamed, and the cut is
 * moved to a UTF-8 character boundary. */
static void send_delta(sched *q, sreq *r, int final) {
    size_t upto = r->g.text_len, hold = 0;
    for (int i = 0; !final && i < r->g.n_stop; i++)
        if (strlen(r->g.stop[i]) > hold + 1) hold = strlen(r->g.stop[i]) - 1;
    upto = upto > r->sent_text + hold ? upto - hold : r->sent_text;
    while (!final && upto > r->sent_text && ((unsigned char)r->g.text[upto] & 0xC0) == 0x80) upto--;
    if (r->conn_gone || (upto <= r->sent_text && r->g.n_out <= r->sent_ids)) return;
    Glmtp__Delta d = GLMTP__DELTA__INIT;
    char save = 0, *t = r->g.text ? r->g.text + r->sent_text : "";
    if (r->g.text) save = r->g.text[upto], r->g.text[upto] = 0;
    d.text = t;
    d.n_token_ids = (size_t)(r->g.n_out - r->sent_ids), d.token_ids = r->g.out + r->sent_ids;
    Glmtp__GenerateResponse g = GLMTP__GENERATE_RESPONSE__INIT;
    g.request_id = r->id, g.body_case = GLMTP__GENERATE_RESPONSE__BODY_DELTA, g.delta = &d;
    send_response(q, r->conn, &g);
    if (r->g.text) r->g.text[upto] = save;
    r->sent_text = upto, r->sent_ids = r->g.n_out;
}

static void send_final(sched *q, sreq *r, const char *reason) {
    if (r->conn_gone) return;
    if (q->tok) { /* leftovers of an unfinished character */
        char buf[32];
        size_t k = tok_decode_flush(&r->g.dec, buf, sizeof buf);
        for (size_t i = 0; i < k; i++) { /* text_append is gen.c's; grow here */
            char *nt = realloc(r->g.text, r->g.text_len + 2);
            if (!nt) abort();
            r->g.text = nt;
            r->g.text[r->g.text_len++] = buf[i];
            r->g.text[r->g.text_len] = 0;
        }
    }
    if (r->stream) send_delta(q, r, 1);
    Glmtp__Usage u = GLMTP__USAGE__INIT;
    u.has_prompt_tokens = u.has_completion_tokens = 1;
    u.prompt_tokens = r->g.n_prompt, u.completion_tokens = r->g.n_out;
    Glmtp__Final f = GLMTP__FINAL__INIT;
    f.finish_reason = (char *)reason, f.usage = &u;
    if (!r->stream) {
        f.text = r->g.text ? r->g.text : "";
        f.n_token_ids = (size_t)r->g.n_out, f.token_ids = r->g.out;
    }
    Glmtp__GenerateResponse g = GLMTP__GENERATE_RESPONSE__INIT;
    g.request_id = r->id, g.body_case = GLMTP__GENERATE_RESPONSE__BODY_FINAL, g.final = &f;
    send_response(q, r->conn, &g);
}

static void sreq_free(sched *q, sreq *r) {
    kv_seq_release(&q->e->blocks, &r->g.kv);
    free(r->g.kv.table);
    gen_request_free(&r->g);
    free(r->id);
    free(r->stop_ids);
    free(r);
}

/* ---- intake: a GenerateRequest becomes a request, through the JSONL parser ---- */

static sreq *find_id(sched *q, const char *id) {
    for (int i = 0; i < q->n_run; i++)
        if (strcmp(q->run[i]->id, id) == 0) return q->run[i];
    for (int i = 0; i < q->n_wait; i++)
        if (strcmp(q->wait[i]->id, id) == 0) return q->wait[i];
    return NULL;
}

static void grow(sched *q) {
    if (q->n_run + q->n_wait + 1 <= q->cap) return;
    q->cap = q->cap ? 2 * q->cap : 64;
    q->run = realloc(q->run, sizeof(sreq *) * (size_t)q->cap);
    q->wait = realloc(q->wait, sizeof(sreq *) * (size_t)q->cap);
    if (!q->run || !q->wait) abort();
}

/* Validates and queues req; answers the client itself on error. */
static void intake(sched *q, int conn, const Glmtp__GenerateRequest *pr) {
    const char *id = pr->request_id ? pr->request_id : "";
    char msg[1200];
    if (!id[0]) {
        send_error(q, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, "field 'request_id': missing or empty");
        return;
    }
    if (find_id(q, id)) {
        snprintf(msg, sizeof msg, "request '%s': field 'request_id': already in use", id);
        send_error(q, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        return;
    }
    if ((pr->has_temperature && !isfinite(pr->temperature)) || (pr->has_top_p && !isfinite(pr->top_p))) {
        snprintf(msg, sizeof msg, "request '%s': field '%s': must be a finite number", id,
                 pr->has_temperature && !isfinite(pr->temperature) ? "temperature" : "top_p");
        send_error(q, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_TEXT) {
        cJSON_AddStringToObject(o, "prompt", pr->text ? pr->text : "");
    } else if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_CHAT) {
        cJSON *a = cJSON_AddArrayToObject(o, "messages");
        for (size_t i = 0; pr->chat && i < pr->chat->n_messages; i++) {
            const Glmtp__ChatMessage *m = pr->chat->messages[i];
            cJSON *mo = cJSON_CreateObject();
            if (m->role) cJSON_AddStringToObject(mo, "role", m->role);
            cJSON_AddStringToObject(mo, "content", m->content ? m->content : "");
            if (m->metadata && m->metadata[0]) cJSON_AddStringToObject(mo, "metadata", m->metadata);
            cJSON_AddItemToArray(a, mo);
        }
    } else if (pr->input_case == GLMTP__GENERATE_REQUEST__INPUT_TOKEN_IDS) {
        cJSON *a = cJSON_AddArrayToObject(o, "input_ids");
        for (size_t i = 0; pr->token_ids && i < pr->token_ids->n_ids; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(pr->token_ids->ids[i]));
    }
    if (pr->has_temperature) cJSON_AddNumberToObject(o, "temperature", pr->temperature);
    if (pr->has_top_p) cJSON_AddNumberToObject(o, "top_p", pr->top_p);
    if (pr->has_top_k) cJSON_AddNumberToObject(o, "top_k", pr->top_k);
    if (pr->has_seed) cJSON_AddNumberToObject(o, "seed", (double)pr->seed);
    if (pr->has_max_new_tokens) cJSON_AddNumberToObject(o, "max_new_tokens", pr->max_new_tokens);
    if (pr->n_stop) {
        cJSON *a = cJSON_AddArrayToObject(o, "stop");
        for (size_t i = 0; i < pr->n_stop; i++) cJSON_AddItemToArray(a, cJSON_CreateString(pr->stop[i]));
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) abort();
    req_line line;
    req_parse(q->ctx, text, strlen(text), 1, &line);
    free(text);
    for (size_t i = 0; !line.error && i < pr->n_stop_ids; i++)
        if (pr->stop_ids[i] < 0 || pr->stop_ids[i] >= q->ctx->n_vocab) {
            snprintf(msg, sizeof msg, "line 1: field 'stop_ids[%zu]': must be a token id in [0, %d)", i, q->ctx->n_vocab);
            line.error = strdup(msg);
        }
    if (!line.error && !gen_fits(q->e, line.g.n_prompt, line.g.max_new)) {
        snprintf(msg, sizeof msg, "line 1: prompt of %d tokens plus max_new_tokens %d needs more KV blocks than the "
                 "server has (%d of %d tokens; --kv-tokens)", line.g.n_prompt, line.g.max_new,
                 q->e->blocks.n_blocks, q->e->blocks.block_size);
        line.error = strdup(msg);
    }
    if (line.error) { /* "line 1: field ...": name the request instead */
        snprintf(msg, sizeof msg, "request '%s': %s", id, strncmp(line.error, "line 1: ", 8) ? line.error : line.error + 8);
        send_error(q, conn, id, GLMTP__ERROR__CODE__INVALID_REQUEST, msg);
        req_line_free(&line);
        return;
    }
    sreq *r = calloc(1, sizeof *r);
    if (!r || !(r->id = strdup(id))) abort();
    r->g = line.g;
    memset(&line.g, 0, sizeof line.g);
    req_line_free(&line);
    r->g.rng = r->g.seed;
    r->conn = conn, r->stream = pr->has_stream && pr->stream, r->arrival = ++q->arrivals;
    if (pr->n_stop_ids) {
        r->stop_ids = malloc(sizeof(int) * pr->n_stop_ids);
        if (!r->stop_ids) abort();
        for (size_t i = 0; i < pr->n_stop_ids; i++) r->stop_ids[i] = pr->stop_ids[i];
        r->n_stop_ids = (int)pr->n_stop_ids;
    }
    grow(q);
    q->wait[q->n_wait++] = r;
}

static void on_items(sched *q, srv_item *items) {
    for (srv_item *it = items, *nx; it; it = nx) {
        nx = it->next;
        if (it->kind == SRV_NEW) {
            intake(q, it->conn, it->req);
        } else if (it->kind == SRV_CANCEL) {
            sreq *r = find_id(q, it->id);
            if (r) r->cancel = 1;
            Glmtp__CancelReply c = GLMTP__CANCEL_REPLY__INIT;
            c.request_id = it->id, c.has_found = 1, c.found = r != NULL;
            Glmtp__ServerMessage m = GLMTP__SERVER_MESSAGE__INIT;
            m.msg_case = GLMTP__SERVER_MESSAGE__MSG_CANCEL, m.cancel = &c;
            push_frame(q, it->conn, &m);
        } else if (it->kind == SRV_GONE) {
            for (int i = 0; i < q->n_run; i++)
                if (q->run[i]->conn == it->conn) q->run[i]->cancel = 1, q->run[i]->conn_gone = 1;
            for (int i = 0; i < q->n_wait; i++)
                if (q->wait[i]->conn == it->conn) q->wait[i]->cancel = 1, q->wait[i]->conn_gone = 1;
        }
        srv_item_free(it);
    }
}

/* Removes list[i] keeping the order. */
static void remove_at(sreq **list, int *n, int i) {
    memmove(list + i, list + i + 1, sizeof(sreq *) * (size_t)(*n - i - 1));
    (*n)--;
}

/* Ends every request marked cancelled (all of them with reason when all != 0). */
static void reap(sched *q, int all, const char *reason) {
    for (int i = q->n_run - 1; i >= 0; i--)
        if (all || q->run[i]->cancel) {
            send_final(q, q->run[i], all ? reason : "cancelled");
            sreq_free(q, q->run[i]);
            remove_at(q->run, &q->n_run, i);
        }
    for (int i = q->n_wait - 1; i >= 0; i--)
        if (all || q->wait[i]->cancel) {
            send_final(q, q->wait[i], all ? reason : "cancelled");
            sreq_free(q, q->wait[i]);
            remove_at(q->wait, &q->n_wait, i);
        }
}

static void publish(sched *q) {
    server *s = q->s;
    pthread_mutex_lock(&s->mu);
    s->stats.queue_depth = q->n_wait, s->stats.running = q->n_run;
    s->stats.kv_free = q->e->blocks.n_free, s->stats.kv_used = q->e->blocks.n_blocks - q->e->blocks.n_free;
    s->stats.tokens_per_s = q->tps, s->stats.steps = q->steps, s->stats.preemptions = q->preemptions;
    s->stats.generated = q->generated, s->stats.n_ranks = q->e->comm->size;
    pthread_mutex_unlock(&s->mu);
}

/* ---- one step ---- */

static int known(const sreq *r) { return r->g.n_prompt + r->g.n_out; }
static int token_at(const sreq *r, int p) { return p < r->g.n_prompt ? r->g.prompt[p] : r->g.out[p - r->g.n_prompt]; }

/* Frees r's blocks and puts it back among the waiting, in arrival order. */
static void preempt(sched *q, int i) {
    sreq *r = q->run[i];
    remove_at(q->run, &q->n_run, i);
    kv_seq_release(&q->e->blocks, &r->g.kv);
    r->n_fed = 0, r->running = 0;
    int k = 0;
    while (k < q->n_wait && q->wait[k]->arrival < r->arrival) k++;
    memmove(q->wait + k + 1, q->wait + k, sizeof(sreq *) * (size_t)(q->n_wait - k));
    q->wait[k] = r;
    q->n_wait++;
    q->preemptions++;
}

typedef struct plan {
    sreq **req;
    int *chunk, n, tokens;
} plan;

static int in_plan(const plan *p, const sreq *r) {
    for (int i = 0; i < p->n; i++)
        if (p->req[i] == r) return 1;
    return 0;
}

/* Reserves blocks for r's chunk c, preempting the newest running request not in
 * this step while the pool is short. Returns 1 if r is planned, 0 if r itself
 * was preempted. */
static int reserve(sched *q, plan *p, sreq *r, int c) {
    while (kv_seq_reserve(&q->e->blocks, &r->g.kv, r->n_fed + c)) {
        int victim = -1;
        for (int i = q->n_run - 1; i >= 0 && victim < 0; i--)
            if (q->run[i] != r && !in_plan(p, q->run[i])) victim = i;
        if (victim < 0) /* nothing else to take from: r waits */
            for (int i = 0; i < q->n_run; i++)
                if (q->run[i] == r) victim = i;
        int self = q->run[victim] == r;
        preempt(q, victim);
        if (self) return 0;
    }
    p->req[p->n] = r, p->chunk[p->n++] = c, p->tokens += c;
    return 1;
}

static void make_plan(sched *q, plan *p, int budget) {
    /* decode tokens first, oldest first */
    for (int i = 0; i < q->n_run; i++) {
        sreq *r = q->run[i];
        if (known(r) - r->n_fed != 1 || in_plan(p, r)) continue;
        if (!reserve(q, p, r, 1)) i = -1; /* the list changed: rescan */
    }
    /* then prompt chunks of running requests, then admissions in arrival order */
    for (int i = 0; i < q->n_run && p->tokens < budget; i++) {
        sreq *r = q->run[i];
        int left = known(r) - r->n_fed;
        if (left <= 1 || in_plan(p, r)) continue;
        int c = left < budget - p->tokens ? left : budget - p->tokens;
        if (!reserve(q, p, r, c)) i = -1;
    }
    while (q->n_wait > 0 && p->tokens < budget) {
        sreq *r = q->wait[0];
        int left = known(r), c = left < budget - p->tokens ? left : budget - p->tokens;
        if (kv_seq_reserve(&q->e->blocks, &r->g.kv, c)) break; /* FCFS: wait for blocks */
        remove_at(q->wait, &q->n_wait, 0);
        r->running = 1;
        q->run[q->n_run++] = r;
        p->req[p->n] = r, p->chunk[p->n++] = c, p->tokens += c;
    }
}

/* One JSON line: step number, its wall time, tokens, and per request
 * [id, tokens in this step, tokens in its KV after it, "p"refill or "d"ecode]. */
static void log_step(sched *q, const plan *p, double dt) {
    FILE *f = q->s->step_log;
    if (!f) return;
    fprintf(f, "{\"step\":%ld,\"ms\":%.3f,\"tokens\":%d,\"seqs\":[", q->steps, dt * 1e3, p->tokens);
    for (int i = 0; i < p->n; i++)
        fprintf(f, "%s[\"%s\",%d,%d,\"%s\"]", i ? "," : "", p->req[i]->id, p->chunk[i], p->req[i]->n_fed,
                p->req[i]->n_fed - p->chunk[i] >= p->req[i]->g.n_prompt ? "d" : "p");
    fprintf(f, "]}\n");
    fflush(f);
}

/* Plans, runs and samples one step. Returns 0 when there was nothing to do. */
static int run_step(sched *q, int budget, char *dbuf, size_t dcap) {
    int cap = q->n_run + q->n_wait + 1;
    plan p = {malloc(sizeof(sreq *) * (size_t)cap), malloc(sizeof(int) * (size_t)cap), 0, 0};
    if (!p.req || !p.chunk) abort();
    make_plan(q, &p, budget);
    if (p.n == 0) {
        free(p.req);
        free(p.chunk);
        return 0;
    }
    const glm_config *cfg = &q->e->m->cfg;
    int V = cfg->vocab, n_real = q->tok ? tok_n_total(q->tok) : V, max_blocks = 1, n_logits = 0;
    for (int i = 0; i < p.n; i++) {
        if (p.req[i]->g.kv.n_blocks > max_blocks) max_blocks = p.req[i]->g.kv.n_blocks;
        n_logits += p.req[i]->n_fed + p.chunk[i] == known(p.req[i]);
    }
    glm_step st = {0};
    step_alloc(&st, p.tokens, p.n, max_blocks, n_logits, q->e->blocks.block_size);
    sreq **rows = malloc(sizeof(sreq *) * (size_t)(n_logits + 1));
    int *sampled = malloc(sizeof(int) * (size_t)(n_logits + 1));
    ksample_params *sp = malloc(sizeof *sp * (size_t)(n_logits + 1));
    if (!rows || !sampled || !sp) abort();
    int t = 0, l = 0;
    for (int i = 0; i < p.n; i++) {
        sreq *r = p.req[i];
        for (int k = 0; k < p.chunk[i]; k++, t++) {
            st.ids[t] = token_at(r, r->n_fed + k);
            st.pos[t] = r->n_fed + k;
            st.seq[t] = i;
        }
        if (r->n_fed + p.chunk[i] == known(r)) rows[l] = r, st.logit_rows[l++] = t - 1;
        step_set_table(&st, i, &r->g.kv);
    }
    step_fill_slots(&st);
    for (int i = 0; i < n_logits; i++)
        sp[i] = (ksample_params){rows[i]->g.temperature, rows[i]->g.top_k, rows[i]->g.top_p, &rows[i]->g.rng};
    double t0 = util_now();
    engine_step_sample(q->e, &st, n_real, sp, sampled);
    step_free(&st);
    for (int i = 0; i < p.n; i++) p.req[i]->n_fed += p.chunk[i];
    q->steps++;
    log_step(q, &p, util_now() - t0);
    gen_options go = {0};
    for (int i = 0; i < n_logits; i++) {
        sreq *r = rows[i];
        for (int k = 0; k < r->n_stop_ids; k++)
            if (r->stop_ids[k] == sampled[i]) r->g.finish = "stop";
        if (!r->g.finish) gen_accept_token(q->e, q->tok, &r->g, sampled[i], &go, dbuf, dcap);
        q->generated++;
        if (r->stream && !r->g.finish) send_delta(q, r, 0);
    }
    double dt = util_now() - t0;
    if (dt > 0) q->tps = q->steps == 1 ? n_logits / dt : 0.9 * q->tps + 0.1 * n_logits / dt;
    for (int i = q->n_run - 1; i >= 0; i--)
        if (q->run[i]->g.finish) {
            send_final(q, q->run[i], q->run[i]->g.finish);
            sreq_free(q, q->run[i]);
            remove_at(q->run, &q->n_run, i);
        }
    free(rows);
    free(sampled);
    free(sp);
    free(p.req);
    free(p.chunk);
    return 1;
}

void srv_sched_run(server *s, engine *e, const tokenizer *tok, const req_context *ctx, const srv_sched_options *o) {
    sched q = {.s = s, .e = e, .tok = tok, .ctx = ctx};
    size_t dcap = tok ? 3 * (tok_max_token_len(tok) + 4) : 16;
    char *dbuf = malloc(dcap + 1);
    if (!dbuf) abort();
    publish(&q);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (!s->in_head && !s->stopping && q.n_run + q.n_wait == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += o->idle_keepalive_s;
            int w = pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            if (w == ETIMEDOUT && !s->in_head && !s->stopping) {
                pthread_mutex_unlock(&s->mu);
                engine_keepalive(e);
                continue;
            }
        }
        srv_item *items = s->in_head;
        s->in_head = s->in_tail = NULL;
        s->n_in = 0;
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        on_items(&q, items);
        if (stopping) {
            reap(&q, 1, "shutdown");
            publish(&q);
            break;
        }
        reap(&q, 0, NULL);
        run_step(&q, o->step_tokens, dbuf, dcap);
        publish(&q);
    }
    pthread_mutex_lock(&s->mu);
    s->sched_done = 1;
    pthread_mutex_unlock(&s->mu);
    if (write(s->wake[1], "x", 1) < 0) { /* the pipe is non-blocking: full means already woken */
    }
    free(q.run);
    free(q.wait);
    free(dbuf);
}
